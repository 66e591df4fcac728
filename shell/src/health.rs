//! Health checks: every backend, every interval, a TCP connect and a read of
//! its MySQL handshake within the timeout. The counting (how many failures
//! make a backend `down`) is core's; this module only does the I/O.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use ferry_core::cluster::{BackendChange, BackendId, Health};
use tracing::{debug, info, warn};

use crate::clock::{Clock, SystemClock};
use crate::probe::probe;
use crate::proxy::{Shared, TcpConnector};
use crate::pump::Connector;

type Probe<'a> =
    Pin<Box<dyn Future<Output = Result<ferry_core::packets::Handshake, String>> + Send + 'a>>;

/// One backend's check: who, where, the probe while it runs, its result once done.
type Check<'a> = (
    BackendId,
    SocketAddr,
    Option<Probe<'a>>,
    Option<Result<(), String>>,
);

/// Checks every backend once, concurrently, and records the results.
pub async fn check_all<K: Connector, T: Clock>(shared: &Arc<Shared>, connector: &K, clock: &T) {
    let health = shared.config.read().expect("config lock").health;
    let targets: Vec<(BackendId, SocketAddr)> = {
        let mut cluster = shared.cluster.lock().expect("cluster lock");
        cluster.set_health_policy(health.policy());
        cluster.backends().map(|b| (b.id.clone(), b.addr)).collect()
    };
    let timeout = health.timeout();
    let mut probes: Vec<Check<'_>> = targets
        .into_iter()
        .map(|(id, addr)| {
            let key = id.clone();
            let p: Probe<'_> =
                Box::pin(async move { probe(connector, clock, &key, addr, timeout).await });
            (id, addr, Some(p), None)
        })
        .collect();
    // All at once: one slow backend must not delay the verdict on the others.
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (_, _, p, result) in probes.iter_mut() {
            if let Some(fut) = p.as_mut() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        *result = Some(r.map(|_| ()));
                        *p = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    for (id, addr, _, result) in probes {
        let result = result.unwrap_or_else(|| Err("not checked".into()));
        if let Err(e) = &result {
            debug!(backend = %id, %addr, error = %e, "health check failed");
        }
        let change = shared
            .cluster
            .lock()
            .expect("cluster lock")
            .record_check(&id, result.is_ok());
        if let Some(BackendChange::Health(id, health)) = change {
            match (health, result) {
                (Health::Down, Err(e)) => {
                    warn!(backend = %id, %addr, error = %e, "backend is down: takes no new sessions")
                }
                _ => info!(backend = %id, %addr, "backend is up again"),
            }
        }
    }
}

/// Checks all backends every interval until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let connector = TcpConnector::new(shared.tls.clone());
    run_with(shared, connector, SystemClock::new()).await
}

/// [`run`] over any connector and clock (the simulator's too).
pub async fn run_with<K: Connector + Clone, T: Clock>(shared: Arc<Shared>, connector: K, clock: T) {
    // Backends that want a PROXY header get the LOCAL one from checks.
    let connector = crate::proxy_protocol::HeaderConnector::local(connector, shared.clone());
    loop {
        let started = clock.now();
        check_all(&shared, &connector, &clock).await;
        let interval = shared.config.read().expect("config lock").health.interval();
        if !shared.sleep_until(&clock, started + interval).await {
            return;
        }
    }
}

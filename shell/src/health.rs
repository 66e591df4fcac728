//! Health checks: every backend, every interval, a TCP connect and a read of
//! its MySQL handshake within the timeout. The counting (how many failures
//! make a backend `down`) is core's; this module only does the I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ferry_core::cluster::{BackendChange, BackendId, Health};
use smol::Executor;
use tracing::{debug, info, warn};

use crate::probe::read_handshake;
use crate::proxy::Shared;

/// Checks every backend once, concurrently, and records the results.
pub async fn check_all(ex: &Executor<'static>, shared: &Arc<Shared>) {
    let health = shared.config.read().expect("config lock").health;
    let targets: Vec<(BackendId, SocketAddr)> = {
        let mut cluster = shared.cluster.lock().expect("cluster lock");
        cluster.set_health_policy(health.policy());
        cluster.backends().map(|b| (b.id.clone(), b.addr)).collect()
    };
    let timeout = health.timeout();
    let probes: Vec<_> = targets
        .into_iter()
        .map(|(id, addr)| {
            let task = ex.spawn(read_handshake(addr, timeout));
            (id, addr, task)
        })
        .collect();
    for (id, addr, task) in probes {
        let result = task.await;
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
pub async fn run(ex: Arc<Executor<'static>>, shared: Arc<Shared>) {
    loop {
        let started = Instant::now();
        check_all(&ex, &shared).await;
        let interval = shared.config.read().expect("config lock").health.interval();
        let next = started + interval;
        async_io::Timer::at(next.max(Instant::now())).await;
    }
}

//! The simulated proxy host: ferry's own shell code (`proxy::Shared`, the
//! per-connection `pump::run`, `SessionHooks`) on turmoil's TCP, bridged to
//! futures-io with `tokio_util::compat`. Everything that touches the shell's
//! API lives here, so API changes in the shell are absorbed in this file.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ferry_core::cluster::Cluster;
use ferry_core::config::Config;
use ferry_core::login::client::Greeting;
use ferry_core::session::Session;
use ferry_core::Rng;
use ferry_shell::clock::Clock;
use ferry_shell::proxy::{SessionHooks, Shared};
use ferry_shell::pump::{self, Connector};
use futures_lite::FutureExt;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use crate::clock::SimClock;
use crate::trace::Trace;

/// The port ferry and the backends listen on in the simulation.
pub const PORT: u16 = 3306;

/// Where the runner finds the proxy's shared state (replaced when the host restarts).
pub type ProxySlot = Arc<Mutex<Option<Arc<Shared>>>>;

/// Runs `f` on the proxy's cluster (as the admin API does), if the proxy is up.
pub fn with_cluster<R>(slot: &ProxySlot, f: impl FnOnce(&mut Cluster) -> R) -> Option<R> {
    let shared = slot.lock().expect("proxy slot").clone()?;
    let mut cluster = shared.cluster.lock().expect("cluster lock");
    Some(f(&mut cluster))
}

/// Session moves that succeeded so far (none until ferry migrates sessions).
pub fn moves(slot: &ProxySlot) -> u64 {
    let _ = slot;
    0
}

/// Connects to backends over turmoil's TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimConnector;

impl Connector for SimConnector {
    type Stream = Compat<turmoil::net::TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Stream> {
        let stream = turmoil::net::TcpStream::connect(addr).await?;
        Ok(stream.compat())
    }
}

/// Runs the proxy host until it is crashed: builds the shared state from
/// `config`, publishes it in `slot`, and serves every client with the pump.
pub async fn serve(config: Config, seed: u64, trace: Trace, slot: ProxySlot) -> turmoil::Result {
    let shared = Arc::new(Shared::from_config(&config, seed)?);
    *slot.lock().expect("proxy slot") = Some(shared.clone());
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let clock = SimClock::new();
    let mut rng = Rng::new(seed ^ 0x5A17);
    let mut next_id = 1u32;
    trace.log("ferry", "up");
    loop {
        let (stream, peer) = listener.accept().await?;
        let conn_id = next_id;
        next_id += 1;
        let mut salt = [0u8; 20];
        for b in &mut salt {
            *b = 33 + rng.below(94) as u8;
        }
        let shared = shared.clone();
        let trace = trace.clone();
        tokio::task::spawn_local(async move {
            let registration = shared.registry.register(conn_id);
            let identity = shared.identity.read().expect("identity lock").clone();
            let greeting = Greeting {
                server_version: identity.version,
                connection_id: conn_id,
                salt,
                collation: 45,
                capabilities: identity.capabilities,
            };
            let users = shared.users.read().expect("users lock").clone();
            let session_config = shared.session_config.read().expect("config lock").clone();
            let session = Session::new(
                clock.now(),
                session_config,
                greeting,
                users,
                peer.ip().to_string(),
            );
            let hooks = SessionHooks::new(shared.clone(), registration.entry.clone());
            let shutdown = shared.shutdown_requested();
            let pump = pump::run(
                conn_id,
                session,
                stream.compat(),
                &SimConnector,
                &hooks,
                &clock,
                shutdown,
            );
            if let Err(panic) = std::panic::AssertUnwindSafe(pump).catch_unwind().await {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                trace.log("ferry", format!("s{conn_id} PANIC {what}"));
            }
            drop(hooks);
            drop(registration);
        });
    }
}

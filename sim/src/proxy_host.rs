//! The simulated proxy host: ferry's own shell code (`proxy::Shared`,
//! `proxy::run_session` for each client, `control::run` for the cluster) on
//! turmoil's TCP, bridged to futures-io with `tokio_util::compat`. Everything that touches the shell's
//! API lives here, so API changes in the shell are absorbed in this file.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ferry_core::cluster::Cluster;
use ferry_core::config::Config;
use ferry_core::Rng;
use ferry_shell::control;
use ferry_shell::proxy::{self, Shared};
use ferry_shell::pump::Connector;
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

/// Session moves that succeeded so far (ferry's own metric).
pub fn moves(slot: &ProxySlot) -> u64 {
    slot.lock()
        .expect("proxy slot")
        .as_ref()
        .map_or(0, |shared| shared.metrics.migrations_succeeded())
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
/// `config`, publishes it in `slot`, runs ferry's cluster control loop, and
/// serves every client with ferry's own `proxy::run_session`.
pub async fn serve(config: Config, seed: u64, trace: Trace, slot: ProxySlot) -> turmoil::Result {
    let shared = Arc::new(Shared::from_config(&config, seed)?);
    *slot.lock().expect("proxy slot") = Some(shared.clone());
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let clock = SimClock::new();
    tokio::task::spawn_local(control::run(shared.clone(), clock));
    tokio::task::spawn_local(ferry_shell::health::run_with(
        shared.clone(),
        SimConnector,
        clock,
    ));
    let mut rng = Rng::new(seed ^ 0x5A17);
    trace.log("ferry", "up");
    loop {
        let (stream, peer) = listener.accept().await?;
        let mut salt = [0u8; 20];
        for b in &mut salt {
            *b = 33 + rng.below(94) as u8;
        }
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            proxy::run_session(
                shared,
                stream.compat(),
                peer,
                &SimConnector,
                &clock,
                salt,
                &ferry_shell::pump::NoTls,
            )
            .await;
        });
    }
}

//! The proxy process: shared state, the accept loop, and the glue between
//! the pump and the cluster.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use ferry_core::cluster::{BackendId, Cluster, NoBackend, Route, RouteRequest};
use ferry_core::config::Config;
use ferry_core::login::client::Greeting;
use ferry_core::packets::flags::caps::FERRY_SUPPORTED;
use ferry_core::session::{Session, SessionConfig};
use ferry_core::users::UserDirectory;
use smol::Executor;
use tracing::{error, info, warn};

use crate::clock::{Clock, SystemClock};
use crate::probe::read_handshake;
use crate::pump::{self, Connector, Router};

/// utf8mb4_general_ci.
const DEFAULT_COLLATION: u8 = 45;
/// Announced when no backend could be asked and none is configured.
const FALLBACK_VERSION: &str = "5.5.5-10.11.6-MariaDB-ferry";

/// What ferry tells clients about "the server".
#[derive(Clone, Debug)]
pub struct ServerIdentity {
    /// Version string.
    pub version: String,
    /// Capabilities to offer (ferry's, cut down to the backends').
    pub capabilities: u32,
}

/// State shared by all connection tasks.
pub struct Shared {
    /// Backends and routing.
    pub cluster: Mutex<Cluster>,
    /// Who may log in.
    pub users: RwLock<Arc<UserDirectory>>,
    /// The identity announced to clients.
    pub identity: RwLock<ServerIdentity>,
    /// Limits for each session.
    pub session_config: SessionConfig,
    next_conn_id: AtomicU32,
}

impl Shared {
    /// Shared state from a parsed config.
    pub fn from_config(config: &Config, seed: u64) -> anyhow::Result<Self> {
        let users =
            UserDirectory::from_config(&config.users).map_err(|e| anyhow::anyhow!("users: {e}"))?;
        Ok(Shared {
            cluster: Mutex::new(Cluster::new(&config.backends, seed)),
            users: RwLock::new(Arc::new(users)),
            identity: RwLock::new(ServerIdentity {
                version: config
                    .server_version
                    .clone()
                    .unwrap_or_else(|| FALLBACK_VERSION.to_string()),
                capabilities: FERRY_SUPPORTED,
            }),
            session_config: SessionConfig {
                login_timeout: Duration::from_millis(config.login_timeout_ms),
                backend_timeout: Duration::from_millis(config.backend_timeout_ms),
                max_packet_size: config.max_packet_size,
            },
            next_conn_id: AtomicU32::new(1),
        })
    }

    fn connection_id(&self) -> u32 {
        loop {
            let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }
}

impl Router for Arc<Shared> {
    fn route(&self, req: &RouteRequest) -> Result<Route, NoBackend> {
        self.cluster.lock().expect("cluster lock").route(req)
    }

    fn release(&self, backend: &BackendId) {
        self.cluster.lock().expect("cluster lock").release(backend);
    }
}

/// Connects to backends over TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Stream = async_net::TcpStream;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Stream> {
        let stream = async_net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// A fresh salt: 20 printable bytes, as MySQL servers send.
fn fresh_salt() -> [u8; 20] {
    let mut salt = [0u8; 20];
    getrandom::getrandom(&mut salt).expect("OS random source");
    for b in &mut salt {
        *b = 33 + *b % 94;
    }
    salt
}

/// Learns the server version and capabilities from the first backend that answers.
pub async fn learn_identity(shared: &Shared, configured_version: Option<&str>) {
    let addrs: Vec<(BackendId, SocketAddr)> = {
        let cluster = shared.cluster.lock().expect("cluster lock");
        cluster.backends().map(|b| (b.id.clone(), b.addr)).collect()
    };
    for (id, addr) in addrs {
        match read_handshake(addr, Duration::from_secs(2)).await {
            Ok(hs) => {
                let mut identity = shared.identity.write().expect("identity lock");
                identity.capabilities = FERRY_SUPPORTED & hs.capabilities;
                if configured_version.is_none() {
                    identity.version = hs.server_version.clone();
                }
                info!(backend = %id, version = %identity.version, "learned server identity");
                return;
            }
            Err(e) => {
                warn!(backend = %id, %addr, error = %e, "backend did not answer the version probe")
            }
        }
    }
    warn!(
        version = %shared.identity.read().expect("identity lock").version,
        "no backend answered; announcing the fallback version"
    );
}

/// Accepts clients on `listen` forever, one task per connection.
pub async fn serve(
    ex: Arc<Executor<'static>>,
    shared: Arc<Shared>,
    listener: async_net::TcpListener,
) -> anyhow::Result<()> {
    let clock = SystemClock::new();
    info!(listen = %listener.local_addr().context("listener address")?, "accepting clients");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off, never stop serving.
                error!(error = %e, "accept failed");
                async_io::Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        ex.spawn(async move {
            let conn_id = shared.connection_id();
            let identity = shared.identity.read().expect("identity lock").clone();
            let greeting = Greeting {
                server_version: identity.version,
                connection_id: conn_id,
                salt: fresh_salt(),
                collation: DEFAULT_COLLATION,
                capabilities: identity.capabilities,
            };
            let users = shared.users.read().expect("users lock").clone();
            let session = Session::new(
                clock.now(),
                shared.session_config.clone(),
                greeting,
                users,
                peer.ip().to_string(),
            );
            pump::run(conn_id, session, stream, &TcpConnector, &shared, &clock).await;
        })
        .detach();
    }
}

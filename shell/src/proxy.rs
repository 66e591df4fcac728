//! The proxy process: shared state, the accept loop, and the glue between
//! the pump and the cluster.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use ferry_core::cluster::{BackendChange, BackendId, Cluster, NoBackend, Route, RouteRequest};
use ferry_core::config::{AdminToken, Config};
use ferry_core::kill::Peer;
use ferry_core::limits::pre_handshake_frame;
use ferry_core::login::client::Greeting;
use ferry_core::login::{ReadUsers, UsersRead};
use ferry_core::packets::flags::caps::{FERRY_COMPRESSION, FERRY_SUPPORTED};
use ferry_core::packets::ErrPacket;
use ferry_core::session::{CloseReason, Session, SessionConfig, SessionEvent, Transfer};
use ferry_core::users::UserDirectory;
use ferry_core::usersync::SyncedUsers;
use futures_lite::FutureExt;
use smol::Executor;
use tracing::{error, info, warn};

use crate::clock::{Clock, SystemClock};
use crate::limits::Guards;
use crate::metrics::{LoginFailure, Metrics};
use crate::probe::probe;
use crate::proxy_protocol::{self, ClientAddr, HeaderConnector};
use crate::pump::{self, ClientTls, Connector, Router};
use crate::record::Recorder;
use crate::registry::{Registry, SessionEntry, SessionInfo};
use crate::tls::{self, TlsSettings};

/// utf8mb4_general_ci.
const DEFAULT_COLLATION: u8 = 45;
/// Announced when no backend could be asked and none is configured.
const FALLBACK_VERSION: &str = "5.5.5-10.11.6-MariaDB-ferry";

pub use ferry_core::kill::FIRST_CONNECTION_ID;

/// What ferry tells clients about "the server".
#[derive(Clone, Debug)]
pub struct ServerIdentity {
    /// Version string.
    pub version: String,
    /// Capabilities to offer (ferry's, cut down to the backends').
    pub capabilities: u32,
    /// MariaDB extended capabilities the backends offer (none until learned).
    pub mariadb_capabilities: u32,
}

/// State shared by all connection tasks.
pub struct Shared {
    /// Backends and routing.
    pub cluster: Mutex<Cluster>,
    /// Who may log in.
    pub users: RwLock<Arc<UserDirectory>>,
    /// The identity announced to clients.
    pub identity: RwLock<ServerIdentity>,
    /// Limits for each new session.
    pub session_config: RwLock<SessionConfig>,
    /// The config in force (the last one loaded without error).
    pub config: RwLock<Config>,
    /// Users last read from the `user_source` backend.
    pub synced_users: Mutex<SyncedUsers>,
    /// When the user source is read (one at a time, shared by waiting logins).
    pub user_reads: crate::usersync::UserReads,
    /// Live sessions.
    pub registry: Arc<Registry>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// `ferry --record DIR`: where each session's traffic is recorded (off when `None`).
    pub record_dir: Option<std::path::PathBuf>,
    /// Certificates for clients and backends (see [`crate::tls`]); empty until installed.
    pub tls: Arc<TlsSettings>,
    /// Connection, tenant and failed-login limits.
    pub guards: Guards,
    /// The admin API's bearer token, if any (`admin_token` or `admin_token_file`).
    pub admin_token: RwLock<Option<AdminToken>>,
    shutting_down: AtomicBool,
    shutdown: (async_channel::Sender<()>, async_channel::Receiver<()>),
    next_conn_id: AtomicU32,
}

impl Shared {
    /// Shared state from a parsed config.
    pub fn from_config(config: &Config, seed: u64) -> anyhow::Result<Self> {
        let users =
            UserDirectory::from_config(&config.users).map_err(|e| anyhow::anyhow!("users: {e}"))?;
        let mut cluster = Cluster::new(&config.backends, seed);
        cluster.set_health_policy(config.health.policy());
        Ok(Shared {
            cluster: Mutex::new(cluster),
            users: RwLock::new(Arc::new(users)),
            identity: RwLock::new(ServerIdentity {
                version: config
                    .server_version
                    .clone()
                    .unwrap_or_else(|| FALLBACK_VERSION.to_string()),
                capabilities: FERRY_SUPPORTED | FERRY_COMPRESSION,
                mariadb_capabilities: 0,
            }),
            session_config: RwLock::new(session_config(config)),
            config: RwLock::new(config.clone()),
            synced_users: Mutex::new(SyncedUsers::default()),
            user_reads: Default::default(),
            registry: Arc::new(Registry::default()),
            metrics: Metrics::default(),
            record_dir: None,
            tls: Arc::new(TlsSettings::default()),
            guards: Guards::new(&config.limits),
            admin_token: RwLock::new(crate::admin::load_token(config).map_err(anyhow::Error::msg)?),
            shutting_down: AtomicBool::new(false),
            shutdown: async_channel::bounded(1),
            next_conn_id: AtomicU32::new(FIRST_CONNECTION_ID),
        })
    }

    fn connection_id(&self) -> u32 {
        loop {
            let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
            if id >= FIRST_CONNECTION_ID {
                return id;
            }
            // Wrapped around: start the range again.
            let _ = self.next_conn_id.compare_exchange(
                id.wrapping_add(1),
                FIRST_CONNECTION_ID,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// The config in force.
    pub fn config(&self) -> Config {
        self.config.read().expect("config lock").clone()
    }

    /// Begins a graceful shutdown: stop accepting, close sessions at their next safe point.
    pub fn begin_shutdown(&self) {
        if !self.shutting_down.swap(true, Ordering::SeqCst) {
            self.shutdown.0.close();
        }
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Completes when shutdown begins.
    pub async fn shutdown_requested(&self) {
        let _ = self.shutdown.1.recv().await;
    }

    /// Sleeps until `deadline` on `clock`; false if shutdown began first.
    pub async fn sleep_until<T: Clock>(&self, clock: &T, deadline: ferry_core::Timestamp) -> bool {
        async {
            clock.sleep_until(deadline).await;
            true
        }
        .or(async {
            self.shutdown_requested().await;
            false
        })
        .await
    }

    /// Releases one session's count, logging what that changed.
    pub fn release(&self, route: &Route) {
        let change = self.cluster.lock().expect("cluster lock").release(route);
        log_change(change);
    }
}

/// Logs a change the cluster made on its own.
pub fn log_change(change: Option<BackendChange>) {
    match change {
        Some(BackendChange::Drained(id)) => {
            info!(backend = %id, "backend drained: no sessions left")
        }
        Some(BackendChange::Forgotten(id)) => {
            info!(backend = %id, "removed backend has no sessions left; forgotten")
        }
        Some(BackendChange::Health(id, health)) => {
            info!(backend = %id, ?health, "backend health changed")
        }
        None => {}
    }
}

/// Session limits from a config.
pub fn session_config(config: &Config) -> SessionConfig {
    SessionConfig {
        login_timeout: Duration::from_millis(config.login_timeout_ms),
        backend_timeout: Duration::from_millis(config.backend_timeout_ms),
        max_packet_size: config.max_packet_size,
        move_backoff: Duration::from_millis(config.migration_backoff_ms),
        logins: ferry_core::login::LoginPolicy {
            user_source: config.user_source.is_some(),
            unverified: config.unverified_logins,
        },
        uncompressed_backends: config
            .backends
            .iter()
            .filter(|b| !b.compress_backend)
            .map(|b| BackendId(b.id.clone()))
            .collect(),
        limits: config.limits.session(),
    }
}

impl Router for Arc<Shared> {
    fn route(&self, req: &RouteRequest) -> Result<Route, NoBackend> {
        self.cluster.lock().expect("cluster lock").route(req)
    }

    fn release(&self, route: &Route) {
        Shared::release(self, route);
    }
}

/// The router one session's pump talks to: the cluster, plus the session's
/// registry entry and the metrics.
pub struct SessionHooks<T: Clock> {
    shared: Arc<Shared>,
    entry: Arc<SessionEntry>,
    logged_in: AtomicBool,
    clock: T,
    recorder: Option<Mutex<Recorder>>,
    /// The client's address (failed logins are counted per address).
    peer: IpAddr,
    /// The tenant this session is counted under (`max_connections_per_tenant`).
    tenant: Mutex<Option<String>>,
}

impl<T: Clock> SessionHooks<T> {
    /// Hooks for the session with registry entry `entry`.
    pub fn new(shared: Arc<Shared>, entry: Arc<SessionEntry>, clock: T, peer: IpAddr) -> Self {
        let recorder = shared
            .record_dir
            .as_deref()
            .map(|dir| Mutex::new(Recorder::new(dir, entry.id, clock.now())));
        SessionHooks {
            shared,
            entry,
            logged_in: AtomicBool::new(false),
            clock,
            recorder,
            peer,
            tenant: Mutex::new(None),
        }
    }
}

impl<T: Clock> Drop for SessionHooks<T> {
    fn drop(&mut self) {
        // Runs however the session ended, also when shutdown cut it.
        if self.logged_in.load(Ordering::Relaxed) {
            self.shared
                .metrics
                .sessions_current
                .fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(tenant) = self.tenant.lock().expect("tenant lock").take() {
            self.shared.guards.leave_tenant(&tenant);
        }
    }
}

impl<T: Clock> Router for SessionHooks<T> {
    fn admit(&self, req: &RouteRequest) -> Result<(), ErrPacket> {
        let Some(tenant) = &req.tenant else {
            return Ok(());
        };
        self.shared.guards.enter_tenant(tenant)?;
        *self.tenant.lock().expect("tenant lock") = Some(tenant.clone());
        Ok(())
    }

    fn on_write_timeout(&self) {
        self.shared
            .guards
            .write_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }

    fn route(&self, req: &RouteRequest) -> Result<Route, NoBackend> {
        let routed = self.shared.cluster.lock().expect("cluster lock").route(req);
        if routed.is_err() {
            self.shared
                .metrics
                .route_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        routed
    }

    fn release(&self, route: &Route) {
        self.shared.release(route);
    }

    fn on_event(&self, event: &SessionEvent) {
        let (login, route, backend_connection_id) = match event {
            SessionEvent::LoggedIn {
                login,
                route,
                backend_connection_id,
                client,
            } => {
                if let Some(r) = &self.recorder {
                    r.lock()
                        .expect("recorder lock")
                        .logged_in(self.clock.now(), login, client);
                }
                (login, route, backend_connection_id)
            }
            SessionEvent::Status(status) => {
                self.entry.in_txn.store(status.in_txn, Ordering::Relaxed);
                self.entry.safe.store(status.safe, Ordering::Relaxed);
                self.entry.set_blocked_by(status.blocked_by.clone());
                return;
            }
            SessionEvent::MoveStarted(trigger) => {
                self.entry.move_started();
                self.shared.metrics.migration_started(*trigger);
                return;
            }
            SessionEvent::Moved(report) => {
                self.entry.move_ended(report, self.clock.now());
                self.shared.metrics.migration_ended(report);
                return;
            }
            SessionEvent::BackendVerified { .. } | SessionEvent::CredentialRecovered { .. } => {
                return
            }
            SessionEvent::BackendUnreachable { backend, why } => {
                // Passive health: out of routing at once; the checks bring it back.
                let change = self
                    .shared
                    .cluster
                    .lock()
                    .expect("cluster lock")
                    .mark_unreachable(backend);
                if change.is_some() {
                    warn!(backend = %backend, reason = %why, "backend unreachable: taken out of routing until health checks pass");
                }
                log_change(change);
                return;
            }
        };
        self.entry.set_info(SessionInfo {
            tenant: login.tenant.clone(),
            user: login.user.clone(),
            labels: login.labels.clone(),
            backend: route.backend.clone(),
            backend_connection_id: *backend_connection_id,
        });
        let m = &self.shared.metrics;
        if !self.logged_in.swap(true, Ordering::Relaxed) {
            m.sessions_total.fetch_add(1, Ordering::Relaxed);
            m.sessions_current.fetch_add(1, Ordering::Relaxed);
            self.shared.guards.login_succeeded(self.peer);
        }
    }

    fn transfer(&self, t: &Transfer) -> Result<Route, String> {
        let moved = self
            .shared
            .cluster
            .lock()
            .expect("cluster lock")
            .transfer(&t.from, &t.request, t.to.as_ref())
            .map_err(|e| e.to_string())?;
        log_change(moved.change);
        Ok(moved.route)
    }

    fn transfer_back(&self, moved: &Route, original: &Route) {
        let change = self
            .shared
            .cluster
            .lock()
            .expect("cluster lock")
            .transfer_back(moved, original);
        log_change(change);
    }

    fn peers(&self) -> Vec<Peer> {
        let entries = self.shared.registry.all();
        let cluster = self.shared.cluster.lock().expect("cluster lock");
        entries
            .iter()
            .filter_map(|e| {
                let info = e.info()?;
                Some(Peer {
                    id: e.id,
                    addr: cluster.backend(&info.backend).map(|b| b.addr),
                    tenant: info.tenant,
                    user: info.user,
                    backend: info.backend,
                    thread: info.backend_connection_id,
                    earlier: e.earlier_threads(),
                })
            })
            .collect()
    }

    async fn read_users(&self, wanted: &ReadUsers) -> UsersRead {
        crate::usersync::reread(&self.shared, Some(wanted)).await
    }

    fn command_counter(&self, backend: &BackendId) -> Option<Arc<std::sync::atomic::AtomicU64>> {
        Some(self.shared.metrics.commands.counter(backend))
    }

    fn close_session(&self, id: u32, why: &str) {
        if let Some(entry) = self.shared.registry.get(id) {
            entry.send(ferry_core::session::Control::Kill(why.to_string()));
        }
    }

    fn on_read(&self, from_client: bool, data: &[u8]) {
        if let Some(r) = &self.recorder {
            r.lock()
                .expect("recorder lock")
                .data(self.clock.now(), from_client, data);
        }
        let n = data.len();
        let m = &self.shared.metrics;
        let counter = if from_client {
            &m.bytes_from_clients
        } else {
            &m.bytes_from_backends
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.entry.note_read(from_client);
    }

    fn on_close(&self, reason: &CloseReason) {
        if *reason == CloseReason::IdleTimeout {
            let idle = &self.shared.guards.idle_closed;
            idle.fetch_add(1, Ordering::Relaxed);
        }
        if !self.logged_in.load(Ordering::Relaxed) {
            let failure = LoginFailure::of(reason);
            self.shared.metrics.login_failed(failure);
            if is_failed_login(failure, reason) {
                self.shared.guards.login_failed(self.clock.now(), self.peer);
            }
        }
    }
}

/// Whether a login's end counts towards blocking its address: ferry refused
/// the user or password, or the backend did for a user only it could check
/// (1045). A refusal by a limit (1040) does not count.
fn is_failed_login(failure: LoginFailure, reason: &CloseReason) -> bool {
    let CloseReason::LoginRefused(why) = reason else {
        return false;
    };
    (failure == LoginFailure::Refused && !why.starts_with("Too many connections"))
        || why.contains("whose password only it could check: 1045")
}

/// Connects to backends over TCP, with TLS for the backends whose setting asks for it.
#[derive(Clone, Default)]
pub struct TcpConnector {
    tls: Arc<TlsSettings>,
}

impl TcpConnector {
    /// A connector using the TLS settings in force in `tls`.
    pub fn new(tls: Arc<TlsSettings>) -> Self {
        TcpConnector { tls }
    }
}

impl Connector for TcpConnector {
    type Stream = tls::Stream<async_net::TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Stream> {
        let stream = async_net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(tls::Stream::Plain(stream))
    }

    fn tls_for(&self, backend: &BackendId) -> bool {
        self.tls.backend(backend).is_some()
    }

    async fn start_tls(
        &self,
        stream: &mut Self::Stream,
        backend: &BackendId,
        addr: SocketAddr,
    ) -> std::io::Result<()> {
        self.tls.connect(stream, backend, addr).await
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
pub async fn learn_identity(shared: &Arc<Shared>, configured_version: Option<&str>) {
    let addrs: Vec<(BackendId, SocketAddr)> = {
        let cluster = shared.cluster.lock().expect("cluster lock");
        cluster.backends().map(|b| (b.id.clone(), b.addr)).collect()
    };
    let connector = TcpConnector::new(shared.tls.clone());
    for (id, addr) in addrs {
        let connector = HeaderConnector::local(connector.clone(), shared.clone());
        match probe(
            &connector,
            &SystemClock::new(),
            &id,
            addr,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(hs) => {
                let mut identity = shared.identity.write().expect("identity lock");
                identity.capabilities = (FERRY_SUPPORTED | FERRY_COMPRESSION) & hs.capabilities;
                identity.mariadb_capabilities = hs.mariadb_capabilities;
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

/// Accepts clients on `listen` until shutdown begins, one task per connection.
pub async fn serve(
    ex: Arc<Executor<'static>>,
    shared: Arc<Shared>,
    listener: async_net::TcpListener,
) -> anyhow::Result<()> {
    let clock = SystemClock::new();
    let connector = TcpConnector::new(shared.tls.clone());
    info!(listen = %listener.local_addr().context("listener address")?, "accepting clients");
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                shared.shutdown_requested().await;
                None
            })
            .await;
        let Some(accepted) = accepted else {
            info!("shutting down: no longer accepting clients");
            return Ok(());
        };
        let (stream, peer) = match accepted {
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
        let connector = connector.clone();
        // The certificate in force now: a reload changes it for later sessions only.
        let tls = shared.tls.acceptor();
        ex.spawn(async move {
            shared
                .metrics
                .connections_total
                .fetch_add(1, Ordering::Relaxed);
            // Counted from accept on, so clients stuck before their PROXY
            // header cannot get past max_connections.
            let guards = shared.clone();
            let _permit = match guards.guards.open_connection() {
                Ok(permit) => permit,
                Err(err) => return refuse_before_handshake(stream, &err).await,
            };
            // A PROXY header comes first, before any TLS; bounded by the login timeout.
            let timeout = shared
                .session_config
                .read()
                .expect("config lock")
                .login_timeout;
            let deadline = clock.now() + timeout;
            let Some((stream, addr)) =
                proxy_protocol::accept(&shared, stream, peer, &clock, deadline).await
            else {
                return;
            };
            let stream = tls::Stream::Plain(stream);
            // Blocked hosts are known only now: a PROXY header names the client.
            if let Err(err) = shared.guards.check_host(clock.now(), addr.client.ip()) {
                return refuse_before_handshake(stream, &err).await;
            }
            serve_admitted(shared, stream, addr, &connector, &clock, fresh_salt(), &tls).await;
        })
        .detach();
    }
}

/// Runs one accepted client connection to its end: registers it, builds its
/// session, pumps it (the same code for the binary and the simulator).
/// `salt` is the random salt of ferry's handshake; `tls` upgrades the client
/// connection when it asks for TLS ([`pump::NoTls`] where there is none).
/// `addr` is the TCP peer, or who a PROXY header said the client is.
pub async fn run_session<S, K, T, A>(
    shared: Arc<Shared>,
    stream: S,
    addr: impl Into<ClientAddr>,
    connector: &K,
    clock: &T,
    salt: [u8; 20],
    tls: &A,
) where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
    K: Connector + Clone,
    T: Clock,
    A: ClientTls<S>,
{
    shared
        .metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let addr: ClientAddr = addr.into();
    let guards = shared.clone();
    let _permit = match guards.guards.admit(clock.now(), addr.client.ip()) {
        Ok(permit) => permit,
        Err(err) => return refuse_before_handshake(stream, &err).await,
    };
    serve_admitted(shared, stream, addr, connector, clock, salt, tls).await;
}

/// [`run_session`] after admission: the caller holds the connection's permit.
async fn serve_admitted<S, K, T, A>(
    shared: Arc<Shared>,
    stream: S,
    addr: ClientAddr,
    connector: &K,
    clock: &T,
    salt: [u8; 20],
    tls: &A,
) where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
    K: Connector + Clone,
    T: Clock,
    A: ClientTls<S>,
{
    let connector = HeaderConnector::for_client(connector.clone(), shared.clone(), &addr);
    let conn_id = shared.connection_id();
    let mut registration = shared.registry.register(conn_id);
    registration.entry.set_client(addr.client);
    let identity = shared.identity.read().expect("identity lock").clone();
    let greeting = Greeting {
        server_version: identity.version,
        connection_id: conn_id,
        salt,
        collation: DEFAULT_COLLATION,
        capabilities: identity.capabilities,
        mariadb_capabilities: identity.mariadb_capabilities,
        tls: tls.offer(),
    };
    let users = shared.users.read().expect("users lock").clone();
    let session_config = shared.session_config.read().expect("config lock").clone();
    let session = Session::new(
        clock.now(),
        session_config,
        greeting,
        users,
        addr.client.ip().to_string(),
    );
    let hooks = SessionHooks::new(
        shared.clone(),
        registration.entry.clone(),
        clock.clone(),
        addr.client.ip(),
    );
    let shutdown = shared.shutdown_requested();
    let control = registration.control.take().expect("a fresh registration");
    let pump = pump::run(
        conn_id, session, stream, &connector, &hooks, clock, shutdown, control, tls,
    );
    // Every line the session logs names its client (the PROXY header's address, if any).
    let pump =
        tracing::Instrument::instrument(pump, tracing::info_span!("client", addr = %addr.client));
    // A bug in one session must not take the proxy down: the panic ends
    // this task only (its sockets close and its count is released on unwind).
    if let Err(panic) = std::panic::AssertUnwindSafe(pump).catch_unwind().await {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        error!(conn_id, panic = %what, "session task panicked; closed");
    }
    drop(hooks);
    drop(registration);
}

/// Sends a refused connection its ERR and closes it, without waiting on the
/// client: the ERR fits a fresh socket's send buffer, and a client that does
/// not take it loses only its own error message.
async fn refuse_before_handshake<S>(mut stream: S, err: &ErrPacket)
where
    S: futures_io::AsyncWrite + Unpin,
{
    use futures_lite::AsyncWriteExt;
    let frame = pre_handshake_frame(err);
    let _ = futures_lite::future::poll_once(stream.write_all(&frame)).await;
    let _ = futures_lite::future::poll_once(stream.close()).await;
}

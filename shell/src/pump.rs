//! The per-connection pump: moves bytes between sockets and a [`Session`].
//!
//! Cut-through: each read becomes one `Bytes` (a slice of the thread's shared
//! read chunk, see [`crate::readbuf`], no copy), goes through the session and
//! leaves in one write.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use ferry_core::cluster::{BackendId, NoBackend, Route, RouteRequest};
use ferry_core::kill::{Peer, RemoteStatement};
use ferry_core::login::client::TlsOffer;
use ferry_core::login::{ReadUsers, UsersRead};
use ferry_core::packets::ErrPacket;
use ferry_core::query::QueryClient;
use ferry_core::session::{
    BackendHandle, CloseReason, Control, Input, Output, Session, SessionEvent, Transfer,
};
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncWriteExt, FutureExt, Stream};
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::readbuf::read_shared;
use crate::side::SideConn;

/// Opens connections to backends.
pub trait Connector: Send + Sync + 'static {
    /// The backend stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send;
    /// Connects to `addr`.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// Whether connections to `backend` use TLS (its `tls` setting). Default: never.
    fn tls_for(&self, _backend: &BackendId) -> bool {
        false
    }
    /// Upgrades a connection to `backend` (at `addr`) to TLS in place, right
    /// after ferry wrote its SSLRequest. Default: TLS is not available.
    fn start_tls<'a>(
        &'a self,
        _stream: &'a mut Self::Stream,
        backend: &'a BackendId,
        _addr: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        async move {
            Err(io::Error::other(format!(
                "TLS to backend {backend} is not available here"
            )))
        }
    }
}

/// Upgrades client connections of type `C` to TLS (ferry's listener); see [`NoTls`].
pub trait ClientTls<C>: Sync {
    /// What the session's greeting offers.
    fn offer(&self) -> TlsOffer;
    /// Upgrades `client` in place as the TLS server; `early` is what the client
    /// sent after its SSLRequest and was already read.
    fn accept<'a>(
        &'a self,
        client: &'a mut C,
        early: Bytes,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;
}

/// No TLS for clients (the simulator, or no `tls` in the config).
pub struct NoTls;

impl<C: Send> ClientTls<C> for NoTls {
    fn offer(&self) -> TlsOffer {
        TlsOffer::Off
    }

    async fn accept(&self, _client: &mut C, _early: Bytes) -> io::Result<()> {
        Err(io::Error::other("TLS is not configured"))
    }
}

/// How long a TLS handshake may take when the session has no deadline of its own.
const TLS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a TLS upgrade until it ends or `deadline` (the session's next one) passes.
async fn upgrade<T: Clock>(
    clock: &T,
    deadline: Option<ferry_core::Timestamp>,
    upgrade: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    let deadline = deadline.unwrap_or_else(|| clock.now() + TLS_TIMEOUT);
    upgrade
        .or(async {
            clock.sleep_until(deadline).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })
        .await
}

/// Chooses backends and keeps their counts.
pub trait Router: Send + Sync + 'static {
    /// Picks a backend and counts one session on it.
    fn route(&self, req: &RouteRequest) -> Result<Route, NoBackend>;
    /// Stops counting one session routed by `route`.
    fn release(&self, route: &Route);
    /// The session reached a milestone (registry, metrics). Default: nothing.
    fn on_event(&self, _event: &SessionEvent) {}
    /// `data` was read from the client (`from_client`) or the backend. Default: nothing.
    fn on_read(&self, _from_client: bool, _data: &[u8]) {}
    /// The session ended. Default: nothing.
    fn on_close(&self, _reason: &CloseReason) {}
    /// Whether a session routed by `req` may be let in (`max_connections_per_tenant`);
    /// the ERR refuses it. Asked once per session, before [`Router::route`]. Default: yes.
    fn admit(&self, _req: &RouteRequest) -> Result<(), ErrPacket> {
        Ok(())
    }
    /// The client stopped reading for `write_timeout_ms`; the session is being closed. Default: nothing.
    fn on_write_timeout(&self) {}
    /// Moves a session's count to another backend (see [`Transfer`]). Default: refused.
    fn transfer(&self, _transfer: &Transfer) -> Result<Route, String> {
        Err("moving sessions is not supported here".into())
    }
    /// A move failed: counts the session on `original` again instead of `moved`. Default: nothing.
    fn transfer_back(&self, _moved: &Route, _original: &Route) {}
    /// Closes the session with ferry connection id `id` (a KILL through ferry). Default: nothing.
    fn close_session(&self, _id: u32, _why: &str) {}
    /// The live sessions, for a `KILL` to find the one it names. Default: none.
    fn peers(&self) -> Vec<Peer> {
        Vec::new()
    }
    /// The counter of commands passed on to `backend` (QPS). Default: none.
    fn command_counter(&self, _backend: &BackendId) -> Option<Arc<AtomicU64>> {
        None
    }
    /// Reads the user source again for a waiting login. Default: there is none.
    fn read_users(&self, _wanted: &ReadUsers) -> impl Future<Output = UsersRead> + Send {
        async { UsersRead::NoSource }
    }
}

/// Keeps a socket's read parked in the reactor once it said "nothing yet",
/// so it is not polled again (a read syscall that fails with EAGAIN, and a
/// re-arm) every time the other socket has traffic; it is polled again once
/// its own waker fires.
struct ReadGate {
    parked: bool,
    signal: Arc<GateSignal>,
    waker: Waker,
}

/// The waker a parked read holds: notes that it fired, then wakes the task.
#[derive(Default)]
struct GateSignal {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl std::task::Wake for GateSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().expect("gate lock").as_ref() {
            task.wake_by_ref();
        }
    }
}

impl ReadGate {
    fn new() -> Self {
        let signal = Arc::new(GateSignal::default());
        ReadGate {
            parked: false,
            waker: Waker::from(signal.clone()),
            signal,
        }
    }

    fn poll_read<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        {
            // The task's waker first, so a wake-up between here and the check is not lost.
            let mut task = self.signal.task.lock().expect("gate lock");
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if self.parked && !self.signal.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut gated = Context::from_waker(&self.waker);
        let poll = Pin::new(stream).poll_read(&mut gated, buf);
        self.parked = poll.is_pending();
        poll
    }
}

/// Counts the session on its backend until dropped.
struct Lease<'r, R: Router> {
    router: &'r R,
    route: Option<Route>,
}

impl<R: Router> Drop for Lease<'_, R> {
    fn drop(&mut self) {
        if let Some(route) = self.route.take() {
            self.router.release(&route);
        }
    }
}

/// One open backend connection of the session.
struct BackendConn<S> {
    handle: BackendHandle,
    stream: S,
    gate: ReadGate,
}

/// A backend connection being opened: polled beside the sockets, never awaited alone.
type Connecting<'a, S> = (
    BackendHandle,
    Pin<Box<dyn Future<Output = io::Result<S>> + Send + 'a>>,
);

enum Wake {
    Client(io::Result<Bytes>),
    Backend(usize, io::Result<Bytes>),
    Connected(BackendHandle, io::Result<()>),
    Control(Option<Control>),
    Timer,
    Shutdown,
}

/// Runs one session to its end. `conn_id` is for logs; when `shutdown`
/// completes, the session closes at its next safe point; `control` carries
/// commands from the proxy (move, close).
#[allow(clippy::too_many_arguments)]
pub async fn run<C, K, R, T, A>(
    conn_id: u32,
    mut session: Session,
    mut client: C,
    connector: &K,
    router: &R,
    clock: &T,
    shutdown: impl Future<Output = ()>,
    control: async_channel::Receiver<Control>,
    tls: &A,
) -> CloseReason
where
    C: AsyncRead + AsyncWrite + Unpin,
    K: Connector,
    R: Router,
    T: Clock,
    A: ClientTls<C>,
{
    let mut backends: Vec<BackendConn<K::Stream>> = Vec::with_capacity(2);
    let mut connecting: Vec<Connecting<'_, K::Stream>> = Vec::new();
    let mut fresh: Option<(BackendHandle, K::Stream)> = None;
    // Where each backend connection that will need TLS goes (from its Connect).
    let mut tls_routes: Vec<(BackendHandle, Route)> = Vec::new();
    let mut lease = Lease {
        router,
        route: None,
    };
    // The client stopped reading (write_timeout_ms): nothing more is written to it.
    let mut client_stuck = false;
    let mut timer: Option<(ferry_core::Timestamp, Pin<Box<T::Sleep>>)> = None;
    let mut fired: Option<ferry_core::Timestamp> = None;
    let mut backend_first = false;
    let mut client_gate = ReadGate::new();
    let mut shutdown = Some(Box::pin(shutdown));
    let mut control = Some(Box::pin(control));
    let mut commands = crate::metrics::SessionCommands::default();
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::ToClient(bytes) => {
                    if client_stuck {
                        continue;
                    }
                    let limit = session.limits().write_timeout;
                    // Flushed: a TLS stream may hold back the last record otherwise.
                    match write_within(clock, limit, write_flushed(&mut client, &bytes)).await {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            debug!(conn_id, error = %e, "write to client failed");
                            session.handle(clock.now(), Input::ClientClosed);
                        }
                        None => {
                            let ms = limit.map_or(0, |l| l.as_millis());
                            info!(
                                conn_id,
                                write_timeout_ms = ms as u64,
                                "client stopped reading; closed (write_timeout_ms)"
                            );
                            router.on_write_timeout();
                            client_stuck = true;
                            session.handle(clock.now(), Input::ClientClosed);
                        }
                    }
                }
                Output::ToBackend(h, bytes) => {
                    let result = match backends.iter_mut().find(|b| b.handle == h) {
                        Some(b) => write_flushed(&mut b.stream, &bytes).await,
                        None => Err(io::ErrorKind::NotConnected.into()),
                    };
                    if let Err(e) = result {
                        debug!(conn_id, backend = %h, error = %e, "write to backend failed");
                        session.handle(clock.now(), Input::BackendClosed(h));
                    }
                }
                Output::StartTls(early) => {
                    let deadline = session.poll_timeout();
                    let result = upgrade(clock, deadline, tls.accept(&mut client, early)).await;
                    // The handshake's reads took over the socket's waker: poll it afresh.
                    client_gate = ReadGate::new();
                    if let Err(e) = result {
                        info!(conn_id, error = %e, "TLS handshake with the client failed; closed");
                        session.handle(clock.now(), Input::ClientClosed);
                    }
                }
                Output::BackendTls(h) => {
                    let deadline = session.poll_timeout();
                    let route = tls_routes.iter().find(|(t, _)| *t == h).map(|(_, r)| r);
                    let result = match (backends.iter_mut().find(|b| b.handle == h), route) {
                        (Some(b), Some(route)) => {
                            let start =
                                connector.start_tls(&mut b.stream, &route.backend, route.addr);
                            let result = upgrade(clock, deadline, start).await;
                            b.gate = ReadGate::new();
                            result.map_err(|e| {
                                format!("TLS with backend {} failed: {e}", route.backend)
                            })
                        }
                        _ => Err("TLS asked for on a connection that is not open".to_string()),
                    };
                    if let Err(why) = result {
                        warn!(conn_id, backend = %h, reason = %why, "backend TLS failed");
                        session.handle(clock.now(), Input::BackendConnectFailed(h, why));
                    }
                }
                Output::CloseBackend(h) => {
                    tls_routes.retain(|(t, _)| *t != h);
                    connecting.retain(|(c, _)| *c != h);
                    if let Some(i) = backends.iter().position(|b| b.handle == h) {
                        let mut b = backends.swap_remove(i);
                        let _ = b.stream.close().await;
                    }
                }
                Output::Route(req) => {
                    let input = match router.admit(&req).map(|()| router.route(&req)) {
                        Err(err) => Input::Refused(err),
                        Ok(Ok(route)) => {
                            lease.route = Some(route.clone());
                            Input::Routed(route)
                        }
                        Ok(Err(no)) => Input::RouteFailed(no),
                    };
                    session.handle(clock.now(), input);
                }
                Output::Transfer(transfer) => {
                    let result = router.transfer(&transfer);
                    if let Ok(route) = &result {
                        lease.route = Some(route.clone());
                    }
                    session.handle(clock.now(), Input::Transferred(result));
                }
                Output::TransferBack { moved, original } => {
                    router.transfer_back(&moved, &original);
                    lease.route = Some(original);
                }
                Output::RunElsewhere(statement) => {
                    let result = run_elsewhere(connector, clock, statement).await;
                    session.handle(clock.now(), Input::RanElsewhere(result));
                }
                Output::CloseSession { id, why } => router.close_session(id, &why),
                Output::ReadUsers(wanted) => {
                    info!(conn_id, user = %wanted.user, cause = %wanted.cause,
                          "login not verified with the users ferry has; reading them again before deciding");
                    let answer = router.read_users(&wanted).await;
                    session.handle(clock.now(), Input::UsersRead(answer));
                }
                Output::Locate => {
                    let peers = router.peers();
                    session.handle(clock.now(), Input::Located(peers))
                }
                Output::Connect(h, route) => {
                    connecting.push((h, Box::pin(connector.connect(route.addr))));
                    if route.tls {
                        tls_routes.push((h, route));
                    }
                }
                Output::Event(event) => {
                    router.on_event(&event);
                    log_event(conn_id, &event);
                }
                Output::Close(reason) => {
                    if !client_stuck {
                        let _ = client.close().await;
                    }
                    for mut b in backends.drain(..) {
                        let _ = b.stream.close().await;
                    }
                    log_close(conn_id, &reason);
                    router.on_close(&reason);
                    return reason;
                }
            }
        }
        // The commands passed on meanwhile count for the backend the session is on (QPS).
        let backend = lease.route.as_ref().map(|r| &r.backend);
        commands.count(session.commands_forwarded(), backend, |b| {
            router.command_counter(b)
        });
        if let Some((h, stream)) = fresh.take() {
            backends.push(BackendConn {
                handle: h,
                stream,
                gate: ReadGate::new(),
            });
            session.handle(clock.now(), Input::BackendConnected(h));
            continue;
        }

        // A deadline that already fired and was handled is not armed again:
        // a session that keeps it would otherwise make this loop spin.
        let deadline = session.poll_timeout().filter(|d| Some(*d) != fired);
        if timer.as_ref().map(|(d, _)| *d) != deadline {
            timer = deadline.map(|d| (d, Box::pin(clock.sleep_until(d))));
        }
        backend_first = !backend_first;
        let wake = poll_fn(|cx| {
            let mut poll_client = |cx: &mut Context<'_>| {
                read_shared(|room| client_gate.poll_read(cx, &mut client, room)).map(Wake::Client)
            };
            let mut poll_backends = |cx: &mut Context<'_>| {
                for (i, b) in backends.iter_mut().enumerate() {
                    let read = read_shared(|room| b.gate.poll_read(cx, &mut b.stream, room));
                    if let Poll::Ready(r) = read {
                        return Poll::Ready(Wake::Backend(i, r));
                    }
                }
                Poll::Pending
            };
            let first = if backend_first {
                poll_backends(cx)
            } else {
                poll_client(cx)
            };
            if first.is_ready() {
                return first;
            }
            let second = if backend_first {
                poll_client(cx)
            } else {
                poll_backends(cx)
            };
            if second.is_ready() {
                return second;
            }
            for i in 0..connecting.len() {
                if let Poll::Ready(r) = connecting[i].1.as_mut().poll(cx) {
                    let (h, _) = connecting.swap_remove(i);
                    return Poll::Ready(Wake::Connected(
                        h,
                        r.map(|stream| {
                            fresh = Some((h, stream));
                        }),
                    ));
                }
            }
            if let Some(rx) = control.as_mut() {
                if let Poll::Ready(c) = rx.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Control(c));
                }
            }
            if let Some((_, sleep)) = timer.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Timer);
                }
            }
            match shutdown.as_mut() {
                Some(s) => s.as_mut().poll(cx).map(|_| Wake::Shutdown),
                None => Poll::Pending,
            }
        })
        .await;
        let now = clock.now();
        match wake {
            Wake::Client(Err(_)) => session.handle(now, Input::ClientClosed),
            Wake::Client(Ok(data)) if data.is_empty() => session.handle(now, Input::ClientClosed),
            Wake::Client(Ok(data)) => {
                router.on_read(true, &data);
                session.handle(now, Input::ClientData(data))
            }
            Wake::Backend(i, Err(_)) => {
                let b = backends.swap_remove(i);
                session.handle(now, Input::BackendClosed(b.handle))
            }
            Wake::Backend(i, Ok(data)) if data.is_empty() => {
                let b = backends.swap_remove(i);
                session.handle(now, Input::BackendClosed(b.handle))
            }
            Wake::Backend(i, Ok(data)) => {
                let b = &backends[i];
                router.on_read(false, &data);
                session.handle(now, Input::BackendData(b.handle, data))
            }
            Wake::Connected(_, Ok(())) => {}
            Wake::Connected(h, Err(e)) => {
                session.handle(now, Input::BackendConnectFailed(h, e.to_string()))
            }
            Wake::Control(Some(c)) => session.handle(now, Input::Control(c)),
            Wake::Control(None) => control = None,
            Wake::Timer => {
                fired = timer.take().map(|(d, _)| d);
                session.handle(now, Input::Timeout)
            }
            Wake::Shutdown => {
                shutdown = None;
                session.handle(now, Input::Shutdown)
            }
        }
    }
}

fn log_event(conn_id: u32, event: &SessionEvent) {
    match event {
        SessionEvent::LoggedIn {
            login,
            route,
            backend_connection_id,
            ..
        } => info!(
            conn_id,
            tenant = login.tenant.as_deref().unwrap_or(""),
            user = %login.user,
            labels = %login.labels,
            backend = %route.backend,
            backend_connection_id,
            "session logged in"
        ),
        SessionEvent::Moved(report) => {
            let to = report
                .to
                .as_ref()
                .map_or_else(String::new, |b| b.to_string());
            let ms = report.duration.as_secs_f64() * 1000.0;
            match &report.outcome {
                Ok(()) => info!(
                    conn_id,
                    trigger = %report.trigger,
                    from = %report.from,
                    to,
                    duration_ms = format_args!("{ms:.2}"),
                    skipped = ?report.skipped,
                    "session moved"
                ),
                Err((_, why)) => warn!(
                    conn_id,
                    trigger = %report.trigger,
                    from = %report.from,
                    to,
                    duration_ms = format_args!("{ms:.2}"),
                    reason = %why,
                    "session move failed; it stays where it was"
                ),
            }
        }
        SessionEvent::BackendUnreachable { backend, why } => {
            warn!(conn_id, backend = %backend, reason = %why, "backend unreachable for a new connection")
        }
        SessionEvent::BackendVerified { user } => info!(
            conn_id,
            user = %user,
            "ferry does not know this user's password hash: the backend verified the login; the session cannot move until ferry reads the hash"
        ),
        SessionEvent::CredentialRecovered { user } => info!(
            conn_id,
            user = %user,
            "learned the credential of a session the backend verified; it may move again"
        ),
        SessionEvent::Status(_) | SessionEvent::MoveStarted(_) => {}
    }
}

/// Runs `write`, giving up after `limit` (None: no limit); None when it timed out.
async fn write_within<T: Clock, F: Future<Output = io::Result<()>>>(
    clock: &T,
    limit: Option<std::time::Duration>,
    write: F,
) -> Option<io::Result<()>> {
    let Some(limit) = limit else {
        return Some(write.await);
    };
    let sleep = clock.sleep_until(clock.now() + limit);
    async { Some(write.await) }
        .or(async {
            sleep.await;
            None
        })
        .await
}

/// How long a statement on another backend (a KILL) may take.
const ELSEWHERE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a client's statement on another backend over a side connection, logged in as the client.
async fn run_elsewhere<K: Connector, T: Clock>(
    connector: &K,
    clock: &T,
    statement: RemoteStatement,
) -> Result<Result<(), ErrPacket>, String> {
    let backend = statement.backend.clone();
    let attempt = async {
        let client = QueryClient::with_secret(&statement.user, statement.secret);
        let id = BackendId(statement.backend.clone());
        let mut conn = SideConn::open(connector, &id, statement.addr, client).await?;
        let answer = conn.query(&statement.sql).await?;
        conn.quit().await;
        Ok(answer.map(|_| ()))
    };
    let deadline = clock.now() + ELSEWHERE_TIMEOUT;
    let sleep = clock.sleep_until(deadline);
    attempt
        .or(async {
            sleep.await;
            Err("timed out".to_string())
        })
        .await
        .map_err(|why: String| format!("could not run the statement on backend {backend}: {why}"))
}

/// Writes all of `bytes` and flushes.
async fn write_flushed<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

fn log_close(conn_id: u32, reason: &CloseReason) {
    match reason {
        CloseReason::ClientClosed => debug!(conn_id, "session closed by client"),
        CloseReason::BackendClosed => info!(conn_id, "backend closed the session"),
        CloseReason::LoginTimeout => info!(conn_id, "client did not log in in time; closed"),
        CloseReason::LoginRefused(why) => info!(conn_id, reason = %why, "login refused"),
        CloseReason::ProtocolError(why) => {
            warn!(conn_id, reason = %why, "client protocol error; closed")
        }
        CloseReason::BackendProtocolError(why) => {
            warn!(conn_id, reason = %why, "backend protocol error; closed")
        }
        CloseReason::Shutdown => {
            info!(conn_id, "shutting down: closed the session at a safe point")
        }
        CloseReason::Closed(why) => info!(conn_id, reason = %why, "session closed by ferry"),
        CloseReason::IdleTimeout => info!(
            conn_id,
            "session idle longer than idle_timeout_ms; closed with ERR 4031"
        ),
    }
}

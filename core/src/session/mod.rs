//! One client connection: login → route → backend login → forward → move → close.
//!
//! Events go in with [`Session::handle`]; what to do comes out of
//! [`Session::poll_output`]; [`Session::poll_timeout`] is the next deadline.
//! Every backend input and output names its connection with a
//! [`BackendHandle`]: while a session moves it holds two.

pub mod client_trackers;
mod compression;
pub mod forward;
pub mod injected;
pub mod kill;
pub mod login;
pub mod migrate;
pub mod restore;
pub mod state;
pub mod tracker;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use zeroize::Zeroize;

use crate::auth::NATIVE_PASSWORD;
use crate::cluster::{BackendId, NoBackend, Route, RouteRequest};
use crate::config::UnverifiedLogins;
use crate::errors;
use crate::forward::{Forward, Send, SessionStatus};
use crate::injected::{Injected, Reply, Request};
use crate::kill::{Peer, RemoteStatement};
use crate::labels::parse_login_name;
use crate::labels::LoginName;
use crate::limits::{IdleTimer, SessionLimits};
use crate::login::backend::{BackendLogin, BackendSession, BackendStep};
use crate::login::change_user::{ChangeReply, Relayed};
use crate::login::client::{ClientLogin, ClientStep, Greeting, VerifiedBy, VerifiedClient};
use crate::login::{err_frame, frame, LoginPolicy, ReadUsers, UsersRead};
use crate::migrate::{
    Move, ReadError, ReadStep, Restoring, SourceRead, StateRead, Target, TargetPhase,
};
use crate::packets::flags::caps::{CLIENT_COMPRESS, CLIENT_CONNECT_WITH_DB};
use crate::packets::flags::command::{COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA};
use crate::packets::ChangeUser;
use crate::packets::ErrPacket;
use crate::restore::{OnError, Step};
use crate::users::UserDirectory;
use crate::wire::{frame_header, FrameError, PacketDecoder, HEADER_LEN, MAX_FRAME_PAYLOAD};
use crate::Timestamp;

pub use crate::migrate::{BackendHandle, MoveFailure, MoveReport, MoveRequest, Trigger};

/// Largest packet accepted while logging in: logins are small, and garbage must not make us allocate.
const LOGIN_MAX_PACKET: usize = 64 * 1024;

/// How many other backends a new login tries when its backend cannot be reached.
const LOGIN_RETRIES: u8 = 2;

/// Limits a session runs under.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// How long the client has to log in.
    pub login_timeout: Duration,
    /// How long a backend has to connect and accept the login (also the limit for a whole move).
    pub backend_timeout: Duration,
    /// Largest packet accepted from a peer.
    pub max_packet_size: usize,
    /// How long a session whose move failed waits before it tries again.
    pub move_backoff: Duration,
    /// What happens to logins ferry cannot verify with the users it has.
    pub logins: LoginPolicy,
    /// Backends whose connections stay uncompressed even for a compressed client.
    pub uncompressed_backends: BTreeSet<BackendId>,
    /// Idle and write timeouts, memory (`limits` in the config).
    pub limits: SessionLimits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            login_timeout: Duration::from_secs(10),
            backend_timeout: Duration::from_secs(5),
            max_packet_size: 64 << 20,
            move_backoff: Duration::from_secs(5),
            logins: LoginPolicy::default(),
            uncompressed_backends: BTreeSet::new(),
            limits: SessionLimits::default(),
        }
    }
}

/// A command for a session from the rest of the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Move at the next safe point.
    Migrate(MoveRequest),
    /// Close now, telling the client why (e.g. its backend was drained and the drain timed out).
    Close(String),
    /// The users were read again: a session the backend verified may now learn its credential.
    Users(Arc<UserDirectory>),
    /// A KILL named the session and its backend thread is gone: close, the client just loses the connection.
    Kill(String),
}

/// An event for the session.
#[derive(Clone, Debug)]
pub enum Input {
    /// Bytes read from the client.
    ClientData(Bytes),
    /// The client closed its side (or the connection broke).
    ClientClosed,
    /// The cluster chose a backend (and counts the session on it).
    Routed(Route),
    /// No backend can take the session.
    RouteFailed(NoBackend),
    /// The answer to [`Output::Transfer`]: the session's count moved to this route, or why not.
    Transferred(Result<Route, String>),
    /// A backend connection is up.
    BackendConnected(BackendHandle),
    /// A backend connection could not be made.
    BackendConnectFailed(BackendHandle, String),
    /// Bytes read from a backend connection.
    BackendData(BackendHandle, Bytes),
    /// A backend connection closed (or broke).
    BackendClosed(BackendHandle),
    /// A command from the proxy.
    Control(Control),
    /// A deadline from [`Session::poll_timeout`] may have passed.
    Timeout,
    /// The proxy is shutting down: close at the next safe point.
    Shutdown,
    /// The live sessions, the answer to [`Output::Locate`].
    Located(Vec<Peer>),
    /// How [`Output::RunElsewhere`] went: done, the backend's ERR, or why it could not be run.
    RanElsewhere(Result<Result<(), ErrPacket>, String>),
    /// The answer to [`Output::ReadUsers`].
    UsersRead(UsersRead),
    /// The proxy refuses the session while it logs in (a limit): send the client this and close.
    Refused(ErrPacket),
}

/// A request to move the session's count from one backend to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Where the session is counted now.
    pub from: Route,
    /// Its tenant and labels (the target must serve them).
    pub request: RouteRequest,
    /// The backend asked for, if any; otherwise any eligible one but `from`.
    pub to: Option<BackendId>,
}

/// Something for the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the client.
    ToClient(Bytes),
    /// Write these bytes to a backend connection.
    ToBackend(BackendHandle, Bytes),
    /// Upgrade the client connection to TLS as the server. The bytes are what
    /// the client sent after its SSLRequest (the start of its TLS handshake),
    /// already read; what the client sends next arrives decrypted. No answer;
    /// if the upgrade fails, feed [`Input::ClientClosed`].
    StartTls(Bytes),
    /// Upgrade this backend connection to TLS as the client (ferry has just
    /// written its SSLRequest); the next bytes for it go over TLS. No answer;
    /// if the upgrade fails, feed [`Input::BackendConnectFailed`] naming TLS.
    BackendTls(BackendHandle),
    /// Ask the cluster for a backend; answer with [`Input::Routed`] or [`Input::RouteFailed`].
    Route(RouteRequest),
    /// Move the session's count to another backend; answer with [`Input::Transferred`].
    Transfer(Transfer),
    /// A move failed: count the session on `original` again instead of `moved`. No answer.
    TransferBack {
        /// Where the count went.
        moved: Route,
        /// Where it belongs.
        original: Route,
    },
    /// Open a backend connection; answer with [`Input::BackendConnected`] or [`Input::BackendConnectFailed`].
    Connect(BackendHandle, Route),
    /// Close a backend connection (after writing what was queued for it). No answer.
    CloseBackend(BackendHandle),
    /// List the live sessions, to find the one a `KILL` names; answer with [`Input::Located`].
    Locate,
    /// Run a statement on another backend as this client; answer with [`Input::RanElsewhere`].
    RunElsewhere(RemoteStatement),
    /// Read the user source again (a login waits); answer with [`Input::UsersRead`].
    ReadUsers(ReadUsers),
    /// Close another session (a `KILL CONNECTION` through ferry). No answer.
    CloseSession {
        /// Its ferry connection id.
        id: u32,
        /// Why, for its client and the logs.
        why: String,
    },
    /// The session is over: flush what was queued, close every connection, release the route.
    Close(CloseReason),
    /// Something worth logging or counting.
    Event(SessionEvent),
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away (or sent COM_QUIT and the backend closed).
    ClientClosed,
    /// The backend went away and the session could not continue elsewhere.
    BackendClosed,
    /// The client did not log in in time.
    LoginTimeout,
    /// The login was refused; the client got an ERR.
    LoginRefused(String),
    /// The client broke the protocol.
    ProtocolError(String),
    /// The backend broke the protocol (or ferry could not follow it).
    BackendProtocolError(String),
    /// The proxy is shutting down and the session reached a safe point.
    Shutdown,
    /// The proxy closed it (a drain timed out); the client got an ERR saying why.
    Closed(String),
    /// No traffic for `idle_timeout_ms` while no command ran; the client got ERR 4031.
    IdleTimeout,
}

/// The client's login request, without any secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginDetails {
    /// The user name as the client sent it (tenant and labels included).
    pub user: String,
    /// The initial database.
    pub database: Option<String>,
    /// The capabilities in force with the client.
    pub capabilities: u32,
    /// The collation the client asked for.
    pub collation: u8,
    /// Connection attributes, in the order sent.
    pub attributes: Vec<(String, String)>,
}

/// A milestone of the session, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The client is verified and the backend accepted the login.
    LoggedIn {
        /// Who.
        login: LoginName,
        /// Where.
        route: Route,
        /// The backend's thread id.
        backend_connection_id: u32,
        /// What the client asked for at login, without its auth response
        /// (for `ferry --record`).
        client: Box<LoginDetails>,
    },
    /// A response completed and the session's status changed.
    Status(SessionStatus),
    /// A move started.
    MoveStarted(Trigger),
    /// A move ended (moved, or stayed where it was).
    Moved(MoveReport),
    /// A backend could not be reached for a new connection (passive health).
    BackendUnreachable {
        /// Which.
        backend: BackendId,
        /// Why.
        why: String,
    },
    /// The backend verified the login of a user whose hash ferry does not know.
    BackendVerified {
        /// The user name as the client sent it.
        user: String,
    },
    /// ferry learned the credential of a session the backend verified: it may move again.
    CredentialRecovered {
        /// The user name as the client sent it.
        user: String,
    },
}

#[derive(Debug)]
enum State {
    ClientLogin(ClientLogin),
    Routing(Box<VerifiedClient>),
    BackendLogin(Box<BackendPhase>),
    Forwarding(Box<Forwarding>),
    Closed,
}

/// A verified client waiting for its backend login.
#[derive(Debug)]
struct BackendPhase {
    client: VerifiedClient,
    route: Route,
    handle: BackendHandle,
    login: BackendLogin,
    rx: PacketDecoder,
    /// Other backends tried so far because this one could not be reached.
    retries: u8,
    /// Waiting for [`Input::Transferred`] after a failed connect.
    rerouting: Option<String>,
    /// A login the backend verifies: the backend's salt, relayed to the
    /// client, while its answer is awaited.
    relayed_salt: Option<Vec<u8>>,
}

/// A logged-in session: forwarding, and moving when asked.
#[derive(Debug)]
struct Forwarding {
    forward: Forward,
    identity: Identity,
    /// The backend connection in use.
    backend: BackendHandle,
    /// Its thread id on the backend.
    backend_thread: u32,
    /// A move asked for and not yet started (it waits for a safe point).
    request: Option<MoveRequest>,
    /// No move starts before this (after a failed one).
    retry_after: Option<Timestamp>,
    moving: Option<Box<Move>>,
    /// The backend died with a transaction open or state that cannot move:
    /// the client's next command gets this and the connection closes.
    lost: Option<ErrPacket>,
    /// ferry reads back user variables a `SET` changed, so that it knows them
    /// if the backend dies; client bytes wait meanwhile.
    refresh: Option<(StateRead, BytesMut)>,
    /// The client sent more than ferry holds while ferry's own answers were
    /// due (`refresh`, `draining`): its bytes now go on at once; the server
    /// answers ferry first, then the client.
    passing: bool,
    /// Transfers asked of the cluster and not yet answered: where each took the count from.
    transfers: VecDeque<Route>,
    /// A failed move's question to the backend in use (the user variables),
    /// not yet answered: the answer is ferry's, so it is read and dropped,
    /// and client bytes wait behind it.
    draining: Option<Box<Draining>>,
    /// Commands ferry handles alone (KILL, COM_CHANGE_USER), held until they may go.
    intercept: crate::kill::Intercept,
}

/// The rest of ferry's own question on the backend in use, and the client bytes waiting for it.
#[derive(Debug)]
struct Draining {
    injected: Injected,
    held: BytesMut,
}

/// A logged-in client, its route and its backend's salt (for COM_CHANGE_USER, KILL and moves).
#[derive(Debug)]
struct Identity {
    client: VerifiedClient,
    route: Route,
    backend_salt: Vec<u8>,
    /// A COM_CHANGE_USER waiting for the users to be read again, and what the client sent since.
    parked_change_user: Option<(Bytes, BytesMut)>,
    /// A COM_CHANGE_USER was passed on: its reply may carry an auth switch to
    /// remember, and the verdict of a backend that verifies the new user.
    change_reply: Option<ChangeReply>,
    /// The salt of the last auth switch the client answered (a relayed login
    /// or COM_CHANGE_USER): it scrambles its next COM_CHANGE_USER with it.
    client_salt: Option<Vec<u8>>,
}

/// The state machine of one client connection.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    users: Arc<UserDirectory>,
    state: State,
    client_rx: PacketDecoder,
    outputs: VecDeque<Output>,
    login_deadline: Option<Timestamp>,
    backend_deadline: Option<Timestamp>,
    shutting_down: bool,
    last_status: SessionStatus,
    peer_host: String,
    next_handle: u32,
    /// The time of the event being handled.
    now: Timestamp,
    /// The connection id ferry gave the client.
    id: u32,
    /// The compressed links (client, backends): plain packets inside, frames outside.
    compression: compression::Compression,
    /// Since when the session has had no traffic (`idle_timeout_ms`).
    idle: IdleTimer,
}

/// The payload if `data` is exactly one command packet (clients send short commands in one write).
fn one_command(data: &[u8]) -> Option<&[u8]> {
    match frame_header(data) {
        Some((len, 0)) if data.len() == HEADER_LEN + len && len < MAX_FRAME_PAYLOAD => {
            Some(&data[HEADER_LEN..])
        }
        _ => None,
    }
}

/// True if `data` is whole command packets none of which gets a response
/// (`COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`).
fn only_unanswered(mut data: &[u8]) -> bool {
    while let Some((len, 0)) = frame_header(data) {
        let end = HEADER_LEN + len;
        let unanswered = matches!(
            data.get(HEADER_LEN),
            Some(&(COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA))
        );
        if len >= MAX_FRAME_PAYLOAD || data.len() < end || !unanswered {
            return false;
        }
        data = &data[end..];
        if data.is_empty() {
            return true;
        }
    }
    false
}

impl Session {
    /// A new session for a client at `peer_host`; its handshake is the first output.
    pub fn new(
        now: Timestamp,
        config: SessionConfig,
        greeting: Greeting,
        users: Arc<UserDirectory>,
        peer_host: String,
    ) -> Self {
        let greeting_id = greeting.connection_id;
        let (login, handshake) = ClientLogin::start(greeting, peer_host.clone());
        let login_max = LOGIN_MAX_PACKET.min(config.max_packet_size);
        let config_max_packet = config.max_packet_size;
        let mut session = Session {
            login_deadline: Some(now + config.login_timeout),
            backend_deadline: None,
            idle: IdleTimer::new(config.limits.idle_timeout, now),
            config,
            users,
            state: State::ClientLogin(login),
            client_rx: PacketDecoder::new(login_max),
            outputs: VecDeque::new(),
            shutting_down: false,
            last_status: SessionStatus::default(),
            peer_host,
            next_handle: 0,
            now,
            id: greeting_id,
            compression: compression::Compression::new(config_max_packet),
        };
        session.outputs.push_back(Output::ToClient(handshake));
        session
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Timestamp, input: Input) {
        self.now = now;
        if matches!(input, Input::ClientData(_) | Input::BackendData(..)) {
            self.idle.touch(now);
        }
        let Some(input) = self.inflate(input) else {
            return;
        };
        match input {
            Input::ClientData(data) => self.on_client_data(now, data),
            Input::BackendData(h, data) => self.on_backend_data(now, h, data),
            Input::Routed(route) => self.on_routed(now, route),
            Input::RouteFailed(no) => self.on_route_failed(no),
            Input::Transferred(result) => self.on_transferred(now, result),
            Input::BackendConnected(h) => self.on_backend_connected(h),
            Input::BackendConnectFailed(h, why) => self.on_backend_lost(now, h, Some(why)),
            Input::BackendClosed(h) => self.on_backend_lost(now, h, None),
            Input::ClientClosed => self.on_client_closed(now),
            Input::Control(Control::Migrate(request)) => self.on_migrate(now, request),
            Input::Control(Control::Close(why)) => self.on_close_request(why),
            Input::Control(Control::Users(users)) => self.on_users(now, UsersRead::Read(users)),
            Input::UsersRead(answer) => self.on_users(now, answer),
            Input::Control(Control::Kill(why)) => self.on_killed(why),
            Input::Timeout => self.on_timeout(now),
            Input::Shutdown => self.on_shutdown(),
            Input::Located(peers) => self.on_located(peers),
            Input::RanElsewhere(result) => self.on_ran_elsewhere(result),
            Input::Refused(err) => {
                if !self.is_forwarding() {
                    let why = err.message.clone();
                    self.refuse(err, self.client_seq(), why);
                }
            }
        }
        self.resume_intercept();
    }

    /// The next thing to do, if any. Drain after every [`Session::handle`].
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.outputs.pop_front()?;
        Some(self.compression.output(output))
    }

    /// When [`Input::Timeout`] should next be fed.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let mut deadlines = vec![self.login_deadline, self.backend_deadline];
        if let State::Forwarding(f) = &self.state {
            deadlines.push(f.moving.as_ref().map(|m| m.deadline));
            deadlines.push(f.intercept.killed_deadline());
            if f.request.is_some() && f.moving.is_none() {
                // Only a wait still ahead: a passed one is cleared by the timeout.
                deadlines.push(f.retry_after.filter(|t| *t > self.now));
            }
            if Self::is_quiet(f) {
                deadlines.push(self.idle.deadline());
            }
        }
        deadlines.into_iter().flatten().min()
    }

    /// The limits the session runs under (the driver enforces the write timeout).
    pub fn limits(&self) -> &SessionLimits {
        &self.config.limits
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True while forwarding between client and backend.
    pub fn is_forwarding(&self) -> bool {
        matches!(self.state, State::Forwarding(_))
    }

    /// True while the session is moving to another backend.
    pub fn is_moving(&self) -> bool {
        matches!(&self.state, State::Forwarding(f) if f.moving.is_some())
    }

    /// The backend connection in use (during a move: the one it moves from).
    pub fn backend(&self) -> Option<BackendHandle> {
        match &self.state {
            State::BackendLogin(p) => Some(p.handle),
            State::Forwarding(f) => Some(f.backend),
            _ => None,
        }
    }

    /// Client commands passed on since the login (0 before it forwards and after it closed).
    pub fn commands_forwarded(&self) -> u64 {
        match &self.state {
            State::Forwarding(f) => f.forward.commands(),
            _ => 0,
        }
    }

    /// Where the session stands (in a transaction, safe, blockers); `None` before it forwards.
    pub fn status(&self) -> Option<SessionStatus> {
        match &self.state {
            State::Forwarding(f) => Some(f.forward.status()),
            _ => None,
        }
    }

    /// The session state ferry keeps (for tests and diagnostics); `None` before it forwards.
    pub fn session_state(&self) -> Option<&crate::state::SessionState> {
        match &self.state {
            State::Forwarding(f) => Some(f.forward.state()),
            _ => None,
        }
    }

    fn new_handle(&mut self) -> BackendHandle {
        let h = BackendHandle(self.next_handle);
        self.next_handle += 1;
        h
    }

    fn on_client_data(&mut self, now: Timestamp, data: Bytes) {
        if let State::Forwarding(f) = &mut self.state {
            if let Some(change) = f.identity.change_reply.as_mut() {
                change.from_client(&data);
            }
        }
        let held_limit = self.config.limits.memory.held;
        match &mut self.state {
            State::Forwarding(f) if f.identity.parked_change_user.is_some() => {
                let (_, held) = f.identity.parked_change_user.as_mut().expect("checked");
                held.extend_from_slice(&data);
            }
            State::BackendLogin(p) if p.relayed_salt.is_some() => {
                self.client_rx.extend(&data);
                self.drive_relayed_reply();
            }
            State::Forwarding(f) if f.lost.is_some() => match one_command(&data) {
                // No answer is due to these: none is made up; the next command hears it.
                _ if only_unanswered(&data) => {}
                Some([COM_QUIT, ..]) => self.close(CloseReason::ClientClosed),
                _ => {
                    let err = f.lost.take().expect("checked");
                    self.outputs.push_back(Output::ToClient(err_frame(&err, 1)));
                    self.close(CloseReason::BackendClosed);
                }
            },
            State::Forwarding(f) if f.draining.is_some() && !f.passing => {
                // The backend still owes ferry an answer; the command goes after it.
                let d = f.draining.as_mut().expect("checked");
                d.held.extend_from_slice(&data);
                if d.held.len() > held_limit {
                    self.pass_through();
                }
            }
            State::Forwarding(f) if f.refresh.is_some() && !f.passing => {
                let (_, held) = f.refresh.as_mut().expect("checked");
                held.extend_from_slice(&data);
                if held.len() > held_limit {
                    self.pass_through();
                }
            }
            State::Forwarding(f) if f.moving.is_some() => {
                // The command waits for the move (never longer than the move itself).
                let m = f.moving.as_mut().expect("checked");
                m.held.extend_from_slice(&data);
                m.held_since.get_or_insert(now);
                if m.held.len() > held_limit {
                    self.fail_move(
                        now,
                        MoveFailure::Client,
                        "the client sent more than ferry holds during a move".into(),
                    );
                }
            }
            // Commands ferry answers or rewrites itself wait for the answers before them.
            State::Forwarding(_) => self.client_commands(data),
            State::ClientLogin(_) => {
                self.client_rx.extend(&data);
                self.drive_client_login();
            }
            // Clients wait for the login result; bytes now are a protocol violation.
            State::Routing(_) | State::BackendLogin(..) => self.close(CloseReason::ProtocolError(
                "client sent data before its login finished".into(),
            )),
            State::Closed => {}
        }
    }

    fn drive_client_login(&mut self) {
        while let State::ClientLogin(login) = &mut self.state {
            let packet = match self.client_rx.decode() {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => return self.client_frame_error(e),
            };
            let step = login.handle(packet, &self.users, self.config.logins);
            self.client_login_step(step);
        }
    }

    fn client_login_step(&mut self, step: ClientStep) {
        match step {
            ClientStep::Send(bytes) => self.outputs.push_back(Output::ToClient(bytes)),
            ClientStep::StartTls => {
                let early = self.client_rx.take_remaining().freeze();
                self.outputs.push_back(Output::StartTls(early));
            }
            ClientStep::Refuse(err, why) => {
                self.outputs.push_back(Output::ToClient(err));
                self.close(CloseReason::LoginRefused(why));
            }
            ClientStep::Verified(client) => {
                self.login_deadline = None;
                self.outputs.push_back(Output::Route(RouteRequest {
                    tenant: client.login.tenant.clone(),
                    labels: client.login.labels.clone(),
                }));
                self.state = State::Routing(client);
            }
            // Parked: the answer comes as `Input::UsersRead`.
            ClientStep::ReadUsers(wanted) => self.outputs.push_back(Output::ReadUsers(wanted)),
        }
    }

    fn client_frame_error(&mut self, e: FrameError) {
        let err = match e {
            FrameError::TooLarge { .. } => errors::packet_too_large(),
            FrameError::BadSequence { .. } => errors::malformed_packet(&e.to_string()),
        };
        self.outputs.push_back(Output::ToClient(err_frame(&err, 2)));
        self.close(CloseReason::ProtocolError(e.to_string()));
    }

    /// A login to `client`'s backend: the saved response, the bare user, the
    /// recovered secret; compressed if the client is and `compress` allows.
    fn backend_login(
        client: &VerifiedClient,
        database: Option<String>,
        compress: bool,
        route: &Route,
    ) -> BackendLogin {
        let mut template = client.response.clone();
        template.user = client.login.user.clone();
        template.database = database;
        let mut caps = client.capabilities;
        if !compress {
            caps &= !CLIENT_COMPRESS;
        }
        if matches!(client.verified_by, VerifiedBy::Backend(_)) {
            // Only a first login gets here (a session the backend verified does not move).
            return BackendLogin::relayed(template, caps, true).with_tls(route.tls);
        }
        BackendLogin::new(template, client.secret.clone(), caps, true).with_tls(route.tls)
    }

    fn on_routed(&mut self, now: Timestamp, route: Route) {
        let State::Routing(client) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        self.backend_deadline = Some(now + self.config.backend_timeout);
        let handle = self.new_handle();
        self.outputs
            .push_back(Output::Connect(handle, route.clone()));
        let compress = self.config.compresses_to(&route.backend);
        let login =
            Self::backend_login(&client, client.response.database.clone(), compress, &route);
        self.state = State::BackendLogin(Box::new(BackendPhase {
            client: *client,
            route,
            handle,
            login,
            rx: PacketDecoder::new(LOGIN_MAX_PACKET.min(self.config.max_packet_size)),
            retries: 0,
            rerouting: None,
            relayed_salt: None,
        }));
    }

    fn on_route_failed(&mut self, no: NoBackend) {
        let State::Routing(client) = &self.state else {
            return;
        };
        let err = errors::no_backend(no.tenant.as_deref(), &no.labels);
        self.refuse(err, client.next_seq, "no backend".into());
    }

    fn on_transferred(&mut self, now: Timestamp, result: Result<Route, String>) {
        match &mut self.state {
            State::BackendLogin(phase) => {
                let Some(why) = phase.rerouting.take() else {
                    return;
                };
                match result {
                    Ok(route) => {
                        let handle = self.new_handle();
                        let phase = match &mut self.state {
                            State::BackendLogin(p) => p,
                            _ => unreachable!("checked above"),
                        };
                        phase.route = route.clone();
                        phase.handle = handle;
                        phase.rx =
                            PacketDecoder::new(LOGIN_MAX_PACKET.min(self.config.max_packet_size));
                        phase.login = Self::backend_login(
                            &phase.client,
                            phase.client.response.database.clone(),
                            self.config.compresses_to(&phase.route.backend),
                            &route,
                        );
                        self.backend_deadline = Some(now + self.config.backend_timeout);
                        self.outputs.push_back(Output::Connect(handle, route));
                    }
                    // No other backend: the client hears about the first one.
                    Err(_) => self.fail_login(&why),
                }
            }
            State::Forwarding(f) => {
                // Answers come in the order the transfers were asked for; only
                // the last one asked can belong to the move waiting for a target.
                let Some(from) = f.transfers.pop_front() else {
                    return;
                };
                let waiting = f.moving.as_ref().is_some_and(|m| m.target.is_none());
                if !waiting || !f.transfers.is_empty() {
                    // Its move is over (it timed out first): the count goes back
                    // where it was taken from.
                    if let Ok(moved) = result {
                        self.outputs.push_back(Output::TransferBack {
                            moved,
                            original: from,
                        });
                    }
                    return;
                }
                let m = f.moving.as_mut().expect("checked");
                let route = match result {
                    Ok(route) => route,
                    Err(why) => return self.fail_move(now, MoveFailure::NoTarget, why),
                };
                let handle = BackendHandle(self.next_handle);
                self.next_handle += 1;
                let compress = self.config.compresses_to(&route.backend);
                let login = Self::backend_login(&f.identity.client, None, compress, &route);
                m.target = Some(Target {
                    handle,
                    route: route.clone(),
                    rx: PacketDecoder::new(self.config.max_packet_size),
                    phase: TargetPhase::Connecting(Box::new(login)),
                });
                self.outputs.push_back(Output::Connect(handle, route));
                if matches!(m.source, SourceRead::NotStarted) {
                    // Read what only the source knows meanwhile: the client is idle, the source too.
                    let (read, bytes) = StateRead::start(
                        f.forward.backend_caps(),
                        self.config.max_packet_size,
                        self.config.limits.memory.injected_rows,
                    );
                    m.source = SourceRead::Reading(Box::new(read));
                    self.outputs.push_back(Output::ToBackend(f.backend, bytes));
                }
            }
            _ => {}
        }
    }

    fn on_backend_connected(&mut self, h: BackendHandle) {
        let wanted = match &mut self.state {
            State::BackendLogin(phase) => phase.handle == h,
            State::Forwarding(f) => match f.moving.as_mut().and_then(|m| m.target.as_mut()) {
                Some(t) if t.handle == h => {
                    if let TargetPhase::Connecting(login) = std::mem::replace(
                        &mut t.phase,
                        TargetPhase::Connecting(Box::new(placeholder_login())),
                    ) {
                        t.phase = TargetPhase::LoggingIn(login);
                    }
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !wanted {
            // Opened for a login or a move that has given up on it meanwhile.
            self.outputs.push_back(Output::CloseBackend(h));
        }
    }

    fn on_backend_data(&mut self, now: Timestamp, h: BackendHandle, data: Bytes) {
        match &mut self.state {
            State::BackendLogin(phase) if phase.handle == h => {
                phase.rx.extend(&data);
                self.drive_backend_login();
            }
            State::Forwarding(f) => {
                if h == f.backend && f.draining.is_some() {
                    return self.on_drain_data(now, data);
                }
                if let Some(m) = f.moving.as_mut() {
                    if m.target.as_ref().is_some_and(|t| t.handle == h) {
                        return self.on_target_data(now, data);
                    }
                    if h == f.backend && matches!(m.source, SourceRead::Reading(_)) {
                        return self.on_source_data(now, data);
                    }
                }
                if h != f.backend {
                    // A connection the session already left.
                    return;
                }
                if f.identity.change_reply.is_some() {
                    login::change_user::watch_reply(
                        &mut f.identity,
                        &mut f.forward,
                        &data,
                        &mut self.outputs,
                    );
                }
                if let Some((read, _)) = f.refresh.as_mut() {
                    let step = read.feed(&data);
                    if let Err(ReadError::Protocol(e)) = step {
                        return self.close(CloseReason::BackendProtocolError(format!(
                            "reading user variables back: {e}"
                        )));
                    }
                    if let Ok(ReadStep::Pending) = step {
                        return;
                    }
                    if let Ok(ReadStep::Send(bytes)) = step {
                        self.outputs.push_back(Output::ToBackend(h, bytes));
                        return;
                    }
                    let (mut read, held) = f.refresh.take().expect("checked");
                    match step {
                        Ok(ReadStep::Done(values, last_insert_id)) => f
                            .forward
                            .state_mut()
                            .set_server_values(values, last_insert_id),
                        // ferry's own question failed, not the client's: the values
                        // stay unknown and ferry stops asking after each SET.
                        Err(ReadError::Answer(_)) => {
                            f.forward.state_mut().server_values_unreadable()
                        }
                        // Left unknown until the next read.
                        _ => {}
                    }
                    if read.outstanding() > 0 {
                        // The rest of the answer comes first; the client's bytes wait for it.
                        let injected = read.into_queue();
                        f.draining = Some(Box::new(Draining { injected, held }));
                        return;
                    }
                    let rest = read.take_rest();
                    f.passing = false;
                    if !held.is_empty() {
                        self.on_client_data(now, held.freeze());
                    } else {
                        self.try_move(now);
                    }
                    if !rest.is_empty() {
                        self.on_backend_data(now, h, rest.freeze());
                    }
                    return;
                }
                let start = self.outputs.len();
                let outputs = &mut self.outputs;
                match f
                    .forward
                    .from_server(data, &mut |s| outputs.push_back(to_output(s, h)))
                {
                    Ok(()) => self.after_tracking(now, start),
                    Err(e) => self.close(CloseReason::BackendProtocolError(e.to_string())),
                }
            }
            _ => {}
        }
    }

    fn drive_backend_login(&mut self) {
        while let State::BackendLogin(phase) = &mut self.state {
            let packet = match phase.rx.decode() {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => return self.fail_login(&e.to_string()),
            };
            let h = phase.handle;
            let step = phase.login.handle(packet);
            if phase.login.compressed() {
                let queued = self.outputs.len();
                if let Err(e) = self.compression.start_backend(h, queued, &mut phase.rx) {
                    return self.fail_login(&e.to_string());
                }
            }
            match step {
                BackendStep::Send(bytes) => self.outputs.push_back(Output::ToBackend(h, bytes)),
                BackendStep::StartTls(request, response) => self.backend_tls(h, request, response),
                BackendStep::Wait => {}
                BackendStep::Done(backend) => return self.logged_in(*backend),
                BackendStep::Refused(err) => {
                    let seq = self.client_seq();
                    let why = self.backend_refusal(&err);
                    return self.refuse(err, seq, why);
                }
                BackendStep::AskClient(salt) => return self.relay_challenge(salt),
                BackendStep::Failed(why) => return self.fail_login(&why),
            }
        }
    }

    /// SSLRequest, upgrade, then the handshake response over TLS: in this order.
    fn backend_tls(&mut self, h: BackendHandle, request: Bytes, response: Bytes) {
        self.outputs.push_back(Output::ToBackend(h, request));
        self.outputs.push_back(Output::BackendTls(h));
        self.outputs.push_back(Output::ToBackend(h, response));
    }

    fn logged_in(&mut self, backend: BackendSession) {
        let State::BackendLogin(phase) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let BackendPhase {
            client,
            route,
            handle,
            mut rx,
            ..
        } = *phase;
        let mut forward = Forward::new(
            client.capabilities,
            &backend,
            client.response.database.clone(),
        );
        forward.set_client_mariadb_caps(client.response.mariadb_capabilities, &backend);
        forward.set_client_packet_limit(self.config.max_packet_size as u64);
        forward.set_pipeline_limit(self.config.limits.memory.pipelined);
        let mut ok = BytesMut::new();
        backend.ok.write(&mut ok, client.capabilities);
        self.outputs
            .push_back(Output::ToClient(frame(&ok, client.next_seq)));
        if client.capabilities & CLIENT_COMPRESS != 0 {
            // The OK is the last plain packet: the client compresses from its first command.
            self.compression.start_client(self.outputs.len());
        }
        self.outputs
            .push_back(Output::Event(SessionEvent::LoggedIn {
                login: client.login.clone(),
                route: route.clone(),
                backend_connection_id: backend.handshake.connection_id,
                client: Box::new(LoginDetails {
                    user: client.response.user.clone(),
                    database: client.response.database.clone(),
                    capabilities: client.capabilities,
                    collation: client.response.collation,
                    attributes: client.response.attributes.clone(),
                }),
            }));
        let intercept = crate::kill::Intercept::new(client.capabilities);
        self.state = State::Forwarding(Box::new(Forwarding {
            forward,
            identity: Identity {
                client,
                route,
                backend_salt: backend.handshake.auth_data.clone(),
                parked_change_user: None,
                change_reply: None,
                client_salt: None,
            },
            backend: handle,
            backend_thread: backend.handshake.connection_id,
            request: None,
            retry_after: None,
            moving: None,
            lost: None,
            refresh: None,
            passing: false,
            transfers: VecDeque::new(),
            draining: None,
            intercept,
        }));
        self.backend_deadline = None;
        self.note_backend_verified();
        // Nothing should follow a login OK before the client's first command, but never drop bytes.
        let rest = rx.take_remaining();
        if !rest.is_empty() {
            self.on_backend_data(self.now, handle, rest.freeze());
        }
    }

    /// Client bytes through the tracker to the backend.
    fn forward_client(&mut self, data: Bytes) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let h = f.backend;
        let start = self.outputs.len();
        let outputs = &mut self.outputs;
        match f
            .forward
            .from_client(data, &mut |s| outputs.push_back(to_output(s, h)))
        {
            Ok(()) => self.after_tracking(self.now, start),
            Err(e) => {
                if let Some(seq) = e.too_large {
                    // As MariaDB does: ER_NET_PACKET_TOO_LARGE, then the connection closes.
                    let err = errors::packet_too_large();
                    self.outputs
                        .push_back(Output::ToClient(err_frame(&err, seq)));
                }
                self.close(CloseReason::ProtocolError(e.to_string()))
            }
        }
    }

    /// COM_CHANGE_USER: ferry verifies the new user itself (the client
    /// scrambled its password with ferry's salt) and sends the backend a
    /// scramble for the backend's salt, so the new secret is known for later logins.
    fn change_user(&mut self, data: Bytes, reread: bool) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let identity = &mut f.identity;
        let caps = identity.client.capabilities;
        let request = match ChangeUser::parse(&data[4..], caps) {
            Ok(r) => r,
            Err(e) => return self.close(CloseReason::ProtocolError(e.to_string())),
        };
        let name = match parse_login_name(&request.user) {
            Ok(n) => n,
            Err(e) => {
                let why = e.to_string();
                return self.refuse(errors::bad_login_name(&why), 1, why);
            }
        };
        let current = &identity.client.login;
        // A name without a tenant stays in the session's tenant (which may
        // have come from an `account` attribute); naming another is refused.
        if name
            .tenant
            .as_ref()
            .is_some_and(|t| Some(t) != current.tenant.as_ref())
            || (!name.labels.is_empty() && name.labels != current.labels)
        {
            let why = "COM_CHANGE_USER cannot change the tenant or labels of a session".to_string();
            return self.refuse(errors::bad_login_name(&why), 1, why);
        }
        // The client scrambles with the salt it saw last: an auth switch's, else ferry's handshake's.
        let secret = self
            .users
            .lookup(current.tenant.as_deref(), &name.user)
            .and_then(|cred| {
                let mut salts = identity
                    .client_salt
                    .iter()
                    .map(Vec::as_slice)
                    .chain([&identity.client.salt[..]]);
                salts.find_map(|salt| cred.verify(salt, &request.auth_response))
            });
        let Some(secret) = secret else {
            if self.config.logins.user_source && !reread {
                // The user may have been created or changed since ferry read the users.
                let cause = if self
                    .users
                    .lookup(current.tenant.as_deref(), &name.user)
                    .is_some()
                {
                    login::RereadCause::PasswordMismatch
                } else {
                    login::RereadCause::UnknownUser
                };
                identity.parked_change_user = Some((data, BytesMut::new()));
                self.outputs.push_back(Output::ReadUsers(ReadUsers {
                    user: request.user,
                    cause,
                }));
                return;
            }
            let unknown = self
                .users
                .lookup(name.tenant.as_deref(), &name.user)
                .is_none()
                && !self.users.knows(&name.user);
            if unknown && self.config.logins.unverified == UnverifiedLogins::Backend {
                // ferry cannot check this password: the backend does, through
                // the auth switch it answers COM_CHANGE_USER with.
                let mut to_backend = request.clone();
                to_backend.user = name.user.clone();
                if to_backend.auth_plugin.is_some() {
                    to_backend.auth_plugin = Some(NATIVE_PASSWORD.to_string());
                }
                identity.change_reply = Some(ChangeReply::relayed(Relayed {
                    user: name.user,
                    sent_user: request.user.clone(),
                    database: (!request.database.is_empty()).then(|| request.database.clone()),
                }));
                let mut payload = BytesMut::new();
                to_backend.write(&mut payload, caps);
                return self.forward_client(frame(&payload, 0));
            }
            let err = errors::access_denied(
                &request.user,
                &self.peer_host,
                !request.auth_response.is_empty(),
            );
            let after = if reread {
                " (after reading the users again)"
            } else {
                ""
            };
            return self.refuse(
                err,
                1,
                format!("COM_CHANGE_USER to '{}' refused{after}", request.user),
            );
        };
        let mut to_backend = request.clone();
        let mut request = request;
        request.auth_response.zeroize();
        to_backend.user = name.user.clone();
        to_backend.auth_response = secret.respond(&identity.backend_salt);
        if to_backend.auth_plugin.is_some() {
            to_backend.auth_plugin = Some(NATIVE_PASSWORD.to_string());
        }
        identity.client.secret = secret;
        if identity.client.verified_by != VerifiedBy::Ferry {
            identity.client.verified_by = VerifiedBy::Ferry;
            f.forward.set_blocker(login::CREDENTIAL_UNKNOWN, false);
        }
        identity.client.login.user = name.user;
        identity.client.response.user = request.user;
        identity.client.response.database =
            (!request.database.is_empty()).then(|| request.database.clone());
        identity.change_reply = Some(ChangeReply::verified());
        let mut payload = BytesMut::new();
        to_backend.write(&mut payload, caps);
        to_backend.auth_response.zeroize();
        self.forward_client(frame(&payload, 0));
    }

    /// The sequence id of ferry's next packet to a client that is waiting for its login result.
    fn client_seq(&self) -> u8 {
        match &self.state {
            State::Routing(c) => c.next_seq,
            State::BackendLogin(phase) => phase.client.next_seq,
            _ => 2,
        }
    }

    /// The backend of a new login could not be reached: try another before the client hears of it.
    fn retry_login(&mut self, why: &str, unreachable: bool) {
        let State::BackendLogin(phase) = &mut self.state else {
            return;
        };
        if phase.rerouting.is_some() {
            return;
        }
        if unreachable {
            self.outputs
                .push_back(Output::Event(SessionEvent::BackendUnreachable {
                    backend: phase.route.backend.clone(),
                    why: why.to_string(),
                }));
        }
        if phase.retries >= LOGIN_RETRIES {
            return self.fail_login(why);
        }
        phase.retries += 1;
        phase.rerouting = Some(why.to_string());
        self.backend_deadline = None;
        let request = RouteRequest {
            tenant: phase.client.login.tenant.clone(),
            labels: phase.client.login.labels.clone(),
        };
        let (h, from) = (phase.handle, phase.route.clone());
        self.outputs.push_back(Output::CloseBackend(h));
        self.outputs.push_back(Output::Transfer(Transfer {
            from,
            request,
            to: None,
        }));
    }

    fn fail_login(&mut self, why: &str) {
        let backend = match &self.state {
            State::BackendLogin(phase) => phase.route.backend.to_string(),
            _ => return,
        };
        let seq = self.client_seq();
        self.refuse(
            errors::backend_unavailable(&backend, why),
            seq,
            format!("backend {backend}: {why}"),
        );
    }

    fn refuse(&mut self, err: ErrPacket, seq: u8, why: String) {
        self.outputs
            .push_back(Output::ToClient(err_frame(&err, seq)));
        self.close(CloseReason::LoginRefused(why));
    }

    fn on_timeout(&mut self, now: Timestamp) {
        if self.login_deadline.is_some_and(|d| now >= d) {
            return self.close(CloseReason::LoginTimeout);
        }
        if self.close_if_killed(false) {
            return;
        }
        if let State::Forwarding(f) = &self.state {
            if Self::is_quiet(f) && self.idle.expired(now) {
                return self.close_idle();
            }
        }
        if self.backend_deadline.is_some_and(|d| now >= d) {
            return self.retry_login("timed out waiting for the backend", true);
        }
        if let State::Forwarding(f) = &self.state {
            if f.moving.as_ref().is_some_and(|m| now >= m.deadline) {
                let to = f
                    .moving
                    .as_ref()
                    .and_then(|m| m.target.as_ref())
                    .map_or_else(
                        || "the target".to_string(),
                        |t| format!("backend {}", t.route.backend),
                    );
                return self.fail_move(
                    now,
                    MoveFailure::Timeout,
                    format!("{to} did not complete the move in time"),
                );
            }
        }
        if let State::Forwarding(f) = &mut self.state {
            if f.retry_after.is_some_and(|t| now >= t) {
                f.retry_after = None;
            }
        }
        self.try_move(now);
    }

    /// A backend connection closed or could not be opened.
    fn on_backend_lost(&mut self, now: Timestamp, h: BackendHandle, connect_error: Option<String>) {
        match &mut self.state {
            State::BackendLogin(phase) if phase.handle == h => {
                let (why, unreachable) = match connect_error {
                    Some(why) => (why, true),
                    None => (
                        "backend closed the connection during login".to_string(),
                        true,
                    ),
                };
                self.retry_login(&why, unreachable);
            }
            State::Forwarding(f) => {
                if let Some(m) = f.moving.as_mut() {
                    if let Some(t) = m.target.as_ref().filter(|t| t.handle == h) {
                        let why = match connect_error {
                            Some(why) => {
                                format!("could not connect to backend {}: {why}", t.route.backend)
                            }
                            None => format!("backend {} closed the connection", t.route.backend),
                        };
                        if matches!(t.phase, TargetPhase::Connecting(_)) {
                            self.outputs.push_back(Output::Event(
                                SessionEvent::BackendUnreachable {
                                    backend: t.route.backend.clone(),
                                    why: why.clone(),
                                },
                            ));
                        }
                        return self.fail_move(now, MoveFailure::Target, why);
                    }
                    if h == f.backend {
                        // The source died mid-move: carry on from what ferry knows, if it knows enough.
                        m.source_alive = false;
                        if !matches!(m.source, SourceRead::Done) {
                            if f.forward.state().server_values_known() {
                                m.source = SourceRead::Done;
                                return self.maybe_restore(now);
                            }
                            return self.fail_move(
                                now,
                                MoveFailure::Source,
                                "the source backend closed while ferry read the user variables"
                                    .into(),
                            );
                        }
                        return;
                    }
                    return;
                }
                if h != f.backend {
                    return;
                }
                if self.close_if_killed(true) {
                    return;
                }
                let State::Forwarding(f) = &mut self.state else {
                    return;
                };
                // Whatever ferry still expected from it will never come; the client's bytes go on.
                let held = f.draining.take().map(|d| d.held);
                self.backend_died(now);
                if let Some(held) = held.filter(|b| !b.is_empty()) {
                    self.on_client_data(now, held.freeze());
                }
            }
            _ => {}
        }
    }

    /// The session's backend connection is gone while no move runs.
    fn backend_died(&mut self, now: Timestamp) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        if let Some((_, held)) = f.refresh.take() {
            // The read-back died with it: what the client sent meanwhile follows the verdict.
            self.backend_died(now);
            if !held.is_empty() {
                self.on_client_data(now, held.freeze());
            }
            return;
        }
        if f.forward.client_quit() {
            // The client said goodbye; the backend closing is the answer.
            return self.close(CloseReason::ClientClosed);
        }
        let status = f.forward.status();
        let backend = f.identity.route.backend.clone();
        let known = f.forward.state().server_values_known();
        if f.forward.is_idle() && status.safe && known && !self.shutting_down {
            // Failover: nothing in flight, nothing that cannot move; the client never notices.
            let request = MoveRequest {
                trigger: Trigger::Failover,
                to: None,
            };
            f.request = None;
            return self.start_move(now, request, false);
        }
        let err = errors::lost_backend(&backend, status.in_txn);
        if !f.forward.is_idle() {
            // A command in flight has an unknown outcome: never retried, the client hears it.
            if !f.forward.response_started() {
                self.outputs.push_back(Output::ToClient(err_frame(&err, 1)));
            }
            return self.close(CloseReason::BackendClosed);
        }
        if self.shutting_down {
            return self.close(CloseReason::BackendClosed);
        }
        // Idle but not movable (a transaction, a temporary table, unknown user variables):
        // the client learns it with its next command, as from a server that went away.
        f.lost = Some(err);
    }

    fn on_client_closed(&mut self, now: Timestamp) {
        if self.is_moving() {
            self.fail_move(
                now,
                MoveFailure::Client,
                "the client closed the connection".into(),
            );
        }
        self.quit_backend_if_idle();
        self.close(CloseReason::ClientClosed)
    }

    fn on_migrate(&mut self, now: Timestamp, request: MoveRequest) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        if f.moving.is_some() || f.lost.is_some() {
            return;
        }
        if request.to.as_ref() == Some(&f.identity.route.backend) {
            return;
        }
        // An operator's request wins over the balancer's; otherwise the newest stands.
        if f.request
            .as_ref()
            .is_some_and(|r| r.trigger == Trigger::Admin)
            && request.trigger != Trigger::Admin
        {
            return;
        }
        f.request = Some(request);
        self.try_move(now);
    }

    /// No command runs and ferry has nothing of its own under way: the idle timeout may run.
    fn is_quiet(f: &Forwarding) -> bool {
        f.forward.is_idle() && f.moving.is_none() && f.refresh.is_none() && f.draining.is_none()
    }

    /// Idle longer than `idle_timeout_ms`: the client hears why (4031, as MariaDB says it).
    fn close_idle(&mut self) {
        let timeout = self.idle.timeout().unwrap_or_default();
        let err = errors::idle_timeout(timeout);
        self.outputs.push_back(Output::ToClient(err_frame(&err, 1)));
        self.quit_backend_if_idle();
        self.close(CloseReason::IdleTimeout);
    }

    fn on_close_request(&mut self, why: String) {
        let State::Forwarding(f) = &self.state else {
            return self.close(CloseReason::Closed(why));
        };
        if f.forward.is_idle() || !f.forward.response_started() {
            let err = errors::connection_closed(&why);
            self.outputs.push_back(Output::ToClient(err_frame(&err, 1)));
        }
        if !f.forward.is_idle() {
            // Closing the socket does not stop a running statement: stop it as KILL would.
            let identity = &f.identity;
            self.outputs
                .push_back(Output::RunElsewhere(RemoteStatement {
                    backend: identity.route.backend.0.clone(),
                    addr: identity.route.addr,
                    user: identity.client.login.user.clone(),
                    secret: identity.client.secret.clone(),
                    sql: format!("KILL CONNECTION {}", f.backend_thread),
                }));
        }
        self.quit_backend_if_idle();
        self.close(CloseReason::Closed(why));
    }

    /// Starts the pending move if the session is at a safe point.
    fn try_move(&mut self, now: Timestamp) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        if f.moving.is_some()
            || f.lost.is_some()
            || f.draining.is_some()
            || f.refresh.is_some()
            || !f.intercept.is_clear()
            || self.shutting_down
        {
            return;
        }
        if f.retry_after.is_some_and(|t| now < t) {
            return;
        }
        if f.request.is_none() || !f.forward.is_idle() || !f.forward.status().safe {
            return;
        }
        let request = f.request.take().expect("checked");
        self.start_move(now, request, true);
    }

    fn start_move(&mut self, now: Timestamp, request: MoveRequest, source_alive: bool) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let from = f.identity.route.clone();
        let mut m = Move::new(
            request.clone(),
            now,
            self.config.backend_timeout,
            from.clone(),
        );
        m.source_alive = source_alive;
        if f.forward.state().server_values_known() {
            // Known without asking: no round trip to the source.
            m.source = SourceRead::Done;
        }
        f.moving = Some(Box::new(m));
        f.transfers.push_back(from.clone());
        self.outputs
            .push_back(Output::Event(SessionEvent::MoveStarted(request.trigger)));
        self.outputs.push_back(Output::Transfer(Transfer {
            from,
            request: RouteRequest {
                tenant: f.identity.client.login.tenant.clone(),
                labels: f.identity.client.login.labels.clone(),
            },
            to: request.to,
        }));
    }

    /// Bytes from the source while ferry reads what only it knows.
    fn on_source_data(&mut self, now: Timestamp, data: Bytes) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let Some(m) = f.moving.as_mut() else {
            return;
        };
        let SourceRead::Reading(read) = &mut m.source else {
            return;
        };
        match read.feed(&data) {
            Err(e) => self.fail_move(
                now,
                MoveFailure::Source,
                format!("reading the user variables: {e}"),
            ),
            Ok(ReadStep::Pending) => {}
            Ok(ReadStep::Send(bytes)) => {
                self.outputs.push_back(Output::ToBackend(f.backend, bytes))
            }
            Ok(ReadStep::Done(values, last_insert_id)) => {
                f.forward
                    .state_mut()
                    .set_server_values(values, last_insert_id);
                m.source = SourceRead::Done;
                self.maybe_restore(now);
            }
            // A move's read is never told to stop early.
            Ok(ReadStep::Abandoned) => self.fail_move(
                now,
                MoveFailure::Source,
                "reading the user variables stopped early".into(),
            ),
        }
    }

    /// Bytes from the target: its login, then the replies to the restore.
    fn on_target_data(&mut self, now: Timestamp, data: Bytes) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let Some(t) = f.moving.as_mut().and_then(|m| m.target.as_mut()) else {
            return;
        };
        let backend = t.route.backend.clone();
        let source_caps = f.forward.backend_caps();
        // The MariaDB extensions in force must stay so (a client using bulk execute keeps it).
        let client_mariadb = f.identity.client.response.mariadb_capabilities;
        let source_mariadb = f.forward.backend_mariadb_caps() & client_mariadb;
        if let TargetPhase::Restoring(r) = &mut t.phase {
            if let Err(e) = r.injected.feed(&data) {
                return self.fail_move(
                    now,
                    MoveFailure::Restore,
                    format!("restoring on backend {}: {e}", backend),
                );
            }
            return self.on_restore_replies(now);
        }
        t.rx.extend(&data);
        while let TargetPhase::LoggingIn(login) = &mut t.phase {
            let packet = match t.rx.decode() {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    return self.fail_move(
                        now,
                        MoveFailure::Target,
                        format!("logging in to backend {}: {e}", backend),
                    )
                }
            };
            let step = login.handle(packet);
            if login.compressed() {
                let queued = self.outputs.len();
                if let Err(e) = self.compression.start_backend(t.handle, queued, &mut t.rx) {
                    let why = format!("logging in to backend {backend}: {e}");
                    return self.fail_move(now, MoveFailure::Target, why);
                }
            }
            match step {
                BackendStep::Send(bytes) => {
                    self.outputs.push_back(Output::ToBackend(t.handle, bytes))
                }
                BackendStep::StartTls(request, response) => {
                    let h = t.handle;
                    self.outputs.push_back(Output::ToBackend(h, request));
                    self.outputs.push_back(Output::BackendTls(h));
                    self.outputs.push_back(Output::ToBackend(h, response));
                }
                BackendStep::Wait => {}
                BackendStep::Done(session) => {
                    // CONNECT_WITH_DB only shapes the login packet: the target logs in
                    // without a database (COM_INIT_DB restores it), the source may have had one.
                    // Nor does compression: it belongs to the connection, not the session.
                    let shaping = CLIENT_CONNECT_WITH_DB | CLIENT_COMPRESS;
                    if (session.capabilities ^ source_caps) & !shaping != 0 {
                        let why = format!(
                            "backend {backend} offers other capabilities (0x{:08x}, the session has 0x{source_caps:08x})",
                            session.capabilities
                        );
                        return self.fail_move(now, MoveFailure::Target, why);
                    }
                    let target_mariadb = session.handshake.mariadb_capabilities & client_mariadb;
                    if target_mariadb != source_mariadb {
                        let why = format!(
                            "backend {backend} offers other MariaDB extensions (0x{target_mariadb:x}, the session uses 0x{source_mariadb:x})"
                        );
                        return self.fail_move(now, MoveFailure::Target, why);
                    }
                    t.phase = TargetPhase::LoggedIn(session);
                }
                BackendStep::Refused(err) => {
                    return self.fail_move(
                        now,
                        MoveFailure::Target,
                        format!(
                            "backend {} refused the login: {} {}",
                            backend, err.code, err.message
                        ),
                    )
                }
                BackendStep::Failed(why) => {
                    return self.fail_move(
                        now,
                        MoveFailure::Target,
                        format!("logging in to backend {}: {why}", backend),
                    )
                }
                // A move logs in with a known secret (a session the backend verified does not move).
                BackendStep::AskClient(_) => {
                    return self.fail_move(
                        now,
                        MoveFailure::Target,
                        "ferry does not know the credential to log in elsewhere".into(),
                    )
                }
            }
        }
        if !t.rx.take_remaining().is_empty() {
            return self.fail_move(
                now,
                MoveFailure::Target,
                "the target sent bytes after its login".into(),
            );
        }
        self.maybe_restore(now);
    }

    /// Once the target is logged in and the user variables are known: send the whole restore.
    fn maybe_restore(&mut self, now: Timestamp) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let Some(m) = f.moving.as_mut() else {
            return;
        };
        if !matches!(m.source, SourceRead::Done) {
            return;
        }
        let values = f.forward.state().user_values().to_vec();
        let Some(t) = m.target.as_mut() else {
            return;
        };
        if !matches!(t.phase, TargetPhase::LoggedIn(_)) {
            return;
        }
        let TargetPhase::LoggedIn(session) = std::mem::replace(
            &mut t.phase,
            TargetPhase::Connecting(Box::new(placeholder_login())),
        ) else {
            unreachable!("checked above");
        };
        #[cfg(feature = "sabotage")]
        let values = if crate::sabotage::is(crate::sabotage::Fault::ForgetUserVariables) {
            Vec::new()
        } else {
            values
        };
        let steps = restore::plan(f.forward.state(), &values, f.forward.last_prepared());
        let mut injected = Injected::new(session.capabilities, self.config.max_packet_size)
            .with_rows_limit(self.config.limits.memory.injected_rows)
            .keeping_definitions(session.caches_metadata());
        let mut out = BytesMut::new();
        for step in &steps {
            let request = match step {
                Step::Query { sql, .. } => Request::Query(sql.clone()),
                Step::InitDb(db) => Request::InitDb(db.clone()),
                Step::Prepare { sql, .. } => Request::Prepare(sql.clone()),
            };
            injected.write(&request, &mut out);
        }
        t.phase = TargetPhase::Restoring(Box::new(Restoring {
            session: *session,
            injected,
            steps: steps.into(),
            ids: BTreeMap::new(),
            metadata: BTreeMap::new(),
            skipped: Vec::new(),
        }));
        if !out.is_empty() {
            self.outputs
                .push_back(Output::ToBackend(t.handle, out.freeze()));
        }
        self.on_restore_replies(now);
    }

    fn on_restore_replies(&mut self, now: Timestamp) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let Some(t) = f.moving.as_mut().and_then(|m| m.target.as_mut()) else {
            return;
        };
        let TargetPhase::Restoring(r) = &mut t.phase else {
            return;
        };
        let backend = t.route.backend.clone();
        while let Some(reply) = r.injected.poll_reply() {
            let Some(step) = r.steps.pop_front() else {
                return self.fail_move(
                    now,
                    MoveFailure::Restore,
                    "a reply ferry did not ask for".into(),
                );
            };
            let failure = match (step, reply) {
                (
                    Step::Prepare {
                        client_id,
                        params,
                        columns,
                        ..
                    },
                    Reply::Prepared {
                        id,
                        params: p,
                        columns: c,
                        definitions,
                    },
                ) => {
                    r.ids.insert(client_id, id);
                    r.metadata.insert(client_id, definitions);
                    (p != params || c != columns).then(|| {
                        format!(
                            "prepared statement {client_id} has {p} parameters and {c} columns on backend {backend}, {params} and {columns} before"
                        )
                    })
                }
                (Step::Prepare { client_id, .. }, Reply::Err(e)) => Some(format!(
                    "prepared statement {client_id} cannot be prepared again on backend {backend}: {} {}",
                    e.code, e.message
                )),
                (Step::InitDb(db), Reply::Err(e)) if e.code == restore::UNKNOWN_DATABASE => {
                    r.skipped.push(format!("database `{db}` no longer exists; the session has none"));
                    None
                }
                (
                    Step::Query {
                        on_error: OnError::Variable(name),
                        ..
                    },
                    Reply::Err(e),
                ) if restore::SKIPPABLE_VARIABLE_ERRORS.contains(&e.code) => {
                    r.skipped.push(format!("variable {name}: {}", e.message));
                    None
                }
                (step, Reply::Err(e)) => Some(format!(
                    "restoring on backend {backend} failed at {}: {} {}",
                    describe_step(&step),
                    e.code,
                    e.message
                )),
                (_, Reply::Ok(_) | Reply::Rows(_)) => None,
                (step, reply) => Some(format!(
                    "unexpected reply to {}: {reply:?}",
                    describe_step(&step)
                )),
            };
            if let Some(why) = failure {
                return self.fail_move(now, MoveFailure::Restore, why);
            }
        }
        if r.steps.is_empty() && r.injected.outstanding() == 0 {
            self.finish_move(now);
        }
    }

    /// The target holds the whole session: swap, let the held command go, quit the source.
    fn finish_move(&mut self, now: Timestamp) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let Some(m) = f.moving.take() else {
            return;
        };
        let Move {
            request,
            started,
            from,
            target,
            source_alive,
            held,
            held_since,
            ..
        } = *m;
        let Some(Target {
            handle,
            route,
            phase: TargetPhase::Restoring(r),
            ..
        }) = target
        else {
            return;
        };
        let Restoring {
            session,
            ids,
            metadata,
            skipped,
            ..
        } = *r;
        let old = f.backend;
        f.forward.replace_backend(&session, ids, metadata);
        f.backend = handle;
        f.backend_thread = session.handshake.connection_id;
        f.identity.route = route.clone();
        f.identity.backend_salt = session.handshake.auth_data.clone();
        if source_alive {
            self.outputs
                .push_back(Output::ToBackend(old, frame(&[COM_QUIT], 0)));
        }
        self.outputs.push_back(Output::CloseBackend(old));
        self.outputs
            .push_back(Output::Event(SessionEvent::Moved(MoveReport {
                trigger: request.trigger,
                from: from.backend,
                to: Some(route.backend),
                outcome: Ok(()),
                duration: now.since(started),
                paused: held_since.map(|t| now.since(t)),
                backend_connection_id: Some(session.handshake.connection_id),
                skipped,
            })));
        self.last_status = SessionStatus::default();
        self.after_tracking(now, self.outputs.len());
        if !held.is_empty() {
            self.on_client_data(now, held.freeze());
        }
    }

    /// Abandons the move: the session stays where it was, untouched.
    fn fail_move(&mut self, now: Timestamp, kind: MoveFailure, why: String) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let Some(m) = f.moving.take() else {
            return;
        };
        let Move {
            request,
            started,
            from,
            target,
            source,
            source_alive,
            held,
            held_since,
            ..
        } = *m;
        let mut to = None;
        if let Some(t) = target {
            if matches!(
                t.phase,
                TargetPhase::LoggedIn(_) | TargetPhase::Restoring(_)
            ) {
                self.outputs
                    .push_back(Output::ToBackend(t.handle, frame(&[COM_QUIT], 0)));
            }
            self.outputs.push_back(Output::CloseBackend(t.handle));
            self.outputs.push_back(Output::TransferBack {
                moved: t.route.clone(),
                original: from.clone(),
            });
            to = Some(t.route.backend);
        }
        f.retry_after = Some(now + self.config.move_backoff);
        self.outputs
            .push_back(Output::Event(SessionEvent::Moved(MoveReport {
                trigger: request.trigger,
                from: from.backend.clone(),
                to,
                outcome: Err((kind, why)),
                duration: now.since(started),
                paused: held_since.map(|t| now.since(t)),
                backend_connection_id: None,
                skipped: Vec::new(),
            })));
        if !source_alive {
            // Failover failed: the session cannot continue anywhere.
            let in_txn = f.forward.status().in_txn;
            f.lost = Some(errors::lost_backend(&from.backend, in_txn));
            self.outputs.push_back(Output::CloseBackend(f.backend));
            if !held.is_empty() {
                self.on_client_data(now, held.freeze());
            } else if self.shutting_down {
                self.on_shutdown();
            }
            return;
        }
        if let SourceRead::Reading(read) = source {
            if read.outstanding() > 0 {
                let q = read.into_queue();
                // The source has yet to answer ferry's question: never let the
                // client have that answer.
                f.draining = Some(Box::new(Draining { injected: q, held }));
                return;
            }
        }
        if !held.is_empty() {
            self.on_client_data(now, held.freeze());
        } else if self.shutting_down {
            // Back at a safe point: the shutdown asked for during the move happens now.
            self.on_shutdown();
        }
    }

    /// Bytes from the backend in use while it answers a failed move's question.
    fn on_drain_data(&mut self, now: Timestamp, data: Bytes) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let Some(d) = f.draining.as_mut() else {
            return;
        };
        if let Err(e) = d.injected.feed(&data) {
            return self.close(CloseReason::BackendProtocolError(format!(
                "reading the answer to ferry's user variable query: {e}"
            )));
        }
        while d.injected.poll_reply().is_some() {}
        if d.injected.outstanding() > 0 {
            return;
        }
        let Draining { mut injected, held } = *f.draining.take().expect("checked");
        let rest = injected.take_rest();
        let backend = f.backend;
        f.passing = false;
        if !held.is_empty() {
            self.on_client_data(now, held.freeze());
        } else if self.shutting_down {
            self.on_shutdown();
        }
        self.try_move(now);
        if !rest.is_empty() {
            self.on_backend_data(now, backend, rest.freeze());
        }
    }

    /// The client sent more than ferry holds while ferry's own answers are
    /// due: let its bytes go on now (the server answers ferry's questions
    /// first) and ask nothing more that would land among the client's answers.
    fn pass_through(&mut self) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        f.passing = true;
        let mut held = BytesMut::new();
        if let Some((read, h)) = f.refresh.as_mut() {
            read.send_no_more();
            held.unsplit(std::mem::take(h));
        }
        if let Some(d) = f.draining.as_mut() {
            held.unsplit(std::mem::take(&mut d.held));
        }
        if !held.is_empty() {
            self.client_commands(held.freeze());
        }
    }

    /// After tracked traffic: report a changed status, start a pending move,
    /// close if shutting down at a safe point.
    ///
    /// The status goes out before the bytes queued since `start`, so that by
    /// the time a client has its reply, operators see the state it left.
    fn after_tracking(&mut self, now: Timestamp, start: usize) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        if !f.forward.take_status_change() {
            return;
        }
        let status = f.forward.status();
        if status != self.last_status {
            self.last_status = status.clone();
            let event = Output::Event(SessionEvent::Status(status.clone()));
            self.outputs.insert(start.min(self.outputs.len()), event);
        }
        if self.shutting_down && status.safe && f.moving.is_none() {
            self.quit_backend_if_idle();
            return self.close(CloseReason::Shutdown);
        }
        if status.safe
            && f.moving.is_none()
            && f.refresh.is_none()
            && f.draining.is_none()
            && f.forward.is_idle()
            && f.forward.state().wants_server_values()
        {
            let (read, bytes) = StateRead::start(
                f.forward.backend_caps(),
                self.config.max_packet_size,
                self.config.limits.memory.injected_rows,
            );
            f.refresh = Some((read, BytesMut::new()));
            self.outputs.push_back(Output::ToBackend(f.backend, bytes));
            return;
        }
        if f.request.is_some() {
            self.try_move(now);
        }
    }

    fn on_shutdown(&mut self) {
        self.shutting_down = true;
        match &mut self.state {
            State::Forwarding(f) => {
                if f.forward.status().safe && f.moving.is_none() {
                    self.quit_backend_if_idle();
                    self.close(CloseReason::Shutdown);
                }
            }
            // Mid-login: no state to lose.
            _ => self.close(CloseReason::Shutdown),
        }
    }

    /// Says goodbye to the backend (COM_QUIT) when no command is in flight, so it logs no aborted connection.
    fn quit_backend_if_idle(&mut self) {
        if let State::Forwarding(f) = &self.state {
            if f.forward.is_idle() && f.lost.is_none() {
                self.outputs
                    .push_back(Output::ToBackend(f.backend, frame(&[COM_QUIT], 0)));
            }
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.state = State::Closed;
        self.login_deadline = None;
        self.backend_deadline = None;
        self.outputs.push_back(Output::Close(reason));
    }
}

fn to_output(s: Send, h: BackendHandle) -> Output {
    match s {
        Send::ToClient(b) => Output::ToClient(b),
        Send::ToBackend(b) => Output::ToBackend(h, b),
    }
}

/// A login that is never driven: stands in while a phase is moved out.
fn placeholder_login() -> BackendLogin {
    BackendLogin::new(
        crate::packets::HandshakeResponse {
            capabilities: 0,
            mariadb_capabilities: 0,
            max_packet_size: 0,
            collation: 0,
            user: String::new(),
            auth_response: Vec::new(),
            database: None,
            auth_plugin: None,
            attributes: Vec::new(),
        },
        crate::auth::Secret::from_password(""),
        0,
        false,
    )
}

fn describe_step(step: &Step) -> String {
    match step {
        Step::Query { sql, .. } => {
            let cut: String = String::from_utf8_lossy(sql).chars().take(60).collect();
            format!("\"{cut}\"")
        }
        Step::InitDb(db) => format!("USE `{db}`"),
        Step::Prepare { client_id, .. } => format!("preparing statement {client_id}"),
    }
}

//! One client connection: login → route → backend login → forward → close.
//!
//! Events go in with [`Session::handle`]; what to do comes out of
//! [`Session::poll_output`]; [`Session::poll_timeout`] is the next deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::auth::NATIVE_PASSWORD;
use crate::cluster::{BackendId, NoBackend, Route, RouteRequest};
use crate::errors;
use crate::forward::{Forward, Send, SessionStatus};
use crate::kill::{Kill, RemoteStatement};
use crate::labels::parse_login_name;
use crate::labels::LoginName;
use crate::login::backend::{BackendLogin, BackendSession, BackendStep};
use crate::login::client::{ClientLogin, ClientStep, Greeting, VerifiedClient};
use crate::login::{err_frame, frame};
use crate::packets::flags::command::{COM_CHANGE_USER, COM_QUIT};
use crate::packets::ErrPacket;
use crate::packets::{ChangeUser, OkPacket};
use crate::users::UserDirectory;
use crate::wire::{frame_header, FrameError, PacketDecoder, HEADER_LEN, MAX_FRAME_PAYLOAD};
use crate::Timestamp;

/// Largest packet accepted while logging in: logins are small, and garbage must not make us allocate.
const LOGIN_MAX_PACKET: usize = 64 * 1024;

/// Limits a session runs under.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// How long the client has to log in.
    pub login_timeout: Duration,
    /// How long a backend has to connect and accept the login.
    pub backend_timeout: Duration,
    /// Largest packet accepted from a peer.
    pub max_packet_size: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            login_timeout: Duration::from_secs(10),
            backend_timeout: Duration::from_secs(5),
            max_packet_size: 64 << 20,
        }
    }
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
    /// The backend connection is up.
    BackendConnected,
    /// The backend connection could not be made.
    BackendConnectFailed(String),
    /// Bytes read from the backend.
    BackendData(Bytes),
    /// The backend closed its side (or the connection broke).
    BackendClosed,
    /// A deadline from [`Session::poll_timeout`] may have passed.
    Timeout,
    /// The proxy is shutting down: close at the next safe point.
    Shutdown,
    /// Where the session asked about with [`Output::Locate`] is (`None`: no such session).
    Located(Option<SessionLocation>),
    /// How [`Output::RunElsewhere`] went: done, the backend's ERR, or why it could not be run.
    RanElsewhere(Result<Result<(), ErrPacket>, String>),
}

/// Where a session lives: its backend and that backend's thread id for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLocation {
    /// The backend.
    pub backend: BackendId,
    /// The backend's thread (connection) id.
    pub thread: u32,
    /// The backend's address.
    pub addr: std::net::SocketAddr,
}

/// Something for the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the client.
    ToClient(Bytes),
    /// Write these bytes to the backend.
    ToBackend(Bytes),
    /// Ask the cluster for a backend; answer with [`Input::Routed`] or [`Input::RouteFailed`].
    Route(RouteRequest),
    /// Connect to this backend; answer with [`Input::BackendConnected`] or [`Input::BackendConnectFailed`].
    Connect(Route),
    /// Find the session with this ferry connection id; answer with [`Input::Located`].
    Locate(u32),
    /// Run a statement on another backend as this client; answer with [`Input::RanElsewhere`].
    RunElsewhere(RemoteStatement),
    /// The session is over: flush what was queued, close both sides, release the route.
    Close(CloseReason),
    /// Something worth logging or counting.
    Event(SessionEvent),
}

impl From<Send> for Output {
    fn from(s: Send) -> Output {
        match s {
            Send::ToClient(b) => Output::ToClient(b),
            Send::ToBackend(b) => Output::ToBackend(b),
        }
    }
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away (or sent COM_QUIT and the backend closed).
    ClientClosed,
    /// The backend went away while the session was forwarding.
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
    },
    /// A response completed and the session's status changed.
    Status(SessionStatus),
}

#[derive(Debug)]
enum State {
    ClientLogin(ClientLogin),
    Routing(Box<VerifiedClient>),
    BackendLogin(Box<BackendPhase>),
    Forwarding(Box<Forward>),
    Closed,
}

/// A verified client waiting for its backend login.
#[derive(Debug)]
struct BackendPhase {
    client: VerifiedClient,
    route: Route,
    login: BackendLogin,
}

/// The state machine of one client connection.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    users: Arc<UserDirectory>,
    state: State,
    client_rx: PacketDecoder,
    backend_rx: PacketDecoder,
    outputs: VecDeque<Output>,
    login_deadline: Option<Timestamp>,
    backend_deadline: Option<Timestamp>,
    shutting_down: bool,
    last_status: SessionStatus,
    peer_host: String,
    /// Who the client is and what the backend's salt was, while forwarding.
    identity: Option<Box<Identity>>,
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

/// A logged-in client, its route and its backend's salt (for COM_CHANGE_USER, KILL, and later migrations).
#[derive(Debug)]
struct Identity {
    client: VerifiedClient,
    route: Route,
    backend_salt: Vec<u8>,
    /// A KILL waiting for [`Input::Located`].
    pending_kill: Option<Kill>,
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
        let (login, handshake) = ClientLogin::start(greeting, peer_host.clone());
        let login_max = LOGIN_MAX_PACKET.min(config.max_packet_size);
        let backend_max = config.max_packet_size;
        let mut session = Session {
            login_deadline: Some(now + config.login_timeout),
            backend_deadline: None,
            config,
            users,
            state: State::ClientLogin(login),
            client_rx: PacketDecoder::new(login_max),
            backend_rx: PacketDecoder::new(LOGIN_MAX_PACKET.min(backend_max)),
            outputs: VecDeque::new(),
            shutting_down: false,
            last_status: SessionStatus::default(),
            peer_host,
            identity: None,
        };
        session.outputs.push_back(Output::ToClient(handshake));
        session
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Timestamp, input: Input) {
        match input {
            Input::ClientData(data) => self.on_client_data(data),
            Input::BackendData(data) => self.on_backend_data(data),
            Input::Routed(route) => self.on_routed(now, route),
            Input::RouteFailed(no) => self.on_route_failed(no),
            Input::BackendConnected => {}
            Input::BackendConnectFailed(why) => self.fail_backend(&why),
            Input::ClientClosed => {
                self.quit_backend_if_idle();
                self.close(CloseReason::ClientClosed)
            }
            Input::BackendClosed => match self.state {
                State::Forwarding(_) => self.close(CloseReason::BackendClosed),
                _ => self.fail_backend("backend closed the connection during login"),
            },
            Input::Timeout => self.on_timeout(now),
            Input::Shutdown => self.on_shutdown(),
            Input::Located(location) => self.on_located(location),
            Input::RanElsewhere(result) => self.on_ran_elsewhere(result),
        }
    }

    /// The next thing to do, if any. Drain after every [`Session::handle`].
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Input::Timeout`] should next be fed.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match (self.login_deadline, self.backend_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True while forwarding between client and backend.
    pub fn is_forwarding(&self) -> bool {
        matches!(self.state, State::Forwarding(_))
    }

    /// Where the session stands (in a transaction, safe, blockers); `None` before it forwards.
    pub fn status(&self) -> Option<SessionStatus> {
        match &self.state {
            State::Forwarding(f) => Some(f.status()),
            _ => None,
        }
    }

    fn on_client_data(&mut self, data: Bytes) {
        match &mut self.state {
            // Commands ferry answers or rewrites itself arrive whole, between responses.
            State::Forwarding(f) if f.is_idle() => match one_command(&data) {
                Some([COM_CHANGE_USER, ..]) => self.change_user(data),
                Some(payload) => match Kill::parse(payload) {
                    Some(kill) => self.kill(kill),
                    None => self.forward_client(data),
                },
                None => self.forward_client(data),
            },
            State::Forwarding(_) => self.forward_client(data),
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
            match login.handle(packet, &self.users) {
                ClientStep::Send(bytes) => self.outputs.push_back(Output::ToClient(bytes)),
                ClientStep::Refuse(err, why) => {
                    self.outputs.push_back(Output::ToClient(err));
                    return self.close(CloseReason::LoginRefused(why));
                }
                ClientStep::Verified(client) => {
                    self.login_deadline = None;
                    self.outputs.push_back(Output::Route(RouteRequest {
                        tenant: client.login.tenant.clone(),
                        labels: client.login.labels.clone(),
                    }));
                    self.state = State::Routing(client);
                }
            }
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

    fn on_routed(&mut self, now: Timestamp, route: Route) {
        let State::Routing(client) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        self.backend_deadline = Some(now + self.config.backend_timeout);
        self.outputs.push_back(Output::Connect(route.clone()));
        let mut template = client.response.clone();
        template.user = client.login.user.clone();
        let login = BackendLogin::new(template, client.secret.clone(), client.capabilities, true);
        self.state = State::BackendLogin(Box::new(BackendPhase {
            client: *client,
            route,
            login,
        }));
    }

    fn on_route_failed(&mut self, no: NoBackend) {
        let State::Routing(client) = &self.state else {
            return;
        };
        let err = errors::no_backend(no.tenant.as_deref(), &no.labels);
        self.refuse(err, client.next_seq, "no backend".into());
    }

    fn on_backend_data(&mut self, data: Bytes) {
        match &mut self.state {
            State::Forwarding(f) => {
                let start = self.outputs.len();
                let outputs = &mut self.outputs;
                match f.from_server(data, &mut |s| outputs.push_back(s.into())) {
                    Ok(()) => self.after_tracking(start),
                    Err(e) => self.close(CloseReason::BackendProtocolError(e.to_string())),
                }
            }
            State::BackendLogin(..) => {
                self.backend_rx.extend(&data);
                self.drive_backend_login();
            }
            _ => {}
        }
    }

    fn drive_backend_login(&mut self) {
        while let State::BackendLogin(phase) = &mut self.state {
            let login = &mut phase.login;
            let packet = match self.backend_rx.decode() {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => return self.fail_backend(&e.to_string()),
            };
            match login.handle(packet) {
                BackendStep::Send(bytes) => self.outputs.push_back(Output::ToBackend(bytes)),
                BackendStep::Wait => {}
                BackendStep::Done(backend) => return self.logged_in(*backend),
                BackendStep::Refused(err) => {
                    let seq = self.client_seq();
                    return self.refuse(err, seq, "backend refused the login".into());
                }
                BackendStep::Failed(why) => return self.fail_backend(&why),
            }
        }
    }

    fn logged_in(&mut self, backend: BackendSession) {
        let State::BackendLogin(phase) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let BackendPhase { client, route, .. } = *phase;
        self.identity = Some(Box::new(Identity {
            client: client.clone(),
            route: route.clone(),
            backend_salt: backend.handshake.auth_data.clone(),
            pending_kill: None,
        }));
        let forward = Forward::new(
            client.capabilities,
            &backend,
            client.response.database.clone(),
        );
        self.state = State::Forwarding(Box::new(forward));
        self.backend_deadline = None;
        let mut ok = BytesMut::new();
        backend.ok.write(&mut ok, client.capabilities);
        self.outputs
            .push_back(Output::ToClient(frame(&ok, client.next_seq)));
        self.outputs
            .push_back(Output::Event(SessionEvent::LoggedIn {
                login: client.login,
                route,
                backend_connection_id: backend.handshake.connection_id,
            }));
        // Nothing should follow a login OK before the client's first command, but never drop bytes.
        let rest = self.backend_rx.take_remaining();
        if !rest.is_empty() {
            self.on_backend_data(rest.freeze());
        }
    }

    /// Client bytes through the tracker to the backend.
    fn forward_client(&mut self, data: Bytes) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let start = self.outputs.len();
        let outputs = &mut self.outputs;
        match f.from_client(data, &mut |s| outputs.push_back(s.into())) {
            Ok(()) => self.after_tracking(start),
            Err(e) => self.close(CloseReason::ProtocolError(e.to_string())),
        }
    }

    /// `KILL <ferry id>`: find where that session lives first.
    fn kill(&mut self, kill: Kill) {
        let Some(identity) = self.identity.as_mut() else {
            return;
        };
        let target = kill.target;
        identity.pending_kill = Some(kill);
        self.outputs.push_back(Output::Locate(target));
    }

    fn on_located(&mut self, location: Option<SessionLocation>) {
        let Some(identity) = self.identity.as_mut() else {
            return;
        };
        let Some(kill) = identity.pending_kill.take() else {
            return;
        };
        let err = match location {
            None => errors::no_such_thread(kill.target),
            Some(at) if at.backend == identity.route.backend => {
                return self.forward_client(frame(&kill.payload_for(at.thread), 0));
            }
            Some(at) => {
                self.outputs
                    .push_back(Output::RunElsewhere(RemoteStatement {
                        backend: at.backend.0.clone(),
                        addr: at.addr,
                        user: identity.client.login.user.clone(),
                        secret: identity.client.secret.clone(),
                        sql: kill.sql_for(at.thread),
                    }));
                return;
            }
        };
        // Answered here: the backend never sees the command.
        self.outputs.push_back(Output::ToClient(err_frame(&err, 1)));
    }

    fn on_ran_elsewhere(&mut self, result: Result<Result<(), ErrPacket>, String>) {
        let State::Forwarding(f) = &self.state else {
            return;
        };
        let reply = match result {
            Ok(Ok(())) => {
                let ok = OkPacket {
                    status: f.server_status(),
                    ..OkPacket::default()
                };
                let mut payload = BytesMut::new();
                ok.write(&mut payload, self.client_caps());
                frame(&payload, 1)
            }
            Ok(Err(err)) => err_frame(&err, 1),
            Err(why) => err_frame(&errors::remote_failed(&why), 1),
        };
        self.outputs.push_back(Output::ToClient(reply));
    }

    fn client_caps(&self) -> u32 {
        self.identity.as_ref().map_or(0, |i| i.client.capabilities)
    }

    /// COM_CHANGE_USER: ferry verifies the new user itself (the client
    /// scrambled its password with ferry's salt) and sends the backend a
    /// scramble for the backend's salt, so the new secret is known for later logins.
    fn change_user(&mut self, data: Bytes) {
        let Some(identity) = self.identity.as_mut() else {
            return;
        };
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
        if name.tenant != current.tenant
            || (!name.labels.is_empty() && name.labels != current.labels)
        {
            let why = "COM_CHANGE_USER cannot change the tenant or labels of a session".to_string();
            return self.refuse(errors::bad_login_name(&why), 1, why);
        }
        let secret = self
            .users
            .lookup(name.tenant.as_deref(), &name.user)
            .and_then(|cred| cred.verify(&identity.client.salt, &request.auth_response));
        let Some(secret) = secret else {
            let err = errors::access_denied(
                &request.user,
                &self.peer_host,
                !request.auth_response.is_empty(),
            );
            return self.refuse(
                err,
                1,
                format!("COM_CHANGE_USER to '{}' refused", request.user),
            );
        };
        let mut to_backend = request.clone();
        to_backend.user = name.user.clone();
        to_backend.auth_response = secret.respond(&identity.backend_salt);
        if to_backend.auth_plugin.is_some() {
            to_backend.auth_plugin = Some(NATIVE_PASSWORD.to_string());
        }
        identity.client.secret = secret;
        identity.client.login.user = name.user;
        identity.client.response.user = request.user;
        identity.client.response.database =
            (!request.database.is_empty()).then(|| request.database.clone());
        let mut payload = BytesMut::new();
        to_backend.write(&mut payload, caps);
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

    fn fail_backend(&mut self, why: &str) {
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
            self.close(CloseReason::LoginTimeout);
        } else if self.backend_deadline.is_some_and(|d| now >= d) {
            self.fail_backend("timed out waiting for the backend");
        }
    }

    /// After tracked traffic: report a changed status, and close if shutting down at a safe point.
    ///
    /// The status goes out before the bytes queued since `start`, so that by
    /// the time a client has its reply, operators see the state it left.
    fn after_tracking(&mut self, start: usize) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        if !f.take_status_change() {
            return;
        }
        let status = f.status();
        if status != self.last_status {
            self.last_status = status.clone();
            let event = Output::Event(SessionEvent::Status(status.clone()));
            self.outputs.insert(start.min(self.outputs.len()), event);
        }
        if self.shutting_down && status.safe {
            self.quit_backend_if_idle();
            self.close(CloseReason::Shutdown);
        }
    }

    fn on_shutdown(&mut self) {
        self.shutting_down = true;
        match &mut self.state {
            State::Forwarding(f) => {
                if f.status().safe {
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
            if f.is_idle() {
                self.outputs
                    .push_back(Output::ToBackend(frame(&[COM_QUIT], 0)));
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

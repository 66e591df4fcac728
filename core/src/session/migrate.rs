//! Moving a session to another backend: what a move in progress holds.
//!
//! The steps are driven by [`crate::session::Session`]: at a safe point it asks
//! the cluster for a target (which moves the session's count), connects and
//! logs in there with the saved handshake response and the recovered secret,
//! reads the user variables from the source meanwhile, runs the
//! [`crate::restore`] plan on the target, and only then swaps. Any failure
//! leaves the session where it was.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::cluster::{BackendId, Route};
use crate::injected::{Injected, Reply, Request};
use crate::login::backend::{BackendLogin, BackendSession};
use crate::restore::{self, Step, UserVariable, UserVariableType};
use crate::wire::PacketDecoder;
use crate::Timestamp;

pub use crate::cluster::Trigger;

/// What kind of failure abandoned a move (a metric label; the message says more).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MoveFailure {
    /// No backend could take the session.
    NoTarget,
    /// The target could not be reached or refused the login.
    Target,
    /// The source failed while ferry read from it, or what it held is unknown.
    Source,
    /// A restore statement failed or answered unexpectedly.
    Restore,
    /// The move took longer than the backend timeout.
    Timeout,
    /// The client closed or sent too much meanwhile.
    Client,
}

impl MoveFailure {
    /// Every kind, for metrics.
    pub const ALL: [MoveFailure; 6] = [
        MoveFailure::NoTarget,
        MoveFailure::Target,
        MoveFailure::Source,
        MoveFailure::Restore,
        MoveFailure::Timeout,
        MoveFailure::Client,
    ];

    /// Lower-case name, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveFailure::NoTarget => "no_target",
            MoveFailure::Target => "target",
            MoveFailure::Source => "source",
            MoveFailure::Restore => "restore",
            MoveFailure::Timeout => "timeout",
            MoveFailure::Client => "client",
        }
    }
}

/// A request to move a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveRequest {
    /// Why.
    pub trigger: Trigger,
    /// Where to, if the requester chose.
    pub to: Option<BackendId>,
}

/// How a move ended, for logs, metrics and the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveReport {
    /// Why it moved.
    pub trigger: Trigger,
    /// Where it was.
    pub from: BackendId,
    /// Where it went (or was going).
    pub to: Option<BackendId>,
    /// Done, or why not.
    pub outcome: Result<(), (MoveFailure, String)>,
    /// From the start of the move to its end.
    pub duration: Duration,
    /// How long a client command waited because of the move, if one did.
    pub paused: Option<Duration>,
    /// The new backend's thread id for the session (on success).
    pub backend_connection_id: Option<u32>,
    /// What could not be restored and was skipped (unknown variables, a dropped database).
    pub skipped: Vec<String>,
}

/// A backend connection, as the session's outputs and inputs name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendHandle(pub u32);

impl fmt::Display for BackendHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// A move in progress.
#[derive(Debug)]
pub(crate) struct Move {
    pub request: MoveRequest,
    pub started: Timestamp,
    pub deadline: Timestamp,
    /// The route the session had (its count moved to the target's when the target was chosen).
    pub from: Route,
    /// The target, once the cluster chose it.
    pub target: Option<Target>,
    /// The user variables, read from the source or known without it.
    pub source: SourceRead,
    /// False once the source connection is gone (failover).
    pub source_alive: bool,
    /// Client bytes that arrived during the move: they go to whichever backend the session ends on.
    pub held: BytesMut,
    pub held_since: Option<Timestamp>,
}

impl Move {
    pub fn new(request: MoveRequest, now: Timestamp, timeout: Duration, from: Route) -> Self {
        Move {
            request,
            started: now,
            deadline: now + timeout,
            from,
            target: None,
            source: SourceRead::NotStarted,
            source_alive: true,
            held: BytesMut::new(),
            held_since: None,
        }
    }
}

/// The target connection of a move.
#[derive(Debug)]
pub(crate) struct Target {
    pub handle: BackendHandle,
    pub route: Route,
    pub rx: PacketDecoder,
    pub phase: TargetPhase,
}

#[derive(Debug)]
pub(crate) enum TargetPhase {
    Connecting(Box<BackendLogin>),
    LoggingIn(Box<BackendLogin>),
    /// Logged in; the restore starts once the user variables are known.
    LoggedIn(Box<BackendSession>),
    Restoring(Box<Restoring>),
}

/// The restore plan running on the target.
#[derive(Debug)]
pub(crate) struct Restoring {
    pub session: BackendSession,
    pub injected: Injected,
    /// Steps sent and not yet answered, in order.
    pub steps: VecDeque<Step>,
    /// Client statement id → the target's.
    pub ids: BTreeMap<u32, u32>,
    /// Client statement id → the column definitions the target sent when it prepared it
    /// (kept under MariaDB's metadata cache only).
    pub metadata: BTreeMap<u32, Vec<Vec<u8>>>,
    pub skipped: Vec<String>,
}

/// What the source must still tell before the restore can start.
#[derive(Debug)]
pub(crate) enum SourceRead {
    NotStarted,
    Reading(Box<StateRead>),
    /// The session state holds everything (read now, or known without the source).
    Done,
}

/// What a [`StateRead`] wants next.
#[derive(Debug)]
pub(crate) enum ReadStep {
    /// Wait for more bytes.
    Pending,
    /// Send these and wait.
    Send(Bytes),
    /// The user variables and `LAST_INSERT_ID()`.
    Done(Vec<UserVariable>, u64),
    /// Told to ask nothing more ([`StateRead::send_no_more`]) and the values
    /// needed another question: they stay unknown.
    Abandoned,
}

/// Why a [`StateRead`] failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The backend answered, though not with what ferry needs (an ERR where
    /// `information_schema.USER_VARIABLES` does not exist, a type ferry does not
    /// know): the connection is still in step once the rest of the answer is in.
    Answer(String),
    /// The bytes cannot be followed: the connection is lost to ferry.
    Protocol(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Answer(why) | ReadError::Protocol(why) => f.write_str(why),
        }
    }
}

/// Reading from a backend what only it knows: user variables (names, types,
/// exact values) and `LAST_INSERT_ID()`. At most two round trips.
#[derive(Debug)]
pub(crate) struct StateRead {
    q: Injected,
    types: Option<Vec<UserVariableType>>,
    last_insert_id: Option<u64>,
    /// Client bytes went to the backend after ferry's questions: asking
    /// another now would put its answer among the client's.
    no_more: bool,
}

impl StateRead {
    /// Starts a read on a connection with `caps`, accepting at most
    /// `rows_limit` bytes of rows; returns the bytes to send.
    pub fn start(caps: u32, max_packet: usize, rows_limit: usize) -> (Self, Bytes) {
        let mut q = Injected::new(caps, max_packet).with_rows_limit(rows_limit);
        let mut out = BytesMut::new();
        q.write(
            &Request::Query(restore::USER_VARIABLES_QUERY.into()),
            &mut out,
        );
        q.write(
            &Request::Query(restore::LAST_INSERT_ID_QUERY.into()),
            &mut out,
        );
        let read = StateRead {
            q,
            types: None,
            last_insert_id: None,
            no_more: false,
        };
        (read, out.freeze())
    }

    /// Requests not yet answered.
    pub fn outstanding(&self) -> usize {
        self.q.outstanding()
    }

    /// Sends no further question (client bytes follow ferry's on the wire).
    pub fn send_no_more(&mut self) {
        self.no_more = true;
    }

    /// Bytes received after the last answer ferry waited for (the client's responses).
    pub fn take_rest(&mut self) -> BytesMut {
        self.q.take_rest()
    }

    /// Gives up: the replies still to come are the queue's to swallow.
    pub fn into_queue(self) -> Injected {
        self.q
    }

    /// Feeds bytes from the backend.
    pub fn feed(&mut self, data: &[u8]) -> Result<ReadStep, ReadError> {
        self.q.feed(data).map_err(ReadError::Protocol)?;
        self.replies().map_err(ReadError::Answer)
    }

    fn replies(&mut self) -> Result<ReadStep, String> {
        while let Some(reply) = self.q.poll_reply() {
            let rows = match reply {
                Reply::Rows(rows) => rows,
                Reply::Err(e) => return Err(format!("{} {}", e.code, e.message)),
                other => return Err(format!("unexpected {other:?}")),
            };
            if self.types.is_none() {
                self.types = Some(restore::parse_user_variable_types(&rows)?);
                continue;
            }
            if self.last_insert_id.is_none() {
                let id = rows
                    .first()
                    .and_then(|r| r.first().cloned().flatten())
                    .and_then(|v| String::from_utf8_lossy(&v).parse::<u64>().ok())
                    .unwrap_or(0);
                self.last_insert_id = Some(id);
                let types = self.types.as_deref().unwrap_or_default();
                if let Some(sql) = restore::user_values_query(types) {
                    if self.no_more {
                        return Ok(ReadStep::Abandoned);
                    }
                    return Ok(ReadStep::Send(self.q.request(&Request::Query(sql.into()))));
                }
                return Ok(ReadStep::Done(Vec::new(), id));
            }
            let types = self.types.take().unwrap_or_default();
            let row = rows
                .first()
                .ok_or("the user variables query returned no row")?;
            let values = restore::parse_user_values(&types, row)?;
            return Ok(ReadStep::Done(values, self.last_insert_id.unwrap_or(0)));
        }
        Ok(ReadStep::Pending)
    }
}

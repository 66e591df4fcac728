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

use bytes::BytesMut;

use crate::cluster::{BackendId, Route};
use crate::injected::Injected;
use crate::login::backend::{BackendLogin, BackendSession};
use crate::restore::{Step, UserVariable, UserVariableType};
use crate::wire::PacketDecoder;
use crate::Timestamp;

/// Most client bytes held while a move runs; more abandons the move.
pub const HELD_LIMIT: usize = 1 << 20;

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

    /// The user variables once known.
    pub fn user_values(&self) -> Option<&[UserVariable]> {
        match &self.source {
            SourceRead::Done(v) => Some(v),
            _ => None,
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
    pub skipped: Vec<String>,
}

/// Reading the user variables on the source.
#[derive(Debug)]
pub(crate) enum SourceRead {
    NotStarted,
    /// Names and types asked for.
    Types(Injected),
    /// Values asked for.
    Values(Injected, Vec<UserVariableType>),
    Done(Vec<UserVariable>),
}

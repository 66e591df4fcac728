//! Live sessions, for `/api/sessions`, metrics and graceful shutdown.
//!
//! Each connection task registers an entry when it is accepted and drops it
//! when it ends. The pump updates the entry through [`SessionEntry`]'s
//! atomics: no lock on the hot path.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use ferry_core::cluster::BackendId;
use ferry_core::labels::Labels;
use ferry_core::session::{Control, MoveReport, Trigger};
use ferry_core::Timestamp;

/// Who a session is and where it runs; set when it has logged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The tenant, if any.
    pub tenant: Option<String>,
    /// The user name as sent to the backend.
    pub user: String,
    /// The labels the session asked for.
    pub labels: Labels,
    /// The backend it runs on.
    pub backend: BackendId,
    /// The backend's thread id for this session.
    pub backend_connection_id: u32,
}

const LAST_NONE: u8 = 0;
const LAST_CLIENT: u8 = 1;
const LAST_BACKEND: u8 = 2;

/// One live session.
#[derive(Debug)]
pub struct SessionEntry {
    /// The connection id the client received in ferry's handshake.
    pub id: u32,
    info: Mutex<Option<SessionInfo>>,
    /// Inside a transaction (updated by the tracker; false until it is integrated).
    pub in_txn: AtomicBool,
    /// At a safe point (updated by the tracker; true until it is integrated).
    pub safe: AtomicBool,
    blocked_by: Mutex<Vec<String>>,
    /// Completed migrations.
    pub migrations: AtomicU32,
    reads: AtomicU64,
    last_read: AtomicU8,
    moves: Mutex<Moves>,
    /// The backend threads it ran as before its moves, newest first: a
    /// `KILL` of an id read before a move still finds it.
    earlier: Mutex<VecDeque<(BackendId, u32)>>,
    control: async_channel::Sender<Control>,
    client: std::sync::OnceLock<std::net::SocketAddr>,
}

/// How many earlier backend threads a session remembers.
pub const EARLIER_THREADS: usize = 8;

/// What the admin API and the balancer know of a session's moves.
#[derive(Clone, Debug, Default)]
pub struct Moves {
    /// A move asked for and not finished (the trigger).
    pub pending: Option<Trigger>,
    /// A move is running now.
    pub running: bool,
    /// How the last move ended.
    pub last: Option<MoveReport>,
    /// When the last successful move ended.
    pub last_moved: Option<Timestamp>,
}

impl SessionEntry {
    fn new(id: u32, control: async_channel::Sender<Control>) -> Self {
        SessionEntry {
            moves: Mutex::new(Moves::default()),
            earlier: Mutex::new(VecDeque::new()),
            control,
            id,
            info: Mutex::new(None),
            in_txn: AtomicBool::new(false),
            safe: AtomicBool::new(true),
            blocked_by: Mutex::new(Vec::new()),
            migrations: AtomicU32::new(0),
            reads: AtomicU64::new(0),
            last_read: AtomicU8::new(LAST_NONE),
            client: std::sync::OnceLock::new(),
        }
    }

    /// The client's address (from a PROXY header, if it came through a trusted balancer).
    pub fn client(&self) -> Option<std::net::SocketAddr> {
        self.client.get().copied()
    }

    /// Records the client's address (once).
    pub fn set_client(&self, addr: std::net::SocketAddr) {
        let _ = self.client.set(addr);
    }

    /// Who and where, once logged in.
    pub fn info(&self) -> Option<SessionInfo> {
        self.info.lock().expect("session info lock").clone()
    }

    /// Records the login.
    pub fn set_info(&self, info: SessionInfo) {
        *self.info.lock().expect("session info lock") = Some(info);
    }

    /// Sends the session a command; false if it is gone.
    pub fn send(&self, control: Control) -> bool {
        if let Control::Migrate(request) = &control {
            let mut moves = self.moves.lock().expect("moves lock");
            if moves.pending.is_none() || request.trigger == Trigger::Admin {
                moves.pending = Some(request.trigger);
            }
        }
        self.control.try_send(control).is_ok()
    }

    /// What is known of the session's moves.
    pub fn moves(&self) -> Moves {
        self.moves.lock().expect("moves lock").clone()
    }

    /// A move started.
    pub fn move_started(&self) {
        let mut moves = self.moves.lock().expect("moves lock");
        moves.running = true;
    }

    /// A move ended at `now`; on success the session runs on `report.to` with a new backend thread.
    pub fn move_ended(&self, report: &MoveReport, now: Timestamp) {
        {
            let mut moves = self.moves.lock().expect("moves lock");
            moves.running = false;
            moves.pending = None;
            moves.last = Some(report.clone());
            if report.outcome.is_ok() {
                moves.last_moved = Some(now);
            }
        }
        if report.outcome.is_ok() {
            self.migrations.fetch_add(1, Relaxed);
            let mut info = self.info.lock().expect("session info lock");
            if let (Some(info), Some(to), Some(thread)) = (
                info.as_mut(),
                report.to.clone(),
                report.backend_connection_id,
            ) {
                let mut earlier = self.earlier.lock().expect("earlier threads lock");
                earlier.push_front((info.backend.clone(), info.backend_connection_id));
                earlier.truncate(EARLIER_THREADS);
                info.backend = to;
                info.backend_connection_id = thread;
            }
        }
    }

    /// The backend threads it ran as before, newest first.
    pub fn earlier_threads(&self) -> Vec<(BackendId, u32)> {
        self.earlier
            .lock()
            .expect("earlier threads lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Why the session cannot move now.
    pub fn blocked_by(&self) -> Vec<String> {
        self.blocked_by.lock().expect("blocked_by lock").clone()
    }

    /// Replaces the reasons the session cannot move.
    pub fn set_blocked_by(&self, reasons: Vec<String>) {
        *self.blocked_by.lock().expect("blocked_by lock") = reasons;
    }

    /// Notes one read from the client or the backend (two relaxed atomics).
    pub fn note_read(&self, from_client: bool) {
        self.reads.fetch_add(1, Relaxed);
        self.last_read.store(
            if from_client {
                LAST_CLIENT
            } else {
                LAST_BACKEND
            },
            Relaxed,
        );
    }

    /// A snapshot for idleness checks: (reads so far, whether the backend spoke last).
    pub fn activity(&self) -> (u64, bool) {
        (
            self.reads.load(Relaxed),
            self.last_read.load(Relaxed) == LAST_BACKEND,
        )
    }

    /// Logged in, not in a transaction, at a safe point, and the backend
    /// answered the last thing the client sent (no command outstanding, as
    /// far as the shell can tell until the tracker reports it exactly).
    pub fn looks_idle(&self) -> bool {
        self.info.lock().expect("session info lock").is_some()
            && !self.in_txn.load(Relaxed)
            && self.safe.load(Relaxed)
            && self.last_read.load(Relaxed) == LAST_BACKEND
    }
}

/// All live sessions by connection id.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<BTreeMap<u32, Arc<SessionEntry>>>,
}

impl Registry {
    /// Adds a session accepted with `id`; it is removed when the guard drops.
    /// The registration holds the receiving end of the session's control channel.
    pub fn register(self: &Arc<Self>, id: u32) -> Registration {
        // A few commands at most are ever queued: moves are de-duplicated by the session.
        let (tx, rx) = async_channel::bounded(8);
        let entry = Arc::new(SessionEntry::new(id, tx));
        self.sessions
            .lock()
            .expect("registry lock")
            .insert(id, entry.clone());
        Registration {
            registry: self.clone(),
            entry,
            control: Some(rx),
        }
    }

    /// One session.
    pub fn get(&self, id: u32) -> Option<Arc<SessionEntry>> {
        self.sessions
            .lock()
            .expect("registry lock")
            .get(&id)
            .cloned()
    }

    /// All sessions, by id.
    pub fn all(&self) -> Vec<Arc<SessionEntry>> {
        self.sessions
            .lock()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    /// How many connections are open (logged in or not).
    pub fn len(&self) -> usize {
        self.sessions.lock().expect("registry lock").len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps a session in the registry until dropped.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    /// The session's entry.
    pub entry: Arc<SessionEntry>,
    /// Commands for the session (taken by its pump).
    pub control: Option<async_channel::Receiver<Control>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .expect("registry lock")
            .remove(&self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_as_long_as_their_registration() {
        let r = Arc::new(Registry::default());
        let a = r.register(1);
        let b = r.register(2);
        assert_eq!(r.len(), 2);
        assert!(r.get(1).is_some());
        drop(a);
        assert!(r.get(1).is_none());
        assert_eq!(r.all().iter().map(|e| e.id).collect::<Vec<_>>(), [2]);
        drop(b);
        assert!(r.is_empty());
    }

    #[test]
    fn a_session_remembers_the_last_threads_it_ran_as() {
        use ferry_core::session::MoveReport;
        let r = Arc::new(Registry::default());
        let g = r.register(1);
        let e = &g.entry;
        e.set_info(SessionInfo {
            tenant: None,
            user: "app".into(),
            labels: Labels::new(),
            backend: BackendId("cn1".into()),
            backend_connection_id: 100,
        });
        for i in 0..10u32 {
            let report = MoveReport {
                trigger: Trigger::Admin,
                from: BackendId(format!("cn{}", 1 + i % 2)),
                to: Some(BackendId(format!("cn{}", 1 + (i + 1) % 2))),
                outcome: Ok(()),
                duration: std::time::Duration::ZERO,
                paused: None,
                backend_connection_id: Some(101 + i),
                skipped: Vec::new(),
            };
            e.move_ended(&report, Timestamp::ZERO);
        }
        let earlier = e.earlier_threads();
        assert_eq!(earlier.len(), EARLIER_THREADS);
        assert_eq!(earlier[0], (BackendId("cn2".into()), 109));
        assert_eq!(earlier[7], (BackendId("cn1".into()), 102));
        assert_eq!(e.info().unwrap().backend_connection_id, 110);
    }

    #[test]
    fn idle_means_logged_in_and_answered() {
        let r = Arc::new(Registry::default());
        let g = r.register(1);
        let e = &g.entry;
        e.note_read(false);
        assert!(!e.looks_idle(), "not logged in yet");
        e.set_info(SessionInfo {
            tenant: None,
            user: "app".into(),
            labels: Labels::new(),
            backend: BackendId("cn1".into()),
            backend_connection_id: 9,
        });
        assert!(e.looks_idle());
        e.note_read(true);
        assert!(!e.looks_idle(), "a command is outstanding");
        e.note_read(false);
        e.in_txn.store(true, Relaxed);
        assert!(!e.looks_idle(), "inside a transaction");
    }
}

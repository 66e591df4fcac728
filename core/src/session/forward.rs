//! Forwarding a logged-in session: bytes pass through untouched while the
//! tracker follows them, except the OK packets a client must see differently
//! (ferry switched the backend's session trackers on for itself).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use crate::client_trackers::TrackingSettings;
use crate::login::backend::{tracker_setup_frame, BackendSession, Trackers};
use crate::login::frame;
use crate::packets::flags::caps::{
    CLIENT_MYSQL, CLIENT_SESSION_TRACK, MARIADB_CLIENT_CACHE_METADATA,
};
use crate::packets::flags::status::SERVER_SESSION_STATE_CHANGED;
use crate::packets::session_state::write_all;
use crate::packets::{ErrPacket, InfoStyle, OkPacket, TrackItem};
use crate::state::SessionState;
use crate::tracker::{Command, Direction, Event, Outcome, Span, TrackError, Tracker, REPLY_LIMIT};
use crate::wire::PacketDecoder;

/// Where a session stands, for operators and for deciding when it may move or close.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStatus {
    /// Inside a transaction.
    pub in_txn: bool,
    /// At a safe point: nothing in flight, no transaction, nothing that blocks a move.
    pub safe: bool,
    /// Why it is not safe, in words.
    pub blocked_by: Vec<String>,
}

/// Bytes for one side of the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Send {
    /// For the client.
    ToClient(Bytes),
    /// For the backend.
    ToBackend(Bytes),
}

/// Putting the session trackers back after `COM_RESET_CONNECTION` or
/// `COM_CHANGE_USER` (both reset them on the server).
#[derive(Debug)]
enum Rearm {
    /// Nothing to do.
    Idle,
    /// A reset is in flight; re-arm once it succeeded.
    AfterReset,
    /// The reset succeeded: send the set-up once this chunk is passed on.
    Now,
    /// ferry's own set-up is in flight: its reply is consumed here, and the
    /// client's next bytes wait so the two conversations do not interleave.
    Waiting {
        reply: PacketDecoder,
        queued: BytesMut,
    },
}

/// The forwarding half of a session: tracker, session state and OK rewriting.
#[derive(Debug)]
pub struct Forward {
    tracker: Tracker,
    state: SessionState,
    client_caps: u32,
    backend_caps: u32,
    /// MariaDB extended capabilities the backend offered.
    backend_mariadb_caps: u32,
    /// The client negotiated MariaDB's metadata cache.
    client_cache: bool,
    /// How this backend writes OK info for clients without session tracking.
    info_style: InfoStyle,
    /// The client's own tracker settings, when ferry switched everything on.
    settings: Option<TrackingSettings>,
    /// Reasons ferry itself cannot move the session (trackers unavailable).
    notes: Vec<String>,
    /// Server bytes on their way to the client (held back while a packet to rewrite is incomplete).
    to_client: Splice,
    /// Client bytes on their way to the backend (held back only while ids are translated).
    to_backend: Splice,
    /// Server offset where the response to the last command began.
    response_start: u64,
    /// Set when a response completed, so the status is recomputed.
    status_dirty: bool,
    rearm: Rearm,
    /// Client commands seen (and passed on), for the per-backend command counter.
    commands: u64,
}

impl Forward {
    /// Starts forwarding for a client with `client_caps`, logged in to `backend`.
    pub fn new(client_caps: u32, backend: &BackendSession, database: Option<String>) -> Self {
        let mut notes = Vec::new();
        let settings = match &backend.trackers {
            Trackers::On(settings) => Some(settings.clone()),
            Trackers::Off => None,
            Trackers::Refused(why) => {
                notes.push(format!("the backend refused session tracking ({why})"));
                None
            }
        };
        let mut state = SessionState::new();
        state.set_database(database);
        Forward {
            tracker: Tracker::new(backend.capabilities),
            state,
            client_caps,
            backend_caps: backend.capabilities,
            backend_mariadb_caps: backend.handshake.mariadb_capabilities,
            client_cache: false,
            info_style: info_style(backend),
            settings,
            notes,
            to_client: Splice::default(),
            to_backend: Splice::default(),
            response_start: 0,
            status_dirty: true,
            rearm: Rearm::Idle,
            commands: 0,
        }
    }

    /// Follows bytes from the client; they go to the backend unchanged
    /// (except statement ids after a migration, see [`Tracker::edits_client`]).
    pub fn from_client(
        &mut self,
        data: Bytes,
        emit: &mut impl FnMut(Send),
    ) -> Result<(), TrackError> {
        if let Rearm::Waiting { queued, .. } = &mut self.rearm {
            queued.extend_from_slice(&data);
            return Ok(());
        }
        self.tracker.client_bytes(&data)?;
        let mut edits = Vec::new();
        self.drain_events(&mut edits);
        let end = self.tracker.client_offset();
        if edits.is_empty() && self.to_backend.is_clear() && !self.tracker.edits_client() {
            // The hot path: pass the read on as it is.
            self.to_backend.sent = end;
            emit(Send::ToBackend(data));
            return Ok(());
        }
        let hold_from = if self.tracker.edits_client() {
            self.tracker.client_collecting_from().unwrap_or(end)
        } else {
            end
        };
        if let Some(out) = self.to_backend.pass(data, hold_from, edits) {
            emit(Send::ToBackend(out));
        }
        Ok(())
    }

    /// Follows bytes from the backend and passes on what the client should get.
    ///
    /// Usually that is `data` itself (no copy); bytes of an incomplete packet
    /// that may be an OK are held back until it is complete.
    pub fn from_server(
        &mut self,
        data: Bytes,
        emit: &mut impl FnMut(Send),
    ) -> Result<(), TrackError> {
        if matches!(self.rearm, Rearm::Waiting { .. }) {
            return self.rearm_reply(&data, emit);
        }
        self.tracker.server_bytes(&data)?;
        let mut edits = Vec::new();
        self.drain_events(&mut edits);
        let end = self.tracker.server_offset();
        let hold_from = self.tracker.server_collecting_from().unwrap_or(end);
        if let Some(out) = self.to_client.pass(data, hold_from, edits) {
            emit(Send::ToClient(out));
        }
        if matches!(self.rearm, Rearm::Now) {
            emit(Send::ToBackend(tracker_setup_frame()));
            self.rearm = Rearm::Waiting {
                reply: PacketDecoder::new(REPLY_LIMIT),
                queued: BytesMut::new(),
            };
            self.status_dirty = true;
        }
        Ok(())
    }

    /// Consumes the reply to ferry's own tracker set-up, then lets the client's queued bytes go.
    fn rearm_reply(&mut self, data: &[u8], emit: &mut impl FnMut(Send)) -> Result<(), TrackError> {
        let Rearm::Waiting { reply, .. } = &mut self.rearm else {
            return Ok(());
        };
        reply.extend(data);
        let violation = |reason: String| TrackError {
            direction: Direction::Server,
            offset: 0,
            reason,
            too_large: None,
        };
        let packet = match reply.decode() {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(e) => return Err(violation(format!("reply to the tracker set-up: {e}"))),
        };
        if reply.buffered() > 0 {
            return Err(violation(
                "bytes after the reply to the tracker set-up".into(),
            ));
        }
        match packet.payload.first() {
            Some(0x00) => {}
            Some(0xFF) => {
                let why =
                    ErrPacket::parse(&packet.payload).map_or_else(|e| e.to_string(), |e| e.message);
                self.note(&format!(
                    "the backend refused to re-enable session tracking ({why})"
                ));
            }
            _ => {
                return Err(violation(
                    "the tracker set-up got neither OK nor ERR".into(),
                ))
            }
        }
        let Rearm::Waiting { queued, .. } = std::mem::replace(&mut self.rearm, Rearm::Idle) else {
            unreachable!("checked above");
        };
        self.status_dirty = true;
        if !queued.is_empty() {
            self.from_client(queued.freeze(), emit)?;
        }
        Ok(())
    }

    /// Adds (or, with `blocked` false, removes) a reason the session cannot
    /// move that only the session knows, such as an unknown credential.
    pub fn set_blocker(&mut self, why: &str, blocked: bool) {
        let present = self.notes.iter().any(|n| n == why);
        if blocked && !present {
            self.notes.push(why.to_string());
        } else if !blocked && present {
            self.notes.retain(|n| n != why);
        } else {
            return;
        }
        self.status_dirty = true;
    }

    /// True if a response completed since the last call (the status may have changed).
    pub fn take_status_change(&mut self) -> bool {
        std::mem::take(&mut self.status_dirty)
    }

    /// In a transaction, safe, and why not.
    pub fn status(&self) -> SessionStatus {
        let mut blocked_by = self.tracker.not_safe_because();
        if !matches!(self.rearm, Rearm::Idle) {
            blocked_by.push("ferry is re-enabling the session trackers after a reset".into());
        }
        blocked_by.extend(self.state.blocked_by());
        blocked_by.extend(self.notes.iter().cloned());
        let safe = blocked_by.is_empty();
        // Broken on purpose: an open transaction no longer keeps the session
        // from a safe point, so moves are ordered and started inside one.
        #[cfg(feature = "sabotage")]
        let safe = safe
            || (crate::sabotage::is(crate::sabotage::Fault::MoveInTransaction)
                && blocked_by.iter().all(|why| why == "a transaction is open"));
        SessionStatus {
            in_txn: self.tracker.in_transaction(),
            safe,
            blocked_by,
        }
    }

    /// The server status flags last reported (for OK packets ferry writes itself).
    pub fn server_status(&self) -> u16 {
        self.tracker.status()
    }

    /// True once the client sent `COM_QUIT`.
    pub fn client_quit(&self) -> bool {
        self.tracker.client_quit()
    }

    /// Holds at most `limit` bytes of pipelined commands (a share of `max_session_memory`).
    pub fn set_pipeline_limit(&mut self, limit: usize) {
        self.tracker.set_pipeline_limit(limit);
    }

    /// Client commands followed since the login (the shell turns them into QPS).
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// True when no command is outstanding (a COM_QUIT may be sent to the backend).
    pub fn is_idle(&self) -> bool {
        self.tracker.is_idle() && matches!(self.rearm, Rearm::Idle)
    }

    /// The state a migration would carry.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The state, to record what ferry read from the server (user variables).
    pub fn state_mut(&mut self) -> &mut SessionState {
        &mut self.state
    }

    /// Capabilities in force with the backend.
    pub fn backend_caps(&self) -> u32 {
        self.backend_caps
    }

    /// The client negotiated these MariaDB extended capabilities (the metadata cache shapes results).
    pub fn set_client_mariadb_caps(&mut self, caps: u32, backend: &BackendSession) {
        self.client_cache = caps & MARIADB_CLIENT_CACHE_METADATA != 0;
        self.tracker
            .set_metadata_cache(self.client_cache, backend.caches_metadata());
    }

    /// Refuses client packets longer than `limit` (`max_packet_size`).
    pub fn set_client_packet_limit(&mut self, limit: u64) {
        self.tracker.set_client_packet_limit(limit);
    }

    /// MariaDB extended capabilities the backend offered in its greeting.
    pub fn backend_mariadb_caps(&self) -> u32 {
        self.backend_mariadb_caps
    }

    /// The statement the client prepared last.
    pub fn last_prepared(&self) -> Option<u32> {
        self.tracker.last_prepared()
    }

    /// True when the backend has sent part of the response to the outstanding command.
    pub fn response_started(&self) -> bool {
        self.tracker.server_offset() > self.response_start
    }

    /// Continues on a new backend connection (a migration, at a safe point):
    /// what belongs to the old connection is dropped, what belongs to the
    /// client (its capabilities, statements, session state) carries on.
    /// `ids` maps each live statement's client id to its id on the new connection.
    /// `metadata` holds the column definitions each re-prepared statement got
    /// there (under MariaDB's metadata cache; see [`Tracker::set_prepared_metadata`]).
    pub fn replace_backend(
        &mut self,
        backend: &BackendSession,
        ids: BTreeMap<u32, u32>,
        metadata: BTreeMap<u32, Vec<Vec<u8>>>,
    ) {
        self.tracker.server_replaced(backend.capabilities, ids);
        self.tracker
            .set_metadata_cache(self.client_cache, backend.caches_metadata());
        self.tracker.set_prepared_metadata(metadata);
        self.backend_caps = backend.capabilities;
        self.backend_mariadb_caps = backend.handshake.mariadb_capabilities;
        self.info_style = info_style(backend);
        self.to_client = Splice::default();
        self.response_start = 0;
        self.rearm = Rearm::Idle;
        if let Trackers::Refused(why) = &backend.trackers {
            self.note(&format!("the backend refused session tracking ({why})"));
        }
        self.status_dirty = true;
    }

    /// Takes in the tracker's events; `edits` gets the byte replacements for
    /// the direction just fed (rewritten OKs, translated statement ids).
    fn drain_events(&mut self, edits: &mut Vec<Edit>) {
        while let Some(event) = self.tracker.poll_event() {
            if let Event::Command { .. } = &event {
                self.commands += 1;
            }
            match &event {
                Event::Ok { ok, trackers, at } => {
                    if let Some(rewritten) = self.client_ok(ok, trackers) {
                        let mut payload = BytesMut::new();
                        rewritten.write_styled(&mut payload, self.client_caps, self.info_style);
                        edits.push(Edit::replace(*at, frame(&payload, at.seq)));
                    }
                }
                Event::Edit {
                    offset, len, bytes, ..
                } => edits.push(Edit {
                    offset: *offset,
                    len: *len,
                    bytes: Bytes::from(bytes.clone()),
                }),
                Event::Command {
                    command: Command::ResetConnection | Command::ChangeUser,
                    ..
                } if self.settings.is_some() => {
                    self.response_start = self.tracker.server_offset();
                    self.rearm = Rearm::AfterReset;
                }
                Event::Command { .. } => self.response_start = self.tracker.server_offset(),
                Event::ResponseDone { outcome } => {
                    self.status_dirty = true;
                    if matches!(self.rearm, Rearm::AfterReset) {
                        self.rearm = if *outcome == Outcome::Ok {
                            Rearm::Now
                        } else {
                            Rearm::Idle
                        };
                    }
                }
                _ => {}
            }
            self.state.on_event(&event);
        }
    }

    fn note(&mut self, why: &str) {
        if !self.notes.iter().any(|n| n == why) {
            self.notes.push(why.to_string());
        }
    }

    /// The OK the client should see instead of `ok`, if it differs.
    fn client_ok(&mut self, ok: &OkPacket, items: &[TrackItem]) -> Option<OkPacket> {
        if self.backend_caps & CLIENT_SESSION_TRACK == 0 {
            return None;
        }
        if self.client_caps & CLIENT_SESSION_TRACK == 0 {
            // Without state or info both encodings are the same bytes.
            let same = ok.info.is_empty() && ok.session_state.is_none();
            return (!same).then(|| ok.clone());
        }
        let settings = self.settings.as_mut()?;
        let mut changed_tracking = false;
        for item in items {
            changed_tracking |= settings.follow(item);
        }
        let kept: Vec<TrackItem> = items
            .iter()
            .filter(|i| settings.shows(i))
            .cloned()
            .collect();
        if changed_tracking {
            self.note(
                "the client changed the session trackers; ferry no longer sees all session state",
            );
        }
        if kept.len() == items.len() {
            return None;
        }
        let mut client = ok.clone();
        if kept.is_empty() {
            client.session_state = None;
            client.status &= !SERVER_SESSION_STATE_CHANGED;
        } else {
            let mut block = BytesMut::new();
            write_all(&kept, &mut block);
            client.session_state = Some(block.to_vec());
        }
        Some(client)
    }
}

/// How a backend writes OK info for clients without session tracking.
fn info_style(backend: &BackendSession) -> InfoStyle {
    // MariaDB clears CLIENT_MYSQL in its greeting.
    if backend.handshake.capabilities & CLIENT_MYSQL == 0 {
        InfoStyle::LengthPrefixed
    } else {
        InfoStyle::Raw
    }
}

/// Bytes to replace in a stream: `len` bytes at `offset` become `bytes`.
#[derive(Debug)]
struct Edit {
    offset: u64,
    len: u64,
    bytes: Bytes,
}

impl Edit {
    fn replace(at: Span, bytes: Bytes) -> Self {
        Edit {
            offset: at.offset,
            len: at.len,
            bytes,
        }
    }
}

/// One direction's bytes on their way through: passed on as read (no copy)
/// unless a packet must be held back until complete or edited.
#[derive(Debug, Default)]
struct Splice {
    /// Bytes held back, starting at `sent`.
    held: BytesMut,
    /// Offset in the stream of the first byte not yet passed on.
    sent: u64,
}

impl Splice {
    fn is_clear(&self) -> bool {
        self.held.is_empty()
    }

    /// Takes `data` (the bytes after what was held) and returns what may go
    /// on now: everything before `hold_from`, with `edits` applied.
    fn pass(&mut self, data: Bytes, hold_from: u64, mut edits: Vec<Edit>) -> Option<Bytes> {
        let pending = if self.held.is_empty() {
            data
        } else {
            self.held.extend_from_slice(&data);
            self.held.split().freeze()
        };
        let base = self.sent;
        // Never past what is pending, whatever the tracker says.
        let stop = usize::try_from(hold_from.saturating_sub(base))
            .map_or(pending.len(), |s| s.min(pending.len()));
        let out = if edits.is_empty() {
            (stop > 0).then(|| pending.slice(..stop))
        } else {
            // Splice the edits in: one buffer, one write.
            edits.sort_by_key(|e| e.offset);
            let mut out = BytesMut::with_capacity(stop + 64);
            let mut cursor = 0usize;
            for e in edits {
                let start = (e.offset.saturating_sub(base) as usize).clamp(cursor, stop);
                out.extend_from_slice(&pending[cursor..start]);
                out.extend_from_slice(&e.bytes);
                cursor = (start + e.len as usize).min(stop);
            }
            out.extend_from_slice(&pending[cursor..stop]);
            Some(out.freeze())
        };
        self.held.extend_from_slice(&pending[stop..]);
        self.sent = base + stop as u64;
        out
    }
}

//! Following commands and responses of a logged-in session, byte chunk by byte chunk.
//!
//! The [`Tracker`] knows, for every client command, the shape of the server's
//! response and walks it frame by frame: it never decides anything from a
//! sequence id or from a first byte alone, and it copies only the few packets
//! it must parse (OK, ERR, EOF, column counts, prepare replies, the head of
//! each command). Rows and column definitions are skipped in place.
//!
//! Feed it the bytes of each direction exactly as read ([`Tracker::client_bytes`],
//! [`Tracker::server_bytes`]) and drain [`Tracker::poll_event`] after each call.
//! Anything the shape does not allow is a [`TrackError`]: the session must
//! close, because ferry no longer knows where the conversation stands.

mod command;
mod frames;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::packets::codec::Reader;
use crate::packets::flags::caps::CLIENT_DEPRECATE_EOF;
use crate::packets::flags::command::*;
use crate::packets::flags::status::*;
use crate::packets::{EofPacket, ErrPacket, OkPacket};
use crate::wire::{write_packet, HEADER_LEN, MAX_FRAME_PAYLOAD};

use bytes::{BufMut, BytesMut};

pub use crate::packets::session_state::TrackItem;
pub use command::{
    Command, SqlText, CURSOR_TYPE_READ_ONLY, LAST_PREPARED, SQL_LIMIT,
    STMT_BULK_FLAG_CLIENT_SEND_TYPES, STMT_BULK_FLAG_SEND_UNIT_RESULTS,
};

use frames::{Frames, Packet};

/// Longest OK, ERR or EOF packet the tracker collects; a longer one is a protocol error.
pub const REPLY_LIMIT: usize = 1 << 20;

/// Longest `LOCAL INFILE` file name collected.
const FILENAME_LIMIT: usize = 4096;

/// Which peer sent the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    Client,
    /// Server to client.
    Server,
}

/// Where a packet sits in the server→client (or client→server) byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Offset of the first header byte, counted from the first byte given to the tracker.
    pub offset: u64,
    /// Bytes the packet occupies, frame headers included.
    pub len: u64,
    /// Sequence id of its first frame.
    pub seq: u8,
}

/// How a response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every statement succeeded.
    Ok,
    /// The response ended with an ERR (earlier results of a multi-statement did succeed).
    Err,
    /// The command has no response.
    NoResponse,
}

/// What the tracker observed, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client sent a command.
    Command {
        /// The command.
        command: Command,
        /// Where the command packet starts in the client→server stream.
        offset: u64,
    },
    /// The server sent an OK packet (header 0x00, or 0xFE ending a result set under `CLIENT_DEPRECATE_EOF`).
    Ok {
        /// The packet.
        ok: OkPacket,
        /// The session-state entries it carried.
        trackers: Vec<TrackItem>,
        /// Where it is in the server→client stream (so it can be rewritten in place).
        at: Span,
    },
    /// The server sent an ERR packet.
    Err {
        /// The packet.
        err: ErrPacket,
        /// Where it is in the server→client stream.
        at: Span,
    },
    /// The server sent an EOF packet.
    Eof {
        /// The packet.
        eof: EofPacket,
        /// Where it is in the server→client stream.
        at: Span,
    },
    /// The server accepted a `COM_STMT_PREPARE`.
    Prepared {
        /// Statement id.
        id: u32,
        /// Parameter count.
        params: u16,
        /// Column count.
        columns: u16,
    },
    /// The server asked the client for a local file.
    LocalInfile {
        /// The file name the server asked for.
        filename: Vec<u8>,
    },
    /// One statement's result is complete (an OK reply or the end of a result set).
    ResultDone {
        /// Status flags it ended with.
        status: u16,
    },
    /// The response to the last command is complete; no command is outstanding.
    ResponseDone {
        /// How it ended.
        outcome: Outcome,
    },
    /// The connection turned into a replication stream; the tracker stops following it.
    Replication,
    /// Bytes to replace in one direction before they are passed on: statement
    /// ids translated between what the client knows and what the backend
    /// gave after a migration, or parameter types re-sent to a new backend.
    Edit {
        /// Which stream the bytes are in.
        direction: Direction,
        /// Offset of the first byte replaced.
        offset: u64,
        /// How many bytes are replaced.
        len: u64,
        /// What replaces them.
        bytes: Vec<u8>,
    },
}

/// Why the tracker could not follow the conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackError {
    /// Who sent the offending bytes.
    pub direction: Direction,
    /// Offset of the offending packet in that direction's stream.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
    /// The client sent a packet larger than the limit; the sequence id for the ERR that says so.
    pub too_large: Option<u8>,
}

impl fmt::Display for TrackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.direction {
            Direction::Client => "client",
            Direction::Server => "server",
        };
        write!(
            f,
            "protocol violation by the {who} at byte {}: {}",
            self.offset, self.reason
        )
    }
}

impl std::error::Error for TrackError {}

/// Follows one logged-in client↔server conversation.
#[derive(Debug)]
pub struct Tracker {
    client: Frames,
    server: Frames,
    conv: Conversation,
}

impl Tracker {
    /// A tracker for a stream whose negotiated capabilities are `capabilities`.
    ///
    /// The status starts as autocommit, outside a transaction, as after a login.
    pub fn new(capabilities: u32) -> Self {
        Tracker {
            client: Frames::new(MAX_FRAME_PAYLOAD),
            server: Frames::new(MAX_FRAME_PAYLOAD),
            conv: Conversation {
                caps: capabilities,
                phase: Phase::Idle,
                status: SERVER_STATUS_AUTOCOMMIT,
                in_transaction: false,
                params: BTreeMap::new(),
                last_prepared: None,
                cursors: BTreeSet::new(),
                long_data: BTreeSet::new(),
                ids: StmtIds::default(),
                types: BTreeMap::new(),
                resend_types: BTreeSet::new(),
                edited: None,
                metadata: MetadataCache::default(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                pipeline_limit: PIPELINE_LIMIT,
                events: VecDeque::new(),
                error: None,
                dir: Direction::Client,
            },
        }
    }

    /// Follows MariaDB's metadata cache (`MARIADB_CLIENT_CACHE_METADATA`):
    /// `server` when the backend connection negotiated it (every column count
    /// then carries a "metadata follows" byte), `client` when the client did.
    /// A client that has it on a backend connection without it gets the byte
    /// added (always "metadata follows").
    pub fn set_metadata_cache(&mut self, client: bool, server: bool) {
        self.conv.metadata.client = client;
        self.conv.metadata.server = server;
    }

    /// Holds at most `limit` bytes of pipelined command heads (more is a protocol error).
    pub fn set_pipeline_limit(&mut self, limit: usize) {
        self.conv.pipeline_limit = limit;
    }

    /// Uses frames of at most `limit` bytes instead of 16 MiB − 1 (for tests of continuation frames).
    pub fn with_frame_limit(mut self, limit: usize) -> Self {
        assert!(limit > 0 && limit <= MAX_FRAME_PAYLOAD);
        self.client = Frames::new(limit);
        self.server = Frames::new(limit);
        self
    }

    /// Refuses client packets longer than `limit` bytes (from their frame
    /// headers, before any byte of the offending frame is passed on).
    pub fn set_client_packet_limit(&mut self, limit: u64) {
        self.client.set_packet_limit(limit);
    }

    /// Observes bytes the client sent (as read, any chunk boundary).
    pub fn client_bytes(&mut self, data: &[u8]) -> Result<(), TrackError> {
        self.feed(Direction::Client, data)
    }

    /// Observes bytes the server sent (as read, any chunk boundary).
    pub fn server_bytes(&mut self, data: &[u8]) -> Result<(), TrackError> {
        self.feed(Direction::Server, data)
    }

    fn feed(&mut self, dir: Direction, data: &[u8]) -> Result<(), TrackError> {
        if let Some(e) = &self.conv.error {
            return Err(e.clone());
        }
        self.conv.dir = dir;
        let frames = match dir {
            Direction::Client => &mut self.client,
            Direction::Server => &mut self.server,
        };
        let result = frames.feed(data, &mut self.conv);
        if let Err(e) = &result {
            self.conv.error = Some(e.clone());
        }
        result
    }

    /// The server side is a new connection (after a migration): its byte offsets
    /// start again at 0, `capabilities` are those in force on it, and `ids`
    /// maps every live statement's client id to its id on the new connection.
    ///
    /// Call only at a safe point; statements, cursors and transaction state carry on.
    /// The first execute of each statement on the new connection re-sends its
    /// parameter types (the new server has never seen them).
    pub fn server_replaced(&mut self, capabilities: u32, ids: BTreeMap<u32, u32>) {
        debug_assert!(
            self.is_idle(),
            "the server is replaced only between commands"
        );
        self.server = Frames::new(self.server.frame_limit());
        self.conv.caps = capabilities;
        self.conv.ids = StmtIds::from_map(ids);
        self.conv.resend_types = self.conv.types.keys().copied().collect();
        self.conv.metadata.stale.clear();
    }

    /// After [`Tracker::server_replaced`], with the metadata cache on: the
    /// column definitions (payloads) each statement (client id) got when it
    /// was prepared again on the new connection.
    ///
    /// The new server believes the client holds exactly those, so when the
    /// first result of such a statement comes without metadata (flag 0), the
    /// client, whose cache holds what the old server sent, gets them put in
    /// (flag 1, which a client accepts at any execute) and every later packet
    /// of the response renumbered. A result that brings its own metadata
    /// makes them unneeded.
    pub fn set_prepared_metadata(&mut self, definitions: BTreeMap<u32, Vec<Vec<u8>>>) {
        self.conv.metadata.stale = definitions
            .into_iter()
            .filter(|(_, defs)| !defs.is_empty())
            .collect();
    }

    /// Statements whose client-side metadata may differ from what the server believes it sent.
    pub fn metadata_pending(&self) -> impl Iterator<Item = u32> + '_ {
        self.conv.metadata.stale.keys().copied()
    }

    /// Whether client bytes may need editing before they reach the backend
    /// (statement ids differ, or types must be re-sent): the driver then holds
    /// back bytes from [`Tracker::client_collecting_from`].
    pub fn edits_client(&self) -> bool {
        !self.conv.ids.is_identity() || !self.conv.resend_types.is_empty()
    }

    /// Start offset of a client packet whose head is still being collected.
    pub fn client_collecting_from(&self) -> Option<u64> {
        self.client.collecting_from()
    }

    /// The statement the client last prepared (MariaDB's "last prepared" id refers to it).
    pub fn last_prepared(&self) -> Option<u32> {
        self.conv.last_prepared
    }

    /// The next observation, in stream order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.conv.events.pop_front()
    }

    /// True when no command is outstanding.
    pub fn is_idle(&self) -> bool {
        matches!(self.conv.phase, Phase::Idle)
    }

    /// True when the server last reported an open transaction.
    pub fn in_transaction(&self) -> bool {
        self.conv.in_transaction
    }

    /// Status flags of the last OK or EOF.
    pub fn status(&self) -> u16 {
        self.conv.status
    }

    /// Statements with an open cursor.
    pub fn open_cursors(&self) -> impl Iterator<Item = u32> + '_ {
        self.conv.cursors.iter().copied()
    }

    /// Statements with long data sent but not yet executed or reset.
    pub fn long_data_pending(&self) -> impl Iterator<Item = u32> + '_ {
        self.conv.long_data.iter().copied()
    }

    /// True once the client sent `COM_QUIT` (nothing more is owed to it).
    pub fn client_quit(&self) -> bool {
        matches!(self.conv.phase, Phase::Quit)
    }

    /// True once the connection became a replication stream (never movable again).
    pub fn is_replication(&self) -> bool {
        matches!(self.conv.phase, Phase::Replication)
    }

    /// True when, as far as the protocol goes, the session may move now.
    ///
    /// The session must also ask its `SessionState` for migration blockers.
    pub fn safe_point(&self) -> bool {
        self.not_safe_because().is_empty()
    }

    /// Why the protocol state forbids a move now, in words for operators; empty at a safe point.
    pub fn not_safe_because(&self) -> Vec<String> {
        let c = &self.conv;
        let mut why = Vec::new();
        if let Some(e) = &c.error {
            why.push(format!("the conversation could not be followed: {e}"));
        }
        match &c.phase {
            Phase::Idle => {}
            Phase::Busy(r) => why.push(format!(
                "a command ({}) is outstanding",
                command_name(r.command)
            )),
            Phase::Replication => why.push("the connection is a replication stream".into()),
            Phase::Quit => why.push("the client quit".into()),
        }
        if c.in_transaction {
            why.push("a transaction is open".into());
        }
        for id in &c.cursors {
            why.push(format!("a cursor is open on prepared statement {id}"));
        }
        for id in &c.long_data {
            why.push(format!("long data is pending for prepared statement {id}"));
        }
        why
    }

    /// Start offset of a server packet not yet complete that the tracker is collecting
    /// (or has not classified yet): bytes from here on may belong to an OK to rewrite.
    pub fn server_collecting_from(&self) -> Option<u64> {
        self.server.collecting_from()
    }

    /// Bytes of the server→client stream observed so far.
    pub fn server_offset(&self) -> u64 {
        self.server.offset()
    }

    /// Bytes of the client→server stream observed so far.
    pub fn client_offset(&self) -> u64 {
        self.client.offset()
    }
}

/// The name of a command byte, for messages.
pub fn command_name(code: u8) -> String {
    let name = match code {
        COM_QUIT => "COM_QUIT",
        COM_INIT_DB => "COM_INIT_DB",
        COM_QUERY => "COM_QUERY",
        COM_FIELD_LIST => "COM_FIELD_LIST",
        COM_STATISTICS => "COM_STATISTICS",
        COM_PROCESS_INFO => "COM_PROCESS_INFO",
        COM_PROCESS_KILL => "COM_PROCESS_KILL",
        COM_PING => "COM_PING",
        COM_CHANGE_USER => "COM_CHANGE_USER",
        COM_BINLOG_DUMP => "COM_BINLOG_DUMP",
        COM_BINLOG_DUMP_GTID => "COM_BINLOG_DUMP_GTID",
        COM_STMT_PREPARE => "COM_STMT_PREPARE",
        COM_STMT_EXECUTE => "COM_STMT_EXECUTE",
        COM_STMT_BULK_EXECUTE => "COM_STMT_BULK_EXECUTE",
        COM_STMT_SEND_LONG_DATA => "COM_STMT_SEND_LONG_DATA",
        COM_STMT_CLOSE => "COM_STMT_CLOSE",
        COM_STMT_RESET => "COM_STMT_RESET",
        COM_SET_OPTION => "COM_SET_OPTION",
        COM_STMT_FETCH => "COM_STMT_FETCH",
        COM_RESET_CONNECTION => "COM_RESET_CONNECTION",
        other => return format!("command 0x{other:02x}"),
    };
    name.to_string()
}

/// The tracker minus its frame walkers: what it knows of the conversation.
#[derive(Debug)]
struct Conversation {
    caps: u32,
    phase: Phase,
    status: u16,
    in_transaction: bool,
    /// Parameter count of every prepared statement.
    params: BTreeMap<u32, u16>,
    last_prepared: Option<u32>,
    cursors: BTreeSet<u32>,
    long_data: BTreeSet<u32>,
    /// Statement ids as the client knows them and as the backend gave them.
    ids: StmtIds,
    /// Parameter types last bound per statement (client id).
    types: BTreeMap<u32, Vec<u16>>,
    /// Statements whose next execute must carry their types (first on a new backend).
    resend_types: BTreeSet<u32>,
    /// Offset of the client packet whose edits were already worked out.
    edited: Option<u64>,
    /// MariaDB's metadata cache.
    metadata: MetadataCache,
    /// Commands the client sent before the responses to earlier ones
    /// (pipelining): each starts when the one before it is answered.
    queue: VecDeque<Queued>,
    /// Bytes of command heads in `queue`.
    queued_bytes: usize,
    /// Most bytes of `queue` (`max_session_memory`; [`PIPELINE_LIMIT`] by default).
    pipeline_limit: usize,
    events: VecDeque<Event>,
    error: Option<TrackError>,
    /// The direction being fed.
    dir: Direction,
}

/// Statement ids as the client knows them and as the backend connection gave them.
///
/// Equal until a migration re-prepares statements on a new connection; from
/// then on every live statement has an explicit pair, and an id the client
/// never got maps to 0 (which no server hands out), so it fails there as it
/// would have failed directly instead of hitting another statement.
#[derive(Debug, Default)]
enum StmtIds {
    #[default]
    Identity,
    Mapped {
        to_backend: BTreeMap<u32, u32>,
        to_client: BTreeMap<u32, u32>,
    },
}

impl StmtIds {
    fn from_map(ids: BTreeMap<u32, u32>) -> Self {
        if ids.iter().all(|(c, b)| c == b) {
            return StmtIds::Identity;
        }
        let to_client = ids.iter().map(|(c, b)| (*b, *c)).collect();
        StmtIds::Mapped {
            to_backend: ids,
            to_client,
        }
    }

    fn is_identity(&self) -> bool {
        matches!(self, StmtIds::Identity)
    }

    /// The backend's id for the client's `id` (MariaDB's "last prepared" passes through).
    fn backend(&self, id: u32) -> u32 {
        match self {
            StmtIds::Identity => id,
            _ if id == LAST_PREPARED => id,
            StmtIds::Mapped { to_backend, .. } => to_backend.get(&id).copied().unwrap_or(0),
        }
    }

    /// The client id for a statement the backend just prepared as `backend`.
    fn adopt(&mut self, backend: u32) -> u32 {
        let StmtIds::Mapped {
            to_backend,
            to_client,
        } = self
        else {
            return backend;
        };
        let client = if to_backend.contains_key(&backend) {
            let top = to_backend.keys().next_back().copied().unwrap_or(0);
            (top.max(backend) + 1..LAST_PREPARED)
                .find(|c| !to_backend.contains_key(c))
                .unwrap_or(0)
        } else {
            backend
        };
        to_backend.insert(client, backend);
        to_client.insert(backend, client);
        client
    }

    /// The client closed its statement `id`.
    fn forget(&mut self, id: u32) {
        if let StmtIds::Mapped {
            to_backend,
            to_client,
        } = self
        {
            if let Some(b) = to_backend.remove(&id) {
                to_client.remove(&b);
            }
        }
    }
}

/// MariaDB's metadata cache (`MARIADB_CLIENT_CACHE_METADATA`) on this conversation.
#[derive(Debug, Default)]
struct MetadataCache {
    /// The client negotiated it: its column counts carry a "metadata follows" byte.
    client: bool,
    /// The backend connection negotiated it: the server's column counts carry the byte.
    server: bool,
    /// Statements (client ids) prepared again on a new connection, with the
    /// column definitions the server then sent ferry (see [`Tracker::set_prepared_metadata`]).
    stale: BTreeMap<u32, Vec<Vec<u8>>>,
    /// Column definitions were put into the response in flight: its later
    /// packets' sequence ids move up by this much.
    seq_shift: u8,
}

/// A pipelined command waiting for the responses before it.
#[derive(Debug)]
struct Queued {
    offset: u64,
    head: Vec<u8>,
    truncated: bool,
}

/// Most bytes of pipelined command heads the tracker holds by default (each at most
/// [`SQL_LIMIT`] + 1); a session's is a share of `max_session_memory`.
pub const PIPELINE_LIMIT: usize = 4 << 20;

#[derive(Debug)]
enum Phase {
    /// Waiting for the client's next command.
    Idle,
    /// A command is outstanding.
    Busy(Response),
    /// A binlog dump turned the connection into a one-way stream.
    Replication,
    /// The client sent `COM_QUIT`.
    Quit,
}

/// The response being followed.
#[derive(Debug)]
struct Response {
    command: u8,
    /// The statement a prepared-statement command is about.
    stmt: Option<u32>,
    expect: Expect,
    /// A `COM_STMT_EXECUTE` that asked for a cursor: only its results may open one.
    wants_cursor: bool,
    /// Rows were seen since the last column definitions (a cursor's metadata has none).
    rows_seen: bool,
}

/// The next packet the response shape allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The first packet of a result: OK, ERR, LOCAL INFILE (text only) or a column count.
    ResultStart { binary: bool },
    /// `left` more column or parameter definitions.
    Defs { left: u64, then: Then },
    /// The EOF after definitions (only without `CLIENT_DEPRECATE_EOF`).
    DefsEof { then: Then },
    /// Rows until a terminator or ERR.
    Rows { binary: bool },
    /// The client sends file packets until an empty one.
    InfileData,
    /// The OK or ERR after the file.
    InfileReply,
    /// `COM_STMT_PREPARE`'s first reply.
    PrepareOk,
    /// `COM_FIELD_LIST`: column definitions until a terminator, or ERR.
    FieldDefs,
    /// `COM_STATISTICS`: one bare string.
    Statistics,
    /// OK or ERR.
    OkOrErr,
    /// OK, EOF or ERR (commands old servers answer with EOF).
    OkEofOrErr,
    /// `COM_CHANGE_USER`'s authentication exchange; `Turn` says who may send next.
    ChangeUser(Turn),
}

/// What follows a run of definitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// Rows of a result set.
    Rows { binary: bool },
    /// The column definitions of a prepared statement.
    PrepareColumns(u16),
    /// Nothing: the response is complete.
    Done,
}

/// Who may send the next packet of an authentication exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    Server,
    Client,
    /// After "more data" either side may speak (e.g. a public key request).
    Either,
}

/// What a server packet is, given the shape and its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ok,
    Err,
    /// EOF, or OK with header 0xFE under `CLIENT_DEPRECATE_EOF`.
    Terminator,
    ColumnCount,
    Infile,
    PrepareOk,
    /// Something skipped unread: a row, a definition, a string, auth data.
    Opaque,
    AuthSwitch,
    AuthMore,
    Unexpected(&'static str),
}

impl Kind {
    fn want(self) -> usize {
        match self {
            Kind::Ok | Kind::Err | Kind::Terminator => REPLY_LIMIT,
            // A length-encoded count and MariaDB's "metadata follows" byte.
            Kind::ColumnCount => 10,
            Kind::PrepareOk => 12,
            Kind::Infile => 1 + FILENAME_LIMIT,
            Kind::Opaque | Kind::AuthSwitch | Kind::AuthMore | Kind::Unexpected(_) => 1,
        }
    }
}

impl Conversation {
    fn deprecate_eof(&self) -> bool {
        self.caps & CLIENT_DEPRECATE_EOF != 0
    }

    fn violation(&self, offset: u64, reason: impl Into<String>) -> TrackError {
        TrackError {
            direction: self.dir,
            offset,
            reason: reason.into(),
            too_large: None,
        }
    }

    fn params_of(&self, id: u32) -> Option<u16> {
        let id = if id == LAST_PREPARED {
            self.last_prepared?
        } else {
            id
        };
        self.params.get(&id).copied()
    }

    /// Classifies a server packet by the current shape, its first byte and whether it spans frames.
    fn classify(&self, first: Option<u8>, multi_frame: bool) -> Kind {
        let Phase::Busy(r) = &self.phase else {
            return match (&self.phase, first) {
                // MySQL sends an ERR before closing an idle connection (wait_timeout).
                (Phase::Idle, Some(0xFF)) => Kind::Err,
                (Phase::Replication, _) => Kind::Opaque,
                _ => Kind::Unexpected("no command is outstanding"),
            };
        };
        let Some(first) = first else {
            return match r.expect {
                Expect::Rows { binary: false } | Expect::Statistics => Kind::Opaque,
                _ => Kind::Unexpected("an empty packet"),
            };
        };
        let single = !multi_frame;
        match r.expect {
            Expect::ResultStart { binary } => match first {
                0x00 => Kind::Ok,
                0xFF => Kind::Err,
                0xFB if !binary => Kind::Infile,
                0xFB => Kind::Unexpected("LOCAL INFILE in reply to a prepared statement"),
                0xFE => Kind::Unexpected("0xFE at the start of a result"),
                _ => Kind::ColumnCount,
            },
            Expect::Defs { .. } => match first {
                0xFF => Kind::Unexpected("ERR among column definitions"),
                0xFE if single => Kind::Unexpected("EOF before the announced column definitions"),
                _ => Kind::Opaque,
            },
            Expect::DefsEof { .. } => match first {
                0xFE if single => Kind::Terminator,
                _ => Kind::Unexpected("more column definitions than announced"),
            },
            Expect::Rows { binary } => match first {
                0xFF => Kind::Err,
                0xFE if single => Kind::Terminator,
                0x00 if binary => Kind::Opaque,
                _ if binary => Kind::Unexpected("a binary row that does not start with 0x00"),
                _ => Kind::Opaque,
            },
            Expect::InfileData | Expect::ChangeUser(Turn::Client) => {
                Kind::Unexpected("a packet while the client's turn")
            }
            Expect::InfileReply | Expect::OkOrErr => match first {
                0x00 => Kind::Ok,
                0xFF => Kind::Err,
                _ => Kind::Unexpected("neither OK nor ERR"),
            },
            Expect::OkEofOrErr => match first {
                0x00 => Kind::Ok,
                0xFF => Kind::Err,
                0xFE if single => Kind::Terminator,
                _ => Kind::Unexpected("neither OK, EOF nor ERR"),
            },
            Expect::PrepareOk => match first {
                0x00 => Kind::PrepareOk,
                0xFF => Kind::Err,
                _ => Kind::Unexpected("neither a prepare OK nor ERR"),
            },
            Expect::FieldDefs => match first {
                0xFF => Kind::Err,
                0xFE if single => Kind::Terminator,
                _ => Kind::Opaque,
            },
            Expect::Statistics => match first {
                0xFF => Kind::Err,
                _ => Kind::Opaque,
            },
            Expect::ChangeUser(_) => match first {
                0x00 => Kind::Ok,
                0xFF => Kind::Err,
                0xFE => Kind::AuthSwitch,
                0x01 => Kind::AuthMore,
                _ => Kind::Unexpected("not an authentication packet"),
            },
        }
    }

    fn expect_mut(&mut self) -> &mut Response {
        match &mut self.phase {
            Phase::Busy(r) => r,
            _ => unreachable!("only called while busy"),
        }
    }

    fn set_expect(&mut self, expect: Expect) {
        self.expect_mut().expect = expect;
    }

    fn finish(&mut self, outcome: Outcome) {
        self.phase = Phase::Idle;
        self.metadata.seq_shift = 0;
        self.events.push_back(Event::ResponseDone { outcome });
        self.next_queued();
    }

    /// Starts the pipelined commands that are next, until one awaits a response.
    fn next_queued(&mut self) {
        while matches!(self.phase, Phase::Idle) {
            let Some(q) = self.queue.pop_front() else {
                return;
            };
            self.queued_bytes -= q.head.len();
            if let Err(e) = self.command_at(q.offset, &q.head, q.truncated) {
                self.error = Some(e);
                return;
            }
        }
    }

    /// True while a `COM_STMT_PREPARE` is unanswered (MariaDB's "last prepared"
    /// id then means a statement whose parameter count is not known yet).
    fn prepare_pending(&self) -> bool {
        let current = matches!(&self.phase, Phase::Busy(r) if r.command == COM_STMT_PREPARE);
        current
            || self
                .queue
                .iter()
                .any(|q| q.head.first() == Some(&COM_STMT_PREPARE))
    }

    /// Parameter count for sizing a command head: unknown for "last prepared" behind a pending prepare.
    fn params_for_head(&self, id: u32) -> Option<u16> {
        if id == LAST_PREPARED && self.prepare_pending() {
            return None;
        }
        self.params_of(id)
    }

    /// Whether the next client packet is a command (as opposed to file data or auth data).
    fn expects_command(&self) -> bool {
        match &self.phase {
            Phase::Idle => true,
            Phase::Busy(r) => !matches!(
                r.expect,
                Expect::InfileData | Expect::ChangeUser(Turn::Client | Turn::Either)
            ),
            Phase::Replication | Phase::Quit => false,
        }
    }

    /// Updates the transaction state from a status and the trackers that came with it.
    fn observe_status(&mut self, status: u16, trackers: &[TrackItem]) {
        self.status = status;
        let flags = status & (SERVER_STATUS_IN_TRANS | SERVER_STATUS_IN_TRANS_READONLY) != 0;
        let tracked = trackers.iter().find_map(TrackItem::opens_transaction);
        self.in_transaction = flags || tracked == Some(true);
    }

    /// Clears what a new session on the same connection does not inherit.
    fn forget_statements(&mut self) {
        self.ids = StmtIds::Identity;
        self.metadata.stale.clear();
        self.types.clear();
        self.resend_types.clear();
        self.params.clear();
        self.last_prepared = None;
        self.cursors.clear();
        self.long_data.clear();
    }

    /// Works out, once per client command, the edits its bytes need on the way
    /// to the backend: the backend's statement id, and the parameter types on
    /// the first execute after a migration if the client did not send them.
    fn client_edits(&mut self, offset: u64, payload_len: u64, head: &[u8]) {
        if self.edited == Some(offset) {
            return;
        }
        self.edited = Some(offset);
        // An empty packet is no command: `command` says so.
        let Some(&code) = head.first() else {
            return;
        };
        let is_stmt_command = matches!(
            code,
            COM_STMT_EXECUTE
                | COM_STMT_BULK_EXECUTE
                | COM_STMT_FETCH
                | COM_STMT_CLOSE
                | COM_STMT_RESET
                | COM_STMT_SEND_LONG_DATA
        );
        if !is_stmt_command || head.len() < 5 {
            return;
        }
        let id = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let resolved = match (id, self.last_prepared) {
            // Behind a prepare still unanswered, "the last prepared" is that new
            // statement, prepared on this connection: it needs no edit.
            (LAST_PREPARED, _) if self.prepare_pending() => return,
            (LAST_PREPARED, Some(last)) => last,
            _ => id,
        };
        let mut edits = Vec::new();
        if code == COM_STMT_EXECUTE && self.resend_types.contains(&resolved) {
            let n = self.params_of(resolved).unwrap_or(0) as usize;
            let flag_at = 10 + n.div_ceil(8);
            let types = self.types.get(&resolved).filter(|t| t.len() == n);
            let grown = payload_len + 2 * n as u64;
            match (head.get(flag_at), types) {
                (Some(1), _) => {
                    self.resend_types.remove(&resolved);
                }
                (Some(_), Some(types)) if n > 0 && grown < MAX_FRAME_PAYLOAD as u64 => {
                    let mut flag = vec![1u8];
                    for t in types {
                        flag.extend_from_slice(&t.to_le_bytes());
                    }
                    edits.push((offset, 3, grown.to_le_bytes()[..3].to_vec()));
                    edits.push((offset + HEADER_LEN as u64 + flag_at as u64, 1, flag));
                    self.resend_types.remove(&resolved);
                }
                _ => {}
            }
        }
        if code == COM_STMT_BULK_EXECUTE && self.resend_types.contains(&resolved) {
            let n = self.params_of(resolved).unwrap_or(0) as usize;
            let types = self.types.get(&resolved).filter(|t| t.len() == n);
            let grown = payload_len + 2 * n as u64;
            match (head.get(5..7), types) {
                (Some(f), _)
                    if u16::from_le_bytes([f[0], f[1]]) & STMT_BULK_FLAG_CLIENT_SEND_TYPES != 0 =>
                {
                    self.resend_types.remove(&resolved);
                }
                (Some(f), Some(types)) if n > 0 && grown < MAX_FRAME_PAYLOAD as u64 => {
                    // The new backend never saw the types: the flags say they follow, and they do.
                    let flags = u16::from_le_bytes([f[0], f[1]]) | STMT_BULK_FLAG_CLIENT_SEND_TYPES;
                    let mut bytes = flags.to_le_bytes().to_vec();
                    for t in types {
                        bytes.extend_from_slice(&t.to_le_bytes());
                    }
                    edits.push((offset, 3, grown.to_le_bytes()[..3].to_vec()));
                    edits.push((offset + HEADER_LEN as u64 + 5, 2, bytes));
                    self.resend_types.remove(&resolved);
                }
                _ => {}
            }
        }
        let backend = self.ids.backend(id);
        if backend != id {
            edits.push((
                offset + HEADER_LEN as u64 + 1,
                4,
                backend.to_le_bytes().to_vec(),
            ));
        }
        edits.sort_by_key(|e| e.0);
        for (offset, len, bytes) in edits {
            self.events.push_back(Event::Edit {
                direction: Direction::Client,
                offset,
                len,
                bytes,
            });
        }
    }

    fn parse_ok(&mut self, p: &Packet<'_>) -> Result<u16, TrackError> {
        self.reply_complete(p, "OK")?;
        let ok = OkPacket::parse(p.head, self.caps)
            .map_err(|e| self.violation(p.offset, e.to_string()))?;
        let trackers = match &ok.session_state {
            Some(block) => crate::packets::session_state::parse(block)
                .map_err(|e| self.violation(p.offset, e.to_string()))?,
            None => Vec::new(),
        };
        let status = ok.status;
        self.observe_status(status, &trackers);
        self.events.push_back(Event::Ok {
            ok,
            trackers,
            at: span(p),
        });
        Ok(status)
    }

    fn parse_eof(&mut self, p: &Packet<'_>) -> Result<u16, TrackError> {
        let eof = EofPacket::parse(p.head).map_err(|e| self.violation(p.offset, e.to_string()))?;
        self.observe_status(eof.status, &[]);
        self.events.push_back(Event::Eof { eof, at: span(p) });
        Ok(eof.status)
    }

    /// An EOF, or under `CLIENT_DEPRECATE_EOF` an OK with header 0xFE (an OK is at least 7 bytes, an EOF 5 or 1).
    fn parse_terminator(&mut self, p: &Packet<'_>) -> Result<u16, TrackError> {
        self.reply_complete(p, "EOF")?;
        if self.deprecate_eof() && p.payload_len >= 7 {
            self.parse_ok(p)
        } else if p.payload_len < 9 {
            self.parse_eof(p)
        } else {
            Err(self.violation(p.offset, "a 0xFE packet too long for an EOF"))
        }
    }

    fn parse_err(&mut self, p: &Packet<'_>) -> Result<(), TrackError> {
        self.reply_complete(p, "ERR")?;
        let err = ErrPacket::parse(p.head).map_err(|e| self.violation(p.offset, e.to_string()))?;
        self.events.push_back(Event::Err { err, at: span(p) });
        Ok(())
    }

    fn reply_complete(&self, p: &Packet<'_>, what: &str) -> Result<(), TrackError> {
        if p.truncated {
            return Err(self.violation(
                p.offset,
                format!("{what} packet longer than {REPLY_LIMIT} bytes"),
            ));
        }
        Ok(())
    }

    /// A result ended with `status`: another follows if the server says so.
    fn result_done(&mut self, status: u16) {
        self.events.push_back(Event::ResultDone { status });
        let r = self.expect_mut();
        let binary = r.command != COM_QUERY && r.command != COM_PROCESS_INFO;
        let fetch = r.command == COM_STMT_FETCH;
        if status & SERVER_MORE_RESULTS_EXISTS != 0 && !fetch {
            self.set_expect(Expect::ResultStart { binary });
        } else {
            self.finish(Outcome::Ok);
        }
    }

    /// Definitions are over: EOF next, or what follows them.
    fn defs_over(&mut self, then: Then) {
        if self.deprecate_eof() {
            self.after_defs(then);
        } else {
            self.set_expect(Expect::DefsEof { then });
        }
    }

    fn after_defs(&mut self, then: Then) {
        match then {
            Then::Rows { binary } => self.set_expect(Expect::Rows { binary }),
            Then::PrepareColumns(0) | Then::Done => self.finish(Outcome::Ok),
            Then::PrepareColumns(n) => self.set_expect(Expect::Defs {
                left: n as u64,
                then: Then::Done,
            }),
        }
    }

    /// Whether a result whose metadata (or, under `CLIENT_DEPRECATE_EOF`, whose
    /// first terminator) carries `status` opened a cursor, so no rows follow.
    ///
    /// Only an execute that asked for a cursor can open one. Stored programs
    /// leak their own cursors' `SERVER_STATUS_CURSOR_EXISTS` onto ordinary
    /// results (of a `CALL`, even one executed with a cursor asked for, which
    /// MariaDB then does not open): those have more results behind them, or rows.
    fn opens_cursor(&self, status: u16) -> bool {
        let Phase::Busy(r) = &self.phase else {
            return false;
        };
        r.wants_cursor
            && !r.rows_seen
            && status & SERVER_STATUS_CURSOR_EXISTS != 0
            && status & SERVER_MORE_RESULTS_EXISTS == 0
    }

    /// The end of a result set (or of the metadata of a cursor), with its status.
    fn result_set_end(&mut self, status: u16) {
        let opens = self.opens_cursor(status);
        let r = self.expect_mut();
        match (r.command, r.stmt) {
            (COM_STMT_EXECUTE, Some(id)) if opens => {
                self.cursors.insert(id);
            }
            (COM_STMT_FETCH, Some(id)) if status & SERVER_STATUS_LAST_ROW_SENT != 0 => {
                self.cursors.remove(&id);
            }
            _ => {}
        }
        self.result_done(status);
    }

    fn server_packet(&mut self, mut p: Packet<'_>) -> Result<(), TrackError> {
        // The sequence id the client sees (definitions ferry put in shift the rest).
        p.seq = p.seq.wrapping_add(self.metadata.seq_shift);
        let kind = self.classify(p.head.first().copied(), p.multi_frame);
        let expect = match &self.phase {
            Phase::Busy(r) => Some(r.expect),
            _ => None,
        };
        match (kind, expect) {
            (Kind::Unexpected(what), _) => {
                let during = match &self.phase {
                    Phase::Busy(r) => format!("the response to {}", command_name(r.command)),
                    Phase::Idle => "no command".into(),
                    Phase::Quit => "the client's COM_QUIT".into(),
                    Phase::Replication => "replication".into(),
                };
                Err(self.violation(p.offset, format!("{what} (during {during})")))
            }
            (Kind::Opaque, None) => Ok(()),
            (Kind::Err, None) => self.parse_err(&p),
            (Kind::Err, Some(_)) => {
                self.parse_err(&p)?;
                if self.expect_mut().command == COM_STMT_PREPARE {
                    // MariaDB forgets its last statement when a prepare fails.
                    self.last_prepared = None;
                }
                self.finish(Outcome::Err);
                Ok(())
            }
            (Kind::Ok, Some(expect)) => {
                let status = self.parse_ok(&p)?;
                match expect {
                    Expect::ChangeUser(_) => {
                        self.forget_statements();
                        self.finish(Outcome::Ok);
                    }
                    Expect::OkOrErr | Expect::OkEofOrErr => {
                        let r = self.expect_mut();
                        if r.command == COM_RESET_CONNECTION {
                            self.forget_statements();
                        }
                        self.finish(Outcome::Ok);
                    }
                    _ => self.result_done(status),
                }
                Ok(())
            }
            (Kind::Terminator, Some(expect)) => {
                let status = self.parse_terminator(&p)?;
                match expect {
                    Expect::DefsEof {
                        then: Then::Rows { .. },
                    } if self.opens_cursor(status) => {
                        // A cursor: the rows come with COM_STMT_FETCH.
                        self.result_set_end(status);
                    }
                    Expect::DefsEof { then } => self.after_defs(then),
                    Expect::Rows { .. } => self.result_set_end(status),
                    _ => self.finish(Outcome::Ok),
                }
                Ok(())
            }
            (Kind::ColumnCount, Some(_)) => {
                let mut r = Reader::new(p.head, "column count");
                let n = r.lenenc_int();
                // MariaDB's metadata cache: 1 when the definitions follow, 0 when skipped.
                let follows = if self.metadata.server {
                    match r.u8() {
                        Ok(0) => Some(false),
                        Ok(1) => Some(true),
                        _ => None,
                    }
                } else {
                    Some(true)
                };
                match (n, follows) {
                    (Ok(n), Some(follows)) if n > 0 && r.is_empty() && !p.truncated => {
                        let binary = matches!(expect, Some(Expect::ResultStart { binary: true }));
                        self.expect_mut().rows_seen = false;
                        self.metadata_edits(&p, n, follows);
                        let then = Then::Rows { binary };
                        if follows {
                            self.set_expect(Expect::Defs { left: n, then });
                        } else {
                            // The client uses the definitions it has; an EOF still ends them.
                            self.defs_over(then);
                        }
                        Ok(())
                    }
                    (Ok(_), None) => Err(self
                        .violation(p.offset, "a column count without a metadata flag of 0 or 1")),
                    _ => Err(self.violation(p.offset, "a malformed column count")),
                }
            }
            (Kind::Infile, Some(_)) => {
                if p.truncated {
                    return Err(self.violation(p.offset, "LOCAL INFILE file name too long"));
                }
                let filename = p.head[1..].to_vec();
                self.events.push_back(Event::LocalInfile { filename });
                self.set_expect(Expect::InfileData);
                Ok(())
            }
            (Kind::PrepareOk, Some(_)) => self.prepare_ok(&p),
            (Kind::Opaque, Some(expect)) => {
                match expect {
                    Expect::Defs { left, then } => {
                        if left == 1 {
                            self.defs_over(then);
                        } else {
                            self.set_expect(Expect::Defs {
                                left: left - 1,
                                then,
                            });
                        }
                    }
                    Expect::Statistics => self.finish(Outcome::Ok),
                    Expect::Rows { .. } => self.expect_mut().rows_seen = true,
                    // Field definitions: keep skipping.
                    _ => {}
                }
                Ok(())
            }
            (Kind::AuthSwitch, Some(_)) => {
                self.set_expect(Expect::ChangeUser(Turn::Client));
                Ok(())
            }
            (Kind::AuthMore, Some(_)) => {
                self.set_expect(Expect::ChangeUser(Turn::Either));
                Ok(())
            }
            (kind, None) => Err(self.violation(
                p.offset,
                format!("unexpected {kind:?} packet while no command is outstanding"),
            )),
        }
    }

    /// What a column count needs on its way to the client under the metadata cache.
    ///
    /// A client with the cache on a connection without it gets the flag byte
    /// added ("metadata follows": the definitions do). A statement prepared
    /// again after a move (see [`Tracker::set_prepared_metadata`]) whose
    /// first result skips its definitions gets them put in.
    fn metadata_edits(&mut self, p: &Packet<'_>, columns: u64, follows: bool) {
        let at_end = p.offset + HEADER_LEN as u64 + p.payload_len;
        if self.metadata.client && !self.metadata.server {
            let len = (p.payload_len + 1).to_le_bytes()[..3].to_vec();
            self.edit_server(p.offset, 3, len);
            self.edit_server(at_end, 0, vec![1]);
            return;
        }
        if !self.metadata.server || self.metadata.stale.is_empty() {
            return;
        }
        let r = self.expect_mut();
        let stmt = match r.command {
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => r.stmt,
            _ => None,
        };
        let Some(defs) = stmt.and_then(|id| self.metadata.stale.remove(&id)) else {
            return;
        };
        // Fewer or more than the server now counts: it cannot mean these (nothing to do better).
        if follows || defs.len() as u64 != columns {
            return;
        }
        let mut bytes = BytesMut::new();
        bytes.put_u8(1);
        let first = p.seq.wrapping_add(1);
        let mut next = first;
        for d in &defs {
            next = write_packet(&mut bytes, next, d);
        }
        self.edit_server(at_end - 1, 1, bytes.to_vec());
        self.metadata.seq_shift = self
            .metadata
            .seq_shift
            .wrapping_add(next.wrapping_sub(first));
    }

    fn edit_server(&mut self, offset: u64, len: u64, bytes: Vec<u8>) {
        self.events.push_back(Event::Edit {
            direction: Direction::Server,
            offset,
            len,
            bytes,
        });
    }

    fn prepare_ok(&mut self, p: &Packet<'_>) -> Result<(), TrackError> {
        let mut r = Reader::new(p.head, "prepare OK");
        let parsed = (|| Some((r.u8().ok()?, r.u32().ok()?, r.u16().ok()?, r.u16().ok()?)))();
        let Some((_, backend_id, columns, params)) = parsed else {
            return Err(self.violation(p.offset, "a truncated prepare OK"));
        };
        let id = self.ids.adopt(backend_id);
        if id != backend_id {
            self.events.push_back(Event::Edit {
                direction: Direction::Server,
                offset: p.offset + HEADER_LEN as u64 + 1,
                len: 4,
                bytes: id.to_le_bytes().to_vec(),
            });
        }
        self.params.insert(id, params);
        self.last_prepared = Some(id);
        self.events.push_back(Event::Prepared {
            id,
            params,
            columns,
        });
        if params > 0 {
            self.set_expect(Expect::Defs {
                left: params as u64,
                then: Then::PrepareColumns(columns),
            });
        } else {
            self.after_defs(Then::PrepareColumns(columns));
        }
        Ok(())
    }

    fn client_packet(&mut self, p: Packet<'_>) -> Result<(), TrackError> {
        match &mut self.phase {
            Phase::Idle => {
                self.client_edits(p.offset, p.payload_len, p.head);
                self.edited = None;
                self.command(p)
            }
            Phase::Replication => Ok(()),
            Phase::Quit => Err(self.violation(p.offset, "a packet after COM_QUIT")),
            Phase::Busy(r) => match r.expect {
                Expect::InfileData => {
                    if p.payload_len == 0 {
                        r.expect = Expect::InfileReply;
                    }
                    Ok(())
                }
                Expect::ChangeUser(Turn::Client | Turn::Either) => {
                    r.expect = Expect::ChangeUser(Turn::Server);
                    Ok(())
                }
                _ => self.enqueue(p),
            },
        }
    }

    /// A command sent before the response to the one before it (pipelining).
    fn enqueue(&mut self, p: Packet<'_>) -> Result<(), TrackError> {
        self.client_edits(p.offset, p.payload_len, p.head);
        self.edited = None;
        if p.head.is_empty() {
            return Err(self.violation(p.offset, "an empty command packet"));
        }
        if self.queued_bytes + p.head.len() > self.pipeline_limit {
            let limit = self.pipeline_limit;
            return Err(self.violation(
                p.offset,
                format!("more than {limit} bytes of commands sent ahead of their responses"),
            ));
        }
        self.queued_bytes += p.head.len();
        self.queue.push_back(Queued {
            offset: p.offset,
            head: p.head.to_vec(),
            truncated: p.truncated,
        });
        Ok(())
    }

    fn command(&mut self, p: Packet<'_>) -> Result<(), TrackError> {
        self.command_at(p.offset, p.head, p.truncated)
    }

    fn command_at(&mut self, offset: u64, head: &[u8], truncated: bool) -> Result<(), TrackError> {
        let params = |id| self.params_of(id);
        let Some(command) = command::parse(head, truncated, params, self.last_prepared) else {
            return Err(self.violation(offset, "an empty or truncated command packet"));
        };
        let code = command.code();
        let mut stmt = None;
        let mut wants_cursor = false;
        let expect = match &command {
            Command::Query(_) => Some(Expect::ResultStart { binary: false }),
            Command::Prepare(_) => Some(Expect::PrepareOk),
            Command::InitDb(_) | Command::ResetConnection => Some(Expect::OkOrErr),
            Command::Execute {
                id,
                param_types,
                flags,
            } => {
                wants_cursor = flags & CURSOR_TYPE_READ_ONLY != 0;
                if let Some(types) = param_types {
                    self.types.insert(*id, types.clone());
                }
                // Executing a statement closes its cursor and consumes its long data.
                self.cursors.remove(id);
                self.long_data.remove(id);
                stmt = Some(*id);
                Some(Expect::ResultStart { binary: true })
            }
            Command::BulkExecute {
                id, param_types, ..
            } => {
                if let Some(types) = param_types {
                    self.types.insert(*id, types.clone());
                }
                self.cursors.remove(id);
                self.long_data.remove(id);
                stmt = Some(*id);
                // An OK, or results (RETURNING, unit results) as for an execute.
                Some(Expect::ResultStart { binary: true })
            }
            Command::Fetch { id, .. } => {
                stmt = Some(*id);
                Some(Expect::Rows { binary: true })
            }
            Command::Reset { id } => {
                self.cursors.remove(id);
                self.long_data.remove(id);
                stmt = Some(*id);
                Some(Expect::OkOrErr)
            }
            Command::Close { id } => {
                self.cursors.remove(id);
                self.long_data.remove(id);
                self.params.remove(id);
                self.types.remove(id);
                self.resend_types.remove(id);
                self.metadata.stale.remove(id);
                self.ids.forget(*id);
                if self.last_prepared == Some(*id) {
                    // "The last prepared" names nothing any more (as in MariaDB).
                    self.last_prepared = None;
                }
                None
            }
            Command::SendLongData { id, .. } => {
                // The server ignores long data for a statement it does not have.
                if self.params.contains_key(id) {
                    self.long_data.insert(*id);
                }
                None
            }
            Command::SetOption(_) => Some(Expect::OkEofOrErr),
            Command::ChangeUser => Some(Expect::ChangeUser(Turn::Server)),
            Command::Quit | Command::BinlogDump(_) => None,
            Command::Other(c) => Some(match *c {
                COM_STATISTICS => Expect::Statistics,
                COM_FIELD_LIST => Expect::FieldDefs,
                COM_PROCESS_INFO => Expect::ResultStart { binary: false },
                COM_DEBUG | COM_SHUTDOWN => Expect::OkEofOrErr,
                COM_SLEEP | COM_CREATE_DB | COM_DROP_DB | COM_REFRESH | COM_CONNECT
                | COM_PROCESS_KILL | COM_PING | COM_TIME | COM_DELAYED_INSERT | COM_TABLE_DUMP
                | COM_CONNECT_OUT | COM_REGISTER_SLAVE | COM_DAEMON => Expect::OkOrErr,
                other => {
                    return Err(self.violation(offset, format!("unsupported command 0x{other:02x}")))
                }
            }),
        };
        self.events.push_back(Event::Command { command, offset });
        match (expect, code) {
            (Some(expect), _) => {
                self.phase = Phase::Busy(Response {
                    command: code,
                    stmt,
                    expect,
                    wants_cursor,
                    rows_seen: false,
                })
            }
            (None, COM_QUIT) => {
                self.phase = Phase::Quit;
                self.events.push_back(Event::ResponseDone {
                    outcome: Outcome::NoResponse,
                });
            }
            (None, COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID) => {
                self.phase = Phase::Replication;
                self.events.push_back(Event::Replication);
            }
            (None, _) => self.events.push_back(Event::ResponseDone {
                outcome: Outcome::NoResponse,
            }),
        }
        Ok(())
    }
}

impl frames::Reader for Conversation {
    fn want(
        &mut self,
        offset: u64,
        payload_len: u64,
        head: &[u8],
        multi_frame: bool,
    ) -> Result<usize, TrackError> {
        Ok(match self.dir {
            Direction::Client if self.expects_command() => {
                let want = command::wanted(head, |id| self.params_for_head(id));
                if want <= head.len() && !multi_frame {
                    // The head is complete: the rest passes on before the packet ends.
                    self.client_edits(offset, payload_len, head);
                }
                want
            }
            Direction::Client => head.len(),
            Direction::Server => self
                .classify(Some(head[0]), multi_frame)
                .want()
                .max(head.len()),
        })
    }

    fn packet(&mut self, packet: Packet<'_>) -> Result<(), TrackError> {
        match self.dir {
            Direction::Client => self.client_packet(packet),
            Direction::Server => self.server_packet(packet),
        }
    }

    fn frame_header(&mut self, offset: u64, seq: u8) {
        let shift = self.metadata.seq_shift;
        if self.dir == Direction::Server && shift != 0 {
            self.edit_server(offset + 3, 1, vec![seq.wrapping_add(shift)]);
        }
    }
}

fn span(p: &Packet<'_>) -> Span {
    Span {
        offset: p.offset,
        len: p.len,
        seq: p.seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::flags::caps::CLIENT_PROTOCOL_41;

    #[test]
    fn an_empty_command_packet_is_a_protocol_error_not_a_panic() {
        let mut t = Tracker::new(CLIENT_PROTOCOL_41);
        assert!(t.client_bytes(&[0, 0, 0, 0]).is_err());
    }
}

//! The client commands the tracker tells apart, parsed from the head of a command packet.

use crate::packets::codec::Reader;
use crate::packets::flags::command::*;

/// Longest SQL text (COM_QUERY, COM_STMT_PREPARE) collected; longer text is cut and marked.
pub const SQL_LIMIT: usize = 64 * 1024;

/// The statement id MariaDB uses for "the statement prepared last" (direct execute).
pub const LAST_PREPARED: u32 = 0xFFFF_FFFF;

/// `COM_STMT_EXECUTE` flag asking for a read-only cursor.
pub const CURSOR_TYPE_READ_ONLY: u8 = 1;

/// `COM_STMT_BULK_EXECUTE` flag: the parameter types follow the flags.
pub const STMT_BULK_FLAG_CLIENT_SEND_TYPES: u16 = 128;

/// `COM_STMT_BULK_EXECUTE` flag: one result per row of parameters (MariaDB 11.5+).
pub const STMT_BULK_FLAG_SEND_UNIT_RESULTS: u16 = 64;

/// SQL text sent by the client, possibly cut at [`SQL_LIMIT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlText {
    /// The text (or its first [`SQL_LIMIT`] bytes).
    pub text: Vec<u8>,
    /// True when the client sent more than `text`.
    pub truncated: bool,
}

/// A client command, as far as ferry needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `COM_QUERY`.
    Query(SqlText),
    /// `COM_STMT_PREPARE`.
    Prepare(SqlText),
    /// `COM_INIT_DB` with the schema name.
    InitDb(Vec<u8>),
    /// `COM_STMT_EXECUTE`.
    Execute {
        /// Statement id, with MariaDB's [`LAST_PREPARED`] resolved when known.
        id: u32,
        /// Cursor flags.
        flags: u8,
        /// Parameter types when the client bound new ones (`new_params_bound_flag = 1`).
        param_types: Option<Vec<u16>>,
    },
    /// MariaDB's `COM_STMT_BULK_EXECUTE`: many rows of parameters at once.
    BulkExecute {
        /// Statement id (resolved as for `Execute`).
        id: u32,
        /// Bulk flags ([`STMT_BULK_FLAG_CLIENT_SEND_TYPES`], [`STMT_BULK_FLAG_SEND_UNIT_RESULTS`]).
        flags: u16,
        /// Parameter types when the client sent them (same encoding as `Execute`'s).
        param_types: Option<Vec<u16>>,
    },
    /// `COM_STMT_FETCH`.
    Fetch {
        /// Statement id, with MariaDB's [`LAST_PREPARED`] resolved when known.
        id: u32,
        /// Rows asked for.
        rows: u32,
    },
    /// `COM_STMT_CLOSE` (no response).
    Close {
        /// Statement id (resolved as for `Execute`).
        id: u32,
    },
    /// `COM_STMT_RESET`.
    Reset {
        /// Statement id (resolved as for `Execute`).
        id: u32,
    },
    /// `COM_STMT_SEND_LONG_DATA` (no response).
    SendLongData {
        /// Statement id (resolved as for `Execute`).
        id: u32,
        /// Parameter index.
        param: u16,
    },
    /// `COM_SET_OPTION` (0 = multi-statements on, 1 = off).
    SetOption(u16),
    /// `COM_CHANGE_USER`.
    ChangeUser,
    /// `COM_RESET_CONNECTION`.
    ResetConnection,
    /// `COM_QUIT` (no response).
    Quit,
    /// `COM_BINLOG_DUMP` or `COM_BINLOG_DUMP_GTID`: the connection turns into a replication stream.
    BinlogDump(u8),
    /// Any other command whose response is a fixed shape (`COM_PING`, `COM_STATISTICS`, ...).
    Other(u8),
}

impl Command {
    /// The command byte.
    pub fn code(&self) -> u8 {
        match self {
            Command::Query(_) => COM_QUERY,
            Command::Prepare(_) => COM_STMT_PREPARE,
            Command::InitDb(_) => COM_INIT_DB,
            Command::Execute { .. } => COM_STMT_EXECUTE,
            Command::BulkExecute { .. } => COM_STMT_BULK_EXECUTE,
            Command::Fetch { .. } => COM_STMT_FETCH,
            Command::Close { .. } => COM_STMT_CLOSE,
            Command::Reset { .. } => COM_STMT_RESET,
            Command::SendLongData { .. } => COM_STMT_SEND_LONG_DATA,
            Command::SetOption(_) => COM_SET_OPTION,
            Command::ChangeUser => COM_CHANGE_USER,
            Command::ResetConnection => COM_RESET_CONNECTION,
            Command::Quit => COM_QUIT,
            Command::BinlogDump(c) | Command::Other(c) => *c,
        }
    }
}

/// Bytes of a command packet needed to parse it, given its first `head` bytes.
///
/// `params` gives the parameter count of a prepared statement (for
/// `COM_STMT_EXECUTE`, whose parameter types follow a bitmap sized by it).
pub(crate) fn wanted(head: &[u8], params: impl Fn(u32) -> Option<u16>) -> usize {
    match head[0] {
        COM_QUERY | COM_STMT_PREPARE => 1 + SQL_LIMIT,
        COM_INIT_DB => 1 + 256,
        COM_STMT_FETCH => 9,
        COM_STMT_CLOSE | COM_STMT_RESET => 5,
        COM_STMT_SEND_LONG_DATA => 7,
        COM_SET_OPTION => 3,
        COM_STMT_BULK_EXECUTE if head.len() < 7 => 7,
        COM_STMT_BULK_EXECUTE => {
            let id = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            let flags = u16::from_le_bytes([head[5], head[6]]);
            if flags & STMT_BULK_FLAG_CLIENT_SEND_TYPES == 0 {
                return head.len();
            }
            match params(id) {
                Some(n) => 7 + 2 * n as usize,
                None => 1 + SQL_LIMIT,
            }
        }
        COM_STMT_EXECUTE if head.len() < 10 => 10,
        COM_STMT_EXECUTE => {
            let id = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            // Not known yet (its prepare is still unanswered): collect enough to read the types later.
            let Some(n) = params(id) else {
                return 1 + SQL_LIMIT;
            };
            let n = n as usize;
            if n == 0 {
                return head.len();
            }
            let bound_at = 10 + n.div_ceil(8);
            match head.get(bound_at) {
                None => bound_at + 1,
                Some(1) => bound_at + 1 + 2 * n,
                Some(_) => head.len(),
            }
        }
        _ => 1,
    }
}

/// Parses a command from its collected head; `None` when it is too short to be that command.
pub(crate) fn parse(
    head: &[u8],
    truncated: bool,
    params: impl Fn(u32) -> Option<u16>,
    last_prepared: Option<u32>,
) -> Option<Command> {
    let (&code, rest) = head.split_first()?;
    let mut r = Reader::new(rest, "command");
    let sql = || SqlText {
        text: rest.to_vec(),
        truncated,
    };
    // MariaDB's "last prepared" may stand in any statement command's id.
    let resolve = |id: u32| match (id, last_prepared) {
        (LAST_PREPARED, Some(last)) => last,
        _ => id,
    };
    Some(match code {
        COM_QUERY => Command::Query(sql()),
        COM_STMT_PREPARE => Command::Prepare(sql()),
        COM_INIT_DB => Command::InitDb(rest.to_vec()),
        COM_STMT_EXECUTE => {
            let id = resolve(r.u32().ok()?);
            let flags = r.u8().ok()?;
            r.u32().ok()?;
            let n = params(id).unwrap_or(0) as usize;
            let mut param_types = None;
            // A head too short for the types (a statement unknown when it was
            // collected) only means the types are not known.
            if n > 0 && r.bytes(n.div_ceil(8)).is_ok() && r.u8().ok() == Some(1) {
                let types = (0..n).map(|_| r.u16()).collect::<Result<Vec<_>, _>>();
                param_types = types.ok();
            }
            Command::Execute {
                id,
                flags,
                param_types,
            }
        }
        COM_STMT_BULK_EXECUTE => {
            let id = resolve(r.u32().ok()?);
            let flags = r.u16().ok()?;
            let n = params(id).unwrap_or(0) as usize;
            let param_types = (flags & STMT_BULK_FLAG_CLIENT_SEND_TYPES != 0 && n > 0)
                .then(|| (0..n).map(|_| r.u16()).collect::<Result<Vec<_>, _>>().ok())
                .flatten();
            Command::BulkExecute {
                id,
                flags,
                param_types,
            }
        }
        COM_STMT_FETCH => Command::Fetch {
            id: resolve(r.u32().ok()?),
            rows: r.u32().ok()?,
        },
        COM_STMT_CLOSE => Command::Close {
            id: resolve(r.u32().ok()?),
        },
        COM_STMT_RESET => Command::Reset {
            id: resolve(r.u32().ok()?),
        },
        COM_STMT_SEND_LONG_DATA => Command::SendLongData {
            id: resolve(r.u32().ok()?),
            param: r.u16().ok()?,
        },
        COM_SET_OPTION => Command::SetOption(r.u16().ok()?),
        COM_CHANGE_USER => Command::ChangeUser,
        COM_RESET_CONNECTION => Command::ResetConnection,
        COM_QUIT => Command::Quit,
        COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID => Command::BinlogDump(code),
        c => Command::Other(c),
    })
}

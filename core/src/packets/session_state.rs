//! The session-state-change block of an OK packet (`CLIENT_SESSION_TRACK`).

use bytes::BytesMut;

use super::codec::{put_lenenc_bytes, put_lenenc_int, Reader};
use super::ParseError;

/// Entry type: a system variable changed (name, value).
pub const SESSION_TRACK_SYSTEM_VARIABLES: u8 = 0;
/// Entry type: the current schema changed.
pub const SESSION_TRACK_SCHEMA: u8 = 1;
/// Entry type: some session state changed ("1").
pub const SESSION_TRACK_STATE_CHANGE: u8 = 2;
/// Entry type: GTIDs.
pub const SESSION_TRACK_GTIDS: u8 = 3;
/// Entry type: transaction characteristics (a statement that recreates them).
pub const SESSION_TRACK_TRANSACTION_CHARACTERISTICS: u8 = 4;
/// Entry type: transaction state (8 characters).
pub const SESSION_TRACK_TRANSACTION_STATE: u8 = 5;

/// One entry of a session-state-change block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateChange {
    /// `SET` of a tracked system variable.
    SystemVariable {
        /// Variable name.
        name: String,
        /// New value, as text.
        value: String,
    },
    /// The current schema.
    Schema(String),
    /// Session state changed in a way the other trackers may not explain.
    StateChanged(bool),
    /// The transaction state string, e.g. `T_______`.
    TransactionState(String),
    /// The transaction characteristics statement.
    TransactionCharacteristics(String),
    /// Any other entry, kept as is.
    Other {
        /// Entry type.
        kind: u8,
        /// Raw entry data.
        data: Vec<u8>,
    },
}

const WHAT: &str = "session state";

impl StateChange {
    /// Parses a whole block (the bytes after its own length prefix).
    pub fn parse_all(block: &[u8]) -> Result<Vec<StateChange>, ParseError> {
        let mut r = Reader::new(block, WHAT);
        let mut out = Vec::new();
        while !r.is_empty() {
            let kind = r.u8()?;
            let data = r.lenenc_bytes()?;
            let mut d = Reader::new(data, WHAT);
            let text = |d: &mut Reader<'_>| -> Result<String, ParseError> {
                Ok(String::from_utf8_lossy(d.lenenc_bytes()?).into_owned())
            };
            out.push(match kind {
                SESSION_TRACK_SYSTEM_VARIABLES => StateChange::SystemVariable {
                    name: text(&mut d)?,
                    value: text(&mut d)?,
                },
                SESSION_TRACK_SCHEMA => StateChange::Schema(text(&mut d)?),
                SESSION_TRACK_STATE_CHANGE => StateChange::StateChanged(text(&mut d)? == "1"),
                SESSION_TRACK_TRANSACTION_STATE => StateChange::TransactionState(text(&mut d)?),
                SESSION_TRACK_TRANSACTION_CHARACTERISTICS => {
                    StateChange::TransactionCharacteristics(text(&mut d)?)
                }
                _ => StateChange::Other {
                    kind,
                    data: data.to_vec(),
                },
            });
        }
        Ok(out)
    }

    /// Appends this entry (type, length, data).
    pub fn write(&self, out: &mut BytesMut) {
        let mut data = BytesMut::new();
        let kind = match self {
            StateChange::SystemVariable { name, value } => {
                put_lenenc_bytes(&mut data, name.as_bytes());
                put_lenenc_bytes(&mut data, value.as_bytes());
                SESSION_TRACK_SYSTEM_VARIABLES
            }
            StateChange::Schema(s) => {
                put_lenenc_bytes(&mut data, s.as_bytes());
                SESSION_TRACK_SCHEMA
            }
            StateChange::StateChanged(on) => {
                put_lenenc_bytes(&mut data, if *on { b"1" } else { b"0" });
                SESSION_TRACK_STATE_CHANGE
            }
            StateChange::TransactionState(s) => {
                put_lenenc_bytes(&mut data, s.as_bytes());
                SESSION_TRACK_TRANSACTION_STATE
            }
            StateChange::TransactionCharacteristics(s) => {
                put_lenenc_bytes(&mut data, s.as_bytes());
                SESSION_TRACK_TRANSACTION_CHARACTERISTICS
            }
            StateChange::Other { kind, data: raw } => {
                data.extend_from_slice(raw);
                *kind
            }
        };
        out.extend_from_slice(&[kind]);
        put_lenenc_int(out, data.len() as u64);
        out.extend_from_slice(&data);
    }
}

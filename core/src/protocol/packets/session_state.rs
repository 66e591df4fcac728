//! The session-state-change block of an OK packet (`CLIENT_SESSION_TRACK`).

use bytes::{BufMut, BytesMut};

use super::codec::{put_lenenc_bytes, put_lenenc_int, Reader};
use super::ParseError;

/// `SESSION_TRACK_SYSTEM_VARIABLES`.
pub const SYSTEM_VARIABLES: u8 = 0;
/// `SESSION_TRACK_SCHEMA`.
pub const SCHEMA: u8 = 1;
/// `SESSION_TRACK_STATE_CHANGE`.
pub const STATE_CHANGE: u8 = 2;
/// `SESSION_TRACK_GTIDS`.
pub const GTIDS: u8 = 3;
/// `SESSION_TRACK_TRANSACTION_CHARACTERISTICS`.
pub const TRANSACTION_CHARACTERISTICS: u8 = 4;
/// `SESSION_TRACK_TRANSACTION_STATE` (5 on the wire, as recorded from MariaDB 10.11).
pub const TRANSACTION_STATE: u8 = 5;

/// One entry of the session-state-change block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackItem {
    /// A system variable took a new value.
    SystemVariable {
        /// Variable name.
        name: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
    },
    /// The current schema changed.
    Schema(Vec<u8>),
    /// Session state changed (`true` for '1').
    StateChange(bool),
    /// The transaction state, 8 characters; the first is `T` (explicit), `I` (implicit) or `_` (none).
    TransactionState(Vec<u8>),
    /// The statements that would recreate the next transaction's characteristics.
    TransactionCharacteristics(Vec<u8>),
    /// Any other tracker (e.g. GTIDs), kept raw.
    Other(u8, Vec<u8>),
}

impl TrackItem {
    /// True if this is a transaction state that says a transaction is open.
    pub fn opens_transaction(&self) -> Option<bool> {
        match self {
            TrackItem::TransactionState(s) => Some(matches!(s.first(), Some(b'T' | b'I'))),
            _ => None,
        }
    }
}

const WHAT: &str = "session state";

/// Parses the session-state-change block of an OK packet.
pub fn parse(block: &[u8]) -> Result<Vec<TrackItem>, ParseError> {
    let mut r = Reader::new(block, WHAT);
    let mut items = Vec::new();
    while !r.is_empty() {
        let kind = r.u8()?;
        let data = r.lenenc_bytes()?;
        let mut d = Reader::new(data, WHAT);
        items.push(match kind {
            SYSTEM_VARIABLES => TrackItem::SystemVariable {
                name: d.lenenc_bytes()?.to_vec(),
                value: d.lenenc_bytes()?.to_vec(),
            },
            SCHEMA => TrackItem::Schema(d.lenenc_bytes()?.to_vec()),
            // Servers send the flag bare ('1'), not as a nested string.
            STATE_CHANGE => TrackItem::StateChange(data == b"1"),
            TRANSACTION_STATE => TrackItem::TransactionState(d.lenenc_bytes()?.to_vec()),
            TRANSACTION_CHARACTERISTICS => {
                TrackItem::TransactionCharacteristics(d.lenenc_bytes()?.to_vec())
            }
            other => TrackItem::Other(other, data.to_vec()),
        });
    }
    Ok(items)
}

impl TrackItem {
    /// Appends this entry (type, length, data) as a server would.
    pub fn write(&self, out: &mut BytesMut) {
        let mut data = BytesMut::new();
        let kind = match self {
            TrackItem::SystemVariable { name, value } => {
                put_lenenc_bytes(&mut data, name);
                put_lenenc_bytes(&mut data, value);
                SYSTEM_VARIABLES
            }
            TrackItem::Schema(s) => {
                put_lenenc_bytes(&mut data, s);
                SCHEMA
            }
            TrackItem::StateChange(on) => {
                data.put_u8(if *on { b'1' } else { b'0' });
                STATE_CHANGE
            }
            TrackItem::TransactionState(s) => {
                put_lenenc_bytes(&mut data, s);
                TRANSACTION_STATE
            }
            TrackItem::TransactionCharacteristics(s) => {
                put_lenenc_bytes(&mut data, s);
                TRANSACTION_CHARACTERISTICS
            }
            TrackItem::Other(kind, raw) => {
                data.put_slice(raw);
                *kind
            }
        };
        out.put_u8(kind);
        put_lenenc_int(out, data.len() as u64);
        out.put_slice(&data);
    }
}

/// Appends a whole session-state block of `items`.
pub fn write_all(items: &[TrackItem], out: &mut BytesMut) {
    for item in items {
        item.write(out);
    }
}

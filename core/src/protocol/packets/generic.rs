//! The generic server replies: OK, ERR and EOF.

use bytes::{BufMut, BytesMut};

use super::codec::{put_lenenc_bytes, put_lenenc_int, Reader};
use super::flags::caps::*;
use super::flags::status::SERVER_SESSION_STATE_CHANGED;
use super::ParseError;

/// An OK packet (header 0x00, or 0xFE where it replaces EOF under `CLIENT_DEPRECATE_EOF`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OkPacket {
    /// The header byte, 0x00 or 0xFE.
    pub header: u8,
    /// Rows changed by the statement.
    pub affected_rows: u64,
    /// `LAST_INSERT_ID()` after the statement.
    pub last_insert_id: u64,
    /// Server status flags.
    pub status: u16,
    /// Warning count.
    pub warnings: u16,
    /// Human-readable info.
    pub info: Vec<u8>,
    /// The raw session-state-change block (`CLIENT_SESSION_TRACK` with `SERVER_SESSION_STATE_CHANGED`).
    pub session_state: Option<Vec<u8>>,
}

const OK: &str = "OK";

impl OkPacket {
    /// Parses an OK payload as sent to a client with `capabilities`.
    pub fn parse(payload: &[u8], capabilities: u32) -> Result<Self, ParseError> {
        let mut r = Reader::new(payload, OK);
        let header = r.u8()?;
        if header != 0x00 && header != 0xFE {
            return Err(ParseError::Invalid(OK, "bad header byte"));
        }
        let mut ok = OkPacket {
            header,
            affected_rows: r.lenenc_int()?,
            last_insert_id: r.lenenc_int()?,
            ..OkPacket::default()
        };
        if capabilities & CLIENT_PROTOCOL_41 != 0 {
            ok.status = r.u16()?;
            ok.warnings = r.u16()?;
        } else if capabilities & CLIENT_TRANSACTIONS != 0 {
            ok.status = r.u16()?;
        }
        if capabilities & CLIENT_SESSION_TRACK != 0 {
            // Servers may stop after the status when there is nothing more to say.
            if !r.is_empty() {
                ok.info = r.lenenc_bytes()?.to_vec();
            }
            if ok.status & SERVER_SESSION_STATE_CHANGED != 0 && !r.is_empty() {
                ok.session_state = Some(r.lenenc_bytes()?.to_vec());
            }
        } else {
            ok.info = r.rest().to_vec();
        }
        Ok(ok)
    }

    /// Appends this OK as a payload for a client with `capabilities`.
    ///
    /// Without `CLIENT_SESSION_TRACK` the session-state block is left out and
    /// `SERVER_SESSION_STATE_CHANGED` cleared, as a server would for that client.
    pub fn write(&self, out: &mut BytesMut, capabilities: u32) {
        self.write_styled(out, capabilities, InfoStyle::Raw)
    }

    /// Like [`OkPacket::write`], with the info of a client without
    /// `CLIENT_SESSION_TRACK` written in `style` (MariaDB length-prefixes it, MySQL does not).
    pub fn write_styled(&self, out: &mut BytesMut, capabilities: u32, style: InfoStyle) {
        out.put_u8(self.header);
        put_lenenc_int(out, self.affected_rows);
        put_lenenc_int(out, self.last_insert_id);
        let track = capabilities & CLIENT_SESSION_TRACK != 0;
        let state = if track {
            self.session_state.as_ref()
        } else {
            None
        };
        let mut status = self.status;
        if state.is_none() {
            status &= !SERVER_SESSION_STATE_CHANGED;
        }
        if capabilities & CLIENT_PROTOCOL_41 != 0 {
            out.put_u16_le(status);
            out.put_u16_le(self.warnings);
        } else if capabilities & CLIENT_TRANSACTIONS != 0 {
            out.put_u16_le(status);
        }
        if track {
            if !self.info.is_empty() || state.is_some() {
                put_lenenc_bytes(out, &self.info);
            }
            if let Some(state) = state {
                put_lenenc_bytes(out, state);
            }
        } else if style == InfoStyle::LengthPrefixed && !self.info.is_empty() {
            put_lenenc_bytes(out, &self.info);
        } else {
            out.put_slice(&self.info);
        }
    }
}

/// How a server writes an OK's info for a client without `CLIENT_SESSION_TRACK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoStyle {
    /// The rest of the packet (MySQL).
    Raw,
    /// A length-encoded string (MariaDB).
    LengthPrefixed,
}

/// An ERR packet (header 0xFF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrPacket {
    /// Error code, e.g. 1045.
    pub code: u16,
    /// SQLSTATE, e.g. `28000` (absent from pre-4.1 errors).
    pub sql_state: Option<[u8; 5]>,
    /// The message.
    pub message: String,
}

const ERR: &str = "ERR";

impl ErrPacket {
    /// An error with a code, a SQLSTATE and a message.
    pub fn new(code: u16, sql_state: &str, message: impl Into<String>) -> Self {
        let mut state = *b"HY000";
        if sql_state.len() == 5 {
            state.copy_from_slice(sql_state.as_bytes());
        }
        ErrPacket {
            code,
            sql_state: Some(state),
            message: message.into(),
        }
    }

    /// Parses an ERR payload.
    pub fn parse(payload: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(payload, ERR);
        if r.u8()? != 0xFF {
            return Err(ParseError::Invalid(ERR, "bad header byte"));
        }
        let code = r.u16()?;
        let mut sql_state = None;
        if r.peek() == Some(b'#') {
            r.u8()?;
            let mut s = [0u8; 5];
            s.copy_from_slice(r.bytes(5)?);
            sql_state = Some(s);
        }
        let message = String::from_utf8_lossy(r.rest()).into_owned();
        Ok(ErrPacket {
            code,
            sql_state,
            message,
        })
    }

    /// Appends this ERR as a payload.
    pub fn write(&self, out: &mut BytesMut) {
        out.put_u8(0xFF);
        out.put_u16_le(self.code);
        if let Some(state) = &self.sql_state {
            out.put_u8(b'#');
            out.put_slice(state);
        }
        out.put_slice(self.message.as_bytes());
    }

    /// The SQLSTATE as text (`HY000` when absent).
    pub fn sql_state_str(&self) -> &str {
        self.sql_state
            .as_ref()
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("HY000")
    }
}

/// An EOF packet (header 0xFE, shorter than 9 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EofPacket {
    /// Warning count.
    pub warnings: u16,
    /// Server status flags.
    pub status: u16,
}

const EOF: &str = "EOF";

impl EofPacket {
    /// True if `payload` has the shape of an EOF packet.
    pub fn matches(payload: &[u8]) -> bool {
        payload.first() == Some(&0xFE) && payload.len() < 9
    }

    /// Parses an EOF payload.
    pub fn parse(payload: &[u8]) -> Result<Self, ParseError> {
        if !Self::matches(payload) {
            return Err(ParseError::Invalid(EOF, "not an EOF packet"));
        }
        let mut r = Reader::new(&payload[1..], EOF);
        if r.is_empty() {
            return Ok(EofPacket::default());
        }
        Ok(EofPacket {
            warnings: r.u16()?,
            status: r.u16()?,
        })
    }

    /// Appends this EOF as a payload (protocol 4.1).
    pub fn write(&self, out: &mut BytesMut) {
        out.put_u8(0xFE);
        out.put_u16_le(self.warnings);
        out.put_u16_le(self.status);
    }
}

/// The first reply to a login or simple command: OK or ERR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerReply {
    /// Success.
    Ok(OkPacket),
    /// Failure.
    Err(ErrPacket),
}

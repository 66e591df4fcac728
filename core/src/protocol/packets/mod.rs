//! The MySQL client/server packets ferry reads and writes.
//!
//! Every parser takes a payload (no frame header) and returns an error, never
//! panics, on malformed input. Writers append a payload to a `BytesMut`; frame
//! it with [`crate::wire::write_packet`].

mod auth_switch;
mod change_user;
pub mod codec;
pub mod flags;
mod generic;
mod handshake;
mod response;
pub mod session_state;

use std::fmt;

pub use auth_switch::{AuthMoreData, AuthSwitchRequest};
pub use change_user::ChangeUser;
pub use generic::{EofPacket, ErrPacket, InfoStyle, OkPacket, ServerReply};
pub use handshake::Handshake;
pub use response::{is_ssl_request, HandshakeResponse, SSL_REQUEST_LEN};
pub use session_state::TrackItem;

/// Why a payload could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The payload ended inside the named packet.
    Truncated(&'static str),
    /// The named packet holds a value that makes no sense.
    Invalid(&'static str, &'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated(what) => write!(f, "truncated {what} packet"),
            ParseError::Invalid(what, why) => write!(f, "malformed {what} packet: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

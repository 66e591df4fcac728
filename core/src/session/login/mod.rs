//! The two halves of a login: ferry as the server to its client
//! ([`client`]) and ferry as the client of a backend ([`backend`]).
//!
//! Both are pure: they take parsed packets and return the next step.
//!
//! Users change while ferry runs. A login ferry cannot verify with the users
//! it has (an unknown user, a password that does not match the stored hash)
//! first asks for the user source to be read again ([`Output::ReadUsers`],
//! answered by [`Input::UsersRead`]); a user whose hash ferry still does not
//! know is then verified by the backend instead, if [`LoginPolicy`] allows.
//!
//! [`Output::ReadUsers`]: crate::session::Output::ReadUsers
//! [`Input::UsersRead`]: crate::session::Input::UsersRead

pub mod backend;
pub mod change_user;
pub mod client;
mod reread;

use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::config::UnverifiedLogins;
use crate::packets::ErrPacket;
use crate::users::UserDirectory;
use crate::wire::write_packet;

/// What blocks the move of a session whose password the backend verified:
/// ferry cannot log in elsewhere until it learns the user's hash.
pub const CREDENTIAL_UNKNOWN: &str =
    "credential unknown: the backend verified this login and ferry does not have the user's password hash";

/// How logins ferry cannot verify with the users it has are handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoginPolicy {
    /// A user source is configured: read it again before refusing.
    pub user_source: bool,
    /// Users whose hash ferry does not know, after any re-read.
    pub unverified: UnverifiedLogins,
}

/// Why a login asks for the user source to be read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RereadCause {
    /// ferry has no entry for the user.
    UnknownUser,
    /// The password does not verify against the stored hash (it may have changed).
    PasswordMismatch,
}

impl fmt::Display for RereadCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RereadCause::UnknownUser => "unknown user",
            RereadCause::PasswordMismatch => "password does not match the known hash",
        })
    }
}

/// A session asks for the user source to be read again (a login or `COM_CHANGE_USER` waits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadUsers {
    /// The user name as the client sent it (for logs).
    pub user: String,
    /// Why.
    pub cause: RereadCause,
}

/// The answer to [`ReadUsers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsersRead {
    /// The users as read just now (configured users laid over the source's).
    Read(Arc<UserDirectory>),
    /// The read failed; the users ferry has stay in force.
    Failed(String),
    /// No user source is configured.
    NoSource,
}

/// The backend's salt and the client's answer to it, from a login the
/// backend verified: with the user's stored hash, the secret can be recovered
/// from them later. Debug shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The salt the backend greeted with (and ferry relayed to the client).
    pub salt: Vec<u8>,
    /// The client's mysql_native_password answer to it.
    pub reply: Vec<u8>,
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A scramble and its salt allow an offline attack on the password: never log them.
        f.write_str("Exchange(<redacted>)")
    }
}

/// Frames an ERR payload as one packet with sequence id `seq`.
pub fn err_frame(err: &ErrPacket, seq: u8) -> Bytes {
    let mut payload = BytesMut::new();
    err.write(&mut payload);
    frame(&payload, seq)
}

/// Frames `payload` as one packet with sequence id `seq`.
pub fn frame(payload: &[u8], seq: u8) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    write_packet(&mut out, seq, payload);
    out.freeze()
}

//! What ferry must remember of a `COM_CHANGE_USER` it passed on: MariaDB
//! answers it with an auth switch carrying its current salt, the client
//! answers that switch itself, and from then on the client scrambles its next
//! `COM_CHANGE_USER` with that salt instead of the one in ferry's handshake.
//!
//! That exchange also lets the backend verify a user ferry has no hash for:
//! ferry passes the command on, the backend's switch reaches the client, and
//! the backend's verdict decides who the session is ([`ChangeReply`]).

use std::collections::VecDeque;

use crate::forward::Forward;
use crate::login::client::VerifiedBy;
use crate::login::{Exchange, CREDENTIAL_UNKNOWN};
use crate::packets::AuthSwitchRequest;
use crate::session::{Identity, Output, SessionEvent};
use crate::wire::{frame_header, HEADER_LEN};

/// Most of a first reply ferry looks at (an auth switch is about 50 bytes).
const WATCH_LIMIT: usize = 512;

/// Watches the backend's first packet after a `COM_CHANGE_USER` for an auth switch.
#[derive(Debug, Default)]
pub struct SwitchWatch {
    head: Vec<u8>,
}

/// What the first packet of a `COM_CHANGE_USER` reply was.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstReply {
    /// Not all of it yet.
    Pending,
    /// An auth switch to mysql_native_password: the client answers this salt
    /// and will scramble its next `COM_CHANGE_USER` with it.
    Switch(Vec<u8>),
    /// An OK.
    Ok,
    /// An ERR.
    Err,
    /// Anything else (a switch to another plugin, more auth data).
    Other,
}

impl SwitchWatch {
    /// Feeds bytes from the backend (the reply starts at the first byte fed).
    pub fn feed(&mut self, data: &[u8]) -> FirstReply {
        let room = WATCH_LIMIT.saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..data.len().min(room)]);
        let Some((len, _)) = frame_header(&self.head) else {
            return FirstReply::Pending;
        };
        if HEADER_LEN + len > WATCH_LIMIT {
            return FirstReply::Other;
        }
        let Some(payload) = self.head.get(HEADER_LEN..HEADER_LEN + len) else {
            return FirstReply::Pending;
        };
        match payload.first() {
            Some(0x00) => FirstReply::Ok,
            Some(0xFF) => FirstReply::Err,
            _ => match AuthSwitchRequest::parse(payload) {
                Ok(s) if s.plugin == crate::auth::NATIVE_PASSWORD => FirstReply::Switch(s.data),
                _ => FirstReply::Other,
            },
        }
    }
}

/// Who a session becomes if the backend accepts a `COM_CHANGE_USER` only it can verify.
#[derive(Debug)]
pub struct Relayed {
    /// The bare user name (what the backend sees).
    pub user: String,
    /// The name as the client sent it.
    pub sent_user: String,
    /// The database asked for.
    pub database: Option<String>,
}

/// A `COM_CHANGE_USER` in flight: what ferry learns from the exchange.
#[derive(Debug, Default)]
pub struct ChangeReply {
    /// Set when the backend verifies the new user.
    relayed: Option<Relayed>,
    watch: SwitchWatch,
    salt: Option<Vec<u8>>,
    reply: Option<Vec<u8>>,
}

impl ChangeReply {
    /// A change ferry verified itself: only the switch's salt is of interest.
    pub fn verified() -> Self {
        ChangeReply::default()
    }

    /// A change the backend verifies: its verdict decides who the session is.
    pub fn relayed(relayed: Relayed) -> Self {
        ChangeReply {
            relayed: Some(relayed),
            ..ChangeReply::default()
        }
    }

    /// Client bytes while the change is in flight: after the switch, its answer.
    pub fn from_client(&mut self, data: &[u8]) {
        if self.salt.is_none() || self.reply.is_some() {
            return;
        }
        if let Some((len, _)) = frame_header(data) {
            if let Some(payload) = data.get(HEADER_LEN..HEADER_LEN + len) {
                self.reply = Some(payload.to_vec());
            }
        }
    }
}

/// Follows the backend's reply to a `COM_CHANGE_USER` (before the tracker passes it on).
pub(in crate::session) fn watch_reply(
    identity: &mut Identity,
    forward: &mut Forward,
    data: &[u8],
    outputs: &mut VecDeque<Output>,
) {
    let Some(change) = identity.change_reply.as_mut() else {
        return;
    };
    match change.watch.feed(data) {
        FirstReply::Pending => {}
        FirstReply::Switch(salt) if change.salt.is_none() => {
            identity.backend_salt = salt.clone();
            identity.client_salt = Some(salt.clone());
            change.salt = Some(salt);
            change.watch = SwitchWatch::default();
            if change.relayed.is_none() {
                identity.change_reply = None;
            }
        }
        // Refused: the server keeps the session's user, and so does ferry.
        FirstReply::Err => identity.change_reply = None,
        verdict => {
            let change = identity.change_reply.take().expect("checked");
            let Some(relayed) = change.relayed else {
                return;
            };
            // Accepted (or a shape ferry cannot follow: then assume the worst,
            // a new user whose credential ferry does not know).
            let exchange = match (verdict, change.salt, change.reply) {
                (FirstReply::Ok, Some(salt), Some(reply)) => Some(Exchange { salt, reply }),
                _ => None,
            };
            let client = &mut identity.client;
            client.login.user = relayed.user;
            client.response.user = relayed.sent_user.clone();
            client.response.database = relayed.database;
            client.secret = crate::auth::Secret::Empty;
            client.verified_by = VerifiedBy::Backend(exchange);
            forward.set_blocker(CREDENTIAL_UNKNOWN, true);
            outputs.push_back(Output::Event(SessionEvent::BackendVerified {
                user: relayed.sent_user,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::frame;
    use bytes::BytesMut;

    #[test]
    fn finds_the_salt_of_a_switch_split_over_reads() {
        let mut payload = BytesMut::new();
        AuthSwitchRequest {
            plugin: "mysql_native_password".into(),
            data: b"0123456789abcdefghij".to_vec(),
        }
        .write(&mut payload);
        let bytes = frame(&payload, 1);
        let mut w = SwitchWatch::default();
        assert_eq!(w.feed(&bytes[..3]), FirstReply::Pending);
        assert_eq!(w.feed(&bytes[3..10]), FirstReply::Pending);
        assert_eq!(
            w.feed(&bytes[10..]),
            FirstReply::Switch(b"0123456789abcdefghij".to_vec())
        );
        let mut w = SwitchWatch::default();
        assert_eq!(w.feed(&frame(&[0, 0, 0, 2, 0, 0, 0], 1)), FirstReply::Ok);
    }
}

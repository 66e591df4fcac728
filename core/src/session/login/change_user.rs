//! What ferry must remember of a `COM_CHANGE_USER` it passed on: MariaDB
//! answers it with an auth switch carrying its current salt, the client
//! answers that switch itself, and from then on the client scrambles its next
//! `COM_CHANGE_USER` with that salt instead of the one in ferry's handshake.

use crate::packets::AuthSwitchRequest;
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
    /// Anything else (OK, ERR, another plugin): nothing to remember.
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
        match AuthSwitchRequest::parse(payload) {
            Ok(s) if s.plugin == crate::auth::NATIVE_PASSWORD => FirstReply::Switch(s.data),
            _ => FirstReply::Other,
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
        assert_eq!(w.feed(&frame(&[0, 0, 0, 2, 0, 0, 0], 1)), FirstReply::Other);
    }
}

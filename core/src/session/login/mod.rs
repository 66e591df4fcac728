//! The two halves of a login: ferry as the server to its client
//! ([`client`]) and ferry as the client of a backend ([`backend`]).
//!
//! Both are pure: they take parsed packets and return the next step.

pub mod backend;
pub mod client;

use bytes::{Bytes, BytesMut};

use crate::packets::ErrPacket;
use crate::wire::write_packet;

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

//! The MySQL wire protocol: framing, packets and authentication scrambles.

pub mod auth;
pub mod compress;
pub mod packets;
pub mod wire;

//! The MySQL wire protocol: framing, packets and authentication scrambles;
//! and the PROXY protocol header that may come before it.

pub mod auth;
pub mod compress;
pub mod packets;
pub mod proxy_header;
pub mod wire;

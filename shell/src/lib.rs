//! ferry-shell: wires ferry-core's state machines to real sockets with smol.
//!
//! The per-connection [`pump`] is generic over the streams, the connector, the
//! router and the clock, so the simulator drives exactly the same code.

#![warn(missing_docs)]

pub mod admin;
pub mod clock;
pub mod control;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod proxy_protocol;
pub mod pump;
pub mod readbuf;
pub mod record;
pub mod registry;
pub mod side;
pub mod signals;
pub mod tls;
pub mod usersync;

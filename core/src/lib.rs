//! ferry-core: the sans-IO heart of ferry.
//!
//! Every machine here is driven by events and a [`Timestamp`]; none of them
//! touches a socket, a thread, a clock or an OS random source. The shell (and
//! the simulator) feed inputs with `handle` and drain outputs with
//! `poll_output`, so any run can be replayed bit for bit.

#![warn(missing_docs)]

// The layers, bottom up: the wire protocol, one session's machines, the cluster.
pub mod cluster;
pub mod protocol;
pub mod session;

pub mod config;
pub mod errors;
pub mod labels;
pub mod limits;
pub mod query;

// The modules by their own names, as the rest of ferry knows them.
pub use cluster::{health, users, usersync};
pub use protocol::{auth, compress, packets, proxy_header, wire};
pub use session::{
    client_trackers, forward, injected, kill, login, migrate, restore, state, tracker,
};

#[cfg(feature = "sabotage")]
#[doc(hidden)]
pub mod sabotage;

mod rng;
mod time;

pub use rng::Rng;
pub use time::Timestamp;

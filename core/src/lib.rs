//! ferry-core: the sans-IO heart of ferry.
//!
//! Every machine here is driven by events and a [`Timestamp`]; none of them
//! touches a socket, a thread, a clock or an OS random source. The shell (and
//! the simulator) feed inputs with `handle` and drain outputs with
//! `poll_output`, so any run can be replayed bit for bit.

#![warn(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod errors;
pub mod forward;
pub mod health;
pub mod injected;
pub mod kill;
pub mod labels;
pub mod login;
pub mod migrate;
pub mod packets;
pub mod query;
pub mod restore;
#[cfg(feature = "sabotage")]
#[doc(hidden)]
pub mod sabotage;
pub mod session;
pub mod state;
pub mod tracker;
pub mod tracking;
pub mod users;
pub mod usersync;
pub mod wire;

mod rng;
mod time;

pub use rng::Rng;
pub use time::Timestamp;

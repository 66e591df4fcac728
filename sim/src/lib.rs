//! ferry-sim: ferry under turmoil. Simulated MariaDB-like backends over one
//! shared store, scripted clients, timed faults, invariants checked on every
//! run, and a deterministic trace.

#![warn(missing_docs)]

pub mod backend;
pub mod client;
pub mod clock;
pub mod proxy_host;
pub mod replay;
pub mod runner;
pub mod scenario;
pub mod sql;
pub mod store;
pub mod trace;

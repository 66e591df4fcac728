//! Deliberate faults, for showing that the simulator's scenarios can fail.
//!
//! Compiled only with the `sabotage` feature, which only the simulator's
//! tests enable. A process-global switch: every session and cluster in the
//! process sees it (the simulator runs ferry in the test's own thread).
//! Tests that flip it must not run concurrently with tests that expect a
//! working ferry in the same process.

use std::sync::atomic::{AtomicU8, Ordering};

/// One deliberate fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// A session starts a move although a transaction is open (the safe-point
    /// check ignores the open transaction).
    MoveInTransaction = 1,
    /// The restore plan of a move leaves out the user variables.
    ForgetUserVariables = 2,
    /// `Cluster::transfer` counts the session on its target without releasing
    /// it from its source.
    MiscountTransfer = 4,
}

static FAULTS: AtomicU8 = AtomicU8::new(0);

/// Turns `fault` on (others stay as they are).
pub fn set(fault: Fault) {
    FAULTS.fetch_or(fault as u8, Ordering::SeqCst);
}

/// Turns every fault off.
pub fn clear() {
    FAULTS.store(0, Ordering::SeqCst);
}

/// Whether `fault` is on.
pub fn is(fault: Fault) -> bool {
    FAULTS.load(Ordering::SeqCst) & fault as u8 != 0
}

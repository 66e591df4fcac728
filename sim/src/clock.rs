//! ferry's [`Clock`] over the simulation's time: inside turmoil, tokio's
//! clock is simulated, so timers fire in simulated milliseconds.

use std::pin::Pin;
use std::time::Duration;

use ferry_core::Timestamp;
use ferry_shell::clock::Clock;

/// Microseconds since the host started, on the host's (simulated) tokio clock.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    epoch: tokio::time::Instant,
}

impl SimClock {
    /// A clock whose epoch is now (call inside the host).
    pub fn new() -> Self {
        SimClock {
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    type Sleep = Pin<Box<tokio::time::Sleep>>;

    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    fn sleep_until(&self, deadline: Timestamp) -> Self::Sleep {
        Box::pin(tokio::time::sleep_until(
            self.epoch + Duration::from_micros(deadline.as_micros()),
        ))
    }
}

//! Time for the pump: core takes time as a value; the shell reads it here.

use std::future::Future;
use std::time::{Duration, Instant};

use ferry_core::Timestamp;

/// A source of [`Timestamp`]s and timers.
pub trait Clock: Clone + Send + Sync + 'static {
    /// A future that completes at a deadline.
    type Sleep: Future<Output = ()> + Send + Unpin;
    /// The current time.
    fn now(&self) -> Timestamp;
    /// A future that completes at `deadline`.
    fn sleep_until(&self, deadline: Timestamp) -> Self::Sleep;
}

/// The real clock: microseconds since the proxy started.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    epoch: Instant,
}

impl SystemClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        SystemClock {
            epoch: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    type Sleep = SleepUntil;

    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    fn sleep_until(&self, deadline: Timestamp) -> SleepUntil {
        let at = self.epoch + Duration::from_micros(deadline.as_micros());
        SleepUntil(async_io::Timer::at(at))
    }
}

/// A timer firing at a deadline of the [`SystemClock`].
#[derive(Debug)]
pub struct SleepUntil(async_io::Timer);

impl Future for SleepUntil {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

//! Backend health: how often to check, and the counting that turns single
//! check results into an `up`/`down` verdict without flapping.
//!
//! The shell does the I/O (connect, read the handshake, within a timeout) and
//! feeds each result to [`crate::cluster::Cluster::record_check`], which keeps
//! one [`HealthCounter`] per backend.
//!
//! [`HealthConfig`] (the `health: (...)` section) lives in [`crate::config`]
//! with the rest of the file's types and is re-exported here.

use crate::cluster::Health;
pub use crate::config::HealthConfig;

impl HealthConfig {
    /// The counting policy (counts of 0 are read as 1).
    pub fn policy(&self) -> HealthPolicy {
        HealthPolicy {
            fall: self.fall.max(1),
            rise: self.rise.max(1),
        }
    }
}

/// How many consecutive results change a backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that take an `up` backend `down`.
    pub fall: u32,
    /// Consecutive successes that bring a `down` backend `up`.
    pub rise: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthConfig::default().policy()
    }
}

/// Consecutive check results of one backend, and the verdict they add up to.
///
/// A backend starts `up` (a new backend takes sessions until checks say
/// otherwise). A result that agrees with the current health resets the
/// opposite streak, so a single odd result never changes anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthCounter {
    health: Health,
    failures: u32,
    successes: u32,
}

impl HealthCounter {
    /// The current verdict.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Failed checks in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records one check result; returns the new health if it changed.
    pub fn record(&mut self, ok: bool, policy: HealthPolicy) -> Option<Health> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.health == Health::Down && self.successes >= policy.rise.max(1) {
                self.health = Health::Up;
                return Some(Health::Up);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.health == Health::Up && self.failures >= policy.fall.max(1) {
                self.health = Health::Down;
                return Some(Health::Down);
            }
        }
        None
    }

    /// Takes it `down` at once (a connection to it failed outright, say);
    /// `rise` good checks in a row bring it back. Returns `Down` if it changed.
    pub fn force_down(&mut self) -> Option<Health> {
        self.successes = 0;
        if self.health == Health::Down {
            return None;
        }
        self.health = Health::Down;
        self.failures = 0;
        Some(Health::Down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: HealthPolicy = HealthPolicy { fall: 3, rise: 2 };

    fn run(results: &[bool]) -> (Vec<Option<Health>>, Health) {
        let mut c = HealthCounter::default();
        let changes = results.iter().map(|&ok| c.record(ok, P)).collect();
        (changes, c.health())
    }

    #[test]
    fn three_failures_take_it_down_once() {
        let (changes, health) = run(&[false, false, false, false, false]);
        assert_eq!(
            changes,
            vec![None, None, Some(Health::Down), None, None],
            "the transition is reported exactly once"
        );
        assert_eq!(health, Health::Down);
    }

    #[test]
    fn two_successes_bring_it_back() {
        let (changes, health) = run(&[false, false, false, true, true, true]);
        assert_eq!(changes[3..], [None, Some(Health::Up), None]);
        assert_eq!(health, Health::Up);
    }

    #[test]
    fn flapping_never_changes_health() {
        // fail, fail, ok, fail, fail, ok ...: never 3 failures in a row.
        let pattern: Vec<bool> = (0..30).map(|i| i % 3 == 2).collect();
        let (changes, health) = run(&pattern);
        assert!(changes.iter().all(Option::is_none), "{changes:?}");
        assert_eq!(health, Health::Up);
        // Down, then ok/fail alternating: never 2 successes in a row.
        let mut c = HealthCounter::default();
        for _ in 0..3 {
            c.record(false, P);
        }
        for i in 0..20 {
            assert_eq!(c.record(i % 2 == 0, P), None);
        }
        assert_eq!(c.health(), Health::Down);
    }

    #[test]
    fn forced_down_needs_rise_good_checks_to_come_back() {
        let mut c = HealthCounter::default();
        c.record(true, P);
        assert_eq!(c.force_down(), Some(Health::Down));
        assert_eq!(c.force_down(), None, "reported once");
        assert_eq!(c.record(true, P), None);
        c.force_down(); // a new failure restarts the count of good checks
        assert_eq!(c.record(true, P), None);
        assert_eq!(c.record(true, P), Some(Health::Up));
    }

    #[test]
    fn zero_counts_mean_one() {
        let policy = HealthConfig {
            fall: 0,
            rise: 0,
            ..HealthConfig::default()
        }
        .policy();
        let mut c = HealthCounter::default();
        assert_eq!(c.record(false, policy), Some(Health::Down));
        assert_eq!(c.record(true, policy), Some(Health::Up));
    }

    #[test]
    fn config_defaults_and_partial_ron() {
        let c: HealthConfig = ron::from_str("(interval_ms: 500)").unwrap();
        assert_eq!(
            c,
            HealthConfig {
                interval_ms: 500,
                ..HealthConfig::default()
            }
        );
        assert_eq!(HealthConfig::default().policy(), P);
        assert!(ron::from_str::<HealthConfig>("(intervl_ms: 500)").is_err());
    }
}

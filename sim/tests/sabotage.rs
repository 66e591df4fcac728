//! Each scenario must be able to fail: with ferry broken on purpose
//! (`ferry_core::sabotage`, a feature only this crate's tests enable), the
//! scenario that guards against the mistake fails with the violation it exists
//! to catch, on every seed tried; with the fault off it passes.
//!
//! The switch is process-global and cargo runs a test binary's tests on
//! parallel threads, so every case runs in turn inside the one test below.
//! (This file is its own test binary: no other test shares its process. The
//! simulator runs ferry on the test's own thread; an atomic would be seen by
//! any other thread too.)

use std::path::PathBuf;

use ferry_core::sabotage::{self, Fault};
use ferry_sim::runner;
use ferry_sim::scenario::Scenario;

const SEEDS: std::ops::RangeInclusive<u64> = 1..=3;

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(format!("{name}.ron"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    Scenario::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Turns every fault off when dropped, so a failed assertion leaves nothing on.
struct Clear;

impl Drop for Clear {
    fn drop(&mut self) {
        sabotage::clear();
    }
}

/// A fault, a scenario it must break, and what the violation says.
struct Case {
    fault: Fault,
    scenario: &'static str,
    /// What a violation the fault causes looks like.
    expected: &'static str,
    matches: fn(&str) -> bool,
}

const CASES: &[Case] = &[
    // Writes made before the move are rolled back with the source connection;
    // the client still gets COMMIT's OK.
    Case {
        fault: Fault::MoveInTransaction,
        scenario: "drain_busy_txn",
        expected: "an acknowledged commit is not in the store",
        matches: |v| v.contains("an acknowledged commit is not in the store"),
    },
    // The moved session answers `@who` with NULL.
    Case {
        fault: Fault::ForgetUserVariables,
        scenario: "failover_idle",
        expected: "session state changed (@who lost)",
        matches: |v| v.contains("session state changed") && v.contains("@`who`"),
    },
    Case {
        fault: Fault::ForgetUserVariables,
        scenario: "rebalance_join",
        expected: "session state changed (@who lost)",
        matches: |v| v.contains("session state changed") && v.contains("@`who`"),
    },
    // The source keeps counting a session that left it.
    Case {
        fault: Fault::MiscountTransfer,
        scenario: "rebalance_join",
        expected: "ferry's count differs from the backend's connections",
        matches: |v| v.contains("ferry counts") && v.contains("connections"),
    },
    Case {
        fault: Fault::MiscountTransfer,
        scenario: "drain",
        expected: "ferry's count differs from the backend's connections",
        matches: |v| v.contains("ferry counts") && v.contains("connections"),
    },
];

#[test]
fn each_fault_fails_the_scenario_that_guards_against_it() {
    let _clear = Clear;
    let mut problems = Vec::new();
    for case in CASES {
        let s = scenario(case.scenario);
        for seed in SEEDS {
            sabotage::clear();
            let clean = runner::run(&s, seed);
            if !clean.passed() {
                problems.push(format!(
                    "{} seed {seed} fails without sabotage:\n  {}",
                    case.scenario,
                    clean.violations.join("\n  ")
                ));
            }

            sabotage::set(case.fault);
            let broken = runner::run(&s, seed);
            sabotage::clear();
            if !broken.violations.iter().any(|v| (case.matches)(v)) {
                problems.push(format!(
                    "{} seed {seed} with {:?}: expected a violation like \"{}\", got {:?}",
                    case.scenario, case.fault, case.expected, broken.violations
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

//! Every scenario in `scenarios/` over a few seeds; determinism; the trace
//! of every scenario for seed 1 as an insta snapshot.

use std::path::PathBuf;

use ferry_sim::runner;
use ferry_sim::scenario::Scenario;

/// Seeds every scenario runs with here (`ferry-sim run scenarios/ --seeds 1..50` runs more).
const SEEDS: std::ops::RangeInclusive<u64> = 1..=3;

fn scenarios() -> Vec<(String, Scenario)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ron"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir.display());
    files
        .into_iter()
        .map(|f| {
            let name = f.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&f).unwrap();
            let s = Scenario::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, s)
        })
        .collect()
}

#[test]
fn every_scenario_passes_over_a_few_seeds() {
    let mut failures = Vec::new();
    for (name, scenario) in scenarios() {
        let mut known_failed = false;
        for seed in SEEDS {
            let result = runner::run(&scenario, seed);
            if seed == 1 {
                insta::assert_snapshot!(name.clone(), result.trace.text());
            }
            if scenario.known_issue.is_some() {
                known_failed |= !result.passed();
                continue;
            }
            if !result.passed() {
                failures.push(format!(
                    "{name} seed {seed}:\n  {}\n  rerun: cargo run -p ferry-sim -- run scenarios/{name}.ron --seed {seed} --trace {name}-{seed}.trace",
                    result.violations.join("\n  ")
                ));
            }
        }
        if let Some(issue) = &scenario.known_issue {
            if !known_failed {
                failures.push(format!(
                    "{name} passed every seed: is the known issue fixed? ({issue}) Remove known_issue."
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn same_scenario_and_seed_give_the_same_trace() {
    for (name, scenario) in scenarios() {
        let a = runner::run(&scenario, 7).trace.text();
        let b = runner::run(&scenario, 7).trace.text();
        assert!(a == b, "{name}: two runs with seed 7 differ");
    }
}

//! ferry-sim: replays `scenarios/*.ron` against ferry under turmoil.
//!
//! ```text
//! ferry-sim run scenarios/NAME.ron [--seed N] [--trace FILE]
//! ferry-sim run scenarios/ [--seeds 1..50]
//! ferry-sim replay scenarios/recorded/FILE.ferryrec [--seed N] [--faults latency=A..B]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use ferry_sim::replay;
use ferry_sim::runner::{self, RunResult};
use ferry_sim::scenario::Scenario;

const USAGE: &str = "usage: ferry-sim run PATH [--seed N | --seeds A..B] [--trace FILE]
       ferry-sim replay FILE [--seed N] [--faults latency=A..B]
  FILE     a session recorded with `ferry --record DIR` (scenarios/recorded/README.md)
  --faults latency=A..B: every simulated link delays each message A to B ms
  PATH     a scenario file (.ron) or a directory of them
  --seed   one seed (default 1)
  --seeds  seeds A to B, both included
  --trace  write the trace of the run to FILE (one scenario, one seed)";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("replay") {
        return match replay_main() {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("ferry-sim: {e}\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ferry-sim: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    path: PathBuf,
    seeds: Vec<u64>,
    trace: Option<PathBuf>,
}

/// `ferry-sim replay FILE [--seed N] [--faults ...]`.
fn replay_main() -> Result<bool, String> {
    let mut args = std::env::args().skip(2);
    let file = PathBuf::from(args.next().ok_or("missing FILE")?);
    let mut seed = 1;
    let mut faults = replay::Faults::default();
    while let Some(a) = args.next() {
        let value = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--seed" => seed = value.parse().map_err(|_| format!("bad seed {value}"))?,
            "--faults" => faults = replay::Faults::parse(&value)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    match replay::replay_file(&file, seed, &faults) {
        Ok(()) => {
            println!(
                "{} seed {seed}: replayed, every response matched",
                file.display()
            );
            Ok(true)
        }
        Err(diff) => {
            println!("{} seed {seed}: MISMATCH", file.display());
            for line in diff.lines() {
                println!("  {line}");
            }
            Ok(false)
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("run") {
        return Err("the commands are 'run' and 'replay'".into());
    }
    let path = PathBuf::from(args.next().ok_or("missing PATH")?);
    let mut seeds = vec![1];
    let mut trace = None;
    while let Some(a) = args.next() {
        let value = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--seed" => seeds = vec![value.parse().map_err(|_| format!("bad seed {value}"))?],
            "--seeds" => {
                let (a, b) = value
                    .split_once("..")
                    .ok_or_else(|| format!("bad range {value}: expected A..B"))?;
                let a: u64 = a.parse().map_err(|_| format!("bad range {value}"))?;
                let b: u64 = b
                    .trim_start_matches('=')
                    .parse()
                    .map_err(|_| format!("bad range {value}"))?;
                seeds = (a..=b).collect();
            }
            "--trace" => trace = Some(PathBuf::from(value)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Args { path, seeds, trace })
}

fn scenario_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ron"))
            .collect();
        files.sort();
        Ok(files)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

fn rerun(file: &Path, seed: u64) -> String {
    let stem = file
        .file_stem()
        .map_or("run".into(), |s| s.to_string_lossy().into_owned());
    format!(
        "ferry-sim run {} --seed {seed} --trace {stem}-{seed}.trace",
        file.display()
    )
}

fn real_main() -> Result<bool, String> {
    let args = parse_args()?;
    let files = scenario_files(&args.path)?;
    let mut scenarios = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let s = Scenario::parse(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        scenarios.push((f.clone(), s));
    }
    if scenarios.len() == 1 && args.seeds.len() == 1 {
        let (file, scenario) = &scenarios[0];
        let result = runner::run(scenario, args.seeds[0]);
        if let Some(t) = &args.trace {
            std::fs::write(t, result.trace.text()).map_err(|e| format!("{}: {e}", t.display()))?;
        }
        report_one(file, &result, args.trace.is_none());
        return Ok(result.passed());
    }
    if args.trace.is_some() {
        return Err("--trace needs one scenario and one seed".into());
    }
    let jobs: Vec<(usize, u64)> = (0..scenarios.len())
        .flat_map(|i| args.seeds.iter().map(move |&s| (i, s)))
        .collect();
    let results = run_parallel(&scenarios, jobs);
    println!("{:<40} {:>8}  failing seeds", "scenario", "passed");
    let mut all_ok = true;
    for (i, (file, _)) in scenarios.iter().enumerate() {
        let mine: Vec<&RunResult> = results
            .iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, r)| r)
            .collect();
        let failing: Vec<u64> = mine
            .iter()
            .filter(|r| !r.passed())
            .map(|r| r.seed)
            .collect();
        let name = file
            .file_stem()
            .map_or(String::new(), |s| s.to_string_lossy().into_owned());
        let mut shown: Vec<String> = failing.iter().take(10).map(|s| s.to_string()).collect();
        if failing.len() > 10 {
            shown.push("…".into());
        }
        let known = scenarios[i]
            .1
            .known_issue
            .as_ref()
            .map_or(String::new(), |k| format!("  (known issue: {k})"));
        println!(
            "{:<40} {:>4}/{:<3}  {}{known}",
            name,
            mine.len() - failing.len(),
            mine.len(),
            shown.join(" ")
        );
        all_ok &= failing.is_empty() || !known.is_empty();
    }
    for (i, r) in &results {
        if !r.passed() && scenarios[*i].1.known_issue.is_none() {
            let file = &scenarios[*i].0;
            println!("\n{} seed {}:", file.display(), r.seed);
            for v in r.violations.iter().take(5) {
                println!("  {v}");
            }
            println!("  rerun: {}", rerun(file, r.seed));
        }
    }
    Ok(all_ok)
}

fn report_one(file: &Path, result: &RunResult, print_trace: bool) {
    if print_trace && !result.passed() {
        print!("{}", result.trace.text());
    }
    if result.passed() {
        println!("{} seed {}: passed", file.display(), result.seed);
    } else {
        println!("{} seed {}: FAILED", file.display(), result.seed);
        for v in &result.violations {
            println!("  {v}");
        }
        println!("rerun: {}", rerun(file, result.seed));
    }
}

/// Runs jobs on one thread per core (each simulation is single-threaded and independent).
fn run_parallel(
    scenarios: &[(PathBuf, Scenario)],
    jobs: Vec<(usize, u64)>,
) -> Vec<(usize, RunResult)> {
    let queue = Arc::new(Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            let queue = queue.clone();
            let out = out.clone();
            s.spawn(move || loop {
                let job = queue.lock().expect("queue").pop();
                let Some((n, (i, seed))) = job else { break };
                let result = runner::run(&scenarios[i].1, seed);
                out.lock().expect("out").push((n, i, result));
            });
        }
    });
    let mut results = std::mem::take(&mut *out.lock().expect("out"));
    results.sort_by_key(|(n, _, _)| *n);
    results.into_iter().map(|(_, i, r)| (i, r)).collect()
}

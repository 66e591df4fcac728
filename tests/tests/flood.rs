//! A connection flood end to end: 2,000 clients that never log in (garbage,
//! half a handshake response, an oversized length header, silence) held open
//! together while a well-behaved client keeps querying. Its queries all
//! succeed and stay fast, ferry's memory stays bounded, the login timeout
//! drops every flood connection, and a fresh login works afterwards.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_tests::admin::Admin;
use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::Conn;
use ferry_tests::*;

/// Flood connections, a quarter of each kind.
const FLOOD: usize = 2_000;
/// Threads opening them.
const THREADS: usize = 4;
/// ferry's VmRSS may grow by at most this much during the flood.
const RSS_GROWTH_LIMIT: u64 = 200 << 20;

/// ferry's resident memory, from /proc/PID/status.
fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("ferry's status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb << 10
}

/// The bytes flood connection `i` sends (its kind is `i % 4`).
fn flood_bytes(i: usize) -> Vec<u8> {
    match i % 4 {
        // Random garbage.
        0 => pseudo_random_bytes(i as u64 + 1, 256),
        // Half a handshake response: a header announcing 200 bytes, 100 sent.
        1 => {
            let mut b = vec![200, 0, 0, 1];
            b.extend_from_slice(&[0x85, 0xa6, 0xff, 0x01, 0, 0, 0, 1, 0x21]);
            b.resize(4 + 100, 0);
            b
        }
        // The largest length a header can announce, and a little of it.
        2 => {
            let mut b = vec![0xff, 0xff, 0xff, 1];
            b.extend_from_slice(&[0x41; 64]);
            b
        }
        // Nothing at all.
        _ => Vec::new(),
    }
}

/// Opens flood connections `range` and sends each its bytes; keeps them all.
fn open_flood(addr: SocketAddr, range: std::ops::Range<usize>) -> Vec<TcpStream> {
    range
        .filter_map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
            let bytes = flood_bytes(i);
            if !bytes.is_empty() {
                // ferry may already have closed a garbage connection: that is fine.
                let _ = s.write_all(&bytes);
            }
            Some(s)
        })
        .collect()
}

/// The p99 of `latencies`.
fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

fn query(c: &mut Conn) -> Duration {
    let started = Instant::now();
    let one: Option<u32> = c
        .query_first("SELECT 1")
        .expect("SELECT 1 during the flood");
    assert_eq!(one, Some(1));
    started.elapsed()
}

fn wait_until(what: &str, within: Duration, ferry: &Ferry, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log tail:\n{}",
            tail(&ferry.log())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn a_flood_of_bad_connections_does_not_stall_a_good_client() {
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", backends()[0]))
        .field("login_timeout_ms: 3000")
        .start();
    let admin = Admin::of(&ferry);
    let mut good = ferry.connect("root", "111").unwrap();

    // Baseline: the good client alone.
    for _ in 0..20 {
        query(&mut good);
    }
    let mut baseline: Vec<Duration> = (0..200).map(|_| query(&mut good)).collect();
    let baseline_p99 = p99(&mut baseline);
    let bound = (baseline_p99 * 20).max(Duration::from_millis(50));
    let baseline_rss = vm_rss(ferry.pid());

    // The good client queries throughout the flood, from its own thread.
    let flooding = Arc::new(AtomicBool::new(true));
    let querier = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            while flooding.load(Ordering::Relaxed) {
                latencies.push(query(&mut good));
            }
            (good, latencies)
        })
    };

    let started = Instant::now();
    let per_thread = FLOOD / THREADS;
    let openers: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = ferry.addr;
            std::thread::spawn(move || open_flood(addr, t * per_thread..(t + 1) * per_thread))
        })
        .collect();
    let mut peak_rss = vm_rss(ferry.pid());
    let flood: Vec<TcpStream> = openers
        .into_iter()
        .flat_map(|h| {
            peak_rss = peak_rss.max(vm_rss(ferry.pid()));
            h.join().unwrap()
        })
        .collect();
    let opened_in = started.elapsed();
    assert!(
        flood.len() >= FLOOD * 9 / 10,
        "only {} of {FLOOD} flood connections opened",
        flood.len()
    );
    let open_now = admin.sessions().len();

    // With the flood sockets all still held, the login timeout drops every
    // one of them that ferry did not close already: only the good client stays.
    wait_until(
        "the flood sessions to end",
        Duration::from_secs(15),
        &ferry,
        || {
            peak_rss = peak_rss.max(vm_rss(ferry.pid()));
            admin.sessions().len() == 1
        },
    );
    flooding.store(false, Ordering::Relaxed);
    let (mut good, mut during) = querier
        .join()
        .expect("the good client's queries all succeed");
    drop(flood);

    let during_p99 = p99(&mut during);
    eprintln!(
        "flood: {} connections opened in {opened_in:?} ({open_now} sessions open after); \
         good client: baseline p99 {baseline_p99:?}, flood p99 {during_p99:?} over {} queries \
         (bound {bound:?}); VmRSS baseline {} KiB, peak {} KiB",
        FLOOD,
        during.len(),
        baseline_rss >> 10,
        peak_rss >> 10,
    );
    assert!(
        during.len() >= 50,
        "only {} queries ran during the flood",
        during.len()
    );
    assert!(
        during_p99 < bound,
        "the good client's p99 went from {baseline_p99:?} to {during_p99:?} (bound {bound:?})"
    );
    assert!(
        peak_rss < baseline_rss + RSS_GROWTH_LIMIT,
        "ferry's VmRSS grew from {} KiB to {} KiB during the flood",
        baseline_rss >> 10,
        peak_rss >> 10
    );

    // The good client still works, and so does a fresh login.
    query(&mut good);
    let mut fresh = ferry
        .connect("root", "111")
        .expect("a fresh login after the flood");
    query(&mut fresh);
    assert_eq!(admin.sessions().len(), 2);
}

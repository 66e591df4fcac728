//! Crashing and restarting the test servers: the plain MariaDB servers of
//! `scripts/mariadb` and the Galera cluster of `scripts/galera`.
//!
//! A test that kills a server takes [`exclusive`]; every other test of the
//! same binary that uses those servers takes [`shared`], so no test sees a
//! server die under it by accident. (Test binaries run one after another.)

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::{run_command, workspace_root, CmdOutput};

static SERVERS: RwLock<()> = RwLock::new(());

/// Held by tests that only use the servers.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    SERVERS.read().unwrap_or_else(|e| e.into_inner())
}

/// Held by a test that kills or restarts a server.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERVERS.write().unwrap_or_else(|e| e.into_inner())
}

/// `$FERRY_RUN_DIR`, else `<workspace>/.run` (as the scripts do).
pub fn run_dir() -> PathBuf {
    match std::env::var_os("FERRY_RUN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join(".run"),
    }
}

fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts").join(name)
}

/// Run one of the project's scripts, bounded in time.
pub fn run_script(name: &str, args: &[&str], timeout: Duration) -> CmdOutput {
    let mut cmd = Command::new(script(name));
    cmd.args(args).current_dir(workspace_root());
    run_command(&mut cmd, timeout)
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Wait until `addr` refuses connections.
pub fn wait_closed(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while accepts(addr) {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL the MariaDB server that `scripts/mariadb` started on `addr` (a
/// crash: no clean shutdown, clients' connections reset) and wait until its
/// port is closed.
pub fn kill_mariadb(addr: SocketAddr) {
    let pidfile = run_dir()
        .join("mariadb")
        .join(addr.port().to_string())
        .join("mysqld.pid");
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: the server on {addr} was not started by scripts/mariadb (run scripts/test)",
                pidfile.display()
            )
        })
        .trim()
        .to_string();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert!(
        matches!(comm.trim(), "mariadbd" | "mysqld"),
        "pid {pid} from {} is not a running mariadbd ({comm:?})",
        pidfile.display()
    );
    let status = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid} failed");
    wait_closed(addr, Duration::from_secs(20));
}

/// Start the server on `addr` again with `scripts/mariadb start 1 PORT`
/// (reusing its data directory) and wait until it takes root/111.
pub fn start_mariadb(addr: SocketAddr) {
    let port = addr.port().to_string();
    let out = run_script("mariadb", &["start", "1", &port], Duration::from_secs(180));
    out.assert_success(&format!("scripts/mariadb start 1 {port}"));
}

/// Restarts a killed MariaDB server when dropped (also when the test panics).
pub struct RestartOnDrop(pub SocketAddr);

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if !accepts(self.0) {
            start_mariadb(self.0);
        }
    }
}

// ------------------------------------------------------------------ Galera

/// The Galera nodes' SQL addresses, from `FERRY_TEST_GALERA` (exported by
/// `scripts/test` after `scripts/galera start`). Panics when unset: a missing
/// cluster is a failure, never a skip.
pub fn galera_nodes() -> Vec<SocketAddr> {
    let raw = std::env::var("FERRY_TEST_GALERA").unwrap_or_default();
    assert!(
        !raw.trim().is_empty(),
        "FERRY_TEST_GALERA is not set: the Galera tests need the cluster of scripts/galera. \
         Run scripts/test (it starts it and exports FERRY_TEST_GALERA), or \
         `scripts/galera start` and FERRY_TEST_GALERA=$(scripts/galera addr)."
    );
    let nodes: Vec<SocketAddr> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("FERRY_TEST_GALERA: bad address '{s}': {e}"))
        })
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "FERRY_TEST_GALERA must name three nodes: {raw}"
    );
    nodes
}

/// `scripts/galera ARGS...` (kill N, restart N, status, addr).
pub fn galera(args: &[&str]) -> CmdOutput {
    let out = run_script("galera", args, Duration::from_secs(300));
    out.assert_success(&format!("scripts/galera {}", args.join(" ")));
    out
}

/// Panics unless `scripts/galera addr` (with this environment) names the
/// same nodes as `FERRY_TEST_GALERA`: killing node N must hit the node the
/// test thinks it hits.
pub fn assert_galera_script_matches(nodes: &[SocketAddr]) {
    let out = galera(&["addr"]);
    let listed: Vec<SocketAddr> = out
        .stdout
        .trim()
        .split(',')
        .map(|s| s.parse().expect("scripts/galera addr prints addresses"))
        .collect();
    assert_eq!(
        listed, nodes,
        "scripts/galera addr and FERRY_TEST_GALERA disagree: set FERRY_GALERA_BASE_PORT to match"
    );
}

/// Restarts Galera node `n` (1-based) when dropped if its SQL port is closed.
pub struct GaleraRestartOnDrop {
    pub node: usize,
    pub addr: SocketAddr,
}

impl Drop for GaleraRestartOnDrop {
    fn drop(&mut self) {
        if !accepts(self.addr) {
            let n = self.node.to_string();
            let out = run_script("galera", &["restart", &n], Duration::from_secs(300));
            if !out.success() {
                eprintln!(
                    "scripts/galera restart {n} failed:\n{}\n{}",
                    out.stdout, out.stderr
                );
            }
        }
    }
}

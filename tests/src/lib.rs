//! Helpers for ferry's end-to-end tests.
//!
//! The tests run against real MariaDB servers started by `scripts/test`, which
//! exports:
//!
//! - `FERRY_TEST_BACKENDS`: comma-separated `127.0.0.1:PORT` list (at least three),
//!   each server with users `root`/`111`, `app`/`secret`, `sbtest`/`sbtest`
//!   (mysql_native_password) and databases `test`, `sbtest`;
//! - `FERRY_BIN`: the `ferry` binary (default `<workspace>/target/debug/ferry`);
//! - `FERRY_TEST_GALERA`: the three SQL addresses of the Galera cluster of
//!   `scripts/galera` (see [`servers::galera_nodes`]).
//!
//! Without `FERRY_TEST_BACKENDS` every test panics: a missing server must be a
//! failure, never a silent skip.

pub mod admin;
pub mod servers;
pub mod state;

use std::fmt::Write as _;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use mysql;
use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};

/// How long a ferry process may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for any client subprocess (CLI, Python).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// `SHA1(SHA1("secret"))` as in `mysql.user`: the hash of user `app`.
pub const SECRET_HASH: &str = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7";

/// The MariaDB servers to test against, from `FERRY_TEST_BACKENDS`.
///
/// Panics (with instructions) when the variable is unset or empty.
pub fn backends() -> Vec<SocketAddr> {
    parse_backends(&std::env::var("FERRY_TEST_BACKENDS").unwrap_or_default())
}

fn parse_backends(raw: &str) -> Vec<SocketAddr> {
    if raw.trim().is_empty() {
        panic!(
            "FERRY_TEST_BACKENDS is not set: the end-to-end tests need real MariaDB servers. \
             Run scripts/test (it starts three servers and exports FERRY_TEST_BACKENDS and FERRY_BIN)."
        );
    }
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("FERRY_TEST_BACKENDS: bad address '{s}': {e}"))
        })
        .collect()
}

/// The first `n` backends; panics when fewer are configured.
pub fn backends_n(n: usize) -> Vec<SocketAddr> {
    let all = backends();
    assert!(
        all.len() >= n,
        "this test needs {n} MariaDB servers in FERRY_TEST_BACKENDS, got {} (run scripts/test)",
        all.len()
    );
    all[..n].to_vec()
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate has a parent directory")
        .to_path_buf()
}

/// The ferry binary: `$FERRY_BIN`, else `<workspace>/target/debug/ferry`.
pub fn ferry_bin() -> PathBuf {
    let path = match std::env::var_os("FERRY_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("debug").join("ferry")
        }
    };
    assert!(
        path.is_file(),
        "ferry binary {} not found: build it (cargo build -p ferry-shell) or set FERRY_BIN",
        path.display()
    );
    path
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A fresh, empty directory for one test's files (configs, logs).
pub fn scratch_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join("ferry-tests").join(format!(
        "{name}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Wait until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// One backend entry of a generated config.
#[derive(Clone, Debug)]
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub labels: Vec<(String, String)>,
    pub draining: bool,
    /// `proxy_protocol: true`: ferry sends it a PROXY v2 header first.
    pub proxy_protocol: bool,
}

impl Backend {
    pub fn new(id: &str, addr: SocketAddr) -> Self {
        Backend {
            id: id.into(),
            addr,
            labels: Vec::new(),
            draining: false,
            proxy_protocol: false,
        }
    }

    /// Sends a PROXY v2 header first on every connection to it.
    pub fn proxy_protocol(mut self) -> Self {
        self.proxy_protocol = true;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    pub fn draining(mut self) -> Self {
        self.draining = true;
        self
    }
}

/// A generated RON config on free loopback ports.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    pub port: u16,
    pub admin_port: u16,
    pub users: Vec<String>,
    pub backends: Vec<Backend>,
    pub extra: Vec<String>,
}

impl ConfigBuilder {
    /// Free ports, users `root`/`111` (no tenant, `any_tenant`), `acc1:app`/`secret` (by hash)
    /// and `sbtest`/`sbtest`, and no backends.
    pub fn new() -> Self {
        ConfigBuilder {
            port: free_port(),
            admin_port: free_port(),
            users: vec![
                // any_tenant: the tests that log in as `acc1:root` opt in to it;
                // tests/tests/isolation.rs checks the default (off).
                r#"(user: "root", password: "111", any_tenant: true)"#.into(),
                format!(r#"(tenant: "acc1", user: "app", password_hash: "{SECRET_HASH}")"#),
                r#"(user: "sbtest", password: "sbtest")"#.into(),
            ],
            backends: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn backend(mut self, b: Backend) -> Self {
        self.backends.push(b);
        self
    }

    /// An extra top-level field, e.g. `login_timeout_ms: 1000`.
    pub fn field(mut self, field: &str) -> Self {
        self.extra.push(field.into());
        self
    }

    pub fn to_ron(&self) -> String {
        let mut s = String::from("(\n");
        let _ = writeln!(s, "    listen: \"127.0.0.1:{}\",", self.port);
        let _ = writeln!(s, "    admin_listen: \"127.0.0.1:{}\",", self.admin_port);
        s.push_str("    users: [\n");
        for u in &self.users {
            let _ = writeln!(s, "        {u},");
        }
        s.push_str("    ],\n    backends: [\n");
        for b in &self.backends {
            let _ = write!(s, "        (id: \"{}\", addr: \"{}\"", b.id, b.addr);
            if !b.labels.is_empty() {
                let labels: Vec<String> = b
                    .labels
                    .iter()
                    .map(|(k, v)| format!("\"{k}\": \"{v}\""))
                    .collect();
                let _ = write!(s, ", labels: {{{}}}", labels.join(", "));
            }
            if b.draining {
                s.push_str(", state: Draining");
            }
            if b.proxy_protocol {
                s.push_str(", proxy_protocol: true");
            }
            s.push_str("),\n");
        }
        s.push_str("    ],\n");
        for f in &self.extra {
            let _ = writeln!(s, "    {f},");
        }
        s.push_str(")\n");
        s
    }

    /// Starts ferry; if one of the free ports was taken in the meantime (by
    /// another test's connection), tries again on fresh ports.
    pub fn start(&self) -> Ferry {
        let mut config = self.clone();
        for _ in 0..3 {
            match Ferry::try_start(&config.to_ron()) {
                Ok(ferry) => return ferry,
                Err(log) if log.contains("binding") => {
                    config.port = free_port();
                    config.admin_port = free_port();
                }
                Err(log) => panic!("ferry did not start; log:\n{log}"),
            }
        }
        Ferry::start(&config.to_ron())
    }
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `ferry` process; killed on drop.
pub struct Ferry {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

fn listen_addr_of(config: &str) -> SocketAddr {
    // The `listen:` field, not `admin_listen:`.
    let start = config
        .match_indices("listen:")
        .map(|(i, _)| i)
        .find(|&i| {
            !matches!(config[..i].chars().next_back(), Some(c) if c.is_alphanumeric() || c == '_')
        })
        .unwrap_or_else(|| panic!("config has no `listen:` field:\n{config}"));
    let rest = &config[start + "listen:".len()..];
    let quoted = rest
        .trim_start()
        .strip_prefix('"')
        .expect("listen: \"...\"");
    let addr = &quoted[..quoted.find('"').expect("closing quote")];
    addr.parse()
        .unwrap_or_else(|e| panic!("listen address '{addr}': {e}"))
}

impl Ferry {
    /// Write `config_ron` to a scratch file, run `ferry --config FILE
    /// --log-level debug` with stderr in a log file, and wait (at most
    /// [`START_TIMEOUT`]) until its listen address accepts TCP.
    pub fn start(config_ron: &str) -> Ferry {
        Ferry::try_start(config_ron).unwrap_or_else(|log| {
            panic!("ferry exited before listening; log:\n{log}\nconfig:\n{config_ron}")
        })
    }

    /// Like [`Ferry::start`], but an early exit is an error carrying ferry's log.
    pub fn try_start(config_ron: &str) -> Result<Ferry, String> {
        let addr = listen_addr_of(config_ron);
        let dir = scratch_dir("ferry");
        let config_path = dir.join("ferry.ron");
        let log_path = dir.join("ferry.log");
        std::fs::write(&config_path, config_ron).expect("write config");
        let log = std::fs::File::create(&log_path).expect("create log");
        let child = Command::new(ferry_bin())
            .arg("--config")
            .arg(&config_path)
            .arg("--log-level")
            .arg(std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "debug".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", ferry_bin().display()));
        let mut ferry = Ferry {
            child,
            addr,
            dir,
            config_path,
            log_path,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = ferry.child.try_wait().expect("try_wait") {
                return Err(format!("(exited with {status})\n{}", ferry.log()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(ferry);
            }
            if Instant::now() > deadline {
                panic!(
                    "ferry did not listen on {addr} within {START_TIMEOUT:?}; log:\n{}",
                    ferry.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything ferry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends ferry a signal (`HUP`, `TERM`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Connection options for this ferry (see [`opts`]).
    pub fn opts(&self, user: &str, pass: &str) -> OptsBuilder {
        opts(self.port(), user, pass)
    }

    /// Log in through this ferry with the `mysql` crate.
    pub fn connect(&self, user: &str, pass: &str) -> mysql::Result<Conn> {
        Conn::new(self.opts(user, pass))
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "---- ferry log tail ({}) ----\n{}\n---- end of ferry log ----",
                self.log_path.display(),
                tail.join("\n")
            );
        } else {
            // Keep the config and log of failed tests only.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Run `ferry --config FILE` on a config that must be rejected; returns the
/// config path and the process output. Fails if ferry is still running after
/// 10 s.
pub fn ferry_rejects(config_ron: &str) -> (PathBuf, CmdOutput) {
    let dir = scratch_dir("ferry-bad");
    let config_path = dir.join("bad.ron");
    std::fs::write(&config_path, config_ron).expect("write config");
    let mut cmd = Command::new(ferry_bin());
    cmd.arg("--config").arg(&config_path);
    let out = run_command(&mut cmd, Duration::from_secs(10));
    (config_path, out)
}

/// `mysql` crate options: TCP to 127.0.0.1:`port` (never a socket), no TLS,
/// bounded connect and read times.
pub fn opts(port: u16, user: &str, pass: &str) -> OptsBuilder {
    OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .tcp_port(port)
        .prefer_socket(false)
        .user(Some(user))
        .pass(Some(pass))
        .tcp_connect_timeout(Some(Duration::from_secs(5)))
        .read_timeout(Some(Duration::from_secs(30)))
        .write_timeout(Some(Duration::from_secs(30)))
}

/// Log in to 127.0.0.1:`port` with the `mysql` crate.
pub fn connect(port: u16, user: &str, pass: &str) -> mysql::Result<Conn> {
    Conn::new(opts(port, user, pass))
}

/// Log in directly to a backend as root/111.
pub fn connect_backend(addr: SocketAddr) -> Conn {
    connect(addr.port(), "root", "111").unwrap_or_else(|e| {
        panic!("log in to MariaDB at {addr} as root/111: {e} (run scripts/test)")
    })
}

/// `SELECT @@port`: which backend the session is on.
pub fn backend_port(conn: &mut Conn) -> u16 {
    conn.query_first::<u16, _>("SELECT @@port")
        .expect("SELECT @@port")
        .expect("a row")
}

/// A server error: code, SQLSTATE and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub code: u16,
    pub state: String,
    pub message: String,
}

/// The server error inside a `mysql` crate error; panics on any other kind
/// of error (I/O, driver) so tests see what really happened.
pub fn server_error<T: std::fmt::Debug>(result: mysql::Result<T>) -> ServerError {
    match result {
        Err(mysql::Error::MySqlError(e)) => ServerError {
            code: e.code,
            state: e.state,
            message: e.message,
        },
        Err(other) => panic!("expected a MySQL ERR packet, got another error: {other:?}"),
        Ok(v) => panic!("expected a MySQL ERR packet, got success: {v:?}"),
    }
}

/// Output of a client subprocess.
#[derive(Clone, Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panic with both streams unless the command succeeded.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.success(),
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Run a command with stdin closed, capturing stdout and stderr; kills it and
/// panics if it runs longer than `timeout`.
pub fn run_command(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!("{cmd:?} did not finish within {timeout:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CmdOutput {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// The MariaDB/MySQL command-line client and the flag that keeps it from
/// requesting TLS (ferry refuses TLS): `--skip-ssl` for MariaDB's client,
/// `--ssl-mode=DISABLED` for MySQL's.
pub fn mysql_cli() -> &'static (String, String) {
    static CLI: OnceLock<(String, String)> = OnceLock::new();
    CLI.get_or_init(|| {
        let bin = ["mariadb", "mysql"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("neither `mariadb` nor `mysql` client found (run scripts/install-deps)");
        let help = Command::new(bin)
            .args(["--no-defaults", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let flag = if help.contains("--ssl-mode") && !help.contains("--skip-ssl") {
            "--ssl-mode=DISABLED"
        } else {
            "--skip-ssl"
        };
        (bin.to_string(), flag.to_string())
    })
}

/// `mariadb --no-defaults -h127.0.0.1 -P PORT -u USER -pPASS --skip-ssl
/// --batch -e SQL`, plus `extra` arguments.
pub fn cli(port: u16, user: &str, pass: &str, sql: &str, extra: &[&str]) -> CmdOutput {
    let (bin, no_tls) = mysql_cli();
    let mut cmd = Command::new(bin);
    cmd.arg("--no-defaults")
        .arg("-h127.0.0.1")
        .arg(format!("-P{port}"))
        .arg(format!("-u{user}"))
        .arg(format!("-p{pass}"))
        .arg(no_tls)
        .arg("--connect-timeout=10")
        .arg("--batch")
        .args(extra)
        .arg("-e")
        .arg(sql);
    run_command(&mut cmd, COMMAND_TIMEOUT)
}

/// Run a Python 3 snippet (`python3 -c CODE`) with extra environment; the
/// snippet can `import pymysql`. Use [`pymysql`] for the usual preamble.
pub fn python(code: &str, env: &[(&str, String)]) -> CmdOutput {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(code);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(&mut cmd, COMMAND_TIMEOUT)
}

/// Run `body` in Python with `conn` logged in through PyMySQL to
/// 127.0.0.1:`port` (no TLS), `cur = conn.cursor()`, and the helper `q(sql)`
/// returning all rows. On a login error the snippet prints
/// `ERR <code> <message>` and exits with status 3.
pub fn pymysql(port: u16, user: &str, pass: &str, connect_extra: &str, body: &str) -> CmdOutput {
    let code = format!(
        r#"
import os, sys
import pymysql
try:
    conn = pymysql.connect(host="127.0.0.1", port=int(os.environ["FERRY_PORT"]),
                           user=os.environ["FERRY_USER"], password=os.environ["FERRY_PASS"],
                           connect_timeout=10, read_timeout=30, write_timeout=30{connect_extra})
except pymysql.err.MySQLError as e:
    print("ERR", e.args[0], e.args[1] if len(e.args) > 1 else "")
    sys.exit(3)
cur = conn.cursor()
def q(sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall()
{body}
"#
    );
    python(
        &code,
        &[
            ("FERRY_PORT", port.to_string()),
            ("FERRY_USER", user.to_string()),
            ("FERRY_PASS", pass.to_string()),
        ],
    )
}

/// Simple xorshift bytes for garbage (deterministic per seed; no rand crate).
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_has_listen_and_backends() {
        let cfg = ConfigBuilder::new()
            .backend(Backend::new("cn1", "127.0.0.1:3307".parse().unwrap()))
            .backend(
                Backend::new("cn2", "127.0.0.1:3308".parse().unwrap())
                    .label("account", "acc1")
                    .label("region", "eu-*")
                    .draining(),
            )
            .field("login_timeout_ms: 1000");
        let ron = cfg.to_ron();
        assert_eq!(listen_addr_of(&ron).port(), cfg.port);
        let swapped = "(admin_listen: \"127.0.0.1:2\", listen: \"127.0.0.1:1\")";
        assert_eq!(listen_addr_of(swapped).port(), 1);
        assert!(ron.contains(
            r#"(id: "cn2", addr: "127.0.0.1:3308", labels: {"account": "acc1", "region": "eu-*"}, state: Draining)"#
        ));
        assert!(ron.contains("    login_timeout_ms: 1000,\n"));
        assert!(ron.contains(SECRET_HASH));
    }

    #[test]
    #[should_panic(expected = "FERRY_TEST_BACKENDS is not set")]
    fn missing_backends_fail_loudly() {
        parse_backends("");
    }

    #[test]
    fn backends_list_parses() {
        assert_eq!(
            parse_backends("127.0.0.1:3307, 127.0.0.1:3308,"),
            vec![
                "127.0.0.1:3307".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:3308".parse().unwrap()
            ]
        );
    }

    #[test]
    fn free_ports_are_bindable() {
        let p = free_port();
        assert_ne!(p, 0);
        TcpListener::bind(("127.0.0.1", p)).expect("port still free");
    }

    #[test]
    fn pseudo_random_bytes_vary() {
        let b = pseudo_random_bytes(42, 64);
        assert_eq!(b.len(), 64);
        assert!(b.iter().collect::<std::collections::BTreeSet<_>>().len() > 16);
    }
}

//! Secrets never leave ferry: after logins, a wrong password, a move and a
//! COM_CHANGE_USER under `--log-level trace` and `--record`, neither the
//! passwords nor SHA1(password) nor SHA1(SHA1(password)) (raw or hex) nor the
//! `*HEX` hash appear in the log, the recordings, `/metrics` or the admin API.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::admin::Admin;
use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::ChangeUserOpts;
use ferry_tests::*;
use sha1::{Digest, Sha1};

/// Distinctive passwords, so that a match means a leak and nothing else.
const CLEAR: &str = "Clear-pw-7kQz9-ferry";
const HASHED: &str = "Hashed-pw-3xVb2-ferry";

fn sha1(data: &[u8]) -> Vec<u8> {
    Sha1::digest(data).to_vec()
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// Every form a secret of `password` could leak in, with a name for messages.
fn needles(password: &str) -> Vec<(String, Vec<u8>)> {
    let stage1 = sha1(password.as_bytes());
    let stage2 = sha1(&stage1);
    let mut out = vec![
        ("password".to_string(), password.as_bytes().to_vec()),
        (
            "password as hex".to_string(),
            hex(password.as_bytes(), false).into_bytes(),
        ),
        ("SHA1(pw)".to_string(), stage1.clone()),
        ("SHA1(SHA1(pw))".to_string(), stage2.clone()),
        (
            "*HEX".to_string(),
            format!("*{}", hex(&stage2, true)).into_bytes(),
        ),
    ];
    for upper in [false, true] {
        out.push((
            format!("SHA1(pw) hex upper={upper}"),
            hex(&stage1, upper).into_bytes(),
        ));
        out.push((
            format!("SHA1(SHA1(pw)) hex upper={upper}"),
            hex(&stage2, upper).into_bytes(),
        ));
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The leaks of `password` in `haystack`, by name.
fn leaks(haystack: &[u8], password: &str) -> Vec<String> {
    needles(password)
        .into_iter()
        .filter(|(_, n)| contains(haystack, n))
        .map(|(name, _)| name)
        .collect()
}

/// The recordings in `dir`, each as its text and its chunks' bytes decoded;
/// checks that every recorded COM_CHANGE_USER has its scramble zeroed.
fn recordings(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut change_users = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut bytes = Vec::new();
        for line in text.lines().skip_while(|l| *l != "---").skip(1) {
            let mut fields = line.split(' ');
            let dir = fields.nth(1).unwrap_or("");
            let hexed = fields.next().unwrap_or("");
            let chunk: Vec<u8> = (0..hexed.len() / 2)
                .map(|i| u8::from_str_radix(&hexed[i * 2..i * 2 + 2], 16).unwrap())
                .collect();
            if dir == "C" && chunk.len() > 5 && chunk[4] == 0x11 {
                // COM_CHANGE_USER: user NUL, then the length-prefixed scramble.
                change_users += 1;
                let at = 5 + chunk[5..].iter().position(|b| *b == 0).unwrap() + 1;
                let len = usize::from(chunk[at]);
                assert_eq!(len, 20, "{line}");
                assert!(
                    chunk[at + 1..at + 1 + len].iter().all(|b| *b == 0),
                    "a COM_CHANGE_USER scramble was recorded: {line}"
                );
            }
            bytes.extend_from_slice(&chunk);
        }
        out.push((text, bytes));
    }
    assert_eq!(change_users, 2, "both COM_CHANGE_USERs were recorded");
    out
}

struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &str, dir: &Path, record: &Path) -> Running {
    let config_path = dir.join("ferry.ron");
    let log = dir.join("ferry.log");
    std::fs::write(&config_path, config).unwrap();
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(ferry_bin())
        .arg("--config")
        .arg(&config_path)
        .args(["--log-level", "trace", "--record"])
        .arg(record)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Running { child, log }
}

fn create_users(addrs: &[SocketAddr]) {
    for addr in addrs {
        let mut direct = connect_backend(*addr);
        for (user, pw) in [("ferry_clear", CLEAR), ("ferry_hashed", HASHED)] {
            direct
                .query_drop(format!(
                    "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED VIA mysql_native_password \
                     USING PASSWORD('{pw}')"
                ))
                .unwrap();
            direct
                .query_drop(format!("GRANT SELECT ON test.* TO '{user}'@'%'"))
                .unwrap();
        }
    }
}

#[test]
fn no_secret_reaches_the_log_the_recordings_the_metrics_or_the_admin_api() {
    let b = backends_n(2);
    create_users(&b);
    let dir = scratch_dir("secrets");
    let record = dir.join("record");
    std::fs::create_dir_all(&record).unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let hashed = format!("*{}", hex(&sha1(&sha1(HASHED.as_bytes())), true));
    let config = format!(
        r#"(
    listen: "127.0.0.1:{port}",
    admin_listen: "127.0.0.1:{admin_port}",
    users: [
        (user: "ferry_clear", password: "{CLEAR}"),
        (user: "ferry_hashed", password_hash: "{hashed}"),
    ],
    backends: [(id: "cn1", addr: "{}"), (id: "cn2", addr: "{}")],
    rebalance: (interval_ms: 0),
)"#,
        b[0], b[1]
    );
    // The search works: it finds the secrets where they are meant to be.
    assert!(leaks(config.as_bytes(), CLEAR).contains(&"password".to_string()));
    assert!(leaks(config.as_bytes(), HASHED).contains(&"*HEX".to_string()));
    assert!(leaks(config.as_bytes(), HASHED).contains(&"SHA1(SHA1(pw)) hex upper=true".to_string()));

    let ferry = start(&config, &dir, &record);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, START_TIMEOUT), "ferry did not start");
    let admin = Admin::new(format!("127.0.0.1:{admin_port}").parse().unwrap());

    // Logins, one with a wrong password.
    let mut c = connect(port, "ferry_clear", CLEAR).expect("login with the clear password");
    let mut h = connect(port, "ferry_hashed", HASHED).expect("login with the hashed password");
    assert!(connect(port, "ferry_clear", HASHED).is_err());
    let one: Option<u32> = h.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1));
    // A move: ferry logs in to the other backend with the recovered credential.
    let id = u64::from(c.connection_id());
    let to = if backend_port(&mut c) == b[0].port() {
        "cn2"
    } else {
        "cn1"
    };
    admin.request_migration(id, Some(to));
    admin.wait_migrated(id, 1, Duration::from_secs(20));
    let user: Option<String> = c.query_first("SELECT CURRENT_USER()").unwrap();
    assert!(user.unwrap().starts_with("ferry_clear@"));
    // COM_CHANGE_USER to the other user, and back.
    c.change_user(
        ChangeUserOpts::default()
            .with_user(Some("ferry_hashed".into()))
            .with_pass(Some(HASHED.into())),
    )
    .expect("change user");
    c.change_user(
        ChangeUserOpts::default()
            .with_user(Some("ferry_clear".into()))
            .with_pass(Some(CLEAR.into())),
    )
    .expect("change user back");
    let user: Option<String> = c.query_first("SELECT CURRENT_USER()").unwrap();
    assert!(user.unwrap().starts_with("ferry_clear@"));

    let metrics = admin.metrics();
    let mut outputs: Vec<(String, Vec<u8>)> = vec![
        ("/metrics".into(), metrics.into_bytes()),
        (
            "/api/sessions".into(),
            admin.http("GET", "/api/sessions", None).1.into_bytes(),
        ),
        (
            "/api/backends".into(),
            admin.http("GET", "/api/backends", None).1.into_bytes(),
        ),
    ];
    drop(c);
    drop(h);
    // The recordings are complete once their sessions ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin.sessions().is_empty() {
        assert!(Instant::now() < deadline, "sessions did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    let recorded = recordings(&record);
    assert!(recorded.len() >= 2, "{} recordings", recorded.len());
    for (i, (text, bytes)) in recorded.into_iter().enumerate() {
        outputs.push((format!("recording {i} (text)"), text.into_bytes()));
        outputs.push((format!("recording {i} (bytes)"), bytes));
    }
    let log = std::fs::read(&ferry.log).unwrap();
    assert!(
        contains(&log, b"DEBUG") && contains(&log, b"session moved"),
        "the log is a verbose log of this run (ferry logs nothing at TRACE of its own)"
    );
    outputs.push(("the log".into(), log));
    for (what, haystack) in &outputs {
        for password in [CLEAR, HASHED] {
            let found = leaks(haystack, password);
            assert!(found.is_empty(), "{what} holds {found:?} of a password");
        }
    }
    drop(ferry);
    let _ = std::fs::remove_dir_all(&dir);
}

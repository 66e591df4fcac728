//! Session state that must survive a migration, and clients that set it up
//! and print snapshots of it: the `mysql` crate (in process), PyMySQL,
//! mysql-connector-python with `prepared=True` and MariaDB Connector/J with
//! `useServerPrepStmts=true` (programs under `tests/clients/`).
//!
//! A [`Spec`] is a list of directives, one a line, tab-separated (the format
//! the client programs read):
//!
//! ```text
//! SQL    <statement>                set-up: run it (text protocol), discard the result
//! PREP   <name> <statement>         set-up: prepare it (binary protocol) and execute it once
//! EXEC   <name> <param>...          snapshot: execute prepared statement <name>
//! QUERY  <name> <statement>         snapshot: run it (text protocol), keep every row
//! END    <statement>                snapshot: run it last (e.g. COMMIT)
//! ```
//!
//! Params: `i:42`, `s:text`, `x:00ff` (bytes), `f:1.5` (double), `dec:1.50`,
//! `n:` (NULL). A snapshot is `{"results": {name: rows | {"error": ..}}}`;
//! the result named `where` (`@@port`, `CONNECTION_ID()`) says where the
//! session is and is left out of comparisons.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::OnceLock;
use std::time::Duration;

use mysql::prelude::Queryable;
use serde_json::{json, Map, Value};

use crate::{connect_backend, scratch_dir, workspace_root};

/// The database every state test works in; [`prepare_schema`] makes it the
/// same on every backend.
pub const DB: &str = "ferry_mig";

/// Create [`DB`] with tables `t` (three fixed rows) and `log` (auto
/// increment) on every backend, directly. Idempotent; safe in parallel.
pub fn prepare_schema(backends: &[SocketAddr]) {
    for addr in backends {
        let mut c = connect_backend(*addr);
        for sql in [
            format!("CREATE DATABASE IF NOT EXISTS {DB}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {DB}.t (id INT PRIMARY KEY, v VARCHAR(32)) \
                 CHARACTER SET utf8mb4"
            ),
            format!("INSERT IGNORE INTO {DB}.t VALUES (1, 'one'), (2, 'zwei'), (3, 'trois')"),
            format!(
                "CREATE TABLE IF NOT EXISTS {DB}.log (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
                 client VARCHAR(64)) CHARACTER SET utf8mb4"
            ),
        ] {
            c.query_drop(&sql)
                .unwrap_or_else(|e| panic!("{addr}: {sql}: {e}"));
        }
    }
}

/// One directive.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    Sql(String),
    Prep(String, String),
    Exec(String, Vec<String>),
    Query(String, String),
    End(String),
}

/// A state set-up and the snapshot that reads it back.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub lines: Vec<Line>,
}

impl Spec {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            let fields: Vec<&str> = match l {
                Line::Sql(sql) => vec!["SQL", sql],
                Line::Prep(name, sql) => vec!["PREP", name, sql],
                Line::Exec(name, params) => {
                    let mut f = vec!["EXEC", name.as_str()];
                    f.extend(params.iter().map(String::as_str));
                    f
                }
                Line::Query(name, sql) => vec!["QUERY", name, sql],
                Line::End(sql) => vec!["END", sql],
            };
            assert!(
                fields
                    .iter()
                    .all(|f| !f.contains('\t') && !f.contains('\n')),
                "{l:?}"
            );
            s.push_str(&fields.join("\t"));
            s.push('\n');
        }
        s
    }

    /// Write the spec to a scratch file for a client program.
    pub fn write(&self) -> PathBuf {
        let path = scratch_dir("state-spec").join("spec.tsv");
        std::fs::write(&path, self.to_text()).expect("write spec");
        path
    }
}

/// The full session state of the migration tests. `names` is the statement
/// that sets the character set (run first, so everything after it is sent
/// in it: all later statements are ASCII); `binary` adds binary-protocol
/// prepared statements (not for PyMySQL). The client tag goes into `log`.
pub fn full_state(names: &[&str], binary: bool, tag: &str) -> Spec {
    let mut l: Vec<Line> = Vec::new();
    let sql = |s: &str| Line::Sql(s.to_string());
    for n in names {
        l.push(sql(n));
    }
    l.push(sql(
        "SET SESSION sql_mode = 'ANSI_QUOTES,PIPES_AS_CONCAT,NO_ENGINE_SUBSTITUTION,STRICT_ALL_TABLES,NO_ZERO_DATE'",
    ));
    l.push(sql("SET time_zone = '-03:30'"));
    l.push(sql("SET SESSION div_precision_increment = 7"));
    l.push(sql("SET SESSION group_concat_max_len = 4321"));
    l.push(sql("SET SESSION lc_time_names = 'de_DE'"));
    l.push(sql(
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    ));
    l.push(sql("SET SESSION sql_select_limit = 1000"));
    l.push(sql("SET SESSION auto_increment_increment = 3"));
    l.push(sql(&format!("USE {DB}")));
    // autocommit=0 between transactions: one transaction done, none open.
    l.push(sql("SET autocommit = 0"));
    l.push(sql(&format!("INSERT INTO log (client) VALUES ('{tag}')")));
    l.push(sql("COMMIT"));
    // User variables of every type.
    l.push(sql(
        "SET @i = -9223372036854775807, @u = 18446744073709551615, @one = 1, \
         @dec = 12345.678900, @dbl = 1.5e300, @tiny = -1.25e-300",
    ));
    l.push(sql(
        "SET @s_utf8 = _utf8mb4 X'C3A9F09F9A80E282AC', @s_latin1 = _latin1 X'E9FCDF', \
         @s_cp1251 = _cp1251 X'CFF0E8E2E5F2', @s_ucs2 = _ucs2 X'00E90041', \
         @s_coll = _utf8mb4 'Abc' COLLATE utf8mb4_unicode_ci, @s_ascii = 'plain', @empty = ''",
    ));
    l.push(sql(
        "SET @bin = X'00FF00FF7F80', @bin2 = CAST(X'FF00' AS BINARY), @nul = NULL",
    ));
    // Text PREPAREs, under this sql_mode (PIPES_AS_CONCAT) and database.
    l.push(sql(
        "PREPARE txt_calc FROM 'SELECT ? * 2, HEX(?), DATABASE(), @@time_zone, ? - 1'",
    ));
    l.push(sql(
        "PREPARE txt_pipes FROM 'SELECT ''a'' || ''b'', COUNT(*) FROM t'",
    ));
    l.push(sql(
        "PREPARE txt_dyn FROM 'SELECT HEX(v) FROM t WHERE id = ?'",
    ));
    let mut snapshot = vec![
        Line::Query(
            "vars".into(),
            "SELECT @@session.sql_mode, @@session.time_zone, @@character_set_client, \
             @@character_set_connection, @@character_set_results, @@collation_connection, \
             @@autocommit, @@session.tx_isolation, @@div_precision_increment, \
             @@group_concat_max_len, @@lc_time_names, @@sql_select_limit, \
             @@auto_increment_increment, DATABASE(), LAST_INSERT_ID() > 0, @@in_transaction"
                .into(),
        ),
        Line::Query(
            "uservars".into(),
            "SELECT VARIABLE_NAME, HEX(VARIABLE_VALUE), VARIABLE_TYPE, CHARACTER_SET_NAME \
             FROM information_schema.USER_VARIABLES ORDER BY VARIABLE_NAME"
                .into(),
        ),
        Line::Query(
            "numbers".into(),
            "SELECT CAST(@i AS CHAR), @i - 1, CAST(@u AS CHAR), @u + 0, CAST(@dec AS CHAR), \
             @dec * 2, CAST(@dbl AS CHAR), @dbl / 3, CAST(@tiny AS CHAR), @one + 1"
                .into(),
        ),
        Line::Query(
            "strings".into(),
            "SELECT HEX(@s_utf8), CHARSET(@s_utf8), COLLATION(@s_utf8), \
             HEX(@s_latin1), CHARSET(@s_latin1), COLLATION(@s_latin1), \
             HEX(@s_cp1251), CHARSET(@s_cp1251), HEX(@s_ucs2), CHARSET(@s_ucs2), \
             HEX(@s_coll), COLLATION(@s_coll), @s_coll = 'abc', HEX(@s_ascii), \
             HEX(@empty), @empty IS NULL, HEX(@bin), CHARSET(@bin), LENGTH(@bin), \
             HEX(@bin2), CHARSET(@bin2), @nul IS NULL, HEX(@undefined), \
             HEX(CONVERT(@s_latin1 USING utf8mb4)), CHAR_LENGTH(@s_utf8)"
                .into(),
        ),
        Line::Query(
            "effects".into(),
            "SELECT 'x' || 'y', 1/3, HEX(DATE_FORMAT('2024-03-01', '%W %M')), \
             CONVERT_TZ('2024-01-01 00:00:00', '+00:00', @@time_zone), \
             HEX(_utf8mb4 'e' = _utf8mb4 X'C3A9'), HEX(CONCAT('a', @s_utf8))"
                .into(),
        ),
        Line::Query(
            "txt_calc".into(),
            "EXECUTE txt_calc USING @dec, @s_utf8, @i".into(),
        ),
        Line::Query("txt_pipes".into(), "EXECUTE txt_pipes".into()),
        Line::Query("txt_dyn".into(), "EXECUTE txt_dyn USING @one".into()),
    ];
    if binary {
        l.push(Line::Prep(
            "bin_row".into(),
            "SELECT id, HEX(CONCAT(v, '|', ?)), 'a' || 'b', @@time_zone FROM t WHERE id = ?".into(),
        ));
        l.push(Line::Prep(
            "bin_types".into(),
            "SELECT ? + 0, HEX(?), ? * 2, ? IS NULL, HEX(?), ? + 1".into(),
        ));
        snapshot.push(Line::Exec(
            "bin_row".into(),
            vec!["s:zz".into(), "i:2".into()],
        ));
        snapshot.push(Line::Exec(
            "bin_types".into(),
            vec![
                "i:41".into(),
                "x:00ff10".into(),
                "f:2.25".into(),
                "n:".into(),
                "s:abc".into(),
                "dec:1.50".into(),
            ],
        ));
    }
    // Executing the prepared statements read a table: with autocommit=0
    // that opened a transaction. The session starts idle, outside one.
    l.push(sql("COMMIT"));
    snapshot.push(Line::Query(
        "where".into(),
        "SELECT @@port, CONNECTION_ID()".into(),
    ));
    snapshot.push(Line::End("COMMIT".into()));
    l.extend(snapshot);
    Spec { lines: l }
}

/// `(port, CONNECTION_ID())` from a snapshot's `where` result.
pub fn location(snapshot: &Value) -> (u16, u64) {
    let row = &snapshot["results"]["where"][0];
    let num = |v: &Value| -> u64 {
        match v {
            Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {v}")),
            Value::Number(n) => n.as_u64().expect("u64"),
            _ => panic!("no `where` result in snapshot {snapshot}"),
        }
    };
    (num(&row[0]) as u16, num(&row[1]))
}

/// The handshake (ferry) connection id a client reported.
pub fn handshake_id(snapshot: &Value) -> u64 {
    snapshot["handshake_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("snapshot has no handshake_id: {snapshot}"))
}

/// The snapshot without the `where` result.
pub fn comparable(snapshot: &Value) -> BTreeMap<String, Value> {
    snapshot["results"]
        .as_object()
        .unwrap_or_else(|| panic!("snapshot has no results: {snapshot}"))
        .iter()
        .filter(|(k, _)| k.as_str() != "where")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Panics, naming every result that differs, unless the two snapshots agree.
pub fn assert_same_state(before: &Value, after: &Value, context: &str) {
    let diffs = state_diff(before, after);
    assert!(
        diffs.is_empty(),
        "{context}: the session state changed:\n{}",
        diffs.join("\n")
    );
}

/// The results that differ between two snapshots (`where` left out), one
/// description each.
pub fn state_diff(before: &Value, after: &Value) -> Vec<String> {
    let a = comparable(before);
    let b = comparable(after);
    let mut diffs = Vec::new();
    for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let (x, y) = (a.get(key), b.get(key));
        if x != y {
            diffs.push(format!(
                "  {key}:\n    before: {}\n    after:  {}",
                x.map_or("(missing)".into(), Value::to_string),
                y.map_or("(missing)".into(), Value::to_string)
            ));
        }
    }
    diffs
}

/// Checks that a snapshot really shows the state [`full_state`] set up (so
/// that equal snapshots mean something): no errors, the sql_mode, time zone,
/// database, exact numbers and bytes.
pub fn assert_full_state(snapshot: &Value) {
    let r = &snapshot["results"];
    for (name, v) in r.as_object().expect("results") {
        assert!(
            v.get("error").is_none(),
            "{name} failed: {v}\nsnapshot: {snapshot}"
        );
    }
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let vars = &r["vars"][0];
    assert!(s(&vars[0]).contains("ANSI_QUOTES"), "{vars}");
    assert!(s(&vars[0]).contains("PIPES_AS_CONCAT"), "{vars}");
    assert_eq!(s(&vars[1]), "-03:30", "{vars}");
    assert_eq!(s(&vars[6]), "0", "autocommit: {vars}");
    assert_eq!(s(&vars[7]), "READ-COMMITTED", "{vars}");
    assert_eq!(s(&vars[10]), "de_DE", "{vars}");
    assert_eq!(s(&vars[13]), DB, "{vars}");
    assert_eq!(s(&vars[14]), "1", "LAST_INSERT_ID: {vars}");
    let numbers = &r["numbers"][0];
    assert_eq!(s(&numbers[0]), "-9223372036854775807", "{numbers}");
    assert_eq!(s(&numbers[2]), "18446744073709551615", "{numbers}");
    assert_eq!(s(&numbers[3]), "18446744073709551615", "{numbers}");
    assert_eq!(s(&numbers[4]), "12345.678900", "{numbers}");
    assert_eq!(s(&numbers[6]), "1.5e300", "{numbers}");
    let strings = &r["strings"][0];
    assert_eq!(s(&strings[0]), "C3A9F09F9A80E282AC", "{strings}");
    assert_eq!(s(&strings[1]), "utf8mb4", "{strings}");
    assert_eq!(s(&strings[3]), "E9FCDF", "{strings}");
    assert_eq!(s(&strings[4]), "latin1", "{strings}");
    assert_eq!(s(&strings[16]), "00FF00FF7F80", "{strings}");
    assert_eq!(s(&strings[17]), "binary", "{strings}");
    assert_eq!(s(&strings[21]), "1", "@nul IS NULL: {strings}");
    assert_eq!(s(&r["txt_pipes"][0][0]), "ab", "{r}");
    assert_eq!(s(&r["effects"][0][0]), "xy", "{r}");
}

// ------------------------------------------------------------------ clients

/// A client holding one session with the state of a [`Spec`].
pub trait StateClient {
    /// The client's name, for messages.
    fn name(&self) -> String;
    /// Take a snapshot now.
    fn snapshot(&mut self) -> Value;
}

/// How long a client program may take to answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A client program: prints a snapshot after set-up, and one more for every
/// line it reads on stdin.
pub struct ProcessClient {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    first: Option<Value>,
}

impl ProcessClient {
    /// Start `cmd` and wait for its first snapshot.
    pub fn start(name: &str, mut cmd: Command) -> ProcessClient {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = err_text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let stdin = child.stdin.take();
        let mut client = ProcessClient {
            name: name.into(),
            child,
            stdin,
            lines,
            stderr: err_text,
            first: None,
        };
        let first = client.read_snapshot();
        client.first = Some(first);
        client
    }

    fn read_snapshot(&mut self) -> Value {
        match self.lines.recv_timeout(CLIENT_TIMEOUT) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!(
                    "{}: not a JSON snapshot ({e}): {line}\nstderr:\n{}",
                    self.name,
                    self.stderr()
                )
            }),
            Err(e) => {
                // The process is gone (or hangs); give its stderr reader a moment.
                std::thread::sleep(Duration::from_millis(200));
                let why = match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => {
                        format!("no snapshot within {CLIENT_TIMEOUT:?}")
                    }
                    std::sync::mpsc::RecvTimeoutError::Disconnected => {
                        "ended without a snapshot".to_string()
                    }
                };
                panic!(
                    "{}: {why} (exit status: {:?}); stderr:\n{}",
                    self.name,
                    self.child.try_wait().ok().flatten(),
                    self.stderr()
                )
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl StateClient for ProcessClient {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn snapshot(&mut self) -> Value {
        if let Some(first) = self.first.take() {
            return first;
        }
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "snap")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| {
                panic!(
                    "{}: write to stdin: {e}; stderr:\n{}",
                    self.name,
                    self.stderr()
                )
            });
        self.read_snapshot()
    }
}

impl Drop for ProcessClient {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clients_dir() -> PathBuf {
    workspace_root().join("tests").join("clients")
}

/// PyMySQL (text protocol) or mysql-connector-python (`prepared=True`).
pub fn python_client(
    driver: &str,
    spec: &Path,
    port: u16,
    user: &str,
    pass: &str,
) -> ProcessClient {
    let mut cmd = Command::new("python3");
    cmd.arg(clients_dir().join("state_client.py"))
        .arg(driver)
        .arg(spec)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .arg(user)
        .arg(pass);
    ProcessClient::start(driver, cmd)
}

/// MariaDB Connector/J from Debian's libmariadb-java.
pub const CONNECTOR_J: &str = "/usr/share/java/mariadb-java-client.jar";

/// Compile `tests/clients/StateClient.java` once per test process; returns the class directory.
pub fn java_classes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            Path::new(CONNECTOR_J).is_file(),
            "{CONNECTOR_J} not found: run scripts/install-deps (libmariadb-java)"
        );
        let dir = scratch_dir("java-classes");
        let out = crate::run_command(
            Command::new("javac")
                .arg("-d")
                .arg(&dir)
                .arg("-cp")
                .arg(CONNECTOR_J)
                .arg(clients_dir().join("StateClient.java")),
            Duration::from_secs(120),
        );
        out.assert_success("javac StateClient.java");
        dir
    })
}

/// Connector/J with server-side prepared statements.
pub fn java_client(spec: &Path, port: u16, user: &str, pass: &str) -> ProcessClient {
    let classes = java_classes();
    let url = format!(
        "jdbc:mariadb://127.0.0.1:{port}/?user={user}&password={pass}&useServerPrepStmts=true\
         &useSsl=false&connectTimeout=10000&socketTimeout=60000"
    );
    let mut cmd = Command::new("java");
    cmd.arg("-cp")
        .arg(format!("{}:{CONNECTOR_J}", classes.display()))
        .arg("StateClient")
        .arg(spec)
        .arg(url);
    ProcessClient::start("connector-j", cmd)
}

/// The `mysql` crate, in process: text protocol for SQL/QUERY/END, binary
/// prepared statements for PREP/EXEC.
pub struct RustClient {
    pub conn: mysql::Conn,
    spec: Spec,
    prepared: BTreeMap<String, mysql::Statement>,
}

fn rust_param(p: &str) -> mysql::Value {
    let (kind, v) = p.split_once(':').expect("typed param");
    match kind {
        "i" => mysql::Value::Int(v.parse().expect("int")),
        "s" | "dec" => mysql::Value::Bytes(v.as_bytes().to_vec()),
        "x" => mysql::Value::Bytes(
            (0..v.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&v[i..i + 2], 16).expect("hex"))
                .collect(),
        ),
        "f" => mysql::Value::Double(v.parse().expect("double")),
        "n" => mysql::Value::NULL,
        _ => panic!("bad param {p}"),
    }
}

fn rust_rows(rows: Vec<mysql::Row>) -> Value {
    Value::Array(
        rows.into_iter()
            .map(|row| {
                Value::Array(
                    row.unwrap()
                        .into_iter()
                        .map(|v| match v {
                            mysql::Value::NULL => Value::Null,
                            mysql::Value::Bytes(b) => match String::from_utf8(b) {
                                Ok(s) => Value::String(s),
                                Err(e) => Value::String(format!("0x{}", hex(e.as_bytes()))),
                            },
                            mysql::Value::Int(i) => Value::String(i.to_string()),
                            mysql::Value::UInt(u) => Value::String(u.to_string()),
                            mysql::Value::Float(f) => Value::String(f.to_string()),
                            mysql::Value::Double(d) => Value::String(d.to_string()),
                            other => Value::String(format!("{other:?}")),
                        })
                        .collect(),
                )
            })
            .collect(),
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl RustClient {
    /// Log in with `opts` and run the set-up of `spec`.
    pub fn start(opts: mysql::OptsBuilder, spec: Spec) -> RustClient {
        let conn = mysql::Conn::new(opts).expect("log in with the mysql crate");
        let mut client = RustClient {
            conn,
            spec,
            prepared: BTreeMap::new(),
        };
        for line in client.spec.lines.clone() {
            match line {
                Line::Sql(sql) => client
                    .conn
                    .query_drop(&sql)
                    .unwrap_or_else(|e| panic!("mysql crate set-up: {sql}: {e}")),
                Line::Prep(name, sql) => {
                    let stmt = client
                        .conn
                        .prep(&sql)
                        .unwrap_or_else(|e| panic!("mysql crate: prepare {sql}: {e}"));
                    client.prepared.insert(name.clone(), stmt);
                    let params = client.exec_params(&name);
                    client
                        .execute(&name, &params)
                        .unwrap_or_else(|e| panic!("mysql crate: first execute {name}: {e}"));
                }
                _ => {}
            }
        }
        client
    }

    fn exec_params(&self, name: &str) -> Vec<String> {
        self.spec
            .lines
            .iter()
            .find_map(|l| match l {
                Line::Exec(n, p) if n == name => Some(p.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("PREP {name} has no EXEC line"))
    }

    fn execute(&mut self, name: &str, params: &[String]) -> mysql::Result<Value> {
        let stmt = self.prepared[name].clone();
        let params: Vec<mysql::Value> = params.iter().map(|p| rust_param(p)).collect();
        let rows: Vec<mysql::Row> = self.conn.exec(&stmt, params)?;
        Ok(rust_rows(rows))
    }

    /// The connection id of the greeting (ferry's session id).
    pub fn handshake_id(&self) -> u64 {
        u64::from(self.conn.connection_id())
    }
}

impl StateClient for RustClient {
    fn name(&self) -> String {
        "mysql crate".into()
    }

    fn snapshot(&mut self) -> Value {
        let mut results = Map::new();
        for line in self.spec.lines.clone() {
            let (name, r) = match line {
                Line::Query(name, sql) => {
                    let r = self.conn.query::<mysql::Row, _>(&sql).map(rust_rows);
                    (name, r)
                }
                Line::Exec(name, params) => {
                    let r = self.execute(&name, &params);
                    (name, r)
                }
                Line::End(sql) => (
                    "end".into(),
                    self.conn.query_drop(&sql).map(|_| Value::Null),
                ),
                _ => continue,
            };
            match r {
                Ok(Value::Null) => {}
                Ok(v) => {
                    results.insert(name, v);
                }
                Err(e) => {
                    results.insert(name, json!({"error": e.to_string()}));
                }
            }
        }
        json!({"client": "mysql crate", "handshake_id": self.handshake_id(), "results": results})
    }
}

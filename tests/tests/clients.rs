//! Real client libraries and tools through ferry, each compared with the same
//! client talking to the same MariaDB directly: stored programs with their own
//! cursors (PyMySQL), prepared CALLs with OUT parameters and quitting in the
//! middle of a result (the `mysql` crate), Connector/J with its pipelining,
//! batches and bulk statements, `mariadb-dump --routines` and a 50 MiB
//! `LOAD DATA LOCAL INFILE`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::state::CONNECTOR_J;
use ferry_tests::*;

fn one_backend() -> (Ferry, SocketAddr) {
    let b = backends()[0];
    let ferry = ConfigBuilder::new().backend(Backend::new("cn1", b)).start();
    (ferry, b)
}

/// ferry must have followed every shape: nothing it logged is a protocol violation or a warning.
fn assert_quiet(ferry: &Ferry) {
    let log = ferry.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("protocol violation"))
        .collect();
    assert!(bad.is_empty(), "ferry complained:\n{}", bad.join("\n"));
}

/// Waits until ferry's log holds `n` lines containing `what`.
fn wait_for_log(ferry: &Ferry, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = ferry.log();
        if log.lines().filter(|l| l.contains(what)).count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ferry never logged {n} x {what:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Stored programs --------------------------------------------------------------

const STORED_PROGRAMS: &str = r#"
conn.autocommit(True)
q("DROP PROCEDURE IF EXISTS cl_cur")
q("CREATE PROCEDURE cl_cur() BEGIN DECLARE v INT; DECLARE cur CURSOR FOR SELECT 7; "
  "OPEN cur; FETCH cur INTO v; SELECT v; SELECT v + 1 AS w; CLOSE cur; END")
q("DROP PROCEDURE IF EXISTS cl_sig")
q("CREATE PROCEDURE cl_sig() BEGIN SELECT 1 AS a; "
  "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'cl failed', MYSQL_ERRNO = 1644; END")

def results(sql):
    cur.execute(sql)
    out = []
    while True:
        out.append(cur.fetchall() if cur.description else "ok %d" % cur.rowcount)
        if not cur.nextset():
            return out

print(results("BEGIN NOT ATOMIC DECLARE v INT; DECLARE cur CURSOR FOR SELECT 7; OPEN cur; "
              "FETCH cur INTO v; CLOSE cur; SELECT v; END"))
print(results("CALL cl_cur()"))
print(results("FOR rec IN (SELECT COLLATION_NAME FROM INFORMATION_SCHEMA.COLLATION_CHARACTER_SET_APPLICABILITY "
              "WHERE CHARACTER_SET_NAME='utf8mb4' AND COLLATION_NAME RLIKE 'uca1400' ORDER BY ID) DO "
              "SET NAMES utf8mb4; SET character_set_results=NULL; "
              "EXECUTE IMMEDIATE CONCAT('SELECT CONVERT(\\'\\' USING utf8mb4) COLLATE ', rec.COLLATION_NAME, "
              "' AS ', rec.COLLATION_NAME, ' LIMIT 0'); END FOR"))
q("SET NAMES utf8mb4")
try:
    print(results("CALL cl_sig()"))
except pymysql.err.MySQLError as e:
    print("ERR", e.args[0], e.args[1])
print(q("SELECT 'still here'"))
"#;

#[test]
fn pymysql_reads_stored_programs_with_their_own_cursors_as_directly() {
    let (ferry, backend) = one_backend();
    let direct = pymysql(
        backend.port(),
        "root",
        "111",
        r#", database="test""#,
        STORED_PROGRAMS,
    );
    direct.assert_success("PyMySQL directly");
    let through = pymysql(
        ferry.port(),
        "root",
        "111",
        r#", database="test""#,
        STORED_PROGRAMS,
    );
    through.assert_success("PyMySQL through ferry");
    assert_eq!(through.stdout, direct.stdout);
    assert!(through.stdout.contains("still here"), "{}", through.stdout);
    assert!(
        through.stdout.contains("ERR 1644 cl failed"),
        "{}",
        through.stdout
    );
    assert_quiet(&ferry);
}

/// Every result set of `CALL cl_out(?, ?, ?)` as the `mysql` crate reads it (binary protocol, OUT parameters).
fn prepared_call(conn: &mut mysql::Conn) -> Vec<String> {
    conn.query_drop("DROP PROCEDURE IF EXISTS cl_out").unwrap();
    conn.query_drop(
        "CREATE PROCEDURE cl_out(IN a INT, OUT b INT, INOUT d VARCHAR(10)) \
         BEGIN SELECT a AS got; SET b = a * 2; SET d = CONCAT(d, '!'); END",
    )
    .unwrap();
    let mut out = Vec::new();
    for a in [21, 4] {
        let mut result = conn
            .exec_iter("CALL cl_out(?, ?, ?)", (a, 0, "hi"))
            .unwrap();
        while let Some(set) = result.iter() {
            let rows: Vec<mysql::Row> = set.map(|r| r.unwrap()).collect();
            out.push(format!("{rows:?}"));
        }
    }
    let after: String = conn.query_first("SELECT 'after'").unwrap().unwrap();
    out.push(after);
    out
}

#[test]
fn a_prepared_call_with_out_parameters_reads_as_directly() {
    let (ferry, backend) = one_backend();
    let mut direct = mysql::Conn::new(opts(backend.port(), "root", "111").db_name(Some("test")))
        .expect("direct");
    let mut through =
        mysql::Conn::new(ferry.opts("root", "111").db_name(Some("test"))).expect("through ferry");
    let want = prepared_call(&mut direct);
    assert_eq!(prepared_call(&mut through), want);
    assert!(want.len() > 3, "{want:?}");
    assert_quiet(&ferry);
}

// Quitting mid-result ------------------------------------------------------------

#[test]
fn a_client_quitting_while_a_result_arrives_is_a_clean_close() {
    let (ferry, _) = one_backend();
    // The mysql crate: a result abandoned after its first row, then the
    // connection dropped (COM_QUIT while the rows are still coming).
    let mut conn = mysql::Conn::new(ferry.opts("root", "111").db_name(Some("test"))).unwrap();
    let mut result = conn
        .query_iter("SELECT seq, REPEAT('x', 200) FROM seq_1_to_300000")
        .unwrap();
    let first = result.iter().unwrap().next().unwrap().unwrap();
    assert_eq!(first.get::<u64, _>(0), Some(1));
    std::mem::forget(result);
    drop(conn);
    // A client that just closes its socket mid-result, with and without COM_QUIT.
    let out = python(
        r#"
import os, struct, pymysql
for quit in (True, False):
    conn = pymysql.connect(host="127.0.0.1", port=int(os.environ["FERRY_PORT"]), user="root",
                           password="111", database="test")
    s = conn._sock
    sql = b"\x03SELECT seq, REPEAT('x', 200) FROM seq_1_to_300000"
    s.sendall(struct.pack("<I", len(sql))[:3] + b"\x00" + sql)
    s.recv(4096)
    if quit:
        s.sendall(b"\x01\x00\x00\x00\x01")
    s.close()
"#,
        &[("FERRY_PORT", ferry.port().to_string())],
    );
    out.assert_success("PyMySQL closing mid-result");
    wait_for_log(&ferry, "session closed by client", 3);
    assert_quiet(&ferry);
}

// Connector/J ------------------------------------------------------------------

fn java_classes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            Path::new(CONNECTOR_J).is_file(),
            "{CONNECTOR_J} not found: run scripts/install-deps (libmariadb-java)"
        );
        let dir = scratch_dir("batch-client");
        let source = workspace_root().join("tests/clients/BatchClient.java");
        run_command(
            Command::new("javac")
                .arg("-d")
                .arg(&dir)
                .arg("-cp")
                .arg(CONNECTOR_J)
                .arg(source),
            Duration::from_secs(120),
        )
        .assert_success("javac BatchClient.java");
        dir
    })
}

fn connector_j(args: &[&str]) -> String {
    let mut cmd = Command::new("java");
    cmd.arg("-cp")
        .arg(format!("{}:{CONNECTOR_J}", java_classes().display()))
        .arg("BatchClient")
        .args(args);
    let out = run_command(&mut cmd, COMMAND_TIMEOUT);
    out.assert_success(&format!("Connector/J {args:?}"));
    out.stdout
}

/// cn1 unlabelled, cn2 for tenant acc1 and cn3 for acc1 in region eu-*.
fn tenant_ferry() -> (Ferry, SocketAddr) {
    let b = backends_n(3);
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]).label("account", "acc1"))
        .backend(
            Backend::new("cn3", b[2])
                .label("account", "acc1")
                .label("region", "eu-*"),
        )
        .start();
    (ferry, b[2])
}

#[test]
fn connector_j_connection_setup_pipelining_lands_every_connection() {
    let (ferry, cn3) = tenant_ferry();
    let url = |port: u16| {
        format!(
            "jdbc:mariadb://127.0.0.1:{port}/test?connectionAttributes=region:eu-west\
             &useSsl=false&connectTimeout=10000&socketTimeout=30000"
        )
    };
    let direct = connector_j(&["ports", &url(cn3.port()), "app", "secret"]);
    let through = connector_j(&["ports", &url(ferry.port()), "acc1:app", "secret"]);
    assert_eq!(through, direct);
    assert_eq!(direct, format!("port {}\n", cn3.port()).repeat(5));
    assert_quiet(&ferry);
}

#[test]
fn connector_j_batches_count_rows_as_directly() {
    let (ferry, cn3) = tenant_ferry();
    for (i, options) in [
        "useServerPrepStmts=false&useBulkStmts=false",
        "useServerPrepStmts=true&useBulkStmts=false",
        "useServerPrepStmts=true&useBulkStmts=true",
        "useServerPrepStmts=false&useBulkStmts=true",
    ]
    .into_iter()
    .enumerate()
    {
        let url = |port: u16| {
            format!(
                "jdbc:mariadb://127.0.0.1:{port}/test?{options}\
                 &useSsl=false&connectTimeout=10000&socketTimeout=30000"
            )
        };
        let table = format!("cl_batch_{i}");
        let direct = connector_j(&["batch", &url(cn3.port()), "app", "secret", &table]);
        let through = connector_j(&["batch", &url(ferry.port()), "acc1:app", "secret", &table]);
        assert_eq!(through, direct, "{options}");
        assert!(direct.contains("duplicate 1062"), "{options}: {direct}");
    }
    assert_quiet(&ferry);
}

// Tools ------------------------------------------------------------------------

#[test]
fn mariadb_dump_with_routines_is_the_same_as_directly() {
    let (ferry, backend) = one_backend();
    let mut setup = connect_backend(backend);
    for sql in [
        "DROP DATABASE IF EXISTS cl_dump",
        "CREATE DATABASE cl_dump",
        "CREATE TABLE cl_dump.t (id INT PRIMARY KEY, v VARCHAR(20))",
        "INSERT INTO cl_dump.t VALUES (1, 'a'), (2, 'b')",
        "CREATE PROCEDURE cl_dump.p(IN x INT) BEGIN DECLARE v INT; \
         DECLARE c CURSOR FOR SELECT id FROM cl_dump.t; OPEN c; FETCH c INTO v; CLOSE c; \
         SELECT v + x; END",
        "CREATE FUNCTION cl_dump.f(x INT) RETURNS INT DETERMINISTIC RETURN x * 2",
        "CREATE TRIGGER cl_dump.tr BEFORE INSERT ON cl_dump.t FOR EACH ROW SET NEW.v = UPPER(NEW.v)",
    ] {
        setup.query_drop(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let dump = |port: u16| {
        let (_, no_tls) = mysql_cli();
        let out = run_command(
            Command::new("mariadb-dump")
                .arg("--no-defaults")
                .arg("-h127.0.0.1")
                .arg(format!("-P{port}"))
                .arg("-uroot")
                .arg("-p111")
                .arg(no_tls)
                .arg("--routines")
                .arg("--triggers")
                .arg("--databases")
                .arg("cl_dump"),
            COMMAND_TIMEOUT,
        );
        out.assert_success("mariadb-dump");
        out.stdout
            .lines()
            .filter(|l| !l.starts_with("-- Dump completed") && !l.starts_with("-- Host:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let direct = dump(backend.port());
    let through = dump(ferry.port());
    assert_eq!(through, direct);
    assert!(direct.contains("CREATE DEFINER") && direct.contains("PROCEDURE `p`"));
    assert_quiet(&ferry);
}

#[test]
fn load_data_local_infile_of_50_mib_loads_as_directly() {
    let (ferry, backend) = one_backend();
    let dir = scratch_dir("load-data");
    let file = dir.join("rows.csv");
    // 50 MiB, generated here (never committed): 51,200 rows of 1 KiB.
    let mut data = Vec::with_capacity(50 << 20);
    for i in 0..51_200u32 {
        let line = format!("{i},{}\n", "x".repeat(1024 - 2 - i.to_string().len()));
        data.extend_from_slice(line.as_bytes());
    }
    assert_eq!(data.len(), 50 << 20);
    std::fs::write(&file, &data).unwrap();
    let load = |port: u16, table: &str| {
        let sql = format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INT PRIMARY KEY, v TEXT); \
             LOAD DATA LOCAL INFILE '{}' INTO TABLE {table} FIELDS TERMINATED BY ','; \
             SELECT COUNT(*), SUM(LENGTH(v)), MAX(id) FROM {table}; DROP TABLE {table};",
            file.display()
        );
        let out = cli(port, "root", "111", &sql, &["-Dtest", "--local-infile=1"]);
        out.assert_success("LOAD DATA LOCAL INFILE");
        out.stdout
    };
    let direct = load(backend.port(), "cl_load_direct");
    let through = load(ferry.port(), "cl_load_ferry");
    assert_eq!(through, direct);
    assert!(direct.contains("51200"), "{direct}");
    assert_quiet(&ferry);
    std::fs::remove_dir_all(&dir).ok();
}

// MariaDB's extended protocol ----------------------------------------------------

#[test]
fn column_definitions_carry_extended_type_info_as_directly() {
    let (ferry, backend) = one_backend();
    let mut setup = connect_backend(backend);
    setup
        .query_drop("CREATE OR REPLACE TABLE test.cl_types (j JSON, p POINT, u UUID)")
        .unwrap();
    setup
        .query_drop(
            "INSERT INTO test.cl_types VALUES ('{\"a\": 1}', POINT(1, 2), \
             '0f13eb97-f1bc-11f1-891c-02fc00000001')",
        )
        .unwrap();
    let metadata = |port: u16| {
        let out = cli(
            port,
            "root",
            "111",
            // No rows: the POINT value is not text (run_command reads UTF-8).
            "SELECT j, p, u FROM test.cl_types WHERE 0",
            &["--column-type-info", "-t"],
        );
        out.assert_success("mariadb --column-type-info");
        out.stdout
    };
    let direct = metadata(backend.port());
    assert!(
        direct.contains("format=json") && direct.contains("type=point"),
        "{direct}"
    );
    assert_eq!(metadata(ferry.port()), direct);
    assert_quiet(&ferry);
}

// max_packet_size after login ----------------------------------------------------

#[test]
fn a_packet_over_max_packet_size_after_login_gets_err_1153_from_its_header_alone() {
    let backend = backends()[0];
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", backend))
        .field("max_packet_size: 1048576")
        .start();
    let out = python(
        r#"
import os, struct, pymysql
conn = pymysql.connect(host="127.0.0.1", port=int(os.environ["FERRY_PORT"]), user="root",
                       password="111", database="test", read_timeout=20)
# Just under the limit: passes.
cur = conn.cursor()
cur.execute("SELECT '" + "x" * (1048576 - 100) + "'")
print(len(cur.fetchone()[0]))
s = conn._sock
# Only the header of a 2 MiB COM_QUERY and its first bytes: ferry answers at once.
s.sendall(struct.pack("<I", 2 << 20)[:3] + b"\x00" + b"\x03SELECT '")
head = s.recv(4)
body = s.recv(int.from_bytes(head[:3], "little"))
code = struct.unpack("<H", body[1:3])[0]
print("seq", head[3], "code", code, body[9:].decode())
print("then", s.recv(100))
"#,
        &[("FERRY_PORT", ferry.port().to_string())],
    );
    out.assert_success("a packet over max_packet_size");
    assert_eq!(
        out.stdout,
        "1048476\nseq 1 code 1153 Got a packet bigger than 'max_allowed_packet' bytes\nthen b''\n"
    );
    wait_for_log(&ferry, "max_packet_size", 1);
}

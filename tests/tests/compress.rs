//! The compressed protocol end to end: real clients that ask for
//! `CLIENT_COMPRESS` (the `mysql` crate, mysql_async,
//! mysql-connector-python, the `mariadb` CLI) get the same answers through
//! ferry as directly, the backend link is compressed too (MariaDB's own
//! `Compression` status says so) unless `compress_backend: false`, and a
//! compressed session moves like any other.

use std::sync::OnceLock;
use std::time::Duration;

use ferry_tests::admin::Admin;
use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::{Compression, Conn, Opts, OptsBuilder, Row};
use ferry_tests::{
    backends_n, cli, connect_backend, opts, python, scratch_dir, servers, Backend, ConfigBuilder,
    Ferry,
};

const MOVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Rows of the big table: about 6 MiB of text, compressible but not trivially.
const BIG_ROWS: usize = 3000;

fn three_backends() -> ConfigBuilder {
    let b = backends_n(3);
    ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]))
        .backend(Backend::new("cn3", b[2]))
}

/// `test.compress_big` on every backend (same rows everywhere, as over
/// shared storage); made once per run, before any test reads it.
fn prepare_big_table() {
    static MADE: OnceLock<()> = OnceLock::new();
    MADE.get_or_init(make_big_table);
}

fn make_big_table() {
    for addr in backends_n(3) {
        let mut c = connect_backend(addr);
        c.query_drop("CREATE DATABASE IF NOT EXISTS test").unwrap();
        c.query_drop(
            "CREATE OR REPLACE TABLE test.compress_big (id INT PRIMARY KEY, body MEDIUMTEXT)",
        )
        .unwrap();
        c.query_drop(format!(
            "INSERT INTO test.compress_big \
             SELECT seq, CONCAT(seq, ':', REPEAT(MD5(seq), 64)) FROM test.seq_1_to_{BIG_ROWS}"
        ))
        .unwrap();
    }
}

const BIG_QUERY: &str = "SELECT id, body FROM test.compress_big ORDER BY id";

fn compressed(port: u16, user: &str, pass: &str) -> OptsBuilder {
    opts(port, user, pass)
        .compress(Some(Compression::default()))
        .db_name(Some("test"))
}

fn status(conn: &mut Conn, name: &str) -> String {
    let row: Option<(String, String)> = conn
        .query_first(format!("SHOW SESSION STATUS LIKE '{name}'"))
        .unwrap();
    row.map(|r| r.1).unwrap_or_default()
}

fn big_rows(conn: &mut Conn) -> Vec<(i32, String)> {
    conn.query(BIG_QUERY).unwrap()
}

#[test]
fn the_mysql_crate_reads_a_big_result_compressed_as_directly() {
    let _servers = servers::shared();
    prepare_big_table();
    let ferry = three_backends().start();
    let b = backends_n(3);

    let mut direct = Conn::new(compressed(b[0].port(), "root", "111")).unwrap();
    assert_eq!(status(&mut direct, "Compression"), "ON");
    let expected = big_rows(&mut direct);
    assert_eq!(expected.len(), BIG_ROWS);
    let bytes: usize = expected.iter().map(|r| r.1.len()).sum();
    assert!(bytes > 5 << 20, "several MiB: {bytes}");

    let mut through = Conn::new(compressed(ferry.port(), "root", "111")).unwrap();
    assert_eq!(
        status(&mut through, "Compression"),
        "ON",
        "the backend link is compressed too"
    );
    assert!(big_rows(&mut through) == expected, "same rows as directly");
    // Prepared statements (binary rows) and a big command the other way.
    let stmt = through
        .prep("SELECT body FROM test.compress_big WHERE id = ?")
        .unwrap();
    let one: Option<String> = through.exec_first(&stmt, (42,)).unwrap();
    assert_eq!(one.as_deref(), Some(expected[41].1.as_str()));
    let long = "x".repeat(3 << 20);
    let echoed: Option<usize> = through
        .query_first(format!("SELECT LENGTH('{long}')"))
        .unwrap();
    assert_eq!(echoed, Some(long.len()));

    // A plain client of the same ferry is not compressed.
    let mut plain = ferry.connect("root", "111").unwrap();
    assert_eq!(status(&mut plain, "Compression"), "OFF");
}

#[test]
fn mysql_async_reads_a_big_result_compressed_as_directly() {
    use mysql_async::prelude::Queryable as _;
    let _servers = servers::shared();
    prepare_big_table();
    let ferry = three_backends().start();
    let b = backends_n(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let read = |port: u16| -> (String, Vec<(i32, String)>) {
        rt.block_on(async move {
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(port)
                .prefer_socket(false)
                .user(Some("root"))
                .pass(Some("111"))
                .compression(mysql_async::Compression::default());
            let mut conn = mysql_async::Conn::new(opts).await.unwrap();
            let st: Option<(String, String)> = conn
                .query_first("SHOW SESSION STATUS LIKE 'Compression'")
                .await
                .unwrap();
            let rows: Vec<(i32, String)> = conn.query(BIG_QUERY).await.unwrap();
            conn.disconnect().await.unwrap();
            (st.unwrap().1, rows)
        })
    };
    let (direct_status, expected) = read(b[0].port());
    assert_eq!(direct_status, "ON");
    let (status, rows) = read(ferry.port());
    assert_eq!(status, "ON", "the backend link is compressed too");
    assert_eq!(rows.len(), expected.len());
    assert!(rows == expected, "same rows as directly");
}

#[test]
fn a_backend_with_compress_backend_false_stays_uncompressed() {
    let _servers = servers::shared();
    prepare_big_table();
    let b = backends_n(3);
    let ron = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .to_ron()
        .replace(
            &format!("addr: \"{}\")", b[0]),
            &format!("addr: \"{}\", compress_backend: false)", b[0]),
        );
    assert!(ron.contains("compress_backend: false"), "{ron}");
    let ferry = Ferry::start(&ron);
    let mut conn = Conn::new(compressed(ferry.port(), "root", "111")).unwrap();
    assert_eq!(status(&mut conn, "Compression"), "OFF");
    // The client's side is still compressed: the crate reads frames or fails.
    assert_eq!(big_rows(&mut conn).len(), BIG_ROWS);
}

#[test]
fn mysql_connector_python_connects_compressed() {
    let _servers = servers::shared();
    prepare_big_table();
    let ferry = three_backends().start();
    let code = r#"
import os, hashlib
import mysql.connector
conn = mysql.connector.connect(host="127.0.0.1", port=int(os.environ["FERRY_PORT"]),
                               user="root", password="111", database="test",
                               compress=True, use_pure=True, ssl_disabled=True,
                               connection_timeout=10)
cur = conn.cursor()
cur.execute("SHOW SESSION STATUS LIKE 'Compression'")
print("compression", cur.fetchall()[0][1])
cur.execute("SELECT id, body FROM test.compress_big ORDER BY id")
h = hashlib.sha1()
n = 0
for (i, body) in cur.fetchall():
    h.update(("%d:%s\n" % (i, body)).encode())
    n += 1
print("rows", n, h.hexdigest())
cur.execute("SELECT @@port")
print("port", cur.fetchall()[0][0])
conn.close()
"#;
    let out = python(code, &[("FERRY_PORT", ferry.port().to_string())]);
    out.assert_success("mysql-connector-python with compress=True through ferry");
    assert!(
        out.stdout.contains("compression ON"),
        "stdout: {}",
        out.stdout
    );
    // The same digest directly.
    let direct = python(code, &[("FERRY_PORT", backends_n(1)[0].port().to_string())]);
    direct.assert_success("mysql-connector-python directly");
    let rows = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("rows "))
            .map(str::to_string)
    };
    assert_eq!(rows(&out.stdout), rows(&direct.stdout));
    assert!(rows(&out.stdout).is_some_and(|r| r.starts_with(&format!("rows {BIG_ROWS} "))));
}

#[test]
fn the_mariadb_cli_loads_a_local_file_compressed() {
    let _servers = servers::shared();
    // One backend: the table is checked there directly afterwards.
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", backends_n(1)[0]))
        .start();
    let dir = scratch_dir("compress-load");
    let path = dir.join("rows.tsv");
    // About 20 MiB: more than one compressed frame's worth of file data.
    let mut text = String::new();
    let lines = 200_000;
    for i in 0..lines {
        text.push_str(&format!("{i}\tline {i} {:x}{:x}\n", i * 7919, i ^ 0x5a5a));
        text.push_str(&format!("{}\t{}\n", lines + i, "y".repeat(i % 97)));
    }
    std::fs::write(&path, &text).unwrap();
    let sql = format!(
        "CREATE OR REPLACE TABLE test.compress_load (id INT PRIMARY KEY, v TEXT);\
         LOAD DATA LOCAL INFILE '{}' INTO TABLE test.compress_load;\
         SHOW SESSION STATUS LIKE 'Compression';\
         SELECT COUNT(*), SUM(LENGTH(v)), SUM(CRC32(v)) FROM test.compress_load;",
        path.display()
    );
    let out = cli(
        ferry.port(),
        "root",
        "111",
        &sql,
        &["--compress", "--local-infile=1", "-N"],
    );
    out.assert_success("mariadb --compress with LOAD DATA LOCAL INFILE");
    assert!(
        out.stdout.contains("Compression\tON"),
        "stdout: {}",
        out.stdout
    );
    let sums = out.stdout.lines().last().unwrap_or_default().to_string();
    let direct = cli(
        backends_n(1)[0].port(),
        "root",
        "111",
        "SELECT COUNT(*), SUM(LENGTH(v)), SUM(CRC32(v)) FROM test.compress_load",
        &["-N"],
    );
    direct.assert_success("checking the table directly");
    assert_eq!(sums, direct.stdout.trim(), "the same rows arrived");
    assert!(sums.starts_with(&format!("{}\t", 2 * lines)), "{sums}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_compressed_session_moves_and_keeps_its_state() {
    let _servers = servers::shared();
    prepare_big_table();
    let ferry = three_backends().start();
    let admin = Admin::of(&ferry);
    let mut conn = Conn::new(compressed(ferry.port(), "root", "111")).unwrap();
    conn.query_drop("SET @x = 'kept', sql_mode = 'ANSI_QUOTES', @n = 42")
        .unwrap();
    conn.query_drop("PREPARE p FROM 'SELECT body FROM test.compress_big WHERE id = ?'")
        .unwrap();
    let stmt = conn
        .prep("SELECT id FROM test.compress_big WHERE id = ?")
        .unwrap();
    let port0: u16 = conn.query_first("SELECT @@port").unwrap().unwrap();
    let sessions = admin.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let id = sessions[0]["id"].as_u64().unwrap();
    let from = sessions[0]["backend"].as_str().unwrap().to_string();
    admin.request_migration(id, None);
    let s = admin.wait_migrated(id, 1, MOVE_TIMEOUT);
    assert_ne!(s["backend"].as_str(), Some(from.as_str()), "{s:#}");

    let port1: u16 = conn.query_first("SELECT @@port").unwrap().unwrap();
    assert_ne!(port0, port1, "the session moved");
    let row: Row = conn
        .query_first("SELECT @x, @n, @@sql_mode")
        .unwrap()
        .unwrap();
    let (x, n, mode): (String, i64, String) = ferry_tests::mysql::from_row(row);
    assert_eq!((x.as_str(), n, mode.as_str()), ("kept", 42, "ANSI_QUOTES"));
    let body: Option<String> = conn.query_first("EXECUTE p USING 7").unwrap();
    assert!(body.is_some_and(|b| b.starts_with("7:")));
    let got: Option<i32> = conn.exec_first(&stmt, (9,)).unwrap();
    assert_eq!(got, Some(9));
    assert_eq!(
        status(&mut conn, "Compression"),
        "ON",
        "compressed on the target too"
    );
    assert_eq!(big_rows(&mut conn).len(), BIG_ROWS);
}

/// Keeps the `Opts` import honest: a compressed URL works the same way.
#[test]
fn compression_can_be_asked_for_in_a_url() {
    let _servers = servers::shared();
    let ferry = three_backends().start();
    let url = format!(
        "mysql://root:111@127.0.0.1:{}/test?compress=true&prefer_socket=false",
        ferry.port()
    );
    let mut conn = Conn::new(Opts::from_url(&url).unwrap()).unwrap();
    assert_eq!(status(&mut conn, "Compression"), "ON");
}

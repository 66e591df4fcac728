//! The harness itself, checked directly against the MariaDB servers (no ferry):
//! the servers are set up as the proxy tests expect, and the client helpers
//! report what the real server says. MariaDB's answers are the reference for
//! what ferry must answer.

use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::*;

#[test]
fn backends_accept_every_test_user_over_tcp() {
    for addr in backends_n(3) {
        for (user, pass) in [("root", "111"), ("app", "secret"), ("sbtest", "sbtest")] {
            let mut conn = connect(addr.port(), user, pass)
                .unwrap_or_else(|e| panic!("{user}/{pass} at {addr}: {e}"));
            assert_eq!(backend_port(&mut conn), addr.port());
            let dbs: Vec<String> = conn.query("SHOW DATABASES").unwrap();
            assert!(dbs.iter().any(|d| d == "test"), "{dbs:?}");
            assert!(dbs.iter().any(|d| d == "sbtest"), "{dbs:?}");
        }
        let mut root = connect_backend(addr);
        let plugins: Vec<(String, String, String)> = root
            .query(
                "SELECT user, host, plugin FROM mysql.user WHERE user IN ('root','app','sbtest')",
            )
            .unwrap();
        assert_eq!(plugins.len(), 9, "{plugins:?}");
        assert!(
            plugins.iter().all(|(_, _, p)| p == "mysql_native_password"),
            "{plugins:?}"
        );
        let anonymous: Option<u32> = root
            .query_first("SELECT COUNT(*) FROM mysql.user WHERE user = ''")
            .unwrap();
        assert_eq!(anonymous, Some(0));
    }
}

#[test]
fn mariadb_wrong_password_is_1045_28000() {
    let addr = backends()[0];
    let e = server_error(connect(addr.port(), "root", "wrong"));
    assert_eq!(e.code, 1045);
    assert_eq!(e.state, "28000");
    assert_eq!(
        e.message,
        "Access denied for user 'root'@'127.0.0.1' (using password: YES)"
    );
}

#[test]
fn cli_helper_runs_queries_and_reports_errors() {
    let port = backends()[0].port();
    let out = cli(
        port,
        "root",
        "111",
        "SELECT 40+2 AS answer; SELECT @@port",
        &[],
    );
    out.assert_success("mariadb CLI");
    assert_eq!(out.stdout, format!("answer\n42\n@@port\n{port}\n"));

    let out = cli(port, "root", "wrong", "SELECT 1", &[]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("ERROR 1045 (28000)"),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn pymysql_helper_runs_queries_and_reports_errors() {
    let port = backends()[0].port();
    let out = pymysql(
        port,
        "app",
        "secret",
        r#", program_name="ferry-e2e""#,
        "print(q('SELECT 1+1, @@port')[0])",
    );
    out.assert_success("PyMySQL");
    assert_eq!(out.stdout.trim(), format!("(2, {port})"));

    let out = pymysql(port, "app", "wrong", "", "print('unreachable')");
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stdout.starts_with("ERR 1045 "), "{out:?}");
}

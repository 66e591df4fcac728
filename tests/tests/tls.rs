//! TLS end to end: real clients (the `mariadb` CLI, PyMySQL, the `mysql`
//! crate) talking TLS to ferry, and ferry talking TLS to real MariaDB.
//!
//! Client-side certificates are made by each test with `openssl` in a scratch
//! directory; the backends' certificates come from `scripts/mariadb`'s test CA
//! (found with `SELECT @@ssl_ca` on a server). Tests wait for what ferry
//! reports (metrics, admin API, log lines), never for a fixed time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_tests::admin::Admin;
use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::{Conn, OptsBuilder, SslOpts};
use ferry_tests::*;

/// A CA and one certificate it signed for 127.0.0.1, in `dir`, named `name`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = run_command(
        Command::new("openssl").current_dir(dir).args(args),
        COMMAND_TIMEOUT,
    );
    out.assert_success(&format!("openssl {}", args.join(" ")));
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let ca = format!("{name}-ca.pem");
    let ca_key = format!("{name}-ca.key");
    let csr = format!("{name}.csr");
    let cert = format!("{name}.pem");
    let key = format!("{name}.key");
    let ext = format!("{name}.ext");
    let subject = format!("/CN=ferry test {name} CA");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
            "-keyout", &ca_key, "-out", &ca,
        ],
    );
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    );
    Pki {
        ca: dir.join(ca),
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// The CA that signed the test servers' certificates (`scripts/mariadb`).
fn servers_ca(addr: SocketAddr) -> PathBuf {
    let mut c = connect_backend(addr);
    let ca: Option<String> = c.query_first("SELECT @@ssl_ca").unwrap();
    let ca = PathBuf::from(ca.filter(|s| !s.is_empty()).unwrap_or_else(|| {
        panic!("the server at {addr} has no ssl_ca: start it with scripts/mariadb")
    }));
    assert!(ca.is_file(), "{} is not readable", ca.display());
    ca
}

/// A ferry config with users root/111 and the given backends (`tls` is the
/// RON after `tls: `, or empty for none) and extra top-level fields.
fn config(backends: &[(&str, SocketAddr, &str)], extra: &[String]) -> String {
    let mut s = format!(
        "(\n    listen: \"127.0.0.1:{}\",\n    admin_listen: \"127.0.0.1:{}\",\n    \
         users: [(user: \"root\", password: \"111\")],\n    \
         health: (interval_ms: 200, timeout_ms: 1000, fall: 2, rise: 1),\n    backends: [\n",
        free_port(),
        free_port()
    );
    for (id, addr, tls) in backends {
        let tls = if tls.is_empty() {
            String::new()
        } else {
            format!(", tls: {tls}")
        };
        s.push_str(&format!("        (id: \"{id}\", addr: \"{addr}\"{tls}),\n"));
    }
    s.push_str("    ],\n");
    for e in extra {
        s.push_str(&format!("    {e},\n"));
    }
    s.push_str(")\n");
    s
}

fn client_tls(pki: &Pki, required: bool) -> String {
    format!(
        "tls: Some((cert: \"{}\", key: \"{}\", required: {required}))",
        pki.cert.display(),
        pki.key.display()
    )
}

/// The `mariadb` CLI through ferry with the given TLS arguments.
fn cli_tls(port: u16, tls_args: &[&str], sql: &str) -> CmdOutput {
    let mut cmd = Command::new(&mysql_cli().0);
    cmd.arg("--no-defaults")
        .arg("-h127.0.0.1")
        .arg(format!("-P{port}"))
        .arg("-uroot")
        .arg("-p111")
        .arg("--connect-timeout=10")
        .arg("--batch")
        .args(tls_args)
        .arg("-e")
        .arg(sql);
    run_command(&mut cmd, COMMAND_TIMEOUT)
}

/// `mysql` crate options through ferry over TLS, verifying against `ca`.
fn tls_opts(port: u16, ca: &Path) -> OptsBuilder {
    opts(port, "root", "111")
        .ssl_opts(SslOpts::default().with_root_cert_path(Some(ca.to_path_buf())))
}

fn wait_log(f: &Ferry, what: &str) {
    let admin = Admin::of(f);
    admin.wait_for(what, Duration::from_secs(10), |_| {
        (f.log().contains(what), ())
    });
}

fn sighup(f: &Ferry) {
    let out = run_command(
        Command::new("kill").args(["-HUP", &f.pid().to_string()]),
        COMMAND_TIMEOUT,
    );
    out.assert_success("kill -HUP ferry");
}

fn port_of(c: &mut Conn) -> u16 {
    c.query_first("SELECT @@port").unwrap().unwrap()
}

#[test]
fn the_cli_and_pymysql_talk_tls_to_ferry_and_verify_its_certificate() {
    let _servers = servers::shared();
    let dir = scratch_dir("tls-cli");
    let pki = make_pki(&dir, "ferry");
    let b = backends_n(1);
    let f = Ferry::start(&config(&[("cn1", b[0], "")], &[client_tls(&pki, false)]));

    let out = cli_tls(f.port(), &["--ssl"], "status");
    out.assert_success("mariadb --ssl -e status");
    assert!(
        out.stdout.contains("Cipher in use is TLS"),
        "the CLI's status shows TLS:\n{}",
        out.stdout
    );
    let ca = format!("--ssl-ca={}", pki.ca.display());
    let out = cli_tls(
        f.port(),
        &["--ssl", "--ssl-verify-server-cert", &ca],
        "SELECT 'verified', @@port",
    );
    out.assert_success("mariadb --ssl-verify-server-cert");
    assert!(
        out.stdout.contains(&format!("verified\t{}", b[0].port())),
        "{}",
        out.stdout
    );
    // A plain client still gets in (required: false).
    let out = cli(f.port(), "root", "111", "SELECT 'plain'", &[]);
    out.assert_success("mariadb --skip-ssl");

    let out = pymysql(
        f.port(),
        "root",
        "111",
        &format!(", ssl={{\"ca\": \"{}\"}}", pki.ca.display()),
        "print('TLS', conn._sock.version(), q('SELECT 40 + 2')[0][0])",
    );
    out.assert_success("PyMySQL with ssl");
    assert!(out.stdout.contains("TLS TLSv1.3 42"), "{}", out.stdout);
}

#[test]
fn required_tls_refuses_plain_clients_and_a_tls_session_moves() {
    let _servers = servers::shared();
    let dir = scratch_dir("tls-required");
    let pki = make_pki(&dir, "ferry");
    let b = backends_n(2);
    let f = Ferry::start(&config(
        &[("cn1", b[0], ""), ("cn2", b[1], "")],
        &[client_tls(&pki, true)],
    ));
    let admin = Admin::of(&f);

    // Plain clients: 1045, as MariaDB answers a REQUIRE SSL account, and the log says why.
    let out = cli(f.port(), "root", "111", "SELECT 1", &[]);
    assert!(!out.success());
    assert!(out.stderr.contains("ERROR 1045"), "{}", out.stderr);
    let err = server_error(Conn::new(opts(f.port(), "root", "111")));
    assert_eq!(err.code, 1045, "{err:?}");
    assert!(
        f.log().contains("without TLS, which ferry requires"),
        "{}",
        f.log()
    );

    // The mysql crate over TLS gets in, and its session moves like any other.
    let mut c = Conn::new(tls_opts(f.port(), &pki.ca)).expect("TLS login through ferry");
    c.query_drop("SET @kept = 'over tls'").unwrap();
    let from = port_of(&mut c);
    let id = u64::from(c.connection_id());
    admin.request_migration(id, None);
    admin.wait_migrated(id, 1, Duration::from_secs(20));
    let to = port_of(&mut c);
    assert_ne!(from, to, "the session moved");
    let kept: Option<String> = c.query_first("SELECT @kept").unwrap();
    assert_eq!(kept.as_deref(), Some("over tls"));
}

#[test]
fn sighup_loads_a_new_certificate_for_new_sessions_and_keeps_old_ones() {
    let _servers = servers::shared();
    let dir = scratch_dir("tls-reload");
    let first = make_pki(&dir, "first");
    let b = backends_n(1);
    let f = Ferry::start(&config(&[("cn1", b[0], "")], &[client_tls(&first, false)]));
    let admin = Admin::of(&f);
    let mut old = Conn::new(tls_opts(f.port(), &first.ca)).expect("TLS with the first cert");

    // The second certificate sits beside the config and is named relative to it.
    let second = make_pki(&f.dir, "second");
    let relative = "tls: Some((cert: \"second.pem\", key: \"second.key\", required: false))";
    let text = std::fs::read_to_string(&f.config_path).unwrap();
    std::fs::write(
        &f.config_path,
        text.replace(&client_tls(&first, false), relative),
    )
    .unwrap();
    sighup(&f);
    admin.wait_for("the reload", Duration::from_secs(10), |a| {
        let ok = a.metric("ferry_config_reloads_total{result=\"ok\"}");
        (ok == Some(1.0), ok)
    });
    let verify = |ca: &Path| {
        let ca = format!("--ssl-ca={}", ca.display());
        cli_tls(
            f.port(),
            &["--ssl", "--ssl-verify-server-cert", &ca],
            "SELECT 1",
        )
    };
    verify(&second.ca).assert_success("a new session verifies the new certificate");
    assert!(
        !verify(&first.ca).success(),
        "the old certificate is gone for new sessions"
    );
    let one: u32 = old.query_first("SELECT 1").unwrap().unwrap();
    assert_eq!(one, 1, "the session from before the reload still works");

    // A certificate file that does not load rejects the reload, naming it.
    std::fs::write(
        &f.config_path,
        std::fs::read_to_string(&f.config_path)
            .unwrap()
            .replace("second.pem", "missing.pem"),
    )
    .unwrap();
    sighup(&f);
    admin.wait_for("the rejection", Duration::from_secs(10), |a| {
        let n = a.metric("ferry_config_reloads_total{result=\"rejected\"}");
        (n == Some(1.0), n)
    });
    assert!(f.log().contains("missing.pem"), "{}", f.log());
    verify(&second.ca).assert_success("the certificate in force stays");
}

#[test]
fn backend_tls_verifies_the_servers_certificate_everywhere() {
    let _servers = servers::shared();
    let b = backends_n(2);
    let ca = servers_ca(b[0]);
    let tls = format!("Some((ca: \"{}\", verify: true))", ca.display());
    let f = Ferry::start(&config(
        &[("cn1", b[0], &tls), ("cn2", b[1], &tls)],
        // The user source reads mysql.user over TLS too: app/secret is only known from there.
        &["user_source: (backend: \"cn1\", user: \"root\", password: \"111\")".into()],
    ));
    let admin = Admin::of(&f);
    admin.wait_for(
        "both backends healthy over TLS",
        Duration::from_secs(10),
        |a| {
            let b = a.backends();
            let up = b.values().all(|b| b["health"] == "up");
            (up && b.len() == 2, b)
        },
    );
    let mut c = f
        .connect("app", "secret")
        .expect("login with a user read over TLS");
    let cipher = |c: &mut Conn| -> String {
        let row: Option<(String, String)> = c
            .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            .unwrap();
        row.map(|r| r.1).unwrap_or_default()
    };
    assert!(
        !cipher(&mut c).is_empty(),
        "ferry's connection to the backend is TLS"
    );
    let from = port_of(&mut c);
    let id = u64::from(c.connection_id());
    admin.request_migration(id, None);
    admin.wait_migrated(id, 1, Duration::from_secs(20));
    assert_ne!(port_of(&mut c), from);
    assert!(
        !cipher(&mut c).is_empty(),
        "the target connection is TLS too"
    );
    // A KILL QUERY of a session on another backend runs over a TLS side connection.
    let mut other = f.connect("root", "111").unwrap();
    let mut tries = 0;
    while port_of(&mut other) == port_of(&mut c) && tries < 20 {
        other = f.connect("root", "111").unwrap();
        tries += 1;
    }
    assert_ne!(
        port_of(&mut other),
        port_of(&mut c),
        "a session on the other backend"
    );
    let victim: u32 = c.query_first("SELECT CONNECTION_ID()").unwrap().unwrap();
    other
        .query_drop(format!("KILL QUERY {victim}"))
        .unwrap_or_else(|e| panic!("KILL QUERY over a TLS side connection: {e}\n{}", f.log()));
}

#[test]
fn a_backend_certificate_from_another_ca_is_refused_clearly() {
    let _servers = servers::shared();
    let dir = scratch_dir("tls-wrong-ca");
    let wrong = make_pki(&dir, "wrong");
    let b = backends_n(1);
    let tls = format!("Some((ca: \"{}\", verify: true))", wrong.ca.display());
    let f = Ferry::start(&config(&[("cn1", b[0], &tls)], &[]));
    let err = server_error(f.connect("root", "111"));
    assert!(
        err.message.contains("cn1") && err.message.contains("TLS"),
        "the client hears which backend and that TLS failed: {err:?}"
    );
    let admin = Admin::of(&f);
    admin.wait_for(
        "cn1 down: its certificate does not verify",
        Duration::from_secs(10),
        |a| {
            let h = a.backend("cn1")["health"].clone();
            (h == "down", h)
        },
    );

    // verify: false is an explicit choice: it connects, with a warning at start.
    let f = Ferry::start(&config(&[("cn1", b[0], "Some((verify: false))")], &[]));
    let mut c = f.connect("root", "111").expect("TLS without verification");
    let row: Option<(String, String)> = c
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .unwrap();
    assert!(!row.unwrap().1.is_empty());
    wait_log(&f, "does not verify its certificate");
}

//! Users that change while ferry runs, against real MariaDB: `CREATE USER`,
//! `ALTER USER ... IDENTIFIED BY` and `DROP USER` through ferry take effect at
//! the very next login (ferry reads its user source again before it refuses),
//! and a user ferry has no hash for is verified by the backend.
//!
//! Needs `FERRY_TEST_BACKENDS` (three MariaDB servers with root/111) and the
//! ferry binary (`FERRY_BIN`). The servers are independent, so every account
//! change is made on all three: through ferry on the backend its session
//! runs on, directly on the other two.

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::admin::Admin;
use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::{ChangeUserOpts, Conn};
use ferry_tests::*;

const USER_SOURCE: &str =
    r#"user_source: (backend: "cn1", user: "root", password: "111", interval_ms: 600000)"#;

/// Removes `users` from every backend directly (left over from an earlier
/// run, they would be in ferry's first read and prove nothing).
fn forget(users: &[&str]) {
    for addr in backends_n(3) {
        let mut c = connect_backend(addr);
        for user in users {
            c.query_drop(format!("DROP USER IF EXISTS '{user}'@'%'"))
                .unwrap();
        }
    }
}

fn ferry(user_source: bool) -> Ferry {
    let b = backends_n(3);
    let mut config = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]))
        .backend(Backend::new("cn3", b[2]));
    if user_source {
        config = config.field(USER_SOURCE);
    }
    config.start()
}

/// Runs `sql` through ferry as root (on whichever backend the session lands)
/// and directly on the other backends.
fn everywhere(f: &Ferry, sql: &str) {
    let mut through = f.connect("root", "111").expect("root through ferry");
    through
        .query_drop(sql)
        .unwrap_or_else(|e| panic!("{sql} through ferry: {e}"));
    let routed = backend_port(&mut through);
    for addr in backends_n(3) {
        if addr.port() != routed {
            connect_backend(addr)
                .query_drop(sql)
                .unwrap_or_else(|e| panic!("{sql} on {addr}: {e}"));
        }
    }
}

fn drop_user(f: &Ferry, user: &str) {
    everywhere(f, &format!("DROP USER IF EXISTS '{user}'@'%'"));
}

fn create_user(f: &Ferry, user: &str, password: &str) {
    drop_user(f, user);
    everywhere(
        f,
        &format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
    );
    everywhere(f, &format!("GRANT SELECT ON test.* TO '{user}'@'%'"));
}

fn current_user(c: &mut Conn) -> String {
    c.query_first::<String, _>("SELECT CURRENT_USER()")
        .unwrap()
        .unwrap()
}

/// Waits until ferry's log (without colours) has `needle`: ferry logs a
/// refusal after the client has it.
fn wait_log(f: &Ferry, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = strip_colours(&f.log());
        if log.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no '{needle}' in ferry's log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn strip_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn reads(admin: &Admin) -> f64 {
    admin
        .metric("ferry_user_source_reads_total")
        .expect("ferry_user_source_reads_total in /metrics")
}

#[test]
fn a_user_created_through_ferry_logs_in_at_once_and_is_reachable_by_change_user() {
    forget(&["rt_new1", "rt_new2"]);
    let f = ferry(true);
    let admin = Admin::of(&f);
    create_user(&f, "rt_new1", "pw-one");
    create_user(&f, "rt_new2", "pw-two");
    let before = reads(&admin);

    // No wait for the periodic read (ten minutes away): the login itself makes ferry read again.
    let mut c = f
        .connect("rt_new1", "pw-one")
        .expect("a user created a moment ago logs in through ferry");
    assert_eq!(current_user(&mut c), "rt_new1@%");
    assert!(
        reads(&admin) > before,
        "the login made ferry read the users"
    );
    drop(c);

    // COM_CHANGE_USER to runtime users, twice in a row on one connection.
    let mut c = f.connect("root", "111").unwrap();
    c.change_user(
        ChangeUserOpts::DEFAULT
            .with_user(Some("rt_new1".into()))
            .with_pass(Some("pw-one".into())),
    )
    .expect("COM_CHANGE_USER to a user created at runtime");
    assert_eq!(current_user(&mut c), "rt_new1@%");
    c.change_user(
        ChangeUserOpts::DEFAULT
            .with_user(Some("rt_new2".into()))
            .with_pass(Some("pw-two".into())),
    )
    .expect("a second COM_CHANGE_USER on the same connection");
    assert_eq!(current_user(&mut c), "rt_new2@%");
    let one: Option<u8> = c.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1));
    drop(c);

    wait_log(
        &f,
        "read the user source again for a login user=rt_new1 cause=unknown user",
    );
    let log = f.log();
    assert!(
        !log.contains("pw-one") && !log.contains("pw-two"),
        "no password in the log"
    );
    drop_user(&f, "rt_new1");
    drop_user(&f, "rt_new2");
}

#[test]
fn a_changed_password_works_at_once_and_the_old_one_fails() {
    forget(&["rt_alter"]);
    let f = ferry(true);
    create_user(&f, "rt_alter", "old-pw");
    drop(f.connect("rt_alter", "old-pw").expect("the first password"));
    everywhere(&f, "ALTER USER 'rt_alter'@'%' IDENTIFIED BY 'new-pw'");
    let mut c = f
        .connect("rt_alter", "new-pw")
        .expect("the new password works at the very next login");
    assert_eq!(current_user(&mut c), "rt_alter@%");
    let e = server_error(f.connect("rt_alter", "old-pw"));
    assert_eq!(e.code, 1045, "{e:?}");
    assert_eq!(e.state, "28000");
    wait_log(
        &f,
        "wrong password for 'rt_alter' (after reading the users again)",
    );
    drop_user(&f, "rt_alter");
}

#[test]
fn a_dropped_user_is_refused_at_the_next_login() {
    forget(&["rt_gone"]);
    let f = ferry(true);
    create_user(&f, "rt_gone", "gone-pw");
    drop(f.connect("rt_gone", "gone-pw").expect("before DROP USER"));
    drop_user(&f, "rt_gone");
    let e = server_error(f.connect("rt_gone", "gone-pw"));
    assert_eq!(e.code, 1045, "{e:?}");
}

#[test]
fn fifty_bad_passwords_at_once_cause_only_a_few_reads() {
    let f = ferry(true);
    let admin = Admin::of(&f);
    let before = reads(&admin);
    let port = f.port();
    let started = Instant::now();
    let logins: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || connect(port, "root", "not-the-password")))
        .collect();
    for login in logins {
        let e = server_error(login.join().unwrap());
        assert_eq!(e.code, 1045, "{e:?}");
    }
    let read = reads(&admin) - before;
    assert!(
        (1.0..=3.0).contains(&read),
        "50 concurrent bad logins made {read} reads of the user source"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn without_a_user_source_the_backend_verifies_and_the_session_cannot_move_until_ferry_knows_it() {
    forget(&["rt_bv"]);
    let f = ferry(false);
    let admin = Admin::of(&f);
    create_user(&f, "rt_bv", "bv-pw");

    let mut c = f
        .connect("rt_bv", "bv-pw")
        .expect("the backend verifies a user ferry does not know");
    assert_eq!(current_user(&mut c), "rt_bv@%");
    let n: Option<u32> = c.query_first("SELECT 40 + 2").unwrap();
    assert_eq!(n, Some(42));
    let id = u64::from(c.connection_id());
    let session = admin.wait_for("the blocker", Duration::from_secs(5), |a| {
        let s = a.session(id);
        (
            s["blocked_by"].to_string().contains("credential unknown"),
            s,
        )
    });
    assert_eq!(session["safe"], false, "{session}");
    let (status, body) = admin.migrate(id, None);
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("credential unknown"), "{body}");

    // A wrong password gets the backend's own refusal.
    let e = server_error(f.connect("rt_bv", "wrong"));
    assert_eq!(e.code, 1045, "{e:?}");

    // ferry learns the hash (here: the user is added to the config and
    // reloaded): the credential is recovered and the session moves.
    let config = std::fs::read_to_string(&f.config_path).unwrap().replacen(
        "    users: [\n",
        "    users: [\n        (user: \"rt_bv\", password: \"bv-pw\"),\n",
        1,
    );
    std::fs::write(&f.config_path, config).unwrap();
    let hup = Command::new("kill")
        .arg("-HUP")
        .arg(f.pid().to_string())
        .status()
        .unwrap();
    assert!(hup.success());
    admin.wait_for("the blocker to clear", Duration::from_secs(5), |a| {
        let s = a.session(id);
        (s["blocked_by"] == serde_json::json!([]), s)
    });
    let from = backend_port(&mut c);
    let (status, body) = admin.migrate(id, None);
    assert_eq!(status, 202, "{body}");
    admin.wait_migrated(id, 1, Duration::from_secs(10));
    assert_ne!(backend_port(&mut c), from, "moved");
    assert_eq!(current_user(&mut c), "rt_bv@%");
    wait_log(
        &f,
        "learned the credential of a session the backend verified",
    );
    drop(c);
    drop_user(&f, "rt_bv");
}

#[test]
fn unverified_logins_refuse_keeps_unknown_users_out() {
    let b = backends_n(3);
    let f = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .field("unverified_logins: Refuse")
        .start();
    create_user(&f, "rt_strict", "strict-pw");
    let e = server_error(f.connect("rt_strict", "strict-pw"));
    assert_eq!(e.code, 1045, "{e:?}");
    drop_user(&f, "rt_strict");
}

#[test]
fn a_hash_the_user_source_could_not_read_is_learned_by_a_later_read() {
    forget(&["rt_src", "rt_late"]);
    let b = backends_n(3);
    // The user source's account may not read mysql.user yet.
    connect_backend(b[0])
        .query_drop("CREATE USER 'rt_src'@'%' IDENTIFIED BY 'src-pw'")
        .unwrap();
    let f = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]))
        .backend(Backend::new("cn3", b[2]))
        .field(
            r#"user_source: (backend: "cn1", user: "rt_src", password: "src-pw", interval_ms: 300)"#,
        )
        .start();
    let admin = Admin::of(&f);
    create_user(&f, "rt_late", "late-pw");
    let mut c = f
        .connect("rt_late", "late-pw")
        .expect("the backend verifies what ferry could not read");
    let id = u64::from(c.connection_id());
    admin.wait_for("the blocker", Duration::from_secs(5), |a| {
        let s = a.session(id);
        (
            s["blocked_by"].to_string().contains("credential unknown"),
            s,
        )
    });
    assert!(
        admin
            .metric("ferry_user_source_read_failures_total")
            .unwrap()
            >= 1.0
    );
    connect_backend(b[0])
        .query_drop("GRANT SELECT ON mysql.* TO 'rt_src'@'%'")
        .unwrap();
    // The next periodic read has the hash: the credential is recovered from the login's exchange.
    admin.wait_for("the blocker to clear", Duration::from_secs(5), |a| {
        let s = a.session(id);
        (s["blocked_by"] == serde_json::json!([]), s)
    });
    let (status, body) = admin.migrate(id, None);
    assert_eq!(status, 202, "{body}");
    admin.wait_migrated(id, 1, Duration::from_secs(10));
    assert_eq!(current_user(&mut c), "rt_late@%");
    drop(c);
    drop_user(&f, "rt_late");
    forget(&["rt_src"]);
}

#[test]
fn without_a_user_source_change_user_to_a_user_only_the_backends_know_is_verified_by_them() {
    forget(&["rt_cu"]);
    let f = ferry(false);
    let admin = Admin::of(&f);
    create_user(&f, "rt_cu", "cu-pw");
    let mut c = f.connect("root", "111").unwrap();
    c.change_user(
        ChangeUserOpts::DEFAULT
            .with_user(Some("rt_cu".into()))
            .with_pass(Some("cu-pw".into())),
    )
    .expect("the backend verifies a COM_CHANGE_USER ferry cannot");
    assert_eq!(current_user(&mut c), "rt_cu@%");
    let id = u64::from(c.connection_id());
    admin.wait_for("the blocker", Duration::from_secs(5), |a| {
        let s = a.session(id);
        (
            s["blocked_by"].to_string().contains("credential unknown"),
            s,
        )
    });
    // And back to a user ferry knows: movable again.
    c.change_user(
        ChangeUserOpts::DEFAULT
            .with_user(Some("root".into()))
            .with_pass(Some("111".into())),
    )
    .expect("back to root");
    assert!(current_user(&mut c).starts_with("root@"));
    admin.wait_for("the blocker to clear", Duration::from_secs(5), |a| {
        let s = a.session(id);
        (s["blocked_by"] == serde_json::json!([]), s)
    });
    drop(c);
    drop_user(&f, "rt_cu");
}

//! Tenant isolation end to end: a tenant never reaches another tenant's
//! backend or session — not through labels, connection attributes, odd
//! separators, a tenant-less user naming a tenant, COM_CHANGE_USER or KILL.
//!
//! cn1 serves acc1, cn2 serves acc2, cn3 is the shared pool (no labels).
//! Users: `root` without a tenant (and without `any_tenant`), `acc1:app`,
//! `acc2:sbtest`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::{ChangeUserOpts, Conn};
use ferry_tests::*;

fn isolated() -> (Ferry, [SocketAddr; 3]) {
    let b = backends_n(3);
    let mut cfg = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]).label("account", "acc1"))
        .backend(Backend::new("cn2", b[1]).label("account", "acc2"))
        .backend(Backend::new("cn3", b[2]));
    cfg.users = vec![
        r#"(user: "root", password: "111")"#.into(),
        format!(r#"(tenant: "acc1", user: "app", password_hash: "{SECRET_HASH}")"#),
        r#"(tenant: "acc2", user: "sbtest", password: "sbtest")"#.into(),
    ];
    (cfg.start(), [b[0], b[1], b[2]])
}

fn with_attrs(
    ferry: &Ferry,
    user: &str,
    pass: &str,
    attrs: &[(&str, &str)],
) -> mysql::Result<Conn> {
    let attrs: HashMap<String, String> = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Conn::new(ferry.opts(user, pass).connect_attrs(Some(attrs)))
}

fn denied(result: mysql::Result<Conn>, what: &str) {
    let e = server_error(result);
    assert_eq!((e.code, e.state.as_str()), (1045, "28000"), "{what}: {e:?}");
}

#[test]
fn each_tenant_lands_on_its_own_backend_and_a_tenant_less_user_on_the_pool() {
    let (ferry, [b1, b2, b3]) = isolated();
    let mut acc1 = ferry.connect("acc1:app", "secret").unwrap();
    assert_eq!(backend_port(&mut acc1), b1.port());
    let mut alias = ferry.connect("acc1#app", "secret").unwrap();
    assert_eq!(backend_port(&mut alias), b1.port());
    let mut acc2 = ferry.connect("acc2:sbtest", "sbtest").unwrap();
    assert_eq!(backend_port(&mut acc2), b2.port());
    let mut root = ferry.connect("root", "111").unwrap();
    assert_eq!(backend_port(&mut root), b3.port());
}

#[test]
fn a_tenant_less_user_cannot_log_in_under_any_tenant() {
    let (ferry, _) = isolated();
    for name in [
        "acc1:root",
        "acc2:root",
        "acc2#root",
        "acc9:root",
        "root?account=acc2",
    ] {
        denied(ferry.connect(name, "111"), name);
    }
    // Nor by a connection attribute naming the tenant.
    denied(
        with_attrs(&ferry, "root", "111", &[("account", "acc2")]),
        "root + account=acc2",
    );
    // ferry knows root, so it refuses it here itself (the backend is never asked).
    // (The log line follows the ERR: wait for it.)
    let refused = |log: &str| log.matches("is not configured for this tenant").count();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while refused(&ferry.log()) < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = ferry.log();
    assert_eq!(
        refused(&log),
        6,
        "refused by ferry as not configured in that tenant:\n{log}"
    );
    assert!(!log.contains("session logged in"), "{log}");
}

#[test]
fn odd_separators_do_not_reach_another_tenant() {
    let (ferry, _) = isolated();
    for (name, pass) in [
        // The tenant ends at the first separator: user "acc2:sbtest" of acc1 is unknown.
        ("acc1:acc2:sbtest", "sbtest"),
        ("acc2:acc1:app", "secret"),
        ("acc1#acc2:sbtest", "sbtest"),
        // %3A is no tenant separator: user "acc1%3Aapp" without a tenant is unknown.
        ("acc1%3Aapp", "secret"),
        ("acc2%3asbtest", "sbtest"),
        // Another tenant's user under the wrong tenant.
        ("acc2:app", "secret"),
        ("acc1:sbtest", "sbtest"),
        // Without a tenant, a tenant's user is unknown.
        ("app", "secret"),
        ("sbtest", "sbtest"),
    ] {
        denied(ferry.connect(name, pass), name);
    }
}

#[test]
fn labels_and_attributes_cannot_change_the_tenant_of_a_login() {
    let (ferry, [b1, _, _]) = isolated();
    // The tenant in front of the separator wins over an `account` label or attribute.
    let mut c = ferry.connect("acc1:app?account=acc2", "secret").unwrap();
    assert_eq!(backend_port(&mut c), b1.port());
    let mut c = with_attrs(&ferry, "acc1:app", "secret", &[("account", "acc2")]).unwrap();
    assert_eq!(backend_port(&mut c), b1.port());
    // The tenant an attribute names is the one the user is looked up in.
    denied(
        with_attrs(&ferry, "app", "secret", &[("account", "acc2")]),
        "app + account=acc2",
    );
    let mut c = with_attrs(&ferry, "app", "secret", &[("account", "acc1")]).unwrap();
    assert_eq!(backend_port(&mut c), b1.port());
    let tenants: Vec<String> = ferry_tests::admin::Admin::of(&ferry)
        .sessions()
        .iter()
        .map(|s| s["tenant"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(tenants, ["acc1", "acc1", "acc1"], "{tenants:?}");
}

fn change_user(c: &mut Conn, user: &str, pass: &str) -> mysql::Result<()> {
    c.change_user(
        ChangeUserOpts::default()
            .with_user(Some(user.into()))
            .with_pass(Some(pass.into())),
    )
}

#[test]
fn change_user_stays_within_the_tenant() {
    let (ferry, [b1, _, _]) = isolated();
    for (user, pass) in [
        ("acc2:sbtest", "sbtest"),
        // No tenant in the name: looked up in the session's tenant, where it is unknown.
        ("sbtest", "sbtest"),
        ("root", "111"),
        ("acc1:acc2:sbtest", "sbtest"),
    ] {
        let mut c = ferry.connect("acc1:app", "secret").unwrap();
        let err = change_user(&mut c, user, pass).expect_err(user);
        assert!(
            matches!(&err, mysql::Error::MySqlError(e) if e.code == 1045 || e.code == 1105),
            "{user}: {err:?}"
        );
    }
    // Within the tenant it works, and the session stays on the tenant's backend.
    let mut c = ferry.connect("acc1:app", "secret").unwrap();
    change_user(&mut c, "app", "secret").expect("same tenant, same user");
    assert_eq!(backend_port(&mut c), b1.port());
    let mut c = with_attrs(&ferry, "app", "secret", &[("account", "acc1")]).unwrap();
    change_user(&mut c, "acc1:app", "secret").expect("the tenant named explicitly");
    assert_eq!(backend_port(&mut c), b1.port());
}

#[test]
fn kill_does_not_cross_tenants() {
    let (ferry, _) = isolated();
    let mut victim = ferry.connect("acc2:sbtest", "sbtest").unwrap();
    let mut killer = ferry.connect("acc1:app", "secret").unwrap();
    let victim_id = victim.connection_id();
    let victim_thread: u32 = victim
        .query_first("SELECT CONNECTION_ID()")
        .unwrap()
        .unwrap();
    let own_thread: u32 = killer
        .query_first("SELECT CONNECTION_ID()")
        .unwrap()
        .unwrap();
    // The victim runs a statement while the other tenant tries to kill it.
    let running = std::thread::spawn(move || {
        let slept: Option<u32> = victim.query_first("SELECT SLEEP(2)").unwrap();
        (victim, slept)
    });
    std::thread::sleep(Duration::from_millis(300));
    // (Two servers may hand out the same thread id: never aim at the killer itself.)
    let ids = [victim_id, victim_thread];
    for id in ids.into_iter().filter(|id| *id != own_thread) {
        for kill in ["KILL", "KILL QUERY", "KILL CONNECTION"] {
            match killer.query_drop(format!("{kill} {id}")) {
                // 1094 today; 1095 "not owner of thread" once KILL says so.
                Err(mysql::Error::MySqlError(e)) => {
                    assert!(e.code == 1094 || e.code == 1095, "{kill} {id}: {e:?}")
                }
                other => panic!("{kill} {id} of another tenant's session: {other:?}"),
            }
        }
    }
    let (mut victim, slept) = running.join().unwrap();
    assert_eq!(slept, Some(0), "the statement ran to its end");
    let one: Option<u32> = victim.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1));
}

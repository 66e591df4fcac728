//! Which stored credential a login is checked against.

use ferry_core::auth::StoredCredential;
use ferry_core::config::{Config, UserConfig};
use ferry_core::users::UserDirectory;

fn cred(password: &str) -> StoredCredential {
    StoredCredential::from_password(password)
}

fn user(tenant: Option<&str>, name: &str, password: &str) -> UserConfig {
    UserConfig {
        tenant: tenant.map(str::to_owned),
        any_tenant: false,
        user: name.to_owned(),
        password: Some(password.to_owned()),
        password_hash: None,
    }
}

/// `app` for any tenant with "shared", and for acc1 with "acc1-only"; `solo` only for acc2.
fn directory() -> UserDirectory {
    let mut dir = UserDirectory::new();
    dir.insert(None, "app".into(), cred("shared"));
    dir.insert(Some("acc1".into()), "app".into(), cred("acc1-only"));
    dir.insert(Some("acc2".into()), "solo".into(), cred("solo"));
    dir
}

#[test]
fn an_entry_for_exactly_this_tenant_wins() {
    assert_eq!(
        directory().lookup(Some("acc1"), "app"),
        Some(&cred("acc1-only"))
    );
}

#[test]
fn an_entry_without_tenant_serves_no_tenant_by_default() {
    assert_eq!(directory().lookup(Some("acc9"), "app"), None);
    assert_eq!(directory().lookup(Some("acc2"), "app"), None);
}

#[test]
fn an_any_tenant_entry_serves_every_tenant_without_its_own() {
    let mut dir = directory();
    dir.insert_any_tenant("app".into(), cred("shared"));
    assert_eq!(dir.lookup(Some("acc9"), "app"), Some(&cred("shared")));
    assert_eq!(dir.lookup(None, "app"), Some(&cred("shared")));
    assert_eq!(dir.lookup(Some("acc1"), "app"), Some(&cred("acc1-only")));
    assert_eq!(dir.len(), 3);
}

#[test]
fn any_tenant_comes_from_the_config() {
    let config = Config::parse(
        r#"(
    listen: "127.0.0.1:6009",
    admin_listen: "127.0.0.1:6010",
    users: [(user: "root", password: "111", any_tenant: true), (user: "app", password: "x")],
)"#,
    )
    .unwrap();
    let dir = UserDirectory::from_config(&config.users).unwrap();
    assert_eq!(dir.lookup(Some("acc7"), "root"), Some(&cred("111")));
    assert_eq!(dir.lookup(Some("acc7"), "app"), None);
    assert_eq!(dir.lookup(None, "app"), Some(&cred("x")));
}

#[test]
fn any_tenant_with_a_tenant_is_rejected() {
    let err = Config::parse(
        r#"(
    listen: "127.0.0.1:6009",
    admin_listen: "127.0.0.1:6010",
    users: [(tenant: "acc1", user: "root", password: "111", any_tenant: true)],
)"#,
    )
    .unwrap_err();
    assert!(err.message.contains("any_tenant"), "{err}");
}

#[test]
fn an_entry_without_tenant_serves_a_login_without_tenant() {
    assert_eq!(directory().lookup(None, "app"), Some(&cred("shared")));
}

#[test]
fn a_tenant_entry_does_not_serve_another_tenant() {
    assert_eq!(directory().lookup(Some("acc1"), "solo"), None);
}

#[test]
fn a_tenant_entry_does_not_serve_a_login_without_tenant() {
    assert_eq!(directory().lookup(None, "solo"), None);
}

#[test]
fn an_unknown_user_is_not_found() {
    assert_eq!(directory().lookup(Some("acc1"), "nobody"), None);
    assert_eq!(directory().lookup(None, "nobody"), None);
}

#[test]
fn user_names_are_case_sensitive() {
    assert_eq!(directory().lookup(None, "APP"), None);
}

#[test]
fn insert_replaces_an_entry() {
    let mut dir = directory();
    dir.insert(Some("acc1".into()), "app".into(), cred("new"));
    assert_eq!(dir.lookup(Some("acc1"), "app"), Some(&cred("new")));
    assert_eq!(dir.len(), 3);
}

#[test]
fn len_counts_tenant_user_pairs() {
    assert_eq!(directory().len(), 3);
    assert!(!directory().is_empty());
    assert!(UserDirectory::new().is_empty());
    assert_eq!(UserDirectory::new().len(), 0);
}

#[test]
fn from_config_holds_the_example_users() {
    let config = Config::parse(
        r#"(
    listen: "127.0.0.1:6009",
    admin_listen: "127.0.0.1:6010",
    users: [
        (user: "root", password: "111"),
        (tenant: "acc1", user: "app", password_hash: "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"),
    ],
)"#,
    )
    .unwrap();
    let dir = UserDirectory::from_config(&config.users).unwrap();
    assert_eq!(dir.len(), 2);
    assert_eq!(dir.lookup(None, "root"), Some(&cred("111")));
    assert_eq!(dir.lookup(Some("acc7"), "root"), None);
    assert_eq!(dir.lookup(Some("acc1"), "app"), Some(&cred("secret")));
    assert_eq!(dir.lookup(None, "app"), None);
}

#[test]
fn from_config_rejects_a_duplicate_tenant_user() {
    let users = [
        user(Some("acc1"), "app", "1"),
        user(None, "app", "2"),
        user(Some("acc1"), "app", "3"),
    ];
    let err = UserDirectory::from_config(&users).unwrap_err();
    assert_eq!(err.message, "user 'acc1:app' is configured twice");
}

#[test]
fn from_config_rejects_a_bad_credential() {
    let mut bad = user(None, "app", "");
    bad.password_hash = Some("*00".into());
    let err = UserDirectory::from_config(&[bad]).unwrap_err();
    assert!(
        err.message.contains("both password and password_hash"),
        "{err}"
    );
}

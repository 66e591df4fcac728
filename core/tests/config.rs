//! The RON config: the example in the contract, defaults, and every rejection.

use ferry_core::auth::{StoredCredential, StoredHash};
use ferry_core::config::{
    BackendConfig, Config, ConfigError, RebalanceConfig, UnverifiedLogins, UserConfig, WorkState,
    DEFAULT_MAX_PACKET_SIZE,
};
use ferry_core::labels::Labels;
use ferry_core::limits::LimitsConfig;

/// The example every consumer of the contract relies on, verbatim.
const EXAMPLE: &str = r#"(
    listen: "127.0.0.1:6009",
    admin_listen: "127.0.0.1:6010",
    users: [
        (user: "root", password: "111"),
        (tenant: "acc1", user: "app", password_hash: "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"),
    ],
    backends: [
        (id: "cn1", addr: "127.0.0.1:3307"),
        (id: "cn2", addr: "127.0.0.1:3308", labels: {"account": "acc1"}),
        (id: "cn3", addr: "127.0.0.1:3309", labels: {"account": "acc1", "region": "eu-*"}, state: Draining),
    ],
)
"#;

const MINIMAL_HEAD: &str = r#"(
    listen: "127.0.0.1:6009",
    admin_listen: "127.0.0.1:6010","#;

/// A minimal config with `body` spliced in; its first line of `body` is line 4.
fn with(body: &str) -> String {
    format!("{MINIMAL_HEAD}\n{body}\n)\n")
}

fn reject(text: &str) -> ConfigError {
    Config::parse(text).expect_err("config should be rejected")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().copied().collect()
}

#[test]
fn the_contract_example_parses_to_exactly_this() {
    let config = Config::parse(EXAMPLE).unwrap();
    let expected = Config {
        listen: "127.0.0.1:6009".parse().unwrap(),
        admin_listen: "127.0.0.1:6010".parse().unwrap(),
        users: vec![
            UserConfig {
                tenant: None,
                any_tenant: false,
                user: "root".into(),
                password: Some("111".into()),
                password_hash: None,
            },
            UserConfig {
                tenant: Some("acc1".into()),
                any_tenant: false,
                user: "app".into(),
                password: None,
                password_hash: Some("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7".into()),
            },
        ],
        backends: vec![
            BackendConfig {
                id: "cn1".into(),
                addr: "127.0.0.1:3307".parse().unwrap(),
                labels: Labels::new(),
                state: WorkState::Working,
                compress_backend: true,
                tls: None,
                proxy_protocol: false,
            },
            BackendConfig {
                id: "cn2".into(),
                addr: "127.0.0.1:3308".parse().unwrap(),
                labels: labels(&[("account", "acc1")]),
                state: WorkState::Working,
                compress_backend: true,
                tls: None,
                proxy_protocol: false,
            },
            BackendConfig {
                id: "cn3".into(),
                addr: "127.0.0.1:3309".parse().unwrap(),
                labels: labels(&[("account", "acc1"), ("region", "eu-*")]),
                state: WorkState::Draining,
                compress_backend: true,
                tls: None,
                proxy_protocol: false,
            },
        ],
        server_version: None,
        login_timeout_ms: 10_000,
        backend_timeout_ms: 5_000,
        max_packet_size: 64 * 1024 * 1024,
        health: Default::default(),
        shutdown_grace_ms: 30_000,
        user_source: None,
        worker_threads: None,
        rebalance: RebalanceConfig {
            interval_ms: 10_000,
            tolerance: 0.3,
            moves_per_second: 50,
            cooldown_ms: 30_000,
        },
        drain_timeout_ms: 60_000,
        migration_backoff_ms: 5_000,
        unverified_logins: UnverifiedLogins::Backend,
        tls: None,
        limits: LimitsConfig::default(),
        admin_token: None,
        admin_token_file: None,
        proxy_protocol: None,
    };
    assert_eq!(config, expected);
}

/// The first ```ron block of the README: what operators copy.
fn readme_example() -> String {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```ron\n")
        .expect("the README has a ```ron block")
        + "```ron\n".len();
    let len = readme[start..].find("```").expect("the ```ron block ends");
    readme[start..start + len].to_owned()
}

#[test]
fn the_readme_example_still_parses_with_every_default() {
    let config = Config::parse(&readme_example()).unwrap();
    assert_eq!(config, Config::parse(EXAMPLE).unwrap());
    assert_eq!(config.rebalance, RebalanceConfig::default());
    assert!(config.rebalance.enabled());
    assert_eq!(config.drain_timeout().as_millis(), 60_000);
    assert_eq!(config.migration_backoff().as_millis(), 5_000);
}

#[test]
fn rebalance_drain_and_backoff_settings_can_be_given() {
    let config = Config::parse(&with(
        "    rebalance: (interval_ms: 2000, tolerance: 0.5, moves_per_second: 5, cooldown_ms: 1000),
    drain_timeout_ms: 0,
    migration_backoff_ms: 250,",
    ))
    .unwrap();
    assert_eq!(
        config.rebalance,
        RebalanceConfig {
            interval_ms: 2000,
            tolerance: 0.5,
            moves_per_second: 5,
            cooldown_ms: 1000
        }
    );
    assert_eq!(config.rebalance.interval().as_millis(), 2000);
    assert_eq!(config.rebalance.cooldown().as_millis(), 1000);
    assert_eq!(config.drain_timeout_ms, 0);
    assert_eq!(config.migration_backoff().as_millis(), 250);
    assert_eq!(Config::parse(&config.to_ron()), Ok(config));
}

#[test]
fn every_rebalance_field_is_optional_and_zero_interval_disables_it() {
    let config = Config::parse(&with("rebalance: (interval_ms: 0),")).unwrap();
    assert_eq!(
        config.rebalance,
        RebalanceConfig {
            interval_ms: 0,
            ..RebalanceConfig::default()
        }
    );
    assert!(!config.rebalance.enabled());
    let tolerance_only = Config::parse(&with("rebalance: (tolerance: 0),")).unwrap();
    assert_eq!(tolerance_only.rebalance.tolerance, 0.0);
    assert_eq!(tolerance_only.rebalance.moves_per_second, 50);
}

#[test]
fn an_unknown_rebalance_field_is_named_with_its_line() {
    let err = reject(&with("rebalance: (intervall_ms: 5),"));
    assert_eq!(err.line, 4, "{err}");
    assert!(err.message.contains("intervall_ms"), "{err}");
}

#[test]
fn a_bad_rebalance_tolerance_or_pace_is_rejected_at_its_line() {
    let negative = reject(&with(
        "rebalance: (\n        interval_ms: 1000,\n        tolerance: -0.1,\n    ),",
    ));
    assert_eq!(
        negative.to_string(),
        "line 6, column 9: rebalance tolerance must be a finite number of at least 0 \
         (0.3 = 30 % above the average), got -0.1"
    );
    for bad in ["NaN", "inf"] {
        let err = reject(&with(&format!("rebalance: (tolerance: {bad}),")));
        assert!(err.message.contains("finite"), "{bad}: {err}");
        assert_eq!((err.line, err.column), (4, 13), "{bad}: {err}");
    }
    let zero = reject(&with("rebalance: (moves_per_second: 0),"));
    assert_eq!(
        zero.to_string(),
        "line 4, column 13: rebalance moves_per_second must be at least 1, got 0 \
         (to stop rebalancing, set interval_ms: 0)"
    );
}

#[test]
fn only_listen_addresses_are_required() {
    let config = Config::parse(&with("")).unwrap();
    assert!(config.users.is_empty() && config.backends.is_empty());
    assert_eq!(config.max_packet_size, DEFAULT_MAX_PACKET_SIZE);
    assert_eq!(config.login_timeout().as_millis(), 10_000);
    assert_eq!(config.backend_timeout().as_millis(), 5_000);
}

#[test]
fn optional_settings_can_be_given() {
    let config = Config::parse(&with(
        r#"server_version: "8.0.36-ferry", login_timeout_ms: 1, backend_timeout_ms: 2, max_packet_size: 1024,"#,
    ))
    .unwrap();
    assert_eq!(config.server_version.as_deref(), Some("8.0.36-ferry"));
    assert_eq!(
        (
            config.login_timeout_ms,
            config.backend_timeout_ms,
            config.max_packet_size
        ),
        (1, 2, 1024)
    );
}

#[test]
fn every_work_state_is_a_bare_identifier() {
    for (name, state) in [
        ("Working", WorkState::Working),
        ("Draining", WorkState::Draining),
        ("Drained", WorkState::Drained),
    ] {
        let text = with(&format!(
            r#"backends: [(id: "b", addr: "10.0.0.1:3306", state: {name})],"#
        ));
        assert_eq!(Config::parse(&text).unwrap().backends[0].state, state);
    }
}

#[test]
fn users_credentials_come_from_password_or_hash() {
    let config = Config::parse(EXAMPLE).unwrap();
    assert_eq!(
        config.users[0].credential(),
        Ok(StoredCredential::from_password("111"))
    );
    assert_eq!(
        config.users[1].credential(),
        Ok(StoredCredential::Native(StoredHash::from_password(
            b"secret"
        )))
    );
}

#[test]
fn an_empty_password_means_no_password() {
    let config = Config::parse(&with(r#"users: [(user: "guest", password: "")],"#)).unwrap();
    assert_eq!(config.users[0].credential(), Ok(StoredCredential::Empty));
}

#[test]
fn to_ron_parses_back_to_the_same_config() {
    let config = Config::parse(EXAMPLE).unwrap();
    assert_eq!(Config::parse(&config.to_ron()), Ok(config));
}

#[test]
fn an_unknown_top_level_field_is_named_with_its_line() {
    let err = reject(&with("listen_port: 6009,"));
    assert_eq!(err.line, 4, "{err}");
    assert!(err.message.contains("listen_port"), "{err}");
}

#[test]
fn an_unknown_user_field_is_named_with_its_line() {
    let err = reject(&with(
        r#"users: [
        (user: "root", pasword: "111"),
    ],"#,
    ));
    assert_eq!(err.line, 5, "{err}");
    assert!(err.message.contains("pasword"), "{err}");
}

#[test]
fn an_unknown_backend_field_is_named_with_its_line() {
    let err = reject(&with(
        r#"backends: [
        (id: "cn1", addr: "127.0.0.1:3307"),
        (id: "cn2", address: "127.0.0.1:3308"),
    ],"#,
    ));
    assert_eq!(err.line, 6, "{err}");
    assert!(err.message.contains("address"), "{err}");
}

#[test]
fn a_missing_listen_address_is_an_error() {
    let err = reject(r#"(admin_listen: "127.0.0.1:6010")"#);
    assert!(err.message.contains("listen"), "{err}");
}

#[test]
fn syntax_and_type_errors_read_like_this() {
    let errors = [
        with(r#"users: [(user: "root", password: "111")"#),
        r#"(listen: "nowhere", admin_listen: "127.0.0.1:6010")"#.to_owned(),
        with(r#"backends: [(id: "b", addr: "10.0.0.1:3306", state: Paused)],"#),
    ]
    .map(|t| reject(&t).to_string())
    .join("\n");
    insta::assert_snapshot!(errors, @r#"
    line 5, column 1: Expected comma
    line 1, column 11: invalid address 'nowhere': expected IP:port, such as "127.0.0.1:3306" (host names are not resolved)
    line 4, column 52: Unexpected variant named `Paused` in enum `WorkState`, expected one of `Working`, `Draining`, or `Drained` instead
    "#);
}

#[test]
fn a_user_with_both_password_and_hash_is_rejected_at_its_line() {
    let err = reject(&with(
        r#"users: [
        (user: "root", password: "111"),
        (user: "app", password: "x", password_hash: "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"),
    ],"#,
    ));
    assert_eq!(
        err.to_string(),
        "line 6, column 10: user 'app' has both password and password_hash; give exactly one"
    );
}

#[test]
fn a_user_without_password_or_hash_is_rejected() {
    let err = reject(&with(r#"users: [(tenant: "acc1", user: "app")],"#));
    assert_eq!(
        err.to_string(),
        "line 4, column 26: user 'acc1:app' has neither password nor password_hash; \
         give exactly one (password: \"\" for no password)"
    );
}

#[test]
fn a_bad_password_hash_is_rejected() {
    let err = reject(&with(
        r#"users: [(user: "app", password_hash: "14E65567ABDB5135D0CFD9A70B3032C179A49EE7")],"#,
    ));
    assert_eq!(
        err.to_string(),
        "line 4, column 10: user 'app': bad password_hash: a password hash must be '*' \
         followed by 40 hex digits, but it does not start with '*'"
    );
}

#[test]
fn a_duplicate_user_is_rejected_at_its_second_entry() {
    let err = reject(&with(
        r#"users: [
        (tenant: "acc1", user: "app", password: "1"),
        (user: "app", password: "2"),
        (tenant: "acc1", user: "app", password: "3"),
    ],"#,
    ));
    assert_eq!(
        err.to_string(),
        "line 7, column 26: user 'acc1:app' is configured twice"
    );
}

#[test]
fn the_same_user_for_different_tenants_is_fine() {
    let text = with(
        r#"users: [
        (tenant: "acc1", user: "app", password: "1"),
        (tenant: "acc2", user: "app", password: "2"),
        (user: "app", password: "3"),
    ],"#,
    );
    assert_eq!(Config::parse(&text).unwrap().users.len(), 3);
}

#[test]
fn an_empty_tenant_or_user_is_rejected() {
    let empty_tenant = reject(&with(
        r#"users: [(tenant: "", user: "app", password: "")],"#,
    ));
    assert!(
        empty_tenant.message.contains("empty tenant"),
        "{empty_tenant}"
    );
    let empty_user = reject(&with(r#"users: [(user: "", password: "")],"#));
    assert_eq!(
        empty_user.to_string(),
        "line 4, column 10: a user has an empty name"
    );
}

#[test]
fn a_tenant_no_login_name_can_express_is_rejected() {
    let err = reject(&with(
        r#"users: [(tenant: "a:b", user: "app", password: "")],"#,
    ));
    assert!(err.message.contains("'a:b'"), "{err}");
}

#[test]
fn a_duplicate_backend_id_is_rejected_at_its_second_entry() {
    let err = reject(&with(
        r#"backends: [
        (id: "cn1", addr: "127.0.0.1:3307"),
        (id: "cn1", addr: "127.0.0.1:3308"),
    ],"#,
    ));
    assert_eq!(
        err.to_string(),
        "line 6, column 10: backend id 'cn1' is used twice"
    );
}

#[test]
fn an_empty_backend_id_is_rejected() {
    let err = reject(&with(r#"backends: [(id: "", addr: "127.0.0.1:3307")],"#));
    assert_eq!(
        err.to_string(),
        "line 4, column 13: backend at 127.0.0.1:3307 has an empty id"
    );
}

#[test]
fn a_tiny_max_packet_size_is_rejected() {
    let err = reject(&with("    max_packet_size: 1023,"));
    assert_eq!(
        err.to_string(),
        "line 4, column 5: max_packet_size must be at least 1024 bytes, got 1023"
    );
}

#[test]
fn listen_and_admin_listen_must_differ() {
    let err = reject(r#"(listen: "127.0.0.1:6009", admin_listen: "127.0.0.1:6009")"#);
    assert!(err.message.contains("both 127.0.0.1:6009"), "{err}");
    let ephemeral = r#"(listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0")"#;
    assert!(Config::parse(ephemeral).is_ok());
}

#[test]
fn validate_checks_a_config_built_in_code_without_positions() {
    let mut config = Config::parse(EXAMPLE).unwrap();
    assert_eq!(config.validate(), Ok(()));
    config.backends[1].id = "cn1".into();
    assert_eq!(
        config.validate(),
        Err(ConfigError {
            line: 0,
            column: 0,
            message: "backend id 'cn1' is used twice".into()
        })
    );
}

#[test]
fn limits_have_safe_defaults() {
    let limits = Config::parse(EXAMPLE).unwrap().limits;
    assert_eq!(limits.max_connections, 4096);
    assert_eq!(limits.max_connections_per_tenant, 1024);
    assert_eq!(limits.max_failed_logins, 10);
    assert_eq!(limits.failed_login_window_ms, 60_000);
    assert_eq!(limits.failed_login_block_ms, 300_000);
    assert_eq!(limits.max_tracked_hosts, 10_000);
    assert_eq!(limits.idle_timeout_ms, None);
    assert_eq!(limits.write_timeout_ms, 60_000);
    assert_eq!(limits.max_session_memory, 32 << 20);
}

#[test]
fn limits_can_be_given_one_by_one() {
    let config = Config::parse(&with(
        "    limits: (max_connections: 10, idle_timeout_ms: 5000, max_session_memory: 2097152),",
    ))
    .unwrap();
    assert_eq!(config.limits.max_connections, 10);
    assert_eq!(config.limits.idle_timeout_ms, Some(5000));
    assert_eq!(config.limits.max_connections_per_tenant, 1024);
    let session = config.limits.session();
    assert_eq!(session.memory.held, 65536);
    assert_eq!(session.idle_timeout.unwrap().as_millis(), 5000);
}

#[test]
fn bad_limits_are_refused_with_their_place() {
    for (field, wanted) in [
        ("limits: (max_connections: 0),", "max_connections"),
        ("limits: (max_session_memory: 100),", "max_session_memory"),
        ("limits: (idle_timeout_ms: 0),", "idle_timeout_ms"),
        ("limits: (bogus: 1),", "bogus"),
    ] {
        let err = Config::parse(&with(&format!("    {field}"))).unwrap_err();
        assert!(err.message.contains(wanted), "{field}: {err}");
        assert!(err.line > 0, "{field}: {err}");
    }
}

#[test]
fn a_non_loopback_admin_listen_needs_a_token() {
    let open = EXAMPLE.replace("127.0.0.1:6010", "0.0.0.0:6010");
    let err = Config::parse(&open).unwrap_err();
    assert!(err.message.contains("admin_token"), "{err}");
    assert!(err.message.contains("0.0.0.0:6010"), "{err}");
    let with_token = open.replacen("users:", "admin_token: \"s3cret-token\",\n    users:", 1);
    let config = Config::parse(&with_token).unwrap();
    assert_eq!(
        config.admin_token.as_ref().map(|t| t.0.as_str()),
        Some("s3cret-token")
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cret-token"), "{debug}");
    assert!(debug.contains("***"), "{debug}");
    let with_file = open.replacen(
        "users:",
        "admin_token_file: \"/etc/ferry/token\",\n    users:",
        1,
    );
    assert!(Config::parse(&with_file).is_ok());
    let both = with_token.replacen("users:", "admin_token_file: \"/x\",\n    users:", 1);
    assert!(Config::parse(&both).is_err());
}

#[test]
fn debug_output_shows_no_password() {
    let config = Config::parse(&with(
        r#"    users: [(user: "a", password: "pw-in-clear-1"), (user: "b", password_hash: "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7")],
    user_source: (backend: "cn1", user: "ferry", password: "pw-in-clear-2"),"#,
    ))
    .unwrap();
    let debug = format!("{config:?}");
    for secret in [
        "pw-in-clear-1",
        "pw-in-clear-2",
        "14E65567ABDB5135D0CFD9A70B3032C179A49EE7",
    ] {
        assert!(!debug.contains(secret), "{debug}");
    }
    assert!(debug.contains("\"a\""), "{debug}");
}

#[test]
fn proxy_protocol_on_the_listener_and_per_backend() {
    let config = Config::parse(&with(
        r#"proxy_protocol: (trusted: ["10.0.0.0/8", "::1", "192.168.1.7"]),
    backends: [(id: "cn1", addr: "127.0.0.1:3307", proxy_protocol: true)],"#,
    ))
    .unwrap();
    let pp = config.proxy_protocol.as_ref().unwrap();
    assert!(pp.trusts("10.200.0.1".parse().unwrap()));
    assert!(pp.trusts("::1".parse().unwrap()));
    assert!(pp.trusts("192.168.1.7".parse().unwrap()));
    assert!(!pp.trusts("192.168.1.8".parse().unwrap()));
    assert!(!pp.trusts("127.0.0.1".parse().unwrap()));
    assert!(config.backends[0].proxy_protocol);
    assert_eq!(Config::parse(&config.to_ron()).unwrap(), config);
    // Off unless asked for.
    let plain =
        Config::parse(&with(r#"backends: [(id: "cn1", addr: "127.0.0.1:3307")],"#)).unwrap();
    assert_eq!(plain.proxy_protocol, None);
    assert!(!plain.backends[0].proxy_protocol);
}

#[test]
fn a_bad_trusted_network_is_named_with_its_line() {
    let err = reject(&with(r#"proxy_protocol: (trusted: ["10.0.0.0/33"]),"#));
    assert_eq!(err.line, 4, "{err}");
    assert!(
        err.message.contains("'10.0.0.0/33' is not a network"),
        "{err}"
    );
}

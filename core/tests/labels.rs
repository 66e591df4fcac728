//! User names, connection-attribute labels and backend label globs.

use ferry_core::labels::{
    glob_match, labels_from_attrs, parse_login_name, BadLabel, LabelError, Labels, LoginName,
    ACCOUNT,
};
use quickcheck::{Arbitrary, Gen};
use quickcheck_macros::quickcheck;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().copied().collect()
}

fn login(tenant: Option<&str>, user: &str, pairs: &[(&str, &str)]) -> LoginName {
    LoginName {
        tenant: tenant.map(str::to_owned),
        user: user.to_owned(),
        labels: labels(pairs),
    }
}

fn parse(raw: &str) -> LoginName {
    parse_login_name(raw).unwrap_or_else(|e| panic!("{raw:?} should parse: {e}"))
}

fn error(raw: &str) -> String {
    parse_login_name(raw)
        .expect_err("should not parse")
        .to_string()
}

// --- user and tenant ---

#[test]
fn a_plain_name_is_a_user_without_tenant_or_labels() {
    assert_eq!(parse("root"), login(None, "root", &[]));
}

#[test]
fn colon_separates_the_tenant() {
    assert_eq!(parse("acc1:app"), login(Some("acc1"), "app", &[]));
}

#[test]
fn hash_separates_the_tenant_too() {
    assert_eq!(parse("acc1#app"), login(Some("acc1"), "app", &[]));
}

#[test]
fn only_the_first_separator_splits_the_tenant() {
    assert_eq!(parse("acc1#app:x"), login(Some("acc1"), "app:x", &[]));
    assert_eq!(parse("acc1:app#x"), login(Some("acc1"), "app#x", &[]));
}

#[test]
fn a_colon_inside_the_labels_is_not_a_tenant_separator() {
    assert_eq!(
        parse("app?region:eu"),
        login(None, "app", &[("region", "eu")])
    );
}

#[test]
fn an_empty_user_is_an_error() {
    assert_eq!(
        parse_login_name("acc1:"),
        Err(LabelError::EmptyUser {
            name: "acc1:".into()
        })
    );
    assert!(matches!(
        parse_login_name(""),
        Err(LabelError::EmptyUser { .. })
    ));
    assert!(matches!(
        parse_login_name("?a=b"),
        Err(LabelError::EmptyUser { .. })
    ));
}

#[test]
fn an_empty_tenant_is_an_error() {
    assert_eq!(
        parse_login_name(":root"),
        Err(LabelError::EmptyTenant {
            name: ":root".into()
        })
    );
    assert!(matches!(
        parse_login_name("#root"),
        Err(LabelError::EmptyTenant { .. })
    ));
}

// --- labels in the name ---

#[test]
fn labels_follow_a_question_mark() {
    assert_eq!(
        parse("acc1:app?region=eu,zone=a"),
        login(Some("acc1"), "app", &[("region", "eu"), ("zone", "a")])
    );
}

#[test]
fn key_and_value_may_be_separated_by_equals_colon_or_percent_3a() {
    let expected = login(
        None,
        "app",
        &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")],
    );
    assert_eq!(parse("app?a=1,b:2,c%3A3,d%3a4"), expected);
}

#[test]
fn the_first_separator_in_a_pair_wins() {
    assert_eq!(
        parse("app?url=host:3306"),
        login(None, "app", &[("url", "host:3306")])
    );
    assert_eq!(parse("app?k%3Av=w"), login(None, "app", &[("k", "v=w")]));
}

#[test]
fn percent_3a_is_literal_outside_the_labels() {
    assert_eq!(parse("acc1%3Aapp"), login(None, "acc1%3Aapp", &[]));
}

#[test]
fn whitespace_around_keys_and_values_is_trimmed() {
    assert_eq!(
        parse("app? region = eu , zone=a b "),
        login(None, "app", &[("region", "eu"), ("zone", "a b")])
    );
}

#[test]
fn a_pair_without_separator_is_an_error() {
    assert_eq!(
        parse_login_name("acc1:app?region"),
        Err(LabelError::BadLabel {
            name: "acc1:app?region".into(),
            pair: "region".into(),
            kind: BadLabel::NoSeparator
        })
    );
}

#[test]
fn an_empty_key_is_an_error() {
    assert!(matches!(
        parse_login_name("app? =eu"),
        Err(LabelError::BadLabel {
            kind: BadLabel::EmptyKey,
            ..
        })
    ));
}

#[test]
fn an_empty_value_is_an_error() {
    assert!(matches!(
        parse_login_name("app?region="),
        Err(LabelError::BadLabel {
            kind: BadLabel::EmptyValue,
            ..
        })
    ));
}

#[test]
fn an_empty_label_list_or_pair_is_an_error() {
    assert!(matches!(
        parse_login_name("app?"),
        Err(LabelError::BadLabel {
            kind: BadLabel::NoSeparator,
            ..
        })
    ));
    assert!(matches!(
        parse_login_name("app?a=1,,b=2"),
        Err(LabelError::BadLabel {
            kind: BadLabel::NoSeparator,
            ..
        })
    ));
}

#[test]
fn a_key_given_twice_is_an_error() {
    assert_eq!(
        parse_login_name("app?region=eu,region = us"),
        Err(LabelError::DuplicateKey {
            name: "app?region=eu,region = us".into(),
            key: "region".into()
        })
    );
}

// --- the account label is the tenant ---

#[test]
fn an_account_label_names_the_tenant() {
    assert_eq!(
        parse("app?account=acc1,region=eu"),
        login(Some("acc1"), "app", &[("region", "eu")])
    );
}

#[test]
fn the_tenant_in_the_name_beats_an_account_label() {
    assert_eq!(
        parse("acc1:app?account=acc2"),
        login(Some("acc1"), "app", &[])
    );
}

#[test]
fn routing_labels_carry_the_tenant_as_account() {
    assert_eq!(
        parse("acc1:app?region=eu").routing_labels(),
        labels(&[(ACCOUNT, "acc1"), ("region", "eu")])
    );
    assert_eq!(parse("app").routing_labels(), Labels::new());
}

// --- error messages ---

#[test]
fn errors_quote_the_name_and_the_bad_part() {
    let messages = [
        ":root",
        "acc1:",
        "acc1:app?region",
        "app? =eu",
        "app?region=",
        "app?region=eu,region=us",
    ]
    .map(error)
    .join("\n");
    insta::assert_snapshot!(messages, @r"
    bad user name ':root': the tenant before ':' or '#' is empty
    bad user name 'acc1:': the user part is empty
    bad label syntax in user name 'acc1:app?region': expected key=value, got 'region'
    bad label syntax in user name 'app? =eu': empty key in '=eu'
    bad label syntax in user name 'app?region=': empty value in 'region='
    bad label syntax in user name 'app?region=eu,region=us': label 'region' is given more than once
    ");
}

// --- connection attributes ---

#[test]
fn attributes_become_labels_except_the_standard_ones() {
    let attrs = [
        ("_client_name", "libmysql"),
        ("_pid", "42"),
        ("program_name", "mysql"),
        ("os_user", "alice"),
        ("os_sudouser", "root"),
        ("region", "eu"),
        ("zone", "a"),
    ];
    assert_eq!(
        labels_from_attrs(attrs),
        labels(&[("region", "eu"), ("zone", "a")])
    );
}

#[test]
fn labels_in_the_name_beat_attribute_labels() {
    let name = parse("app?region=eu").with_attr_labels(labels(&[("region", "us"), ("zone", "a")]));
    assert_eq!(name, login(None, "app", &[("region", "eu"), ("zone", "a")]));
}

#[test]
fn an_account_attribute_names_the_tenant_only_if_the_name_does_not() {
    let attrs = labels(&[(ACCOUNT, "acc2")]);
    assert_eq!(
        parse("app")
            .with_attr_labels(attrs.clone())
            .tenant
            .as_deref(),
        Some("acc2")
    );
    assert_eq!(
        parse("acc1:app").with_attr_labels(attrs).tenant.as_deref(),
        Some("acc1")
    );
}

#[test]
fn labels_display_for_error_messages() {
    assert_eq!(Labels::new().to_string(), "{}");
    assert_eq!(
        labels(&[("zone", "a"), ("region", "eu")]).to_string(),
        "{region=eu, zone=a}"
    );
}

// --- glob ---

#[test]
fn glob_star_matches_any_run_and_question_mark_one_character() {
    assert!(glob_match("eu-*", "eu-west"));
    assert!(glob_match("eu-*", "eu-"));
    assert!(!glob_match("eu-*", "us-east"));
    assert!(glob_match("*", ""));
    assert!(glob_match("a?c", "abc"));
    assert!(glob_match("a?c", "aéc"));
    assert!(!glob_match("a?c", "ac"));
    assert!(glob_match("*-*-1", "eu-west-1"));
    assert!(!glob_match("*-*-1", "eu-west-2"));
    assert!(glob_match("acc1", "acc1"));
    assert!(!glob_match("acc1", "acc10"));
}

/// The obvious exponential definition, as the reference.
fn reference_glob(pattern: &[char], value: &[char]) -> bool {
    match pattern.split_first() {
        None => value.is_empty(),
        Some(('*', rest)) => (0..=value.len()).any(|i| reference_glob(rest, &value[i..])),
        Some((&c, rest)) => match value.split_first() {
            Some((&v, vrest)) => (c == '?' || c == v) && reference_glob(rest, vrest),
            None => false,
        },
    }
}

/// A short string over a tiny alphabet, so that matches are common.
#[derive(Clone, Debug)]
struct Small(String);

impl Arbitrary for Small {
    fn arbitrary(g: &mut Gen) -> Self {
        let len = usize::arbitrary(g) % 7;
        Small(
            (0..len)
                .map(|_| *g.choose(&['a', 'b', '*', '?', 'é']).unwrap())
                .collect(),
        )
    }
}

#[quickcheck]
fn glob_agrees_with_the_reference(pattern: Small, value: Small) -> bool {
    let value = value.0.replace(['*', '?'], "a");
    let p: Vec<char> = pattern.0.chars().collect();
    let v: Vec<char> = value.chars().collect();
    glob_match(&pattern.0, &value) == reference_glob(&p, &v)
}

#[quickcheck]
fn glob_agrees_with_the_reference_on_any_text(pattern: String, value: String) -> bool {
    let p: Vec<char> = pattern.chars().take(12).collect();
    let v: Vec<char> = value.chars().take(12).collect();
    glob_match(&p.iter().collect::<String>(), &v.iter().collect::<String>())
        == reference_glob(&p, &v)
}

#[quickcheck]
fn a_glob_without_wildcards_matches_only_itself(a: String, b: String) -> bool {
    let a = a.replace(['*', '?'], "");
    glob_match(&a, &a) && glob_match(&a, &b) == (a == b)
}

// --- round trip ---

/// A LoginName whose parts avoid the separators where the grammar splits on them.
#[derive(Clone, Debug)]
struct Valid(LoginName);

fn word(g: &mut Gen, alphabet: &[char]) -> String {
    let len = 1 + usize::arbitrary(g) % 6;
    (0..len).map(|_| *g.choose(alphabet).unwrap()).collect()
}

fn trimmed_word(g: &mut Gen, alphabet: &[char]) -> String {
    let w = word(g, alphabet);
    match w.trim() {
        "" => "x".to_owned(),
        t => t.to_owned(),
    }
}

impl Arbitrary for Valid {
    fn arbitrary(g: &mut Gen) -> Self {
        const PLAIN: &[char] = &['a', 'Z', '0', '_', '-', '.', ' ', 'é', '%', '3', 'A'];
        let tenant = bool::arbitrary(g).then(|| word(g, PLAIN));
        let user_alphabet: Vec<char> = match tenant {
            // After a tenant the first separator is already taken.
            Some(_) => PLAIN.iter().copied().chain([':', '#']).collect(),
            None => PLAIN.to_vec(),
        };
        let user = word(g, &user_alphabet);
        let key_alphabet = ['k', 'e', 'y', '_', '.', ' ', '#', '?'];
        let value_alphabet: Vec<char> = PLAIN
            .iter()
            .copied()
            .chain([':', '=', '?', '#', '*'])
            .collect();
        let mut labels = Labels::new();
        for _ in 0..usize::arbitrary(g) % 4 {
            let key = trimmed_word(g, &key_alphabet);
            labels.insert(key, trimmed_word(g, &value_alphabet));
        }
        Valid(LoginName {
            tenant,
            user,
            labels,
        })
    }
}

#[quickcheck]
fn a_formatted_login_name_parses_back_to_itself(name: Valid) -> bool {
    parse_login_name(&name.0.to_string()) == Ok(name.0)
}

#[quickcheck]
fn parse_never_panics(raw: String) -> bool {
    let _ = parse_login_name(&raw);
    true
}

#[quickcheck]
fn parse_never_panics_on_separator_soup(parts: Vec<Small>) -> bool {
    let raw: String = parts
        .iter()
        .map(|s| s.0.as_str())
        .collect::<Vec<_>>()
        .join("?:#=,%3a%3A%");
    let _ = parse_login_name(&raw);
    true
}

#[quickcheck]
fn parsed_labels_never_hold_account(raw: String) -> bool {
    parse_login_name(&raw).map_or(true, |n| n.labels.get(ACCOUNT).is_none())
}

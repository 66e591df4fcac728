//! mysql_native_password: what ferry stores, verifies and replays.

use ferry_core::auth::{
    salt_bytes, scramble_native, AuthError, Secret, StoredCredential, StoredHash, NATIVE_PASSWORD,
};
use quickcheck::TestResult;
use quickcheck_macros::quickcheck;

const SALT: &[u8; 20] = b"0123456789abcdefghij";
const OTHER_SALT: &[u8; 20] = b"ABCDEFGHIJ!@#$%^&*()";

fn reference_scramble(salt: &[u8], password: &[u8]) -> Vec<u8> {
    mysql_common::scramble::scramble_native(salt, password)
        .map(|s| s.to_vec())
        .unwrap_or_default()
}

#[test]
fn the_plugin_name_is_the_one_mysql_uses() {
    assert_eq!(NATIVE_PASSWORD, "mysql_native_password");
}

#[test]
fn stored_hash_of_secret_matches_mysql() {
    assert_eq!(
        StoredHash::from_password(b"secret").to_mysql_hex(),
        "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
    );
}

#[test]
fn stored_hash_of_111_matches_mysql() {
    // SELECT PASSWORD('111') on MySQL 5.7.
    assert_eq!(
        StoredHash::from_password(b"111").to_mysql_hex(),
        "*832EB84CB764129D05D498ED9CA7E5CE9B8F83EB"
    );
}

#[test]
fn parse_accepts_mysql_form_in_any_case() {
    let upper = StoredHash::parse("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7").unwrap();
    let lower = StoredHash::parse("*14e65567abdb5135d0cfd9a70b3032c179a49ee7").unwrap();
    assert_eq!(upper, StoredHash::from_password(b"secret"));
    assert_eq!(lower, upper);
}

#[test]
fn parse_rejects_a_hash_without_star() {
    assert_eq!(
        StoredHash::parse("14E65567ABDB5135D0CFD9A70B3032C179A49EE7"),
        Err(AuthError::HashPrefix)
    );
}

#[test]
fn parse_rejects_a_short_hash() {
    assert_eq!(
        StoredHash::parse("*14E65567"),
        Err(AuthError::HashLength { found: 9 })
    );
}

#[test]
fn parse_rejects_a_non_hex_digit_and_says_where() {
    assert_eq!(
        StoredHash::parse("*14E65567ABDB5135D0CFD9A70B3032C179A49EEZ"),
        Err(AuthError::HashDigit { position: 40 })
    );
}

#[test]
fn parse_errors_read_well_and_do_not_echo_the_hash() {
    let messages: Vec<String> = ["14E6", "*14E6", "*14E65567ABDB5135D0CFD9A70B3032C179A49EEZ"]
        .iter()
        .map(|h| StoredHash::parse(h).unwrap_err().to_string())
        .collect();
    insta::assert_snapshot!(messages.join("\n"), @r"
    a password hash must be '*' followed by 40 hex digits, but it does not start with '*'
    a password hash must be '*' followed by 40 hex digits (41 characters), but it has 5
    a password hash must be '*' followed by 40 hex digits, but character 40 is not a hex digit
    ");
    assert!(messages.iter().all(|m| !m.contains("14E6")));
}

#[test]
fn scramble_matches_mysql_common_for_a_fixed_salt() {
    assert_eq!(
        scramble_native(SALT, b"secret"),
        reference_scramble(SALT, b"secret")
    );
    assert_eq!(scramble_native(SALT, b"secret").len(), 20);
}

#[test]
fn scramble_of_an_empty_password_is_empty() {
    assert!(scramble_native(SALT, b"").is_empty());
}

#[test]
fn salt_loses_a_trailing_nul_and_anything_past_20_bytes() {
    let mut with_nul = SALT.to_vec();
    with_nul.push(0);
    assert_eq!(salt_bytes(&with_nul), SALT);
    assert_eq!(salt_bytes(b"0123456789abcdefghijXYZ"), SALT);
    assert_eq!(salt_bytes(b"short\0"), b"short");
    assert_eq!(
        scramble_native(&with_nul, b"pw"),
        scramble_native(SALT, b"pw")
    );
}

#[test]
fn native_credential_accepts_the_right_scramble_and_recovers_sha1_password() {
    let cred = StoredCredential::from_password("secret");
    let secret = cred.verify(SALT, &scramble_native(SALT, b"secret"));
    assert_eq!(secret, Some(Secret::from_password("secret")));
}

#[test]
fn native_credential_from_a_parsed_hash_verifies_the_password() {
    let cred = StoredCredential::Native(
        StoredHash::parse("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7").unwrap(),
    );
    assert!(cred
        .verify(SALT, &scramble_native(SALT, b"secret"))
        .is_some());
}

#[test]
fn native_credential_rejects_an_empty_response() {
    assert_eq!(
        StoredCredential::from_password("pw").verify(SALT, b""),
        None
    );
}

#[test]
fn native_credential_rejects_a_scramble_for_another_salt() {
    let cred = StoredCredential::from_password("pw");
    assert_eq!(cred.verify(SALT, &scramble_native(OTHER_SALT, b"pw")), None);
}

#[test]
fn native_credential_rejects_a_response_of_the_wrong_length() {
    let cred = StoredCredential::from_password("pw");
    let mut long = scramble_native(SALT, b"pw");
    long.push(0);
    assert_eq!(cred.verify(SALT, &long), None);
    assert_eq!(cred.verify(SALT, &long[..19]), None);
}

#[test]
fn empty_credential_accepts_only_an_empty_response() {
    let cred = StoredCredential::from_password("");
    assert_eq!(cred, StoredCredential::Empty);
    assert_eq!(cred.verify(SALT, b""), Some(Secret::Empty));
    assert_eq!(cred.verify(SALT, &scramble_native(SALT, b"x")), None);
}

#[test]
fn empty_secret_answers_every_salt_with_nothing() {
    assert_eq!(Secret::from_password(""), Secret::Empty);
    assert!(Secret::Empty.respond(SALT).is_empty());
}

#[test]
fn stored_credential_parses_mysql_authentication_strings() {
    assert_eq!(
        StoredCredential::parse_mysql(""),
        Ok(StoredCredential::Empty)
    );
    assert_eq!(
        StoredCredential::parse_mysql("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"),
        Ok(StoredCredential::from_password("secret"))
    );
    assert!(StoredCredential::parse_mysql("secret").is_err());
}

#[test]
fn secret_debug_does_not_print_the_bytes() {
    let secret = Secret::Stage1([0xAB; 20]);
    let printed = format!("{secret:?}");
    assert_eq!(printed, "Secret::Stage1(<redacted>)");
    assert!(!printed.contains("171") && !printed.to_lowercase().contains("ab"));
}

#[quickcheck]
fn scramble_agrees_with_mysql_common(salt: Vec<u8>, password: String) -> bool {
    scramble_native(&salt, password.as_bytes())
        == reference_scramble(salt_bytes(&salt), password.as_bytes())
}

#[quickcheck]
fn a_verified_login_can_answer_any_other_salt(
    password: String,
    salt1: Vec<u8>,
    salt2: Vec<u8>,
) -> bool {
    let cred = StoredCredential::from_password(&password);
    let secret = cred.verify(&salt1, &scramble_native(&salt1, password.as_bytes()));
    secret.map(|s| s.respond(&salt2)) == Some(scramble_native(&salt2, password.as_bytes()))
}

#[quickcheck]
fn a_wrong_password_never_verifies(right: String, wrong: String, salt: Vec<u8>) -> TestResult {
    if right == wrong {
        return TestResult::discard();
    }
    let cred = StoredCredential::from_password(&right);
    TestResult::from_bool(
        cred.verify(&salt, &scramble_native(&salt, wrong.as_bytes()))
            .is_none(),
    )
}

#[quickcheck]
fn hex_form_round_trips(bytes: Vec<u8>) -> bool {
    let hash = StoredHash(std::array::from_fn(|i| bytes.get(i).copied().unwrap_or(0)));
    let hex = hash.to_mysql_hex();
    hex.len() == 41 && StoredHash::parse(&hex) == Ok(hash)
}

#[quickcheck]
fn parse_never_panics(text: String) -> bool {
    let _ = StoredHash::parse(&text);
    true
}

//! `mysql_native_password`: scrambles, stored hashes and credential recovery.
//!
//! ferry terminates authentication. Verifying a client's scramble against the
//! stored `SHA1(SHA1(password))` also recovers `SHA1(password)` (a [`Secret`]),
//! which is all it takes to answer any backend's salt later, on first login and
//! on every migration.

use std::fmt;
use zeroize::Zeroize;

use sha1::{Digest, Sha1};

/// The name of the only authentication plugin ferry speaks.
pub const NATIVE_PASSWORD: &str = "mysql_native_password";

/// Length of a SHA1 digest, and of a `mysql_native_password` salt and response.
pub const SCRAMBLE_LEN: usize = 20;

/// SHA1(SHA1(password)), what mysql.user stores (as "*" + 40 uppercase hex).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StoredHash(pub [u8; 20]);

impl StoredHash {
    /// The stored hash of a clear-text password.
    pub fn from_password(password: &[u8]) -> Self {
        StoredHash(sha1(&sha1(password)))
    }

    /// Parses the `mysql.user` form: `*` followed by 40 hex digits, any case.
    pub fn parse(hex: &str) -> Result<Self, AuthError> {
        let digits = hex.strip_prefix('*').ok_or(AuthError::HashPrefix)?;
        if digits.len() != 2 * SCRAMBLE_LEN {
            return Err(AuthError::HashLength {
                found: hex.chars().count(),
            });
        }
        let mut out = [0u8; 20];
        for (i, pair) in digits.as_bytes().chunks(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(AuthError::HashDigit {
                position: 2 * i + 1,
            })?;
            let lo = hex_value(pair[1]).ok_or(AuthError::HashDigit {
                position: 2 * i + 2,
            })?;
            out[i] = (hi << 4) | lo;
        }
        Ok(StoredHash(out))
    }

    /// The `mysql.user` form: `*` followed by 40 uppercase hex digits.
    pub fn to_mysql_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut s = String::with_capacity(41);
        s.push('*');
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 0x0f)] as char);
        }
        s
    }
}

/// What a user's login is checked against.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StoredCredential {
    /// No password: only an empty auth response logs in.
    Empty,
    /// A `mysql_native_password` hash.
    Native(StoredHash),
}

impl StoredCredential {
    /// The credential for a clear-text password; `""` means no password.
    pub fn from_password(password: &str) -> Self {
        if password.is_empty() {
            StoredCredential::Empty
        } else {
            StoredCredential::Native(StoredHash::from_password(password.as_bytes()))
        }
    }

    /// Parses a `mysql.user.authentication_string`: `""` (no password) or `*HEX`.
    pub fn parse_mysql(stored: &str) -> Result<Self, AuthError> {
        if stored.is_empty() {
            Ok(StoredCredential::Empty)
        } else {
            StoredHash::parse(stored).map(StoredCredential::Native)
        }
    }

    /// Verifies a client's auth response for `salt` (20 bytes); on success returns the secret that can log in anywhere.
    pub fn verify(&self, salt: &[u8], response: &[u8]) -> Option<Secret> {
        match self {
            StoredCredential::Empty => response.is_empty().then_some(Secret::Empty),
            StoredCredential::Native(stored) => {
                let response: &[u8; 20] = response.try_into().ok()?;
                // response = SHA1(pw) XOR SHA1(salt ‖ stored), so XOR-ing again
                // recovers the candidate SHA1(pw); it is genuine exactly when
                // hashing it once more gives the stored hash.
                let stage1 = xor(response, &sha1_concat(salt_bytes(salt), &stored.0));
                constant_time_eq(&sha1(&stage1), &stored.0).then_some(Secret::Stage1(stage1))
            }
        }
    }
}

/// The credential recovered at login: enough to answer any server's salt. Debug does not print the bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The user has no password.
    Empty,
    /// SHA1(password).
    Stage1([u8; 20]),
}

impl Secret {
    /// The secret for a clear-text password; `""` means no password.
    pub fn from_password(password: &str) -> Self {
        if password.is_empty() {
            Secret::Empty
        } else {
            Secret::Stage1(sha1(password.as_bytes()))
        }
    }

    /// The mysql_native_password response to `salt` (empty for Empty).
    pub fn respond(&self, salt: &[u8]) -> Vec<u8> {
        match self {
            Secret::Empty => Vec::new(),
            Secret::Stage1(stage1) => {
                xor(stage1, &sha1_concat(salt_bytes(salt), &sha1(stage1))).to_vec()
            }
        }
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SHA1(password) logs in as the user anywhere: wipe it when the
        // session (or a copy made for a side connection) ends.
        if let Secret::Stage1(stage1) = self {
            stage1.zeroize();
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The stage-1 hash logs in as the user anywhere: never let it reach a log.
        match self {
            Secret::Empty => f.write_str("Secret::Empty"),
            Secret::Stage1(_) => f.write_str("Secret::Stage1(<redacted>)"),
        }
    }
}

/// Client-side scramble: SHA1(password) XOR SHA1(salt ‖ SHA1(SHA1(password))); empty for an empty password.
pub fn scramble_native(salt: &[u8], password: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    Secret::Stage1(sha1(password)).respond(salt)
}

/// The part of a handshake salt that the scramble uses: without a trailing NUL, at most 20 bytes.
///
/// Servers send the salt in two parts, the second NUL-terminated; depending on
/// how it was cut out of the packet the NUL may still be attached.
pub fn salt_bytes(salt: &[u8]) -> &[u8] {
    let salt = salt.strip_suffix(&[0]).unwrap_or(salt);
    &salt[..salt.len().min(SCRAMBLE_LEN)]
}

/// Why a stored credential could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The hash does not start with `*`.
    HashPrefix,
    /// The hash is not `*` plus 40 hex digits long.
    HashLength {
        /// Characters found, including the `*`.
        found: usize,
    },
    /// A character of the hash is not a hex digit.
    HashDigit {
        /// 0-based character index in the hash (the `*` is index 0).
        position: usize,
    },
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash itself is never echoed: it is enough to mount an offline attack.
        const FORM: &str = "a password hash must be '*' followed by 40 hex digits";
        match self {
            AuthError::HashPrefix => write!(f, "{FORM}, but it does not start with '*'"),
            AuthError::HashLength { found } => {
                write!(f, "{FORM} (41 characters), but it has {found}")
            }
            AuthError::HashDigit { position } => {
                write!(f, "{FORM}, but character {position} is not a hex digit")
            }
        }
    }
}

impl std::error::Error for AuthError {}

fn sha1(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

fn sha1_concat(a: &[u8], b: &[u8]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    hasher.update(a);
    hasher.update(b);
    hasher.finalize().into()
}

fn xor(a: &[u8; 20], b: &[u8; 20]) -> [u8; 20] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Compares without an early exit, so timing does not reveal how many bytes matched.
fn constant_time_eq(a: &[u8; 20], b: &[u8; 20]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

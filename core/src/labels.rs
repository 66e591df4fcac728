//! Login names and labels: what a client asks for, and what a backend offers.
//!
//! A client user name is `[tenant{:|#}]user[?key=value,key=value]`; its
//! non-standard connection attributes are labels too. The tenant is the label
//! [`ACCOUNT`]; [`LoginName`] keeps it in its own field so it appears once.

use std::collections::BTreeMap;
use std::fmt;

/// Labels of a session or backend: key -> value (backend values may be globs like "eu-*"). Deterministic order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Labels(pub BTreeMap<String, String>);

impl Labels {
    /// No labels.
    pub fn new() -> Self {
        Labels(BTreeMap::new())
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Sets `key` to `value`, returning the value it replaced.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(key.into(), value.into())
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Labels(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v}")?;
        }
        f.write_str("}")
    }
}

/// The label key that names the tenant.
pub const ACCOUNT: &str = "account";

/// Connection attributes every client library sends; they describe the client, not what it wants.
const STANDARD_ATTRS: [&str; 3] = ["program_name", "os_user", "os_sudouser"];

/// A parsed client user name: `[tenant{:|#}]user[?key=value,key=value]`.
///
/// An `account` label is folded into `tenant` (the tenant in front of the
/// separator wins), so `labels` never holds [`ACCOUNT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginName {
    /// The tenant, if the client named one.
    pub tenant: Option<String>,
    /// The user name to log in to the backend with.
    pub user: String,
    /// The labels the session asks for, without `account`.
    pub labels: Labels,
}

impl LoginName {
    /// Adds attribute labels; labels from the user name win.
    ///
    /// An `account` attribute supplies the tenant only if the name gave none.
    pub fn with_attr_labels(mut self, attrs: Labels) -> Self {
        for (key, value) in attrs.0 {
            if key == ACCOUNT {
                if self.tenant.is_none() && !value.is_empty() {
                    self.tenant = Some(value);
                }
            } else {
                self.labels.0.entry(key).or_insert(value);
            }
        }
        self
    }

    /// The labels a backend must match: the session's labels plus `account` = tenant.
    pub fn routing_labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        if let Some(tenant) = &self.tenant {
            labels.insert(ACCOUNT, tenant.clone());
        }
        labels
    }
}

impl fmt::Display for LoginName {
    /// The canonical user name, `tenant:user?k=v,k=v`. It parses back to the
    /// same value as long as the parts hold no separators (`:#?,=` and `%3A`)
    /// where the grammar would split on them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(tenant) = &self.tenant {
            write!(f, "{tenant}:")?;
        }
        f.write_str(&self.user)?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            f.write_str(if i == 0 { "?" } else { "," })?;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Parses a client user name `[tenant{:|#}]user[?key=value,key=value]`.
///
/// - The tenant ends at the first `:` or `#` before the `?`; the user may
///   contain `:` or `#` only after a tenant.
/// - Label pairs are separated by `,`; key and value by `=`, `:` or `%3A`
///   (any case; for clients that cannot type `:`), whichever comes first.
///   Whitespace around keys and values is trimmed.
/// - A key given twice is an error: the client asked for two different things
///   and silently picking one would route it somewhere it did not mean.
/// - An `account` label becomes the tenant unless the name already gives one.
pub fn parse_login_name(raw: &str) -> Result<LoginName, LabelError> {
    let (name, label_text) = match raw.split_once('?') {
        Some((name, labels)) => (name, Some(labels)),
        None => (raw, None),
    };
    let (tenant, user) = match name.find([':', '#']) {
        Some(at) => {
            let tenant = &name[..at];
            if tenant.is_empty() {
                return Err(LabelError::EmptyTenant {
                    name: raw.to_owned(),
                });
            }
            (Some(tenant.to_owned()), &name[at + 1..])
        }
        None => (None, name),
    };
    if user.is_empty() {
        return Err(LabelError::EmptyUser {
            name: raw.to_owned(),
        });
    }
    let mut labels = match label_text {
        Some(text) => parse_label_pairs(raw, text)?,
        None => Labels::new(),
    };
    let account = labels.remove(ACCOUNT);
    Ok(LoginName {
        tenant: tenant.or(account),
        user: user.to_owned(),
        labels,
    })
}

fn parse_label_pairs(raw: &str, text: &str) -> Result<Labels, LabelError> {
    let mut labels = Labels::new();
    for pair in text.split(',') {
        let bad = |kind| LabelError::BadLabel {
            name: raw.to_owned(),
            pair: pair.trim().to_owned(),
            kind,
        };
        let (key, value) = split_pair(pair).ok_or_else(|| bad(BadLabel::NoSeparator))?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(bad(BadLabel::EmptyKey));
        }
        if value.is_empty() {
            return Err(bad(BadLabel::EmptyValue));
        }
        if labels.insert(key, value).is_some() {
            return Err(LabelError::DuplicateKey {
                name: raw.to_owned(),
                key: key.to_owned(),
            });
        }
    }
    Ok(labels)
}

/// Splits `pair` at the first `=`, `:` or `%3A`.
fn split_pair(pair: &str) -> Option<(&str, &str)> {
    let bytes = pair.as_bytes();
    (0..bytes.len()).find_map(|i| match bytes[i] {
        b'=' | b':' => Some((&pair[..i], &pair[i + 1..])),
        b'%' if bytes[i + 1..].len() >= 2 && bytes[i + 1..i + 3].eq_ignore_ascii_case(b"3a") => {
            Some((&pair[..i], &pair[i + 3..]))
        }
        _ => None,
    })
}

/// Labels from connection attributes: all except names starting with '_' and program_name, os_user, os_sudouser.
pub fn labels_from_attrs<'a>(attrs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Labels {
    attrs
        .into_iter()
        .filter(|(k, _)| !k.is_empty() && !k.starts_with('_') && !STANDARD_ATTRS.contains(k))
        .collect()
}

/// Glob match where `*` matches any run of characters and `?` one character (backend label values).
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let value: Vec<char> = value.chars().collect();
    let (mut p, mut v) = (0, 0);
    // Where to resume after the last `*`: the pattern index after it, and the
    // value index it has swallowed up to. One star to backtrack to suffices,
    // so this is linear-ish rather than exponential.
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p + 1, v));
                p += 1;
            }
            Some(&c) if c == '?' || c == value[v] => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((after_star, swallowed)) => {
                    p = after_star;
                    v = swallowed + 1;
                    star = Some((after_star, swallowed + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// What is wrong with one `key=value` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLabel {
    /// No `=`, `:` or `%3A` between key and value.
    NoSeparator,
    /// Nothing before the separator.
    EmptyKey,
    /// Nothing after the separator.
    EmptyValue,
}

/// Why a user name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelError {
    /// Nothing between the tenant separator (or the start) and the labels.
    EmptyUser {
        /// The user name as the client sent it.
        name: String,
    },
    /// The name starts with the tenant separator.
    EmptyTenant {
        /// The user name as the client sent it.
        name: String,
    },
    /// A label pair is malformed.
    BadLabel {
        /// The user name as the client sent it.
        name: String,
        /// The offending pair, trimmed.
        pair: String,
        /// What is wrong with it.
        kind: BadLabel,
    },
    /// The same key appears twice.
    DuplicateKey {
        /// The user name as the client sent it.
        name: String,
        /// The repeated key.
        key: String,
    },
}

impl fmt::Display for LabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelError::EmptyUser { name } => {
                write!(f, "bad user name '{name}': the user part is empty")
            }
            LabelError::EmptyTenant { name } => write!(
                f,
                "bad user name '{name}': the tenant before ':' or '#' is empty"
            ),
            LabelError::BadLabel { name, pair, kind } => {
                write!(f, "bad label syntax in user name '{name}': ")?;
                match kind {
                    BadLabel::NoSeparator => write!(f, "expected key=value, got '{pair}'"),
                    BadLabel::EmptyKey => write!(f, "empty key in '{pair}'"),
                    BadLabel::EmptyValue => write!(f, "empty value in '{pair}'"),
                }
            }
            LabelError::DuplicateKey { name, key } => write!(
                f,
                "bad label syntax in user name '{name}': label '{key}' is given more than once"
            ),
        }
    }
}

impl std::error::Error for LabelError {}

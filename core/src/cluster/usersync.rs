//! Users read from a backend's `mysql.user`, so operators need not copy every
//! user into ferry's config.
//!
//! The shell logs in with [`crate::query::QueryClient`], runs [`USERS_QUERY`]
//! (or [`USERS_QUERY_MYSQL`] where the first fails) and hands the rows to
//! [`users_from_rows`]; [`merge`] then lays the configured users over them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::auth::{StoredCredential, NATIVE_PASSWORD};
use crate::config::{ConfigError, UserConfig};
use crate::query::ResultSet;
use crate::users::UserDirectory;
use crate::Timestamp;

/// Default for [`UserSourceConfig::interval_ms`].
pub const DEFAULT_INTERVAL_MS: u64 = crate::config::DEFAULT_USER_SOURCE_INTERVAL_MS;

/// MariaDB (10.4+ `mysql.user` is a view over `mysql.global_priv`): the hash
/// is in `authentication_string`, older servers keep it in `Password`; roles
/// are left out. Hosts are ordered so that `%` is seen first.
pub const USERS_QUERY: &str = "SELECT User, Host, plugin, \
     IF(authentication_string <> '', authentication_string, Password) \
     FROM mysql.user WHERE is_role <> 'Y' \
     ORDER BY User, Host <> '%', Host";

/// MySQL (no `Password` column, no roles in `mysql.user`).
pub const USERS_QUERY_MYSQL: &str = "SELECT User, Host, plugin, authentication_string \
     FROM mysql.user ORDER BY User, Host <> '%', Host";

pub use crate::config::UserSourceConfig;

/// Users read from `mysql.user`, with what was left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncedUsers {
    /// User name → credential, one per name.
    pub users: BTreeMap<String, StoredCredential>,
    /// Accounts left out: another plugin, no password, a bad hash.
    pub skipped: usize,
    /// Names whose host entries carry different hashes (the `%` entry, else the first, is kept).
    pub conflicting: Vec<String>,
}

/// Reads the rows of [`USERS_QUERY`] or [`USERS_QUERY_MYSQL`]: `User, Host, plugin, hash`.
///
/// Only `mysql_native_password` accounts (or a legacy empty plugin with a
/// hash) with a password are taken: a password-less account would let anyone
/// in as that user at ferry, and the backend would see ferry's address, not
/// the client's.
pub fn users_from_rows(rows: &ResultSet) -> SyncedUsers {
    let mut out = SyncedUsers::default();
    for row in &rows.rows {
        let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let (user, plugin, hash) = (cell(0), cell(2), cell(3));
        let native = plugin == NATIVE_PASSWORD || plugin.is_empty();
        let cred = match StoredCredential::parse_mysql(&hash) {
            Ok(c @ StoredCredential::Native(_)) if native && !user.is_empty() => c,
            _ => {
                out.skipped += 1;
                continue;
            }
        };
        match out.users.get(&user) {
            None => {
                out.users.insert(user, cred);
            }
            Some(kept) => {
                if *kept != cred && !out.conflicting.contains(&user) {
                    out.conflicting.push(user);
                }
            }
        }
    }
    out
}

/// The directory of configured users, with synced users added where no
/// configured tenant-less entry has the same name (configured users win).
pub fn merge(
    configured: &[UserConfig],
    synced: &SyncedUsers,
) -> Result<UserDirectory, ConfigError> {
    let mut dir = UserDirectory::from_config(configured)?;
    for (user, cred) in &synced.users {
        let configured_too = configured
            .iter()
            .any(|c| c.tenant.is_none() && c.user == *user);
        if !configured_too {
            dir.insert(None, user.clone(), cred.clone());
        }
    }
    Ok(dir)
}

/// Which read of the user source a waiter needs: the first to start after it asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadTicket(u64);

/// When the user source is read: reads never overlap, start at least
/// `min_gap` apart, and one read serves every waiter that asked before it
/// started. A login that asks while a read runs waits for the next one, so a
/// user created just before the login is never missed by a read that began
/// earlier.
///
/// Sans-IO: the shell asks ([`ReadSchedule::ask`]), takes its turn (one at a
/// time), checks [`ReadSchedule::served`], waits for
/// [`ReadSchedule::earliest_start`], then brackets its read with
/// [`ReadSchedule::start`] and [`ReadSchedule::finish`].
#[derive(Clone, Debug)]
pub struct ReadSchedule {
    min_gap: Duration,
    started: u64,
    finished: u64,
    last_start: Option<Timestamp>,
}

impl ReadSchedule {
    /// No read yet; reads at least `min_gap` apart.
    pub fn new(min_gap: Duration) -> Self {
        ReadSchedule {
            min_gap,
            started: 0,
            finished: 0,
            last_start: None,
        }
    }

    /// Changes the least time between two reads (a reloaded config).
    pub fn set_min_gap(&mut self, min_gap: Duration) {
        self.min_gap = min_gap;
    }

    /// A waiter asks: the read it needs is the next one to start.
    pub fn ask(&self) -> ReadTicket {
        ReadTicket(self.started + 1)
    }

    /// True once the read `ticket` needs (or a later one) has ended, well or not.
    pub fn served(&self, ticket: ReadTicket) -> bool {
        self.finished >= ticket.0
    }

    /// The earliest a new read may start.
    pub fn earliest_start(&self) -> Timestamp {
        self.last_start
            .map_or(Timestamp::ZERO, |t| t + self.min_gap)
    }

    /// A read starts now; it serves every ticket asked so far.
    pub fn start(&mut self, now: Timestamp) -> ReadTicket {
        self.started += 1;
        self.last_start = Some(now);
        ReadTicket(self.started)
    }

    /// The read of `ticket` ended (also when it failed or was abandoned).
    pub fn finish(&mut self, ticket: ReadTicket) {
        self.finished = self.finished.max(ticket.0);
    }

    /// Reads started so far.
    pub fn reads(&self) -> u64 {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StoredHash;

    const APP: &str = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"; // "secret"
    const ROOT: &str = "*832EB84CB764129D05D498ED9CA7E5CE9B8F83EB"; // "111"

    fn rows(r: &[[&str; 4]]) -> ResultSet {
        ResultSet {
            columns: vec!["User".into(), "Host".into(), "plugin".into(), "hash".into()],
            rows: r
                .iter()
                .map(|row| row.iter().map(|c| Some(c.to_string())).collect())
                .collect(),
        }
    }

    #[test]
    fn reads_native_users_and_skips_the_rest() {
        let synced = users_from_rows(&rows(&[
            ["app", "%", "mysql_native_password", APP],
            ["app", "localhost", "mysql_native_password", APP],
            ["mariadb.sys", "localhost", "mysql_native_password", ""],
            ["root", "%", "mysql_native_password", ROOT],
            ["root", "vm", "", ""],
            ["old", "%", "", APP],
            ["sock", "localhost", "unix_socket", ""],
            ["ed", "%", "ed25519", "ZjI0YWNiNTM"],
            ["bad", "%", "mysql_native_password", "*XYZ"],
            ["other", "%", "mysql_native_password", APP],
            ["other", "10.0.0.1", "mysql_native_password", ROOT],
        ]));
        let names: Vec<&str> = synced.users.keys().map(String::as_str).collect();
        assert_eq!(names, ["app", "old", "other", "root"]);
        assert_eq!(
            synced.users["root"],
            StoredCredential::Native(StoredHash::parse(ROOT).unwrap())
        );
        assert_eq!(
            synced.users["other"],
            StoredCredential::Native(StoredHash::parse(APP).unwrap()),
            "the first (%) entry is kept"
        );
        assert_eq!(synced.conflicting, ["other"]);
        assert_eq!(synced.skipped, 5);
    }

    #[test]
    fn configured_users_win() {
        let synced = users_from_rows(&rows(&[
            ["app", "%", "mysql_native_password", APP],
            ["root", "%", "mysql_native_password", ROOT],
        ]));
        let configured = vec![UserConfig {
            tenant: None,
            any_tenant: false,
            user: "app".into(),
            password: Some("other".into()),
            password_hash: None,
        }];
        let dir = merge(&configured, &synced).unwrap();
        assert_eq!(
            dir.lookup(None, "app"),
            Some(&StoredCredential::from_password("other"))
        );
        assert_eq!(
            dir.lookup(None, "root"),
            Some(&StoredCredential::Native(StoredHash::parse(ROOT).unwrap()))
        );
        assert_eq!(dir.lookup(None, "nobody"), None);
    }

    #[test]
    fn one_read_serves_everyone_who_asked_before_it_started() {
        let gap = Duration::from_secs(1);
        let mut s = ReadSchedule::new(gap);
        let first = s.ask();
        assert_eq!(s.earliest_start(), Timestamp::ZERO);
        let running = s.start(Timestamp::ZERO);
        // Asked while a read runs: that read may have missed a user created just now.
        let late = s.ask();
        assert!(!s.served(first));
        s.finish(running);
        assert!(s.served(first));
        assert!(
            !s.served(late),
            "a read that began before the ask does not serve it"
        );
        assert_eq!(s.earliest_start(), Timestamp::ZERO + gap);
        let again = s.ask();
        assert_eq!(again, late, "waiters of the next read share it");
        let next = s.start(Timestamp::ZERO + gap);
        s.finish(next);
        assert!(s.served(late) && s.served(again));
        assert_eq!(s.reads(), 2);
    }

    #[test]
    fn config_shape() {
        let c: UserSourceConfig =
            ron::from_str(r#"(backend: "cn1", user: "ferry", password: "pw")"#).unwrap();
        assert_eq!(c.interval_ms, DEFAULT_INTERVAL_MS);
        assert_eq!(c.reread_ms, crate::config::DEFAULT_USER_SOURCE_REREAD_MS);
        assert_eq!(c.backend, "cn1");
    }
}

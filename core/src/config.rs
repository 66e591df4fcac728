//! The RON configuration file: a contract with everything that starts ferry.
//!
//! Optional values (`tenant: "acc1"`) are written without `Some(...)`: parsing
//! enables RON's `implicit_some` by default, so the file needs no header.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ron::extensions::Extensions;
use serde::{Deserialize, Serialize};

use crate::auth::StoredCredential;
use crate::labels::Labels;
use crate::limits::LimitsConfig;
use crate::proxy_header::Network;

/// Default for [`Config::login_timeout_ms`].
pub const DEFAULT_LOGIN_TIMEOUT_MS: u64 = 10_000;
/// Default for [`Config::backend_timeout_ms`].
pub const DEFAULT_BACKEND_TIMEOUT_MS: u64 = 5_000;
/// Default for [`Config::max_packet_size`]: 64 MiB.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 64 << 20;
/// Smallest accepted [`Config::max_packet_size`]: below this a handshake may not fit.
pub const MIN_MAX_PACKET_SIZE: usize = 1024;

/// Default for [`HealthConfig::interval_ms`].
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 2_000;
/// Default for [`HealthConfig::timeout_ms`].
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;
/// Default for [`HealthConfig::fall`].
pub const DEFAULT_HEALTH_FALL: u32 = 3;
/// Default for [`HealthConfig::rise`].
pub const DEFAULT_HEALTH_RISE: u32 = 2;

/// Default for [`RebalanceConfig::interval_ms`].
pub const DEFAULT_REBALANCE_INTERVAL_MS: u64 = 10_000;
/// Default for [`RebalanceConfig::tolerance`].
pub const DEFAULT_REBALANCE_TOLERANCE: f64 = 0.3;
/// Default for [`RebalanceConfig::moves_per_second`].
pub const DEFAULT_MOVES_PER_SECOND: u32 = 50;
/// Default for [`RebalanceConfig::cooldown_ms`].
pub const DEFAULT_REBALANCE_COOLDOWN_MS: u64 = 30_000;
/// Default for [`Config::drain_timeout_ms`].
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 60_000;
/// Default for [`Config::migration_backoff_ms`].
pub const DEFAULT_MIGRATION_BACKOFF_MS: u64 = 5_000;

/// The whole configuration of one ferry process.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients connect.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Where the admin HTTP API listens.
    #[serde(deserialize_with = "socket_addr")]
    pub admin_listen: SocketAddr,
    /// Who may log in.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// The servers sessions are routed to.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Version string ferry announces to clients; None = learn it from a backend's handshake.
    #[serde(default)]
    pub server_version: Option<String>,
    /// How long a client has to finish logging in (default 10_000).
    #[serde(default = "default_login_timeout_ms")]
    pub login_timeout_ms: u64,
    /// How long a backend has to answer connect + handshake + auth (default 5_000).
    #[serde(default = "default_backend_timeout_ms")]
    pub backend_timeout_ms: u64,
    /// Largest packet payload accepted from a peer, bytes (default 64 MiB; minimum 1 KiB).
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: usize,
    /// Health checks of the backends.
    #[serde(default)]
    pub health: HealthConfig,
    /// How long sessions get to reach a safe point after SIGTERM before they are cut (default 30_000).
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// A backend to read users and their hashes from (`mysql.user`), if any.
    #[serde(default)]
    pub user_source: Option<UserSourceConfig>,
    /// Executor threads; None = half the cores, at least one.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// Moving sessions between working backends to even out their counts.
    #[serde(default)]
    pub rebalance: RebalanceConfig,
    /// How long the sessions of a draining backend get to move away before they are
    /// closed (default 60_000; 0 = never close them).
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// How long a session whose move failed waits before it is tried again (default 5_000).
    #[serde(default = "default_migration_backoff_ms")]
    pub migration_backoff_ms: u64,
    /// Logins of users whose hash ferry does not know: the backend decides (default), or refused.
    #[serde(default)]
    pub unverified_logins: UnverifiedLogins,
    /// TLS for clients: ferry offers it (and may require it) with this certificate; None = no TLS.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// Connection, login, timeout and memory limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The bearer token every admin request must carry; None = no token
    /// (then `admin_listen` must be a loopback address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<AdminToken>,
    /// A file whose first line is the admin token (re-read on SIGHUP); instead of `admin_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<String>,
    /// Accept PROXY protocol v2 headers from these networks (None: from nobody).
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolConfig>,
}

/// `unverified_logins: Backend | Refuse`: what ferry does with a login it cannot verify
/// itself (no user source, or a user whose hash it cannot read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum UnverifiedLogins {
    /// Relay the backend's own challenge to the client and let the backend accept or refuse.
    #[default]
    Backend,
    /// Refuse with 1045, as if the user did not exist.
    Refuse,
}

/// `tls: Some((cert: "server.pem", key: "server.key", required: false))`: ferry's
/// certificate for clients. Relative paths are relative to the config file's directory.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM certificate chain, ferry's own certificate first.
    pub cert: String,
    /// PEM private key of that certificate.
    pub key: String,
    /// Refuse clients that do not ask for TLS (ERR 1045, as MariaDB does for a `REQUIRE SSL` account).
    #[serde(default)]
    pub required: bool,
}

/// A backend's `tls: Some((ca: "ca.pem", verify: true))`: ferry connects to it over TLS.
/// A relative `ca` is relative to the config file's directory.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// PEM certificates the backend's certificate must chain to (needed when `verify`).
    #[serde(default)]
    pub ca: Option<String>,
    /// Check the backend's certificate (against `ca`, for the backend's IP address);
    /// false is an explicit choice to accept any certificate (default true).
    #[serde(default = "default_true")]
    pub verify: bool,
}

fn default_true() -> bool {
    true
}

/// A secret that Debug never prints (`***`).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct AdminToken(pub String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

fn default_drain_timeout_ms() -> u64 {
    DEFAULT_DRAIN_TIMEOUT_MS
}

fn default_migration_backoff_ms() -> u64 {
    DEFAULT_MIGRATION_BACKOFF_MS
}

fn default_shutdown_grace_ms() -> u64 {
    30_000
}

/// Reads `IP:port`, with an error that shows the bad text (serde's says only "invalid syntax").
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid address '{text}': expected IP:port, such as \"127.0.0.1:3306\" (host names are not resolved)"
        ))
    })
}

fn default_login_timeout_ms() -> u64 {
    DEFAULT_LOGIN_TIMEOUT_MS
}

fn default_backend_timeout_ms() -> u64 {
    DEFAULT_BACKEND_TIMEOUT_MS
}

fn default_max_packet_size() -> usize {
    DEFAULT_MAX_PACKET_SIZE
}

/// `health: (interval_ms: 2000, timeout_ms: 1000, fall: 3, rise: 2)`; every field optional.
///
/// The counting policy built from it is [`HealthConfig::policy`], in [`crate::health`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Time between two checks of a backend.
    pub interval_ms: u64,
    /// How long one check (connect + handshake) may take.
    pub timeout_ms: u64,
    /// Consecutive failed checks that make an `up` backend `down`.
    pub fall: u32,
    /// Consecutive good checks that make a `down` backend `up`.
    pub rise: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            timeout_ms: DEFAULT_HEALTH_TIMEOUT_MS,
            fall: DEFAULT_HEALTH_FALL,
            rise: DEFAULT_HEALTH_RISE,
        }
    }
}

impl HealthConfig {
    /// [`HealthConfig::interval_ms`] as a duration (at least 10 ms).
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(10))
    }

    /// [`HealthConfig::timeout_ms`] as a duration (at least 1 ms).
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}

/// `rebalance: (interval_ms: 10000, tolerance: 0.3, moves_per_second: 50, cooldown_ms: 30000)`;
/// every field optional.
///
/// The planner's view of it is [`RebalanceConfig::policy`], in [`crate::cluster`].
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RebalanceConfig {
    /// Time between two rebalance rounds; 0 disables rebalancing.
    pub interval_ms: u64,
    /// A backend holding more than `ceil(average × (1 + tolerance))` sessions of a
    /// label group gives up the excess (finite, at least 0).
    pub tolerance: f64,
    /// How many moves (rebalance, drain and failover together) may start per second (at least 1).
    pub moves_per_second: u32,
    /// A session moved less than this long ago is not moved again by rebalancing.
    pub cooldown_ms: u64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            interval_ms: DEFAULT_REBALANCE_INTERVAL_MS,
            tolerance: DEFAULT_REBALANCE_TOLERANCE,
            moves_per_second: DEFAULT_MOVES_PER_SECOND,
            cooldown_ms: DEFAULT_REBALANCE_COOLDOWN_MS,
        }
    }
}

impl RebalanceConfig {
    /// True unless `interval_ms` is 0.
    pub fn enabled(&self) -> bool {
        self.interval_ms > 0
    }

    /// [`RebalanceConfig::interval_ms`] as a duration (zero when disabled).
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// [`RebalanceConfig::cooldown_ms`] as a duration.
    pub fn cooldown(&self) -> Duration {
        Duration::from_millis(self.cooldown_ms)
    }
}

/// One user ferry verifies logins for; give exactly one of `password` and `password_hash`.
/// Debug shows neither.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The tenant this entry is for; None = logins without a tenant (and any
    /// tenant if `any_tenant`).
    #[serde(default)]
    pub tenant: Option<String>,
    /// A user without a tenant may also log in under any tenant (`acc1:root`); default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_tenant: bool,
    /// The user name, as sent to the backends.
    pub user: String,
    /// The clear-text password (`""` for none).
    #[serde(default)]
    pub password: Option<String>,
    /// The `mysql.user` hash, `*` + 40 hex digits.
    #[serde(default)]
    pub password_hash: Option<String>,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("UserConfig")
            .field("tenant", &self.tenant)
            .field("any_tenant", &self.any_tenant)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("password_hash", &hidden(&self.password_hash))
            .finish()
    }
}

impl UserConfig {
    /// The credential logins are checked against.
    pub fn credential(&self) -> Result<StoredCredential, ConfigError> {
        match (&self.password, &self.password_hash) {
            (Some(password), None) => Ok(StoredCredential::from_password(password)),
            (None, Some(hash)) => StoredCredential::parse_mysql(hash).map_err(|e| {
                ConfigError::unplaced(format!("user '{}': bad password_hash: {e}", self.name()))
            }),
            (Some(_), Some(_)) => Err(ConfigError::unplaced(format!(
                "user '{}' has both password and password_hash; give exactly one",
                self.name()
            ))),
            (None, None) => Err(ConfigError::unplaced(format!(
                "user '{}' has neither password nor password_hash; give exactly one \
                 (password: \"\" for no password)",
                self.name()
            ))),
        }
    }

    /// `tenant:user` or `user`, as a client would write it; for messages.
    pub fn name(&self) -> String {
        match &self.tenant {
            Some(tenant) => format!("{tenant}:{}", self.user),
            None => self.user.clone(),
        }
    }
}

/// One backend server.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// A name unique among the backends; used by the admin API and in logs.
    pub id: String,
    /// Where it listens.
    #[serde(deserialize_with = "socket_addr")]
    pub addr: SocketAddr,
    /// Its labels; values may be globs. None = the shared pool.
    #[serde(default)]
    pub labels: Labels,
    /// Whether it takes new sessions.
    #[serde(default)]
    pub state: WorkState,
    /// Whether a compressed client's connection to it is compressed too
    /// (`false` keeps that link uncompressed, e.g. on a fast local network).
    #[serde(default = "yes")]
    pub compress_backend: bool,
    /// Connect to it over TLS; None = plain TCP.
    #[serde(default)]
    pub tls: Option<BackendTlsConfig>,
    /// Send a PROXY protocol v2 header first on every connection to it, so it
    /// sees the client's address (MariaDB's `proxy_protocol_networks`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub proxy_protocol: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `proxy_protocol: (trusted: ["10.0.0.0/8"])`: clients connecting from these
/// networks (a load balancer) must start with a PROXY protocol v2 header, and
/// the address it carries stands for the client's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolConfig {
    /// Networks whose connections carry a header; anyone else sending one is refused.
    pub trusted: Vec<Network>,
}

impl ProxyProtocolConfig {
    /// Whether a connection from `ip` must carry a header.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }
}

fn yes() -> bool {
    true
}

/// Whether a backend takes new sessions, and whether its sessions should leave.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize,
)]
pub enum WorkState {
    /// Takes new sessions.
    #[default]
    Working,
    /// Takes no new sessions; its sessions are being moved away.
    Draining,
    /// Takes no sessions and has none.
    Drained,
}

impl Config {
    /// Parses and validates a config text; errors carry line, column and reason.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = ron_options().from_str(text).map_err(|e| ConfigError {
            line: e.span.start.line,
            column: e.span.start.col,
            message: e.code.to_string(),
        })?;
        config.check().map_err(|p| p.in_text(text))?;
        Ok(config)
    }

    /// Validates a config built in code; errors have no position (line 0).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|p| ConfigError::unplaced(p.message))
    }

    /// The config as RON text that [`Config::parse`] reads back.
    pub fn to_ron(&self) -> String {
        let pretty = ron::ser::PrettyConfig::new().extensions(Extensions::IMPLICIT_SOME);
        ron::ser::to_string_pretty(self, pretty).expect("a Config always serialises")
    }

    /// [`Config::login_timeout_ms`] as a duration.
    pub fn login_timeout(&self) -> Duration {
        Duration::from_millis(self.login_timeout_ms)
    }

    /// [`Config::backend_timeout_ms`] as a duration.
    pub fn backend_timeout(&self) -> Duration {
        Duration::from_millis(self.backend_timeout_ms)
    }

    /// [`Config::drain_timeout_ms`] as a duration (zero: never close draining sessions).
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// [`Config::migration_backoff_ms`] as a duration.
    pub fn migration_backoff(&self) -> Duration {
        Duration::from_millis(self.migration_backoff_ms)
    }

    fn check(&self) -> Result<(), Problem> {
        if self.max_packet_size < MIN_MAX_PACKET_SIZE {
            return Err(Problem::new(
                format!(
                    "max_packet_size must be at least {MIN_MAX_PACKET_SIZE} bytes, got {}",
                    self.max_packet_size
                ),
                Anchor::key("max_packet_size"),
            ));
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(Problem::new(
                format!("listen and admin_listen are both {}", self.listen),
                Anchor::key("admin_listen"),
            ));
        }
        if let Some((key, message)) = self.limits.problem() {
            return Err(Problem::new(message, Anchor::key(key)));
        }
        self.check_admin()?;
        self.check_rebalance()?;
        self.check_users()?;
        self.check_backends()
    }

    fn check_admin(&self) -> Result<(), Problem> {
        if self.admin_token.is_some() && self.admin_token_file.is_some() {
            return Err(Problem::new(
                "give admin_token or admin_token_file, not both".into(),
                Anchor::key("admin_token_file"),
            ));
        }
        if matches!(&self.admin_token, Some(AdminToken(t)) if t.trim().is_empty()) {
            return Err(Problem::new(
                "admin_token is empty".into(),
                Anchor::key("admin_token"),
            ));
        }
        let token = self.admin_token.is_some() || self.admin_token_file.is_some();
        if !token && !self.admin_listen.ip().is_loopback() {
            return Err(Problem::new(
                format!(
                    "admin_listen {} is not a loopback address and no admin_token is set: \
                     anyone who can reach it could drain backends and read sessions; \
                     set admin_token (or admin_token_file) or listen on 127.0.0.1",
                    self.admin_listen
                ),
                Anchor::key("admin_listen"),
            ));
        }
        Ok(())
    }

    fn check_rebalance(&self) -> Result<(), Problem> {
        let r = &self.rebalance;
        if !(r.tolerance.is_finite() && r.tolerance >= 0.0) {
            return Err(Problem::new(
                format!(
                    "rebalance tolerance must be a finite number of at least 0 (0.3 = 30 % above \
                     the average), got {}",
                    r.tolerance
                ),
                Anchor::key("tolerance"),
            ));
        }
        if r.moves_per_second == 0 {
            return Err(Problem::new(
                "rebalance moves_per_second must be at least 1, got 0 \
                 (to stop rebalancing, set interval_ms: 0)"
                    .into(),
                Anchor::key("moves_per_second"),
            ));
        }
        Ok(())
    }

    fn check_users(&self) -> Result<(), Problem> {
        for (i, user) in self.users.iter().enumerate() {
            let earlier = &self.users[..i];
            let anchor = Anchor::value(
                "user",
                &user.user,
                earlier.iter().filter(|u| u.user == user.user).count(),
            );
            let fail = |message: String| Err(Problem::new(message, anchor.clone()));
            if user.user.is_empty() {
                return fail("a user has an empty name".into());
            }
            match user.tenant.as_deref() {
                Some("") => {
                    return fail(format!(
                    "user '{}' has an empty tenant; leave tenant out for a user of every tenant",
                    user.user
                ))
                }
                Some(t) if t.contains([':', '#', '?']) => {
                    return fail(format!(
                        "tenant '{t}' of user '{}' contains ':', '#' or '?', \
                         which no client user name can express",
                        user.user
                    ))
                }
                _ => {}
            }
            if user.any_tenant && user.tenant.is_some() {
                return fail(format!(
                    "user '{}' has both a tenant and any_tenant: true; give one or the other",
                    user.name()
                ));
            }
            if let Err(e) = user.credential() {
                return fail(e.message);
            }
            if earlier
                .iter()
                .any(|u| u.user == user.user && u.tenant == user.tenant)
            {
                return fail(format!("user '{}' is configured twice", user.name()));
            }
        }
        Ok(())
    }

    fn check_backends(&self) -> Result<(), Problem> {
        for (i, backend) in self.backends.iter().enumerate() {
            let earlier = &self.backends[..i];
            let same_id = earlier.iter().filter(|b| b.id == backend.id).count();
            let anchor = Anchor::value("id", &backend.id, same_id);
            if backend.id.is_empty() {
                return Err(Problem::new(
                    format!("backend at {} has an empty id", backend.addr),
                    anchor,
                ));
            }
            if same_id > 0 {
                return Err(Problem::new(
                    format!("backend id '{}' is used twice", backend.id),
                    anchor,
                ));
            }
            if let Some(tls) = &backend.tls {
                if tls.verify && tls.ca.is_none() {
                    return Err(Problem::new(
                        format!(
                            "backend '{}': tls with verify: true needs ca: \"ca.pem\" \
                             (or verify: false to accept any certificate)",
                            backend.id
                        ),
                        anchor,
                    ));
                }
            }
        }
        Ok(())
    }
}

fn ron_options() -> ron::Options {
    ron::Options::default().with_default_extension(Extensions::IMPLICIT_SOME)
}

/// Why a config was rejected, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// 1-based line, or 0 when the error has no position.
    pub line: usize,
    /// 1-based column, or 0 when the error has no position.
    pub column: usize,
    /// What is wrong, for a person.
    pub message: String,
}

impl ConfigError {
    /// An error that is not tied to a place in the text.
    pub fn unplaced(message: impl Into<String>) -> Self {
        ConfigError {
            line: 0,
            column: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// A validation failure found on the parsed value, with a hint where it sits in the text.
struct Problem {
    message: String,
    anchor: Anchor,
}

impl Problem {
    fn new(message: String, anchor: Anchor) -> Self {
        Problem { message, anchor }
    }

    fn in_text(self, text: &str) -> ConfigError {
        let (line, column) = self.anchor.find(text).unwrap_or((0, 0));
        ConfigError {
            line,
            column,
            message: self.message,
        }
    }
}

/// The `nth` occurrence of `key:` (followed by `"value"` if given) in the text.
///
/// serde hands us values without spans, so validation errors are placed by
/// finding the field again. Good enough for hand-written files; an unusual
/// spelling (escapes, raw strings) just yields no position.
#[derive(Clone)]
struct Anchor {
    key: &'static str,
    value: Option<String>,
    nth: usize,
}

impl Anchor {
    fn key(key: &'static str) -> Self {
        Anchor {
            key,
            value: None,
            nth: 0,
        }
    }

    fn value(key: &'static str, value: &str, nth: usize) -> Self {
        Anchor {
            key,
            value: Some(value.to_owned()),
            nth,
        }
    }

    fn find(&self, text: &str) -> Option<(usize, usize)> {
        let at = text
            .match_indices(self.key)
            .map(|(at, _)| at)
            .filter(|&at| self.matches_at(text, at))
            .nth(self.nth)?;
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Some((line, before[line_start..].chars().count() + 1))
    }

    fn matches_at(&self, text: &str, at: usize) -> bool {
        let starts_word = !matches!(
            text[..at].chars().next_back(),
            Some(c) if c.is_alphanumeric() || c == '_'
        );
        let rest = text[at + self.key.len()..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            return false;
        };
        let value_matches = match &self.value {
            Some(value) => rest.trim_start().starts_with(&format!("\"{value}\"")),
            None => true,
        };
        starts_word && value_matches
    }
}

/// Default for [`UserSourceConfig::interval_ms`]: a minute.
pub const DEFAULT_USER_SOURCE_INTERVAL_MS: u64 = 60_000;

/// `user_source: (backend: "cn1", user: "ferry", password: "...", interval_ms: 60000)`.
/// Debug does not show the password.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserSourceConfig {
    /// The id of the backend to read `mysql.user` from.
    pub backend: String,
    /// The account ferry logs in with (needs SELECT on `mysql.user`).
    pub user: String,
    /// Its password (`mysql_native_password`).
    #[serde(default)]
    pub password: String,
    /// Time between two reads (default 60_000).
    #[serde(default = "default_user_source_interval_ms")]
    pub interval_ms: u64,
    /// Least time between two reads a login asks for (a user ferry does not
    /// know, a password that does not verify); default 1_000.
    #[serde(default = "default_user_source_reread_ms")]
    pub reread_ms: u64,
}

impl fmt::Debug for UserSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserSourceConfig")
            .field("backend", &self.backend)
            .field("user", &self.user)
            .field("password", &"***")
            .field("interval_ms", &self.interval_ms)
            .finish()
    }
}

fn default_user_source_interval_ms() -> u64 {
    DEFAULT_USER_SOURCE_INTERVAL_MS
}

/// Default for [`UserSourceConfig::reread_ms`]: a second.
pub const DEFAULT_USER_SOURCE_REREAD_MS: u64 = 1_000;

fn default_user_source_reread_ms() -> u64 {
    DEFAULT_USER_SOURCE_REREAD_MS
}

impl UserSourceConfig {
    /// [`UserSourceConfig::interval_ms`] as a duration (at least 100 ms).
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(100))
    }

    /// [`UserSourceConfig::reread_ms`] as a duration.
    pub fn reread(&self) -> Duration {
        Duration::from_millis(self.reread_ms)
    }
}

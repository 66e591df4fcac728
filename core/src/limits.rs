//! Limits that keep one client (or one address, or one tenant) from taking
//! the proxy down: connection counts, failed logins per address, idle and
//! write timeouts, and the memory one session may hold.
//!
//! Pure bookkeeping with time as a value: the shell owns one [`Admission`]
//! and one [`LoginLimiter`] behind locks and asks them at accept and login;
//! each session carries its [`SessionLimits`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::errors;
use crate::login::err_frame;
use crate::packets::ErrPacket;
use crate::Timestamp;

/// `err` as the first packet of a connection, before any handshake: without
/// SQLSTATE, as MariaDB sends it then (the client's capabilities are not known yet).
pub fn pre_handshake_frame(err: &ErrPacket) -> Bytes {
    let mut bare = err.clone();
    bare.sql_state = None;
    err_frame(&bare, 0)
}

/// Default for [`LimitsConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Default for [`LimitsConfig::max_connections_per_tenant`].
pub const DEFAULT_MAX_CONNECTIONS_PER_TENANT: u32 = 1024;
/// Default for [`LimitsConfig::max_failed_logins`].
pub const DEFAULT_MAX_FAILED_LOGINS: u32 = 10;
/// Default for [`LimitsConfig::failed_login_window_ms`].
pub const DEFAULT_FAILED_LOGIN_WINDOW_MS: u64 = 60_000;
/// Default for [`LimitsConfig::failed_login_block_ms`].
pub const DEFAULT_FAILED_LOGIN_BLOCK_MS: u64 = 300_000;
/// Default for [`LimitsConfig::max_tracked_hosts`].
pub const DEFAULT_MAX_TRACKED_HOSTS: usize = 10_000;
/// Default for [`LimitsConfig::write_timeout_ms`].
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 60_000;
/// Default for [`LimitsConfig::max_session_memory`]: 32 MiB.
pub const DEFAULT_MAX_SESSION_MEMORY: usize = 32 << 20;
/// Smallest accepted [`LimitsConfig::max_session_memory`].
pub const MIN_SESSION_MEMORY: usize = 1 << 20;

/// `limits: (max_connections: 4096, ...)`; every field optional.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Client connections open at once, logged in or not; more get ERR 1040 before the handshake.
    pub max_connections: u32,
    /// Sessions of one tenant at once; more get ERR 1040 after login (sessions without a tenant are not counted here).
    pub max_connections_per_tenant: u32,
    /// Failed logins from one address within `failed_login_window_ms` that block it (0 = never block).
    pub max_failed_logins: u32,
    /// The window failed logins are counted in.
    pub failed_login_window_ms: u64,
    /// How long a blocked address is refused (ERR 1129).
    pub failed_login_block_ms: u64,
    /// Most addresses remembered by the failed-login limiter (bounded memory under a spread-out attack).
    pub max_tracked_hosts: usize,
    /// Close a session that sent nothing for this long while no command runs (ERR 4031); None = never.
    pub idle_timeout_ms: Option<u64>,
    /// Close a session whose client stops reading for this long (0 = never).
    pub write_timeout_ms: u64,
    /// Most bytes one session holds on its own: client bytes held back during a
    /// move, pipelined command heads, the rows of ferry's own queries (shared
    /// out by [`MemoryBudget::of`]).
    pub max_session_memory: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_tenant: DEFAULT_MAX_CONNECTIONS_PER_TENANT,
            max_failed_logins: DEFAULT_MAX_FAILED_LOGINS,
            failed_login_window_ms: DEFAULT_FAILED_LOGIN_WINDOW_MS,
            failed_login_block_ms: DEFAULT_FAILED_LOGIN_BLOCK_MS,
            max_tracked_hosts: DEFAULT_MAX_TRACKED_HOSTS,
            idle_timeout_ms: None,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            max_session_memory: DEFAULT_MAX_SESSION_MEMORY,
        }
    }
}

impl LimitsConfig {
    /// What is wrong with these limits, if anything, for a person.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.max_connections == 0 {
            return Some((
                "max_connections",
                "limits max_connections must be at least 1".into(),
            ));
        }
        if self.max_connections_per_tenant == 0 {
            return Some((
                "max_connections_per_tenant",
                "limits max_connections_per_tenant must be at least 1".into(),
            ));
        }
        if self.max_session_memory < MIN_SESSION_MEMORY {
            return Some((
                "max_session_memory",
                format!(
                    "limits max_session_memory must be at least {MIN_SESSION_MEMORY} bytes, got {}",
                    self.max_session_memory
                ),
            ));
        }
        if self.idle_timeout_ms == Some(0) {
            return Some((
                "idle_timeout_ms",
                "limits idle_timeout_ms must be at least 1 (leave it out for no idle timeout)"
                    .into(),
            ));
        }
        None
    }

    /// The failed-login policy.
    pub fn login_policy(&self) -> LoginPolicy {
        LoginPolicy {
            max_failures: self.max_failed_logins,
            window: Duration::from_millis(self.failed_login_window_ms),
            block: Duration::from_millis(self.failed_login_block_ms),
            max_hosts: self.max_tracked_hosts.max(1),
        }
    }

    /// What each session runs under.
    pub fn session(&self) -> SessionLimits {
        SessionLimits {
            idle_timeout: self.idle_timeout_ms.map(Duration::from_millis),
            write_timeout: (self.write_timeout_ms > 0)
                .then(|| Duration::from_millis(self.write_timeout_ms)),
            memory: MemoryBudget::of(self.max_session_memory),
        }
    }
}

/// The limits one session runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Close the session after this long without client traffic while no command runs.
    pub idle_timeout: Option<Duration>,
    /// How long a write to the client may block before the session is closed.
    pub write_timeout: Option<Duration>,
    /// How its memory is shared out.
    pub memory: MemoryBudget,
}

impl Default for SessionLimits {
    fn default() -> Self {
        LimitsConfig::default().session()
    }
}

/// `max_session_memory` shared out among what a session may hold on its own
/// (the read buffers, 16 KiB per connection, and packet decoders of at most
/// 1 MiB come on top).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Client bytes held back while ferry's own commands or a move are under way.
    pub held: usize,
    /// Heads of commands the client pipelined ahead of their responses.
    pub pipelined: usize,
    /// Rows of ferry's own queries (user variables read before a move).
    pub injected_rows: usize,
}

impl MemoryBudget {
    /// The shares of `total`: 1/32 held, 1/8 pipelined, 1/2 rows (1, 4 and 16 MiB of the default 32 MiB).
    pub fn of(total: usize) -> Self {
        MemoryBudget {
            held: total / 32,
            pipelined: total / 8,
            injected_rows: total / 2,
        }
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::of(DEFAULT_MAX_SESSION_MEMORY)
    }
}

/// Why a connection or session was not let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` connections are open.
    TooManyConnections {
        /// The limit.
        limit: u32,
    },
    /// The tenant has `max_connections_per_tenant` sessions.
    TooManyForTenant {
        /// The tenant.
        tenant: String,
        /// The limit.
        limit: u32,
    },
}

impl Refusal {
    /// The ERR the client gets.
    pub fn err(&self) -> ErrPacket {
        match self {
            Refusal::TooManyConnections { limit } => {
                errors::too_many_connections(&format!("ferry has {limit} client connections open"))
            }
            Refusal::TooManyForTenant { tenant, limit } => errors::too_many_connections(&format!(
                "tenant '{tenant}' has {limit} sessions open"
            )),
        }
    }

    /// The metric label: `connections` or `tenant`.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::TooManyConnections { .. } => "connections",
            Refusal::TooManyForTenant { .. } => "tenant",
        }
    }
}

/// Counts open client connections and sessions per tenant against their limits.
#[derive(Clone, Debug)]
pub struct Admission {
    max_connections: u32,
    max_per_tenant: u32,
    open: u32,
    tenants: BTreeMap<String, u32>,
}

impl Admission {
    /// Counters under these limits, all zero.
    pub fn new(limits: &LimitsConfig) -> Self {
        Admission {
            max_connections: limits.max_connections,
            max_per_tenant: limits.max_connections_per_tenant,
            open: 0,
            tenants: BTreeMap::new(),
        }
    }

    /// New limits (a reload); what is open stays counted, even above them.
    pub fn set_limits(&mut self, limits: &LimitsConfig) {
        self.max_connections = limits.max_connections;
        self.max_per_tenant = limits.max_connections_per_tenant;
    }

    /// Counts a new client connection, or refuses it.
    pub fn open_connection(&mut self) -> Result<(), Refusal> {
        if self.open >= self.max_connections {
            return Err(Refusal::TooManyConnections {
                limit: self.max_connections,
            });
        }
        self.open += 1;
        Ok(())
    }

    /// A connection counted by [`Admission::open_connection`] ended.
    pub fn close_connection(&mut self) {
        self.open = self.open.saturating_sub(1);
    }

    /// Counts a logged-in session of `tenant`, or refuses it.
    pub fn enter_tenant(&mut self, tenant: &str) -> Result<(), Refusal> {
        let n = self.tenants.get(tenant).copied().unwrap_or(0);
        if n >= self.max_per_tenant {
            return Err(Refusal::TooManyForTenant {
                tenant: tenant.to_owned(),
                limit: self.max_per_tenant,
            });
        }
        self.tenants.insert(tenant.to_owned(), n + 1);
        Ok(())
    }

    /// A session counted by [`Admission::enter_tenant`] ended.
    pub fn leave_tenant(&mut self, tenant: &str) {
        if let Some(n) = self.tenants.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.tenants.remove(tenant);
            }
        }
    }

    /// Client connections open now.
    pub fn open(&self) -> u32 {
        self.open
    }

    /// Sessions of `tenant` now.
    pub fn tenant_sessions(&self, tenant: &str) -> u32 {
        self.tenants.get(tenant).copied().unwrap_or(0)
    }
}

/// When failed logins block an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginPolicy {
    /// Failures within `window` that block (0 = never).
    pub max_failures: u32,
    /// The counting window, from the first failure counted.
    pub window: Duration,
    /// How long a block lasts.
    pub block: Duration,
    /// Most addresses remembered.
    pub max_hosts: usize,
}

/// An address refused because of its failed logins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The address.
    pub host: IpAddr,
    /// When it is let in again.
    pub until: Timestamp,
    /// The failures that blocked it.
    pub failures: u32,
    /// The window they fell in.
    pub window: Duration,
}

impl Blocked {
    /// The ERR a refused connection gets (1129, as MariaDB words a blocked host).
    pub fn err(&self, now: Timestamp) -> ErrPacket {
        errors::host_blocked(
            &self.host.to_string(),
            self.failures,
            self.window,
            self.until.since(now),
        )
    }
}

#[derive(Clone, Debug)]
struct HostRecord {
    window_start: Timestamp,
    failures: u32,
    blocked_until: Option<Timestamp>,
    last_seen: Timestamp,
}

/// Counts failed logins per source address and blocks an address that fails
/// too often, remembering at most `max_hosts` addresses.
#[derive(Clone, Debug)]
pub struct LoginLimiter {
    policy: LoginPolicy,
    hosts: BTreeMap<IpAddr, HostRecord>,
}

impl LoginLimiter {
    /// A limiter with this policy and no history.
    pub fn new(policy: LoginPolicy) -> Self {
        LoginLimiter {
            policy,
            hosts: BTreeMap::new(),
        }
    }

    /// A new policy (a reload); blocks in force stay until they expire.
    pub fn set_policy(&mut self, policy: LoginPolicy) {
        self.policy = policy;
    }

    /// Whether `host` may try to log in now.
    pub fn check(&mut self, now: Timestamp, host: IpAddr) -> Result<(), Blocked> {
        let Some(record) = self.hosts.get_mut(&host) else {
            return Ok(());
        };
        match record.blocked_until {
            Some(until) if now < until => Err(Blocked {
                host,
                until,
                failures: record.failures,
                window: self.policy.window,
            }),
            Some(_) => {
                // The block is over: a clean slate.
                self.hosts.remove(&host);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A login from `host` failed; returns the block if this failure started one (log it once).
    pub fn failed(&mut self, now: Timestamp, host: IpAddr) -> Option<Blocked> {
        if self.policy.max_failures == 0 {
            return None;
        }
        if !self.hosts.contains_key(&host) && self.hosts.len() >= self.policy.max_hosts {
            self.make_room(now);
        }
        let policy = self.policy;
        let record = self.hosts.entry(host).or_insert(HostRecord {
            window_start: now,
            failures: 0,
            blocked_until: None,
            last_seen: now,
        });
        record.last_seen = now;
        if record.blocked_until.is_some() {
            return None;
        }
        if now.since(record.window_start) > policy.window {
            record.window_start = now;
            record.failures = 0;
        }
        record.failures += 1;
        if record.failures < policy.max_failures {
            return None;
        }
        let until = now + policy.block;
        record.blocked_until = Some(until);
        Some(Blocked {
            host,
            until,
            failures: record.failures,
            window: policy.window,
        })
    }

    /// A login from `host` succeeded: its count starts again (as MariaDB's
    /// `max_connect_errors` does). A block in force is not lifted.
    pub fn succeeded(&mut self, host: IpAddr) {
        if self
            .hosts
            .get(&host)
            .is_some_and(|r| r.blocked_until.is_none())
        {
            self.hosts.remove(&host);
        }
    }

    /// Addresses remembered now.
    pub fn tracked(&self) -> usize {
        self.hosts.len()
    }

    /// Addresses blocked at `now`.
    pub fn blocked(&self, now: Timestamp) -> usize {
        self.hosts
            .values()
            .filter(|r| r.blocked_until.is_some_and(|u| now < u))
            .count()
    }

    /// Forgets what has expired; if still full, the address seen longest ago
    /// that is not blocked (or, failing that, any seen longest ago).
    fn make_room(&mut self, now: Timestamp) {
        let policy = self.policy;
        self.hosts.retain(|_, r| match r.blocked_until {
            Some(until) => now < until,
            None => now.since(r.window_start) <= policy.window,
        });
        if self.hosts.len() < policy.max_hosts {
            return;
        }
        let victim = self
            .hosts
            .iter()
            .min_by_key(|(_, r)| (r.blocked_until.is_some(), r.last_seen))
            .map(|(h, _)| *h);
        if let Some(host) = victim {
            self.hosts.remove(&host);
        }
    }
}

/// When a session without traffic has been idle too long.
#[derive(Clone, Copy, Debug)]
pub struct IdleTimer {
    timeout: Option<Duration>,
    since: Timestamp,
}

impl IdleTimer {
    /// A timer that starts at `now`; None = never fires.
    pub fn new(timeout: Option<Duration>, now: Timestamp) -> Self {
        IdleTimer {
            timeout,
            since: now,
        }
    }

    /// There was traffic at `now`: the idle time starts again.
    pub fn touch(&mut self, now: Timestamp) {
        self.since = now;
    }

    /// When the session is idle too long, if it stays idle.
    pub fn deadline(&self) -> Option<Timestamp> {
        self.timeout.map(|t| self.since + t)
    }

    /// Whether the idle time is up at `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// The timeout, for messages.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

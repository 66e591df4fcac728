//! The proxy-wide limits behind their locks: connection and tenant counts,
//! the failed-login limiter, and their counters for `/metrics`.
//!
//! The bookkeeping is core's ([`ferry_core::limits`]); this wires it to
//! connections and logs a blocked address once per block.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use ferry_core::limits::{Admission, LimitsConfig, LoginLimiter, Refusal};
use ferry_core::packets::ErrPacket;
use ferry_core::Timestamp;
use tracing::warn;

/// Connection counts and failed logins for the whole proxy.
#[derive(Debug)]
pub struct Guards {
    admission: Mutex<Admission>,
    logins: Mutex<LoginLimiter>,
    refused_connections: AtomicU64,
    refused_tenant: AtomicU64,
    refused_blocked: AtomicU64,
    blocks_total: AtomicU64,
    /// Sessions closed by `idle_timeout_ms`.
    pub idle_closed: AtomicU64,
    /// Sessions closed because the client stopped reading (`write_timeout_ms`).
    pub write_timeouts: AtomicU64,
    /// The time of the last check, for the blocked-hosts gauge.
    last_now: Mutex<Timestamp>,
}

/// One admitted client connection: counted until dropped.
pub struct ConnectionPermit<'a>(&'a Guards);

impl Drop for ConnectionPermit<'_> {
    fn drop(&mut self) {
        self.0
            .admission
            .lock()
            .expect("admission lock")
            .close_connection();
    }
}

impl Guards {
    /// Counters under `limits`, all zero.
    pub fn new(limits: &LimitsConfig) -> Self {
        Guards {
            admission: Mutex::new(Admission::new(limits)),
            logins: Mutex::new(LoginLimiter::new(limits.login_policy())),
            refused_connections: AtomicU64::new(0),
            refused_tenant: AtomicU64::new(0),
            refused_blocked: AtomicU64::new(0),
            blocks_total: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            last_now: Mutex::new(Timestamp::ZERO),
        }
    }

    /// New limits from a reloaded config; what is open stays counted.
    pub fn reload(&self, limits: &LimitsConfig) {
        self.admission
            .lock()
            .expect("admission lock")
            .set_limits(limits);
        self.logins
            .lock()
            .expect("logins lock")
            .set_policy(limits.login_policy());
    }

    /// Lets a new connection from `peer` in, or says why not (the ERR to send before the handshake).
    pub fn admit(&self, now: Timestamp, peer: IpAddr) -> Result<ConnectionPermit<'_>, ErrPacket> {
        self.check_host(now, peer)?;
        self.open_connection()
    }

    /// Refuses `peer` if failed logins blocked it (the ERR to send before the handshake).
    pub fn check_host(&self, now: Timestamp, peer: IpAddr) -> Result<(), ErrPacket> {
        *self.last_now.lock().expect("now lock") = now;
        if let Err(blocked) = self.logins.lock().expect("logins lock").check(now, peer) {
            self.refused_blocked.fetch_add(1, Relaxed);
            return Err(blocked.err(now));
        }
        Ok(())
    }

    /// Counts a new connection against `max_connections`, from accept on:
    /// one still sending its PROXY header holds a slot too.
    pub fn open_connection(&self) -> Result<ConnectionPermit<'_>, ErrPacket> {
        match self
            .admission
            .lock()
            .expect("admission lock")
            .open_connection()
        {
            Ok(()) => Ok(ConnectionPermit(self)),
            Err(refusal) => Err(self.refused(&refusal)),
        }
    }

    /// Counts a logged-in session of `tenant`, or the ERR that refuses it.
    pub fn enter_tenant(&self, tenant: &str) -> Result<(), ErrPacket> {
        self.admission
            .lock()
            .expect("admission lock")
            .enter_tenant(tenant)
            .map_err(|refusal| self.refused(&refusal))
    }

    /// A session counted by [`Guards::enter_tenant`] ended.
    pub fn leave_tenant(&self, tenant: &str) {
        self.admission
            .lock()
            .expect("admission lock")
            .leave_tenant(tenant);
    }

    /// A login from `peer` was refused (wrong password, unknown user, bad name).
    pub fn login_failed(&self, now: Timestamp, peer: IpAddr) {
        let blocked = self.logins.lock().expect("logins lock").failed(now, peer);
        if let Some(b) = blocked {
            self.blocks_total.fetch_add(1, Relaxed);
            // Once per block: later refusals of the address are only counted.
            warn!(
                host = %b.host,
                failures = b.failures,
                window_s = b.window.as_secs(),
                blocked_for_s = b.until.since(now).as_secs(),
                "too many failed logins: address blocked"
            );
        }
    }

    /// A login from `peer` succeeded.
    pub fn login_succeeded(&self, peer: IpAddr) {
        self.logins.lock().expect("logins lock").succeeded(peer);
    }

    fn refused(&self, refusal: &Refusal) -> ErrPacket {
        let counter = match refusal {
            Refusal::TooManyConnections { .. } => &self.refused_connections,
            Refusal::TooManyForTenant { .. } => &self.refused_tenant,
        };
        counter.fetch_add(1, Relaxed);
        refusal.err()
    }

    /// The limits' lines of the Prometheus text.
    pub fn render(&self, out: &mut String) {
        let open = self.admission.lock().expect("admission lock").open();
        let now = *self.last_now.lock().expect("now lock");
        let (tracked, blocked) = {
            let logins = self.logins.lock().expect("logins lock");
            (logins.tracked(), logins.blocked(now))
        };
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "ferry_client_connections",
            "gauge",
            "Client connections open now, logged in or not (limits max_connections).",
            &[("", u64::from(open))],
        );
        metric(
            "ferry_connections_refused_total",
            "counter",
            "Connections refused by a limit: 1040 (connections, tenant), 1129 (host_blocked).",
            &[
                (
                    "{reason=\"connections\"}",
                    self.refused_connections.load(Relaxed),
                ),
                ("{reason=\"tenant\"}", self.refused_tenant.load(Relaxed)),
                (
                    "{reason=\"host_blocked\"}",
                    self.refused_blocked.load(Relaxed),
                ),
            ],
        );
        metric(
            "ferry_hosts_blocked_total",
            "counter",
            "Addresses blocked for too many failed logins.",
            &[("", self.blocks_total.load(Relaxed))],
        );
        metric(
            "ferry_hosts_blocked",
            "gauge",
            "Addresses blocked now (as of the last connection).",
            &[("", blocked as u64)],
        );
        metric(
            "ferry_failed_login_hosts",
            "gauge",
            "Addresses the failed-login limiter remembers (limits max_tracked_hosts).",
            &[("", tracked as u64)],
        );
        metric(
            "ferry_sessions_closed_total",
            "counter",
            "Sessions closed by a limit: idle_timeout_ms, write_timeout_ms.",
            &[
                ("{reason=\"idle\"}", self.idle_closed.load(Relaxed)),
                (
                    "{reason=\"write_timeout\"}",
                    self.write_timeouts.load(Relaxed),
                ),
            ],
        );
    }
}

//! The proxy's view of its backends: labels, work state, health, connection
//! counts, the routing decision for each new session, and the decisions to
//! move sessions: which ones, where to, and how fast.
//!
//! Moving a session is split between three parties. The cluster decides
//! ([`Cluster::plan_rebalance`], [`Cluster::plan_drain`], paced by a
//! [`Pacer`]) and accounts
//! ([`Cluster::transfer`] when a move starts, [`Cluster::transfer_back`] when
//! it fails); the shell keeps the registry of sessions, describes them to the
//! planners as [`SessionView`]s, and hands each [`MoveOrder`] to its session;
//! the session machine does the move itself.

pub mod health;
pub mod users;
pub mod usersync;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{BackendConfig, BackendTlsConfig, RebalanceConfig, WorkState};
use crate::health::{HealthCounter, HealthPolicy};
use crate::labels::{glob_match, Labels, ACCOUNT};
use crate::rng::Rng;
use crate::time::Timestamp;

/// A backend's name, as configured (`cn1`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendId(pub String);

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether health checks find a backend reachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// Answering (or not checked yet).
    #[default]
    Up,
    /// Failed its recent checks; takes no new sessions.
    Down,
}

/// One backend as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Its name.
    pub id: BackendId,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Its labels; values may be globs.
    pub labels: Labels,
    /// Work state set by operators.
    pub state: WorkState,
    /// Health from checks.
    pub health: Health,
    /// Its TLS setting; None = plain TCP.
    pub tls: Option<BackendTlsConfig>,
    /// Sessions currently counted on it.
    pub connections: u32,
    /// The same sessions by label group (tenant and requested labels).
    pub groups: BTreeMap<LabelGroup, u32>,
    /// Removed by an operator: forgotten as soon as its last session is gone.
    pub removing: bool,
    /// Down only because a new connection failed (passive health), not yet
    /// confirmed by `fall` failed checks: no new sessions, but its live
    /// sessions are not moved away (a full connection table refuses new
    /// connections while existing ones work).
    pub suspect: bool,
    checks: HealthCounter,
    /// When [`Cluster::plan_drain`] first saw it draining; None while working.
    drain_since: Option<Timestamp>,
    /// Why some of its sessions cannot leave, as of the last [`Cluster::plan_drain`].
    drain_stuck: Option<String>,
}

impl Backend {
    fn takes_new_sessions(&self) -> bool {
        self.state == WorkState::Working && self.health == Health::Up
    }

    /// Its sessions should leave: it is draining, drained or being removed.
    fn draining(&self) -> bool {
        self.state != WorkState::Working || self.removing
    }

    /// Forgets when and how a drain went, once it is working again.
    fn forget_drain(&mut self) {
        if !self.draining() {
            self.drain_since = None;
            self.drain_stuck = None;
        }
    }

    /// Sessions of `group` counted on it.
    fn in_group(&self, group: &LabelGroup) -> u64 {
        u64::from(self.groups.get(group).copied().unwrap_or(0))
    }

    /// True if this backend serves `tenant` (as its `account` label) and every requested label.
    fn serves(&self, tenant: Option<&str>, labels: &Labels) -> bool {
        let account_ok = match (tenant, self.labels.get(ACCOUNT)) {
            (Some(t), Some(pattern)) => glob_match(pattern, t),
            (None, None) => true,
            _ => false,
        };
        account_ok
            && labels.iter().filter(|(k, _)| *k != ACCOUNT).all(|(k, v)| {
                self.labels
                    .get(k)
                    .is_some_and(|pattern| glob_match(pattern, v))
            })
    }
}

/// What a session asks to be routed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRequest {
    /// The tenant, if any.
    pub tenant: Option<String>,
    /// Requested labels.
    pub labels: Labels,
}

impl RouteRequest {
    /// The tenant, given as a tenant or as the `account` label.
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref().or_else(|| self.labels.get(ACCOUNT))
    }
}

/// `tenant acc1 with labels region=eu` / `sessions without a tenant`, for messages.
fn describe(tenant: Option<&str>, labels: &Labels) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .filter(|(k, _)| *k != ACCOUNT)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let who = match tenant {
        Some(t) => format!("tenant {t}"),
        None => "sessions without a tenant".to_string(),
    };
    match (pairs.is_empty(), tenant.is_some()) {
        (true, _) => who,
        (false, true) => format!("{who} with labels {}", pairs.join(",")),
        (false, false) => format!("{who}, with labels {}", pairs.join(",")),
    }
}

/// Where a session goes. The backend's count already includes it; release it with [`Cluster::release`].
#[derive(Clone, PartialEq, Eq)]
pub struct Route {
    /// The chosen backend.
    pub backend: BackendId,
    /// Its address.
    pub addr: SocketAddr,
    /// The session's label group, counted on the backend too.
    pub group: LabelGroup,
    /// Whether ferry talks TLS with this backend (its `tls` setting).
    pub tls: bool,
}

impl fmt::Debug for Route {
    /// `tls` only when set: traces of plain-TCP sessions read as they always did.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Route");
        d.field("backend", &self.backend)
            .field("addr", &self.addr)
            .field("group", &self.group);
        if self.tls {
            d.field("tls", &true);
        }
        d.finish()
    }
}

/// Sessions that asked for the same tenant and labels, e.g. `acc1?region=eu`
/// (empty for no tenant and no labels).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelGroup(pub String);

impl LabelGroup {
    /// The group of a session with `tenant` and `labels`.
    pub fn of(tenant: Option<&str>, labels: &Labels) -> Self {
        let mut key = tenant.unwrap_or("").to_string();
        let pairs: Vec<String> = labels
            .iter()
            .filter(|(k, _)| *k != ACCOUNT)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !pairs.is_empty() {
            key.push('?');
            key.push_str(&pairs.join(","));
        }
        LabelGroup(key)
    }
}

impl fmt::Display for LabelGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// No backend can take a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoBackend {
    /// The session's tenant.
    pub tenant: Option<String>,
    /// The session's labels.
    pub labels: Labels,
}

/// No backend has this id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownBackend(pub BackendId);

impl fmt::Display for UnknownBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no backend '{}'", self.0)
    }
}

impl std::error::Error for UnknownBackend {}

/// A change of a backend that the cluster made on its own, for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendChange {
    /// A draining backend lost its last session.
    Drained(BackendId),
    /// A removed backend lost its last session and is gone.
    Forgotten(BackendId),
    /// Health checks changed its health.
    Health(BackendId, Health),
}

/// What [`Cluster::remove`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// It had no sessions and is gone.
    Forgotten,
    /// It takes no new sessions and is forgotten when its last session ends.
    Draining,
}

/// What [`Cluster::reconcile`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Backends that were not there before.
    pub added: Vec<BackendId>,
    /// Backends whose address, labels or state changed.
    pub updated: Vec<BackendId>,
    /// Backends no longer configured (forgotten now, or once their sessions end).
    pub removed: Vec<BackendId>,
}

/// A ferry connection id: the one in ferry's handshake, stable across moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u32);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a session is asked to move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// An operator asked for it.
    Admin,
    /// Its backend holds more than its share of the session's label group.
    Rebalance,
    /// Its backend is draining or being removed.
    Drain,
    /// Health checks find its backend down.
    Failover,
}

impl Trigger {
    /// Every trigger, for metrics.
    pub const ALL: [Trigger; 4] = [
        Trigger::Admin,
        Trigger::Rebalance,
        Trigger::Drain,
        Trigger::Failover,
    ];

    /// `admin`, `rebalance`, `drain` or `failover`: for metric labels and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Admin => "admin",
            Trigger::Rebalance => "rebalance",
            Trigger::Drain => "drain",
            Trigger::Failover => "failover",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One session the cluster wants moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveOrder {
    /// Which session.
    pub session: SessionId,
    /// Why.
    pub trigger: Trigger,
    /// Where to; None = let [`Cluster::transfer`] choose when the move starts.
    pub to: Option<BackendId>,
}

/// One session as the planners see it; the shell builds these from its registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// Its id.
    pub id: SessionId,
    /// Where the cluster counts it now (after [`Cluster::transfer`], the target's route).
    pub route: Route,
    /// What it asked to be routed by.
    pub request: RouteRequest,
    /// It is at a safe point now, nothing blocks a move, and it is not waiting
    /// out the backoff after a failed move.
    pub movable: bool,
    /// A move is pending or in progress.
    pub moving: bool,
    /// When it last moved, if ever.
    pub last_moved: Option<Timestamp>,
}

/// The outcome of a [`Cluster::transfer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transferred {
    /// Where the session is counted now; release this route when it ends.
    pub route: Route,
    /// What taking the count off the old backend changed (drained, forgotten).
    pub change: Option<BackendChange>,
}

/// Why [`Cluster::transfer`] found no backend for a session; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoTarget {
    /// No backend has the requested id.
    Unknown(BackendId),
    /// The session is already counted there.
    Same(BackendId),
    /// The requested backend takes no sessions now; `why` is `draining`,
    /// `drained`, `being removed` or `down`.
    Closed {
        /// The backend.
        backend: BackendId,
        /// Its condition.
        why: &'static str,
    },
    /// The requested backend belongs to a tenant other than the session's.
    OtherTenant(BackendId),
    /// The requested backend is the shared pool, but a backend of the
    /// session's own tenant and labels takes sessions (its own one included).
    PoolNotNeeded {
        /// The backend.
        backend: BackendId,
        /// The session's tenant.
        tenant: Option<String>,
        /// The session's labels.
        labels: Labels,
    },
    /// The requested backend lacks a label the session asked for.
    Mismatch {
        /// The backend.
        backend: BackendId,
        /// The session's tenant.
        tenant: Option<String>,
        /// The session's labels.
        labels: Labels,
    },
    /// No backend other than the session's own can take it.
    Nowhere {
        /// The session's tenant.
        tenant: Option<String>,
        /// The session's labels.
        labels: Labels,
    },
}

impl fmt::Display for NoTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoTarget::Unknown(b) => write!(f, "no backend '{b}'"),
            NoTarget::Same(b) => write!(f, "the session is already on backend '{b}'"),
            NoTarget::Closed { backend, why } => write!(f, "backend '{backend}' is {why}"),
            NoTarget::OtherTenant(b) => write!(f, "backend '{b}' serves another tenant"),
            NoTarget::PoolNotNeeded {
                backend,
                tenant,
                labels,
            } => write!(
                f,
                "backend '{backend}' is the shared pool, used only when no backend serves {}",
                describe(tenant.as_deref(), labels)
            ),
            NoTarget::Mismatch {
                backend,
                tenant,
                labels,
            } => write!(
                f,
                "backend '{backend}' does not serve {}",
                describe(tenant.as_deref(), labels)
            ),
            NoTarget::Nowhere { tenant, labels } => write!(
                f,
                "no other backend can take {}",
                describe(tenant.as_deref(), labels)
            ),
        }
    }
}

impl std::error::Error for NoTarget {}

/// How rebalancing works: from the `rebalance` section of the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalancePolicy {
    /// Time between two rounds; zero disables rebalancing.
    pub interval: Duration,
    /// A backend above `ceil(average × (1 + tolerance))` sessions of a group gives some up.
    pub tolerance: f64,
    /// How many moves may start per second; see [`Pacer`].
    pub moves_per_second: u32,
    /// A session that moved less than this long ago is left alone by rebalancing.
    pub cooldown: Duration,
}

impl Default for BalancePolicy {
    /// 10 s, 0.3, 50 per second, 30 s.
    fn default() -> Self {
        RebalanceConfig::default().policy()
    }
}

impl RebalanceConfig {
    /// The policy [`Cluster::plan_rebalance`] follows.
    pub fn policy(&self) -> BalancePolicy {
        BalancePolicy {
            interval: self.interval(),
            tolerance: self.tolerance,
            moves_per_second: self.moves_per_second,
            cooldown: self.cooldown(),
        }
    }
}

/// What [`Cluster::plan_drain`] wants done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainPlan {
    /// Sessions to move (trigger `Failover` or `Drain`, target chosen at
    /// [`Cluster::transfer`]); failovers first, then by session id.
    pub orders: Vec<MoveOrder>,
    /// Backends whose sessions must leave but some cannot, and why, in id order.
    pub stuck: Vec<(BackendId, String)>,
    /// Sessions to close: their backend has been draining for the drain timeout.
    pub expired: Vec<SessionId>,
}

/// How the drain of one backend is going, for the admin API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrainStatus {
    /// When the drain was first seen by [`Cluster::plan_drain`].
    pub since: Timestamp,
    /// Why some sessions cannot leave, e.g. `no other backend can take tenant acc1`.
    pub stuck: Option<String>,
}

/// A token bucket that paces moves: `per_second` may start each second, in
/// bursts of at most `per_second / 10` (at least 1), so a drain or a
/// rebalance round never starts all its moves at once.
///
/// Time is the caller's [`Timestamp`]; a timestamp earlier than one seen
/// before counts as no time passing. The bucket starts full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pacer {
    per_second: u64,
    /// Capacity, in millionths of a move.
    burst: u64,
    /// Available, in millionths of a move.
    tokens: u64,
    last: Option<Timestamp>,
}

/// Millionths of a move in one move: one per second is one per microsecond.
const MOVE: u64 = 1_000_000;

impl Pacer {
    /// A pacer that lets `per_second` moves start per second (0 is read as 1).
    pub fn new(per_second: u32) -> Self {
        let per_second = u64::from(per_second.max(1));
        let burst = (per_second / 10).max(1) * MOVE;
        Pacer {
            per_second,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// How many of `wanted` moves may start at `now`; those are taken.
    pub fn take(&mut self, now: Timestamp, wanted: usize) -> usize {
        self.refill(now);
        let n = (self.tokens / MOVE).min(wanted as u64);
        self.tokens -= n * MOVE;
        n as usize
    }

    /// When the next move may start, if one is wanted at `now` (`now` if one may already).
    pub fn next_at(&self, now: Timestamp) -> Timestamp {
        let mut ahead = self.clone();
        ahead.refill(now);
        let missing = MOVE.saturating_sub(ahead.tokens);
        if missing == 0 {
            return now;
        }
        let from = ahead.last.unwrap_or(now).max(now);
        from + Duration::from_micros(missing.div_ceil(self.per_second))
    }

    fn refill(&mut self, now: Timestamp) {
        if let Some(last) = self.last {
            let elapsed = u64::try_from(now.since(last).as_micros()).unwrap_or(u64::MAX);
            let earned = elapsed.saturating_mul(self.per_second);
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
        }
        if !matches!(self.last, Some(last) if now <= last) {
            self.last = Some(now);
        }
    }
}

/// The sessions of one label group, as [`Cluster::plan_rebalance`] sees them.
struct Group<'a> {
    /// What one of them asked to be routed by (all of them asked the same).
    request: &'a RouteRequest,
    /// Their views by the backend they are counted on, lowest id first.
    on: BTreeMap<&'a BackendId, Vec<&'a SessionView>>,
}

/// All backends of one proxy.
#[derive(Clone, Debug)]
pub struct Cluster {
    backends: BTreeMap<BackendId, Backend>,
    rng: Rng,
    policy: HealthPolicy,
}

impl Cluster {
    /// A cluster with the configured backends; `seed` drives tie-breaks.
    pub fn new(backends: &[BackendConfig], seed: u64) -> Self {
        let mut cluster = Cluster {
            backends: BTreeMap::new(),
            rng: Rng::new(seed),
            policy: HealthPolicy::default(),
        };
        for b in backends {
            cluster.upsert(b);
        }
        cluster
    }

    /// Sets how many consecutive check results change a backend's health.
    pub fn set_health_policy(&mut self, policy: HealthPolicy) {
        self.policy = policy;
    }

    /// Adds a backend or updates its address, labels and state (keeping its count and health).
    ///
    /// Updating a backend that was being removed keeps it. A `draining` or
    /// `drained` state on a backend with no sessions becomes `drained`; a
    /// `drained` state on one that still has sessions becomes `draining`.
    pub fn upsert(&mut self, config: &BackendConfig) {
        let id = BackendId(config.id.clone());
        let entry = self.backends.entry(id.clone()).or_insert_with(|| Backend {
            id: id.clone(),
            addr: config.addr,
            labels: Labels::default(),
            state: WorkState::Working,
            health: Health::Up,
            tls: None,
            connections: 0,
            groups: BTreeMap::new(),
            removing: false,
            suspect: false,
            checks: HealthCounter::default(),
            drain_since: None,
            drain_stuck: None,
        });
        entry.addr = config.addr;
        entry.labels = config.labels.clone();
        entry.state = config.state;
        entry.tls = config.tls.clone();
        entry.removing = false;
        entry.forget_drain();
        self.settle(&id);
    }

    /// Sets a backend's work state (`working` also cancels a pending removal).
    pub fn set_state(&mut self, id: &BackendId, state: WorkState) -> Result<(), UnknownBackend> {
        let b = self
            .backends
            .get_mut(id)
            .ok_or_else(|| UnknownBackend(id.clone()))?;
        b.state = state;
        if state == WorkState::Working {
            b.removing = false;
        }
        b.forget_drain();
        self.settle(id);
        Ok(())
    }

    /// Stops routing to a backend; it is forgotten once its last session ends.
    pub fn remove(&mut self, id: &BackendId) -> Result<Removal, UnknownBackend> {
        let b = self
            .backends
            .get_mut(id)
            .ok_or_else(|| UnknownBackend(id.clone()))?;
        b.removing = true;
        if b.state == WorkState::Working {
            b.state = WorkState::Draining;
        }
        Ok(match self.settle(id) {
            Some(BackendChange::Forgotten(_)) => Removal::Forgotten,
            _ => Removal::Draining,
        })
    }

    /// Applies a re-read config: what changed from `old` to `new` is upserted,
    /// what `new` no longer lists is removed. Backends whose entry did not
    /// change are left as they are (an operator's drain survives a reload).
    pub fn reconcile(&mut self, old: &[BackendConfig], new: &[BackendConfig]) -> Reconciled {
        let mut report = Reconciled::default();
        for b in new {
            let id = BackendId(b.id.clone());
            let before = old.iter().find(|o| o.id == b.id);
            let known = self.backends.get(&id).is_some_and(|k| !k.removing);
            if before == Some(b) && known {
                continue;
            }
            if known {
                report.updated.push(id);
            } else {
                report.added.push(id);
            }
            self.upsert(b);
        }
        for o in old {
            if !new.iter().any(|b| b.id == o.id) {
                let id = BackendId(o.id.clone());
                if self.remove(&id).is_ok() {
                    report.removed.push(id);
                }
            }
        }
        report
    }

    /// Records one health check of `id`; returns the change if its health flipped.
    pub fn record_check(&mut self, id: &BackendId, ok: bool) -> Option<BackendChange> {
        let policy = self.policy;
        let b = self.backends.get_mut(id)?;
        let changed = b.checks.record(ok, policy);
        if !ok && b.checks.failures() >= policy.fall.max(1) {
            // The checks confirm it down.
            b.suspect = false;
        }
        let health = changed?;
        b.health = health;
        b.suspect = false;
        Some(BackendChange::Health(id.clone(), health))
    }

    /// Takes a backend out of routing at once because connecting to it failed
    /// (passive health), without waiting for `fall` failed checks; `rise`
    /// good checks bring it back. Returns the change if its health flipped.
    ///
    /// While it is down, [`Cluster::plan_drain`] orders its sessions away
    /// (trigger `Failover`), including those whose connections still work.
    pub fn mark_unreachable(&mut self, id: &BackendId) -> Option<BackendChange> {
        let b = self.backends.get_mut(id)?;
        let health = b.checks.force_down()?;
        b.health = health;
        b.suspect = true;
        Some(BackendChange::Health(id.clone(), health))
    }

    /// The backends, in id order.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.values()
    }

    /// One backend.
    pub fn backend(&self, id: &BackendId) -> Option<&Backend> {
        self.backends.get(id)
    }

    /// Chooses a backend for a new session and counts the session on it.
    ///
    /// Candidates are the working, healthy backends that serve the tenant and
    /// every label; failing those, the unlabelled ones. Fewest connections
    /// wins; ties are broken at random so equal backends share evenly.
    pub fn route(&mut self, req: &RouteRequest) -> Result<Route, NoBackend> {
        let tenant = req.tenant();
        let group = LabelGroup::of(tenant, &req.labels);
        let id = self.pick_fewest(req, None).ok_or_else(|| NoBackend {
            tenant: tenant.map(str::to_string),
            labels: req.labels.clone(),
        })?;
        Ok(self.count_on(&id, group))
    }

    /// The backends that may take a session asking for `req`: the working,
    /// healthy ones that serve its tenant and labels; failing those, the
    /// unlabelled ones. `except` is left out afterwards, so a session on its
    /// tenant's only backend has no candidate, rather than the shared pool.
    fn candidates(&self, req: &RouteRequest, except: Option<&BackendId>) -> Vec<&Backend> {
        let tenant = req.tenant();
        let open = || self.backends.values().filter(|b| b.takes_new_sessions());
        let mut list: Vec<&Backend> = open().filter(|b| b.serves(tenant, &req.labels)).collect();
        if list.is_empty() {
            list = open().filter(|b| b.labels.is_empty()).collect();
        }
        list.retain(|b| Some(&b.id) != except);
        list
    }

    /// The candidate with the fewest connections, ties broken at random.
    fn pick_fewest(&mut self, req: &RouteRequest, except: Option<&BackendId>) -> Option<BackendId> {
        let candidates = self.candidates(req, except);
        let fewest = candidates.iter().map(|b| b.connections).min()?;
        let ties: Vec<BackendId> = candidates
            .into_iter()
            .filter(|b| b.connections == fewest)
            .map(|b| b.id.clone())
            .collect();
        Some(ties[self.rng.below(ties.len())].clone())
    }

    /// Counts one session of `group` on `id`, which exists.
    fn count_on(&mut self, id: &BackendId, group: LabelGroup) -> Route {
        let backend = self.backends.get_mut(id).expect("counted backend exists");
        backend.connections += 1;
        *backend.groups.entry(group.clone()).or_default() += 1;
        let route = Route {
            backend: backend.id.clone(),
            addr: backend.addr,
            group,
            tls: backend.tls.is_some(),
        };
        self.settle(id);
        route
    }

    /// Moves the count of a session counted on `from` to another backend, as
    /// its move starts: `to` if given, else the backend `route` would choose
    /// for the session, other than `from`. Nothing changes on error.
    ///
    /// `to` must not be `from` and must pass [`Cluster::eligible`]: an
    /// operator cannot send a tenant's session to another tenant's backend,
    /// nor to the shared pool while a backend of its own takes sessions.
    /// Without `to`, a session whose own backend is the only one serving it
    /// (and still takes sessions) has nowhere to go: it is not pushed into
    /// the pool, which rebalancing would only undo.
    ///
    /// `from` may name a backend that is gone (forgotten after a removal while
    /// the session's earlier move failed); then only the target is counted.
    /// `from` is settled like [`Cluster::release`] settles: a draining backend
    /// whose last session this was becomes drained (a removed one is
    /// forgotten) at once, though the move may still fail; see
    /// [`Cluster::transfer_back`].
    pub fn transfer(
        &mut self,
        from: &Route,
        req: &RouteRequest,
        to: Option<&BackendId>,
    ) -> Result<Transferred, NoTarget> {
        let target = match to {
            Some(to) if *to == from.backend => return Err(NoTarget::Same(to.clone())),
            Some(to) => {
                self.eligible(to, req)?;
                to.clone()
            }
            None => {
                self.pick_fewest(req, Some(&from.backend))
                    .ok_or_else(|| NoTarget::Nowhere {
                        tenant: req.tenant().map(str::to_string),
                        labels: req.labels.clone(),
                    })?
            }
        };
        let route = self.count_on(&target, from.group.clone());
        #[cfg(feature = "sabotage")]
        if crate::sabotage::is(crate::sabotage::Fault::MiscountTransfer) {
            return Ok(Transferred {
                route,
                change: None,
            });
        }
        let change = self.release(from);
        Ok(Transferred { route, change })
    }

    /// Whether `to` may take a session asking for `req`, by the rules of
    /// [`Cluster::route`]: it exists, works, is healthy and not being
    /// removed, and is where routing could send the session now (serving its
    /// tenant and labels, or the shared pool when no backend does). Does not
    /// look at where the session is; [`Cluster::transfer`] refuses its own
    /// backend.
    pub fn eligible(&self, to: &BackendId, req: &RouteRequest) -> Result<(), NoTarget> {
        let b = self
            .backends
            .get(to)
            .ok_or_else(|| NoTarget::Unknown(to.clone()))?;
        let closed = |why| {
            Err(NoTarget::Closed {
                backend: to.clone(),
                why,
            })
        };
        if b.removing {
            return closed("being removed");
        }
        match b.state {
            WorkState::Working => {}
            WorkState::Draining => return closed("draining"),
            WorkState::Drained => return closed("drained"),
        }
        if b.health == Health::Down {
            return closed("down");
        }
        if self.candidates(req, None).iter().any(|c| c.id == *to) {
            return Ok(());
        }
        let tenant = req.tenant().map(str::to_string);
        let labels = req.labels.clone();
        let backend = to.clone();
        Err(match b.labels.get(ACCOUNT) {
            Some(account) if !tenant.as_deref().is_some_and(|t| glob_match(account, t)) => {
                NoTarget::OtherTenant(backend)
            }
            _ if b.labels.is_empty() => NoTarget::PoolNotNeeded {
                backend,
                tenant,
                labels,
            },
            _ => NoTarget::Mismatch {
                backend,
                tenant,
                labels,
            },
        })
    }

    /// Counts a session back where it was because its move failed: off
    /// `moved` (the route [`Cluster::transfer`] returned), onto `original`.
    ///
    /// If `original`'s backend has been forgotten meanwhile (it was removed
    /// and the transfer took its last count), the session is counted nowhere:
    /// [`Cluster::plan_drain`] orders every session on a forgotten backend
    /// to move. A drained backend that gets a session back is draining again.
    /// Returns what settling `moved`'s backend changed, as
    /// [`Cluster::release`] does.
    pub fn transfer_back(&mut self, moved: &Route, original: &Route) -> Option<BackendChange> {
        if self.backends.contains_key(&original.backend) {
            self.count_on(&original.backend, original.group.clone());
        }
        self.release(moved)
    }

    /// Stops counting one session routed by `route`; a draining backend left
    /// empty becomes drained, a removed one is forgotten.
    pub fn release(&mut self, route: &Route) -> Option<BackendChange> {
        let b = self.backends.get_mut(&route.backend)?;
        b.connections = b.connections.saturating_sub(1);
        if let Some(n) = b.groups.get_mut(&route.group) {
            *n -= 1;
            if *n == 0 {
                b.groups.remove(&route.group);
            }
        }
        self.settle(&route.backend)
    }

    /// Which sessions should move to even out the label groups, and where to.
    ///
    /// Each label group is balanced on its own, over the backends a session
    /// of the group may be routed to now (working, healthy, serving its tenant
    /// and labels, or the shared pool failing those): with `avg` its sessions
    /// on working, healthy backends divided by the number of such backends, a
    /// backend holding more than `ceil(avg × (1 + tolerance))` of them gives
    /// up all above `ceil(avg)` — it is asked to come down to the average, not
    /// just under the limit, so one round ends the imbalance and a second
    /// round finds nothing to do. A working, healthy backend that holds
    /// sessions of the group but may no longer be routed to for it (the
    /// shared pool once the tenant's own backend is back, a backend relabelled
    /// for another tenant) gives up all of them. Sessions on draining, down or
    /// removed backends are left to [`Cluster::plan_drain`].
    ///
    /// Counts are the cluster's; sessions already `moving` count as leaving
    /// their backend, so a round never orders again what an earlier round
    /// ordered. Of a backend's sessions, only those `movable`, not `moving`
    /// and not moved within `policy.cooldown` are picked, lowest id first
    /// (the oldest: deterministic, and the same sessions are not picked again
    /// before the cooldown ends). Each order names its target: the eligible
    /// backend with the fewest sessions of the group counting the orders so
    /// far, then the fewest connections, ties at random; no target is filled
    /// beyond `ceil(avg)`.
    ///
    /// Nothing is counted here: the shell calls [`Cluster::transfer`] as each
    /// move starts. A zero `policy.interval` (rebalancing disabled) plans nothing.
    pub fn plan_rebalance(
        &mut self,
        sessions: &[SessionView],
        now: Timestamp,
        policy: &BalancePolicy,
    ) -> Vec<MoveOrder> {
        let mut orders = Vec::new();
        if policy.interval.is_zero() {
            return orders;
        }
        // The sessions of each group on each backend, lowest id first.
        let mut groups: BTreeMap<&LabelGroup, Group> = BTreeMap::new();
        let mut sorted: Vec<&SessionView> = sessions.iter().collect();
        sorted.sort_by_key(|s| s.id);
        for s in sorted {
            groups
                .entry(&s.route.group)
                .or_insert_with(|| Group {
                    request: &s.request,
                    on: BTreeMap::new(),
                })
                .on
                .entry(&s.route.backend)
                .or_default()
                .push(s);
        }
        let mut totals: BTreeMap<BackendId, u64> = self
            .backends
            .values()
            .map(|b| (b.id.clone(), u64::from(b.connections)))
            .collect();
        let tolerance = policy.tolerance.max(0.0);
        let cooled =
            |s: &SessionView| !matches!(s.last_moved, Some(t) if now.since(t) < policy.cooldown);
        for (group, g) in groups {
            let eligible: Vec<BackendId> = self
                .candidates(g.request, None)
                .into_iter()
                .map(|b| b.id.clone())
                .collect();
            if eligible.is_empty() {
                continue;
            }
            let holders: Vec<&Backend> = self
                .backends
                .values()
                .filter(|b| b.takes_new_sessions() && b.in_group(group) > 0)
                .collect();
            let total: u64 = holders.iter().map(|b| b.in_group(group)).sum();
            let n = eligible.len() as u64;
            let share = total.div_ceil(n);
            let limit = ((total as f64 / n as f64) * (1.0 + tolerance))
                .ceil()
                .max(1.0);
            let mut load: BTreeMap<BackendId, u64> = eligible
                .iter()
                .map(|id| (id.clone(), self.backends[id].in_group(group)))
                .collect();
            let mut give: Vec<(BackendId, u64)> = Vec::new();
            for b in &holders {
                let on = g.on.get(&b.id).map(Vec::as_slice).unwrap_or_default();
                let leaving = on.iter().filter(|s| s.moving).count() as u64;
                let held = b.in_group(group).saturating_sub(leaving);
                let excess = if !eligible.contains(&b.id) {
                    held
                } else if held as f64 > limit {
                    held - share
                } else {
                    0
                };
                if excess > 0 {
                    give.push((b.id.clone(), excess));
                }
            }
            for (from, excess) in give {
                let on = g.on.get(&from).map(Vec::as_slice).unwrap_or_default();
                let picks = on.iter().filter(|s| s.movable && !s.moving && cooled(s));
                for s in picks.take(excess as usize) {
                    let Some(to) = self.least_loaded(&load, &totals, &from, share) else {
                        break;
                    };
                    *load.get_mut(&to).expect("target is eligible") += 1;
                    if let Some(l) = load.get_mut(&from) {
                        *l -= 1;
                    }
                    *totals.get_mut(&to).expect("target exists") += 1;
                    if let Some(t) = totals.get_mut(&from) {
                        *t = t.saturating_sub(1);
                    }
                    orders.push(MoveOrder {
                        session: s.id,
                        trigger: Trigger::Rebalance,
                        to: Some(to),
                    });
                }
            }
        }
        orders
    }

    /// The backend in `load` other than `from` with the fewest sessions of the
    /// group (below `share`), then the fewest connections, ties at random.
    fn least_loaded(
        &mut self,
        load: &BTreeMap<BackendId, u64>,
        totals: &BTreeMap<BackendId, u64>,
        from: &BackendId,
        share: u64,
    ) -> Option<BackendId> {
        let open: Vec<(&BackendId, (u64, u64))> = load
            .iter()
            .filter(|(id, &l)| *id != from && l < share)
            .map(|(id, &l)| (id, (l, totals[id])))
            .collect();
        let least = open.iter().map(|(_, key)| *key).min()?;
        let ties: Vec<&BackendId> = open
            .iter()
            .filter(|(_, key)| *key == least)
            .map(|(id, _)| *id)
            .collect();
        let pick = if ties.len() == 1 {
            0
        } else {
            self.rng.below(ties.len())
        };
        Some(ties[pick].clone())
    }

    /// Which sessions must leave their backend, and which have waited too long.
    ///
    /// One call serves drain and failover. A session gets an order when it is
    /// `movable` and not `moving` and its backend
    /// - is down by health checks, even while its own connection still looks
    ///   alive: trigger `Failover` (also when the backend is draining);
    /// - is draining, drained or being removed: trigger `Drain`;
    /// - is gone (forgotten after a removal while the session's move failed,
    ///   see [`Cluster::transfer_back`]): trigger `Drain`.
    ///
    /// Orders name no target: [`Cluster::transfer`] picks the least loaded
    /// backend as each move starts, so moves spread over the targets as they
    /// go. The cooldown of rebalancing does not apply. A session that no
    /// other backend can take gets no order; its backend is listed in
    /// `stuck` with the reason (one per label group that is stuck, `; `
    /// between them).
    ///
    /// When a backend started draining is recorded lazily: at the first call
    /// that sees it draining (so callers need no clock where states change;
    /// call this often — every rebalance interval or second — and the time
    /// is exact to that), and forgotten when it works again. Once
    /// `drain_timeout` has passed since then, every session still counted on
    /// it, moving or not, is listed in `expired` for the shell to close, and
    /// gets no order; a zero `drain_timeout` never expires anything. Down
    /// backends that are not draining never expire sessions. What this call
    /// finds is kept for [`Cluster::drain_status`].
    pub fn plan_drain(
        &mut self,
        sessions: &[SessionView],
        now: Timestamp,
        drain_timeout: Duration,
    ) -> DrainPlan {
        for b in self.backends.values_mut() {
            if b.draining() {
                b.drain_since.get_or_insert(now);
            }
        }
        let mut sorted: Vec<&SessionView> = sessions.iter().collect();
        sorted.sort_by_key(|s| s.id);
        let mut plan = DrainPlan::default();
        let (mut failovers, mut drains) = (Vec::new(), Vec::new());
        let mut stuck: BTreeMap<BackendId, BTreeMap<LabelGroup, String>> = BTreeMap::new();
        for s in sorted {
            let from = &s.route.backend;
            let backend = self.backends.get(from);
            let trigger = match backend {
                None => Trigger::Drain,
                Some(b) if b.health == Health::Down && !b.suspect => Trigger::Failover,
                Some(b) if b.draining() => Trigger::Drain,
                Some(_) => continue,
            };
            let expired = backend.is_some_and(|b| {
                b.draining()
                    && !drain_timeout.is_zero()
                    && b.drain_since
                        .is_some_and(|since| now.since(since) >= drain_timeout)
            });
            if expired {
                plan.expired.push(s.id);
                continue;
            }
            if self.candidates(&s.request, Some(from)).is_empty() {
                let nowhere = NoTarget::Nowhere {
                    tenant: s.request.tenant().map(str::to_string),
                    labels: s.request.labels.clone(),
                };
                stuck
                    .entry(from.clone())
                    .or_default()
                    .entry(s.route.group.clone())
                    .or_insert_with(|| nowhere.to_string());
                continue;
            }
            if s.movable && !s.moving {
                let order = MoveOrder {
                    session: s.id,
                    trigger,
                    to: None,
                };
                match trigger {
                    Trigger::Failover => failovers.push(order),
                    _ => drains.push(order),
                }
            }
        }
        plan.orders = failovers;
        plan.orders.append(&mut drains);
        plan.stuck = stuck
            .into_iter()
            .map(|(id, why)| (id, why.into_values().collect::<Vec<_>>().join("; ")))
            .collect();
        for b in self.backends.values_mut() {
            if b.draining() {
                b.drain_stuck = plan
                    .stuck
                    .iter()
                    .find(|(id, _)| *id == b.id)
                    .map(|(_, why)| why.clone());
            }
        }
        plan
    }

    /// How the drain of `id` is going, as of the last [`Cluster::plan_drain`]:
    /// None if it is working (or unknown, or no plan has seen it draining yet).
    pub fn drain_status(&self, id: &BackendId) -> Option<DrainStatus> {
        let b = self.backends.get(id)?;
        Some(DrainStatus {
            since: b.drain_since.filter(|_| b.draining())?,
            stuck: b.drain_stuck.clone(),
        })
    }

    /// The total number of sessions counted on all backends.
    pub fn total_connections(&self) -> u64 {
        self.backends
            .values()
            .map(|b| u64::from(b.connections))
            .sum()
    }

    /// Moves a backend with no sessions left on from `draining` (or removal).
    fn settle(&mut self, id: &BackendId) -> Option<BackendChange> {
        let b = self.backends.get_mut(id)?;
        if b.connections > 0 {
            if b.state == WorkState::Drained {
                b.state = WorkState::Draining;
            }
            return None;
        }
        if b.removing {
            self.backends.remove(id);
            return Some(BackendChange::Forgotten(id.clone()));
        }
        if b.state == WorkState::Draining {
            b.state = WorkState::Drained;
            return Some(BackendChange::Drained(id.clone()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: &str, port: u16, labels: &[(&str, &str)]) -> BackendConfig {
        BackendConfig {
            compress_backend: true,
            id: id.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            labels: labels.iter().copied().collect(),
            state: WorkState::Working,
            tls: None,
            proxy_protocol: false,
        }
    }

    fn req(tenant: Option<&str>, labels: &[(&str, &str)]) -> RouteRequest {
        RouteRequest {
            tenant: tenant.map(str::to_string),
            labels: labels.iter().copied().collect(),
        }
    }

    fn id(s: &str) -> BackendId {
        BackendId(s.into())
    }

    /// A route to `s` for a session without tenant or labels.
    fn routed(s: &str) -> Route {
        Route {
            backend: id(s),
            addr: "127.0.0.1:1".parse().unwrap(),
            group: LabelGroup::default(),
            tls: false,
        }
    }

    fn counts(c: &Cluster) -> Vec<(String, u32)> {
        c.backends()
            .map(|b| (b.id.0.clone(), b.connections))
            .collect()
    }

    fn three() -> Cluster {
        Cluster::new(
            &[
                backend("cn1", 1, &[]),
                backend("cn2", 2, &[]),
                backend("cn3", 3, &[]),
            ],
            7,
        )
    }

    #[test]
    fn equal_backends_share_evenly() {
        let mut c = three();
        for _ in 0..30 {
            c.route(&req(None, &[])).unwrap();
        }
        assert_eq!(
            counts(&c),
            [("cn1".into(), 10), ("cn2".into(), 10), ("cn3".into(), 10)]
        );
        assert_eq!(c.total_connections(), 30);
    }

    #[test]
    fn ties_are_broken_at_random_and_replay_with_the_seed() {
        let firsts = |seed| {
            (0..40)
                .map(|_| {
                    let mut c = Cluster::new(
                        &[
                            backend("cn1", 1, &[]),
                            backend("cn2", 2, &[]),
                            backend("cn3", 3, &[]),
                        ],
                        seed,
                    );
                    c.rng = Rng::new(seed);
                    c.route(&req(None, &[])).unwrap().backend.0
                })
                .collect::<Vec<_>>()
        };
        // Same seed, same choice; different seeds spread the first session.
        assert_eq!(firsts(1), firsts(1));
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let mut c = three();
            c.rng = Rng::new(seed);
            seen.insert(c.route(&req(None, &[])).unwrap().backend.0);
        }
        assert_eq!(seen.len(), 3, "list order must not decide ties: {seen:?}");
    }

    #[test]
    fn fewest_connections_wins() {
        let mut c = three();
        for _ in 0..3 {
            c.route(&req(None, &[])).unwrap();
        }
        c.release(&routed("cn2"));
        assert_eq!(c.route(&req(None, &[])).unwrap().backend, id("cn2"));
    }

    #[test]
    fn tenants_stay_on_their_backends_and_fall_back_to_the_pool() {
        let mut c = Cluster::new(
            &[
                backend("a1", 1, &[("account", "acc1")]),
                backend("a2", 2, &[("account", "acc1"), ("zone", "eu-*")]),
                backend("b1", 3, &[("account", "acc2")]),
                backend("pool", 4, &[]),
            ],
            1,
        );
        for _ in 0..20 {
            let r = c.route(&req(Some("acc1"), &[])).unwrap();
            assert!(["a1", "a2"].contains(&r.backend.0.as_str()), "{r:?}");
        }
        for _ in 0..5 {
            let r = c.route(&req(Some("acc1"), &[("zone", "eu-west")])).unwrap();
            assert_eq!(r.backend, id("a2"));
        }
        // No backend of acc3: the unlabelled pool. No tenant: never a tenant's backend.
        assert_eq!(
            c.route(&req(Some("acc3"), &[])).unwrap().backend,
            id("pool")
        );
        assert_eq!(c.route(&req(None, &[])).unwrap().backend, id("pool"));
        // Label that nobody has: the pool.
        assert_eq!(
            c.route(&req(Some("acc2"), &[("zone", "us")]))
                .unwrap()
                .backend,
            id("pool")
        );
        // Tenant given as an `account` label works like a tenant.
        assert_eq!(
            c.route(&req(None, &[("account", "acc2")])).unwrap().backend,
            id("b1")
        );
        // Without the pool: a clear refusal naming the tenant.
        c.remove(&id("pool")).unwrap();
        c.release(&routed("pool"));
        c.release(&routed("pool"));
        c.release(&routed("pool"));
        assert!(c.backend(&id("pool")).is_none());
        let no = c.route(&req(Some("acc3"), &[("zone", "x")])).unwrap_err();
        assert_eq!(no.tenant.as_deref(), Some("acc3"));
    }

    #[test]
    fn draining_takes_no_new_sessions_and_becomes_drained_when_empty() {
        let mut c = three();
        for _ in 0..6 {
            c.route(&req(None, &[])).unwrap();
        }
        c.set_state(&id("cn1"), WorkState::Draining).unwrap();
        for _ in 0..4 {
            assert_ne!(c.route(&req(None, &[])).unwrap().backend, id("cn1"));
        }
        assert_eq!(c.release(&routed("cn1")), None);
        assert_eq!(c.backend(&id("cn1")).unwrap().state, WorkState::Draining);
        assert_eq!(
            c.release(&routed("cn1")),
            Some(BackendChange::Drained(id("cn1")))
        );
        assert_eq!(c.backend(&id("cn1")).unwrap().state, WorkState::Drained);
        // An empty backend drains at once; resume brings it back.
        c.set_state(&id("cn1"), WorkState::Working).unwrap();
        c.set_state(&id("cn1"), WorkState::Draining).unwrap();
        assert_eq!(c.backend(&id("cn1")).unwrap().state, WorkState::Drained);
        c.set_state(&id("cn1"), WorkState::Working).unwrap();
        assert_eq!(c.route(&req(None, &[])).unwrap().backend, id("cn1"));
        // "drained" with sessions is only draining.
        c.set_state(&id("cn1"), WorkState::Drained).unwrap();
        assert_eq!(c.backend(&id("cn1")).unwrap().state, WorkState::Draining);
        assert_eq!(
            c.set_state(&id("nope"), WorkState::Working),
            Err(UnknownBackend(id("nope")))
        );
    }

    #[test]
    fn removed_backend_is_forgotten_after_its_last_session() {
        let mut c = three();
        for _ in 0..3 {
            c.route(&req(None, &[])).unwrap();
        }
        assert_eq!(c.remove(&id("cn2")), Ok(Removal::Draining));
        assert!(c.backend(&id("cn2")).is_some());
        for _ in 0..4 {
            assert_ne!(c.route(&req(None, &[])).unwrap().backend, id("cn2"));
        }
        assert_eq!(
            c.release(&routed("cn2")),
            Some(BackendChange::Forgotten(id("cn2")))
        );
        assert!(c.backend(&id("cn2")).is_none());
        // Releasing an unknown backend is harmless; counts never go negative.
        assert_eq!(c.release(&routed("cn2")), None);
        assert_eq!(c.remove(&id("cn2")), Err(UnknownBackend(id("cn2"))));
        let mut empty = three();
        assert_eq!(empty.remove(&id("cn3")), Ok(Removal::Forgotten));
    }

    #[test]
    fn counts_stay_exact_under_any_interleaving() {
        let mut c = three();
        let mut live: Vec<Route> = Vec::new();
        let mut rng = Rng::new(99);
        for step in 0..2000 {
            match rng.below(5) {
                0 | 1 => {
                    if let Ok(r) = c.route(&req(None, &[])) {
                        live.push(r);
                    }
                }
                2 if !live.is_empty() => {
                    let r = live.swap_remove(rng.below(live.len()));
                    c.release(&r);
                }
                3 => {
                    let which = id(["cn1", "cn2", "cn3"][rng.below(3)]);
                    let state = [WorkState::Working, WorkState::Draining][rng.below(2)];
                    let _ = c.set_state(&which, state);
                }
                _ => {
                    let which = id(["cn1", "cn2", "cn3"][rng.below(3)]);
                    c.record_check(&which, rng.below(2) == 0);
                }
            }
            for b in c.backends() {
                let expected = live.iter().filter(|l| l.backend == b.id).count() as u32;
                assert_eq!(b.connections, expected, "step {step}: {b:?}");
                if b.state == WorkState::Drained {
                    assert_eq!(b.connections, 0, "step {step}");
                }
                if b.state == WorkState::Draining {
                    assert!(b.connections > 0, "step {step}: empty draining backend");
                }
            }
        }
    }

    #[test]
    fn down_backends_take_no_new_sessions() {
        let mut c = three();
        c.set_health_policy(HealthPolicy { fall: 2, rise: 1 });
        assert_eq!(c.record_check(&id("cn1"), false), None);
        assert_eq!(
            c.record_check(&id("cn1"), false),
            Some(BackendChange::Health(id("cn1"), Health::Down))
        );
        for _ in 0..10 {
            assert_ne!(c.route(&req(None, &[])).unwrap().backend, id("cn1"));
        }
        assert_eq!(
            c.record_check(&id("cn1"), true),
            Some(BackendChange::Health(id("cn1"), Health::Up))
        );
        assert_eq!(c.route(&req(None, &[])).unwrap().backend, id("cn1"));
        assert_eq!(c.record_check(&id("zz"), false), None);
    }

    #[test]
    fn reconcile_adds_updates_and_removes_without_touching_counts() {
        let old = vec![backend("cn1", 1, &[]), backend("cn2", 2, &[])];
        let mut c = Cluster::new(&old, 3);
        for _ in 0..4 {
            c.route(&req(None, &[])).unwrap();
        }
        // An operator drained cn1 through the API; a reload that does not change cn1 keeps that.
        c.set_state(&id("cn1"), WorkState::Draining).unwrap();
        let new = vec![
            backend("cn1", 1, &[]),
            backend("cn3", 3, &[]),
            backend("cn4", 4, &[("zone", "a")]),
        ];
        let r = c.reconcile(&old, &new);
        assert_eq!(r.added, [id("cn3"), id("cn4")]);
        assert!(r.updated.is_empty());
        assert_eq!(r.removed, [id("cn2")]);
        assert_eq!(c.backend(&id("cn1")).unwrap().state, WorkState::Draining);
        assert_eq!(c.backend(&id("cn2")).unwrap().connections, 2);
        assert_eq!(c.backend(&id("cn2")).unwrap().state, WorkState::Draining);
        // Relabel and re-state.
        let newer = vec![
            backend("cn1", 1, &[("zone", "b")]),
            backend("cn3", 3, &[]),
            BackendConfig {
                state: WorkState::Draining,
                ..backend("cn4", 4, &[("zone", "a")])
            },
        ];
        let r = c.reconcile(&new, &newer);
        assert_eq!(r.updated, [id("cn1"), id("cn4")]);
        assert_eq!(c.backend(&id("cn1")).unwrap().labels.get("zone"), Some("b"));
        assert_eq!(c.backend(&id("cn1")).unwrap().state, WorkState::Working);
        assert_eq!(c.backend(&id("cn4")).unwrap().state, WorkState::Drained);
        assert_eq!(c.total_connections(), 4);
    }
}

#[cfg(test)]
mod group_tests {
    use super::*;

    fn backend(id: &str, labels: &[(&str, &str)]) -> BackendConfig {
        BackendConfig {
            compress_backend: true,
            id: id.into(),
            addr: "127.0.0.1:3307".parse().unwrap(),
            labels: Labels(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            state: WorkState::Working,
            tls: None,
            proxy_protocol: false,
        }
    }

    #[test]
    fn sessions_are_counted_per_label_group_until_released() {
        let mut c = Cluster::new(
            &[backend("a", &[("account", "acc1"), ("region", "eu-*")])],
            3,
        );
        let mut labels = Labels::new();
        labels.insert("region", "eu-west");
        let eu = RouteRequest {
            tenant: Some("acc1".into()),
            labels,
        };
        let plain = RouteRequest {
            tenant: Some("acc1".into()),
            labels: Labels::new(),
        };
        let r1 = c.route(&eu).unwrap();
        let r2 = c.route(&eu).unwrap();
        let r3 = c.route(&plain).unwrap();
        assert_eq!(r1.group, LabelGroup("acc1?region=eu-west".into()));
        assert_eq!(r3.group, LabelGroup("acc1".into()));
        let groups = |c: &Cluster| c.backend(&BackendId("a".into())).unwrap().groups.clone();
        assert_eq!(groups(&c).get(&r1.group), Some(&2));
        assert_eq!(groups(&c).get(&r3.group), Some(&1));
        c.release(&r1);
        c.release(&r3);
        assert_eq!(groups(&c).get(&r1.group), Some(&1));
        assert_eq!(groups(&c).get(&r3.group), None, "empty groups are dropped");
        c.release(&r2);
        assert!(groups(&c).is_empty());
        assert_eq!(c.backend(&BackendId("a".into())).unwrap().connections, 0);
    }
}

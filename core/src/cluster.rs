//! The proxy's view of its backends: labels, work state, health, connection
//! counts, and the routing decision for each new session.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::{BackendConfig, WorkState};
use crate::labels::{glob_match, Labels, ACCOUNT};
use crate::rng::Rng;

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
    /// Sessions currently counted on it.
    pub connections: u32,
}

impl Backend {
    fn takes_new_sessions(&self) -> bool {
        self.state == WorkState::Working && self.health == Health::Up
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

/// Where a session goes. The backend's count already includes it; release it with [`Cluster::release`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The chosen backend.
    pub backend: BackendId,
    /// Its address.
    pub addr: SocketAddr,
}

/// No backend can take a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoBackend {
    /// The session's tenant.
    pub tenant: Option<String>,
    /// The session's labels.
    pub labels: Labels,
}

/// All backends of one proxy.
#[derive(Clone, Debug)]
pub struct Cluster {
    backends: BTreeMap<BackendId, Backend>,
    rng: Rng,
}

impl Cluster {
    /// A cluster with the configured backends; `seed` drives tie-breaks.
    pub fn new(backends: &[BackendConfig], seed: u64) -> Self {
        let mut cluster = Cluster {
            backends: BTreeMap::new(),
            rng: Rng::new(seed),
        };
        for b in backends {
            cluster.upsert(b);
        }
        cluster
    }

    /// Adds a backend or updates its address, labels and state (keeping its count and health).
    pub fn upsert(&mut self, config: &BackendConfig) {
        let id = BackendId(config.id.clone());
        let entry = self.backends.entry(id.clone()).or_insert_with(|| Backend {
            id,
            addr: config.addr,
            labels: Labels::default(),
            state: WorkState::Working,
            health: Health::Up,
            connections: 0,
        });
        entry.addr = config.addr;
        entry.labels = config.labels.clone();
        entry.state = config.state;
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
        let tenant = req.tenant.as_deref().or_else(|| req.labels.get(ACCOUNT));
        let open = || self.backends.values().filter(|b| b.takes_new_sessions());
        let mut candidates: Vec<&Backend> =
            open().filter(|b| b.serves(tenant, &req.labels)).collect();
        if candidates.is_empty() {
            candidates = open().filter(|b| b.labels.is_empty()).collect();
        }
        let fewest = candidates
            .iter()
            .map(|b| b.connections)
            .min()
            .ok_or_else(|| NoBackend {
                tenant: tenant.map(str::to_string),
                labels: req.labels.clone(),
            })?;
        let ties: Vec<BackendId> = candidates
            .into_iter()
            .filter(|b| b.connections == fewest)
            .map(|b| b.id.clone())
            .collect();
        let id = &ties[self.rng.below(ties.len())];
        let backend = self.backends.get_mut(id).expect("candidate exists");
        backend.connections += 1;
        Ok(Route {
            backend: backend.id.clone(),
            addr: backend.addr,
        })
    }

    /// Stops counting one session on `id`.
    pub fn release(&mut self, id: &BackendId) {
        if let Some(b) = self.backends.get_mut(id) {
            b.connections = b.connections.saturating_sub(1);
        }
    }
}

//! Scenario files (RON): backends, users, clients and their scripts, ferry's
//! settings, a timed fault schedule, and what the run must show.
//! `scenarios/README.md` documents the format.

use std::collections::BTreeMap;

use ferry_core::config::WorkState;
use serde::{Deserialize, Serialize};

use crate::backend::Greeting;
use crate::client::Step;

/// One scenario.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it shows.
    pub description: String,
    /// A known ferry bug this scenario shows: the run is expected to fail until it is fixed.
    #[serde(default)]
    pub known_issue: Option<String>,
    /// Simulated time the run may take at most, milliseconds.
    #[serde(default = "default_limit")]
    pub limit_ms: u64,
    /// Link latency.
    #[serde(default)]
    pub network: Network,
    /// ferry's settings.
    #[serde(default)]
    pub ferry: FerrySettings,
    /// Databases every backend has.
    #[serde(default = "default_databases")]
    pub databases: Vec<String>,
    /// The backends.
    pub backends: Vec<BackendDef>,
    /// Users (ferry verifies them; the backends know the bare user names).
    pub users: Vec<UserDef>,
    /// The clients.
    pub clients: Vec<ClientDef>,
    /// Faults and operator actions, by time.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// What the run must show, beyond the invariants every run checks.
    #[serde(default)]
    pub expect: Expect,
}

fn default_limit() -> u64 {
    60_000
}

fn default_databases() -> Vec<String> {
    vec!["test".into()]
}

/// Message latency on every link (uniformly chosen by turmoil within the range).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Smallest latency, milliseconds.
    pub min_latency_ms: u64,
    /// Largest latency, milliseconds.
    pub max_latency_ms: u64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            min_latency_ms: 0,
            max_latency_ms: 2,
        }
    }
}

/// ferry settings a scenario may change.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FerrySettings {
    /// `login_timeout_ms`.
    #[serde(default)]
    pub login_timeout_ms: Option<u64>,
    /// `backend_timeout_ms`.
    #[serde(default)]
    pub backend_timeout_ms: Option<u64>,
}

/// A backend.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDef {
    /// Its id and host name.
    pub id: String,
    /// Its labels in ferry's config.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its work state in ferry's config.
    #[serde(default)]
    pub state: WorkState,
    /// In ferry's config from the start (otherwise only `AddBackend` brings it in).
    #[serde(default = "yes")]
    pub configured: bool,
    /// How it greets connections.
    #[serde(default)]
    pub greeting: Greeting,
    /// Extra time before each reply, milliseconds.
    #[serde(default)]
    pub reply_delay_ms: u64,
}

fn yes() -> bool {
    true
}

/// A user.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserDef {
    /// The tenant (none: any tenant).
    #[serde(default)]
    pub tenant: Option<String>,
    /// The bare user name.
    pub user: String,
    /// The password.
    pub password: String,
}

/// A client, or a group of identical clients.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientDef {
    /// Its name; members of a group are named `{name}{n}`.
    pub name: String,
    /// How many (one host runs them all).
    #[serde(default = "one")]
    pub count: u32,
    /// The login name (`acc1:app?region=eu`).
    pub user: String,
    /// The password.
    pub password: String,
    /// The initial database.
    #[serde(default = "default_db")]
    pub database: Option<String>,
    /// Connection attributes.
    #[serde(default)]
    pub attributes: Vec<(String, String)>,
    /// When the first member starts, milliseconds.
    #[serde(default)]
    pub start_ms: u64,
    /// Time between the starts of two members.
    #[serde(default)]
    pub stagger_ms: u64,
    /// Ask for `CLIENT_DEPRECATE_EOF`.
    #[serde(default = "yes")]
    pub deprecate_eof: bool,
    /// Ask for `CLIENT_SESSION_TRACK`.
    #[serde(default)]
    pub session_track: bool,
    /// Leave per-command lines out of the trace.
    #[serde(default)]
    pub quiet: bool,
    /// A command without an answer for this long is a stuck session.
    #[serde(default = "default_stuck")]
    pub stuck_ms: u64,
    /// Check the session's state after every `Sleep` (see `CheckState`).
    #[serde(default)]
    pub check_after_sleep: bool,
    /// The script.
    pub script: Vec<Step>,
}

fn one() -> u32 {
    1
}

fn default_db() -> Option<String> {
    Some("test".into())
}

fn default_stuck() -> u64 {
    15_000
}

/// Something that happens at a time.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When, milliseconds of simulated time.
    pub at_ms: u64,
    /// What.
    #[serde(rename = "do")]
    pub action: Action,
}

/// Faults and operator actions.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub enum Action {
    /// Cut the link between two hosts.
    Partition(String, String),
    /// Mend it.
    Repair(String, String),
    /// Hold messages between two hosts.
    Hold(String, String),
    /// Deliver held messages.
    Release(String, String),
    /// Set the link's latency, milliseconds.
    Latency(String, String, u64),
    /// Crash a host (a backend or ferry).
    Crash(String),
    /// Start a host again (crashed or not).
    Restart(String),
    /// Drain a backend (as the admin API does).
    Drain(String),
    /// Make a backend take sessions again.
    Resume(String),
    /// Add a backend to ferry's cluster.
    AddBackend(String),
    /// Remove a backend from ferry's cluster.
    RemoveBackend(String),
    /// Give a backend new labels (as a config reload does).
    Relabel(String, BTreeMap<String, String>),
}

/// What the run must show.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Errors clients may get; any other error fails the run.
    #[serde(default)]
    pub errors: Vec<AllowedError>,
    /// Errors that must happen at least once each.
    #[serde(default)]
    pub required_errors: Vec<AllowedError>,
    /// Sessions per backend at the final check (when every script is over).
    #[serde(default)]
    pub placement: Option<BTreeMap<String, u32>>,
    /// Session moves at least (once migration exists).
    #[serde(default)]
    pub moves_at_least: u64,
    /// At the final check, the busiest and the idlest backend differ by at most this many sessions.
    #[serde(default)]
    pub balanced: Option<u32>,
}

/// An error a client may get.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedError {
    /// Client name, or a prefix ending in `*`.
    pub client: String,
    /// The code (none: any).
    #[serde(default)]
    pub code: Option<u16>,
}

impl AllowedError {
    /// Whether this allows `code` for `client`.
    pub fn allows(&self, client: &str, code: u16) -> bool {
        let name = match self.client.strip_suffix('*') {
            Some(prefix) => client.starts_with(prefix),
            None => client == self.client,
        };
        name && (self.code.is_none() || self.code == Some(code))
    }
}

impl Scenario {
    /// Parses a scenario.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
            .from_str(text)
            .map_err(|e| e.to_string())
    }
}

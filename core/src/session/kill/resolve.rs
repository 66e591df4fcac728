//! Which session a `KILL n` names, from a snapshot of the live sessions.
//!
//! A client can have learned `n` three ways: ferry's handshake id, or the
//! `CONNECTION_ID()` / `PROCESSLIST` id of a session on some backend, maybe
//! one the session has left since. Thread ids are unique per backend only,
//! so the lookup goes from the most to the least likely meaning and refuses
//! to guess between two.

use std::net::SocketAddr;

use crate::cluster::BackendId;

/// One live session, as a KILL sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its ferry connection id (the handshake id).
    pub id: u32,
    /// Its tenant.
    pub tenant: Option<String>,
    /// The bare user it logs in to backends as.
    pub user: String,
    /// The backend it runs on now.
    pub backend: BackendId,
    /// That backend's address (`None` if the backend was removed meanwhile).
    pub addr: Option<SocketAddr>,
    /// Its thread on that backend.
    pub thread: u32,
    /// Threads it ran as before it moved, newest first (a few only).
    pub earlier: Vec<(BackendId, u32)>,
}

impl Peer {
    /// Whether it runs, or ran, as `thread` on `backend`.
    fn ran_as(&self, backend: &BackendId, thread: u32) -> bool {
        (self.backend == *backend && self.thread == thread)
            || self
                .earlier
                .iter()
                .any(|(b, t)| b == backend && *t == thread)
    }

    /// Whether it runs, or ran, as `thread` on a backend other than `backend`.
    fn ran_elsewhere_as(&self, backend: &BackendId, thread: u32) -> bool {
        (self.backend != *backend && self.thread == thread)
            || self
                .earlier
                .iter()
                .any(|(b, t)| b != backend && *t == thread)
    }
}

/// The session that asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asker<'a> {
    /// Its ferry connection id.
    pub id: u32,
    /// Its tenant.
    pub tenant: Option<&'a str>,
    /// The backend it runs on.
    pub backend: &'a BackendId,
}

/// What a `KILL n` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A session of the asker's tenant.
    Session(Peer),
    /// A session of another tenant: refused (1095).
    NotOwner,
    /// Two sessions fit: nothing is killed (1094).
    Ambiguous,
    /// No ferry session: the thread is left to the asker's own backend, as written.
    Unowned,
}

/// Finds the session `id` names. In order: a ferry handshake id, or a thread
/// (current or earlier) on the asker's own backend, of any tenant; then a
/// thread elsewhere of one of the asker's tenant's sessions; then one
/// elsewhere of another tenant's. Two matches at the first level that has
/// any are ambiguous.
pub fn resolve(id: u32, asker: &Asker<'_>, peers: &[Peer]) -> Resolution {
    let here: Vec<&Peer> = peers
        .iter()
        .filter(|p| p.id == id || p.ran_as(asker.backend, id))
        .collect();
    let mine = |p: &&Peer| p.tenant.as_deref() == asker.tenant;
    let elsewhere = |p: &&Peer| p.id != id && p.ran_elsewhere_as(asker.backend, id);
    let level = if !here.is_empty() {
        here
    } else {
        let same_tenant: Vec<&Peer> = peers.iter().filter(elsewhere).filter(mine).collect();
        if same_tenant.is_empty() {
            // Another tenant's: out of reach, whatever its backend would allow.
            if peers.iter().any(|p| elsewhere(&p)) {
                return Resolution::NotOwner;
            }
            return Resolution::Unowned;
        }
        same_tenant
    };
    match level.as_slice() {
        [one] if mine(one) => Resolution::Session((*one).clone()),
        [_] => Resolution::NotOwner,
        _ => Resolution::Ambiguous,
    }
}

/// Whether a session of a tenant other than `tenant` runs on `backend`
/// (then a KILL ferry does not translate could reach it).
pub fn shared_with_another_tenant(
    tenant: Option<&str>,
    backend: &BackendId,
    peers: &[Peer],
) -> bool {
    peers
        .iter()
        .any(|p| p.backend == *backend && p.tenant.as_deref() != tenant)
}

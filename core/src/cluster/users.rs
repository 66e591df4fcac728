//! Who may log in: credentials keyed by user and tenant.

use std::collections::BTreeMap;

use crate::auth::StoredCredential;
use crate::config::{ConfigError, UserConfig};

/// The users ferry verifies logins against, keyed by (tenant, user).
/// Debug shows the names only: the hashes log in anywhere a password does.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserDirectory {
    // Keyed by user first so a lookup borrows the login's strings instead of
    // building an owned (tenant, user) key.
    users: BTreeMap<String, Entries>,
}

/// The credentials configured for one user name.
#[derive(Clone, Default, PartialEq, Eq)]
struct Entries {
    /// The entry without a tenant: logins without a tenant, and every tenant
    /// without an entry of its own if it was configured `any_tenant: true`.
    tenantless: Option<Tenantless>,
    by_tenant: BTreeMap<String, StoredCredential>,
}

/// A user entry without a tenant.
#[derive(Clone, PartialEq, Eq)]
struct Tenantless {
    credential: StoredCredential,
    /// Whether it also serves logins under a tenant (`acc1:root`). Off unless
    /// configured: a tenant-less user is usually an operator's or a shared
    /// pool's, and letting it name any tenant would let it reach every
    /// tenant's backends.
    any_tenant: bool,
}

impl Entries {
    fn len(&self) -> usize {
        usize::from(self.tenantless.is_some()) + self.by_tenant.len()
    }
}

impl std::fmt::Debug for UserDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = f.debug_list();
        for (user, entries) in &self.users {
            if entries.tenantless.is_some() {
                names.entry(&format_args!("{user}"));
            }
            for tenant in entries.by_tenant.keys() {
                names.entry(&format_args!("{tenant}:{user}"));
            }
        }
        names.finish()
    }
}

impl UserDirectory {
    /// An empty directory: nobody can log in.
    pub fn new() -> Self {
        Self::default()
    }

    /// The directory for the config's users; rejects bad credentials and duplicate (tenant, user).
    pub fn from_config(users: &[UserConfig]) -> Result<Self, ConfigError> {
        let mut dir = UserDirectory::new();
        for user in users {
            let cred = user.credential()?;
            if dir.get(user.tenant.as_deref(), &user.user).is_some() {
                return Err(ConfigError::unplaced(format!(
                    "user '{}' is configured twice",
                    user.name()
                )));
            }
            if user.any_tenant {
                dir.insert_any_tenant(user.user.clone(), cred);
            } else {
                dir.insert(user.tenant.clone(), user.user.clone(), cred);
            }
        }
        Ok(dir)
    }

    /// Adds or replaces the credential of `user` for `tenant` (None = logins without a tenant only).
    pub fn insert(&mut self, tenant: Option<String>, user: String, cred: StoredCredential) {
        let entries = self.users.entry(user).or_default();
        match tenant {
            Some(tenant) => {
                entries.by_tenant.insert(tenant, cred);
            }
            None => {
                entries.tenantless = Some(Tenantless {
                    credential: cred,
                    any_tenant: false,
                })
            }
        }
    }

    /// Adds or replaces the tenant-less entry of `user`, serving logins
    /// without a tenant and under every tenant without an entry of its own.
    pub fn insert_any_tenant(&mut self, user: String, cred: StoredCredential) {
        self.users.entry(user).or_default().tenantless = Some(Tenantless {
            credential: cred,
            any_tenant: true,
        });
    }

    /// The credential for a login: an entry for exactly this tenant wins; a
    /// tenant-less entry serves a login under a tenant only if it is `any_tenant`.
    pub fn lookup(&self, tenant: Option<&str>, user: &str) -> Option<&StoredCredential> {
        let entries = self.users.get(user)?;
        let tenantless = entries.tenantless.as_ref();
        match tenant {
            None => tenantless.map(|t| &t.credential),
            Some(t) => entries
                .by_tenant
                .get(t)
                .or(tenantless.filter(|t| t.any_tenant).map(|t| &t.credential)),
        }
    }

    /// The entry stored under exactly this (tenant, user), without falling back.
    pub fn get(&self, tenant: Option<&str>, user: &str) -> Option<&StoredCredential> {
        let entries = self.users.get(user)?;
        match tenant {
            Some(t) => entries.by_tenant.get(t),
            None => entries.tenantless.as_ref().map(|t| &t.credential),
        }
    }

    /// Whether any entry, for any tenant, has this user name.
    pub fn knows(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Number of (tenant, user) entries.
    pub fn len(&self) -> usize {
        self.users.values().map(Entries::len).sum()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

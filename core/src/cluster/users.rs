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
    /// The entry without a tenant: serves every tenant that has no entry of its own.
    any_tenant: Option<StoredCredential>,
    by_tenant: BTreeMap<String, StoredCredential>,
}

impl Entries {
    fn len(&self) -> usize {
        usize::from(self.any_tenant.is_some()) + self.by_tenant.len()
    }
}

impl std::fmt::Debug for UserDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = f.debug_list();
        for (user, entries) in &self.users {
            if entries.any_tenant.is_some() {
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
            dir.insert(user.tenant.clone(), user.user.clone(), cred);
        }
        Ok(dir)
    }

    /// Adds or replaces the credential of `user` for `tenant` (None = any tenant).
    pub fn insert(&mut self, tenant: Option<String>, user: String, cred: StoredCredential) {
        let entries = self.users.entry(user).or_default();
        match tenant {
            Some(tenant) => {
                entries.by_tenant.insert(tenant, cred);
            }
            None => entries.any_tenant = Some(cred),
        }
    }

    /// The credential for a login: an entry for exactly this tenant wins; a user configured without a tenant may log in under any tenant.
    pub fn lookup(&self, tenant: Option<&str>, user: &str) -> Option<&StoredCredential> {
        let entries = self.users.get(user)?;
        tenant
            .and_then(|t| entries.by_tenant.get(t))
            .or(entries.any_tenant.as_ref())
    }

    /// The entry stored under exactly this (tenant, user), without falling back.
    pub fn get(&self, tenant: Option<&str>, user: &str) -> Option<&StoredCredential> {
        let entries = self.users.get(user)?;
        match tenant {
            Some(t) => entries.by_tenant.get(t),
            None => entries.any_tenant.as_ref(),
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

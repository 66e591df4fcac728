//! TEMP stub until merged.
use crate::auth::{StoredCredential, StoredHash};
use crate::config::{ConfigError, UserConfig};
use std::collections::BTreeMap;
#[derive(Clone, Debug, Default)]
pub struct UserDirectory {
    users: BTreeMap<(Option<String>, String), StoredCredential>,
}
impl UserDirectory {
    pub fn from_config(users: &[UserConfig]) -> Result<Self, ConfigError> {
        let mut d = Self::default();
        for u in users {
            let cred = match (&u.password, &u.password_hash) {
                (Some(p), None) => StoredCredential::from_password(p),
                (None, Some(h)) => {
                    StoredCredential::Native(StoredHash::parse(h).map_err(|e| ConfigError {
                        line: 0,
                        column: 0,
                        message: format!("{e:?}"),
                    })?)
                }
                _ => {
                    return Err(ConfigError {
                        line: 0,
                        column: 0,
                        message: "password".into(),
                    })
                }
            };
            d.insert(u.tenant.clone(), u.user.clone(), cred);
        }
        Ok(d)
    }
    pub fn insert(&mut self, tenant: Option<String>, user: String, cred: StoredCredential) {
        self.users.insert((tenant, user), cred);
    }
    pub fn lookup(&self, tenant: Option<&str>, user: &str) -> Option<&StoredCredential> {
        self.users
            .get(&(tenant.map(str::to_string), user.to_string()))
            .or_else(|| self.users.get(&(None, user.to_string())))
    }
}

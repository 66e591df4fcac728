//! Signals: SIGHUP re-reads the config; SIGTERM/SIGINT shut down gracefully
//! (a second one exits at once).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_signal::{Signal, Signals};
use ferry_core::config::Config;
use futures_lite::StreamExt;
use tracing::{error, info, warn};

use crate::proxy::{session_config, Shared};
use crate::usersync;

/// Installs the handlers. Call before serving, so no signal is lost to the default action.
pub fn install() -> std::io::Result<Signals> {
    Signals::new([Signal::Hup, Signal::Term, Signal::Int])
}

/// Handles signals until the process ends.
pub async fn run(mut signals: Signals, shared: Arc<Shared>, path: PathBuf) {
    while let Some(signal) = signals.next().await {
        match signal {
            Ok(Signal::Hup) => match reload(&shared, &path) {
                Ok(()) => {
                    shared.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    shared
                        .metrics
                        .reloads_failed
                        .fetch_add(1, Ordering::Relaxed);
                    error!("config reload rejected, the running config stays: {e}");
                }
            },
            Ok(Signal::Term | Signal::Int) if shared.is_shutting_down() => {
                warn!("second stop signal: exiting now");
                std::process::exit(0);
            }
            Ok(sig) => {
                info!(signal = ?sig, sessions = shared.registry.len(),
                      "stop signal: no new clients; sessions close at their next safe point");
                shared.begin_shutdown();
            }
            Err(e) => warn!(error = %e, "reading signals failed"),
        }
    }
}

/// Re-reads the config file at `path` and applies it; on error nothing changes.
pub fn reload(shared: &Shared, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let new = Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // Certificates first: a file that does not load rejects the whole reload.
    let tls = crate::tls::Loaded::from_config(&new, &crate::tls::config_dir(path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    apply(shared, new)?;
    // New sessions and connections use them; running ones keep what they have.
    shared.tls.install(tls);
    Ok(())
}

/// Applies a parsed config: backends reconciled, users replaced, limits updated.
pub fn apply(shared: &Shared, new: Config) -> Result<(), String> {
    let old = shared.config();
    let synced = shared.synced_users.lock().expect("synced lock").clone();
    // The token file first: an unreadable one rejects the reload before anything changed.
    let token = crate::admin::load_token(&new)?;
    // Users first: if they do not build, nothing has changed yet.
    usersync::install(shared, &new.users, synced)?;
    let report = {
        let mut cluster = shared.cluster.lock().expect("cluster lock");
        cluster.set_health_policy(new.health.policy());
        cluster.reconcile(&old.backends, &new.backends)
    };
    *shared.admin_token.write().expect("token lock") = token;
    shared.guards.reload(&new.limits);
    *shared.session_config.write().expect("config lock") = session_config(&new);
    if new.listen != old.listen || new.admin_listen != old.admin_listen {
        warn!("listen and admin_listen changes take effect only after a restart");
    }
    info!(
        added = ?report.added.iter().map(|b| &b.0).collect::<Vec<_>>(),
        updated = ?report.updated.iter().map(|b| &b.0).collect::<Vec<_>>(),
        removed = ?report.removed.iter().map(|b| &b.0).collect::<Vec<_>>(),
        users = new.users.len(),
        "config reloaded"
    );
    *shared.config.write().expect("config lock") = new;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"(listen: "127.0.0.1:1", admin_listen: "127.0.0.1:2",
        users: [(user: "app", password: "secret")],
        backends: [(id: "cn1", addr: "127.0.0.1:3001"), (id: "cn2", addr: "127.0.0.1:3002")])"#;

    #[test]
    fn reload_applies_a_good_config_and_rejects_a_bad_one() {
        let shared = Shared::from_config(&Config::parse(BASE).unwrap(), 1).unwrap();
        let dir = std::env::temp_dir().join(format!("ferry-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ferry.ron");
        std::fs::write(&path, BASE.replace("cn2", "cn3").replace("app", "bob")).unwrap();
        reload(&shared, &path).unwrap();
        let ids = |s: &Shared| -> Vec<String> {
            s.cluster
                .lock()
                .unwrap()
                .backends()
                .map(|b| b.id.0.clone())
                .collect()
        };
        assert_eq!(ids(&shared), ["cn1", "cn3"]);
        assert!(shared.users.read().unwrap().lookup(None, "bob").is_some());
        assert!(shared.users.read().unwrap().lookup(None, "app").is_none());
        for bad in [
            "(",
            &BASE.replace("password: \"secret\"", "password_hash: \"x\""),
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(reload(&shared, &path).is_err(), "{bad}");
            assert_eq!(ids(&shared), ["cn1", "cn3"]);
            assert!(shared.users.read().unwrap().lookup(None, "bob").is_some());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Users synced from a backend's `mysql.user` (`user_source` in the config):
//! read at start and every interval, merged under the configured users.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::cluster::BackendId;
use ferry_core::query::{QueryClient, ResultSet};
use ferry_core::usersync::{merge, users_from_rows, SyncedUsers, USERS_QUERY, USERS_QUERY_MYSQL};
use futures_lite::FutureExt;
use tracing::{info, warn};

use crate::proxy::Shared;
use crate::side::SideConn;

/// Logs in to `addr` as `user` and runs the users query (MariaDB's, then MySQL's).
pub async fn read_users(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<ResultSet, String> {
    let attempt = async {
        let stream = async_net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut conn = SideConn::login(stream, QueryClient::new(user, password)).await?;
        // MariaDB's query first, then MySQL's; report the first error if both fail.
        let first_error = match conn.query(USERS_QUERY).await? {
            Ok(rows) => {
                conn.quit().await;
                return Ok(rows);
            }
            Err(err) => format!("{} {}", err.code, err.message),
        };
        let answer = conn.query(USERS_QUERY_MYSQL).await?;
        conn.quit().await;
        answer.map_err(|_| format!("reading mysql.user: {first_error}"))
    };
    attempt
        .or(async {
            async_io::Timer::after(timeout).await;
            Err(format!("no answer within {timeout:?}"))
        })
        .await
}

/// Reads the users once and, if that worked, installs configured + synced users.
pub async fn sync_once(shared: &Shared) -> Result<(), String> {
    let config = shared.config();
    let Some(source) = &config.user_source else {
        return Ok(());
    };
    let addr = shared
        .cluster
        .lock()
        .expect("cluster lock")
        .backend(&BackendId(source.backend.clone()))
        .map(|b| b.addr)
        .ok_or_else(|| {
            format!(
                "user_source backend '{}' is not a known backend",
                source.backend
            )
        })?;
    let rows = read_users(
        addr,
        &source.user,
        &source.password,
        Duration::from_millis(config.backend_timeout_ms),
    )
    .await?;
    let synced = users_from_rows(&rows);
    if !synced.conflicting.is_empty() {
        warn!(users = ?synced.conflicting,
              "users with different passwords per host in mysql.user; the '%' entry (else the first) is used");
    }
    let changed = *shared.synced_users.lock().expect("synced lock") != synced;
    install(shared, &config.users, synced.clone())?;
    if changed {
        info!(backend = %source.backend, users = synced.users.len(), skipped = synced.skipped,
              "synced users from mysql.user");
    }
    Ok(())
}

/// Installs configured users over `synced` as the directory new sessions use.
pub fn install(
    shared: &Shared,
    configured: &[ferry_core::config::UserConfig],
    synced: SyncedUsers,
) -> Result<(), String> {
    let dir = merge(configured, &synced).map_err(|e| format!("users: {e}"))?;
    *shared.users.write().expect("users lock") = Arc::new(dir);
    *shared.synced_users.lock().expect("synced lock") = synced;
    Ok(())
}

/// Syncs every `interval_ms` (re-reading the config each time) until the process ends.
pub async fn run(shared: Arc<Shared>) {
    loop {
        let interval = match &shared.config().user_source {
            Some(source) => source.interval(),
            None => Duration::from_secs(5),
        };
        async_io::Timer::after(interval).await;
        if shared.config().user_source.is_some() {
            if let Err(e) = sync_once(&shared).await {
                warn!(error = %e, "user sync failed; keeping the users we have");
            }
        }
    }
}

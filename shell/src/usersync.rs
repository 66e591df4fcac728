//! Users synced from a backend's `mysql.user` (`user_source` in the config):
//! read at start, every interval, and when a login cannot be verified with
//! the users ferry has; merged under the configured users.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::cluster::BackendId;
use ferry_core::login::{ReadUsers, UsersRead, CREDENTIAL_UNKNOWN};
use ferry_core::query::{QueryClient, ResultSet};
use ferry_core::session::Control;
use ferry_core::usersync::{
    merge, users_from_rows, ReadSchedule, SyncedUsers, USERS_QUERY, USERS_QUERY_MYSQL,
};
use futures_lite::FutureExt;
use tracing::{debug, info, warn};

use crate::clock::{Clock, SystemClock};
use crate::proxy::{Shared, TcpConnector};
use crate::side::SideConn;

/// Who reads the user source when: one read at a time, at least `reread_ms`
/// apart, shared by every login waiting for it (see [`ReadSchedule`]).
pub struct UserReads {
    schedule: Mutex<ReadSchedule>,
    /// Held by the task whose turn it is to read (or to find its read done).
    turn: smol::lock::Mutex<()>,
    clock: SystemClock,
}

impl Default for UserReads {
    fn default() -> Self {
        UserReads {
            schedule: Mutex::new(ReadSchedule::new(Duration::from_millis(
                ferry_core::config::DEFAULT_USER_SOURCE_REREAD_MS,
            ))),
            turn: smol::lock::Mutex::new(()),
            clock: SystemClock::new(),
        }
    }
}

/// Reads the users again for a login that waits (`wanted`), unless a read
/// that started after it asked serves it; answers with the users then in force.
pub async fn reread(shared: &Shared, wanted: Option<&ReadUsers>) -> UsersRead {
    let config = shared.config();
    let Some(source) = &config.user_source else {
        return UsersRead::NoSource;
    };
    let reads = &shared.user_reads;
    let schedule = || reads.schedule.lock().expect("read schedule lock");
    let ticket = schedule().ask();
    let _turn = reads.turn.lock().await;
    schedule().set_min_gap(source.reread());
    if !schedule().served(ticket) {
        let at = schedule().earliest_start();
        if at > reads.clock.now() {
            reads.clock.sleep_until(at).await;
        }
        let read = schedule().start(reads.clock.now());
        let started = reads.clock.now();
        let result = sync_once(shared).await;
        schedule().finish(read);
        let ms = reads.clock.now().since(started).as_secs_f64() * 1000.0;
        match (&result, wanted) {
            (Ok(()), Some(w)) => {
                info!(user = %w.user, cause = %w.cause, duration_ms = format_args!("{ms:.1}"),
                                       "read the user source again for a login")
            }
            (Ok(()), None) => debug!(
                duration_ms = format_args!("{ms:.1}"),
                "read the user source"
            ),
            (Err(e), _) => {
                warn!(error = %e, "reading the user source failed; keeping the users we have");
                return UsersRead::Failed(e.clone());
            }
        }
    }
    UsersRead::Read(shared.users.read().expect("users lock").clone())
}

/// Logs in to `backend` at `addr` as `user` (over TLS if its setting says
/// so) and runs the users query (MariaDB's, then MySQL's).
/// A backend configured with `proxy_protocol: true` gets the LOCAL header first.
pub async fn read_users<K: crate::pump::Connector>(
    connector: &K,
    backend: &BackendId,
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<ResultSet, String> {
    let attempt = async {
        let client = QueryClient::new(user, password);
        let mut conn = SideConn::open(connector, backend, addr, client).await?;
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
    let backend = BackendId(source.backend.clone());
    let addr = shared
        .cluster
        .lock()
        .expect("cluster lock")
        .backend(&backend)
        .map(|b| b.addr)
        .ok_or_else(|| {
            format!(
                "user_source backend '{}' is not a known backend",
                source.backend
            )
        })?;
    shared.metrics.user_source_reads.fetch_add(1, Relaxed);
    let rows = read_users(
        &crate::proxy_protocol::HeaderConnector::local_to(
            TcpConnector::new(shared.tls.clone()),
            shared,
            addr,
        ),
        &backend,
        addr,
        &source.user,
        &source.password,
        Duration::from_millis(config.backend_timeout_ms),
    )
    .await
    .inspect_err(|_| {
        shared.metrics.user_source_failures.fetch_add(1, Relaxed);
    })?;
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
    let dir = Arc::new(merge(configured, &synced).map_err(|e| format!("users: {e}"))?);
    *shared.users.write().expect("users lock") = dir.clone();
    *shared.synced_users.lock().expect("synced lock") = synced;
    // Sessions the backend verified learn their credential as soon as the hash is known.
    for entry in shared.registry.all() {
        if entry.blocked_by().iter().any(|b| b == CREDENTIAL_UNKNOWN) {
            entry.send(Control::Users(dir.clone()));
        }
    }
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
        // In turn with the reads logins ask for (it warns itself if the read fails).
        reread(&shared, None).await;
    }
}

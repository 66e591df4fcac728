//! The ERR packets ferry itself sends to clients: codes, SQLSTATEs and wording.
//!
//! Codes are a contract: clients and tests outside the project match on them.

use crate::cluster::BackendId;
use crate::labels::Labels;
use crate::packets::ErrPacket;

/// ER_ACCESS_DENIED_ERROR: wrong password or unknown user, worded as MySQL does.
pub fn access_denied(user: &str, host: &str, using_password: bool) -> ErrPacket {
    let yes = if using_password { "YES" } else { "NO" };
    ErrPacket::new(
        1045,
        "28000",
        format!("Access denied for user '{user}'@'{host}' (using password: {yes})"),
    )
}

/// ER_UNKNOWN_ERROR: no backend can take this session.
pub fn no_backend(tenant: Option<&str>, labels: &Labels) -> ErrPacket {
    let tenant = tenant.map_or_else(|| "(none)".to_string(), |t| format!("'{t}'"));
    ErrPacket::new(
        1105,
        "HY000",
        format!("ferry: no backend available for tenant {tenant} with labels {labels}"),
    )
}

/// ER_UNKNOWN_ERROR: the chosen backend could not be logged in to.
pub fn backend_unavailable(backend: &str, reason: &str) -> ErrPacket {
    ErrPacket::new(
        1105,
        "HY000",
        format!("ferry: backend {backend} is unavailable: {reason}"),
    )
}

/// ER_NOT_SUPPORTED_YET: the client asked for TLS.
pub fn tls_unsupported() -> ErrPacket {
    ErrPacket::new(
        1235,
        "42000",
        "ferry does not support TLS yet; connect without SSL/TLS",
    )
}

/// ER_NET_PACKET_TOO_LARGE: a packet longer than `max_packet_size`.
pub fn packet_too_large() -> ErrPacket {
    ErrPacket::new(
        1153,
        "08S01",
        "Got a packet bigger than 'max_allowed_packet' bytes",
    )
}

/// ER_NET_UNCOMPRESS_ERROR: a compressed frame that does not inflate (corrupt, or a zip bomb).
pub fn uncompress_failed() -> ErrPacket {
    ErrPacket::new(1157, "08S01", "Couldn't uncompress communication packet")
}

/// ER_MALFORMED_PACKET: a packet ferry could not parse.
pub fn malformed_packet(detail: &str) -> ErrPacket {
    ErrPacket::new(
        1835,
        "08S01",
        format!("Malformed communication packet: {detail}"),
    )
}

/// ER_UNKNOWN_ERROR: bad syntax in the login name's tenant or labels.
pub fn bad_login_name(detail: &str) -> ErrPacket {
    ErrPacket::new(1105, "HY000", format!("ferry: {detail}"))
}

/// ER_NO_SUCH_THREAD: `KILL` of a connection id ferry does not know.
pub fn no_such_thread(id: u32) -> ErrPacket {
    ErrPacket::new(1094, "HY000", format!("Unknown thread id: {id}"))
}

/// ER_UNKNOWN_ERROR: a statement ferry runs on another backend for the client (KILL) could not be run.
pub fn remote_failed(why: &str) -> ErrPacket {
    ErrPacket::new(1105, "HY000", format!("ferry: {why}"))
}

/// CR_SERVER_LOST, as a server-side ERR: the backend went away under the session.
pub fn lost_backend(backend: &BackendId, in_transaction: bool) -> ErrPacket {
    let txn = if in_transaction {
        "; the open transaction was rolled back"
    } else {
        ""
    };
    ErrPacket::new(
        2013,
        "HY000",
        format!("Lost connection to MySQL server during query (ferry: backend {backend} went away{txn})"),
    )
}

/// ER_CONNECTION_KILLED: ferry closed the session (a drain timed out).
pub fn connection_closed(why: &str) -> ErrPacket {
    ErrPacket::new(1927, "70100", format!("Connection was killed: {why}"))
}

/// ER_CON_COUNT_ERROR: a connection or tenant limit is reached (`limits`).
pub fn too_many_connections(detail: &str) -> ErrPacket {
    ErrPacket::new(
        1040,
        "08004",
        format!("Too many connections (ferry: {detail})"),
    )
}

/// ER_HOST_IS_BLOCKED: too many failed logins from this address (`limits`).
pub fn host_blocked(
    host: &str,
    failures: u32,
    window: std::time::Duration,
    left: std::time::Duration,
) -> ErrPacket {
    ErrPacket::new(
        1129,
        "HY000",
        format!(
            "Host '{host}' is blocked because of many connection errors \
             (ferry: {failures} failed logins within {} s; try again in {} s)",
            window.as_secs(),
            left.as_secs().max(1)
        ),
    )
}

/// ER_CLIENT_INTERACTION_TIMEOUT: the session was idle longer than `idle_timeout_ms`.
pub fn idle_timeout(timeout: std::time::Duration) -> ErrPacket {
    ErrPacket::new(
        4031,
        "HY000",
        format!(
            "The client was disconnected by the server because of inactivity \
             (ferry: idle for {} ms, limits idle_timeout_ms)",
            timeout.as_millis()
        ),
    )
}

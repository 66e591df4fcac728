//! The admin HTTP API on `admin_listen`: backends, sessions, `/metrics`, `/health`.
//!
//! hyper 1.x serves HTTP/1.1 over the smol socket through smol-hyper's
//! futures-io adapter; [`respond`] is a plain function from request to reply,
//! so the API is tested without sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use ferry_core::cluster::{Backend, BackendId, Cluster, Health, Removal, RouteRequest};
use ferry_core::config::{AdminToken, BackendConfig, Config, WorkState};
use ferry_core::labels::Labels;
use ferry_core::session::{Control, MoveRequest, Trigger};
use futures_lite::FutureExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use smol::Executor;
use smol_hyper::rt::{FuturesIo, SmolTimer};
use tracing::{debug, info, warn};

use crate::proxy::Shared;

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// How long a client has to send a request's headers, and then its body: a
/// connection that trickles bytes must not hold a task forever.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The admin token from the config: `admin_token`, or the first line of `admin_token_file`.
pub fn load_token(config: &Config) -> Result<Option<AdminToken>, String> {
    if let Some(token) = &config.admin_token {
        return Ok(Some(token.clone()));
    }
    let Some(path) = &config.admin_token_file else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("admin_token_file {path}: {e}"))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!("admin_token_file {path}: the first line is empty"));
    }
    Ok(Some(AdminToken(token.to_owned())))
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let differ = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    a.len() == b.len() && differ == 0
}

/// Whether a request's `Authorization` header carries the admin token (always, without one).
pub fn authorized(token: Option<&AdminToken>, authorization: Option<&[u8]>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let given = authorization
        .and_then(|h| h.strip_prefix(b"Bearer "))
        .map(|t| t.trim_ascii());
    given.is_some_and(|t| same_secret(t, token.0.as_bytes()))
}

/// A reply: status, content type and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `application/json` or Prometheus text.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    fn json(status: u16, value: Value) -> Self {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string(),
        }
    }

    fn error(status: u16, message: impl Into<String>) -> Self {
        Reply::json(status, json!({ "error": message.into() }))
    }
}

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(
    ex: Arc<Executor<'static>>,
    shared: Arc<Shared>,
    listener: async_net::TcpListener,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(admin_listen = %addr, "admin API listening");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                async_io::Timer::after(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        ex.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&shared, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(SmolTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(FuturesIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        })
        .detach();
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<async_net::TcpListener> {
    async_net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding admin_listen {addr}"))
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let allowed = {
        let token = shared.admin_token.read().expect("token lock");
        let header = req.headers().get(hyper::header::AUTHORIZATION);
        authorized(token.as_ref(), header.map(|h| h.as_bytes()))
    };
    if !allowed {
        // Neither the header nor the token is logged.
        debug!(%method, %path, "admin request without the right bearer token");
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("content-type", "application/json")
            .header("www-authenticate", "Bearer realm=\"ferry\"")
            .body(Full::new(Bytes::from(
                json!({"error": "this admin API needs Authorization: Bearer <admin_token>"})
                    .to_string(),
            )))
            .expect("a valid response");
    }
    let collect =
        async { Some(Limited::new(req.into_body(), MAX_BODY).collect().await) }.or(async {
            async_io::Timer::after(READ_TIMEOUT).await;
            None
        });
    let reply = match collect.await {
        Some(Ok(body)) => respond(shared, &method, &path, &body.to_bytes()),
        Some(Err(e)) => Reply::error(
            413,
            format!("request body unreadable or over {MAX_BODY} bytes: {e}"),
        ),
        None => Reply::error(408, "the request body did not arrive in time"),
    };
    if reply.status >= 400 {
        debug!(%method, %path, status = reply.status, body = %reply.body, "admin request refused");
    }
    Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", reply.content_type)
        .body(Full::new(Bytes::from(reply.body)))
        .expect("a valid response")
}

/// Answers one admin request.
pub fn respond(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Reply {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let allow = |methods: &[&Method]| -> Option<Reply> {
        (!methods.contains(&method)).then(|| {
            let names: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
            Reply::error(
                405,
                format!(
                    "{method} is not allowed on {path}; use {}",
                    names.join(" or ")
                ),
            )
        })
    };
    match parts.as_slice() {
        ["health"] => allow(&[&Method::GET]).unwrap_or_else(|| health(shared)),
        ["metrics"] => allow(&[&Method::GET]).unwrap_or_else(|| metrics(shared)),
        ["api", "backends"] => allow(&[&Method::GET]).unwrap_or_else(|| list_backends(shared)),
        ["api", "backends", id] => match *method {
            Method::GET => get_backend(shared, id),
            Method::PUT => put_backend(shared, id, body),
            Method::DELETE => delete_backend(shared, id),
            _ => allow(&[&Method::GET, &Method::PUT, &Method::DELETE]).expect("not allowed"),
        },
        ["api", "backends", id, action @ ("drain" | "resume")] => allow(&[&Method::POST])
            .unwrap_or_else(|| {
                let state = if *action == "drain" {
                    WorkState::Draining
                } else {
                    WorkState::Working
                };
                set_state(shared, id, state)
            }),
        ["api", "sessions"] => allow(&[&Method::GET]).unwrap_or_else(|| list_sessions(shared)),
        ["api", "sessions", id] => {
            allow(&[&Method::GET]).unwrap_or_else(|| match session_entry(shared, id) {
                Ok(entry) => Reply::json(200, session_json(&entry)),
                Err(reply) => reply,
            })
        }
        ["api", "sessions", id, "migrate"] => {
            allow(&[&Method::POST]).unwrap_or_else(|| migrate(shared, id, body))
        }
        _ => Reply::error(
            404,
            format!(
                "no such endpoint: {path} (try /api/backends, /api/sessions, /metrics, /health)"
            ),
        ),
    }
}

fn health(shared: &Shared) -> Reply {
    if shared.is_shutting_down() {
        Reply::json(503, json!({ "status": "shutting down" }))
    } else {
        Reply::json(200, json!({ "status": "ok" }))
    }
}

fn metrics(shared: &Shared) -> Reply {
    let backends: Vec<Backend> = shared
        .cluster
        .lock()
        .expect("cluster lock")
        .backends()
        .cloned()
        .collect();
    let mut body = shared.metrics.render(&backends);
    shared.guards.render(&mut body);
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body,
    }
}

fn state_name(state: WorkState) -> &'static str {
    match state {
        WorkState::Working => "working",
        WorkState::Draining => "draining",
        WorkState::Drained => "drained",
    }
}

fn backend_json(shared: &Shared, cluster: &Cluster, b: &Backend) -> Value {
    let drain = cluster
        .drain_status(&b.id)
        .map(|d| json!({ "since_ms": d.since.as_micros() / 1000, "stuck": d.stuck }));
    json!({
        "id": b.id.0,
        "addr": b.addr.to_string(),
        "labels": b.labels.0,
        "state": state_name(b.state),
        "health": if b.health == Health::Up { "up" } else { "down" },
        "connections": b.connections,
        "groups": b.groups.iter().map(|(g, n)| (g.0.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "removing": b.removing,
        "drain": drain,
        "commands_total": shared.metrics.commands.total(&b.id),
    })
}

fn list_backends(shared: &Shared) -> Reply {
    let cluster = shared.cluster.lock().expect("cluster lock");
    Reply::json(
        200,
        Value::Array(
            cluster
                .backends()
                .map(|b| backend_json(shared, &cluster, b))
                .collect(),
        ),
    )
}

fn not_found_backend(id: &str) -> Reply {
    Reply::error(404, format!("no backend '{id}'"))
}

fn get_backend(shared: &Shared, id: &str) -> Reply {
    let cluster = shared.cluster.lock().expect("cluster lock");
    match cluster.backend(&BackendId(id.to_string())) {
        Some(b) => Reply::json(200, backend_json(shared, &cluster, b)),
        None => not_found_backend(id),
    }
}

/// The body of `PUT /api/backends/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBackend {
    addr: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    state: Option<String>,
}

fn parse_state(s: &str) -> Result<WorkState, Reply> {
    match s {
        "working" => Ok(WorkState::Working),
        "draining" => Ok(WorkState::Draining),
        "drained" => Ok(WorkState::Drained),
        other => Err(Reply::error(
            400,
            format!("state '{other}' is not one of working, draining, drained"),
        )),
    }
}

fn valid_id(id: &str) -> Result<(), Reply> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Reply::error(
            400,
            format!(
                "backend id '{id}' must be 1-64 characters of letters, digits, '-', '_' or '.'"
            ),
        ));
    }
    Ok(())
}

fn put_backend(shared: &Shared, id: &str, body: &[u8]) -> Reply {
    let result = (|| {
        valid_id(id)?;
        let put: PutBackend = serde_json::from_slice(body).map_err(|e| {
            Reply::error(
                400,
                format!(
                    "body must be JSON {{\"addr\": \"IP:port\", \"labels\"?: {{...}}, \"state\"?: \"working|draining|drained\"}}: {e}"
                ),
            )
        })?;
        let addr: SocketAddr = put.addr.parse().map_err(|_| {
            Reply::error(
                400,
                format!(
                    "addr '{}' is not IP:port, such as \"127.0.0.1:3306\"",
                    put.addr
                ),
            )
        })?;
        let state = put.state.as_deref().map(parse_state).transpose()?;
        let mut cluster = shared.cluster.lock().expect("cluster lock");
        let existing = cluster.backend(&BackendId(id.to_string())).cloned();
        let config = BackendConfig {
            compress_backend: true,
            id: id.to_string(),
            addr,
            labels: match (put.labels, &existing) {
                (Some(labels), _) => Labels(labels),
                (None, Some(b)) => b.labels.clone(),
                (None, None) => Labels::new(),
            },
            state: match (state, &existing) {
                (Some(s), _) => s,
                (None, Some(b)) if !b.removing => b.state,
                _ => WorkState::Working,
            },
            // Not settable here: a backend keeps the TLS setting of the config file.
            tls: existing.as_ref().and_then(|b| b.tls.clone()),
            // Headers go to backends configured for them (the config file's backends only).
            proxy_protocol: false,
        };
        cluster.upsert(&config);
        let b = cluster
            .backend(&BackendId(id.to_string()))
            .expect("just upserted");
        let created = existing.is_none();
        info!(backend = %id, %addr, labels = %b.labels, state = state_name(b.state),
              "{} backend through the admin API", if created { "added" } else { "updated" });
        Ok(Reply::json(
            if created { 201 } else { 200 },
            backend_json(shared, &cluster, b),
        ))
    })();
    result.unwrap_or_else(|e| e)
}

fn set_state(shared: &Shared, id: &str, state: WorkState) -> Reply {
    let mut cluster = shared.cluster.lock().expect("cluster lock");
    let bid = BackendId(id.to_string());
    match cluster.set_state(&bid, state) {
        Ok(()) => {
            let b = cluster.backend(&bid).expect("known");
            info!(backend = %id, state = state_name(b.state), connections = b.connections,
                  "work state set through the admin API");
            Reply::json(200, backend_json(shared, &cluster, b))
        }
        Err(_) => not_found_backend(id),
    }
}

fn delete_backend(shared: &Shared, id: &str) -> Reply {
    let mut cluster = shared.cluster.lock().expect("cluster lock");
    let bid = BackendId(id.to_string());
    match cluster.remove(&bid) {
        Ok(Removal::Forgotten) => {
            info!(backend = %id, "removed backend through the admin API");
            Reply::json(200, json!({ "id": id, "removed": true, "connections": 0 }))
        }
        Ok(Removal::Draining) => {
            let b = cluster.backend(&bid).expect("still draining");
            info!(backend = %id, connections = b.connections,
                  "removing backend through the admin API once its sessions are gone");
            Reply::json(
                202,
                json!({ "id": id, "removed": false, "state": state_name(b.state),
                        "connections": b.connections }),
            )
        }
        Err(_) => not_found_backend(id),
    }
}

fn session_json(entry: &crate::registry::SessionEntry) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let info = entry.info();
    let moves = entry.moves();
    json!({
        "id": entry.id,
        "client_addr": entry.client().map(|a| a.to_string()),
        "tenant": info.as_ref().and_then(|i| i.tenant.clone()),
        "user": info.as_ref().map(|i| i.user.clone()),
        "labels": info.as_ref().map(|i| i.labels.0.clone()).unwrap_or_default(),
        "backend": info.as_ref().map(|i| i.backend.0.clone()),
        "backend_connection_id": info.as_ref().map(|i| i.backend_connection_id),
        "in_txn": entry.in_txn.load(Relaxed),
        "safe": entry.safe.load(Relaxed),
        "blocked_by": entry.blocked_by(),
        "migrations": entry.migrations.load(Relaxed),
        "pending_migration": moves.pending.map(|t| t.as_str()),
        "last_migration": moves.last.as_ref().map(|r| json!({
            "trigger": r.trigger.as_str(),
            "from": r.from.0,
            "to": r.to.as_ref().map(|b| b.0.clone()),
            "outcome": if r.outcome.is_ok() { "ok" } else { "failed" },
            "reason": r.outcome.as_ref().err().map(|(_, why)| why.clone()),
            "duration_ms": r.duration.as_secs_f64() * 1000.0,
            "skipped": r.skipped,
        })),
    })
}

fn list_sessions(shared: &Shared) -> Reply {
    let sessions: Vec<Value> = shared
        .registry
        .all()
        .iter()
        .filter(|e| e.info().is_some())
        .map(|e| session_json(e))
        .collect();
    Reply::json(200, Value::Array(sessions))
}

fn session_entry(shared: &Shared, id: &str) -> Result<Arc<crate::registry::SessionEntry>, Reply> {
    let n: u32 = id.parse().map_err(|_| {
        Reply::error(
            400,
            format!("session id '{id}' is not a connection id (a number)"),
        )
    })?;
    shared
        .registry
        .get(n)
        .filter(|e| e.info().is_some())
        .ok_or_else(|| Reply::error(404, format!("no session {n}")))
}

/// The body of `POST /api/sessions/{id}/migrate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Migrate {
    #[serde(default)]
    to: Option<String>,
}

fn migrate(shared: &Shared, id: &str, body: &[u8]) -> Reply {
    let result: Result<Reply, Reply> = (|| {
        let entry = session_entry(shared, id)?;
        let request: Migrate = if body.iter().all(u8::is_ascii_whitespace) {
            Migrate::default()
        } else {
            serde_json::from_slice(body).map_err(|e| {
                Reply::error(
                    400,
                    format!("body must be empty or JSON {{\"to\"?: \"backend id\"}}: {e}"),
                )
            })?
        };
        let info = entry
            .info()
            .ok_or_else(|| Reply::error(404, format!("no session {id}")))?;
        if let Some(why) = entry
            .blocked_by()
            .into_iter()
            .find(|b| b == ferry_core::login::CREDENTIAL_UNKNOWN)
        {
            // It would wait for a safe point that never comes: say so now.
            return Err(Reply::error(
                409,
                format!("session {id} cannot move: {why}"),
            ));
        }
        let to = match &request.to {
            None => None,
            Some(to) => {
                let cluster = shared.cluster.lock().expect("cluster lock");
                let target = cluster
                    .backend(&BackendId(to.clone()))
                    .ok_or_else(|| Reply::error(404, format!("no backend '{to}' to migrate to")))?;
                if info.backend == target.id {
                    return Err(Reply::error(
                        409,
                        format!("session {id} already runs on '{to}'"),
                    ));
                }
                let request = RouteRequest {
                    tenant: info.tenant.clone(),
                    labels: info.labels.clone(),
                };
                // Refused now with the reason, rather than failing later in the session.
                cluster.eligible(&target.id, &request).map_err(|why| {
                    Reply::error(409, format!("session {id} cannot move to '{to}': {why}"))
                })?;
                Some(target.id.clone())
            }
        };
        if !entry.send(Control::Migrate(MoveRequest {
            trigger: Trigger::Admin,
            to: to.clone(),
        })) {
            return Err(Reply::error(404, format!("session {id} is closing")));
        }
        Ok(Reply::json(
            202,
            json!({ "id": entry.id, "requested": true, "to": to.map(|b| b.0) }),
        ))
    })();
    result.unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::cluster::RouteRequest;
    use ferry_core::config::Config;

    fn shared() -> Shared {
        let config = Config::parse(
            r#"(
                listen: "127.0.0.1:1", admin_listen: "127.0.0.1:2",
                backends: [(id: "cn1", addr: "127.0.0.1:3001"), (id: "cn2", addr: "127.0.0.1:3002")],
            )"#,
        )
        .unwrap();
        Shared::from_config(&config, 1).unwrap()
    }

    fn call(s: &Shared, method: Method, path: &str, body: &str) -> (u16, Value) {
        let r = respond(s, &method, path, body.as_bytes());
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        )
    }

    #[test]
    fn lists_backends_with_the_contract_fields() {
        let s = shared();
        let (status, list) = call(&s, Method::GET, "/api/backends", "");
        assert_eq!(status, 200);
        assert_eq!(list[0]["id"], "cn1");
        assert_eq!(list[0]["addr"], "127.0.0.1:3001");
        assert_eq!(list[0]["labels"], json!({}));
        assert_eq!(list[0]["state"], "working");
        assert_eq!(list[0]["health"], "up");
        assert_eq!(list[0]["connections"], 0);
        assert_eq!(list[0]["commands_total"], 0);
    }

    #[test]
    fn put_drain_resume_delete() {
        let s = shared();
        let (status, b) = call(
            &s,
            Method::PUT,
            "/api/backends/cn3",
            r#"{"addr": "127.0.0.1:3003", "labels": {"account": "acc1"}, "state": "draining"}"#,
        );
        assert_eq!(status, 201, "{b}");
        assert_eq!(
            b["state"], "drained",
            "an empty draining backend is drained"
        );
        let (status, b) = call(
            &s,
            Method::PUT,
            "/api/backends/cn3",
            r#"{"addr": "127.0.0.1:3004"}"#,
        );
        assert_eq!(status, 200);
        assert_eq!(b["labels"]["account"], "acc1", "labels kept when not given");
        assert_eq!(b["state"], "drained", "state kept when not given");
        let (status, b) = call(&s, Method::POST, "/api/backends/cn3/resume", "");
        assert_eq!((status, b["state"].as_str()), (200, Some("working")));
        // A session on cn1, then DELETE: 202 and still listed until it ends.
        let route = s
            .cluster
            .lock()
            .unwrap()
            .route(&RouteRequest {
                tenant: None,
                labels: Labels::new(),
            })
            .unwrap();
        let (status, _) = call(
            &s,
            Method::DELETE,
            &format!("/api/backends/{}", route.backend),
            "",
        );
        assert_eq!(status, 202);
        s.release(&route);
        let (status, _) = call(
            &s,
            Method::GET,
            &format!("/api/backends/{}", route.backend),
            "",
        );
        assert_eq!(status, 404);
        let (status, _) = call(&s, Method::DELETE, "/api/backends/cn3", "");
        assert_eq!(status, 200);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let s = shared();
        for (method, path, body, status, needle) in [
            (Method::PUT, "/api/backends/cn9", "{", 400, "JSON"),
            (
                Method::PUT,
                "/api/backends/cn9",
                r#"{"addr": "x"}"#,
                400,
                "IP:port",
            ),
            (
                Method::PUT,
                "/api/backends/cn9",
                r#"{"addr": "127.0.0.1:1", "state": "x"}"#,
                400,
                "working",
            ),
            (
                Method::PUT,
                "/api/backends/a%20b",
                r#"{"addr": "127.0.0.1:1"}"#,
                400,
                "letters",
            ),
            (Method::POST, "/api/backends/zz/drain", "", 404, "zz"),
            (Method::DELETE, "/api/backends/zz", "", 404, "zz"),
            (Method::GET, "/api/backends/cn1/drain", "", 405, "POST"),
            (Method::POST, "/api/sessions", "", 405, "GET"),
            (Method::GET, "/api/sessions/abc", "", 400, "number"),
            (Method::POST, "/api/sessions/77/migrate", "", 404, "77"),
            (Method::GET, "/nope", "", 404, "/api/backends"),
        ] {
            let (got, body) = call(&s, method.clone(), path, body);
            assert_eq!(got, status, "{method} {path}: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(needle), "{method} {path}: {error}");
        }
    }

    #[test]
    fn migrate_validates_then_hands_the_request_to_the_session() {
        let s = shared();
        let mut reg = s.registry.register(5);
        let control = reg.control.take().unwrap();
        reg.entry.set_info(crate::registry::SessionInfo {
            tenant: None,
            user: "app".into(),
            labels: Labels::new(),
            backend: BackendId("cn1".into()),
            backend_connection_id: 3,
        });
        let (status, sessions) = call(&s, Method::GET, "/api/sessions", "");
        assert_eq!(status, 200);
        assert_eq!(sessions[0]["id"], 5);
        assert_eq!(sessions[0]["safe"], true);
        assert_eq!(sessions[0]["blocked_by"], json!([]));
        let (status, body) = call(
            &s,
            Method::POST,
            "/api/sessions/5/migrate",
            r#"{"to": "cn9"}"#,
        );
        assert_eq!(status, 404, "{body}");
        let (status, _) = call(
            &s,
            Method::POST,
            "/api/sessions/5/migrate",
            r#"{"to": "cn1"}"#,
        );
        assert_eq!(status, 409);
        let (status, _) = call(&s, Method::POST, "/api/sessions/5/migrate", r#"{"too": 1}"#);
        assert_eq!(status, 400);
        let (status, body) = call(
            &s,
            Method::POST,
            "/api/sessions/5/migrate",
            r#"{"to": "cn2"}"#,
        );
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["requested"], true);
        assert_eq!(
            control.try_recv().unwrap(),
            Control::Migrate(MoveRequest {
                trigger: Trigger::Admin,
                to: Some(BackendId("cn2".into())),
            })
        );
        let (_, sessions) = call(&s, Method::GET, "/api/sessions", "");
        assert_eq!(sessions[0]["pending_migration"], "admin");
        assert_eq!(sessions[0]["last_migration"], Value::Null);
        // Without a target: any eligible backend.
        let (status, _) = call(&s, Method::POST, "/api/sessions/5/migrate", "");
        assert_eq!(status, 202);
        assert_eq!(
            control.try_recv().unwrap(),
            Control::Migrate(MoveRequest {
                trigger: Trigger::Admin,
                to: None,
            })
        );
    }

    #[test]
    fn health_and_metrics() {
        let s = shared();
        assert_eq!(respond(&s, &Method::GET, "/health", b"").status, 200);
        let m = respond(&s, &Method::GET, "/metrics", b"");
        assert!(m.content_type.starts_with("text/plain"));
        assert!(m
            .body
            .contains("ferry_backend_connections{backend=\"cn2\"} 0"));
        s.begin_shutdown();
        assert_eq!(respond(&s, &Method::GET, "/health", b"").status, 503);
    }
}

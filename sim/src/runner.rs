//! Runs one scenario with one seed under turmoil and checks the invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ferry_core::cluster::BackendId;
use ferry_core::config::{BackendConfig, Config, UserConfig, WorkState};
use ferry_core::labels::Labels;

use crate::backend::{self, BackendSpec, Server};
use crate::client::{self, ClientCtx, ClientSpec, TxnStatus};
use crate::proxy_host::{self, ProxySlot, PORT};
use crate::scenario::{Action, Scenario};
use crate::store::{Store, Write};
use crate::trace::Trace;

/// The outcome of one run.
#[derive(Debug)]
pub struct RunResult {
    /// The seed.
    pub seed: u64,
    /// The trace.
    pub trace: Trace,
    /// Broken invariants and expectations; empty when the run passed.
    pub violations: Vec<String>,
}

impl RunResult {
    /// True when no invariant or expectation was broken.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// How long the runner lets in-flight work finish before comparing counts.
const SETTLE_MS: u64 = 300;

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> RunResult {
    let trace = Trace::new();
    let subscriber = crate::trace::subscriber(trace.clone());
    tracing::subscriber::with_default(subscriber, || run_traced(scenario, seed, trace))
}

fn run_traced(scenario: &Scenario, seed: u64, trace: Trace) -> RunResult {
    let mut violations = Vec::new();
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH)
        .simulation_duration(Duration::from_millis(scenario.limit_ms + 10 * SETTLE_MS))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(scenario.network.min_latency_ms))
        .max_message_latency(Duration::from_millis(scenario.network.max_latency_ms))
        .tcp_capacity(1 << 16)
        .build();

    // Addresses first, in a fixed order.
    sim.lookup("ferry");
    let mut addrs = BTreeMap::new();
    for b in &scenario.backends {
        addrs.insert(
            b.id.clone(),
            SocketAddr::new(sim.lookup(b.id.as_str()), PORT),
        );
    }
    for c in &scenario.clients {
        sim.lookup(c.name.as_str());
    }

    let store = Store::new();
    let backend_users: BTreeMap<String, String> = scenario
        .users
        .iter()
        .map(|u| (u.user.clone(), u.password.clone()))
        .collect();
    let databases: BTreeSet<String> = scenario.databases.iter().cloned().collect();
    let mut servers = BTreeMap::new();
    for (i, b) in scenario.backends.iter().enumerate() {
        let server = Server::new(
            BackendSpec {
                id: b.id.clone(),
                users: backend_users.clone(),
                databases: databases.clone(),
                greeting: b.greeting,
                reply_delay_ms: b.reply_delay_ms,
                seed: seed.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 + 1),
            },
            store.clone(),
            trace.clone(),
        );
        servers.insert(b.id.clone(), server.clone());
        let trace = trace.clone();
        sim.host(b.id.as_str(), move || {
            server.restart();
            let server = server.clone();
            let trace = trace.clone();
            async move {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                trace.log(server.id(), "up");
                loop {
                    let (stream, _) = listener.accept().await?;
                    tokio::task::spawn_local(backend::serve(server.clone(), stream));
                }
            }
        });
    }

    let config = match ferry_config(scenario, &addrs) {
        Ok(c) => c,
        Err(e) => {
            violations.push(format!("scenario: {e}"));
            return RunResult {
                seed,
                trace,
                violations,
            };
        }
    };
    let slot: ProxySlot = Default::default();
    {
        let slot = slot.clone();
        let trace = trace.clone();
        sim.host("ferry", move || {
            proxy_host::serve(config.clone(), seed, trace.clone(), slot.clone())
        });
    }

    let ctx = ClientCtx {
        trace: trace.clone(),
        ..ClientCtx::default()
    };
    let mut members = Vec::new();
    let mut next_id = 1;
    for def in &scenario.clients {
        let mut group = Vec::new();
        for n in 0..def.count {
            let name = if def.count == 1 {
                def.name.clone()
            } else {
                format!("{}{}", def.name, n + 1)
            };
            let spec = ClientSpec {
                name: name.clone(),
                id: next_id,
                user: def.user.clone(),
                password: def.password.clone(),
                database: def.database.clone(),
                attributes: def.attributes.clone(),
                deprecate_eof: def.deprecate_eof,
                session_track: def.session_track,
                script: def.script.clone(),
                quiet: def.quiet,
                stuck_ms: def.stuck_ms,
                check_after_sleep: def.check_after_sleep,
            };
            next_id += 1;
            members.push(name);
            group.push((def.start_ms + u64::from(n) * def.stagger_ms, spec));
        }
        let ctx = ctx.clone();
        sim.client(def.name.as_str(), async move {
            let mut handles = Vec::new();
            for (start, spec) in group {
                let ctx = ctx.clone();
                handles.push(tokio::task::spawn_local(async move {
                    tokio::time::sleep(Duration::from_millis(start)).await;
                    client::run(spec, ctx, || {
                        turmoil::net::TcpStream::connect(("ferry", PORT))
                    })
                    .await
                }));
            }
            for h in handles {
                h.await?;
            }
            Ok(())
        });
    }

    let mut faults = scenario.faults.clone();
    faults.sort_by_key(|f| f.at_ms);
    let mut faults = faults.into_iter().peekable();
    let total = members.len();
    let mut settle_until: Option<Duration> = None;
    let mut checked = false;
    loop {
        let now = sim.elapsed();
        while let Some(f) = faults.next_if(|f| Duration::from_millis(f.at_ms) <= now) {
            apply(
                &mut sim,
                &f.action,
                scenario,
                &addrs,
                &slot,
                &trace,
                &mut violations,
            );
        }
        if !checked && ctx.done.load(Ordering::SeqCst) == total {
            match settle_until {
                None => settle_until = Some(now + Duration::from_millis(SETTLE_MS)),
                Some(t) if now >= t => {
                    checked = true;
                    let counts = compare_counts(
                        &slot,
                        &servers,
                        &trace,
                        now.as_millis(),
                        "final check",
                        &mut violations,
                    );
                    if let Some(spread) = scenario.expect.balanced {
                        let open: Vec<u32> = counts.values().copied().collect();
                        let (lo, hi) = (open.iter().min(), open.iter().max());
                        if let (Some(lo), Some(hi)) = (lo, hi) {
                            if hi - lo > spread {
                                violations.push(format!(
                                    "not balanced: sessions per backend {counts:?} differ by more than {spread}"
                                ));
                            }
                        }
                    }
                    if let Some(expected) = &scenario.expect.placement {
                        if &counts != expected {
                            violations.push(format!(
                                "placement: expected {expected:?}, found {counts:?}"
                            ));
                        }
                    }
                    ctx.release.store(true, Ordering::SeqCst);
                }
                Some(_) => {}
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                violations.push(format!("simulation: {e}"));
                break;
            }
        }
    }
    for _ in 0..SETTLE_MS {
        if sim.step().is_err() {
            break;
        }
    }
    let end = sim.elapsed().as_millis();
    let counts = compare_counts(&slot, &servers, &trace, end, "end", &mut violations);
    if counts.values().any(|&n| n > 0) {
        violations.push(format!(
            "sessions still counted after every client left: {counts:?}"
        ));
    }

    let reports = ctx.reports.lock().expect("reports lock").clone();
    let reported: BTreeSet<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    for m in &members {
        if !reported.contains(m.as_str()) {
            violations.push(format!("{m} never finished its script"));
        }
    }
    let mut seen_errors = Vec::new();
    for r in &reports {
        for v in &r.violations {
            violations.push(format!("{}: {v}", r.name));
        }
        for e in &r.errors {
            seen_errors.push(e.clone());
            if !scenario
                .expect
                .errors
                .iter()
                .any(|a| a.allows(&e.client, e.code))
            {
                violations.push(format!(
                    "{} got an error the scenario does not allow: {} {} (during {})",
                    e.client, e.code, e.message, e.during
                ));
            }
        }
    }
    for req in &scenario.expect.required_errors {
        if !seen_errors.iter().any(|e| req.allows(&e.client, e.code)) {
            violations.push(format!("expected error {req:?} never happened"));
        }
    }
    let moves = proxy_host::moves(&slot);
    if moves < scenario.expect.moves_at_least {
        violations.push(format!(
            "{moves} sessions moved, the scenario expects at least {}",
            scenario.expect.moves_at_least
        ));
    }
    let txns: Vec<_> = reports
        .iter()
        .flat_map(|r| r.txns.iter().cloned())
        .collect();
    check_commits(&store, &txns, &mut violations);
    RunResult {
        seed,
        trace,
        violations,
    }
}

/// ferry's config for the scenario: its users, and the backends configured from the start.
fn ferry_config(
    scenario: &Scenario,
    addrs: &BTreeMap<String, SocketAddr>,
) -> Result<Config, String> {
    let mut config = Config::parse(
        "(listen: \"0.0.0.0:3306\", admin_listen: \"127.0.0.1:3307\", server_version: \"5.5.5-10.11.6-MariaDB-ferry\")",
    )
    .map_err(|e| e.to_string())?;
    config.users = scenario
        .users
        .iter()
        .map(|u| UserConfig {
            tenant: u.tenant.clone(),
            any_tenant: false,
            user: u.user.clone(),
            password: Some(u.password.clone()),
            password_hash: None,
        })
        .collect();
    config.backends = scenario
        .backends
        .iter()
        .filter(|b| b.configured)
        .map(|b| backend_config(b, addrs))
        .collect();
    if let Some(ms) = scenario.ferry.login_timeout_ms {
        config.login_timeout_ms = ms;
    }
    if let Some(ms) = scenario.ferry.backend_timeout_ms {
        config.backend_timeout_ms = ms;
    }
    config.rebalance.interval_ms = scenario.ferry.rebalance_interval_ms.unwrap_or(1000);
    // Scenarios last seconds: checks every 200 ms (fall 3, rise 2 as configured by default).
    config.health.interval_ms = 200;
    config.health.timeout_ms = 100;
    if let Some(ms) = scenario.ferry.drain_timeout_ms {
        config.drain_timeout_ms = ms;
    }
    if let Some(ms) = scenario.ferry.migration_backoff_ms {
        config.migration_backoff_ms = ms;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn backend_config(
    b: &crate::scenario::BackendDef,
    addrs: &BTreeMap<String, SocketAddr>,
) -> BackendConfig {
    BackendConfig {
        compress_backend: true,
        id: b.id.clone(),
        addr: addrs[&b.id],
        labels: Labels(b.labels.clone()),
        state: b.state,
        tls: None,
        proxy_protocol: false,
    }
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    action: &Action,
    scenario: &Scenario,
    addrs: &BTreeMap<String, SocketAddr>,
    slot: &ProxySlot,
    trace: &Trace,
    violations: &mut Vec<String>,
) {
    let ms = sim.elapsed().as_millis();
    trace.log_at(ms, "fault", format!("{action:?}"));
    let def = |id: &str| scenario.backends.iter().find(|b| b.id == id);
    let result: Result<(), String> = match action {
        Action::Partition(a, b) => {
            sim.partition(a.as_str(), b.as_str());
            Ok(())
        }
        Action::Repair(a, b) => {
            sim.repair(a.as_str(), b.as_str());
            Ok(())
        }
        Action::Hold(a, b) => {
            sim.hold(a.as_str(), b.as_str());
            Ok(())
        }
        Action::Release(a, b) => {
            sim.release(a.as_str(), b.as_str());
            Ok(())
        }
        Action::Latency(a, b, ms) => {
            sim.set_link_latency(a.as_str(), b.as_str(), Duration::from_millis(*ms));
            Ok(())
        }
        Action::Crash(h) => {
            sim.crash(h.as_str());
            Ok(())
        }
        Action::Restart(h) => {
            sim.bounce(h.as_str());
            Ok(())
        }
        Action::Drain(id) | Action::Resume(id) | Action::RemoveBackend(id) => {
            let id = BackendId(id.clone());
            proxy_host::with_cluster(slot, |c| match action {
                Action::Drain(_) => c.set_state(&id, WorkState::Draining).map(|_| ()),
                Action::Resume(_) => c.set_state(&id, WorkState::Working).map(|_| ()),
                _ => c.remove(&id).map(|_| ()),
            })
            .unwrap_or(Ok(()))
            .map_err(|e| e.to_string())
        }
        Action::Relabel(id, labels) => match def(id) {
            None => Err("no such backend in the scenario".into()),
            Some(def) => {
                let mut config = backend_config(def, addrs);
                config.labels = Labels(labels.clone());
                proxy_host::with_cluster(slot, |c| {
                    if let Some(b) = c.backend(&BackendId(id.clone())) {
                        config.state = b.state;
                    }
                    c.upsert(&config)
                });
                Ok(())
            }
        },
        Action::AddBackend(id) => match def(id) {
            None => Err("no such backend in the scenario".into()),
            Some(def) => {
                let config = backend_config(def, addrs);
                proxy_host::with_cluster(slot, |c| c.upsert(&config));
                Ok(())
            }
        },
    };
    if let Err(e) = result {
        violations.push(format!("fault {action:?}: {e}"));
    }
}

/// Compares ferry's per-backend session counts with the backends' real connections.
fn compare_counts(
    slot: &ProxySlot,
    servers: &BTreeMap<String, Arc<Server>>,
    trace: &Trace,
    ms: u128,
    when: &str,
    violations: &mut Vec<String>,
) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    let ferry: BTreeMap<String, u32> = proxy_host::with_cluster(slot, |c| {
        c.backends()
            .map(|b| (b.id.0.clone(), b.connections))
            .collect()
    })
    .unwrap_or_default();
    for (id, server) in servers {
        let ferry = ferry.get(id).copied().unwrap_or(0);
        let real = server.live_connections() as u32;
        counts.insert(id.clone(), ferry);
        if ferry != real {
            violations.push(format!(
                "{when}: ferry counts {ferry} sessions on {id}, which has {real} connections"
            ));
        }
    }
    let shown: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    trace.log_at(
        ms,
        "sim",
        format!("{when}: sessions per backend {}", shown.join(" ")),
    );
    counts
}

/// Acknowledged commits are in the store; transactions that cannot have committed are not.
fn check_commits(store: &Store, txns: &[client::TxnRecord], violations: &mut Vec<String>) {
    let mut log: Vec<Vec<Write>> = store
        .log()
        .into_iter()
        .map(|c| {
            let mut w = c.writes;
            w.sort();
            w
        })
        .collect();
    let mut failed = Vec::new();
    for t in txns {
        let mut writes = t.writes.clone();
        writes.sort();
        match t.status {
            TxnStatus::Acked => match log.iter().position(|l| *l == writes) {
                Some(i) => {
                    log.swap_remove(i);
                }
                None => violations.push(format!(
                    "{}: an acknowledged commit is not in the store: {:?}",
                    t.client, t.writes
                )),
            },
            TxnStatus::Unknown => {
                if let Some(i) = log.iter().position(|l| *l == writes) {
                    log.swap_remove(i);
                }
            }
            TxnStatus::Failed => failed.push((t, writes)),
        }
    }
    for (t, writes) in failed {
        if log.contains(&writes) {
            violations.push(format!(
                "{}: a transaction that was never acknowledged is in the store: {:?}",
                t.client, t.writes
            ));
        }
    }
}

//! The cluster control loop: every tick it looks at where sessions are and
//! tells sessions to move — off draining and down backends at once, and off
//! overloaded backends every rebalance interval, paced. The decisions are the
//! core's ([`Cluster::plan_drain`], [`Cluster::plan_rebalance`]); this loop
//! only gathers the snapshot and delivers the orders.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::cluster::{
    BackendId, LabelGroup, MoveOrder, Pacer, Route, RouteRequest, SessionId, SessionView,
};
use ferry_core::session::{Control, MoveRequest};
use ferry_core::Timestamp;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::proxy::Shared;

/// How often the loop looks.
const TICK: Duration = Duration::from_millis(50);

/// Most sessions moving at once because of drains and failovers.
const MAX_CONCURRENT_MOVES: usize = 64;

/// Runs until shutdown begins.
pub async fn run<T: Clock>(shared: Arc<Shared>, clock: T) {
    let mut control = Loop::new(&shared, clock.now());
    loop {
        if !shared.sleep_until(&clock, clock.now() + TICK).await {
            return;
        }
        control.tick(&shared, clock.now());
    }
}

/// The loop's memory between ticks.
struct Loop {
    pacer: Pacer,
    last_rebalance: Timestamp,
    /// Rebalance orders of the last plan not yet started (paced out tick by tick).
    queue: std::collections::VecDeque<MoveOrder>,
    /// Stuck drains last reported, so each is logged once.
    stuck: BTreeMap<BackendId, String>,
}

impl Loop {
    fn new(shared: &Shared, now: Timestamp) -> Self {
        let policy = shared.config().rebalance.policy();
        Loop {
            pacer: Pacer::new(policy.moves_per_second),
            last_rebalance: now,
            queue: std::collections::VecDeque::new(),
            stuck: BTreeMap::new(),
        }
    }

    /// One look: drain orders, expired drains, and (every interval) rebalance orders.
    fn tick(&mut self, shared: &Shared, now: Timestamp) {
        let config = shared.config();
        let policy = config.rebalance.policy();
        let views = snapshot(shared);
        let moving = views.iter().filter(|v| v.moving).count();
        let due = !policy.interval.is_zero() && now.since(self.last_rebalance) >= policy.interval;
        let (drain, rebalance) = {
            let mut cluster = shared.cluster.lock().expect("cluster lock");
            let drain =
                cluster.plan_drain(&views, now, Duration::from_millis(config.drain_timeout_ms));
            let rebalance = if due {
                self.last_rebalance = now;
                cluster.plan_rebalance(&views, now, &policy)
            } else {
                Vec::new()
            };
            (drain, rebalance)
        };

        let stuck: BTreeMap<BackendId, String> = drain.stuck.iter().cloned().collect();
        for (id, why) in &stuck {
            if self.stuck.get(id) != Some(why) {
                warn!(backend = %id, reason = %why, "drain is stuck: its sessions have nowhere to go");
            }
        }
        for id in self.stuck.keys() {
            if !stuck.contains_key(id) {
                info!(backend = %id, "drain is no longer stuck");
            }
        }
        self.stuck = stuck;

        for session in &drain.expired {
            if let Some(entry) = shared.registry.get(session.0) {
                let backend = entry
                    .info()
                    .map(|i| i.backend.to_string())
                    .unwrap_or_default();
                info!(
                    conn_id = session.0,
                    backend, "drain timed out: closing the session"
                );
                entry.send(Control::Close(format!(
                    "ferry: backend {backend} was drained and the session could not move in time"
                )));
            }
        }

        // Drains and failovers: as many at once as the cap allows (each move is a few round trips).
        let room = MAX_CONCURRENT_MOVES.saturating_sub(moving);
        deliver(shared, drain.orders.into_iter().take(room));
        if due {
            if !rebalance.is_empty() {
                info!(planned = rebalance.len(), "rebalancing");
            }
            // A new plan replaces what is left of the last one: it saw the latest counts.
            self.queue = rebalance.into();
        }
        let n = self.pacer.take(now, self.queue.len());
        deliver(shared, self.queue.drain(..n));
    }
}

fn deliver(shared: &Shared, orders: impl Iterator<Item = MoveOrder>) {
    for order in orders {
        if let Some(entry) = shared.registry.get(order.session.0) {
            entry.send(Control::Migrate(MoveRequest {
                trigger: order.trigger,
                to: order.to,
            }));
        }
    }
}

/// Where every logged-in session is, as the cluster's planners want it.
pub fn snapshot(shared: &Shared) -> Vec<SessionView> {
    let entries = shared.registry.all();
    let cluster = shared.cluster.lock().expect("cluster lock");
    entries
        .iter()
        .filter_map(|e| {
            let info = e.info()?;
            let backend = cluster.backend(&info.backend)?;
            let (addr, tls) = (backend.addr, backend.tls.is_some());
            let request = RouteRequest {
                tenant: info.tenant.clone(),
                labels: info.labels.clone(),
            };
            let tenant = info
                .tenant
                .as_deref()
                .or_else(|| info.labels.get(ferry_core::labels::ACCOUNT));
            let moves = e.moves();
            Some(SessionView {
                id: SessionId(e.id),
                route: Route {
                    backend: info.backend.clone(),
                    addr,
                    group: LabelGroup::of(tenant, &info.labels),
                    tls,
                },
                request,
                movable: e.safe.load(std::sync::atomic::Ordering::Relaxed),
                moving: moves.running || moves.pending.is_some(),
                last_moved: moves.last_moved,
            })
        })
        .collect()
}

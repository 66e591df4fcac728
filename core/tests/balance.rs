//! Moving sessions, as the cluster sees it: count transfers, rebalance and
//! drain plans, pacing. Pure functions of the cluster, the session views and
//! the time given; no session machine involved.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::cluster::{
    BackendChange, BackendId, BalancePolicy, Cluster, DrainPlan, DrainStatus, Health, LabelGroup,
    MoveOrder, NoTarget, Pacer, Route, RouteRequest, SessionId, SessionView, Transferred, Trigger,
};
use ferry_core::config::{BackendConfig, WorkState};
use ferry_core::{Rng, Timestamp};

fn backend(id: &str, labels: &[(&str, &str)]) -> BackendConfig {
    BackendConfig {
        id: id.into(),
        addr: format!("127.0.0.{}:3306", id.len()).parse().unwrap(),
        labels: labels.iter().copied().collect(),
        state: WorkState::Working,
        compress_backend: true,
        tls: None,
        proxy_protocol: false,
    }
}

fn req(tenant: Option<&str>, labels: &[(&str, &str)]) -> RouteRequest {
    RouteRequest {
        tenant: tenant.map(str::to_string),
        labels: labels.iter().copied().collect(),
    }
}

fn plain() -> RouteRequest {
    req(None, &[])
}

fn id(s: &str) -> BackendId {
    BackendId(s.into())
}

fn counts(c: &Cluster) -> Vec<(String, u32)> {
    c.backends()
        .map(|b| (b.id.0.clone(), b.connections))
        .collect()
}

/// Routes `n` sessions of `r` and returns their routes.
fn route_n(c: &mut Cluster, r: &RouteRequest, n: usize) -> Vec<Route> {
    (0..n).map(|_| c.route(r).unwrap()).collect()
}

/// A cluster with cn1..cn3 (unlabelled), cn2 and cn3 draining while `n`
/// sessions land on cn1, then working again.
fn all_on_cn1(n: usize) -> (Cluster, Vec<Route>) {
    let mut c = Cluster::new(
        &[
            backend("cn1", &[]),
            backend("cn2", &[]),
            backend("cn3", &[]),
        ],
        5,
    );
    c.set_state(&id("cn2"), WorkState::Draining).unwrap();
    c.set_state(&id("cn3"), WorkState::Draining).unwrap();
    let routes = route_n(&mut c, &plain(), n);
    c.set_state(&id("cn2"), WorkState::Working).unwrap();
    c.set_state(&id("cn3"), WorkState::Working).unwrap();
    (c, routes)
}

// ---------------------------------------------------------------- transfer

#[test]
fn transfer_moves_one_count_to_the_least_loaded_other_backend() {
    let (mut c, routes) = all_on_cn1(3);
    c.route(&plain()).unwrap(); // lands on cn2 or cn3: the other one is now the least loaded
    let before = counts(&c);
    let empty = if before[1].1 == 0 { "cn2" } else { "cn3" };
    let Transferred { route, change } = c.transfer(&routes[0], &plain(), None).unwrap();
    assert_eq!(route.backend, id(empty));
    assert_eq!(route.group, routes[0].group);
    assert_eq!(change, None);
    assert_eq!(c.backend(&id("cn1")).unwrap().connections, 2);
    assert_eq!(c.backend(&id(empty)).unwrap().connections, 1);
    assert_eq!(c.total_connections(), 4);
}

#[test]
fn transfer_to_a_named_backend_and_back() {
    let (mut c, routes) = all_on_cn1(2);
    let moved = c.transfer(&routes[0], &plain(), Some(&id("cn3"))).unwrap();
    assert_eq!(moved.route.backend, id("cn3"));
    assert_eq!(moved.route.addr, c.backend(&id("cn3")).unwrap().addr);
    assert_eq!(counts(&c)[2], ("cn3".into(), 1));
    // The move failed: the count goes back.
    assert_eq!(c.transfer_back(&moved.route, &routes[0]), None);
    assert_eq!(
        counts(&c),
        [("cn1".into(), 2), ("cn2".into(), 0), ("cn3".into(), 0)]
    );
    let groups = &c.backend(&id("cn1")).unwrap().groups;
    assert_eq!(groups.get(&LabelGroup::default()), Some(&2));
    assert!(c.backend(&id("cn3")).unwrap().groups.is_empty());
}

#[test]
fn a_refused_transfer_says_why_and_changes_nothing() {
    let mut c = Cluster::new(
        &[
            backend("a1", &[("account", "acc1")]),
            backend("a2", &[("account", "acc1"), ("region", "eu-*")]),
            backend("b1", &[("account", "acc2")]),
            backend("pool", &[]),
            backend("zone", &[("zone", "x")]),
            backend("cn1", &[]),
        ],
        1,
    );
    let acc1 = req(Some("acc1"), &[]);
    let from = c.route(&acc1).unwrap();
    let other = if from.backend == id("a1") { "a2" } else { "a1" };
    c.set_state(&id("cn1"), WorkState::Draining).unwrap();
    let snapshot = counts(&c);
    let refuse = |c: &mut Cluster, r: &RouteRequest, to: &str| {
        c.transfer(&from, r, Some(&id(to))).unwrap_err().to_string()
    };
    assert_eq!(refuse(&mut c, &acc1, "nope"), "no backend 'nope'");
    assert_eq!(
        refuse(&mut c, &acc1, &from.backend.0),
        format!("the session is already on backend '{}'", from.backend)
    );
    assert_eq!(
        refuse(&mut c, &acc1, "b1"),
        "backend 'b1' serves another tenant"
    );
    assert_eq!(refuse(&mut c, &acc1, "cn1"), "backend 'cn1' is drained");
    assert_eq!(
        refuse(&mut c, &acc1, "pool"),
        "backend 'pool' is the shared pool, used only when no backend serves tenant acc1"
    );
    assert_eq!(
        refuse(&mut c, &acc1, "zone"),
        "backend 'zone' does not serve tenant acc1"
    );
    assert_eq!(
        refuse(&mut c, &plain(), "a1"),
        "backend 'a1' serves another tenant"
    );
    // Whatever the admin asks, a session with labels stays where they are served.
    let eu = req(Some("acc1"), &[("region", "eu-west")]);
    let a1 = BackendId("a1".into());
    let eu_from = Route {
        backend: id("pool"),
        ..from.clone()
    };
    assert_eq!(
        c.transfer(&eu_from, &eu, Some(&a1)),
        Err(NoTarget::Mismatch {
            backend: a1.clone(),
            tenant: Some("acc1".into()),
            labels: eu.labels.clone(),
        })
    );
    assert_eq!(
        c.transfer(&eu_from, &eu, Some(&a1))
            .unwrap_err()
            .to_string(),
        "backend 'a1' does not serve tenant acc1 with labels region=eu-west"
    );
    // A down target.
    for _ in 0..3 {
        c.record_check(&id(other), false);
    }
    assert_eq!(
        refuse(&mut c, &acc1, other),
        format!("backend '{other}' is down")
    );
    assert_eq!(counts(&c), snapshot, "refusals change nothing");
}

#[test]
fn a_backend_being_drained_or_removed_takes_no_moves() {
    let (mut c, routes) = all_on_cn1(1);
    let other = c.route(&plain()).unwrap().backend;
    c.set_state(&other, WorkState::Draining).unwrap();
    let no = c.transfer(&routes[0], &plain(), Some(&other)).unwrap_err();
    assert_eq!(no.to_string(), format!("backend '{other}' is draining"));
    c.set_state(&other, WorkState::Working).unwrap();
    assert_eq!(c.remove(&other), Ok(ferry_core::cluster::Removal::Draining));
    let no = c.transfer(&routes[0], &plain(), Some(&other)).unwrap_err();
    assert_eq!(
        no.to_string(),
        format!("backend '{other}' is being removed")
    );
}

#[test]
fn without_a_target_the_refusal_names_tenant_and_labels() {
    let mut c = Cluster::new(
        &[
            backend("a1", &[("account", "acc1"), ("region", "eu-*")]),
            backend("b1", &[("account", "acc2")]),
        ],
        1,
    );
    let eu = req(Some("acc1"), &[("region", "eu-west")]);
    let from = c.route(&eu).unwrap();
    assert_eq!(from.backend, id("a1"));
    let no = c.transfer(&from, &eu, None).unwrap_err();
    assert_eq!(
        no.to_string(),
        "no other backend can take tenant acc1 with labels region=eu-west"
    );
    assert_eq!(c.backend(&id("a1")).unwrap().connections, 1);
    let mut c = Cluster::new(
        &[backend("cn1", &[]), backend("b1", &[("account", "acc2")])],
        1,
    );
    let from = c.route(&plain()).unwrap();
    assert_eq!(
        c.transfer(&from, &plain(), None).unwrap_err().to_string(),
        "no other backend can take sessions without a tenant"
    );
}

#[test]
fn the_pool_takes_a_tenant_session_only_when_routing_would_send_it_there() {
    let mut c = Cluster::new(
        &[backend("a1", &[("account", "acc1")]), backend("pool", &[])],
        1,
    );
    let acc1 = req(Some("acc1"), &[]);
    let from = c.route(&acc1).unwrap();
    assert_eq!(from.backend, id("a1"));
    // While a1 takes sessions, routing sends acc1 there, not to the pool: a
    // move has nowhere to go, and the pool may not be named.
    assert_eq!(
        c.transfer(&from, &acc1, None).unwrap_err().to_string(),
        "no other backend can take tenant acc1"
    );
    assert_eq!(
        c.eligible(&id("pool"), &acc1).unwrap_err().to_string(),
        "backend 'pool' is the shared pool, used only when no backend serves tenant acc1"
    );
    assert_eq!(c.eligible(&id("a1"), &acc1), Ok(()));
    // a1 draining: routing would use the pool, and so does the move.
    c.set_state(&id("a1"), WorkState::Draining).unwrap();
    assert_eq!(c.eligible(&id("pool"), &acc1), Ok(()));
    let moved = c.transfer(&from, &acc1, None).unwrap();
    assert_eq!(moved.route.backend, id("pool"));
    assert_eq!(moved.route.group, LabelGroup("acc1".into()));
    assert_eq!(moved.change, Some(BackendChange::Drained(id("a1"))));
    // Back to work: the session may go home, by name.
    c.set_state(&id("a1"), WorkState::Working).unwrap();
    let back = c.transfer(&moved.route, &acc1, Some(&id("a1"))).unwrap();
    assert_eq!(back.route.backend, id("a1"));
    assert_eq!(c.backend(&id("pool")).unwrap().connections, 0);
}

#[test]
fn the_last_transfer_off_a_draining_backend_drains_it_and_a_failed_move_undrains_it() {
    let (mut c, routes) = all_on_cn1(2);
    c.set_state(&id("cn1"), WorkState::Draining).unwrap();
    let first = c.transfer(&routes[0], &plain(), None).unwrap();
    assert_eq!(first.change, None);
    let last = c.transfer(&routes[1], &plain(), None).unwrap();
    assert_eq!(last.change, Some(BackendChange::Drained(id("cn1"))));
    assert_eq!(c.backend(&id("cn1")).unwrap().state, WorkState::Drained);
    // The last move fails: cn1 has a session again, so it is draining again.
    c.transfer_back(&last.route, &routes[1]);
    assert_eq!(c.backend(&id("cn1")).unwrap().state, WorkState::Draining);
    assert_eq!(c.backend(&id("cn1")).unwrap().connections, 1);
}

#[test]
fn a_failed_move_off_a_forgotten_backend_leaves_the_session_uncounted() {
    let (mut c, routes) = all_on_cn1(1);
    assert_eq!(
        c.remove(&id("cn1")),
        Ok(ferry_core::cluster::Removal::Draining)
    );
    let moved = c.transfer(&routes[0], &plain(), None).unwrap();
    assert_eq!(moved.change, Some(BackendChange::Forgotten(id("cn1"))));
    assert_eq!(c.transfer_back(&moved.route, &routes[0]), None);
    assert_eq!(c.total_connections(), 0);
    // Moving it again from the forgotten backend counts it on the target only.
    let again = c.transfer(&routes[0], &plain(), None).unwrap();
    assert_eq!(again.change, None);
    assert_eq!(c.total_connections(), 1);
}

/// One client connection in the model: where it is counted, and where it was
/// if a move is under way.
#[derive(Clone, Debug)]
struct Live {
    req: RouteRequest,
    route: Route,
    moving_from: Option<Route>,
}

#[test]
fn counts_stay_exact_under_any_interleaving_of_moves() {
    let configs = [
        backend("cn1", &[]),
        backend("cn2", &[]),
        backend("cn3", &[]),
        backend("a1", &[("account", "acc1")]),
        backend("a2", &[("account", "acc1"), ("region", "eu-*")]),
    ];
    let requests = [
        plain(),
        req(Some("acc1"), &[]),
        req(Some("acc1"), &[("region", "eu-west")]),
        req(Some("acc2"), &[]),
    ];
    let ids: Vec<BackendId> = configs.iter().map(|b| id(&b.id)).collect();
    let (mut moved, mut moved_back, mut uncounted) = (0, 0, 0);
    for seed in 0..20 {
        let mut c = Cluster::new(&configs, seed);
        let mut live: Vec<Live> = Vec::new();
        let mut rng = Rng::new(1000 + seed);
        for step in 0..3000 {
            let pick_id = |rng: &mut Rng| ids[rng.below(ids.len())].clone();
            match rng.below(10) {
                0 | 1 => {
                    let r = requests[rng.below(requests.len())].clone();
                    if let Ok(route) = c.route(&r) {
                        live.push(Live {
                            req: r,
                            route,
                            moving_from: None,
                        });
                    }
                }
                2 if !live.is_empty() => {
                    // A session ends, moving or not: its counted route is released.
                    let l = live.swap_remove(rng.below(live.len()));
                    c.release(&l.route);
                }
                3 | 4 if !live.is_empty() => {
                    let i = rng.below(live.len());
                    if live[i].moving_from.is_none() {
                        let to = (rng.below(3) == 0).then(|| pick_id(&mut rng));
                        if let Ok(t) = c.transfer(&live[i].route, &live[i].req, to.as_ref()) {
                            let from = std::mem::replace(&mut live[i].route, t.route);
                            live[i].moving_from = Some(from);
                            moved += 1;
                        }
                    }
                }
                5 if !live.is_empty() => {
                    // A move finishes, or fails and counts back.
                    let i = rng.below(live.len());
                    if let Some(original) = live[i].moving_from.take() {
                        if rng.below(2) == 0 {
                            moved_back += 1;
                            uncounted += usize::from(c.backend(&original.backend).is_none());
                            c.transfer_back(&live[i].route, &original);
                            live[i].route = original;
                        }
                    }
                }
                6 => {
                    let state =
                        [WorkState::Working, WorkState::Draining, WorkState::Drained][rng.below(3)];
                    let _ = c.set_state(&pick_id(&mut rng), state);
                }
                7 => {
                    let _ = c.remove(&pick_id(&mut rng));
                }
                8 => {
                    // Re-add a forgotten backend, unless a session still names it
                    // (the shell moves those first: see plan_drain).
                    let which = rng.below(configs.len());
                    let gone = c.backend(&ids[which]).is_none();
                    if gone && !live.iter().any(|l| l.route.backend == ids[which]) {
                        c.upsert(&configs[which]);
                    }
                }
                _ => {
                    c.record_check(&pick_id(&mut rng), rng.below(2) == 0);
                }
            }
            for b in c.backends() {
                let mine: Vec<&Live> = live.iter().filter(|l| l.route.backend == b.id).collect();
                assert_eq!(
                    b.connections as usize,
                    mine.len(),
                    "seed {seed} step {step}: {b:?}"
                );
                let mut groups: BTreeMap<LabelGroup, u32> = BTreeMap::new();
                for l in &mine {
                    *groups.entry(l.route.group.clone()).or_default() += 1;
                }
                assert_eq!(b.groups, groups, "seed {seed} step {step}");
                match b.state {
                    WorkState::Drained => assert_eq!(b.connections, 0, "seed {seed} step {step}"),
                    WorkState::Draining => {
                        assert!(b.connections > 0, "seed {seed} step {step}: empty draining")
                    }
                    WorkState::Working => assert!(!b.removing, "seed {seed} step {step}"),
                }
            }
            // Tenant isolation holds for every session, moved or not.
            for l in &live {
                if let Some(b) = c.backend(&l.route.backend) {
                    if let Some(account) = b.labels.get("account") {
                        assert_eq!(
                            l.req.tenant.as_deref(),
                            Some(account),
                            "seed {seed} step {step}"
                        );
                    }
                }
            }
        }
    }
    // The run exercised what it is about.
    assert!(
        moved > 1000 && moved_back > 300 && uncounted > 5,
        "{moved} {moved_back} {uncounted}"
    );
}

// ---------------------------------------------------------------- rebalance

fn view(i: u32, route: &Route, request: &RouteRequest) -> SessionView {
    SessionView {
        id: SessionId(i),
        route: route.clone(),
        request: request.clone(),
        movable: true,
        moving: false,
        last_moved: None,
    }
}

/// Views of `routes`, all of `request`, with ids from 0.
fn views(routes: &[Route], request: &RouteRequest) -> Vec<SessionView> {
    (0..)
        .zip(routes)
        .map(|(i, r)| view(i, r, request))
        .collect()
}

/// Puts exactly `n` sessions of `r` on each named backend (others draining meanwhile).
fn place(c: &mut Cluster, r: &RouteRequest, layout: &[(&str, usize)]) -> Vec<Route> {
    let all: Vec<BackendId> = c.backends().map(|b| b.id.clone()).collect();
    let mut routes = Vec::new();
    for (name, n) in layout {
        for other in all.iter().filter(|o| o.0 != *name) {
            c.set_state(other, WorkState::Draining).unwrap();
        }
        for _ in 0..*n {
            let route = c.route(r).unwrap();
            assert_eq!(route.backend.0, *name);
            routes.push(route);
        }
        for other in &all {
            c.set_state(other, WorkState::Working).unwrap();
        }
    }
    routes
}

fn three() -> Cluster {
    Cluster::new(
        &[
            backend("cn1", &[]),
            backend("cn2", &[]),
            backend("cn3", &[]),
        ],
        5,
    )
}

const NOW: Timestamp = Timestamp::from_micros(1_000_000_000);

/// How many orders go to each backend.
fn targets(orders: &[MoveOrder]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for o in orders {
        *t.entry(o.to.as_ref().expect("rebalance names targets").0.clone())
            .or_default() += 1;
    }
    t
}

/// Carries the orders out: transfers each session's count and updates its view.
fn apply(c: &mut Cluster, sessions: &mut [SessionView], orders: &[MoveOrder], now: Timestamp) {
    for o in orders {
        let s = sessions.iter_mut().find(|s| s.id == o.session).unwrap();
        let moved = c
            .transfer(&s.route, &s.request, o.to.as_ref())
            .unwrap_or_else(|e| panic!("order {o:?} refused: {e}"));
        s.route = moved.route;
        s.last_moved = Some(now);
    }
}

#[test]
fn thirty_on_one_backend_move_twenty_ten_to_each_and_then_stay() {
    let (mut c, routes) = all_on_cn1(30);
    let mut sessions = views(&routes, &plain());
    let policy = BalancePolicy::default();
    let orders = c.plan_rebalance(&sessions, NOW, &policy);
    assert_eq!(orders.len(), 20, "{orders:?}");
    assert_eq!(
        targets(&orders),
        BTreeMap::from([("cn2".into(), 10), ("cn3".into(), 10)])
    );
    assert!(orders.iter().all(|o| o.trigger == Trigger::Rebalance));
    let picked: Vec<u32> = orders.iter().map(|o| o.session.0).collect();
    assert_eq!(picked, (0..20).collect::<Vec<_>>(), "lowest ids first");
    assert_eq!(c.total_connections(), 30, "planning counts nothing");
    assert_eq!(c.backend(&id("cn1")).unwrap().connections, 30);
    apply(&mut c, &mut sessions, &orders, NOW);
    assert_eq!(
        counts(&c),
        [("cn1".into(), 10), ("cn2".into(), 10), ("cn3".into(), 10)]
    );
    // Balanced: the next round, cooldown or not, finds nothing to do.
    for s in &mut sessions {
        s.last_moved = None;
    }
    assert_eq!(c.plan_rebalance(&sessions, NOW, &policy), []);
}

#[test]
fn within_the_tolerance_nothing_moves() {
    let mut c = three();
    let routes = place(&mut c, &plain(), &[("cn1", 11), ("cn2", 10), ("cn3", 9)]);
    let sessions = views(&routes, &plain());
    let policy = BalancePolicy::default();
    assert_eq!(c.plan_rebalance(&sessions, NOW, &policy), []);
    // 13 = ceil(10 × 1.3) is still fine; 14 is not, and comes down to the average.
    let mut c = three();
    let routes = place(&mut c, &plain(), &[("cn1", 13), ("cn2", 9), ("cn3", 8)]);
    assert_eq!(
        c.plan_rebalance(&views(&routes, &plain()), NOW, &policy),
        []
    );
    let mut c = three();
    let routes = place(&mut c, &plain(), &[("cn1", 14), ("cn2", 8), ("cn3", 8)]);
    let orders = c.plan_rebalance(&views(&routes, &plain()), NOW, &policy);
    assert_eq!(
        targets(&orders),
        BTreeMap::from([("cn2".into(), 2), ("cn3".into(), 2)])
    );
    // With no tolerance the one extra session moves to the emptiest backend.
    let mut c = three();
    let routes = place(&mut c, &plain(), &[("cn1", 11), ("cn2", 10), ("cn3", 9)]);
    let strict = BalancePolicy {
        tolerance: 0.0,
        ..policy
    };
    let orders = c.plan_rebalance(&views(&routes, &plain()), NOW, &strict);
    assert_eq!(targets(&orders), BTreeMap::from([("cn3".into(), 1)]));
}

#[test]
fn a_zero_interval_disables_rebalancing() {
    let (mut c, routes) = all_on_cn1(30);
    let off = BalancePolicy {
        interval: Duration::ZERO,
        ..BalancePolicy::default()
    };
    assert_eq!(c.plan_rebalance(&views(&routes, &plain()), NOW, &off), []);
}

#[test]
fn an_added_backend_gets_its_share() {
    let mut c = Cluster::new(&[backend("cn1", &[]), backend("cn2", &[])], 5);
    let routes = route_n(&mut c, &plain(), 20);
    c.upsert(&backend("cn3", &[]));
    let orders = c.plan_rebalance(&views(&routes, &plain()), NOW, &BalancePolicy::default());
    // avg 6.67, limit 9: both give up 3 and come down to 7; cn3 gets 6.
    assert_eq!(targets(&orders), BTreeMap::from([("cn3".into(), 6)]));
}

#[test]
fn label_groups_are_balanced_independently() {
    let mut c = three();
    let acc3 = req(Some("acc3"), &[]); // no backend of its own: the pool serves it
    let mut routes = place(&mut c, &plain(), &[("cn1", 12)]);
    let tenant_routes = place(&mut c, &acc3, &[("cn3", 3)]);
    routes.extend(tenant_routes.iter().cloned());
    let mut sessions = views(&routes[..12], &plain());
    sessions.extend((12..).zip(&tenant_routes).map(|(i, r)| view(i, r, &acc3)));
    let orders = c.plan_rebalance(&sessions, NOW, &BalancePolicy::default());
    let group_of = |o: &MoveOrder| {
        let s = sessions.iter().find(|s| s.id == o.session).unwrap();
        s.route.group.0.clone()
    };
    let plain_orders: Vec<MoveOrder> = orders
        .iter()
        .filter(|o| group_of(o).is_empty())
        .cloned()
        .collect();
    let acc3_orders: Vec<MoveOrder> = orders
        .iter()
        .filter(|o| group_of(o) == "acc3")
        .cloned()
        .collect();
    // The plain group: 12/0/0 → 4/4/4. The acc3 group: 0/0/3 → 1/1/1, although
    // cn1 holds more sessions in all: each group is balanced over its own counts.
    assert_eq!(
        targets(&plain_orders),
        BTreeMap::from([("cn2".into(), 4), ("cn3".into(), 4)])
    );
    assert_eq!(
        targets(&acc3_orders),
        BTreeMap::from([("cn1".into(), 1), ("cn2".into(), 1)])
    );
    // A balanced group is left alone while another one moves.
    let mut c = three();
    let balanced = place(&mut c, &acc3, &[("cn1", 2), ("cn2", 2), ("cn3", 2)]);
    let lopsided = place(&mut c, &plain(), &[("cn1", 9)]);
    let mut sessions = views(&balanced, &acc3);
    sessions.extend((100..).zip(&lopsided).map(|(i, r)| view(i, r, &plain())));
    let orders = c.plan_rebalance(&sessions, NOW, &BalancePolicy::default());
    assert_eq!(orders.len(), 6);
    assert!(orders.iter().all(|o| o.session.0 >= 100), "{orders:?}");
}

#[test]
fn tenant_sessions_are_only_ordered_to_their_own_backends() {
    let mut c = Cluster::new(
        &[
            backend("a1", &[("account", "acc1")]),
            backend("a2", &[("account", "acc1")]),
            backend("b1", &[("account", "acc2")]),
            backend("pool", &[]),
        ],
        9,
    );
    let acc1 = req(Some("acc1"), &[]);
    let acc2 = req(Some("acc2"), &[]);
    let ones = place(&mut c, &acc1, &[("a1", 10)]);
    let twos = place(&mut c, &acc2, &[("b1", 10)]);
    let mut sessions = views(&ones, &acc1);
    sessions.extend((10..).zip(&twos).map(|(i, r)| view(i, r, &acc2)));
    let orders = c.plan_rebalance(&sessions, NOW, &BalancePolicy::default());
    // acc1 evens out over a1 and a2; acc2 has one backend and stays; the pool gets nothing.
    assert_eq!(targets(&orders), BTreeMap::from([("a2".into(), 5)]));
    assert!(orders.iter().all(|o| o.session.0 < 10));
}

#[test]
fn sessions_the_pool_took_in_go_back_to_their_tenant_backend() {
    let mut c = Cluster::new(
        &[
            backend("a1", &[("account", "acc1")]),
            backend("cn1", &[]),
            backend("cn2", &[]),
        ],
        9,
    );
    let acc1 = req(Some("acc1"), &[]);
    c.set_state(&id("a1"), WorkState::Draining).unwrap();
    let routes = route_n(&mut c, &acc1, 4);
    assert!(routes.iter().all(|r| r.backend != id("a1")));
    let sessions = views(&routes, &acc1);
    let policy = BalancePolicy::default();
    // While a1 is out the pool is where acc1 belongs: nothing to do.
    assert_eq!(c.plan_rebalance(&sessions, NOW, &policy), []);
    c.set_state(&id("a1"), WorkState::Working).unwrap();
    let orders = c.plan_rebalance(&sessions, NOW, &policy);
    assert_eq!(targets(&orders), BTreeMap::from([("a1".into(), 4)]));
}

#[test]
fn cooldown_movable_and_moving_are_respected() {
    let (mut c, routes) = all_on_cn1(30);
    let mut sessions = views(&routes, &plain());
    let policy = BalancePolicy::default(); // cooldown 30 s
    for s in &mut sessions[0..10] {
        s.last_moved = Some(Timestamp::from_micros(NOW.as_micros() - 10_000_000));
    }
    for s in &mut sessions[10..15] {
        s.movable = false;
    }
    for s in &mut sessions[15..17] {
        s.moving = true;
    }
    let orders = c.plan_rebalance(&sessions, NOW, &policy);
    // The two moving sessions already count as leaving: cn1 holds 28, gives 18,
    // but only 17..29 may go.
    let picked: Vec<u32> = orders.iter().map(|o| o.session.0).collect();
    assert_eq!(picked, (17..30).collect::<Vec<_>>());
    // Once the cooldown is over, the sessions moved 10 s ago may go again.
    let later = NOW + Duration::from_secs(20);
    let orders = c.plan_rebalance(&sessions, later, &policy);
    let picked: Vec<u32> = orders.iter().map(|o| o.session.0).collect();
    let expected: Vec<u32> = (0..10).chain(17..25).collect();
    assert_eq!(picked, expected);
}

#[test]
fn moving_sessions_are_not_ordered_twice() {
    let (mut c, routes) = all_on_cn1(30);
    let mut sessions = views(&routes, &plain());
    let policy = BalancePolicy::default();
    let orders = c.plan_rebalance(&sessions, NOW, &policy);
    assert_eq!(orders.len(), 20);
    // The orders are pending (sessions busy, not yet transferred): the next
    // round orders nothing more.
    for o in &orders {
        sessions
            .iter_mut()
            .find(|s| s.id == o.session)
            .unwrap()
            .moving = true;
    }
    assert_eq!(c.plan_rebalance(&sessions, NOW, &policy), []);
}

#[test]
fn draining_and_down_backends_are_not_rebalanced() {
    let (mut c, routes) = all_on_cn1(30);
    let sessions = views(&routes, &plain());
    let policy = BalancePolicy::default();
    c.set_state(&id("cn1"), WorkState::Draining).unwrap();
    assert_eq!(c.plan_rebalance(&sessions, NOW, &policy), []);
    c.set_state(&id("cn1"), WorkState::Working).unwrap();
    for _ in 0..3 {
        c.record_check(&id("cn1"), false);
    }
    assert_eq!(c.plan_rebalance(&sessions, NOW, &policy), []);
    // A down target takes nothing: everything goes to cn3.
    for _ in 0..2 {
        c.record_check(&id("cn1"), true);
    }
    for _ in 0..3 {
        c.record_check(&id("cn2"), false);
    }
    let orders = c.plan_rebalance(&sessions, NOW, &policy);
    assert_eq!(targets(&orders), BTreeMap::from([("cn3".into(), 15)]));
}

/// The invariant every plan keeps, checked on random clusters: after the
/// orders are carried out, each eligible backend's count of the group lies
/// between its count before and `ceil(avg)` (targets are never filled past
/// the average, sources never give up more than brings them down to it, so
/// nothing overshoots and nothing moves back the next round); every order is
/// one a transfer accepts; when every session may move, the next round finds
/// nothing to do.
#[test]
fn rebalance_never_overshoots_and_settles_in_one_round() {
    let configs = [
        backend("cn1", &[]),
        backend("cn2", &[]),
        backend("cn3", &[]),
        backend("cn4", &[("zone", "x")]),
        backend("a1", &[("account", "acc1")]),
        backend("a2", &[("account", "acc1")]),
        backend("a3", &[("account", "acc1"), ("zone", "x")]),
    ];
    let requests = [
        plain(),
        req(None, &[("zone", "x")]),
        req(Some("acc1"), &[]),
        req(Some("acc1"), &[("zone", "x")]),
        req(Some("acc2"), &[]),
    ];
    let ids: Vec<BackendId> = configs.iter().map(|b| id(&b.id)).collect();
    let mut total_orders = 0;
    for seed in 0..200 {
        let mut c = Cluster::new(&configs, seed);
        let mut rng = Rng::new(seed);
        let mut sessions: Vec<SessionView> = Vec::new();
        // Uneven placement: a few phases with random backends out of service.
        for _ in 0..4 {
            let out: Vec<&BackendId> = ids.iter().filter(|_| rng.below(3) == 0).collect();
            for b in &out {
                c.set_state(b, WorkState::Draining).unwrap();
            }
            for _ in 0..rng.below(40) {
                let r = &requests[rng.below(requests.len())];
                if let Ok(route) = c.route(r) {
                    let i = sessions.len() as u32;
                    sessions.push(view(i, &route, r));
                }
            }
            for b in &out {
                c.set_state(b, WorkState::Working).unwrap();
            }
        }
        let policy = BalancePolicy {
            tolerance: [0.0, 0.3, 1.0][rng.below(3)],
            ..BalancePolicy::default()
        };
        let before: BTreeMap<(BackendId, LabelGroup), u64> = group_counts(&c);
        let orders = c.plan_rebalance(&sessions, NOW, &policy);
        total_orders += orders.len();
        let mut seen = std::collections::BTreeSet::new();
        for o in &orders {
            assert!(seen.insert(o.session), "seed {seed}: ordered twice: {o:?}");
            let s = &sessions[o.session.0 as usize];
            assert_ne!(o.to.as_ref(), Some(&s.route.backend), "seed {seed}");
        }
        apply(&mut c, &mut sessions, &orders, NOW);
        let after = group_counts(&c);
        for group in sessions
            .iter()
            .map(|s| &s.route.group)
            .collect::<std::collections::BTreeSet<_>>()
        {
            let members: Vec<&SessionView> = sessions
                .iter()
                .filter(|s| &s.route.group == group)
                .collect();
            let total = members.len() as u64;
            // The backends a member may be routed to (all members ask alike).
            let eligible: Vec<BackendId> = eligible_by_the_rules(&configs, &members[0].request)
                .into_iter()
                .map(id)
                .collect();
            let share = total.div_ceil(eligible.len() as u64);
            for b in &eligible {
                let key = (b.clone(), group.clone());
                let was = before.get(&key).copied().unwrap_or(0);
                let is = after.get(&key).copied().unwrap_or(0);
                assert!(
                    is >= was.min(share) && is <= was.max(share),
                    "seed {seed}: {b} group '{group}': {was} -> {is}, share {share}"
                );
            }
            // Every session is where a transfer would have put it.
            for m in &members {
                if let Some(account) = c.backend(&m.route.backend).unwrap().labels.get("account") {
                    assert_eq!(m.request.tenant.as_deref(), Some(account), "seed {seed}");
                }
            }
        }
        for s in &mut sessions {
            s.last_moved = None;
        }
        assert_eq!(
            c.plan_rebalance(&sessions, NOW, &policy),
            [],
            "seed {seed}: a second round found more to do"
        );
    }
    assert!(total_orders > 500, "{total_orders}");
}

/// Sessions counted per backend and group.
fn group_counts(c: &Cluster) -> BTreeMap<(BackendId, LabelGroup), u64> {
    c.backends()
        .flat_map(|b| {
            b.groups
                .iter()
                .map(|(g, n)| ((b.id.clone(), g.clone()), u64::from(*n)))
        })
        .collect()
}

/// The routing rules again, written out for this test's configs (exact
/// values, no globs): the backends serving tenant and labels, else the
/// unlabelled ones.
fn eligible_by_the_rules<'a>(configs: &'a [BackendConfig], r: &RouteRequest) -> Vec<&'a str> {
    let serves = |b: &BackendConfig| {
        b.labels.get("account") == r.tenant.as_deref()
            && r.labels.iter().all(|(k, v)| b.labels.get(k) == Some(v))
    };
    let serving: Vec<&str> = configs
        .iter()
        .filter(|b| serves(b))
        .map(|b| b.id.as_str())
        .collect();
    if !serving.is_empty() {
        return serving;
    }
    configs
        .iter()
        .filter(|b| b.labels.is_empty())
        .map(|b| b.id.as_str())
        .collect()
}

// ---------------------------------------------------------------- drain

const MINUTE: Duration = Duration::from_secs(60);

fn ordered(plan: &DrainPlan) -> Vec<(u32, Trigger)> {
    assert!(plan.orders.iter().all(|o| o.to.is_none()), "{plan:?}");
    plan.orders
        .iter()
        .map(|o| (o.session.0, o.trigger))
        .collect()
}

#[test]
fn every_movable_session_of_a_draining_backend_gets_one_order() {
    let mut c = three();
    let mut routes = place(&mut c, &plain(), &[("cn1", 4)]);
    routes.extend(place(&mut c, &plain(), &[("cn2", 2)]));
    let mut sessions = views(&routes, &plain());
    sessions[1].movable = false;
    sessions[2].moving = true;
    assert_eq!(c.plan_drain(&sessions, NOW, MINUTE), DrainPlan::default());
    assert_eq!(c.drain_status(&id("cn1")), None);
    c.set_state(&id("cn1"), WorkState::Draining).unwrap();
    let plan = c.plan_drain(&sessions, NOW, MINUTE);
    assert_eq!(
        ordered(&plan),
        [(0, Trigger::Drain), (3, Trigger::Drain)],
        "busy and already moving sessions are not ordered"
    );
    assert!(plan.stuck.is_empty() && plan.expired.is_empty());
    assert_eq!(
        c.drain_status(&id("cn1")),
        Some(DrainStatus {
            since: NOW,
            stuck: None
        })
    );
    assert_eq!(c.drain_status(&id("cn2")), None);
    // Moving them counts them on the others; a drained backend reports how it went.
    for o in &plan.orders {
        let s = &sessions[o.session.0 as usize];
        c.transfer(&s.route, &s.request, None).unwrap();
    }
    assert_eq!(c.backend(&id("cn1")).unwrap().connections, 2);
    assert_eq!(c.total_connections(), 6);
}

#[test]
fn a_removed_backend_is_drained_too() {
    let (mut c, routes) = all_on_cn1(3);
    c.remove(&id("cn1")).unwrap();
    let plan = c.plan_drain(&views(&routes, &plain()), NOW, MINUTE);
    assert_eq!(
        ordered(&plan),
        [
            (0, Trigger::Drain),
            (1, Trigger::Drain),
            (2, Trigger::Drain)
        ]
    );
    assert!(c.drain_status(&id("cn1")).is_some());
}

#[test]
fn sessions_of_a_down_backend_fail_over_first() {
    let mut c = three();
    let mut routes = place(&mut c, &plain(), &[("cn1", 2)]);
    routes.extend(place(&mut c, &plain(), &[("cn2", 2)]));
    let sessions = views(&routes, &plain());
    c.set_state(&id("cn1"), WorkState::Draining).unwrap();
    for _ in 0..3 {
        c.record_check(&id("cn2"), false);
    }
    let plan = c.plan_drain(&sessions, NOW, MINUTE);
    assert_eq!(
        ordered(&plan),
        [
            (2, Trigger::Failover),
            (3, Trigger::Failover),
            (0, Trigger::Drain),
            (1, Trigger::Drain)
        ]
    );
    // Down is not draining: no drain status, and no expiry however long it lasts.
    assert_eq!(c.drain_status(&id("cn2")), None);
    let much_later = c.plan_drain(&sessions, NOW + 10 * MINUTE, MINUTE);
    assert_eq!(much_later.expired, [SessionId(0), SessionId(1)]);
    assert_eq!(
        ordered(&much_later),
        [(2, Trigger::Failover), (3, Trigger::Failover)]
    );
    // Down and draining: failover.
    for _ in 0..3 {
        c.record_check(&id("cn1"), false);
    }
    c.set_state(&id("cn1"), WorkState::Working).unwrap();
    c.set_state(&id("cn1"), WorkState::Draining).unwrap();
    let plan = c.plan_drain(&sessions, NOW + 11 * MINUTE, MINUTE);
    assert!(plan.orders.iter().all(|o| o.trigger == Trigger::Failover));
    assert_eq!(plan.orders.len(), 4);
}

#[test]
fn sessions_still_there_after_the_drain_timeout_expire() {
    let (mut c, routes) = all_on_cn1(3);
    let mut sessions = views(&routes, &plain());
    sessions[0].moving = true;
    sessions[1].movable = false;
    c.set_state(&id("cn1"), WorkState::Draining).unwrap();
    let first = c.plan_drain(&sessions, NOW, MINUTE);
    assert_eq!(ordered(&first), [(2, Trigger::Drain)]);
    let just_before = c.plan_drain(&sessions, NOW + Duration::from_secs(59), MINUTE);
    assert!(just_before.expired.is_empty());
    let due = c.plan_drain(&sessions, NOW + MINUTE, MINUTE);
    assert_eq!(due.expired, [SessionId(0), SessionId(1), SessionId(2)]);
    assert!(due.orders.is_empty());
    // A zero timeout never closes anything.
    let patient = c.plan_drain(&sessions, NOW + 100 * MINUTE, Duration::ZERO);
    assert!(patient.expired.is_empty());
    assert_eq!(ordered(&patient), [(2, Trigger::Drain)]);
}

#[test]
fn resuming_a_backend_forgets_when_its_drain_started() {
    let (mut c, routes) = all_on_cn1(2);
    let sessions = views(&routes, &plain());
    c.set_state(&id("cn1"), WorkState::Draining).unwrap();
    c.plan_drain(&sessions, NOW, MINUTE);
    // Draining again (a reload, a repeated admin call) keeps the start.
    c.set_state(&id("cn1"), WorkState::Draining).unwrap();
    c.plan_drain(&sessions, NOW + MINUTE / 2, MINUTE);
    assert_eq!(c.drain_status(&id("cn1")).unwrap().since, NOW);
    c.set_state(&id("cn1"), WorkState::Working).unwrap();
    assert_eq!(c.drain_status(&id("cn1")), None);
    assert_eq!(
        c.plan_drain(&sessions, NOW + MINUTE, MINUTE),
        DrainPlan::default()
    );
    c.set_state(&id("cn1"), WorkState::Draining).unwrap();
    let later = NOW + 2 * MINUTE;
    let plan = c.plan_drain(&sessions, later, MINUTE);
    assert!(
        plan.expired.is_empty(),
        "the clock restarts with the new drain"
    );
    assert_eq!(c.drain_status(&id("cn1")).unwrap().since, later);
    // A reload that lists it as working again resumes it too.
    c.upsert(&backend("cn1", &[]));
    assert_eq!(c.drain_status(&id("cn1")), None);
}

#[test]
fn a_drain_with_nowhere_to_go_is_stuck_and_says_why() {
    let mut c = Cluster::new(
        &[
            backend("a1", &[("account", "acc1")]),
            backend("b1", &[("account", "acc2")]),
        ],
        3,
    );
    let acc1 = req(Some("acc1"), &[]);
    let eu = req(Some("acc1"), &[("region", "eu")]);
    let plain_routes = route_n(&mut c, &acc1, 2);
    let eu_routes = {
        c.upsert(&backend("a1", &[("account", "acc1"), ("region", "eu")]));
        route_n(&mut c, &eu, 1)
    };
    let mut sessions = views(&plain_routes, &acc1);
    sessions.push(view(2, &eu_routes[0], &eu));
    sessions[1].movable = false; // stuck is about targets, not about being busy
    c.set_state(&id("a1"), WorkState::Draining).unwrap();
    let plan = c.plan_drain(&sessions, NOW, MINUTE);
    let why = "no other backend can take tenant acc1; \
               no other backend can take tenant acc1 with labels region=eu";
    assert_eq!(plan.stuck, [(id("a1"), why.to_string())]);
    assert!(plan.orders.is_empty());
    assert_eq!(
        c.drain_status(&id("a1")),
        Some(DrainStatus {
            since: NOW,
            stuck: Some(why.into())
        })
    );
    // A second backend for the tenant: the plain sessions can go, the eu one cannot.
    c.upsert(&backend("a2", &[("account", "acc1")]));
    let plan = c.plan_drain(&sessions, NOW, MINUTE);
    assert_eq!(ordered(&plan), [(0, Trigger::Drain)]);
    let why = "no other backend can take tenant acc1 with labels region=eu";
    assert_eq!(plan.stuck, [(id("a1"), why.to_string())]);
    assert_eq!(
        c.drain_status(&id("a1")).unwrap().stuck.as_deref(),
        Some(why)
    );
    c.upsert(&backend("a3", &[("account", "acc1"), ("region", "eu*")]));
    let plan = c.plan_drain(&sessions, NOW, MINUTE);
    assert_eq!(ordered(&plan), [(0, Trigger::Drain), (2, Trigger::Drain)]);
    assert!(plan.stuck.is_empty());
    assert_eq!(c.drain_status(&id("a1")).unwrap().stuck, None);
}

#[test]
fn a_session_left_on_a_forgotten_backend_is_ordered_away() {
    let (mut c, routes) = all_on_cn1(1);
    c.remove(&id("cn1")).unwrap();
    let moved = c.transfer(&routes[0], &plain(), None).unwrap();
    assert_eq!(moved.change, Some(BackendChange::Forgotten(id("cn1"))));
    c.transfer_back(&moved.route, &routes[0]); // the move failed: it is still on cn1
    let sessions = views(&routes, &plain());
    let plan = c.plan_drain(&sessions, NOW, MINUTE);
    assert_eq!(ordered(&plan), [(0, Trigger::Drain)]);
    let again = c.transfer(&sessions[0].route, &plain(), None).unwrap();
    assert_ne!(again.route.backend, id("cn1"));
    assert_eq!(c.total_connections(), 1);
}

// ---------------------------------------------------------------- pacing

fn at_ms(ms: u64) -> Timestamp {
    Timestamp::from_micros(ms * 1000)
}

#[test]
fn the_pacer_allows_a_tenth_of_a_second_at_once_then_the_rate() {
    let mut p = Pacer::new(50);
    assert_eq!(p.take(at_ms(0), 100), 5, "burst: 50 / 10");
    assert_eq!(p.take(at_ms(0), 100), 0);
    assert_eq!(p.next_at(at_ms(0)), at_ms(20));
    assert_eq!(p.take(at_ms(19), 100), 0);
    assert_eq!(p.take(at_ms(20), 100), 1, "one per 20 ms");
    assert_eq!(p.take(at_ms(60), 100), 2);
    // Never more than asked for; unused allowance accumulates up to the burst only.
    assert_eq!(p.take(at_ms(100), 1), 1);
    assert_eq!(p.take(at_ms(10_000), 100), 5);
    // Over a long run the rate holds: 50 per second plus the first burst.
    let mut p = Pacer::new(50);
    let started: usize = (0..=10_000).map(|ms| p.take(at_ms(ms), 1000)).sum();
    assert_eq!(started, 5 + 500);
}

#[test]
fn the_pacer_handles_small_rates_and_odd_clocks() {
    let mut p = Pacer::new(1);
    assert_eq!(p.take(at_ms(5_000), 3), 1, "burst of at least one");
    assert_eq!(p.take(at_ms(5_999), 3), 0);
    assert_eq!(p.next_at(at_ms(5_999)), at_ms(6_000));
    // Time going backwards earns nothing and loses nothing.
    assert_eq!(p.take(at_ms(1_000), 3), 0);
    assert_eq!(p.take(at_ms(6_000), 3), 1);
    let mut zero = Pacer::new(0);
    assert_eq!(zero.take(at_ms(0), 3), 1, "0 per second is read as 1");
    let mut fast = Pacer::new(1000);
    assert_eq!(fast.take(at_ms(0), 1000), 100);
    assert_eq!(fast.take(at_ms(1), 1000), 1);
    assert_eq!(fast.next_at(at_ms(1)), at_ms(2));
    assert_eq!(fast.take(at_ms(1), 0), 0);
}

#[test]
fn triggers_and_ids_read_as_metric_labels() {
    let names: Vec<String> = Trigger::ALL
        .iter()
        .map(|t| {
            assert_eq!(t.to_string(), t.as_str());
            assert_eq!(
                ron::to_string(t).unwrap(),
                t.as_str(),
                "serialised as in metrics"
            );
            t.as_str().to_string()
        })
        .collect();
    assert_eq!(names, ["admin", "rebalance", "drain", "failover"]);
    assert_eq!(SessionId(42).to_string(), "42");
}

#[test]
fn an_unreachable_backend_takes_no_new_sessions_but_keeps_its_live_ones_until_checks_confirm() {
    let mut c = three();
    c.set_health_policy(ferry_core::health::HealthPolicy { fall: 3, rise: 2 });
    let routes = place(&mut c, &plain(), &[("cn1", 2)]);
    assert_eq!(
        c.mark_unreachable(&id("cn1")),
        Some(BackendChange::Health(id("cn1"), Health::Down))
    );
    assert_eq!(c.mark_unreachable(&id("cn1")), None, "reported once");
    assert_eq!(c.mark_unreachable(&id("nope")), None);
    for _ in 0..6 {
        assert_ne!(c.route(&plain()).unwrap().backend, id("cn1"));
    }
    // One refused connect (a full connection table, say) does not move live sessions.
    let plan = c.plan_drain(&views(&routes, &plain()), NOW, MINUTE);
    assert_eq!(ordered(&plan), []);
    // Checks that confirm it down do.
    for _ in 0..3 {
        c.record_check(&id("cn1"), false);
    }
    let plan = c.plan_drain(&views(&routes, &plain()), NOW, MINUTE);
    assert_eq!(
        ordered(&plan),
        [(0, Trigger::Failover), (1, Trigger::Failover)]
    );
    assert_eq!(c.record_check(&id("cn1"), true), None);
    assert_eq!(
        c.record_check(&id("cn1"), true),
        Some(BackendChange::Health(id("cn1"), Health::Up))
    );
}

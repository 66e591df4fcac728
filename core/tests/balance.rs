//! Moving sessions, as the cluster sees it: count transfers, rebalance and
//! drain plans, pacing. Pure functions of the cluster, the session views and
//! the time given; no session machine involved.

use std::collections::BTreeMap;

use ferry_core::cluster::{
    BackendChange, BackendId, Cluster, LabelGroup, NoTarget, Route, RouteRequest, Transferred,
};
use ferry_core::config::{BackendConfig, WorkState};
use ferry_core::Rng;

fn backend(id: &str, labels: &[(&str, &str)]) -> BackendConfig {
    BackendConfig {
        id: id.into(),
        addr: format!("127.0.0.{}:3306", id.len()).parse().unwrap(),
        labels: labels.iter().copied().collect(),
        state: WorkState::Working,
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
fn a_tenant_without_other_own_backends_falls_back_to_the_pool_like_routing() {
    let mut c = Cluster::new(
        &[backend("a1", &[("account", "acc1")]), backend("pool", &[])],
        1,
    );
    let acc1 = req(Some("acc1"), &[]);
    let from = c.route(&acc1).unwrap();
    assert_eq!(from.backend, id("a1"));
    // a1 itself is left out, so the tenant has no other own backend: the pool takes it,
    // just as routing would if a1 could not take sessions.
    let moved = c.transfer(&from, &acc1, None).unwrap();
    assert_eq!(moved.route.backend, id("pool"));
    assert_eq!(moved.route.group, LabelGroup("acc1".into()));
    let back = c.transfer(&moved.route, &acc1, Some(&id("a1"))).unwrap();
    assert_eq!(back.route.backend, id("a1"));
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

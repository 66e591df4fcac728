//! The limits' bookkeeping: connection and tenant counts, the failed-login
//! limiter (window, block, bounded memory) and the idle timer.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ferry_core::limits::{Admission, IdleTimer, LimitsConfig, LoginLimiter, LoginPolicy, Refusal};
use ferry_core::Timestamp;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_micros(ms * 1000)
}

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

fn policy() -> LoginPolicy {
    LoginPolicy {
        max_failures: 3,
        window: Duration::from_secs(60),
        block: Duration::from_secs(300),
        max_hosts: 100,
    }
}

#[test]
fn connections_are_refused_at_the_limit_and_let_in_after_one_closes() {
    let limits = LimitsConfig {
        max_connections: 2,
        ..LimitsConfig::default()
    };
    let mut a = Admission::new(&limits);
    assert!(a.open_connection().is_ok());
    assert!(a.open_connection().is_ok());
    let refused = a.open_connection().unwrap_err();
    assert_eq!(refused, Refusal::TooManyConnections { limit: 2 });
    let err = refused.err();
    assert_eq!(err.code, 1040);
    assert!(err.message.starts_with("Too many connections"), "{err:?}");
    assert_eq!(a.open(), 2);
    a.close_connection();
    assert!(a.open_connection().is_ok());
}

#[test]
fn each_tenant_has_its_own_count() {
    let limits = LimitsConfig {
        max_connections_per_tenant: 1,
        ..LimitsConfig::default()
    };
    let mut a = Admission::new(&limits);
    a.enter_tenant("acc1").unwrap();
    a.enter_tenant("acc2").unwrap();
    let refused = a.enter_tenant("acc1").unwrap_err();
    assert_eq!(refused.err().code, 1040);
    assert!(refused.err().message.contains("'acc1'"), "{refused:?}");
    a.leave_tenant("acc1");
    assert_eq!(a.tenant_sessions("acc1"), 0);
    a.enter_tenant("acc1").unwrap();
    assert_eq!(a.tenant_sessions("acc2"), 1);
}

#[test]
fn a_reload_keeps_what_is_open() {
    let mut a = Admission::new(&LimitsConfig::default());
    for _ in 0..5 {
        a.open_connection().unwrap();
    }
    a.set_limits(&LimitsConfig {
        max_connections: 3,
        ..LimitsConfig::default()
    });
    assert_eq!(a.open(), 5);
    assert!(a.open_connection().is_err());
    a.close_connection();
    a.close_connection();
    assert!(a.open_connection().is_err());
    a.close_connection();
    assert!(a.open_connection().is_ok());
}

#[test]
fn n_failures_in_the_window_block_the_address_once() {
    let mut l = LoginLimiter::new(policy());
    assert!(l.failed(at(0), ip(1)).is_none());
    assert!(l.failed(at(10), ip(1)).is_none());
    assert!(l.check(at(11), ip(1)).is_ok());
    let block = l.failed(at(20), ip(1)).expect("the third failure blocks");
    assert_eq!(block.until, at(20) + Duration::from_secs(300));
    // Blocked: refused with 1129; further failures start no new block (logged once).
    let refused = l.check(at(30), ip(1)).unwrap_err();
    let err = refused.err(at(30));
    assert_eq!(err.code, 1129);
    assert!(
        err.message
            .starts_with("Host '10.0.0.1' is blocked because of many connection errors"),
        "{err:?}"
    );
    assert!(l.failed(at(40), ip(1)).is_none());
    // Another address is not affected.
    assert!(l.check(at(40), ip(2)).is_ok());
    assert_eq!(l.blocked(at(40)), 1);
    // After the block: a clean slate.
    assert!(l.check(at(320_020), ip(1)).is_ok());
    assert_eq!(l.tracked(), 0);
    assert!(l.failed(at(320_030), ip(1)).is_none());
}

#[test]
fn failures_spread_wider_than_the_window_do_not_block() {
    let mut l = LoginLimiter::new(policy());
    for i in 0..10 {
        assert!(l.failed(at(i * 40_000), ip(1)).is_none(), "failure {i}");
    }
    assert!(l.check(at(400_001), ip(1)).is_ok());
}

#[test]
fn a_success_resets_the_count_but_not_a_block() {
    let mut l = LoginLimiter::new(policy());
    l.failed(at(0), ip(1));
    l.failed(at(1), ip(1));
    l.succeeded(ip(1));
    assert!(l.failed(at(2), ip(1)).is_none());
    assert!(l.failed(at(3), ip(1)).is_none());
    assert!(l.failed(at(4), ip(1)).is_some());
    l.succeeded(ip(1));
    assert!(l.check(at(5), ip(1)).is_err());
}

#[test]
fn zero_max_failures_never_blocks() {
    let mut l = LoginLimiter::new(LoginPolicy {
        max_failures: 0,
        ..policy()
    });
    for i in 0..100 {
        assert!(l.failed(at(i), ip(1)).is_none());
    }
    assert!(l.check(at(100), ip(1)).is_ok());
    assert_eq!(l.tracked(), 0);
}

#[test]
fn memory_stays_bounded_under_many_addresses_and_blocks_are_kept_longest() {
    let mut l = LoginLimiter::new(LoginPolicy {
        max_hosts: 50,
        ..policy()
    });
    // One blocked address, then a spread-out attack from 10,000 others.
    for t in 0..3 {
        l.failed(at(t), ip(0));
    }
    for n in 1..10_000 {
        l.failed(at(10 + u64::from(n)), ip(n));
        assert!(l.tracked() <= 50, "{} addresses after {n}", l.tracked());
    }
    assert!(l.check(at(20_000), ip(0)).is_err(), "the block survived");
}

#[test]
fn the_idle_timer_fires_only_after_quiet_time() {
    let mut t = IdleTimer::new(Some(Duration::from_millis(500)), at(0));
    assert_eq!(t.deadline(), Some(at(500)));
    assert!(!t.expired(at(499)));
    t.touch(at(400));
    assert!(!t.expired(at(800)));
    assert!(t.expired(at(900)));
    let off = IdleTimer::new(None, at(0));
    assert_eq!(off.deadline(), None);
    assert!(!off.expired(at(u64::MAX / 1000)));
}

mod support;

use bytes::{Bytes, BytesMut};
use ferry_core::session::{CloseReason, Input};
use support::*;

fn idle_session(idle: Duration) -> Harness {
    let mut config = test_config();
    config.limits.idle_timeout = Some(idle);
    let mut h = Harness::with(config, TraceStyle::Login);
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert!(h.session.is_forwarding(), "{}", h.trace);
    h
}

#[test]
fn an_idle_session_is_closed_with_4031_but_never_under_a_running_command() {
    let mut h = idle_session(Duration::from_millis(500));
    assert_eq!(
        h.session.poll_timeout(),
        Some(h.now + Duration::from_millis(500))
    );
    // A command runs for longer than the idle timeout: not idle.
    let query = frame(0, |b| b.extend_from_slice(b"\x03SELECT SLEEP(1)"));
    h.feed(Input::ClientData(query));
    assert_eq!(h.session.poll_timeout(), None);
    h.advance(Duration::from_secs(1));
    assert!(h.closed.is_none(), "{}", h.trace);
    h.feed(Input::BackendData(B0, backend_ok(1)));
    // Idle from the end of the response on.
    h.advance(Duration::from_millis(400));
    assert!(h.closed.is_none(), "{}", h.trace);
    h.advance(Duration::from_millis(100));
    assert_eq!(h.closed, Some(CloseReason::IdleTimeout), "{}", h.trace);
    let last = h.to_client.last().unwrap();
    assert_eq!(last[4], 0xff, "{}", h.trace);
    assert_eq!(u16::from_le_bytes([last[5], last[6]]), 4031, "{}", h.trace);
    assert!(h.trace.contains("inactivity"), "{}", h.trace);
    // The backend hears a COM_QUIT, not a dropped connection.
    assert_eq!(&h.to_backend.last().unwrap()[4..], &[0x01]);
}

#[test]
fn without_an_idle_timeout_a_quiet_session_has_no_deadline() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert_eq!(h.session.poll_timeout(), None);
    h.advance(Duration::from_secs(3600));
    assert!(h.closed.is_none());
}

#[test]
fn a_tenant_less_user_cannot_log_in_under_a_tenant() {
    for name in [
        "acc1:root",
        "acc1#root",
        "acc2:root?region=eu",
        "root?account=acc1",
    ] {
        let mut h = Harness::new();
        h.client_logs_in(name, "111");
        assert!(
            matches!(h.closed, Some(CloseReason::LoginRefused(_))),
            "{name}: {}",
            h.trace
        );
        assert!(h.trace.contains("ERR 1045"), "{name}: {}", h.trace);
    }
}

/// Four 64 KiB queries written at once, before any answer.
fn pipelined_queries() -> Bytes {
    let mut all = BytesMut::new();
    for i in 0..4u8 {
        all.extend_from_slice(&frame(0, |b| {
            b.extend_from_slice(b"\x03SELECT '");
            b.extend_from_slice(&vec![b'a' + i; 64 * 1024]);
            b.extend_from_slice(b"'");
        }));
    }
    all.freeze()
}

#[test]
fn max_session_memory_bounds_the_pipelined_commands_ferry_holds() {
    let mut small = test_config();
    small.limits = LimitsConfig {
        max_session_memory: 1 << 20,
        ..LimitsConfig::default()
    }
    .session();
    for (config, refused) in [(small, true), (test_config(), false)] {
        let mut h = Harness::with(config, TraceStyle::Login);
        h.client_logs_in("root", "111");
        h.backend_greets("cn1");
        h.backend_accepts(2);
        h.feed(Input::ClientData(pipelined_queries()));
        match &h.closed {
            Some(CloseReason::ProtocolError(why)) if refused => {
                assert!(why.contains("131072 bytes of commands"), "{why}")
            }
            None if !refused => {}
            other => panic!("refused={refused}: {other:?}"),
        }
    }
}

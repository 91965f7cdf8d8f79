use super::*;
use crate::devices::virtio::test_utils::FakeClock;

const MS: u64 = NS_PER_MS;

fn bucket(size: u64, refill_time_ms: u64, one_time_burst: u64) -> TokenBucketConfig {
    TokenBucketConfig {
        size,
        refill_time_ms,
        one_time_burst,
    }
}

fn limiter(
    bandwidth: Option<TokenBucketConfig>,
    ops: Option<TokenBucketConfig>,
) -> (RateLimiter, FakeClock) {
    let clock = FakeClock::default();
    let cfg = RateLimiterConfig { bandwidth, ops };
    let l = RateLimiter::with_clock(Some(&cfg), Box::new(clock.clone())).unwrap();
    (l, clock)
}

#[test]
fn bucket_accounting_and_refill() {
    let mut b = TokenBucket::new(&bucket(1000, 1000, 0), 0).unwrap();
    assert_eq!(b.budget(), 1000);
    assert_eq!(b.wait_for(600, 0), 0);
    b.take(600);
    assert_eq!(b.budget(), 400);
    // 600 more need 200 more tokens: 200 ms at 1 token per ms.
    assert_eq!(b.wait_for(600, 0), 200 * MS);
    // Half-way there, half the wait is left; the earned tokens are in the bucket.
    assert_eq!(b.wait_for(600, 100 * MS), 100 * MS);
    assert_eq!(b.budget(), 500);
    assert_eq!(b.wait_for(600, 200 * MS), 0);
    b.take(600);
    assert_eq!(b.budget(), 0);
    // Refill stops at the bucket's size.
    b.wait_for(0, 10_000 * MS);
    assert_eq!(b.budget(), 1000);
}

#[test]
fn fractions_of_a_token_are_not_lost() {
    // 3 tokens per 10 ms: one per 3.33 ms. Polled every millisecond for a second, the
    // bucket must have earned the same 300 tokens as if asked once.
    let mut b = TokenBucket::new(&bucket(1000, 3333, 0), 0).unwrap();
    b.take(1000);
    for ms in 1..=1000 {
        b.wait_for(1, ms * MS);
    }
    assert_eq!(b.budget(), 300);
}

#[test]
fn one_time_burst_is_spent_first_and_only_once() {
    let mut b = TokenBucket::new(&bucket(100, 1000, 500), 0).unwrap();
    assert_eq!(b.wait_for(550, 0), 0);
    b.take(550);
    assert_eq!((b.burst(), b.budget()), (0, 50));
    // Refills go to the bucket, never back to the burst.
    b.wait_for(0, 5000 * MS);
    assert_eq!((b.burst(), b.budget()), (0, 100));
    assert_eq!(
        b.wait_for(150, 5000 * MS),
        0,
        "oversized, but the bucket is full"
    );
}

#[test]
fn oversized_request_is_served_from_a_full_bucket_and_paid_back() {
    let mut b = TokenBucket::new(&bucket(1000, 1000, 0), 0).unwrap();
    b.take(1);
    // Not full: a request above the size waits for a full bucket, not forever.
    assert_eq!(b.wait_for(3000, 0), MS);
    assert_eq!(b.wait_for(3000, MS), 0);
    b.take(3000);
    assert_eq!((b.budget(), b.debt()), (0, 2000));
    // The 2000 tokens beyond the bucket are paid before anything else goes: the next
    // request of one token waits 2 s for the debt and 1 ms for itself.
    assert_eq!(b.wait_for(1, MS), 2001 * MS);
    assert_eq!(b.wait_for(1, 1001 * MS), 1001 * MS);
    assert_eq!(b.debt(), 1000);
    assert_eq!(b.wait_for(1, 2002 * MS), 0);
    assert_eq!((b.budget(), b.debt()), (1, 0));
}

#[test]
fn give_back_restores_what_was_taken() {
    let mut b = TokenBucket::new(&bucket(1000, 1000, 0), 0).unwrap();
    b.take(700);
    b.give_back(700);
    assert_eq!(b.budget(), 1000);
    b.take(1500);
    b.give_back(1500);
    assert_eq!((b.budget(), b.debt()), (1000, 0));
    b.give_back(5);
    assert_eq!(b.budget(), 1000, "never above the size");
}

#[test]
fn zero_or_absent_config_is_unlimited() {
    for cfg in [
        None,
        Some(RateLimiterConfig::default()),
        Some(RateLimiterConfig {
            bandwidth: Some(bucket(0, 0, 0)),
            ops: Some(bucket(0, 0, 0)),
        }),
    ] {
        let mut l = RateLimiter::new(cfg.as_ref()).unwrap();
        assert!(!l.is_limited());
        assert_eq!(l.timer_fd(), None);
        for _ in 0..10_000 {
            assert!(l.consume(u64::MAX));
        }
        assert!(!l.is_blocked());
    }
    assert!(!RateLimiter::unlimited().is_limited());
    assert!(TokenBucket::new(&bucket(0, 10, 0), 0).is_none());
    assert!(TokenBucket::new(&bucket(10, 0, 0), 0).is_none());
}

#[test]
fn bandwidth_limit_blocks_then_the_timer_unblocks() {
    // 1 MiB per 250 ms: 4 MiB/s.
    let (mut l, clock) = limiter(Some(bucket(1 << 20, 250, 0)), None);
    assert!(l.is_limited());
    assert!(l.timer_fd().is_some());
    for _ in 0..4 {
        assert!(l.consume(256 << 10));
    }
    assert!(!l.consume(256 << 10));
    assert!(l.is_blocked());
    // Blocked until the timer fires, whatever the buckets say.
    clock.advance_ms(1000);
    assert!(!l.consume(1));
    l.on_timer();
    assert!(!l.is_blocked());
    for _ in 0..4 {
        assert!(l.consume(256 << 10));
    }
    assert!(!l.consume(256 << 10));
}

#[test]
fn sustained_rate_matches_the_limit() {
    // 4 MiB/s in 128 KiB requests over 10 simulated seconds: 40 MiB plus the full
    // bucket it started with, each wait exactly what the limiter asks for.
    let (mut l, clock) = limiter(Some(bucket(1 << 20, 250, 0)), None);
    let mut served = 0u64;
    let mut t = 0u64;
    while t < 10_000 * MS {
        if l.consume(128 << 10) {
            served += 128 << 10;
            continue;
        }
        let now = clock.now_ns();
        let wait = l.bandwidth.as_mut().unwrap().wait_for(128 << 10, now);
        assert!(wait > 0);
        clock.advance_ns(wait);
        t += wait;
        l.on_timer();
    }
    let mib = served as f64 / (1 << 20) as f64;
    assert!((40.0..=41.2).contains(&mib), "{mib} MiB in 10 s");
}

#[test]
fn ops_and_bandwidth_are_both_needed_and_taken_together() {
    // 100 bytes/s and 2 ops/s.
    let (mut l, clock) = limiter(Some(bucket(1000, 10_000, 0)), Some(bucket(2, 1000, 0)));
    assert!(l.consume(100));
    assert!(l.consume(100));
    // Bytes left, no op: nothing is taken from the bandwidth bucket.
    assert!(!l.consume(100));
    assert_eq!(l.bandwidth().unwrap().budget(), 800);
    clock.advance_ms(500);
    l.on_timer();
    assert!(l.consume(100));
    assert_eq!(l.ops().unwrap().budget(), 0);
    // An op, but too few bytes: the op is not taken either.
    clock.advance_ms(500);
    l.on_timer();
    assert!(!l.consume(950));
    assert_eq!(l.ops().unwrap().budget(), 1);
    l.refund(100);
    assert_eq!(l.ops().unwrap().budget(), 2);
}

#[test]
fn a_request_larger_than_the_bucket_is_still_served() {
    let (mut l, clock) = limiter(Some(bucket(64 << 10, 100, 0)), None);
    // A full bucket serves 1 MiB at once, then pays it back: the next request waits
    // for 15 more buckets (1.5 s) and the one token it needs.
    assert!(l.consume(1 << 20));
    assert!(!l.consume(1));
    let wait = l.bandwidth.as_mut().unwrap().wait_for(1, clock.now_ns());
    assert!((1500 * MS..1501 * MS).contains(&wait), "{wait}");
    clock.advance_ms(100);
    l.on_timer();
    // Not full yet: an oversized request keeps waiting, it does not starve either.
    assert!(!l.consume(1 << 20));
    clock.advance_ms(1500);
    l.on_timer();
    assert!(l.consume(1 << 20));
}

#[test]
fn the_timerfd_fires_for_real() {
    // 10 tokens per 20 ms; the eleventh waits ~2 ms on the real clock and timerfd.
    let cfg = RateLimiterConfig {
        bandwidth: None,
        ops: Some(bucket(10, 20, 0)),
    };
    let mut l = RateLimiter::new(Some(&cfg)).unwrap();
    for _ in 0..10 {
        assert!(l.consume(0));
    }
    assert!(!l.consume(0));
    let fd = l.timer_fd().unwrap();
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling one valid pollfd for at most a second.
    let n = unsafe { libc::poll(&mut p, 1, 1000) };
    assert_eq!(n, 1, "the timer did not fire");
    l.on_timer();
    // Read: not readable any more (level-triggered epoll would spin otherwise).
    // SAFETY: as above, without waiting.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0);
    assert!(l.consume(0));
}

#[test]
fn the_event_loop_filter_lets_the_timer_run() {
    // The timerfd is made first (as the builder does, before any filter); in a child
    // under the event loop's seccomp filter, arming it and reading it must not trap.
    let cfg = RateLimiterConfig {
        bandwidth: None,
        ops: Some(bucket(1, 1, 0)),
    };
    let mut l = RateLimiter::new(Some(&cfg)).unwrap();
    // SAFETY: fork in a test; the child makes only the syscalls below and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        if crate::seccomp::apply(crate::seccomp::ThreadKind::EventLoop).is_err() {
            // SAFETY: exiting the forked child.
            unsafe { libc::_exit(10) };
        }
        let ok = l.consume(0) && !l.consume(0);
        l.on_timer();
        // SAFETY: exiting the forked child.
        unsafe { libc::_exit(if ok { 0 } else { 11 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0);
}

//! Token-bucket rate limiters for the devices' queues (catalogue case 42: one pod must not
//! saturate the host's disk or network). Firecracker's model, written for husk:
//!
//! - A limiter has up to two buckets, one counting bytes (bandwidth) and one counting
//!   requests (ops); a request goes ahead only when both have its tokens, and then takes
//!   them from both.
//! - A bucket holds at most `size` tokens and starts full; it refills continuously, from
//!   empty to full in `refill_time_ms`. Its `one_time_burst` tokens are spent first and
//!   never come back.
//! - A request larger than the bucket is served when the bucket is full (it would wait
//!   forever otherwise); what it takes beyond the bucket is a debt that refills pay off
//!   before the bucket fills again, so the average rate still holds.
//! - When a bucket is short, the device stops taking chains from its queue (the chain it
//!   looked at goes back, see `GuestQueue::undo_pop`), and the limiter arms a one-shot
//!   timerfd for the moment the tokens will be there. The device registers that timerfd
//!   with the event loop and resumes when it fires: requests wait, none is dropped, the
//!   event loop never sleeps or spins. While blocked, kicks of the queue return at once.
//!
//! Time comes from a [`Clock`], so the accounting is tested without sleeping. The state is
//! not part of a snapshot: a restored VM's devices are built from its own config and
//! start with full buckets.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::config::{RateLimiterConfig, TokenBucketConfig};

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_SEC: u64 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    #[error("creating a rate limiter's timerfd: {0}")]
    Timer(std::io::Error),
}

/// Where a limiter gets the time.
pub trait Clock: Send {
    /// Nanoseconds since a fixed origin; never decreases.
    fn now_ns(&self) -> u64;
}

/// The monotonic clock (the one timerfds count on).
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock(Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One bucket of tokens (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u64,
    /// What is left of the one-time burst.
    burst: u64,
    /// Tokens in the bucket, at most `size`.
    budget: u64,
    /// Tokens an oversized request took beyond a full bucket; paid before `budget` grows.
    debt: u64,
    /// The time up to which refills are accounted for.
    last_refill: u64,
}

impl TokenBucket {
    /// A full bucket; `None` for a bucket that does not limit (size or refill time 0).
    pub fn new(cfg: &TokenBucketConfig, now: u64) -> Option<TokenBucket> {
        if cfg.size == 0 || cfg.refill_time_ms == 0 {
            return None;
        }
        Some(TokenBucket {
            size: cfg.size,
            refill_ns: cfg.refill_time_ms.saturating_mul(NS_PER_MS),
            burst: cfg.one_time_burst,
            budget: cfg.size,
            debt: 0,
            last_refill: now,
        })
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    pub fn debt(&self) -> u64 {
        self.debt
    }

    /// Adds the tokens earned since the last refill: the debt first, then the bucket.
    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.last_refill);
        if elapsed == 0 {
            return;
        }
        let (size, refill) = (u128::from(self.size), u128::from(self.refill_ns));
        let earned = u128::from(elapsed) * size / refill;
        let room = u128::from(self.debt) + u128::from(self.size - self.budget);
        if earned >= room {
            self.debt = 0;
            self.budget = self.size;
            self.last_refill = now;
            return;
        }
        // earned < room <= 2^65, and earned <= elapsed * size / refill: the time it took is
        // at most `elapsed`, so both fit in u64.
        let earned = earned as u64;
        // Only the time those whole tokens took is used up: a fraction of a token carries
        // over to the next refill instead of being lost to rounding.
        self.last_refill += (u128::from(earned) * refill / size) as u64;
        let paid = earned.min(self.debt);
        self.debt -= paid;
        self.budget += earned - paid;
    }

    /// Nanoseconds until `tokens` can be taken (0: now). A request larger than the bucket
    /// waits for a full bucket, not for more than it holds.
    pub fn wait_for(&mut self, tokens: u64, now: u64) -> u64 {
        self.refill(now);
        let need = tokens.saturating_sub(self.burst);
        if need == 0 || (self.debt == 0 && (need <= self.budget || self.budget == self.size)) {
            return 0;
        }
        let target = need.min(self.size);
        let missing = u128::from(self.debt) + u128::from(target.saturating_sub(self.budget));
        let (size, refill) = (u128::from(self.size), u128::from(self.refill_ns));
        // Rounded up: at that time the refill has earned at least `missing` tokens.
        let span = (missing * refill).div_ceil(size);
        let deadline = u128::from(self.last_refill) + span;
        u64::try_from(deadline.saturating_sub(u128::from(now)))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Takes `tokens`: the burst first, then the bucket, and what the bucket lacks becomes
    /// debt (only an oversized request served from a full bucket gets here short).
    pub fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        let rest = tokens - from_burst;
        let from_budget = rest.min(self.budget);
        self.budget -= from_budget;
        self.debt = self.debt.saturating_add(rest - from_budget);
    }

    /// Gives back tokens taken for a request that did not happen after all.
    pub fn give_back(&mut self, tokens: u64) {
        let paid = tokens.min(self.debt);
        self.debt -= paid;
        self.budget = self.budget.saturating_add(tokens - paid).min(self.size);
    }
}

/// A one-shot monotonic timerfd, non-blocking. Created when the device is built (on the
/// main thread, before any seccomp filter); the event loop only arms and reads it.
#[derive(Debug)]
struct Timer(File);

impl Timer {
    fn new() -> std::io::Result<Timer> {
        // SAFETY: timerfd_create takes no pointers; it returns a new descriptor or -1.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(Timer(File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Fires once, `ns` (at least 1) from now.
    fn arm(&self, ns: u64) -> std::io::Result<()> {
        let ns = ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                // Below 2^64 / 10^9 seconds, which fits an i64.
                tv_sec: (ns / NS_PER_SEC) as libc::time_t,
                tv_nsec: (ns % NS_PER_SEC) as libc::c_long,
            },
        };
        // SAFETY: a timerfd we own, a valid itimerspec that outlives the call, and no old
        // value asked for.
        let rc =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiry, if there is one (the fd is level-triggered in epoll).
    fn clear(&self) {
        let mut expirations = [0u8; 8];
        let _ = (&self.0).read(&mut expirations);
    }
}

/// A device queue's limiter: its buckets, its clock and its timer.
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    clock: Box<dyn Clock>,
    /// Present when a bucket limits.
    timer: Option<Timer>,
    /// Waiting for the timer: requests are refused without looking at the buckets.
    blocked: bool,
    /// Times the timer could not be armed (the request was then served, not stalled).
    timer_failures: u64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("bandwidth", &self.bandwidth)
            .field("ops", &self.ops)
            .field("blocked", &self.blocked)
            .finish()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::unlimited()
    }
}

impl RateLimiter {
    /// A limiter that lets everything through, with no timer.
    pub fn unlimited() -> RateLimiter {
        RateLimiter {
            bandwidth: None,
            ops: None,
            clock: Box::new(MonotonicClock::new()),
            timer: None,
            blocked: false,
            timer_failures: 0,
        }
    }

    /// The limiter `cfg` describes (none: unlimited), on the monotonic clock.
    pub fn new(cfg: Option<&RateLimiterConfig>) -> Result<RateLimiter, RateLimiterError> {
        RateLimiter::with_clock(cfg, Box::new(MonotonicClock::new()))
    }

    /// As [`RateLimiter::new`], on `clock`.
    pub fn with_clock(
        cfg: Option<&RateLimiterConfig>,
        clock: Box<dyn Clock>,
    ) -> Result<RateLimiter, RateLimiterError> {
        let now = clock.now_ns();
        let bucket = |b: Option<&TokenBucketConfig>| b.and_then(|b| TokenBucket::new(b, now));
        let bandwidth = bucket(cfg.and_then(|c| c.bandwidth.as_ref()));
        let ops = bucket(cfg.and_then(|c| c.ops.as_ref()));
        let timer = if bandwidth.is_some() || ops.is_some() {
            Some(Timer::new().map_err(RateLimiterError::Timer)?)
        } else {
            None
        };
        Ok(RateLimiter {
            bandwidth,
            ops,
            clock,
            timer,
            blocked: false,
            timer_failures: 0,
        })
    }

    /// Whether any bucket limits.
    pub fn is_limited(&self) -> bool {
        self.timer.is_some()
    }

    /// Whether requests wait for the timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timerfd to watch for readability (none when unlimited).
    pub fn timer_fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(|t| t.0.as_raw_fd())
    }

    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }

    /// One request of `bytes`: `true` if it may go ahead now (its tokens are taken);
    /// `false` if it must wait: the timer is armed and the device retries when it fires.
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let Some(timer) = &self.timer else {
            return true;
        };
        let now = self.clock.now_ns();
        let wait = [(&mut self.bandwidth, bytes), (&mut self.ops, 1)]
            .into_iter()
            .filter_map(|(b, n)| b.as_mut().map(|b| b.wait_for(n, now)))
            .max()
            .unwrap_or(0);
        if wait > 0 {
            match timer.arm(wait) {
                Ok(()) => {
                    self.blocked = true;
                    return false;
                }
                Err(e) => {
                    // Never seen; a limiter that cannot wait serves rather than stalls
                    // the queue for good.
                    self.timer_failures += 1;
                    if self.timer_failures.is_power_of_two() {
                        log::warn!(
                            "rate limiter: arming the timer: {e} (failure {}); the request \
                             is served",
                            self.timer_failures
                        );
                    }
                }
            }
        }
        if let Some(b) = &mut self.bandwidth {
            b.take(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.take(1);
        }
        true
    }

    /// Gives back the tokens of a request [`RateLimiter::consume`] let through but that
    /// did not happen (an RX frame that found no guest buffer).
    pub fn refund(&mut self, bytes: u64) {
        if let Some(b) = &mut self.bandwidth {
            b.give_back(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.give_back(1);
        }
    }

    /// The timer fired (or the event loop says so): consumes the expiry and lets the
    /// device try again.
    pub fn on_timer(&mut self) {
        if let Some(t) = &self.timer {
            t.clear();
        }
        self.blocked = false;
    }
}

#[cfg(test)]
#[path = "rate_limiter_tests.rs"]
mod tests;

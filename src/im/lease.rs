//! A permit to call IM that runs out unless renewed: a standby active renews it with each
//! heartbeat it commits, so that cut off from Kafka (or paused) it stops calling IM before a
//! follower can take over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Until when calls may go out, on the boot-time clock: it runs on while the process is
/// stopped and while the machine or its VM is suspended (the monotonic clock, which `Instant`
/// reads, stops then), so an active that was paused finds its lease gone when it resumes.
#[derive(Debug)]
pub struct CallLease {
    /// Boot-time microseconds until which calls may go out; 0: none.
    until_micros: AtomicU64,
    length: Duration,
}

/// Microseconds of `CLOCK_BOOTTIME`.
fn boot_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_BOOTTIME exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_BOOTTIME is readable");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// `at` on the boot-time clock (an `Instant` in the past: now less how long ago it was).
fn micros(at: Instant) -> u64 {
    let now = Instant::now();
    let boot = boot_micros();
    match at <= now {
        true => boot.saturating_sub(now.duration_since(at).as_micros() as u64),
        false => boot + at.duration_since(now).as_micros() as u64,
    }
}

impl CallLease {
    /// A lease of `length` a renewal, not held yet.
    pub fn new(length: Duration) -> Self {
        CallLease {
            until_micros: AtomicU64::new(0),
            length,
        }
    }

    /// Holds the lease until `length` after `from` (when the proof of liveness began, not when
    /// it succeeded: the follower counts from no later than that). Never moves it back.
    pub fn renew(&self, from: Instant) {
        self.until_micros
            .fetch_max(micros(from + self.length), Ordering::AcqRel);
    }

    /// Gives the lease up at once.
    pub fn revoke(&self) {
        self.until_micros.store(0, Ordering::Release);
    }

    /// Whether calls may go out now.
    pub fn held(&self) -> bool {
        boot_micros() < self.until_micros.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_out_and_never_moves_back() {
        let lease = CallLease::new(Duration::from_millis(200));
        assert!(!lease.held(), "not held before the first renewal");
        lease.renew(Instant::now());
        assert!(lease.held());
        lease.renew(Instant::now() - Duration::from_secs(10));
        assert!(lease.held(), "an older renewal does not shorten it");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!lease.held(), "it runs out");
        lease.renew(Instant::now());
        lease.revoke();
        assert!(!lease.held(), "revoked");
    }
}

//! Accounts a callback hinted at, waiting to be re-queried: bounded, one entry per account
//! (a second hint for a waiting account merges into it), released in calls of up to a batch
//! after a short coalescing delay, and never sooner than a minimum interval after the same
//! account's last re-query.

use crate::model::CallbackHint;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What became of a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The account waits for a re-query.
    Queued,
    /// The account was already waiting; the newer callback's details replace the older's.
    Merged,
    /// The account is not on the watch list.
    NotWatched,
    /// The queue is full: the next sweep will see the change.
    Overflow,
    /// The daemon is stopping.
    Closed,
}

impl Pushed {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Pushed::Queued => "accepted",
            Pushed::Merged => "merged",
            Pushed::NotWatched => "not_watched",
            Pushed::Overflow => "overflow",
            Pushed::Closed => "stopping",
        }
    }
}

#[derive(Debug)]
struct Waiting {
    hint: CallbackHint,
    due: Instant,
    order: u64,
}

#[derive(Debug, Default)]
struct Inner {
    watch: Arc<Vec<String>>,
    waiting: HashMap<String, Waiting>,
    /// (due, arrival order, account): the waiting accounts in the order they are released.
    by_due: BTreeSet<(Instant, u64, String)>,
    arrivals: u64,
    /// When each account was last released for a re-query.
    released: HashMap<String, Instant>,
    closed: bool,
}

/// The hinted accounts; shared by the callback endpoint (which pushes) and the sweeper (which
/// takes).
#[derive(Debug)]
pub struct HintQueue {
    inner: Mutex<Inner>,
    changed: Notify,
    coalesce: Duration,
    min_interval: Duration,
    capacity: usize,
    batch_size: usize,
}

impl HintQueue {
    /// A queue of at most `capacity` accounts, released `batch_size` at a time.
    pub fn new(
        capacity: usize,
        batch_size: usize,
        coalesce: Duration,
        min_interval: Duration,
    ) -> Self {
        HintQueue {
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            coalesce,
            min_interval,
            capacity: capacity.max(1),
            batch_size: batch_size.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("hint queue")
    }

    /// The accounts hints are accepted for (sorted); waiting accounts no longer on it go.
    pub fn set_watch_list(&self, watch: Arc<Vec<String>>) {
        let mut inner = self.lock();
        let Inner {
            waiting, by_due, ..
        } = &mut *inner;
        waiting.retain(|id, w| {
            let keep = watch.binary_search(id).is_ok();
            if !keep {
                by_due.remove(&(w.due, w.order, id.clone()));
            }
            keep
        });
        inner.watch = watch;
    }

    /// Takes a hint for `user_id`, received at `now`.
    pub fn push(&self, user_id: &str, hint: CallbackHint, now: Instant) -> Pushed {
        let mut inner = self.lock();
        if inner.closed {
            return Pushed::Closed;
        }
        if inner
            .watch
            .binary_search_by(|w| w.as_str().cmp(user_id))
            .is_err()
        {
            return Pushed::NotWatched;
        }
        if let Some(w) = inner.waiting.get_mut(user_id) {
            if hint.event_time >= w.hint.event_time {
                w.hint = hint;
            }
            return Pushed::Merged;
        }
        if inner.waiting.len() >= self.capacity {
            return Pushed::Overflow;
        }
        let not_before = inner.released.get(user_id).map(|t| *t + self.min_interval);
        let due = (now + self.coalesce).max(not_before.unwrap_or(now));
        inner.arrivals += 1;
        let order = inner.arrivals;
        inner.by_due.insert((due, order, user_id.to_owned()));
        inner
            .waiting
            .insert(user_id.to_owned(), Waiting { hint, due, order });
        drop(inner);
        self.changed.notify_one();
        Pushed::Queued
    }

    /// When the next call's worth is ready: the oldest account's due time, or at once, less the
    /// coalescing delay, when a whole call is waiting.
    fn ready_at(&self, inner: &Inner) -> Option<Instant> {
        let (due, _, _) = inner.by_due.first()?;
        Some(match inner.waiting.len() >= self.batch_size {
            true => due.checked_sub(self.coalesce).unwrap_or(*due),
            false => *due,
        })
    }

    /// Whether [`HintQueue::take`] would release accounts at `now`.
    pub fn is_ready(&self, now: Instant) -> bool {
        let inner = self.lock();
        !inner.closed && self.ready_at(&inner).is_some_and(|t| t <= now)
    }

    /// Releases up to a call's worth of accounts once the oldest is ready at `now`: with it,
    /// every account that arrived within the coalescing delay after it, oldest first.
    pub fn take(&self, now: Instant) -> Vec<(String, CallbackHint)> {
        let mut inner = self.lock();
        if inner.closed || self.ready_at(&inner).is_none_or(|t| t > now) {
            return Vec::new();
        }
        // Those whose own delay runs out within one more delay share the call.
        let horizon = now + self.coalesce;
        let mut out = Vec::new();
        while out.len() < self.batch_size {
            let Some(first) = inner.by_due.first().filter(|(due, _, _)| *due <= horizon) else {
                break;
            };
            let (_, _, id) = first.clone();
            inner.by_due.pop_first();
            let w = inner.waiting.remove(&id).expect("indexed accounts wait");
            inner.released.insert(id.clone(), now);
            out.push((id, w.hint));
        }
        // Forget releases older than the interval now and then, so the map stays small.
        if inner.released.len() > 4 * self.capacity.clamp(1024, 1 << 20) {
            let min = self.min_interval;
            inner.released.retain(|_, t| now.duration_since(*t) < min);
        }
        out
    }

    /// Waits until [`HintQueue::take`] has something (returns at once if it has).
    pub async fn ready(&self) {
        loop {
            let (closed, at) = {
                let inner = self.lock();
                (inner.closed, self.ready_at(&inner))
            };
            if closed {
                return std::future::pending().await;
            }
            match at {
                Some(t) if t <= Instant::now() => return,
                Some(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => return,
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }

    /// Accounts waiting.
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops taking hints (the daemon is stopping): what waits is dropped, later pushes answer
    /// [`Pushed::Closed`].
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.waiting.clear();
        inner.by_due.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(t: i64) -> CallbackHint {
        CallbackHint {
            event_time: t,
            action: "Login".into(),
            reason: Some("Register".into()),
            kicked_devices: vec![],
        }
    }

    fn queue(capacity: usize, batch: usize) -> HintQueue {
        let q = HintQueue::new(
            capacity,
            batch,
            Duration::from_millis(20),
            Duration::from_secs(1),
        );
        let watch: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
        q.set_watch_list(Arc::new(watch));
        q
    }

    #[tokio::test(start_paused = true)]
    async fn coalesces_merges_and_bounds() {
        let q = queue(3, 500);
        let t0 = Instant::now();
        assert_eq!(q.push("u1", hint(1), t0), Pushed::Queued);
        assert_eq!(q.push("u1", hint(3), t0), Pushed::Merged);
        assert_eq!(q.push("u1", hint(2), t0), Pushed::Merged);
        assert_eq!(q.push("nobody", hint(1), t0), Pushed::NotWatched);
        assert_eq!(q.push("u2", hint(1), t0), Pushed::Queued);
        assert_eq!(q.push("u3", hint(1), t0), Pushed::Queued);
        assert_eq!(q.push("u4", hint(1), t0), Pushed::Overflow);
        // Not before the coalescing delay.
        assert!(q.take(t0).is_empty());
        q.ready().await;
        let now = Instant::now();
        assert_eq!(now - t0, Duration::from_millis(20));
        let taken = q.take(now);
        assert_eq!(taken.len(), 3);
        assert_eq!(
            taken[0],
            ("u1".to_string(), hint(3)),
            "the newest details win"
        );
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_call_goes_at_once_and_flapping_waits_for_the_interval() {
        let q = queue(100, 2);
        let t0 = Instant::now();
        q.push("u1", hint(1), t0);
        q.push("u2", hint(1), t0);
        q.push("u3", hint(1), t0);
        assert_eq!(q.take(t0).len(), 2, "a whole call does not wait");
        assert_eq!(q.take(t0).len(), 0, "one left: it waits for the delay");
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(q.take(t1).len(), 1);
        // u1 again right away: held until a second after its release.
        q.push("u1", hint(2), t1);
        q.ready().await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        assert_eq!(q.take(Instant::now()).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn hints_arriving_within_the_delay_share_one_call() {
        let q = queue(100, 500);
        let t0 = Instant::now();
        q.push("u1", hint(1), t0);
        q.push("u2", hint(1), t0 + Duration::from_millis(5));
        q.push("u3", hint(1), t0 + Duration::from_millis(15));
        q.push("u4", hint(1), t0 + Duration::from_millis(45));
        let call = q.take(t0 + Duration::from_millis(20));
        let ids: Vec<&str> = call.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            ["u1", "u2", "u3"],
            "u4 came after the first's delay ran out"
        );
        assert!(q.take(t0 + Duration::from_millis(40)).is_empty());
        assert_eq!(q.take(t0 + Duration::from_millis(65)).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_drops_and_refuses() {
        let q = queue(100, 10);
        let t0 = Instant::now();
        q.push("u1", hint(1), t0);
        q.set_watch_list(Arc::new(vec!["u2".into()]));
        assert!(
            q.is_empty(),
            "an account leaving the watch list leaves the queue"
        );
        q.push("u2", hint(1), t0);
        q.close();
        assert!(q.is_empty());
        assert_eq!(q.push("u2", hint(1), t0), Pushed::Closed);
    }
}

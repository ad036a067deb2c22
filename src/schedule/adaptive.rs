//! The adaptive schedule: each account polled at the rate [`Allocation`] gives its estimated
//! change rate, calls filled with the accounts whose next poll is soonest due.
//!
//! State per account is 24 bytes (times in tenths of a second since a base, the estimate's
//! three counts) plus its entries in a heap of `(due, index)` pairs; a heap entry whose due no
//! longer matches its account's is stale and skipped, and the heap is rebuilt when stale
//! entries outnumber the accounts.

use super::allocation::{Allocation, Histogram};
use super::estimate::{Estimate, Prior};
use super::Settings;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

/// Times are tenths of a second since `base_ms`, which lies this far before the schedule was
/// made, so that observations restored from the store still fit.
const BASE_BEFORE_MS: i64 = 400 * 86_400_000;

#[derive(Debug, Clone, Copy)]
struct Account {
    /// When its next poll is due.
    due: u32,
    /// When it was last put in a call.
    issued: u32,
    /// When it was last observed; 0 for never.
    observed: u32,
    estimate: Estimate,
}

/// What is kept of an account across restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// The account.
    pub user_id: String,
    /// Its last observation (Unix ms).
    pub observed_at: i64,
    /// Its estimate.
    pub estimate: Estimate,
}

/// The adaptive schedule of one watch list.
#[derive(Debug)]
pub struct Adaptive {
    watch: Arc<Vec<String>>,
    accounts: Vec<Account>,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
    base_ms: i64,
    settings: Settings,
    allocation: Allocation,
    /// What an account with few polls is assumed to change at: the configured prior until the
    /// watch list's polls fit one.
    prior: Prior,
    /// Seconds from one sweep's start to the next, smoothed.
    period: f64,
    last_sweep_start: Option<i64>,
    sweep_start: u32,
    /// The last save: accounts observed since are saved next time.
    saved_up_to: u32,
    /// When the schedule was made.
    created: u32,
    /// Where the accounts put in calls lie in the watch list, by their ids' hash, so that their
    /// answers are noted without searching the list (a search of a million ids costs twenty
    /// string comparisons, each a cache miss). Checked against the list before it is trusted.
    picked: HashMap<u64, u32>,
    hasher: RandomState,
}

/// Picks remembered at most; past it the map starts afresh (answers then fall back to a search).
const MAX_PICKED: usize = 1 << 16;

impl Adaptive {
    /// A schedule for `watch` (sorted), starting from what was `saved` of it.
    pub fn new(
        watch: Arc<Vec<String>>,
        settings: Settings,
        now_ms: i64,
        saved: impl IntoIterator<Item = Saved>,
    ) -> Self {
        let base_ms = now_ms - BASE_BEFORE_MS;
        let mut s = Adaptive {
            accounts: vec![
                Account {
                    due: 0,
                    issued: 0,
                    observed: 0,
                    estimate: Estimate::default(),
                };
                watch.len()
            ],
            watch,
            heap: BinaryHeap::new(),
            base_ms,
            allocation: Allocation {
                scale: 0.0,
                floor: 1.0 / settings.max_staleness_secs,
                ceiling: 1.0,
                boost: 1.0,
            },
            period: settings.interval_secs,
            prior: Prior::new(
                1.0 / settings.prior_change_interval_secs,
                settings.max_staleness_secs,
            ),
            settings,
            last_sweep_start: None,
            sweep_start: 0,
            saved_up_to: 0,
            created: 0,
            picked: HashMap::new(),
            hasher: RandomState::new(),
        };
        for row in saved {
            if let Ok(i) = s.watch.binary_search(&row.user_id) {
                // A restored time past now (a clock stepped back) would starve the account.
                let observed = s.tick(row.observed_at.min(now_ms));
                s.accounts[i].observed = observed;
                s.accounts[i].issued = observed;
                s.accounts[i].estimate = row.estimate;
            }
        }
        s.saved_up_to = s.tick(now_ms);
        s.created = s.saved_up_to;
        s.reallocate();
        // First polls: never-observed accounts at once, the rest one interval after their last
        // observation.
        for i in 0..s.accounts.len() {
            let a = s.accounts[i];
            s.accounts[i].due = match a.observed {
                0 => 0,
                at => at.saturating_add(s.interval_ticks(&a.estimate)),
            };
        }
        s.rebuild_heap();
        s
    }

    /// The same schedule for a new watch list: what is known of the accounts that stay is kept.
    pub fn with_watch_list(&self, watch: Arc<Vec<String>>, now_ms: i64) -> Self {
        let kept = self.saved_since(0).into_iter();
        let mut next = Adaptive::new(watch, self.settings.clone(), now_ms, kept);
        next.period = self.period;
        next.last_sweep_start = self.last_sweep_start;
        // What was not saved yet still is, at the next save.
        next.saved_up_to = self.saved_up_to;
        next
    }

    fn tick(&self, ms: i64) -> u32 {
        (ms.saturating_sub(self.base_ms) / 100).clamp(1, i64::from(u32::MAX)) as u32
    }

    fn ms(&self, tick: u32) -> i64 {
        self.base_ms + i64::from(tick) * 100
    }

    fn interval_ticks(&self, estimate: &Estimate) -> u32 {
        let secs = self
            .allocation
            .interval(estimate.rate(&self.prior))
            .min(self.staleness_room());
        (secs * 10.0).round().clamp(1.0, f64::from(u32::MAX / 2)) as u32
    }

    /// The longest interval that keeps the staleness bound: a poll due between sweeps waits for
    /// the next one, so a period is kept in hand.
    fn staleness_room(&self) -> f64 {
        (self.settings.max_staleness_secs - self.period).max(self.period)
    }

    fn rebuild_heap(&mut self) {
        self.heap = self
            .accounts
            .iter()
            .enumerate()
            .map(|(i, a)| Reverse((a.due, i as u32)))
            .collect();
    }

    /// Solves the allocation for the current estimates: the budget is the watch list once per
    /// sweep period.
    fn reallocate(&mut self) {
        // The prior is fitted to the list once a tenth of it has been polled.
        let estimates = self.accounts.iter().map(|a| &a.estimate);
        let memory = self.settings.memory_secs();
        if let Some(prior) = Prior::fit(estimates, self.accounts.len() / 10, memory) {
            self.prior = prior;
        }
        let mut histogram = Histogram::default();
        for a in &self.accounts {
            histogram.add(a.estimate.rate(&self.prior));
        }
        let n = self.accounts.len().max(1) as f64;
        let budget = n / self.period.max(1e-3);
        self.allocation = Allocation::solve(&histogram, budget, 1.0 / self.staleness_room());
    }

    /// A sweep starts: the period is measured and the allocation solved anew.
    pub fn begin_sweep(&mut self, now_ms: i64) {
        if let Some(last) = self.last_sweep_start {
            let measured = ((now_ms - last) as f64 / 1000.0).max(0.001);
            self.period = 0.5 * self.period + 0.5 * measured.max(self.settings.interval_secs);
        }
        self.last_sweep_start = Some(now_ms);
        self.sweep_start = self.tick(now_ms);
        self.reallocate();
    }

    /// Up to `max` accounts for the next call, soonest due first, each once. Those already put
    /// in a call during this sweep go to `repeats` too.
    pub fn next_call(&mut self, max: usize, now_ms: i64, repeats: &mut Vec<String>) -> Vec<String> {
        let now = self.tick(now_ms);
        let max = max.min(self.accounts.len());
        let room = (self.staleness_room() * 10.0) as u32;
        let mut ids = Vec::with_capacity(max);
        let mut taken: Vec<u32> = Vec::with_capacity(max);
        // The picked accounts' next entries go in after the call is filled, so that none is
        // popped twice for one call.
        let mut next_entries = Vec::with_capacity(max);
        while ids.len() < max {
            let Some(Reverse((due, i))) = self.heap.pop() else {
                break;
            };
            let a = self.accounts[i as usize];
            if a.due != due {
                continue;
            }
            // A second live entry with the same due (rare: an old one a later due happened to
            // match) for an account already in this call.
            if a.issued == now && taken.contains(&i) {
                continue;
            }
            taken.push(i);
            let id = &self.watch[i as usize];
            if self.picked.len() >= MAX_PICKED {
                self.picked.clear();
            }
            self.picked.insert(self.hasher.hash_one(id.as_str()), i);
            if a.issued >= self.sweep_start && a.issued > 0 {
                repeats.push(id.clone());
            }
            // Spaced from when it was due, not from now: calls are filled with the soonest due
            // even before they are due, and spacing from now would then hand every spare poll
            // to the accounts with the shortest intervals (and to failed ones); this way spare
            // polls are shared in proportion, as the allocation meant.
            // Never further ahead than the staleness bound allows.
            let next_due = due
                .max(now)
                .saturating_add(self.interval_ticks(&a.estimate))
                .min(now.saturating_add(room));
            let account = &mut self.accounts[i as usize];
            account.issued = now;
            account.due = next_due;
            next_entries.push(Reverse((next_due, i)));
            ids.push(id.clone());
        }
        self.heap.extend(next_entries);
        if self.heap.len() > 2 * self.accounts.len() + 1024 {
            self.rebuild_heap();
        }
        ids
    }

    /// Notes an observation of `user_id` at `at_ms` that found a change or not. `counts` is
    /// false for a hinted re-query: it follows a change a callback announced, and the sweep's
    /// polls are for the changes callbacks do not announce, so only the time is kept. Returns
    /// the seconds since its previous observation, if it had one.
    pub fn observed(
        &mut self,
        user_id: &str,
        changed: bool,
        at_ms: i64,
        counts: bool,
    ) -> Option<f64> {
        let i = self.index_of(user_id)?;
        let at = self.tick(at_ms);
        let a = self.accounts[i];
        let interval = (a.observed > 0).then(|| f64::from(at.saturating_sub(a.observed)) / 10.0);
        self.accounts[i].observed = at;
        // A first observation says nothing of the rate, and neither does a gap this schedule
        // did not plan (the daemon down, or round-robin polling): one huge interval would
        // swamp the mean interval for a hundred polls. Such a gap, and a hinted re-query, only
        // age what was seen.
        let planned = 2.0 * self.staleness_room() + self.period;
        let memory = self.settings.memory_secs();
        match interval {
            Some(interval) if counts && interval <= planned => {
                self.accounts[i].estimate.observe(interval, changed, memory);
            }
            Some(interval) => self.accounts[i].estimate.fade(interval, memory),
            None => {}
        }
        // An account found livelier than thought is due sooner: by as much as its interval
        // shrank.
        let (before, after) = (
            self.interval_ticks(&a.estimate),
            self.interval_ticks(&self.accounts[i].estimate),
        );
        let sooner = self.accounts[i]
            .due
            .saturating_sub(before.saturating_sub(after));
        if sooner < self.accounts[i].due {
            self.accounts[i].due = sooner;
            self.heap.push(Reverse((sooner, i as u32)));
        }
        interval
    }

    /// A poll of `user_id` yielded nothing: it is due again half an interval sooner than its
    /// next poll. Not at once: the calls are filled with the soonest due, so an account failing
    /// every time would be in every call; this way it costs at most its own share again.
    pub fn failed(&mut self, user_id: &str, _now_ms: i64) {
        if let Some(i) = self.index_of(user_id) {
            let half = self.interval_ticks(&self.accounts[i].estimate) / 2;
            let retry = self.accounts[i].due.saturating_sub(half).max(1);
            if retry < self.accounts[i].due {
                self.accounts[i].due = retry;
                self.heap.push(Reverse((retry, i as u32)));
            }
        }
    }

    /// Where `user_id` lies in the watch list: from the picks when it was put in a call, by a
    /// search otherwise (a hinted call's accounts, a stale or colliding entry).
    fn index_of(&self, user_id: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(user_id);
        if let Some(&i) = self.picked.get(&hash) {
            if self.watch[i as usize] == user_id {
                return Some(i as usize);
            }
        }
        self.watch
            .binary_search_by(|w| w.as_str().cmp(user_id))
            .ok()
    }

    /// Seconds since the account observed longest ago was observed (one never observed counts
    /// from when the schedule was made).
    pub fn oldest_observation_age(&self, now_ms: i64) -> f64 {
        let now = self.tick(now_ms);
        let oldest = self
            .accounts
            .iter()
            .map(|a| match a.observed {
                0 => self.created,
                at => at,
            })
            .min()
            .unwrap_or(now);
        f64::from(now.saturating_sub(oldest)) / 10.0
    }

    /// Accounts observed since tick `since`, to be saved.
    fn saved_since(&self, since: u32) -> Vec<Saved> {
        self.accounts
            .iter()
            .zip(self.watch.iter())
            .filter(|(a, _)| a.observed > since)
            .map(|(a, id)| Saved {
                user_id: id.clone(),
                observed_at: self.ms(a.observed),
                estimate: a.estimate,
            })
            .collect()
    }

    /// What was observed since the last save, and the mark to pass to [`Adaptive::saved`]
    /// once it is written.
    pub fn unsaved(&self, now_ms: i64) -> (Vec<Saved>, u32) {
        let rows = self.saved_since(self.saved_up_to.saturating_sub(1));
        (rows, self.tick(now_ms))
    }

    /// The rows [`Adaptive::unsaved`] gave with `mark` are written.
    pub fn saved(&mut self, mark: u32) {
        self.saved_up_to = self.saved_up_to.max(mark);
    }

    /// The current estimate of `user_id` (changes a second).
    pub fn rate(&self, user_id: &str) -> Option<f64> {
        let i = self.index_of(user_id)?;
        Some(self.accounts[i].estimate.rate(&self.prior))
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The poll counts of `user_id`.
    pub fn estimate(&self, user_id: &str) -> Option<Estimate> {
        let i = self.index_of(user_id)?;
        Some(self.accounts[i].estimate)
    }

    /// What an account never polled is assumed to change at (changes/s).
    pub fn prior(&self) -> f64 {
        self.prior.mean()
    }
}

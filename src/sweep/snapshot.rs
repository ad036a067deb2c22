//! The in-memory last known state of every account, and the diff that turns an observation into
//! a transition. The hot path: it must stay cheap per account and small per account.

use crate::im::AccountOutcome;
use crate::model::{Cause, TransitionRecord};
use crate::model::{PlatformStatus, State};
use crate::store::CurrentRow;
use compact_str::CompactString;
use std::collections::HashMap;
use std::sync::Arc;

/// Platform lists repeat endlessly across accounts ("iPhone Online", "Android PushOnline", ...),
/// so each distinct list is stored once and entries hold a 4-byte index.
#[derive(Debug, Default)]
struct PlatformSets {
    lists: Vec<Arc<[PlatformStatus]>>,
    index: HashMap<Arc<[PlatformStatus]>, u32>,
}

impl PlatformSets {
    fn new() -> Self {
        let mut sets = PlatformSets::default();
        sets.intern(&[]);
        sets
    }

    fn intern(&mut self, list: &[PlatformStatus]) -> u32 {
        if let Some(&id) = self.index.get(list) {
            return id;
        }
        let arc: Arc<[PlatformStatus]> = list.into();
        let id = self.lists.len() as u32;
        self.lists.push(arc.clone());
        self.index.insert(arc, id);
        id
    }

    fn get(&self, id: u32) -> &[PlatformStatus] {
        &self.lists[id as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Last observed aggregate, or None before the first observation.
    state: Option<State>,
    not_found: bool,
    platforms: u32,
    seq: u64,
    /// Last successful observation in Unix ms, 0 for none.
    observed_at: i64,
}

/// What the diff decided for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A transition to record (and, once committed, to apply to the snapshot).
    Transition(TransitionRecord),
    /// The account was reported as not existing for the first time; no event.
    NewlyNotFound,
    /// The account exists again after having been reported missing, with no state change.
    FoundAgain,
    /// Observed, nothing changed.
    Unchanged,
    /// Not found again, or no usable answer: nothing to write.
    Nothing,
}

/// Account ids are at most 32 bytes and usually much shorter: a `CompactString` keeps those up
/// to 24 bytes inline, with no heap allocation per account.
#[derive(Debug, Default)]
pub struct Snapshot {
    accounts: HashMap<CompactString, Entry>,
    platforms: PlatformSets,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Snapshot::with_capacity(0)
    }

    /// Sized up front for `accounts`, so loading a million rows does not grow the map through
    /// a series of doublings whose freed tables the allocator may keep resident.
    pub fn with_capacity(accounts: usize) -> Self {
        Snapshot {
            accounts: HashMap::with_capacity(accounts),
            platforms: PlatformSets::new(),
        }
    }

    /// The snapshot of the stored current state.
    pub fn from_rows(rows: Vec<CurrentRow>) -> Self {
        let mut s = Snapshot::with_capacity(rows.len());
        for r in rows {
            s.insert_row(r);
        }
        s
    }

    /// Adds one stored row (start-up streams rows straight in, with no intermediate list).
    pub fn insert_row(&mut self, r: CurrentRow) {
        let platforms = self.platforms.intern(&r.platforms);
        self.accounts.insert(
            CompactString::from(r.user_id),
            Entry {
                state: r.state,
                not_found: r.not_found_since.is_some(),
                platforms,
                seq: r.seq,
                observed_at: r.observed_at.unwrap_or(0),
            },
        );
    }

    /// Accounts known.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// An account's last known state.
    pub fn state_of(&self, user_id: &str) -> Option<State> {
        self.accounts.get(user_id).and_then(|e| e.state)
    }

    /// An account's latest `seq` (0 if never observed).
    pub fn seq_of(&self, user_id: &str) -> u64 {
        self.accounts.get(user_id).map_or(0, |e| e.seq)
    }

    /// Compares one outcome with the last known state. Pure: the snapshot changes only through
    /// `commit`, after the decision is durable.
    pub fn decide(
        &self,
        user_id: &str,
        outcome: &AccountOutcome,
        observed_at: i64,
        sweep_id: i64,
        platform_changes_count: bool,
    ) -> Decision {
        let entry = self.accounts.get(user_id);
        match outcome {
            AccountOutcome::Failed(_) => Decision::Nothing,
            AccountOutcome::NotFound => match entry {
                Some(e) if e.not_found => Decision::Nothing,
                _ => Decision::NewlyNotFound,
            },
            AccountOutcome::Observed(p) => {
                let (from, from_platforms, seq, previous) = match entry {
                    Some(e) => (
                        e.state,
                        self.platforms.get(e.platforms),
                        e.seq,
                        e.observed_at,
                    ),
                    None => (None, &[][..], 0, 0),
                };
                let changed = match from {
                    None => true,
                    Some(s) => {
                        s != p.state
                            || (platform_changes_count && from_platforms != &p.platforms[..])
                    }
                };
                if changed {
                    Decision::Transition(TransitionRecord {
                        event_id: uuid::Uuid::now_v7(),
                        user_id: user_id.to_owned(),
                        seq: seq + 1,
                        from,
                        from_platforms: from.map(|_| from_platforms.to_vec()),
                        to: p.state,
                        to_platforms: p.platforms.clone(),
                        observed_at,
                        previous_observed_at: (from.is_some() && previous > 0).then_some(previous),
                        sweep_id,
                        cause: Cause::Sweep,
                    })
                } else if entry.is_some_and(|e| e.not_found) {
                    Decision::FoundAgain
                } else {
                    Decision::Unchanged
                }
            }
        }
    }

    /// When the account observed longest ago was last observed (Unix ms), of those with a
    /// state (accounts IM says do not exist are not observed again in that sense).
    pub fn oldest_observation(&self) -> Option<i64> {
        self.accounts
            .values()
            .filter(|e| e.state.is_some() && !e.not_found && e.observed_at > 0)
            .map(|e| e.observed_at)
            .min()
    }

    /// Records a successful observation that changed nothing durable.
    pub fn touch(&mut self, user_id: &str, observed_at: i64) {
        if let Some(e) = self.accounts.get_mut(user_id) {
            e.observed_at = observed_at;
        }
    }

    /// Applies a transition once it is committed.
    pub fn commit_transition(&mut self, t: &TransitionRecord) {
        let platforms = self.platforms.intern(&t.to_platforms);
        let entry = Entry {
            state: Some(t.to),
            not_found: false,
            platforms,
            seq: t.seq,
            observed_at: t.observed_at,
        };
        match self.accounts.get_mut(t.user_id.as_str()) {
            Some(e) => *e = entry,
            None => {
                self.accounts
                    .insert(CompactString::from(t.user_id.as_str()), entry);
            }
        }
    }

    /// Applies a committed change of the not-found mark.
    pub fn set_not_found(&mut self, user_id: &str, not_found: bool) {
        match self.accounts.get_mut(user_id) {
            Some(e) => e.not_found = not_found,
            None if !not_found => {}
            None => {
                self.accounts.insert(
                    user_id.into(),
                    Entry {
                        state: None,
                        not_found: true,
                        platforms: 0,
                        seq: 0,
                        observed_at: 0,
                    },
                );
            }
        }
    }

    /// The account left the watch list: keep only its sequence number.
    pub fn forget(&mut self, user_id: &str) {
        if let Some(e) = self.accounts.get_mut(user_id) {
            *e = Entry {
                state: None,
                not_found: false,
                platforms: 0,
                seq: e.seq,
                observed_at: 0,
            };
        }
    }

    /// Accounts with remembered state that are not in `watched`.
    pub fn known_outside<'a>(
        &'a self,
        watched: &'a std::collections::HashSet<&str>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.accounts
            .iter()
            .filter(|(_, e)| e.state.is_some() || e.not_found)
            .map(|(k, _)| k.as_str())
            .filter(move |k| !watched.contains(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::AccountFailure;
    use crate::model::Presence;

    fn online(platforms: &[(&str, State)]) -> AccountOutcome {
        AccountOutcome::Observed(Presence::new(
            State::Online,
            platforms
                .iter()
                .map(|(p, s)| PlatformStatus {
                    platform: p.to_string(),
                    status: *s,
                })
                .collect(),
        ))
    }

    fn transition(d: Decision) -> TransitionRecord {
        match d {
            Decision::Transition(t) => t,
            other => panic!("expected a transition, got {other:?}"),
        }
    }

    #[test]
    fn first_sight_is_initial_then_changes_carry_both_times() {
        let mut s = Snapshot::new();
        let t = transition(s.decide("a", &online(&[]), 1_000, 1, true));
        assert_eq!(
            (t.kind(), t.seq, t.from, t.previous_observed_at),
            ("initial", 1, None, None)
        );
        s.commit_transition(&t);
        assert_eq!(
            s.decide("a", &online(&[]), 2_000, 2, true),
            Decision::Unchanged
        );
        s.touch("a", 2_000);
        let off = AccountOutcome::Observed(Presence::new(State::Offline, vec![]));
        let t2 = transition(s.decide("a", &off, 3_000, 3, true));
        assert_eq!(t2.kind(), "changed");
        assert_eq!(t2.seq, 2);
        assert_eq!(t2.from, Some(State::Online));
        assert_eq!(t2.previous_observed_at, Some(2_000));
        assert_eq!(t2.observed_at, 3_000);
    }

    #[test]
    fn failures_never_become_offline() {
        let mut s = Snapshot::new();
        s.commit_transition(&transition(s.decide("a", &online(&[]), 1, 1, true)));
        let failed = AccountOutcome::Failed(AccountFailure::Missing);
        assert_eq!(s.decide("a", &failed, 2, 2, true), Decision::Nothing);
        assert_eq!(s.state_of("a"), Some(State::Online));
    }

    #[test]
    fn platform_detail_changes_are_transitions_when_configured() {
        let mut s = Snapshot::new();
        let first = online(&[("iPhone", State::Online)]);
        s.commit_transition(&transition(s.decide("a", &first, 1, 1, true)));
        let second = online(&[("iPhone", State::Online), ("Web", State::Online)]);
        let t = transition(s.decide("a", &second, 2, 2, true));
        assert_eq!(t.from, Some(State::Online));
        assert_eq!(t.to_platforms.len(), 2);
        assert_eq!(t.from_platforms.as_ref().unwrap().len(), 1);
        assert_eq!(s.decide("a", &second, 2, 2, false), Decision::Unchanged);
    }

    #[test]
    fn not_found_emits_nothing_and_only_once() {
        let mut s = Snapshot::new();
        assert_eq!(
            s.decide("x", &AccountOutcome::NotFound, 1, 1, true),
            Decision::NewlyNotFound
        );
        s.set_not_found("x", true);
        assert_eq!(
            s.decide("x", &AccountOutcome::NotFound, 2, 2, true),
            Decision::Nothing
        );
        // It appears later: first real observation is initial.
        let t = transition(s.decide("x", &online(&[]), 3, 3, true));
        assert_eq!(t.kind(), "initial");
    }

    #[test]
    fn forget_keeps_the_sequence() {
        let mut s = Snapshot::new();
        s.commit_transition(&transition(s.decide("a", &online(&[]), 1, 1, true)));
        s.forget("a");
        let t = transition(s.decide("a", &online(&[]), 2, 2, true));
        assert_eq!((t.kind(), t.seq), ("initial", 2));
    }
}

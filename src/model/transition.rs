//! The central domain type: one account's change of state, as the sweep found it, the store
//! keeps it and the sinks publish it.

use super::{Cause, PlatformStatus, State};

/// A transition as written: one history row (which is also the outbox entry until published).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRecord {
    /// Unique per transition (UUIDv7); consumers drop a redelivered event by it.
    pub event_id: uuid::Uuid,
    /// The IM account.
    pub user_id: String,
    /// Per-account sequence number: 1 for the first observation, then +1 per transition.
    pub seq: u64,
    /// The state before; `None` for the first observation of an account.
    pub from: Option<State>,
    /// The per-platform detail before (`None` when `from` is).
    pub from_platforms: Option<Vec<PlatformStatus>>,
    /// The state observed.
    pub to: State,
    /// The per-platform detail observed.
    pub to_platforms: Vec<PlatformStatus>,
    /// When the answer that showed the new state was received (ms since the epoch).
    pub observed_at: i64,
    /// When the previous state was observed (ms since the epoch), if there was one.
    pub previous_observed_at: Option<i64>,
    /// The sweep that made the observation; for a callback's re-query, the sweep running or
    /// last started when it was answered.
    pub sweep_id: i64,
    /// How the change was found.
    pub cause: Cause,
}

/// Whether a transition is an account's first observation or a change from a known state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionKind {
    /// The first observation of an account (`from` is `None`).
    Initial,
    /// A change from a state already recorded.
    Changed,
}

impl TransitionKind {
    /// The name used in events and the history (`initial`, `changed`).
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Initial => "initial",
            TransitionKind::Changed => "changed",
        }
    }
}

impl TransitionRecord {
    /// `initial` or `changed`, as events and the history name it.
    pub fn kind(&self) -> &'static str {
        self.transition_kind().as_str()
    }

    /// [`TransitionRecord::kind`] as a type.
    pub fn transition_kind(&self) -> TransitionKind {
        match self.from {
            None => TransitionKind::Initial,
            Some(_) => TransitionKind::Changed,
        }
    }

    /// A builder with plausible defaults, for tests, benchmarks and anything else that makes up
    /// history rather than observing it: no platforms, sweep 1, observed at 0.
    pub fn builder(user_id: impl Into<String>, seq: u64, to: State) -> TransitionBuilder {
        TransitionBuilder(TransitionRecord {
            event_id: uuid::Uuid::now_v7(),
            user_id: user_id.into(),
            seq,
            from: None,
            from_platforms: None,
            to,
            to_platforms: vec![],
            observed_at: 0,
            previous_observed_at: None,
            sweep_id: 1,
            cause: Cause::Sweep,
        })
    }
}

/// Builds a [`TransitionRecord`]; see [`TransitionRecord::builder`].
#[derive(Debug, Clone)]
pub struct TransitionBuilder(TransitionRecord);

impl TransitionBuilder {
    /// The state before, observed at `previous_observed_at` (with no platforms unless
    /// [`TransitionBuilder::from_platforms`] says otherwise).
    pub fn from(mut self, from: Option<State>, previous_observed_at: i64) -> Self {
        self.0.from = from;
        self.0.from_platforms = from.map(|_| vec![]);
        self.0.previous_observed_at = from.map(|_| previous_observed_at);
        self
    }

    /// The per-platform detail before; ignored for an initial observation.
    pub fn from_platforms(mut self, platforms: Vec<PlatformStatus>) -> Self {
        if self.0.from.is_some() {
            self.0.from_platforms = Some(platforms);
        }
        self
    }

    /// The per-platform detail observed.
    pub fn to_platforms(mut self, platforms: Vec<PlatformStatus>) -> Self {
        self.0.to_platforms = platforms;
        self
    }

    /// When the new state was observed.
    pub fn observed_at(mut self, at: i64) -> Self {
        self.0.observed_at = at;
        self
    }

    /// The sweep that observed it.
    pub fn sweep(mut self, sweep_id: i64) -> Self {
        self.0.sweep_id = sweep_id;
        self
    }

    /// How it was found.
    pub fn cause(mut self, cause: Cause) -> Self {
        self.0.cause = cause;
        self
    }

    /// The record.
    pub fn build(self) -> TransitionRecord {
        self.0
    }
}

//! Standby: several instances of one app share the events topic, which is the log of record.
//! One instance is the active (it sweeps and publishes); the others follow the topic into
//! their own history and take over when the active stops committing.
//!
//! - `follow`: a `read_committed` consumer of the events topic and the heartbeat topic; the
//!   events are applied to the history with the position (`store::replica`).
//! - `heartbeat`: the active's proof of life, and claiming the role.
//! - `takeover`: claiming the role, fencing the old active's publisher, reading to the end.
//! - `decode`: an event record back into the transition the active wrote.
//!
//! `service::roles` runs the roles in turn: follow, claim, fence, catch up, be the active,
//! stand down, follow again.
//!
//! # Why two instances cannot both publish
//!
//! Publishing is committing a Kafka transaction with the publisher's `transactional.id`s
//! (`ID` and `ID-b`); the transaction coordinator accepts a commit only from the producer
//! epoch it handed out last. A new active calls `init_transactions` on those ids before it
//! reads the topic to its end, which bumps the epoch: whatever the old active had open is
//! aborted, and nothing it sends afterwards can commit (`PRODUCER_FENCED`). So at any moment
//! at most one instance can commit, and the new active's read of the topic sees everything
//! the old one ever committed. Several followers racing for the role each `init_transactions`
//! the heartbeat producer (`ID-standby`), commit a claim record, and half a heartbeat later
//! commit a second one: only the producer initialised last can commit, so of claimants that
//! overlapped, exactly one gets both through; the others are fenced at their claim or its
//! confirmation and go back to following before they touch the publisher's ids. Claims rarely
//! overlap: followers announce themselves on the heartbeat topic and claim in name order, half
//! a takeover time apart, so a later one sees the first one's claim and stands by.
//!
//! Followers read the heartbeat topic uncommitted (a killed active's open beat would otherwise
//! hide everything after it until a claimant aborts it): a beat that is later aborted can only
//! delay a takeover, never cause one, and takeovers rest on fencing, not on what was read.
//!
//! # What it assumes about clocks
//!
//! No clock is compared across hosts. The active's lease (how long it may call IM without a
//! committed heartbeat) runs on its own monotonic clock from the moment its last successful
//! heartbeat commit *began*; a follower counts `takeover_after_ms` on its own monotonic clock
//! from the moment that heartbeat *arrived*, which is later. The lease is one heartbeat
//! shorter than the takeover time, so the active stops calling IM before any follower starts,
//! as long as the two clocks run at nearly the same rate (a drift below
//! `heartbeat_ms / takeover_after_ms`, 20% with the defaults). The lease runs on the boot-time
//! clock, which runs on while the process is stopped and while the machine or VM is suspended,
//! so a paused or frozen active finds its lease gone when it resumes, and no call goes out
//! without a held lease (the follower's side uses `Instant`: a frozen follower only takes over
//! later). If that assumption failed, the worst is an IM call too many:
//! publishing still rests on fencing alone.

pub mod config;
pub mod decode;
pub mod follow;
pub mod heartbeat;
pub mod takeover;

use crate::store::StoreError;
use serde::Serialize;

pub use config::StandbyConfig;

/// Why following or taking over failed.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Kafka: reading the topics, fencing, or the heartbeat.
    #[error("standby: {0}")]
    Kafka(String),
}

/// What `GET /standby` and `presenced standby status` show.
#[derive(Debug, Clone, Serialize)]
pub struct StandbyStatus {
    /// This instance.
    pub instance: String,
    /// Its process id.
    pub pid: u32,
    /// `follower`, `claiming`, `active`, `stopping` (no longer calling IM, publishing what it
    /// has before following) or `diverged`.
    pub role: String,
    /// Since when (Unix ms).
    pub since: i64,
    /// The active whose heartbeat this follower saw last.
    pub active: Option<String>,
    /// Since that heartbeat, seconds.
    pub heartbeat_age_seconds: Option<f64>,
    /// Events committed on the topic not applied yet.
    pub lag_events: i64,
    /// Age of the newest applied event while lagging, seconds.
    pub lag_seconds: f64,
    /// When this instance last became the active (Unix ms).
    pub last_takeover: Option<i64>,
    /// How long that takeover took, from deciding to the first sweep, ms.
    pub last_takeover_ms: Option<u64>,
    /// Why this instance last stood down.
    pub last_stand_down: Option<String>,
    /// Why this replica may not become the active (it lacks part of the log, or contradicts
    /// it), if so.
    pub ineligible: Option<String>,
}

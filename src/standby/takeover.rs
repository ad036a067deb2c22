//! Taking over, once a follower decided to: claim the role (of overlapping claimants exactly
//! one confirms), fence the old active's publisher, and read the topic to its end.

use super::follow::{FollowState, Follower};
use super::heartbeat::{fence_publishers, Beat, HeartbeatError, Heartbeats};
use super::StandbyError;
use crate::im::CallLease;
use crate::publish::kafka::{lane_ids, KafkaConfig};
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a new active may take to read the topic to its end before it gives the role up.
const CATCH_UP_BOUND: Duration = Duration::from_secs(60);

/// Who is taking over, and where.
pub struct Claimant<'a> {
    /// `[kafka]`.
    pub kafka: &'a KafkaConfig,
    /// `kafka.transactional_id` as the publisher uses it.
    pub transactional_id: String,
    /// The heartbeat topic.
    pub heartbeat_topic: &'a str,
    /// The app.
    pub sdkappid: u64,
    /// This instance's name.
    pub instance: &'a str,
    /// The lease its heartbeats renew.
    pub lease: Arc<CallLease>,
    /// `standby.heartbeat_ms`.
    pub heartbeat_ms: u64,
    /// `standby.takeover_after_ms`.
    pub takeover_after: Duration,
}

/// How a takeover went.
pub enum Outcome {
    /// This instance is the active: its heartbeats, and how long each step took (ms).
    Won {
        /// Its heartbeat producer.
        heartbeats: Arc<Heartbeats>,
        /// Claiming and confirming the claim.
        claim_ms: u64,
        /// Fencing the old publisher.
        fence_ms: u64,
        /// Reading the topic to its end.
        catch_up_ms: u64,
    },
    /// It follows again.
    Lost {
        /// Why.
        why: String,
        /// When it may try next.
        eligible_at: Instant,
    },
}

impl Claimant<'_> {
    /// Takes over from `follower` (which goes on reading until the topic's end); the caller
    /// stops it either way.
    pub async fn take_over(&self, follower: &mut Follower, state: &Mutex<FollowState>) -> Outcome {
        // Followers that know each other claim in name order (see `Follower::until_takeover`).
        // One that has followed for a takeover time and knows no other would have heard any
        // (followers announce themselves every heartbeat, and one that does not hear even its
        // own announcements does not take over): it is the only one and claims at once, which
        // is always so after a silence. Only a hand-over can come sooner after a start than
        // peers are heard: then it pauses at random first, listening, so that followers
        // answering it together rarely claim together.
        let alone = follower.following_for() >= self.takeover_after;
        let spread = match follower.knows_peers(self.takeover_after) || alone {
            true => Duration::ZERO,
            false => Duration::from_millis(rand::rng().random_range(0..=self.heartbeat_ms / 2)),
        };
        match follower.heard_from_another_within(spread, state).await {
            Ok(false) => {}
            Ok(true) => return self.lost("another instance spoke up first", Duration::ZERO),
            Err(e) => return self.lost(&format!("following failed: {e}"), Duration::ZERO),
        }
        let claiming = Instant::now();
        let heartbeats = match self.claim().await {
            Ok(h) => h,
            Err(HeartbeatError::Fenced(e)) => {
                tracing::info!(error = %e, "another instance claimed the role first; following it");
                return self.lost(
                    "another instance claimed the role first",
                    self.takeover_after,
                );
            }
            Err(HeartbeatError::Failed(e)) => {
                tracing::warn!(error = %e, "could not claim the role; following on");
                let retry = Duration::from_millis(self.heartbeat_ms);
                return self.lost(&format!("claiming failed: {e}"), retry);
            }
        };
        let claim_ms = claiming.elapsed().as_millis() as u64;
        // Fencing the old active's publisher, then reading all it ever committed.
        let fencing = Instant::now();
        let fenced = {
            let (kafka, ids) = (
                self.kafka.clone(),
                lane_ids(&self.transactional_id).to_vec(),
            );
            let bound = self.takeover_after * 4;
            tokio::task::spawn_blocking(move || fence_publishers(&kafka, &ids, bound))
                .await
                .expect("fencing does not panic")
        };
        let fence_ms = fencing.elapsed().as_millis() as u64;
        let catching_up = Instant::now();
        let caught_up = match fenced {
            Ok(()) => follower.catch_up(CATCH_UP_BOUND, state).await,
            Err(e) => Err(StandbyError::Kafka(e.to_string())),
        };
        if let Err(e) = caught_up {
            heartbeats.stop_calls();
            tracing::warn!(error = %e, "taking over failed; following again");
            return self.lost(&format!("taking over failed: {e}"), self.takeover_after);
        }
        // Fencing and catching up may have taken most of the lease: renewed (and still ours?)
        // before the first call.
        let beat = heartbeats.clone();
        match tokio::task::spawn_blocking(move || beat.beat(Beat::Alive))
            .await
            .expect("a heartbeat does not panic")
        {
            Ok(_) => {}
            Err(e) => {
                heartbeats.stop_calls();
                return self.lost(
                    &format!("lost the role while taking over: {e}"),
                    self.takeover_after,
                );
            }
        }
        Outcome::Won {
            heartbeats,
            claim_ms,
            fence_ms,
            catch_up_ms: catching_up.elapsed().as_millis() as u64,
        }
    }

    /// Claims the role, then confirms the claim half a heartbeat later: of claimants that
    /// overlapped only the one initialised last can commit both, before it touches anything.
    async fn claim(&self) -> Result<Arc<Heartbeats>, HeartbeatError> {
        let (kafka, id, topic, instance, lease) = (
            self.kafka.clone(),
            self.transactional_id.clone(),
            self.heartbeat_topic.to_owned(),
            self.instance.to_owned(),
            self.lease.clone(),
        );
        let (sdkappid, bound) = (self.sdkappid, self.takeover_after * 2);
        let claimed = tokio::task::spawn_blocking(move || {
            Heartbeats::claim(&kafka, &id, &topic, sdkappid, &instance, lease, bound)
        })
        .await
        .expect("claiming does not panic")?;
        tokio::time::sleep(Duration::from_millis(self.heartbeat_ms / 2)).await;
        let heartbeats = Arc::new(claimed);
        let confirm = heartbeats.clone();
        tokio::task::spawn_blocking(move || confirm.beat(Beat::Alive))
            .await
            .expect("a heartbeat does not panic")?;
        Ok(heartbeats)
    }

    fn lost(&self, why: &str, wait: Duration) -> Outcome {
        Outcome::Lost {
            why: why.to_owned(),
            eligible_at: Instant::now() + wait,
        }
    }
}

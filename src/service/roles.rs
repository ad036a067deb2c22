//! `[standby]`: the roles in turn. Follow the topic; when the active falls silent (or hands
//! over), claim the role, fence the old active's publisher, read the topic to its end, and
//! sweep and publish as the active, renewing the lease with each committed heartbeat; when
//! fenced, cut off, or asked to hand over, stand down (drop what never reached the topic) and
//! follow again. The HTTP endpoints and the metrics live across the roles.

use super::{http, notify, run_alone, RunOptions, ServiceError, Shared};
use crate::config::Config;
use crate::im::CallLease;
use crate::metrics::{KindLabel, Metrics};
use crate::publish::kafka::KafkaSink;
use crate::standby::follow::{FollowEnd, FollowState, Follower};
use crate::standby::heartbeat::{self, Beat};
use crate::standby::takeover::{Claimant, Outcome};
use crate::standby::{StandbyError, StandbyStatus};
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a stop waits to say it hands over (systemd's stop timeout is 30 s).
const HANDOVER_BEAT_BOUND: Duration = Duration::from_secs(5);

/// The instance's view of itself, shared with `/standby`.
struct Roles {
    config: Config,
    instance: String,
    metrics: Arc<Metrics>,
    health: Arc<http::Health>,
    lease: Arc<CallLease>,
    heartbeat_topic: String,
    following: Mutex<FollowState>,
    status: Mutex<StandbyStatus>,
}

impl Roles {
    fn set_role(&self, role: &str) {
        if role == "follower" {
            // What the last follow phase saw is stale (the active it followed, its lag).
            *self.following.lock().unwrap_or_else(|e| e.into_inner()) = FollowState::default();
        }
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.role = role.to_owned();
        s.since = crate::model::now_millis();
        drop(s);
        self.publish_status();
        self.metrics.standby_active.set(i64::from(role == "active"));
    }

    fn publish_status(&self) {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if s.role != "active" {
            let f = self.following.lock().unwrap_or_else(|e| e.into_inner());
            s.active = f.active.clone();
            s.heartbeat_age_seconds = f.heartbeat_age;
            s.lag_events = f.lag_events;
            s.lag_seconds = f.lag_seconds;
            if s.role == "follower" {
                s.ineligible = f.ineligible.clone();
                self.health
                    .ready
                    .store(f.ineligible.is_none(), Ordering::Relaxed);
            }
        } else {
            s.active = Some(self.instance.clone());
            s.heartbeat_age_seconds = None;
            s.lag_events = 0;
            s.lag_seconds = 0.0;
        }
        *self
            .health
            .standby
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(s);
    }

    async fn record_role(&self, role: &'static str, reason: String) -> Result<(), ServiceError> {
        let store = self.open_store().await?;
        let instance = self.instance.clone();
        store
            .call(move |db| db.record_role(&instance, role, &reason))
            .await?;
        Ok(())
    }

    async fn open_store(&self) -> Result<Store, ServiceError> {
        let c = &self.config.store;
        Ok(Store::open(&c.path, Duration::from_millis(c.busy_timeout_ms)).await?)
    }
}

/// Runs this instance as one of a standby set until `shutdown`.
pub(super) async fn run(
    config: Config,
    mut options: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let s = &config.standby;
    let roles = Arc::new(Roles {
        instance: s.instance_name(),
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(http::Health::default()),
        lease: Arc::new(CallLease::new(Duration::from_millis(s.lease_ms()))),
        heartbeat_topic: s.heartbeat_topic_for(&config.kafka.topic),
        following: Mutex::default(),
        status: Mutex::new(StandbyStatus {
            instance: s.instance_name(),
            pid: std::process::id(),
            role: "follower".into(),
            since: crate::model::now_millis(),
            active: None,
            heartbeat_age_seconds: None,
            lag_events: 0,
            lag_seconds: 0.0,
            last_takeover: None,
            last_takeover_ms: None,
            last_stand_down: None,
            ineligible: None,
        }),
        config,
    });
    let http_stop = CancellationToken::new();
    let served = serve_http(&roles, &mut options, &http_stop).await;
    let result = match served {
        Ok(()) => take_turns(&roles, &mut options, &shutdown).await,
        Err(e) => Err(e),
    };
    http_stop.cancel();
    result
}

async fn serve_http(
    roles: &Roles,
    options: &mut RunOptions,
    stop: &CancellationToken,
) -> Result<(), ServiceError> {
    let listen = &roles.config.service.metrics_listen;
    if listen.is_empty() {
        return Ok(());
    }
    let addr = listen.parse().expect("validated");
    let bound = http::serve(
        addr,
        roles.metrics.clone(),
        roles.health.clone(),
        stop.clone(),
    )
    .await
    .map_err(|source| ServiceError::Metrics {
        addr: listen.clone(),
        source,
    })?;
    tracing::info!(%bound, "metrics on http://{bound}/metrics, the standby role on http://{bound}/standby");
    if let Some(f) = options.on_metrics_bound.take() {
        f(bound);
    }
    Ok(())
}

/// How an active phase ended.
enum Ended {
    Shutdown,
    Handover,
    StoodDown(&'static str, String),
}

async fn take_turns(
    roles: &Arc<Roles>,
    options: &mut RunOptions,
    shutdown: &CancellationToken,
) -> Result<(), ServiceError> {
    let config = &roles.config;
    let s = &config.standby;
    let takeover_after = Duration::from_millis(s.takeover_after_ms);
    // The events topic (and the state topic) as the active would check them, then the
    // heartbeat topic: a follower reads them from the start.
    let sink = KafkaSink::new(&config.kafka, config.im.sdkappid)?;
    while !sink.check_topic().await? {
        pause(Duration::from_secs(1), shutdown).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
    drop(sink);
    if let Err(e) = heartbeat::ensure_topic(&config.kafka, &roles.heartbeat_topic).await {
        return Err(StandbyError::Kafka(e.to_string()).into());
    }
    let mut active_config = config.clone();
    // Served across the roles by `serve_http`.
    active_config.service.metrics_listen.clear();
    options.shared = Some(Shared {
        metrics: roles.metrics.clone(),
        health: roles.health.clone(),
        lease: roles.lease.clone(),
    });
    let mut handovers = options.handovers.take();
    let mut eligible_at = Instant::now();
    let mut why_following = "started".to_owned();
    let base = config.kafka.transactional_id_for(config.im.sdkappid);
    loop {
        // Following.
        roles.lease.revoke();
        roles.set_role("follower");
        let store = roles.open_store().await?;
        let dropped = store.call(|db| db.drop_unpublished()).await?;
        if dropped > 0 {
            tracing::warn!(dropped, "dropped history rows that never reached the events topic (the active that observes those accounts next records them again)");
        }
        {
            let (instance, reason) = (roles.instance.clone(), why_following.clone());
            store
                .call(move |db| db.record_role(&instance, "follower", &reason))
                .await?;
        }
        roles.health.ready.store(true, Ordering::Relaxed);
        notify::ready(&format!("standby follower ({why_following})"));
        tracing::info!(instance = %roles.instance, reason = %why_following, "following the events topic");
        let mut follower = Follower::start(
            &config.kafka,
            &roles.heartbeat_topic,
            config.im.sdkappid,
            &roles.instance,
            Duration::from_millis(s.heartbeat_ms),
            store,
            roles.metrics.clone(),
        )
        .await?;
        let following = CancellationToken::new();
        let progress = Arc::new(AtomicI64::new(crate::model::now_millis()));
        notify::spawn_watchdog(vec![progress.clone()], following.clone());
        let reporter = spawn_status_reporter(roles.clone(), progress);
        let end = follower
            .until_takeover(takeover_after, eligible_at, shutdown, &roles.following)
            .await;
        reporter.abort();
        following.cancel();
        let why = match end {
            Ok(FollowEnd::Stopped) => {
                follower.stop().await;
                return Ok(());
            }
            Ok(FollowEnd::TakeOver(why)) => why,
            Err(StandbyError::Store(e @ StoreError::Corrupt { .. })) => {
                // Reading the same events again would fail the same way: this replica went its
                // own way and can neither follow nor take over until an operator decides.
                follower.stop().await;
                tracing::error!(error = %e, "this instance's history contradicts the events topic: it stops following and will not become the active (/readyz fails). Seed its database from another instance's (docs/OPERATIONS.md, \"Two hosts\")");
                roles.health.ready.store(false, Ordering::Relaxed);
                roles
                    .status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .ineligible = Some(e.to_string());
                roles.set_role("diverged");
                shutdown.cancelled().await;
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "following failed; starting again in a second");
                follower.stop().await;
                why_following = format!("following failed: {e}");
                pause(Duration::from_secs(1), shutdown).await;
                continue;
            }
        };

        let decided = Instant::now();
        roles.set_role("claiming");
        tracing::info!(reason = %why, "taking over");
        let claimant = Claimant {
            kafka: &config.kafka,
            transactional_id: base.clone(),
            heartbeat_topic: &roles.heartbeat_topic,
            sdkappid: config.im.sdkappid,
            instance: &roles.instance,
            lease: roles.lease.clone(),
            heartbeat_ms: s.heartbeat_ms,
            takeover_after,
        };
        let outcome = tokio::select! {
            outcome = claimant.take_over(&mut follower, &roles.following) => outcome,
            _ = shutdown.cancelled() => {
                follower.stop().await;
                return Ok(());
            }
        };
        // Its readers feed nothing from here on: they close on their own time, not the
        // takeover's.
        tokio::spawn(follower.stop());
        let (heartbeats, claim_ms, fence_ms, catch_up_ms) = match outcome {
            Outcome::Won {
                heartbeats,
                claim_ms,
                fence_ms,
                catch_up_ms,
            } => (heartbeats, claim_ms, fence_ms, catch_up_ms),
            Outcome::Lost {
                why,
                eligible_at: at,
            } => {
                why_following = why;
                eligible_at = at;
                continue;
            }
        };
        roles.record_role("active", why.clone()).await?;

        // Active. Heartbeats go on until the run (with its last publishing) ended.
        let active_stop = shutdown.child_token();
        let beating = CancellationToken::new();
        let keeper = tokio::spawn(heartbeat::keep_alive(
            heartbeats.clone(),
            Duration::from_millis(s.heartbeat_ms),
            Duration::from_millis(s.lease_ms()),
            beating.clone(),
            active_stop.clone(),
        ));
        roles.metrics.standby_takeovers.inc();
        roles
            .metrics
            .standby_last_takeover
            .set(crate::model::now_millis() as f64 / 1000.0);
        {
            let mut st = roles.status.lock().unwrap_or_else(|e| e.into_inner());
            st.last_takeover = Some(crate::model::now_millis());
            st.last_takeover_ms = Some(decided.elapsed().as_millis() as u64);
        }
        roles.set_role("active");
        tracing::info!(
            instance = %roles.instance,
            took_ms = decided.elapsed().as_millis() as u64,
            claim_ms,
            fence_ms,
            catch_up_ms,
            "this instance is the active: sweeping and publishing"
        );
        let mut handover = false;
        let mut stopping = false;
        // A publisher fenced while the heartbeats still commit (a claimant that lost the
        // heartbeat id but fenced the publisher's late) must not leave an active that calls IM
        // and publishes nothing: it stands down, and whoever holds the ids goes on.
        let mut publisher_fenced = false;
        let mut fence_check = tokio::time::interval(Duration::from_millis(s.heartbeat_ms));
        let ran = {
            let run = run_alone(active_config.clone(), options, &active_stop);
            tokio::pin!(run);
            loop {
                tokio::select! {
                    ran = &mut run => break ran,
                    _ = fence_check.tick(), if !stopping && !publisher_fenced => {
                        if roles.health.publisher_fenced() {
                            publisher_fenced = true;
                            heartbeats.stop_calls();
                            active_stop.cancel();
                        }
                    }
                    _ = active_stop.cancelled(), if !stopping => {
                        // Publishing what it has; no longer the active for anyone asking.
                        stopping = true;
                        roles.set_role("stopping");
                    }
                    _ = shutdown.cancelled(), if !handover => {
                        // No more calls; what was observed is published, then handed over.
                        heartbeats.stop_calls();
                        handover = true;
                    }
                    Some(()) = recv(&mut handovers), if !handover => {
                        tracing::info!("hand-over asked for: no more IM calls; publishing what was observed, then handing over");
                        heartbeats.stop_calls();
                        handover = true;
                        active_stop.cancel();
                    }
                }
            }
        };
        active_stop.cancel();
        beating.cancel();
        // This run's publisher health says nothing about the next role (a fenced one would
        // keep a follower unready, or stand the next active down at once).
        roles.health.set_publisher(None);
        let stood_down = keeper.await.unwrap_or(None);
        heartbeats.stop_calls();
        let ended = match (stood_down, &ran) {
            (Some((kind, why)), _) => Ended::StoodDown(kind, why),
            (None, _) if publisher_fenced => Ended::StoodDown(
                "fenced",
                "its publisher was fenced by another instance while its heartbeats still committed"
                    .into(),
            ),
            (None, Err(e)) if e.is_configuration() => return ran,
            (None, Err(e)) => Ended::StoodDown("error", e.to_string()),
            (None, Ok(())) if shutdown.is_cancelled() => Ended::Shutdown,
            (None, Ok(())) if handover => Ended::Handover,
            (None, Ok(())) => Ended::StoodDown("error", "the active stopped by itself".into()),
        };
        match ended {
            Ended::Shutdown | Ended::Handover => {
                // Everything the publisher could flush is on the topic: a follower may go now.
                // Bounded: a beat abandoned to an unreachable coordinator may hold the producer.
                let h = heartbeats.clone();
                let said = tokio::time::timeout(
                    HANDOVER_BEAT_BOUND,
                    tokio::task::spawn_blocking(move || h.beat(Beat::Handover)),
                )
                .await;
                match said {
                    Ok(Ok(Ok(_))) => tracing::info!("handed over: a follower takes over now"),
                    _ => tracing::warn!("the hand-over could not be said; a follower takes over after standby.takeover_after_ms"),
                }
                roles
                    .metrics
                    .standby_stand_downs
                    .get_or_create(&KindLabel {
                        kind: "handover".into(),
                    })
                    .inc();
                if matches!(ended, Ended::Shutdown) {
                    return Ok(());
                }
                // Give the followers the first turn.
                why_following = "handed over".into();
                eligible_at = Instant::now() + 2 * takeover_after;
            }
            Ended::StoodDown(kind, why) => {
                tracing::warn!(reason = %why, "standing down: no longer the active");
                roles
                    .metrics
                    .standby_stand_downs
                    .get_or_create(&KindLabel { kind: kind.into() })
                    .inc();
                roles
                    .status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_stand_down = Some(why.clone());
                why_following = format!("stood down: {why}");
                eligible_at = Instant::now();
            }
        }
    }
}

/// Keeps `/standby` and the follower's watchdog fresh while following.
fn spawn_status_reporter(
    roles: Arc<Roles>,
    progress: Arc<AtomicI64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            roles.publish_status();
            progress.store(crate::model::now_millis(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// The next hand-over request, or pending forever when nobody can send one.
async fn recv(handovers: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match handovers {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn pause(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}

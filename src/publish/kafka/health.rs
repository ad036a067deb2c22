//! What the Kafka producer learns about its brokers, told to the operator once per change rather
//! than once per librdkafka callback: an hour-long outage is two lines (down, back) plus a
//! reminder every few minutes, not tens of thousands. Authentication and TLS failures are
//! configuration problems: said once (and again every few minutes), and they fail readiness
//! until a delivery succeeds.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often an outage that goes on is mentioned again.
pub const OUTAGE_REMINDER: Duration = Duration::from_secs(300);

/// The brokers' health as the producer saw it; shared with the publisher and the readiness check.
#[derive(Debug, Default)]
pub struct BrokerHealth {
    /// Set while the brokers refuse our credentials or certificates; cleared by a delivery.
    credentials_refused: AtomicBool,
    /// Set while an event is rejected for good (too large, not authorized, no such topic);
    /// cleared by a delivery.
    rejected: AtomicBool,
    /// Set when another producer with our `transactional.id` took over; never cleared.
    fenced: AtomicBool,
    /// Set while the topic and the database disagree about what was published (exactly-once
    /// mode): publishing is held until an operator decides.
    held: AtomicBool,
    /// Set while the exactly-once read-back fails (no READ on the topic, a tail it cannot read
    /// in time): nothing is sent meanwhile.
    read_back_failing: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    down_since: Option<Instant>,
    reminded: Option<Instant>,
    /// When refused credentials were last reported: librdkafka reports them at every
    /// reconnection, with timings in the text, so repeats are reminders at most.
    refused_reported: Option<Instant>,
    /// When a failing read-back was last reported.
    read_back_reported: Option<Instant>,
}

impl BrokerHealth {
    /// Whether the brokers currently refuse the configured credentials or TLS settings.
    pub fn credentials_refused(&self) -> bool {
        self.credentials_refused.load(Ordering::Relaxed)
    }

    /// Whether readiness should fail: credentials refused, an event rejected for good, or
    /// fenced by another daemon.
    pub fn blocks_readiness(&self) -> bool {
        self.credentials_refused()
            || self.rejected.load(Ordering::Relaxed)
            || self.fenced.load(Ordering::Relaxed)
            || self.held.load(Ordering::Relaxed)
            || self.read_back_failing.load(Ordering::Relaxed)
    }

    /// Records a failed read-back: said at WARN when it starts and every few minutes while it
    /// goes on, and readiness fails meanwhile.
    pub fn read_back_failed(&self, topic: &str, error: &dyn std::fmt::Display) {
        let news = !self.read_back_failing.swap(true, Ordering::Relaxed);
        let mut s = self.lock();
        let now = Instant::now();
        if news
            || s.read_back_reported
                .is_none_or(|r| now - r >= OUTAGE_REMINDER)
        {
            s.read_back_reported = Some(now);
            tracing::warn!(topic, error = %error, "reading back the events topic failed: nothing is sent until it succeeds (the daemon needs READ on the topic; a long tail of aborted transactions takes longer to read); trying again");
        }
    }

    /// Records a read-back that succeeded.
    pub fn read_back_succeeded(&self) {
        if self.read_back_failing.swap(false, Ordering::Relaxed) {
            tracing::info!("the events topic was read back; publishing resumes");
            self.lock().read_back_reported = None;
        }
    }

    /// Records whether publishing is held because the topic and the database disagree; returns
    /// whether that is news.
    pub fn set_held(&self, held: bool) -> bool {
        self.held.swap(held, Ordering::Relaxed) != held
    }

    /// Whether publishing is held because the topic and the database disagree.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Records that another producer with our `transactional.id` took over: readiness fails
    /// for good.
    pub fn fenced(&self) {
        self.fenced.store(true, Ordering::Relaxed);
    }

    /// Whether another producer with our `transactional.id` took over.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Records a final rejection; returns whether it is news (not already reported).
    pub fn rejected(&self, error: &crate::publish::DeliveryError) -> bool {
        debug_assert!(error.is_final());
        !self.rejected.swap(true, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called for every librdkafka error callback.
    fn on_error(&self, brokers: &str, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        tracing::debug!(brokers, ?code, reason, "librdkafka error");
        match code {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                let mut s = self.lock();
                let now = Instant::now();
                match s.down_since {
                    None => {
                        s.down_since = Some(now);
                        s.reminded = Some(now);
                        tracing::warn!(brokers, "Kafka brokers are unreachable; events wait in the outbox until they are back");
                    }
                    Some(since) if s.reminded.is_none_or(|r| now - r >= OUTAGE_REMINDER) => {
                        s.reminded = Some(now);
                        tracing::warn!(
                            brokers,
                            down_for_secs = (now - since).as_secs(),
                            "Kafka brokers are still unreachable; events wait in the outbox"
                        );
                    }
                    Some(_) => {}
                }
            }
            Some(
                RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL,
            ) => {
                self.credentials_refused.store(true, Ordering::Relaxed);
                let mut s = self.lock();
                let now = Instant::now();
                if s.refused_reported
                    .is_none_or(|r| now - r >= OUTAGE_REMINDER)
                {
                    s.refused_reported = Some(now);
                    // librdkafka's reason names the broker and the mechanism; it never holds the
                    // password, which librdkafka does not put in messages.
                    tracing::error!(brokers, reason, "Kafka refused the connection: check kafka.properties (security.protocol, sasl.*, ssl.*); events wait in the outbox");
                }
            }
            _ => {}
        }
    }

    /// Called when a delivery succeeded: the brokers are reachable and accept us. Returns how
    /// long they had been unreachable, if they had.
    pub fn delivered(&self) -> Option<Duration> {
        if self.rejected.swap(false, Ordering::Relaxed) {
            tracing::info!("Kafka accepts events again after a rejection");
        }
        if self.credentials_refused.swap(false, Ordering::Relaxed) {
            tracing::info!("Kafka accepts the configured credentials again");
            self.lock().refused_reported = None;
        }
        let mut s = self.lock();
        let since = s.down_since.take()?;
        s.reminded = None;
        Some(since.elapsed())
    }
}

/// The producer's librdkafka context: error callbacks go to [`BrokerHealth`], librdkafka's own
/// log lines to `debug` (its errors arrive through the error callback as well).
#[derive(Debug, Clone)]
pub struct ProducerHealthContext {
    /// Where error callbacks go.
    pub health: Arc<BrokerHealth>,
    /// The configured bootstrap servers, named in log lines.
    pub brokers: String,
}

/// Whether a librdkafka log line reports this producer fenced. Its wordings: "fenced by a newer
/// instance" (the transaction calls), "fenced by newer producer instance" (a produce request met
/// the new epoch first), and every fatal transaction error names its code, `_FENCED`.
fn is_fencing(message: &str) -> bool {
    (message.contains("fenced by") && message.contains("newer")) || message.contains("(_FENCED)")
}

impl ClientContext for ProducerHealthContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            // Fencing is the exactly-once sink's to report, once, with what it means.
            _ if is_fencing(message) => {
                tracing::debug!(fac, message, "librdkafka")
            }
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(fac, message, "librdkafka")
            }
            // The gapless guarantee is set on purpose (see kafka.rs); librdkafka calls it
            // experimental at every start, which an operator can do nothing about.
            RDKafkaLogLevel::Warning
                if fac.starts_with("CONF") && !message.contains("enable.gapless.guarantee") =>
            {
                tracing::warn!(fac, message, "librdkafka")
            }
            _ => tracing::debug!(fac, message, "librdkafka"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.health.on_error(&self.brokers, &error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::is_fencing;

    #[test]
    fn every_wording_of_fencing_in_librdkafka_2_12_is_recognised() {
        for message in [
            "Fatal transaction error: Failed to end transaction: Local: This instance has been fenced by a newer instance (_FENCED)",
            "Fatal transaction error: ProduceRequest for presence [1] with 3 message(s) failed: Broker: Producer attempted an operation with an old epoch (broker 2 PID{Id:1,Epoch:0}, base seq 0): transactional producer fenced by newer producer instance (_FENCED)",
            "Fatal transaction error: Producer fenced by newer instance: Broker: There is a newer producer with the same transactionalId which fences the current one (_FENCED)",
            "Fatal error: Local: This instance has been fenced by a newer instance: Failed to add partitions to transaction",
        ] {
            assert!(is_fencing(message), "{message}");
        }
        assert!(!is_fencing(
            "Fatal transaction error: Failed to find transaction coordinator: Broker: Transactional Id authorization failed (TRANSACTIONAL_ID_AUTHORIZATION_FAILED)"
        ));
    }
}

//! systemd notifications (READY, STATUS, STOPPING, WATCHDOG). All are no-ops outside systemd.

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Tells systemd the daemon is ready.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Sets the status line `systemctl status` shows.
pub fn status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

/// Asks systemd to wait `longer` for READY than its start timeout (a long schema migration).
pub fn extend_start_timeout(longer: Duration) {
    let usec = u32::try_from(longer.as_micros()).unwrap_or(u32::MAX);
    let _ = sd_notify::notify(false, &[NotifyState::ExtendTimeoutUsec(usec)]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(
        false,
        &[NotifyState::Stopping, NotifyState::Status("stopping")],
    );
}

/// When `WatchdogSec=` is set, pings systemd only while the newest of `progress` (Unix ms of the
/// last sign of life from the scheduler, the sweep, or a deliberate wait for IM) is recent, so a
/// hung sweep trips the watchdog and a patient one does not.
pub fn spawn_watchdog(progress: Vec<Arc<AtomicI64>>, shutdown: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let timeout = Duration::from_micros(usec);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(timeout / 3) => {}
                _ = shutdown.cancelled() => return,
            }
            let newest = progress
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            let idle_ms = crate::model::now_millis() - newest;
            if idle_ms < timeout.as_millis() as i64 {
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            } else {
                tracing::error!(
                    idle_ms,
                    "no sweep progress; withholding the systemd watchdog ping"
                );
            }
        }
    });
}

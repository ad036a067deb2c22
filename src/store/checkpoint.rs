//! Copies the WAL back into the database file on a thread and connection of its own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, so with a
//! million accounts nearly every sweep transaction also copied its pages into the database file
//! and synced it before the sweep could go on. A PASSIVE checkpoint from another connection runs
//! beside the writer instead, on the other core, without blocking it or any reader.

use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Pokes closer together than this are served by one checkpoint: each one syncs the database
/// file, and small commits every few milliseconds should not each cost an fsync more.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Checkpoint this often even without pokes (commits from other processes, e.g. the CLI).
const IDLE_INTERVAL: Duration = Duration::from_secs(1);
/// At most one warning this often for a checkpoint that keeps failing.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Runs WAL checkpoints on a thread with its own connection.
#[derive(Debug)]
pub struct Checkpointer {
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread with its own connection to `path` (a database already in WAL mode).
    pub fn start(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(busy_timeout)?;
        // A checkpoint syncs the WAL before copying and the database after, at FULL.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let (wake, poked) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("presenced-checkpoint".into())
            .spawn(move || run(conn, poked))
            .expect("spawning the checkpoint thread");
        Ok(Checkpointer {
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// Asks for a checkpoint soon; never blocks (a poke already waiting covers this one).
    pub fn poke(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the channel ends the loop after the checkpoint in progress, if any.
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: Connection, poked: mpsc::Receiver<()>) {
    let mut last_warning: Option<Instant> = None;
    loop {
        match poked.recv_timeout(IDLE_INTERVAL) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let started = Instant::now();
        // PASSIVE copies what no reader still needs and never waits for readers or the writer;
        // it reports busy instead of failing when it could not finish.
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match result {
            Ok((wal_frames, copied)) => {
                tracing::trace!(wal_frames, copied, took = ?started.elapsed(), "checkpoint");
            }
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() >= WARN_INTERVAL) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; the WAL grows until one succeeds");
                    last_warning = Some(Instant::now());
                }
            }
        }
        std::thread::sleep(MIN_INTERVAL.saturating_sub(started.elapsed()));
    }
}

//! `Store`: a `Db` on a thread of its own, fed closures over a channel.

use super::{Db, StoreError};
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// A `Db` owned by one thread; async callers send it closures.
#[derive(Clone, Debug)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
}

impl Store {
    /// Runs `db` on a new thread.
    pub fn spawn(db: Db) -> Store {
        let (jobs, mut rx) = mpsc::channel::<Job>(64);
        std::thread::Builder::new()
            .name("presenced-store".into())
            .spawn(move || {
                let mut db = db;
                while let Some(job) = rx.blocking_recv() {
                    job(&mut db);
                }
            })
            .expect("spawning the store thread");
        Store { jobs }
    }

    /// Opens (creating and migrating) the database and runs it on its own thread, with WAL checkpoints on another.
    pub async fn open(path: &Path, busy_timeout: Duration) -> Result<Store, StoreError> {
        let path = path.to_owned();
        let db = tokio::task::spawn_blocking(move || {
            let mut db = Db::open(&path, busy_timeout)?;
            db.checkpoint_in_background(busy_timeout)?;
            Ok::<_, StoreError>(db)
        })
        .await
        .map_err(|_| StoreError::Closed)??;
        Ok(Store::spawn(db))
    }

    /// Copies the WAL back into the database file before the process exits, without waiting
    /// for readers (what an analyst still holds stays in the WAL, which is just as safe).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.call(|db| {
            db.connection()
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    {
        self.submit(f).await?.result().await
    }

    /// Queues `f` behind the jobs already queued and returns at once; the result is collected
    /// later. Jobs run in the order they were submitted.
    pub async fn submit<R, F>(&self, f: F) -> Result<Submitted<R>, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |db: &mut Db| {
                let _ = tx.send(f(db));
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Submitted(rx))
    }
}

/// A job queued on the store thread; dropping it discards the result, not the job.
#[derive(Debug)]
pub struct Submitted<R>(oneshot::Receiver<Result<R, StoreError>>);

impl<R> Submitted<R> {
    /// The job's result, once it ran.
    pub async fn result(self) -> Result<R, StoreError> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

//! The adaptive schedule's estimates (`poll_estimates`): saved in chunks while it runs, loaded
//! when it starts.

use super::*;
use crate::schedule::estimate::Estimate;
use crate::schedule::Saved;

impl Db {
    /// Writes `rows`, replacing what was saved of the same accounts.
    pub fn save_estimates(&mut self, rows: &[Saved]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO poll_estimates (user_id, observed_at, polls, changes, span_secs)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id) DO UPDATE SET observed_at = excluded.observed_at,
                     polls = excluded.polls, changes = excluded.changes,
                     span_secs = excluded.span_secs",
            )?;
            for r in rows {
                stmt.execute(params![
                    r.user_id,
                    r.observed_at,
                    f64::from(r.estimate.polls),
                    f64::from(r.estimate.changes),
                    f64::from(r.estimate.span),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every saved estimate. Values outside what the estimator can produce (a hand-edited or
    /// damaged row) are skipped: the account starts from the prior.
    pub fn load_estimates(&self) -> Result<Vec<Saved>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT user_id, observed_at, polls, changes, span_secs FROM poll_estimates",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, f64>(2)?,
                r.get::<_, f64>(3)?,
                r.get::<_, f64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (user_id, observed_at, polls, changes, span) = row?;
            let sane = [polls, changes, span]
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0)
                && changes <= polls
                && polls < 1e6;
            if sane {
                out.push(Saved {
                    user_id,
                    observed_at,
                    estimate: Estimate {
                        polls: polls as f32,
                        changes: changes as f32,
                        span: span as f32,
                    },
                });
            }
        }
        Ok(out)
    }
}

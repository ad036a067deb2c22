//! Which events of a settled batch leave the outbox. Per-account order is the rule: an event
//! never counts as delivered while an earlier event of the same account may still be re-sent.

use super::DeliveryError;
use crate::store::OutboxEvent;
use std::collections::HashSet;

/// For `replay`: of a batch's results, the events that are done: every success, except those
/// that follow a failure of the same account in this batch. Re-sending those keeps per-account order (a
/// consumer may see a duplicate, which the event id and seq let it drop; never a reordering).
pub fn acknowledged(events: &[OutboxEvent], results: &[Result<(), DeliveryError>]) -> Vec<i64> {
    let mut blocked: HashSet<&str> = HashSet::new();
    let mut ok = Vec::new();
    for (e, r) in events.iter().zip(results) {
        let user = e.record.user_id.as_str();
        if r.is_ok() && !blocked.contains(user) {
            ok.push(e.history_id);
        } else {
            blocked.insert(user);
        }
    }
    ok
}

/// Of a batch's results, the last outbox id before the first failure: everything up to it was
/// acknowledged and leaves the outbox. Later successes are sent again after the failed event,
/// which keeps per-account order; consumers drop the duplicates by event id.
pub fn published_through(
    events: &[OutboxEvent],
    results: &[Result<(), DeliveryError>],
) -> Option<i64> {
    events
        .iter()
        .zip(results)
        .take_while(|(_, r)| r.is_ok())
        .last()
        .map(|(e, _)| e.history_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::State;
    use crate::model::TransitionRecord;

    fn ev(history_id: i64, user: &str) -> OutboxEvent {
        OutboxEvent {
            history_id,
            committed_at: 0,
            record: TransitionRecord::builder(user, history_id as u64, State::Online).build(),
        }
    }

    #[test]
    fn the_publish_mark_stops_before_the_first_failure() {
        let events = vec![ev(1, "a"), ev(2, "b"), ev(3, "a"), ev(4, "b")];
        let ok = || Ok(());
        let err = || Err(DeliveryError::Timeout);
        assert_eq!(
            published_through(&events, &[ok(), ok(), err(), ok()]),
            Some(2)
        );
        assert_eq!(published_through(&events, &[err(), ok(), ok(), ok()]), None);
        assert_eq!(
            published_through(&events, &[ok(), ok(), ok(), ok()]),
            Some(4)
        );
    }

    #[test]
    fn a_failure_holds_back_later_events_of_the_same_account_only() {
        let events = vec![ev(1, "a"), ev(2, "b"), ev(3, "a"), ev(4, "b")];
        let results = vec![Err(DeliveryError::Timeout), Ok(()), Ok(()), Ok(())];
        assert_eq!(acknowledged(&events, &results), vec![2, 4]);
    }
}

//! Reading an answer never panics, whatever bytes arrive, and never invents an observation for
//! an account that was not in the answer.

use presenced::im::wire::{outcomes, parse_answer};
use presenced::im::AccountOutcome;
use proptest::prelude::*;

const VALID: &str = r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"QueryResult":[{"To_Account":"a","Status":"Online","Detail":[{"Platform":"iPhone","Status":"PushOnline"}]},{"To_Account":"b","State":"Offline"}],"ErrorList":[{"To_Account":"c","ErrorCode":70107}]}"#;

/// "nobody" is more than one byte away from every string in VALID, so no single mutation can
/// make the answer mention it.
fn asked() -> Vec<String> {
    ["a", "b", "c", "nobody"].map(String::from).to_vec()
}

fn check(bytes: &[u8]) {
    if let Ok(resp) = parse_answer(bytes) {
        let (out, _) = outcomes(&asked(), resp);
        assert_eq!(out.len(), 4);
        // "nobody" is never in the answer: it can only be a failed observation.
        assert!(matches!(out[3].1, AccountOutcome::Failed(_)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn truncated_valid_bodies(cut in 0..VALID.len()) {
        check(&VALID.as_bytes()[..cut]);
    }

    #[test]
    fn mutated_valid_bodies(pos in 0..VALID.len(), byte in any::<u8>()) {
        let mut b = VALID.as_bytes().to_vec();
        b[pos] = byte;
        check(&b);
    }

    #[test]
    fn json_shaped_garbage(s in r#"\{("[A-Za-z_]{1,12}":(-?[0-9]{1,12}|"[A-Za-z]{0,8}"|\[\]|null|\{\}),?){0,6}\}"#) {
        check(s.as_bytes());
    }
}

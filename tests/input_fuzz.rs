//! Hostile input to the configuration loader (with environment overrides) and to the watch-list
//! parser never panics; every error names where it came from (the variable, the file and line)
//! and never echoes an override's value; every id the parser accepts is valid and on its line.
//! Longer runs: PROPTEST_CASES=200000 cargo test --release --test input_fuzz.

use presenced::config::{Config, ConfigError};
use presenced::watchlist::{parse, validate_id};
use proptest::prelude::*;
use std::path::Path;

const EXAMPLE: &str = include_str!("../config.example.toml");

/// Keys the overrides aim at: real ones (each section's), plus a few that do not exist.
fn override_name() -> impl Strategy<Value = String> {
    let keys = [
        "IM__SDKAPPID",
        "IM__SECRET_KEY",
        "IM__IDENTIFIER",
        "IM__TIMEOUT_SECS",
        "IM__CALLS_PER_SECOND",
        "IM__MAX_IN_FLIGHT",
        "IM__BASE_URL",
        "SWEEP__INTERVAL_SECS",
        "SWEEP__JITTER_SECS",
        "STORE__RETENTION_DAYS",
        "STORE__BUSY_TIMEOUT_MS",
        "KAFKA__BROKERS",
        "KAFKA__BATCH_SIZE",
        "KAFKA__PROPERTIES",
        "SERVICE__LOG_FORMAT",
        "SERVICE__SHUTDOWN_TIMEOUT_SECS",
        "SINK__KIND",
        "NOPE__NOPE",
        "IM__NOPE",
        "IM",
        "IM__A__B",
    ];
    proptest::sample::select(keys.to_vec()).prop_map(|k| format!("PRESENCED_{k}"))
}

/// Values: TOML-looking scalars, arrays, tables and arbitrary text.
fn override_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        Just("nan".to_owned()),
        Just("-inf".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("[1, \"a\"]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        Just("true".to_owned()),
        "\\PC{0,40}",
        "[a-z0-9.:/_-]{0,30}",
    ]
}

fn check_config(text: &str, env: &[(String, String)]) {
    let result = Config::from_toml(text, Path::new("fuzz.toml"), env)
        .and_then(|c| c.validate("fuzz.toml").map(|()| c));
    let Err(e) = result else { return };
    let message = e.to_string();
    if let ConfigError::Env { var, .. } = &e {
        assert!(message.contains(var.as_str()), "{message}");
        let value = &env.iter().find(|(k, _)| k == var).unwrap().1;
        // A value of a few characters may coincide with words of the message; longer ones,
        // secrets among them, must not appear.
        if value.len() >= 6 {
            assert!(
                !message.contains(value.as_str()),
                "the value is echoed: {message}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn config_with_hostile_environment_overrides(
        overrides in proptest::collection::vec((override_name(), override_value()), 0..4),
    ) {
        let env: Vec<(String, String)> = overrides
            .into_iter()
            .chain([("PRESENCED_IM__SECRET_KEY".to_owned(), "fuzz-secret-key".to_owned())])
            .collect();
        check_config(EXAMPLE, &env);
    }

    #[test]
    fn config_text_with_a_line_changed(
        line in 0usize..200,
        replacement in prop_oneof![
            "\\PC{0,60}",
            "[a-z_]{1,20} = [-0-9.e+naif]{0,20}",
            "\\[[a-z_.]{0,20}\\]",
        ],
    ) {
        let text: String = EXAMPLE
            .lines()
            .enumerate()
            .map(|(i, l)| if i == line % EXAMPLE.lines().count() { replacement.clone() } else { l.to_owned() })
            .collect::<Vec<_>>()
            .join("\n");
        check_config(&text, &[]);
    }

    #[test]
    fn watch_list_files(text in "(\\PC{0,30}(\r?\n)){0,40}") {
        let parsed = parse(&text, Path::new("accounts.txt"));
        let lines: Vec<&str> = text.lines().collect();
        for id in &parsed.ids {
            prop_assert!(validate_id(id).is_ok(), "{id:?} accepted but invalid");
            prop_assert!(
                lines.iter().any(|l| l.strip_suffix('\r').unwrap_or(l) == id),
                "{id:?} is not a line of the file"
            );
        }
        for bad in &parsed.invalid {
            prop_assert!(bad.line >= 1 && bad.line <= lines.len(), "line {} of {}", bad.line, lines.len());
            prop_assert_eq!(&bad.file, Path::new("accounts.txt"));
        }
        let counted = parsed.ids.len() + parsed.invalid.len() + parsed.duplicates;
        let content = lines
            .iter()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        prop_assert_eq!(counted, content);
    }
}

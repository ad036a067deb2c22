//! config.example.toml parses, validates with a key, and documents every option there is.

use presenced::config::Config;
use std::path::Path;

#[test]
fn example_parses_and_validates() {
    let text = std::fs::read_to_string("config.example.toml").unwrap();
    let env = vec![(
        "PRESENCED_IM__SECRET_KEY".to_string(),
        "from-env".to_string(),
    )];
    let c = Config::from_toml(&text, Path::new("config.example.toml"), &env).unwrap();
    c.validate("config.example.toml").unwrap();
}

#[test]
fn example_documents_every_option() {
    let text = std::fs::read_to_string("config.example.toml").unwrap();
    let mut defaults = Config::default();
    defaults.im.base_url = Some(String::new());
    defaults.im.secret_key_file = Some("x".into());
    defaults.watch.file = Some("x".into());
    let shown: toml::Table = toml::from_str(&defaults.to_redacted_toml()).unwrap();
    let mut missing = Vec::new();
    for (section, table) in &shown {
        assert!(
            text.contains(&format!("[{section}]")),
            "section [{section}] undocumented"
        );
        for (key, value) in table.as_table().unwrap() {
            if value.is_table() {
                if !text.contains(&format!("[{section}.{key}]")) {
                    missing.push(format!("[{section}.{key}]"));
                }
                continue;
            }
            if !text
                .lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} =")))
            {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(text.contains("secret_key ="), "im.secret_key undocumented");
    assert!(missing.is_empty(), "undocumented options: {missing:?}");
}

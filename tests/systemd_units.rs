//! `systemd-analyze verify` accepts the units (with ExecStart pointed at the built binary).

use std::process::Command;

fn verify(unit_name: &str, source: &str) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(source)
        .unwrap()
        .replace("/usr/local/bin/presenced", env!("CARGO_BIN_EXE_presenced"));
    let path = dir.path().join(unit_name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (the test script installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about the host's own units are not ours to judge; ours must be clean.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(unit_name)).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "{unit_name}:\n{stderr}"
    );
}

#[test]
fn main_unit_verifies() {
    verify("presenced.service", "systemd/presenced.service");
}

#[test]
fn template_unit_verifies() {
    verify("presenced@app1.service", "systemd/presenced@.service");
}

/// Runs a systemd tool on one of our snippets inside `root`, asserting success.
fn apply_snippet(tool: &str, extra: &[&str], root: &std::path::Path, snippet: &str) {
    let out = Command::new(tool)
        .arg(format!("--root={}", root.display()))
        .args(extra)
        .arg(format!("{}/systemd/{snippet}", env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {snippet}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sysusers_and_tmpfiles_snippets_apply_to_an_empty_root() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    apply_snippet("systemd-sysusers", &[], root.path(), "presenced.sysusers");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("presenced:"), "{passwd}");
    apply_snippet(
        "systemd-tmpfiles",
        &["--create"],
        root.path(),
        "presenced.tmpfiles",
    );
    assert!(root.path().join("etc/presenced").is_dir());
}

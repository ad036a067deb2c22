//! Shell completions and the manual page come from the command-line definition: every
//! subcommand is in them, and bash accepts its script.

use std::process::Command;

fn presenced(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

const SUBCOMMANDS: [&str; 11] = [
    "run",
    "demo",
    "sim",
    "check-config",
    "users",
    "history",
    "stats",
    "migrate",
    "replay",
    "kafka",
    "standby",
];

#[test]
fn completions_name_every_subcommand_and_bash_parses_them() {
    for shell in ["bash", "zsh", "fish"] {
        let script = presenced(&["completions", shell]);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("presenced.bash");
    std::fs::write(&path, presenced(&["completions", "bash"])).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "{check:?}");
    // Completing a subcommand name in a real bash session.
    let probe = format!(
        "source {}; COMP_WORDS=(presenced che); COMP_CWORD=1; _presenced presenced che presenced; echo \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.contains("check-config"), "{reply:?} {out:?}");
}

#[test]
fn the_manual_page_is_roff_with_every_subcommand() {
    // roff writes a hyphen as "\-".
    let page = presenced(&["man"]).replace("\\-", "-");
    assert!(
        page.contains(".TH presenced 1"),
        "{}",
        &page[..page.len().min(400)]
    );
    assert!(page.contains("Tencent Cloud IM"));
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "the manual page lacks {sub}");
        // Each command's own page, which the program's page refers to.
        let own = presenced(&["man", sub]).replace("\\-", "-");
        assert!(
            own.contains(&format!(".TH presenced-{sub} 1")),
            "{sub}: {own}"
        );
    }
}

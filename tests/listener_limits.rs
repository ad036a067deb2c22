//! The daemon binary's HTTP listeners under idle and slow clients and a low descriptor limit
//! (issue 20, item 1): idle connections are closed, the callback endpoint keeps to its cap,
//! and `/metrics` answers throughout.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The daemon with its soft and hard `RLIMIT_NOFILE` at `nofile`.
fn spawn_limited(config: &std::path::Path, nofile: u64, log: &std::path::Path) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_presenced"));
    command
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    command.spawn().unwrap()
}

/// A GET of `/metrics` on a fresh connection, with a deadline: the body, or why not.
fn scrape(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    match text.starts_with("HTTP/1.1 200") {
        true => Ok(text),
        false => Err(format!("answered {:?}", text.lines().next())),
    }
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// 300 idle connections against a daemon allowed 256 descriptors: the callback endpoint keeps
/// to its cap (a quarter of the limit), `/metrics` answers all along, the idle connections are
/// closed after the idle timeout, and a fresh callback is answered.
#[test]
fn idle_connections_cannot_take_the_daemons_descriptors() {
    let sim = SimProcess::start(&["--population", "50", "--churn", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let callback_port = free_port();
    let watch = dir.path().join("watch.txt");
    std::fs::write(&watch, ids("user", 50).join("\n")).unwrap();
    let config = write_daemon_config(
        dir.path(),
        &sim.base_url(),
        &format!(
            "[sink]\nkind = \"none\"\n[watch]\nfile = \"{}\"\n[callback]\nlisten = \"127.0.0.1:{callback_port}\"\npath = \"/im/state\"\nallow_unsigned = true\nidle_timeout_secs = 2\n",
            watch.display()
        ),
    );
    let metrics_port = serve_metrics(&config);
    let log = dir.path().join("daemon.log");
    let mut daemon = Reaped(spawn_limited(&config, 256, &log));
    wait_listening(callback_port);
    wait_listening(metrics_port);

    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", callback_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let metrics = scrape(metrics_port).expect("/metrics answers beside 300 idle connections");
    let labels = "{listener=\"callback\"}";
    let cap = sample(&metrics, &format!("presenced_http_max_connections{labels}"));
    assert_eq!(cap, 64.0, "a quarter of the 256 descriptors");
    // The idle connections fill the cap; the rest wait in the backlog.
    let open = sample(
        &metrics,
        &format!("presenced_http_open_connections{labels}"),
    );
    assert_eq!(open, cap, "the gauge counts the connections held open");

    // The first accepted connections are closed by the daemon after the idle timeout.
    let mut first = idle[0].try_clone().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        first.read(&mut buf).expect("closed, not timed out"),
        0,
        "an idle connection is closed"
    );

    // A fresh callback waits behind the backlog's idle connections, each closed in turn.
    let started = Instant::now();
    let answered = loop {
        let mut s = TcpStream::connect(("127.0.0.1", callback_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = r#"{"CallbackCommand":"State.StateChange","EventTime":1,"Info":{"Action":"Login","To_Account":"user1","Reason":"Register"}}"#;
        let head = format!(
            "POST /im/state?SdkAppid=1400000000&CallbackCommand=State.StateChange HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let sent = s
            .write_all(head.as_bytes())
            .and_then(|()| s.write_all(body.as_bytes()));
        let mut text = String::new();
        if sent.is_ok() && s.read_to_string(&mut text).is_ok() && text.starts_with("HTTP/1.1 200") {
            break true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    assert!(
        answered,
        "a fresh callback was answered once idle connections were closed"
    );
    scrape(metrics_port).expect("/metrics still answers");
    drop(idle);
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
}

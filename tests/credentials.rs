//! The secret key and UserSigs never reach the logs, at the most verbose level, during a run
//! full of failures; nor error messages or Debug output.

mod common;

use common::*;
use presenced::sim::Faults;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_credentials_in_trace_logs_errors_or_debug() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut texts = Vec::new();
    let secret = rt.block_on(async {
        let cfg = quiet_sim(20);
        let sim = start_sim(cfg.clone()).await;
        let control = Control::new(&sim);
        let mut im = im_config(&sim, &cfg);
        im.max_attempts = 3;
        im.timeout_secs = 0.3;
        let c = client(&im);
        texts.push(format!("{c:?}"));
        texts.push(format!("{im:?}"));
        // Every kind of failure once, then a configuration error with a wrong key.
        control
            .script(&["http_502", "truncated", "html", "70001", "60011", "70500"])
            .await;
        for _ in 0..3 {
            if let Err(e) = c.query(&ids("user", 20)).await {
                texts.push(format!("{e} {e:?}"));
            }
        }
        control
            .faults(&Faults {
                latency_ms: 1_000.0,
                ..Faults::default()
            })
            .await;
        if let Err(e) = c.query(&ids("user", 2)).await {
            texts.push(format!("{e} {e:?}"));
        }
        control.faults(&Faults::default()).await;
        let mut wrong = im.clone();
        wrong.secret_key = presenced::secret::Secret::new("wrong-key-0123456789");
        let e = client(&wrong).query(&ids("user", 1)).await.unwrap_err();
        texts.push(format!("{e} {e:?}"));
        sim.stop().await;
        cfg.secret_key.expose().to_owned()
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("retrying IM call"),
        "the run should have logged its retries:\n{logs}"
    );
    let everything = format!("{logs}\n{}", texts.join("\n"));
    for needle in [
        secret.as_str(),
        "wrong-key-0123456789",
        "usersig=",
        "eJw",
        "eJy",
        "eJx",
        "eNo",
    ] {
        assert!(
            !everything.contains(needle),
            "found {needle:?} in:\n{everything}"
        );
    }
}

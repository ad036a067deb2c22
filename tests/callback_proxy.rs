//! The TLS reverse proxy of docs/OPERATIONS.md works as written: its nginx block, with only the
//! host name, ports and certificate paths filled in, carries a signed callback over HTTPS to
//! the daemon, which answers IM's OK and counts it.

mod common;

use common::*;
use std::process::{Command, Stdio};

const TOKEN: &str = "proxy-test-token";

struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The nginx block of the operations guide, as documented.
fn documented_server_block() -> String {
    let doc = std::fs::read_to_string("docs/OPERATIONS.md").unwrap();
    let start = doc.find("```nginx\n").expect("an nginx snippet") + "```nginx\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_nginx_proxy_carries_signed_callbacks_to_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(made.success());

    let sim = SimProcess::start(&["--population", "5", "--churn", "0", "--rate", "0"]);
    let (callback_port, tls_port) = (free_port(), free_port());
    std::fs::write(d.join("watch.txt"), ids("user", 5).join("\n")).unwrap();
    let config = write_daemon_config(
        d,
        &sim.base_url(),
        &format!(
            "[sink]\nkind = \"none\"\n[watch]\nfile = \"{}\"\n[callback]\nlisten = \"127.0.0.1:{callback_port}\"\ntoken = \"{TOKEN}\"\n",
            d.join("watch.txt").display()
        ),
    );
    let metrics_port = serve_metrics(&config);
    let _daemon = Reaped(
        Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let server = documented_server_block()
        .replace(
            "listen 443 ssl;",
            &format!("listen 127.0.0.1:{tls_port} ssl;"),
        )
        .replace("presence.example.com;", "localhost;")
        .replace(
            "/etc/ssl/presence.example.com.pem",
            &cert.display().to_string(),
        )
        .replace(
            "/etc/ssl/presence.example.com.key",
            &key.display().to_string(),
        )
        .replace(
            "http://127.0.0.1:9465",
            &format!("http://127.0.0.1:{callback_port}"),
        );
    let p = d.display();
    let nginx_conf = format!(
        "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/nginx-error.log;\nevents {{}}\nhttp {{\n\
         access_log off;\nclient_body_temp_path {p}/body;\nproxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fastcgi;\nuwsgi_temp_path {p}/uwsgi;\nscgi_temp_path {p}/scgi;\n{server}}}\n"
    );
    std::fs::write(d.join("nginx.conf"), &nginx_conf).unwrap();
    let nginx = Command::new("nginx")
        .arg("-p")
        .arg(d)
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed (scripts/test.sh installs it)");
    let _nginx = Reaped(nginx);
    wait_listening(tls_port);
    wait_listening(callback_port);

    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let now = (presenced::model::now_millis() / 1000).to_string();
    let app = presenced::sim::SimConfig::default().sdkappid;
    let url = format!(
        "https://localhost:{tls_port}/im/callback?SdkAppid={app}&CallbackCommand=State.StateChange&contenttype=json&ClientIP=10.0.0.1&OptPlatform=ANDROID&Sign={}&RequestTime={now}",
        presenced::callback::sign(TOKEN, &now)
    );
    let body = serde_json::json!({
        "CallbackCommand": "State.StateChange",
        "EventTime": presenced::model::now_millis(),
        "Info": {"Action": "Login", "To_Account": "user2", "Reason": "Register"}
    });
    let r = https.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#
    );
    let get = https.get(&url).send().await.unwrap();
    assert_eq!(get.status(), 403, "only POST goes through");
    let other = https
        .post(format!("https://localhost:{tls_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        404,
        "nothing but the callback path is proxied"
    );

    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("presenced_callbacks_total")
                && l.contains("outcome=\"accepted\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

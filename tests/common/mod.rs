//! Shared helpers for the integration tests: the simulator in-process over HTTP, clients and
//! configurations pointed at it, and its control API.
#![allow(dead_code)]

use presenced::config::{Config, ImConfig, SinkKind};
use presenced::im::{ClientSettings, ImClient};
use presenced::metrics::Metrics;
use presenced::model::{PlatformStatus, State};
use presenced::sim::{self, Faults, SimConfig, SimHandle};
use std::sync::Arc;

pub async fn start_sim(config: SimConfig) -> SimHandle {
    sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// A small, quiet population with no rate limit unless a test asks for one.
pub fn quiet_sim(population: usize) -> SimConfig {
    SimConfig {
        population,
        churn_per_second: 0.0,
        online_share: 0.5,
        calls_per_second: 0.0,
        ..SimConfig::default()
    }
}

pub fn im_config(sim: &SimHandle, simcfg: &SimConfig) -> ImConfig {
    ImConfig {
        sdkappid: simcfg.sdkappid,
        identifier: simcfg.admin.clone(),
        secret_key: simcfg.secret_key.clone(),
        base_url: Some(sim.base_url()),
        backoff_initial_ms: 5,
        backoff_max_ms: 50,
        ..ImConfig::default()
    }
}

pub fn client(im: &ImConfig) -> ImClient {
    ImClient::new(
        ClientSettings::from_config(im).unwrap(),
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

/// A daemon configuration against the simulator, with a stdout-free sink and no metrics port.
pub fn daemon_config(sim: &SimHandle, simcfg: &SimConfig, db: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.im = im_config(sim, simcfg);
    c.store.path = db.to_owned();
    c.sink.kind = SinkKind::None;
    c.service.metrics_listen = String::new();
    c.sweep.interval_secs = 0.2;
    c.sweep.jitter_secs = 0.0;
    c
}

pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

pub struct Control {
    base: String,
    http: reqwest::Client,
}

impl Control {
    pub fn new(sim: &SimHandle) -> Self {
        Control {
            base: sim.base_url(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn set(&self, id: &str, platforms: &[(&str, State)]) {
        let platforms: Vec<PlatformStatus> = platforms
            .iter()
            .map(|(p, s)| PlatformStatus {
                platform: p.to_string(),
                status: *s,
            })
            .collect();
        let r = self
            .http
            .put(format!("{}control/accounts/{id}", self.base))
            .json(&serde_json::json!({ "platforms": platforms }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    pub async fn delete(&self, id: &str) {
        self.http
            .delete(format!("{}control/accounts/{id}", self.base))
            .send()
            .await
            .unwrap();
    }

    pub async fn truth(&self) -> Vec<sim::population::AccountView> {
        let v: serde_json::Value = self
            .http
            .get(format!("{}control/accounts", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(v["accounts"].clone()).unwrap()
    }

    pub async fn faults(&self, faults: &Faults) {
        let r = self
            .http
            .put(format!("{}control/faults", self.base))
            .json(faults)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    pub async fn script(&self, steps: &[&str]) {
        self.faults(&Faults {
            script: steps.iter().map(|s| s.to_string()).collect(),
            ..Faults::default()
        })
        .await;
    }

    pub async fn stats(&self) -> sim::SimStats {
        self.http
            .get(format!("{}control/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

//! presenced: watches which accounts of a Tencent Cloud IM app are online, records every
//! transition in SQLite and publishes it to Kafka.
//!
//! Modules by concern: `config`; `im` (UserSig, wire format, error codes, pacing, client);
//! `sweep` (snapshot, diff, one sweep); `store` (SQLite); `publish` (events, Kafka, stdout);
//! `service` (the daemon: scheduler, signals, systemd, metrics HTTP); `sim` (the local IM).

pub mod config;
pub mod im;
pub mod metrics;
pub mod model;
pub mod publish;
pub mod secret;
pub mod service;
pub mod sim;
pub mod store;
pub mod sweep;
pub mod watchlist;

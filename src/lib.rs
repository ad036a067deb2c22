//! presenced: watches which accounts of a Tencent Cloud IM app are online, records every
//! transition in SQLite and publishes it to Kafka.
//!
//! Modules by concern: `config`; `callback` (IM's state-change callbacks as hints); `im` (UserSig, wire format, error codes, pacing, client);
//! `sweep` (snapshot, diff, one sweep); `store` (SQLite); `publish` (events, Kafka, stdout);
//! `service` (the daemon: start, sweep loop, reload, metrics HTTP); `sim` (the local IM).
//! docs/DESIGN-NOTES.md has a map of the files and the data path.

#![warn(missing_docs)]

pub mod callback;
pub mod config;
pub mod im;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod publish;
pub mod schedule;
pub mod secret;
pub mod service;
pub mod sim;
pub mod standby;
pub mod store;
pub mod sweep;
pub mod validation;
pub mod watchlist;

/// mimalloc instead of glibc's malloc: the publisher allocates each event's records on the store
/// thread and frees them on the sending task, a cross-thread pattern on which glibc spent a third
/// of the publisher's CPU (measured in docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

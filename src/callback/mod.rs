//! IM's `State.StateChange` callbacks as hints: an endpoint that verifies and answers them, and
//! a queue of the accounts they name, which the sweeper re-queries at once (ahead of sweep
//! batches, within the same pacing) and commits like a sweep's answers. The API stays the only
//! source of truth: a callback never sets a state, and sweeps catch what callbacks miss.

pub mod config;
pub mod queue;
pub mod server;
pub mod verify;

pub use config::CallbackConfig;
pub use queue::{HintQueue, Pushed};
pub use server::{Endpoint, OK_BODY};
pub use verify::{sign, Rejection, Verifier};

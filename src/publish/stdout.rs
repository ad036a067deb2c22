//! The stdout sink: event v1 JSON lines for pipes, or short human lines for the demo.

use super::sink::{EncodeBatch, Sink};
use super::{event, DeliveryError};
use crate::store::OutboxEvent;
use std::io::Write;
use std::time::Duration;

/// How the stdout sink prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutStyle {
    /// One event v1 JSON document per line, for piping into other tools.
    JsonLines,
    /// One short human line per transition, for the demo; `initial` events are counted, not shown.
    Human,
}

/// Writes events to standard output.
#[derive(Debug, Clone, Copy)]
pub struct StdoutSink {
    /// How lines look.
    pub style: StdoutStyle,
    /// The app, named in JSON events.
    pub sdkappid: u64,
}

impl EncodeBatch for StdoutSink {
    type Encoded = Vec<u8>;

    fn encode(&self, events: &[OutboxEvent]) -> Vec<u8> {
        render(self.style, self.sdkappid, events)
    }
}

impl Sink for StdoutSink {
    type Encoder = StdoutSink;
    type Pending = Vec<Result<(), DeliveryError>>;
    type Settings = ();

    fn encoder(&self) -> StdoutSink {
        *self
    }

    fn window(&self) -> usize {
        1
    }

    /// Written at once; a slow reader at the other end of a pipe blocks a helper thread, not
    /// the runtime.
    async fn start(
        &mut self,
        events: &[OutboxEvent],
        text: Vec<u8>,
    ) -> Vec<Result<(), DeliveryError>> {
        let result = tokio::task::spawn_blocking(move || {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            out.write_all(&text)?;
            out.flush()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        .map_err(|e| DeliveryError::Io(e.to_string()));
        vec![result; events.len()]
    }

    async fn finish(
        &mut self,
        results: Vec<Result<(), DeliveryError>>,
    ) -> Vec<Result<(), DeliveryError>> {
        results
    }

    async fn flush(&self, _timeout: Duration) {}
}

fn render(style: StdoutStyle, sdkappid: u64, events: &[OutboxEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 320);
    for e in events {
        let t = &e.record;
        match style {
            StdoutStyle::JsonLines => {
                out.extend_from_slice(&event::EventV1::new(sdkappid, t).to_json());
                out.push(b'\n');
            }
            StdoutStyle::Human => {
                let Some(from) = t.from else { continue };
                let platforms: Vec<String> = t
                    .to_platforms
                    .iter()
                    .map(|p| format!("{}:{}", p.platform, p.status))
                    .collect();
                let _ = writeln!(
                    out,
                    "{}  {:<12} {:>10} -> {:<10} seq {:<4} [{}]",
                    crate::model::format_millis(t.observed_at),
                    t.user_id,
                    from.as_str(),
                    t.to.as_str(),
                    t.seq,
                    platforms.join(" ")
                );
            }
        }
    }
    out
}

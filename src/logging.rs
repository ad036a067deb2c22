//! Where the daemon's log lines go and how they look: JSON when configured; under systemd, plain
//! lines with syslog priority prefixes (`<4>` for a warning) and no timestamp of their own, so
//! that `journalctl -p warning` filters them and the journal's time is the only one; colour only
//! for a person at a terminal.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Lines for people (plain under the journal, coloured on a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

/// Swaps the running log filter (SIGHUP).
pub type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Installs the global subscriber: `filter` unless `PRESENCED_LOG` says otherwise.
pub fn init(filter: &str, format: LogFormat) -> FilterHandle {
    let filter =
        EnvFilter::try_from_env("PRESENCED_LOG").unwrap_or_else(|_| EnvFilter::new(filter));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => registry.with(layer.json()).init(),
        LogFormat::Human if stderr_is_the_journal() => registry
            .with(layer.with_ansi(false).event_format(JournalLines))
            .init(),
        LogFormat::Human => registry.with(layer.with_ansi(colour())).init(),
    }
    handle
}

/// Colour only for a person at a terminal: a pipe or a file gets plain text, and NO_COLOR turns
/// it off anywhere.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM` to its `device:inode`
/// (a child that inherited the variable but not the stream is not fooled).
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    expected.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

/// One journal line per event: `<priority>target: message fields`.
struct JournalLines;

impl<S, N> FormatEvent<S, N> for JournalLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>{}: ", event.metadata().target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

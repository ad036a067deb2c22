//! How a change was found: by a sweep, or by a re-query that one of IM's `State.StateChange`
//! callbacks asked for.

/// How a transition was found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cause {
    /// A sweep of the watch list observed it.
    #[default]
    Sweep,
    /// A re-query of the account, asked for by a callback, observed it. Boxed: most changes
    /// are a sweep's, and every transition carries a cause.
    Callback(Box<CallbackHint>),
}

impl Cause {
    /// The name used in events and the history (`sweep`, `callback`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Cause::Sweep => "sweep",
            Cause::Callback(_) => "callback",
        }
    }

    /// The callback behind the re-query, if any.
    pub fn callback(&self) -> Option<&CallbackHint> {
        match self {
            Cause::Sweep => None,
            Cause::Callback(h) => Some(h),
        }
    }
}

/// What a `State.StateChange` callback said, kept as IM sent it. It is a hint: the state
/// recorded is always what the query answered, which may differ from the callback's action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackHint {
    /// The callback's `EventTime` (ms since the epoch, IM's clock).
    pub event_time: i64,
    /// `Info.Action`: Login, Logout, Disconnect, ...
    pub action: String,
    /// `Info.Reason`: Register, Unregister, LinkClose, TimeOut, ... (absent in some callbacks).
    pub reason: Option<String>,
    /// `KickedDevice[].Platform`, in the callback's names (iOS, Android, Web, Windows, iPad,
    /// Mac, Linux), which differ from the query's (iPhone, PC, ...).
    pub kicked_devices: Vec<String>,
}

impl CallbackHint {
    /// The kicked devices as stored in SQLite (a JSON array), `None` when there are none.
    pub fn kicked_devices_json(&self) -> Option<String> {
        (!self.kicked_devices.is_empty())
            .then(|| serde_json::to_string(&self.kicked_devices).expect("strings serialize"))
    }
}

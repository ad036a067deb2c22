//! Tencent IM error codes and what a client does about each (reference, section 3).

/// What the client does with a top-level `ErrorCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Call frequency exceeded: lower the rate, retry with backoff.
    RateLimited,
    /// Server or network trouble: retry with backoff and jitter.
    Transient,
    /// UserSig expired: regenerate and retry.
    SignatureExpired,
    /// UserSig empty or invalid: regenerate once, then a configuration error.
    SignatureInvalid,
    /// Too many failed signature checks: wait at least 60 s.
    SignatureLocked,
    /// Wrong key, identifier, SDKAppID, region, allowlist: stop sweeping with one clear message.
    Configuration,
    /// The request itself was malformed: a bug in this client, never retried blindly.
    ClientBug,
    /// A code the reference does not list: retried like a transient fault, but logged as such.
    Unknown,
}

impl ErrorClass {
    /// The class of an IM error code.
    pub fn of(code: i64) -> ErrorClass {
        match code {
            60007 | 60011 | 60018 | 60019 => ErrorClass::RateLimited,
            60008 | 60013 | 60014 | 70169 | 70202 | 70500 | 90992 | 90994 | 90995 | 91000 => {
                ErrorClass::Transient
            }
            70001 => ErrorClass::SignatureExpired,
            70002 | 70003 | 70005 => ErrorClass::SignatureInvalid,
            70050 => ErrorClass::SignatureLocked,
            60004 | 60005 | 70009 | 70013 | 70014 | 60006 | 60012 | 60016 | 60017 | 60020
            | 60010 | 70403 | 90009 | 60021 | 70016 | 70020 => ErrorClass::Configuration,
            60002 | 60003 | 60015 | 90001 | 90003 | 90011 | 70206 | 70402 => ErrorClass::ClientBug,
            _ => ErrorClass::Unknown,
        }
    }

    /// The class's name, as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Transient => "transient",
            ErrorClass::SignatureExpired => "signature_expired",
            ErrorClass::SignatureInvalid => "signature_invalid",
            ErrorClass::SignatureLocked => "signature_locked",
            ErrorClass::Configuration => "configuration",
            ErrorClass::ClientBug => "client_bug",
            ErrorClass::Unknown => "unknown",
        }
    }
}

/// Per-account code in `ErrorList`: the account does not exist.
pub const ACCOUNT_NOT_FOUND: i64 = 70107;

/// A short human hint for configuration-class codes, so the one log line says what to fix.
pub fn hint(code: i64) -> &'static str {
    match code {
        60004 | 60005 | 70009 => "the secret key does not match the SDKAppID",
        70013 => "the identifier in the UserSig does not match the request",
        70014 => "the SDKAppID in the UserSig does not match the request",
        60006 | 60012 | 60016 | 60017 | 60020 => {
            "the SDKAppID is invalid, missing, disabled or its plan expired"
        }
        60010 | 70403 | 90009 => "the identifier is not an app administrator",
        60021 => "this server's IP address is not on the app's allowlist",
        70016 | 70020 => "the SDKAppID is unknown in this region: check im.region",
        70002 | 70003 | 70005 => "the UserSig is rejected as invalid even after regenerating it",
        _ => "see the Tencent IM error code table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_reference_table() {
        assert_eq!(ErrorClass::of(60011), ErrorClass::RateLimited);
        assert_eq!(ErrorClass::of(70500), ErrorClass::Transient);
        assert_eq!(ErrorClass::of(70001), ErrorClass::SignatureExpired);
        assert_eq!(ErrorClass::of(70003), ErrorClass::SignatureInvalid);
        assert_eq!(ErrorClass::of(70050), ErrorClass::SignatureLocked);
        assert_eq!(ErrorClass::of(70009), ErrorClass::Configuration);
        assert_eq!(ErrorClass::of(60021), ErrorClass::Configuration);
        assert_eq!(ErrorClass::of(90011), ErrorClass::ClientBug);
        assert_eq!(ErrorClass::of(12345), ErrorClass::Unknown);
    }
}

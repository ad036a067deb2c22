//! What a configuration section's validation reports. A leaf module, so that each section,
//! living beside the module it configures, need not import the configuration that gathers them.

/// One invalid option: its `section.key` and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `section.key`, as written in the file.
    pub key: &'static str,
    /// What is wrong, without the value when it may be a secret.
    pub message: String,
}

impl Invalid {
    /// An error for `key`.
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            key,
            message: message.into(),
        }
    }
}

/// A numeric option and its accepted range, inclusive: whatever passes can be converted and
/// multiplied without overflow or panic.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    /// `section.key`.
    pub key: &'static str,
    /// The configured value.
    pub value: f64,
    /// The smallest accepted value.
    pub min: f64,
    /// The largest accepted value.
    pub max: f64,
}

impl Range {
    /// `key` must hold `value` within `min..=max`.
    pub fn new(key: &'static str, value: f64, min: f64, max: f64) -> Self {
        Range {
            key,
            value,
            min,
            max,
        }
    }

    /// The error when the value is out of range (or not a finite number).
    pub fn check(&self) -> Result<(), Invalid> {
        let Range {
            key,
            value,
            min,
            max,
        } = *self;
        if value.is_finite() && (min..=max).contains(&value) {
            return Ok(());
        }
        Err(Invalid::new(
            key,
            format!("must be from {min} to {max}, got {value}"),
        ))
    }
}

/// A configuration section: its numeric ranges, checked first, then its other rules.
pub trait Section {
    /// Every numeric option with its range.
    fn ranges(&self) -> Vec<Range> {
        Vec::new()
    }

    /// Rules the ranges cannot express.
    fn check(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

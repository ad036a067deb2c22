//! The watch list: account ids from a file and from the `watched_accounts` table, validated and
//! de-duplicated. Invalid lines are reported with file and line; the valid rest is still used.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
/// `[watch]`: where the watched accounts come from besides the table.
pub struct WatchConfig {
    /// One account id per line; `#` comments and blank lines ignored. Used together with the
    /// table managed by `presenced users`.
    pub file: Option<PathBuf>,
}

impl crate::validation::Section for WatchConfig {}

/// The longest account id Tencent IM accepts, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 32;

/// Why an account id is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty.
    #[error("account id is empty")]
    Empty,
    /// Longer than IM allows (bytes).
    #[error("account id is {0} bytes long; at most 32 bytes of UTF-8 are allowed")]
    TooLong(usize),
    /// Holds a control character.
    #[error("account id contains a control character")]
    ControlCharacter,
    /// Starts or ends with whitespace.
    #[error("account id has leading or trailing whitespace")]
    SurroundingWhitespace,
}

/// Checks an account id against IM's rules.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong(id.len()));
    }
    if id.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter);
    }
    if id.trim() != id {
        return Err(IdError::SurroundingWhitespace);
    }
    Ok(())
}

/// One rejected line of a watch-list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLine {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line.
    pub line: usize,
    /// What is wrong with it.
    pub error: IdError,
}

impl std::fmt::Display for InvalidLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.error)
    }
}

/// Why a watch-list file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WatchListError {
    /// It could not be read.
    #[error("cannot read watch list {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The valid ids of a file in first-seen order, duplicates folded, plus every invalid line.
#[derive(Debug, Default)]
pub struct ParsedList {
    /// Valid ids, sorted and de-duplicated.
    pub ids: Vec<String>,
    /// Lines skipped, with why.
    pub invalid: Vec<InvalidLine>,
    /// Ids that appeared more than once.
    pub duplicates: usize,
}

/// Parses watch-list text: one id per line; `#` starts a comment line; blank lines are ignored.
/// A line's trailing `\r` is dropped (files written on Windows), nothing else is trimmed, so an id
/// with stray spaces is reported rather than silently changed.
pub fn parse(text: &str, file: &Path) -> ParsedList {
    let mut out = ParsedList::default();
    let mut seen = HashSet::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match validate_id(line) {
            Ok(()) => {
                if seen.insert(line) {
                    out.ids.push(line.to_owned());
                } else {
                    out.duplicates += 1;
                }
            }
            Err(error) => out.invalid.push(InvalidLine {
                file: file.to_owned(),
                line: index + 1,
                error,
            }),
        }
    }
    out
}

/// Reads a watch-list file: one id per line, `#` comments and blank lines ignored.
pub fn read_file(path: &Path) -> Result<ParsedList, WatchListError> {
    let bytes = std::fs::read(path).map_err(|source| WatchListError::Read {
        path: path.to_owned(),
        source,
    })?;
    // Invalid UTF-8 is reported per line rather than failing the whole file.
    let text = String::from_utf8_lossy(&bytes);
    let mut parsed = parse(&text, path);
    for (i, line) in text.lines().enumerate() {
        if line.contains('\u{FFFD}') {
            if let Some(pos) = parsed.ids.iter().position(|id| id == line) {
                parsed.ids.remove(pos);
                parsed.invalid.push(InvalidLine {
                    file: path.to_owned(),
                    line: i + 1,
                    error: IdError::ControlCharacter,
                });
            }
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_blanks_duplicates_and_reports_bad_lines() {
        let text = "# header\nalice\n\nbob\r\nalice\n  padded\n\u{7}bell\n0123456789012345678901234567890123\n用户\n";
        let p = parse(text, Path::new("w.txt"));
        assert_eq!(p.ids, vec!["alice", "bob", "用户"]);
        assert_eq!(p.duplicates, 1);
        let lines: Vec<usize> = p.invalid.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![6, 7, 8]);
        assert_eq!(
            p.invalid[0].to_string(),
            "w.txt:6: account id has leading or trailing whitespace"
        );
    }

    #[test]
    fn id_limits() {
        assert!(validate_id(&"a".repeat(32)).is_ok());
        assert_eq!(validate_id(&"a".repeat(33)), Err(IdError::TooLong(33)));
        // 11 three-byte characters are 33 bytes.
        assert_eq!(validate_id(&"用".repeat(11)), Err(IdError::TooLong(33)));
        assert_eq!(validate_id(""), Err(IdError::Empty));
    }
}

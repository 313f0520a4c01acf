//! What every crate of sluice shares about errors: who has to act on one
//! ([`ErrorClass`]), the error for a mistake in a component's options or
//! input ([`Invalid`]), and how an error is shown with its causes
//! ([`Report`]).
//!
//! The convention: an error that wraps another keeps it as its
//! `source()` and does not repeat its text; [`Report`] prints the chain.
//! (A few older errors, e.g. `SourceError::Io`, also put their cause's text
//! in their message; [`Report`] then shows it once.)

use std::error::Error;
use std::fmt;

/// Any error, kept as the cause of another.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The person running sluice: a bad pipeline file, bad input, state
    /// that does not fit the pipeline. Retrying the same thing fails again.
    User,
    /// Something outside sluice: a broker, a database, the network, the
    /// disk. It may work later (whether a sink retries is a separate
    /// notion, [`crate::sink::SinkError::is_retryable`]).
    External,
    /// A bug in sluice: a broken invariant, a panic.
    Internal,
}

impl ErrorClass {
    /// `user`, `external` or `internal` (for logs and metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::User => "user",
            ErrorClass::External => "external",
            ErrorClass::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors that know their [`ErrorClass`].
pub trait Classify {
    /// The class of this error, which decides how the engine reacts to it.
    fn class(&self) -> ErrorClass;
}

/// A mistake in a component's options or in its input, explained for the
/// user; always [`ErrorClass::User`]. A message about options names the
/// fields in backticks (config loading points at the first one it finds).
/// It has no cause: it is where the failure starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

impl Invalid {
    /// An error with `message` as the whole text shown to the user.
    pub fn new(message: impl Into<String>) -> Self {
        Invalid(message.into())
    }

    /// The text shown to the user.
    pub fn message(&self) -> &str {
        &self.0
    }

    /// The same error with `context` in front (`"{context}{message}"`).
    pub fn prefixed(self, context: &str) -> Self {
        Invalid(format!("{context}{}", self.0))
    }
}

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Invalid(message)
    }
}

impl From<&str> for Invalid {
    fn from(message: &str) -> Self {
        Invalid(message.to_string())
    }
}

/// For code that builds its message from an [`Invalid`] with `?` inside
/// one module.
impl From<Invalid> for String {
    fn from(e: Invalid) -> Self {
        e.0
    }
}

impl Classify for Invalid {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// Shows an error followed by its causes: `outer: cause: root cause`.
/// A cause whose text is already shown is not repeated (some errors put
/// their cause's text in their own message).
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !text.is_empty() && !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            cause = e.source();
        }
        f.write_str(&shown)
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::{Invalid, Report};

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write out.ndjson")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read in.ndjson: {source}")]
    struct EmbedsItsCause {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn report_prints_every_cause_once() {
        let io = std::io::Error::other("disk full");
        let e = Outer { source: io };
        assert_eq!(Report(&e).to_string(), "cannot write out.ndjson: disk full");
        let e = EmbedsItsCause {
            source: std::io::Error::other("no such file"),
        };
        assert_eq!(
            Report(&e).to_string(),
            "cannot read in.ndjson: no such file"
        );
    }

    #[test]
    fn invalid_keeps_its_message() {
        let e = Invalid::from("`size` must be positive").prefixed("window ");
        assert_eq!(e.to_string(), "window `size` must be positive");
        assert_eq!(String::from(e), "window `size` must be positive");
    }
}

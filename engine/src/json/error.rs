//! The error type shared by [`parse_value`](super::parse_value) and
//! [`Projection::decode`](super::Projection::decode).

/// Why a document was rejected, and where.
///
/// `offset` is the byte position in the input where the problem was
/// detected; `message` is a short, user-facing description (these end up
/// in dead-letter records). Renders as
/// `invalid JSON at byte 17: expected ':' after object key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {message}")]
pub struct JsonError {
    /// Byte offset into the input at which the error was detected.
    pub offset: usize,
    /// What went wrong, in plain words.
    pub message: &'static str,
}

impl JsonError {
    /// Creates an error at `offset`.
    pub fn new(offset: usize, message: &'static str) -> Self {
        JsonError { offset, message }
    }
}

/// The messages the reader produces, in one place so tests can refer to them.
pub(crate) mod msg {
    pub(crate) const EOF: &str = "unexpected end of input";
    pub(crate) const EXPECTED_VALUE: &str = "expected a JSON value";
    pub(crate) const INVALID_LITERAL: &str = "invalid literal (expected true, false or null)";
    pub(crate) const EXPECTED_KEY: &str = "expected '\"' to start an object key";
    pub(crate) const EXPECTED_COLON: &str = "expected ':' after object key";
    pub(crate) const EXPECTED_OBJ_SEP: &str = "expected ',' or '}' after object member";
    pub(crate) const EXPECTED_ARR_SEP: &str = "expected ',' or ']' after array element";
    pub(crate) const TRAILING_COMMA_OBJ: &str = "trailing comma in object";
    pub(crate) const TRAILING_COMMA_ARR: &str = "trailing comma in array";
    pub(crate) const INVALID_ESCAPE: &str = "invalid escape";
    pub(crate) const INVALID_UNICODE_ESCAPE: &str = "invalid \\u escape (expected 4 hex digits)";
    pub(crate) const LONE_SURROGATE: &str = "unpaired surrogate in \\u escape";
    pub(crate) const CONTROL_CHAR: &str = "unescaped control character in string";
    pub(crate) const INVALID_UTF8: &str = "invalid UTF-8 in string";
    pub(crate) const INVALID_NUMBER: &str = "invalid number";
    pub(crate) const LEADING_ZERO: &str = "invalid number (leading zero)";
    pub(crate) const NUMBER_RANGE: &str = "number out of range";
    pub(crate) const TRAILING: &str = "trailing characters after JSON value";
    pub(crate) const TOO_DEEP: &str = "nesting deeper than 128 levels";
    pub(crate) const FOUND_ARRAY: &str = "expected a JSON object, found an array";
    pub(crate) const FOUND_STRING: &str = "expected a JSON object, found a string";
    pub(crate) const FOUND_NUMBER: &str = "expected a JSON object, found a number";
    pub(crate) const FOUND_BOOL: &str = "expected a JSON object, found a boolean";
    pub(crate) const FOUND_NULL: &str = "expected a JSON object, found null";
}

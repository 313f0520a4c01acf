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
    pub const EOF: &str = "unexpected end of input";
    pub const EXPECTED_VALUE: &str = "expected a JSON value";
    pub const INVALID_LITERAL: &str = "invalid literal (expected true, false or null)";
    pub const EXPECTED_KEY: &str = "expected '\"' to start an object key";
    pub const EXPECTED_COLON: &str = "expected ':' after object key";
    pub const EXPECTED_OBJ_SEP: &str = "expected ',' or '}' after object member";
    pub const EXPECTED_ARR_SEP: &str = "expected ',' or ']' after array element";
    pub const TRAILING_COMMA_OBJ: &str = "trailing comma in object";
    pub const TRAILING_COMMA_ARR: &str = "trailing comma in array";
    pub const INVALID_ESCAPE: &str = "invalid escape";
    pub const INVALID_UNICODE_ESCAPE: &str = "invalid \\u escape (expected 4 hex digits)";
    pub const LONE_SURROGATE: &str = "unpaired surrogate in \\u escape";
    pub const CONTROL_CHAR: &str = "unescaped control character in string";
    pub const INVALID_UTF8: &str = "invalid UTF-8 in string";
    pub const INVALID_NUMBER: &str = "invalid number";
    pub const LEADING_ZERO: &str = "invalid number (leading zero)";
    pub const NUMBER_RANGE: &str = "number out of range";
    pub const TRAILING: &str = "trailing characters after JSON value";
    pub const TOO_DEEP: &str = "nesting deeper than 128 levels";
    pub const FOUND_ARRAY: &str = "expected a JSON object, found an array";
    pub const FOUND_STRING: &str = "expected a JSON object, found a string";
    pub const FOUND_NUMBER: &str = "expected a JSON object, found a number";
    pub const FOUND_BOOL: &str = "expected a JSON object, found a boolean";
    pub const FOUND_NULL: &str = "expected a JSON object, found null";
}

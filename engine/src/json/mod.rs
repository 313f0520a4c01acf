//! JSON reading and writing for events — the engine's hot path.
//!
//! * [`parse_value`] parses a whole document into a [`Value`](crate::Value) with a strict
//!   RFC 8259 recursive-descent parser (depth-limited to 128 levels).
//! * [`Projection`] decodes only the fields a pipeline needs from an object
//!   document. It validates the entire input exactly like [`parse_value`]
//!   (both accept the same documents) but skips unneeded subtrees without
//!   building values; for typical events it does not allocate at all.
//! * [`write_value`], [`write_str`] and [`to_string`] render compact JSON.
//!
//! Errors are [`JsonError`]s carrying a byte offset and a message meant for
//! users, e.g. `invalid JSON at byte 17: expected ':' after object key`.
//!
//! Number model: numbers without fraction or exponent that fit in `i64` are
//! [`Value::Int`](crate::Value::Int), all others
//! [`Value::Float`](crate::Value::Float); numbers beyond the range of
//! `f64` are rejected. Duplicate object keys: the last value wins, at the
//! position of the first occurrence.

mod error;
mod parse;
mod projection;
mod read;
mod write;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use error::JsonError;
pub use parse::parse_value;
pub use projection::{Projection, Span};
pub use write::{to_string, write_str, write_value};

//! Sluice operators, one file each: `filter`, `map`, `key_by`, `dedupe` and
//! `aggregate` (all-time, tumbling, hopping and session windows), plus the
//! condition language and the aggregate functions they use.

pub mod accumulator;
pub mod aggregate;
pub mod combine;
pub mod dedupe;
pub mod expr;
pub mod filter;
pub mod fixed;
pub mod key_by;
pub mod map;
pub mod session;
pub mod window;

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod state_layout;

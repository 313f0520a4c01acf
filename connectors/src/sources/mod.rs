//! Sources.

#[cfg(feature = "files")]
pub mod file;
#[cfg(feature = "files")]
pub mod stdin;

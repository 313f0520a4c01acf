//! Sluice connectors: sources and sinks, one folder each, each behind a
//! cargo feature. Adding a connector = one folder, one line in
//! `sources/mod.rs` or `sinks/mod.rs`, one feature (see `README.md`).

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod lines;
#[cfg(feature = "mongodb")]
pub mod mongo;
mod registry;
pub mod sinks;
pub mod sources;

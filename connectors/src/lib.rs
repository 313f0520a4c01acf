//! Sluice connectors: sources and sinks, one folder each, each behind a
//! cargo feature named after it. Adding a connector = one folder here, one
//! variant in the pipeline's component enums, one feature.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod lines;
#[cfg(feature = "mongodb")]
pub mod mongo;
pub mod sinks;
pub mod sources;

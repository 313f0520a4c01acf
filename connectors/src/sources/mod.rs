//! Sources.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "files")]
pub mod file;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mongodb")]
pub mod mongodb;
#[cfg(feature = "files")]
pub mod stdin;

#![warn(missing_docs)]
//! Sluice runtime core: the event model, the traits sources, operators and
//! sinks plug into, the dataflow runtime, durable state, checkpoints and
//! recovery. No vendor SDK is used here.

pub mod batch;
pub mod bearer;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod connector;
pub mod dead_letter;
pub mod decode;
pub mod decode_pool;
pub mod error;
pub mod exchange;
pub mod graph;
pub mod health;
pub mod journal;
pub mod json;
pub mod keys;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod state;
pub mod table;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod tls;
pub mod value;

pub use value::{Map, Str, Value};

//! The exchange between workers: how a record read by one worker reaches
//! the worker that owns its key group, exactly once. `runtime/cluster/`
//! wires it into a run.
//!
//! - [`wire`]: the versioned batch format: per source partition, its
//!   records (id = source, partition, offset; key group, key, event time,
//!   watermark stamp, value) and the sender's watermark (a heartbeat when
//!   there are no records), in a compact binary layout (a dozen bytes for
//!   a one-field record).
//! - [`sender`]: [`PeerSender`], one HTTP/2 (h2c) connection per peer,
//!   at most K batches unacknowledged (`send` waits: backpressure), retries
//!   with capped exponential backoff, reconnects, resolves names at each
//!   connection; a 409 stops it for good.
//! - [`server`]: [`ExchangeServer`] answers 200 only once a batch is in the
//!   receiver's inbound journal (the engine's [`journal`](crate::journal)),
//!   409 for another topology, 503 when the inbound backlog is full.
//! - [`inbound`]: the inbound journal and [`InboundReader`], which hands
//!   out each record once, with the [`marks`] and [`watermarks`] the caller
//!   checkpoints with its state.
//!
//! ## Exactly once across the exchange
//! A sender releases its input (commits a Kafka offset, acks an AMQP
//! message, truncates its journal) only after every owner answered 200 for
//! the records read from it: the records are then in the owners' journals
//! and survive their crashes. A sender that crashes replays from its last
//! release, so owners receive some records again; a receiver keeps, per
//! source partition, the high-water mark of the offsets it applied, and
//! drops a record at or below it. The marks go into the receiver's
//! checkpoint together with the state the records went into; after a crash
//! it restores both and reads its journal from the checkpoint's position,
//! and the journal is truncated only up to a durable checkpoint.
//!
//! Why not a per-sender sequence number: the same record can come from two
//! different senders. When a Kafka rebalance moves a partition from worker
//! A to worker B, B resumes at the last committed offset and resends what
//! A had already delivered, numbered in B's sequence; and a restarted
//! sender numbers its replay afresh. Only the record's position in its
//! source identifies it across senders and restarts. (Each batch still
//! carries a sender session and sequence number, for another purpose: the
//! receiver journals a sender's batches in the order they were sent, even
//! when several are in flight and one is retried, because a later batch
//! journaled first would raise the marks over the earlier one's records.)
//!
//! High-water marks need, per partition, increasing offsets from each
//! sender, which holds: a sender sends a partition's records in order, and
//! its batches are journaled in order.

pub mod inbound;
pub mod marks;
pub mod peers;
pub mod sender;
pub mod server;
pub mod watermarks;
pub mod wire;

#[cfg(test)]
mod tests;

pub use inbound::{open_inbound, Delivered, InboundLog, InboundReader};
pub use marks::InboundCheckpoint;
pub use peers::PeerAddresses;
pub use sender::{Delivery, PeerSender, PeerStatus, SenderOptions};
pub use server::{ExchangeServer, ReceiverOptions};

use crate::journal::JournalError;

/// What can go wrong on the receive side and in setting the exchange up.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Opening, reading or appending to the inbound journal failed.
    #[error("exchange inbound journal: {0}")]
    Journal(#[from] JournalError),
    /// The server could not bind its listening socket.
    #[error("cannot listen on {address} for the exchange: {source}")]
    Listen {
        /// The address it tried to listen on.
        address: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The peer addresses are misconfigured (e.g. a template without
    /// `{worker}`); the text says how.
    #[error("invalid exchange peers: {0}")]
    Peers(String),
    /// The checkpoint is older than the journal (it was truncated past it).
    #[error("the inbound journal starts at {first}, after the checkpoint's position {position}")]
    CheckpointTruncated {
        /// The journal sequence number the checkpoint resumes from.
        position: u64,
        /// The first sequence number the journal still holds.
        first: u64,
    },
    /// A journaled record does not decode as a batch.
    #[error("inbound journal record {seq} is not an exchange batch: {error}")]
    CorruptInbound {
        /// The record's sequence number in the inbound journal.
        seq: u64,
        /// Why it does not decode.
        #[source]
        error: wire::WireError,
    },
}

/// Why a batch was not delivered.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The peer refuses this worker (409): another topology signature or
    /// format version, or a stale session. Not retried.
    #[error("worker at {peer} refuses this worker's batches: {reason}")]
    Refused {
        /// The peer's address as configured.
        peer: String,
        /// The peer's answer body, or why the request could not be made.
        reason: String,
    },
    /// The sender was dropped before the peer acknowledged the batch.
    #[error("the exchange sender was closed")]
    Closed,
}

//! MongoDB plumbing shared by the `mongodb` sink and change-stream source.
//!
//! Everything that talks to a server goes through the small [`MongoClient`]
//! trait: [`DriverClient`] implements it with the official driver, and an
//! in-memory fake (tests and the `testing` feature) implements the same semantics, so the
//! decisions (fencing, dedup, error classes, change-event decoding, resume
//! positions) are tested without a `mongod`. The pure builders and parsers
//! in [`commands`] are what the driver implementation sends and reads.

mod client;
pub mod commands;
mod convert;
mod driver;
/// The in-memory fake server, for this crate's tests and (with the
/// `testing` feature) for the workspace's scenario tests.
#[cfg(any(test, feature = "testing"))]
pub mod fake;
#[cfg(test)]
mod tests;

pub use client::{
    BulkOutcome, ChangeEvents, ErrorClass, FullDocument, MongoClient, MongoError, OpError,
    WatchSpec, WriteOp,
};
pub use convert::{bson_to_json, value_to_bson};
pub use driver::DriverClient;

use sluice_engine::error::Invalid;

/// Checks a connection string the way the pipeline loader reports it.
pub fn validate_uri(uri: &str) -> Result<(), Invalid> {
    if uri.starts_with("mongodb+srv://") {
        return Err("`uri`: mongodb+srv:// (DNS seed lists) is not supported by this build (the driver is built without its DNS resolver); list the hosts instead: mongodb://host1:27017,host2:27017/?replicaSet=rs0".into());
    }
    if !uri.starts_with("mongodb://") {
        return Err(Invalid::new(format!(
            "`uri`: expected a connection string like mongodb://user:password@host:27017/?replicaSet=rs0 (usually \"${{MONGODB_URI}}\"), got `{}`",
            redact(uri)
        )));
    }
    Ok(())
}

/// The URI without its password, for messages.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &uri[..s], &uri[at + 1..]),
        _ => uri.to_string(),
    }
}

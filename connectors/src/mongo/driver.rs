//! [`MongoClient`] on the official driver. The client is created on first
//! use (parsing the URI does no I/O; the driver connects, monitors the
//! replica set and re-resolves host names by itself).

use std::time::Duration;

use mongodb::bson::{Bson, Document, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::{ChangeStreamOptions, FullDocumentType};
use mongodb::Client;
use tokio::sync::OnceCell;

use super::client::{
    BulkOutcome, ChangeEvents, ErrorClass, FullDocument, MongoClient, MongoError, WatchSpec,
    WriteOp,
};
use super::commands::{self, classify};

/// The real client: `uri` is a `mongodb://` connection string.
pub struct DriverClient {
    uri: String,
    client: OnceCell<Client>,
}

impl DriverClient {
    pub fn new(uri: &str) -> Self {
        DriverClient {
            uri: uri.to_string(),
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&Client, MongoError> {
        self.client
            .get_or_try_init(|| async {
                Client::with_uri_str(&self.uri).await.map_err(|e| {
                    MongoError::new(
                        ErrorClass::Fatal,
                        None,
                        format!("invalid uri {}: {e}", super::redact(&self.uri)),
                    )
                })
            })
            .await
    }

    async fn run(&self, database: &str, command: Document) -> Result<Document, MongoError> {
        let client = self.client().await?;
        client
            .database(database)
            .run_command(command)
            .await
            .map_err(from_driver)
    }
}

/// Classifies a driver error.
pub(super) fn from_driver(e: Error) -> MongoError {
    let labels: Vec<&str> = e.labels().iter().map(String::as_str).collect();
    let (class, code) = match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. } => (ErrorClass::Retryable, None),
        ErrorKind::Authentication { .. } | ErrorKind::InvalidArgument { .. } => {
            (ErrorClass::Fatal, None)
        }
        ErrorKind::Command(c) => (classify(c.code, &c.message, &labels), Some(c.code)),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            (ErrorClass::Retryable, Some(w.code))
        }
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            (classify(w.code, &w.message, &labels), Some(w.code))
        }
        _ => (classify(0, &e.to_string(), &labels), None),
    };
    MongoError::new(class, code, e.to_string())
}

/// A change stream on the driver.
pub struct DriverStream(ChangeStream<Document>);

impl ChangeEvents for DriverStream {
    async fn next(&mut self) -> Result<Option<Document>, MongoError> {
        self.0.next_if_any().await.map_err(from_driver)
    }
}

#[derive(serde::Deserialize)]
struct TokenDoc {
    t: ResumeToken,
}

impl MongoClient for DriverClient {
    type Stream = DriverStream;

    async fn bulk_write(
        &self,
        database: &str,
        collection: &str,
        ops: &[WriteOp],
    ) -> Result<BulkOutcome, MongoError> {
        let mut out = BulkOutcome::default();
        for (command, indices) in commands::write_commands(collection, ops) {
            let reply = self.run(database, command).await?;
            out.errors
                .extend(commands::parse_write_reply(&reply, &indices)?);
        }
        Ok(out)
    }

    async fn next_generation(&self, database: &str, collection: &str) -> Result<u64, MongoError> {
        let reply = self
            .run(database, commands::generation_command(collection))
            .await?;
        commands::parse_generation(&reply).ok_or_else(|| {
            MongoError::new(
                ErrorClass::Fatal,
                None,
                format!("unexpected reply to the generation findAndModify: {reply}"),
            )
        })
    }

    async fn record_generation_owner(
        &self,
        database: &str,
        owner: &Document,
    ) -> Result<(), MongoError> {
        let reply = self.run(database, commands::owner_command(owner)).await?;
        match commands::parse_write_reply(&reply, &[0])?
            .into_iter()
            .next()
        {
            None => Ok(()),
            Some(e) => Err(MongoError::new(
                classify(e.code, &e.message, &[]),
                Some(e.code),
                e.message,
            )),
        }
    }

    async fn watch(&self, spec: &WatchSpec) -> Result<DriverStream, MongoError> {
        let client = self.client().await?;
        let db = client.database(&spec.database);
        let full = match spec.full_document {
            FullDocument::Default => None,
            FullDocument::UpdateLookup => Some(FullDocumentType::UpdateLookup),
            FullDocument::WhenAvailable => Some(FullDocumentType::WhenAvailable),
            FullDocument::Required => Some(FullDocumentType::Required),
        };
        let token = match &spec.resume_after {
            Some(bytes) => Some(token_of(bytes)?),
            None => None,
        };
        let start = spec
            .start_at
            .filter(|_| token.is_none())
            .map(|(time, increment)| Timestamp { time, increment });
        let mut options = ChangeStreamOptions::default();
        options.full_document = full;
        options.resume_after = token;
        options.start_at_operation_time = start;
        options.batch_size = Some(spec.batch_size);
        options.max_await_time = Some(spec.max_await.max(Duration::from_millis(10)));
        let stream = match &spec.collection {
            Some(c) => {
                db.collection::<Document>(c)
                    .watch()
                    .with_options(options)
                    .await
            }
            None => db.watch().with_options(options).await,
        }
        .map_err(from_driver)?;
        Ok(DriverStream(stream.with_type::<Document>()))
    }
}

fn token_of(bytes: &[u8]) -> Result<ResumeToken, MongoError> {
    let corrupt = || {
        MongoError::new(
            ErrorClass::Fatal,
            None,
            "corrupt resume token in the stored position",
        )
    };
    let t: Bson = commands::token_from_bytes(bytes).ok_or_else(corrupt)?;
    let d = mongodb::bson::doc! { "t": t };
    mongodb::bson::from_document::<TokenDoc>(d)
        .map(|d| d.t)
        .map_err(|_| corrupt())
}

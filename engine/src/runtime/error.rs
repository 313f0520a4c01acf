//! The errors that stop a pipeline ([`RunError`]) and fail a checkpoint
//! ([`CheckpointError`]), with their class and the component they concern.
//! Each keeps what caused it as its `source()`; print them with
//! [`crate::error::Report`] to see the whole chain.

use crate::error::{Classify, ErrorClass};
use crate::operator::{BuildError, StateError};
use crate::sink::SinkError;
use crate::source::SourceError;

use super::marker::{MarkerError, Refusal};
use super::store::StoreError;

/// Errors that stop a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The exchange between workers failed (its journal, its listening
    /// address, a peer link).
    #[error("exchange between workers: {0}")]
    Exchange(String),
    /// The remote copy of the state (`[state] remote`) could not be used.
    #[error("remote state: {0}")]
    Remote(String),
    /// The pipeline's graph or options cannot run (user).
    #[error("invalid pipeline: {0}")]
    Plan(String),
    /// A transform's options cannot be built into an operator (user).
    #[error("invalid pipeline: {0}")]
    Build(#[from] BuildError),
    /// The state directory could not be created (external).
    #[error("cannot create the state directory {dir}")]
    StateDir {
        /// The state directory, as displayed to the user.
        dir: String,
        /// The I/O error creating it.
        #[source]
        source: std::io::Error,
    },
    /// The state store failed to open or restore (class from the store error).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The restored state was written for another pipeline: a different
    /// number of key groups or a transform whose state signature changed (user).
    #[error("state in {dir} does not match this pipeline: {reason}. Rebuild it with `sluice replay`, or use another [state] dir")]
    StateMismatch {
        /// The state directory, as displayed to the user.
        dir: String,
        /// What differs, e.g. the old and new key-group counts.
        reason: String,
    },
    /// The store holds less than an earlier run left traces of, and empty
    /// state was not accepted: starting would lose or repeat results (user).
    #[error("{}", describe_lost_state(.dir, .refusal))]
    StateLost {
        /// The state directory, as displayed to the user.
        dir: String,
        /// What the store restored and the traces that contradict it.
        refusal: Refusal,
    },
    /// The state-directory marker could not be read or written, or is
    /// damaged (external).
    #[error("state marker")]
    Marker(#[from] MarkerError),
    /// A source stopped with an error (class from the source error).
    #[error("source `{name}` failed")]
    Source {
        /// The source's name in the pipeline file.
        name: String,
        /// Why it stopped.
        #[source]
        error: SourceError,
    },
    /// A sink stopped with an error that is not retried (class from the
    /// sink error).
    #[error("sink `{name}` failed")]
    Sink {
        /// The sink's name in the pipeline file.
        name: String,
        /// Why it stopped.
        #[source]
        error: SinkError,
    },
    /// A checkpoint could not be made durable (class from the cause).
    #[error("checkpoint failed")]
    Checkpoint(#[source] CheckpointError),
    /// A transform refused the state restored for it (class from the
    /// state error).
    #[error("operator `{name}` cannot restore its state")]
    Restore {
        /// The transform's name in the pipeline file.
        name: String,
        /// Why the state could not be loaded.
        #[source]
        error: StateError,
    },
}

impl RunError {
    /// The source, transform or sink the error is about, if it is about one.
    pub fn component(&self) -> Option<&str> {
        match self {
            RunError::Source { name, .. }
            | RunError::Sink { name, .. }
            | RunError::Restore { name, .. } => Some(name),
            RunError::Build(e) => Some(&e.component),
            _ => None,
        }
    }
}

impl Classify for RunError {
    fn class(&self) -> ErrorClass {
        match self {
            RunError::Plan(_)
            | RunError::Build(_)
            | RunError::StateMismatch { .. }
            | RunError::StateLost { .. } => ErrorClass::User,
            RunError::StateDir { .. } | RunError::Exchange(_) | RunError::Remote(_) => {
                ErrorClass::External
            }
            RunError::Store(e) => e.class(),
            RunError::Marker(e) => e.class(),
            RunError::Source { error, .. } => error.class(),
            RunError::Sink { error, .. } => error.class(),
            RunError::Checkpoint(e) => e.class(),
            RunError::Restore { error, .. } => error.class(),
        }
    }
}

/// Why a checkpoint could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Writing the checkpoint to the state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Rewriting the state-directory marker after the checkpoint failed.
    #[error(transparent)]
    Marker(#[from] MarkerError),
    /// The task writing checkpoints is gone, so none can complete (internal).
    #[error("the checkpoint writer stopped")]
    WriterStopped,
    /// Uploading the checkpoint to the remote copy failed for good.
    #[error("uploading the checkpoint to the remote copy failed: {0}")]
    Remote(String),
    /// The processor thread panicked; its join error is the cause (internal).
    #[error("processor thread panicked")]
    ProcessorPanicked(#[source] tokio::task::JoinError),
}

impl Classify for CheckpointError {
    fn class(&self) -> ErrorClass {
        match self {
            CheckpointError::Store(e) => e.class(),
            CheckpointError::Marker(e) => e.class(),
            CheckpointError::Remote(_) => ErrorClass::External,
            CheckpointError::WriterStopped | CheckpointError::ProcessorPanicked(_) => {
                ErrorClass::Internal
            }
        }
    }
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            // State written by another build: rebuilt with `sluice replay`.
            StoreError::Format { .. } => ErrorClass::User,
            StoreError::Open { .. } | StoreError::Io(_) | StoreError::Corrupt { .. } => {
                ErrorClass::External
            }
        }
    }
}

impl Classify for MarkerError {
    fn class(&self) -> ErrorClass {
        ErrorClass::External
    }
}

fn describe_lost_state(dir: &str, r: &Refusal) -> String {
    let mut text = format!(
        "refusing to start: the state in {dir} is missing or damaged. The state store holds {}, but an earlier run left traces:\n",
        r.restored
    );
    for e in &r.evidence {
        text.push_str("  - ");
        text.push_str(e);
        text.push('\n');
    }
    text.push_str(
        "Starting from this state would lose or repeat results (sinks could be overwritten with smaller values). Options:\n  \
         - restore the state directory from a backup, or\n  \
         - rebuild the state from the sources' logs with `sluice replay <pipeline>` and point [state] dir at the result, or\n  \
         - start from the state as it is with `sluice run --accept-empty-state <pipeline>` (results before it are lost or recomputed).",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::{CheckpointError, RunError};
    use crate::error::{Classify, ErrorClass, Invalid, Report};
    use crate::operator::{BuildError, StateError};
    use crate::sink::SinkError;
    use crate::source::SourceError;

    /// `e` shows as `text`, is of `class` and concerns `component`.
    fn assert_error(e: &RunError, text: &str, class: ErrorClass, component: Option<&str>) {
        assert_eq!(Report(e).to_string(), text);
        assert_eq!(e.class(), class);
        assert_eq!(e.component(), component);
    }

    #[test]
    fn a_sink_failing_on_io_shows_the_chain_and_is_external() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let e = RunError::Sink {
            name: "totals".into(),
            error: SinkError::fatal(ErrorClass::External, "cannot open /out/totals.ndjson", io),
        };
        assert_error(
            &e,
            "sink `totals` failed: cannot open /out/totals.ndjson: permission denied",
            ErrorClass::External,
            Some("totals"),
        );
    }

    #[test]
    fn a_source_io_error_keeps_its_cause() {
        let e = RunError::Source {
            name: "orders".into(),
            error: SourceError::Io {
                context: "cannot read stdin".into(),
                source: std::io::Error::other("broken pipe"),
            },
        };
        assert_error(
            &e,
            "source `orders` failed: cannot read stdin: broken pipe",
            ErrorClass::External,
            Some("orders"),
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn bad_config_is_a_user_error() {
        let source = SourceError::Config("`path` is empty".into());
        let sink = SinkError::Fatal("relation \"totals\" does not exist".into());
        assert_eq!(source.class(), ErrorClass::User);
        assert_eq!(sink.class(), ErrorClass::User);
        let e = RunError::Build(BuildError {
            component: "w".into(),
            message: "bad window".into(),
        });
        assert_error(
            &e,
            "invalid pipeline: w: bad window",
            ErrorClass::User,
            Some("w"),
        );
        let e = Invalid::new("`size` must be positive");
        assert_eq!(e.class(), ErrorClass::User);
    }

    #[test]
    fn broken_invariants_are_internal() {
        assert_error(
            &RunError::Checkpoint(CheckpointError::WriterStopped),
            "checkpoint failed: the checkpoint writer stopped",
            ErrorClass::Internal,
            None,
        );
        let e = SinkError::Internal("sink used before restore".into());
        assert_eq!(e.class(), ErrorClass::Internal);
    }

    #[test]
    fn state_from_another_build_is_a_user_error() {
        let e = RunError::Restore {
            name: "agg".into(),
            error: StateError::Version {
                found: 3,
                expected: 2,
            },
        };
        assert_error(
            &e,
            "operator `agg` cannot restore its state: state entry has version 3, this build reads version 2",
            ErrorClass::User,
            Some("agg"),
        );
    }

    #[test]
    fn retryable_sink_errors_are_external() {
        let e = SinkError::retryable("cannot connect", std::io::Error::other("refused"));
        assert!(e.is_retryable());
        assert_eq!(e.class(), ErrorClass::External);
        assert!(SinkError::Retryable("timeout".into()).is_retryable());
        assert!(!SinkError::Fatal("bad".into()).is_retryable());
    }
}

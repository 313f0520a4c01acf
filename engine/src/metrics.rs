//! Metric names and label helpers. Every metric sluice exports is named
//! here, following `sluice_<noun>_<unit>[_total]` with the bounded label set
//! `pipeline`, `component`, `component_kind`, `error_type`. The dashboards in
//! `dashboards/` use exactly these names (a test checks it).

use metrics::Label;

/// Events a source decoded and handed to the pipeline (counter).
pub const EVENTS_IN: &str = "sluice_events_in_total";
/// Records a sink wrote (counter).
pub const EVENTS_OUT: &str = "sluice_events_out_total";
/// Bytes a source read (counter).
pub const BYTES_IN: &str = "sluice_bytes_in_total";
/// Bytes a sink wrote (counter).
pub const BYTES_OUT: &str = "sluice_bytes_out_total";
/// Errors by `error_type` (counter).
pub const ERRORS: &str = "sluice_errors_total";
/// Events sent to the dead-letter output, by `error_type` (counter).
pub const DEAD_LETTERS: &str = "sluice_dead_letters_total";
/// Events per source batch (histogram).
pub const BATCH_SIZE: &str = "sluice_batch_size_events";
/// Time a batch spends in the operators (histogram).
pub const PROCESSING_LATENCY: &str = "sluice_processing_latency_seconds";
/// Events a source is behind its input, where the input tells (gauge).
pub const SOURCE_LAG: &str = "sluice_source_lag_events";
/// Time to write and fsync a checkpoint (histogram).
pub const CHECKPOINT_DURATION: &str = "sluice_checkpoint_duration_seconds";
/// Bytes written by the last checkpoint (gauge).
pub const CHECKPOINT_SIZE: &str = "sluice_checkpoint_size_bytes";
/// Durable checkpoints (counter).
pub const CHECKPOINTS: &str = "sluice_checkpoints_total";
/// Checkpoints that could not be written (counter).
pub const CHECKPOINT_FAILURES: &str = "sluice_checkpoint_failures_total";
/// Unix time of the last durable checkpoint, refreshed while idle (gauge).
pub const CHECKPOINT_LAST_SUCCESS: &str = "sluice_checkpoint_last_success_timestamp_seconds";
/// How long the last durable checkpoint took to write and fsync (the
/// histogram `sluice_checkpoint_duration_seconds` has the distribution).
pub const CHECKPOINT_LAST_DURATION: &str = "sluice_checkpoint_last_duration_seconds";
/// The last durable epoch (gauge).
pub const CHECKPOINT_EPOCH: &str = "sluice_checkpoint_epoch";
/// The configured checkpoint interval (gauge).
pub const CHECKPOINT_INTERVAL: &str = "sluice_checkpoint_interval_seconds";
/// Keys held in an operator's state (gauge).
pub const STATE_KEYS: &str = "sluice_state_keys";
/// Bytes held in an operator's state (gauge).
pub const STATE_BYTES: &str = "sluice_state_bytes";
/// Wall clock minus a stateful operator's watermark (gauge).
pub const WATERMARK_DELAY: &str = "sluice_watermark_delay_seconds";
/// Time a sink takes to write and acknowledge an epoch (histogram).
pub const SINK_LATENCY: &str = "sluice_sink_latency_seconds";
/// Retried sink writes (counter).
pub const SINK_RETRIES: &str = "sluice_sink_retries_total";
/// Committed epochs a sink has not acknowledged yet (gauge).
pub const SINK_PENDING_EPOCHS: &str = "sluice_sink_pending_epochs";
/// 1 when `/ready` answers 200, else 0 (gauge).
pub const READY: &str = "sluice_ready";
/// Always 1, labelled with the version (gauge).
pub const BUILD_INFO: &str = "sluice_build_info";
/// This worker's id and the number of workers: always 1, labelled
/// `worker` and `workers` (gauge).
pub const WORKER_INFO: &str = "sluice_worker_info";
/// Key groups this worker owns (gauge).
pub const KEY_GROUPS_OWNED: &str = "sluice_key_groups_owned";
/// Records sent to another worker through the exchange, by `peer` (counter).
pub const EXCHANGE_SENT_RECORDS: &str = "sluice_exchange_sent_records_total";
/// Rows bound for another worker that were folded into partial results
/// (an all-time aggregate's combiner) instead of crossing one by one, by
/// `peer` (counter; the partial results count as records sent).
pub const EXCHANGE_FOLDED_ROWS: &str = "sluice_exchange_folded_rows_total";
/// Bytes of exchange batches sent, by `peer` (counter).
pub const EXCHANGE_SENT_BYTES: &str = "sluice_exchange_sent_bytes_total";
/// Exchange batches a peer acknowledged as durable, by `peer` (counter).
pub const EXCHANGE_ACKED_BATCHES: &str = "sluice_exchange_acked_batches_total";
/// Time from handing a batch to the exchange until its owner holds it
/// durably, by `peer` (histogram).
pub const EXCHANGE_DELIVERY_LATENCY: &str = "sluice_exchange_delivery_seconds";
/// Exchange batches sent and not yet acknowledged (or queued), by `peer` (gauge).
pub const EXCHANGE_IN_FLIGHT: &str = "sluice_exchange_in_flight_batches";
/// 1 while the last request to `peer` succeeded, else 0 (gauge).
pub const EXCHANGE_PEER_UP: &str = "sluice_exchange_peer_up";
/// Records received from other workers and applied (counter).
pub const EXCHANGE_RECEIVED_RECORDS: &str = "sluice_exchange_received_records_total";
/// Records received again (a sender's replay, a moved Kafka partition) and
/// dropped as already applied (counter).
pub const EXCHANGE_REPLAYED_RECORDS: &str = "sluice_exchange_replayed_records_total";
/// Exchange batches journaled and not yet covered by a checkpoint (gauge).
pub const EXCHANGE_INBOUND_BACKLOG: &str = "sluice_exchange_inbound_backlog_batches";
/// Sink writes refused by a destination because a newer writer's fence
/// was stored there (counter).
pub const SINK_FENCED_WRITES: &str = "sluice_sink_fenced_writes_total";
/// Bytes in the HTTP source's journal (gauge).
pub const JOURNAL_BYTES: &str = "sluice_journal_bytes";
/// Journal events not yet covered by a checkpoint (gauge).
pub const JOURNAL_BACKLOG: &str = "sluice_journal_backlog_events";
/// Messages a broker source received (AMQP deliveries), redelivered ones included.
pub const SOURCE_DELIVERIES: &str = "sluice_source_deliveries_total";
/// Deliveries the broker flagged as redelivered.
pub const SOURCE_REDELIVERIES: &str = "sluice_source_redeliveries_total";
/// Redelivered messages skipped because a checkpoint already holds them.
pub const SOURCE_DUPLICATES: &str = "sluice_source_duplicates_total";
/// Messages acknowledged to the broker (after the checkpoint covering them).
pub const SOURCE_ACKS: &str = "sluice_source_acks_total";
/// Connections a source had to re-establish.
pub const SOURCE_RECONNECTS: &str = "sluice_source_reconnects_total";
/// How far behind a change-stream source is: now minus the server time of
/// the last event it read (MongoDB `clusterTime`).
pub const SOURCE_LAG_SECONDS: &str = "sluice_source_lag_seconds";
/// Events a `dedupe` transform dropped as repeats of an identity it remembers.
pub const DEDUPE_DROPPED: &str = "sluice_dedupe_dropped_total";
/// Events a source is behind, as readiness counts them: events in its own
/// log not yet processed (HTTP journal end minus what the processor reached).
pub const SOURCE_BACKLOG: &str = "sluice_source_backlog_events";
/// Seconds the last start took to restore state and catch up until ready;
/// while not ready yet, the time so far.
pub const RESTORE_SECONDS: &str = "sluice_restore_seconds";
/// Connections the HTTP source holds open.
pub const HTTP_CONNECTIONS: &str = "sluice_http_connections";
/// Bytes of request bodies the HTTP source holds in memory (reserved for
/// requests in flight).
pub const HTTP_BUFFERED_BYTES: &str = "sluice_http_buffered_bytes";
/// Checkpoints uploaded to the remote copy (`[state] remote`).
pub const REMOTE_UPLOADS: &str = "sluice_remote_uploads_total";
/// Bytes uploaded to the remote copy (segments and manifests).
pub const REMOTE_UPLOAD_BYTES: &str = "sluice_remote_upload_bytes_total";
/// Seconds from a checkpoint being durable locally to its upload being
/// complete, retries included.
pub const REMOTE_UPLOAD_DURATION: &str = "sluice_remote_upload_duration_seconds";
/// Failed requests to the remote store (each is retried).
pub const REMOTE_FAILURES: &str = "sluice_remote_failures_total";
/// The last epoch whose upload completed.
pub const REMOTE_EPOCH: &str = "sluice_remote_epoch";
/// Epochs durable locally but not yet in the remote copy: 1 while a
/// checkpoint is being uploaded (a checkpoint counts only once uploaded,
/// so it never exceeds 1; a store that is down keeps it at 1).
pub const REMOTE_LAG_EPOCHS: &str = "sluice_remote_lag_epochs";
/// Starts that took state from the remote copy, by `reason`
/// (`lost_volume`, `rescale`).
pub const REMOTE_RESTORES: &str = "sluice_remote_restores_total";
/// Bytes read from the remote copy by restores.
pub const REMOTE_RESTORE_BYTES: &str = "sluice_remote_restore_bytes_total";
/// Seconds the last restore from the remote copy took.
pub const REMOTE_RESTORE_DURATION: &str = "sluice_remote_restore_duration_seconds";
/// Key groups this worker took over from other workers at its start.
pub const REMOTE_KEY_GROUPS_MOVED: &str = "sluice_remote_key_groups_moved";
/// Entries of the state a start took from the remote copy that are still
/// to be written into the state directory (0 once written; the first
/// checkpoint waits for them).
pub const REMOTE_IMPORT_ENTRIES: &str = "sluice_remote_import_entries";

/// Every metric name above, for the exporter's descriptions and the
/// dashboard consistency test.
pub const ALL: &[&str] = &[
    EVENTS_IN,
    EVENTS_OUT,
    BYTES_IN,
    BYTES_OUT,
    ERRORS,
    DEAD_LETTERS,
    BATCH_SIZE,
    PROCESSING_LATENCY,
    SOURCE_LAG,
    CHECKPOINT_DURATION,
    CHECKPOINT_SIZE,
    CHECKPOINTS,
    CHECKPOINT_FAILURES,
    CHECKPOINT_LAST_SUCCESS,
    CHECKPOINT_LAST_DURATION,
    CHECKPOINT_EPOCH,
    CHECKPOINT_INTERVAL,
    STATE_KEYS,
    STATE_BYTES,
    WATERMARK_DELAY,
    SINK_LATENCY,
    SINK_RETRIES,
    SINK_PENDING_EPOCHS,
    SINK_FENCED_WRITES,
    READY,
    BUILD_INFO,
    JOURNAL_BYTES,
    JOURNAL_BACKLOG,
    SOURCE_DELIVERIES,
    SOURCE_REDELIVERIES,
    SOURCE_DUPLICATES,
    SOURCE_ACKS,
    SOURCE_RECONNECTS,
    SOURCE_LAG_SECONDS,
    DEDUPE_DROPPED,
    HTTP_CONNECTIONS,
    HTTP_BUFFERED_BYTES,
    SOURCE_BACKLOG,
    RESTORE_SECONDS,
    REMOTE_UPLOADS,
    REMOTE_UPLOAD_BYTES,
    REMOTE_UPLOAD_DURATION,
    REMOTE_FAILURES,
    REMOTE_EPOCH,
    REMOTE_LAG_EPOCHS,
    REMOTE_RESTORES,
    REMOTE_RESTORE_BYTES,
    REMOTE_RESTORE_DURATION,
    REMOTE_KEY_GROUPS_MOVED,
    REMOTE_IMPORT_ENTRIES,
];

/// Labels identifying one component.
pub fn component_labels(pipeline: &str, component: &str, kind: &'static str) -> Vec<Label> {
    vec![
        Label::new("pipeline", pipeline.to_string()),
        Label::new("component", component.to_string()),
        Label::new("component_kind", kind),
    ]
}

/// `labels` plus an `error_type`.
pub fn with_error(labels: &[Label], error_type: &'static str) -> Vec<Label> {
    let mut out = labels.to_vec();
    out.push(Label::new("error_type", error_type));
    out
}

/// Labels for pipeline-wide metrics.
pub fn pipeline_labels(pipeline: &str) -> Vec<Label> {
    vec![Label::new("pipeline", pipeline.to_string())]
}

/// Creates the series of a pipeline at start (counters at 0) so that
/// dashboards and alerts see them before the first event, as Prometheus
/// recommends for known label sets.
pub fn register_pipeline(
    pipeline: &str,
    sources: &[String],
    transforms: &[(String, bool)],
    sinks: &[String],
) {
    let p = pipeline_labels(pipeline);
    metrics::counter!(CHECKPOINTS, p.clone()).increment(0);
    metrics::counter!(CHECKPOINT_FAILURES, p.clone()).increment(0);
    metrics::gauge!(CHECKPOINT_EPOCH, p).increment(0.0);
    for s in sources {
        let l = component_labels(pipeline, s, "source");
        metrics::counter!(EVENTS_IN, l.clone()).increment(0);
        metrics::counter!(BYTES_IN, l.clone()).increment(0);
        for e in [
            "malformed_json",
            "oversized",
            "missing_field",
            "bad_event_time",
        ] {
            metrics::counter!(
                DEAD_LETTERS,
                with_error(&component_labels(pipeline, s, "pipeline"), e)
            )
            .increment(0);
        }
    }
    for (t, stateful) in transforms {
        if *stateful {
            for e in ["missing_field", "wrong_type", "late"] {
                metrics::counter!(
                    DEAD_LETTERS,
                    with_error(&component_labels(pipeline, t, "pipeline"), e)
                )
                .increment(0);
            }
        }
    }
    for s in sinks {
        let l = component_labels(pipeline, s, "sink");
        metrics::counter!(EVENTS_OUT, l.clone()).increment(0);
        metrics::counter!(BYTES_OUT, l.clone()).increment(0);
        metrics::counter!(SINK_RETRIES, l.clone()).increment(0);
        metrics::counter!(SINK_FENCED_WRITES, l.clone()).increment(0);
        metrics::counter!(ERRORS, with_error(&l, "sink_write")).increment(0);
        metrics::gauge!(SINK_PENDING_EPOCHS, l).set(0.0);
    }
}

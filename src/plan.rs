//! From a loaded pipeline file to a runnable engine spec.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_connectors::sinks::file::{FileSink, FileSinkConfig};
use sluice_engine::cluster::{ClusterSpec, WorkerId};
use sluice_engine::connector::{ConnectorContext, SinkConfig};
use sluice_engine::decode::EventTimeSpec;
use sluice_engine::runtime::{FormerSink, PipelineSpec, SinkSpec, SourceSpec, TransformSpec};
use sluice_engine::sink::RetryPolicy;
use sluice_engine::value::parse_path;

use crate::config::Pipeline;

/// Builds a sink of the pipeline as another worker (see
/// [`SinkSpec::former`]).
fn former_sink(pipeline: &str, name: &str, state_dir: &Path, config: &SinkConfig) -> FormerSink {
    let (pipeline, name, state_dir) = (
        pipeline.to_string(),
        name.to_string(),
        state_dir.to_path_buf(),
    );
    let config = config.clone();
    Arc::new(move |worker| {
        config.build(&ConnectorContext {
            pipeline: &pipeline,
            name: &name,
            state_dir: &state_dir,
            worker,
        })
    })
}

/// Builds the engine spec. `state_dir` overrides `[state] dir`; with
/// `replay`, only the operator state moves there and sources keep reading
/// their own files (journals) from the configured directory.
pub fn to_spec(
    p: &Pipeline,
    state_dir: Option<PathBuf>,
    replay: bool,
    worker: WorkerId,
) -> anyhow::Result<PipelineSpec> {
    let source_dir = match (&state_dir, replay) {
        (Some(dir), false) => dir.clone(),
        _ => p.state_dir(),
    };
    let state_dir = state_dir.unwrap_or_else(|| p.state_dir());
    let sources = p
        .sources
        .iter()
        .map(|s| SourceSpec {
            name: s.name.clone(),
            event_time: s.event_time.as_ref().map(|e| EventTimeSpec {
                field: parse_path(&e.field),
                format: e.format,
            }),
            max_disorder: s
                .event_time
                .as_ref()
                .map_or(Duration::ZERO, |e| e.max_disorder.0),
            idle_timeout: s
                .event_time
                .as_ref()
                .and_then(|e| e.idle_timeout.map(|d| d.0)),
            max_event_bytes: s.max_event_bytes,
            source: s.config.build(&ConnectorContext {
                pipeline: &p.name,
                name: &s.name,
                state_dir: &source_dir,
                worker,
            }),
        })
        .collect();
    let transforms = p
        .transforms
        .iter()
        .map(|t| TransformSpec {
            name: t.name.clone(),
            inputs: t.inputs.clone(),
            spec: Box::new(t.spec.clone()),
        })
        .collect();
    let sinks: Vec<SinkSpec> = p
        .sinks
        .iter()
        .map(|s| SinkSpec {
            name: s.name.clone(),
            inputs: s.inputs.clone(),
            sink: s.config.build(&ConnectorContext {
                pipeline: &p.name,
                name: &s.name,
                state_dir: &state_dir,
                worker,
            }),
            former: Some(former_sink(&p.name, &s.name, &state_dir, &s.config)),
        })
        .collect();
    let dead_letter_ctx = ConnectorContext {
        pipeline: &p.name,
        name: "dead_letter",
        state_dir: &state_dir,
        worker,
    };
    let dead_letter = SinkSpec {
        name: "dead_letter".into(),
        inputs: Vec::new(),
        sink: match &p.dead_letter {
            Some(config) => config.build(&dead_letter_ctx),
            None => Box::new(FileSink::new(default_dead_letter(&state_dir))),
        },
        former: p
            .dead_letter
            .as_ref()
            .map(|config| former_sink(&p.name, "dead_letter", &state_dir, config)),
    };
    Ok(PipelineSpec {
        name: p.name.clone(),
        state_dir,
        source_dir,
        checkpoint_interval: p.checkpoint.interval.0,
        key_groups: p.state.key_groups,
        max_pending_epochs: p.checkpoint.max_pending_epochs,
        channel_capacity: 8,
        sources,
        transforms,
        sinks,
        dead_letter,
        retry: RetryPolicy::default(),
        worker,
        cluster: cluster(p, worker)?,
        remote: p.state.remote.clone(),
    })
}

/// The `[cluster]` section for `worker`: `None` for a run of one worker
/// (which runs exactly as without the section).
///
/// # Errors
/// More than one worker without `[cluster]`, or a `peers` list whose
/// length is not the number of workers.
pub fn cluster(p: &Pipeline, worker: WorkerId) -> anyhow::Result<Option<ClusterSpec>> {
    if worker.is_single() {
        return Ok(None);
    }
    let Some(section) = &p.cluster else {
        anyhow::bail!(
            "{}: {} workers need a `[cluster]` section (`listen` and `peers`) in the pipeline \
             file, so that they can reach each other; see docs/scaling.md",
            p.path.display(),
            worker.workers
        );
    };
    if let Some(n) = section.listed_peers() {
        if n != worker.workers as usize {
            anyhow::bail!(
                "{}: `[cluster] peers` lists {n} address(es) for {} workers: give one per worker",
                p.path.display(),
                worker.workers
            );
        }
    }
    Ok(Some(section.to_spec()))
}

/// Without a `[dead_letter]` section, dead letters go to
/// `<state dir>/dead_letters.ndjson`.
fn default_dead_letter(state_dir: &std::path::Path) -> FileSinkConfig {
    FileSinkConfig {
        path: state_dir.join("dead_letters.ndjson"),
        fsync: true,
        format: Default::default(),
    }
}

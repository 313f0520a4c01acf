//! Which worker this process is, among how many: `--workers`/`--worker`,
//! else `SLUICE_WORKERS`/`SLUICE_WORKER_ID`, else the ordinal that ends the
//! host name (a StatefulSet pod `sluice-2` is worker 2). Decided once at
//! start, before the pipeline file is read, so that `${SLUICE_WORKER_ID}`
//! in the file is the id in effect however it was given.

use std::fmt;

use clap::Args;
use sluice_engine::cluster::WorkerId;

/// The worker flags of `sluice run` and `sluice validate`.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct WorkerArgs {
    /// Run the pipeline as N workers, each its own sluice process (e.g. the
    /// pods of a StatefulSet); more than 1 needs a `[cluster]` section in
    /// the pipeline file (docs/scaling.md). Default: 1.
    #[arg(long, env = "SLUICE_WORKERS", value_name = "N", value_parser = parse_workers)]
    pub workers: Option<u32>,
    /// This process's worker id, 0 to N-1. Default: the number that ends
    /// the host name (`sluice-2` is worker 2; HOSTNAME, else the system's
    /// host name), or 0 when N is 1. `${SLUICE_WORKER_ID}` in the pipeline
    /// file is replaced by the id in effect.
    #[arg(long, env = "SLUICE_WORKER_ID", value_name = "I", value_parser = parse_id)]
    pub worker: Option<u32>,
}

fn parse_workers(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("the number of workers must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "`{s}` is not a number of workers: give a whole number, at least 1"
        )),
    }
}

fn parse_id(s: &str) -> Result<u32, String> {
    s.trim().parse::<u32>().map_err(|_| {
        format!("`{s}` is not a worker id: give a whole number from 0 to the number of workers - 1")
    })
}

/// Why the worker id cannot be decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerError {
    /// An id given (or read from the host name) that is not below N.
    OutOfRange { id: u32, workers: u32, from: String },
    /// More than one worker, no id given, and the host name does not end
    /// in `-<number>`.
    NoOrdinal { host: String, workers: u32 },
    /// More than one worker, no id given, and no host name at all.
    NoHostName { workers: u32 },
}

impl fmt::Display for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerError::OutOfRange { id, workers, from } => write!(
                f,
                "worker id {id} ({from}) is out of range: with {workers} worker(s) the ids are \
                 0 to {}; set --worker/SLUICE_WORKER_ID or --workers/SLUICE_WORKERS",
                workers - 1
            ),
            WorkerError::NoOrdinal { host, workers } => write!(
                f,
                "cannot tell which of the {workers} workers this is: the host name `{host}` \
                 does not end in `-<number>` (as a StatefulSet pod's `sluice-2` does); \
                 give --worker or SLUICE_WORKER_ID"
            ),
            WorkerError::NoHostName { workers } => write!(
                f,
                "cannot tell which of the {workers} workers this is: no host name \
                 (HOSTNAME is unset and the system's host name cannot be read); \
                 give --worker or SLUICE_WORKER_ID"
            ),
        }
    }
}

impl std::error::Error for WorkerError {}

/// The number ending a host name, after its last `-`: `sluice-2` -> 2,
/// `sluice-2.sluice-headless.default.svc` -> 2 (only the first label
/// counts).
pub(crate) fn ordinal(host: &str) -> Option<u32> {
    let label = host.split('.').next().unwrap_or(host);
    let (_, digits) = label.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Decides the worker: flags (or their environment variables, which clap
/// has already read into `args`) first, then the host name's ordinal
/// (asked of `host` only when N > 1 and no id was given), else worker 0 of
/// a single-worker run.
pub(crate) fn resolve(
    args: &WorkerArgs,
    host: impl FnOnce() -> Option<String>,
) -> Result<WorkerId, WorkerError> {
    let workers = args.workers.unwrap_or(1).max(1);
    let (id, from) = match args.worker {
        Some(id) => (id, "from --worker or SLUICE_WORKER_ID".to_string()),
        None if workers == 1 => (0, String::new()),
        None => match host() {
            Some(host) => match ordinal(&host) {
                Some(id) => (id, format!("from the host name `{host}`")),
                None => return Err(WorkerError::NoOrdinal { host, workers }),
            },
            None => return Err(WorkerError::NoHostName { workers }),
        },
    };
    WorkerId::new(id, workers).ok_or(WorkerError::OutOfRange { id, workers, from })
}

/// The host name: `HOSTNAME` (set in every Kubernetes pod), else the
/// system's (`/proc/sys/kernel/hostname`, `/etc/hostname`).
pub(crate) fn host_name() -> Option<String> {
    let from_env = std::env::var("HOSTNAME").ok();
    from_env
        .into_iter()
        .chain(
            ["/proc/sys/kernel/hostname", "/etc/hostname"]
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok()),
        )
        .map(|h| h.trim().to_string())
        .find(|h| !h.is_empty())
}

/// What `${NAME}` means in a pipeline file for `worker`: the id in effect
/// for `SLUICE_WORKER_ID`, N for `SLUICE_WORKERS`, else the environment.
pub(crate) fn lookup(worker: WorkerId) -> impl Fn(&str) -> Option<String> {
    move |name| match name {
        "SLUICE_WORKER_ID" => Some(worker.worker.to_string()),
        "SLUICE_WORKERS" => Some(worker.workers.to_string()),
        _ => std::env::var(name).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(workers: Option<u32>, worker: Option<u32>) -> WorkerArgs {
        WorkerArgs { workers, worker }
    }

    #[test]
    fn host_name_ordinals() {
        assert_eq!(ordinal("sluice-2"), Some(2));
        assert_eq!(ordinal("sluice-orders-10"), Some(10));
        assert_eq!(ordinal("sluice-1.sluice-headless.default.svc"), Some(1));
        assert_eq!(ordinal("sluice"), None);
        assert_eq!(ordinal("sluice-"), None);
        assert_eq!(ordinal("sluice-a2"), None);
        assert_eq!(ordinal("sluice-+2"), None);
    }

    #[test]
    fn flags_beat_the_host_name() {
        let never = || -> Option<String> { panic!("the host name was asked for") };
        assert_eq!(
            resolve(&args(Some(3), Some(1)), never),
            Ok(WorkerId::new(1, 3).unwrap())
        );
        assert_eq!(resolve(&args(None, None), never), Ok(WorkerId::SINGLE));
        assert_eq!(resolve(&args(Some(1), None), never), Ok(WorkerId::SINGLE));
        assert_eq!(
            resolve(&args(Some(3), None), || Some("sluice-2".into())),
            Ok(WorkerId::new(2, 3).unwrap())
        );
    }

    #[test]
    fn impossible_ids_are_errors() {
        let e = resolve(&args(Some(3), Some(3)), || None).unwrap_err();
        assert!(e.to_string().contains("ids are 0 to 2"), "{e}");
        let e = resolve(&args(None, Some(1)), || None).unwrap_err();
        assert!(e.to_string().contains("worker id 1"), "{e}");
        let e = resolve(&args(Some(2), None), || Some("sluice-5".into())).unwrap_err();
        assert!(e.to_string().contains("host name `sluice-5`"), "{e}");
        let e = resolve(&args(Some(2), None), || Some("laptop".into())).unwrap_err();
        assert_eq!(
            e,
            WorkerError::NoOrdinal {
                host: "laptop".into(),
                workers: 2
            }
        );
        let e = resolve(&args(Some(2), None), || None).unwrap_err();
        assert_eq!(e, WorkerError::NoHostName { workers: 2 });
        assert!(parse_workers("0").unwrap_err().contains("at least 1"));
        assert!(parse_workers("three").is_err());
        assert!(parse_id("one").unwrap_err().contains("not a worker id"));
    }

    #[test]
    fn the_file_sees_the_id_in_effect() {
        let l = lookup(WorkerId::new(2, 3).unwrap());
        assert_eq!(l("SLUICE_WORKER_ID").as_deref(), Some("2"));
        assert_eq!(l("SLUICE_WORKERS").as_deref(), Some("3"));
    }
}

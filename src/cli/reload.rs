//! Hot reload of the pipeline file (`SIGHUP`, `sluice run --watch`).
//!
//! A reload that keeps the meaning of the state is applied by stopping the
//! running pipeline as at SIGTERM (sources stop, a final checkpoint, sinks
//! acknowledge) and starting the new one from that checkpoint, inside the
//! same process: nothing is lost or applied twice, for the same reasons as
//! across a restart. A reload that would change the meaning of the state,
//! or an invalid file, is refused with the reason, and the running pipeline
//! goes on unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sluice_engine::cluster::WorkerId;
use tokio::sync::mpsc;

use crate::config::{self, Pipeline};

/// Loads the pipeline file again, as `worker` sees it, and checks that it
/// may replace `running`.
pub(crate) fn prepare(
    path: &Path,
    running: &Pipeline,
    worker: WorkerId,
) -> Result<Pipeline, String> {
    let new = config::load(path, super::workers::lookup(worker)).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        format!("the file has {} error(s): {}", list.len(), list.join("; "))
    })?;
    check(running, &new)?;
    Ok(new)
}

/// Whether `new` keeps the meaning of `old`'s state: same state directory,
/// key groups and admin address, the same stateful transforms with the
/// same state signatures, fed by the same transforms (same options) from
/// the same sources with the same event time. Source and sink options,
/// new or removed sinks, new sources, transforms feeding no stateful one,
/// and the checkpoint settings may change.
pub(crate) fn check(old: &Pipeline, new: &Pipeline) -> Result<(), String> {
    let replay = "; to apply it, stop sluice and rebuild the state with `sluice replay`";
    if old.name != new.name {
        return Err(format!(
            "the pipeline name changed (`{}` -> `{}`): metrics and state belong to the name{replay}",
            old.name, new.name
        ));
    }
    if old.state_dir() != new.state_dir() {
        return Err(format!(
            "the state directory changed ({} -> {}); restart sluice to use another one",
            old.state_dir().display(),
            new.state_dir().display()
        ));
    }
    if old.state.key_groups != new.state.key_groups {
        return Err(format!(
            "`[state] key_groups` changed ({} -> {}): it is fixed for the life of the state{replay}",
            old.state.key_groups, new.state.key_groups
        ));
    }
    if old.admin.address != new.admin.address {
        return Err("`[admin] address` changed; the admin server moves only at a restart".into());
    }
    if old.cluster != new.cluster {
        return Err(
            "`[cluster]` changed; the exchange between workers changes only at a restart".into(),
        );
    }
    let (old_state, new_state) = (stateful(old), stateful(new));
    for (name, fingerprint) in &old_state {
        match new_state.get(name) {
            None => {
                return Err(format!(
                    "the stateful transform `{name}` was removed{replay}"
                ))
            }
            Some(f) if f != fingerprint => {
                return Err(format!(
                    "the stateful transform `{name}` or what feeds it changed ({}){replay}",
                    first_difference(fingerprint, f)
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(name) = new_state.keys().find(|n| !old_state.contains_key(*n)) {
        return Err(format!(
            "the stateful transform `{name}` is new: its state would miss everything before \
             the reload{replay}"
        ));
    }
    Ok(())
}

/// Every stateful transform with a fingerprint of what gives its state its
/// meaning: its state signature, and the options and inputs of everything
/// upstream of it (transforms, and the sources' names and event time).
fn stateful(p: &Pipeline) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for t in &p.transforms {
        let spec = &t.spec;
        if !spec.is_stateful() {
            continue;
        }
        let mut parts = vec![format!("state of `{}`: {}", t.name, spec.state_signature())];
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = vec![t.name.as_str()];
        while let Some(name) = todo.pop() {
            if !seen.insert(name.to_string()) {
                continue;
            }
            if let Some(u) = p.transforms.iter().find(|u| u.name == name) {
                let options = serde_json::to_string(&u.config).unwrap_or_default();
                parts.push(format!("`{}` reads {:?} with {options}", u.name, u.inputs));
                todo.extend(u.inputs.iter().map(String::as_str));
            } else if let Some(s) = p.sources.iter().find(|s| s.name == name) {
                parts.push(format!(
                    "source `{}` with event time {:?}",
                    s.name, s.event_time
                ));
            }
        }
        parts.sort();
        out.insert(t.name.clone(), parts);
    }
    out
}

fn first_difference(old: &[String], new: &[String]) -> String {
    let gone = old.iter().find(|p| !new.contains(p));
    let came = new.iter().find(|p| !old.contains(p));
    match (gone, came) {
        (Some(g), Some(c)) => format!("was: {g}; now: {c}"),
        (Some(g), None) => format!("no longer: {g}"),
        (None, Some(c)) => format!("new: {c}"),
        (None, None) => "order".into(),
    }
}

/// Reload requests: every SIGHUP and, with `watch`, every change of the
/// pipeline file's contents (polled every `poll`).
pub(crate) fn requests(
    path: PathBuf,
    watch: bool,
    poll: Duration,
) -> mpsc::UnboundedReceiver<&'static str> {
    let (tx, rx) = mpsc::unbounded_channel();
    let hup = tx.clone();
    tokio::spawn(async move {
        let mut sighup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                return;
            }
        };
        while sighup.recv().await.is_some() {
            if hup.send("SIGHUP").is_err() {
                return;
            }
        }
    });
    if watch {
        tokio::spawn(async move {
            let read = |p: &Path| {
                let modified = std::fs::metadata(p).and_then(|m| m.modified()).ok();
                (modified, std::fs::read(p).ok())
            };
            let mut last: (Option<SystemTime>, Option<Vec<u8>>) = read(&path);
            loop {
                tokio::time::sleep(poll).await;
                let now = read(&path);
                // Only the contents count: an editor touching the file
                // without changing it reloads nothing.
                if now.1.is_some() && now.1 != last.1 && tx.send("the file changed").is_err() {
                    return;
                }
                last = now;
            }
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(text: &str) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        config::load(&path, |_| None).unwrap_or_else(|e| panic!("{e:?}"))
    }

    const BASE: &str = r#"
[pipeline]
name = "r"
[state]
dir = "/tmp/sluice-reload-test"
[sources.in]
type = "file"
path = "in.ndjson"
[transforms.clean]
type = "filter"
inputs = ["in"]
condition = "country != ''"
[transforms.counts]
type = "aggregate"
inputs = ["clean"]
group_by = ["country"]
aggregates = { n = "count" }
[transforms.loud]
type = "filter"
inputs = ["in"]
condition = "level == 'error'"
[sinks.out]
type = "stdout"
inputs = ["counts"]
[sinks.errors]
type = "stdout"
inputs = ["loud"]
"#;

    #[test]
    fn compatible_changes_are_accepted() {
        let old = pipeline(BASE);
        for new in [
            BASE.replace("path = \"in.ndjson\"", "path = \"other.ndjson\""),
            BASE.replace("level == 'error'", "level == 'warn'"),
            format!("{BASE}\n[sinks.more]\ntype = \"stdout\"\ninputs = [\"counts\"]\n"),
            format!("{BASE}\n[checkpoint]\ninterval = \"5s\"\n"),
        ] {
            check(&old, &pipeline(&new)).unwrap_or_else(|e| panic!("{new}\n{e}"));
        }
    }

    #[test]
    fn changes_to_the_meaning_of_state_are_refused() {
        let old = pipeline(BASE);
        for (new, says) in [
            (
                BASE.replace("group_by = [\"country\"]", "group_by = [\"city\"]"),
                "`counts`",
            ),
            (BASE.replace("country != ''", "country != 'GT'"), "`clean`"),
            (
                BASE.replace(
                    "aggregates = { n = \"count\" }",
                    "aggregates = { n = \"count\", m = \"count\" }",
                ),
                "`counts`",
            ),
            (
                format!("{BASE}\n[state]\nkey_groups = 64\n")
                    .replace("[state]\ndir = \"/tmp/sluice-reload-test\"\n", ""),
                "state directory",
            ),
            (BASE.replace("name = \"r\"", "name = \"q\""), "name changed"),
            (
                format!("{BASE}\n[cluster]\nlisten = \"127.0.0.1:7070\"\npeers = \"h-{{worker}}:7070\"\n"),
                "`[cluster]` changed",
            ),
        ] {
            let e = check(&old, &pipeline(&new)).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let e = check(
            &old,
            &pipeline(&BASE.replace(
                "dir = \"/tmp/sluice-reload-test\"",
                "dir = \"/tmp/sluice-reload-test\"\nkey_groups = 64",
            )),
        )
        .unwrap_err();
        assert!(
            e.contains("key_groups") && e.contains("sluice replay"),
            "{e}"
        );
    }
}

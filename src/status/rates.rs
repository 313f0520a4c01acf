//! Events per second from the event counters: the admin server records the
//! counters every second, and a rate is the difference between now and the
//! oldest recording of the last few seconds. Pure: the caller gives the
//! time and the samples.

use std::collections::{BTreeMap, VecDeque};

use sluice_engine::metrics as m;

use super::prom::Sample;

/// Recordings older than this are dropped; rates span up to this long.
pub(crate) const WINDOW_SECONDS: f64 = 5.0;
/// A rate needs recordings at least this far apart.
const MIN_SPAN_SECONDS: f64 = 0.5;

/// Event counters (`sluice_events_in_total` / `sluice_events_out_total`)
/// by component, at one time.
#[derive(Debug, Clone)]
struct Recording {
    time: f64,
    events: BTreeMap<String, f64>,
}

#[derive(Debug, Default)]
pub(crate) struct RateWindow {
    recordings: VecDeque<Recording>,
}

fn event_counters(pipeline: &str, samples: &[Sample]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name == m::EVENTS_IN || s.name == m::EVENTS_OUT)
        .filter(|s| s.label("pipeline") == Some(pipeline))
        .filter_map(|s| Some((s.label("component")?.to_string(), s.value)))
        .collect()
}

impl RateWindow {
    /// Records the counters in `samples` at `time` (Unix seconds).
    pub(crate) fn record(&mut self, pipeline: &str, time: f64, samples: &[Sample]) {
        while self
            .recordings
            .front()
            .is_some_and(|r| time - r.time > WINDOW_SECONDS)
        {
            self.recordings.pop_front();
        }
        self.recordings.push_back(Recording {
            time,
            events: event_counters(pipeline, samples),
        });
    }

    /// Events per second of each component, from the oldest recording of
    /// the window to `samples` at `time`. A component without a recording
    /// far enough back has no rate.
    pub(crate) fn rates(
        &self,
        pipeline: &str,
        time: f64,
        samples: &[Sample],
    ) -> BTreeMap<String, f64> {
        let Some(old) = self.recordings.iter().find(|r| {
            let span = time - r.time;
            (MIN_SPAN_SECONDS..=WINDOW_SECONDS + 1.0).contains(&span)
        }) else {
            return BTreeMap::new();
        };
        let span = time - old.time;
        event_counters(pipeline, samples)
            .into_iter()
            .filter_map(|(component, now)| {
                let then = *old.events.get(&component)?;
                Some((component, (now - then).max(0.0) / span))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: f64) -> Vec<Sample> {
        vec![Sample {
            name: m::EVENTS_IN.into(),
            labels: vec![
                ("pipeline".into(), "p".into()),
                ("component".into(), "in".into()),
            ],
            value: n,
        }]
    }

    #[test]
    fn rate_over_the_oldest_recording_in_the_window() {
        let mut w = RateWindow::default();
        assert!(w.rates("p", 100.0, &events(10.0)).is_empty());
        w.record("p", 100.0, &events(10.0));
        // too close to the only recording
        assert!(w.rates("p", 100.2, &events(20.0)).is_empty());
        w.record("p", 101.0, &events(30.0));
        w.record("p", 102.0, &events(50.0));
        assert_eq!(w.rates("p", 104.0, &events(90.0))["in"], 20.0);
        // 100.0 falls out of the window; 101.0 is the oldest left
        w.record("p", 105.5, &events(100.0));
        assert_eq!(w.rates("p", 106.0, &events(130.0))["in"], 20.0);
        // another pipeline's counters are not this one's
        assert!(w.rates("q", 106.0, &events(130.0)).is_empty());
    }
}

//! Repeated per-message warnings, aggregated in the host's own log.
//!
//! A pipeline dead-lettering many messages logged one WARN line each
//! (`kwasm dev`'s demo buried its hints under one a second). Now, per
//! pipeline and interval, the first such line is shown in full and the
//! rest are counted; when the interval ends one line per pipeline says how
//! many were left out, by kind. Metrics and the dead-letter topic still
//! have every message; only the log is thinned.
//!
//! [`Aggregator`] is the pure policy (driven by tests with explicit
//! times); [`RepeatFilter`] applies it as a `tracing` per-layer filter on
//! the log output, and [`spawn_reporter`] writes the summaries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Filter};

/// How long one interval lasts.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The per-message warnings that are aggregated (their `message`).
pub const REPEATED_MESSAGES: &[&str] = &["dead-lettering message"];

/// Whether a line is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The first of its pipeline in this interval: shown in full.
    Show,
    /// Counted, not shown.
    Suppress,
}

/// One summary line: what a pipeline's interval left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The pipeline.
    pub pipeline: String,
    /// Lines left out, by kind.
    pub by_kind: BTreeMap<String, u64>,
    /// The interval's length.
    pub interval: Duration,
}

impl Summary {
    /// The summary as logged.
    pub fn message(&self) -> String {
        let total: u64 = self.by_kind.values().sum();
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        format!(
            "{total} more dead-lettered messages in the last {} s ({}); the first was logged in full",
            self.interval.as_secs(),
            kinds.join(", ")
        )
    }
}

/// Counts per pipeline for the current interval.
#[derive(Debug, Default)]
pub struct Aggregator {
    open: BTreeMap<String, Window>,
    /// Summaries of intervals that a new line closed before `flush` did.
    closed: Vec<Summary>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    suppressed: BTreeMap<String, u64>,
}

impl Aggregator {
    /// A repeated warning of `pipeline` of `kind` at `now`.
    pub fn observe(&mut self, pipeline: &str, kind: &str, now: Instant) -> Decision {
        match self.open.get_mut(pipeline) {
            Some(w) if now.saturating_duration_since(w.started) < INTERVAL => {
                *w.suppressed.entry(kind.to_owned()).or_default() += 1;
                Decision::Suppress
            }
            // No window, or one that ended but `flush` has not closed yet:
            // keep its counts for the next flush, and open a new one.
            _ => {
                let new = Window {
                    started: now,
                    suppressed: BTreeMap::new(),
                };
                if let Some(old) = self.open.insert(pipeline.to_owned(), new)
                    && !old.suppressed.is_empty()
                {
                    self.closed.push(Summary {
                        pipeline: pipeline.to_owned(),
                        by_kind: old.suppressed,
                        interval: INTERVAL,
                    });
                }
                Decision::Show
            }
        }
    }

    /// Closes the intervals that ended by `now`; a summary for each that
    /// left something out.
    pub fn flush(&mut self, now: Instant) -> Vec<Summary> {
        let mut out = std::mem::take(&mut self.closed);
        self.open.retain(|pipeline, w| {
            if now.saturating_duration_since(w.started) < INTERVAL {
                return true;
            }
            if !w.suppressed.is_empty() {
                out.push(Summary {
                    pipeline: pipeline.clone(),
                    by_kind: std::mem::take(&mut w.suppressed),
                    interval: INTERVAL,
                });
            }
            false
        });
        out
    }
}

/// The shared aggregator of the process's log output.
#[derive(Clone, Default)]
pub struct RepeatFilter {
    aggregator: Arc<Mutex<Aggregator>>,
}

impl<S: tracing::Subscriber> Filter<S> for RepeatFilter {
    fn enabled(&self, _meta: &tracing::Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _cx: &Context<'_, S>) -> bool {
        if *event.metadata().level() != tracing::Level::WARN {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if !REPEATED_MESSAGES.contains(&fields.message.as_str()) {
            return true;
        }
        let mut aggregator = self.aggregator.lock().unwrap_or_else(|p| p.into_inner());
        aggregator.observe(&fields.pipeline, &fields.kind, Instant::now()) == Decision::Show
    }
}

/// Writes the summaries of `filter` every second, from a thread of its own
/// (for the life of the process).
pub fn spawn_reporter(filter: &RepeatFilter) {
    let aggregator = filter.aggregator.clone();
    let _ = std::thread::Builder::new()
        .name("kwasm-log-repeats".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let summaries = aggregator
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .flush(Instant::now());
                for s in summaries {
                    tracing::warn!(pipeline = %s.pipeline, "{}", s.message());
                }
            }
        });
}

#[derive(Default)]
struct Fields {
    message: String,
    pipeline: String,
    kind: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => value.clone_into(&mut self.message),
            "pipeline" => value.clone_into(&mut self.pipeline),
            "kind" => value.clone_into(&mut self.kind),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "message" | "pipeline" | "kind") {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_per_pipeline_and_interval_shows_the_rest_are_counted_by_kind() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut a = Aggregator::default();
        assert_eq!(a.observe("demo", "bad-output", at(0)), Decision::Show);
        assert_eq!(a.observe("demo", "bad-output", at(10)), Decision::Suppress);
        assert_eq!(a.observe("demo", "permanent", at(20)), Decision::Suppress);
        assert_eq!(a.observe("demo", "bad-output", at(30)), Decision::Suppress);
        // Another pipeline has its own first line.
        assert_eq!(a.observe("other", "trap", at(40)), Decision::Show);
        assert!(
            a.flush(at(9_999)).is_empty(),
            "nothing before the interval ends"
        );
        let summaries = a.flush(at(10_000));
        assert_eq!(
            summaries,
            vec![Summary {
                pipeline: "demo".into(),
                by_kind: BTreeMap::from([("bad-output".into(), 2), ("permanent".into(), 1)]),
                interval: INTERVAL,
            }],
            "`other` left nothing out, so it has no summary yet"
        );
        assert_eq!(
            summaries[0].message(),
            "3 more dead-lettered messages in the last 10 s (bad-output: 2, permanent: 1); \
             the first was logged in full"
        );
        // The next interval starts with a full line again.
        assert_eq!(a.observe("demo", "bad-output", at(10_001)), Decision::Show);
        assert!(
            a.flush(at(10_040)).is_empty(),
            "`other` closed without a summary"
        );
    }

    /// Regression: at 10 dead letters a second, a line always arrived
    /// between the end of an interval and the next flush; it opened a new
    /// window and the old one's counts were lost, so no summary was ever
    /// logged (seen in `kwasm dev --rate 500`).
    #[test]
    fn a_line_after_an_unflushed_interval_keeps_that_intervals_counts() {
        let t0 = Instant::now();
        let mut a = Aggregator::default();
        assert_eq!(a.observe("p", "k", t0), Decision::Show);
        assert_eq!(
            a.observe("p", "k", t0 + Duration::from_secs(1)),
            Decision::Suppress
        );
        assert_eq!(a.observe("p", "k", t0 + INTERVAL), Decision::Show);
        let summaries = a.flush(t0 + INTERVAL + Duration::from_millis(500));
        assert_eq!(
            summaries,
            vec![Summary {
                pipeline: "p".into(),
                by_kind: BTreeMap::from([("k".into(), 1)]),
                interval: INTERVAL,
            }]
        );
    }
}

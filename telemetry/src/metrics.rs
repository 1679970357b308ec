//! A small Prometheus registry: labelled counters, gauges and histograms, rendered in the text
//! exposition format (version 0.0.4). Names follow Prometheus' conventions: base units in the
//! name (`_seconds`, `_bytes`), `_total` for counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds for durations, seconds: a watch tick is milliseconds, a hydration hours.
pub const DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Series {
    value: f64,
    /// Histograms: count per bucket (not cumulative), then the sum and count in `value`/`count`.
    buckets: Vec<u64>,
    count: u64,
}

#[derive(Debug)]
struct Family {
    kind: Kind,
    help: &'static str,
    buckets: &'static [f64],
    series: BTreeMap<Vec<(String, String)>, Series>,
}

/// Metric families by name. Cheap enough for what dmf counts (a few updates per activity).
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

/// Label pairs, in the order given.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Declare a counter (it renders from its declaration on, at 0 without labels).
    pub fn counter(&self, name: &'static str, help: &'static str) {
        self.declare(name, Kind::Counter, help, &[]);
    }

    pub fn gauge(&self, name: &'static str, help: &'static str) {
        self.declare(name, Kind::Gauge, help, &[]);
    }

    pub fn histogram(&self, name: &'static str, help: &'static str, buckets: &'static [f64]) {
        self.declare(name, Kind::Histogram, help, buckets);
    }

    fn declare(&self, name: &'static str, kind: Kind, help: &'static str, buckets: &'static [f64]) {
        let mut families = lock(&self.families);
        families.entry(name).or_insert_with(|| Family { kind, help, buckets, series: BTreeMap::new() });
    }

    /// Add `by` to a counter (or a gauge).
    pub fn add(&self, name: &'static str, labels: Labels<'_>, by: f64) {
        self.with(name, labels, |f, s| {
            if f.kind != Kind::Histogram {
                s.value += by;
            }
        });
    }

    pub fn inc(&self, name: &'static str, labels: Labels<'_>) {
        self.add(name, labels, 1.0);
    }

    /// Set a gauge.
    pub fn set(&self, name: &'static str, labels: Labels<'_>, value: f64) {
        self.with(name, labels, |f, s| {
            if f.kind == Kind::Gauge {
                s.value = value;
            }
        });
    }

    /// Record one observation in a histogram.
    pub fn observe(&self, name: &'static str, labels: Labels<'_>, value: f64) {
        self.with(name, labels, |f, s| {
            if f.kind != Kind::Histogram {
                return;
            }
            if s.buckets.len() != f.buckets.len() {
                s.buckets = vec![0; f.buckets.len()];
            }
            if let Some(i) = f.buckets.iter().position(|b| value <= *b) {
                s.buckets[i] += 1;
            }
            s.value += value;
            s.count += 1;
        });
    }

    /// Forget every series of a gauge (before setting the current ones: a cluster gone from the
    /// fleet must not stay at its last value).
    pub fn clear(&self, name: &'static str) {
        if let Some(f) = lock(&self.families).get_mut(name) {
            f.series.clear();
        }
    }

    fn with(&self, name: &'static str, labels: Labels<'_>, f: impl FnOnce(&Family, &mut Series)) {
        let mut families = lock(&self.families);
        // (an undeclared name is a bug in the caller; it is declared as untyped help-less gauge)
        let family = families.entry(name).or_insert_with(|| Family { kind: Kind::Gauge, help: "", buckets: &[], series: BTreeMap::new() });
        let key: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut series = family.series.remove(&key).unwrap_or_default();
        f(family, &mut series);
        family.series.insert(key, series);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let families = lock(&self.families);
        let mut out = String::new();
        for (name, f) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
            if f.series.is_empty() && f.kind == Kind::Counter {
                let _ = writeln!(out, "{name} 0");
            }
            for (labels, s) in &f.series {
                match f.kind {
                    Kind::Counter | Kind::Gauge => {
                        let _ = writeln!(out, "{name}{} {}", render_labels(labels, None), number(s.value));
                    }
                    Kind::Histogram => {
                        let mut cumulative = 0;
                        for (i, bound) in f.buckets.iter().enumerate() {
                            cumulative += s.buckets.get(i).copied().unwrap_or(0);
                            let _ = writeln!(out, "{name}_bucket{} {cumulative}", render_labels(labels, Some(&number(*bound))));
                        }
                        let _ = writeln!(out, "{name}_bucket{} {}", render_labels(labels, Some("+Inf")), s.count);
                        let _ = writeln!(out, "{name}_sum{} {}", render_labels(labels, None), number(s.value));
                        let _ = writeln!(out, "{name}_count{} {}", render_labels(labels, None), s.count);
                    }
                }
            }
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn render_labels(labels: &[(String, String)], le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

/// A label value as the exposition format quotes it.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms_with_escaped_labels() {
        let r = Registry::new();
        r.counter("dmf_jobs_total", "Jobs.");
        r.histogram("dmf_activity_duration_seconds", "Durations.", &[0.1, 1.0]);
        r.gauge("dmf_lag_seconds", "Lag.");
        r.inc("dmf_jobs_total", &[("phase", "hydrating"), ("outcome", "done")]);
        r.inc("dmf_jobs_total", &[("phase", "hydrating"), ("outcome", "done")]);
        r.observe("dmf_activity_duration_seconds", &[("phase", "schema")], 0.05);
        r.observe("dmf_activity_duration_seconds", &[("phase", "schema")], 0.5);
        r.observe("dmf_activity_duration_seconds", &[("phase", "schema")], 5.0);
        r.set("dmf_lag_seconds", &[("cluster", "a\"b\\c\nd")], 0.25);
        let text = r.render();
        assert!(text.contains("dmf_jobs_total{phase=\"hydrating\",outcome=\"done\"} 2\n"), "{text}");
        assert!(text.contains("dmf_activity_duration_seconds_bucket{phase=\"schema\",le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("dmf_activity_duration_seconds_bucket{phase=\"schema\",le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("dmf_activity_duration_seconds_bucket{phase=\"schema\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("dmf_activity_duration_seconds_count{phase=\"schema\"} 3\n"), "{text}");
        assert!(text.contains("dmf_lag_seconds{cluster=\"a\\\"b\\\\c\\nd\"} 0.25\n"), "{text}");
        assert!(text.contains("# TYPE dmf_activity_duration_seconds histogram\n"), "{text}");
        r.clear("dmf_lag_seconds");
        assert!(!r.render().contains("dmf_lag_seconds{"));
    }
}

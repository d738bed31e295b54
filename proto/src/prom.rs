//! The Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Both the collector and the butler expose a handful of counters, gauges and one histogram;
//! the format for those is a few lines each (`# HELP`, `# TYPE`, samples), so a small writer
//! here serves both without a metrics framework: the figures already live in the programs'
//! own atomics, and a registry crate would only copy them at every scrape. The output is
//! checked by an independent parser in the end-to-end tests.

use std::fmt::Write as _;

/// The `Content-Type` of a scrape's answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric's type, as in its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (the name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Writes metric families into a text page.
#[derive(Debug, Default)]
pub struct TextWriter {
    out: String,
}

impl TextWriter {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.header(name, help, kind.as_str());
        self.sample(name, &[], value);
    }

    /// A counter with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.single(name, help, Kind::Counter, value as f64);
    }

    /// A gauge with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.single(name, help, Kind::Gauge, value);
    }

    /// A family whose samples differ by the value of one label.
    pub fn labelled(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        label: &str,
        values: &[(&str, f64)],
    ) {
        self.header(name, help, kind.as_str());
        for (v, x) in values {
            self.sample(name, &[(label, v)], *x);
        }
    }

    /// A histogram: `bounds` are the buckets' upper bounds (ascending, without `+Inf`),
    /// `counts` the observations in each bucket alone (one more than `bounds`, the last for
    /// `+Inf`); the cumulative `_bucket` samples, `_sum` and `_count` are derived here.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            let le = bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| number(*b));
            self.sample(&bucket, &[("le", &le)], cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], cumulative as f64);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample value: integers without a fraction, `+Inf`/`-Inf`/`NaN` as the format spells them.
fn number(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_text_format() {
        let mut w = TextWriter::new();
        w.counter("a_total", "As.\nMore", 3);
        w.labelled("b", "Bs", Kind::Gauge, "kind", &[("x\"y", 1.5), ("z", 0.0)]);
        w.histogram("c_seconds", "Cs", &[0.5, 1.0], &[1, 0, 2], 4.25);
        assert_eq!(
            w.finish(),
            "# HELP a_total As.\\nMore\n# TYPE a_total counter\na_total 3\n\
             # HELP b Bs\n# TYPE b gauge\nb{kind=\"x\\\"y\"} 1.5\nb{kind=\"z\"} 0\n\
             # HELP c_seconds Cs\n# TYPE c_seconds histogram\n\
             c_seconds_bucket{le=\"0.5\"} 1\nc_seconds_bucket{le=\"1\"} 1\n\
             c_seconds_bucket{le=\"+Inf\"} 3\nc_seconds_sum 4.25\nc_seconds_count 3\n"
        );
    }
}

//! `--include REGEX` / `--exclude REGEX`: which lines of a text stream are kept.
//!
//! A rule applies to every text stream, or to one stream when written `NAME=REGEX`. The text
//! before the first `=` is taken as a stream name when it is a valid stream name (letters,
//! digits, `:_-.`, segments split by `/`); otherwise the whole value is the regex. A value
//! starting with `=` is a regex for every stream (`--exclude '=a=b'` drops lines holding
//! `a=b` in every stream).
//!
//! A line is kept when it matches at least one include rule (or there is none for its
//! stream) and no exclude rule. Regexes see the line without its `\n` (and `\r`).
//!
//! Filters decide on whole lines: a partial line is held until its end arrives or the stream
//! ends. A line longer than the bundler's largest line piece is not held whole: it passes
//! unfiltered, and such lines are counted and logged when the stream ends.

use std::time::Instant;

use regex::bytes::Regex;

use super::{PolicyCounts, Stage};

/// Whether a rule keeps or drops the lines it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// `--include`: only matching lines are kept.
    Include,
    /// `--exclude`: matching lines are dropped.
    Exclude,
}

/// One `--include` or `--exclude`.
#[derive(Debug, Clone)]
pub struct FilterRule {
    /// Keep or drop.
    pub kind: RuleKind,
    /// The stream it applies to; `None`: every text stream.
    pub stream: Option<String>,
    /// What lines it matches.
    pub regex: Regex,
}

/// A rule that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid regex {regex:?}: {source}")]
pub struct FilterError {
    /// The regex as given.
    pub regex: String,
    /// Why.
    #[source]
    pub source: regex::Error,
}

impl FilterRule {
    /// Parses `[NAME=]REGEX` (see the module's documentation for the rule).
    ///
    /// # Errors
    /// The regex is invalid.
    pub fn parse(kind: RuleKind, value: &str) -> Result<FilterRule, FilterError> {
        let (stream, re) = match value.split_once('=') {
            Some(("", re)) => (None, re),
            Some((name, re)) if logdog_proto::types::validate_stream_name(name).is_ok() => {
                (Some(name.to_string()), re)
            }
            _ => (None, value),
        };
        let regex = Regex::new(re).map_err(|source| FilterError {
            regex: re.to_string(),
            source,
        })?;
        Ok(FilterRule {
            kind,
            stream,
            regex,
        })
    }

    fn applies_to(&self, stream: &str) -> bool {
        self.stream.as_deref().is_none_or(|s| s == stream)
    }
}

/// The filter stage of one stream.
#[derive(Debug)]
pub struct Filter {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    /// A line whose end has not arrived.
    partial: Vec<u8>,
    /// Passing the rest of an overlong line.
    passing_long: bool,
    max_line: usize,
    lines: u64,
    bytes: u64,
    oversized: u64,
}

impl Filter {
    /// The filter for stream `name`, or `None` when no rule applies to it.
    pub fn for_stream(rules: &[FilterRule], name: &str, max_line: usize) -> Option<Filter> {
        let mine = |k| {
            rules
                .iter()
                .filter(|r| r.kind == k && r.applies_to(name))
                .map(|r| r.regex.clone())
                .collect::<Vec<_>>()
        };
        let (include, exclude) = (mine(RuleKind::Include), mine(RuleKind::Exclude));
        if include.is_empty() && exclude.is_empty() {
            return None;
        }
        Some(Filter {
            include,
            exclude,
            partial: Vec::new(),
            passing_long: false,
            max_line: max_line.max(1),
            lines: 0,
            bytes: 0,
            oversized: 0,
        })
    }

    fn keeps(&self, line: &[u8]) -> bool {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        (self.include.is_empty() || self.include.iter().any(|r| r.is_match(text)))
            && !self.exclude.iter().any(|r| r.is_match(text))
    }

    fn decide(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if self.keeps(line) {
            out.extend_from_slice(line);
        } else {
            self.lines += 1;
            self.bytes += line.len() as u64;
        }
    }
}

impl Stage for Filter {
    fn push(&mut self, input: &[u8], _now: Instant, out: &mut Vec<u8>) {
        for line in super::lines(input) {
            let complete = line.ends_with(b"\n");
            if self.passing_long {
                out.extend_from_slice(line);
                self.passing_long = !complete;
                continue;
            }
            if self.partial.is_empty() && complete {
                self.decide(line, out);
                continue;
            }
            self.partial.extend_from_slice(line);
            if complete {
                let whole = std::mem::take(&mut self.partial);
                self.decide(&whole, out);
                self.partial = whole;
                self.partial.clear();
            } else if self.partial.len() > self.max_line {
                self.oversized += 1;
                out.append(&mut self.partial);
                self.passing_long = true;
            }
        }
    }

    fn drain(&mut self, _max: usize, _now: Instant, out: &mut Vec<u8>) -> std::io::Result<bool> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.decide(&last, out);
        }
        if self.oversized > 0 {
            tracing::warn!(
                lines = self.oversized,
                max_line = self.max_line,
                "lines longer than the largest line piece passed the filters unfiltered"
            );
            self.oversized = 0;
        }
        Ok(false)
    }

    fn counts(&self, into: &mut PolicyCounts) {
        into.filtered_lines += self.lines;
        into.filtered_bytes += self.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn filter(rules: &[(RuleKind, &str)], name: &str) -> Filter {
        let rules: Vec<FilterRule> = rules
            .iter()
            .map(|(k, v)| FilterRule::parse(*k, v).unwrap())
            .collect();
        Filter::for_stream(&rules, name, 64).unwrap()
    }

    fn run(f: &mut Filter, chunks: &[&[u8]]) -> Vec<u8> {
        let now = Instant::now();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, now, &mut out);
        }
        while f.drain(100, now, &mut out).unwrap() {}
        out
    }

    #[test]
    fn names_and_regexes_are_told_apart() {
        let r = FilterRule::parse(RuleKind::Exclude, "stderr=^DEBUG").unwrap();
        assert_eq!(r.stream.as_deref(), Some("stderr"));
        assert_eq!(r.regex.as_str(), "^DEBUG");
        let r = FilterRule::parse(RuleKind::Exclude, "^a=b").unwrap();
        assert_eq!((r.stream, r.regex.as_str()), (None, "^a=b"));
        let r = FilterRule::parse(RuleKind::Exclude, "=a=b").unwrap();
        assert_eq!((r.stream, r.regex.as_str()), (None, "a=b"));
        let r = FilterRule::parse(RuleKind::Include, "x+").unwrap();
        assert_eq!((r.stream, r.regex.as_str()), (None, "x+"));
        assert!(FilterRule::parse(RuleKind::Include, "stdout=(").is_err());
    }

    #[test]
    fn include_and_exclude_whole_lines_and_count_drops() {
        let mut f = filter(
            &[
                (RuleKind::Include, "^(INFO|DEBUG)"),
                (RuleKind::Exclude, "s=^DEBUG"),
            ],
            "s",
        );
        let out = run(&mut f, &[b"INFO a\nDEB", b"UG b\nWARN c\r\nINFO d"]);
        assert_eq!(out, b"INFO a\nINFO d");
        let mut c = PolicyCounts::default();
        f.counts(&mut c);
        assert_eq!((c.filtered_lines, c.filtered_bytes), (2, 8 + 8));
        let rules = [FilterRule::parse(RuleKind::Exclude, "s=x").unwrap()];
        assert!(Filter::for_stream(&rules, "other", 64).is_none());
    }

    #[test]
    fn overlong_lines_pass_unfiltered() {
        let mut f = filter(&[(RuleKind::Exclude, "x")], "s");
        let long = vec![b'x'; 100];
        let out = run(&mut f, &[&long[..50], &long[50..], b"x\nx\nok\n"]);
        let mut want = long.clone();
        want.extend_from_slice(b"x\nok\n");
        assert_eq!(out, want);
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_what_is_kept(
            text in "[ab\n]{0,60}",
            cut1 in 0usize..60,
            cut2 in 0usize..60,
        ) {
            let text = text.as_bytes();
            let (c1, c2) = (cut1.min(text.len()), cut2.min(text.len()));
            let (lo, hi) = (c1.min(c2), c1.max(c2));
            let rules = [(RuleKind::Exclude, "^a+$")];
            let whole = run(&mut filter(&rules, "s"), &[text]);
            let pieces = run(&mut filter(&rules, "s"), &[&text[..lo], &text[lo..hi], &text[hi..]]);
            prop_assert_eq!(pieces, whole);
        }
    }
}

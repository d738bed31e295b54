//! The message layer: one GELF 1.1 JSON object per text line or datagram.
//!
//! Every message has `version` "1.1", `host`, `short_message` (the line, lossy UTF-8),
//! `timestamp` (seconds since the epoch, with a fraction) and `level` (syslog severity: 6 for
//! stdout-like streams, 3 for a stream named `stderr` or ending in `/stderr`; a stream tag
//! `gelf.level=N` with N in 0..=7 overrides both), and the additional fields `_project`,
//! `_prefix`, `_stream`, `_line` (the 1-based line or datagram number) and one `_tag_K` per
//! stream tag. A line that is a JSON object contributes its members as additional fields:
//! `_` followed by the member's name with every character outside `[A-Za-z0-9_.-]` replaced
//! by `_`. Such a field never replaces one of the fields above (nor the forbidden `_id`): it
//! gets more leading underscores until its name is free.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The GELF version every message carries.
pub const GELF_VERSION: &str = "1.1";

/// Syslog level of stdout-like streams (informational).
pub const LEVEL_INFO: u8 = 6;

/// Syslog level of stderr streams (error).
pub const LEVEL_ERROR: u8 = 3;

/// The stream tag that sets a stream's level.
pub const LEVEL_TAG: &str = "gelf.level";

/// The field that marks a message whose `short_message` was shortened to fit; its value is
/// the original length of the line in bytes.
pub const TRUNCATED_FIELD: &str = "_truncated";

/// Field names a line's JSON members may not take.
const RESERVED: &[&str] = &[
    "_id",
    "_project",
    "_prefix",
    "_stream",
    "_line",
    TRUNCATED_FIELD,
];

/// What every message of one stream shares.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamFields {
    /// The `host` field.
    pub host: String,
    /// The project.
    pub project: String,
    /// The prefix.
    pub prefix: String,
    /// The stream's name.
    pub stream: String,
    /// The stream's tags.
    pub tags: BTreeMap<String, String>,
    /// The syslog level.
    pub level: u8,
}

impl StreamFields {
    /// The fields of stream `stream` with `tags`; the level follows from both (see
    /// [`stream_level`]).
    pub fn new(
        host: &str,
        project: &str,
        prefix: &str,
        stream: &str,
        tags: BTreeMap<String, String>,
    ) -> Self {
        let level = stream_level(stream, &tags);
        Self {
            host: host.to_owned(),
            project: project.to_owned(),
            prefix: prefix.to_owned(),
            stream: stream.to_owned(),
            tags,
            level,
        }
    }
}

/// The syslog level of a stream: its `gelf.level` tag when that is a number from 0 to 7,
/// else [`LEVEL_ERROR`] for `stderr` (or a name ending in `/stderr`), else [`LEVEL_INFO`].
pub fn stream_level(stream: &str, tags: &BTreeMap<String, String>) -> u8 {
    if let Some(level) = tags
        .get(LEVEL_TAG)
        .and_then(|v| v.trim().parse::<u8>().ok())
        .filter(|l| *l <= 7)
    {
        return level;
    }
    if stream == "stderr" || stream.ends_with("/stderr") {
        LEVEL_ERROR
    } else {
        LEVEL_INFO
    }
}

/// Seconds since the epoch of an entry: the stream's base time plus the entry's offset,
/// rounded to the microsecond.
pub fn entry_timestamp(base: &prost_types::Timestamp, offset: &prost_types::Duration) -> f64 {
    let nanos = i128::from(base.seconds) * 1_000_000_000
        + i128::from(base.nanos)
        + i128::from(offset.seconds) * 1_000_000_000
        + i128::from(offset.nanos);
    let micros = nanos.div_euclid(1000);
    // Exact for any time of this era: microseconds fit in 53 bits until the year 2255.
    micros as f64 / 1_000_000.0
}

/// `name` with every character outside `[A-Za-z0-9_.-]` replaced by `_` (GELF's
/// `^[\w.-]+$`); an empty name becomes `_`.
pub fn sanitize_field_name(name: &str) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Builds the message for one line (or datagram) `text`, numbered `line` (from 1), at
/// `timestamp` seconds since the epoch.
pub fn build(fields: &StreamFields, text: &[u8], line: u64, timestamp: f64) -> Map<String, Value> {
    let short = String::from_utf8_lossy(text);
    let mut m = Map::new();
    m.insert("version".into(), GELF_VERSION.into());
    m.insert("host".into(), fields.host.clone().into());
    m.insert("short_message".into(), short.as_ref().into());
    m.insert("timestamp".into(), timestamp.into());
    m.insert("level".into(), fields.level.into());
    m.insert("_project".into(), fields.project.clone().into());
    m.insert("_prefix".into(), fields.prefix.clone().into());
    m.insert("_stream".into(), fields.stream.clone().into());
    m.insert("_line".into(), line.into());
    for (k, v) in &fields.tags {
        m.insert(format!("_tag_{}", sanitize_field_name(k)), v.clone().into());
    }
    if short.trim_start().starts_with('{')
        && let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&short)
    {
        for (k, v) in obj {
            let mut name = format!("_{}", sanitize_field_name(&k));
            while RESERVED.contains(&name.as_str())
                || name.starts_with("_tag_")
                || m.contains_key(&name)
            {
                name.insert(0, '_');
            }
            m.insert(name, field_value(v));
        }
    }
    m
}

/// GELF field values are strings or numbers: everything else becomes its JSON text.
fn field_value(v: Value) -> Value {
    match v {
        Value::String(_) | Value::Number(_) => v,
        other => Value::String(other.to_string()),
    }
}

/// Whether `name` is a field [`build`] sets itself (not one taken from a line's JSON).
pub fn is_own_field(name: &str) -> bool {
    matches!(
        name,
        "version" | "host" | "short_message" | "timestamp" | "level"
    ) || RESERVED.contains(&name)
        || name.starts_with("_tag_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(stream: &str, tags: &[(&str, &str)]) -> StreamFields {
        StreamFields::new(
            "h1",
            "proj",
            "pre/x",
            stream,
            tags.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn levels() {
        assert_eq!(fields("stdout", &[]).level, 6);
        assert_eq!(fields("stderr", &[]).level, 3);
        assert_eq!(fields("job/stderr", &[]).level, 3);
        assert_eq!(fields("stderrx", &[]).level, 6);
        assert_eq!(fields("stdout", &[("gelf.level", "4")]).level, 4);
        assert_eq!(fields("stderr", &[("gelf.level", " 7 ")]).level, 7);
        assert_eq!(fields("stderr", &[("gelf.level", "8")]).level, 3);
        assert_eq!(fields("stdout", &[("gelf.level", "warn")]).level, 6);
    }

    #[test]
    fn timestamps() {
        let base = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 900_000_000,
        };
        let off = prost_types::Duration {
            seconds: 1,
            nanos: 250_000_500,
        };
        assert_eq!(entry_timestamp(&base, &off), 1_700_000_002.15);
        assert_eq!(
            entry_timestamp(&base, &prost_types::Duration::default()),
            1_700_000_000.9
        );
    }

    #[test]
    fn builds_the_fields() {
        let m = build(
            &fields("stdout", &[("k 1", "v"), ("gelf.level", "5")]),
            b"hello \xff",
            7,
            12.5,
        );
        assert_eq!(
            Value::Object(m),
            serde_json::json!({
                "version": "1.1", "host": "h1", "short_message": "hello \u{fffd}",
                "timestamp": 12.5, "level": 5, "_project": "proj", "_prefix": "pre/x",
                "_stream": "stdout", "_line": 7, "_tag_k_1": "v", "_tag_gelf.level": "5",
            })
        );
    }

    #[test]
    fn json_lines_add_fields() {
        let line = br#"{"user id": "u", "n": 3, "ok": true, "o": {"a": [1]}, "_id": 9,
            "line": "x", "_line": "y", "tag_k": "z", "": null, "_stream": 1}"#;
        let m = build(&fields("out", &[("k", "v")]), line, 1, 1.0);
        assert_eq!(m["_user_id"], "u");
        assert_eq!(m["_n"], 3);
        assert_eq!(m["_ok"], "true");
        assert_eq!(m["_o"], r#"{"a":[1]}"#);
        assert_eq!(m["__id"], 9);
        // Members come in name order: `_line` takes `__line` before `line` does.
        assert_eq!(m["__line"], "y");
        assert_eq!(m["___line"], "x");
        assert_eq!(m["__tag_k"], "z");
        assert_eq!(m["__"], "null");
        assert_eq!(m["__stream"], 1);
        assert_eq!(m["_line"], 1);
        assert_eq!(m["_stream"], "out");
        assert_eq!(m["_tag_k"], "v");
        assert!(!m.contains_key("_id"));
        let re = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        assert!(m.keys().all(|k| re(k)), "{m:?}");
        // Not an object: no extra fields.
        assert_eq!(build(&fields("out", &[]), b"[1,2]", 1, 1.0).len(), 9);
        assert_eq!(build(&fields("out", &[]), b"{broken", 1, 1.0).len(), 9);
    }

    #[test]
    fn sanitizes() {
        assert_eq!(sanitize_field_name("a.b-c_d9"), "a.b-c_d9");
        assert_eq!(sanitize_field_name("é x/y"), "__x_y");
        assert_eq!(sanitize_field_name(""), "_");
        assert!(is_own_field("_tag_x") && is_own_field("host") && !is_own_field("_user"));
    }
}

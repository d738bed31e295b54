//! The stream-server handshake (LogDog's protocol, reference §1.2).
//!
//! A client opens one connection per stream and sends, in order: the magic bytes
//! `BTLR1\x1E`, a uvarint length N (at most [`MAX_HEADER_SIZE`]), and N bytes of a JSON object
//! of flags; everything after that is the stream's payload. The server never writes back,
//! unless the client asks for a [`Verdict`] with the [`VERDICT_FLAG`] (an extension of ours that
//! LogDog's clients and servers ignore).
//!
//! Flags: `name` (required), `contentType`, `type` (`text`, `binary` or `datagram`; text when
//! absent), `timestamp` (RFC 3339; the zero time means unset) and `tags` (string to string).
//! Keys match case-insensitively and unknown keys are ignored, as in LogDog's Go decoder.

use std::collections::BTreeMap;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::logpb::LogStreamDescriptor;
use crate::types::{self, InvalidName};
use crate::{StreamType, default_content_type};

/// The magic bytes that open every stream connection.
pub const MAGIC: &[u8; 6] = b"BTLR1\x1E";
/// Largest handshake header, in bytes (1 MiB).
pub const MAX_HEADER_SIZE: u64 = 1024 * 1024;

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The connection ended before the handshake was complete.
    #[error("connection closed during the handshake")]
    Truncated,
    /// The first six bytes were not `BTLR1\x1E`.
    #[error("magic number mismatch (got {0:02x?})")]
    BadMagic(Vec<u8>),
    /// The header length varint does not fit in 64 bits.
    #[error("header length overflows a 64-bit integer")]
    LengthOverflow,
    /// The header length is over [`MAX_HEADER_SIZE`].
    #[error("header of {0} bytes exceeds the {MAX_HEADER_SIZE}-byte limit")]
    HeaderTooLarge(u64),
    /// The header is not a JSON object.
    #[error("header is not a JSON object: {0}")]
    BadJson(String),
    /// A flag has the wrong type or value.
    #[error("header flag {field:?}: {reason}")]
    BadFlag {
        /// The flag.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No `name` flag.
    #[error("header has no stream name")]
    MissingName,
    /// The name or a tag breaks LogDog's rules.
    #[error(transparent)]
    Invalid(#[from] InvalidName),
    /// The client did not finish the handshake in time.
    #[error("no complete handshake within {0} ms")]
    Timeout(u64),
    /// Reading failed.
    #[error("reading the handshake: {0}")]
    Io(String),
}

impl HandshakeError {
    /// A short, stable name for counting rejections by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            HandshakeError::Truncated => "truncated",
            HandshakeError::BadMagic(_) => "bad_magic",
            HandshakeError::LengthOverflow | HandshakeError::HeaderTooLarge(_) => {
                "header_too_large"
            }
            HandshakeError::BadJson(_) | HandshakeError::BadFlag { .. } => "bad_header",
            HandshakeError::MissingName | HandshakeError::Invalid(_) => "invalid_name_or_tag",
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Io(_) => "io",
        }
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> HandshakeError {
    HandshakeError::BadFlag {
        field,
        reason: reason.into(),
    }
}

fn string<'a>(field: &'static str, v: &'a Value) -> Result<&'a str, HandshakeError> {
    v.as_str()
        .ok_or_else(|| bad(field, format!("expected a string, got {v}")))
}

/// Parses the JSON header into a descriptor (prefix empty; content type defaulted by type;
/// timestamp `None` when absent or zero).
///
/// # Errors
/// Anything that LogDog's server would refuse, plus a missing name.
pub fn parse_header(json: &[u8]) -> Result<LogStreamDescriptor, HandshakeError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| HandshakeError::BadJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(HandshakeError::BadJson(format!(
            "expected an object, got {value}"
        )));
    };
    let mut name = None;
    let mut content_type = None;
    let mut kind = StreamType::Text;
    let mut timestamp = None;
    let mut tags = BTreeMap::new();
    for (key, v) in &map {
        match key.to_ascii_lowercase().as_str() {
            "name" => name = Some(string("name", v)?.to_string()),
            "contenttype" => content_type = Some(string("contentType", v)?.to_string()),
            "type" => {
                kind = match string("type", v)? {
                    "text" => StreamType::Text,
                    "binary" => StreamType::Binary,
                    "datagram" => StreamType::Datagram,
                    other => return Err(bad("type", format!("unknown stream type {other:?}"))),
                }
            }
            "timestamp" => timestamp = parse_timestamp(string("timestamp", v)?)?,
            "tags" => match v {
                Value::Object(t) => {
                    for (k, tv) in t {
                        let tv = string("tags", tv)?;
                        types::validate_tag(k, tv)?;
                        tags.insert(k.clone(), tv.to_string());
                    }
                }
                Value::Null => {}
                other => return Err(bad("tags", format!("expected an object, got {other}"))),
            },
            _ => {} // unknown and retired keys are ignored
        }
    }
    let name = name.ok_or(HandshakeError::MissingName)?;
    types::validate_stream_name(&name)?;
    let content_type = content_type
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| default_content_type(kind).to_string());
    // The collector refuses a descriptor over these limits (and with it every other stream
    // sharing its bundles), so the stream is refused here, where its writer can be told.
    types::validate_descriptor_fields(
        &content_type,
        tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    Ok(LogStreamDescriptor {
        prefix: String::new(),
        name,
        stream_type: kind as i32,
        content_type,
        timestamp,
        tags,
        binary_file_ext: String::new(),
    })
}

fn parse_timestamp(s: &str) -> Result<Option<prost_types::Timestamp>, HandshakeError> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| bad("timestamp", format!("cannot parse {s:?} as RFC 3339: {e}")))?;
    let nanos = t.unix_timestamp_nanos();
    // Go's zero time, 0001-01-01T00:00:00Z, means "unset".
    if t.year() == 1 && nanos == -62_135_596_800_000_000_000 {
        return Ok(None);
    }
    Ok(Some(prost_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000) as i64,
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }))
}

/// Formats a timestamp as RFC 3339 in UTC with nine fractional digits, e.g.
/// `2024-05-01T12:00:00.123456789Z`. Unnormalised nanos borrow from the seconds.
pub fn format_timestamp(ts: &prost_types::Timestamp) -> String {
    let total = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    let secs = total.div_euclid(1_000_000_000);
    let nanos = total.rem_euclid(1_000_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Year, month and day of the day `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let y = yoe + era * 400 + i128::from(m <= 2);
    (y, m, d)
}

/// The handshake flag (`"verdict": true`) by which a client asks the server for a verdict.
///
/// LogDog's server never writes back and LogDog's clients never read, so the verdict is
/// opt-in: a server that knows the flag writes one line, [`Verdict::line`], once it has
/// decided whether to take the stream; a client that does not send the flag gets nothing, and
/// a server that does not know it ignores it, as it ignores every unknown key (the client
/// then reads end of file without a verdict).
pub const VERDICT_FLAG: &str = "verdict";

/// Longest verdict line a client reads (a longer reason is cut).
pub const MAX_VERDICT_LINE: usize = 4096;

/// Whether a handshake header asks for a [`Verdict`]: a JSON object with the
/// [`VERDICT_FLAG`] key (any case) set to `true`. Anything else, malformed JSON included,
/// does not.
pub fn asks_for_verdict(json: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(map)) => map
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(VERDICT_FLAG) && *v == Value::Bool(true)),
        _ => false,
    }
}

/// What the server decided about a stream, for a client that asked (see [`VERDICT_FLAG`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The stream was taken: its bytes go to the output.
    Accepted,
    /// The stream was refused, for this reason; nothing written to it is kept.
    Refused(String),
}

impl Verdict {
    /// The line the server writes: `accepted\n` or `refused: REASON\n` (the reason on one
    /// line, at most [`MAX_VERDICT_LINE`] bytes in all).
    pub fn line(&self) -> Vec<u8> {
        let mut out = match self {
            Verdict::Accepted => b"accepted".to_vec(),
            Verdict::Refused(reason) => {
                let mut v = b"refused: ".to_vec();
                v.extend(
                    reason
                        .bytes()
                        .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
                );
                v
            }
        };
        out.truncate(MAX_VERDICT_LINE - 1);
        out.push(b'\n');
        out
    }

    /// Parses a verdict line (with or without its newline); `None` if it is not one.
    pub fn parse(line: &[u8]) -> Option<Verdict> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line == b"accepted" {
            return Some(Verdict::Accepted);
        }
        let reason = line.strip_prefix(b"refused: ")?;
        Some(Verdict::Refused(
            String::from_utf8_lossy(reason).into_owned(),
        ))
    }
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Builds the handshake bytes (magic, length, JSON) for a stream, as LogDog's Go client does.
pub fn encode_handshake(desc: &LogStreamDescriptor) -> Vec<u8> {
    encode_handshake_with(desc, false)
}

/// Like [`encode_handshake`]; with `verdict`, the header also asks for a [`Verdict`].
pub fn encode_handshake_with(desc: &LogStreamDescriptor, verdict: bool) -> Vec<u8> {
    let mut flags = serde_json::Map::new();
    flags.insert("name".into(), Value::from(desc.name.clone()));
    if !desc.content_type.is_empty() {
        flags.insert("contentType".into(), Value::from(desc.content_type.clone()));
    }
    let kind = match StreamType::try_from(desc.stream_type) {
        Ok(StreamType::Binary) => "binary",
        Ok(StreamType::Datagram) => "datagram",
        _ => "text",
    };
    flags.insert("type".into(), Value::from(kind));
    if let Some(ts) = &desc.timestamp {
        flags.insert("timestamp".into(), Value::from(format_timestamp(ts)));
    }
    if !desc.tags.is_empty() {
        let tags = desc
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        flags.insert("tags".into(), Value::Object(tags));
    }
    if verdict {
        flags.insert(VERDICT_FLAG.into(), Value::Bool(true));
    }
    let json = Value::Object(flags).to_string();
    let mut out = Vec::with_capacity(MAGIC.len() + 10 + json.len());
    out.extend_from_slice(MAGIC);
    put_uvarint(&mut out, json.len() as u64);
    out.extend_from_slice(json.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_like_logdog() {
        let d = parse_header(br#"{"NAME":"a/b","ContentType":"x/y","TYPE":"binary","tags":{"k":"v"},"ioKeepAlive":true,"tee":"stdout"}  "#).unwrap();
        assert_eq!(d.name, "a/b");
        assert_eq!(d.content_type, "x/y");
        assert_eq!(d.stream_type, StreamType::Binary as i32);
        assert_eq!(d.tags["k"], "v");
        let d = parse_header(br#"{"name":"n"}"#).unwrap();
        assert_eq!(d.stream_type, StreamType::Text as i32);
        assert_eq!(d.content_type, "text/plain; charset=utf-8");
        assert_eq!(d.timestamp, None);
    }

    #[test]
    fn timestamps() {
        let d = parse_header(br#"{"name":"n","timestamp":"2024-01-02T03:04:05.000000006+01:00"}"#)
            .unwrap();
        let ts = d.timestamp.unwrap();
        assert_eq!(ts.nanos, 6);
        assert_eq!(format_timestamp(&ts), "2024-01-02T02:04:05.000000006Z");
        let d = parse_header(br#"{"name":"n","timestamp":"0001-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(d.timestamp, None);
        assert_eq!(
            parse_header(br#"{"name":"n","timestamp":"yesterday"}"#)
                .unwrap_err()
                .kind(),
            "bad_header"
        );
    }

    #[test]
    fn refusals() {
        for (json, kind) in [
            (&br#"[1]"#[..], "bad_header"),
            (br#"not json"#, "bad_header"),
            (br#"{"name":"n"} junk"#, "bad_header"),
            (br#"{}"#, "invalid_name_or_tag"),
            (br#"{"name":""}"#, "invalid_name_or_tag"),
            (br#"{"name":"_x"}"#, "invalid_name_or_tag"),
            (br#"{"name":"n","type":"TEXT"}"#, "bad_header"),
            (
                br#"{"name":"n","tags":{"bad key":"v"}}"#,
                "invalid_name_or_tag",
            ),
            (br#"{"name":5}"#, "bad_header"),
        ] {
            let err = parse_header(json).unwrap_err();
            assert_eq!(err.kind(), kind, "{}: {err}", String::from_utf8_lossy(json));
        }
    }

    #[test]
    fn descriptors_the_collector_would_refuse_are_refused() {
        // 20 tags of 4,000 bytes: each within limits, together over the total.
        let tags: Vec<String> = (0..20)
            .map(|i| format!("\"k{i}\":\"{}\"", "v".repeat(4000)))
            .collect();
        let many = format!(r#"{{"name":"n","tags":{{{}}}}}"#, tags.join(","));
        let long_ct = format!(r#"{{"name":"n","contentType":"{}"}}"#, "c".repeat(1025));
        let count: Vec<String> = (0..65).map(|i| format!("\"k{i}\":\"\"")).collect();
        let count = format!(r#"{{"name":"n","tags":{{{}}}}}"#, count.join(","));
        for (json, needle) in [
            (many, "more than 32768 bytes"),
            (long_ct, "content type"),
            (count, "more than 64 tags"),
        ] {
            let err = parse_header(json.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), "invalid_name_or_tag", "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
        let ok_ct = format!(r#"{{"name":"n","contentType":"{}"}}"#, "c".repeat(1024));
        parse_header(ok_ct.as_bytes()).unwrap();
    }

    #[test]
    fn encode_round_trips() {
        let desc = LogStreamDescriptor {
            name: "x/y".into(),
            stream_type: StreamType::Datagram as i32,
            content_type: "a/b".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            tags: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        let bytes = encode_handshake(&desc);
        assert_eq!(&bytes[..6], MAGIC);
        let len = bytes[6] as usize;
        assert_eq!(bytes.len(), 7 + len);
        assert_eq!(parse_header(&bytes[7..]).unwrap(), desc);
    }

    #[test]
    fn verdicts_are_opt_in_and_round_trip() {
        let desc = LogStreamDescriptor {
            name: "x".into(),
            ..Default::default()
        };
        let plain = encode_handshake(&desc);
        let asking = encode_handshake_with(&desc, true);
        assert!(!asks_for_verdict(&plain[7..]));
        assert!(asks_for_verdict(&asking[7..]));
        // The flag is ignored by the parser: the same descriptor either way.
        assert_eq!(
            parse_header(&asking[7..]).unwrap(),
            parse_header(&plain[7..]).unwrap()
        );
        assert!(asks_for_verdict(br#"{"name":"n","VERDICT":true}"#));
        for no in [
            &br#"{"verdict":"yes"}"#[..],
            br#"{"verdict":false}"#,
            b"[true]",
            b"junk",
        ] {
            assert!(!asks_for_verdict(no));
        }
        let refused = Verdict::Refused("duplicate name\nsecond line".into());
        assert_eq!(refused.line(), b"refused: duplicate name second line\n");
        assert_eq!(
            Verdict::parse(&refused.line()),
            Some(Verdict::Refused("duplicate name second line".into()))
        );
        assert_eq!(
            Verdict::parse(&Verdict::Accepted.line()),
            Some(Verdict::Accepted)
        );
        assert_eq!(Verdict::parse(b"hello\n"), None);
        let long = Verdict::Refused("x".repeat(10 * MAX_VERDICT_LINE)).line();
        assert_eq!(long.len(), MAX_VERDICT_LINE);
        assert_eq!(long.last(), Some(&b'\n'));
    }

    #[test]
    fn timestamp_formatting() {
        let ts = |seconds, nanos| format_timestamp(&prost_types::Timestamp { seconds, nanos });
        assert_eq!(ts(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(ts(-1, 0), "1969-12-31T23:59:59.000000000Z");
        assert_eq!(ts(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            ts(253_402_300_799, 999_999_999),
            "9999-12-31T23:59:59.999999999Z"
        );
        assert_eq!(ts(-62_135_596_800, 0), "0001-01-01T00:00:00.000000000Z");
        assert_eq!(ts(1, -1), "1970-01-01T00:00:00.999999999Z");
    }

    #[test]
    fn uvarints() {
        let enc = |v| {
            let mut b = Vec::new();
            put_uvarint(&mut b, v);
            b
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [127]);
        assert_eq!(enc(128), [0x80, 1]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
    }
}

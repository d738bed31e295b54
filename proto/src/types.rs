//! Names, tags and projects, validated by LogDog's rules (reference §2).

use std::fmt;

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_LEN: usize = 4096;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY_LEN: usize = 64;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE_LEN: usize = 4096;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 1024;
/// Most tags on one stream (global tags included).
pub const MAX_TAGS: usize = 64;
/// Most bytes of all of a stream's tag keys and values together.
pub const MAX_TAGS_TOTAL: usize = 32 * 1024;
/// Largest encoded descriptor the collector stores. A descriptor within the limits above
/// always encodes well under it (name and prefix 4 KiB each, content type 1 KiB, tags 32 KiB
/// plus a few bytes of framing per tag), so the butler's checks imply the collector's.
pub const MAX_DESCRIPTOR_SIZE: usize = 64 * 1024;

/// Why a name, tag or project was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    /// What was being validated ("stream name", "tag key", ...).
    pub what: &'static str,
    /// The offending value (shortened if long).
    pub value: String,
    /// The rule it broke.
    pub reason: String,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.value, self.reason)
    }
}

impl std::error::Error for InvalidName {}

fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> InvalidName {
    let mut v: String = value.chars().take(80).collect();
    if v.len() < value.len() {
        v.push('…');
    }
    InvalidName {
        what,
        value: v,
        reason: reason.into(),
    }
}

fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(invalid(what, name, "must not be empty"));
    }
    if name.len() > max {
        return Err(invalid(what, name, format!("longer than {max} bytes")));
    }
    for (i, seg) in name.split('/').enumerate() {
        let Some(first) = seg.chars().next() else {
            return Err(invalid(what, name, format!("segment {i} is empty")));
        };
        if !first.is_ascii_alphanumeric() {
            return Err(invalid(
                what,
                name,
                format!("segment {i} must begin with a letter or digit, not {first:?}"),
            ));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.')))
        {
            return Err(invalid(what, name, format!("illegal character {c:?}")));
        }
    }
    Ok(())
}

/// Validates a stream name (also used for prefixes): `/`-separated segments, each starting with
/// an ASCII letter or digit, then letters, digits, `:`, `_`, `-`, `.`; at most 4096 bytes.
pub fn validate_stream_name(name: &str) -> Result<(), InvalidName> {
    check_name("stream name", name, MAX_STREAM_NAME_LEN)
}

/// Validates a stream prefix (same rules as a stream name).
pub fn validate_prefix(prefix: &str) -> Result<(), InvalidName> {
    check_name("prefix", prefix, MAX_STREAM_NAME_LEN)
}

/// Validates one tag: the key is a stream name of at most 64 bytes, the value at most 4096 bytes.
pub fn validate_tag(key: &str, value: &str) -> Result<(), InvalidName> {
    check_name("tag key", key, MAX_TAG_KEY_LEN)?;
    if value.len() > MAX_TAG_VALUE_LEN {
        return Err(invalid(
            "tag value",
            value,
            format!("longer than {MAX_TAG_VALUE_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Validates what a descriptor carries beyond its name: the content type's length, the number
/// of tags, each tag, and the tags' total size. The butler checks this at the handshake (after
/// merging global tags) and the collector on every bundle, with the same limits, so a stream
/// the collector would refuse never gets past the butler.
pub fn validate_descriptor_fields<'a>(
    content_type: &str,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), InvalidName> {
    if content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err(invalid(
            "content type",
            content_type,
            format!("longer than {MAX_CONTENT_TYPE_LEN} bytes"),
        ));
    }
    let (mut count, mut total) = (0usize, 0usize);
    for (k, v) in tags {
        validate_tag(k, v)?;
        count += 1;
        total += k.len() + v.len();
    }
    if count > MAX_TAGS {
        return Err(invalid(
            "tags",
            &format!("{count} tags"),
            format!("more than {MAX_TAGS} tags"),
        ));
    }
    if total > MAX_TAGS_TOTAL {
        return Err(invalid(
            "tags",
            &format!("{total} bytes of keys and values"),
            format!("more than {MAX_TAGS_TOTAL} bytes in all"),
        ));
    }
    Ok(())
}

/// Length of a prefix secret (`ButlerLogBundle.secret`), as in LogDog: the butler makes a
/// random one per run and the collector binds the prefix to the first one it sees.
pub const PREFIX_SECRET_LEN: usize = 36;

/// Longest project name (LUCI's project ids are at most 40 characters).
pub const MAX_PROJECT_LEN: usize = 40;

/// Validates a project name: 1 to [`MAX_PROJECT_LEN`] characters of `[a-z0-9_-]`, starting
/// with `[a-z]`.
pub fn validate_project(project: &str) -> Result<(), InvalidName> {
    let Some(first) = project.chars().next() else {
        return Err(invalid("project", project, "must not be empty"));
    };
    if project.len() > MAX_PROJECT_LEN {
        return Err(invalid(
            "project",
            project,
            format!("longer than {MAX_PROJECT_LEN} characters"),
        ));
    }
    if !first.is_ascii_lowercase() {
        return Err(invalid(
            "project",
            project,
            "must begin with a lowercase letter",
        ));
    }
    if let Some(c) = project
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(invalid(
            "project",
            project,
            format!("illegal character {c:?}"),
        ));
    }
    Ok(())
}

/// Builds a valid stream name from arbitrary text: disallowed characters become `_`, and a
/// segment that does not start with a letter or digit gets `fill` in front (LogDog's
/// `MakeStreamName`).
pub fn make_stream_name(fill: &str, segments: &[&str]) -> String {
    segments
        .iter()
        .map(|seg| {
            let cleaned: String = seg
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            match cleaned.chars().next() {
                Some(c) if c.is_ascii_alphanumeric() => cleaned,
                _ => format!("{fill}{cleaned}"),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_follow_logdog_rules() {
        for ok in ["foo/bar", "a:_-.", "file:_tmp_x.txt", "stdout", "0/1"] {
            validate_stream_name(ok).unwrap();
        }
        for bad in [
            "", "_foo", "foo/_bar", "foo^bar", "foo//bar", "/foo", "foo/", "a+b", "é",
        ] {
            assert!(validate_stream_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_stream_name(&"a".repeat(4097)).is_err());
    }

    #[test]
    fn tags_and_projects() {
        validate_tag("k", "").unwrap();
        validate_tag("a/b", "any value at all").unwrap();
        assert!(validate_tag("", "x").is_err());
        assert!(validate_tag(&"k".repeat(65), "x").is_err());
        assert!(validate_tag("k", &"v".repeat(4097)).is_err());
        validate_project("chromium-2_x").unwrap();
        validate_project(&"p".repeat(MAX_PROJECT_LEN)).unwrap();
        let long = "p".repeat(100_000);
        for bad in ["", "Chromium", "1abc", "a.b", &long] {
            assert!(validate_project(bad).is_err(), "{bad:?} accepted");
        }
        let e = validate_project(&long).unwrap_err().to_string();
        assert!(e.len() < 300 && e.contains("longer than 40"), "{e}");
    }

    #[test]
    fn descriptor_fields_have_a_total() {
        validate_descriptor_fields("text/plain", [("a", "b")]).unwrap();
        assert!(validate_descriptor_fields(&"c".repeat(1025), []).is_err());
        let keys: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
        assert!(validate_descriptor_fields("t", keys.iter().map(|k| (k.as_str(), ""))).is_err());
        let big = "v".repeat(4000);
        let eight: Vec<(String, &str)> = (0..9).map(|i| (format!("k{i}"), big.as_str())).collect();
        assert!(
            validate_descriptor_fields("t", eight.iter().map(|(k, v)| (k.as_str(), *v))).is_err()
        );
        validate_descriptor_fields("t", eight[..8].iter().map(|(k, v)| (k.as_str(), *v))).unwrap();
    }

    #[test]
    fn make_stream_name_fills_and_replaces() {
        assert_eq!(
            make_stream_name("file:", &["/tmp/a.txt"]),
            "file:_tmp_a.txt"
        );
        assert_eq!(make_stream_name("FILL", &[""]), "FILL");
        assert_eq!(make_stream_name("FILL", &["¿baz"]), "FILL_baz");
        assert_eq!(make_stream_name("s_", &["butler", "x y"]), "butler/x_y");
    }
}

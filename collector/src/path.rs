//! Stream paths (`PREFIX/+/NAME`) and path patterns.

use logdog_proto::types;

/// A stream's full path split into prefix and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPath {
    /// The prefix.
    pub prefix: String,
    /// The name.
    pub name: String,
}

impl StreamPath {
    /// Parses and validates `PREFIX/+/NAME`.
    ///
    /// # Errors
    /// A path without `/+/`, or an invalid prefix or name.
    pub fn parse(path: &str) -> Result<Self, String> {
        let (prefix, name) =
            split(path).ok_or_else(|| format!("{path:?} is not a stream path (PREFIX/+/NAME)"))?;
        if name.is_empty() {
            return Err(format!("{path:?} has no stream name after /+/"));
        }
        types::validate_prefix(prefix).map_err(|e| e.to_string())?;
        types::validate_stream_name(name).map_err(|e| e.to_string())?;
        Ok(Self {
            prefix: prefix.to_string(),
            name: name.to_string(),
        })
    }

    /// `PREFIX/+/NAME`.
    pub fn to_path(&self) -> String {
        format!("{}/+/{}", self.prefix, self.name)
    }
}

/// Splits at the first segment that is exactly `+`. `None` when there is no such segment.
fn split(path: &str) -> Option<(&str, &str)> {
    let path = path.trim_matches('/');
    if let Some(rest) = path.strip_prefix("+/") {
        return Some(("", rest));
    }
    if path == "+" {
        return Some(("", ""));
    }
    if let Some(prefix) = path.strip_suffix("/+") {
        return Some((prefix, ""));
    }
    path.find("/+/").map(|i| (&path[..i], &path[i + 3..]))
}

/// A query pattern: a literal prefix and a glob over names (`*` one segment, `**` any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The prefix (no wildcards).
    pub prefix: String,
    glob: Vec<String>,
}

impl Pattern {
    /// Parses `PREFIX`, `PREFIX/+/` or `PREFIX/+/GLOB`.
    ///
    /// # Errors
    /// An invalid prefix or a wildcard in the prefix.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let (prefix, glob) = split(pattern).unwrap_or((pattern.trim_matches('/'), ""));
        if prefix.contains('*') {
            return Err(format!("{pattern:?}: the prefix may not contain wildcards"));
        }
        if !prefix.is_empty() {
            types::validate_prefix(prefix).map_err(|e| e.to_string())?;
        }
        let glob = if glob.is_empty() {
            vec!["**".to_string()]
        } else {
            glob.split('/').map(str::to_string).collect()
        };
        Ok(Self {
            prefix: prefix.to_string(),
            glob,
        })
    }

    /// Whether a stream name matches the glob.
    pub fn matches_name(&self, name: &str) -> bool {
        let segs: Vec<&str> = name.split('/').collect();
        glob_match(&self.glob, &segs)
    }
}

fn glob_match(glob: &[String], segs: &[&str]) -> bool {
    match glob.split_first() {
        None => segs.is_empty(),
        Some((g, rest)) if g == "**" => (0..=segs.len()).any(|i| glob_match(rest, &segs[i..])),
        Some((g, rest)) => match segs.split_first() {
            Some((s, srest)) => seg_match(g, s) && glob_match(rest, srest),
            None => false,
        },
    }
}

/// Matches one segment against a pattern where `*` matches any run of characters.
fn seg_match(pattern: &str, seg: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == seg,
        Some((head, tail)) => {
            seg.starts_with(head)
                && (head.len()..=seg.len())
                    .any(|i| seg.is_char_boundary(i) && seg_match(tail, &seg[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = StreamPath::parse("build/123/+/steps/compile/stdout").unwrap();
        assert_eq!(p.prefix, "build/123");
        assert_eq!(p.name, "steps/compile/stdout");
        assert_eq!(p.to_path(), "build/123/+/steps/compile/stdout");
        for bad in ["nope", "a/+/", "_a/+/b", "a/+/_b", "a/+/b//c"] {
            assert!(StreamPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("x/y").unwrap();
        assert_eq!(p.prefix, "x/y");
        assert!(p.matches_name("a/b/c"));
        let p = Pattern::parse("x/+/steps/*/stdout").unwrap();
        assert!(p.matches_name("steps/compile/stdout"));
        assert!(!p.matches_name("steps/a/b/stdout"));
        let p = Pattern::parse("x/+/steps/**").unwrap();
        assert!(p.matches_name("steps/a/b/stdout"));
        assert!(!p.matches_name("other"));
        let p = Pattern::parse("x/+/std*").unwrap();
        assert!(p.matches_name("stdout") && p.matches_name("stderr") && !p.matches_name("out"));
        assert!(Pattern::parse("x*/+/a").is_err());
    }
}

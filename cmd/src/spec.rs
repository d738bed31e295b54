//! Parsing of stream specs (`name=N,type=T,...`) and tags (`k=v`).

use std::collections::BTreeMap;
use std::str::FromStr;

use logdog_proto::{StreamType, default_content_type, logpb, types};

/// A stream as described on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// Stream type.
    pub stream_type: StreamType,
    /// Content type (defaults by type).
    pub content_type: Option<String>,
    /// Stream tags.
    pub tags: BTreeMap<String, String>,
}

impl StreamSpec {
    /// The descriptor for this stream (timestamp left for the butler to fill).
    pub fn descriptor(&self) -> logpb::LogStreamDescriptor {
        logpb::LogStreamDescriptor {
            name: self.name.clone(),
            stream_type: self.stream_type as i32,
            content_type: self
                .content_type
                .clone()
                .unwrap_or_else(|| default_content_type(self.stream_type).to_string()),
            tags: self.tags.clone().into_iter().collect(),
            ..Default::default()
        }
    }
}

impl StreamSpec {
    /// Checks the descriptor against the limits the butler and the collector enforce
    /// (content type, tag count, tags' total size), with `global` tags merged in as the
    /// butler will (the stream's own tags win).
    ///
    /// # Errors
    /// What is over which limit, naming the stream.
    pub fn check_limits(&self, global: &BTreeMap<String, String>) -> Result<(), String> {
        let desc = self.descriptor();
        let mut tags = desc.tags.clone();
        for (k, v) in global {
            tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
        types::validate_descriptor_fields(
            &desc.content_type,
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(|e| format!("stream {:?}: {e}", self.name))
    }
}

impl FromStr for StreamSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut name = None;
        let mut stream_type = StreamType::Text;
        let mut content_type = None;
        let mut tags = BTreeMap::new();
        for part in s.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                format!("{part:?} is not KEY=VALUE (keys: name, type, content-type, tag)")
            })?;
            match key {
                "name" => {
                    types::validate_stream_name(value).map_err(|e| e.to_string())?;
                    name = Some(value.to_string());
                }
                "type" => {
                    stream_type = match value {
                        "text" => StreamType::Text,
                        "binary" => StreamType::Binary,
                        "datagram" => StreamType::Datagram,
                        _ => {
                            return Err(format!(
                                "unknown type {value:?} (expected text, binary or datagram)"
                            ));
                        }
                    }
                }
                "content-type" => {
                    if value.is_empty() {
                        return Err("content-type must not be empty".into());
                    }
                    content_type = Some(value.to_string());
                }
                "tag" => {
                    let (k, v) = parse_tag(value)?;
                    tags.insert(k, v);
                }
                _ => {
                    return Err(format!(
                        "unknown key {key:?} (keys: name, type, content-type, tag)"
                    ));
                }
            }
        }
        let name = name.ok_or("missing name=NAME")?;
        let spec = Self {
            name,
            stream_type,
            content_type,
            tags,
        };
        spec.check_limits(&BTreeMap::new())?;
        Ok(spec)
    }
}

/// Parses `KEY=VALUE` (`KEY=` for an empty value) and validates it as a tag.
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!(
            "tag {s:?} has no value: expected KEY=VALUE (KEY= for an empty value)"
        ));
    };
    types::validate_tag(k, v).map_err(|e| e.to_string())?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_specs() {
        let s: StreamSpec = "name=out/x,type=binary,tag=a=b,tag=c=,content-type=image/png"
            .parse()
            .unwrap();
        assert_eq!(s.name, "out/x");
        assert_eq!(s.stream_type, StreamType::Binary);
        assert_eq!(s.content_type.as_deref(), Some("image/png"));
        assert_eq!(s.tags.get("a").map(String::as_str), Some("b"));
        assert_eq!(s.tags.get("c").map(String::as_str), Some(""));
        // The content type follows the type when not given (LogDog kept text/plain here).
        let s: StreamSpec = "name=o,type=binary".parse().unwrap();
        assert_eq!(s.descriptor().content_type, "application/octet-stream");
    }

    #[test]
    fn bad_specs_name_the_bad_part() {
        for (spec, needle) in [
            ("type=text", "missing name"),
            ("name=_bad", "_bad"),
            ("name=a,type=blob", "blob"),
            ("name=a,colour=red", "colour"),
            ("name=a,oops", "oops"),
            ("name=a,tag==x", "tag key"),
        ] {
            let err = spec.parse::<StreamSpec>().unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
        assert!(parse_tag("=x").unwrap_err().contains("tag key"));
        let long_type = format!("name=a,content-type={}", "c".repeat(1025));
        let err = long_type.parse::<StreamSpec>().unwrap_err();
        assert!(err.contains("content type"), "{err}");
        let big = "v".repeat(4000);
        let many: Vec<String> = (0..9).map(|i| format!("tag=k{i}={big}")).collect();
        let err = format!("name=a,{}", many.join(","))
            .parse::<StreamSpec>()
            .unwrap_err();
        assert!(err.contains("more than 32768 bytes"), "{err}");
        // Within the total alone, over it with global tags merged.
        let s: StreamSpec = format!("name=a,{}", many[..4].join(",")).parse().unwrap();
        let global: BTreeMap<String, String> =
            (0..5).map(|i| (format!("g{i}"), big.clone())).collect();
        assert!(s.check_limits(&global).is_err());
        assert!(s.check_limits(&BTreeMap::new()).is_ok());
        assert_eq!(parse_tag("k=v=w").unwrap(), ("k".into(), "v=w".into()));
        assert_eq!(parse_tag("k=").unwrap(), ("k".into(), String::new()));
        assert!(parse_tag("novalue").unwrap_err().contains("KEY=VALUE"));
    }
}

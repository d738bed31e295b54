//! Butler configuration and descriptor validation.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use logdog_bundler::Config as BundlerConfig;
use logdog_proto::{StreamType, default_content_type, logpb, types};

/// Butler settings.
#[derive(Debug, Clone)]
pub struct ButlerConfig {
    /// Project of every stream.
    pub project: String,
    /// Prefix of every stream.
    pub prefix: String,
    /// Tags added to every stream that does not set the same key itself.
    pub global_tags: BTreeMap<String, String>,
    /// Longest time a byte waits in a buffer before it is sent (partial line or not).
    pub max_buffer_age: Duration,
    /// Per-stream buffer; a full buffer stops reading that stream until there is room. It is
    /// raised to [`BundlerConfig::bundle_sized_buffer`] (a bundle plus a read) if smaller, so
    /// a long line goes out in pieces as large as a bundle allows.
    pub max_buffered_bytes: usize,
    /// Size of each read from a stream.
    pub read_size: usize,
    /// Once every stream has ended, how long the output may take to acknowledge what is still
    /// in flight; what it has not acknowledged by then is reported as undelivered.
    pub flush_timeout: Duration,
    /// Most streams from stream servers that may be open at once (streams added directly
    /// count towards it too); a stream beyond it is refused. Bounds what clients can make the
    /// butler hold: each open stream has its own buffer.
    pub max_streams: usize,
    /// Masking, filters, rate limit and head+tail cap, applied to every text stream.
    pub policy: crate::policy::PolicyConfig,
}

/// Default for [`ButlerConfig::max_streams`].
pub const DEFAULT_MAX_STREAMS: usize = 4096;

impl Default for ButlerConfig {
    fn default() -> Self {
        Self {
            project: "default".into(),
            prefix: "default".into(),
            global_tags: BTreeMap::new(),
            max_buffer_age: Duration::from_secs(5),
            max_buffered_bytes: 5 * 1024 * 1024,
            read_size: 64 * 1024,
            flush_timeout: Duration::from_secs(60),
            max_streams: DEFAULT_MAX_STREAMS,
            policy: crate::policy::PolicyConfig::default(),
        }
    }
}

/// An invalid configuration or descriptor.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A name, tag or project broke LogDog's rules.
    #[error(transparent)]
    Invalid(#[from] types::InvalidName),
    /// The stream type is not one of text, binary, datagram.
    #[error("stream {name:?}: unknown stream type {value}")]
    StreamType {
        /// The stream.
        name: String,
        /// The bad value.
        value: i32,
    },
}

impl ButlerConfig {
    /// Checks the project, prefix and global tags (LogDog only found bad global tags once
    /// every stream failed to register).
    ///
    /// # Errors
    /// The first invalid value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        types::validate_project(&self.project)?;
        types::validate_prefix(&self.prefix)?;
        types::validate_descriptor_fields(
            "",
            self.global_tags
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        Ok(())
    }

    pub(crate) fn bundler_config(&self, max_bundle_size: usize) -> BundlerConfig {
        let mut cfg = BundlerConfig {
            project: self.project.clone(),
            prefix: self.prefix.clone(),
            max_bundle_size,
            max_buffer_age: self.max_buffer_age,
            max_buffered_bytes: self.max_buffered_bytes,
            read_size: self.read_size,
            flush_timeout: self.flush_timeout,
        };
        cfg.max_buffered_bytes = cfg.max_buffered_bytes.max(cfg.bundle_sized_buffer());
        cfg
    }

    /// Validates a stream's descriptor and completes it: empty prefix, default content type,
    /// timestamp `now` when unset, global tags merged (the stream's own tags win).
    ///
    /// # Errors
    /// An invalid name, type or tag, or a descriptor over the collector's limits (content
    /// type, tag count, tags' total size) once global tags are merged.
    pub fn prepare_descriptor(
        &self,
        mut desc: logpb::LogStreamDescriptor,
        now: SystemTime,
    ) -> Result<logpb::LogStreamDescriptor, ConfigError> {
        types::validate_stream_name(&desc.name)?;
        let kind = StreamType::try_from(desc.stream_type).map_err(|_| ConfigError::StreamType {
            name: desc.name.clone(),
            value: desc.stream_type,
        })?;
        for (k, v) in &desc.tags {
            types::validate_tag(k, v)?;
        }
        desc.prefix.clear();
        if desc.content_type.is_empty() {
            desc.content_type = default_content_type(kind).to_string();
        }
        let unset = desc
            .timestamp
            .as_ref()
            .is_none_or(|t| t.seconds == 0 && t.nanos == 0);
        if unset {
            desc.timestamp = Some(logdog_bundler::core::timestamp_of(now));
        }
        for (k, v) in &self.global_tags {
            desc.tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
        // After the merge: global tags count towards the limits the collector enforces.
        types::validate_descriptor_fields(
            &desc.content_type,
            desc.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        Ok(desc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_tags_merge_and_stream_tags_win() {
        let cfg = ButlerConfig {
            global_tags: [("a".into(), "global".into()), ("b".into(), "global".into())].into(),
            ..Default::default()
        };
        let desc = logpb::LogStreamDescriptor {
            name: "s".into(),
            tags: [("a".to_string(), "mine".to_string())].into(),
            ..Default::default()
        };
        let d = cfg
            .prepare_descriptor(desc, SystemTime::UNIX_EPOCH + Duration::from_secs(9))
            .unwrap();
        assert_eq!(d.tags["a"], "mine");
        assert_eq!(d.tags["b"], "global");
        assert_eq!(d.content_type, "text/plain; charset=utf-8");
        assert_eq!(d.timestamp.unwrap().seconds, 9);
    }

    #[test]
    fn bad_config_and_descriptors_are_refused() {
        let cfg = ButlerConfig {
            global_tags: [("bad key".into(), "v".into())].into(),
            ..Default::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = ButlerConfig::default();
        let bad = logpb::LogStreamDescriptor {
            name: "_x".into(),
            ..Default::default()
        };
        assert!(cfg.prepare_descriptor(bad, SystemTime::now()).is_err());
        let bad = logpb::LogStreamDescriptor {
            name: "x".into(),
            stream_type: 7,
            ..Default::default()
        };
        assert!(cfg.prepare_descriptor(bad, SystemTime::now()).is_err());
    }

    #[test]
    fn descriptors_over_the_collectors_limits_after_merging_global_tags_are_refused() {
        let big = "v".repeat(4000);
        let global: BTreeMap<String, String> =
            (0..5).map(|i| (format!("g{i}"), big.clone())).collect();
        let cfg = ButlerConfig {
            global_tags: global,
            ..Default::default()
        };
        cfg.validate().unwrap();
        // Four tags of its own are fine alone, and the global ones too; together they are
        // over the 32 KiB total.
        let desc = logpb::LogStreamDescriptor {
            name: "s".into(),
            tags: (0..4).map(|i| (format!("s{i}"), big.clone())).collect(),
            ..Default::default()
        };
        let err = cfg
            .prepare_descriptor(desc.clone(), SystemTime::now())
            .unwrap_err();
        assert!(err.to_string().contains("more than 32768 bytes"), "{err}");
        ButlerConfig::default()
            .prepare_descriptor(desc.clone(), SystemTime::now())
            .unwrap();
        let long_type = logpb::LogStreamDescriptor {
            content_type: "c".repeat(1025),
            ..desc
        };
        let err = ButlerConfig::default()
            .prepare_descriptor(long_type, SystemTime::now())
            .unwrap_err();
        assert!(err.to_string().contains("content type"), "{err}");
        let too_many = ButlerConfig {
            global_tags: (0..65).map(|i| (format!("g{i}"), String::new())).collect(),
            ..Default::default()
        };
        assert!(too_many.validate().is_err());
    }
}

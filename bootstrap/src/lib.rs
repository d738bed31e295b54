//! The environment a butler gives its children, and reading it back on the child's side.
//!
//! The variable names are LogDog's, so LogDog clients find the butler unchanged.

use std::collections::BTreeMap;

/// Address of the butler's stream server, e.g. `unix:/tmp/…/sock`.
pub const STREAM_SERVER_PATH: &str = "LOGDOG_STREAM_SERVER_PATH";
/// The butler's project.
pub const STREAM_PROJECT: &str = "LOGDOG_STREAM_PROJECT";
/// The butler's prefix.
pub const STREAM_PREFIX: &str = "LOGDOG_STREAM_PREFIX";
/// Where the logs end up (`file://DIR` for the directory output).
pub const COORDINATOR_HOST: &str = "LOGDOG_COORDINATOR_HOST";
/// A namespace that child clients put in front of their stream names. The butler passes it
/// through and never sets it.
pub const NAMESPACE: &str = "LOGDOG_NAMESPACE";

/// The bootstrap values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// Stream server address.
    pub stream_server_path: Option<String>,
    /// Project.
    pub project: Option<String>,
    /// Prefix.
    pub prefix: Option<String>,
    /// Coordinator host.
    pub coordinator_host: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
}

impl Environment {
    /// The variables to export: only those with a non-empty value (as LogDog does).
    pub fn to_vars(&self) -> BTreeMap<&'static str, String> {
        [
            (STREAM_SERVER_PATH, &self.stream_server_path),
            (STREAM_PROJECT, &self.project),
            (STREAM_PREFIX, &self.prefix),
            (COORDINATOR_HOST, &self.coordinator_host),
            (NAMESPACE, &self.namespace),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().filter(|v| !v.is_empty()).map(|v| (k, v.clone())))
        .collect()
    }

    /// Reads the values from a variable lookup (such as `std::env::var`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            stream_server_path: get(STREAM_SERVER_PATH),
            project: get(STREAM_PROJECT),
            prefix: get(STREAM_PREFIX),
            coordinator_host: get(COORDINATOR_HOST),
            namespace: get(NAMESPACE),
        }
    }

    /// Reads the values from this process's environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_empty_values() {
        let env = Environment {
            project: Some("p".into()),
            prefix: Some("x/y".into()),
            coordinator_host: Some(String::new()),
            ..Default::default()
        };
        let vars = env.to_vars();
        assert_eq!(vars.len(), 2);
        let back = Environment::from_lookup(|k| vars.get(k).cloned());
        assert_eq!(back.project.as_deref(), Some("p"));
        assert_eq!(back.prefix.as_deref(), Some("x/y"));
        assert_eq!(back.coordinator_host, None);
    }
}

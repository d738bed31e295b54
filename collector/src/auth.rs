//! Who may write and read which projects: bearer tokens from an auth file.
//!
//! `logdog_collector --auth FILE` loads a TOML file of tokens. The file holds only each
//! token's SHA-256 hash, never the token itself:
//!
//! ```toml
//! [[token]]
//! name = "ci-fleet"          # shown in log lines instead of the token
//! sha256 = "9f86d0…"          # hex SHA-256 of the token
//! write = ["chromium", "v8"]  # projects it may write ("*": all)
//! read = ["*"]                # projects it may read ("*": all)
//! ```
//!
//! Clients send `authorization: Bearer TOKEN` (gRPC metadata, HTTP headers); the viewer also
//! takes it from its login cookie and the tail server from a first line `auth TOKEN`.
//! Without `--auth` the collector is [open](Auth::open): every caller may do everything.
//!
//! Refusals are counted ([`AuthStats`]) and logged with the token's name (or "no token" /
//! "unknown token"), never with the token.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::codegen::http;

/// The prefix of every token that `logdog_collector token new` makes, so that a token is
/// recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "ldt_";

/// Longest token accepted in a request (a longer one is refused without being hashed).
pub const MAX_TOKEN_LEN: usize = 256;

/// What a caller wants to do to a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Store bundles (create, append to and end streams).
    Write,
    /// Read streams back (gRPC, the viewer, the tail server).
    Read,
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::Write => "write",
            Right::Read => "read",
        })
    }
}

/// Why a request was refused. The messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No token, or one the collector does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known token that may not do this.
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<Denied> for tonic::Status {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Denied::PermissionDenied(m) => tonic::Status::permission_denied(m),
        }
    }
}

/// A bad auth file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
}

/// Counters of refused requests.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Requests without a token or with an unknown one.
    pub unauthenticated: AtomicU64,
    /// Requests whose token may not do what they asked.
    pub denied: AtomicU64,
}

/// One entry of the auth file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    read: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// A set of projects: all, or some by name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Projects {
    All,
    Some(HashSet<String>),
}

impl Projects {
    fn of(list: &[String]) -> Self {
        if list.iter().any(|p| p == "*") {
            Projects::All
        } else {
            Projects::Some(list.iter().cloned().collect())
        }
    }

    fn contains(&self, project: &str) -> bool {
        match self {
            Projects::All => true,
            Projects::Some(s) => s.contains(project),
        }
    }
}

/// What one token may do.
#[derive(Debug)]
struct Grant {
    name: String,
    write: Projects,
    read: Projects,
}

#[derive(Debug)]
struct Tokens {
    by_hash: HashMap<[u8; 32], Arc<Grant>>,
}

/// The collector's access policy: open, or the tokens of an auth file. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Auth {
    tokens: Option<Arc<Tokens>>,
    stats: Arc<AuthStats>,
}

impl Default for Auth {
    fn default() -> Self {
        Self::open()
    }
}

impl Auth {
    /// No auth file: every caller may write and read every project.
    pub fn open() -> Self {
        Self {
            tokens: None,
            stats: Arc::default(),
        }
    }

    /// Loads the auth file at `path`.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid auth file.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of an auth file; `origin` names it in errors.
    ///
    /// # Errors
    /// The text is not a valid auth file: bad TOML, an unknown key, a hash that is not 64 hex
    /// digits, two entries with one hash or one name, or a project that is not `*` or a valid
    /// project name.
    pub fn parse(text: &str, origin: &str) -> Result<Self, AuthError> {
        let bad = |message: String| AuthError::Parse {
            path: origin.to_string(),
            message,
        };
        let file: AuthFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut by_hash = HashMap::new();
        let mut names = HashSet::new();
        for (i, t) in file.token.into_iter().enumerate() {
            let which = format!("token {} ({:?})", i + 1, t.name);
            if t.name.is_empty() {
                return Err(bad(format!("{which}: the name is empty")));
            }
            let hash = parse_hex32(&t.sha256).ok_or_else(|| {
                bad(format!(
                    "{which}: sha256 must be 64 hex digits (the hash of the token, not the token)"
                ))
            })?;
            for p in t.write.iter().chain(&t.read) {
                if p != "*" {
                    logdog_proto::types::validate_project(p)
                        .map_err(|e| bad(format!("{which}: {e}")))?;
                }
            }
            if !names.insert(t.name.clone()) {
                return Err(bad(format!("{which}: the name is used twice")));
            }
            let grant = Grant {
                name: t.name,
                write: Projects::of(&t.write),
                read: Projects::of(&t.read),
            };
            if by_hash.insert(hash, Arc::new(grant)).is_some() {
                return Err(bad(format!("{which}: the same token is listed twice")));
            }
        }
        Ok(Self {
            tokens: Some(Arc::new(Tokens { by_hash })),
            stats: Arc::default(),
        })
    }

    /// Whether there is no auth file (everyone may do everything).
    pub fn is_open(&self) -> bool {
        self.tokens.is_none()
    }

    /// Number of tokens in the auth file (0 when open).
    pub fn token_count(&self) -> usize {
        self.tokens.as_ref().map_or(0, |t| t.by_hash.len())
    }

    /// The refusal counters.
    pub fn stats(&self) -> &Arc<AuthStats> {
        &self.stats
    }

    /// Who presents `token` (`None`: no token was sent). With an open policy everyone is
    /// [`Caller::anyone`]. The refusal is not counted or logged here: see [`Auth::refuse`].
    ///
    /// # Errors
    /// [`Denied::Unauthenticated`]: auth is on and the token is missing or unknown.
    pub fn caller(&self, token: Option<&str>) -> Result<Caller, Denied> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller::anyone());
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Denied::Unauthenticated(
                "this collector needs a token: send `authorization: Bearer TOKEN` \
                 (LOGDOG_TOKEN or --token-file for the butler and logdog)"
                    .to_string(),
            ));
        };
        if token.len() > MAX_TOKEN_LEN {
            return Err(Denied::Unauthenticated("unknown token".to_string()));
        }
        match tokens.by_hash.get(&sha256(token.as_bytes())) {
            Some(g) => Ok(Caller(Some(g.clone()))),
            None => Err(Denied::Unauthenticated("unknown token".to_string())),
        }
    }

    /// [`Auth::caller`], then [`Caller::may`]; a refusal is counted and logged (see
    /// [`Auth::refuse`]). `what` names the request in the log line.
    ///
    /// # Errors
    /// The caller is unknown or may not do `right` to `project`.
    pub fn check(
        &self,
        token: Option<&str>,
        right: Right,
        project: &str,
        what: &str,
    ) -> Result<Caller, Denied> {
        let result = self
            .caller(token)
            .and_then(|c| c.may(right, project).map(|()| c));
        result.map_err(|d| self.refuse(d, what))
    }

    /// Counts and logs the refusal `denied` of the request `what`, and hands it back.
    pub fn refuse(&self, denied: Denied, what: &str) -> Denied {
        match &denied {
            Denied::Unauthenticated(m) => {
                let n = self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(request = what, reason = %m, refused = n, "unauthenticated request refused");
            }
            Denied::PermissionDenied(m) => {
                let n = self.stats.denied.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(request = what, reason = %m, refused = n, "request refused: permission denied");
            }
        }
        denied
    }
}

/// Who made a request: a token's grant, or anyone (auth is off).
#[derive(Debug, Clone)]
pub struct Caller(Option<Arc<Grant>>);

impl Caller {
    /// The caller of an open collector: may do everything.
    pub fn anyone() -> Self {
        Self(None)
    }

    /// The token's name, or `anyone`.
    pub fn name(&self) -> &str {
        self.0.as_ref().map_or("anyone", |g| g.name.as_str())
    }

    /// Whether the caller may do `right` to `project`.
    pub fn allows(&self, right: Right, project: &str) -> bool {
        match &self.0 {
            None => true,
            Some(g) => match right {
                Right::Write => g.write.contains(project),
                Right::Read => g.read.contains(project),
            },
        }
    }

    /// Like [`Caller::allows`], with the refusal's message.
    ///
    /// # Errors
    /// [`Denied::PermissionDenied`], naming the token (not the token itself) and the project.
    pub fn may(&self, right: Right, project: &str) -> Result<(), Denied> {
        if self.allows(right, project) {
            Ok(())
        } else {
            Err(Denied::PermissionDenied(format!(
                "token {:?} may not {right} project {project:?}",
                self.name()
            )))
        }
    }
}

/// The token of an `authorization: Bearer TOKEN` header (scheme case-insensitive), if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A new random token: [`TOKEN_PREFIX`] and 64 hex digits (256 bits).
///
/// # Errors
/// The system's random source failed.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

/// The hex SHA-256 of `token`: what the auth file holds.
pub fn token_hash(token: &str) -> String {
    hex(&sha256(token.as_bytes()))
}

/// The auth-file entry of a token named `name` with hash `hash`.
pub fn toml_entry(name: &str, hash: &str, write: &[String], read: &[String]) -> String {
    let list = |ps: &[String]| {
        ps.iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[token]]\nname = {name:?}\nsha256 = \"{hash}\"\nwrite = [{}]\nread = [{}]\n",
        list(write),
        list(read)
    )
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tokens: &[(&str, &str, &str)]) -> String {
        tokens
            .iter()
            .map(|(name, write, read)| {
                let t = format!("tok-{name}");
                format!(
                    "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nwrite = [{write}]\nread = [{read}]\n",
                    token_hash(&t)
                )
            })
            .collect()
    }

    #[test]
    fn tokens_grant_what_their_entry_lists() {
        let auth = Auth::parse(
            &file(&[("ci", "\"chromium\"", "\"*\""), ("reader", "", "\"v8\"")]),
            "auth.toml",
        )
        .unwrap();
        let ci = auth.caller(Some("tok-ci")).unwrap();
        assert_eq!(ci.name(), "ci");
        assert!(ci.allows(Right::Write, "chromium"));
        assert!(!ci.allows(Right::Write, "v8"));
        assert!(ci.allows(Right::Read, "anything"));
        let reader = auth.caller(Some("tok-reader")).unwrap();
        assert!(!reader.allows(Right::Write, "v8"));
        assert!(reader.allows(Right::Read, "v8"));
        let denied = reader.may(Right::Read, "chromium").unwrap_err();
        assert!(matches!(denied, Denied::PermissionDenied(_)));
        assert!(!denied.to_string().contains("tok-reader"));
    }

    #[test]
    fn missing_unknown_and_huge_tokens_are_unauthenticated_and_counted() {
        let auth = Auth::parse(&file(&[("ci", "\"*\"", "\"*\"")]), "auth.toml").unwrap();
        for t in [
            None,
            Some(""),
            Some("tok-nobody"),
            Some(&*"x".repeat(10_000)),
        ] {
            let d = auth.check(t, Right::Read, "p", "test").unwrap_err();
            assert!(matches!(d, Denied::Unauthenticated(_)), "{d:?}");
        }
        assert_eq!(auth.stats().unauthenticated.load(Ordering::Relaxed), 4);
        assert!(
            auth.check(Some("tok-ci"), Right::Write, "p", "test")
                .is_ok()
        );
    }

    #[test]
    fn an_open_policy_allows_everything() {
        let auth = Auth::open();
        assert!(auth.is_open());
        let c = auth.caller(None).unwrap();
        assert!(c.allows(Right::Write, "any") && c.allows(Right::Read, "any"));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let h = token_hash("t");
        for (text, needle) in [
            (
                "[[token]]\nname = \"a\"\nsha256 = \"abc\"\n",
                "64 hex digits",
            ),
            (
                &*format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nwrit = [\"x\"]\n"),
                "writ",
            ),
            (
                &*format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nwrite = [\"Bad!\"]\n"),
                "project",
            ),
            (
                &*format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\n[[token]]\nname = \"b\"\nsha256 = \"{h}\"\n"
                ),
                "twice",
            ),
            ("[[token]\n", "auth.toml"),
        ] {
            let e = Auth::parse(text, "auth.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn new_tokens_are_random_and_their_entry_parses() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        let entry = toml_entry("ci", &token_hash(&a), &["p".into()], &["*".into()]);
        let auth = Auth::parse(&entry, "entry").unwrap();
        assert!(auth.caller(Some(&a)).unwrap().allows(Right::Write, "p"));
    }

    #[test]
    fn bearer_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}

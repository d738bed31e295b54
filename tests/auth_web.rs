//! End-to-end tests of the web viewer and the tail server with an auth file and TLS: a real
//! `logdog_collector --http --tail --auth FILE --tls-cert C --tls-key K`, streams stored by a
//! real butler, and clients that trust the test CA (rustls, and `openssl s_client` when it is
//! installed).
//!
//! The butler cannot speak TLS here and TLS is one flag for all three servers, so the streams
//! are stored by a plain collector first; the same data directory is then served with TLS and
//! auth.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{Pki, TestToken, write_auth_file};
use common::{Collector, Guarded, TIMEOUT, butler, run_butler, tempdir};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The text of `alpha/build/+/log`.
const ALPHA_LOG: &str = "alpha line 1\n\x1b[31malpha line 2\x1b[0m\nalpha line 3\n";
/// The text of `beta/build/+/log`.
const BETA_LOG: &str = "beta secret line\n";

/// The tokens of the auth file: `reader` reads alpha, `admin` reads everything, `writer`
/// only writes.
fn tokens() -> Vec<TestToken> {
    vec![
        TestToken::new("reader", &[], &["alpha"]),
        TestToken::new("admin", &[], &["*"]),
        TestToken::new("writer", &["*"], &[]),
    ]
}

fn token(name: &str) -> String {
    tokens()
        .into_iter()
        .find(|t| t.name == name)
        .expect("a test token")
        .token
}

/// Waits until `cond` holds, checking every 20 ms, for at most [`TIMEOUT`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stores `alpha/build/+/log` and `beta/build/+/log` (complete), and `alpha/live/+/stdout`
/// (never completed: its butler is killed), with a plain collector on `data`; returns the
/// first bytes of the live stream.
fn store_streams(d: &Path, data: &Path) -> Vec<u8> {
    let c = Collector::start_with(data, "127.0.0.1:0", &["--tail", "127.0.0.1:0"]);
    let tail = c.tail.clone().expect("the tail server's address");
    for (project, text) in [("alpha", ALPHA_LOG), ("beta", BETA_LOG)] {
        let src = d.join(format!("{project}.txt"));
        std::fs::write(&src, text).unwrap();
        let out = run_butler(
            d,
            &[
                "--project",
                project,
                "--prefix",
                "build",
                "--output",
                &c.output(),
                "stream",
                "--source",
                &src.display().to_string(),
                "--stream",
                "name=log",
            ],
        );
        out.assert_code(0);
    }
    // A stream that stays open: its butler is killed before it ends it.
    let live = b"live line 1\nlive line 2\n".to_vec();
    std::fs::write(d.join("live.txt"), &live).unwrap();
    let mut cmd = butler(
        d,
        &[
            "--project",
            "alpha",
            "--prefix",
            "live",
            "--output",
            &c.output(),
            "--max-buffer-age",
            "50ms",
            "run",
            // The command's stream alone (the test counts alpha's streams).
            "--no-run-record",
            "--no-echo",
            "--",
            "sh",
            "-c",
            "cat \"$1\"; exec sleep 1000",
            "sh",
            &d.join("live.txt").display().to_string(),
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut b = Guarded::spawn(&mut cmd);
    wait_until("the live stream to be stored", || {
        let mut s = TcpStream::connect(&tail).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(b"stream alpha/live/+/stdout\n").unwrap();
        let mut got = vec![0u8; live.len()];
        // The stream may not exist yet: then the answer is an error line and the end.
        let mut n = 0;
        while n < got.len() {
            match s.read(&mut got[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        got == live
    });
    c.stop();
    nix::sys::signal::killpg(b.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    b.wait();
    live
}

/// A rustls client configuration trusting `ca`, offering `alpn`.
fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("the CA file") {
        roots.add(cert.expect("a CA certificate")).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `addr` (for the name `localhost`) trusting `ca`; the handshake is done.
fn connect(addr: &str, ca: &Path, alpn: &[&[u8]]) -> Result<Tls, std::io::Error> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(TIMEOUT))?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(client_config(ca, alpn), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// A response: status, head (lower-cased), body.
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The value of header `name` (lower case), if present.
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }
}

/// An HTTP/1.0 request over a TLS connection trusting `ca` (the body is read to the end).
fn https(
    addr: &str,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = connect(addr, ca, &[b"http/1.1"])
        .unwrap_or_else(|e| panic!("TLS connection to {addr}: {e}"));
    http(&mut s, addr, method, path, headers, body)
}

/// An HTTP/1.0 request on `s`; reads the answer until the server closes.
fn http(
    s: &mut (impl Read + Write),
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the answer: {e}"));
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no end of headers"));
    let head = String::from_utf8_lossy(&resp[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    Resp {
        status,
        head,
        body: resp[split + 4..].to_vec(),
    }
}

/// A tail-server conversation over TLS: sends `lines`, reads until the server closes.
fn tail_tls(addr: &str, ca: &Path, lines: &str) -> String {
    let mut s = connect(addr, ca, &[]).unwrap_or_else(|e| panic!("TLS to the tail server: {e}"));
    s.write_all(lines.as_bytes()).unwrap();
    s.flush().unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{lines:?}: reading the answer: {e}"));
    String::from_utf8_lossy(&out).into_owned()
}

/// The collector flags for auth (and TLS, if `pki`) with the viewer and the tail server.
fn secured_flags(auth: &Path, pki: Option<&Pki>, extra: &[&str]) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--http",
        "127.0.0.1:0",
        "--tail",
        "127.0.0.1:0",
        "--auth",
        &auth.display().to_string(),
        "--log-level",
        "info,logdog_collector::tailsrv=debug",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(p) = pki {
        flags.extend(p.flags());
    }
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

fn start(data: &Path, flags: &[String]) -> Collector {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Collector::start_with(data, "127.0.0.1:0", &flags)
}

/// Fails unless the log never shows any of the tokens.
#[track_caller]
fn assert_no_token_in(log: &str) {
    for t in tokens() {
        assert!(
            !log.contains(&t.token),
            "the log shows token {:?}:\n{log}",
            t.name
        );
    }
}

/// Paths of the test's files.
struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    auth: PathBuf,
    live: Vec<u8>,
}

fn setup() -> Setup {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let data = dir.join("data");
    let auth = dir.join("auth.toml");
    write_auth_file(&auth, &tokens());
    let live = store_streams(&dir, &data);
    Setup {
        _tmp: tmp,
        dir,
        data,
        auth,
        live,
    }
}

#[test]
fn viewer_over_tls_needs_a_token_that_may_read_the_project() {
    let s = setup();
    let pki = Pki::new(&s.dir, "web");
    let c = start(&s.data, &secured_flags(&s.auth, Some(&pki), &[]));
    let http = c.http.clone().expect("the viewer's address");
    let ca = pki.ca.as_path();
    let bearer = |name: &str| format!("Bearer {}", token(name));
    let (reader, admin, writer) = (bearer("reader"), bearer("admin"), bearer("writer"));
    let get = |path: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        https(&http, ca, "GET", path, &headers, b"")
    };

    // A client that never starts its handshake holds up nobody.
    let silent = TcpStream::connect(&http).unwrap();

    // ALPN offers HTTP/2 and HTTP/1.1.
    let h2 = connect(&http, ca, &[b"h2", b"http/1.1"]).expect("TLS with ALPN h2");
    assert_eq!(h2.conn.alpn_protocol(), Some(&b"h2"[..]));
    drop(h2);
    let h1 = connect(&http, ca, &[b"http/1.1"]).expect("TLS with ALPN http/1.1");
    assert_eq!(h1.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(h1);
    // A real HTTP/2 request.
    let (status, body) = h2_get(&http, ca, "/api/projects", &admin);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("alpha"), "{body}");

    // A client that does not trust the collector's CA fails the handshake.
    let other = Pki::new(&s.dir, "other");
    let err =
        connect(&http, &other.ca, &[b"http/1.1"]).expect_err("a handshake trusting another CA");
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("certificate"),
        "{err}"
    );
    // Plain HTTP to the TLS port gets nowhere.
    let mut plain = TcpStream::connect(&http).unwrap();
    plain.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = plain.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out);
    assert!(!out.starts_with(b"HTTP/"), "plain HTTP was answered");

    // No token: pages redirect to the login form, the API says 401.
    let r = get("/", None);
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(r.header("location").as_deref(), Some("/login?next=%2f"));
    let r = get("/s/alpha/build/+/log?line=2", None);
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(
        r.header("location").as_deref(),
        Some("/login?next=%2fs%2falpha%2fbuild%2f%2b%2flog%3fline%3d2")
    );
    for path in [
        "/api/projects",
        "/api/streams/alpha",
        "/api/stream/alpha/build/+/log",
        "/api/rows/alpha/build/+/log",
        "/api/events/alpha/build/+/log",
        "/api/search/alpha/build/+/log?q=alpha",
        "/api/sections/alpha/build/+/log",
        "/api/interleave/alpha/build",
        "/api/run/alpha/build",
        "/raw/alpha/build/+/log",
    ] {
        let r = get(path, None);
        assert_eq!(r.status, 401, "{path}: {}", r.head);
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("needs a token"),
            "{path}: {}",
            r.text()
        );
        let r = get(path, Some("Bearer ldt_not_a_token"));
        assert_eq!(r.status, 401, "{path}: {}", r.head);
        assert_eq!(r.json()["error"], "unknown token", "{path}");
    }
    // The security headers stay.
    assert!(r.head.contains("content-security-policy:"), "{}", r.head);
    let r = get("/login", None);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("name=\"token\""), "{}", r.text());
    assert!(r.head.contains("frame-ancestors 'none'"), "{}", r.head);
    // Static files are public (the login form uses the style sheet).
    assert_eq!(get("/static/style.css", None).status, 200);

    // A token that may read alpha: everything of alpha, nothing of beta.
    let r = get("/", Some(&reader));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("action=\"/logout\""), "{}", r.text());
    assert_eq!(get("/p/alpha", Some(&reader)).status, 200);
    assert_eq!(get("/s/alpha/build/+/log", Some(&reader)).status, 200);
    let r = get("/api/projects", Some(&reader));
    assert_eq!(r.json()["projects"], serde_json::json!(["alpha"]));
    let r = get("/api/streams/alpha", Some(&reader));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["streams"].as_array().unwrap().len(), 2);
    let r = get("/api/stream/alpha/build/+/log", Some(&reader));
    assert_eq!(r.json()["stream"]["state"], "complete", "{}", r.text());
    let r = get("/api/rows/alpha/build/+/log", Some(&reader));
    assert_eq!(
        r.json()["rows"].as_array().unwrap().len(),
        3,
        "{}",
        r.text()
    );
    let r = get("/raw/alpha/build/+/log", Some(&reader));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), ALPHA_LOG);
    let r = get("/api/events/alpha/build/+/log", Some(&reader));
    assert_eq!(r.status, 200);
    assert!(r.head.contains("text/event-stream"), "{}", r.head);
    let events = r.text();
    assert!(events.contains("alpha line 3"), "{events}");
    assert!(events.contains("event: end"), "{events}");
    let r = get("/api/search/alpha/build/+/log?q=LINE%203", Some(&reader));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["matches"][0]["n"], 2, "{}", r.text());
    let r = get("/api/interleave/alpha/build", Some(&reader));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["rows"].as_array().unwrap().len(),
        3,
        "{}",
        r.text()
    );
    assert_eq!(get("/c/alpha/build", Some(&reader)).status, 200);
    for path in [
        "/api/streams/beta",
        "/api/stream/beta/build/+/log",
        "/api/rows/beta/build/+/log",
        "/api/events/beta/build/+/log",
        "/api/search/beta/build/+/log?q=secret",
        "/api/sections/beta/build/+/log",
        "/api/interleave/beta/build",
        "/api/run/beta/build",
        "/raw/beta/build/+/log",
    ] {
        let r = get(path, Some(&reader));
        assert_eq!(r.status, 403, "{path}: {}", r.head);
        assert_eq!(
            r.json()["error"],
            "token \"reader\" may not read project \"beta\"",
            "{path}"
        );
        assert!(!r.text().contains("beta secret"), "{path}");
    }
    for page in ["/p/beta", "/s/beta/build/+/log", "/c/beta/build"] {
        let r = get(page, Some(&reader));
        assert_eq!(r.status, 403, "{page}: {}", r.head);
        assert!(r.text().contains("may not read project"), "{}", r.text());
    }
    // The admin sees every project; a token that only writes sees none and reads nothing.
    let r = get("/api/projects", Some(&admin));
    let projects = r.json()["projects"].clone();
    for p in ["alpha", "beta", "default"] {
        assert!(
            projects.as_array().unwrap().iter().any(|v| v == p),
            "{projects}"
        );
    }
    assert_eq!(get("/raw/beta/build/+/log", Some(&admin)).text(), BETA_LOG);
    let r = get("/api/projects", Some(&writer));
    assert_eq!(r.json()["projects"], serde_json::json!([]));
    assert_eq!(
        get("/api/stream/alpha/build/+/log", Some(&writer)).status,
        403
    );

    // The login form: the cookie, then the page the user came from.
    let origin = format!("https://{http}");
    let form = |body: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        headers.extend_from_slice(extra);
        https(&http, ca, "POST", "/login", &headers, body.as_bytes())
    };
    let login_body = format!(
        "next=%2Fs%2Falpha%2Fbuild%2F%2B%2Flog&token={}",
        token("reader")
    );
    let r = form(
        &login_body,
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
    );
    assert_eq!(r.status, 303, "{}\n{}", r.head, r.text());
    assert_eq!(
        r.header("location").as_deref(),
        Some("/s/alpha/build/+/log")
    );
    let set = r.header("set-cookie").expect("a cookie");
    assert_eq!(
        set,
        format!(
            "logdog_token={}; httponly; samesite=strict; path=/; secure",
            token("reader").to_lowercase()
        )
    );
    let cookie = format!("logdog_token={}", token("reader"));
    let with_cookie = |path: &str| https(&http, ca, "GET", path, &[("Cookie", &cookie)], b"");
    assert_eq!(with_cookie("/s/alpha/build/+/log").status, 200);
    assert_eq!(
        with_cookie("/api/projects").json()["projects"],
        serde_json::json!(["alpha"])
    );
    assert_eq!(with_cookie("/raw/alpha/build/+/log").text(), ALPHA_LOG);
    assert_eq!(with_cookie("/raw/beta/build/+/log").status, 403);
    // Elsewhere than this site: back to the front page instead.
    let r = form(
        &format!("next=%2F%2Fevil.example%2F&token={}", token("reader")),
        &[],
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location").as_deref(), Some("/"));
    // A bad token: the form again, 401, no cookie.
    let r = form("next=%2F&token=ldt_wrong", &[("Origin", &origin)]);
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    assert!(r.text().contains("unknown token"), "{}", r.text());
    // Another site's form is refused.
    for headers in [
        [("Origin", "https://evil.example"), ("X-Nothing", "")],
        [("Sec-Fetch-Site", "cross-site"), ("X-Nothing", "")],
    ] {
        let r = form(&login_body, &headers);
        assert_eq!(r.status, 403, "{headers:?}");
        assert!(r.header("set-cookie").is_none(), "{headers:?}");
    }
    // Logging out clears the cookie.
    let r = https(
        &http,
        ca,
        "POST",
        "/logout",
        &[("Origin", &origin), ("Cookie", &cookie)],
        b"",
    );
    assert_eq!(r.status, 303);
    let set = r.header("set-cookie").expect("a cookie");
    assert!(
        set.starts_with("logdog_token=;") && set.contains("max-age=0"),
        "{set}"
    );

    // The silent client did not hold anything up, and is let go after the handshake timeout.
    let mut silent = silent;
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut sink = Vec::new();
    let _ = silent.read_to_end(&mut sink);
    assert!(sink.is_empty(), "the silent client got {sink:?}");
    wait_until("the handshake timeout to be logged", || {
        c.log().contains("not finished within 10s")
    });
    let log = c.stop_with_log();
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(log.contains("unauthenticated request refused"), "{log}");
    assert!(log.contains("request refused: permission denied"), "{log}");
    assert!(log.contains("request refused: cross-site form"), "{log}");
    assert_no_token_in(&log);
}

/// `GET path` over HTTP/2 on TLS with `authorization`: the status and the body.
fn h2_get(addr: &str, ca: &Path, path: &str, authorization: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client_config(ca, &[b"h2"]));
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let (client, conn) = h2::client::handshake(tls).await.expect("HTTP/2 handshake");
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::get(format!("https://{addr}{path}"))
            .header("authorization", authorization)
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.expect("a response");
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        (status, String::from_utf8_lossy(&out).into_owned())
    })
}

#[test]
fn tail_server_over_tls_needs_an_auth_line() {
    let s = setup();
    let pki = Pki::new(&s.dir, "tail");
    let c = start(
        &s.data,
        &secured_flags(&s.auth, Some(&pki), &["--tail-max-connections", "4"]),
    );
    let tail = c.tail.clone().expect("the tail server's address");
    let ca = pki.ca.as_path();
    let reader = token("reader");

    // Silent clients hold slots without a request; a new client takes the oldest one's slot
    // (while it is still in its handshake).
    let mut silent: Vec<TcpStream> = (0..4)
        .map(|_| {
            let s = TcpStream::connect(&tail).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s
        })
        .collect();
    let got = tail_tls(
        &tail,
        ca,
        &format!("auth {reader}\nstream alpha/build/+/log\n"),
    );
    assert_eq!(got, ALPHA_LOG);
    let mut sink = Vec::new();
    let _ = silent[0].read_to_end(&mut sink);
    assert!(sink.is_empty(), "the evicted client got {sink:?}");
    silent.clear();
    // One that stays silent is let go after the handshake timeout (checked at the end).
    let mut silent = TcpStream::connect(&tail).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();

    // The auth line and the request in separate writes, and with `\r\n`.
    let mut t = connect(&tail, ca, &[]).unwrap();
    t.write_all(format!("auth {reader}\r\n").as_bytes())
        .unwrap();
    t.flush().unwrap();
    t.write_all(b"stream alpha/build/+/log from byte -13\r\n")
        .unwrap();
    t.flush().unwrap();
    let mut out = String::new();
    t.read_to_string(&mut out).unwrap();
    assert_eq!(out, "alpha line 3\n");

    // Refusals: one line each, then the connection is closed.
    assert_eq!(
        tail_tls(&tail, ca, "stream alpha/build/+/log\n"),
        "error: this tail server needs a token: send `auth TOKEN` as the first line, then the request\n"
    );
    assert_eq!(
        tail_tls(&tail, ca, "auth ldt_wrong\nstream alpha/build/+/log\n"),
        "error: unknown token\n"
    );
    assert_eq!(
        tail_tls(
            &tail,
            ca,
            &format!("auth {reader}\nstream beta/build/+/log\n")
        ),
        "error: token \"reader\" may not read project \"beta\"\n"
    );
    assert_eq!(
        tail_tls(&tail, ca, &format!("auth {reader}\nlist beta\n")),
        "error: token \"reader\" may not read project \"beta\"\n"
    );
    // `list` shows only readable projects.
    let listed = tail_tls(&tail, ca, &format!("auth {reader}\nlist\n"));
    assert_eq!(listed, "alpha/build/+/log\nalpha/live/+/stdout\n");
    let listed = tail_tls(&tail, ca, &format!("auth {}\nlist\n", token("admin")));
    assert!(listed.contains("beta/build/+/log"), "{listed}");
    assert_eq!(
        tail_tls(&tail, ca, &format!("auth {}\nlist\n", token("writer"))),
        ""
    );
    // A client trusting another CA fails the handshake.
    let other = Pki::new(&s.dir, "other");
    assert!(connect(&tail, &other.ca, &[]).is_err());

    // A follower of a stream that never completes notices when its TLS client goes away.
    let mut f = connect(&tail, ca, &[]).unwrap();
    f.write_all(format!("auth {reader}\nstream alpha/live/+/stdout\n").as_bytes())
        .unwrap();
    f.flush().unwrap();
    let mut got = vec![0u8; s.live.len()];
    f.read_exact(&mut got).unwrap();
    assert_eq!(got, s.live);
    f.conn.send_close_notify();
    let _ = f.conn.complete_io(&mut f.sock);
    drop(f);
    wait_until("the follower to notice its client went away", || {
        c.log().contains("tail follower's client went away")
    });
    // The same without close_notify: the socket just closes.
    let mut f = connect(&tail, ca, &[]).unwrap();
    f.write_all(format!("auth {reader}\nstream alpha/live/+/stdout\n").as_bytes())
        .unwrap();
    f.flush().unwrap();
    f.read_exact(&mut got).unwrap();
    drop(f);
    wait_until("the second follower to notice its client went away", || {
        c.log().matches("tail follower's client went away").count() >= 2
    });

    openssl_checks(&c, ca, &reader);

    let mut sink = Vec::new();
    let _ = silent.read_to_end(&mut sink);
    assert!(sink.is_empty(), "the silent client got {sink:?}");
    wait_until("the handshake timeout to be logged", || {
        c.log().contains("not finished within 10s")
    });

    let log = c.stop_with_log();
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(log.contains("unauthenticated request refused"), "{log}");
    assert!(log.contains("tail request refused"), "{log}");
    assert_no_token_in(&log);
}

/// `openssl s_client` against the viewer (ALPN h2, the certificate verified) and the tail
/// server; skipped, loudly, when `openssl` is not installed.
fn openssl_checks(c: &Collector, ca: &Path, reader: &str) {
    if Command::new("openssl").arg("version").output().is_err() {
        common::skipped("openssl is not installed; the s_client checks did not run");
        return;
    }
    let http = c.http.clone().unwrap();
    let tail = c.tail.clone().unwrap();
    let s_client = |addr: &str, extra: &[&str], input: &[u8]| {
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            addr,
            "-servername",
            "localhost",
            "-CAfile",
        ])
        .arg(ca)
        .args(["-verify_return_error"])
        .args(extra);
        common::run(&mut cmd, common::Input::Bytes(input.to_vec()))
    };
    let out = s_client(&http, &["-alpn", "h2,http/1.1"], b"");
    let text = out.stdout_str();
    assert!(
        text.contains("ALPN protocol: h2"),
        "{text}{}",
        out.stderr_str()
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let out = s_client(
        &tail,
        &["-quiet"],
        format!("auth {reader}\nstream alpha/build/+/log\n").as_bytes(),
    );
    assert_eq!(out.stdout_str(), ALPHA_LOG, "{}", out.stderr_str());
    let out = s_client(&tail, &["-quiet"], b"stream alpha/build/+/log\n");
    assert!(
        out.stdout_str()
            .starts_with("error: this tail server needs a token"),
        "{}",
        out.stdout_str()
    );
}

#[test]
fn plain_viewer_and_tail_server_with_auth() {
    let s = setup();
    let c = start(&s.data, &secured_flags(&s.auth, None, &[]));
    let http = c.http.clone().expect("the viewer's address");
    let tail = c.tail.clone().expect("the tail server's address");
    let req = |method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
        let mut s = TcpStream::connect(&http).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        self::http(&mut s, &http, method, path, headers, body)
    };

    assert_eq!(req("GET", "/api/projects", &[], b"").status, 401);
    // The cookie of a plain viewer is not `Secure` (the browser would not send it back).
    let body = format!("token={}&next=%2Fp%2Falpha", token("reader"));
    let r = req(
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", &format!("http://{http}")),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location").as_deref(), Some("/p/alpha"));
    let set = r.header("set-cookie").unwrap();
    assert!(set.ends_with("httponly; samesite=strict; path=/"), "{set}");
    let cookie = format!("logdog_token={}", token("reader"));
    let r = req("GET", "/api/streams/alpha", &[("Cookie", &cookie)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = req("GET", "/api/streams/beta", &[("Cookie", &cookie)], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    // An https Origin is another origin for a plain viewer.
    let r = req(
        "POST",
        "/login",
        &[("Origin", &format!("https://{http}"))],
        body.as_bytes(),
    );
    assert_eq!(r.status, 403);

    // The plain tail server: the auth line, both lines in one write as `printf | nc` sends.
    let ask = |lines: String| {
        let mut s = TcpStream::connect(&tail).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(lines.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert_eq!(
        ask(format!(
            "auth {}\nstream alpha/build/+/log\n",
            token("reader")
        )),
        ALPHA_LOG
    );
    assert!(ask("list\n".to_string()).starts_with("error: this tail server needs a token"));
    assert_eq!(
        ask("auth\nlist\n".to_string()),
        "error: bad auth line: expected `auth TOKEN`\n"
    );
    let log = c.stop_with_log();
    assert_no_token_in(&log);
}

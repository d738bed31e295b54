//! Health: the standard gRPC health service (`grpc.health.v1.Health`, checked with
//! `tonic-health`'s generated client) on a real collector's gRPC port, and `GET /healthz` and
//! `GET /readyz` on its viewer and `--metrics` ports; a collector whose store fails (its data
//! directory gone, its index locked by another process, its disk full) reports `NOT_SERVING`
//! and 503 until the store works again, and tells watchers `NOT_SERVING` when it stops. The
//! failures are made in ways that work as root too (no chmod).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The services the collector reports on: the whole server, then its two services.
const SERVICES: [&str; 3] = ["", "logdog.collector.Collector", "logdog.collector.Logs"];

/// `GET path` over HTTP/1.1 on `addr`: the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (code, body.to_string())
}

/// A health client of the collector at `addr`.
async fn client(addr: &str) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connecting to the collector");
    HealthClient::new(channel)
}

/// The gRPC health status of `service` on the collector at `addr` (no token).
fn grpc_status(rt: &tokio::runtime::Runtime, addr: &str, service: &str) -> ServingStatus {
    rt.block_on(async {
        let mut client = client(addr).await;
        let answer = client
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("Health.Check({service:?}): {e}"));
        answer.into_inner().status()
    })
}

/// Polls until every service has `want` and `/readyz` answers `code` (the store's check runs
/// every 2 s; its answer is reused for 1 s): panics after [`TIMEOUT`].
fn wait_for(rt: &tokio::runtime::Runtime, c: &Collector, want: ServingStatus, code: u16) {
    let http = c.http.as_deref().expect("the viewer");
    wait_for_at(rt, &c.addr, http, &|| c.log(), want, code);
}

/// [`wait_for`] for the collector at `addr` with its viewer at `http`; `log` gives its log.
fn wait_for_at(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    http: &str,
    log: &dyn Fn() -> String,
    want: ServingStatus,
    code: u16,
) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let statuses: Vec<ServingStatus> =
            SERVICES.iter().map(|s| grpc_status(rt, addr, s)).collect();
        let (got, body) = get(http, "/readyz");
        if statuses.iter().all(|s| *s == want) && got == code {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {statuses:?} and /readyz {got} {body:?}; want {want:?} and {code}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A collector with `--auth` (a token that nobody here holds), the viewer and the metrics
/// server.
fn start(dir: &Path) -> Collector {
    let tokens = [common::pki::TestToken::new("somebody", &["p"], &["p"])];
    let auth = dir.join("auth.toml");
    common::pki::write_auth_file(&auth, &tokens);
    Collector::start_with(
        &dir.join("data"),
        "127.0.0.1:0",
        &[
            "--auth",
            auth.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ],
    )
}

#[test]
fn a_healthy_collector_is_serving_and_ready_without_a_token() {
    let dir = tempdir();
    let c = start(dir.path());
    let rt = runtime();
    for service in SERVICES {
        assert_eq!(
            grpc_status(&rt, &c.addr, service),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    // An unknown service is NOT_FOUND, as the protocol says.
    let unknown = rt.block_on(async {
        let mut client = client(&c.addr).await;
        client
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
    });
    assert_eq!(
        unknown.expect_err("an unknown service").code(),
        tonic::Code::NotFound
    );
    // The viewer and the metrics server answer without a token, though auth is on.
    for http in [c.http.as_deref().unwrap(), c.metrics.as_deref().unwrap()] {
        assert_eq!(get(http, "/healthz"), (200, "ok\n".to_string()), "{http}");
        assert_eq!(get(http, "/readyz"), (200, "ok\n".to_string()), "{http}");
    }
    let (code, _) = get(c.http.as_deref().unwrap(), "/api/projects");
    assert_eq!(code, 401, "the viewer's API needs a token");
    // The clients' connections close with their runtime; then the collector stops at once.
    drop(rt);
    c.stop();
}

#[test]
fn a_store_whose_directory_is_gone_is_not_ready_until_it_is_back() {
    let dir = tempdir();
    let c = start(dir.path());
    let rt = runtime();
    wait_for(&rt, &c, ServingStatus::Serving, 200);

    // The data directory disappears under the running collector (an unmounted or removed
    // volume): nothing new can be created in it, whoever the collector runs as.
    let data = dir.path().join("data");
    let moved = dir.path().join("data.moved");
    std::fs::rename(&data, &moved).unwrap();
    wait_for(&rt, &c, ServingStatus::NotServing, 503);
    let http = c.http.as_deref().unwrap();
    let (_, body) = get(http, "/readyz");
    assert!(
        body.starts_with("not ready: the data directory") && body.contains("cannot take a file"),
        "{body:?}"
    );
    // Alive all the same.
    assert_eq!(get(http, "/healthz").0, 200);
    assert_eq!(get(c.metrics.as_deref().unwrap(), "/readyz").0, 503);

    std::fs::rename(&moved, &data).unwrap();
    wait_for(&rt, &c, ServingStatus::Serving, 200);
    drop(rt);
    let log = c.stop_with_log();
    assert!(log.contains("store not writable"), "{log}");
    assert!(log.contains("store writable again"), "{log}");
}

#[test]
fn a_store_whose_index_is_locked_is_not_ready_until_it_is_released() {
    let dir = tempdir();
    let c = start(dir.path());
    let rt = runtime();
    wait_for(&rt, &c, ServingStatus::Serving, 200);

    // Another process holds the index's write lock: no bundle could be stored now.
    let db = rusqlite::Connection::open(dir.path().join("data/collector.sqlite")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    wait_for(&rt, &c, ServingStatus::NotServing, 503);
    let (_, body) = get(c.http.as_deref().unwrap(), "/readyz");
    assert!(body.contains("has not finished"), "{body:?}");

    db.execute_batch("ROLLBACK").unwrap();
    wait_for(&rt, &c, ServingStatus::Serving, 200);
    drop(rt);
    c.stop();
}

#[test]
fn a_stopping_collector_tells_its_watchers_it_is_not_serving() {
    use nix::sys::signal::{Signal, kill};
    let dir = tempdir();
    let mut c = start(dir.path());
    let rt = runtime();
    let mut watch = rt.block_on(async {
        let mut client = client(&c.addr).await;
        client
            .watch(HealthCheckRequest {
                service: "logdog.collector.Collector".into(),
            })
            .await
            .expect("Health.Watch")
            .into_inner()
    });
    let next = |watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>| {
        rt.block_on(async { tokio::time::timeout(TIMEOUT, watch.message()).await })
            .expect("a status within the timeout")
            .expect("a status")
            .expect("the stream goes on")
            .status()
    };
    assert_eq!(next(&mut watch), ServingStatus::Serving);
    // SIGTERM: balancers watching are told to send new calls elsewhere while the calls in
    // progress finish.
    kill(c.guarded.pid(), Signal::SIGTERM).unwrap();
    assert_eq!(next(&mut watch), ServingStatus::NotServing);
    drop(watch);
    drop(rt);
    let status = c.guarded.wait();
    assert!(status.success(), "{status}; log:\n{}", c.log());
}

#[test]
fn a_full_disk_is_not_ready_until_there_is_room_again() {
    use std::process::{Command, Stdio};
    if !small_file_systems_can_be_made() {
        return;
    }
    let dir = tempdir();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let log_path = dir.path().join("collector.log");
    let log =
        || String::from_utf8_lossy(&std::fs::read(&log_path).unwrap_or_default()).into_owned();
    // The collector's data directory is an 8 MiB tmpfs of its own (a user and mount namespace).
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-rm",
        "sh",
        "-c",
        r#"mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@""#,
    ])
    .arg(&small)
    .arg(env!("CARGO_BIN_EXE_logdog_collector"))
    .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data"])
    .arg(small.join("store"))
    .env_remove("RUST_LOG")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log_path).unwrap());
    let mut g = Guarded::spawn(&mut cmd);
    let mut out = std::io::BufReader::new(g.child.stdout.take().unwrap());
    let mut line = |prefix: &str| {
        let mut l = String::new();
        std::io::BufRead::read_line(&mut out, &mut l).unwrap();
        l.trim_end()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("not {prefix}: {l:?}; log:\n{}", log()))
            .to_string()
    };
    let addr = line("LOGDOG_COLLECTOR=");
    let http = line("LOGDOG_HTTP=");
    drain(out);
    let rt = runtime();
    wait_for_at(&rt, &addr, &http, &log, ServingStatus::Serving, 200);

    // Fill its file system through its own view of it (exec kept the pid).
    let inside = std::path::PathBuf::from(format!("/proc/{}/root{}", g.pid(), small.display()));
    let filler = inside.join("filler");
    let mut f =
        std::fs::File::create(&filler).unwrap_or_else(|e| panic!("{}: {e}", filler.display()));
    let chunk = vec![0u8; 64 << 10];
    let full = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(full.kind(), std::io::ErrorKind::StorageFull, "{full}");
    drop(f);
    wait_for_at(&rt, &addr, &http, &log, ServingStatus::NotServing, 503);
    let (_, body) = get(&http, "/readyz");
    assert!(body.contains("No space left on device"), "{body:?}");

    std::fs::remove_file(&filler).unwrap();
    wait_for_at(&rt, &addr, &http, &log, ServingStatus::Serving, 200);
    drop(rt);
    nix::sys::signal::kill(g.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = g.wait();
    assert!(status.success(), "{status}; log:\n{}", log());
}

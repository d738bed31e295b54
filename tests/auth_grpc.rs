//! Tokens and prefix owners on the collector's gRPC services, against a real
//! `logdog_collector --auth FILE` process, with clients made here from the generated code.
//!
//! A victim butler (made by hand: it sends a prefix secret with every bundle) writes a stream;
//! attackers holding a token that may write the same project, or no token at all, try to
//! pre-write its next entries, end it early, re-describe it, add streams to its prefix, use
//! huge project names and projects outside their token, and read what they may not. Each is
//! refused with the right status, nothing of it is stored, the victim's stream reads back
//! byte-identical, a restarted collector still knows the owner, and the collector's log has
//! every refusal and no token.

mod common;

use common::pki::{TestToken, write_auth_file};
use common::*;
use logdog_proto::logdog::collector::collector_client::CollectorClient;
use logdog_proto::logdog::collector::logs_client::LogsClient;
use logdog_proto::logdog::collector::{
    FollowRequest, GetRequest, GetResponse, QueryRequest, TailRequest, WriteBundleRequest,
    WriteBundleResponse,
};
use logdog_proto::logpb::{self, log_entry::Content};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const VICTIM_SECRET: &[u8; 36] = b"victim-butler-secret-0123456789abcd!";
const MALLORY_SECRET: &[u8; 36] = b"mallory-butler-secret-0123456789abc!";
const PREFIX: &str = "victim-run";

fn tokens() -> Vec<TestToken> {
    vec![
        // The victim's butler (and its readers).
        TestToken::new("victim", &["proj"], &["proj"]),
        // Another butler of the same project.
        TestToken::new("mallory", &["proj"], &[]),
        // A token for project `a` only.
        TestToken::new("only-a", &["a"], &["a"]),
        // A reader of another project.
        TestToken::new("reader-other", &[], &["other"]),
        // Reads everything (to check what was or was not stored).
        TestToken::new("auditor", &[], &["*"]),
    ]
}

fn token(name: &str) -> String {
    tokens()
        .into_iter()
        .find(|t| t.name == name)
        .expect("a test token")
        .token
}

/// A collector with `--auth` over `data`, its auth file next to it.
fn start(dir: &std::path::Path) -> Collector {
    let auth = dir.join("auth.toml");
    if !auth.exists() {
        write_auth_file(&auth, &tokens());
    }
    let auth = auth.to_str().expect("utf-8 path").to_string();
    Collector::start_with(&dir.join("data"), "127.0.0.1:0", &["--auth", auth.as_str()])
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("an address")
        .connect()
        .await
        .expect("connecting to the collector")
}

/// `msg` as a request carrying `token`, if any.
fn req<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    r
}

fn text_entry(i: u64, line: &str) -> logpb::LogEntry {
    logpb::LogEntry {
        stream_index: i,
        sequence: i,
        time_offset: Some(prost_types::Duration::default()),
        content: Some(Content::Text(logpb::Text {
            lines: vec![logpb::text::Line {
                value: line.as_bytes().to_vec().into(),
                delimiter: "\n".into(),
            }],
        })),
        ..Default::default()
    }
}

fn desc(name: &str) -> logpb::LogStreamDescriptor {
    logpb::LogStreamDescriptor {
        name: name.into(),
        content_type: "text/plain".into(),
        timestamp: Some(prost_types::Timestamp::default()),
        tags: [("step".to_string(), "compile".to_string())].into(),
        ..Default::default()
    }
}

struct Part {
    desc: logpb::LogStreamDescriptor,
    logs: Vec<logpb::LogEntry>,
    terminal: Option<u64>,
}

fn lines(name: &str, from: u64, lines: &[&str], terminal: Option<u64>) -> Part {
    Part {
        desc: desc(name),
        logs: lines
            .iter()
            .enumerate()
            .map(|(i, l)| text_entry(from + i as u64, l))
            .collect(),
        terminal,
    }
}

fn bundle(project: &str, prefix: &str, secret: Option<&[u8]>, parts: Vec<Part>) -> Vec<u8> {
    logpb::ButlerLogBundle {
        project: project.into(),
        prefix: prefix.into(),
        timestamp: Some(prost_types::Timestamp::default()),
        secret: secret.map(|s| s.to_vec().into()).unwrap_or_default(),
        entries: parts
            .into_iter()
            .map(|p| logpb::butler_log_bundle::Entry {
                desc: Some(p.desc),
                terminal: p.terminal.is_some(),
                terminal_index: p.terminal.unwrap_or(0),
                logs: p.logs,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

async fn write(
    ch: &Channel,
    token: Option<&str>,
    bundle: Vec<u8>,
) -> Result<WriteBundleResponse, Status> {
    CollectorClient::new(ch.clone())
        .write_bundle(req(
            WriteBundleRequest {
                bundle: bundle.into(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[track_caller]
fn assert_refused(r: Result<WriteBundleResponse, Status>, code: Code, needle: &str) -> Status {
    let status = match r {
        Ok(resp) => panic!("expected {code:?}, got OK: {resp:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "{status:?}");
    status
}

async fn get(
    ch: &Channel,
    token: Option<&str>,
    project: &str,
    path: &str,
) -> Result<GetResponse, Status> {
    LogsClient::new(ch.clone())
        .get(req(
            GetRequest {
                project: project.into(),
                path: path.into(),
                state: true,
                ..Default::default()
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The victim's stream as stored: every entry, its descriptor and state.
async fn victim_stream(ch: &Channel) -> GetResponse {
    get(
        ch,
        Some(&token("auditor")),
        "proj",
        &format!("{PREFIX}/+/stdout"),
    )
    .await
    .expect("the victim's stream")
}

/// What the victim wrote: `n` lines.
fn victim_lines(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("victim line {i}")).collect()
}

fn text_of(r: &GetResponse) -> Vec<u8> {
    let mut out = Vec::new();
    for e in &r.logs {
        match &e.content {
            Some(Content::Text(t)) => {
                for l in &t.lines {
                    out.extend_from_slice(&l.value);
                    out.extend_from_slice(l.delimiter.as_bytes());
                }
            }
            other => panic!("unexpected content {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_holder_cannot_touch_a_prefix_another_butler_owns_even_after_a_restart() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = start(d);
    let ch = channel(&collector.addr).await;
    let victim = token("victim");
    let mallory = token("mallory");
    let all = victim_lines(4);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();

    // The victim's first bundle registers its prefix.
    let r = write(
        &ch,
        Some(&victim),
        bundle(
            "proj",
            PREFIX,
            Some(VICTIM_SECRET),
            vec![lines("stdout", 0, &refs[..2], None)],
        ),
    )
    .await
    .expect("the victim's first bundle");
    assert_eq!((r.stored, r.duplicates), (2, 0));

    // (a) Pre-writing the victim's next entries: with a token that may write the project and
    // its own secret, with no secret, and without a token.
    let forged = || vec![lines("stdout", 2, &["forged 2", "forged 3"], None)];
    assert_refused(
        write(
            &ch,
            Some(&mallory),
            bundle("proj", PREFIX, Some(MALLORY_SECRET), forged()),
        )
        .await,
        Code::PermissionDenied,
        "owned by another butler",
    );
    assert_refused(
        write(&ch, Some(&mallory), bundle("proj", PREFIX, None, forged())).await,
        Code::PermissionDenied,
        "owned by another butler",
    );
    assert_refused(
        write(
            &ch,
            None,
            bundle("proj", PREFIX, Some(MALLORY_SECRET), forged()),
        )
        .await,
        Code::Unauthenticated,
        "needs a token",
    );
    assert_refused(
        write(
            &ch,
            Some("ldt_not_a_known_token"),
            bundle("proj", PREFIX, None, forged()),
        )
        .await,
        Code::Unauthenticated,
        "unknown token",
    );
    // (b) Ending the victim's stream early.
    assert_refused(
        write(
            &ch,
            Some(&mallory),
            bundle(
                "proj",
                PREFIX,
                Some(MALLORY_SECRET),
                vec![lines("stdout", 0, &[], Some(1))],
            ),
        )
        .await,
        Code::PermissionDenied,
        "owned by another butler",
    );
    // (c) Re-describing it: another type, other tags; and a new stream in its prefix.
    let mut binary = lines("stdout", 2, &[], None);
    binary.desc.stream_type = logpb::StreamType::Binary as i32;
    binary.desc.content_type = "application/octet-stream".into();
    let mut retagged = lines("stdout", 2, &[], None);
    retagged.desc.tags = [("step".to_string(), "evil".to_string())].into();
    for p in [binary, retagged, lines("injected", 0, &["fake"], Some(0))] {
        assert_refused(
            write(
                &ch,
                Some(&mallory),
                bundle("proj", PREFIX, Some(MALLORY_SECRET), vec![p]),
            )
            .await,
            Code::PermissionDenied,
            "owned by another butler",
        );
    }
    let q = LogsClient::new(ch.clone())
        .query(req(
            QueryRequest {
                project: "proj".into(),
                path: PREFIX.into(),
                ..Default::default()
            },
            Some(&token("auditor")),
        ))
        .await
        .expect("query")
        .into_inner();
    let paths: Vec<_> = q.streams.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, [format!("{PREFIX}/+/stdout")]);

    // The victim goes on: its lines are new (not duplicates of forged ones), and it ends the
    // stream where it means to.
    let r = write(
        &ch,
        Some(&victim),
        bundle(
            "proj",
            PREFIX,
            Some(VICTIM_SECRET),
            vec![lines("stdout", 2, &refs[2..], Some(3))],
        ),
    )
    .await
    .expect("the victim's second bundle");
    assert_eq!((r.stored, r.duplicates), (2, 0), "{r:?}");
    assert!(r.refused.is_empty(), "{r:?}");
    let check = |s: GetResponse| {
        let want: Vec<logpb::LogEntry> = refs
            .iter()
            .enumerate()
            .map(|(i, l)| text_entry(i as u64, l))
            .collect();
        assert_eq!(s.logs, want);
        let text: String = all.iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(text_of(&s), text.as_bytes());
        assert_eq!(
            s.desc,
            Some(logpb::LogStreamDescriptor {
                prefix: PREFIX.into(),
                ..desc("stdout")
            })
        );
        let state = s.state.expect("state");
        assert!(state.complete && state.terminal_index == 3, "{state:?}");
    };
    check(victim_stream(&ch).await);

    // (g) A restart on the same data: the owner is still known.
    drop(ch);
    collector.stop();
    let collector = start(d);
    let ch = channel(&collector.addr).await;
    assert_refused(
        write(
            &ch,
            Some(&mallory),
            bundle(
                "proj",
                PREFIX,
                Some(MALLORY_SECRET),
                vec![lines("late", 0, &["x"], Some(0))],
            ),
        )
        .await,
        Code::PermissionDenied,
        "owned by another butler",
    );
    assert_refused(
        write(
            &ch,
            Some(&mallory),
            bundle(
                "proj",
                PREFIX,
                None,
                vec![lines("late", 0, &["x"], Some(0))],
            ),
        )
        .await,
        Code::PermissionDenied,
        "owned by another butler",
    );
    let r = write(
        &ch,
        Some(&victim),
        bundle(
            "proj",
            PREFIX,
            Some(VICTIM_SECRET),
            vec![lines("late", 0, &["mine"], Some(0))],
        ),
    )
    .await
    .expect("the victim after the restart");
    assert_eq!(r.stored, 1);
    // A retry of its first bundle is still a duplicate.
    let r = write(
        &ch,
        Some(&victim),
        bundle(
            "proj",
            PREFIX,
            Some(VICTIM_SECRET),
            vec![lines("stdout", 0, &refs[..2], None)],
        ),
    )
    .await
    .expect("a retry");
    assert_eq!((r.stored, r.duplicates), (0, 2));
    check(victim_stream(&ch).await);

    // (h) Every refusal is in the log; no token and no secret is.
    drop(ch);
    let log = collector.stop_with_log();
    assert!(
        log.matches("request refused: permission denied").count() >= 8,
        "{log}"
    );
    assert!(
        log.matches("unauthenticated request refused").count() >= 2,
        "{log}"
    );
    assert!(log.contains("owned by another butler"), "{log}");
    assert!(log.contains("prefix registered"), "{log}");
    for t in tokens() {
        assert!(
            !log.contains(&t.token),
            "token {} in the log:\n{log}",
            t.name
        );
    }
    assert!(!log.contains("ldt_not_a_known_token"), "{log}");
    for s in [VICTIM_SECRET, MALLORY_SECRET] {
        assert!(!log.contains(std::str::from_utf8(s).unwrap()), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_outside_a_token_s_projects_or_without_a_proper_secret_are_refused() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = start(d);
    let ch = channel(&collector.addr).await;
    let only_a = token("only-a");
    let one = || vec![lines("s", 0, &["x"], Some(0))];

    // (d) A 100,000-character project name.
    let huge = "p".repeat(100_000);
    let s = assert_refused(
        write(
            &ch,
            Some(&only_a),
            bundle(&huge, "run", Some(VICTIM_SECRET), one()),
        )
        .await,
        Code::InvalidArgument,
        "project",
    );
    assert!(s.message().len() < 1000, "{}", s.message().len());
    assert_refused(
        write(&ch, None, bundle(&huge, "run", Some(VICTIM_SECRET), one())).await,
        Code::InvalidArgument,
        "project",
    );

    // (e) A token that may write `a` cannot create project `b`.
    assert_refused(
        write(
            &ch,
            Some(&only_a),
            bundle("b", "run", Some(VICTIM_SECRET), one()),
        )
        .await,
        Code::PermissionDenied,
        "may not write project \"b\"",
    );
    let q = LogsClient::new(ch.clone())
        .query(req(
            QueryRequest {
                project: "b".into(),
                ..Default::default()
            },
            Some(&token("auditor")),
        ))
        .await
        .expect("query")
        .into_inner();
    assert!(q.streams.is_empty(), "{q:?}");

    // With tokens on, a bundle must carry a secret of 36 bytes.
    assert_refused(
        write(&ch, Some(&only_a), bundle("a", "run", None, one())).await,
        Code::PermissionDenied,
        "must carry a prefix secret",
    );
    assert_refused(
        write(
            &ch,
            Some(&only_a),
            bundle("a", "run", Some(b"short"), one()),
        )
        .await,
        Code::InvalidArgument,
        "36 bytes",
    );
    // Nothing of those was stored; the prefix is still free for its butler.
    let r = write(
        &ch,
        Some(&only_a),
        bundle("a", "run", Some(VICTIM_SECRET), one()),
    )
    .await
    .expect("a proper bundle");
    assert_eq!(r.stored, 1);

    drop(ch);
    let log = collector.stop_with_log();
    assert!(log.contains("may not write project"), "{log}");
    assert!(log.contains("must carry a prefix secret"), "{log}");
    assert!(
        !log.contains(&huge[..1000]),
        "the huge project name is in the log"
    );
    for t in tokens() {
        assert!(
            !log.contains(&t.token),
            "token {} in the log:\n{log}",
            t.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_a_token_that_may_read_the_project() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = start(d);
    let ch = channel(&collector.addr).await;
    write(
        &ch,
        Some(&token("victim")),
        bundle(
            "proj",
            PREFIX,
            Some(VICTIM_SECRET),
            vec![lines("secret-stream-name", 0, &["private line"], Some(0))],
        ),
    )
    .await
    .expect("the victim's bundle");
    let path = format!("{PREFIX}/+/secret-stream-name");

    let mallory = token("mallory");
    let other = token("reader-other");
    let cases: [(Option<&str>, Code); 4] = [
        (None, Code::Unauthenticated),
        (Some("ldt_not_a_known_token"), Code::Unauthenticated),
        (Some(&mallory), Code::PermissionDenied),
        (Some(&other), Code::PermissionDenied),
    ];
    let mut logs = LogsClient::new(ch.clone());
    for (t, code) in cases {
        let mut statuses = Vec::new();
        statuses.push(get(&ch, t, "proj", &path).await.unwrap_err());
        statuses.push(
            logs.tail(req(
                TailRequest {
                    project: "proj".into(),
                    path: path.clone(),
                    state: true,
                    count: 10,
                },
                t,
            ))
            .await
            .unwrap_err(),
        );
        statuses.push(
            logs.query(req(
                QueryRequest {
                    project: "proj".into(),
                    path: "**".into(),
                    ..Default::default()
                },
                t,
            ))
            .await
            .unwrap_err(),
        );
        statuses.push(
            logs.follow(req(
                FollowRequest {
                    project: "proj".into(),
                    path: path.clone(),
                    index: 0,
                },
                t,
            ))
            .await
            .expect_err("follow refused"),
        );
        for s in statuses {
            assert_eq!(s.code(), code, "{t:?}: {s:?}");
            assert!(!s.message().contains("secret-stream-name"), "{s:?}");
            assert!(!s.message().contains("private line"), "{s:?}");
        }
    }
    // A missing stream is refused the same way (no way to probe which streams exist).
    let s = get(&ch, Some(&other), "proj", &format!("{PREFIX}/+/nothing"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    // A reader of `other` reads `other` (nothing there, but allowed).
    let q = logs
        .query(req(
            QueryRequest {
                project: "other".into(),
                ..Default::default()
            },
            Some(&other),
        ))
        .await
        .expect("allowed")
        .into_inner();
    assert!(q.streams.is_empty());

    // The victim reads its stream with each call.
    let v = token("victim");
    let r = get(&ch, Some(&v), "proj", &path).await.expect("get");
    assert_eq!(text_of(&r), b"private line\n");
    let r = logs
        .tail(req(
            TailRequest {
                project: "proj".into(),
                path: path.clone(),
                state: true,
                count: 10,
            },
            Some(&v),
        ))
        .await
        .expect("tail")
        .into_inner();
    assert_eq!(text_of(&r), b"private line\n");
    let mut follow = logs
        .follow(req(
            FollowRequest {
                project: "proj".into(),
                path: path.clone(),
                index: 0,
            },
            Some(&v),
        ))
        .await
        .expect("follow")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = follow.message().await.expect("a follow message") {
        got.extend(m.logs);
    }
    assert_eq!(got, vec![text_entry(0, "private line")]);

    drop((follow, logs, ch));
    let log = collector.stop_with_log();
    assert!(
        log.matches("unauthenticated request refused").count() >= 8,
        "{log}"
    );
    assert!(
        log.matches("request refused: permission denied").count() >= 9,
        "{log}"
    );
    for t in tokens() {
        assert!(
            !log.contains(&t.token),
            "token {} in the log:\n{log}",
            t.name
        );
    }
}

/// `logdog ARGS` against `addr` with `token` in LOGDOG_TOKEN.
fn logdog_as(addr: &str, token: &str, args: &[&str]) -> Finished {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_logdog"));
    cmd.arg("--collector")
        .arg(addr)
        .args(args)
        .env_remove("LOGDOG_COLLECTOR")
        .env_remove("RUST_LOG")
        .env("LOGDOG_TOKEN", token);
    run(&mut cmd, Input::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_butler_s_streams_cannot_be_appended_to_ended_or_redescribed_by_others() {
    let tmp = tempdir();
    let d = tmp.path();
    let collector = start(d);
    let addr = collector.addr.clone();
    let output = collector.output();
    let written = "first line\nsecond line\nthird line\n";
    let script = format!("printf '{}'", written.replace('\n', "\\n"));
    let mut cmd = butler(
        d,
        &[
            "--output",
            output.as_str(),
            "--project",
            "proj",
            "--prefix",
            "real-run",
            "run",
            "--no-echo",
            "--",
            "sh",
            "-c",
            script.as_str(),
        ],
    );
    cmd.env("LOGDOG_TOKEN", token("victim"));
    let r = run(&mut cmd, Input::Null);
    r.assert_code(0);
    assert!(
        r.stderr_str().contains("nothing lost"),
        "{}",
        r.stderr_str()
    );
    let path = "proj/real-run/+/stdout";
    let before = logdog_as(&addr, &token("auditor"), &["cat", path]);
    before.assert_code(0);
    assert_eq!(before.stdout_str(), written);

    // Another butler of the project (its own secret, or none) and a client without a token.
    let ch = channel(&addr).await;
    let mallory = token("mallory");
    for (who, tok, secret) in [
        (
            "mallory with its own secret",
            Some(mallory.as_str()),
            Some(&MALLORY_SECRET[..]),
        ),
        ("mallory without a secret", Some(mallory.as_str()), None),
        ("no token", None, Some(&MALLORY_SECRET[..])),
    ] {
        let attacks = [
            ("append", lines("stdout", 3, &["evil line"], None)),
            ("overwrite", lines("stdout", 0, &["evil first line"], None)),
            ("end early", lines("stdout", 1, &[], Some(1))),
            ("re-describe", {
                let mut p = lines("stdout", 3, &["x"], None);
                p.desc.content_type = "application/evil".into();
                p.desc.tags = [("owner".to_string(), "mallory".to_string())].into();
                p
            }),
            ("add a stream", lines("evil", 0, &["evil"], Some(0))),
        ];
        for (what, part) in attacks {
            let r = write(&ch, tok, bundle("proj", "real-run", secret, vec![part])).await;
            let status = r.expect_err(&format!("{who}: {what} was accepted"));
            assert!(
                matches!(
                    status.code(),
                    Code::PermissionDenied | Code::Unauthenticated
                ),
                "{who}: {what}: {status:?}"
            );
        }
    }

    // The butler's streams read back byte-identical and complete; nothing was added.
    let after = logdog_as(&addr, &token("auditor"), &["cat", path]);
    after.assert_code(0);
    assert_eq!(after.stdout_str(), written);
    let ls = logdog_as(&addr, &token("auditor"), &["ls", "proj/real-run"]);
    ls.assert_code(0);
    let listing = ls.stdout_str();
    assert!(
        listing.contains("stdout") && !listing.contains("evil"),
        "{listing}"
    );
    let state = victim_state(&ch, "real-run/+/stdout").await;
    assert!(state.complete, "{state:?}");
    collector.stop();
}

/// The state of `path` in project `proj`, read by the auditor.
async fn victim_state(ch: &Channel, path: &str) -> logdog_proto::logdog::collector::LogStreamState {
    get(ch, Some(&token("auditor")), "proj", path)
        .await
        .expect("the stream")
        .state
        .expect("its state")
}

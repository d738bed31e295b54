//! The viewer's scanning API over plain HTTP, against a real collector fed by a real butler:
//! server-side search (plain text, regex, bounded pages with a continuation, refused
//! patterns), the CI section markers, the text streams of a prefix interleaved in the order
//! they were written, and the run record.

mod common;
#[path = "common/web_data.rs"]
mod web_data;

use common::{Collector, tempdir};
use serde_json::Value;
use web_data::{CiRun, NEEDLES, get_json, write_ci_run};

/// A collector with its viewer, holding the CI-like run under `ci/7`.
fn setup(dir: &std::path::Path) -> (Collector, String, CiRun) {
    let collector =
        Collector::start_with(&dir.join("data"), "127.0.0.1:0", &["--http", "127.0.0.1:0"]);
    let http = collector.http.clone().expect("the web viewer's address");
    let run = write_ci_run(dir, &collector, &http, "ci/7");
    (collector, http, run)
}

/// `?q=` of a search, percent-encoded.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn rows_of(v: &Value) -> Vec<u64> {
    v["matches"]
        .as_array()
        .expect("matches")
        .iter()
        .map(|m| m["n"].as_u64().expect("n"))
        .collect()
}

#[test]
fn search_finds_lines_over_the_whole_log_in_bounded_pages() {
    let tmp = tempdir();
    let (collector, http, run) = setup(tmp.path());
    let path = format!("{}/+/build", run.scope);
    let want: Vec<u64> = run
        .build
        .iter()
        .enumerate()
        .filter(|(_, l)| l.to_lowercase().contains("needle"))
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(want.len(), NEEDLES + 1);

    // Plain text ignores case and escape sequences (`needle` is bold in the log).
    let (status, v) = get_json(&http, &format!("/api/search/{path}?q=needle"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(rows_of(&v), want);
    assert_eq!(v["next"], Value::Null, "{v}");
    assert_eq!(v["capped"], Value::Null, "{v}");
    let first = &v["matches"][0];
    assert_eq!(first["text"], "test two ... FAILED   Needle");
    assert_eq!(first["at"], serde_json::json!([22, 28]));
    let m = &v["matches"][1];
    assert_eq!(m["text"], "item 0: needle 0");

    // With case, `Needle` is left out.
    let (_, v) = get_json(&http, &format!("/api/search/{path}?q=needle&case=1"));
    assert_eq!(rows_of(&v), want[1..]);

    // A search that hits the cap on matches says so and where to go on; following `next`
    // gives every match once, in order.
    let mut got = Vec::new();
    let mut from = 0;
    let mut pages = 0;
    loop {
        let (status, v) = get_json(
            &http,
            &format!("/api/search/{path}?q=needle&max=7&from={from}"),
        );
        assert_eq!(status, 200, "{v}");
        pages += 1;
        let rows = rows_of(&v);
        assert!(rows.len() <= 7, "{v}");
        got.extend(rows);
        match v["next"].as_u64() {
            Some(n) => {
                assert_eq!(v["capped"], "matches", "{v}");
                assert_eq!(Some(n), got.last().map(|r| r + 1), "{v}");
                from = n;
            }
            None => break,
        }
        assert!(pages < 100, "no end to the pages");
    }
    assert_eq!(got, want);
    assert_eq!(pages, want.len().div_ceil(7));

    // A regex, over the text as shown.
    let (status, v) = get_json(
        &http,
        &format!(
            "/api/search/{path}?regex=1&q={}",
            enc(r"^item [0-9]*7: needle \d+$")
        ),
    );
    assert_eq!(status, 200, "{v}");
    let want7: Vec<u64> = run
        .build
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            l.starts_with("item ") && l.split(':').next().is_some_and(|h| h.ends_with('7'))
        })
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(rows_of(&v), want7);
    assert_eq!(want7.len(), 4);
    // Without `regex`, the same text is searched for literally.
    let (_, v) = get_json(&http, &format!("/api/search/{path}?q={}", enc("^item")));
    assert_eq!(rows_of(&v), Vec::<u64>::new());

    // Refused patterns: 400 with a message that says why.
    let (status, v) = get_json(
        &http,
        &format!("/api/search/{path}?regex=1&q={}", enc("(unclosed")),
    );
    assert_eq!(status, 400, "{v}");
    let msg = v["error"].as_str().expect("an error message");
    assert!(msg.starts_with("invalid regex:"), "{msg}");
    assert!(msg.contains("unclosed group"), "{msg}");
    let (status, v) = get_json(
        &http,
        &format!(
            "/api/search/{path}?regex=1&q={}",
            enc(r"(\w{100}|\d{100}){100}")
        ),
    );
    assert_eq!(status, 400, "{v}");
    let msg = v["error"].as_str().expect("an error message");
    assert!(msg.starts_with("regex too big:"), "{msg}");
    let (status, v) = get_json(&http, &format!("/api/search/{path}?q="));
    assert_eq!(status, 400, "{v}");
    let (status, v) = get_json(&http, &format!("/api/search/{path}?q={}", "a".repeat(1025)));
    assert_eq!(status, 400, "{v}");
    let (status, _) = get_json(&http, &format!("/api/search/{}/+/nothing?q=a", run.scope));
    assert_eq!(status, 404);
    collector.stop();
}

#[test]
fn sections_interleaving_and_the_run_record() {
    let tmp = tempdir();
    let (collector, http, run) = setup(tmp.path());

    // Section markers of the three CI systems, with the GitLab markers' own times.
    let (status, v) = get_json(&http, &format!("/api/sections/{}/+/build", run.scope));
    assert_eq!(status, 200, "{v}");
    let markers: Vec<(u64, &str, &str, &str, bool)> = v["markers"]
        .as_array()
        .expect("markers")
        .iter()
        .map(|m| {
            (
                m["n"].as_u64().unwrap(),
                m["kind"].as_str().unwrap(),
                m["style"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
                m["collapsed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        markers,
        [
            (1, "start", "github", "Install dependencies", true),
            (4, "end", "github", "", false),
            (5, "start", "gitlab", "compile", true),
            (8, "end", "gitlab", "compile", false),
            (9, "start", "buildkite", ":package: Package", true),
            (11, "start", "buildkite", ":test_tube: Tests", false),
        ]
    );
    assert_eq!(v["markers"][2]["ts"], 1_700_000_000_000i64);
    assert_eq!(v["markers"][3]["ts"], 1_700_000_042_000i64);
    assert_eq!(v["next"], Value::Null);
    assert!(v["last_t"].as_i64().unwrap() > 0, "{v}");
    // From a later row, only the markers from there on.
    let (_, v) = get_json(
        &http,
        &format!("/api/sections/{}/+/build?from=9", run.scope),
    );
    assert_eq!(v["markers"].as_array().unwrap().len(), 2, "{v}");

    // The interleaved view: both text streams (not the run record), in the order written.
    let want: Vec<(String, u64, String)> = run.interleaved.clone();
    let read = |v: &Value| -> Vec<(String, u64, String)> {
        let names: Vec<String> = v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let text: String = r["s"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s[0].as_str().unwrap().to_string())
                    .collect();
                (
                    names[r["st"].as_u64().unwrap() as usize].clone(),
                    r["n"].as_u64().unwrap(),
                    text,
                )
            })
            .collect()
    };
    let (status, v) = get_json(&http, &format!("/api/interleave/{}", run.scope));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["streams"], serde_json::json!(["build", "steps"]));
    assert_eq!(read(&v), want);
    assert_eq!(v["done"], true, "{v}");
    assert_eq!(v["left_out"], 0);
    // Small pages with the continuation give the same lines, each once.
    let mut got = Vec::new();
    let (mut from, mut row) = (0, 0);
    for _ in 0..100 {
        let (status, v) = get_json(
            &http,
            &format!(
                "/api/interleave/{}?from={from}&row={row}&count=4",
                run.scope
            ),
        );
        assert_eq!(status, 200, "{v}");
        let page = read(&v);
        assert!(page.len() <= 4, "{v}");
        if page.is_empty() {
            break;
        }
        got.extend(page);
        from = v["next"]["from"].as_u64().unwrap();
        row = v["next"]["row"].as_u64().unwrap();
    }
    assert_eq!(got, want);
    let (status, _) = get_json(&http, "/api/interleave/default");
    assert_eq!(status, 400);

    // The run record: command, exit status and duration, unknown fields kept.
    let (status, v) = get_json(&http, &format!("/api/run/{}", run.scope));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["run"]["start"]["command"], serde_json::json!(run.command));
    assert_eq!(v["run"]["end"]["exit_code"], run.exit_code);
    assert_eq!(v["run"]["end"]["duration_secs"], run.duration_secs);
    assert_eq!(v["run"]["state"], "complete");
    let (status, v) = get_json(&http, "/api/run/default/no/such/run");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["run"], Value::Null);
    collector.stop();
}

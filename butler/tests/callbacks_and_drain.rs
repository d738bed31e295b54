//! Registration callbacks (raw and wrapped) and namespace draining, checked call by call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use logdog_butler::{Butler, ButlerConfig, ButlerError, EntryCallback, StreamSource};
use logdog_outputs::MemoryOutput;
use logdog_proto::logpb::{self, log_entry::Content};
use logdog_proto::{StreamType, bundle::text_lines};
use tokio::io::AsyncWriteExt;

fn desc(name: &str, kind: StreamType) -> logpb::LogStreamDescriptor {
    logpb::LogStreamDescriptor {
        name: name.into(),
        stream_type: kind as i32,
        ..Default::default()
    }
}

/// A call seen by a callback, in a comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Lines(u64, u64, Vec<(String, String)>),
    Datagram(u64, u64, Vec<u8>, Option<(u32, u64, bool)>),
    End,
}

fn record(log: Arc<Mutex<Vec<Call>>>) -> EntryCallback {
    Box::new(move |e: Option<&logpb::LogEntry>| {
        let call = match e.and_then(|e| e.content.as_ref().map(|c| (e, c))) {
            None => Call::End,
            Some((e, Content::Text(t))) => Call::Lines(
                e.stream_index,
                e.sequence,
                t.lines
                    .iter()
                    .map(|l| {
                        (
                            String::from_utf8_lossy(&l.value).into_owned(),
                            l.delimiter.clone(),
                        )
                    })
                    .collect(),
            ),
            Some((e, Content::Datagram(d))) => Call::Datagram(
                e.stream_index,
                e.sequence,
                d.data.to_vec(),
                d.partial.map(|p| (p.index, p.size, p.last)),
            ),
            Some((_, Content::Binary(_))) => unreachable!("no binary streams here"),
        };
        log.lock().unwrap().push(call);
    })
}

/// A butler whose bundles are tiny (so text is split into partial lines and datagrams into
/// fragments) and whose every stream gets a recording callback.
async fn butler_with_callback(wrap: bool) -> (Butler, Arc<Mutex<Vec<Call>>>) {
    let cfg = ButlerConfig {
        max_buffer_age: Duration::from_millis(1),
        ..Default::default()
    };
    let butler = Butler::spawn(cfg, Arc::new(MemoryOutput::new(1024))).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    butler
        .add_registration_callback(
            Arc::new(move |_d: &logpb::LogStreamDescriptor| Some(record(l.clone()))),
            wrap,
        )
        .await;
    (butler, log)
}

async fn run_stream(butler: &Butler, name: &str, kind: StreamType, data: Vec<u8>) {
    butler
        .add_stream(StreamSource {
            reader: Box::new(std::io::Cursor::new(data)),
            desc: desc(name, kind),
            tee: None,
        })
        .await
        .unwrap();
    butler.activate().await;
    butler.wait().await.unwrap();
}

fn joined_text(calls: &[Call]) -> String {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Lines(_, _, lines) => Some(
                lines
                    .iter()
                    .map(|(v, d)| format!("{v}{d}"))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn raw_text_callback_sees_partial_pieces_then_the_end() {
    let (butler, log) = butler_with_callback(false).await;
    let long = "x".repeat(3000);
    let text = format!("a\r\n{long}\nb");
    run_stream(&butler, "t", StreamType::Text, text.clone().into_bytes()).await;
    let calls = log.lock().unwrap().clone();
    assert_eq!(calls.last(), Some(&Call::End));
    assert_eq!(calls.iter().filter(|c| **c == Call::End).count(), 1);
    assert_eq!(joined_text(&calls), text);
    // The 3000-byte line cannot fit a 1 KiB bundle: it arrives as partial pieces (delimiter
    // "") that share one sequence number, and stream indices count up from 0.
    let partials = calls
        .iter()
        .filter(|c| matches!(c, Call::Lines(_, _, l) if l.iter().any(|(_, d)| d.is_empty())))
        .count();
    assert!(partials >= 3, "{calls:?}");
    let indices: Vec<u64> = calls
        .iter()
        .filter_map(|c| {
            if let Call::Lines(i, _, _) = c {
                Some(*i)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(indices, (0..indices.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn wrapped_text_callback_sees_whole_lines_only() {
    let (butler, log) = butler_with_callback(true).await;
    let long = "y".repeat(3000);
    let text = format!("a\r\n{long}\nlast");
    run_stream(&butler, "t", StreamType::Text, text.clone().into_bytes()).await;
    let calls = log.lock().unwrap().clone();
    // Lines in order, each whole, renumbered locally; the unterminated last line is delivered
    // before the end marker.
    let mut expected = vec![];
    let mut lines_seen = Vec::new();
    for c in &calls {
        if let Call::Lines(_, _, l) = c {
            lines_seen.extend(l.clone());
        }
    }
    for (v, d) in text_lines(text.as_bytes()) {
        expected.push((String::from_utf8_lossy(v).into_owned(), d.to_string()));
    }
    assert_eq!(lines_seen, expected);
    assert_eq!(calls.last(), Some(&Call::End));
    let mut seq = 0;
    for (i, c) in calls.iter().filter(|c| **c != Call::End).enumerate() {
        let Call::Lines(si, s, l) = c else {
            panic!("{c:?}")
        };
        assert_eq!((*si, *s), (i as u64, seq));
        seq += l.len() as u64;
    }
}

fn framed(datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in datagrams {
        logdog_proto::handshake::put_uvarint(&mut out, d.len() as u64);
        out.extend_from_slice(d);
    }
    out
}

#[tokio::test]
async fn raw_and_wrapped_datagram_callbacks() {
    let datagrams = vec![b"one".to_vec(), vec![], vec![7u8; 2500], b"two".to_vec()];
    // Raw: the 2500-byte datagram arrives in fragments.
    let (butler, log) = butler_with_callback(false).await;
    run_stream(&butler, "d", StreamType::Datagram, framed(&datagrams)).await;
    let calls = log.lock().unwrap().clone();
    assert_eq!(calls[0], Call::Datagram(0, 0, b"one".to_vec(), None));
    assert_eq!(calls[1], Call::Datagram(1, 1, vec![], None));
    let frags: Vec<_> = calls
        .iter()
        .filter_map(|c| {
            if let Call::Datagram(_, 2, d, Some(p)) = c {
                Some((d.len(), *p))
            } else {
                None
            }
        })
        .collect();
    assert!(frags.len() >= 3, "{calls:?}");
    assert_eq!(frags.iter().map(|(n, _)| n).sum::<usize>(), 2500);
    for (i, (_, (index, size, last))) in frags.iter().enumerate() {
        assert_eq!(
            (*index as usize, *size, *last),
            (i, 2500, i == frags.len() - 1)
        );
    }
    let n = calls.len();
    assert_eq!(
        calls[n - 2],
        Call::Datagram(n as u64 - 2, 3, b"two".to_vec(), None)
    );
    assert_eq!(calls[n - 1], Call::End);

    // Wrapped: whole datagrams, numbered locally, then the end.
    let (butler, log) = butler_with_callback(true).await;
    run_stream(&butler, "d", StreamType::Datagram, framed(&datagrams)).await;
    let calls = log.lock().unwrap().clone();
    let want: Vec<Call> = datagrams
        .iter()
        .enumerate()
        .map(|(i, d)| Call::Datagram(i as u64, i as u64, d.clone(), None))
        .chain([Call::End])
        .collect();
    assert_eq!(calls, want);
}

#[tokio::test]
async fn an_empty_stream_gets_only_the_end_marker_and_duplicates_never_touch_callbacks() {
    let butler = Butler::spawn(ButlerConfig::default(), Arc::new(MemoryOutput::default())).unwrap();
    // One log per stream name, so the two streams' calls can be told apart.
    type Logs = Arc<Mutex<Vec<(String, Arc<Mutex<Vec<Call>>>)>>>;
    let logs: Logs = Arc::new(Mutex::new(Vec::new()));
    let l = logs.clone();
    butler
        .add_registration_callback(
            Arc::new(move |d: &logpb::LogStreamDescriptor| {
                let log = Arc::new(Mutex::new(Vec::new()));
                l.lock().unwrap().push((d.name.clone(), log.clone()));
                Some(record(log))
            }),
            true,
        )
        .await;
    let (mut w, r) = tokio::io::duplex(64);
    butler
        .add_stream(StreamSource {
            reader: Box::new(r),
            desc: desc("live", StreamType::Text),
            tee: None,
        })
        .await
        .unwrap();
    // A duplicate is refused before any callback is asked about it.
    let dup = butler
        .add_stream(StreamSource {
            reader: Box::new(std::io::Cursor::new(b"dup\n".to_vec())),
            desc: desc("live", StreamType::Text),
            tee: None,
        })
        .await;
    assert!(matches!(dup, Err(ButlerError::Duplicate(_))));
    w.write_all(b"mine\n").await.unwrap();
    drop(w);
    run_stream(&butler, "empty", StreamType::Text, Vec::new()).await;
    let logs = logs.lock().unwrap();
    let names: Vec<&str> = logs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["live", "empty"],
        "the refused duplicate asked no callback"
    );
    assert_eq!(
        *logs[0].1.lock().unwrap(),
        [
            Call::Lines(0, 0, vec![("mine".into(), "\n".into())]),
            Call::End
        ]
    );
    assert_eq!(*logs[1].1.lock().unwrap(), [Call::End]);
}

#[tokio::test]
async fn callbacks_apply_to_streams_added_later_and_the_first_wins() {
    let butler = Butler::spawn(ButlerConfig::default(), Arc::new(MemoryOutput::default())).unwrap();
    butler
        .add_stream(StreamSource {
            reader: Box::new(std::io::Cursor::new(b"early\n".to_vec())),
            desc: desc("early", StreamType::Text),
            tee: None,
        })
        .await
        .unwrap();
    let (first, second) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let (f, s) = (first.clone(), second.clone());
    // The first callback declines streams under `skip/`; the second takes everything.
    butler
        .add_registration_callback(
            Arc::new(move |d: &logpb::LogStreamDescriptor| {
                (!d.name.starts_with("skip/")).then(|| record(f.clone()))
            }),
            false,
        )
        .await;
    butler
        .add_registration_callback(
            Arc::new(move |_: &logpb::LogStreamDescriptor| Some(record(s.clone()))),
            false,
        )
        .await;
    for name in ["a", "skip/b"] {
        butler
            .add_stream(StreamSource {
                reader: Box::new(std::io::Cursor::new(b"x\n".to_vec())),
                desc: desc(name, StreamType::Text),
                tee: None,
            })
            .await
            .unwrap();
    }
    butler.activate().await;
    butler.wait().await.unwrap();
    let line = Call::Lines(0, 0, vec![("x".into(), "\n".into())]);
    assert_eq!(*first.lock().unwrap(), [line.clone(), Call::End]);
    assert_eq!(*second.lock().unwrap(), [line, Call::End]);
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_the_namespace_and_closes_it() {
    let butler = Butler::spawn(ButlerConfig::default(), Arc::new(MemoryOutput::default())).unwrap();
    let mut writers = Vec::new();
    for name in ["a/b/c", "a/b/x/y", "a/bc", "z"] {
        let (w, r) = tokio::io::duplex(64);
        butler
            .add_stream(StreamSource {
                reader: Box::new(r),
                desc: desc(name, StreamType::Text),
                tee: None,
            })
            .await
            .unwrap();
        writers.push((name, w));
    }
    // Cancelled while streams are open: the sorted names still open in the namespace.
    let res = butler
        .drain_namespace("a/b", tokio::time::sleep(Duration::from_secs(60)))
        .await;
    assert_eq!(res, Err(vec!["a/b/c".to_string(), "a/b/x/y".to_string()]));
    // The namespace is now closed: new streams in it are refused, neighbours are not.
    let refused = butler
        .add_stream(StreamSource {
            reader: Box::new(tokio::io::empty()),
            desc: desc("a/b/new", StreamType::Text),
            tee: None,
        })
        .await;
    assert!(
        matches!(refused, Err(ButlerError::NamespaceClosed { .. })),
        "{refused:?}"
    );
    butler
        .add_stream(StreamSource {
            reader: Box::new(tokio::io::empty()),
            desc: desc("a/bd", StreamType::Text),
            tee: None,
        })
        .await
        .unwrap();
    // End the namespace's streams: the drain completes (no cancellation).
    writers.retain(|(name, _)| !name.starts_with("a/b/"));
    let res = butler.drain_namespace("a/b/", std::future::pending()).await;
    assert_eq!(res, Ok(()));
    // Draining everything ("") waits for the rest.
    let res = butler
        .drain_namespace("", tokio::time::sleep(Duration::from_secs(60)))
        .await;
    assert_eq!(res, Err(vec!["a/bc".to_string(), "z".to_string()]));
    writers.clear();
    assert_eq!(
        butler.drain_namespace("", std::future::pending()).await,
        Ok(())
    );
    let refused = butler
        .add_stream(StreamSource {
            reader: Box::new(tokio::io::empty()),
            desc: desc("anything", StreamType::Text),
            tee: None,
        })
        .await;
    assert!(matches!(refused, Err(ButlerError::NamespaceClosed { .. })));
    butler.activate().await;
    butler.wait().await.unwrap();
}

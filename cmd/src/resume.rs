//! `logdog_butler resume`: uploads what an earlier butler left in a spool.

use crate::cli::{Global, ResumeArgs};
use crate::{Failure, build_output};

/// Runs the `resume` subcommand: 0 when everything was delivered, 1 otherwise (the report
/// says what was damaged, refused, per stream, or is still in the spool).
pub async fn resume(g: &Global, args: ResumeArgs) -> Result<u8, Failure> {
    let Some(dir) = &g.spool else {
        return Err(Failure::Usage(
            "resume needs --spool DIR (and --output grpc://HOST:PORT)".into(),
        ));
    };
    if g.collector().is_none() || g.outputs.len() != 1 {
        return Err(Failure::Usage(format!(
            "resume uploads to a collector: expected one --output grpc://HOST:PORT or \
             grpcs://HOST:PORT, not {}",
            g.outputs_label()
        )));
    }
    // Two bundles at a time, and big buffers given back at once, keep memory low whatever
    // the spool's size.
    return_big_buffers();
    let crate::Outputs { output, grpc, .. } = build_output(g, 2)?;
    let Some(grpc) = grpc else {
        return Err(Failure::Usage("resume needs the collector output".into()));
    };
    let before = output.stats().spool.unwrap_or_default();
    if before.leftover_segments == 0 {
        say!("spool {}: nothing to upload", dir.display());
    } else {
        say!(
            "uploading {} in {} spool segment(s) from {} to {} (waiting at most {})",
            crate::summary::human(before.leftover_bytes),
            before.leftover_segments,
            dir.display(),
            g.outputs_label(),
            humantime::format_duration(g.flush_timeout)
        );
    }
    let drained = grpc.drain(tokio::time::sleep(g.flush_timeout)).await;
    if let Err(e) = output.close().await {
        tracing::error!(error = %e, "closing the output failed");
    }
    let stats = output.stats();
    let sp = stats.spool.unwrap_or_default();
    say!(
        "resume: {} bundles ({} entries, {} bytes) delivered",
        stats.sent_bundles,
        stats.sent_entries,
        stats.sent_bytes
    );
    eprintln!("{}", crate::summary::spool_line(&sp));
    let acked = grpc.acknowledged();
    for ((prefix, name), a) in &acked {
        if a.lost_entries > 0 || a.lost_bytes > 0 || a.lost.is_some() {
            say!(
                "stream {prefix}/+/{name}: LOST: {} entries ({}) refused by the collector: {}",
                a.lost_entries,
                crate::summary::human(a.lost_bytes),
                a.lost.as_deref().unwrap_or("no reason given")
            );
        }
    }
    if let Some(msg) = grpc.failure() {
        say!(
            "the collector's store is damaged and can store nothing until it is \
             repaired (DATA_LOSS: {msg}); {} stay in the spool",
            crate::summary::human(sp.pending_bytes)
        );
    } else if let Some(msg) = grpc.tls_failure() {
        say!(
            "{msg}; {} stay in the spool",
            crate::summary::human(sp.pending_bytes)
        );
    } else if !drained {
        say!(
            "{} still in the spool (the collector did not acknowledge it within {}); run resume again",
            crate::summary::human(sp.pending_bytes),
            humantime::format_duration(g.flush_timeout)
        );
    }
    if let Some(path) = &args.result_path {
        let result = serde_json::json!({
            "drained": drained,
            "collector_failure": grpc.failure().or_else(|| grpc.tls_failure()),
            "streams": acked
                .iter()
                .map(|((prefix, name), a)| (format!("{prefix}/+/{name}"), a))
                .collect::<std::collections::BTreeMap<_, _>>(),
            "output": stats,
            "peak_rss_kib": crate::run::peak_rss_kib(),
        });
        let text = serde_json::to_vec_pretty(&result).map_err(|e| Failure::Runtime(e.into()))?;
        if let Err(e) = std::fs::write(path, text) {
            say!("cannot write {}: {e}", path.display());
        }
    }
    Ok(if drained && !sp.lost_anything() && !grpc.lost_anything() {
        0
    } else {
        1
    })
}

/// Asks glibc's allocator to serve every buffer of 256 KiB or more with its own mapping,
/// returned to the system when freed. By default the threshold grows with the sizes freed,
/// after which megabyte-sized bundles come from the heap and stay resident: uploading a big
/// spool then ends with twice the memory it needs.
#[allow(unsafe_code)]
fn return_big_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator setting; it is called before the upload
    // starts allocating, and any value is valid for M_MMAP_THRESHOLD up to 32 MiB.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

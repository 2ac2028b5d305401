//! The benchmark driver end to end at toy sizes: every figure for every default scenario
//! runs, is verified, and lands in the JSON report. Keeps `cargo xtask bench` from rotting
//! between the (long, manual) full runs; the figures themselves are not judged here.
use std::{path::Path, process::Command};

use ftp_guard_tests::require_privileged;
use serde_json::Value;

#[test]
fn every_figure_runs_for_every_default_scenario() {
    if !require_privileged() {
        return;
    }
    let out = tempfile_dir();
    // The daemon binary of this build (the memory figure runs it as a process).
    let exe = std::env::current_exe().unwrap();
    let daemon = exe.parent().unwrap().parent().unwrap().join("ftp-guard");
    assert!(daemon.is_file(), "{} not built", daemon.display());
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--runs",
            "1",
            "--memory-runs",
            "1",
            "--size-mib",
            "8",
            "--session-seconds",
            "0.5",
            "--latency-samples",
            "50",
            "--leases-per-connection",
            "20",
            "--idle-sessions",
            "200",
            "--quiet-wait",
            "0",
            "--retries",
            "0",
            "--ftp-guard-bin",
        ])
        .arg(&daemon)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("running the bench binary");
    assert!(status.success(), "bench failed: {status}");

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("latest.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(out.join("latest.md")).unwrap();
    let figures = json["figures"].as_array().unwrap();
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "throughput",
            "streams",
            "sessions",
            "latency",
            "leases",
            "memory"
        ]
    );
    for figure in figures {
        let name = figure["name"].as_str().unwrap();
        let scenarios = figure["scenarios"].as_array().unwrap();
        let expected = if name == "memory" { 2 } else { 5 };
        assert_eq!(scenarios.len(), expected, "{name}: {scenarios:?}");
        for s in scenarios {
            let summary = s["summary"].as_object().unwrap();
            assert!(!summary.is_empty(), "{name}/{}: no values", s["name"]);
            for (metric, v) in summary {
                let median = v["median"].as_f64().unwrap();
                // CPU time is sampled at the tick: a toy run may see none.
                let may_be_zero = metric.contains("cpu") || metric.contains("softirq");
                assert!(
                    median.is_finite() && (median > 0.0 || may_be_zero && median == 0.0),
                    "{name}/{}/{metric}: {median}",
                    s["name"]
                );
            }
        }
    }
    // Both baselines are compared with, and the targets are judged.
    let comparisons = json["comparisons"].as_array().unwrap();
    for baseline in ["routing", "kernel-helper"] {
        assert!(
            comparisons.iter().any(|c| c["baseline"] == baseline),
            "no comparison with {baseline}"
        );
    }
    let targets = json["targets"].as_array().unwrap();
    for label in [
        "throughput kernel / kernel-helper",
        "sessions/s kernel / kernel-helper",
        "reply p99 added by ftp-guard (kernel − routing), µs",
        "gateway memory per idle session (kernel), KiB",
    ] {
        assert!(
            targets.iter().any(|t| t["label"] == label),
            "target {label:?} not judged"
        );
        assert!(md.contains(label), "{label:?} not in the markdown");
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

//! The benchmark driver end to end at toy sizes: every figure for every default scenario
//! runs, is verified, and lands in the JSON report. Keeps `cargo xtask bench` from rotting
//! between the (long, manual) full runs; the figures themselves are not judged here, but
//! what `data-conns` counts (failures by kind included) must be in the report, and a
//! download with checksum offload on must work on every path.
use std::{path::Path, process::Command};

use ftp_guard_testbed::require_privileged;
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
            "--data-conn-seconds",
            "2",
            // A stalled download or operation fails after 3 s, not the default 10.
            "--stall-seconds",
            "3",
            // The flood figures' quick mode: a 1 s flood per drop run; the sessions under
            // flood last as long as the sessions figure's.
            "--flood-seconds",
            "1",
            "--flood-pps",
            "5000",
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
            "throughput-offload",
            "streams",
            "sessions",
            "data-conns",
            "latency",
            "leases",
            "memory",
            "syn-drop",
            "syn-flood-sessions"
        ]
    );
    for figure in figures {
        let name = figure["name"].as_str().unwrap();
        let scenarios = figure["scenarios"].as_array().unwrap();
        let expected = match name {
            "memory" => 2,
            // The nftables baseline (in `kernel-helper`), ftp-guard's kernel paths.
            "syn-drop" | "syn-flood-sessions" => 3,
            _ => 5,
        };
        assert_eq!(scenarios.len(), expected, "{name}: {scenarios:?}");
        for s in scenarios {
            let scenario = s["name"].as_str().unwrap();
            let failed_runs = s["failed_runs"].as_u64().unwrap();
            let runs = s["runs"].as_array().unwrap();
            // A failed run (only `throughput-offload` reports one instead of stopping)
            // fails the test: every path must carry data with checksum offload on.
            assert_eq!(failed_runs, 0, "{name}/{scenario}: {runs:?}");
            let summary = s["summary"].as_object().unwrap();
            assert!(!summary.is_empty(), "{name}/{scenario}: no values");
            for (metric, v) in summary {
                let median = v["median"].as_f64().unwrap();
                // CPU time is sampled at the tick: a toy run may see none. A run may have
                // no failed data connections.
                let may_be_zero = metric.contains("cpu")
                    || metric.contains("softirq")
                    || metric.contains("failed");
                assert!(
                    median.is_finite() && (median > 0.0 || may_be_zero && median == 0.0),
                    "{name}/{}/{metric}: {median}",
                    s["name"]
                );
            }
        }
    }
    data_conns_are_counted(&json, &md);
    floods_are_dropped_and_bounded(&json);
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
        "data connections/s through 100 ports kernel / kernel-helper",
        "throughput with checksum offload on kernel / routing",
        "SYNs dropped/s on the data range kernel-xdp / nftables ingress (kernel-helper)",
        "sessions/s under a SYN flood at port 21 / unloaded (kernel)",
    ] {
        assert!(
            targets.iter().any(|t| t["label"] == label),
            "target {label:?} not judged"
        );
        assert!(md.contains(label), "{label:?} not in the markdown");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// The `data-conns` figure: ftp-guard limited to its 100 ports, and every run's counts
/// (completed, failed by kind) in the JSON as numbers.
fn data_conns_are_counted(json: &Value, md: &str) {
    let figure = json["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "data-conns")
        .unwrap();
    assert_eq!(figure["ftp_guard_data_ports"], "40000-40099");
    for s in figure["scenarios"].as_array().unwrap() {
        let scenario = s["name"].as_str().unwrap();
        for key in ["data_conns_per_s", "data_conns_failed_pct"] {
            let median = s["summary"][key]["median"].as_f64();
            assert!(median.is_some_and(f64::is_finite), "{scenario}/{key}: {s}");
        }
        for run in s["runs"].as_array().unwrap() {
            let detail = &run["detail"];
            let transfers = detail["transfers"].as_u64().unwrap();
            let failed = detail["failed"].as_u64().unwrap();
            assert!(transfers > 0, "{scenario}: no transfer completed: {detail}");
            let by_kind: u64 = detail["failures"]
                .as_object()
                .unwrap()
                .values()
                .map(|n| n.as_u64().unwrap())
                .sum();
            assert_eq!(by_kind, failed, "{scenario}: {detail}");
            let ports = detail["distinct_data_ports"].as_u64().unwrap();
            if detail["ftp_guard_data_ports"].is_string() {
                assert!(ports <= 100, "{scenario}: {ports} ports through ftp-guard");
            }
            for key in ["wall_seconds", "machine_cpu_seconds"] {
                assert!(detail[key].as_f64().is_some(), "{scenario}/{key}: {detail}");
            }
        }
        assert!(
            md.contains(&format!("- `{scenario}`: ")),
            "{scenario} not in the notes"
        );
    }
    let comparisons = json["comparisons"].as_array().unwrap();
    assert!(
        comparisons
            .iter()
            .any(|c| c["metric"] == "data_conns_per_s" && c["value"].as_f64().is_some()),
        "data connections/s not compared"
    );
    let target = json["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["metric"] == "data_conns_per_s" && t["target"]["at_least"] == 0.9)
        .expect("the data-conns target is judged");
    assert!(target["value"].as_f64().is_some(), "{target}");
    assert!(target["met"].is_boolean(), "{target}");
}

/// Every flooded SYN the `syn-drop` runs count was dropped where the scenario says (the
/// nftables rule, or ftp-guard's no-lease counter, which the kernel counters repeat), and
/// the sessions under flood ran while SYN cookies were being sent.
fn floods_are_dropped_and_bounded(json: &Value) {
    let figure = |name: &str| {
        json["figures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()
            .clone()
    };
    for s in figure("syn-drop")["scenarios"].as_array().unwrap() {
        let scenario = s["name"].as_str().unwrap();
        for run in s["runs"].as_array().unwrap() {
            let detail = &run["detail"];
            let (sent, dropped) = (
                detail["sent"].as_u64().unwrap(),
                detail["dropped"].as_u64().unwrap(),
            );
            assert!(dropped > 0 && dropped <= sent, "{scenario}: {detail}");
            assert_eq!(detail["kept_up"], dropped == sent, "{scenario}: {detail}");
            let seconds = detail["flood_seconds"].as_f64().unwrap();
            assert!(
                (1.0..3.0).contains(&seconds),
                "{scenario}: flood of {seconds} s"
            );
            let by = if scenario == "kernel-helper" {
                "nftables netdev ingress rule"
            } else {
                assert_eq!(
                    run["kernel_counters"]["drop_no_lease"], dropped,
                    "{scenario}"
                );
                "ftp-guard"
            };
            assert_eq!(detail["dropped_by"], by, "{scenario}");
        }
    }
    for s in figure("syn-flood-sessions")["scenarios"]
        .as_array()
        .unwrap()
    {
        let scenario = s["name"].as_str().unwrap();
        for run in s["runs"].as_array().unwrap() {
            let detail = &run["detail"];
            assert!(
                detail["flood_sent"].as_u64().unwrap() > 0,
                "{scenario}: {detail}"
            );
            assert!(
                detail["syncookies_sent"].as_u64().unwrap() > 0,
                "{scenario}: {detail}"
            );
            for round in ["unloaded", "under_flood"] {
                assert!(
                    detail[round]["sessions"].as_u64().unwrap() > 0,
                    "{scenario}: {detail}"
                );
            }
        }
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

//! `cargo xtask test [--no-interop] [-- ARGS]`: setup, then the whole workspace's tests,
//! privileged ones included, one at a time, then the interoperability matrix on both data
//! paths and both topologies (reports: target/interop/interop-{standard,field}.md), and a
//! fuzz smoke run (every target of fuzz/ for a few seconds: a broken harness fails here).
//! Fails if any fails.
use std::time::Instant;

use anyhow::{Result, ensure};

use crate::{fuzz, interop, setup, util};

/// Seconds each fuzz target runs in the smoke run (5 targets; the build comes on top).
const FUZZ_SMOKE_SECS: u64 = 5;

/// Returns the exit code to pass on: `cargo test`'s if it failed, else the matrix's.
pub fn run(extra: &[String], with_interop: bool) -> Result<i32> {
    ensure!(
        util::is_root(),
        "cargo xtask test needs root (CAP_BPF, CAP_NET_ADMIN, netns): run it as root"
    );
    let start = Instant::now();
    setup::run()?;
    let mut cmd = util::cargo();
    // ftp-guard-ebpf is excluded: it is built for bpfel-unknown-none by ftp-guard's build.rs
    // and must never be built for the host.
    // One test thread: the privileged tests share bpffs, XDP attach points and netns names.
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "ftp-guard-ebpf",
        "--all-targets",
    ])
    .args(["--", "--test-threads=1"])
    .args(extra)
    // Privileged tests fail instead of skipping: here they are the point.
    .env("FTP_GUARD_REQUIRE_PRIVILEGED", "1");
    println!("running: {}", util::cmdline(&cmd));
    let tests = util::status(&mut cmd)?;
    let tests_secs = start.elapsed().as_secs_f64();
    let t = Instant::now();
    let fuzz_ok = match fuzz::smoke(FUZZ_SMOKE_SECS) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("fuzz smoke: {e:#}");
            false
        }
    };
    println!(
        "fuzz smoke: {} ({:.1} s)",
        if fuzz_ok { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    // The matrix runs even after a test failure: one CI run then tells both stories.
    // On both topologies: the standard one (veths, forwarding on, offloads off) and the
    // field one (bridges, ip_forward = 0, default offloads, 100 data ports).
    let matrix = if with_interop {
        let mut worst = None;
        for topology in ["standard", "field"] {
            let report = interop::test_report().with_file_name(format!("interop-{topology}.md"));
            let args = [
                "--topology".to_owned(),
                topology.to_owned(),
                "--dataplane".to_owned(),
                "both".to_owned(),
                "--report".to_owned(),
                report.display().to_string(),
            ];
            let t = Instant::now();
            let status = interop::matrix(&args)?;
            println!(
                "interop matrix, {topology} topology: {} ({:.1} s; report {})",
                if status.success() { "ok" } else { "FAILED" },
                t.elapsed().as_secs_f64(),
                report.display()
            );
            if worst.is_none_or(|w: std::process::ExitStatus| w.success()) {
                worst = Some(status);
            }
        }
        worst
    } else {
        None
    };
    let ok = tests.success() && fuzz_ok && matrix.is_none_or(|m| m.success());
    println!(
        "cargo xtask test: {} (tests {} in {:.1} s; fuzz smoke {}; interop matrix {}; wall time {:.1} s)",
        if ok { "ok" } else { "FAILED" },
        if tests.success() { "ok" } else { "FAILED" },
        tests_secs,
        if fuzz_ok { "ok" } else { "FAILED" },
        match matrix {
            None => "skipped",
            Some(m) if m.success() => "ok",
            Some(_) => "FAILED",
        },
        start.elapsed().as_secs_f64()
    );
    Ok(if !tests.success() {
        util::exit_code(tests)
    } else if !fuzz_ok {
        1
    } else {
        matrix.map_or(0, util::exit_code)
    })
}

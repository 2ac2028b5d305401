//! `cargo xtask bench [-- ARGS]`: setup, then the benchmark driver (`tools/src/bin/bench/`)
//! built in release mode, as root. Reports go to `target/bench/`; `-- --help` lists ARGS.
use std::time::Instant;

use anyhow::{Result, ensure};

use crate::{setup, util};

/// Returns the benchmark's exit code, to be passed through.
pub fn run(extra: &[String]) -> Result<i32> {
    ensure!(
        util::is_root(),
        "cargo xtask bench needs root (network namespaces, eBPF): run it as root"
    );
    let start = Instant::now();
    setup::run()?;
    // The memory figure runs the daemon itself, next to the benchmark's binary.
    let mut build = util::cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "ftp-guard",
        "--bin",
        "ftp-guard",
    ]);
    println!("running: {}", util::cmdline(&build));
    let built = util::status(&mut build)?;
    ensure!(built.success(), "building ftp-guard failed");
    let mut cmd = util::cargo();
    // Release: the figures are about the data path, not about a debug build of the relay.
    cmd.args([
        "run",
        "--release",
        "-p",
        "ftp-guard-tools",
        "--bin",
        "bench",
        "--",
    ])
    .args(extra);
    println!("running: {}", util::cmdline(&cmd));
    let status = util::status(&mut cmd)?;
    println!(
        "cargo xtask bench: {} (wall time {:.1} s)",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    Ok(util::exit_code(status))
}

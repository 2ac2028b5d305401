//! `cargo xtask test [-- ARGS]`: setup, then the whole workspace's tests, privileged ones
//! included, one at a time.
use std::time::Instant;

use anyhow::{Result, ensure};

use crate::{setup, util};

/// Returns the exit code of `cargo test`, to be passed through.
pub fn run(extra: &[String]) -> Result<i32> {
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
    let status = util::status(&mut cmd)?;
    println!(
        "cargo xtask test: {} (wall time {:.1} s)",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    Ok(util::exit_code(status))
}

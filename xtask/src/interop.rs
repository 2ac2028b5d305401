//! `cargo xtask interop [-- ARGS]`: setup, then the interoperability matrix
//! (`tests/src/bin/interop.rs`: every FTP server × client × data mode × operation through
//! ftp-guard) as root. Writes docs/interop.md; `-- --help` lists ARGS.
use std::time::Instant;

use anyhow::{Result, ensure};

use crate::{setup, util};

/// Returns the matrix's exit code (0: every cell that should pass passed), to be passed
/// through.
pub fn run(extra: &[String]) -> Result<i32> {
    ensure!(
        util::is_root(),
        "cargo xtask interop needs root (network namespaces, eBPF, FTP servers' system user): \
         run it as root"
    );
    let start = Instant::now();
    setup::run()?;
    let mut cmd = util::cargo();
    // A debug build: the matrix is about protocol behaviour, not speed (small transfers).
    cmd.args(["run", "-p", "ftp-guard-tests", "--bin", "interop", "--"])
        .args(extra);
    println!("running: {}", util::cmdline(&cmd));
    let status = util::status(&mut cmd)?;
    println!(
        "cargo xtask interop: {} (wall time {:.1} s)",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    Ok(util::exit_code(status))
}

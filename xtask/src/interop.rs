//! `cargo xtask interop [-- ARGS]`: setup, then the interoperability matrix
//! (`tools/src/bin/interop/`: every FTP server × client × data mode × operation through
//! ftp-guard) as root. Writes docs/interop.md; `-- --help` lists ARGS. `cargo xtask test`
//! runs the matrix too, on both data paths, with its report under target/.
use std::{path::PathBuf, process::ExitStatus, time::Instant};

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
    let status = matrix(extra)?;
    println!(
        "cargo xtask interop: {} (wall time {:.1} s)",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    Ok(util::exit_code(status))
}

/// Builds and runs the matrix with `args` (setup done, running as root).
pub fn matrix(args: &[String]) -> Result<ExitStatus> {
    let mut cmd = util::cargo();
    // A debug build: the matrix is about protocol behaviour, not speed (small transfers).
    cmd.args(["run", "-p", "ftp-guard-tools", "--bin", "interop", "--"])
        .args(args);
    println!("running: {}", util::cmdline(&cmd));
    util::status(&mut cmd)
}

/// Where `cargo xtask test` has the matrix write its report: in the target directory, so a
/// test run never changes the checked-in docs/interop.md.
pub fn test_report() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    util::workspace_root()
        .join(target)
        .join("interop/interop.md")
}

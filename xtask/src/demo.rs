//! `cargo xtask demo [--once]`: setup, build, then the demo driver (`tools/src/bin/demo.rs`),
//! which builds its own namespaces and runs the real `ftp-guard` binary on the gateway.
use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result, ensure};

use crate::{setup, util};

pub fn run(once: bool) -> Result<()> {
    ensure!(
        util::is_root(),
        "the demo needs root (network namespaces, eBPF): run `cargo xtask demo` as root"
    );
    setup::run()?;
    let ftp_guard = util::build_ftp_guard()?;
    let demo = util::build_bin("ftp-guard-tools", "demo")?;
    let mut cmd = Command::new(&demo);
    cmd.env("FTP_GUARD_BIN", &ftp_guard.exe);
    if once {
        cmd.arg("--once");
    }
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot start {}", demo.display()))
}

//! `cargo xtask demo [--once]`: setup, build, then `ftp-guard demo`, which owns the demo.
use anyhow::Result;

use crate::{run, setup, util};

pub fn run(once: bool) -> Result<()> {
    // Setup needs root itself, so ftp-guard runs directly (no sudo) once it passes.
    setup::run()?;
    let build = util::build_ftp_guard()?;
    let args: &[&str] = if once { &["demo", "--once"] } else { &["demo"] };
    run::exec_as_root(None, &build.exe, args)
}

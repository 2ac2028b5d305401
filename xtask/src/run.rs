//! `cargo xtask run -- ARGS...`: builds ftp-guard and runs it as root.
use std::{
    ffi::OsStr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{build_ebpf, util};

pub fn run(args: &[String]) -> Result<()> {
    // Before building: no point in a build that cannot be run.
    let sudo = sudo_if_needed()?;
    build_ebpf::ensure_toolchain()?;
    let build = util::build_ftp_guard()?;
    exec_as_root(sudo.as_deref(), &build.exe, args)
}

/// None when already root, else sudo's path: loading eBPF and attaching XDP need CAP_BPF
/// and CAP_NET_ADMIN.
pub fn sudo_if_needed() -> Result<Option<PathBuf>> {
    if util::is_root() {
        return Ok(None);
    }
    util::find_in_path("sudo").map(Some).context(
        "ftp-guard needs root (CAP_BPF, CAP_NET_ADMIN) and sudo is not installed: run this as root",
    )
}

/// Replaces this process with `[sudo -E] exe ARGS`, so signals and the exit code go
/// straight to ftp-guard. Returns only on failure.
pub fn exec_as_root<S: AsRef<OsStr>>(sudo: Option<&Path>, exe: &Path, args: &[S]) -> Result<()> {
    let mut cmd = match sudo {
        None => Command::new(exe),
        Some(sudo) => {
            eprintln!("not root: running ftp-guard through sudo -E");
            let mut cmd = Command::new(sudo);
            cmd.arg("-E").arg(exe);
            cmd
        }
    };
    cmd.args(args);
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot start `{}`", util::cmdline(&cmd)))
}

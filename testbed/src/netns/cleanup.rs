//! Sweeping what a crashed or killed run left (namespaces named after a dead pid, the
//! processes inside them), and the checked command runner the module builds with.
use std::{
    io,
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context, Result, bail, ensure};

use super::NAME_PREFIX;

/// Deletes `fgt-<pid>-*` namespaces whose `<pid>` is no longer running: left by a test run
/// that crashed or was killed before its Drop ran. Live owners (tests running right now in
/// another process) are left alone.
pub(super) fn sweep_stale_namespaces() -> Result<()> {
    let list = run_checked(Command::new("ip").args(["netns", "list"]))?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        // Lines look like `NAME` or `NAME (id: 3)`.
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(owner) = owner_pid(name) else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        eprintln!("netns: removing stale namespace {name} (pid {owner} is gone)");
        kill_namespace_processes(name);
        // Another test process may be sweeping the same namespace: losing the race is fine.
        if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", name])) {
            eprintln!("netns: {e:#}");
        }
    }
    Ok(())
}

/// The `<pid>` of a `fgt-<pid>-…` namespace name.
pub(super) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    (!rest.is_empty()).then_some(())?;
    pid.parse().ok()
}

/// SIGKILLs every process in namespace `name` (ours: only our tests start processes in
/// `fgt-` namespaces), never this process itself. Errors are logged.
pub(super) fn kill_namespace_processes(name: &str) {
    let pids = match run_checked(Command::new("ip").args(["netns", "pids", name])) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => {
            eprintln!("netns: {e:#}");
            return;
        }
    };
    let own = std::process::id() as libc::pid_t;
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
    {
        if pid == own || pid <= 1 {
            continue;
        }
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                eprintln!("netns: kill {pid} in {name}: {e}");
            }
        }
    }
}

/// Fails with a clear message when `program` is not on PATH (or in /usr/sbin, /sbin, which
/// a non-login root shell may lack on PATH but `ip netns exec` finds via execvp anyway).
pub(super) fn require_program(program: &str, why: &str) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file());
    ensure!(found, "`{program}` is not installed: {why}");
    Ok(())
}

/// Runs `cmd`; a non-zero exit is an error with the command line, stdout and stderr.
pub(super) fn run_checked(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running `{}`", cmdline(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\nstdout: {}\nstderr: {}",
            cmdline(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(out)
}

pub(super) fn cmdline(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

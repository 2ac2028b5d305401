//! Shared helpers: running commands with errors that name the command line, root checks,
//! and building `ftp-guard` while reading cargo's JSON messages.
use std::{
    env,
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> &'static Path {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask)
}

/// The cargo that runs us (`cargo xtask` sets CARGO), so nested builds use the same one.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// `VAR=value prog arg ...`, for messages.
pub fn cmdline(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))));
    let words = std::iter::once(quote(cmd.get_program())).chain(cmd.get_args().map(quote));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs with inherited stdio; fails unless the command exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", cmdline(cmd));
    }
    Ok(())
}

/// Runs with inherited stdio and returns the exit status, whatever it is.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("cannot start `{}`", cmdline(cmd)))
}

/// Runs and returns stdout; on failure the error carries stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", cmdline(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}",
            cmdline(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Stdout of a check command, or None if it cannot start or fails: "not there yet".
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Exit code to pass through; a child killed by a signal maps to 128 + signal, as in sh.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// First `name` on PATH that is a file.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// What a build of the `ftp-guard` package produced.
pub struct FtpGuardBuild {
    /// The userspace binary.
    pub exe: PathBuf,
    /// ftp-guard's OUT_DIR, where its build.rs (aya-build) puts the eBPF object.
    pub out_dir: PathBuf,
}

/// `cargo build -p ftp-guard` (debug), reading paths from cargo's JSON messages rather than
/// guessing target/ layout (CARGO_TARGET_DIR, build-script hashes).
pub fn build_ftp_guard() -> Result<FtpGuardBuild> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "ftp-guard",
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped());
    let line = cmdline(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (mut exe, mut out_dir) = (None, None);
    for msg in BufReader::new(stdout).lines() {
        let msg = msg.with_context(|| format!("reading the output of `{line}`"))?;
        // Non-JSON lines (a build script's own stdout leak) are not ours to judge.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&msg) else {
            continue;
        };
        let is_ours = v["package_id"]
            .as_str()
            .is_some_and(|id| package_name(id) == "ftp-guard");
        if !is_ours {
            continue;
        }
        match v["reason"].as_str() {
            Some("build-script-executed") => {
                out_dir = v["out_dir"].as_str().map(PathBuf::from);
            }
            Some("compiler-artifact")
                if v["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
                    && v["target"]["name"] == "ftp-guard" =>
            {
                exe = v["executable"].as_str().map(PathBuf::from);
            }
            _ => {}
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(FtpGuardBuild {
        exe: exe.with_context(|| format!("`{line}` reported no ftp-guard binary"))?,
        out_dir: out_dir
            .with_context(|| format!("`{line}` reported no OUT_DIR for ftp-guard's build.rs"))?,
    })
}

/// Package name from a cargo package id: `path+file:///w/ftp-guard#0.1.0`,
/// `path+file:///w/x#ftp-guard@0.1.0`, or the old `ftp-guard 0.1.0 (path+file:///w)`.
fn package_name(id: &str) -> &str {
    if let Some((url, frag)) = id.split_once('#') {
        match frag.split_once('@') {
            Some((name, _version)) => name,
            None => url.rsplit('/').next().unwrap_or(url),
        }
    } else {
        id.split(' ').next().unwrap_or(id)
    }
}

/// `cargo build -p PACKAGE --bin BIN` (debug); returns the binary's path from cargo's
/// JSON messages.
pub fn build_bin(package: &str, bin: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        package,
        "--bin",
        bin,
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped());
    let line = cmdline(&cmd);
    let output = cmd
        .spawn()
        .and_then(|c| c.wait_with_output())
        .with_context(|| format!("cannot run `{line}`"))?;
    if !output.status.success() {
        bail!("`{line}` failed ({})", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == bin)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("`{line}` reported no `{bin}` binary"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        assert_eq!(package_name("path+file:///w/ftp-guard#0.1.0"), "ftp-guard");
        assert_eq!(
            package_name("path+file:///w/tools#ftp-guard-tools@0.1.0"),
            "ftp-guard-tools"
        );
        assert_eq!(
            package_name("registry+https://github.com/rust-lang/crates.io-index#aya@0.14.0"),
            "aya"
        );
        assert_eq!(
            package_name("ftp-guard 0.1.0 (path+file:///w/ftp-guard)"),
            "ftp-guard"
        );
    }

    #[test]
    fn command_lines_are_quoted() {
        let mut cmd = Command::new("dpkg-query");
        cmd.args(["-W", "-f=${Status}", "it's"]).env("A", "b c");
        assert_eq!(
            cmdline(&cmd),
            r"A='b c' dpkg-query -W '-f=${Status}' 'it'\''s'"
        );
    }
}

//! Running a client in a namespace (bounded by `timeout`), finding programs, and the payload
//! helpers: scratch directories, deterministic random files, SHA-256.
use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs::{self, File},
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{ClientRun, client_timeout};

/// Runs `program args` in `ns` under `timeout`, capturing stdout and (as the trace) stderr;
/// `input`, if any, is its standard input (else /dev/null).
pub(super) fn run_client(
    ns: &str,
    program: &str,
    args: &[&OsStr],
    input: Option<&[u8]>,
) -> Result<ClientRun> {
    let path = require_program(program)?;
    let timeout = require_program("timeout")?;
    let limit = format!("{}s", client_timeout().as_secs() + 10);
    let mut cmd = ns_command(ns)?;
    cmd.arg(timeout)
        .args(["--kill-after=5s", &limit])
        .arg(&path)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command = command_line(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not run `{command}`"))?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        // Scripts are small (far below a pipe's buffer): no deadlock with the output pipes. A
        // client that exits early closes its end; what it did shows in its output.
        let _ = stdin.write_all(bytes);
    }
    let out: Output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{command}`"))?;
    Ok(ClientRun {
        command,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        trace: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `ip netns exec <ns>` ready for the program and its arguments; fails when `ns` is missing.
pub fn ns_command(ns: &str) -> Result<Command> {
    ensure!(
        !ns.is_empty() && !ns.contains('/'),
        "bad network namespace name {ns:?}"
    );
    ensure!(
        Path::new("/run/netns").join(ns).exists(),
        "network namespace {ns:?} does not exist (no /run/netns/{ns})"
    );
    let mut cmd = Command::new(require_program("ip")?);
    cmd.args(["netns", "exec", ns]);
    Ok(cmd)
}

/// A command line as text, for error messages.
pub fn command_line(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
            let _ = write!(text, " '{}'", arg.replace('\'', r"'\''"));
        } else {
            let _ = write!(text, " {arg}");
        }
    }
    text
}

/// The absolute path of `program` from PATH (or the sbin directories, where vsftpd and
/// useradd live), or an error telling to run `cargo xtask setup`.
pub fn require_program(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .with_context(|| {
            format!(
                "`{program}` is not installed (not on PATH nor in /usr/sbin): \
                 run `cargo xtask setup` as root to install the FTP test servers and clients"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A new empty directory under the system temp dir, named `<prefix>-<pid>-<n>-<nanos>`.
/// The caller removes it.
pub fn unique_temp_dir(prefix: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes `size` deterministic pseudo-random bytes to `path` (xorshift64*, seeded from the
/// file name and the size, so two payloads of one size but different names differ).
/// 100 MiB take about 0.5 s in a debug build.
pub fn random_file(path: &Path, size: u64) -> Result<()> {
    let name = path.file_name().unwrap_or_default().as_encoded_bytes();
    // FNV-1a of the name, mixed with the size; never zero (xorshift's fixed point).
    let mut state = name.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) ^ size.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        | 1;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut chunk = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        out.write_all(&chunk[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Lower-case hex SHA-256 of a file (coreutils `sha256sum`).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut cmd = Command::new(require_program("sha256sum")?);
    cmd.arg("--binary").arg(path);
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{}`", command_line(&cmd)))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(hex) if out.status.success() && hex.len() == 64 => Ok(hex.to_owned()),
        _ => bail!(
            "`{}` failed ({}): {}{}",
            command_line(&cmd),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_the_setup_command() {
        let err = require_program("no-such-ftp-tool").unwrap_err().to_string();
        assert!(err.contains("cargo xtask setup"), "{err}");
        assert!(require_program("sh").is_ok());
    }

    #[test]
    fn random_files_are_deterministic_and_differ_by_name() {
        let dir = unique_temp_dir("fgt-unit").unwrap();
        let (a, b, c) = (dir.join("a.bin"), dir.join("b.bin"), dir.join("sub"));
        fs::create_dir(&c).unwrap();
        random_file(&a, 100_003).unwrap();
        random_file(&b, 100_003).unwrap();
        random_file(&c.join("a.bin"), 100_003).unwrap();
        let (ha, hb, hc) = (
            sha256_file(&a).unwrap(),
            sha256_file(&b).unwrap(),
            sha256_file(&c.join("a.bin")).unwrap(),
        );
        assert_eq!(fs::metadata(&a).unwrap().len(), 100_003);
        assert_ne!(ha, hb);
        assert_eq!(ha, hc);
        random_file(&a, 0).unwrap();
        assert_eq!(
            sha256_file(&a).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}

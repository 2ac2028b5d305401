//! Real FTP clients (curl, lftp, Python ftplib) run inside a network namespace with
//! `ip netns exec`, each returning its exit status, its output and its protocol trace, so a
//! test can check which commands were really sent (a silent EPSV → PASV fallback shows up
//! in [`ClientRun::commands_sent`]).
//!
//! Also: payload helpers ([`random_file`], [`sha256_file`]) and the process helpers shared
//! with [`crate::ftp_servers`].
use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs::{self, File},
    io::{BufWriter, Write as _},
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};

/// Wall-clock bound of one client run (curl `--max-time`; a `timeout` wrapper for all).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of one connect / one stalled read or write inside a client.
const IO_TIMEOUT_SECS: u32 = 10;

/// Which data-connection command the client is told to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataMode {
    /// `PASV` / 227 (RFC 959).
    Pasv,
    /// `EPSV` / 229 (RFC 2428), also over IPv4.
    Epsv,
    /// `PORT` (RFC 959): active, the server connects to the client.
    Port,
    /// `EPRT` (RFC 2428), also over IPv4 (not offered by lftp).
    Eprt,
}

impl DataMode {
    pub const PASSIVE: [DataMode; 2] = [DataMode::Pasv, DataMode::Epsv];
    pub const ACTIVE: [DataMode; 2] = [DataMode::Port, DataMode::Eprt];
    pub const ALL: [DataMode; 4] = [
        DataMode::Pasv,
        DataMode::Epsv,
        DataMode::Port,
        DataMode::Eprt,
    ];

    /// The FTP verb of this mode.
    pub fn verb(self) -> &'static str {
        match self {
            DataMode::Pasv => "PASV",
            DataMode::Epsv => "EPSV",
            DataMode::Port => "PORT",
            DataMode::Eprt => "EPRT",
        }
    }

    /// The other data-connection verbs: a client that sends one of them fell back.
    fn others(self) -> impl Iterator<Item = DataMode> {
        DataMode::ALL.into_iter().filter(move |m| *m != self)
    }
}

/// Where and as whom a client logs in. [`crate::ftp_servers::FtpServer::login`] gives the
/// origin's; for a run through the proxy, replace `addr` with the VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub addr: SocketAddrV4,
    pub user: String,
    pub password: String,
}

impl Login {
    /// `ftp://ip:port/<path>` (no credentials: the wrappers pass them separately).
    /// `path` is relative to the login directory; a trailing `/` names a directory.
    pub fn url(&self, path: &str) -> String {
        format!("ftp://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

/// What one client run did.
#[derive(Debug)]
pub struct ClientRun {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    /// The client's standard output (listings; downloads go to files).
    pub stdout: String,
    /// The protocol trace: curl `-v`, lftp `debug 5`, ftplib `set_debuglevel(2)` (stderr).
    pub trace: String,
}

impl ClientRun {
    /// The FTP commands the client sent, in order, as upper-case verbs (`USER`, `EPSV`, ...).
    pub fn commands_sent(&self) -> Vec<String> {
        self.command_lines()
            .iter()
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_ascii_uppercase)
            .collect()
    }

    /// Whole command lines the client sent (verb upper-cased, argument as sent), in order.
    pub fn command_lines(&self) -> Vec<String> {
        self.trace
            .lines()
            .filter_map(sent_line)
            .map(|line| match line.split_once(' ') {
                Some((verb, arg)) => format!("{} {arg}", verb.to_ascii_uppercase()),
                None => line.to_ascii_uppercase(),
            })
            .collect()
    }

    /// Whether the client sent `verb` (case-insensitive) at least once.
    pub fn sent(&self, verb: &str) -> bool {
        self.commands_sent()
            .iter()
            .any(|v| v.eq_ignore_ascii_case(verb))
    }

    /// Ok when the client exited 0; otherwise an error carrying the command line and output.
    pub fn success(self) -> Result<ClientRun> {
        ensure!(self.status.success(), "client failed: {}", self.describe());
        Ok(self)
    }

    /// Ok when the client sent `mode`'s verb and never the other passive verb (no fallback).
    pub fn check_mode(&self, mode: DataMode) -> Result<()> {
        ensure!(
            self.sent(mode.verb()) && !mode.others().any(|m| self.sent(m.verb())),
            "expected only {} to be used; commands sent: {:?}\n{}",
            mode.verb(),
            self.commands_sent(),
            self.describe()
        );
        Ok(())
    }

    /// Command line, exit status, stdout and trace, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stdout ---\n{}\n--- trace ---\n{}",
            self.command,
            exit_text(self.status),
            self.stdout.trim_end(),
            self.trace.trim_end()
        )
    }
}

/// The command in one trace line, if the line shows a command the client sent.
/// curl: `> EPSV`; lftp: `---> EPSV`; ftplib: `*cmd* 'EPSV'`.
fn sent_line(line: &str) -> Option<&str> {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("*cmd* ") {
        return Some(rest.trim_matches(|c| c == '\'' || c == '"'));
    }
    // lftp prefixes nothing by default, but with `debug -t` or `-p` a timestamp/PID comes first.
    if let Some(at) = line.find("---> ") {
        return Some(&line[at + 5..]);
    }
    line.strip_prefix("> ")
}

fn exit_text(status: ExitStatus) -> String {
    match status.code() {
        Some(124) => "124 (killed by `timeout`: the client hung)".into(),
        Some(code) => code.to_string(),
        None => format!("{status}"),
    }
}

fn mode_flags_curl(mode: DataMode) -> &'static [&'static str] {
    match mode {
        DataMode::Pasv => &["--ftp-pasv", "--disable-epsv"],
        // curl's default: EPSV first; it would fall back to PASV on an error (visible).
        DataMode::Epsv => &["--ftp-pasv"],
        // `-P -`: the address of the control connection's local end.
        DataMode::Port => &["--ftp-port", "-", "--disable-eprt"],
        DataMode::Eprt => &["--ftp-port", "-"],
    }
}

fn curl(ns: &str, login: &Login, mode: DataMode, args: &[&OsStr]) -> Result<ClientRun> {
    let user = format!("{}:{}", login.user, login.password);
    let max_time = CLIENT_TIMEOUT.as_secs().to_string();
    let connect = IO_TIMEOUT_SECS.to_string();
    let mut all: Vec<&OsStr> = vec![
        "-sS".as_ref(),
        "-v".as_ref(),
        "--user".as_ref(),
        user.as_ref(),
        "--max-time".as_ref(),
        max_time.as_ref(),
        "--connect-timeout".as_ref(),
        connect.as_ref(),
    ];
    all.extend(mode_flags_curl(mode).iter().map(OsStr::new));
    all.extend_from_slice(args);
    run_client(ns, "curl", &all)
}

/// `curl` RETR of `remote` (relative to the login directory) into `dest`.
pub fn curl_download(
    ns: &str,
    login: &Login,
    remote: &str,
    dest: &Path,
    mode: DataMode,
) -> Result<ClientRun> {
    let url = login.url(remote);
    curl(
        ns,
        login,
        mode,
        &["-o".as_ref(), dest.as_os_str(), url.as_ref()],
    )
}

/// `curl -C -`: resumes into `dest` from its current length (REST n, then RETR).
pub fn curl_resume_download(
    ns: &str,
    login: &Login,
    remote: &str,
    dest: &Path,
    mode: DataMode,
) -> Result<ClientRun> {
    let url = login.url(remote);
    let args: [&OsStr; 5] = [
        "-C".as_ref(),
        "-".as_ref(),
        "-o".as_ref(),
        dest.as_os_str(),
        url.as_ref(),
    ];
    curl(ns, login, mode, &args)
}

/// `curl -T`: STOR of the local file `src` as `remote`.
pub fn curl_upload(
    ns: &str,
    src: &Path,
    login: &Login,
    remote: &str,
    mode: DataMode,
) -> Result<ClientRun> {
    let url = login.url(remote);
    curl(
        ns,
        login,
        mode,
        &["-T".as_ref(), src.as_os_str(), url.as_ref()],
    )
}

/// LIST of the directory `dir` ("" for the login directory); the listing is in `stdout`.
pub fn curl_list(ns: &str, login: &Login, dir: &str, mode: DataMode) -> Result<ClientRun> {
    let dir = dir.trim_matches('/');
    let url = if dir.is_empty() {
        login.url("")
    } else {
        login.url(&format!("{dir}/"))
    };
    curl(ns, login, mode, &[url.as_ref()])
}

/// Runs an lftp `script` (commands separated by `;` or newlines, e.g.
/// `"cls -1; put /tmp/a -o a; get a -o /tmp/b"`) after logging in to `login`.
///
/// Settings: `ftp:prefer-epsv yes|no` picks EPSV or PASV (lftp sends EPSV over IPv4 only with
/// `yes`), no TLS, `cmd:fail-exit yes` (the first failing command ends the run with a non-zero
/// status), one retry at most, 10 s network timeout, `xfer:clobber on`, no rc files (`--norc`).
/// The trace is lftp's `debug 5` output (`---> CMD` / `<--- reply`) from stderr.
pub fn lftp_run(ns: &str, login: &Login, script: &str, mode: DataMode) -> Result<ClientRun> {
    for (what, value) in [("user", &login.user), ("password", &login.password)] {
        ensure!(
            !value.contains(['"', '\\', ',', '\n']),
            "lftp_run: the {what} must not contain '\"', '\\\\', ',' or a newline"
        );
    }
    // lftp over IPv4: EPSV only with prefer-epsv; active mode always sends PORT.
    let (passive, prefer_epsv) = match mode {
        DataMode::Pasv => ("on", "no"),
        DataMode::Epsv => ("on", "yes"),
        DataMode::Port => ("off", "no"),
        DataMode::Eprt => bail!("lftp sends EPRT only over IPv6"),
    };
    let full = format!(
        "set cmd:fail-exit yes; set cmd:interactive no; set ftp:passive-mode {passive}; \
         set ftp:prefer-epsv {prefer_epsv}; set ftp:ssl-allow no; set net:max-retries 1; \
         set net:timeout {IO_TIMEOUT_SECS}; set net:reconnect-interval-base 1; \
         set xfer:clobber on; debug 5; \
         open -u \"{},{}\" -p {} {}\n{script}",
        login.user,
        login.password,
        login.addr.port(),
        login.addr.ip()
    );
    run_client(
        ns,
        "lftp",
        &["--norc".as_ref(), "-c".as_ref(), full.as_ref()],
    )
}

/// Python ftplib driver: logs in, runs `ops` in order, QUITs. Ops (names without spaces):
/// - `LIST [dir]`, `NLST [dir]`: listing lines go to `stdout`
/// - `RETR remote local`, `STOR local remote`
/// - `REST n RETR remote local`: resumes: `local` is cut to `n` bytes and written from there
/// - `QUOTE line...`: a raw command; its reply goes to `stdout`
///
/// ftplib itself sends EPSV only when the control socket is IPv6: a subclass overrides
/// `makepasv` to send exactly the requested verb (PASV: the 227 address is ignored, as
/// ftplib does by default). The trace is `set_debuglevel(2)` (`*cmd* 'EPSV'`), sent to stderr.
pub fn ftplib_run(ns: &str, login: &Login, ops: &[&str], mode: DataMode) -> Result<ClientRun> {
    let ip = login.addr.ip().to_string();
    let port = login.addr.port().to_string();
    let timeout = IO_TIMEOUT_SECS.to_string();
    let mut args: Vec<&OsStr> = vec![
        "-u".as_ref(),
        "-c".as_ref(),
        FTPLIB_SCRIPT.as_ref(),
        ip.as_ref(),
        port.as_ref(),
        login.user.as_ref(),
        login.password.as_ref(),
        mode.verb().as_ref(),
        timeout.as_ref(),
    ];
    args.extend(ops.iter().map(OsStr::new));
    run_client(ns, "python3", &args)
}

const FTPLIB_SCRIPT: &str = r#"
import ftplib, functools, os, sys
# ftplib prints its debug trace with print(): send it to stderr, keep stdout for listings.
ftplib.print = functools.partial(print, file=sys.stderr, flush=True)
host, port, user, password, mode, timeout = sys.argv[1:7]
ops = sys.argv[7:]

class FTP(ftplib.FTP):
    def sendport(self, host, port):
        # ftplib sends PORT over IPv4; EPRT on request.
        if mode == "EPRT":
            return self.sendeprt(host, port)
        return super().sendport(host, port)

    def makepasv(self):
        if mode == "EPSV":
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        _untrusted, data_port = ftplib.parse227(self.sendcmd("PASV"))
        return self.sock.getpeername()[0], data_port

ftp = FTP(timeout=float(timeout))
ftp.set_pasv(mode in ("PASV", "EPSV"))
ftp.set_debuglevel(2)
ftp.connect(host, int(port))
ftp.login(user, password)
for op in ops:
    w = op.split()
    verb = w[0].upper()
    if verb in ("LIST", "NLST"):
        ftp.retrlines(" ".join([verb] + w[1:]), lambda line: print(line, flush=True))
    elif verb == "RETR" and len(w) == 3:
        with open(w[2], "wb") as f:
            ftp.retrbinary("RETR " + w[1], f.write)
    elif verb == "STOR" and len(w) == 3:
        with open(w[1], "rb") as f:
            ftp.storbinary("STOR " + w[2], f)
    elif verb == "REST" and len(w) == 5 and w[2].upper() == "RETR":
        offset = int(w[1])
        with open(w[4], "r+b" if os.path.exists(w[4]) else "w+b") as f:
            f.truncate(offset)
            f.seek(offset)
            ftp.retrbinary("RETR " + w[3], f.write, rest=offset)
    elif verb == "QUOTE" and len(w) > 1:
        print(ftp.sendcmd(" ".join(w[1:])), flush=True)
    else:
        sys.exit("ftplib_run: unknown op %r" % op)
ftp.quit()
"#;

/// Runs `program args` in `ns` under `timeout`, capturing stdout and (as the trace) stderr.
fn run_client(ns: &str, program: &str, args: &[&OsStr]) -> Result<ClientRun> {
    let path = require_program(program)?;
    let timeout = require_program("timeout")?;
    let limit = format!("{}s", CLIENT_TIMEOUT.as_secs() + 10);
    let mut cmd = ns_command(ns)?;
    cmd.arg(timeout)
        .args(["--kill-after=5s", &limit])
        .arg(&path)
        .args(args);
    let command = command_line(&cmd);
    let out: Output = cmd
        .output()
        .with_context(|| format!("could not run `{command}`"))?;
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
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    fn run(trace: &str) -> ClientRun {
        ClientRun {
            command: "x".into(),
            status: ExitStatus::from_raw(0),
            stdout: String::new(),
            trace: trace.into(),
        }
    }

    #[test]
    fn commands_from_each_client_trace() {
        let curl = run(
            "* Connected\n< 220 hi\n> USER a\n> PASS b\n> EPSV\n< 229 ok (|||3000|)\n> RETR f\n",
        );
        assert_eq!(curl.commands_sent(), ["USER", "PASS", "EPSV", "RETR"]);
        let lftp =
            run("---- Connecting\n<--- 220 hi\n---> FEAT\n---> pasv\n<--- 227 x\n---> REST 10\n");
        assert_eq!(lftp.commands_sent(), ["FEAT", "PASV", "REST"]);
        assert_eq!(lftp.command_lines()[2], "REST 10");
        let ftplib = run("*cmd* 'USER a'\n*put* 'USER a\\r\\n'\n*resp* '331 x'\n*cmd* 'EPSV'\n");
        assert_eq!(ftplib.commands_sent(), ["USER", "EPSV"]);
        assert!(ftplib.check_mode(DataMode::Epsv).is_ok());
        assert!(ftplib.check_mode(DataMode::Pasv).is_err());
        let fallback = run("> EPSV\n< 500 no\n> PASV\n");
        assert!(fallback.check_mode(DataMode::Epsv).is_err());
    }

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

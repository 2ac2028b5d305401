//! Real FTP clients (curl, lftp, Python ftplib, wget, tnftp) run inside a network namespace
//! with `ip netns exec`, each returning its exit status, its output and its protocol trace,
//! so a test can check which commands were really sent (a silent EPSV → PASV fallback shows
//! up in [`ClientRun::commands_sent`]). [`ClientKind`] tells which modes each can be made to
//! use over IPv4.
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
    process::{Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};

/// Default wall-clock bound of one client run (curl `--max-time`; a `timeout` wrapper for
/// all); see [`set_client_timeout`].
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of one connect / one stalled read or write inside a client.
const IO_TIMEOUT_SECS: u32 = 10;

static CLIENT_TIMEOUT_SECS: AtomicU64 = AtomicU64::new(CLIENT_TIMEOUT.as_secs());

/// Changes the wall-clock bound of every later client run in this process (at least 1 s),
/// e.g. a short one for a matrix of small transfers where a hang must not eat the budget.
pub fn set_client_timeout(limit: Duration) {
    CLIENT_TIMEOUT_SECS.store(limit.as_secs().max(1), Ordering::Relaxed);
}

/// The wall-clock bound of one client run now in force.
pub fn client_timeout() -> Duration {
    Duration::from_secs(CLIENT_TIMEOUT_SECS.load(Ordering::Relaxed))
}

/// The real clients, and what each can be made to do over IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKind {
    /// curl: [`curl_list`], [`curl_download`], [`curl_upload`], [`curl_resume_download`].
    Curl,
    /// lftp: [`lftp_run`].
    Lftp,
    /// Python's ftplib: [`ftplib_run`].
    Ftplib,
    /// GNU wget: [`wget_list`], [`wget_download`], [`wget_resume_download`].
    Wget,
    /// tnftp, the NetBSD ftp client (Debian's `ftp` is the same program): [`tnftp_run`].
    Tnftp,
}

impl ClientKind {
    pub const ALL: [ClientKind; 5] = [
        ClientKind::Curl,
        ClientKind::Lftp,
        ClientKind::Ftplib,
        ClientKind::Wget,
        ClientKind::Tnftp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Curl => "curl",
            ClientKind::Lftp => "lftp",
            ClientKind::Ftplib => "ftplib",
            ClientKind::Wget => "wget",
            ClientKind::Tnftp => "tnftp",
        }
    }

    /// Why this client cannot be made to use `mode` over IPv4, if it cannot.
    pub fn unsupported_mode(self, mode: DataMode) -> Option<&'static str> {
        match (self, mode) {
            (ClientKind::Lftp, DataMode::Eprt) => Some("lftp sends EPRT only over IPv6"),
            (ClientKind::Wget, DataMode::Epsv) => {
                Some("wget sends EPSV only over IPv6 (no option to ask for it)")
            }
            (ClientKind::Wget, DataMode::Eprt) => {
                Some("wget sends EPRT only over IPv6 (no option to ask for it)")
            }
            _ => None,
        }
    }

    /// Why this client cannot upload, if it cannot.
    pub fn cannot_upload(self) -> Option<&'static str> {
        (self == ClientKind::Wget).then_some("wget cannot upload")
    }

    /// The installed version: the Debian package's, or (ftplib) Python's.
    pub fn version(self) -> Result<String> {
        match self {
            ClientKind::Curl => deb_version("curl"),
            ClientKind::Lftp => deb_version("lftp"),
            ClientKind::Wget => deb_version("wget"),
            ClientKind::Tnftp => deb_version("tnftp"),
            ClientKind::Ftplib => {
                let mut cmd = Command::new(require_program("python3")?);
                cmd.args([
                    "-c",
                    "import platform; print('Python', platform.python_version())",
                ]);
                let out = cmd
                    .output()
                    .with_context(|| format!("could not run `{}`", command_line(&cmd)))?;
                ensure!(
                    out.status.success(),
                    "`{}` failed ({}): {}",
                    command_line(&cmd),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            }
        }
    }
}

/// `dpkg-query`'s version of an installed Debian package.
pub fn deb_version(package: &str) -> Result<String> {
    let mut cmd = Command::new(require_program("dpkg-query")?);
    cmd.args(["-W", "-f=${Version}", package]);
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{}`", command_line(&cmd)))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success() && !version.is_empty(),
        "`{}` failed ({}): {}",
        command_line(&cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(version)
}

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
    /// The protocol trace: curl `-v`, lftp `debug 5`, ftplib `set_debuglevel(2)`, wget `-d`
    /// (stderr); tnftp `-d` (its stdout, then its stderr).
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
/// curl: `> EPSV`; lftp and tnftp: `---> EPSV`; ftplib: `*cmd* 'EPSV'`; wget: `--> EPSV`.
fn sent_line(line: &str) -> Option<&str> {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("*cmd* ") {
        return Some(rest.trim_matches(|c| c == '\'' || c == '"'));
    }
    // lftp prefixes nothing by default, but with `debug -t` or `-p` a timestamp/PID comes first.
    if let Some(at) = line.find("---> ") {
        return Some(&line[at + 5..]);
    }
    line.strip_prefix("--> ")
        .or_else(|| line.strip_prefix("> "))
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
    let max_time = client_timeout().as_secs().to_string();
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
    run_client(ns, "curl", &all, None)
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

/// One `curl` run fetching every file of `remotes` (relative to the login directory, no
/// two with the same file name) into the directory `dest_dir`, under its own names
/// (`--remote-name-all --output-dir`). curl reuses its control connection from one URL to
/// the next: one login, one RETR after another.
pub fn curl_download_many(
    ns: &str,
    login: &Login,
    remotes: &[&str],
    dest_dir: &Path,
    mode: DataMode,
) -> Result<ClientRun> {
    let urls: Vec<String> = remotes.iter().map(|r| login.url(r)).collect();
    let mut args: Vec<&OsStr> = vec![
        "--remote-name-all".as_ref(),
        "--output-dir".as_ref(),
        dest_dir.as_os_str(),
    ];
    args.extend(urls.iter().map(OsStr::new));
    curl(ns, login, mode, &args)
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
        None,
    )
}

/// Python ftplib driver: logs in, runs `ops` in order, QUITs. Ops (names without spaces):
/// - `LIST [dir]`, `NLST [dir]`: listing lines go to `stdout`
/// - `RETR remote local`, `STOR local remote`
/// - `REST n RETR remote local`: resumes: `local` is cut to `n` bytes and written from there
/// - `QUOTE line...`: a raw command; its reply goes to `stdout`
/// - `SLEEP seconds`: pauses (e.g. to pace many transfers)
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
    run_client(ns, "python3", &args, None)
}

const FTPLIB_SCRIPT: &str = r#"
import ftplib, functools, os, sys, time
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
    elif verb == "SLEEP" and len(w) == 2:
        time.sleep(float(w[1]))
    else:
        sys.exit("ftplib_run: unknown op %r" % op)
ftp.quit()
"#;

/// wget's mode flags: passive (PASV) is its default, `--no-passive-ftp` gives PORT. Over IPv4
/// wget 1.21 never sends EPSV or EPRT (it picks them by address family).
fn wget_mode_flags(mode: DataMode) -> Result<&'static [&'static str]> {
    match mode {
        DataMode::Pasv => Ok(&[]),
        DataMode::Port => Ok(&["--no-passive-ftp"]),
        DataMode::Epsv | DataMode::Eprt => bail!(
            "{}",
            ClientKind::Wget
                .unsupported_mode(mode)
                .unwrap_or("wget cannot use this mode")
        ),
    }
}

/// wget with debug output (the trace), no config files or HSTS database, one try (a retry
/// would hide a failure), 10 s network timeout.
fn wget(ns: &str, login: &Login, mode: DataMode, args: &[&OsStr]) -> Result<ClientRun> {
    let user = format!("--user={}", login.user);
    let password = format!("--password={}", login.password);
    let timeout = format!("--timeout={IO_TIMEOUT_SECS}");
    let mut all: Vec<&OsStr> = vec![
        "-d".as_ref(),
        "--no-config".as_ref(),
        "--no-hsts".as_ref(),
        "--tries=1".as_ref(),
        timeout.as_ref(),
        user.as_ref(),
        password.as_ref(),
    ];
    all.extend(wget_mode_flags(mode)?.iter().map(OsStr::new));
    all.extend_from_slice(args);
    run_client(ns, "wget", &all, None)
}

/// `wget` RETR of `remote` (relative to the login directory) into `dest`.
pub fn wget_download(
    ns: &str,
    login: &Login,
    remote: &str,
    dest: &Path,
    mode: DataMode,
) -> Result<ClientRun> {
    let url = login.url(remote);
    wget(
        ns,
        login,
        mode,
        &["-O".as_ref(), dest.as_os_str(), url.as_ref()],
    )
}

/// `wget -c`: resumes into `dest` from its current length (REST n, then RETR).
pub fn wget_resume_download(
    ns: &str,
    login: &Login,
    remote: &str,
    dest: &Path,
    mode: DataMode,
) -> Result<ClientRun> {
    let url = login.url(remote);
    wget(
        ns,
        login,
        mode,
        &["-c".as_ref(), "-O".as_ref(), dest.as_os_str(), url.as_ref()],
    )
}

/// `wget` of a glob URL (e.g. `many/f*.bin`: LIST, then a RETR of each match, all on one
/// control connection) into the directory `dest_dir` (`-nd -P`), keeping the file names.
pub fn wget_glob_download(
    ns: &str,
    login: &Login,
    pattern: &str,
    dest_dir: &Path,
    mode: DataMode,
) -> Result<ClientRun> {
    let url = login.url(pattern);
    wget(
        ns,
        login,
        mode,
        &[
            "--glob=on".as_ref(),
            "-nd".as_ref(),
            "-P".as_ref(),
            dest_dir.as_os_str(),
            url.as_ref(),
        ],
    )
}

/// LIST of the directory `dir` ("" for the login directory) with wget
/// (`--no-remove-listing`): the raw listing wget saved as `.listing` is put in `stdout`.
/// `work` is an empty directory of the caller's for wget's files.
pub fn wget_list(
    ns: &str,
    login: &Login,
    dir: &str,
    mode: DataMode,
    work: &Path,
) -> Result<ClientRun> {
    let dir = dir.trim_matches('/');
    let url = if dir.is_empty() {
        login.url("")
    } else {
        login.url(&format!("{dir}/"))
    };
    let index = work.join("index.html");
    let prefix = work.as_os_str();
    let mut run = wget(
        ns,
        login,
        mode,
        &[
            "--no-remove-listing".as_ref(),
            "--directory-prefix".as_ref(),
            prefix,
            "-O".as_ref(),
            index.as_os_str(),
            url.as_ref(),
        ],
    )?;
    let listing = work.join(".listing");
    if run.status.success() {
        run.stdout = fs::read_to_string(&listing).with_context(|| {
            format!(
                "wget left no readable {}: {}",
                listing.display(),
                run.describe()
            )
        })?;
    }
    Ok(run)
}

/// Runs tnftp `script` (one command per line, e.g. `ls . /tmp/list.txt`, `get a /tmp/a`,
/// `put /tmp/b b`, `reget a /tmp/a`) after logging in to `login`, then `quit`.
///
/// Settings: `binary`, `epsv4 on|off` and `passive on|off` pick the mode (tnftp falls back
/// neither from passive to active nor, with these settings, silently: a failed EPSV shows as
/// PASV in the trace); `-i` no prompts, `-n` no auto-login (`user` from the script), `-q 10`
/// gives up on a 10 s stall. The trace is tnftp's `-d` output (`---> CMD`, replies).
///
/// tnftp exits 0 after a failed command in a script: when its output shows a failure (a 4xx
/// or 5xx reply to a login, mode or transfer command, "Not connected.", or an error line of
/// its own on stderr), the returned status is exit code 1 and the trace ends with the reason.
pub fn tnftp_run(ns: &str, login: &Login, script: &str, mode: DataMode) -> Result<ClientRun> {
    for (what, value) in [("user", &login.user), ("password", &login.password)] {
        ensure!(
            !value.contains(char::is_whitespace) && !value.is_empty(),
            "tnftp_run: the {what} must be non-empty, without whitespace"
        );
    }
    let (passive, epsv4) = match mode {
        DataMode::Pasv => ("on", "off"),
        DataMode::Epsv => ("on", "on"),
        DataMode::Port => ("off", "off"),
        DataMode::Eprt => ("off", "on"),
    };
    let input = format!(
        "user {} {}\nbinary\nepsv4 {epsv4}\npassive {passive}\n{}\nquit\n",
        login.user,
        login.password,
        script.trim_end()
    );
    let ip = login.addr.ip().to_string();
    let port = login.addr.port().to_string();
    let args: [&OsStr; 8] = [
        "-i".as_ref(),
        "-n".as_ref(),
        "-d".as_ref(),
        "-v".as_ref(),
        "-q".as_ref(),
        "10".as_ref(),
        ip.as_ref(),
        port.as_ref(),
    ];
    let mut run = run_client(ns, "tnftp", &args, Some(input.as_bytes()))?;
    // Everything tnftp says about the protocol is on stdout; its own errors on stderr.
    let stderr = std::mem::take(&mut run.trace);
    let failure = tnftp_failure(&run.stdout, &stderr);
    run.trace = format!("{}\n{}", run.stdout.trim_end(), stderr.trim_end());
    if let Some(reason) = failure
        && run.status.success()
    {
        use std::os::unix::process::ExitStatusExt as _;
        run.status = ExitStatus::from_raw(1 << 8);
        let _ = write!(
            run.trace,
            "\n(ftp-guard-tests: tnftp exited 0, but {reason})"
        );
    }
    Ok(run)
}

/// The first sign of failure in tnftp's output, if any (see [`tnftp_run`]).
fn tnftp_failure(stdout: &str, stderr: &str) -> Option<String> {
    const CHECKED: [&str; 14] = [
        "USER", "PASS", "TYPE", "CWD", "PASV", "EPSV", "PORT", "EPRT", "LIST", "NLST", "RETR",
        "STOR", "APPE", "REST",
    ];
    if let Some(line) = stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
        return Some(format!("it printed an error: {line:?}"));
    }
    let mut last_verb = String::new();
    for line in stdout.lines().map(str::trim_end) {
        if line == "Not connected." || line == "Login failed." {
            return Some(format!("it said {line:?}"));
        }
        if let Some(cmd) = sent_line(line) {
            last_verb = cmd
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            continue;
        }
        let b = line.as_bytes();
        let final_reply = b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ';
        if final_reply && matches!(b[0], b'4' | b'5') && CHECKED.contains(&last_verb.as_str()) {
            return Some(format!("{last_verb} got {line:?}"));
        }
    }
    None
}

/// Runs `program args` in `ns` under `timeout`, capturing stdout and (as the trace) stderr;
/// `input`, if any, is its standard input (else /dev/null).
fn run_client(ns: &str, program: &str, args: &[&OsStr], input: Option<&[u8]>) -> Result<ClientRun> {
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
        let wget = run(
            "--2026-11-24 10:19:33--  ftp://127.0.0.1/a\n==> PASV ... \n--> PASV\n\n\
             227 Entering Passive Mode (127,0,0,1,117,110).\n--> REST 3\n--> RETR a\n",
        );
        assert_eq!(wget.commands_sent(), ["PASV", "REST", "RETR"]);
        assert!(wget.check_mode(DataMode::Pasv).is_ok());
        let tnftp = run("Connected to x.\n---> USER a\n---> PASS XXXX\n---> EPRT |1|1.2.3.4|5|\n");
        assert_eq!(tnftp.commands_sent(), ["USER", "PASS", "EPRT"]);
        assert_eq!(tnftp.command_lines()[2], "EPRT |1|1.2.3.4|5|");
    }

    #[test]
    fn tnftp_failures_are_found_in_its_output() {
        let ok = "220 hi\n---> USER a\n331 pw\n---> PASS XXXX\n230 in\n---> SIZE x\n\
                  550 no such file\n---> EPSV\n229 ok (|||3|)\n---> RETR x\n150 go\n226 done\n";
        assert_eq!(tnftp_failure(ok, ""), None);
        let refused = "---> PASV\n227 ok (1,2,3,4,5,6)\n---> RETR x\n425 Can't open\n";
        let reason = tnftp_failure(refused, "").unwrap();
        assert!(
            reason.contains("RETR") && reason.contains("425"),
            "{reason}"
        );
        let login = "---> USER a\n331 pw\n---> PASS XXXX\n530 Login incorrect.\nLogin failed.\n";
        assert!(tnftp_failure(login, "").unwrap().contains("530"));
        assert!(tnftp_failure("Not connected.\n", "").is_some());
        // Continuation lines of a multi-line reply are not final replies.
        assert_eq!(
            tnftp_failure("---> LIST\n150-x\n 500 y\n226 ok\n", ""),
            None
        );
        assert!(
            tnftp_failure("", "tnftp: Can't connect to `1.2.3.4:21'\n")
                .unwrap()
                .contains("Can't connect")
        );
    }

    #[test]
    fn client_kinds_name_what_they_cannot_do() {
        for client in ClientKind::ALL {
            // Passive PASV and active PORT work with every client.
            assert_eq!(client.unsupported_mode(DataMode::Pasv), None);
            assert_eq!(client.unsupported_mode(DataMode::Port), None);
        }
        assert!(ClientKind::Wget.unsupported_mode(DataMode::Epsv).is_some());
        assert!(ClientKind::Lftp.unsupported_mode(DataMode::Eprt).is_some());
        assert_eq!(ClientKind::Tnftp.unsupported_mode(DataMode::Eprt), None);
        assert!(ClientKind::Wget.cannot_upload().is_some());
        assert_eq!(ClientKind::Curl.cannot_upload(), None);
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

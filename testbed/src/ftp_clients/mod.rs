//! Real FTP clients (curl, lftp, Python ftplib, wget, tnftp) run inside a network namespace
//! with `ip netns exec`, each returning its exit status, its output and its protocol trace,
//! so a test can check which commands were really sent (a silent EPSV → PASV fallback shows
//! up in [`ClientRun::commands_sent`]). [`ClientKind`] tells which modes each can be made to
//! use over IPv4.
//!
//! Also: payload helpers ([`random_file`], [`sha256_file`]) and the process helpers shared
//! with [`crate::ftp_servers`].
use std::{
    net::SocketAddrV4,
    process::{Command, ExitStatus},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

mod process;
mod scripted;
mod url;

pub use process::{
    command_line, ns_command, random_file, require_program, sha256_file, unique_temp_dir,
};
pub use scripted::{ftplib_run, lftp_run, tnftp_run};
pub use url::{
    UrlClient, curl_download, curl_download_many, curl_list, curl_resume_download, curl_upload,
    wget_glob_download, wget_list,
};

/// Default wall-clock bound of one client run (curl `--max-time`; a `timeout` wrapper for
/// all); see [`set_client_timeout`].
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of one connect / one stalled read or write inside a client.
pub(crate) const IO_TIMEOUT_SECS: u32 = 10;

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
    /// curl: [`curl_list`], [`curl_download`], [`curl_upload`], [`curl_resume_download`]
    /// ([`UrlClient::Curl`]).
    Curl,
    /// lftp: [`lftp_run`].
    Lftp,
    /// Python's ftplib: [`ftplib_run`].
    Ftplib,
    /// GNU wget: [`wget_list`], [`UrlClient::Wget`] downloads and resumes.
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
pub(crate) fn sent_line(line: &str) -> Option<&str> {
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

pub(crate) fn exit_text(status: ExitStatus) -> String {
    match status.code() {
        Some(124) => "124 (killed by `timeout`: the client hung)".into(),
        Some(code) => code.to_string(),
        None => format!("{status}"),
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
}

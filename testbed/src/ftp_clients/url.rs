//! The URL clients, curl and wget: one set of requests (download, resume, list) under each
//! one's flags, with curl's extras (upload, many files on one connection) and wget's (a glob
//! over one connection).
use std::{ffi::OsStr, fs, path::Path};

use anyhow::{Context as _, Result, bail};

use super::{
    ClientKind, ClientRun, DataMode, IO_TIMEOUT_SECS, Login, client_timeout, process::run_client,
};

/// curl or GNU wget: the same requests, different flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlClient {
    Curl,
    Wget,
}

impl UrlClient {
    /// RETR of `remote` (relative to the login directory) into `dest`.
    pub fn download(
        self,
        ns: &str,
        login: &Login,
        remote: &str,
        dest: &Path,
        mode: DataMode,
    ) -> Result<ClientRun> {
        self.fetch(ns, login, mode, &[], remote, dest)
    }

    /// Resumes into `dest` from its current length (REST n, then RETR): curl `-C -`, wget `-c`.
    pub fn resume_download(
        self,
        ns: &str,
        login: &Login,
        remote: &str,
        dest: &Path,
        mode: DataMode,
    ) -> Result<ClientRun> {
        let resume: &[&str] = match self {
            Self::Curl => &["-C", "-"],
            Self::Wget => &["-c"],
        };
        self.fetch(ns, login, mode, resume, remote, dest)
    }

    fn fetch(
        self,
        ns: &str,
        login: &Login,
        mode: DataMode,
        flags: &[&str],
        remote: &str,
        dest: &Path,
    ) -> Result<ClientRun> {
        let url = login.url(remote);
        let output = match self {
            Self::Curl => "-o",
            Self::Wget => "-O",
        };
        let mut args: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
        args.extend([output.as_ref(), dest.as_os_str(), url.as_ref()]);
        self.run(ns, login, mode, &args)
    }

    fn run(self, ns: &str, login: &Login, mode: DataMode, args: &[&OsStr]) -> Result<ClientRun> {
        match self {
            Self::Curl => curl(ns, login, mode, args),
            Self::Wget => wget(ns, login, mode, args),
        }
    }
}

/// The URL of the directory `dir` ("" for the login directory): a trailing slash asks for
/// a listing.
fn dir_url(login: &Login, dir: &str) -> String {
    let dir = dir.trim_matches('/');
    if dir.is_empty() {
        login.url("")
    } else {
        login.url(&format!("{dir}/"))
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
    UrlClient::Curl.download(ns, login, remote, dest, mode)
}

/// `curl -C -`: resumes into `dest` from its current length (REST n, then RETR).
pub fn curl_resume_download(
    ns: &str,
    login: &Login,
    remote: &str,
    dest: &Path,
    mode: DataMode,
) -> Result<ClientRun> {
    UrlClient::Curl.resume_download(ns, login, remote, dest, mode)
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
    let url = dir_url(login, dir);
    curl(ns, login, mode, &[url.as_ref()])
}

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
    let url = dir_url(login, dir);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> Login {
        Login {
            addr: "192.0.2.1:21".parse().unwrap(),
            user: "u".into(),
            password: "p".into(),
        }
    }

    #[test]
    fn directory_urls_end_in_one_slash() {
        let login = login();
        assert_eq!(
            [
                dir_url(&login, ""),
                dir_url(&login, "/a/b/"),
                dir_url(&login, "a")
            ],
            [
                "ftp://192.0.2.1:21/",
                "ftp://192.0.2.1:21/a/b/",
                "ftp://192.0.2.1:21/a/"
            ]
        );
    }
}

//! The FTP fixtures themselves, with no proxy: each real server (vsftpd, pyftpdlib, proftpd,
//! pure-ftpd) in a namespace of its own, and each real client (curl, lftp, ftplib) in PASV and
//! in EPSV mode lists, uploads 1 MiB, downloads it back and resumes a download; checksums must
//! match and the trace must show the requested passive command and never the other one.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use ftp_guard_testbed::{
    ftp_clients::{
        ClientRun, DataMode, command_line, curl_download, curl_list, curl_resume_download,
        curl_upload, ftplib_run, lftp_run, random_file, sha256_file, unique_temp_dir,
    },
    ftp_servers::{FtpServer, ServerKind, ServerOptions},
    require_privileged,
};

const PAYLOAD: u64 = 1 << 20;

/// A namespace with only `lo` up, deleted on drop (also when the test panics).
struct SmokeNetns(String);

impl SmokeNetns {
    fn new(tag: &str) -> SmokeNetns {
        let name = format!("fgt-smoke-{}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = SmokeNetns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for SmokeNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        command_line(&cmd),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temp directory for the clients' local files, removed on drop.
struct LocalDir(PathBuf);

impl Drop for LocalDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, Debug)]
enum Client {
    Curl,
    Lftp,
    Ftplib,
}

fn check(server: &FtpServer, run: anyhow::Result<ClientRun>, mode: DataMode) -> ClientRun {
    let run = run
        .and_then(ClientRun::success)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
    run.check_mode(mode)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
    run
}

fn same_file(server: &FtpServer, a: &Path, b: &Path, what: &str) {
    assert_eq!(
        sha256_file(a).unwrap(),
        sha256_file(b).unwrap(),
        "{what}: {} and {} differ\n{}",
        a.display(),
        b.display(),
        server.log()
    );
}

/// LIST, STOR, RETR, REST+RETR with one client in one mode.
fn exercise(ns: &str, server: &FtpServer, local: &Path, client: Client, mode: DataMode) {
    let tag = format!("{client:?}-{}", mode.verb()).to_lowercase();
    let name = format!("up-{tag}.bin");
    let src = local.join(&name);
    random_file(&src, PAYLOAD).unwrap();
    let back = local.join(format!("back-{tag}.bin"));
    let resumed = local.join(format!("resumed-{tag}.bin"));
    // The resume starts from a third of the file already present locally.
    let third = PAYLOAD / 3;
    let login = server.login();
    let (s, b, r) = (src.display(), back.display(), resumed.display());

    fs::copy(&src, &resumed).unwrap();
    fs::File::options()
        .write(true)
        .open(&resumed)
        .unwrap()
        .set_len(third)
        .unwrap();

    let listing = match client {
        Client::Curl => {
            check(server, curl_upload(ns, &src, &login, &name, mode), mode);
            let list = check(server, curl_list(ns, &login, "", mode), mode);
            check(server, curl_download(ns, &login, &name, &back, mode), mode);
            let resume = curl_resume_download(ns, &login, &name, &resumed, mode);
            let resume = check(server, resume, mode);
            assert!(
                resume.command_lines().contains(&format!("REST {third}")),
                "{}",
                resume.describe()
            );
            list.stdout
        }
        Client::Lftp => {
            // One session: the trace must show the mode for every data connection.
            let script = format!(
                "put {s} -o {name}; cls -1; get {name} -o {b}; get -c {name} -o {r}; cls -1"
            );
            let run = check(server, lftp_run(ns, &login, &script, mode), mode);
            assert!(
                run.command_lines().contains(&format!("REST {third}")),
                "{}",
                run.describe()
            );
            run.stdout
        }
        Client::Ftplib => {
            let ops = [
                format!("STOR {s} {name}"),
                "LIST".to_owned(),
                format!("RETR {name} {b}"),
                format!("REST {third} RETR {name} {r}"),
            ];
            let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
            let run = check(server, ftplib_run(ns, &login, &ops, mode), mode);
            assert!(
                run.command_lines().contains(&format!("REST {third}")),
                "{}",
                run.describe()
            );
            run.stdout
        }
    };
    assert!(
        listing.contains(&name),
        "{tag}: LIST does not show {name}:\n{listing}\n{}",
        server.log()
    );
    same_file(
        server,
        &src,
        &server.root().join(&name),
        &format!("{tag} upload"),
    );
    same_file(server, &src, &back, &format!("{tag} download"));
    same_file(server, &src, &resumed, &format!("{tag} resumed download"));
}

fn smoke(kind: ServerKind) {
    if !require_privileged() {
        return;
    }
    let ns = SmokeNetns::new(kind.name());
    let server =
        FtpServer::start(&ns.0, kind, ServerOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let local = LocalDir(unique_temp_dir("fgt-smoke-local").unwrap());
    for client in [Client::Curl, Client::Lftp, Client::Ftplib] {
        for mode in DataMode::PASSIVE {
            exercise(&ns.0, &server, &local.0, client, mode);
        }
    }
}

#[test]
fn vsftpd_with_every_client_and_mode() {
    smoke(ServerKind::Vsftpd);
}

#[test]
fn pyftpdlib_with_every_client_and_mode() {
    smoke(ServerKind::Pyftpdlib);
}

#[test]
fn proftpd_with_every_client_and_mode() {
    smoke(ServerKind::Proftpd);
}

#[test]
fn pure_ftpd_with_every_client_and_mode() {
    smoke(ServerKind::PureFtpd);
}

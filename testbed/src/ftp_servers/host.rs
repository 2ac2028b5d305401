//! The host side of running a server: a thread inside its namespace (readiness, a free
//! port), and the system user vsftpd, ProFTPD and Pure-FTPd log in.
use std::{
    collections::HashSet,
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::ftp_clients::{command_line, require_program};

/// Runs `f` on a short-lived thread that has joined the network namespace `ns`.
pub(super) fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let ns_path = Path::new("/run/netns").join(ns);
    let ns_file = File::open(&ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid fd; it changes only this thread's netns.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("thread in netns {ns} panicked"))
    })
}

/// Connects to `addr` from inside `ns`, reads a 220 greeting and says QUIT.
pub(super) fn greeting_in_ns(ns: &str, addr: SocketAddrV4) -> Result<()> {
    in_netns(ns, || {
        let step = Duration::from_secs(1);
        let mut stream = TcpStream::connect_timeout(&addr.into(), step)?;
        stream.set_read_timeout(Some(step))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        ensure!(line.starts_with("220"), "greeting was {line:?}");
        let _ = stream.write_all(b"QUIT\r\n");
        Ok(())
    })
}

/// Fails when something in `ns` already accepts connections on `addr`: a greeting from it
/// would pass for the new daemon's.
pub(super) fn ensure_port_free(ns: &str, addr: SocketAddrV4) -> Result<()> {
    let taken = in_netns(ns, || {
        Ok(TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).is_ok())
    })?;
    ensure!(!taken, "{addr} is already in use in network namespace {ns}");
    Ok(())
}

/// Creates the system user for vsftpd if absent and sets its password (SHA-512, which costs
/// ~2 ms per login where Debian's yescrypt costs ~40 ms). Returns (uid, gid).
pub(super) fn ensure_system_user(user: &str, password: &str) -> Result<(u32, u32)> {
    // Serialise within this process; the file lock serialises with other test binaries.
    static DONE: Mutex<Option<HashSet<(String, String)>>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let key = (user.to_owned(), password.to_owned());
    if let Some(ids) = done
        .as_ref()
        .filter(|set| set.contains(&key))
        .and_then(|_| passwd_entry(user).ok().flatten())
    {
        return Ok((ids.uid, ids.gid));
    }
    let lock_path = std::env::temp_dir().join("ftp-guard-tests-users.lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    // SAFETY: flock on a valid fd; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("flock");
    }
    let entry = match passwd_entry(user)? {
        Some(entry) => entry,
        None => {
            run_checked(Command::new(require_program("useradd")?).args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/",
                "--shell",
                "/bin/bash",
                user,
            ]))?;
            passwd_entry(user)?.with_context(|| format!("useradd did not create {user}"))?
        }
    };
    // vsftpd refuses a login whose home it cannot enter.
    if !Path::new(&entry.home).is_dir() {
        run_checked(Command::new(require_program("usermod")?).args(["--home", "/", user]))?;
    }
    let shells = fs::read_to_string("/etc/shells").unwrap_or_default();
    ensure!(
        shells.lines().any(|l| l.trim() == entry.shell),
        "user {user} has shell {:?}, which is not in /etc/shells: PAM (pam_shells) refuses the \
         FTP login",
        entry.shell
    );
    let ftpusers = fs::read_to_string("/etc/ftpusers").unwrap_or_default();
    ensure!(
        !ftpusers.lines().any(|l| l.trim() == user),
        "user {user} is listed in /etc/ftpusers: vsftpd's PAM config refuses it"
    );
    let mut chpasswd = Command::new(require_program("chpasswd")?);
    chpasswd
        .args(["--crypt-method", "SHA512"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = command_line(&chpasswd);
    let mut child = chpasswd
        .spawn()
        .with_context(|| format!("could not run `{line}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{user}:{password}").with_context(|| format!("writing to `{line}`"))?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "`{line}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    done.get_or_insert_with(HashSet::new).insert(key);
    Ok((entry.uid, entry.gid))
}

pub(super) struct PasswdEntry {
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

pub(super) fn passwd_entry(user: &str) -> Result<Option<PasswdEntry>> {
    let text = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() == 7 && fields[0] == user {
            return Ok(Some(PasswdEntry {
                uid: fields[2].parse().context("uid in /etc/passwd")?,
                gid: fields[3].parse().context("gid in /etc/passwd")?,
                home: fields[5].to_owned(),
                shell: fields[6].to_owned(),
            }));
        }
    }
    Ok(None)
}

/// Runs `cmd` to completion; returns its stdout, or an error with the command line and output.
pub(super) fn run_checked(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{line}`"))?;
    ensure!(
        out.status.success(),
        "`{line}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The password hash of `user` in /etc/shadow.
pub(super) fn shadow_hash(user: &str) -> Result<String> {
    let text = fs::read_to_string("/etc/shadow").context("reading /etc/shadow")?;
    let hash = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| *name == user)
        .and_then(|(_, rest)| rest.split(':').next())
        .with_context(|| format!("no entry for {user} in /etc/shadow"))?;
    ensure!(
        hash.starts_with('$'),
        "{user} has no usable password hash in /etc/shadow ({:?})",
        hash.chars().take(3).collect::<String>()
    );
    Ok(hash.to_owned())
}

/// The name of group `gid` in /etc/group.
pub(super) fn group_name(gid: u32) -> Result<String> {
    let text = fs::read_to_string("/etc/group").context("reading /etc/group")?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[2].parse() == Ok(gid))
        .map(|f| f[0].to_owned())
        .with_context(|| format!("no group with gid {gid} in /etc/group"))
}

//! Real FTP servers (vsftpd, ProFTPD, Pure-FTPd, pyftpdlib) run in the foreground inside a
//! network namespace, each with a private temp directory (FTP root, config, logs) that goes
//! away with the [`FtpServer`].
//!
//! vsftpd, ProFTPD and Pure-FTPd log in a system user: [`FtpServer::start`] creates it when
//! absent (home `/`, shell `/bin/bash`, a cheap SHA-512 password hash) — so it must run as
//! root.
//!
//! vsftpd, proftpd-core and pure-ftpd conflict as Debian packages (each `Provides` and
//! `Conflicts` `ftp-server`): `cargo xtask setup` installs vsftpd with apt and unpacks the
//! other two into [`PRIVATE_PREFIX`]`/<package>` (`apt-get download` + `dpkg-deb -x`). A
//! system-wide install found on PATH is used when the private one is missing.
use std::{
    fs::{self, File},
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

mod host;
mod launch;

use crate::ftp_clients::{
    Login, command_line, deb_version, ns_command, require_program, unique_temp_dir,
};
use host::{ensure_port_free, greeting_in_ns, run_checked};
use launch::prepare;

/// How long a daemon may take to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Pure-FTPd's client limit (`--maxclientsnumber`, and per IP: every session through the
/// gateway comes from its one address) when the passive range allows it. Pure-FTPd lowers
/// its limit to half the passive range, silently, and sizes its listen backlog from the
/// limit: 3 + clients / 8. So the default 1000 passive ports give 500 clients and a backlog
/// of 65; the old 100 gave 50 and 9, which a burst of 50 sessions overflowed: the retried
/// SYNs got SYN cookies, and a cookie handshake whose last ACK met the full accept queue
/// left a connection open at the gateway and unknown to Pure-FTPd, never greeted.
pub const PURE_FTPD_MAX_CLIENTS: u32 = 500;

/// Where `cargo xtask setup` unpacks the Debian packages that conflict with vsftpd, one
/// directory per package (`/opt/ftp-guard-test/proftpd-core/usr/sbin/proftpd`). Keep in step
/// with `xtask/src/setup.rs`.
pub const PRIVATE_PREFIX: &str = "/opt/ftp-guard-test";
/// In each unpacked package's directory: the Debian version that was unpacked.
pub const PRIVATE_VERSION_FILE: &str = ".ftp-guard-version";

/// Which FTP server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// vsftpd 3.0.3 (Debian package), standalone, a local system user.
    Vsftpd,
    /// pyftpdlib 2.x (pip, for the `python3` first on PATH), a virtual user.
    Pyftpdlib,
    /// ProFTPD 1.3.8 (Debian proftpd-core, unpacked privately), in inetd mode behind
    /// `systemd-socket-activate --inetd --accept`: standalone 1.3.8 waits ~200 ms before
    /// serving each new session (upstream issue #1623), inetd mode does not. A local system
    /// user (mod_auth_unix, no PAM), chrooted (`DefaultRoot`) into the FTP root.
    Proftpd,
    /// Pure-FTPd 1.0.50 (Debian pure-ftpd, unpacked privately), standalone. The system user
    /// logs in through a PureDB entry carrying its uid, gid and SHA-512 hash from
    /// `/etc/shadow` and the FTP root as its (chrooted) home: with `-l unix` the login
    /// directory would be the user's home, `/`.
    PureFtpd,
}

impl ServerKind {
    pub const ALL: [ServerKind; 4] = [
        ServerKind::Vsftpd,
        ServerKind::Pyftpdlib,
        ServerKind::Proftpd,
        ServerKind::PureFtpd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Vsftpd => "vsftpd",
            ServerKind::Pyftpdlib => "pyftpdlib",
            ServerKind::Proftpd => "proftpd",
            ServerKind::PureFtpd => "pure-ftpd",
        }
    }

    /// The installed version: the Debian package's (vsftpd; the unpacked proftpd-core and
    /// pure-ftpd record theirs), or pyftpdlib's own.
    pub fn version(self) -> Result<String> {
        match self {
            ServerKind::Vsftpd => deb_version("vsftpd"),
            ServerKind::Proftpd => private_or_deb_version("proftpd-core"),
            ServerKind::PureFtpd => private_or_deb_version("pure-ftpd"),
            ServerKind::Pyftpdlib => {
                let mut cmd = Command::new(require_program("python3")?);
                cmd.args(["-c", "import pyftpdlib; print(pyftpdlib.__ver__)"]);
                Ok(run_checked(&mut cmd)?.trim().to_owned())
            }
        }
    }
}

fn private_or_deb_version(package: &str) -> Result<String> {
    let stamp = Path::new(PRIVATE_PREFIX)
        .join(package)
        .join(PRIVATE_VERSION_FILE);
    match fs::read_to_string(&stamp) {
        Ok(v) => Ok(v.trim().to_owned()),
        Err(_) => deb_version(package),
    }
}

/// `program` from the package unpacked under [`PRIVATE_PREFIX`] (at `rel`, e.g.
/// `usr/sbin/proftpd`), else from PATH, else an error naming `cargo xtask setup`.
fn private_program(package: &str, rel: &str, program: &str) -> Result<PathBuf> {
    let private = Path::new(PRIVATE_PREFIX).join(package).join(rel);
    if fs::metadata(&private).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
        return Ok(private);
    }
    require_program(program).with_context(|| {
        format!(
            "{} is missing too (the Debian package {package} unpacked by `cargo xtask setup`)",
            private.display()
        )
    })
}

/// Where the server listens and whom it lets in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Control address (inside the namespace); the port must not be 0.
    pub listen: SocketAddrV4,
    /// Passive data ports, inclusive. Pure-FTPd serves at most half as many clients at once
    /// (see [`PURE_FTPD_MAX_CLIENTS`]).
    pub passive_ports: (u16, u16),
    /// vsftpd: a system user, created if absent (and its password set); pyftpdlib: virtual.
    pub user: String,
    pub password: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 21),
            // 1000: Pure-FTPd's client limit and listen backlog follow from the range.
            passive_ports: (30000, 30999),
            user: "fgtest".into(),
            password: "fgtest-pw".into(),
        }
    }
}

/// A running FTP daemon. Dropping it kills its process group (the daemon and its session
/// processes, all started here) and removes its temp directory.
#[derive(Debug)]
pub struct FtpServer {
    kind: ServerKind,
    ns: String,
    opts: ServerOptions,
    dir: PathBuf,
    root: PathBuf,
    /// The daemon's own log files (protocol, system, transfer), in the temp dir.
    log_files: Vec<PathBuf>,
    output_file: PathBuf,
    /// Owner given to files by [`FtpServer::give_to_user`] (vsftpd's system user).
    owner: Option<(u32, u32)>,
    child: Child,
}

impl FtpServer {
    /// Starts `kind` in `ns` with `opts` and waits until it greets on its control port.
    pub fn start(ns: &str, kind: ServerKind, opts: ServerOptions) -> Result<FtpServer> {
        ensure!(
            opts.listen.port() != 0,
            "ServerOptions.listen needs a fixed port"
        );
        ensure!(
            opts.passive_ports.0 > 0 && opts.passive_ports.0 <= opts.passive_ports.1,
            "bad passive port range {:?}",
            opts.passive_ports
        );
        for value in [&opts.user, &opts.password] {
            ensure!(
                !value.is_empty() && !value.contains(['\n', '\r', ':']),
                "user and password must be non-empty, without ':' or line breaks"
            );
        }
        let mut cmd = ns_command(ns)?;
        ensure_port_free(ns, opts.listen)?;
        let dir = unique_temp_dir(&format!("fgt-{}", kind.name()))?;
        // From here on `dir` must be removed on every error path.
        let prepared = prepare(kind, &opts, &dir, &mut cmd);
        let (owner, log_files) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let output_file = dir.join("daemon-output.log");
        let command = command_line(&cmd);
        let spawned = File::create(&output_file)
            .and_then(|out| Ok((out.try_clone()?, out)))
            .and_then(|(out, err)| {
                cmd.stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    // Own process group: Drop kills the daemon and its session children.
                    .process_group(0)
                    .spawn()
            });
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e).with_context(|| format!("could not start `{command}`"));
            }
        };
        let mut server = FtpServer {
            kind,
            ns: ns.to_owned(),
            root: dir.join("root"),
            dir,
            log_files,
            output_file,
            owner,
            opts,
            child,
        };
        server
            .wait_ready()
            .with_context(|| format!("{} (`{command}`) did not come up", kind.name()))?;
        Ok(server)
    }

    /// The FTP root (the login directory): put files to download here, find uploads here.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The control address inside the namespace.
    pub fn addr(&self) -> SocketAddrV4 {
        self.opts.listen
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Address and credentials for a client going straight to this server.
    pub fn login(&self) -> Login {
        Login {
            addr: self.opts.listen,
            user: self.opts.user.clone(),
            password: self.opts.password.clone(),
        }
    }

    /// Makes a file a test put under [`FtpServer::root`] owned by the FTP user, so the
    /// server may also overwrite or delete it (vsftpd; a no-op for pyftpdlib, which runs as
    /// root). Files written by root are readable by the FTP user anyway.
    pub fn give_to_user(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {uid}:{gid} {}", path.display()))?;
        }
        Ok(())
    }

    /// The daemon's log files (vsftpd: every command and reply; proftpd: every command and
    /// reply, errors, transfers; pure-ftpd: transfers only, the rest goes to syslog;
    /// pyftpdlib: sessions and transfers) followed by what it printed, for assertion
    /// messages.
    pub fn log(&self) -> String {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_else(|e| format!("({e})"));
        let mut text = String::new();
        for file in &self.log_files {
            text.push_str(&format!(
                "--- {} log {} ---\n{}\n",
                self.kind.name(),
                file.display(),
                read(file).trim_end()
            ));
        }
        text.push_str(&format!(
            "--- {} stdout/stderr ---\n{}",
            self.kind.name(),
            read(&self.output_file).trim_end()
        ));
        text
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("it exited with {status}\n{}", self.log());
            }
            let probe = greeting_in_ns(&self.ns, self.opts.listen);
            match probe {
                Ok(()) => {
                    // The greeting was ours only if the daemon is still alive (a daemon that
                    // failed to bind exits at once).
                    thread::sleep(Duration::from_millis(20));
                    if let Some(status) = self.child.try_wait()? {
                        bail!("it exited with {status}\n{}", self.log());
                    }
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "no FTP greeting on {} within {START_TIMEOUT:?} ({e:#})\n{}",
                        self.opts.listen,
                        self.log()
                    )
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        // The group id is the child's pid (process_group(0)); the child is not reaped yet,
        // so that id cannot belong to anyone else.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

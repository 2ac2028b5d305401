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
    collections::HashSet,
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::{
        fd::AsRawFd as _,
        unix::{fs::PermissionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::ftp_clients::{
    Login, command_line, deb_version, ns_command, require_program, unique_temp_dir,
};

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

/// The owner (uid, gid) to give the FTP root's files, if any, and the daemon's log files.
type Prepared = (Option<(u32, u32)>, Vec<PathBuf>);

/// Writes the config, fills in `cmd` (already `ip netns exec <ns>`), and returns the file
/// owner for the FTP root's files and the log paths.
fn prepare(
    kind: ServerKind,
    opts: &ServerOptions,
    dir: &Path,
    cmd: &mut Command,
) -> Result<Prepared> {
    let root = dir.join("root");
    fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    // The daemon user must reach `root` through `dir`.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    match kind {
        ServerKind::Vsftpd => {
            let vsftpd = require_program("vsftpd")?;
            let (uid, gid) = ensure_system_user(&opts.user, &opts.password)?;
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .with_context(|| format!("chown {uid}:{gid} {}", root.display()))?;
            let empty = dir.join("empty");
            fs::create_dir(&empty)?;
            fs::set_permissions(&empty, fs::Permissions::from_mode(0o555))?;
            let log = dir.join("vsftpd.log");
            let conf = dir.join("vsftpd.conf");
            fs::write(&conf, vsftpd_config(opts, &root, &empty, &log))
                .with_context(|| format!("writing {}", conf.display()))?;
            cmd.arg(vsftpd).arg(&conf);
            Ok((Some((uid, gid)), vec![log]))
        }
        ServerKind::Pyftpdlib => {
            let python = require_program("python3")?;
            let script = dir.join("pyftpdlib_server.py");
            fs::write(&script, PYFTPDLIB_SCRIPT)
                .with_context(|| format!("writing {}", script.display()))?;
            let log = dir.join("pyftpdlib.log");
            cmd.arg(python)
                .arg("-u")
                .arg(&script)
                .arg(opts.listen.ip().to_string())
                .arg(opts.listen.port().to_string())
                .arg(opts.passive_ports.0.to_string())
                .arg(opts.passive_ports.1.to_string())
                .arg(&opts.user)
                .arg(&opts.password)
                .arg(&root)
                .arg(&log);
            Ok((None, vec![log]))
        }
        ServerKind::Proftpd => {
            let proftpd = private_program("proftpd-core", "usr/sbin/proftpd", "proftpd")?;
            let activate = require_program("systemd-socket-activate")?;
            let (uid, gid) = ensure_system_user(&opts.user, &opts.password)?;
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .with_context(|| format!("chown {uid}:{gid} {}", root.display()))?;
            let group = group_name(gid)?;
            let logs = ProftpdLogs {
                protocol: dir.join("proftpd-protocol.log"),
                system: dir.join("proftpd-system.log"),
                transfer: dir.join("proftpd-xferlog"),
            };
            let conf = dir.join("proftpd.conf");
            fs::write(&conf, proftpd_config(opts, &group, dir, &root, &logs))
                .with_context(|| format!("writing {}", conf.display()))?;
            // In inetd mode a bad config would only show at the first connection.
            run_checked(Command::new(&proftpd).arg("-t").arg("-c").arg(&conf))?;
            // One proftpd per connection, the socket as its stdin/stdout; the children get
            // SIGTERM when systemd-socket-activate dies (and share its process group).
            cmd.arg(activate)
                .args(["--inetd", "--accept", "--listen"])
                .arg(opts.listen.to_string())
                .arg(&proftpd)
                .arg("-c")
                .arg(&conf);
            Ok((
                Some((uid, gid)),
                vec![logs.protocol, logs.system, logs.transfer],
            ))
        }
        ServerKind::PureFtpd => {
            let pure_ftpd = private_program("pure-ftpd", "usr/sbin/pure-ftpd", "pure-ftpd")?;
            let pure_pw = private_program("pure-ftpd", "usr/bin/pure-pw", "pure-pw")?;
            let (uid, gid) = ensure_system_user(&opts.user, &opts.password)?;
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .with_context(|| format!("chown {uid}:{gid} {}", root.display()))?;
            let root_text = root.to_str().context("temp dir path is not UTF-8")?;
            ensure!(
                !root_text.contains(':'),
                "{root_text}: a PureDB home cannot contain ':'"
            );
            // The system user's own SHA-512 hash, uid and gid; home = the FTP root, `/./`
            // chroots there.
            let hash = shadow_hash(&opts.user)?;
            let passwd = dir.join("pureftpd.passwd");
            fs::write(
                &passwd,
                format!(
                    "{}:{hash}:{uid}:{gid}::{root_text}/./::::::::::::\n",
                    opts.user
                ),
            )
            .with_context(|| format!("writing {}", passwd.display()))?;
            fs::set_permissions(&passwd, fs::Permissions::from_mode(0o600))?;
            let pdb = dir.join("pureftpd.pdb");
            run_checked(
                Command::new(pure_pw)
                    .arg("mkdb")
                    .arg(&pdb)
                    .arg("-f")
                    .arg(&passwd),
            )?;
            let log = dir.join("pure-ftpd-transfers.log");
            let (pasv_min, pasv_max) = opts.passive_ports;
            // What Pure-FTPd would lower the limit to anyway: the command line shows the
            // limit in force.
            let ports = u32::from(pasv_max - pasv_min) + 1;
            let clients = PURE_FTPD_MAX_CLIENTS.min(ports / 2).max(1).to_string();
            let mut login = std::ffi::OsString::from("puredb:");
            login.push(&pdb);
            let mut altlog = std::ffi::OsString::from("clf:");
            altlog.push(&log);
            // Foreground (no -B). Defaults kept: PORT only to the client's own address (no
            // -w), passive data only from it, no anonymous user (-E makes it explicit).
            cmd.arg(pure_ftpd)
                .arg("--bind")
                .arg(format!("{},{}", opts.listen.ip(), opts.listen.port()))
                .arg("--passiveportrange")
                .arg(format!("{pasv_min}:{pasv_max}"))
                .arg("--noanonymous")
                .arg("--login")
                .arg(login)
                // Every session comes from the gateway's one address: the per-IP default
                // (and the 50-client default) would cap concurrency tests.
                .args([
                    "--maxclientsnumber",
                    &clients,
                    "--maxclientsperip",
                    &clients,
                ])
                .arg("--dontresolve")
                // Command logging goes only to syslog (none in a test namespace): the
                // transfer log is what there is.
                .arg("--altlog")
                .arg(altlog);
            Ok((Some((uid, gid)), vec![log]))
        }
    }
}

struct ProftpdLogs {
    protocol: PathBuf,
    system: PathBuf,
    transfer: PathBuf,
}

fn proftpd_config(
    opts: &ServerOptions,
    group: &str,
    dir: &Path,
    root: &Path,
    logs: &ProftpdLogs,
) -> String {
    let (pasv_min, pasv_max) = opts.passive_ports;
    format!(
        "\
# inetd mode: systemd-socket-activate accepts and runs one proftpd per connection (1.3.8's
# standalone daemon waits ~200 ms before serving each new session, upstream issue #1623).
ServerType inetd
ServerName \"ftp-guard test origin\"
DefaultServer on
DefaultAddress {ip}
Port {port}
UseIPv6 off
UseReverseDNS off
WtmpLog off
# mod_delay pads USER/PASS replies (timing-attack defence): not what the tests measure.
DelayEngine off
User {user}
Group {group}
Umask 022
PidFile {dir}/proftpd.pid
ScoreboardFile {dir}/proftpd.scoreboard
# A local system user from /etc/passwd and /etc/shadow (mod_auth_unix), no PAM config needed.
AuthPAM off
AuthOrder mod_auth_unix.c
# Chrooted into the FTP root.
DefaultRoot {root}
PassivePorts {pasv_min} {pasv_max}
# Kept as default: no AllowForeignAddress, so PORT/EPRT only to the control peer and passive
# data connections only from it; the gateway must pass these same-IP checks.
AllowOverwrite on
AllowStoreRestart on
AllowRetrieveRestart on
# Every command and reply, errors, transfers: to files in the temp dir.
SystemLog {system}
TransferLog {transfer}
LogFormat protocol \"%{{iso8601}} %a %m %J -> %s %S\"
ExtendedLog {protocol} ALL protocol
",
        ip = opts.listen.ip(),
        port = opts.listen.port(),
        user = opts.user,
        dir = dir.display(),
        root = root.display(),
        system = logs.system.display(),
        transfer = logs.transfer.display(),
        protocol = logs.protocol.display(),
    )
}

fn vsftpd_config(opts: &ServerOptions, root: &Path, empty: &Path, log: &Path) -> String {
    let (pasv_min, pasv_max) = opts.passive_ports;
    format!(
        "\
# Standalone, in the foreground, so the test owns the process (Debian's default is inetd-less
# listen_ipv6=YES on all addresses).
listen=YES
listen_ipv6=NO
background=NO
listen_address={ip}
listen_port={port}
# Local system user via PAM (/etc/pam.d/vsftpd: not in /etc/ftpusers, shell in /etc/shells).
anonymous_enable=NO
local_enable=YES
pam_service_name=vsftpd
write_enable=YES
local_umask=022
# vsftpd chdirs to the user's home first, then to local_root (home is / for the test user).
local_root={root}
chroot_local_user=NO
# Debian's default /var/run/vsftpd/empty may be missing; any empty root-owned dir will do.
secure_chroot_dir={empty}
pasv_enable=YES
pasv_min_port={pasv_min}
pasv_max_port={pasv_max}
# Keep the data-peer == control-peer check: the gateway must pass it.
pasv_promiscuous=NO
port_enable=YES
port_promiscuous=NO
# No session limits: every session through the gateway comes from its one address, and
# the vsftpd here refuses a 51st from one address otherwise (421 There are too many
# connections from your internet address). 0 is unlimited.
max_clients=0
max_per_ip=0
# Active-mode data from an unprivileged port: no port-20 helper process.
connect_from_port_20=NO
# The seccomp sandbox kills sessions on syscalls it does not know (newer kernels/libcs, VMs).
seccomp_sandbox=NO
# No per-session netns/pid namespaces: cheaper logins, works where clone(CLONE_NEW*) is denied.
isolate=NO
isolate_network=NO
# vsftpd-style log (not xferlog) of every command and reply, in the temp dir.
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file={log}
ssl_enable=NO
# Act on ABOR (sent with urgent data) while a transfer is blocked; off by default.
async_abor_enable=YES
",
        ip = opts.listen.ip(),
        port = opts.listen.port(),
        root = root.display(),
        empty = empty.display(),
        log = log.display(),
    )
}

const PYFTPDLIB_SCRIPT: &str = r#"
import logging, sys
try:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer
except ImportError as e:
    sys.exit("pyftpdlib is not importable by %s (%s): run `cargo xtask setup`" % (sys.executable, e))

host, port, pasv_min, pasv_max, user, password, root, log = sys.argv[1:9]
# Configured before FTPServer starts, so pyftpdlib does not add its own stderr handler.
logging.basicConfig(filename=log, level=logging.INFO, format="%(asctime)s %(message)s")
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, root, perm="elradfmwMT")

class Handler(FTPHandler):
    pass

Handler.authorizer = authorizer
Handler.passive_ports = range(int(pasv_min), int(pasv_max) + 1)
# Keep the data-peer == control-peer check (the default): the gateway must pass it.
Handler.permit_foreign_addresses = False
server = FTPServer((host, int(port)), Handler)
# No session cap of pyftpdlib's own (512 by default): the benchmark holds 10,000 sessions;
# none per address either (every session through the gateway comes from its one address).
server.max_cons = 0
server.max_cons_per_ip = 0
try:
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
except (ImportError, ValueError, OSError):
    pass
server.serve_forever()
"#;

/// Runs `f` on a short-lived thread that has joined the network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
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
fn greeting_in_ns(ns: &str, addr: SocketAddrV4) -> Result<()> {
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
fn ensure_port_free(ns: &str, addr: SocketAddrV4) -> Result<()> {
    let taken = in_netns(ns, || {
        Ok(TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).is_ok())
    })?;
    ensure!(!taken, "{addr} is already in use in network namespace {ns}");
    Ok(())
}

/// Creates the system user for vsftpd if absent and sets its password (SHA-512, which costs
/// ~2 ms per login where Debian's yescrypt costs ~40 ms). Returns (uid, gid).
fn ensure_system_user(user: &str, password: &str) -> Result<(u32, u32)> {
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

struct PasswdEntry {
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

fn passwd_entry(user: &str) -> Result<Option<PasswdEntry>> {
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
fn run_checked(cmd: &mut Command) -> Result<String> {
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
fn shadow_hash(user: &str) -> Result<String> {
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
fn group_name(gid: u32) -> Result<String> {
    let text = fs::read_to_string("/etc/group").context("reading /etc/group")?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[2].parse() == Ok(gid))
        .map(|f| f[0].to_owned())
        .with_context(|| format!("no group with gid {gid} in /etc/group"))
}

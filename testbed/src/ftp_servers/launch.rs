//! How each server is started: its command line, its configuration file (vsftpd, ProFTPD,
//! Pure-FTPd's flags, pyftpdlib's script) and where it logs.
use std::{
    fs::{self},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::ftp_clients::require_program;

use super::{
    PURE_FTPD_MAX_CLIENTS, ServerKind, ServerOptions,
    host::{ensure_system_user, group_name, run_checked, shadow_hash},
    private_program,
};

/// The owner (uid, gid) to give the FTP root's files, if any, and the daemon's log files.
pub(super) type Prepared = (Option<(u32, u32)>, Vec<PathBuf>);

/// Writes the config, fills in `cmd` (already `ip netns exec <ns>`), and returns the file
/// owner for the FTP root's files and the log paths.
pub(super) fn prepare(
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

pub(super) struct ProftpdLogs {
    protocol: PathBuf,
    system: PathBuf,
    transfer: PathBuf,
}

pub(super) fn proftpd_config(
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

pub(super) fn vsftpd_config(opts: &ServerOptions, root: &Path, empty: &Path, log: &Path) -> String {
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

pub(super) const PYFTPDLIB_SCRIPT: &str = r#"
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

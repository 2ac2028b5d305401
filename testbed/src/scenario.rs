//! A ready-made end-to-end scenario: the standard topology (or the field one, see
//! [`Env::start_field`]), a real FTP server on the origin and ftp-guard (in-process) on the
//! gateway, plus a raw control session ([`Control`]) for tests that need precise
//! choreography.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    ftp_clients::{
        self, ClientKind, ClientRun, DataMode, Login, curl_download, curl_list,
        curl_resume_download, curl_upload, ftplib_run, lftp_run, random_file, sha256_file,
    },
    ftp_load::FtpControl,
    ftp_servers::{FtpServer, ServerKind, ServerOptions},
    gateway::RunningGateway,
    netns::{self, CLIENT, ORIGIN, Topology},
};

/// A client run that exited 0 and whose trace shows `mode` and no other data command.
fn in_mode(run: anyhow::Result<ClientRun>, mode: DataMode) -> ClientRun {
    let run = run.unwrap().success().unwrap();
    run.check_mode(mode).unwrap();
    run
}

/// The origin's file [`Env::client_sweep`] lists, downloads and resumes.
const SWEEP_FILE: &str = "sweep.bin";

/// The address clients connect to.
pub const VIP: Ipv4Addr = netns::GATEWAY_PUBLIC_IP;

/// The standard topology, ready for the kernel path: XDP redirect into a veth needs NAPI
/// on the receiving end, and GRO on the client's and origin's `eth0` turns it on.
pub fn standard_topology(tag: &str) -> anyhow::Result<Topology> {
    let topo = Topology::standard(tag)?;
    for role in [CLIENT, ORIGIN] {
        topo.run(role, &["ethtool", "-K", "eth0", "gro", "on"])?;
    }
    Ok(topo)
}

/// `kind` serving on the origin's address, port 21, with the default test login.
pub fn origin_server(topo: &Topology, kind: ServerKind) -> anyhow::Result<FtpServer> {
    FtpServer::start(topo.ns_name(ORIGIN), kind, origin_options())
}

/// What [`origin_server`] starts the server with.
pub fn origin_options() -> ServerOptions {
    ServerOptions {
        listen: SocketAddrV4::new(netns::ORIGIN_IP, 21),
        ..ServerOptions::default()
    }
}

/// The field topology ([`Topology::field`]): bridges, forwarding off, default offloads.
/// Nothing is tuned for the kernel path (unlike [`standard_topology`]): that is the point.
pub fn field_topology(tag: &str) -> anyhow::Result<Topology> {
    Topology::field(tag)
}

/// One topology with an origin server and ftp-guard in front of it.
pub struct Env {
    pub topo: Topology,
    pub server: FtpServer,
    pub gateway: RunningGateway,
    /// Where the client's files live (outside every namespace's view: the filesystem is shared).
    pub work: PathBuf,
    /// The gateway's client- and origin-facing interfaces in its config.
    pub client_if: String,
    pub origin_if: String,
}

impl Env {
    pub fn start(tag: &str, kind: ServerKind, dataplane: &str) -> Env {
        Self::start_with(tag, kind, dataplane, |_| {}, "pub0", "priv0")
    }

    /// Replaces the gateway with one whose service has `extra` config lines.
    pub fn reconfigure(&mut self, dataplane: &str, extra: &str) {
        let config =
            self.config(dataplane, "40000-40099", &self.client_if, &self.origin_if) + extra;
        self.gateway.stop();
        self.gateway = RunningGateway::start(&self.topo, &config).unwrap();
    }

    pub fn config(
        &self,
        dataplane: &str,
        data_ports: &str,
        client_if: &str,
        origin_if: &str,
    ) -> String {
        gateway_config(
            self.server.addr(),
            dataplane,
            data_ports,
            client_if,
            origin_if,
        )
    }

    /// Replaces the gateway with one using another data-port range.
    pub fn restart_gateway(&mut self, dataplane: &str, data_ports: &str) {
        let config = self.config(dataplane, data_ports, &self.client_if, &self.origin_if);
        self.gateway.stop();
        self.gateway = RunningGateway::start(&self.topo, &config).unwrap();
    }

    pub fn start_with(
        tag: &str,
        kind: ServerKind,
        dataplane: &str,
        adjust: impl FnOnce(&Topology),
        client_if: &str,
        origin_if: &str,
    ) -> Env {
        let topo = standard_topology(tag).unwrap();
        adjust(&topo);
        let server = origin_server(&topo, kind).unwrap();
        let config = gateway_config(
            server.addr(),
            dataplane,
            "40000-40099",
            client_if,
            origin_if,
        );
        Self::assemble(
            topo,
            server,
            &config,
            &format!("fg-e2e-{tag}"),
            client_if,
            origin_if,
        )
    }

    /// Starts ftp-guard with `config` in front of `server` and gives the test a work
    /// directory named after `work`.
    fn assemble(
        topo: Topology,
        server: FtpServer,
        config: &str,
        work: &str,
        client_if: &str,
        origin_if: &str,
    ) -> Env {
        let gateway = RunningGateway::start(&topo, config)
            .unwrap_or_else(|e| panic!("ftp-guard did not start ({work}): {e:#}"));
        let work = ftp_clients::unique_temp_dir(work).unwrap();
        Env {
            topo,
            server,
            gateway,
            work,
            client_if: client_if.to_owned(),
            origin_if: origin_if.to_owned(),
        }
    }

    /// ftp-guard on the field topology ([`Topology::field`]: bridges `brc0`/`bro0` as its
    /// client/origin interfaces, forwarding off, default offloads) with `data_ports` (e.g.
    /// `"40000-40099"`) as its public data-port range.
    pub fn start_field(tag: &str, kind: ServerKind, dataplane: &str, data_ports: &str) -> Env {
        Self::start_field_with(tag, kind, dataplane, data_ports, |_| {}, |_| {})
    }

    /// [`Env::start_field`], with `adjust` run on the topology before anything starts (e.g.
    /// offload or sysctl changes) and `server` adjusting the origin server's options.
    pub fn start_field_with(
        tag: &str,
        kind: ServerKind,
        dataplane: &str,
        data_ports: &str,
        adjust: impl FnOnce(&Topology),
        server: impl FnOnce(&mut ServerOptions),
    ) -> Env {
        let topo = field_topology(tag).unwrap();
        adjust(&topo);
        let mut options = origin_options();
        server(&mut options);
        let server = FtpServer::start(topo.ns_name(ORIGIN), kind, options).unwrap();
        let (client_if, origin_if) = (netns::FIELD_CLIENT_BRIDGE, netns::FIELD_ORIGIN_BRIDGE);
        let config = gateway_config(server.addr(), dataplane, data_ports, client_if, origin_if);
        Self::assemble(
            topo,
            server,
            &config,
            &format!("fg-field-{tag}"),
            client_if,
            origin_if,
        )
    }

    /// The login a client uses: the server's credentials at the VIP.
    pub fn login(&self) -> Login {
        Login {
            addr: SocketAddrV4::new(VIP, 21),
            ..self.server.login()
        }
    }

    pub fn client_ns(&self) -> &str {
        self.topo.ns_name(CLIENT)
    }

    /// A random file of `size` bytes in the origin's root, owned by the FTP user.
    pub fn origin_file(&self, name: &str, size: u64) -> PathBuf {
        let path = self.server.root().join(name);
        random_file(&path, size).unwrap();
        self.server.give_to_user(&path).unwrap();
        path
    }

    pub fn local(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// Every scripted client (curl, lftp, Python ftplib) in each of `modes` it can use:
    /// LIST, RETR, STOR and a REST resume (lftp: no resume), each run's trace showing the
    /// mode and every payload compared by SHA-256 with the origin's.
    pub fn client_sweep(&self, modes: &[DataMode]) {
        let login = self.login();
        let ns = self.client_ns();
        let remote = self.origin_file(SWEEP_FILE, 1 << 20);
        let uploaded = |name: &str| self.server.root().join(name);
        for &mode in modes {
            let m = mode.verb();
            let run = in_mode(curl_list(ns, &login, "", mode), mode);
            assert!(run.stdout.contains(SWEEP_FILE), "{}", run.describe());
            let local = self.local(&format!("curl-{m}.bin"));
            in_mode(curl_download(ns, &login, SWEEP_FILE, &local, mode), mode);
            assert_same(&remote, &local);
            let up = format!("up-curl-{m}.bin");
            in_mode(curl_upload(ns, &local, &login, &up, mode), mode);
            assert_same(&remote, &uploaded(&up));
            let partial = self.local(&format!("resume-{m}.bin"));
            std::fs::write(&partial, &std::fs::read(&remote).unwrap()[..300_000]).unwrap();
            let run = curl_resume_download(ns, &login, SWEEP_FILE, &partial, mode)
                .unwrap()
                .success()
                .unwrap();
            assert!(run.sent("REST"), "{}", run.describe());
            assert_same(&remote, &partial);

            if ClientKind::Lftp.unsupported_mode(mode).is_none() {
                let got = self.local(&format!("lftp-{m}.bin"));
                let script = format!(
                    "cls -1; get {SWEEP_FILE} -o {0}; put {0} -o up-lftp-{m}.bin",
                    got.display()
                );
                in_mode(lftp_run(ns, &login, &script, mode), mode);
                assert_same(&remote, &got);
                assert_same(&remote, &uploaded(&format!("up-lftp-{m}.bin")));
            }

            let got = self.local(&format!("ftplib-{m}.bin"));
            let retr = format!("RETR {SWEEP_FILE} {}", got.display());
            let stor = format!("STOR {} up-ftplib-{m}.bin", got.display());
            let rest = format!("REST 500000 RETR {SWEEP_FILE} {}", got.display());
            in_mode(
                ftplib_run(ns, &login, &["LIST", &retr, &stor, &rest], mode),
                mode,
            );
            assert_same(&remote, &got);
            assert_same(&remote, &uploaded(&format!("up-ftplib-{m}.bin")));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

pub fn gateway_config(
    origin: SocketAddrV4,
    dataplane: &str,
    data_ports: &str,
    client_if: &str,
    origin_if: &str,
) -> String {
    format!(
        "[[service]]\nname = \"e2e\"\nlisten = \"{VIP}:21\"\norigin = \"{origin}\"\n\
         data_ports = \"{data_ports}\"\nclient_interface = \"{client_if}\"\n\
         origin_interface = \"{origin_if}\"\ndataplane = \"{dataplane}\"\nlease_ttl_secs = 10\n"
    )
}

pub fn assert_same(a: &Path, b: &Path) {
    assert_eq!(
        sha256_file(a).unwrap(),
        sha256_file(b).unwrap(),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

/// A raw FTP control session from the client namespace, for precise choreography: the
/// load client [`FtpControl`], logged in, with replies as sent (CRLF lines) and failures
/// panicking, as a test wants them.
pub struct Control {
    ftp: FtpControl,
    /// The greeting (220), as the client got it.
    pub greeting: String,
}

impl Control {
    pub fn login(env: &Env) -> Control {
        let login = env.login();
        let ftp = env
            .topo
            .in_ns(CLIENT, || {
                FtpControl::login(
                    login.addr,
                    &login.user,
                    &login.password,
                    Duration::from_secs(10),
                )
            })
            .unwrap_or_else(|e| panic!("logging in to {}: {e:#}", login.addr));
        let greeting = ftp.greeting().raw();
        Control { ftp, greeting }
    }

    pub fn reply(&mut self) -> String {
        self.ftp.reply().unwrap_or_else(|e| panic!("{e:#}")).raw()
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.ftp
            .command(line)
            .unwrap_or_else(|e| panic!("{line}: {e:#}"))
            .raw()
    }

    /// EPSV, returning the public data port.
    pub fn epsv(&mut self) -> u16 {
        self.ftp.epsv().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// RETR of `name` over the waiting lease on `port` (vsftpd's replies): the bytes the
    /// client received.
    pub fn retr_over(&mut self, env: &Env, port: u16, name: &str) -> Vec<u8> {
        use std::io::Read as _;
        let mut data = connect_from(env, netns::CLIENT_IP, port)
            .unwrap_or_else(|e| panic!("data connection to {port}: {e}"));
        let size = std::fs::metadata(env.server.root().join(name))
            .unwrap()
            .len();
        assert_eq!(
            self.cmd(&format!("RETR {name}")),
            format!("150 Opening BINARY mode data connection for {name} ({size} bytes).\r\n")
        );
        let mut got = Vec::new();
        data.read_to_end(&mut got).unwrap();
        assert_eq!(self.reply(), "226 Transfer complete.\r\n");
        got
    }
}

/// Connects from the client namespace, from `source` (an address of the client host).
pub fn connect_from(env: &Env, source: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    env.topo.in_ns(CLIENT, || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())?;
        socket.connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(VIP, port)).into(),
            Duration::from_millis(1500),
        )?;
        Ok(socket.into())
    })
}

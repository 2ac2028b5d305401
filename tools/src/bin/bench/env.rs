//! What every scenario shares: the topology, the origin servers and the payload.
//!
//! client 203.0.113.2 ── pub0 [gateway] priv0 ── origin 198.51.100.2
//!
//! For the flood figures an `attacker` namespace joins the client's link for each flood run
//! (a macvlan on the client's veth, 203.0.113.66), so its frames reach `pub0` like a
//! client's; the gateway
//! routes the spoofed sources' network (192.0.2.0/24) back to it, so replies to them leave
//! as they would on the internet and die there.
//!
//! The origin runs vsftpd (port 21; sendfile from tmpfs) for the transfer and session
//! figures, and pyftpdlib (port 2121, one process for any number of sessions) for the
//! idle-session memory figure, where vsftpd would fork 10,000 processes.
use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, ensure};
use ftp_guard_testbed::{
    flood::mac_address,
    ftp_clients::{Login, random_file, sha256_file},
    ftp_servers::{FtpServer, ServerKind, ServerOptions},
    netns::{self, CLIENT, GATEWAY, ORIGIN, Topology},
};

/// The flood generator's namespace.
pub const ATTACKER: &str = "attacker";
const ATTACKER_IF: &str = "atk0";
const ATTACKER_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 66);
/// The spoofed sources: a documentation range no host of the topology uses.
const SPOOFED_NET: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 0);

/// The flood's link, up only for a flood run (the client's link carries no macvlan in
/// the other figures): a macvlan on the client's veth moved into the attacker namespace.
/// Deleted when dropped.
pub struct AttackerLink<'a> {
    env: &'a Env,
    pub ifname: &'static str,
    pub mac: [u8; 6],
    /// The gateway's public interface.
    pub gateway_mac: [u8; 6],
    pub spoofed_net: std::net::Ipv4Addr,
}

impl Drop for AttackerLink<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .env
            .topo
            .run(ATTACKER, &["ip", "link", "del", self.ifname])
        {
            eprintln!("warning: removing the attacker's link: {e:#}");
        }
    }
}

/// The attacker namespace, and the gateway's route to the spoofed sources through it.
fn add_attacker(topo: &mut Topology) -> Result<()> {
    topo.add_namespace(ATTACKER)?;
    let (net, via) = (format!("{SPOOFED_NET}/24"), ATTACKER_IP.to_string());
    topo.run(GATEWAY, &["ip", "route", "add", &net, "via", &via])?;
    Ok(())
}

/// The payload's name in the FTP root (a symlink to the tmpfs file).
pub const PAYLOAD: &str = "payload.bin";
/// A small file for the sessions figure (one RETR per session).
pub const SMALL: &str = "small.bin";
pub const SMALL_SIZE: u64 = 4096;
/// Prefix of the payload directory: `<payload-dir>/ftp-guard-bench-<pid>`.
const PAYLOAD_DIR_PREFIX: &str = "ftp-guard-bench-";
/// pyftpdlib's control port on the origin.
const PYFTPDLIB_PORT: u16 = 2121;

/// The `ethtool -k` features the report shows, with their short names.
const OFFLOADS: [(&str, &str); 6] = [
    ("rx-checksumming", "rx-csum"),
    ("tx-checksumming", "tx-csum"),
    ("scatter-gather", "sg"),
    // The real TSO state (the parent `tcp-segmentation-offload` says "on" when any child,
    // e.g. accecn, is on).
    ("tx-tcp-segmentation", "tso"),
    ("generic-segmentation-offload", "gso"),
    ("generic-receive-offload", "gro"),
];

/// Checksum offload on the veths for one figure's run, back off when dropped.
pub struct OffloadsOn<'a>(&'a Env);

impl<'a> OffloadsOn<'a> {
    pub fn new(env: &'a Env) -> Result<Self> {
        let guard = OffloadsOn(env);
        env.set_checksum_offload(true)?;
        Ok(guard)
    }
}

impl Drop for OffloadsOn<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.set_checksum_offload(false) {
            eprintln!("warning: turning checksum offload back off: {e:#}");
        }
    }
}

/// The topology, the origin servers and the payload, shared by every scenario.
pub struct Env {
    pub topo: Topology,
    /// vsftpd on the origin, port 21.
    pub server: FtpServer,
    /// pyftpdlib on the origin, port 2121 (only when the memory figure runs).
    pub light_server: Option<FtpServer>,
    pub payload: Payload,
}

/// The payload file in its own tmpfs directory, removed when dropped.
pub struct Payload {
    pub dir: PathBuf,
    pub file: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl Drop for Payload {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Payload {
    pub fn create(base: &Path, size: u64) -> Result<Payload> {
        sweep_stale_payloads(base);
        let available = free_bytes(base)?;
        ensure!(
            available > size + (64 << 20),
            "{} has {} MiB free, the payload needs {} MiB: choose --payload-dir or --size-mib",
            base.display(),
            available >> 20,
            size >> 20
        );
        let dir = base.join(format!("{PAYLOAD_DIR_PREFIX}{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut payload = Payload {
            file: dir.join(PAYLOAD),
            dir,
            size,
            sha256: String::new(),
        };
        // The FTP user reaches the file through the directory.
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&payload.dir, fs::Permissions::from_mode(0o755))?;
        random_file(&payload.file, size)?;
        payload.sha256 = sha256_file(&payload.file)?;
        Ok(payload)
    }
}

/// Removes `<base>/ftp-guard-bench-<pid>` directories whose process is gone (an interrupted
/// run): a stale payload would hold its size in RAM.
fn sweep_stale_payloads(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PAYLOAD_DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale payload {}", entry.path().display());
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn free_bytes(path: &Path) -> Result<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    Ok(stat.f_bavail * stat.f_frsize)
}

impl Env {
    pub fn start(payload_dir: &Path, size: u64, light_server: bool, attacker: bool) -> Result<Env> {
        let mut topo = Topology::standard("bench")?;
        if attacker {
            add_attacker(&mut topo)?;
        }
        // XDP redirect into a veth needs NAPI on the receiving end: GRO turns it on. Set
        // once for every scenario alike.
        for role in [CLIENT, ORIGIN] {
            topo.run(role, &["ethtool", "-K", netns::HOST_IF, "gro", "on"])?;
        }
        // Thousands of short sessions: wide ephemeral ranges, TIME_WAIT reuse by clients.
        for role in [CLIENT, GATEWAY] {
            topo.sysctl(role, "net.ipv4.ip_local_port_range", "10000 65000")?;
            topo.sysctl(role, "net.ipv4.tcp_tw_reuse", "1")?;
        }
        let server = FtpServer::start(
            topo.ns_name(ORIGIN),
            ServerKind::Vsftpd,
            ServerOptions {
                listen: SocketAddrV4::new(netns::ORIGIN_IP, 21),
                passive_ports: (30000, 34999),
                ..ServerOptions::default()
            },
        )?;
        let light_server = if light_server {
            Some(FtpServer::start(
                topo.ns_name(ORIGIN),
                ServerKind::Pyftpdlib,
                ServerOptions {
                    listen: SocketAddrV4::new(netns::ORIGIN_IP, PYFTPDLIB_PORT),
                    passive_ports: (35000, 35999),
                    ..ServerOptions::default()
                },
            )?)
        } else {
            None
        };
        eprintln!(
            "writing the {} MiB payload to {} …",
            size >> 20,
            payload_dir.display()
        );
        let payload = Payload::create(payload_dir, size)?;
        let link = server.root().join(PAYLOAD);
        std::os::unix::fs::symlink(&payload.file, &link)
            .with_context(|| format!("symlink {}", link.display()))?;
        let small = server.root().join(SMALL);
        random_file(&small, SMALL_SIZE)?;
        server.give_to_user(&small)?;
        Ok(Env {
            topo,
            server,
            light_server,
            payload,
        })
    }

    /// The veth ends every packet of a transfer crosses: (role, interface).
    pub const VETHS: [(&'static str, &'static str); 4] = [
        (CLIENT, netns::HOST_IF),
        (GATEWAY, netns::GATEWAY_PUBLIC_IF),
        (GATEWAY, netns::GATEWAY_PRIVATE_IF),
        (ORIGIN, netns::HOST_IF),
    ];

    /// Turns rx/tx checksum offload on every veth end on (the veth default) or off (the
    /// topology's setting: every checksum computed and checked).
    pub fn set_checksum_offload(&self, on: bool) -> Result<()> {
        for (role, ifname) in Self::VETHS {
            self.topo
                .set_checksum_offload(role, ifname, on)
                .with_context(|| format!("checksum offload {role}/{ifname}"))?;
        }
        Ok(())
    }

    /// The offloads in force on every veth end, `role/ifname` → `tx-csum on, sg on, …`.
    pub fn offloads(&self) -> BTreeMap<String, String> {
        let mut offloads = BTreeMap::new();
        for (role, ifname) in Self::VETHS {
            let Ok(out) = self.topo.run(role, &["ethtool", "-k", ifname]) else {
                continue;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let features: Vec<String> = OFFLOADS
                .iter()
                .filter_map(|(wanted, short)| {
                    let value = text.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        (k.trim() == *wanted).then_some(v)
                    })?;
                    let on = value.trim().starts_with("on");
                    Some(format!("{short} {}", if on { "on" } else { "off" }))
                })
                .collect();
            offloads.insert(format!("{role}/{ifname}"), features.join(", "));
        }
        offloads
    }

    /// Brings the attacker's link up (see [`AttackerLink`]); needs the attacker namespace
    /// (`Env::start` with `attacker`).
    pub fn attacker_link(&self) -> Result<AttackerLink<'_>> {
        let ns = self.topo.ns_name(ATTACKER);
        let (host_if, ifname) = (netns::HOST_IF, ATTACKER_IF);
        let add = [
            "ip", "link", "add", "link", host_if, "name", ifname, "netns", ns,
        ];
        let kind = ["type", "macvlan", "mode", "private"];
        self.topo.run(CLIENT, &[&add[..], &kind[..]].concat())?;
        // From here on dropping the link deletes it.
        let mut link = AttackerLink {
            env: self,
            ifname,
            mac: [0; 6],
            gateway_mac: mac_address(&self.topo, GATEWAY, netns::GATEWAY_PUBLIC_IF)?,
            spoofed_net: SPOOFED_NET,
        };
        self.topo
            .add_address(ATTACKER, ifname, &format!("{ATTACKER_IP}/24"))?;
        self.topo
            .run(ATTACKER, &["ip", "link", "set", ifname, "up"])?;
        link.mac = mac_address(&self.topo, ATTACKER, ifname)?;
        Ok(link)
    }

    /// Credentials of the vsftpd origin, to be used at `target`.
    pub fn login(&self, target: SocketAddrV4) -> Login {
        Login {
            addr: target,
            ..self.server.login()
        }
    }
}

//! `cargo xtask interop`: the interoperability matrix. Every real FTP server (vsftpd,
//! ProFTPD, Pure-FTPd, pyftpdlib) as the origin behind ftp-guard, every real client (curl,
//! lftp, Python ftplib, wget, tnftp) in every data mode it can be made to use over IPv4
//! (PASV, EPSV, PORT, EPRT), each doing LIST, RETR, STOR and a REST resume; plus, per server,
//! 200 small files on one control connection and 50 concurrent sessions.
//!
//! One topology of network namespaces (client 203.0.113.2 — gateway 203.0.113.1 |
//! 198.51.100.1 — origin 198.51.100.2); per server a fresh origin and a fresh ftp-guard
//! (in-process, kernel data path unless `--dataplane userspace`). `--topology standard`
//! (the default) joins them by veths tuned for the tests (forwarding on, checksum offload
//! off); `--topology field` is an ordinary gateway instead (bridges `brc0`/`bro0` as its
//! interfaces, `ip_forward = 0`, default offloads, a 100-port data range unless
//! `--data-ports` says otherwise): see `Topology::field`. Every transfer is checked
//! by SHA-256 and every run's own trace must show the requested mode and no other data
//! command (a silent fallback is a failure). Writes a markdown report (docs/interop.md by
//! default), prints a summary, exits 1 when a cell that should pass failed. Needs root.
mod cells;
mod outcome;
mod report;
mod reuse;
mod server;

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use clap::{Parser, ValueEnum};
use ftp_guard_testbed::{
    ftp_clients::{ClientKind, set_client_timeout, unique_temp_dir},
    ftp_servers::ServerKind,
    netns::{self, CLIENT, ORIGIN, Topology},
};

use crate::{
    report::{Meta, command_stdout, git_commit, report, server_summary, totals},
    reuse::port_reuse,
    server::{Plan, outcome_text, server_matrix},
};

const VIP: Ipv4Addr = netns::GATEWAY_PUBLIC_IP;
/// The file every client lists, downloads and resumes.
const TEST_FILE: &str = "dl.bin";

#[derive(Parser, Debug)]
#[command(
    name = "interop",
    about = "FTP interoperability matrix through ftp-guard (run as root; `cargo xtask interop`)"
)]
struct Args {
    /// Which data path carries the data connections (`both`: the whole matrix on each).
    #[arg(long, value_enum, default_value_t = DataplaneArg::Kernel)]
    dataplane: DataplaneArg,
    /// The network the gateway sits in: `standard` (veths, forwarding on, checksum offload
    /// off) or `field` (bridges, forwarding off, default offloads; see `Topology::field`).
    #[arg(long, value_enum, default_value_t = TopologyArg::Standard)]
    topology: TopologyArg,
    /// Only these servers (comma-separated: vsftpd,pyftpdlib,proftpd,pure-ftpd).
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Only these clients (comma-separated: curl,lftp,ftplib,wget,tnftp).
    #[arg(long, value_delimiter = ',')]
    clients: Vec<String>,
    /// Where to write the markdown report.
    #[arg(long, default_value_os_t = default_report())]
    report: PathBuf,
    /// Size in bytes of the file each client transfers.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(3..))]
    file_size: u64,
    /// Small files transferred on one control connection, per server (0: skip).
    #[arg(long, default_value_t = 200)]
    files: usize,
    /// Concurrent sessions, each downloading its own file, per server (0: skip).
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Size in bytes of each concurrent session's file.
    #[arg(long, default_value_t = 256 << 10)]
    session_file_size: u64,
    /// Wall-clock limit of one client run, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    client_timeout: u64,
    /// The gateway's public data-port range for the matrix [default: 40000-40999 on the
    /// standard topology, 40000-40099 (100 ports, as on an ordinary gateway) on the field
    /// one]. The kernel path holds a port ~2 s after its connection ends, so a range of N
    /// ports sustains about N/2.2 new data connections per second: 1000 keeps the bulk
    /// cells far from that limit.
    #[arg(long)]
    data_ports: Option<String>,
    /// Transfers of the data-port reuse check (0: skip): sequential, paced, through a
    /// 40-port range, so every port is used again and again.
    #[arg(long, default_value_t = 100)]
    reuse_transfers: usize,
}

impl Args {
    /// The matrix's data-port range: `--data-ports`, else the topology's default.
    fn data_ports(&self) -> &str {
        self.data_ports
            .as_deref()
            .unwrap_or(self.topology.default_data_ports())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TopologyArg {
    /// `Topology::standard`: veths, forwarding on, checksum offload off (CI's).
    Standard,
    /// `Topology::field`: bridges, `ip_forward = 0`, default offloads.
    Field,
}

impl TopologyArg {
    fn name(self) -> &'static str {
        match self {
            TopologyArg::Standard => "standard",
            TopologyArg::Field => "field",
        }
    }

    fn default_data_ports(self) -> &'static str {
        match self {
            TopologyArg::Standard => "40000-40999",
            TopologyArg::Field => "40000-40099",
        }
    }

    /// The gateway's client- and origin-facing interfaces.
    fn interfaces(self) -> (&'static str, &'static str) {
        match self {
            TopologyArg::Standard => (netns::GATEWAY_PUBLIC_IF, netns::GATEWAY_PRIVATE_IF),
            TopologyArg::Field => (netns::FIELD_CLIENT_BRIDGE, netns::FIELD_ORIGIN_BRIDGE),
        }
    }

    fn build(self) -> Result<Topology> {
        match self {
            TopologyArg::Standard => {
                let topo = Topology::standard("interop")?;
                // XDP redirect into a veth needs NAPI on the receiving end: GRO turns it on.
                for role in [CLIENT, ORIGIN] {
                    topo.run(role, &["ethtool", "-K", netns::HOST_IF, "gro", "on"])?;
                }
                Ok(topo)
            }
            // Nothing tuned: that is the point of the field topology.
            TopologyArg::Field => Topology::field("interop"),
        }
    }

    /// For the report.
    fn describe(self) -> &'static str {
        match self {
            TopologyArg::Standard => {
                "veth pairs, IPv4 forwarding on, checksum offload off on every veth"
            }
            TopologyArg::Field => {
                "an ordinary gateway: Linux bridges brc0/bro0 as ftp-guard's interfaces (a second \
                 host on each, 203.0.113.3 and 198.51.100.3), net.ipv4.ip_forward = 0, every \
                 veth with the kernel's default offloads (checksum offload, TSO on)"
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DataplaneArg {
    /// XDP/TC NAT in the kernel (ftp-guard's default).
    Kernel,
    /// The userspace relay.
    Userspace,
    /// Kernel, then userspace.
    Both,
}

impl DataplaneArg {
    fn names(self) -> &'static [&'static str] {
        match self {
            DataplaneArg::Kernel => &["kernel"],
            DataplaneArg::Userspace => &["userspace"],
            DataplaneArg::Both => &["kernel", "userspace"],
        }
    }
}

/// The data-port range of the reuse check, and the pause after each of its transfers: ~9
/// connections/s × ~2.4 s (the kernel path's linger after FIN, polled every 200 ms) keeps
/// about 22 of its 40 ports busy.
const REUSE_PORTS: &str = "41000-41039";
const REUSE_PAUSE_SECS: &str = "0.1";

fn default_report() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).join("docs/interop.md")
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The in-process gateway logs like `ftp-guard run` does, when asked (e.g.
    // FTP_GUARD_LOG=debug): what to read when a cell fails.
    if let Ok(filter) = std::env::var("FTP_GUARD_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("interop: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn pick<T: Copy>(all: &[T], wanted: &[String], name: impl Fn(T) -> &'static str) -> Result<Vec<T>> {
    if wanted.is_empty() {
        return Ok(all.to_vec());
    }
    wanted
        .iter()
        .map(|w| {
            all.iter()
                .copied()
                .find(|x| name(*x) == w.as_str())
                .with_context(|| {
                    let names: Vec<_> = all.iter().map(|x| name(*x)).collect();
                    format!("unknown name {w:?}: one of {}", names.join(", "))
                })
        })
        .collect()
}

/// Returns whether every cell that should pass passed.
fn run(args: &Args) -> Result<bool> {
    ensure!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the interop matrix needs root (network namespaces, eBPF): run `cargo xtask interop`"
    );
    let servers = pick(&ServerKind::ALL, &args.servers, ServerKind::name)?;
    let clients = pick(&ClientKind::ALL, &args.clients, ClientKind::name)?;
    set_client_timeout(Duration::from_secs(args.client_timeout));
    let started = Instant::now();
    let date = command_stdout(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();

    let topo = args.topology.build()?;
    let work = unique_temp_dir("fgt-interop")?;
    let mut reports = Vec::new();
    let mut reuse = Vec::new();
    for (p, dataplane) in args.dataplane.names().iter().enumerate() {
        for (i, kind) in servers.iter().enumerate() {
            let dir = work.join(format!("{dataplane}-{}", kind.name()));
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let plan = Plan {
                dataplane,
                clients: &clients,
                self_check: p == 0 && i == 0,
            };
            reports.push(server_matrix(&topo, *kind, &plan, args, &dir));
        }
        if args.reuse_transfers > 0 {
            let dir = work.join(format!("{dataplane}-reuse"));
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            reuse.push(port_reuse(&topo, servers[0], dataplane, args, &dir));
        }
    }
    let _ = fs::remove_dir_all(&work);
    let client_versions: Vec<(ClientKind, String)> = clients
        .iter()
        .map(|c| {
            (
                *c,
                c.version().unwrap_or_else(|e| format!("unknown ({e:#})")),
            )
        })
        .collect();
    let meta = Meta {
        date,
        kernel,
        commit: git_commit(),
        data_ports: args.data_ports().to_owned(),
        elapsed: started.elapsed(),
        client_versions,
        filtered: !args.servers.is_empty() || !args.clients.is_empty(),
        args: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
    };
    let markdown = report(&meta, &reports, &reuse, args);
    if let Some(parent) = args.report.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(&args.report, &markdown)
        .with_context(|| format!("writing {}", args.report.display()))?;
    let (pass, fail, na) = totals(&reports, &reuse);
    println!();
    for r in &reports {
        println!(
            "{:<9} {:<10} {:<22} {}",
            r.dataplane,
            r.kind.name(),
            r.version,
            server_summary(r)
        );
    }
    for r in &reuse {
        println!(
            "{:<9} data-port reuse ({}, {} transfers through {REUSE_PORTS}): {} ({:.1} s)",
            r.dataplane,
            r.server.name(),
            args.reuse_transfers,
            outcome_text(&r.outcome),
            r.elapsed.as_secs_f64()
        );
    }
    println!(
        "interop ({} topology, data ports {}): {pass} pass, {fail} fail, {na} n/a in {:.0} s; \
         report: {}",
        args.topology.name(),
        args.data_ports(),
        meta.elapsed.as_secs_f64(),
        args.report.display()
    );
    Ok(fail == 0)
}

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
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use clap::{Parser, ValueEnum};
use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    ftp_clients::{
        ClientKind, ClientRun, DataMode, Login, command_line, curl_download, curl_list,
        curl_resume_download, curl_upload, ftplib_run, lftp_run, random_file, set_client_timeout,
        sha256_file, tnftp_run, unique_temp_dir, wget_download, wget_list, wget_resume_download,
    },
    ftp_servers::{FtpServer, PURE_FTPD_MAX_CLIENTS, ServerKind, ServerOptions},
    gateway::RunningGateway,
    netns::{self, CLIENT, ORIGIN, Topology},
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

/// What one client run tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    List,
    Retr,
    Stor,
    Rest,
}

impl Op {
    const ALL: [Op; 4] = [Op::List, Op::Retr, Op::Stor, Op::Rest];

    fn name(self) -> &'static str {
        match self {
            Op::List => "LIST",
            Op::Retr => "RETR",
            Op::Stor => "STOR",
            Op::Rest => "REST",
        }
    }
}

#[derive(Clone, Debug)]
enum Outcome {
    Pass,
    Fail(String),
    NotApplicable(String),
}

/// Why a cell failed: a one-line reason for the table, the whole story for the details.
struct Failure {
    reason: String,
    detail: String,
}

impl Failure {
    fn new(reason: impl Into<String>, detail: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            detail: detail.into(),
        }
    }

    fn from_error(e: &anyhow::Error) -> Failure {
        let full = format!("{e:#}");
        let first = full.lines().next().unwrap_or("").to_owned();
        Failure::new(first, full)
    }
}

/// One row of a server's table: a client in a mode, its four operations.
struct Row {
    client: ClientKind,
    mode: DataMode,
    cells: Vec<(Op, Outcome)>,
    note: Option<String>,
}

/// A failed cell's details for the report.
struct FailureReport {
    what: String,
    reason: String,
    detail: String,
    server_log: String,
}

struct ServerReport {
    kind: ServerKind,
    dataplane: &'static str,
    version: String,
    started: Option<String>,
    rows: Vec<Row>,
    many_files: Option<Bulk>,
    concurrent: Option<Bulk>,
    failures: Vec<FailureReport>,
    elapsed: Duration,
    attachments: String,
    counters: String,
    /// The origin kernel's accept-queue trouble during this server's run (empty if none).
    origin_tcp: String,
    /// Only in the first server's report: the harness check (failures are detected).
    self_check: Option<Outcome>,
}

/// A bulk cell: its outcome, how long it took, what it measured.
struct Bulk {
    outcome: Outcome,
    elapsed: Duration,
    note: String,
}

/// The data-port reuse check of one data path.
struct ReuseReport {
    dataplane: &'static str,
    server: ServerKind,
    outcome: Outcome,
    elapsed: Duration,
    failures: Vec<FailureReport>,
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

struct Meta {
    date: String,
    kernel: String,
    commit: String,
    data_ports: String,
    elapsed: Duration,
    client_versions: Vec<(ClientKind, String)>,
    filtered: bool,
    args: String,
}

/// ftp-guard's origin connect timeout (control: up to the greeting): below the clients' own
/// 10 s connect timeout, so an origin that never greets shows as ftp-guard's `421`.
const GATEWAY_CONNECT_TIMEOUT_SECS: u64 = 5;

fn gateway_config(
    origin: SocketAddrV4,
    dataplane: &str,
    data_ports: &str,
    topology: TopologyArg,
) -> String {
    let (client_if, origin_if) = topology.interfaces();
    format!(
        "[[service]]\nname = \"interop\"\nlisten = \"{VIP}:21\"\norigin = \"{origin}\"\n\
         data_ports = \"{data_ports}\"\nclient_interface = \"{client_if}\"\n\
         origin_interface = \"{origin_if}\"\n\
         dataplane = \"{dataplane}\"\nconnect_timeout_secs = {GATEWAY_CONNECT_TIMEOUT_SECS}\n",
    )
}

/// What to run against one server.
struct Plan<'a> {
    dataplane: &'static str,
    clients: &'a [ClientKind],
    /// Also check that each client's failure is detected (once per run).
    self_check: bool,
}

/// Everything a cell needs: where the client runs, whom it logs in as, the origin's files.
struct Ctx<'a> {
    topo: &'a Topology,
    server: &'a FtpServer,
    login: Login,
    /// The client's local files (the filesystem is shared by all namespaces).
    work: &'a Path,
    /// [`TEST_FILE`] in the origin's root.
    remote: PathBuf,
    size: u64,
}

impl Ctx<'_> {
    fn ns(&self) -> &str {
        self.topo.ns_name(CLIENT)
    }
}

fn server_matrix(
    topo: &Topology,
    kind: ServerKind,
    plan: &Plan,
    args: &Args,
    work: &Path,
) -> ServerReport {
    let started = Instant::now();
    let mut report = ServerReport {
        kind,
        dataplane: plan.dataplane,
        version: kind
            .version()
            .unwrap_or_else(|e| format!("unknown ({e:#})")),
        started: None,
        rows: Vec::new(),
        many_files: None,
        concurrent: None,
        failures: Vec::new(),
        elapsed: Duration::ZERO,
        attachments: String::new(),
        counters: String::new(),
        origin_tcp: String::new(),
        self_check: None,
    };
    let origin_tcp_before = OriginTcp::read(topo);
    eprintln!(
        "\n== {} {} ({} data path) ==",
        kind.name(),
        report.version,
        plan.dataplane
    );
    let server = match FtpServer::start(
        topo.ns_name(ORIGIN),
        kind,
        ServerOptions {
            listen: SocketAddrV4::new(netns::ORIGIN_IP, 21),
            ..ServerOptions::default()
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            report.started = Some(format!("{} did not start: {e:#}", kind.name()));
            return finish(report, started);
        }
    };
    let config = gateway_config(
        server.addr(),
        plan.dataplane,
        args.data_ports(),
        args.topology,
    );
    let gateway = match RunningGateway::start(topo, &config) {
        Ok(g) => g,
        Err(e) => {
            report.started = Some(format!("ftp-guard did not start: {e:#}"));
            return finish(report, started);
        }
    };
    if let Some(kernel) = gateway.kernel()
        && let Ok(k) = kernel.lock()
    {
        report.attachments = k
            .attachments()
            .iter()
            .map(|(i, m)| format!("{i}={m}"))
            .collect::<Vec<_>>()
            .join(", ");
    }
    let remote = server.root().join(TEST_FILE);
    if let Err(e) = random_file(&remote, args.file_size).and_then(|()| server.give_to_user(&remote))
    {
        report.started = Some(format!("could not create {}: {e:#}", remote.display()));
        return finish(report, started);
    }
    let ctx = Ctx {
        topo,
        server: &server,
        login: Login {
            addr: SocketAddrV4::new(VIP, 21),
            ..server.login()
        },
        work,
        remote,
        size: args.file_size,
    };
    if plan.self_check {
        let outcome = record(
            &ctx,
            "harness self-check: a failed download must fail its cell".into(),
            self_check(&ctx, plan.clients),
            &mut report.failures,
        );
        eprintln!(
            "  self-check (failures are detected): {}",
            outcome_text(&outcome)
        );
        report.self_check = Some(outcome);
    }
    for client in plan.clients {
        for mode in DataMode::ALL {
            let row = matrix_row(&ctx, *client, mode, &mut report.failures);
            report.rows.push(row);
        }
    }
    if args.files > 0 {
        let t = Instant::now();
        let outcome = record(
            &ctx,
            format!(
                "{}: {} files on one control connection",
                kind.name(),
                args.files
            ),
            many_files(&ctx, args.files),
            &mut report.failures,
        );
        eprintln!(
            "  {} files on one connection: {}",
            args.files,
            outcome_text(&outcome)
        );
        report.many_files = Some(Bulk {
            outcome,
            elapsed: t.elapsed(),
            note: String::new(),
        });
    }
    if args.sessions > 0 {
        let t = Instant::now();
        let mut peak = 0;
        let before = OriginTcp::read(topo);
        let result =
            concurrent_sessions(&ctx, args.sessions, args.session_file_size).map(|p| peak = p);
        // A burst of connections to the origin is where its accept queue can overflow: say
        // so beside a failure (a connection lost that way is never greeted).
        let trouble = OriginTcp::growth(before, OriginTcp::read(topo));
        let result = result.map_err(|mut f| {
            let _ = write!(
                f.detail,
                "\n\norigin kernel during this cell: {}",
                if trouble.is_empty() {
                    "no accept-queue overflow, no SYN cookie".to_owned()
                } else {
                    trouble.clone()
                }
            );
            f
        });
        let outcome = record(
            &ctx,
            format!("{}: {} concurrent sessions", kind.name(), args.sessions),
            result,
            &mut report.failures,
        );
        let mut note = if peak > 0 {
            format!("up to {peak} clients running at once")
        } else {
            String::new()
        };
        if !trouble.is_empty() {
            if !note.is_empty() {
                note.push_str("; ");
            }
            let _ = write!(note, "origin kernel: {trouble}");
        }
        eprintln!(
            "  {} concurrent sessions: {} {note}",
            args.sessions,
            outcome_text(&outcome)
        );
        report.concurrent = Some(Bulk {
            outcome,
            elapsed: t.elapsed(),
            note,
        });
    }
    let c = gateway.counters();
    report.counters = Counter::ALL
        .iter()
        .filter(|k| c.get(**k) > 0)
        .map(|k| format!("{}={}", k.name(), c.get(*k)))
        .collect::<Vec<_>>()
        .join(", ");
    report.origin_tcp = OriginTcp::growth(origin_tcp_before, OriginTcp::read(topo));
    drop(gateway);
    drop(server);
    finish(report, started)
}

fn finish(mut report: ServerReport, started: Instant) -> ServerReport {
    if let Some(why) = &report.started {
        eprintln!("  {why}");
    }
    report.elapsed = started.elapsed();
    report
}

/// The origin namespace's TCP listener counters (`TcpExt` in /proc/net/netstat) that show
/// an accept queue overflowing: a SYN or a handshake's last ACK dropped, a SYN answered
/// with a cookie. None if they cannot be read.
#[derive(Clone, Copy, Debug, Default)]
struct OriginTcp {
    listen_overflows: u64,
    listen_drops: u64,
    syncookies_sent: u64,
}

impl OriginTcp {
    fn read(topo: &Topology) -> Option<OriginTcp> {
        let out = topo.run(ORIGIN, &["cat", "/proc/net/netstat"]).ok()?;
        Self::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// `TcpExt:` names on one line, their values on the next.
    fn parse(netstat: &str) -> Option<OriginTcp> {
        let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next()?, lines.next()?);
        let get = |name: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.parse().ok())
        };
        Some(OriginTcp {
            listen_overflows: get("ListenOverflows")?,
            listen_drops: get("ListenDrops")?,
            syncookies_sent: get("SyncookiesSent")?,
        })
    }

    /// What grew from `before` to `now`, as text; empty when nothing did (or nothing was
    /// read).
    fn growth(before: Option<Self>, now: Option<Self>) -> String {
        let (Some(before), Some(now)) = (before, now) else {
            return String::new();
        };
        [
            (
                "accept-queue overflows",
                now.listen_overflows,
                before.listen_overflows,
            ),
            ("listen drops", now.listen_drops, before.listen_drops),
            (
                "SYN cookies sent",
                now.syncookies_sent,
                before.syncookies_sent,
            ),
        ]
        .iter()
        .filter(|(_, n, b)| n > b)
        .map(|(what, n, b)| format!("{what} {}", n - b))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Pass => "pass".into(),
        Outcome::Fail(r) => format!("FAIL ({r})"),
        Outcome::NotApplicable(r) => format!("n/a ({r})"),
    }
}

/// Turns a cell's result into its outcome, keeping a failure's details (with the tail of
/// the server's log) for the report.
fn record(
    ctx: &Ctx,
    what: String,
    result: Result<(), Failure>,
    failures: &mut Vec<FailureReport>,
) -> Outcome {
    match result {
        Ok(()) => Outcome::Pass,
        Err(f) => {
            failures.push(FailureReport {
                what,
                reason: f.reason.clone(),
                detail: f.detail,
                server_log: tail(&ctx.server.log(), 40),
            });
            Outcome::Fail(f.reason)
        }
    }
}

fn matrix_row(
    ctx: &Ctx,
    client: ClientKind,
    mode: DataMode,
    failures: &mut Vec<FailureReport>,
) -> Row {
    let t = Instant::now();
    let mut row = Row {
        client,
        mode,
        cells: Vec::new(),
        note: None,
    };
    if let Some(reason) = client.unsupported_mode(mode) {
        row.note = Some(reason.to_owned());
        row.cells = Op::ALL
            .iter()
            .map(|op| (*op, Outcome::NotApplicable(reason.to_owned())))
            .collect();
    } else {
        for op in Op::ALL {
            let outcome = match (op, client.cannot_upload()) {
                (Op::Stor, Some(reason)) => {
                    row.note = Some(reason.to_owned());
                    Outcome::NotApplicable(reason.to_owned())
                }
                _ => record(
                    ctx,
                    format!(
                        "{}: {} {} {}",
                        ctx.server.kind().name(),
                        client.name(),
                        mode.verb(),
                        op.name()
                    ),
                    run_op(ctx, client, mode, op),
                    failures,
                ),
            };
            row.cells.push((op, outcome));
        }
    }
    let cells: Vec<String> = row
        .cells
        .iter()
        .map(|(op, o)| format!("{} {}", op.name(), short_outcome(o)))
        .collect();
    eprintln!(
        "  {:<7} {:<5} {}  ({:.1} s)",
        client.name(),
        mode.verb(),
        cells.join("  "),
        t.elapsed().as_secs_f64()
    );
    row
}

fn short_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Pass => "pass".into(),
        Outcome::Fail(r) => format!("FAIL({r})"),
        Outcome::NotApplicable(_) => "n/a".into(),
    }
}

/// Runs one operation with one client in one mode and verifies it.
fn run_op(ctx: &Ctx, client: ClientKind, mode: DataMode, op: Op) -> Result<(), Failure> {
    let ns = ctx.ns();
    let login = &ctx.login;
    let tag = format!("{}-{}-{}", client.name(), mode.verb(), op.name()).to_lowercase();
    let local = ctx.work.join(format!("{tag}.bin"));
    let third = ctx.size / 3;
    let io = |e: anyhow::Error| Failure::from_error(&e);
    match op {
        Op::List => {
            let run = match client {
                ClientKind::Curl => curl_list(ns, login, "", mode),
                ClientKind::Lftp => lftp_run(ns, login, "ls", mode),
                ClientKind::Ftplib => ftplib_run(ns, login, &["LIST"], mode),
                ClientKind::Wget => {
                    let dir = ctx.work.join(&tag);
                    fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))
                        .map_err(io)?;
                    wget_list(ns, login, "", mode, &dir)
                }
                ClientKind::Tnftp => {
                    let listing = ctx.work.join(format!("{tag}.txt"));
                    tnftp_run(ns, login, &format!("ls . {}", listing.display()), mode).map(
                        |mut run| {
                            run.stdout = fs::read_to_string(&listing).unwrap_or_default();
                            run
                        },
                    )
                }
            };
            let run = checked(run, mode)?;
            if !run.stdout.lines().any(|l| l.contains(TEST_FILE)) {
                return Err(Failure::new(
                    format!("the listing does not name {TEST_FILE}"),
                    format!("listing:\n{}\n{}", run.stdout, run.describe()),
                ));
            }
            Ok(())
        }
        Op::Retr => {
            let l = local.display();
            let run = match client {
                ClientKind::Curl => curl_download(ns, login, TEST_FILE, &local, mode),
                ClientKind::Lftp => lftp_run(ns, login, &format!("get {TEST_FILE} -o {l}"), mode),
                ClientKind::Ftplib => {
                    ftplib_run(ns, login, &[&format!("RETR {TEST_FILE} {l}")], mode)
                }
                ClientKind::Wget => wget_download(ns, login, TEST_FILE, &local, mode),
                ClientKind::Tnftp => tnftp_run(ns, login, &format!("get {TEST_FILE} {l}"), mode),
            };
            let run = checked(run, mode)?;
            same_content(&ctx.remote, &local, &run)
        }
        Op::Stor => {
            random_file(&local, ctx.size).map_err(io)?;
            let name = format!("up-{tag}.bin");
            let l = local.display();
            let run = match client {
                ClientKind::Curl => curl_upload(ns, &local, login, &name, mode),
                ClientKind::Lftp => lftp_run(ns, login, &format!("put {l} -o {name}"), mode),
                ClientKind::Ftplib => ftplib_run(ns, login, &[&format!("STOR {l} {name}")], mode),
                ClientKind::Tnftp => tnftp_run(ns, login, &format!("put {l} {name}"), mode),
                ClientKind::Wget => unreachable!("wget cannot upload (n/a)"),
            };
            let run = checked(run, mode)?;
            same_content(&local, &ctx.server.root().join(&name), &run)
        }
        Op::Rest => {
            let head = fs::read(&ctx.remote)
                .with_context(|| format!("reading {}", ctx.remote.display()))
                .map_err(io)?;
            let cut = usize::try_from(third).unwrap_or(head.len()).min(head.len());
            fs::write(&local, &head[..cut])
                .with_context(|| format!("writing {}", local.display()))
                .map_err(io)?;
            let l = local.display();
            let run = match client {
                ClientKind::Curl => curl_resume_download(ns, login, TEST_FILE, &local, mode),
                ClientKind::Lftp => {
                    lftp_run(ns, login, &format!("get -c {TEST_FILE} -o {l}"), mode)
                }
                ClientKind::Ftplib => ftplib_run(
                    ns,
                    login,
                    &[&format!("REST {third} RETR {TEST_FILE} {l}")],
                    mode,
                ),
                ClientKind::Wget => wget_resume_download(ns, login, TEST_FILE, &local, mode),
                ClientKind::Tnftp => tnftp_run(ns, login, &format!("reget {TEST_FILE} {l}"), mode),
            };
            let run = checked(run, mode)?;
            let want = format!("REST {third}");
            if !run.command_lines().contains(&want) {
                return Err(Failure::new(
                    format!("no `{want}` in the trace (not resumed)"),
                    run.describe(),
                ));
            }
            same_content(&ctx.remote, &local, &run)
        }
    }
}

/// The run exited 0 and used exactly `mode`.
fn checked(run: Result<ClientRun>, mode: DataMode) -> Result<ClientRun, Failure> {
    let run = run.map_err(|e| Failure::from_error(&e))?;
    if !run.status.success() {
        let code = run
            .status
            .code()
            .map_or_else(|| run.status.to_string(), |c| format!("exit {c}"));
        return Err(Failure::new(
            format!("{code}: {}", last_error(&run)),
            run.describe(),
        ));
    }
    if run.check_mode(mode).is_err() {
        let verbs = data_verbs(&run);
        return Err(Failure::new(
            if verbs.is_empty() {
                format!("no {} in the trace", mode.verb())
            } else {
                format!("fallback: sent {}", verbs.join(", "))
            },
            run.describe(),
        ));
    }
    Ok(run)
}

/// [`checked`] for an ftplib run of `total` transfers: a failure says how many completed.
fn checked_ftplib(
    run: Result<ClientRun>,
    mode: DataMode,
    total: usize,
) -> Result<ClientRun, Failure> {
    let done = run.as_ref().map_or(0, |r| {
        r.trace
            .lines()
            .filter(|l| l.starts_with("*resp* '226") || l.starts_with("*resp* \"226"))
            .count()
    });
    checked(run, mode).map_err(|mut f| {
        f.reason = format!("{} (after {done} of {total} transfers)", f.reason);
        f
    })
}

/// The data-connection verbs the client sent, consecutive repeats collapsed.
fn data_verbs(run: &ClientRun) -> Vec<String> {
    let mut verbs: Vec<String> = run
        .commands_sent()
        .into_iter()
        .filter(|v| DataMode::ALL.iter().any(|m| m.verb() == v))
        .collect();
    verbs.dedup();
    verbs
}

/// The most telling line of a failed run: its last 4xx/5xx FTP reply, else the last line of
/// its trace.
fn last_error(run: &ClientRun) -> String {
    let mut replies = run.trace.lines().rev().filter_map(|line| {
        let l = line
            .trim_start_matches("< ")
            .trim_start_matches("<--- ")
            .trim_start_matches("*resp* ")
            .trim_matches(|c| c == '\'' || c == '"');
        let b = l.as_bytes();
        (b.len() >= 4
            && matches!(b[0], b'4' | b'5')
            && b[..3].iter().all(u8::is_ascii_digit)
            && b[3] == b' ')
            .then_some(l)
    });
    let line = replies
        .next()
        .or_else(|| run.trace.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("no output");
    line.trim().chars().take(120).collect()
}

fn same_content(expected: &Path, got: &Path, run: &ClientRun) -> Result<(), Failure> {
    let sum = |p: &Path| sha256_file(p).map_err(|e| Failure::from_error(&e));
    let (a, b) = (sum(expected)?, sum(got)?);
    if a == b {
        return Ok(());
    }
    let len = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    Err(Failure::new(
        format!(
            "SHA-256 mismatch: {} bytes, expected {}",
            len(got),
            len(expected)
        ),
        format!(
            "{} ({a}) != {} ({b})\n{}",
            expected.display(),
            got.display(),
            run.describe()
        ),
    ))
}

/// `count` small files downloaded by one ftplib process: one login, one control connection,
/// `count` EPSV data connections; every file checksummed.
fn many_files(ctx: &Ctx, count: usize) -> Result<(), Failure> {
    let io = |e: anyhow::Error| Failure::from_error(&e);
    let remote_dir = ctx.server.root().join("many");
    let local_dir = ctx.work.join("many");
    for d in [&remote_dir, &local_dir] {
        fs::create_dir_all(d)
            .with_context(|| format!("creating {}", d.display()))
            .map_err(io)?;
    }
    ctx.server.give_to_user(&remote_dir).map_err(io)?;
    let mut ops = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("f{i:03}.bin");
        let path = remote_dir.join(&name);
        // 100 B .. ~8 KiB: small files, each a different size.
        random_file(&path, 100 + (i as u64 * 397) % 8000).map_err(io)?;
        ops.push(format!(
            "RETR many/{name} {}",
            local_dir.join(&name).display()
        ));
    }
    let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
    let run = checked_ftplib(
        ftplib_run(ctx.ns(), &ctx.login, &ops, DataMode::Epsv),
        DataMode::Epsv,
        count,
    )?;
    let sent = run.commands_sent();
    let count_of = |verb: &str| sent.iter().filter(|v| *v == verb).count();
    if count_of("USER") != 1 || count_of("RETR") != count || count_of("EPSV") != count {
        return Err(Failure::new(
            format!(
                "expected 1 USER, {count} EPSV and {count} RETR; got {}, {}, {}",
                count_of("USER"),
                count_of("EPSV"),
                count_of("RETR")
            ),
            run.describe(),
        ));
    }
    for i in 0..count {
        let name = format!("f{i:03}.bin");
        same_content(&remote_dir.join(&name), &local_dir.join(&name), &run)?;
    }
    Ok(())
}

/// `sessions` curl processes started together, each downloading its own file (so crossed
/// data connections would show as checksum mismatches), in EPSV.
/// Returns the peak number of client processes that were running at the same time.
fn concurrent_sessions(ctx: &Ctx, sessions: usize, size: u64) -> Result<usize, Failure> {
    let io = |e: anyhow::Error| Failure::from_error(&e);
    let remote_dir = ctx.server.root().join("concurrent");
    let local_dir = ctx.work.join("concurrent");
    for d in [&remote_dir, &local_dir] {
        fs::create_dir_all(d)
            .with_context(|| format!("creating {}", d.display()))
            .map_err(io)?;
    }
    ctx.server.give_to_user(&remote_dir).map_err(io)?;
    for i in 0..sessions {
        let path = remote_dir.join(format!("c{i:02}.bin"));
        random_file(&path, size).map_err(io)?;
    }
    let barrier = Arc::new(Barrier::new(sessions));
    type Timed = Result<(Instant, Instant), Failure>;
    let results: Vec<Timed> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..sessions)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                let (remote_dir, local_dir) = (&remote_dir, &local_dir);
                s.spawn(move || {
                    let name = format!("c{i:02}.bin");
                    let local = local_dir.join(&name);
                    barrier.wait();
                    let began = Instant::now();
                    let run = checked(
                        curl_download(
                            ctx.ns(),
                            &ctx.login,
                            &format!("concurrent/{name}"),
                            &local,
                            DataMode::Epsv,
                        ),
                        DataMode::Epsv,
                    )?;
                    let ended = Instant::now();
                    same_content(&remote_dir.join(&name), &local, &run).map(|()| (began, ended))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Failure::new(
                        "session thread panicked",
                        "a session thread panicked",
                    ))
                })
            })
            .collect()
    });
    let mut spans = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(span) => spans.push(span),
            Err(f) => failed.push(f),
        }
    }
    match failed.first() {
        None => Ok(peak_overlap(&spans)),
        Some(first) => {
            let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
            for f in &failed {
                *reasons.entry(f.reason.as_str()).or_default() += 1;
            }
            let summary: Vec<String> = reasons.iter().map(|(r, n)| format!("{n}× {r}")).collect();
            Err(Failure::new(
                format!("{}/{sessions} failed: {}", failed.len(), summary.join("; ")),
                format!("first failure:\n{}", first.detail),
            ))
        }
    }
}

/// The largest number of `(start, end)` spans open at one instant (a span ending when
/// another starts does not overlap it).
fn peak_overlap(spans: &[(Instant, Instant)]) -> usize {
    // (instant, is_start): at the same instant ends (`false`) sort before starts.
    let mut events: Vec<(Instant, bool)> = spans
        .iter()
        .flat_map(|(a, b)| [(*a, true), (*b, false)])
        .collect();
    events.sort();
    let (mut now, mut peak) = (0usize, 0usize);
    for (_, is_start) in events {
        if is_start {
            now += 1;
            peak = peak.max(now);
        } else {
            now = now.saturating_sub(1);
        }
    }
    peak
}

/// Each client downloading a file that does not exist must come out as a failed run: the
/// proof that a broken transfer cannot pass as a cell (tnftp's exit status, for one, is
/// reconstructed from its output).
fn self_check(ctx: &Ctx, clients: &[ClientKind]) -> Result<(), Failure> {
    const MISSING: &str = "no-such-file.bin";
    let (ns, login, mode) = (ctx.ns(), &ctx.login, DataMode::Pasv);
    let mut undetected = Vec::new();
    let mut traces = String::new();
    for client in clients {
        let local = ctx.work.join(format!("self-check-{}.bin", client.name()));
        let l = local.display();
        let run = match client {
            ClientKind::Curl => curl_download(ns, login, MISSING, &local, mode),
            ClientKind::Lftp => lftp_run(ns, login, &format!("get {MISSING} -o {l}"), mode),
            ClientKind::Ftplib => ftplib_run(ns, login, &[&format!("RETR {MISSING} {l}")], mode),
            ClientKind::Wget => wget_download(ns, login, MISSING, &local, mode),
            ClientKind::Tnftp => tnftp_run(ns, login, &format!("get {MISSING} {l}"), mode),
        };
        match run {
            Ok(run) if run.status.success() => {
                undetected.push(client.name());
                let _ = writeln!(traces, "{}", run.describe());
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Failure::new(
                    format!("{} could not run", client.name()),
                    format!("{e:#}"),
                ));
            }
        }
    }
    if undetected.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            format!(
                "a download of a missing file exited 0 with {}",
                undetected.join(", ")
            ),
            traces,
        ))
    }
}

/// `args.reuse_transfers` sequential downloads on one control connection (ftplib, EPSV)
/// through a gateway whose range has only 40 ports ([`REUSE_PORTS`]), paced so that the
/// kernel path's linger never uses them all up: each port serves several data connections
/// in turn. A fresh origin and gateway.
fn port_reuse(
    topo: &Topology,
    kind: ServerKind,
    dataplane: &'static str,
    args: &Args,
    work: &Path,
) -> ReuseReport {
    let started = Instant::now();
    eprintln!(
        "\n== data-port reuse ({dataplane} data path, {}, {} transfers, ports {REUSE_PORTS}) ==",
        kind.name(),
        args.reuse_transfers
    );
    let mut report = ReuseReport {
        dataplane,
        server: kind,
        outcome: Outcome::Pass,
        elapsed: Duration::ZERO,
        failures: Vec::new(),
    };
    let server = match FtpServer::start(
        topo.ns_name(ORIGIN),
        kind,
        ServerOptions {
            listen: SocketAddrV4::new(netns::ORIGIN_IP, 21),
            ..ServerOptions::default()
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            report.outcome = Outcome::Fail(format!("{} did not start: {e:#}", kind.name()));
            return report;
        }
    };
    let config = gateway_config(server.addr(), dataplane, REUSE_PORTS, args.topology);
    let gateway = match RunningGateway::start(topo, &config) {
        Ok(g) => g,
        Err(e) => {
            report.outcome = Outcome::Fail(format!("ftp-guard did not start: {e:#}"));
            return report;
        }
    };
    let remote = server.root().join("reuse.bin");
    let ctx = Ctx {
        topo,
        server: &server,
        login: Login {
            addr: SocketAddrV4::new(VIP, 21),
            ..server.login()
        },
        work,
        remote: remote.clone(),
        size: 4096,
    };
    let result = random_file(&remote, ctx.size)
        .and_then(|()| server.give_to_user(&remote))
        .map_err(|e| Failure::from_error(&e))
        .and_then(|()| {
            let mut ops = Vec::new();
            for i in 0..args.reuse_transfers {
                let local = work.join(format!("r{i:03}.bin"));
                ops.push(format!("RETR reuse.bin {}", local.display()));
                ops.push(format!("SLEEP {REUSE_PAUSE_SECS}"));
            }
            let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
            let run = checked_ftplib(
                ftplib_run(ctx.ns(), &ctx.login, &ops, DataMode::Epsv),
                DataMode::Epsv,
                args.reuse_transfers,
            )?;
            for i in 0..args.reuse_transfers {
                same_content(&remote, &work.join(format!("r{i:03}.bin")), &run)?;
            }
            Ok(())
        });
    report.outcome = record(
        &ctx,
        format!(
            "{dataplane} data path: data-port reuse ({} transfers through {REUSE_PORTS})",
            args.reuse_transfers
        ),
        result,
        &mut report.failures,
    );
    eprintln!("  {}", outcome_text(&report.outcome));
    drop(gateway);
    drop(server);
    report.elapsed = started.elapsed();
    report
}

fn totals(reports: &[ServerReport], reuse: &[ReuseReport]) -> (usize, usize, usize) {
    let (mut pass, mut fail, mut na) = (0, 0, 0);
    let mut count = |o: &Outcome| match o {
        Outcome::Pass => pass += 1,
        Outcome::Fail(_) => fail += 1,
        Outcome::NotApplicable(_) => na += 1,
    };
    for r in reuse {
        count(&r.outcome);
    }
    for r in reports {
        if let Some(o) = &r.self_check {
            count(o);
        }
        let bulk = [&r.many_files, &r.concurrent];
        let outcomes = r
            .rows
            .iter()
            .flat_map(|row| row.cells.iter().map(|(_, o)| o))
            .chain(bulk.into_iter().flatten().map(|b| &b.outcome));
        for o in outcomes {
            count(o);
        }
        if let Some(why) = &r.started {
            count(&Outcome::Fail(why.clone()));
        }
    }
    (pass, fail, na)
}

fn server_summary(r: &ServerReport) -> String {
    let (pass, fail, na) = totals(std::slice::from_ref(r), &[]);
    match &r.started {
        Some(why) => format!("FAILED TO START: {}", why.lines().next().unwrap_or("")),
        None => format!(
            "{pass} pass, {fail} fail, {na} n/a in {:.1} s",
            r.elapsed.as_secs_f64()
        ),
    }
}

/// A table cell: `|` escaped, one line.
fn md(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn cell(o: &Outcome) -> String {
    match o {
        Outcome::Pass => "pass".into(),
        Outcome::Fail(r) => format!("**FAIL**: {}", md(r)),
        Outcome::NotApplicable(_) => "n/a".into(),
    }
}

fn bulk_cell(b: &Option<Bulk>) -> String {
    match b {
        None => "not run".into(),
        Some(b) if b.note.is_empty() => {
            format!("{} ({:.1} s)", cell(&b.outcome), b.elapsed.as_secs_f64())
        }
        Some(b) => format!(
            "{} ({:.1} s, {})",
            cell(&b.outcome),
            b.elapsed.as_secs_f64(),
            b.note
        ),
    }
}

fn report(meta: &Meta, reports: &[ServerReport], reuse: &[ReuseReport], args: &Args) -> String {
    let (pass, fail, na) = totals(reports, reuse);
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# FTP interoperability matrix\n");
    let _ = writeln!(
        w,
        "Written by `cargo xtask interop` ([`tools/src/bin/interop/`](../tools/src/bin/interop/)); \
         do not edit by hand: run it again.\n"
    );
    let _ = writeln!(w, "- Date: {}", meta.date);
    let _ = writeln!(
        w,
        "- Kernel: {}; ftp-guard {} (commit {})",
        meta.kernel,
        env!("CARGO_PKG_VERSION"),
        meta.commit
    );
    let planes = args.dataplane.names();
    let _ = writeln!(
        w,
        "- Data paths: {}; gateway data ports {} (data-port reuse check: {REUSE_PORTS}); \
         client run limit {} s",
        planes.join(", "),
        meta.data_ports,
        args.client_timeout
    );
    if meta.filtered {
        let _ = writeln!(w, "- **Partial run**: `interop {}`", meta.args);
    }
    let _ = writeln!(
        w,
        "- Result: **{pass} pass, {fail} fail, {na} n/a** in {:.0} s",
        meta.elapsed.as_secs_f64()
    );
    for plane in planes {
        let mine: Vec<&ServerReport> = reports.iter().filter(|r| r.dataplane == *plane).collect();
        let (p, f, n) = totals_of(&mine, reuse.iter().filter(|r| r.dataplane == *plane));
        let _ = writeln!(w, "  - {plane} data path: {p} pass, {f} fail, {n} n/a");
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Topology (network namespaces, `--topology {}`: {}): client 203.0.113.2 → ftp-guard \
         on the gateway (VIP 203.0.113.1, origin side 198.51.100.1) → origin \
         198.51.100.2:21 with passive range {}-{} and its same-IP checks on (data \
         connections only from the control connection's peer, PORT only to it). A fresh \
         origin and a fresh ftp-guard per server and data path; ftp-guard gives the origin \
         {GATEWAY_CONNECT_TIMEOUT_SECS} s to accept and greet.\n",
        args.topology.name(),
        args.topology.describe(),
        ServerOptions::default().passive_ports.0,
        ServerOptions::default().passive_ports.1,
    );
    let _ = writeln!(
        w,
        "Each matrix cell is one client process through ftp-guard. It passes when the client \
         exits 0, its own protocol trace shows the requested mode's command and no other \
         data-connection command (a silent fallback, e.g. EPSV → PASV, fails), and the data \
         match by SHA-256. LIST: the listing names the test file; RETR: the downloaded {} \
         bytes; STOR: the file on the origin; REST: the local file holds the first third, the \
         trace must show `REST <that offset>`, and the result must be whole. n/a: the client \
         cannot be made to do it over IPv4 (the note says why). Per server: {} small files \
         (100 B – 8 KiB) downloaded on one control connection (ftplib, EPSV: one USER, {} \
         EPSV, {} RETR in its trace), and {} concurrent curl sessions (EPSV) each downloading \
         a different {}-byte file (crossed data connections would show as mismatches).\n",
        args.file_size, args.files, args.files, args.files, args.sessions, args.session_file_size
    );
    let _ = writeln!(w, "## Versions\n");
    let _ = writeln!(w, "| component | version |\n|---|---|");
    let mut seen = Vec::new();
    for r in reports {
        if !seen.contains(&r.kind) {
            seen.push(r.kind);
            let _ = writeln!(w, "| {} (server) | {} |", r.kind.name(), md(&r.version));
        }
    }
    for (c, v) in &meta.client_versions {
        let _ = writeln!(w, "| {} (client) | {} |", c.name(), md(v));
    }
    let _ = writeln!(w);
    if let Some(o) = reports.iter().find_map(|r| r.self_check.as_ref()) {
        let _ = writeln!(
            w,
            "Harness self-check (each client downloading a missing file must fail its run): \
             {}\n",
            cell(o)
        );
    }

    for plane in planes {
        let attach = reports
            .iter()
            .filter(|r| r.dataplane == *plane)
            .map(|r| r.attachments.as_str())
            .find(|a| !a.is_empty())
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        let _ = writeln!(w, "## {plane} data path{attach}\n");
        for r in reports.iter().filter(|r| r.dataplane == *plane) {
            server_section(w, r, args);
        }
        for r in reuse.iter().filter(|r| r.dataplane == *plane) {
            let _ = writeln!(
                w,
                "### Data-port reuse\n\n{} sequential downloads on one control connection \
                 ({}, ftplib, EPSV, {REUSE_PAUSE_SECS} s apart) through a gateway range of 40 \
                 ports ({REUSE_PORTS}), so each port carries several data connections in turn: \
                 {} ({:.1} s)\n",
                args.reuse_transfers,
                r.server.name(),
                cell(&r.outcome),
                r.elapsed.as_secs_f64()
            );
        }
    }

    let _ = writeln!(w, "## What each server needed\n");
    let _ = writeln!(
        w,
        "- **vsftpd** (Debian package): standalone in the foreground, local system user via \
         PAM, `pasv_promiscuous=NO`, `port_promiscuous=NO`, `seccomp_sandbox=NO` and \
         `isolate=NO` (namespaced test hosts), protocol log to a file.\n\
         - **ProFTPD** (Debian proftpd-core, unpacked into /opt/ftp-guard-test: it conflicts \
         with vsftpd as a package; needs libhiredis0.14, libmemcached11, libmemcachedutil2, \
         libpcre2-posix3): inetd mode behind `systemd-socket-activate --inetd --accept`, since \
         the 1.3.8 standalone daemon waits ~200 ms before serving each new session (upstream \
         issue #1623; ~470 ms per login measured here, ~20 ms in inetd mode); local user via \
         mod_auth_unix (`AuthPAM off`), `DefaultRoot` chroot, `DelayEngine off`, \
         `AllowStoreRestart on`, no `AllowForeignAddress`; ExtendedLog of every command.\n\
         - **Pure-FTPd** (Debian pure-ftpd, unpacked likewise; needs libsodium23): standalone \
         in the foreground; the system user through a PureDB entry with its own uid, gid and \
         SHA-512 hash and the FTP root as chrooted home (with `-l unix` the login directory \
         would be the user's home, `/`); `--maxclientsnumber`/`--maxclientsperip` raised from \
         the default 50 to {PURE_FTPD_MAX_CLIENTS} because every session comes from the \
         gateway's one address; the passive range holds twice that, since Pure-FTPd lowers \
         its limit to half the range and sizes its listen backlog from the limit (3 + \
         limit/8); FXP off (default). It logs commands only to syslog (none in the test namespaces): the \
         transfer log goes to a file.\n\
         - **pyftpdlib** (PyPI): a virtual user, `permit_foreign_addresses=False`.\n"
    );
    let _ = writeln!(w, "## Clients\n");
    let _ = writeln!(
        w,
        "- **curl**: `--ftp-pasv [--disable-epsv]`, `--ftp-port - [--disable-eprt]`; trace `-v`.\n\
         - **lftp**: `ftp:passive-mode`, `ftp:prefer-epsv`; over IPv4 it never sends EPRT; \
         trace `debug 5`.\n\
         - **Python ftplib**: a subclass sends exactly the requested verb; trace \
         `set_debuglevel(2)`.\n\
         - **wget**: passive (PASV) by default, `--no-passive-ftp` for PORT; it picks \
         EPSV/EPRT by address family only (IPv6) and cannot upload; `--tries=1` so a retry \
         cannot hide a failure; trace `-d`.\n\
         - **tnftp** (NetBSD ftp): `passive on|off` and `epsv4 on|off` give all four modes, \
         with no fallback to active; it exits 0 after failed commands in a script, so its \
         replies are checked; trace `-d`.\n"
    );
    let failures: Vec<&FailureReport> = reports
        .iter()
        .flat_map(|r| r.failures.iter())
        .chain(reuse.iter().flat_map(|r| r.failures.iter()))
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(w, "## Failures\n");
        for f in failures {
            let _ = writeln!(
                w,
                "<details><summary>{} — {}</summary>\n\n```text\n{}\n\n{}\n```\n</details>\n",
                html(&f.what),
                html(&f.reason),
                trim_lines(&f.detail, 20, 60).replace("```", "'''"),
                f.server_log.replace("```", "'''")
            );
        }
    }
    out
}

fn server_section(w: &mut String, r: &ServerReport, args: &Args) {
    let _ = writeln!(w, "### {} {}\n", r.kind.name(), md(&r.version));
    if let Some(why) = &r.started {
        let _ = writeln!(w, "**Did not start**:\n\n```text\n{}\n```\n", why.trim());
        return;
    }
    let _ = writeln!(w, "| client | mode | LIST | RETR | STOR | REST | note |");
    let _ = writeln!(w, "|---|---|---|---|---|---|---|");
    for row in &r.rows {
        let cells: Vec<String> = row.cells.iter().map(|(_, o)| cell(o)).collect();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            row.client.name(),
            row.mode.verb(),
            cells.join(" | "),
            row.note.as_deref().map(md).unwrap_or_default()
        );
    }
    let _ = writeln!(
        w,
        "\n- {} small files on one control connection: {}\n\
         - {} concurrent sessions: {}\n\
         - Server total: {:.1} s{}{}\n",
        args.files,
        bulk_cell(&r.many_files),
        args.sessions,
        bulk_cell(&r.concurrent),
        r.elapsed.as_secs_f64(),
        if r.counters.is_empty() {
            String::new()
        } else {
            format!("; kernel path counters: {}", r.counters)
        },
        if r.origin_tcp.is_empty() {
            String::new()
        } else {
            format!("; origin kernel: {}", r.origin_tcp)
        }
    );
}

fn totals_of<'a>(
    reports: &[&ServerReport],
    reuse: impl Iterator<Item = &'a ReuseReport>,
) -> (usize, usize, usize) {
    let mut sum = (0, 0, 0);
    for r in reports {
        let (p, f, n) = totals(std::slice::from_ref(*r), &[]);
        sum = (sum.0 + p, sum.1 + f, sum.2 + n);
    }
    for r in reuse {
        match r.outcome {
            Outcome::Pass => sum.0 += 1,
            Outcome::Fail(_) => sum.1 += 1,
            Outcome::NotApplicable(_) => sum.2 += 1,
        }
    }
    sum
}

fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The first `head` and last `tail` lines of `text`.
fn trim_lines(text: &str, head: usize, tail_n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= head + tail_n {
        return text.trim_end().to_owned();
    }
    format!(
        "{}\n[… {} lines …]\n{}",
        lines[..head].join("\n"),
        lines.len() - head - tail_n,
        lines[lines.len() - tail_n..].join("\n")
    )
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn command_stdout(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{}`", command_line(cmd)))?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        command_line(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `abc1234` or `abc1234-dirty`, or "unknown" outside a git checkout.
fn git_commit() -> String {
    let root = default_report();
    let root = root
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(hash) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{hash}-dirty") } else { hash }
        }
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    fn run(trace: &str) -> ClientRun {
        ClientRun {
            command: "x".into(),
            status: std::process::ExitStatus::from_raw(1 << 8),
            stdout: String::new(),
            trace: trace.into(),
        }
    }

    #[test]
    fn peak_overlap_counts_spans_open_together() {
        let t = Instant::now();
        let s = |a: u64, b: u64| (t + Duration::from_millis(a), t + Duration::from_millis(b));
        assert_eq!(peak_overlap(&[]), 0);
        assert_eq!(peak_overlap(&[s(0, 10), s(10, 20), s(20, 30)]), 1);
        assert_eq!(peak_overlap(&[s(0, 10), s(5, 20), s(6, 7), s(30, 40)]), 3);
    }

    #[test]
    fn last_error_prefers_the_last_ftp_error_reply() {
        let curl = run("> EPSV\n< 229 ok (|||1|)\n> RETR x\n< 550 No such file\ncurl: (78) gone\n");
        assert_eq!(last_error(&curl), "550 No such file");
        let ftplib = run("*cmd* 'EPSV'\n*resp* \"425 Can't open data connection\"\n");
        assert_eq!(last_error(&ftplib), "425 Can't open data connection");
        let lftp = run("---> PASV\n<--- 530 Not logged in\n");
        assert_eq!(last_error(&lftp), "530 Not logged in");
        assert_eq!(last_error(&run("no replies\nlast words\n\n")), "last words");
    }

    #[test]
    fn data_verbs_show_a_fallback_once() {
        let r = run("> EPSV\n< 500 no\n> PASV\n> PASV\n> RETR a\n");
        assert_eq!(data_verbs(&r), ["EPSV", "PASV"]);
    }

    #[test]
    fn table_cells_stay_on_one_line() {
        assert_eq!(md("229 (|||40001|)\nnext"), "229 (\\|\\|\\|40001\\|) next");
        assert_eq!(cell(&Outcome::Fail("a|b".into())), "**FAIL**: a\\|b");
        assert_eq!(
            trim_lines("1\n2\n3\n4\n5\n6", 1, 2),
            "1\n[… 3 lines …]\n5\n6"
        );
        assert_eq!(trim_lines("1\n2", 1, 2), "1\n2");
    }

    #[test]
    fn origin_tcp_counters_are_parsed_and_compared() {
        let netstat = |overflows: u64, cookies: u64| {
            format!(
                "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TW\n\
                 TcpExt: {cookies} 0 {overflows} {overflows} 7\n\
                 IpExt: InNoRoutes\nIpExt: 0\n"
            )
        };
        let before = OriginTcp::parse(&netstat(9, 1));
        assert_eq!(
            OriginTcp::growth(before, OriginTcp::parse(&netstat(9, 1))),
            ""
        );
        assert_eq!(
            OriginTcp::growth(before, OriginTcp::parse(&netstat(27, 9))),
            "accept-queue overflows 18, listen drops 18, SYN cookies sent 8"
        );
        assert!(OriginTcp::parse("IpExt: InNoRoutes\nIpExt: 0\n").is_none());
        assert_eq!(OriginTcp::growth(None, before), "");
    }
}

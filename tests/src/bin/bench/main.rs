//! `cargo xtask bench`: single-stream FTP download throughput and CPU cost of each way a
//! gateway can carry the data, measured side by side in one run on one topology.
//!
//! client 203.0.113.2 ── pub0 [gateway] priv0 ── origin 198.51.100.2 (vsftpd, sendfile)
//!
//! Every scenario downloads the same file (on tmpfs) with `curl -o /dev/null`, one stream,
//! EPSV. Rounds are interleaved (round-robin, the starting scenario rotating), so drift of
//! the machine hits every scenario alike. Each scenario is first checked once, untimed: one
//! download to a file whose sha256 must match the payload's (it doubles as a warm-up).
//!
//! Per timed run it samples `/proc/stat` (machine CPU: user+nice+system+irq+softirq of all
//! CPUs, i.e. client, gateway and server together; and softirq alone, where XDP/TC and
//! forwarding run) and this process's own CPU time (`getrusage`: ftp-guard runs in-process
//! here, while curl and vsftpd are other processes).
//!
//! Writes a markdown report and a JSON file to `target/bench/` (timestamped, plus
//! `latest.md` / `latest.json`) and prints the report. Must run as root.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Output,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use ftp_guard_common::Counter;
use ftp_guard_tests::{
    ftp_clients::{DataMode, Login, curl_download, ns_command, random_file, sha256_file},
    ftp_servers::{FtpServer, ServerKind, ServerOptions},
    gateway::RunningGateway,
    netns::{self, CLIENT, GATEWAY, GATEWAY_PRIVATE_IF, GATEWAY_PUBLIC_IF, ORIGIN, Topology},
};
use serde_json::{Value, json};

const VIP: Ipv4Addr = netns::GATEWAY_PUBLIC_IP;
/// The payload's name in the FTP root (a symlink to the tmpfs file).
const PAYLOAD: &str = "payload.bin";
/// Prefix of the payload directory: `<payload-dir>/ftp-guard-bench-<pid>`.
const PAYLOAD_DIR_PREFIX: &str = "ftp-guard-bench-";
/// Pause after each run, so the previous one's teardown (TIME_WAIT, sweeps) is quiet.
const SETTLE: Duration = Duration::from_millis(300);
const GB: f64 = 1e9;
/// Background load (in CPUs) above which the report warns that the machine was busy.
const BUSY_MACHINE: f64 = 0.1;

/// Single-stream FTP download benchmark: plain routing vs ftp-guard's data paths.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Args {
    /// Timed runs per scenario.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Payload size in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    size_mib: u64,
    /// Scenarios to run, comma-separated, in this order (default: routing,userspace,kernel,kernel-xdp;
    /// `--list` shows all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// A tmpfs directory for the payload (the server reads it with sendfile).
    #[arg(long, default_value = "/dev/shm")]
    payload_dir: PathBuf,
    /// Where the reports go (default: <target dir>/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit with status 2 when a target ratio is missed.
    #[arg(long)]
    check: bool,
    /// Repeat a timed run up to this many times when other processes disturbed it (used
    /// more than 0.1 CPU meanwhile).
    #[arg(long, default_value_t = 1)]
    retries: u32,
    /// Before each timed run, wait up to this many seconds for other processes to go
    /// quiet (the machine busy less than 0.1 CPU).
    #[arg(long, default_value_t = 10)]
    quiet_wait: u64,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// How the gateway carries the FTP session in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrier {
    /// No FTP-aware component: the client talks to the origin itself, the gateway routes.
    Routed,
    /// ftp-guard on the gateway (in-process) with these `dataplane` and (if some)
    /// `kernel_hook` settings.
    FtpGuard {
        dataplane: &'static str,
        kernel_hook: Option<&'static str>,
    },
}

struct Scenario {
    name: &'static str,
    about: &'static str,
    carrier: Carrier,
    /// Run without `--scenarios`; the others are there to be asked for.
    default: bool,
}

/// Every scenario, in report order. A new way to carry the data is one more entry (and,
/// for a new kind of setup, one more [`Carrier`]).
const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "routing",
        about: "client → origin, routed by the gateway (ip_forward); no NAT, no ftp-guard",
        carrier: Carrier::Routed,
        default: true,
    },
    Scenario {
        name: "userspace",
        about: "through ftp-guard, data relayed in userspace (dataplane = \"userspace\")",
        carrier: Carrier::FtpGuard {
            dataplane: "userspace",
            kernel_hook: None,
        },
        default: true,
    },
    Scenario {
        name: "kernel",
        about: "through ftp-guard, data NATed in the kernel (dataplane = \"kernel\", \
                kernel_hook = \"auto\": TC on veths, XDP in driver mode on NICs)",
        carrier: Carrier::FtpGuard {
            dataplane: "kernel",
            kernel_hook: None,
        },
        default: true,
    },
    Scenario {
        name: "kernel-xdp",
        about: "as `kernel`, XDP in driver mode (kernel_hook = \"xdp\"): on veth each \
                packet is copied before the program runs",
        carrier: Carrier::FtpGuard {
            dataplane: "kernel",
            kernel_hook: Some("xdp"),
        },
        default: true,
    },
    Scenario {
        name: "kernel-tc",
        about: "as `kernel`, hooked at TC ingress (tcx) instead (kernel_hook = \"tc\")",
        carrier: Carrier::FtpGuard {
            dataplane: "kernel",
            kernel_hook: Some("tc"),
        },
        default: false,
    },
    Scenario {
        name: "kernel-generic",
        about: "as `kernel`, XDP in generic (skb) mode (kernel_hook = \"xdp-generic\")",
        carrier: Carrier::FtpGuard {
            dataplane: "kernel",
            kernel_hook: Some("xdp-generic"),
        },
        default: false,
    },
];

/// A scenario's setup while it is up: torn down when dropped.
struct Active {
    /// Where the client connects (control channel).
    target: SocketAddrV4,
    gateway: Option<RunningGateway>,
}

impl Active {
    /// The kernel path's counters, if this scenario has one.
    fn counters(&self) -> Option<ftp_guard::kernel::Counters> {
        let gateway = self.gateway.as_ref()?;
        gateway.kernel()?;
        Some(gateway.counters())
    }

    /// Where the kernel path's programs are attached (`pub0=xdp-native`, …), if it has one.
    fn attachments(&self) -> Option<Vec<String>> {
        let kernel = self.gateway.as_ref()?.kernel()?.lock().ok()?;
        Some(
            kernel
                .attachments()
                .iter()
                .map(|(ifname, mode)| format!("{ifname}={mode}"))
                .collect(),
        )
    }
}

impl Carrier {
    fn start(self, env: &Env) -> Result<Active> {
        match self {
            Carrier::Routed => {
                // Measure routing clean: nothing of ftp-guard's may be attached.
                for ifname in [GATEWAY_PUBLIC_IF, GATEWAY_PRIVATE_IF] {
                    let out = env.topo.run(GATEWAY, &["ip", "link", "show", ifname])?;
                    let text = String::from_utf8_lossy(&out.stdout);
                    ensure!(
                        !text.contains("xdp"),
                        "an XDP program is still attached to {ifname}: {text}"
                    );
                }
                Ok(Active {
                    target: env.server.addr(),
                    gateway: None,
                })
            }
            Carrier::FtpGuard {
                dataplane,
                kernel_hook,
            } => {
                let mut config = format!(
                    "[[service]]\nname = \"bench\"\nlisten = \"{VIP}:21\"\norigin = \"{}\"\n\
                     data_ports = \"40000-40099\"\nclient_interface = \"{GATEWAY_PUBLIC_IF}\"\n\
                     origin_interface = \"{GATEWAY_PRIVATE_IF}\"\ndataplane = \"{dataplane}\"\n",
                    env.server.addr()
                );
                if let Some(hook) = kernel_hook {
                    config += &format!("kernel_hook = \"{hook}\"\n");
                }
                let gateway = RunningGateway::start(&env.topo, &config)
                    .with_context(|| format!("starting ftp-guard (dataplane {dataplane})"))?;
                Ok(Active {
                    target: SocketAddrV4::new(VIP, 21),
                    gateway: Some(gateway),
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Environment

/// The topology, the origin server and the payload, shared by every scenario.
struct Env {
    topo: Topology,
    server: FtpServer,
    payload: Payload,
}

/// The payload file in its own tmpfs directory, removed when dropped.
struct Payload {
    dir: PathBuf,
    file: PathBuf,
    size: u64,
    sha256: String,
}

impl Drop for Payload {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Payload {
    fn create(base: &Path, size: u64) -> Result<Payload> {
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
    fn start(args: &Args) -> Result<Env> {
        let topo = Topology::standard("bench")?;
        // XDP redirect into a veth needs NAPI on the receiving end: GRO turns it on. Set
        // once for every scenario alike.
        for role in [CLIENT, ORIGIN] {
            topo.run(role, &["ethtool", "-K", netns::HOST_IF, "gro", "on"])?;
        }
        let server = FtpServer::start(
            topo.ns_name(ORIGIN),
            ServerKind::Vsftpd,
            ServerOptions {
                listen: SocketAddrV4::new(netns::ORIGIN_IP, 21),
                ..ServerOptions::default()
            },
        )?;
        eprintln!(
            "writing the {} MiB payload to {} …",
            args.size_mib,
            args.payload_dir.display()
        );
        let payload = Payload::create(&args.payload_dir, args.size_mib << 20)?;
        let link = server.root().join(PAYLOAD);
        std::os::unix::fs::symlink(&payload.file, &link)
            .with_context(|| format!("symlink {}", link.display()))?;
        Ok(Env {
            topo,
            server,
            payload,
        })
    }

    fn login(&self, target: SocketAddrV4) -> Login {
        Login {
            addr: target,
            ..self.server.login()
        }
    }

    /// One untimed download to a file, checked by sha256 and by the protocol trace (EPSV);
    /// for a kernel path, also that the programs NATed and redirected the data.
    fn verify(&self, scenario: &Scenario) -> Result<()> {
        let active = scenario.carrier.start(self)?;
        let dest = self
            .payload
            .dir
            .join(format!("verify-{}.bin", scenario.name));
        let result = (|| {
            let login = self.login(active.target);
            let run = curl_download(
                self.topo.ns_name(CLIENT),
                &login,
                PAYLOAD,
                &dest,
                DataMode::Epsv,
            )?
            .success()?;
            run.check_mode(DataMode::Epsv)?;
            let got = sha256_file(&dest)?;
            ensure!(
                got == self.payload.sha256,
                "{}: the downloaded file's sha256 is {got}, the payload's {}",
                scenario.name,
                self.payload.sha256
            );
            if let Some(c) = active.counters() {
                ensure!(
                    c.get(Counter::NatToClient) > 0 && c.get(Counter::Redirected) > 0,
                    "{}: the kernel path did not carry the data: {c:?}",
                    scenario.name
                );
            }
            Ok(())
        })();
        let _ = fs::remove_file(&dest);
        result
    }

    /// One timed download to /dev/null.
    fn timed(&self, scenario: &Scenario) -> Result<Sample> {
        let active = scenario.carrier.start(self)?;
        let login = self.login(active.target);
        let mut curl = ns_command(self.topo.ns_name(CLIENT))?;
        curl.args([
            "curl",
            "-sS",
            "--ftp-pasv",
            "--user",
            &format!("{}:{}", login.user, login.password),
            "--connect-timeout",
            "10",
            "--max-time",
            "900",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            &login.url(PAYLOAD),
        ]);
        let others0 = others_cpu();
        let (cpu0, own0) = (MachineCpu::now()?, own_cpu_seconds());
        let started = Instant::now();
        let out = curl.output().context("running curl")?;
        let wall = started.elapsed().as_secs_f64();
        let (cpu1, own1) = (MachineCpu::now()?, own_cpu_seconds());
        let others = others_cpu_since(&others0, &others_cpu());
        let (bytes, seconds) = parse_curl(&out)?;
        ensure!(
            bytes == self.payload.size,
            "{}: curl got {bytes} bytes of {}",
            scenario.name,
            self.payload.size
        );
        let counters = active.counters().map(|c| {
            c.0.iter()
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| (c.name().to_owned(), *n))
                .collect()
        });
        let attachments = active.attachments();
        drop(active);
        Ok(Sample {
            bytes,
            seconds,
            wall_seconds: wall,
            machine_cpu_seconds: cpu1.busy_since(&cpu0),
            softirq_seconds: cpu1.softirq_since(&cpu0),
            gateway_cpu_seconds: own1 - own0,
            others_cpu_seconds: others,
            counters,
            attachments,
        })
    }
}

/// `%{size_download} %{time_total}` from curl's stdout, after checking its exit status.
fn parse_curl(out: &Output) -> Result<(u64, f64)> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "curl failed ({}): {}{}",
        out.status,
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut words = stdout.split_whitespace();
    let (Some(bytes), Some(secs)) = (words.next(), words.next()) else {
        bail!("unexpected curl -w output {stdout:?}");
    };
    let bytes: u64 = bytes
        .parse()
        .with_context(|| format!("size_download in {stdout:?}"))?;
    let secs: f64 = secs
        .parse()
        .with_context(|| format!("time_total in {stdout:?}"))?;
    ensure!(secs > 0.0, "curl reported time_total {secs}");
    Ok((bytes, secs))
}

// ---------------------------------------------------------------------------------------
// CPU accounting

/// The aggregate `cpu` line of /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MachineCpu {
    /// user + nice + system + irq + softirq (not idle, iowait, steal).
    busy: u64,
    softirq: u64,
}

impl MachineCpu {
    fn now() -> Result<MachineCpu> {
        let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&text).context("no aggregate cpu line in /proc/stat")
    }

    fn parse(stat: &str) -> Option<MachineCpu> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal guest guest_nice
        let field = |i: usize| f.get(i).copied();
        Some(MachineCpu {
            busy: field(0)? + field(1)? + field(2)? + field(5)? + field(6)?,
            softirq: field(6)?,
        })
    }

    fn busy_since(&self, before: &MachineCpu) -> f64 {
        ticks_to_seconds(self.busy.saturating_sub(before.busy))
    }

    fn softirq_since(&self, before: &MachineCpu) -> f64 {
        ticks_to_seconds(self.softirq.saturating_sub(before.softirq))
    }
}

/// CPUs' worth of busy time over `span` of idleness of ours: others' work on the machine.
fn background_load(span: Duration) -> Result<f64> {
    let before = MachineCpu::now()?;
    let started = Instant::now();
    std::thread::sleep(span);
    let after = MachineCpu::now()?;
    Ok(after.busy_since(&before) / started.elapsed().as_secs_f64())
}

/// Waits until the machine is quiet (see [`BUSY_MACHINE`]) or `max` has passed; returns
/// the time waited.
fn wait_for_quiet(max: Duration) -> Result<Duration> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let load = background_load(Duration::from_millis(250))?;
        if load <= BUSY_MACHINE || started.elapsed() >= max {
            return Ok(started.elapsed());
        }
        if !said {
            eprintln!("  others use {load:.2} CPUs: waiting up to {max:?} for quiet");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(750));
    }
}

/// CPU ticks (utime+stime+cutime+cstime) of every process that is not part of the
/// benchmark, by pid: an indicator of other work on the machine during a run. Ours are this
/// process, its descendants (curl, vsftpd and its sessions) and kernel threads (ksoftirqd
/// carries our packets). A foreign parent's cutime jumps by a child's whole life when it
/// reaps it, so this over-counts rather than misses.
fn others_cpu() -> BTreeMap<u32, u64> {
    let own = std::process::id();
    // pid → (ppid, kernel thread, ticks)
    let mut procs: BTreeMap<u32, (u32, bool, u64)> = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(p) = parse_pid_stat(&stat) {
            procs.insert(pid, p);
        }
    }
    let ours = |mut pid: u32| {
        for _ in 0..64 {
            match procs.get(&pid) {
                _ if pid == own => return true,
                Some((_, true, _)) => return true,
                Some((ppid, false, _)) if *ppid > 1 => pid = *ppid,
                _ => return false,
            }
        }
        false
    };
    procs
        .iter()
        .filter(|(pid, _)| !ours(**pid))
        .map(|(pid, (_, _, ticks))| (*pid, *ticks))
        .collect()
}

/// (ppid, is a kernel thread, utime+stime+cutime+cstime) from a /proc/<pid>/stat line.
fn parse_pid_stat(stat: &str) -> Option<(u32, bool, u64)> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    // The command name is in parentheses and may hold anything: fields follow the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    let ppid = u32::try_from(num(1)?).ok()?;
    let kthread = num(6)? & PF_KTHREAD != 0 || ppid == 2;
    Some((ppid, kthread, num(11)? + num(12)? + num(13)? + num(14)?))
}

/// Seconds of CPU that processes other than ours used between two [`others_cpu`] scans.
fn others_cpu_since(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> f64 {
    let ticks = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks_to_seconds(ticks)
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// User + system CPU seconds of this whole process (every thread, ftp-guard's included;
/// not its children, which are counted only once waited for and only as children).
fn own_cpu_seconds() -> f64 {
    // SAFETY: a zeroed out-struct for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF cannot fail with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

// ---------------------------------------------------------------------------------------
// Samples and statistics

/// One timed download.
#[derive(Debug, Clone)]
struct Sample {
    bytes: u64,
    /// curl's time_total (login, EPSV, RETR, until the last byte).
    seconds: f64,
    /// Around the whole curl process: the CPU sampling window.
    wall_seconds: f64,
    machine_cpu_seconds: f64,
    softirq_seconds: f64,
    gateway_cpu_seconds: f64,
    /// CPU used meanwhile by processes that are not part of the benchmark (see
    /// [`others_cpu`]): the run is disturbed when this is more than a trifle.
    others_cpu_seconds: f64,
    /// Non-zero kernel path counters, for scenarios with one.
    counters: Option<BTreeMap<String, u64>>,
    /// Where the kernel path was attached, for scenarios with one.
    attachments: Option<Vec<String>>,
}

impl Sample {
    /// Other processes' CPU during the run, in CPUs (at most the machine's: the measure
    /// over-counts, see [`others_cpu`]).
    fn others_load(&self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        (self.others_cpu_seconds / self.wall_seconds.max(1e-3)).min(cpus as f64)
    }

    fn disturbed(&self) -> bool {
        self.others_load() > BUSY_MACHINE
    }
}

/// What the report shows per scenario, from one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    Throughput,
    MachineCpu,
    Softirq,
    GatewayCpu,
}

impl Metric {
    const ALL: [Metric; 4] = [
        Metric::Throughput,
        Metric::MachineCpu,
        Metric::Softirq,
        Metric::GatewayCpu,
    ];

    fn key(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput_gbit_s",
            Metric::MachineCpu => "machine_cpu_s_per_gb",
            Metric::Softirq => "softirq_s_per_gb",
            Metric::GatewayCpu => "gateway_process_cpu_s_per_gb",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput, Gbit/s",
            Metric::MachineCpu => "machine CPU, s/GB",
            Metric::Softirq => "of which softirq, s/GB",
            Metric::GatewayCpu => "ftp-guard process CPU, s/GB",
        }
    }

    fn of(self, s: &Sample) -> f64 {
        let gb = s.bytes as f64 / GB;
        match self {
            Metric::Throughput => s.bytes as f64 * 8.0 / s.seconds / GB,
            Metric::MachineCpu => s.machine_cpu_seconds / gb,
            Metric::Softirq => s.softirq_seconds / gb,
            Metric::GatewayCpu => s.gateway_cpu_seconds / gb,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn json(&self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

/// A scenario's results.
struct Results<'a> {
    scenario: &'a Scenario,
    samples: Vec<(u32, Sample)>,
}

impl Results<'_> {
    fn summary(&self, metric: Metric) -> Option<Summary> {
        let values: Vec<f64> = self.samples.iter().map(|(_, s)| metric.of(s)).collect();
        Summary::of(&values)
    }

    /// Kernel path counters summed over the timed runs.
    fn counter_totals(&self) -> Option<BTreeMap<String, u64>> {
        let mut totals = BTreeMap::new();
        let mut any = false;
        for (_, s) in &self.samples {
            if let Some(c) = &s.counters {
                any = true;
                for (k, v) in c {
                    *totals.entry(k.clone()).or_insert(0) += v;
                }
            }
        }
        any.then_some(totals)
    }
}

// ---------------------------------------------------------------------------------------
// Targets

#[derive(Clone, Copy, Debug)]
enum Bound {
    AtLeast(f64),
    Below(f64),
    /// Reported, not judged.
    Info,
}

/// A ratio of medians, `metric(numerator) / metric(denominator)`, with what the issue asks.
struct Target {
    label: &'static str,
    metric: Metric,
    numerator: &'static str,
    denominator: &'static str,
    bound: Bound,
}

const TARGETS: &[Target] = &[
    Target {
        label: "throughput kernel / routing",
        metric: Metric::Throughput,
        numerator: "kernel",
        denominator: "routing",
        bound: Bound::AtLeast(0.95),
    },
    Target {
        label: "throughput kernel / userspace",
        metric: Metric::Throughput,
        numerator: "kernel",
        denominator: "userspace",
        bound: Bound::AtLeast(2.0),
    },
    Target {
        label: "machine CPU per GB kernel / userspace",
        metric: Metric::MachineCpu,
        numerator: "kernel",
        denominator: "userspace",
        bound: Bound::Below(1.0),
    },
    Target {
        label: "ftp-guard process CPU per GB kernel / userspace",
        metric: Metric::GatewayCpu,
        numerator: "kernel",
        denominator: "userspace",
        bound: Bound::Below(1.0),
    },
    Target {
        label: "machine CPU per GB kernel / routing",
        metric: Metric::MachineCpu,
        numerator: "kernel",
        denominator: "routing",
        bound: Bound::Info,
    },
    Target {
        label: "throughput kernel-xdp / routing",
        metric: Metric::Throughput,
        numerator: "kernel-xdp",
        denominator: "routing",
        bound: Bound::Info,
    },
    Target {
        label: "machine CPU per GB kernel-xdp / kernel",
        metric: Metric::MachineCpu,
        numerator: "kernel-xdp",
        denominator: "kernel",
        bound: Bound::Info,
    },
];

struct RatioResult<'a> {
    target: &'a Target,
    value: f64,
    met: bool,
}

fn ratios(results: &[Results<'_>]) -> Vec<RatioResult<'static>> {
    let median = |name: &str, metric: Metric| {
        results
            .iter()
            .find(|r| r.scenario.name == name)
            .and_then(|r| r.summary(metric))
            .map(|s| s.median)
    };
    TARGETS
        .iter()
        .filter_map(|t| {
            let value = median(t.numerator, t.metric)? / median(t.denominator, t.metric)?;
            let met = match t.bound {
                Bound::AtLeast(x) => value >= x,
                Bound::Below(x) => value < x,
                Bound::Info => true,
            };
            Some(RatioResult {
                target: t,
                value,
                met,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Report

/// What the report says about the machine and the settings.
struct Facts {
    date: String,
    stamp: String,
    kernel: String,
    cpus: usize,
    cpu_model: String,
    mem_gib: f64,
    commit: String,
    vsftpd: String,
    curl: String,
    size: u64,
    runs: u32,
    offloads: BTreeMap<String, String>,
    /// CPUs' worth of work the machine did, idle of ours, just before the runs.
    background_cpus: f64,
    /// Timed runs repeated because other processes disturbed them.
    retried_runs: u32,
}

impl Facts {
    fn collect(args: &Args, env: &Env, background_cpus: f64) -> Facts {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (y, mo, d, h, mi, s) = utc(now);
        let first_line = |text: String| text.lines().next().unwrap_or("").trim().to_owned();
        let command = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_owned());
        let mem_kib: f64 = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."));
        let root = root.to_string_lossy();
        let mut commit = first_line(command(&[
            "git",
            "-C",
            &root,
            "rev-parse",
            "--short",
            "HEAD",
        ]));
        if !command(&["git", "-C", &root, "status", "--porcelain", "-uno"])
            .trim()
            .is_empty()
        {
            commit += " (modified)";
        }
        let mut offloads = BTreeMap::new();
        for (role, ifname) in [
            (CLIENT, netns::HOST_IF),
            (GATEWAY, GATEWAY_PUBLIC_IF),
            (GATEWAY, GATEWAY_PRIVATE_IF),
            (ORIGIN, netns::HOST_IF),
        ] {
            let Ok(out) = env.topo.run(role, &["ethtool", "-k", ifname]) else {
                continue;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let wanted = [
                "tx-checksumming",
                "scatter-gather",
                // The real TSO state (the parent `tcp-segmentation-offload` says "on" when
                // any child, e.g. accecn, is on).
                "tx-tcp-segmentation",
                "generic-segmentation-offload",
                "generic-receive-offload",
            ];
            let features: Vec<String> = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| wanted.contains(&k.trim()))
                .map(|(k, v)| {
                    let on = v.trim().starts_with("on");
                    format!("{} {}", abbreviate(k.trim()), if on { "on" } else { "off" })
                })
                .collect();
            offloads.insert(format!("{role}/{ifname}"), features.join(", "));
        }
        Facts {
            date: format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC"),
            stamp: format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            mem_gib: mem_kib / (1 << 20) as f64,
            commit,
            vsftpd: command(&["dpkg-query", "-W", "-f=${Version}", "vsftpd"])
                .trim()
                .to_owned(),
            curl: first_line(command(&["curl", "--version"]))
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned(),
            size: env.payload.size,
            runs: args.runs,
            offloads,
            background_cpus,
            retried_runs: 0,
        }
    }

    fn json(&self) -> Value {
        json!({
            "date": self.date,
            "kernel": self.kernel,
            "cpus": self.cpus,
            "cpu_model": self.cpu_model,
            "mem_gib": self.mem_gib,
            "commit": self.commit,
            "vsftpd": self.vsftpd,
            "curl": self.curl,
            "payload_bytes": self.size,
            "runs_per_scenario": self.runs,
            "offloads": self.offloads,
            "background_cpus": self.background_cpus,
            "retried_runs": self.retried_runs,
        })
    }
}

fn abbreviate(feature: &str) -> &str {
    match feature {
        "tx-checksumming" => "tx-csum",
        "scatter-gather" => "sg",
        "tx-tcp-segmentation" => "tso",
        "generic-segmentation-offload" => "gso",
        "generic-receive-offload" => "gro",
        other => other,
    }
}

/// (year, month, day, hour, minute, second) in UTC of a Unix time (proleptic Gregorian;
/// Howard Hinnant's days-to-civil).
fn utc(unix: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (unix / 86_400) as i64;
    let secs = (unix % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Three significant digits at most (two decimals from 0.1 up), plain notation.
fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 0.1 || x == 0.0 {
        format!("{x:.2}")
    } else {
        // Two significant digits: 0.0123 → 0.012, 0.00051 → 0.00051.
        let decimals = (-x.abs().log10()).ceil() as usize + 1;
        format!("{x:.decimals$}")
    }
}

fn cell(s: Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "**{}** ({}–{})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        ),
        None => "–".into(),
    }
}

fn markdown(facts: &Facts, results: &[Results<'_>], ratios: &[RatioResult<'_>]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## ftp-guard benchmark, {}\n", facts.date);
    let _ = writeln!(
        md,
        "Linux {} · {} CPUs ({}) · {:.1} GiB RAM · commit {}  ",
        facts.kernel, facts.cpus, facts.cpu_model, facts.mem_gib, facts.commit
    );
    let _ = writeln!(
        md,
        "Single-stream download: curl {} RETR (EPSV) to /dev/null of a {} MiB file from vsftpd \
         {} (sendfile, tmpfs); {} timed runs per scenario, interleaved round-robin, each \
         scenario first verified by sha256 (untimed). Cells: **median** (min–max); GB = 10⁹ \
         bytes.  ",
        facts.curl,
        facts.size >> 20,
        facts.vsftpd,
        facts.runs
    );
    let offloads: Vec<String> = facts
        .offloads
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(md, "Offloads: {}.  ", offloads.join("; "));
    let samples = || {
        results
            .iter()
            .flat_map(|r| r.samples.iter().map(|(_, s)| s))
    };
    let kept_disturbed = samples().filter(|s| s.disturbed()).count();
    let worst = samples().map(Sample::others_load).fold(0.0, f64::max);
    let _ = writeln!(
        md,
        "Other processes: {:.2} CPUs busy before the runs, at most {:.2} CPUs during a kept \
         run; {} runs repeated because disturbed (> {BUSY_MACHINE} CPUs){}\n",
        facts.background_cpus,
        worst,
        facts.retried_runs,
        if kept_disturbed > 0 {
            format!(", **{kept_disturbed} kept disturbed: figures are noisy**")
        } else {
            String::new()
        }
    );

    let _ = write!(md, "| scenario |");
    for m in Metric::ALL {
        let _ = write!(md, " {} |", m.heading());
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---|".repeat(Metric::ALL.len()));
    for r in results {
        let _ = write!(md, "| `{}` |", r.scenario.name);
        for m in Metric::ALL {
            let _ = write!(md, " {} |", cell(r.summary(m)));
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md);
    for r in results {
        let _ = writeln!(md, "- `{}`: {}", r.scenario.name, r.scenario.about);
    }
    let _ = writeln!(md);

    if !ratios.is_empty() {
        let _ = writeln!(md, "| ratio of medians | value | target | |");
        let _ = writeln!(md, "|---|---|---|---|");
        for r in ratios {
            let (target, verdict) = match r.target.bound {
                Bound::AtLeast(x) => (format!("≥ {x}"), if r.met { "met" } else { "MISSED" }),
                Bound::Below(x) => (format!("< {x}"), if r.met { "met" } else { "MISSED" }),
                Bound::Info => ("(info)".to_owned(), ""),
            };
            let _ = writeln!(
                md,
                "| {} | **{}** | {target} | {verdict} |",
                r.target.label,
                fmt_num(r.value)
            );
        }
        let _ = writeln!(md);
    }

    if results.iter().any(|r| r.counter_totals().is_some()) {
        let _ = writeln!(md, "Kernel paths:\n");
    }
    for r in results {
        if let Some(totals) = r.counter_totals() {
            let get = |k: &str| totals.get(k).copied().unwrap_or(0);
            let nat = get(Counter::NatToClient.name()) + get(Counter::NatToOrigin.name());
            let redirected = get(Counter::Redirected.name());
            let attached = r
                .samples
                .first()
                .and_then(|(_, s)| s.attachments.as_ref())
                .map_or_else(|| "?".to_owned(), |a| a.join(", "));
            let _ = writeln!(
                md,
                "- `{}` ({attached}), over the timed runs: {} packets NATed, {} redirected by \
                 the program ({:.1} %), {} forwarded by the stack; drops: {}.",
                r.scenario.name,
                nat,
                redirected,
                if nat > 0 {
                    redirected as f64 * 100.0 / nat as f64
                } else {
                    0.0
                },
                get(Counter::ForwardedByStack.name()),
                {
                    let drops: Vec<String> = totals
                        .iter()
                        .filter(|(k, _)| k.starts_with("drop_"))
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect();
                    if drops.is_empty() {
                        "none".into()
                    } else {
                        drops.join(", ")
                    }
                }
            );
        }
    }
    md
}

fn to_json(facts: &Facts, results: &[Results<'_>], ratios: &[RatioResult<'_>]) -> Value {
    let scenarios: Vec<Value> = results
        .iter()
        .map(|r| {
            let summary: serde_json::Map<String, Value> = Metric::ALL
                .iter()
                .filter_map(|m| Some((m.key().to_owned(), r.summary(*m)?.json())))
                .collect();
            let runs: Vec<Value> = r
                .samples
                .iter()
                .map(|(round, s)| {
                    json!({
                        "round": round,
                        "bytes": s.bytes,
                        "seconds": s.seconds,
                        "wall_seconds": s.wall_seconds,
                        "machine_cpu_seconds": s.machine_cpu_seconds,
                        "softirq_seconds": s.softirq_seconds,
                        "gateway_process_cpu_seconds": s.gateway_cpu_seconds,
                        "other_processes_cpu_seconds": s.others_cpu_seconds,
                        "throughput_gbit_s": Metric::Throughput.of(s),
                        "kernel_counters": s.counters,
                        "kernel_attachments": s.attachments,
                    })
                })
                .collect();
            json!({
                "name": r.scenario.name,
                "about": r.scenario.about,
                "summary": summary,
                "runs": runs,
            })
        })
        .collect();
    let ratios: Vec<Value> = ratios
        .iter()
        .map(|r| {
            let bound = match r.target.bound {
                Bound::AtLeast(x) => json!({ "at_least": x }),
                Bound::Below(x) => json!({ "below": x }),
                Bound::Info => Value::Null,
            };
            json!({
                "label": r.target.label,
                "metric": r.target.metric.key(),
                "numerator": r.target.numerator,
                "denominator": r.target.denominator,
                "value": r.value,
                "target": bound,
                "met": r.met,
            })
        })
        .collect();
    json!({ "machine": facts.json(), "scenarios": scenarios, "ratios": ratios })
}

fn default_out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .join("target")
        });
    target.join("bench")
}

fn write_reports(dir: &Path, stamp: &str, md: &str, json: &Value) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(json)? + "\n";
    for name in [format!("bench-{stamp}"), "latest".to_owned()] {
        for (ext, text) in [("md", md), ("json", json.as_str())] {
            let path = dir.join(format!("{name}.{ext}"));
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    eprintln!(
        "reports: {}/bench-{stamp}.{{md,json}} (and latest.*)",
        dir.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Main

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(2),
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn selected(args: &Args) -> Result<Vec<&'static Scenario>> {
    if args.scenarios.is_empty() {
        return Ok(SCENARIOS.iter().filter(|s| s.default).collect());
    }
    args.scenarios
        .iter()
        .map(|name| {
            SCENARIOS.iter().find(|s| s.name == name).with_context(|| {
                let known: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
                format!("unknown scenario {name:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

/// Returns whether every target was met (always true without `--check`).
fn run(args: &Args) -> Result<bool> {
    let scenarios = selected(args)?;
    if args.list {
        for s in SCENARIOS {
            let default = if s.default { "(default)" } else { "" };
            println!("{:<15} {default:<9} {}", s.name, s.about);
        }
        return Ok(true);
    }
    ensure!(
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the benchmark needs root (network namespaces, eBPF): run `cargo xtask bench` as root"
    );
    // Ctrl-C ends the running curl (same process group); we then stop and clean up
    // (namespaces, payload) instead of dying with them in place.
    let handler = on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
    let started = Instant::now();
    let env = Env::start(args)?;

    for s in &scenarios {
        eprintln!("verifying `{}`: one download, sha256 …", s.name);
        env.verify(s)
            .with_context(|| format!("verifying scenario `{}`", s.name))?;
    }

    let background = background_load(Duration::from_secs(1))?;
    if background > BUSY_MACHINE {
        eprintln!(
            "warning: the machine is busy ({background:.2} CPUs of other work): figures will \
             be noisy"
        );
    }
    let mut facts = Facts::collect(args, &env, background);

    let mut results: Vec<Results> = scenarios
        .iter()
        .map(|s| Results {
            scenario: s,
            samples: Vec::new(),
        })
        .collect();
    let n = scenarios.len();
    let mut retried = 0;
    for round in 0..args.runs {
        for k in 0..n {
            // Rotate who goes first, so no scenario always follows the same one.
            let i = (k + round as usize) % n;
            ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
            let scenario = results[i].scenario;
            let mut attempt = 0;
            let sample = loop {
                wait_for_quiet(Duration::from_secs(args.quiet_wait))?;
                let sample = env.timed(scenario).with_context(|| {
                    format!("round {}, scenario `{}`", round + 1, scenario.name)
                })?;
                std::thread::sleep(SETTLE);
                eprintln!(
                    "round {}/{} {:<14} {:>6.2} Gbit/s  machine CPU {:.2} s/GB  softirq {:.2} \
                     s/GB  ftp-guard {:.4} s/GB  others {:.2} CPUs",
                    round + 1,
                    args.runs,
                    scenario.name,
                    Metric::Throughput.of(&sample),
                    Metric::MachineCpu.of(&sample),
                    Metric::Softirq.of(&sample),
                    Metric::GatewayCpu.of(&sample),
                    sample.others_load(),
                );
                if !sample.disturbed() || attempt >= args.retries {
                    break sample;
                }
                attempt += 1;
                retried += 1;
                eprintln!("  disturbed by other processes: once more");
            };
            results[i].samples.push((round + 1, sample));
        }
    }

    facts.retried_runs = retried;
    let ratios = ratios(&results);
    let md = markdown(&facts, &results, &ratios);
    let json = to_json(&facts, &results, &ratios);
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    write_reports(&out, &facts.stamp, &md, &json)?;
    println!("{md}");
    eprintln!(
        "bench: {:.0} s in all",
        started.elapsed().as_secs_f64().round()
    );
    Ok(!args.check || ratios.iter().all(|r| r.met))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_line() {
        let stat = "cpu  100 5 50 1000 7 3 11 2 0 0\ncpu0 50 2 25 500 3 1 5 1 0 0\n";
        assert_eq!(
            MachineCpu::parse(stat),
            Some(MachineCpu {
                busy: 100 + 5 + 50 + 3 + 11,
                softirq: 11
            })
        );
        assert_eq!(MachineCpu::parse("intr 1 2 3\n"), None);
    }

    #[test]
    fn summary_median_min_max() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc(1_767_225_599), (2025, 12, 31, 23, 59, 59));
    }

    #[test]
    fn targets_name_known_scenarios() {
        for t in TARGETS {
            for name in [t.numerator, t.denominator] {
                assert!(SCENARIOS.iter().any(|s| s.name == name), "{name}");
            }
        }
    }

    #[test]
    fn pid_stat_fields() {
        let stat = "1234 (a (b) c) S 77 1234 1234 0 -1 4194560 100 0 0 0 11 22 33 44 20 0 1 0";
        assert_eq!(parse_pid_stat(stat), Some((77, false, 11 + 22 + 33 + 44)));
        let kthread = "15 (ksoftirqd/1) S 2 0 0 0 -1 69238848 0 0 0 0 5 6 0 0 20 0 1 0";
        assert_eq!(parse_pid_stat(kthread), Some((2, true, 11)));
        assert_eq!(parse_pid_stat("garbage"), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.0), "0.00");
        assert_eq!(fmt_num(0.0123), "0.012");
        assert_eq!(fmt_num(0.00051), "0.00051");
        assert_eq!(fmt_num(f64::NAN), "–");
    }

    #[test]
    fn curl_write_out() {
        use std::os::unix::process::ExitStatusExt as _;
        let out = Output {
            status: std::process::ExitStatus::from_raw(0),
            stdout: b"1073741824 4.250000".to_vec(),
            stderr: Vec::new(),
        };
        assert_eq!(parse_curl(&out).unwrap(), (1_073_741_824, 4.25));
    }
}

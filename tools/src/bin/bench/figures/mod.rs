//! What the benchmark measures: each [`Figure`] is one kind of run, yielding one
//! [`Sample`] of its [`Metric`]s per scenario and round.
use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Child, Stdio},
    sync::{Arc, Barrier, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    ftp_clients::{DataMode, curl_download, ns_command, sha256_file},
    ftp_load::{self, FtpControl, Passive},
    netns::CLIENT,
};
use serde_json::{Value, json};

use crate::{
    cpu::{self, MachineCpu},
    env::{Env, OffloadsOn, PAYLOAD, SMALL, SMALL_SIZE},
    memory,
    scenarios::{Active, Carrier, DATA_PORTS, NARROW_DATA_PORTS, Scenario},
};

const GB: f64 = 1e9;
/// Per-operation timeout of the load clients: a stall is a failure, not a slow sample.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// A download slower than this on average (bytes/s, i.e. 100 Mbit/s) is cut off by curl's
/// `--max-time` as failed: a stall at the end of a transfer (the 226 never comes) ends
/// the run within a bound known in advance.
const MIN_DOWNLOAD_RATE: f64 = 12.5e6;
/// After a failed attempt a `data-conns` worker waits this long before the next, as a
/// client that retries would: a 425 comes back at once, and without a pause the failures
/// would pile up at the rate of control replies and eat the CPU the others need.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Figure {
    Throughput,
    /// Single-stream download with rx/tx checksum offload on the veths (their default).
    ThroughputOffload,
    Streams,
    Sessions,
    /// Short passive data connections on long-lived control connections, through a
    /// 100-port public data range.
    DataConns,
    Latency,
    Leases,
    Memory,
}

/// How big each figure's runs are (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    pub streams: usize,
    pub session_seconds: f64,
    pub session_workers: usize,
    pub latency_samples: usize,
    pub lease_connections: usize,
    pub leases_per_connection: usize,
    pub idle_sessions: usize,
    pub data_conn_seconds: f64,
    pub data_conn_workers: usize,
    /// How long one operation may make no progress (a connect, a reply, a download's
    /// data) before it counts as failed.
    pub stall: Duration,
    pub ftp_guard_bin: std::path::PathBuf,
}

impl Figure {
    pub const ALL: [Figure; 8] = [
        Figure::Throughput,
        Figure::ThroughputOffload,
        Figure::Streams,
        Figure::Sessions,
        Figure::DataConns,
        Figure::Latency,
        Figure::Leases,
        Figure::Memory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Figure::Throughput => "throughput",
            Figure::ThroughputOffload => "throughput-offload",
            Figure::Streams => "streams",
            Figure::Sessions => "sessions",
            Figure::DataConns => "data-conns",
            Figure::Latency => "latency",
            Figure::Leases => "leases",
            Figure::Memory => "memory",
        }
    }

    pub fn title(self, s: &Settings) -> String {
        match self {
            Figure::Throughput => "Single-stream download".into(),
            Figure::ThroughputOffload => {
                "Single-stream download, checksum offload on (veth default)".into()
            }
            Figure::Streams => format!("{} parallel downloads", s.streams),
            Figure::Sessions => "Sessions per second".into(),
            Figure::DataConns => format!(
                "Data connections per second through a {}-port data range",
                port_count(NARROW_DATA_PORTS)
            ),
            Figure::Latency => "Control-reply latency".into(),
            Figure::Leases => "Passive data-port allocation rate".into(),
            Figure::Memory => format!("Memory with {} idle control sessions", s.idle_sessions),
        }
    }

    /// The method, for the report.
    pub fn method(self, s: &Settings, env: &Env) -> String {
        let mib = env.payload.size >> 20;
        match self {
            Figure::Throughput => format!(
                "curl RETR (EPSV) of a {mib} MiB file from vsftpd (sendfile, tmpfs) to \
                 /dev/null; throughput from curl's time_total; CPU sampled around the curl \
                 process (machine: all CPUs' user+system+irq+softirq, i.e. client, gateway and \
                 server together; ftp-guard process: this process, where ftp-guard runs). A run fails (and stops the benchmark) if the \
                 download fails, makes no progress for {stall} s or runs slower than \
                 100 Mbit/s.",
                stall = s.stall.as_secs_f64()
            ),
            Figure::ThroughputOffload => format!(
                "As the single-stream download, but with rx and tx checksum offload turned \
                 on (`ethtool -K rx on tx on`, the veth default; TSO/GSO follow) on all four \
                 veth ends for the run, and back off after. Packets then cross the veths \
                 with partial or unverified checksums, as they reach a NIC that offloads. \
                 A failed, stalled (no progress for {stall} s) or too slow (< 100 Mbit/s) \
                 download is reported as a failed run, without a value; the benchmark goes \
                 on.",
                stall = s.stall.as_secs_f64()
            ),
            Figure::Streams => format!(
                "{} curl processes download the {mib} MiB file at once; aggregate = all \
                 bytes / the slowest curl's time_total.",
                s.streams
            ),
            Figure::Sessions => format!(
                "{} client threads, each running whole sessions back to back for {} s: \
                 connect, USER/PASS, TYPE I, EPSV, data connection, RETR of a {SMALL_SIZE}-byte \
                 file (length checked), QUIT (221 awaited). Any failed session fails the run. \
                 Machine CPU per session over the same window.",
                s.session_workers, s.session_seconds
            ),
            Figure::DataConns => format!(
                "{} logged-in control connections, each downloading the {SMALL_SIZE}-byte \
                 file over and over for {} s on its one control connection, alternating \
                 EPSV and PASV: passive command, data connection to the announced address, \
                 RETR, data to the end, 226. ftp-guard's public data range is exactly \
                 `{NARROW_DATA_PORTS}` ({} ports) in this figure; the kernel helper and \
                 routing use the origin's passive ports (vsftpd, 5,000), the helper having \
                 no range of its own. Counted: completed transfers (length checked) per \
                 second of the run, and failed attempts (a 425 or other refusal of EPSV/PASV, \
                 a data connection not made, a transfer cut short, a lost control \
                 connection; each operation may stall {} s at most) as a share of all \
                 attempts; after a failure the connection pauses {} ms, as a retrying client \
                 would, and a lost control connection is replaced. Machine CPU per completed \
                 transfer over the same window.",
                s.data_conn_workers,
                s.data_conn_seconds,
                port_count(NARROW_DATA_PORTS),
                s.stall.as_secs_f64(),
                RETRY_PAUSE.as_millis()
            ),
            Figure::Latency => format!(
                "One logged-in control connection, 100 NOOPs to warm up, then {} NOOPs one \
                 at a time, each timed from send to the end of the 200 reply (the origin's \
                 own reply time is in every scenario; ftp-guard's addition is the difference \
                 to `routing`).",
                s.latency_samples
            ),
            Figure::Leases => format!(
                "{} logged-in control connections at once, each sending {} EPSV commands \
                 back to back (each 229 checked); every 229 is a new lease for ftp-guard (the \
                 previous unused one revoked) and a new expectation for the kernel helper. \
                 Afterwards one more EPSV + RETR must work.",
                s.lease_connections, s.leases_per_connection
            ),
            Figure::Memory => format!(
                "{} control sessions opened and logged in (pyftpdlib origin, one process), \
                 then held idle; memory before and after, per session. Gateway: for \
                 ftp-guard the memory cgroup of its process (run as the release binary: \
                 userspace plus the kernel memory charged to it, i.e. its sockets); for the \
                 kernel helper the nf_conntrack slab objects (a lower bound: extensions are \
                 not counted); routing keeps no per-session state. ftp-guard RSS: its \
                 userspace part.",
                s.idle_sessions
            ),
        }
    }

    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Figure::Throughput => &[
                Metric::Throughput,
                Metric::MachineCpu,
                Metric::Softirq,
                Metric::GatewayCpu,
            ],
            Figure::ThroughputOffload => &[
                Metric::OffloadThroughput,
                Metric::OffloadMachineCpu,
                Metric::OffloadSoftirq,
            ],
            Figure::Streams => &[Metric::StreamsThroughput, Metric::StreamsMachineCpu],
            Figure::Sessions => &[
                Metric::SessionsPerSec,
                Metric::SessionCpu,
                Metric::SessionP50,
            ],
            Figure::DataConns => &[
                Metric::DataConnsPerSec,
                Metric::DataConnsFailed,
                Metric::DataConnCpu,
            ],
            Figure::Latency => &[Metric::ReplyP50, Metric::ReplyP99],
            Figure::Leases => &[Metric::LeasesPerSec],
            Figure::Memory => &[Metric::MemGateway, Metric::MemRss],
        }
    }

    /// Whether the figure is run for this scenario.
    pub fn applies(self, scenario: &Scenario) -> bool {
        match self {
            // The other data paths have the same control proxy as `kernel`.
            // Routing keeps no per-session state on the gateway.
            Figure::Memory => matches!(
                scenario.carrier,
                Carrier::KernelHelper
                    | Carrier::FtpGuard {
                        dataplane: "kernel",
                        kernel_hook: None
                    }
            ),
            _ => true,
        }
    }

    /// Whether other processes' CPU use during a run can spoil it (then it is retried).
    pub fn cpu_sensitive(self) -> bool {
        self != Figure::Memory
    }

    /// ftp-guard's public data ports in this figure's runs.
    pub fn data_ports(self) -> &'static str {
        match self {
            Figure::DataConns => NARROW_DATA_PORTS,
            _ => DATA_PORTS,
        }
    }

    pub fn measure(self, env: &Env, scenario: &Scenario, s: &Settings) -> Result<Sample> {
        if self == Figure::Memory {
            return memory::measure(env, scenario, s);
        }
        // Set before the scenario starts (as a NIC's features are before ftp-guard
        // attaches), back off after it has stopped (dropped in reverse order).
        let offloads = match self {
            Figure::ThroughputOffload => Some(OffloadsOn::new(env)?),
            _ => None,
        };
        let active = scenario
            .carrier
            .start(&env.topo, env.server.addr(), self.data_ports())?;
        let mut sample = match self {
            Figure::Throughput => downloads(env, &active, 1, s)?,
            Figure::ThroughputOffload => match downloads(env, &active, 1, s) {
                Ok(sample) => sample.renamed(&[
                    (Metric::Throughput, Metric::OffloadThroughput),
                    (Metric::MachineCpu, Metric::OffloadMachineCpu),
                    (Metric::Softirq, Metric::OffloadSoftirq),
                ]),
                Err(e) => Sample::failed(e),
            },
            Figure::Streams => downloads(env, &active, s.streams, s)?,
            Figure::Sessions => sessions(env, &active, s)?,
            Figure::DataConns => data_conns(env, &active, s)?,
            Figure::Latency => latency(env, &active, s)?,
            Figure::Leases => leases(env, &active, s)?,
            Figure::Memory => unreachable!(),
        };
        if offloads.is_some() {
            sample
                .detail
                .insert("offloads".into(), json!(env.offloads()));
        }
        sample.counters = active.counters().map(|c| {
            c.0.iter()
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| (c.name().to_owned(), *n))
                .collect()
        });
        sample.attachments = active.attachments();
        Ok(sample)
    }
}

/// One figure's quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Throughput,
    MachineCpu,
    Softirq,
    GatewayCpu,
    OffloadThroughput,
    OffloadMachineCpu,
    OffloadSoftirq,
    StreamsThroughput,
    StreamsMachineCpu,
    SessionsPerSec,
    SessionCpu,
    SessionP50,
    DataConnsPerSec,
    DataConnsFailed,
    DataConnCpu,
    ReplyP50,
    ReplyP99,
    LeasesPerSec,
    MemGateway,
    MemRss,
}

impl Metric {
    pub fn key(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput_gbit_s",
            Metric::MachineCpu => "machine_cpu_s_per_gb",
            Metric::Softirq => "softirq_s_per_gb",
            Metric::GatewayCpu => "gateway_process_cpu_s_per_gb",
            Metric::OffloadThroughput => "offload_throughput_gbit_s",
            Metric::OffloadMachineCpu => "offload_machine_cpu_s_per_gb",
            Metric::OffloadSoftirq => "offload_softirq_s_per_gb",
            Metric::StreamsThroughput => "streams_throughput_gbit_s",
            Metric::StreamsMachineCpu => "streams_machine_cpu_s_per_gb",
            Metric::SessionsPerSec => "sessions_per_s",
            Metric::SessionCpu => "machine_cpu_ms_per_session",
            Metric::SessionP50 => "session_p50_ms",
            Metric::DataConnsPerSec => "data_conns_per_s",
            Metric::DataConnsFailed => "data_conns_failed_pct",
            Metric::DataConnCpu => "machine_cpu_ms_per_data_conn",
            Metric::ReplyP50 => "reply_p50_us",
            Metric::ReplyP99 => "reply_p99_us",
            Metric::LeasesPerSec => "epsv_leases_per_s",
            Metric::MemGateway => "gateway_kib_per_idle_session",
            Metric::MemRss => "process_rss_kib_per_idle_session",
        }
    }

    pub fn heading(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput, Gbit/s",
            Metric::MachineCpu => "machine CPU, s/GB",
            Metric::Softirq => "of which softirq, s/GB",
            Metric::GatewayCpu => "ftp-guard process CPU, s/GB",
            Metric::OffloadThroughput => "throughput (offload on), Gbit/s",
            Metric::OffloadMachineCpu => "machine CPU (offload on), s/GB",
            Metric::OffloadSoftirq => "of which softirq, s/GB",
            Metric::StreamsThroughput => "aggregate throughput, Gbit/s",
            Metric::StreamsMachineCpu => "machine CPU, s/GB",
            Metric::SessionsPerSec => "sessions/s",
            Metric::SessionCpu => "machine CPU, ms/session",
            Metric::SessionP50 => "session time p50, ms",
            Metric::DataConnsPerSec => "data connections/s",
            Metric::DataConnsFailed => "failed, % of attempts",
            Metric::DataConnCpu => "machine CPU, ms/connection",
            Metric::ReplyP50 => "reply p50, µs",
            Metric::ReplyP99 => "reply p99, µs",
            Metric::LeasesPerSec => "EPSV → 229 per s",
            Metric::MemGateway => "gateway, KiB/session",
            Metric::MemRss => "ftp-guard RSS, KiB/session",
        }
    }

    /// The figure's headline metrics, compared against routing and the kernel helper.
    pub const HEADLINE: [Metric; 8] = [
        Metric::Throughput,
        Metric::OffloadThroughput,
        Metric::StreamsThroughput,
        Metric::SessionsPerSec,
        Metric::DataConnsPerSec,
        Metric::ReplyP99,
        Metric::LeasesPerSec,
        Metric::MemGateway,
    ];
}

/// One run of one figure for one scenario.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub values: BTreeMap<Metric, f64>,
    /// The CPU-sampling window.
    pub wall_seconds: f64,
    /// CPU used meanwhile by processes that are not part of the benchmark
    /// ([`cpu::others_cpu`]): the run is disturbed when this is more than a trifle.
    pub others_cpu_seconds: f64,
    /// Non-zero kernel path counters, for scenarios with one.
    pub counters: Option<BTreeMap<String, u64>>,
    /// Where the kernel path was attached, for scenarios with one.
    pub attachments: Option<Vec<String>>,
    /// Raw numbers of the run, for the JSON report.
    pub detail: serde_json::Map<String, Value>,
    /// Why the run failed, for a figure that reports a failed run instead of stopping
    /// (then it has no values).
    pub failure: Option<String>,
}

impl Sample {
    /// Other processes' CPU during the run, in CPUs (at most the machine's: the measure
    /// over-counts, see [`cpu::others_cpu`]).
    pub fn others_load(&self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        (self.others_cpu_seconds / self.wall_seconds.max(1e-3)).min(cpus as f64)
    }

    pub fn disturbed(&self) -> bool {
        self.others_load() > cpu::BUSY_MACHINE
    }

    fn set(&mut self, metric: Metric, value: f64) {
        self.values.insert(metric, value);
    }

    /// A failed run: no values, the error kept.
    pub fn failed(e: anyhow::Error) -> Sample {
        Sample {
            failure: Some(format!("{e:#}")),
            ..Sample::default()
        }
    }

    /// The same values under other metrics (`(from, to)`); the others are dropped.
    fn renamed(mut self, names: &[(Metric, Metric)]) -> Sample {
        let values = std::mem::take(&mut self.values);
        self.values = names
            .iter()
            .filter_map(|(from, to)| Some((*to, *values.get(from)?)))
            .collect();
        self
    }
}

/// CPU use over a window of the benchmark.
struct CpuWindow {
    wall: f64,
    machine: f64,
    softirq: f64,
    /// This process (ftp-guard in-process, and the load-generating threads).
    own: f64,
    others: f64,
}

fn cpu_window<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, CpuWindow)> {
    let others0 = cpu::others_cpu();
    let (cpu0, own0) = (MachineCpu::now()?, cpu::own_cpu_seconds());
    let started = Instant::now();
    let value = f()?;
    let wall = started.elapsed().as_secs_f64();
    let (cpu1, own1) = (MachineCpu::now()?, cpu::own_cpu_seconds());
    let others = cpu::others_cpu_since(&others0, &cpu::others_cpu());
    Ok((
        value,
        CpuWindow {
            wall,
            machine: cpu1.busy_since(&cpu0),
            softirq: cpu1.softirq_since(&cpu0),
            own: own1 - own0,
            others,
        },
    ))
}

// ---------------------------------------------------------------------------------------
// Transfers

/// One untimed download to a file, checked by sha256 and by the protocol trace (EPSV);
/// for a kernel path, also that the programs NATed and redirected the data (for the
/// relay's guard, that it admitted the client).
pub fn verify(env: &Env, scenario: &Scenario) -> Result<()> {
    let active = scenario
        .carrier
        .start(&env.topo, env.server.addr(), DATA_PORTS)?;
    let dest = env
        .payload
        .dir
        .join(format!("verify-{}.bin", scenario.name));
    let result = (|| {
        let login = env.login(active.target);
        let run = curl_download(
            env.topo.ns_name(CLIENT),
            &login,
            PAYLOAD,
            &dest,
            DataMode::Epsv,
        )?
        .success()?;
        run.check_mode(DataMode::Epsv)?;
        let got = sha256_file(&dest)?;
        ensure!(
            got == env.payload.sha256,
            "the downloaded file's sha256 is {got}, the payload's {}",
            env.payload.sha256
        );
        if let Some(c) = active.counters() {
            // The relay's guard only admits the lease's client; the kernel path carries.
            let relayed = matches!(
                scenario.carrier,
                Carrier::FtpGuard {
                    dataplane: "userspace",
                    ..
                }
            );
            if relayed {
                ensure!(
                    c.get(Counter::PassLeased) > 0 && c.get(Counter::NatToClient) == 0,
                    "the guard did not admit the relay's client: {c:?}"
                );
            } else {
                ensure!(
                    c.get(Counter::NatToClient) > 0 && c.get(Counter::Redirected) > 0,
                    "the kernel path did not carry the data: {c:?}"
                );
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&dest);
    result
}

/// `streams` simultaneous curl downloads of the payload to /dev/null.
fn downloads(env: &Env, active: &Active, streams: usize, s: &Settings) -> Result<Sample> {
    let login = env.login(active.target);
    let stall = s.stall.as_secs().max(1).to_string();
    // Each stream gets its share of the bandwidth.
    let max_time = (s.stall.as_secs_f64()
        + (env.payload.size * streams as u64) as f64 / MIN_DOWNLOAD_RATE)
        .ceil()
        .to_string();
    let spawn = || -> Result<Child> {
        let mut curl = ns_command(env.topo.ns_name(CLIENT))?;
        curl.args([
            "curl",
            "-sS",
            "--ftp-pasv",
            "--user",
            &format!("{}:{}", login.user, login.password),
            "--connect-timeout",
            &stall,
            // No progress (< 1 byte/s) for `stall` seconds, or not done in `max_time`.
            "--speed-limit",
            "1",
            "--speed-time",
            &stall,
            "--max-time",
            &max_time,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            &login.url(PAYLOAD),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        curl.spawn().context("running curl")
    };
    let (outputs, w) = cpu_window(|| {
        let children: Vec<Child> = (0..streams).map(|_| spawn()).collect::<Result<_>>()?;
        children
            .into_iter()
            .map(|c| c.wait_with_output().context("waiting for curl"))
            .collect::<Result<Vec<_>>>()
    })?;
    let mut bytes = 0;
    let mut seconds: f64 = 0.0;
    let mut per_stream = Vec::new();
    for out in &outputs {
        let (b, s) = parse_curl(out)?;
        ensure!(
            b == env.payload.size,
            "curl got {b} bytes of {}",
            env.payload.size
        );
        bytes += b;
        seconds = seconds.max(s);
        per_stream.push(json!({ "bytes": b, "seconds": s }));
    }
    let gb = bytes as f64 / GB;
    let mut sample = Sample {
        wall_seconds: w.wall,
        others_cpu_seconds: w.others,
        ..Sample::default()
    };
    let throughput = bytes as f64 * 8.0 / seconds / GB;
    if streams == 1 {
        sample.set(Metric::Throughput, throughput);
        sample.set(Metric::MachineCpu, w.machine / gb);
        sample.set(Metric::Softirq, w.softirq / gb);
        if active.gateway.is_some() {
            sample.set(Metric::GatewayCpu, w.own / gb);
        }
    } else {
        sample.set(Metric::StreamsThroughput, throughput);
        sample.set(Metric::StreamsMachineCpu, w.machine / gb);
    }
    sample.detail = json_map(json!({
        "bytes": bytes,
        "seconds": seconds,
        "wall_seconds": w.wall,
        "machine_cpu_seconds": w.machine,
        "softirq_seconds": w.softirq,
        "gateway_process_cpu_seconds": w.own,
        "other_processes_cpu_seconds": w.others,
        "streams": per_stream,
    }));
    Ok(sample)
}

/// `%{size_download} %{time_total}` from curl's stdout, after checking its exit status.
pub fn parse_curl(out: &std::process::Output) -> Result<(u64, f64)> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "curl failed ({}): {} (-w: {:?})",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        stdout.trim()
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
// Control-channel load

/// Runs `f(worker index)` on `n` threads in the client namespace, started together;
/// returns their results in order.
pub fn in_client_threads<T: Send + 'static>(
    env: &Env,
    n: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Result<Vec<T>> {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (f, barrier) = (f.clone(), barrier.clone());
            env.topo.thread_in_ns(CLIENT, move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))
        })
        .collect()
}

fn sessions(env: &Env, active: &Active, s: &Settings) -> Result<Sample> {
    let login = env.login(active.target);
    let (addr, user, password) = (login.addr, login.user.clone(), login.password.clone());
    // One session first: the path works and is warm.
    env.topo.in_ns(CLIENT, || {
        ftp_load::session(addr, &user, &password, SMALL, SMALL_SIZE, OP_TIMEOUT)
    })?;
    let span = Duration::from_secs_f64(s.session_seconds);
    let (per_worker, w) = cpu_window(|| {
        in_client_threads(env, s.session_workers, move |_| {
            let deadline = Instant::now() + span;
            let mut times = Vec::new();
            let mut errors = Vec::new();
            while Instant::now() < deadline {
                match ftp_load::session(addr, &user, &password, SMALL, SMALL_SIZE, OP_TIMEOUT) {
                    Ok(t) => times.push(t.as_secs_f64()),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            (times, errors)
        })
    })?;
    let mut times: Vec<f64> = per_worker.iter().flat_map(|(t, _)| t.clone()).collect();
    let errors: Vec<&String> = per_worker.iter().flat_map(|(_, e)| e).collect();
    ensure!(
        errors.is_empty(),
        "{} of {} sessions failed; first: {}",
        errors.len(),
        errors.len() + times.len(),
        errors[0]
    );
    ensure!(!times.is_empty(), "no session completed");
    times.sort_by(f64::total_cmp);
    let n = times.len() as f64;
    let mut sample = Sample {
        wall_seconds: w.wall,
        others_cpu_seconds: w.others,
        ..Sample::default()
    };
    sample.set(Metric::SessionsPerSec, n / w.wall);
    sample.set(Metric::SessionCpu, w.machine / n * 1e3);
    sample.set(
        Metric::SessionP50,
        ftp_load::quantile(&times, 0.5).unwrap_or(f64::NAN) * 1e3,
    );
    sample.detail = json_map(json!({
        "sessions": times.len(),
        "wall_seconds": w.wall,
        "machine_cpu_seconds": w.machine,
        "session_p99_ms": ftp_load::quantile(&times, 0.99).map(|t| t * 1e3),
    }));
    Ok(sample)
}

/// How many ports a `"first-last"` range has.
pub fn port_count(range: &str) -> usize {
    range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .map_or(0, |(a, b)| (b + 1).saturating_sub(a))
}

/// What one `data-conns` control connection did.
#[derive(Default)]
struct DataConnTally {
    /// Seconds each completed transfer took (passive command to 226).
    times: Vec<f64>,
    /// Failed attempts by kind (`425 on EPSV`, `data connection`, …).
    failures: BTreeMap<String, u64>,
    /// The first few failures, word for word.
    examples: Vec<String>,
    /// Data ports the gateway (or origin) announced for completed transfers.
    ports: BTreeSet<u16>,
    /// Control connections replaced after one was lost.
    reconnects: u64,
    /// Data connections not made to the same port as the connection's previous transfer
    /// (a port given out again at once to the same client).
    failed_on_previous_port: u64,
    /// The ports of the data connections not made, each once.
    failed_ports: BTreeSet<u16>,
}

impl DataConnTally {
    const EXAMPLES: usize = 3;

    fn fail(&mut self, kind: String, what: String) {
        *self.failures.entry(kind).or_insert(0) += 1;
        if self.examples.len() < Self::EXAMPLES {
            self.examples.push(what);
        }
    }
}

/// Short passive transfers back to back on `data_conn_workers` control connections; see
/// [`Figure::method`]. Failures are counted, not fatal: they are what the figure is about.
fn data_conns(env: &Env, active: &Active, s: &Settings) -> Result<Sample> {
    let login = env.login(active.target);
    let timeout = s.stall;
    let workers = s.data_conn_workers;
    // Log in first (not timed), then all connections start their transfers at once.
    let controls = in_client_threads(env, workers, {
        let login = login.clone();
        move |_| FtpControl::login(login.addr, &login.user, &login.password, timeout)
    })?
    .into_iter()
    .map(|c| c.map(|c| Mutex::new(Some(c))))
    .collect::<Result<Vec<_>>>()?;
    let shared = Arc::new(controls);
    let span = Duration::from_secs_f64(s.data_conn_seconds);
    let (per_worker, w) = cpu_window(|| {
        let shared = shared.clone();
        in_client_threads(env, workers, move |i| {
            let mut control = shared[i].lock().ok().and_then(|mut c| c.take());
            let mut tally = DataConnTally::default();
            let deadline = Instant::now() + span;
            let mut k = i;
            let mut last_port = None;
            while Instant::now() < deadline {
                let c = match control.as_mut() {
                    Some(c) => c,
                    None => {
                        match FtpControl::login(login.addr, &login.user, &login.password, timeout) {
                            Ok(c) => {
                                tally.reconnects += 1;
                                control.insert(c)
                            }
                            Err(e) => {
                                tally.fail("login".into(), format!("login: {e:#}"));
                                std::thread::sleep(RETRY_PAUSE);
                                continue;
                            }
                        }
                    }
                };
                let mode = if k % 2 == 0 {
                    Passive::Epsv
                } else {
                    Passive::Pasv
                };
                k += 1;
                let started = Instant::now();
                match c.passive_retr(mode, SMALL) {
                    Ok((bytes, addr)) if bytes == SMALL_SIZE => {
                        tally.times.push(started.elapsed().as_secs_f64());
                        tally.ports.insert(addr.port());
                        last_port = Some(addr.port());
                    }
                    Ok((bytes, _)) => {
                        tally.fail(
                            "transfer".into(),
                            format!("transfer: {bytes} bytes of {SMALL_SIZE}"),
                        );
                        std::thread::sleep(RETRY_PAUSE);
                    }
                    Err(f) => {
                        if let ftp_load::TransferFailure::DataConnect { addr, .. } = &f {
                            tally.failed_ports.insert(addr.port());
                            if last_port == Some(addr.port()) {
                                tally.failed_on_previous_port += 1;
                            }
                        }
                        tally.fail(f.kind(), f.to_string());
                        if !f.control_usable() {
                            control = None;
                        }
                        std::thread::sleep(RETRY_PAUSE);
                    }
                }
            }
            (tally, control)
        })
    })?;
    let mut total = DataConnTally::default();
    for (tally, control) in per_worker {
        if let Some(c) = control {
            // Not timed; a failure here says nothing about the data connections.
            let _ = c.quit();
        }
        total.times.extend(tally.times);
        for (kind, n) in tally.failures {
            *total.failures.entry(kind).or_insert(0) += n;
        }
        for e in tally.examples {
            if total.examples.len() < DataConnTally::EXAMPLES {
                total.examples.push(e);
            }
        }
        total.ports.extend(tally.ports);
        total.reconnects += tally.reconnects;
        total.failed_on_previous_port += tally.failed_on_previous_port;
        total.failed_ports.extend(tally.failed_ports);
    }
    if active.gateway.is_some() {
        let range: ftp_guard::config::PortRange = NARROW_DATA_PORTS
            .parse()
            .map_err(|e| anyhow::anyhow!("{NARROW_DATA_PORTS}: {e}"))?;
        ensure!(
            total.ports.iter().all(|p| range.contains(*p)),
            "ftp-guard announced data ports outside {NARROW_DATA_PORTS}: {:?}",
            total.ports
        );
    }
    let done = total.times.len();
    let failed: u64 = total.failures.values().sum();
    let attempts = done as u64 + failed;
    total.times.sort_by(f64::total_cmp);
    let q = |x| ftp_load::quantile(&total.times, x).map(|t| t * 1e3);
    let mut sample = Sample {
        wall_seconds: w.wall,
        others_cpu_seconds: w.others,
        ..Sample::default()
    };
    sample.set(Metric::DataConnsPerSec, done as f64 / w.wall);
    sample.set(
        Metric::DataConnsFailed,
        if attempts == 0 {
            0.0
        } else {
            failed as f64 * 100.0 / attempts as f64
        },
    );
    if done > 0 {
        sample.set(Metric::DataConnCpu, w.machine / done as f64 * 1e3);
    }
    sample.detail = json_map(json!({
        "transfers": done,
        "failed": failed,
        "failures": total.failures,
        "failure_examples": total.examples,
        "reconnects": total.reconnects,
        "data_connections_failed_on_previous_port": total.failed_on_previous_port,
        "data_connections_failed_to_ports": total.failed_ports,
        "distinct_data_ports": total.ports.len(),
        "ftp_guard_data_ports": active.gateway.as_ref().map(|_| NARROW_DATA_PORTS),
        "transfer_p50_ms": q(0.5),
        "transfer_p99_ms": q(0.99),
        "wall_seconds": w.wall,
        "machine_cpu_seconds": w.machine,
    }));
    Ok(sample)
}

fn latency(env: &Env, active: &Active, s: &Settings) -> Result<Sample> {
    let login = env.login(active.target);
    let samples = s.latency_samples;
    let (mut rtts, w) = cpu_window(|| {
        env.topo.in_ns(CLIENT, || -> Result<Vec<f64>> {
            let mut c = FtpControl::login(login.addr, &login.user, &login.password, OP_TIMEOUT)?;
            for _ in 0..100 {
                c.expect("NOOP", 200)?;
            }
            let mut rtts = Vec::with_capacity(samples);
            for _ in 0..samples {
                let started = Instant::now();
                c.expect("NOOP", 200)?;
                rtts.push(started.elapsed().as_secs_f64() * 1e6);
            }
            c.quit()?;
            Ok(rtts)
        })
    })?;
    rtts.sort_by(f64::total_cmp);
    let q = |x| ftp_load::quantile(&rtts, x).unwrap_or(f64::NAN);
    let mut sample = Sample {
        wall_seconds: w.wall,
        others_cpu_seconds: w.others,
        ..Sample::default()
    };
    sample.set(Metric::ReplyP50, q(0.5));
    sample.set(Metric::ReplyP99, q(0.99));
    sample.detail = json_map(json!({
        "samples": rtts.len(),
        "p90_us": q(0.9),
        "p999_us": q(0.999),
        "max_us": q(1.0),
    }));
    Ok(sample)
}

fn leases(env: &Env, active: &Active, s: &Settings) -> Result<Sample> {
    let login = env.login(active.target);
    let per = s.leases_per_connection;
    // Log in first (not timed), then all connections send their EPSVs at once.
    let controls = in_client_threads(env, s.lease_connections, {
        let login = login.clone();
        move |_| FtpControl::login(login.addr, &login.user, &login.password, OP_TIMEOUT)
    })?
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    let controls: Vec<_> = controls
        .into_iter()
        .map(|c| Arc::new(std::sync::Mutex::new(c)))
        .collect();
    let shared = Arc::new(controls);
    let (ports, w) = cpu_window(|| {
        let shared = shared.clone();
        in_client_threads(env, s.lease_connections, move |i| -> Result<Vec<u16>> {
            let mut c = shared[i].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            (0..per).map(|_| c.epsv()).collect()
        })
    })?;
    let ports = ports.into_iter().collect::<Result<Vec<_>>>()?;
    let total: usize = ports.iter().map(Vec::len).sum();
    let distinct: std::collections::BTreeSet<u16> = ports.iter().flatten().copied().collect();
    // The allocation still works after the churn.
    {
        let mut guard = shared[0].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let control: &mut FtpControl = &mut guard;
        let got = env.topo.in_ns(CLIENT, move || control.retr(SMALL))?;
        ensure!(got == SMALL_SIZE, "RETR after the EPSVs: {got} bytes");
    }
    let mut sample = Sample {
        wall_seconds: w.wall,
        others_cpu_seconds: w.others,
        ..Sample::default()
    };
    sample.set(Metric::LeasesPerSec, total as f64 / w.wall);
    sample.detail = json_map(json!({
        "epsv": total,
        "distinct_ports": distinct.len(),
        "wall_seconds": w.wall,
        "machine_cpu_seconds": w.machine,
    }));
    Ok(sample)
}

pub fn json_map(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_belongs_to_one_figure() {
        for m in Metric::HEADLINE {
            let owners = Figure::ALL
                .iter()
                .filter(|f| f.metrics().contains(&m))
                .count();
            assert_eq!(owners, 1, "{m:?}");
        }
        let mut keys: Vec<&str> = Figure::ALL
            .iter()
            .flat_map(|f| f.metrics().iter().map(|m| m.key()))
            .collect();
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), n, "duplicate metric keys");
    }

    #[test]
    fn port_counts() {
        assert_eq!(port_count(NARROW_DATA_PORTS), 100);
        assert_eq!(port_count("40000-44999"), 5000);
        assert_eq!(port_count("7-7"), 1);
        assert_eq!(port_count("nonsense"), 0);
    }

    #[test]
    fn renamed_keeps_only_the_mapped_values() {
        let mut s = Sample::default();
        s.set(Metric::Throughput, 5.0);
        s.set(Metric::GatewayCpu, 0.1);
        let s = s.renamed(&[(Metric::Throughput, Metric::OffloadThroughput)]);
        assert_eq!(s.values.len(), 1);
        assert_eq!(s.values[&Metric::OffloadThroughput], 5.0);
    }

    #[test]
    fn curl_write_out() {
        use std::os::unix::process::ExitStatusExt as _;
        let out = std::process::Output {
            status: std::process::ExitStatus::from_raw(0),
            stdout: b"1073741824 4.250000".to_vec(),
            stderr: Vec::new(),
        };
        assert_eq!(parse_curl(&out).unwrap(), (1_073_741_824, 4.25));
        let failed = std::process::Output {
            status: std::process::ExitStatus::from_raw(7 << 8),
            stdout: Vec::new(),
            stderr: b"couldn't connect".to_vec(),
        };
        assert!(parse_curl(&failed).is_err());
    }
}

//! What the benchmark measures: each [`Figure`] is one kind of run, yielding one
//! [`Sample`] of its [`Metric`]s per scenario and round.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::{Value, json};

mod control;
mod flood;
mod transfers;

use control::{data_conns, latency, leases, sessions};
pub use control::{in_client_threads, json_map, port_count};
use transfers::downloads;
pub use transfers::verify;

use crate::{
    cpu::{self, MachineCpu},
    env::{Env, OffloadsOn, SMALL_SIZE},
    memory,
    scenarios::{Carrier, DATA_PORTS, NARROW_DATA_PORTS, Scenario},
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
    /// Unsolicited SYNs to the data range, dropped by ftp-guard or an nftables rule.
    SynDrop,
    /// Sessions per second while spoofed SYNs hit port 21.
    SynFloodSessions,
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
    /// Seconds each `syn-drop` flood lasts.
    pub flood_seconds: f64,
    /// SYNs per second at port 21 in `syn-flood-sessions`.
    pub flood_pps: u64,
    /// How long one operation may make no progress (a connect, a reply, a download's
    /// data) before it counts as failed.
    pub stall: Duration,
    pub ftp_guard_bin: std::path::PathBuf,
}

impl Figure {
    pub const ALL: [Figure; 10] = [
        Figure::Throughput,
        Figure::ThroughputOffload,
        Figure::Streams,
        Figure::Sessions,
        Figure::DataConns,
        Figure::Latency,
        Figure::Leases,
        Figure::Memory,
        Figure::SynDrop,
        Figure::SynFloodSessions,
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
            Figure::SynDrop => "syn-drop",
            Figure::SynFloodSessions => "syn-flood-sessions",
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
            Figure::SynDrop => "Unsolicited SYNs to the data range dropped per second".into(),
            Figure::SynFloodSessions => format!(
                "Sessions per second under a spoofed SYN flood of {} SYN/s at port 21",
                s.flood_pps
            ),
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
            Figure::SynDrop => flood::syn_drop_method(s),
            Figure::SynFloodSessions => flood::sessions_method(s),
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
            Figure::SynDrop => &[Metric::SynDropsPerSec, Metric::SynDropCpu],
            Figure::SynFloodSessions => &[Metric::FloodSessionsShare, Metric::FloodSessionsPerSec],
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
            Figure::SynDrop | Figure::SynFloodSessions => flood::applies(scenario.carrier),
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
            Figure::SynDrop => flood::syn_drop(env, &active, s)?,
            Figure::SynFloodSessions => flood::sessions_under_flood(env, &active, s)?,
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
    SynDropsPerSec,
    SynDropCpu,
    FloodSessionsShare,
    FloodSessionsPerSec,
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
            Metric::SynDropsPerSec => "syn_drops_per_s",
            Metric::SynDropCpu => "machine_cpu_ns_per_syn_drop",
            Metric::FloodSessionsShare => "sessions_under_flood_share",
            Metric::FloodSessionsPerSec => "sessions_per_s_under_flood",
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
            Metric::SynDropsPerSec => "SYNs dropped/s",
            Metric::SynDropCpu => "machine CPU, ns/drop",
            Metric::FloodSessionsShare => "sessions/s under flood / unloaded",
            Metric::FloodSessionsPerSec => "sessions/s under flood",
        }
    }

    /// The figure's headline metrics, compared against routing and the kernel helper.
    pub const HEADLINE: [Metric; 10] = [
        Metric::Throughput,
        Metric::OffloadThroughput,
        Metric::StreamsThroughput,
        Metric::SessionsPerSec,
        Metric::DataConnsPerSec,
        Metric::ReplyP99,
        Metric::LeasesPerSec,
        Metric::MemGateway,
        Metric::SynDropsPerSec,
        Metric::FloodSessionsShare,
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

#[cfg(test)]
mod tests;

//! `cargo xtask bench`: ftp-guard measured side by side with the alternatives — plain
//! routing (the limit) and the Linux kernel FTP helper — in one run on one topology.
//!
//! Figures (`--figures`): single-stream download throughput with CPU per GB (checksum
//! offload off, and on), parallel download throughput, sessions per second, data
//! connections per second through a 100-port data range, control-reply latency, passive
//! data-port allocation rate, memory per idle control session, and under a spoofed SYN
//! flood: unsolicited SYNs dropped per second, sessions per second. Every figure runs each scenario `--runs` times,
//! interleaved round-robin (the starting scenario rotating) so drift of the machine hits
//! every scenario alike; a run disturbed by other processes is repeated (`--retries`).
//!
//! Layout: [`scenarios`] (how the gateway carries a session), [`env`] (topology, origins,
//! payload), [`figures`] (what is measured), [`memory`] (the idle-session figure),
//! [`cpu`] (CPU accounting), [`report`] (statistics, targets, markdown + JSON).
//!
//! Writes the reports to `target/bench/` (timestamped, plus `latest.md` / `latest.json`)
//! and prints the markdown. Must run as root.
mod cpu;
mod env;
mod figures;
mod memory;
mod report;
mod scenarios;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use clap::Parser;

use crate::{
    env::Env,
    figures::{Figure, Settings},
    report::{Facts, Results},
    scenarios::{SCENARIOS, Scenario},
};

/// Pause after each run, so the previous one's teardown (TIME_WAIT, sweeps) is quiet.
const SETTLE: Duration = Duration::from_millis(300);

/// ftp-guard against plain routing and the kernel FTP helper: throughput, sessions/s,
/// data connections/s, latency, lease rate, memory.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Args {
    /// Runs per scenario and figure.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Runs per scenario of the memory figure (each opens --idle-sessions sessions).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    memory_runs: u32,
    /// Payload size in MiB (the download figures).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    size_mib: u64,
    /// Figures to measure, comma-separated (default: all; `--list` shows them).
    #[arg(long, value_delimiter = ',')]
    figures: Vec<String>,
    /// Scenarios to run, comma-separated, in this order (default: routing, kernel-helper,
    /// userspace, kernel, kernel-xdp; `--list` shows all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Parallel downloads of the `streams` figure.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=64))]
    streams: u64,
    /// Seconds each `sessions` run lasts.
    #[arg(long, default_value_t = 5.0)]
    session_seconds: f64,
    /// Client threads of the `sessions` figure.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    session_workers: u64,
    /// Seconds each `data-conns` run lasts.
    #[arg(long, default_value_t = 5.0)]
    data_conn_seconds: f64,
    /// Control connections of the `data-conns` figure (each runs one transfer at a time).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    data_conn_workers: u64,
    /// Checksum offload of the single-stream throughput figure: `off` (the topology's
    /// setting: every checksum computed and checked; figure `throughput`), `on` (the
    /// veth default; figure `throughput-offload`) or `both`. Replaces whichever of the two
    /// `--figures` selects (default: both run).
    #[arg(long, value_enum)]
    offloads: Option<Offloads>,
    /// Seconds an operation may make no progress (a connect, a reply, a download's data)
    /// before it counts as failed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    stall_seconds: u64,
    /// Seconds each `syn-drop` flood lasts.
    #[arg(long, default_value_t = 5.0)]
    flood_seconds: f64,
    /// Spoofed SYNs per second at port 21 in `syn-flood-sessions`.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    flood_pps: u64,
    /// NOOPs timed per `latency` run.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..))]
    latency_samples: u64,
    /// Control connections of the `leases` figure.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    lease_connections: u64,
    /// EPSV commands per connection in a `leases` run.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    leases_per_connection: u64,
    /// Idle control sessions held open in a `memory` run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=50_000))]
    idle_sessions: u64,
    /// The ftp-guard binary the memory figure runs (default: next to this benchmark's
    /// binary; `cargo xtask bench` builds it).
    #[arg(long)]
    ftp_guard_bin: Option<PathBuf>,
    /// A tmpfs directory for the payload (the server reads it with sendfile).
    #[arg(long, default_value = "/dev/shm")]
    payload_dir: PathBuf,
    /// Where the reports go (default: <target dir>/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit with status 2 when a target is missed.
    #[arg(long)]
    check: bool,
    /// Repeat a run up to this many times when other processes disturbed it (used more
    /// than 0.1 CPU meanwhile).
    #[arg(long, default_value_t = 1)]
    retries: u32,
    /// Before each run, wait up to this many seconds for other processes to go quiet (the
    /// machine busy less than 0.1 CPU).
    #[arg(long, default_value_t = 10)]
    quiet_wait: u64,
    /// List the figures and scenarios and exit.
    #[arg(long)]
    list: bool,
}

impl Args {
    fn settings(&self) -> Result<Settings> {
        ensure!(
            self.session_seconds > 0.0 && self.session_seconds <= 600.0,
            "--session-seconds must be within (0, 600]"
        );
        ensure!(
            self.data_conn_seconds > 0.0 && self.data_conn_seconds <= 600.0,
            "--data-conn-seconds must be within (0, 600]"
        );
        ensure!(
            self.flood_seconds > 0.0 && self.flood_seconds <= 600.0,
            "--flood-seconds must be within (0, 600]"
        );
        let ftp_guard_bin = match &self.ftp_guard_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating this binary")?
                .with_file_name("ftp-guard"),
        };
        Ok(Settings {
            streams: self.streams as usize,
            session_seconds: self.session_seconds,
            session_workers: self.session_workers as usize,
            latency_samples: self.latency_samples as usize,
            lease_connections: self.lease_connections as usize,
            leases_per_connection: self.leases_per_connection as usize,
            idle_sessions: self.idle_sessions as usize,
            data_conn_seconds: self.data_conn_seconds,
            data_conn_workers: self.data_conn_workers as usize,
            flood_seconds: self.flood_seconds,
            flood_pps: self.flood_pps,
            stall: Duration::from_secs(self.stall_seconds),
            ftp_guard_bin,
        })
    }

    fn scenarios(&self) -> Result<Vec<&'static Scenario>> {
        if self.scenarios.is_empty() {
            return Ok(SCENARIOS.iter().filter(|s| s.default).collect());
        }
        self.scenarios
            .iter()
            .map(|name| {
                scenarios::find(name).with_context(|| {
                    let known: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
                    format!("unknown scenario {name:?}; known: {}", known.join(", "))
                })
            })
            .collect()
    }

    fn figures(&self) -> Result<Vec<Figure>> {
        let mut figures = self.named_figures()?;
        // --offloads picks the variants of the single-stream figure, if one is asked for.
        let throughput = [Figure::Throughput, Figure::ThroughputOffload];
        if let Some(offloads) = self.offloads
            && figures.iter().any(|f| throughput.contains(f))
        {
            figures.retain(|f| !throughput.contains(f));
            if offloads != Offloads::On {
                figures.push(Figure::Throughput);
            }
            if offloads != Offloads::Off {
                figures.push(Figure::ThroughputOffload);
            }
            figures.sort();
        }
        Ok(figures)
    }

    fn named_figures(&self) -> Result<Vec<Figure>> {
        if self.figures.is_empty() {
            return Ok(Figure::ALL.to_vec());
        }
        let mut figures = Vec::new();
        for name in &self.figures {
            let f = Figure::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .with_context(|| {
                    let known: Vec<_> = Figure::ALL.iter().map(|f| f.name()).collect();
                    format!("unknown figure {name:?}; known: {}", known.join(", "))
                })?;
            if !figures.contains(&f) {
                figures.push(f);
            }
        }
        figures.sort();
        Ok(figures)
    }

    fn runs(&self, figure: Figure) -> u32 {
        if figure == Figure::Memory {
            self.memory_runs
        } else {
            self.runs
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Offloads {
    On,
    Off,
    Both,
}

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

/// Many sockets at once (idle sessions: the client's, ftp-guard's two legs, the origin's):
/// the soft open-files limit goes up to the hard one, which the servers and ftp-guard
/// inherit. Returns the limit.
fn raise_open_files_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading RLIMIT_NOFILE");
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("raising RLIMIT_NOFILE");
    }
    Ok(limit.rlim_cur)
}

/// Returns whether every target was met (always true without `--check`).
fn run(args: &Args) -> Result<bool> {
    let scenarios = args.scenarios()?;
    let figures = args.figures()?;
    let mut settings = args.settings()?;
    if args.list {
        println!("figures (default: all):");
        for f in Figure::ALL {
            let metrics: Vec<_> = f.metrics().iter().map(|m| m.heading()).collect();
            println!("  {:<18} {}", f.name(), metrics.join("; "));
        }
        println!("scenarios:");
        for s in SCENARIOS {
            let default = if s.default { "(default)" } else { "" };
            println!("  {:<15} {default:<9} {}", s.name, s.about);
        }
        return Ok(true);
    }
    ensure!(
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the benchmark needs root (network namespaces, eBPF): run `cargo xtask bench` as root"
    );
    let open_files = raise_open_files_limit()?;
    // Ctrl-C ends the running clients (same process group); we then stop and clean up
    // (namespaces, payload) instead of dying with them in place.
    let handler = on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
    // ftp-guard holds two sockets per session, in one process.
    let fits = open_files.saturating_sub(memory::RESERVED_FILES) / 2;
    if figures.contains(&Figure::Memory) && (settings.idle_sessions as u64) > fits {
        eprintln!(
            "warning: the open-files hard limit ({open_files}) lets one process hold {fits} \
             sessions with two sockets each: the memory figure uses {fits} instead of {} \
             (raising the hard limit needs CAP_SYS_RESOURCE)",
            settings.idle_sessions
        );
        settings.idle_sessions = fits as usize;
    }
    let started = Instant::now();
    let env = Env::start(
        &args.payload_dir,
        args.size_mib << 20,
        figures.contains(&Figure::Memory),
        figures
            .iter()
            .any(|f| matches!(f, Figure::SynDrop | Figure::SynFloodSessions)),
    )?;

    for s in &scenarios {
        eprintln!("verifying `{}`: one download, sha256 …", s.name);
        figures::verify(&env, s).with_context(|| format!("verifying scenario `{}`", s.name))?;
    }

    let background = cpu::background_load(Duration::from_secs(1))?;
    if background > cpu::BUSY_MACHINE {
        eprintln!(
            "warning: the machine is busy ({background:.2} CPUs of other work): figures will \
             be noisy"
        );
    }
    let mut facts = Facts::collect(&env, args.runs, background);
    let mut results: Vec<Results> = Vec::new();
    let mut retried = 0;
    for &figure in &figures {
        let first = results.len();
        for s in scenarios.iter().filter(|s| figure.applies(s)) {
            results.push(Results {
                figure,
                scenario: s,
                samples: Vec::new(),
            });
        }
        let n = results.len() - first;
        let runs = args.runs(figure);
        for round in 0..runs {
            for k in 0..n {
                // Rotate who goes first, so no scenario always follows the same one.
                let i = first + (k + round as usize) % n;
                let scenario = results[i].scenario;
                let mut attempt = 0;
                let sample = loop {
                    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
                    if figure.cpu_sensitive() {
                        cpu::wait_for_quiet(Duration::from_secs(args.quiet_wait))?;
                    }
                    let sample = figure.measure(&env, scenario, &settings).with_context(|| {
                        format!(
                            "figure `{}`, round {}, scenario `{}`",
                            figure.name(),
                            round + 1,
                            scenario.name
                        )
                    })?;
                    std::thread::sleep(SETTLE);
                    let values: Vec<String> = figure
                        .metrics()
                        .iter()
                        .filter_map(|m| {
                            let v = sample.values.get(m)?;
                            Some(format!("{} {v:.3}", m.heading()))
                        })
                        .collect();
                    let values = match &sample.failure {
                        Some(e) => format!("FAILED: {e}"),
                        None => values.join(" · "),
                    };
                    eprintln!(
                        "{:<10} {}/{} {:<14} {}{}",
                        figure.name(),
                        round + 1,
                        runs,
                        scenario.name,
                        values,
                        if figure.cpu_sensitive() {
                            format!(" · others {:.2} CPUs", sample.others_load())
                        } else {
                            String::new()
                        }
                    );
                    if !figure.cpu_sensitive()
                        || sample.failure.is_some()
                        || !sample.disturbed()
                        || attempt >= args.retries
                    {
                        break sample;
                    }
                    attempt += 1;
                    retried += 1;
                    eprintln!("  disturbed by other processes: once more");
                };
                results[i].samples.push((round + 1, sample));
            }
        }
    }

    facts.retried_runs = retried;
    let judged = report::judge(&results);
    let md = report::markdown(&facts, &settings, &env, &results, &judged);
    let json = report::to_json(&facts, &settings, &env, &results, &judged);
    let out = args.out.clone().unwrap_or_else(report::default_out_dir);
    report::write_reports(&out, &facts.stamp, &md, &json)?;
    println!("{md}");
    eprintln!(
        "bench: {:.0} s in all",
        started.elapsed().as_secs_f64().round()
    );
    Ok(!args.check || judged.iter().all(|r| r.met))
}

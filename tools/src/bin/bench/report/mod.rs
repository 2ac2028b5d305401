//! Statistics over the runs, the targets the issue sets, and the markdown and JSON
//! reports (with the machine facts they are valid for).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use ftp_guard_common::Counter;
use serde_json::{Value, json};

use crate::{
    cpu::BUSY_MACHINE,
    env::Env,
    figures::{Figure, Metric, RETRY_PAUSE, Sample, Settings, port_count},
    scenarios::{NARROW_DATA_PORTS, Scenario},
};

/// The baselines every headline figure is compared with.
const BASELINES: [&str; 2] = ["routing", "kernel-helper"];

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Summary> {
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

    pub fn json(&self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

/// One figure's runs for one scenario.
pub struct Results {
    pub figure: Figure,
    pub scenario: &'static Scenario,
    pub samples: Vec<(u32, Sample)>,
}

impl Results {
    pub fn summary(&self, metric: Metric) -> Option<Summary> {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|(_, s)| s.values.get(&metric).copied())
            .collect();
        Summary::of(&values)
    }

    /// The runs that failed (a figure that reports failures instead of stopping).
    fn failed_runs(&self) -> impl Iterator<Item = (u32, &str)> {
        self.samples
            .iter()
            .filter_map(|(round, s)| Some((*round, s.failure.as_deref()?)))
    }

    /// A `detail` map of counts (`{"425 on EPSV": 12, …}`) summed over the runs.
    fn detail_counts(&self, key: &str) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        for (_, s) in &self.samples {
            if let Some(Value::Object(m)) = s.detail.get(key) {
                for (k, v) in m {
                    *totals.entry(k.clone()).or_insert(0) += v.as_u64().unwrap_or(0);
                }
            }
        }
        totals
    }

    /// Kernel path counters summed over the runs.
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

/// The median of `metric` for scenario `name`, if measured.
fn median(results: &[Results], metric: Metric, name: &str) -> Option<f64> {
    results
        .iter()
        .filter(|r| r.scenario.name == name && r.figure.metrics().contains(&metric))
        .find_map(|r| r.summary(metric))
        .map(|s| s.median)
}

/// As [`median`], but NaN when the scenario ran the figure and no run gave a value (every
/// run failed): a target on it is then missed, not left out.
fn median_or_failed(results: &[Results], metric: Metric, name: &str) -> Option<f64> {
    median(results, metric, name).or_else(|| {
        results
            .iter()
            .any(|r| {
                r.scenario.name == name
                    && r.figure.metrics().contains(&metric)
                    && !r.samples.is_empty()
                    && r.samples.iter().all(|(_, s)| s.failure.is_some())
            })
            .then_some(f64::NAN)
    })
}

// ---------------------------------------------------------------------------------------
// Targets

#[derive(Clone, Copy, Debug)]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
    /// Reported, not judged.
    Info,
}

/// How a target's value is formed from the medians.
#[derive(Clone, Copy, Debug)]
pub enum Compare {
    /// numerator / denominator
    Ratio(&'static str, &'static str),
    /// a − b (in the metric's unit)
    Difference(&'static str, &'static str),
    /// One scenario's median itself.
    Value(&'static str),
}

impl Compare {
    #[cfg(test)]
    fn scenarios(self) -> Vec<&'static str> {
        match self {
            Compare::Ratio(a, b) | Compare::Difference(a, b) => vec![a, b],
            Compare::Value(a) => vec![a],
        }
    }
}

pub struct Target {
    pub label: &'static str,
    pub metric: Metric,
    pub compare: Compare,
    pub bound: Bound,
}

/// What issues 11, 6 and 4 ask for, plus figures worth watching.
pub const TARGETS: &[Target] = &[
    Target {
        label: "throughput kernel / routing",
        metric: Metric::Throughput,
        compare: Compare::Ratio("kernel", "routing"),
        bound: Bound::AtLeast(0.95),
    },
    Target {
        label: "throughput kernel / kernel-helper",
        metric: Metric::Throughput,
        compare: Compare::Ratio("kernel", "kernel-helper"),
        bound: Bound::AtLeast(1.0),
    },
    Target {
        label: "parallel throughput kernel / routing",
        metric: Metric::StreamsThroughput,
        compare: Compare::Ratio("kernel", "routing"),
        bound: Bound::AtLeast(0.95),
    },
    Target {
        label: "parallel throughput kernel / kernel-helper",
        metric: Metric::StreamsThroughput,
        compare: Compare::Ratio("kernel", "kernel-helper"),
        bound: Bound::AtLeast(1.0),
    },
    Target {
        label: "throughput kernel / userspace",
        metric: Metric::Throughput,
        compare: Compare::Ratio("kernel", "userspace"),
        bound: Bound::AtLeast(2.0),
    },
    Target {
        label: "machine CPU per GB kernel / userspace",
        metric: Metric::MachineCpu,
        compare: Compare::Ratio("kernel", "userspace"),
        bound: Bound::AtMost(1.0),
    },
    Target {
        label: "sessions/s kernel / kernel-helper",
        metric: Metric::SessionsPerSec,
        compare: Compare::Ratio("kernel", "kernel-helper"),
        bound: Bound::AtLeast(0.9),
    },
    Target {
        label: "data connections/s through 100 ports kernel / kernel-helper",
        metric: Metric::DataConnsPerSec,
        compare: Compare::Ratio("kernel", "kernel-helper"),
        bound: Bound::AtLeast(0.9),
    },
    Target {
        label: "throughput with checksum offload on kernel / routing",
        metric: Metric::OffloadThroughput,
        compare: Compare::Ratio("kernel", "routing"),
        bound: Bound::AtLeast(0.95),
    },
    Target {
        label: "reply p99 added by ftp-guard (kernel − routing), µs",
        metric: Metric::ReplyP99,
        compare: Compare::Difference("kernel", "routing"),
        bound: Bound::AtMost(1000.0),
    },
    Target {
        label: "gateway memory per idle session (kernel), KiB",
        metric: Metric::MemGateway,
        compare: Compare::Value("kernel"),
        bound: Bound::AtMost(16.0),
    },
    Target {
        label: "reply p50 added by ftp-guard (kernel − routing), µs",
        metric: Metric::ReplyP50,
        compare: Compare::Difference("kernel", "routing"),
        bound: Bound::Info,
    },
    Target {
        label: "machine CPU per GB kernel / kernel-helper",
        metric: Metric::MachineCpu,
        compare: Compare::Ratio("kernel", "kernel-helper"),
        bound: Bound::Info,
    },
    Target {
        label: "machine CPU per session kernel / kernel-helper",
        metric: Metric::SessionCpu,
        compare: Compare::Ratio("kernel", "kernel-helper"),
        bound: Bound::Info,
    },
    Target {
        label: "EPSV → 229 per s kernel / kernel-helper",
        metric: Metric::LeasesPerSec,
        compare: Compare::Ratio("kernel", "kernel-helper"),
        bound: Bound::Info,
    },
    Target {
        label: "throughput kernel-xdp / routing",
        metric: Metric::Throughput,
        compare: Compare::Ratio("kernel-xdp", "routing"),
        bound: Bound::Info,
    },
    Target {
        label: "data connections/s through 100 ports userspace / kernel-helper",
        metric: Metric::DataConnsPerSec,
        compare: Compare::Ratio("userspace", "kernel-helper"),
        bound: Bound::Info,
    },
    Target {
        label: "failed data connections through 100 ports (kernel), % of attempts",
        metric: Metric::DataConnsFailed,
        compare: Compare::Value("kernel"),
        bound: Bound::Info,
    },
    Target {
        label: "throughput with checksum offload on kernel / kernel-helper",
        metric: Metric::OffloadThroughput,
        compare: Compare::Ratio("kernel", "kernel-helper"),
        bound: Bound::Info,
    },
    Target {
        label: "throughput with checksum offload on kernel-xdp / routing",
        metric: Metric::OffloadThroughput,
        compare: Compare::Ratio("kernel-xdp", "routing"),
        bound: Bound::Info,
    },
];

pub struct TargetResult {
    pub target: &'static Target,
    pub value: f64,
    pub met: bool,
}

pub fn judge(results: &[Results]) -> Vec<TargetResult> {
    TARGETS
        .iter()
        .filter_map(|t| {
            let m = |name| median_or_failed(results, t.metric, name);
            let value = match t.compare {
                Compare::Ratio(a, b) => m(a)? / m(b)?,
                Compare::Difference(a, b) => m(a)? - m(b)?,
                Compare::Value(a) => m(a)?,
            };
            // NaN (every run of a scenario failed) meets no bound.
            let met = match t.bound {
                Bound::AtLeast(x) => value >= x,
                Bound::AtMost(x) => value <= x,
                Bound::Info => true,
            };
            Some(TargetResult {
                target: t,
                value,
                met,
            })
        })
        .collect()
}

/// How a headline metric compares with a baseline: latency as a difference (what the
/// carrier adds), the others as ratios.
fn versus(metric: Metric, value: f64, baseline: f64) -> (f64, String) {
    if metric == Metric::ReplyP99 {
        let d = value - baseline;
        (
            d,
            format!("{}{} µs", if d >= 0.0 { "+" } else { "" }, fmt_num(d)),
        )
    } else {
        let r = value / baseline;
        (r, format!("{}×", fmt_num(r)))
    }
}

/// What the report says about the machine and the settings.
pub struct Facts {
    date: String,
    pub stamp: String,
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
    pub retried_runs: u32,
    nft: String,
}

impl Facts {
    pub fn collect(env: &Env, runs: u32, background_cpus: f64) -> Facts {
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
        let offloads = env.offloads();
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
            runs,
            offloads,
            background_cpus,
            retried_runs: 0,
            nft: first_line(command(&["nft", "--version"])),
        }
    }

    pub fn json(&self) -> Value {
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
            "nftables": self.nft,
        })
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

pub fn markdown(
    facts: &Facts,
    settings: &Settings,
    env: &Env,
    results: &[Results],
    judged: &[TargetResult],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## ftp-guard benchmark, {}\n", facts.date);
    let _ = writeln!(
        md,
        "Linux {} · {} CPUs ({}) · {:.1} GiB RAM · commit {} · vsftpd {} · curl {} · {}  ",
        facts.kernel,
        facts.cpus,
        facts.cpu_model,
        facts.mem_gib,
        facts.commit,
        facts.vsftpd,
        facts.curl,
        facts.nft
    );
    let _ = writeln!(
        md,
        "One topology (client ns ── gateway ns ── origin ns, veth pairs), the scenarios set up \
         one after the other on it; {} runs per scenario and figure (memory: see there), \
         interleaved round-robin with the starting scenario rotating; each scenario first \
         verified by one sha256-checked download. Cells: **median** (min–max); GB = 10⁹ \
         bytes.  ",
        facts.runs
    );
    let offloads: Vec<String> = facts
        .offloads
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(
        md,
        "Offloads: {} (rx/tx checksum turned on for the `throughput-offload` figure only).  ",
        offloads.join("; ")
    );
    let samples = || {
        results
            .iter()
            .filter(|r| r.figure.cpu_sensitive())
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

    // Scenarios.
    let mut scenarios: Vec<&Scenario> = Vec::new();
    for r in results {
        if !scenarios.iter().any(|s| s.name == r.scenario.name) {
            scenarios.push(r.scenario);
        }
    }
    for s in &scenarios {
        let _ = writeln!(md, "- `{}`: {}", s.name, s.about);
    }
    let _ = writeln!(md);

    // Headline comparison.
    let headline: Vec<Metric> = Metric::HEADLINE
        .into_iter()
        .filter(|m| results.iter().any(|r| r.summary(*m).is_some()))
        .collect();
    if !headline.is_empty() {
        let _ = writeln!(
            md,
            "### Compared with routing and the kernel helper\n\nMedians; each cell: vs \
             `routing` / vs `kernel-helper` (latency: µs added, the rest: ratios).\n"
        );
        let _ = write!(md, "| scenario |");
        for m in &headline {
            let _ = write!(md, " {} |", m.heading());
        }
        let _ = writeln!(md, "\n|---|{}", "---|".repeat(headline.len()));
        for s in &scenarios {
            let _ = write!(md, "| `{}` |", s.name);
            for m in &headline {
                let cells: Vec<String> = BASELINES
                    .iter()
                    .map(
                        |b| match (median(results, *m, s.name), median(results, *m, b)) {
                            (Some(v), Some(base)) if *b != s.name => versus(*m, v, base).1,
                            (Some(_), Some(_)) => "=".into(),
                            _ => "–".into(),
                        },
                    )
                    .collect();
                let _ = write!(md, " {} |", cells.join(" / "));
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md);
    }

    if !judged.is_empty() {
        let _ = writeln!(md, "### Targets\n");
        let _ = writeln!(md, "| measure | value | target | |");
        let _ = writeln!(md, "|---|---|---|---|");
        for r in judged {
            let (target, verdict) = match r.target.bound {
                Bound::AtLeast(x) => (format!("≥ {x}"), if r.met { "met" } else { "MISSED" }),
                Bound::AtMost(x) => (format!("≤ {x}"), if r.met { "met" } else { "MISSED" }),
                Bound::Info => ("(info)".to_owned(), ""),
            };
            let value = if r.value.is_nan() {
                "– (runs failed)".to_owned()
            } else {
                format!("**{}**", fmt_num(r.value))
            };
            let _ = writeln!(
                md,
                "| {} | {value} | {target} | {verdict} |",
                r.target.label
            );
        }
        let _ = writeln!(md);
    }

    for figure in Figure::ALL {
        let rows: Vec<&Results> = results.iter().filter(|r| r.figure == figure).collect();
        if rows.is_empty() {
            continue;
        }
        let runs = rows.iter().map(|r| r.samples.len()).max().unwrap_or(0);
        let _ = writeln!(
            md,
            "### {}\n\n{} ({runs} runs per scenario.)\n",
            figure.title(settings),
            figure.method(settings, env)
        );
        let _ = write!(md, "| scenario |");
        for m in figure.metrics() {
            let _ = write!(md, " {} |", m.heading());
        }
        let _ = writeln!(md, "\n|---|{}", "---|".repeat(figure.metrics().len()));
        for r in &rows {
            let _ = write!(md, "| `{}` |", r.scenario.name);
            for m in figure.metrics() {
                let _ = write!(md, " {} |", cell(r.summary(*m)));
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md);
        figure_notes(&mut md, figure, &rows);
    }

    let kernel_rows: Vec<(&Results, BTreeMap<String, u64>)> = results
        .iter()
        .filter(|r| matches!(r.figure, Figure::Throughput | Figure::ThroughputOffload))
        .filter_map(|r| Some((r, r.counter_totals()?)))
        .collect();
    if !kernel_rows.is_empty() {
        let _ = writeln!(md, "Kernel paths, over the single-stream runs:\n");
    }
    for (r, totals) in kernel_rows {
        let get = |k: &str| totals.get(k).copied().unwrap_or(0);
        let nat = get(Counter::NatToClient.name()) + get(Counter::NatToOrigin.name());
        let redirected = get(Counter::Redirected.name());
        let attached = r
            .samples
            .first()
            .and_then(|(_, s)| s.attachments.as_ref())
            .map_or_else(|| "?".to_owned(), |a| a.join(", "));
        let drops: Vec<String> = totals
            .iter()
            .filter(|(k, _)| k.starts_with("drop_"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            md,
            "- `{}`{} ({attached}): {} packets NATed, {} redirected by the program ({:.1} %), \
             {} forwarded by the stack; drops: {}.",
            r.scenario.name,
            if r.figure == Figure::ThroughputOffload {
                ", checksum offload on"
            } else {
                ""
            },
            nat,
            redirected,
            if nat > 0 {
                redirected as f64 * 100.0 / nat as f64
            } else {
                0.0
            },
            get(Counter::ForwardedByStack.name()),
            if drops.is_empty() {
                "none".into()
            } else {
                drops.join(", ")
            }
        );
    }
    md
}

/// What a figure's table does not show: failed runs, and for `data-conns` the failures by
/// kind (summed over the runs) and the ports used.
fn figure_notes(md: &mut String, figure: Figure, rows: &[&Results]) {
    let mut any = false;
    for r in rows {
        let failed: Vec<(u32, &str)> = r.failed_runs().collect();
        if let Some((round, first)) = failed.first() {
            any = true;
            let _ = writeln!(
                md,
                "- `{}`: **{} of {} runs FAILED** (round {round}: {})",
                r.scenario.name,
                failed.len(),
                r.samples.len(),
                first.lines().next().unwrap_or("").trim()
            );
        }
        if figure != Figure::DataConns {
            continue;
        }
        let sum = |key: &str| -> u64 {
            r.samples
                .iter()
                .filter_map(|(_, s)| s.detail.get(key)?.as_u64())
                .sum()
        };
        let (done, failed) = (sum("transfers"), sum("failed"));
        let same_port = sum("data_connections_failed_on_previous_port");
        let kinds = r.detail_counts("failures");
        let ports: Vec<u64> = r
            .samples
            .iter()
            .filter_map(|(_, s)| s.detail.get("distinct_data_ports")?.as_u64())
            .collect();
        let example = r
            .samples
            .iter()
            .filter_map(|(_, s)| {
                s.detail
                    .get("failure_examples")?
                    .as_array()?
                    .first()?
                    .as_str()
            })
            .next();
        any = true;
        let _ = writeln!(
            md,
            "- `{}`: {done} transfers, {}{} data ports used per run{}",
            r.scenario.name,
            if failed == 0 {
                "no failures".to_owned()
            } else {
                let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} × {k}")).collect();
                let same = if same_port > 0 {
                    format!(
                        "; {same_port} of the data connections to the port of the \
                         connection's previous transfer"
                    )
                } else {
                    String::new()
                };
                format!("**{failed} failed** ({}{same})", kinds.join(", "))
            },
            match (ports.iter().min(), ports.iter().max()) {
                (Some(a), Some(b)) if a == b => format!("; {a}"),
                (Some(a), Some(b)) => format!("; {a}–{b}"),
                _ => String::new(),
            },
            example.map_or_else(String::new, |e| format!("; e.g. {e}")),
        );
    }
    if figure == Figure::DataConns && !rows.is_empty() {
        any = true;
        let _ = writeln!(
            md,
            "\nA failure costs its connection a {} ms pause, so the rate counts what clients \
             got through, and the failure share says how often they were turned away. \
             A gateway can give a port of its range out again only once it is free: at \
             most {} ports / (time a port stays taken) connections per second.",
            RETRY_PAUSE.as_millis(),
            port_count(NARROW_DATA_PORTS)
        );
    }
    if any {
        let _ = writeln!(md);
    }
}

pub fn to_json(
    facts: &Facts,
    settings: &Settings,
    env: &Env,
    results: &[Results],
    judged: &[TargetResult],
) -> Value {
    let figures: Vec<Value> = Figure::ALL
        .iter()
        .filter(|f| results.iter().any(|r| r.figure == **f))
        .map(|figure| {
            let scenarios: Vec<Value> = results
                .iter()
                .filter(|r| r.figure == *figure)
                .map(|r| {
                    let summary: serde_json::Map<String, Value> = figure
                        .metrics()
                        .iter()
                        .filter_map(|m| Some((m.key().to_owned(), r.summary(*m)?.json())))
                        .collect();
                    let runs: Vec<Value> = r
                        .samples
                        .iter()
                        .map(|(round, s)| {
                            let values: serde_json::Map<String, Value> = s
                                .values
                                .iter()
                                .map(|(m, v)| (m.key().to_owned(), json!(v)))
                                .collect();
                            json!({
                                "round": round,
                                "values": values,
                                "failure": s.failure,
                                "detail": s.detail,
                                "other_processes_cpus": s.others_load(),
                                "kernel_counters": s.counters,
                                "kernel_attachments": s.attachments,
                            })
                        })
                        .collect();
                    json!({
                        "name": r.scenario.name,
                        "summary": summary,
                        "failed_runs": r.failed_runs().count(),
                        "runs": runs,
                    })
                })
                .collect();
            json!({
                "name": figure.name(),
                "title": figure.title(settings),
                "method": figure.method(settings, env),
                "ftp_guard_data_ports": figure.data_ports(),
                "scenarios": scenarios,
            })
        })
        .collect();
    let comparisons: Vec<Value> = Metric::HEADLINE
        .iter()
        .flat_map(|m| {
            results
                .iter()
                .filter(move |r| r.figure.metrics().contains(m))
                .flat_map(move |r| {
                    BASELINES.iter().filter_map(move |b| {
                        let v = r.summary(*m)?.median;
                        let base = median(results, *m, b)?;
                        (*b != r.scenario.name).then(|| {
                            json!({
                                "metric": m.key(),
                                "scenario": r.scenario.name,
                                "baseline": b,
                                "kind": if *m == Metric::ReplyP99 { "difference" } else { "ratio" },
                                "value": versus(*m, v, base).0,
                            })
                        })
                    })
                })
        })
        .collect();
    let targets: Vec<Value> = judged
        .iter()
        .map(|r| {
            let bound = match r.target.bound {
                Bound::AtLeast(x) => json!({ "at_least": x }),
                Bound::AtMost(x) => json!({ "at_most": x }),
                Bound::Info => Value::Null,
            };
            let compare = match r.target.compare {
                Compare::Ratio(a, b) => json!({ "ratio": [a, b] }),
                Compare::Difference(a, b) => json!({ "difference": [a, b] }),
                Compare::Value(a) => json!({ "value": a }),
            };
            json!({
                "label": r.target.label,
                "metric": r.target.metric.key(),
                "compare": compare,
                "value": r.value,
                "target": bound,
                "met": r.met,
            })
        })
        .collect();
    json!({
        "machine": facts.json(),
        "settings": {
            "streams": settings.streams,
            "session_seconds": settings.session_seconds,
            "session_workers": settings.session_workers,
            "latency_samples": settings.latency_samples,
            "lease_connections": settings.lease_connections,
            "leases_per_connection": settings.leases_per_connection,
            "idle_sessions": settings.idle_sessions,
            "data_conn_seconds": settings.data_conn_seconds,
            "data_conn_workers": settings.data_conn_workers,
            "stall_seconds": settings.stall.as_secs_f64(),
        },
        "figures": figures,
        "comparisons": comparisons,
        "targets": targets,
    })
}

pub fn default_out_dir() -> PathBuf {
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

pub fn write_reports(dir: &Path, stamp: &str, md: &str, json: &Value) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::SCENARIOS;

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
    fn targets_name_known_scenarios_and_measured_metrics() {
        for t in TARGETS {
            for name in t.compare.scenarios() {
                assert!(SCENARIOS.iter().any(|s| s.name == name), "{name}");
            }
            assert!(
                Figure::ALL.iter().any(|f| f.metrics().contains(&t.metric)),
                "{}",
                t.label
            );
        }
        for b in BASELINES {
            assert!(SCENARIOS.iter().any(|s| s.name == b), "{b}");
        }
    }

    fn results_with(metric: Metric, values: &[(&str, f64)]) -> Vec<Results> {
        let figure = Figure::ALL
            .into_iter()
            .find(|f| f.metrics().contains(&metric))
            .unwrap();
        values
            .iter()
            .map(|(name, v)| {
                let mut sample = Sample::default();
                sample.values.insert(metric, *v);
                Results {
                    figure,
                    scenario: SCENARIOS.iter().find(|s| s.name == *name).unwrap(),
                    samples: vec![(1, sample)],
                }
            })
            .collect()
    }

    #[test]
    fn targets_are_judged_from_medians() {
        let results = results_with(
            Metric::SessionsPerSec,
            &[("kernel", 85.0), ("kernel-helper", 100.0)],
        );
        let judged = judge(&results);
        let r = judged
            .iter()
            .find(|r| r.target.label == "sessions/s kernel / kernel-helper")
            .unwrap();
        assert!((r.value - 0.85).abs() < 1e-9);
        assert!(!r.met, "0.85 < 0.9 must be missed");
        let results = results_with(Metric::ReplyP99, &[("kernel", 900.0), ("routing", 100.0)]);
        let r = judge(&results);
        assert_eq!(r.len(), 1);
        assert!(r[0].met && (r[0].value - 800.0).abs() < 1e-9);
        let results = results_with(Metric::MemGateway, &[("kernel", 17.0)]);
        assert!(!judge(&results)[0].met);
    }

    #[test]
    fn a_scenario_whose_runs_all_failed_misses_its_target() {
        let figure = Figure::ThroughputOffload;
        let scenario = |name| SCENARIOS.iter().find(|s| s.name == name).unwrap();
        let mut ok = Sample::default();
        ok.values.insert(Metric::OffloadThroughput, 5.0);
        let failed = Sample::failed(anyhow::anyhow!("curl failed (exit 28)"));
        let results = vec![
            Results {
                figure,
                scenario: scenario("routing"),
                samples: vec![(1, ok)],
            },
            Results {
                figure,
                scenario: scenario("kernel"),
                samples: vec![(1, failed)],
            },
        ];
        let judged = judge(&results);
        let r = judged
            .iter()
            .find(|r| r.target.label == "throughput with checksum offload on kernel / routing")
            .expect("judged, not left out");
        assert!(r.value.is_nan() && !r.met);
        assert_eq!(results[1].failed_runs().count(), 1);
        let mut md = String::new();
        figure_notes(&mut md, figure, &results.iter().collect::<Vec<_>>());
        assert!(md.contains("1 of 1 runs FAILED"), "{md}");
        assert!(md.contains("exit 28"), "{md}");
    }

    #[test]
    fn data_conn_failures_are_summed_by_kind() {
        let mut sample = Sample::default();
        sample.values.insert(Metric::DataConnsPerSec, 80.0);
        sample.detail = crate::figures::json_map(json!({
            "transfers": 400,
            "failed": 30,
            "failures": { "425 on EPSV": 20, "425 on PASV": 10 },
            "failure_examples": ["EPSV: 425 Can't open data connection now"],
            "distinct_data_ports": 100,
        }));
        let r = Results {
            figure: Figure::DataConns,
            scenario: SCENARIOS.iter().find(|s| s.name == "kernel").unwrap(),
            samples: vec![(1, sample.clone()), (2, sample)],
        };
        let mut md = String::new();
        figure_notes(&mut md, Figure::DataConns, &[&r]);
        assert!(md.contains("800 transfers"), "{md}");
        assert!(
            md.contains("**60 failed** (40 × 425 on EPSV, 20 × 425 on PASV)"),
            "{md}"
        );
        assert!(md.contains("; 100 data ports used per run"), "{md}");
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
    fn latency_is_compared_as_a_difference() {
        assert_eq!(versus(Metric::ReplyP99, 150.0, 100.0).1, "+50.0 µs");
        assert_eq!(versus(Metric::Throughput, 5.0, 4.0).1, "1.25×");
    }
}

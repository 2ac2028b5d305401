//! The markdown report: one table per figure, medians with their range, the targets
//! judged, and notes on what each figure measured.
use std::{collections::BTreeMap, fmt::Write as _};

use ftp_guard_common::Counter;

use crate::{
    cpu::BUSY_MACHINE,
    env::Env,
    figures::{Figure, Metric, RETRY_PAUSE, Sample, Settings, port_count},
    scenarios::{NARROW_DATA_PORTS, Scenario},
};

use super::{
    BASELINES, Results, Summary,
    facts::Facts,
    median,
    targets::{Bound, TargetResult, versus},
};

/// Three significant digits at most (two decimals from 0.1 up), plain notation.
pub(super) fn fmt_num(x: f64) -> String {
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

pub(super) fn cell(s: Option<Summary>) -> String {
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
pub(super) fn figure_notes(md: &mut String, figure: Figure, rows: &[&Results]) {
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

//! The JSON report: every sample of every run, the summaries and the targets judged.
use serde_json::{Value, json};

use crate::{
    env::Env,
    figures::{Figure, Metric, Settings},
};

use super::{
    BASELINES, Results,
    facts::Facts,
    median,
    targets::{Bound, Compare, TargetResult, versus},
};

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

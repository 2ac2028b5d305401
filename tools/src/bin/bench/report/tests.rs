//! Statistics, dates, targets and both reports over made-up runs.
use super::{
    facts::utc,
    markdown::{figure_notes, fmt_num},
    targets::{TARGETS, versus},
    *,
};
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

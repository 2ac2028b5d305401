//! The figures' tables: every metric in one figure, renaming samples.
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
fn renamed_keeps_only_the_mapped_values() {
    let mut s = Sample::default();
    s.set(Metric::Throughput, 5.0);
    s.set(Metric::GatewayCpu, 0.1);
    let s = s.renamed(&[(Metric::Throughput, Metric::OffloadThroughput)]);
    assert_eq!(s.values.len(), 1);
    assert_eq!(s.values[&Metric::OffloadThroughput], 5.0);
}

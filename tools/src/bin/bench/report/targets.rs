//! The targets the issue sets (each a metric, a bound and a baseline to compare with) and
//! how the runs are judged against them.
use crate::figures::Metric;

use super::{Results, markdown::fmt_num, median_or_failed};

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
    pub(super) fn scenarios(self) -> Vec<&'static str> {
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

/// What issues 13, 11, 6 and 4 ask for, plus figures worth watching.
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
    Target {
        label: "SYNs dropped/s on the data range kernel-xdp / nftables ingress (kernel-helper)",
        metric: Metric::SynDropsPerSec,
        compare: Compare::Ratio("kernel-xdp", "kernel-helper"),
        bound: Bound::AtLeast(5.0),
    },
    Target {
        label: "sessions/s under a SYN flood at port 21 / unloaded (kernel)",
        metric: Metric::FloodSessionsShare,
        compare: Compare::Value("kernel"),
        bound: Bound::AtLeast(0.8),
    },
    Target {
        label: "SYNs dropped/s on the data range kernel / nftables ingress (kernel-helper)",
        metric: Metric::SynDropsPerSec,
        compare: Compare::Ratio("kernel", "kernel-helper"),
        bound: Bound::Info,
    },
    Target {
        label: "machine CPU per SYN dropped kernel-xdp / nftables ingress (kernel-helper)",
        metric: Metric::SynDropCpu,
        compare: Compare::Ratio("kernel-xdp", "kernel-helper"),
        bound: Bound::Info,
    },
    Target {
        label: "sessions/s under a SYN flood at port 21 / unloaded (kernel-helper: DNAT, origin's SYN cookies)",
        metric: Metric::FloodSessionsShare,
        compare: Compare::Value("kernel-helper"),
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
pub(super) fn versus(metric: Metric, value: f64, baseline: f64) -> (f64, String) {
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

//! Statistics over the runs, the targets the issue sets, and the markdown and JSON
//! reports (with the machine facts they are valid for).
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

mod facts;
mod json;
mod markdown;
mod targets;
#[cfg(test)]
mod tests;

pub use facts::Facts;
pub use json::to_json;
pub use markdown::markdown;
pub use targets::judge;

use crate::{
    figures::{Figure, Metric, Sample},
    scenarios::Scenario,
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
pub(super) fn median(results: &[Results], metric: Metric, name: &str) -> Option<f64> {
    results
        .iter()
        .filter(|r| r.scenario.name == name && r.figure.metrics().contains(&metric))
        .find_map(|r| r.summary(metric))
        .map(|s| s.median)
}

/// As [`median`], but NaN when the scenario ran the figure and no run gave a value (every
/// run failed): a target on it is then missed, not left out.
pub(super) fn median_or_failed(results: &[Results], metric: Metric, name: &str) -> Option<f64> {
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

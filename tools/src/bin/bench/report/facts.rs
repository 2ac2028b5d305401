//! The machine facts a report is valid for: kernel, CPU, memory, commit, time.
use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use crate::env::Env;

/// What the report says about the machine and the settings.
pub struct Facts {
    pub(super) date: String,
    pub stamp: String,
    pub(super) kernel: String,
    pub(super) cpus: usize,
    pub(super) cpu_model: String,
    pub(super) mem_gib: f64,
    pub(super) commit: String,
    pub(super) vsftpd: String,
    pub(super) curl: String,
    pub(super) size: u64,
    pub(super) runs: u32,
    pub(super) offloads: BTreeMap<String, String>,
    /// CPUs' worth of work the machine did, idle of ours, just before the runs.
    pub(super) background_cpus: f64,
    /// Timed runs repeated because other processes disturbed them.
    pub retried_runs: u32,
    pub(super) nft: String,
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

/// (year, month, day, hour, minute, second) in UTC of a Unix time (the audit log's).
pub(super) use ftp_guard::audit::utc;

//! CPU accounting for the timed runs: the machine's busy time from /proc/stat, other
//! processes' share (to flag disturbed runs), this process's own time (ftp-guard runs
//! in-process).
use std::{
    collections::BTreeMap,
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Background load (in CPUs) above which a run counts as disturbed.
pub const BUSY_MACHINE: f64 = 0.1;

/// The aggregate `cpu` line of /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineCpu {
    /// user + nice + system + irq + softirq (not idle, iowait, steal).
    busy: u64,
    softirq: u64,
}

impl MachineCpu {
    pub fn now() -> Result<MachineCpu> {
        let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&text).context("no aggregate cpu line in /proc/stat")
    }

    fn parse(stat: &str) -> Option<MachineCpu> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal guest guest_nice
        let field = |i: usize| f.get(i).copied();
        Some(MachineCpu {
            busy: field(0)? + field(1)? + field(2)? + field(5)? + field(6)?,
            softirq: field(6)?,
        })
    }

    pub fn busy_since(&self, before: &MachineCpu) -> f64 {
        ticks_to_seconds(self.busy.saturating_sub(before.busy))
    }

    pub fn softirq_since(&self, before: &MachineCpu) -> f64 {
        ticks_to_seconds(self.softirq.saturating_sub(before.softirq))
    }
}

/// CPUs' worth of busy time over `span` of idleness of ours: others' work on the machine.
pub fn background_load(span: Duration) -> Result<f64> {
    let before = MachineCpu::now()?;
    let started = Instant::now();
    std::thread::sleep(span);
    let after = MachineCpu::now()?;
    Ok(after.busy_since(&before) / started.elapsed().as_secs_f64())
}

/// Waits until the machine is quiet (see [`BUSY_MACHINE`]) or `max` has passed; returns
/// the time waited.
pub fn wait_for_quiet(max: Duration) -> Result<Duration> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let load = background_load(Duration::from_millis(250))?;
        if load <= BUSY_MACHINE || started.elapsed() >= max {
            return Ok(started.elapsed());
        }
        if !said {
            eprintln!("  others use {load:.2} CPUs: waiting up to {max:?} for quiet");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(750));
    }
}

/// CPU ticks (utime+stime+cutime+cstime) of every process that is not part of the
/// benchmark, by pid: an indicator of other work on the machine during a run. Ours are this
/// process, its descendants (curl, vsftpd and its sessions) and kernel threads (ksoftirqd
/// carries our packets). A foreign parent's cutime jumps by a child's whole life when it
/// reaps it, so this over-counts rather than misses.
pub fn others_cpu() -> BTreeMap<u32, u64> {
    let own = std::process::id();
    // pid → (ppid, kernel thread, ticks)
    let mut procs: BTreeMap<u32, (u32, bool, u64)> = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(p) = parse_pid_stat(&stat) {
            procs.insert(pid, p);
        }
    }
    let ours = |mut pid: u32| {
        for _ in 0..64 {
            match procs.get(&pid) {
                _ if pid == own => return true,
                Some((_, true, _)) => return true,
                Some((ppid, false, _)) if *ppid > 1 => pid = *ppid,
                _ => return false,
            }
        }
        false
    };
    procs
        .iter()
        .filter(|(pid, _)| !ours(**pid))
        .map(|(pid, (_, _, ticks))| (*pid, *ticks))
        .collect()
}

/// (ppid, is a kernel thread, utime+stime+cutime+cstime) from a /proc/<pid>/stat line.
fn parse_pid_stat(stat: &str) -> Option<(u32, bool, u64)> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    // The command name is in parentheses and may hold anything: fields follow the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    let ppid = u32::try_from(num(1)?).ok()?;
    let kthread = num(6)? & PF_KTHREAD != 0 || ppid == 2;
    Some((ppid, kthread, num(11)? + num(12)? + num(13)? + num(14)?))
}

/// Seconds of CPU that processes other than ours used between two [`others_cpu`] scans.
pub fn others_cpu_since(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> f64 {
    let ticks = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks_to_seconds(ticks)
}

pub fn ticks_to_seconds(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// User + system CPU seconds of this whole process (every thread, ftp-guard's included;
/// not its children, which are counted only once waited for and only as children).
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: a zeroed out-struct for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF cannot fail with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_line() {
        let stat = "cpu  100 5 50 1000 7 3 11 2 0 0\ncpu0 50 2 25 500 3 1 5 1 0 0\n";
        assert_eq!(
            MachineCpu::parse(stat),
            Some(MachineCpu {
                busy: 100 + 5 + 50 + 3 + 11,
                softirq: 11
            })
        );
        assert_eq!(MachineCpu::parse("intr 1 2 3\n"), None);
    }

    #[test]
    fn pid_stat_fields() {
        let stat = "1234 (a (b) c) S 77 1234 1234 0 -1 4194560 100 0 0 0 11 22 33 44 20 0 1 0";
        assert_eq!(parse_pid_stat(stat), Some((77, false, 11 + 22 + 33 + 44)));
        let kthread = "15 (ksoftirqd/1) S 2 0 0 0 -1 69238848 0 0 0 0 5 6 0 0 20 0 1 0";
        assert_eq!(parse_pid_stat(kthread), Some((2, true, 11)));
        assert_eq!(parse_pid_stat("garbage"), None);
    }
}

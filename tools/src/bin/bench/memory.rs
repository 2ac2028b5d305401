//! The idle-session memory figure: thousands of logged-in control sessions held open
//! through each carrier, and what the gateway (and the machine) spends on them.
//!
//! ftp-guard runs here as the real release binary in its own memory cgroup, so the
//! figure holds what a deployment pays: heap, stacks of its tasks and the kernel memory
//! charged to the process (its sockets), not the benchmark's own allocations.
use std::{
    fs,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use ftp_guard_testbed::{ftp_load::FtpControl, netns::GATEWAY};
use serde_json::json;

use crate::{
    env::Env,
    figures::{Metric, OP_TIMEOUT, Sample, Settings, in_client_threads, json_map},
    scenarios::{Active, Carrier, Scenario, VIP},
};

/// Open files ftp-guard needs besides its sessions' sockets (listeners, admin, BPF
/// objects, logs): the memory figure's session count leaves these free.
pub const RESERVED_FILES: u64 = 100;
/// Threads opening the sessions.
const OPENERS: usize = 8;
/// Sessions opened and closed before the baseline, so code and pools are warm.
const WARM_UP: usize = 32;

/// The scenario's gateway while the figure runs, and how to read what it holds.
enum Gateway {
    FtpGuard(GatewayProcess),
    /// Routing or the kernel helper (the nftables table goes when dropped).
    Kernel {
        _active: Active,
        helper: bool,
    },
}

impl Gateway {
    fn start(env: &Env, scenario: &Scenario, origin: SocketAddrV4, s: &Settings) -> Result<Self> {
        Ok(match scenario.carrier {
            Carrier::FtpGuard { .. } => {
                let config = scenario
                    .carrier
                    .ftp_guard_config(origin, "max_sessions = 20000\n")
                    .context("ftp-guard config")?;
                Gateway::FtpGuard(GatewayProcess::start(env, &config, &s.ftp_guard_bin)?)
            }
            carrier => Gateway::Kernel {
                _active: carrier.start_without_ftp_guard(&env.topo, origin)?,
                helper: carrier == Carrier::KernelHelper,
            },
        })
    }

    fn target(&self, origin: SocketAddrV4) -> SocketAddrV4 {
        match self {
            Gateway::Kernel { helper: false, .. } => origin,
            _ => SocketAddrV4::new(VIP, 21),
        }
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let (gateway, rss) = match self {
            Gateway::FtpGuard(p) => (
                p.cgroup.as_ref().map(Cgroup::usage).transpose()?,
                Some(rss_bytes(p.child.id())?),
            ),
            Gateway::Kernel { helper: true, .. } => (Some(conntrack_slab_bytes()?), None),
            Gateway::Kernel { helper: false, .. } => (None, None),
        };
        Ok(Snapshot { gateway, rss })
    }
}

pub fn measure(env: &Env, scenario: &Scenario, s: &Settings) -> Result<Sample> {
    let origin = env
        .light_server
        .as_ref()
        .context("the memory figure needs the pyftpdlib origin")?;
    let login = origin.login();
    let n = s.idle_sessions;
    let gateway = Gateway::start(env, scenario, origin.addr(), s)?;
    let target = gateway.target(origin.addr());

    let open = |count: usize| -> Result<Vec<FtpControl>> {
        let (user, password) = (login.user.clone(), login.password.clone());
        let per_thread = count.div_ceil(OPENERS);
        let opened = in_client_threads(env, OPENERS, move |i| -> Result<Vec<FtpControl>> {
            let mine = per_thread.min(count.saturating_sub(i * per_thread));
            (0..mine)
                .map(|_| FtpControl::login(target, &user, &password, OP_TIMEOUT))
                .collect()
        })?;
        Ok(opened
            .into_iter()
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect())
    };

    drop(open(WARM_UP)?);
    std::thread::sleep(Duration::from_millis(500));
    let before = gateway.snapshot()?;
    let started = Instant::now();
    let mut sessions = open(n)?;
    let open_seconds = started.elapsed().as_secs_f64();
    ensure!(
        sessions.len() == n,
        "opened {} of {n} sessions",
        sessions.len()
    );
    // Let lazily freed memory settle before reading.
    std::thread::sleep(Duration::from_secs(1));
    let after = gateway.snapshot()?;
    // The sessions are alive: every 100th answers a NOOP.
    for c in sessions.iter_mut().step_by(100) {
        c.expect("NOOP", 200).context("an idle session died")?;
    }
    drop(sessions);
    drop(gateway);

    let per_session_kib = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
        Some(a? as f64 - b? as f64).map(|d| d / n as f64 / 1024.0)
    };
    let mut sample = Sample::default();
    let values = [
        (
            Metric::MemGateway,
            per_session_kib(after.gateway, before.gateway),
        ),
        (Metric::MemRss, per_session_kib(after.rss, before.rss)),
    ];
    for (metric, value) in values {
        if let Some(v) = value {
            sample.values.insert(metric, v);
        }
    }
    sample.detail = json_map(json!({
        "sessions": n,
        "open_seconds": open_seconds,
        "gateway_bytes_before": before.gateway,
        "gateway_bytes_after": after.gateway,
        "process_rss_bytes_before": before.rss,
        "process_rss_bytes_after": after.rss,
    }));
    Ok(sample)
}

struct Snapshot {
    gateway: Option<u64>,
    rss: Option<u64>,
}

/// ftp-guard's release binary in the gateway namespace, in a memory cgroup of its own.
/// Stopped (SIGINT, then SIGKILL) and its cgroup removed when dropped.
struct GatewayProcess {
    child: Child,
    cgroup: Option<Cgroup>,
    dir: PathBuf,
}

impl GatewayProcess {
    fn start(env: &Env, config: &str, binary: &Path) -> Result<GatewayProcess> {
        ensure!(
            binary.is_file(),
            "{} is missing: `cargo xtask bench` builds it (or pass --ftp-guard-bin)",
            binary.display()
        );
        let dir = env.payload.dir.join("memory-ftp-guard");
        fs::create_dir_all(&dir)?;
        let config_path = dir.join("ftp-guard.toml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.join("ftp-guard.log"))?;
        let child = env
            .topo
            .cmd(GATEWAY, &binary.to_string_lossy())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut process = GatewayProcess {
            cgroup: None,
            child,
            dir,
        };
        // `ip netns exec` execs in place: the child's PID is ftp-guard's.
        let pid = process.child.id();
        process.cgroup = Cgroup::create(pid)?;
        let listening = env
            .topo
            .wait_for_tcp_listen(GATEWAY, 21, Duration::from_secs(20));
        if let Err(e) = listening {
            let log = fs::read_to_string(process.dir.join("ftp-guard.log")).unwrap_or_default();
            return Err(e.context(format!("ftp-guard did not come up; its log:\n{log}")));
        }
        Ok(process)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A memory cgroup (v2 if the unified hierarchy has the memory controller, else v1).
struct Cgroup {
    dir: PathBuf,
    usage_file: &'static str,
}

impl Cgroup {
    /// Creates a cgroup and moves `pid` into it; None when no memory controller is
    /// mounted (the gateway figure is then left out, the RSS one stays).
    fn create(pid: u32) -> Result<Option<Cgroup>> {
        let name = format!("ftp-guard-bench-{}", std::process::id());
        let candidates = [
            ("/sys/fs/cgroup", "memory.current"),
            ("/sys/fs/cgroup/unified", "memory.current"),
            ("/sys/fs/cgroup/memory", "memory.usage_in_bytes"),
        ];
        for (root, usage_file) in candidates {
            let root = Path::new(root);
            let v2 = usage_file == "memory.current";
            if v2 {
                let controllers =
                    fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                if !controllers.split_whitespace().any(|c| c == "memory") {
                    continue;
                }
                // The controller must be enabled for children.
                let _ = fs::write(root.join("cgroup.subtree_control"), "+memory");
            } else if !root.join(usage_file).exists() {
                continue;
            }
            let dir = root.join(&name);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let cgroup = Cgroup { dir, usage_file };
            if let Err(e) = fs::write(cgroup.dir.join("cgroup.procs"), pid.to_string()) {
                cgroup.remove();
                return Err(e).with_context(|| format!("moving ftp-guard into {name}"));
            }
            return Ok(Some(cgroup));
        }
        eprintln!("warning: no memory cgroup controller: the gateway memory figure is left out");
        Ok(None)
    }

    fn usage(&self) -> Result<u64> {
        let path = self.dir.join(self.usage_file);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: {text:?}", path.display()))
    }

    fn remove(&self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not remove {}", self.dir.display());
    }
}

fn rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    kib_field(&status, "VmRSS:")
        .map(|k| k * 1024)
        .context("no VmRSS")
}

/// "Name:   1234 kB" → 1234.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Bytes of live nf_conntrack objects (active_objs × objsize in /proc/slabinfo).
fn conntrack_slab_bytes() -> Result<u64> {
    let slabinfo = fs::read_to_string("/proc/slabinfo").context("reading /proc/slabinfo")?;
    Ok(slab_bytes(&slabinfo, "nf_conntrack").unwrap_or(0))
}

fn slab_bytes(slabinfo: &str, cache: &str) -> Option<u64> {
    let line = slabinfo
        .lines()
        .find(|l| l.split_whitespace().next() == Some(cache))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // active_objs num_objs objsize
    Some(f[0] * f[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_slabinfo_fields() {
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(kib_field(meminfo, "MemTotal:"), Some(24_000_000));
        assert_eq!(kib_field(meminfo, "MemAvailable:"), Some(20_000_000));
        assert_eq!(kib_field(meminfo, "Cached:"), None);
        let slabinfo = "slabinfo - version: 2.1\n\
                        nf_conntrack_expect      0      0    208   39    2 : tunables 0 0 0\n\
                        nf_conntrack         120    150    256   32    2 : tunables 0 0 0\n";
        assert_eq!(slab_bytes(slabinfo, "nf_conntrack"), Some(120 * 256));
        assert_eq!(slab_bytes(slabinfo, "nf_conntrack_expect"), Some(0));
        assert_eq!(slab_bytes(slabinfo, "tcp"), None);
    }
}

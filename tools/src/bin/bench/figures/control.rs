//! The control-channel figures: sessions per second, data connections per second through
//! a narrow range, reply latency, lease rate; and the client threads they run on.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Barrier, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use ftp_guard_testbed::{
    ftp_load::{self, FtpControl, Passive},
    netns::CLIENT,
};
use serde_json::{Value, json};

use super::{Metric, OP_TIMEOUT, RETRY_PAUSE, Sample, Settings, cpu_window};
use crate::{
    env::{Env, SMALL, SMALL_SIZE},
    scenarios::{Active, NARROW_DATA_PORTS},
};

/// Runs `f(worker index)` on `n` threads in the client namespace, started together;
/// returns their results in order.
pub fn in_client_threads<T: Send + 'static>(
    env: &Env,
    n: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Result<Vec<T>> {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (f, barrier) = (f.clone(), barrier.clone());
            env.topo.thread_in_ns(CLIENT, move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))
        })
        .collect()
}

/// One round of whole sessions back to back on `session_workers` threads for
/// `session_seconds`: what completed, what failed, and the CPU meanwhile.
pub(super) struct SessionRound {
    /// Seconds each completed session took.
    pub times: Vec<f64>,
    pub errors: Vec<String>,
    pub wall: f64,
    pub machine: f64,
    pub others: f64,
}

impl SessionRound {
    /// Completed sessions per second.
    pub fn rate(&self) -> f64 {
        self.times.len() as f64 / self.wall
    }

    pub fn to_json(&self) -> Value {
        json!({
            "sessions": self.times.len(),
            "failed": self.errors.len(),
            "first_failure": self.errors.first(),
            "wall_seconds": self.wall,
            "machine_cpu_seconds": self.machine,
        })
    }
}

/// Runs a [`SessionRound`] against `active` (one untimed session first: the path works
/// and is warm). Failed sessions are counted, not fatal.
pub(super) fn session_round(env: &Env, active: &Active, s: &Settings) -> Result<SessionRound> {
    let login = env.login(active.target);
    let (addr, user, password) = (login.addr, login.user.clone(), login.password.clone());
    env.topo.in_ns(CLIENT, || {
        ftp_load::session(addr, &user, &password, SMALL, SMALL_SIZE, OP_TIMEOUT)
    })?;
    let span = Duration::from_secs_f64(s.session_seconds);
    let (per_worker, w) = cpu_window(|| {
        in_client_threads(env, s.session_workers, move |_| {
            let deadline = Instant::now() + span;
            let mut times = Vec::new();
            let mut errors = Vec::new();
            while Instant::now() < deadline {
                match ftp_load::session(addr, &user, &password, SMALL, SMALL_SIZE, OP_TIMEOUT) {
                    Ok(t) => times.push(t.as_secs_f64()),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            (times, errors)
        })
    })?;
    let (mut times, mut errors) = (Vec::new(), Vec::new());
    for (t, e) in per_worker {
        times.extend(t);
        errors.extend(e);
    }
    times.sort_by(f64::total_cmp);
    Ok(SessionRound {
        times,
        errors,
        wall: w.wall,
        machine: w.machine,
        others: w.others,
    })
}

pub(super) fn sessions(env: &Env, active: &Active, s: &Settings) -> Result<Sample> {
    let round = session_round(env, active, s)?;
    let times = &round.times;
    ensure!(
        round.errors.is_empty(),
        "{} of {} sessions failed; first: {}",
        round.errors.len(),
        round.errors.len() + times.len(),
        round.errors[0]
    );
    ensure!(!times.is_empty(), "no session completed");
    let n = times.len() as f64;
    let mut sample = Sample {
        wall_seconds: round.wall,
        others_cpu_seconds: round.others,
        ..Sample::default()
    };
    sample.set(Metric::SessionsPerSec, round.rate());
    sample.set(Metric::SessionCpu, round.machine / n * 1e3);
    sample.set(
        Metric::SessionP50,
        ftp_load::quantile(times, 0.5).unwrap_or(f64::NAN) * 1e3,
    );
    sample.detail = json_map(json!({
        "sessions": times.len(),
        "wall_seconds": round.wall,
        "machine_cpu_seconds": round.machine,
        "session_p99_ms": ftp_load::quantile(times, 0.99).map(|t| t * 1e3),
    }));
    Ok(sample)
}

/// How many ports a `"first-last"` range has.
pub fn port_count(range: &str) -> usize {
    range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .map_or(0, |(a, b)| (b + 1).saturating_sub(a))
}

/// What one `data-conns` control connection did.
#[derive(Default)]
pub(super) struct DataConnTally {
    /// Seconds each completed transfer took (passive command to 226).
    times: Vec<f64>,
    /// Failed attempts by kind (`425 on EPSV`, `data connection`, …).
    failures: BTreeMap<String, u64>,
    /// The first few failures, word for word.
    examples: Vec<String>,
    /// Data ports the gateway (or origin) announced for completed transfers.
    ports: BTreeSet<u16>,
    /// Control connections replaced after one was lost.
    reconnects: u64,
    /// Data connections not made to the same port as the connection's previous transfer
    /// (a port given out again at once to the same client).
    failed_on_previous_port: u64,
    /// The ports of the data connections not made, each once.
    failed_ports: BTreeSet<u16>,
}

impl DataConnTally {
    const EXAMPLES: usize = 3;

    fn fail(&mut self, kind: String, what: String) {
        *self.failures.entry(kind).or_insert(0) += 1;
        if self.examples.len() < Self::EXAMPLES {
            self.examples.push(what);
        }
    }
}

/// Short passive transfers back to back on `data_conn_workers` control connections; see
/// [`Figure::method`]. Failures are counted, not fatal: they are what the figure is about.
pub(super) fn data_conns(env: &Env, active: &Active, s: &Settings) -> Result<Sample> {
    let login = env.login(active.target);
    let timeout = s.stall;
    let workers = s.data_conn_workers;
    // Log in first (not timed), then all connections start their transfers at once.
    let controls = in_client_threads(env, workers, {
        let login = login.clone();
        move |_| FtpControl::login(login.addr, &login.user, &login.password, timeout)
    })?
    .into_iter()
    .map(|c| c.map(|c| Mutex::new(Some(c))))
    .collect::<Result<Vec<_>>>()?;
    let shared = Arc::new(controls);
    let span = Duration::from_secs_f64(s.data_conn_seconds);
    let (per_worker, w) = cpu_window(|| {
        let shared = shared.clone();
        in_client_threads(env, workers, move |i| {
            let mut control = shared[i].lock().ok().and_then(|mut c| c.take());
            let mut tally = DataConnTally::default();
            let deadline = Instant::now() + span;
            let mut k = i;
            let mut last_port = None;
            while Instant::now() < deadline {
                let c = match control.as_mut() {
                    Some(c) => c,
                    None => {
                        match FtpControl::login(login.addr, &login.user, &login.password, timeout) {
                            Ok(c) => {
                                tally.reconnects += 1;
                                control.insert(c)
                            }
                            Err(e) => {
                                tally.fail("login".into(), format!("login: {e:#}"));
                                std::thread::sleep(RETRY_PAUSE);
                                continue;
                            }
                        }
                    }
                };
                let mode = if k % 2 == 0 {
                    Passive::Epsv
                } else {
                    Passive::Pasv
                };
                k += 1;
                let started = Instant::now();
                match c.passive_retr(mode, SMALL) {
                    Ok((bytes, addr)) if bytes == SMALL_SIZE => {
                        tally.times.push(started.elapsed().as_secs_f64());
                        tally.ports.insert(addr.port());
                        last_port = Some(addr.port());
                    }
                    Ok((bytes, _)) => {
                        tally.fail(
                            "transfer".into(),
                            format!("transfer: {bytes} bytes of {SMALL_SIZE}"),
                        );
                        std::thread::sleep(RETRY_PAUSE);
                    }
                    Err(f) => {
                        if let ftp_load::TransferFailure::DataConnect { addr, .. } = &f {
                            tally.failed_ports.insert(addr.port());
                            if last_port == Some(addr.port()) {
                                tally.failed_on_previous_port += 1;
                            }
                        }
                        tally.fail(f.kind(), f.to_string());
                        if !f.control_usable() {
                            control = None;
                        }
                        std::thread::sleep(RETRY_PAUSE);
                    }
                }
            }
            (tally, control)
        })
    })?;
    let mut total = DataConnTally::default();
    for (tally, control) in per_worker {
        if let Some(c) = control {
            // Not timed; a failure here says nothing about the data connections.
            let _ = c.quit();
        }
        total.times.extend(tally.times);
        for (kind, n) in tally.failures {
            *total.failures.entry(kind).or_insert(0) += n;
        }
        for e in tally.examples {
            if total.examples.len() < DataConnTally::EXAMPLES {
                total.examples.push(e);
            }
        }
        total.ports.extend(tally.ports);
        total.reconnects += tally.reconnects;
        total.failed_on_previous_port += tally.failed_on_previous_port;
        total.failed_ports.extend(tally.failed_ports);
    }
    if active.gateway.is_some() {
        let range: ftp_guard::config::PortRange = NARROW_DATA_PORTS
            .parse()
            .map_err(|e| anyhow::anyhow!("{NARROW_DATA_PORTS}: {e}"))?;
        ensure!(
            total.ports.iter().all(|p| range.contains(*p)),
            "ftp-guard announced data ports outside {NARROW_DATA_PORTS}: {:?}",
            total.ports
        );
    }
    let done = total.times.len();
    let failed: u64 = total.failures.values().sum();
    let attempts = done as u64 + failed;
    total.times.sort_by(f64::total_cmp);
    let q = |x| ftp_load::quantile(&total.times, x).map(|t| t * 1e3);
    let mut sample = Sample {
        wall_seconds: w.wall,
        others_cpu_seconds: w.others,
        ..Sample::default()
    };
    sample.set(Metric::DataConnsPerSec, done as f64 / w.wall);
    sample.set(
        Metric::DataConnsFailed,
        if attempts == 0 {
            0.0
        } else {
            failed as f64 * 100.0 / attempts as f64
        },
    );
    if done > 0 {
        sample.set(Metric::DataConnCpu, w.machine / done as f64 * 1e3);
    }
    sample.detail = json_map(json!({
        "transfers": done,
        "failed": failed,
        "failures": total.failures,
        "failure_examples": total.examples,
        "reconnects": total.reconnects,
        "data_connections_failed_on_previous_port": total.failed_on_previous_port,
        "data_connections_failed_to_ports": total.failed_ports,
        "distinct_data_ports": total.ports.len(),
        "ftp_guard_data_ports": active.gateway.as_ref().map(|_| NARROW_DATA_PORTS),
        "transfer_p50_ms": q(0.5),
        "transfer_p99_ms": q(0.99),
        "wall_seconds": w.wall,
        "machine_cpu_seconds": w.machine,
    }));
    Ok(sample)
}

pub(super) fn latency(env: &Env, active: &Active, s: &Settings) -> Result<Sample> {
    let login = env.login(active.target);
    let samples = s.latency_samples;
    let (mut rtts, w) = cpu_window(|| {
        env.topo.in_ns(CLIENT, || -> Result<Vec<f64>> {
            let mut c = FtpControl::login(login.addr, &login.user, &login.password, OP_TIMEOUT)?;
            for _ in 0..100 {
                c.expect("NOOP", 200)?;
            }
            let mut rtts = Vec::with_capacity(samples);
            for _ in 0..samples {
                let started = Instant::now();
                c.expect("NOOP", 200)?;
                rtts.push(started.elapsed().as_secs_f64() * 1e6);
            }
            c.quit()?;
            Ok(rtts)
        })
    })?;
    rtts.sort_by(f64::total_cmp);
    let q = |x| ftp_load::quantile(&rtts, x).unwrap_or(f64::NAN);
    let mut sample = Sample {
        wall_seconds: w.wall,
        others_cpu_seconds: w.others,
        ..Sample::default()
    };
    sample.set(Metric::ReplyP50, q(0.5));
    sample.set(Metric::ReplyP99, q(0.99));
    sample.detail = json_map(json!({
        "samples": rtts.len(),
        "p90_us": q(0.9),
        "p999_us": q(0.999),
        "max_us": q(1.0),
    }));
    Ok(sample)
}

pub(super) fn leases(env: &Env, active: &Active, s: &Settings) -> Result<Sample> {
    let login = env.login(active.target);
    let per = s.leases_per_connection;
    // Log in first (not timed), then all connections send their EPSVs at once.
    let controls = in_client_threads(env, s.lease_connections, {
        let login = login.clone();
        move |_| FtpControl::login(login.addr, &login.user, &login.password, OP_TIMEOUT)
    })?
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    let controls: Vec<_> = controls
        .into_iter()
        .map(|c| Arc::new(std::sync::Mutex::new(c)))
        .collect();
    let shared = Arc::new(controls);
    let (ports, w) = cpu_window(|| {
        let shared = shared.clone();
        in_client_threads(env, s.lease_connections, move |i| -> Result<Vec<u16>> {
            let mut c = shared[i].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            (0..per).map(|_| c.epsv()).collect()
        })
    })?;
    let ports = ports.into_iter().collect::<Result<Vec<_>>>()?;
    let total: usize = ports.iter().map(Vec::len).sum();
    let distinct: std::collections::BTreeSet<u16> = ports.iter().flatten().copied().collect();
    // The allocation still works after the churn.
    {
        let mut guard = shared[0].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let control: &mut FtpControl = &mut guard;
        let got = env.topo.in_ns(CLIENT, move || control.retr(SMALL))?;
        ensure!(got == SMALL_SIZE, "RETR after the EPSVs: {got} bytes");
    }
    let mut sample = Sample {
        wall_seconds: w.wall,
        others_cpu_seconds: w.others,
        ..Sample::default()
    };
    sample.set(Metric::LeasesPerSec, total as f64 / w.wall);
    sample.detail = json_map(json!({
        "epsv": total,
        "distinct_ports": distinct.len(),
        "wall_seconds": w.wall,
        "machine_cpu_seconds": w.machine,
    }));
    Ok(sample)
}

pub fn json_map(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_counts() {
        assert_eq!(port_count(NARROW_DATA_PORTS), 100);
        assert_eq!(port_count("40000-44999"), 5000);
        assert_eq!(port_count("7-7"), 1);
        assert_eq!(port_count("nonsense"), 0);
    }
}

//! The transfer figures: a scenario's downloads verified by checksum, then timed (one
//! stream and parallel streams), and curl's own report of each download.
use std::process::{Child, Stdio};

use anyhow::{Context as _, Result, bail, ensure};
use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    ftp_clients::{DataMode, curl_download, ns_command, sha256_file},
    netns::CLIENT,
};
use serde_json::json;

use super::{GB, MIN_DOWNLOAD_RATE, Metric, Sample, Settings, cpu_window, json_map};
use crate::{
    env::{Env, PAYLOAD},
    scenarios::{Active, Carrier, DATA_PORTS, Scenario},
};

/// One untimed download to a file, checked by sha256 and by the protocol trace (EPSV);
/// for a kernel path, also that the programs NATed and redirected the data (for the
/// relay's guard, that it admitted the client).
pub fn verify(env: &Env, scenario: &Scenario) -> Result<()> {
    let active = scenario
        .carrier
        .start(&env.topo, env.server.addr(), DATA_PORTS)?;
    let dest = env
        .payload
        .dir
        .join(format!("verify-{}.bin", scenario.name));
    let result = (|| {
        let login = env.login(active.target);
        let run = curl_download(
            env.topo.ns_name(CLIENT),
            &login,
            PAYLOAD,
            &dest,
            DataMode::Epsv,
        )?
        .success()?;
        run.check_mode(DataMode::Epsv)?;
        let got = sha256_file(&dest)?;
        ensure!(
            got == env.payload.sha256,
            "the downloaded file's sha256 is {got}, the payload's {}",
            env.payload.sha256
        );
        if let Some(c) = active.counters() {
            // The relay's guard only admits the lease's client; the kernel path carries.
            let relayed = matches!(
                scenario.carrier,
                Carrier::FtpGuard {
                    dataplane: "userspace",
                    ..
                }
            );
            if relayed {
                ensure!(
                    c.get(Counter::PassLeased) > 0 && c.get(Counter::NatToClient) == 0,
                    "the guard did not admit the relay's client: {c:?}"
                );
            } else {
                ensure!(
                    c.get(Counter::NatToClient) > 0 && c.get(Counter::Redirected) > 0,
                    "the kernel path did not carry the data: {c:?}"
                );
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&dest);
    result
}

/// `streams` simultaneous curl downloads of the payload to /dev/null.
pub(super) fn downloads(
    env: &Env,
    active: &Active,
    streams: usize,
    s: &Settings,
) -> Result<Sample> {
    let login = env.login(active.target);
    let stall = s.stall.as_secs().max(1).to_string();
    // Each stream gets its share of the bandwidth.
    let max_time = (s.stall.as_secs_f64()
        + (env.payload.size * streams as u64) as f64 / MIN_DOWNLOAD_RATE)
        .ceil()
        .to_string();
    let spawn = || -> Result<Child> {
        let mut curl = ns_command(env.topo.ns_name(CLIENT))?;
        curl.args([
            "curl",
            "-sS",
            "--ftp-pasv",
            "--user",
            &format!("{}:{}", login.user, login.password),
            "--connect-timeout",
            &stall,
            // No progress (< 1 byte/s) for `stall` seconds, or not done in `max_time`.
            "--speed-limit",
            "1",
            "--speed-time",
            &stall,
            "--max-time",
            &max_time,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            &login.url(PAYLOAD),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        curl.spawn().context("running curl")
    };
    let (outputs, w) = cpu_window(|| {
        let children: Vec<Child> = (0..streams).map(|_| spawn()).collect::<Result<_>>()?;
        children
            .into_iter()
            .map(|c| c.wait_with_output().context("waiting for curl"))
            .collect::<Result<Vec<_>>>()
    })?;
    let mut bytes = 0;
    let mut seconds: f64 = 0.0;
    let mut per_stream = Vec::new();
    for out in &outputs {
        let (b, s) = parse_curl(out)?;
        ensure!(
            b == env.payload.size,
            "curl got {b} bytes of {}",
            env.payload.size
        );
        bytes += b;
        seconds = seconds.max(s);
        per_stream.push(json!({ "bytes": b, "seconds": s }));
    }
    let gb = bytes as f64 / GB;
    let mut sample = Sample {
        wall_seconds: w.wall,
        others_cpu_seconds: w.others,
        ..Sample::default()
    };
    let throughput = bytes as f64 * 8.0 / seconds / GB;
    if streams == 1 {
        sample.set(Metric::Throughput, throughput);
        sample.set(Metric::MachineCpu, w.machine / gb);
        sample.set(Metric::Softirq, w.softirq / gb);
        if active.gateway.is_some() {
            sample.set(Metric::GatewayCpu, w.own / gb);
        }
    } else {
        sample.set(Metric::StreamsThroughput, throughput);
        sample.set(Metric::StreamsMachineCpu, w.machine / gb);
    }
    sample.detail = json_map(json!({
        "bytes": bytes,
        "seconds": seconds,
        "wall_seconds": w.wall,
        "machine_cpu_seconds": w.machine,
        "softirq_seconds": w.softirq,
        "gateway_process_cpu_seconds": w.own,
        "other_processes_cpu_seconds": w.others,
        "streams": per_stream,
    }));
    Ok(sample)
}

/// `%{size_download} %{time_total}` from curl's stdout, after checking its exit status.
pub fn parse_curl(out: &std::process::Output) -> Result<(u64, f64)> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "curl failed ({}): {} (-w: {:?})",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        stdout.trim()
    );
    let mut words = stdout.split_whitespace();
    let (Some(bytes), Some(secs)) = (words.next(), words.next()) else {
        bail!("unexpected curl -w output {stdout:?}");
    };
    let bytes: u64 = bytes
        .parse()
        .with_context(|| format!("size_download in {stdout:?}"))?;
    let secs: f64 = secs
        .parse()
        .with_context(|| format!("time_total in {stdout:?}"))?;
    ensure!(secs > 0.0, "curl reported time_total {secs}");
    Ok((bytes, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_write_out() {
        use std::os::unix::process::ExitStatusExt as _;
        let out = std::process::Output {
            status: std::process::ExitStatus::from_raw(0),
            stdout: b"1073741824 4.250000".to_vec(),
            stderr: Vec::new(),
        };
        assert_eq!(parse_curl(&out).unwrap(), (1_073_741_824, 4.25));
        let failed = std::process::Output {
            status: std::process::ExitStatus::from_raw(7 << 8),
            stdout: Vec::new(),
            stderr: b"couldn't connect".to_vec(),
        };
        assert!(parse_curl(&failed).is_err());
    }
}

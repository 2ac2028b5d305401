//! The transfer audit log end to end: curl downloads and uploads through the kernel path
//! and the userspace relay, and the audit log holds exactly one line per transfer with
//! the client's address, the user, the command, the path, the payload bytes each way
//! (exact), the final reply, the data path and the mode.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use ftp_guard_testbed::{
    ftp_clients::{DataMode, curl_download, curl_upload},
    ftp_servers::ServerKind,
    gateway::RunningGateway,
    netns::CLIENT_IP,
    require_privileged,
    scenario::{Env, assert_same},
};
use serde_json::{Value, json};

/// Bytes of the file fetched and sent back: several segments, not a round number.
const SIZE: u64 = 300_017;
/// The kernel path tells a connection's bytes a few seconds after it closed.
const LINES_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn kernel_path_transfers_are_audited() {
    if !require_privileged() {
        return;
    }
    audited("kaud", "kernel");
}

#[test]
fn relay_transfers_are_audited() {
    if !require_privileged() {
        return;
    }
    audited("uaud", "userspace");
}

/// A RETR (EPSV) then a STOR (EPSV) with curl, each its own session; the log's lines,
/// in session order, compared whole (times: the duration within the run's, the time
/// stamp's form). Then the file is rotated and reopened on reload.
fn audited(tag: &str, dataplane: &str) {
    let mut env = Env::start(tag, ServerKind::Vsftpd, dataplane);
    let log = env.local("audit.log");
    let config = format!(
        "audit_log = \"{}\"\n{}",
        log.display(),
        env.config(dataplane, "40000-40099", &env.client_if, &env.origin_if)
    );
    env.gateway.stop();
    env.gateway = RunningGateway::start(&env.topo, &config).unwrap();
    let login = env.login();
    let remote = env.origin_file("audit.bin", SIZE);
    let local = env.local("audit.bin");
    let started = Instant::now();
    curl_download(env.client_ns(), &login, "audit.bin", &local, DataMode::Epsv)
        .unwrap()
        .success()
        .unwrap();
    assert_same(&remote, &local);
    curl_upload(env.client_ns(), &local, &login, "up.bin", DataMode::Epsv)
        .unwrap()
        .success()
        .unwrap();
    let run_secs = started.elapsed().as_secs_f64();
    let mut lines = lines_when(&log, 2);
    lines.sort_by_key(|l| l["session"].as_u64());
    let expected = |session: u64, command: &str, path: &str, to_client: u64, to_origin: u64| {
        json!({
            "service": "e2e",
            "session": session,
            "client": CLIENT_IP.to_string(),
            "user": login.user,
            "command": command,
            "path": path,
            "bytes_to_client": to_client,
            "bytes_to_origin": to_origin,
            "reply_code": 226,
            "data_path": dataplane,
            "mode": "passive",
        })
    };
    let mut durations = Vec::new();
    for line in &mut lines {
        let object = line.as_object_mut().unwrap();
        let time = object.remove("time").unwrap();
        let time = time.as_str().unwrap();
        // 2026-12-03T23:08:48.250Z
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        durations.push(object.remove("duration_secs").unwrap().as_f64().unwrap());
    }
    assert_eq!(
        lines,
        [
            expected(1, "RETR", "audit.bin", SIZE, 0),
            expected(2, "STOR", "up.bin", 0, SIZE),
        ]
    );
    for secs in durations {
        assert!((0.0..=run_secs).contains(&secs), "{secs} of {run_secs}");
    }

    // logrotate: the file moved away, SIGHUP (a reload), the next line in a new file.
    let rotated = env.local("audit.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    env.gateway.reload(&config).unwrap();
    curl_download(env.client_ns(), &login, "audit.bin", &local, DataMode::Pasv)
        .unwrap()
        .success()
        .unwrap();
    let mut after = lines_when(&log, 1);
    for line in &mut after {
        let object = line.as_object_mut().unwrap();
        object.remove("time");
        object.remove("duration_secs");
    }
    assert_eq!(after, [expected(3, "RETR", "audit.bin", SIZE, 0)]);
    assert_eq!(lines_when(&rotated, 2).len(), 2);
}

/// The log's lines as JSON once it has `n` (or the deadline passed).
fn lines_when(log: &Path, n: usize) -> Vec<Value> {
    let read = || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect::<Vec<Value>>()
    };
    let deadline = Instant::now() + LINES_WITHIN;
    while read().len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    read()
}

//! Operating ftp-guard: the admin endpoint (metrics, probes, status), `ftp-guard status`,
//! SIGHUP reload and graceful SIGTERM, the last ones against the real binary.
use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use ftp_guard::admin::{self, Status};
use ftp_guard_testbed::{
    fixture::Bpffs,
    ftp_clients::{DataMode, curl_download, sha256_file},
    ftp_servers::ServerKind,
    netns::{self, CLIENT, GATEWAY, Topology},
    require_privileged,
    scenario::{Control, Env, origin_server, standard_topology},
};

const ADMIN: &str = "127.0.0.1:9640";

/// GET `path` from the admin endpoint inside the gateway namespace.
fn admin_get(topo: &Topology, path: &str) -> anyhow::Result<String> {
    topo.in_ns(GATEWAY, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(admin::get(ADMIN.parse().unwrap(), path, None))
    })
}

/// The value of the first sample of `metric` whose labels contain all of `labels`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn admin_endpoint_reports_sessions_leases_metrics_and_readiness() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("admin", ServerKind::Vsftpd, "kernel");
    assert_eq!(admin_get(&env.topo, "/healthz").unwrap(), "ok\n");
    assert_eq!(admin_get(&env.topo, "/readyz").unwrap(), "ready\n");

    // A session holding a passive lease shows up in /status.
    let mut control = Control::login(&env);
    let port = control.epsv();
    // Both legs of the idle control session carry TCP keepalive (transfers keep it idle).
    // `ss` shows the keepalive timer once no retransmission timer is pending.
    let started = Instant::now();
    loop {
        let ss = env
            .topo
            .run(GATEWAY, &["ss", "-tnoH", "state", "established"])
            .unwrap();
        let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
        let leg = |needle: &str| ss.lines().find(|l| l.contains(needle)).map(str::to_owned);
        let legs = [leg("203.0.113.1:21 "), leg("198.51.100.2:21 ")];
        if legs
            .iter()
            .all(|l| l.as_deref().is_some_and(|l| l.contains("keepalive")))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no keepalive on both legs:\n{ss}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status: Status = serde_json::from_str(&admin_get(&env.topo, "/status").unwrap()).unwrap();
    let svc = &status.services[0];
    assert_eq!(svc.sessions.len(), 1, "{status:?}");
    assert!(
        svc.sessions[0].client.starts_with("203.0.113.2:"),
        "{status:?}"
    );
    assert_eq!(svc.leases.len(), 1, "{status:?}");
    assert_eq!(
        (svc.leases[0].port, svc.leases[0].state.as_str()),
        (port, "waiting")
    );
    let kernel = status.kernel.as_ref().unwrap();
    assert_eq!(kernel.attachments.len(), 2, "{kernel:?}");

    // After a transfer, the metrics count it.
    let remote = env.origin_file("m.bin", 2 << 20);
    let local = env.local("m.bin");
    curl_download(
        env.client_ns(),
        &env.login(),
        "m.bin",
        &local,
        DataMode::Epsv,
    )
    .unwrap()
    .success()
    .unwrap();
    assert_eq!(sha256_file(&remote).unwrap(), sha256_file(&local).unwrap());
    // Bytes are accounted when a closed flow's entries go (after the close grace).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let metrics = admin_get(&env.topo, "/metrics").unwrap();
        let accounted = sample(
            &metrics,
            "ftp_guard_data_bytes_to_client_total",
            &["service=\"e2e\""],
        )
        .is_some_and(|b| b >= (2 << 20) as f64);
        if accounted || std::time::Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let get = |m: &str, l: &[&str]| {
        sample(&metrics, m, l).unwrap_or_else(|| panic!("{m} {l:?} missing:\n{metrics}"))
    };
    assert!(get("ftp_guard_sessions_total", &["service=\"e2e\""]) >= 2.0);
    assert_eq!(get("ftp_guard_sessions_active", &["service=\"e2e\""]), 1.0);
    assert!(get("ftp_guard_leases_installed_total", &["mode=\"passive\""]) >= 2.0);
    assert!(
        get(
            "ftp_guard_kernel_packets_total",
            &["reason=\"nat_to_client\""]
        ) > 1000.0
    );
    assert!(get("ftp_guard_data_bytes_to_client_total", &["service=\"e2e\""]) >= (2 << 20) as f64);
    assert!(
        get(
            "ftp_guard_origin_connect_seconds_count",
            &["service=\"e2e\""]
        ) >= 2.0
    );
    drop(control);

    // The origin goes away: not ready any more, and the reason is given.
    // SAFETY: the server's PID, started by this test.
    unsafe { libc::kill(env.server.pid() as i32, libc::SIGKILL) };
    // /readyz probes at most once per READY_CACHE: the news takes up to that long.
    let deadline = std::time::Instant::now() + admin::READY_CACHE + Duration::from_secs(3);
    let err = loop {
        match admin_get(&env.topo, "/readyz") {
            Err(e) => break e.to_string(),
            Ok(body) => assert!(
                std::time::Instant::now() < deadline,
                "still {body:?} after the origin died"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(err.contains("503"), "{err}");
    assert_eq!(admin_get(&env.topo, "/healthz").unwrap(), "ok\n");
}

/// The real binary in the gateway namespace, with its output in files.
struct Daemon {
    pid: u32,
    log: PathBuf,
    config: PathBuf,
}

impl Daemon {
    fn start(topo: &Topology, dir: &Path, config: &str) -> Daemon {
        let exe = std::env::current_exe().unwrap();
        let binary = exe.parent().unwrap().parent().unwrap().join("ftp-guard");
        assert!(binary.is_file(), "{} not built", binary.display());
        let config_path = dir.join("ftp-guard.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("ftp-guard.log");
        let out = dir.join("ftp-guard.out");
        let mut cmd = topo.cmd(GATEWAY, binary.to_str().unwrap());
        cmd.args(["run", "--config"])
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        let pid = topo.spawn_command(cmd).unwrap();
        let started = Instant::now();
        while !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "ftp-guard did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon {
            pid,
            log,
            config: config_path,
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: a PID we spawned.
        assert_eq!(unsafe { libc::kill(self.pid as i32, signal) }, 0);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text` (after a signal was handled).
    fn wait_log(&self, text: &str) {
        let started = Instant::now();
        while !self.log().contains(text) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no `{text}` in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to 10 s) until the process has exited.
    fn wait_exit(&self) {
        let started = Instant::now();
        while !self.exited() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "ftp-guard (pid {}) did not exit",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Gone, or a zombie with no thread left: a killed process's leader turns zombie while
    /// its other threads may still be exiting, holding its sockets open.
    fn exited(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let threads = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .map(|d| d.count())
            .unwrap_or(0);
        stat.is_empty() || (stat.split_whitespace().nth(2) == Some("Z") && threads <= 1)
    }
}

fn service(name: &str, port: u16, data: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"203.0.113.1:{port}\"\norigin = \"198.51.100.2:21\"\n\
         data_ports = \"{data}\"\nclient_interface = \"pub0\"\norigin_interface = \"priv0\"\n"
    )
}

fn connect(topo: &Topology, port: u16) -> std::io::Result<std::net::TcpStream> {
    topo.in_ns(CLIENT, || {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((netns::GATEWAY_PUBLIC_IP, port)),
            Duration::from_secs(2),
        )
    })
}

#[test]
fn reload_status_and_graceful_stop_with_the_binary() {
    if !require_privileged() {
        return;
    }
    let topo = standard_topology("ops").unwrap();
    let server = origin_server(&topo, ServerKind::Vsftpd).unwrap();
    let dir = ftp_guard_testbed::ftp_clients::unique_temp_dir("fg-ops").unwrap();
    let daemon = Daemon::start(&topo, &dir, &service("a", 21, "40000-40049"));
    let login = ftp_guard_testbed::ftp_clients::Login {
        addr: std::net::SocketAddrV4::new(netns::GATEWAY_PUBLIC_IP, 21),
        ..server.login()
    };

    // A session on `a` that must survive every reload below.
    let mut kept = raw_login(&topo, &login);
    assert!(connect(&topo, 2121).is_err(), "b exists too early");

    // Add service b.
    std::fs::write(
        &daemon.config,
        service("a", 21, "40000-40049") + &service("b", 2121, "40050-40099"),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("configuration reloaded");
    assert!(
        connect(&topo, 2121).is_ok(),
        "b not added:\n{}",
        daemon.log()
    );
    assert!(
        cmd(&mut kept, "NOOP").starts_with("200"),
        "session on a dropped by the reload"
    );

    // A broken file is refused; everything stays as it was.
    std::fs::write(&daemon.config, "[[service]]\nname = \"a\"\nbogus = 1\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("reload refused");
    assert!(connect(&topo, 2121).is_ok());
    assert!(cmd(&mut kept, "NOOP").starts_with("200"));

    // Remove b again.
    std::fs::write(&daemon.config, service("a", 21, "40000-40049")).unwrap();
    daemon.signal(libc::SIGHUP);
    let started = Instant::now();
    while connect(&topo, 2121).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "b still accepting"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cmd(&mut kept, "NOOP").starts_with("200"));

    // `ftp-guard status` shows the session.
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().unwrap().parent().unwrap().join("ftp-guard");
    let out = Command::new("ip")
        .args(["netns", "exec", topo.ns_name(GATEWAY)])
        .arg(&binary)
        .args(["status", "--admin", ADMIN])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("SESSIONS") && table.contains("203.0.113.2:"),
        "{table}"
    );
    assert!(table.contains("tcx-ingress"), "{table}");

    // SIGTERM during a download: the download completes, then the daemon exits.
    let big = server.root().join("big.bin");
    ftp_guard_testbed::ftp_clients::random_file(&big, 200 << 20).unwrap();
    server.give_to_user(&big).unwrap();
    let local = dir.join("big.bin");
    // Throttled so that the signal surely lands mid-transfer (200 MiB at 50 MB/s: ~4 s).
    let download = Command::new("ip")
        .args([
            "netns",
            "exec",
            topo.ns_name(CLIENT),
            "curl",
            "-sS",
            "--limit-rate",
            "50M",
        ])
        .arg("-u")
        .arg(format!("{}:{}", login.user, login.password))
        .arg("-o")
        .arg(&local)
        .arg(login.url("big.bin"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(kept);
    daemon.signal(libc::SIGTERM);
    daemon.wait_log("SIGTERM");
    let status = download.wait_with_output().unwrap().status;
    assert!(status.success(), "curl failed: {status}");
    assert_eq!(sha256_file(&big).unwrap(), sha256_file(&local).unwrap());
    let started = Instant::now();
    while !daemon.exited() {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "daemon did not exit:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.log().contains("gateway stopped"), "{}", daemon.log());
    let _ = std::fs::remove_dir_all(&dir);
}

fn raw_login(
    topo: &Topology,
    login: &ftp_guard_testbed::ftp_clients::Login,
) -> std::io::BufReader<std::net::TcpStream> {
    let stream = connect(topo, login.addr.port()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = std::io::BufReader::new(stream);
    assert!(reply(&mut r).starts_with("220"));
    assert!(cmd(&mut r, &format!("USER {}", login.user)).starts_with("331"));
    assert!(cmd(&mut r, &format!("PASS {}", login.password)).starts_with("230"));
    r
}

fn reply(r: &mut std::io::BufReader<std::net::TcpStream>) -> String {
    use std::io::BufRead as _;
    let mut all = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed: {all}");
        all.push_str(&line);
        let b = line.as_bytes();
        if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
            return all;
        }
    }
}

fn cmd(r: &mut std::io::BufReader<std::net::TcpStream>, line: &str) -> String {
    use std::io::Write as _;
    r.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    reply(r)
}

/// Zero-downtime restart: with `pin_path`, a restarted ftp-guard adopts the pinned maps
/// and programs; a download in flight during the restart completes without a byte lost.
#[test]
fn restart_with_pinning_keeps_transfers_going() {
    if !require_privileged() {
        return;
    }
    restart_with_pinning("xdp", "link-xdp-pub0", "adopted the pinned XDP link");
    restart_with_pinning("tc", "link-tcx-pub0", "adopted the pinned tcx link");
}

fn restart_with_pinning(hook: &str, link: &str, adopted: &str) {
    use std::io::Read as _;

    let topo = standard_topology(&format!("pin{hook}")).unwrap();
    let server = origin_server(&topo, ServerKind::Vsftpd).unwrap();
    let big = server.root().join("big.bin");
    ftp_guard_testbed::ftp_clients::random_file(&big, 64 << 20).unwrap();
    server.give_to_user(&big).unwrap();
    let dir = ftp_guard_testbed::ftp_clients::unique_temp_dir("fg-pin").unwrap();
    let bpffs = Bpffs::mount_fresh();
    let pin = bpffs.pin();
    let config = format!(
        "pin_path = \"{}\"\n{}kernel_hook = \"{hook}\"\n",
        pin.display(),
        service("pinned", 21, "40000-40099")
    );
    let first = Daemon::start(&topo, &dir, &config);
    assert!(pin.join("FLOWS").exists() && pin.join(link).exists());

    // Start a download and read it slowly: it must span the restart.
    let login = ftp_guard_testbed::ftp_clients::Login {
        addr: std::net::SocketAddrV4::new(netns::GATEWAY_PUBLIC_IP, 21),
        ..server.login()
    };
    let mut control = raw_login(&topo, &login);
    assert!(cmd(&mut control, "TYPE I").starts_with("200"));
    let epsv = cmd(&mut control, "EPSV");
    let port: u16 = epsv
        .split("|||")
        .nth(1)
        .unwrap()
        .split('|')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut data = connect(&topo, port).unwrap();
    assert!(cmd(&mut control, "RETR big.bin").starts_with("150"));
    let mut got = Vec::with_capacity(64 << 20);
    let mut buf = vec![0u8; 1 << 20];
    let mut restarted = None;
    loop {
        let n = data.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if restarted.is_none() && got.len() > 8 << 20 {
            // Mid-transfer: the old process goes at once (SIGINT), a new one starts.
            first.signal(libc::SIGINT);
            let started = Instant::now();
            while !first.exited() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{}",
                    first.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let at = got.len();
            std::fs::rename(&first.log, dir.join("first.log")).unwrap();
            restarted = Some((Daemon::start(&topo, &dir, &config), at));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(data); // our FIN: the flow can close
    let (second, at) = restarted.expect("the download ended before the restart");
    assert!(at < got.len(), "nothing arrived after the restart");
    assert_eq!(got.len(), 64 << 20, "bytes lost across the restart");
    assert_eq!(got, std::fs::read(&big).unwrap(), "content differs");
    second.wait_log("took over the previous process's data connections");
    second.wait_log("data connection done (kernel)");
    assert!(second.log().contains(adopted), "{}", second.log());

    // The new process serves new sessions through the adopted programs.
    let local = dir.join("after.bin");
    curl_download(
        topo.ns_name(CLIENT),
        &login,
        "big.bin",
        &local,
        DataMode::Epsv,
    )
    .unwrap()
    .success()
    .unwrap();
    assert_eq!(sha256_file(&big).unwrap(), sha256_file(&local).unwrap());

    // Stop, unpin: nothing of ours stays attached.
    second.signal(libc::SIGINT);
    second.wait_exit();
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().unwrap().parent().unwrap().join("ftp-guard");
    let out = Command::new(&binary)
        .args(["unpin", "--config"])
        .arg(&second.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pin.exists());
    // The kernel releases a link asynchronously once its last reference is gone.
    let started = Instant::now();
    loop {
        let shown = topo.run(GATEWAY, &["ip", "link", "show", "pub0"]).unwrap();
        let text = String::from_utf8_lossy(&shown.stdout).into_owned();
        if !text.contains("prog/xdp") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "XDP still attached: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!pin.join(link).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload that changes only timeouts keeps the service's dataplane (one port pool per
/// range) and so the leases waiting in it: before, it started a second dataplane whose
/// start-up deleted them (kernel path), or a second pool on the same ports (relay).
#[test]
fn reload_changing_timeouts_keeps_the_dataplane_and_its_waiting_lease() {
    if !require_privileged() {
        return;
    }
    for dataplane in ["kernel", "userspace"] {
        let env = Env::start(
            &format!("rl-ttl-{}", &dataplane[..1]),
            ServerKind::Vsftpd,
            dataplane,
        );
        let remote = env.origin_file("ttl.bin", 256 * 1024);
        let mut control = Control::login(&env);
        let port = control.epsv();
        let before = env.gateway.dataplanes();
        let config = env.config(dataplane, "40000-40099", &env.client_if, &env.origin_if);
        let changed = config.replace("lease_ttl_secs = 10", "lease_ttl_secs = 20")
            + "data_idle_timeout_secs = 300\nconnect_timeout_secs = 5\nkeepalive_secs = 50\n";
        assert_ne!(config, changed);
        env.gateway.reload(&changed).unwrap();
        let after = env.gateway.dataplanes();
        assert_eq!(
            control.retr_over(&env, port, "ttl.bin"),
            std::fs::read(&remote).unwrap(),
            "{dataplane}"
        );
        assert_eq!((before.len(), after.len()), (1, 1));
        assert!(
            Arc::ptr_eq(&before[0], &after[0]),
            "{dataplane}: the reload replaced the dataplane"
        );
    }
}

/// A reload to an overlapping range starts a new dataplane beside the old one (whose
/// sessions go on): it deletes none of the old one's waiting leases, and skips the ports
/// whose lease key they hold, so no (peer, port) is ever leased twice.
#[test]
fn reload_to_an_overlapping_range_never_shares_a_port() {
    if !require_privileged() {
        return;
    }
    let mut env = Env::start("rl-range", ServerKind::Vsftpd, "kernel");
    env.restart_gateway("kernel", "40000-40002");
    let remote = env.origin_file("range.bin", 128 * 1024);
    let content = std::fs::read(&remote).unwrap();
    let mut old: Vec<(Control, u16)> = (0..3)
        .map(|_| {
            let mut control = Control::login(&env);
            let port = control.epsv();
            (control, port)
        })
        .collect();
    let mut old_ports: Vec<u16> = old.iter().map(|(_, port)| *port).collect();
    old_ports.sort_unstable();
    assert_eq!(old_ports, [40000, 40001, 40002]);
    let before = env.gateway.dataplanes();

    env.gateway
        .reload(&env.config("kernel", "40000-40003", &env.client_if, &env.origin_if))
        .unwrap();
    assert!(
        !Arc::ptr_eq(&before[0], &env.gateway.dataplanes()[0]),
        "a new range needs a new dataplane"
    );
    // The client holds 40000-40002 through the old dataplane: each new lease (the previous
    // one revoked by the next EPSV) can only be 40003.
    let mut new = Control::login(&env);
    let new_ports: Vec<u16> = (0..4).map(|_| new.epsv()).collect();
    assert_eq!(new_ports, [40003; 4]);
    let mut keys = env.gateway.bpf().unwrap().lock().lease_keys();
    keys.sort_unstable();
    let leased = |port| {
        (
            netns::CLIENT_IP,
            SocketAddrV4::new(netns::GATEWAY_PUBLIC_IP, port),
        )
    };
    assert_eq!(keys, (40000..=40003).map(leased).collect::<Vec<_>>());
    // Both dataplanes' leases carry their own transfers.
    let (control, port) = &mut old[0];
    assert_eq!(control.retr_over(&env, *port, "range.bin"), content);
    assert_eq!(new.retr_over(&env, 40003, "range.bin"), content);
}

/// With `pin_path`, a relay's admit leases outlive a process that dies without cleaning up
/// (SIGKILL); the next process removes those in its range at start (their listeners are
/// gone), so they admit nobody any more.
#[test]
fn restart_with_pinning_drops_a_dead_relays_admit_leases() {
    if !require_privileged() {
        return;
    }
    let topo = standard_topology("pinrelay").unwrap();
    let server = origin_server(&topo, ServerKind::Vsftpd).unwrap();
    let dir = ftp_guard_testbed::ftp_clients::unique_temp_dir("fg-pin-relay").unwrap();
    let bpffs = Bpffs::mount_fresh();
    let pin = bpffs.pin();
    let config = format!(
        "pin_path = \"{}\"\n{}dataplane = \"userspace\"\n",
        pin.display(),
        service("relay", 21, "40000-40099")
    );
    let first = Daemon::start(&topo, &dir, &config);
    let login = ftp_guard_testbed::ftp_clients::Login {
        addr: SocketAddrV4::new(netns::GATEWAY_PUBLIC_IP, 21),
        ..server.login()
    };
    let mut control = raw_login(&topo, &login);
    let epsv = cmd(&mut control, "EPSV");
    let port: u16 = epsv
        .split("|||")
        .nth(1)
        .and_then(|p| p.split('|').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{epsv}"));
    first.signal(libc::SIGKILL);
    first.wait_exit();
    drop(control);
    // No process: the pinned guard still admits the client; nothing listens, so a reset.
    let refused = connect(&topo, port).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    std::fs::rename(&first.log, dir.join("first.log")).unwrap();
    let second = Daemon::start(&topo, &dir, &config);
    second.wait_log("removed the previous process's admit leases");
    let line = second
        .log()
        .lines()
        .find(|l| l.contains("removed the previous process's admit leases"))
        .map(str::to_owned)
        .unwrap();
    assert!(line.ends_with("dropped=1"), "{line}");
    // Dropped by the guard now: no answer at all.
    let dropped = connect(&topo, port).unwrap_err();
    assert_eq!(dropped.kind(), std::io::ErrorKind::TimedOut);

    second.signal(libc::SIGINT);
    second.wait_exit();
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().unwrap().parent().unwrap().join("ftp-guard");
    let out = Command::new(&binary)
        .args(["unpin", "--config"])
        .arg(&second.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

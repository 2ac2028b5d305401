//! `cargo xtask demo`: ftp-guard protecting a real FTP server, in namespaces of its own.
//!
//! client 203.0.113.2 ── pub0 [gateway: ftp-guard] priv0 ── origin 198.51.100.2 (vsftpd)
//!
//! Runs the real `ftp-guard run` binary on the gateway, real clients on the client, and
//! shows what the kernel path did. Without `--once` it stays up for you to try a client
//! until Ctrl-C. Namespaces left by a crashed run are removed at the next start.
use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use ftp_guard_testbed::{
    ftp_clients::{
        DataMode, Login, curl_download, curl_upload, lftp_run, random_file, sha256_file,
        unique_temp_dir,
    },
    ftp_servers::{ServerKind, ServerOptions},
    netns::{self, CLIENT, GATEWAY},
    scenario::{origin_server, standard_topology},
};

const VIP: Ipv4Addr = netns::GATEWAY_PUBLIC_IP;
const FILE_MIB: u64 = 64;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() {
    let once = std::env::args().any(|a| a == "--once");
    if let Err(e) = run(once) {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn run(once: bool) -> Result<()> {
    ensure!(
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the demo needs root (network namespaces, eBPF): run `cargo xtask demo` as root"
    );
    let ftp_guard = ftp_guard_binary()?;
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    step(
        "building the topology: client 203.0.113.2 | gateway 203.0.113.1 + 198.51.100.1 | origin 198.51.100.2",
    );
    let topo = standard_topology("demo")?;
    // A second address on the client's network, for the intruder.
    topo.run(
        CLIENT,
        &["ip", "addr", "add", "203.0.113.66/24", "dev", "eth0"],
    )?;

    let (pasv_min, pasv_max) = ServerOptions::default().passive_ports;
    step(&format!(
        "starting vsftpd on the origin (passive ports {pasv_min}-{pasv_max})"
    ));
    let server = origin_server(&topo, ServerKind::Vsftpd)?;
    let big = server.root().join("big.bin");
    random_file(&big, FILE_MIB << 20)?;
    server.give_to_user(&big)?;

    let work = unique_temp_dir("fg-demo")?;
    let config = work.join("ftp-guard.toml");
    std::fs::write(
        &config,
        format!(
            "# written by the demo\n[[service]]\nname = \"demo\"\nlisten = \"{VIP}:21\"\n\
             origin = \"{}\"\ndata_ports = \"40000-40099\"\nclient_interface = \"pub0\"\n\
             origin_interface = \"priv0\"\ndataplane = \"kernel\"\n",
            server.addr()
        ),
    )?;
    step(&format!(
        "starting `ftp-guard run --config {}` on the gateway",
        config.display()
    ));
    let log = work.join("ftp-guard.log");
    let out = work.join("ftp-guard.out");
    let mut cmd = topo.cmd(GATEWAY, ftp_guard.to_str().context("non-UTF-8 path")?);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("FTP_GUARD_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&log)?);
    let pid = topo.spawn_command(cmd)?;
    wait_for_line(&out, "ready", Duration::from_secs(15))
        .with_context(|| format!("ftp-guard did not start; its log:\n{}", read(&log)))?;
    print_matching(&log, &["attached", "service ready"]);

    let login = Login {
        addr: SocketAddrV4::new(VIP, 21),
        ..server.login()
    };
    let ns = topo.ns_name(CLIENT);

    step(&format!(
        "client: curl downloads {FILE_MIB} MiB (EPSV), then uploads it back (PASV)"
    ));
    let local = work.join("big.bin");
    let t = Instant::now();
    curl_download(ns, &login, "big.bin", &local, DataMode::Epsv)?.success()?;
    let down = t.elapsed();
    ensure!(
        sha256_file(&local)? == sha256_file(&big)?,
        "download corrupted"
    );
    let t = Instant::now();
    curl_upload(ns, &local, &login, "uploaded.bin", DataMode::Pasv)?.success()?;
    let up = t.elapsed();
    ensure!(
        sha256_file(&server.root().join("uploaded.bin"))? == sha256_file(&big)?,
        "upload corrupted"
    );
    println!(
        "    download: {} ({}), checksum ok",
        rate(FILE_MIB, down),
        fmt(down)
    );
    println!(
        "    upload:   {} ({}), checksum ok",
        rate(FILE_MIB, up),
        fmt(up)
    );

    step("client: lftp lists the directory (EPSV)");
    let listing = lftp_run(ns, &login, "cls -l", DataMode::Epsv)?.success()?;
    for line in listing.stdout.lines() {
        println!("    {line}");
    }

    step("intruder 203.0.113.66 probes ten data ports: the kernel path drops every SYN");
    let refused = topo.in_ns(CLIENT, || {
        (40000..40010)
            .filter(|port| probe(Ipv4Addr::new(203, 0, 113, 66), *port).is_err())
            .count()
    });
    println!("    {refused} of 10 connection attempts got nothing back");

    std::thread::sleep(Duration::from_secs(3)); // let the sweeper report the closed flows
    if !once {
        println!(
            "\nftp-guard is running. Try it yourself from the client namespace, e.g.:\n\
             \n    ip netns exec {ns} curl -u {user}:{pass} ftp://{VIP}/\
             \n    ip netns exec {ns} curl -u {user}:{pass} -o /dev/null ftp://{VIP}/big.bin\
             \n    ip netns exec {ns} lftp -u {user},{pass} {VIP}\
             \n\nftp-guard's log: {log}\nPress Ctrl-C to stop and see what the kernel did.",
            user = login.user,
            pass = login.password,
            log = log.display()
        );
        while !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    step("stopping ftp-guard: what the kernel path did");
    // SIGTERM: ftp-guard prints its counters and detaches its programs.
    // SAFETY: a PID we spawned.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_for_exit(pid, Duration::from_secs(10));
    print_matching(&log, &["data connection done", "lease installed"]);
    println!();
    for line in read(&out).lines().filter(|l| l.starts_with("counter")) {
        let value: u64 = line
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if value > 0 {
            println!("    {line}");
        }
    }
    println!(
        "\n(counters that stayed at 0 are not shown; the full log is in {})",
        log.display()
    );
    drop(server);
    drop(topo);
    println!("\ndemo done: namespaces removed");
    Ok(())
}

/// The ftp-guard binary: `FTP_GUARD_BIN` (set by `cargo xtask demo`), else next to this one.
fn ftp_guard_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("FTP_GUARD_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?
            .parent()
            .context("no parent directory")?
            .join("ftp-guard"),
    };
    ensure!(
        path.is_file(),
        "{} not found: run `cargo xtask demo`, which builds it",
        path.display()
    );
    Ok(path)
}

fn probe(source: Ipv4Addr, port: u16) -> std::io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())?;
    socket.connect_timeout(
        &SocketAddr::V4(SocketAddrV4::new(VIP, port)).into(),
        Duration::from_millis(300),
    )
}

fn wait_for_line(path: &Path, prefix: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if read(path).lines().any(|l| l.starts_with(prefix)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no `{prefix}` line in {} after {timeout:?}", path.display())
}

fn wait_for_exit(pid: u32, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout && Path::new(&format!("/proc/{pid}")).exists() {
        // Reaping happens in Topology's drop; a zombie still has /proc/PID, so check state.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Prints the log lines containing any of `words`, without the timestamp.
fn print_matching(log: &Path, words: &[&str]) {
    let Ok(file) = std::fs::File::open(log) else {
        return;
    };
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        if words.iter().any(|w| line.contains(w)) {
            let text = line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest);
            println!("    {}", text.trim());
        }
    }
}

fn rate(mib: u64, d: Duration) -> String {
    format!("{:.0} MiB/s", mib as f64 / d.as_secs_f64())
}

fn fmt(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

//! ftp-guard on an ordinary gateway (issue 11): the field topology (`Topology::field`) —
//! Linux bridges `brc0`/`bro0` as ftp-guard's interfaces with a second host on each,
//! `net.ipv4.ip_forward = 0`, the kernel's default offloads on every veth (checksum offload
//! and TSO on) — and small public data-port ranges (100 or 10 ports). Every test runs
//! against vsftpd and pyftpdlib on the kernel data path, checks every byte by content,
//! prints what it measured and fails with one summary of everything that went wrong.
//!
//! `FTP_GUARD_FIELD_FORWARDING=1` turns IPv4 forwarding on in the gateway for
//! `ten_ports_200_files_back_to_back`, `many_clients_share_a_small_range` and
//! `checksum_offload_partial_is_completed` (never for `forwarding_off_transfers_complete`):
//! a diagnosis knob, to tell their own defects from the forwarding one while it exists.
//! `FTP_GUARD_FIELD_DATAPLANE=userspace` runs every test on the userspace relay instead of
//! the kernel path: a check of the tests themselves (the relay needs no forwarding and
//! rewrites no packet).
use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    sync::{Condvar, Mutex},
    time::{Duration, Instant},
};

use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    ftp_clients::{
        ClientRun, DataMode, curl_download, curl_download_many, curl_upload, ftplib_run, lftp_run,
        random_file, set_client_timeout, sha256_file, wget_glob_download,
    },
    ftp_load::FtpControl,
    ftp_servers::ServerKind,
    netns::{
        self, CLIENT, CLIENT2, CLIENT2_IP, FIELD_CLIENT_PORTS, FIELD_ORIGIN_PORTS, GATEWAY,
        HOST_IF, ORIGIN, ORIGIN2, ORIGIN2_IP, Topology,
    },
    pcap::{Capture, audit_tcp_checksums},
    require_privileged,
    scenario::Env,
};

/// The origins every test runs against.
const SERVERS: [ServerKind; 2] = [ServerKind::Vsftpd, ServerKind::Pyftpdlib];
/// A 100-port public data range, as an ordinary gateway's firewall opens.
const PORTS_100: &str = "40000-40099";
/// A 10-port public data range.
const PORTS_10: &str = "40000-40009";

fn short(kind: ServerKind) -> &'static str {
    &kind.name()[..2]
}

/// Whether `FTP_GUARD_FIELD_FORWARDING=1` asks for forwarding on (see the module docs).
fn forwarding_knob() -> bool {
    let on = std::env::var("FTP_GUARD_FIELD_FORWARDING").is_ok_and(|v| v == "1");
    if on {
        eprintln!(
            "NOTE: FTP_GUARD_FIELD_FORWARDING=1: IPv4 forwarding ON in the gateway (diagnosis \
             only; the field has it off)"
        );
    }
    on
}

/// The data path under test: `kernel`, unless `FTP_GUARD_FIELD_DATAPLANE` says otherwise.
fn dataplane() -> &'static str {
    match std::env::var("FTP_GUARD_FIELD_DATAPLANE").as_deref() {
        Ok("userspace") => {
            eprintln!(
                "NOTE: FTP_GUARD_FIELD_DATAPLANE=userspace: the userspace relay, not the kernel path"
            );
            "userspace"
        }
        Ok("kernel") | Err(_) => "kernel",
        Ok(other) => panic!("FTP_GUARD_FIELD_DATAPLANE={other}: kernel or userspace"),
    }
}

/// Turns IPv4 forwarding on in the gateway (every interface).
fn forwarding_on(topo: &Topology) {
    for key in ["net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"] {
        topo.sysctl(GATEWAY, key, "1").unwrap();
    }
}

/// ftp-guard on the field topology, forwarding on only if `forwarding`.
fn field_env(tag: &str, kind: ServerKind, ports: &str, forwarding: bool) -> Env {
    Env::start_field_with(
        tag,
        kind,
        dataplane(),
        ports,
        |topo| {
            if forwarding {
                forwarding_on(topo);
            }
        },
        |_| {},
    )
}

/// The gateway's non-zero packet counters, for messages.
fn counters(env: &Env) -> String {
    let c = env.gateway.counters();
    let nonzero: Vec<String> = Counter::ALL
        .iter()
        .filter(|k| c.get(**k) > 0)
        .map(|k| format!("{}={}", k.name(), c.get(*k)))
        .collect();
    if nonzero.is_empty() {
        "all zero".into()
    } else {
        nonzero.join(", ")
    }
}

/// An error cut to its head and tail (client traces are long).
fn brief(e: &anyhow::Error) -> String {
    let full = format!("{e:#}");
    let lines: Vec<&str> = full.lines().collect();
    if lines.len() <= 24 {
        return full;
    }
    format!(
        "{}\n    [... {} lines ...]\n{}",
        lines[..6].join("\n"),
        lines.len() - 24,
        lines[lines.len() - 18..].join("\n")
    )
}

/// Fails unless `a` and `b` have the same content.
fn same(a: &Path, b: &Path) -> anyhow::Result<()> {
    let (ha, hb) = (sha256_file(a)?, sha256_file(b)?);
    anyhow::ensure!(
        ha == hb,
        "{} ({ha}) and {} ({hb}) differ",
        a.display(),
        b.display()
    );
    Ok(())
}

/// Fails with every failure in `failures`, after `measured`.
fn conclude(test: &str, measured: &str, failures: &[String]) {
    eprintln!("\n==== {test}: measured ====\n{measured}");
    if !failures.is_empty() {
        panic!(
            "{test}: {} failure(s):\n\n{}\n\n(measured:\n{measured})",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// (a) forwarding off
// ---------------------------------------------------------------------------------------

/// With `ip_forward = 0` the bystanders on the two bridges cannot reach each other through
/// the gateway (both ways), though each reaches the gateway itself.
fn bystanders_are_isolated(topo: &Topology) -> Result<String, String> {
    for (role, via) in [
        (CLIENT2, netns::GATEWAY_PUBLIC_IP),
        (ORIGIN2, netns::GATEWAY_PRIVATE_IP),
    ] {
        topo.run(role, &["ping", "-c", "1", "-W", "2", &via.to_string()])
            .map_err(|e| format!("{role} cannot even reach the gateway at {via}: {e:#}"))?;
    }
    let mut measured = String::new();
    for (from, to, to_ip) in [
        (CLIENT2, ORIGIN2, ORIGIN2_IP),
        (ORIGIN2, CLIENT2, CLIENT2_IP),
    ] {
        let listener = topo.in_ns(to, || TcpListener::bind((to_ip, 0)).unwrap());
        listener.set_nonblocking(true).unwrap();
        let target = listener.local_addr().unwrap();
        let started = Instant::now();
        let result = topo.in_ns(from, || {
            TcpStream::connect_timeout(&target, Duration::from_secs(2))
        });
        let took = started.elapsed();
        let accepted = listener.accept().is_ok();
        match result {
            Ok(_) => {
                return Err(format!(
                    "forwarding is off, yet {from} connected to {target} through the gateway \
                     in {took:?} (accepted by {to}: {accepted})"
                ));
            }
            Err(e) => {
                if accepted {
                    return Err(format!("{to} accepted a connection from {from}"));
                }
                let _ = writeln!(
                    measured,
                    "  {from} -> {target}: not reached ({e}, after {:.1} s)",
                    took.as_secs_f64()
                );
            }
        }
    }
    Ok(measured)
}

/// One client run of the forwarding-off matrix.
struct Step<'a> {
    what: String,
    run: Box<dyn FnOnce() -> anyhow::Result<()> + 'a>,
}

/// Passive (PASV, EPSV) and active (PORT, EPRT) downloads and uploads with curl, Python
/// ftplib and lftp (not EPRT: lftp sends it only over IPv6) through a 100-port range, with
/// IPv4 forwarding off in the gateway and default offloads; the bystanders on the two
/// bridges cannot reach each other. In each mode the first failure ends that mode (a hung
/// data connection costs a whole client timeout).
#[test]
fn forwarding_off_transfers_complete() {
    if !require_privileged() {
        return;
    }
    // A 1 MiB transfer takes well under a second here; a hang costs this much.
    set_client_timeout(Duration::from_secs(20));
    let test_started = Instant::now();
    let mut failures = Vec::new();
    let mut measured = String::new();
    for kind in SERVERS {
        let server_started = Instant::now();
        let env = field_env(&format!("fwd-{}", short(kind)), kind, PORTS_100, false);
        let k = kind.name();
        for key in [
            "net.ipv4.ip_forward",
            "net.ipv4.conf.all.forwarding",
            "net.ipv4.conf.brc0.forwarding",
            "net.ipv4.conf.bro0.forwarding",
        ] {
            let value = env.topo.sysctl_value(GATEWAY, key).unwrap();
            assert_eq!(value, "0", "{key} in the gateway namespace");
        }
        let _ = writeln!(
            measured,
            "{k}: gateway net.ipv4.ip_forward = 0 (read in its namespace)"
        );
        match bystanders_are_isolated(&env.topo) {
            Ok(m) => measured.push_str(&m),
            Err(e) => failures.push(format!("{k}: {e}")),
        }

        let ns = env.client_ns().to_owned();
        let login = env.login();
        let remote = env.origin_file("field.bin", 1 << 20);
        let upload_src = env.local("upload-src.bin");
        random_file(&upload_src, (1 << 20) + 4321).unwrap();
        for mode in DataMode::ALL {
            let m = mode.verb();
            let (ns, login, remote, upload_src) = (&ns, &login, &remote, &upload_src);
            let env = &env;
            let mut steps: Vec<Step> = Vec::new();
            let local = env.local(&format!("curl-{m}.bin"));
            steps.push(Step {
                what: format!("curl {m} download"),
                run: Box::new(move || {
                    let run = curl_download(ns, login, "field.bin", &local, mode)?.success()?;
                    run.check_mode(mode)?;
                    same(remote, &local)
                }),
            });
            steps.push(Step {
                what: format!("curl {m} upload"),
                run: Box::new(move || {
                    let name = format!("up-curl-{m}.bin");
                    curl_upload(ns, upload_src, login, &name, mode)?
                        .success()?
                        .check_mode(mode)?;
                    same(upload_src, &env.server.root().join(name))
                }),
            });
            steps.push(Step {
                what: format!("ftplib {m} download + upload"),
                run: Box::new(move || {
                    let got = env.local(&format!("ftplib-{m}.bin"));
                    let retr = format!("RETR field.bin {}", got.display());
                    let stor = format!("STOR {} up-ftplib-{m}.bin", upload_src.display());
                    ftplib_run(ns, login, &[&retr, &stor], mode)?
                        .success()?
                        .check_mode(mode)?;
                    same(remote, &got)?;
                    same(
                        upload_src,
                        &env.server.root().join(format!("up-ftplib-{m}.bin")),
                    )
                }),
            });
            if mode != DataMode::Eprt {
                steps.push(Step {
                    what: format!("lftp {m} get + put"),
                    run: Box::new(move || {
                        let got = env.local(&format!("lftp-{m}.bin"));
                        let script = format!(
                            "get field.bin -o {}; put {} -o up-lftp-{m}.bin",
                            got.display(),
                            upload_src.display()
                        );
                        lftp_run(ns, login, &script, mode)?
                            .success()?
                            .check_mode(mode)?;
                        same(remote, &got)?;
                        same(
                            upload_src,
                            &env.server.root().join(format!("up-lftp-{m}.bin")),
                        )
                    }),
                });
            }
            let total = steps.len();
            for (i, step) in steps.into_iter().enumerate() {
                let started = Instant::now();
                let result = (step.run)();
                let took = started.elapsed().as_secs_f64();
                match result {
                    Ok(()) => {
                        let _ = writeln!(measured, "  {k}: {} ok ({took:.1} s)", step.what);
                    }
                    Err(e) => {
                        let _ = writeln!(
                            measured,
                            "  {k}: {} FAILED after {took:.1} s; {} more {m} step(s) skipped",
                            step.what,
                            total - i - 1
                        );
                        failures.push(format!(
                            "{k}, {}: failed after {took:.1} s (ip_forward = 0; gateway \
                             counters: {}):\n{}",
                            step.what,
                            counters(env),
                            brief(&e)
                        ));
                        break;
                    }
                }
            }
        }
        let _ = writeln!(
            measured,
            "  {k}: gateway counters: {}; {:.1} s",
            counters(&env),
            server_started.elapsed().as_secs_f64()
        );
    }
    let _ = write!(
        measured,
        "total {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
    conclude("forwarding_off_transfers_complete", &measured, &failures);
}

// ---------------------------------------------------------------------------------------
// (b) 10 ports, 200 files on one control connection
// ---------------------------------------------------------------------------------------

const FILES: usize = 200;

/// The origin directory and names of the 200 files (1–4 KiB, each different).
fn many_files(env: &Env) -> Vec<String> {
    let dir = env.server.root().join("many");
    fs::create_dir(&dir).unwrap();
    env.server.give_to_user(&dir).unwrap();
    (0..FILES)
        .map(|i| {
            let name = format!("f{i:03}.bin");
            let path = dir.join(&name);
            random_file(&path, 1024 + (i as u64 * 1531) % 3072).unwrap();
            env.server.give_to_user(&path).unwrap();
            name
        })
        .collect()
}

/// How many of `names` arrived in `dir` with the origin's content, and what is wrong with
/// the others (the first few).
fn check_arrivals(env: &Env, names: &[String], dir: &Path) -> (usize, Vec<String>) {
    let mut right = 0;
    let mut wrong = Vec::new();
    for name in names {
        let origin = env.server.root().join("many").join(name);
        let got = dir.join(name);
        match (fs::read(&origin), fs::read(&got)) {
            (Ok(a), Ok(b)) if a == b => right += 1,
            (Ok(a), Ok(b)) => {
                wrong.push(format!("{name}: {} bytes, expected {}", b.len(), a.len()))
            }
            (_, Err(_)) => wrong.push(format!("{name}: missing")),
            (Err(e), _) => wrong.push(format!("{name}: origin file unreadable: {e}")),
        }
    }
    (right, wrong)
}

/// Whether a trace line shows a reply with `code`: curl `< 425 x`, lftp `<--- 425 x`,
/// ftplib `*resp* '425 x'` / `*get* '425 x`, wget `425 x`.
fn is_reply(line: &str, code: &str) -> bool {
    let line = line.trim_start();
    let rest = [
        "<--- ",
        "< ",
        "*resp* '",
        "*resp* \"",
        "*get* '",
        "*get* \"",
    ]
    .iter()
    .find_map(|p| line.strip_prefix(p))
    .unwrap_or(line);
    rest.strip_prefix(code)
        .is_some_and(|r| r.starts_with(' ') || r.starts_with('-'))
}

/// What a client's trace says about its control connections and refused transfers.
fn trace_summary(run: &ClientRun) -> String {
    let sent = run.commands_sent();
    let count = |verb: &str| sent.iter().filter(|v| *v == verb).count();
    let refused: Vec<&str> = run.trace.lines().filter(|l| is_reply(l, "425")).collect();
    format!(
        "{} USER, {} PASV, {} EPSV, {} RETR; {} '425' line(s){}",
        count("USER"),
        count("PASV"),
        count("EPSV"),
        count("RETR"),
        refused.len(),
        refused
            .first()
            .map(|l| format!(" (first: {:?})", l.trim()))
            .unwrap_or_default()
    )
}

/// 200 small files, each different, fetched on ONE control connection through a 10-port
/// public range, with each of curl (one invocation, 200 URLs), lftp `mget`, Python ftplib
/// (a loop of RETRs) and wget (a glob URL): every file must arrive with its content, and
/// the client must have logged in once. Prints the time each client took.
#[test]
fn ten_ports_200_files_back_to_back() {
    if !require_privileged() {
        return;
    }
    let forwarding = forwarding_knob();
    let test_started = Instant::now();
    let mut failures = Vec::new();
    let mut measured = String::new();
    for kind in SERVERS {
        let env = field_env(&format!("ten-{}", short(kind)), kind, PORTS_10, forwarding);
        let k = kind.name();
        let names = many_files(&env);
        let ns = env.client_ns();
        let login = env.login();
        // One file first: when not even that gets through, 4 × 200 hung transfers would
        // only cost time.
        set_client_timeout(Duration::from_secs(20));
        let probe = env.local("probe.bin");
        let probe_started = Instant::now();
        if let Err(e) = curl_download(ns, &login, "many/f000.bin", &probe, DataMode::Epsv)
            .and_then(ClientRun::success)
            .and_then(|_| same(&env.server.root().join("many/f000.bin"), &probe))
        {
            let _ = writeln!(
                measured,
                "{k}: a single EPSV download failed after {:.1} s: the 200-file runs skipped",
                probe_started.elapsed().as_secs_f64()
            );
            failures.push(format!(
                "{k}: not even one file gets through (the 200-file runs were skipped); \
                 gateway counters: {}\n{}",
                counters(&env),
                brief(&e)
            ));
            continue;
        }
        // 200 transfers: a minute is ample (they take seconds when ports turn over).
        set_client_timeout(Duration::from_secs(60));
        type Client<'a> = (
            &'static str,
            DataMode,
            Box<dyn Fn(&Path) -> anyhow::Result<ClientRun> + 'a>,
        );
        let remotes: Vec<String> = names.iter().map(|n| format!("many/{n}")).collect();
        let clients: Vec<Client> = vec![
            (
                "curl (200 URLs, one invocation)",
                DataMode::Epsv,
                Box::new(|dir: &Path| {
                    let r: Vec<&str> = remotes.iter().map(String::as_str).collect();
                    curl_download_many(ns, &login, &r, dir, DataMode::Epsv)
                }),
            ),
            (
                "lftp mget",
                DataMode::Epsv,
                Box::new(|dir: &Path| {
                    let script = format!("mget -O {} many/f*.bin", dir.display());
                    lftp_run(ns, &login, &script, DataMode::Epsv)
                }),
            ),
            (
                "ftplib (200 RETRs)",
                DataMode::Epsv,
                Box::new(|dir: &Path| {
                    let ops: Vec<String> = names
                        .iter()
                        .map(|n| format!("RETR many/{n} {}", dir.join(n).display()))
                        .collect();
                    let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
                    ftplib_run(ns, &login, &ops, DataMode::Epsv)
                }),
            ),
            (
                "wget (glob many/f*.bin)",
                DataMode::Pasv,
                Box::new(|dir: &Path| {
                    wget_glob_download(ns, &login, "many/f*.bin", dir, DataMode::Pasv)
                }),
            ),
        ];
        for (i, (name, mode, client)) in clients.iter().enumerate() {
            let dir = env.local(&format!("client{i}"));
            fs::create_dir(&dir).unwrap();
            let started = Instant::now();
            let run = client(&dir);
            let took = started.elapsed().as_secs_f64();
            let (right, wrong) = check_arrivals(&env, &names, &dir);
            let rate = right as f64 / took.max(0.001);
            let summary = match &run {
                Ok(run) => trace_summary(run),
                Err(e) => format!("could not run: {e:#}"),
            };
            let _ = writeln!(
                measured,
                "{k}, {name} ({}): {right}/{FILES} files right in {took:.1} s ({rate:.1} files/s); \
                 {summary}",
                mode.verb()
            );
            let logins = run.as_ref().map_or(0, |r| {
                r.commands_sent().iter().filter(|v| *v == "USER").count()
            });
            let exited_ok = run.as_ref().is_ok_and(|r| r.status.success());
            if right != FILES || !exited_ok || logins != 1 {
                let detail = match &run {
                    Ok(run) => {
                        let text = run.describe();
                        // The whole trace outlives the test's temp dir, for a closer look.
                        let kept = std::env::temp_dir().join(format!(
                            "fgt-field-ten-{k}-client{i}-{}.trace.txt",
                            std::process::id()
                        ));
                        let kept = match fs::write(&kept, &text) {
                            Ok(()) => format!("\n    [whole trace: {}]", kept.display()),
                            Err(e) => format!("\n    [trace not kept: {e}]"),
                        };
                        let lines: Vec<&str> = text.lines().collect();
                        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
                        // Where the first file that did not arrive was asked for.
                        let first_wrong = wrong
                            .first()
                            .and_then(|w| w.split(':').next())
                            .and_then(|name| {
                                lines.iter().position(|l| {
                                    l.contains(name) && l.contains("RETR") && l.len() < 200
                                })
                            })
                            .map(|at| {
                                format!(
                                    "\n    [trace around the first missing or wrong file]\n{}",
                                    lines[at.saturating_sub(25)..(at + 30).min(lines.len())]
                                        .join("\n")
                                )
                            })
                            .unwrap_or_default();
                        format!(
                            "{}{kept}{first_wrong}\n    [trace tail]\n{tail}",
                            text.lines().next().unwrap_or("")
                        )
                    }
                    Err(e) => format!("{e:#}"),
                };
                failures.push(format!(
                    "{k}, {name}: {right}/{FILES} files arrived right in {took:.1} s through \
                     {PORTS_10}; {} login(s) (1 expected); {summary}; wrong: {:?}{}\n\
                     gateway counters: {}\n{detail}",
                    logins,
                    &wrong[..wrong.len().min(5)],
                    if wrong.len() > 5 {
                        format!(" and {} more", wrong.len() - 5)
                    } else {
                        String::new()
                    },
                    counters(&env)
                ));
            }
        }
        let _ = writeln!(measured, "  {k}: gateway counters: {}", counters(&env));
    }
    let _ = write!(
        measured,
        "total {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
    conclude("ten_ports_200_files_back_to_back", &measured, &failures);
}

/// Transfers of [`sustained_lease_churn_one_session`].
const CHURN_TRANSFERS: usize = 5000;

/// Thousands of leases in a row on one control connection, as fast as the client goes
/// (about a thousand a second here), through the 10-port range: EPSV, data connection,
/// RETR of a small file (checked), again. Every lease announced must admit its client's
/// SYN; the first failure is reported with its index, time and port (a connect timeout of
/// 3 s: a healthy lease answers in microseconds). Bounded by 60 s per server.
#[test]
fn sustained_lease_churn_one_session() {
    if !require_privileged() {
        return;
    }
    let forwarding = forwarding_knob();
    let mut failures = Vec::new();
    let mut measured = String::new();
    for kind in SERVERS {
        let k = kind.name();
        let env = field_env(
            &format!("churn-{}", short(kind)),
            kind,
            PORTS_10,
            forwarding,
        );
        let names = many_files(&env);
        let contents: Vec<Vec<u8>> = names
            .iter()
            .map(|n| fs::read(env.server.root().join("many").join(n)).unwrap())
            .collect();
        let login = env.login();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (done, took, failure) = env.topo.in_ns(CLIENT, || {
            let started = Instant::now();
            let mut control = match FtpControl::login(
                login.addr,
                &login.user,
                &login.password,
                Duration::from_secs(3),
            ) {
                Ok(c) => c,
                Err(e) => return (0, started.elapsed(), Some(format!("login: {e:#}"))),
            };
            for i in 0..CHURN_TRANSFERS {
                if Instant::now() > deadline {
                    return (i, started.elapsed(), Some("the 60 s bound passed".into()));
                }
                let mut got = Vec::new();
                let at = started.elapsed();
                let result = control
                    .retr_into(&format!("many/{}", names[i % FILES]), &mut got)
                    .and_then(|_| {
                        anyhow::ensure!(got == contents[i % FILES], "content differs");
                        Ok(())
                    });
                if let Err(e) = result {
                    return (
                        i,
                        started.elapsed(),
                        Some(format!(
                            "transfer {i} (asked {:.3} s into the session): {e:#}",
                            at.as_secs_f64()
                        )),
                    );
                }
            }
            let _ = control.quit();
            (CHURN_TRANSFERS, started.elapsed(), None)
        });
        let rate = done as f64 / took.as_secs_f64().max(0.001);
        let _ = writeln!(
            measured,
            "{k}: {done}/{CHURN_TRANSFERS} transfers in a row through {PORTS_10} in {:.1} s \
             ({rate:.0}/s); gateway counters: {}",
            took.as_secs_f64(),
            counters(&env)
        );
        if let Some(f) = failure {
            failures.push(format!(
                "{k}: after {done} good transfers on one control connection: {f}\n  gateway \
                 counters: {}",
                counters(&env)
            ));
        }
    }
    conclude("sustained_lease_churn_one_session", &measured, &failures);
}

// ---------------------------------------------------------------------------------------
// (c) 1,000 sessions from 250 addresses through 100 ports
// ---------------------------------------------------------------------------------------

const SESSIONS: usize = 1000;
const CLIENT_ADDRESSES: usize = 250;
/// The whole load run's bound (each step also has its own socket timeout, [`STEP_TIMEOUT`]).
const LOAD_DEADLINE: Duration = Duration::from_secs(120);
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Logins in flight at once while the sessions are set up: the origins' listen backlogs
/// are small (vsftpd 32), and an overflow would be the origin's story, not the gateway's.
const LOGINS_AT_ONCE: usize = 25;

/// The client's source addresses: 203.0.113.2 and 203.0.113.4–252 (.1 is the gateway,
/// .3 the bystander `client2`).
fn client_addresses() -> Vec<Ipv4Addr> {
    std::iter::once(2u8)
        .chain(4..=252)
        .map(|last| Ipv4Addr::new(203, 0, 113, last))
        .take(CLIENT_ADDRESSES)
        .collect()
}

/// A counting gate: every participant arrives once; `wait` returns when all did or at the
/// deadline (a participant that never comes cannot hang the rest).
struct Gate {
    arrived: Mutex<usize>,
    all: Condvar,
    of: usize,
}

impl Gate {
    fn arrive_and_wait(&self, deadline: Instant) {
        let mut n = self.arrived.lock().unwrap();
        *n += 1;
        if *n >= self.of {
            self.all.notify_all();
        }
        while *n < self.of {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            n = self.all.wait_timeout(n, left).unwrap().0;
        }
    }
}

/// A counting semaphore.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn take(&self) {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.freed.wait(free).unwrap();
        }
        *free -= 1;
    }

    fn give(&self) {
        *self.free.lock().unwrap() += 1;
        self.freed.notify_one();
    }
}

/// How one load session ended.
enum SessionEnd {
    Done { transfer: Duration },
    Failed { stage: &'static str, error: String },
}

/// One session: log in from `source` (set-up phase, at most [`LOGINS_AT_ONCE`] at a time),
/// wait for every other session, then EPSV + RETR (data connection from `source` too),
/// content check, QUIT.
#[allow(clippy::too_many_arguments)]
fn load_session(
    source: Ipv4Addr,
    login: &ftp_guard_testbed::ftp_clients::Login,
    path: &str,
    expected: &[u8],
    slots: &Slots,
    gate: &Gate,
    deadline: Instant,
    others: &HashMap<&[u8], usize>,
) -> SessionEnd {
    slots.take();
    let control = FtpControl::login_from(
        Some(source),
        login.addr,
        &login.user,
        &login.password,
        STEP_TIMEOUT,
    );
    slots.give();
    gate.arrive_and_wait(deadline);
    let mut control = match control {
        Ok(c) => c,
        Err(e) => {
            return SessionEnd::Failed {
                stage: "connect/login",
                error: format!("{e:#}"),
            };
        }
    };
    if Instant::now() >= deadline {
        return SessionEnd::Failed {
            stage: "deadline",
            error: format!("the {LOAD_DEADLINE:?} bound passed before the transfer"),
        };
    }
    let started = Instant::now();
    let mut got = Vec::with_capacity(expected.len());
    if let Err(e) = control.retr_into(path, &mut got) {
        let text = format!("{e:#}");
        let stage = if text.contains("EPSV") {
            "EPSV"
        } else if text.contains("data connection") {
            "data connection"
        } else {
            "RETR"
        };
        return SessionEnd::Failed { stage, error: text };
    }
    let transfer = started.elapsed();
    if got != expected {
        let crossed = others
            .get(got.as_slice())
            .map(|i| format!("; it is session {i}'s file: crossed data connections"))
            .unwrap_or_default();
        return SessionEnd::Failed {
            stage: "content",
            error: format!(
                "RETR {path}: {} bytes, expected {} (content differs){crossed}",
                got.len(),
                expected.len()
            ),
        };
    }
    if let Err(e) = control.quit() {
        return SessionEnd::Failed {
            stage: "QUIT",
            error: format!("{e:#}"),
        };
    }
    SessionEnd::Done { transfer }
}

/// Raises this process's soft open-files limit to the hard one (each session holds two
/// sockets here and two in the in-process gateway).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// 1,000 sessions from 250 client addresses (4 each), all transferring at once through a
/// 100-port public range: each logs in from its address (25 logins in flight at a time),
/// then all at once take a lease (EPSV), connect their data connection from the same
/// address, fetch their own small file (checked byte for byte: a crossed data connection
/// names the session whose file arrived) and QUIT. Bounded by 120 s (plus one 30 s step).
#[test]
fn many_clients_share_a_small_range() {
    if !require_privileged() {
        return;
    }
    let forwarding = forwarding_knob();
    let nofile = raise_nofile();
    assert!(
        nofile >= 4 * SESSIONS as u64 + 200,
        "open-files limit {nofile}: too low for {SESSIONS} sessions (4 sockets each here)"
    );
    let addresses = client_addresses();
    assert_eq!(addresses.len(), CLIENT_ADDRESSES);
    let test_started = Instant::now();
    let mut failures = Vec::new();
    let mut measured = format!(
        "open-files limit of the test process: {nofile}; origins without session limits \
         (vsftpd max_clients=0, max_per_ip=0; pyftpdlib max_cons=0, max_cons_per_ip=0) and \
         with passive range 30000-39999\n"
    );
    for kind in SERVERS {
        let k = kind.name();
        let env = Env::start_field_with(
            &format!("many-{}", short(kind)),
            kind,
            dataplane(),
            PORTS_100,
            |topo| {
                if forwarding {
                    forwarding_on(topo);
                }
                // The other 249 addresses on the client's interface, in one `ip -batch`.
                let batch: String = addresses
                    .iter()
                    .skip(1)
                    .map(|a| format!("addr add {a}/24 dev {HOST_IF}\n"))
                    .collect();
                let file = std::env::temp_dir()
                    .join(format!("fgt-field-addrs-{}.batch", std::process::id()));
                fs::write(&file, batch).unwrap();
                topo.run(CLIENT, &["ip", "-batch", file.to_str().unwrap()])
                    .unwrap();
                let _ = fs::remove_file(&file);
            },
            // 1,000 passive listeners at once: the default 1,000-port range would be full.
            |opts| opts.passive_ports = (30000, 39999),
        );
        let dir = env.server.root().join("load");
        fs::create_dir(&dir).unwrap();
        env.server.give_to_user(&dir).unwrap();
        let contents: Vec<Vec<u8>> = (0..SESSIONS)
            .map(|i| {
                let path = dir.join(format!("s{i:04}.bin"));
                random_file(&path, 1024 + (i as u64 * 733) % 3072).unwrap();
                env.server.give_to_user(&path).unwrap();
                fs::read(&path).unwrap()
            })
            .collect();
        let index: HashMap<&[u8], usize> = contents
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_slice(), i))
            .collect();
        let login = env.login();
        let slots = Slots {
            free: Mutex::new(LOGINS_AT_ONCE),
            freed: Condvar::new(),
        };
        let gate = Gate {
            arrived: Mutex::new(0),
            all: Condvar::new(),
            of: SESSIONS,
        };
        let started = Instant::now();
        let deadline = started + LOAD_DEADLINE;
        let ends: Vec<(Ipv4Addr, SessionEnd)> = env.topo.in_ns(CLIENT, || {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..SESSIONS)
                    .map(|i| {
                        let source = addresses[i % CLIENT_ADDRESSES];
                        let (login, slots, gate, index) = (&login, &slots, &gate, &index);
                        let expected = contents[i].as_slice();
                        let path = format!("load/s{i:04}.bin");
                        std::thread::Builder::new()
                            .stack_size(256 << 10)
                            .spawn_scoped(s, move || {
                                load_session(
                                    source, login, &path, expected, slots, gate, deadline, index,
                                )
                            })
                            .map(|h| (source, h))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| match h {
                        Ok((source, h)) => (
                            source,
                            h.join().unwrap_or_else(|_| SessionEnd::Failed {
                                stage: "panic",
                                error: "the session thread panicked".into(),
                            }),
                        ),
                        Err(e) => (
                            Ipv4Addr::UNSPECIFIED,
                            SessionEnd::Failed {
                                stage: "spawn",
                                error: format!("no thread for the session: {e}"),
                            },
                        ),
                    })
                    .collect()
            })
        });
        let took = started.elapsed();
        let mut transfer_ms: Vec<f64> = Vec::new();
        let mut by_stage: HashMap<&'static str, Vec<String>> = HashMap::new();
        for (i, (source, end)) in ends.iter().enumerate() {
            match end {
                SessionEnd::Done { transfer } => transfer_ms.push(transfer.as_secs_f64() * 1e3),
                SessionEnd::Failed { stage, error } => by_stage
                    .entry(stage)
                    .or_default()
                    .push(format!("session {i} from {source}: {error}")),
            }
        }
        transfer_ms.sort_by(f64::total_cmp);
        let q = |p: f64| ftp_guard_testbed::ftp_load::quantile(&transfer_ms, p).unwrap_or(f64::NAN);
        let _ = writeln!(
            measured,
            "{k}: {}/{SESSIONS} sessions right from {CLIENT_ADDRESSES} addresses through \
             {PORTS_100} in {:.1} s; transfer (EPSV..226) p50 {:.0} ms, p99 {:.0} ms, max \
             {:.0} ms; failures by stage: {}; gateway counters: {}",
            transfer_ms.len(),
            took.as_secs_f64(),
            q(0.5),
            q(0.99),
            q(1.0),
            if by_stage.is_empty() {
                "none".to_owned()
            } else {
                let mut stages: Vec<String> = by_stage
                    .iter()
                    .map(|(s, v)| format!("{s} {}", v.len()))
                    .collect();
                stages.sort();
                stages.join(", ")
            },
            counters(&env)
        );
        if transfer_ms.len() != SESSIONS {
            let mut text = format!(
                "{k}: {} of {SESSIONS} sessions failed ({CLIENT_ADDRESSES} client addresses, \
                 {PORTS_100}, {:.1} s):",
                SESSIONS - transfer_ms.len(),
                took.as_secs_f64()
            );
            let mut stages: Vec<_> = by_stage.iter().collect();
            stages.sort_by_key(|(s, _)| **s);
            for (stage, errors) in stages {
                let _ = write!(text, "\n  {stage}: {} session(s), e.g.", errors.len());
                for e in errors.iter().take(3) {
                    let _ = write!(text, "\n    {e}");
                }
            }
            let _ = write!(text, "\n  gateway counters: {}", counters(&env));
            failures.push(text);
        }
    }
    let _ = write!(
        measured,
        "total {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
    conclude("many_clients_share_a_small_range", &measured, &failures);
}

// ---------------------------------------------------------------------------------------
// (d) CHECKSUM_PARTIAL through the NAT
// ---------------------------------------------------------------------------------------

/// `Tcp: InCsumErrors` of `role`'s namespace (/proc/net/snmp): segments its kernel dropped
/// for a bad checksum.
fn in_csum_errors(topo: &Topology, role: &str) -> u64 {
    let out = topo.run(role, &["cat", "/proc/net/snmp"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InCsumErrors")
        .and_then(|(_, v)| v.parse().ok())
        .expect("no Tcp InCsumErrors in /proc/net/snmp")
}

/// Sets rx/tx checksum offload of `ifname` in `role`.
fn checksum_offload(topo: &Topology, role: &str, ifname: &str, on: bool) {
    let v = if on { "on" } else { "off" };
    topo.run(role, &["ethtool", "-K", ifname, "rx", v, "tx", v])
        .unwrap();
}

/// One direction of the check: who hands the gateway CHECKSUM_PARTIAL skbs, who verifies.
struct Direction {
    name: &'static str,
    /// (role, interface) whose checksum offload stays on: the sender's veth ends.
    sender: [(&'static str, &'static str); 2],
    /// (role, interface) with checksum offload off: the receiver's veth ends. The gateway's
    /// end (a bridge port) completes the checksum in software when it transmits.
    receiver: [(&'static str, &'static str); 2],
    /// Where to capture what the receiver gets.
    capture_role: &'static str,
    receiver_role: &'static str,
}

const DIRECTIONS: [Direction; 2] = [
    Direction {
        name: "client -> origin (the client's segments CHECKSUM_PARTIAL)",
        sender: [(CLIENT, HOST_IF), (GATEWAY, FIELD_CLIENT_PORTS[0])],
        receiver: [(ORIGIN, HOST_IF), (GATEWAY, FIELD_ORIGIN_PORTS[0])],
        capture_role: ORIGIN,
        receiver_role: ORIGIN,
    },
    Direction {
        name: "origin -> client (the origin's segments CHECKSUM_PARTIAL)",
        sender: [(ORIGIN, HOST_IF), (GATEWAY, FIELD_ORIGIN_PORTS[0])],
        receiver: [(CLIENT, HOST_IF), (GATEWAY, FIELD_CLIENT_PORTS[0])],
        capture_role: CLIENT,
        receiver_role: CLIENT,
    },
];

/// An end-to-end check that a checksum the sender left to offload is completed right after
/// the NAT: the sender's veth keeps the default offloads (its kernel hands out
/// CHECKSUM_PARTIAL skbs holding only the pseudo-header sum), the receiving side has rx/tx
/// checksum off (the gateway's bridge port completes the checksum in software as it
/// transmits; the receiving kernel verifies it). Both directions in turn, each with an EPSV
/// download and upload (so data and ACKs cross both ways) and an active (PORT) download;
/// `tcpdump` on the receiver's interface captures what arrives and every TCP and IPv4
/// checksum in it is verified, besides the receiver's `InCsumErrors` and the content.
#[test]
fn checksum_offload_partial_is_completed() {
    if !require_privileged() {
        return;
    }
    set_client_timeout(Duration::from_secs(20));
    let forwarding = forwarding_knob();
    let test_started = Instant::now();
    let mut failures = Vec::new();
    let mut measured = String::new();
    for kind in SERVERS {
        let k = kind.name();
        let env = field_env(
            &format!("csum-{}", short(kind)),
            kind,
            PORTS_100,
            forwarding,
        );
        let remote = env.origin_file("csum.bin", 256 << 10);
        let upload_src = env.local("csum-up.bin");
        random_file(&upload_src, (256 << 10) + 77).unwrap();
        let login = env.login();
        for (d, dir) in DIRECTIONS.iter().enumerate() {
            for (role, ifname) in dir.sender {
                checksum_offload(&env.topo, role, ifname, true);
            }
            for (role, ifname) in dir.receiver {
                checksum_offload(&env.topo, role, ifname, false);
            }
            let pcap_path = env.local(&format!("dir{d}.pcap"));
            // Data connections only: the control connection ends at the gateway's proxy.
            let capture = Capture::start(
                env.topo.ns_name(dir.capture_role),
                HOST_IF,
                "tcp and not port 21",
                &pcap_path,
            )
            .unwrap();
            let csum_before = in_csum_errors(&env.topo, dir.receiver_role);
            let mut transfers = Vec::new();
            let started = Instant::now();
            let ns = env.client_ns();
            for (what, mode, upload) in [
                ("EPSV download", DataMode::Epsv, false),
                ("EPSV upload", DataMode::Epsv, true),
                ("PORT download", DataMode::Port, false),
            ] {
                let t = Instant::now();
                let result = if upload {
                    let name = format!("up-{d}.bin");
                    curl_upload(ns, &upload_src, &login, &name, mode)
                        .and_then(ClientRun::success)
                        .and_then(|_| same(&upload_src, &env.server.root().join(&name)))
                } else {
                    let local = env.local(&format!("csum-{d}-{}.bin", mode.verb()));
                    curl_download(ns, &login, "csum.bin", &local, mode)
                        .and_then(ClientRun::success)
                        .and_then(|_| same(&remote, &local))
                };
                transfers.push((what, t.elapsed(), result));
            }
            let took = started.elapsed();
            // Retransmissions of a dropped segment arrive after a transfer failed: wait a
            // moment before counting.
            std::thread::sleep(Duration::from_millis(300));
            let csum_errors = in_csum_errors(&env.topo, dir.receiver_role) - csum_before;
            let (pcap, stats) = capture.stop().unwrap();
            let audit = audit_tcp_checksums(&pcap).unwrap();
            let mut line = format!(
                "{k}, {}: {} in {:.1} s; {}'s TcpInCsumErrors +{csum_errors}; tcpdump: {stats}; \
                 what {} received: {}",
                dir.name,
                transfers
                    .iter()
                    .map(|(w, t, r)| format!(
                        "{w} {} ({:.1} s)",
                        if r.is_ok() { "ok" } else { "FAILED" },
                        t.as_secs_f64()
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                took.as_secs_f64(),
                dir.receiver_role,
                dir.receiver_role,
                audit.describe()
            );
            let _ = writeln!(line);
            measured.push_str(&line);
            let failed: Vec<String> = transfers
                .iter()
                .filter_map(|(w, _, r)| r.as_ref().err().map(|e| format!("{w}: {}", brief(e))))
                .collect();
            // A capture that saw nothing would prove nothing.
            let vacuous = audit.tcp_frames == 0;
            if !failed.is_empty() || !audit.ok() || csum_errors > 0 || vacuous {
                failures.push(format!(
                    "{k}, {}:\n  {}; the receiver's kernel dropped {csum_errors} segment(s) for \
                     a bad checksum{}\n  gateway counters: {}\n  {}",
                    dir.name,
                    audit.describe(),
                    if vacuous {
                        " (no data-connection frame reached it at all)"
                    } else {
                        ""
                    },
                    counters(&env),
                    failed.join("\n  ")
                ));
            }
            let _ = fs::remove_file(&pcap_path);
        }
    }
    let _ = write!(
        measured,
        "total {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
    conclude(
        "checksum_offload_partial_is_completed",
        &measured,
        &failures,
    );
}

// ---------------------------------------------------------------------------------------
// (e) a SYN spoofed with the client's address
// ---------------------------------------------------------------------------------------

/// The source port the spoofer's SYN claims to come from (outside the client's ephemeral
/// range, 32768-60999, so the client never uses it).
const SPOOFED_PORT: u16 = 61000;

/// Sends, from `client2` (the bystander on the client bridge), a SYN with the client's
/// address from [`SPOOFED_PORT`] to `target`, through a raw IP socket: what any host on
/// the client's network can do right after seeing the 227.
fn spoof_syn(topo: &Topology, target: std::net::SocketAddrV4) {
    let spoofed = std::net::SocketAddrV4::new(netns::CLIENT_IP, SPOOFED_PORT);
    let frame = ftp_guard_testbed::packet::Ipv4Frame::tcp(
        spoofed,
        target,
        ftp_guard_testbed::packet::flags::SYN,
        &[],
    )
    .build();
    let ip = frame[ftp_guard_testbed::packet::ETH_HLEN..].to_vec();
    topo.in_ns(CLIENT2, || {
        let raw = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .expect("raw socket");
        let to = std::net::SocketAddr::V4(target);
        raw.send_to(&ip, &to.into())
            .expect("sending the spoofed SYN");
    });
}

/// Waits (up to `bound`) until `done` holds; how long it took, or `None`.
fn await_state(bound: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < bound {
        if done() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// (lease entries, flow entries) in the gateway's kernel maps.
fn map_sizes(env: &Env) -> (usize, usize) {
    let kernel = env.gateway.bpf().expect("the kernel path").lock();
    (kernel.lease_count(), kernel.flow_count())
}

/// A host on the client's network sends a SYN with the client's address to the client's
/// fresh lease right after the 227 (from a port the client does not use): the client's
/// own data connection over that lease still opens and carries the file byte-identical.
/// The spoofer's SYN starts a tentative connection (its SYN-ACK goes to the spoofer's MAC,
/// so the client never answers it); the client's SYN from its own port replaces it. The
/// origin still holds the spoofed SYN's half-open connection on the NAT tuple, so it
/// answers the client's SYN with an out-of-window ACK; the client resets that (which
/// clears it at the origin) and sends its SYN again (Linux 6.18: within ~10 ms, not after
/// the 1 s RTO), which completes the handshake. Measured: the connect time.
#[test]
fn a_spoofed_syn_does_not_deny_the_client_its_lease() {
    if !require_privileged() {
        return;
    }
    let mut failures = Vec::new();
    let mut measured = String::new();
    for kind in SERVERS {
        let k = kind.name();
        let env = field_env(&format!("spoof-{}", short(kind)), kind, PORTS_100, false);
        let original = env.origin_file("spoofed.bin", 3 << 20);
        let login = env.login();
        let control = env.topo.in_ns(CLIENT, || {
            let mut c = FtpControl::login(
                login.addr,
                &login.user,
                &login.password,
                Duration::from_secs(10),
            )
            .unwrap();
            let data = c.pasv().unwrap();
            (c, data)
        });
        let (mut control, data_addr) = control;
        spoof_syn(&env.topo, data_addr);
        // The spoofer's SYN first (its host may still be resolving the gateway's MAC).
        if await_state(Duration::from_secs(2), || map_sizes(&env).1 == 2).is_none() {
            failures.push(format!(
                "{k}: the spoofed SYN did not reach the gateway: (leases, flows) = {:?}, {}",
                map_sizes(&env),
                counters(&env)
            ));
            continue;
        }
        let result = env.topo.in_ns(
            CLIENT,
            || -> anyhow::Result<(Duration, Duration, Vec<u8>)> {
                let started = Instant::now();
                let mut data =
                    TcpStream::connect_timeout(&data_addr.into(), Duration::from_secs(10))?;
                let connected = started.elapsed();
                data.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mark = control.command("RETR spoofed.bin")?;
                anyhow::ensure!(mark.code == 150 || mark.code == 125, "RETR: {mark:?}");
                let mut got = Vec::new();
                std::io::Read::read_to_end(&mut data, &mut got)?;
                drop(data);
                let end = control.reply()?;
                anyhow::ensure!(end.code == 226, "end of transfer: {end:?}");
                Ok((connected, started.elapsed(), got))
            },
        );
        match result {
            Ok((connected, took, got)) => {
                let _ = writeln!(
                    measured,
                    "{k}: after the spoofed SYN the client's data connection opened in {:.3} s, \
                     the 3 MiB transfer took {:.3} s; gateway counters: {}",
                    connected.as_secs_f64(),
                    took.as_secs_f64(),
                    counters(&env)
                );
                if got != fs::read(&original).unwrap() {
                    failures.push(format!(
                        "{k}: the file arrived different ({} bytes)",
                        got.len()
                    ));
                }
            }
            Err(e) => failures.push(format!(
                "{k}: the client's transfer after a spoofed SYN failed: {}\n  gateway counters: {}",
                brief(&e),
                counters(&env)
            )),
        }
    }
    conclude(
        "a_spoofed_syn_does_not_deny_the_client_its_lease",
        &measured,
        &failures,
    );
}

/// A spoofed SYN whose handshake never completes (nobody answers the origin's SYN-ACK)
/// holds nothing beyond the lease's TTL (10 s here): the lease and the tentative flow
/// entries are gone from the kernel's maps within a sweep after it.
#[test]
fn an_unfinished_handshake_holds_nothing_beyond_the_lease_ttl() {
    if !require_privileged() {
        return;
    }
    const LEASE_TTL: Duration = Duration::from_secs(10);
    let env = field_env("spoof-ttl", ServerKind::Vsftpd, PORTS_100, false);
    let login = env.login();
    let (control, data_addr) = env.topo.in_ns(CLIENT, || {
        let mut c = FtpControl::login(
            login.addr,
            &login.user,
            &login.password,
            Duration::from_secs(10),
        )
        .unwrap();
        let data = c.pasv().unwrap();
        (c, data)
    });
    let leased = Instant::now();
    spoof_syn(&env.topo, data_addr);
    let started = await_state(Duration::from_secs(2), || map_sizes(&env).1 == 2);
    assert!(
        started.is_some(),
        "the spoofed SYN did not reach the gateway: (leases, flows) = {:?}, {}",
        map_sizes(&env),
        counters(&env)
    );
    let gone = await_state(LEASE_TTL + Duration::from_secs(5), || {
        map_sizes(&env) == (0, 0)
    });
    let after = leased.elapsed();
    eprintln!(
        "\n==== an_unfinished_handshake_holds_nothing_beyond_the_lease_ttl: measured ====\n\
         lease and tentative flows {} {:.1} s after the 227 (lease TTL {} s); counters: {}",
        if gone.is_some() {
            "gone"
        } else {
            "still there"
        },
        after.as_secs_f64(),
        LEASE_TTL.as_secs(),
        counters(&env)
    );
    assert!(
        gone.is_some(),
        "(leases, flows) = {:?} {:.1} s after the 227",
        map_sizes(&env),
        after.as_secs_f64()
    );
    assert!(
        after < LEASE_TTL + Duration::from_secs(3),
        "gone only {:.1} s after the 227",
        after.as_secs_f64()
    );
    drop(control);
}

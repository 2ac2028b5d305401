//! One server's matrix: a fresh origin and a fresh in-process ftp-guard, then every client ×
//! data mode × operation, the bulk cells (many files, concurrent sessions) and the origin's
//! accept-queue counters around them.
use std::{
    fmt::Write as _,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Result;
use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    ftp_clients::{ClientKind, DataMode, Login, random_file},
    ftp_servers::{FtpServer, ServerKind},
    gateway::RunningGateway,
    netns::{CLIENT, ORIGIN, Topology},
    scenario::origin_server,
};

use crate::{
    Args, TEST_FILE, TopologyArg, VIP,
    cells::{concurrent_sessions, many_files, run_op, self_check},
    outcome::{Bulk, Failure, FailureReport, Op, Outcome, Row, ServerReport},
    report::tail,
};

/// ftp-guard's origin connect timeout (control: up to the greeting): below the clients' own
/// 10 s connect timeout, so an origin that never greets shows as ftp-guard's `421`.
pub(crate) const GATEWAY_CONNECT_TIMEOUT_SECS: u64 = 5;

pub(crate) fn gateway_config(
    origin: SocketAddrV4,
    dataplane: &str,
    data_ports: &str,
    topology: TopologyArg,
) -> String {
    let (client_if, origin_if) = topology.interfaces();
    format!(
        "[[service]]\nname = \"interop\"\nlisten = \"{VIP}:21\"\norigin = \"{origin}\"\n\
         data_ports = \"{data_ports}\"\nclient_interface = \"{client_if}\"\n\
         origin_interface = \"{origin_if}\"\n\
         dataplane = \"{dataplane}\"\nconnect_timeout_secs = {GATEWAY_CONNECT_TIMEOUT_SECS}\n",
    )
}

/// What to run against one server.
pub(crate) struct Plan<'a> {
    pub(crate) dataplane: &'static str,
    pub(crate) clients: &'a [ClientKind],
    /// Also check that each client's failure is detected (once per run).
    pub(crate) self_check: bool,
}

/// Everything a cell needs: where the client runs, whom it logs in as, the origin's files.
pub(crate) struct Ctx<'a> {
    pub(crate) topo: &'a Topology,
    pub(crate) server: &'a FtpServer,
    pub(crate) login: Login,
    /// The client's local files (the filesystem is shared by all namespaces).
    pub(crate) work: &'a Path,
    /// [`TEST_FILE`] in the origin's root.
    pub(crate) remote: PathBuf,
    pub(crate) size: u64,
}

impl<'a> Ctx<'a> {
    /// A client of `server` through the gateway's public address.
    pub(crate) fn new(
        topo: &'a Topology,
        server: &'a FtpServer,
        work: &'a Path,
        remote: PathBuf,
        size: u64,
    ) -> Self {
        let login = Login {
            addr: SocketAddrV4::new(VIP, 21),
            ..server.login()
        };
        Ctx {
            topo,
            server,
            login,
            work,
            remote,
            size,
        }
    }

    pub(crate) fn ns(&self) -> &str {
        self.topo.ns_name(CLIENT)
    }
}

pub(crate) fn server_matrix(
    topo: &Topology,
    kind: ServerKind,
    plan: &Plan,
    args: &Args,
    work: &Path,
) -> ServerReport {
    let started = Instant::now();
    let mut report = ServerReport {
        kind,
        dataplane: plan.dataplane,
        version: kind
            .version()
            .unwrap_or_else(|e| format!("unknown ({e:#})")),
        started: None,
        rows: Vec::new(),
        many_files: None,
        concurrent: None,
        failures: Vec::new(),
        elapsed: Duration::ZERO,
        attachments: String::new(),
        counters: String::new(),
        origin_tcp: String::new(),
        self_check: None,
    };
    let origin_tcp_before = OriginTcp::read(topo);
    eprintln!(
        "\n== {} {} ({} data path) ==",
        kind.name(),
        report.version,
        plan.dataplane
    );
    let server = match origin_server(topo, kind) {
        Ok(s) => s,
        Err(e) => {
            report.started = Some(format!("{} did not start: {e:#}", kind.name()));
            return finish(report, started);
        }
    };
    let config = gateway_config(
        server.addr(),
        plan.dataplane,
        args.data_ports(),
        args.topology,
    );
    let gateway = match RunningGateway::start(topo, &config) {
        Ok(g) => g,
        Err(e) => {
            report.started = Some(format!("ftp-guard did not start: {e:#}"));
            return finish(report, started);
        }
    };
    if let Some(bpf) = gateway.bpf() {
        let k = bpf.lock();
        report.attachments = k
            .attachments()
            .iter()
            .map(|(i, m)| format!("{i}={m}"))
            .collect::<Vec<_>>()
            .join(", ");
    }
    let remote = server.root().join(TEST_FILE);
    if let Err(e) = random_file(&remote, args.file_size).and_then(|()| server.give_to_user(&remote))
    {
        report.started = Some(format!("could not create {}: {e:#}", remote.display()));
        return finish(report, started);
    }
    let ctx = Ctx::new(topo, &server, work, remote, args.file_size);
    if plan.self_check {
        let outcome = record(
            &ctx,
            "harness self-check: a failed download must fail its cell".into(),
            self_check(&ctx, plan.clients),
            &mut report.failures,
        );
        eprintln!(
            "  self-check (failures are detected): {}",
            outcome_text(&outcome)
        );
        report.self_check = Some(outcome);
    }
    for client in plan.clients {
        for mode in DataMode::ALL {
            let row = matrix_row(&ctx, *client, mode, &mut report.failures);
            report.rows.push(row);
        }
    }
    if args.files > 0 {
        let t = Instant::now();
        let outcome = record(
            &ctx,
            format!(
                "{}: {} files on one control connection",
                kind.name(),
                args.files
            ),
            many_files(&ctx, args.files),
            &mut report.failures,
        );
        eprintln!(
            "  {} files on one connection: {}",
            args.files,
            outcome_text(&outcome)
        );
        report.many_files = Some(Bulk {
            outcome,
            elapsed: t.elapsed(),
            note: String::new(),
        });
    }
    if args.sessions > 0 {
        let t = Instant::now();
        let mut peak = 0;
        let before = OriginTcp::read(topo);
        let result =
            concurrent_sessions(&ctx, args.sessions, args.session_file_size).map(|p| peak = p);
        // A burst of connections to the origin is where its accept queue can overflow: say
        // so beside a failure (a connection lost that way is never greeted).
        let trouble = OriginTcp::growth(before, OriginTcp::read(topo));
        let result = result.map_err(|mut f| {
            let _ = write!(
                f.detail,
                "\n\norigin kernel during this cell: {}",
                if trouble.is_empty() {
                    "no accept-queue overflow, no SYN cookie".to_owned()
                } else {
                    trouble.clone()
                }
            );
            f
        });
        let outcome = record(
            &ctx,
            format!("{}: {} concurrent sessions", kind.name(), args.sessions),
            result,
            &mut report.failures,
        );
        let mut note = if peak > 0 {
            format!("up to {peak} clients running at once")
        } else {
            String::new()
        };
        if !trouble.is_empty() {
            if !note.is_empty() {
                note.push_str("; ");
            }
            let _ = write!(note, "origin kernel: {trouble}");
        }
        eprintln!(
            "  {} concurrent sessions: {} {note}",
            args.sessions,
            outcome_text(&outcome)
        );
        report.concurrent = Some(Bulk {
            outcome,
            elapsed: t.elapsed(),
            note,
        });
    }
    let c = gateway.counters();
    report.counters = Counter::ALL
        .iter()
        .filter(|k| c.get(**k) > 0)
        .map(|k| format!("{}={}", k.name(), c.get(*k)))
        .collect::<Vec<_>>()
        .join(", ");
    report.origin_tcp = OriginTcp::growth(origin_tcp_before, OriginTcp::read(topo));
    drop(gateway);
    drop(server);
    finish(report, started)
}

pub(crate) fn finish(mut report: ServerReport, started: Instant) -> ServerReport {
    if let Some(why) = &report.started {
        eprintln!("  {why}");
    }
    report.elapsed = started.elapsed();
    report
}

/// The origin namespace's TCP listener counters (`TcpExt` in /proc/net/netstat) that show
/// an accept queue overflowing: a SYN or a handshake's last ACK dropped, a SYN answered
/// with a cookie. None if they cannot be read.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OriginTcp {
    pub(crate) listen_overflows: u64,
    pub(crate) listen_drops: u64,
    pub(crate) syncookies_sent: u64,
}

impl OriginTcp {
    pub(crate) fn read(topo: &Topology) -> Option<OriginTcp> {
        let out = topo.run(ORIGIN, &["cat", "/proc/net/netstat"]).ok()?;
        Self::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// `TcpExt:` names on one line, their values on the next.
    pub(crate) fn parse(netstat: &str) -> Option<OriginTcp> {
        let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next()?, lines.next()?);
        let get = |name: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.parse().ok())
        };
        Some(OriginTcp {
            listen_overflows: get("ListenOverflows")?,
            listen_drops: get("ListenDrops")?,
            syncookies_sent: get("SyncookiesSent")?,
        })
    }

    /// What grew from `before` to `now`, as text; empty when nothing did (or nothing was
    /// read).
    pub(crate) fn growth(before: Option<Self>, now: Option<Self>) -> String {
        let (Some(before), Some(now)) = (before, now) else {
            return String::new();
        };
        [
            (
                "accept-queue overflows",
                now.listen_overflows,
                before.listen_overflows,
            ),
            ("listen drops", now.listen_drops, before.listen_drops),
            (
                "SYN cookies sent",
                now.syncookies_sent,
                before.syncookies_sent,
            ),
        ]
        .iter()
        .filter(|(_, n, b)| n > b)
        .map(|(what, n, b)| format!("{what} {}", n - b))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

pub(crate) fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Pass => "pass".into(),
        Outcome::Fail(r) => format!("FAIL ({r})"),
        Outcome::NotApplicable(r) => format!("n/a ({r})"),
    }
}

/// Turns a cell's result into its outcome, keeping a failure's details (with the tail of
/// the server's log) for the report.
pub(crate) fn record(
    ctx: &Ctx,
    what: String,
    result: Result<(), Failure>,
    failures: &mut Vec<FailureReport>,
) -> Outcome {
    match result {
        Ok(()) => Outcome::Pass,
        Err(f) => {
            failures.push(FailureReport {
                what,
                reason: f.reason.clone(),
                detail: f.detail,
                server_log: tail(&ctx.server.log(), 40),
            });
            Outcome::Fail(f.reason)
        }
    }
}

pub(crate) fn matrix_row(
    ctx: &Ctx,
    client: ClientKind,
    mode: DataMode,
    failures: &mut Vec<FailureReport>,
) -> Row {
    let t = Instant::now();
    let mut row = Row {
        client,
        mode,
        cells: Vec::new(),
        note: None,
    };
    if let Some(reason) = client.unsupported_mode(mode) {
        row.note = Some(reason.to_owned());
        row.cells = Op::ALL
            .iter()
            .map(|op| (*op, Outcome::NotApplicable(reason.to_owned())))
            .collect();
    } else {
        for op in Op::ALL {
            let outcome = match (op, client.cannot_upload()) {
                (Op::Stor, Some(reason)) => {
                    row.note = Some(reason.to_owned());
                    Outcome::NotApplicable(reason.to_owned())
                }
                _ => record(
                    ctx,
                    format!(
                        "{}: {} {} {}",
                        ctx.server.kind().name(),
                        client.name(),
                        mode.verb(),
                        op.name()
                    ),
                    run_op(ctx, client, mode, op),
                    failures,
                ),
            };
            row.cells.push((op, outcome));
        }
    }
    let cells: Vec<String> = row
        .cells
        .iter()
        .map(|(op, o)| format!("{} {}", op.name(), short_outcome(o)))
        .collect();
    eprintln!(
        "  {:<7} {:<5} {}  ({:.1} s)",
        client.name(),
        mode.verb(),
        cells.join("  "),
        t.elapsed().as_secs_f64()
    );
    row
}

pub(crate) fn short_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Pass => "pass".into(),
        Outcome::Fail(r) => format!("FAIL({r})"),
        Outcome::NotApplicable(_) => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_tcp_counters_are_parsed_and_compared() {
        let netstat = |overflows: u64, cookies: u64| {
            format!(
                "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TW\n\
                 TcpExt: {cookies} 0 {overflows} {overflows} 7\n\
                 IpExt: InNoRoutes\nIpExt: 0\n"
            )
        };
        let before = OriginTcp::parse(&netstat(9, 1));
        assert_eq!(
            OriginTcp::growth(before, OriginTcp::parse(&netstat(9, 1))),
            ""
        );
        assert_eq!(
            OriginTcp::growth(before, OriginTcp::parse(&netstat(27, 9))),
            "accept-queue overflows 18, listen drops 18, SYN cookies sent 8"
        );
        assert!(OriginTcp::parse("IpExt: InNoRoutes\nIpExt: 0\n").is_none());
        assert_eq!(OriginTcp::growth(None, before), "");
    }
}

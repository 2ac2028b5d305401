//! The data-port reuse check: many sequential transfers through a 40-port range, so that
//! each port carries several data connections in turn (the kernel path's linger included).
use std::{
    path::Path,
    time::{Duration, Instant},
};

use ftp_guard_testbed::{
    ftp_clients::{DataMode, ftplib_run, random_file},
    ftp_servers::ServerKind,
    gateway::RunningGateway,
    netns::Topology,
    scenario::origin_server,
};

use crate::{
    Args, REUSE_PAUSE_SECS, REUSE_PORTS,
    cells::{checked_ftplib, same_content},
    outcome::{Failure, Outcome, ReuseReport},
    server::{Ctx, gateway_config, outcome_text, record},
};

/// `args.reuse_transfers` sequential downloads on one control connection (ftplib, EPSV)
/// through a gateway whose range has only 40 ports ([`REUSE_PORTS`]), paced so that the
/// kernel path's linger never uses them all up: each port serves several data connections
/// in turn. A fresh origin and gateway.
pub(crate) fn port_reuse(
    topo: &Topology,
    kind: ServerKind,
    dataplane: &'static str,
    args: &Args,
    work: &Path,
) -> ReuseReport {
    let started = Instant::now();
    eprintln!(
        "\n== data-port reuse ({dataplane} data path, {}, {} transfers, ports {REUSE_PORTS}) ==",
        kind.name(),
        args.reuse_transfers
    );
    let mut report = ReuseReport {
        dataplane,
        server: kind,
        outcome: Outcome::Pass,
        elapsed: Duration::ZERO,
        failures: Vec::new(),
    };
    let server = match origin_server(topo, kind) {
        Ok(s) => s,
        Err(e) => {
            report.outcome = Outcome::Fail(format!("{} did not start: {e:#}", kind.name()));
            return report;
        }
    };
    let config = gateway_config(server.addr(), dataplane, REUSE_PORTS, args.topology);
    let gateway = match RunningGateway::start(topo, &config) {
        Ok(g) => g,
        Err(e) => {
            report.outcome = Outcome::Fail(format!("ftp-guard did not start: {e:#}"));
            return report;
        }
    };
    let remote = server.root().join("reuse.bin");
    let ctx = Ctx::new(topo, &server, work, remote.clone(), 4096);
    let result = random_file(&remote, ctx.size)
        .and_then(|()| server.give_to_user(&remote))
        .map_err(|e| Failure::from_error(&e))
        .and_then(|()| {
            let mut ops = Vec::new();
            for i in 0..args.reuse_transfers {
                let local = work.join(format!("r{i:03}.bin"));
                ops.push(format!("RETR reuse.bin {}", local.display()));
                ops.push(format!("SLEEP {REUSE_PAUSE_SECS}"));
            }
            let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
            let run = checked_ftplib(
                ftplib_run(ctx.ns(), &ctx.login, &ops, DataMode::Epsv),
                DataMode::Epsv,
                args.reuse_transfers,
            )?;
            for i in 0..args.reuse_transfers {
                same_content(&remote, &work.join(format!("r{i:03}.bin")), &run)?;
            }
            Ok(())
        });
    report.outcome = record(
        &ctx,
        format!(
            "{dataplane} data path: data-port reuse ({} transfers through {REUSE_PORTS})",
            args.reuse_transfers
        ),
        result,
        &mut report.failures,
    );
    eprintln!("  {}", outcome_text(&report.outcome));
    drop(gateway);
    drop(server);
    report.elapsed = started.elapsed();
    report
}

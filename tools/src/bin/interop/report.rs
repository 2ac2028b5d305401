//! The markdown report (docs/interop.md by default): summary, per-server tables, failure
//! details with traces, run metadata.
use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use ftp_guard_testbed::{
    ftp_clients::{ClientKind, command_line},
    ftp_servers::{PURE_FTPD_MAX_CLIENTS, ServerOptions},
};

use crate::{
    Args, REUSE_PAUSE_SECS, REUSE_PORTS, default_report,
    outcome::{Bulk, FailureReport, Outcome, ReuseReport, ServerReport},
    server::GATEWAY_CONNECT_TIMEOUT_SECS,
};

pub(crate) struct Meta {
    pub(crate) date: String,
    pub(crate) kernel: String,
    pub(crate) commit: String,
    pub(crate) data_ports: String,
    pub(crate) elapsed: Duration,
    pub(crate) client_versions: Vec<(ClientKind, String)>,
    pub(crate) filtered: bool,
    pub(crate) args: String,
}

pub(crate) fn totals(reports: &[ServerReport], reuse: &[ReuseReport]) -> (usize, usize, usize) {
    let (mut pass, mut fail, mut na) = (0, 0, 0);
    let mut count = |o: &Outcome| match o {
        Outcome::Pass => pass += 1,
        Outcome::Fail(_) => fail += 1,
        Outcome::NotApplicable(_) => na += 1,
    };
    for r in reuse {
        count(&r.outcome);
    }
    for r in reports {
        if let Some(o) = &r.self_check {
            count(o);
        }
        let bulk = [&r.many_files, &r.concurrent];
        let outcomes = r
            .rows
            .iter()
            .flat_map(|row| row.cells.iter().map(|(_, o)| o))
            .chain(bulk.into_iter().flatten().map(|b| &b.outcome));
        for o in outcomes {
            count(o);
        }
        if let Some(why) = &r.started {
            count(&Outcome::Fail(why.clone()));
        }
    }
    (pass, fail, na)
}

pub(crate) fn server_summary(r: &ServerReport) -> String {
    let (pass, fail, na) = totals(std::slice::from_ref(r), &[]);
    match &r.started {
        Some(why) => format!("FAILED TO START: {}", why.lines().next().unwrap_or("")),
        None => format!(
            "{pass} pass, {fail} fail, {na} n/a in {:.1} s",
            r.elapsed.as_secs_f64()
        ),
    }
}

/// A table cell: `|` escaped, one line.
pub(crate) fn md(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

pub(crate) fn cell(o: &Outcome) -> String {
    match o {
        Outcome::Pass => "pass".into(),
        Outcome::Fail(r) => format!("**FAIL**: {}", md(r)),
        Outcome::NotApplicable(_) => "n/a".into(),
    }
}

pub(crate) fn bulk_cell(b: &Option<Bulk>) -> String {
    match b {
        None => "not run".into(),
        Some(b) if b.note.is_empty() => {
            format!("{} ({:.1} s)", cell(&b.outcome), b.elapsed.as_secs_f64())
        }
        Some(b) => format!(
            "{} ({:.1} s, {})",
            cell(&b.outcome),
            b.elapsed.as_secs_f64(),
            b.note
        ),
    }
}

pub(crate) fn report(
    meta: &Meta,
    reports: &[ServerReport],
    reuse: &[ReuseReport],
    args: &Args,
) -> String {
    let (pass, fail, na) = totals(reports, reuse);
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# FTP interoperability matrix\n");
    let _ = writeln!(
        w,
        "Written by `cargo xtask interop` ([`tools/src/bin/interop/`](../tools/src/bin/interop/)); \
         do not edit by hand: run it again.\n"
    );
    let _ = writeln!(w, "- Date: {}", meta.date);
    let _ = writeln!(
        w,
        "- Kernel: {}; ftp-guard {} (commit {})",
        meta.kernel,
        env!("CARGO_PKG_VERSION"),
        meta.commit
    );
    let planes = args.dataplane.names();
    let _ = writeln!(
        w,
        "- Data paths: {}; gateway data ports {} (data-port reuse check: {REUSE_PORTS}); \
         client run limit {} s",
        planes.join(", "),
        meta.data_ports,
        args.client_timeout
    );
    if meta.filtered {
        let _ = writeln!(w, "- **Partial run**: `interop {}`", meta.args);
    }
    let _ = writeln!(
        w,
        "- Result: **{pass} pass, {fail} fail, {na} n/a** in {:.0} s",
        meta.elapsed.as_secs_f64()
    );
    for plane in planes {
        let mine: Vec<&ServerReport> = reports.iter().filter(|r| r.dataplane == *plane).collect();
        let (p, f, n) = totals_of(&mine, reuse.iter().filter(|r| r.dataplane == *plane));
        let _ = writeln!(w, "  - {plane} data path: {p} pass, {f} fail, {n} n/a");
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Topology (network namespaces, `--topology {}`: {}): client 203.0.113.2 → ftp-guard \
         on the gateway (VIP 203.0.113.1, origin side 198.51.100.1) → origin \
         198.51.100.2:21 with passive range {}-{} and its same-IP checks on (data \
         connections only from the control connection's peer, PORT only to it). A fresh \
         origin and a fresh ftp-guard per server and data path; ftp-guard gives the origin \
         {GATEWAY_CONNECT_TIMEOUT_SECS} s to accept and greet.\n",
        args.topology.name(),
        args.topology.describe(),
        ServerOptions::default().passive_ports.0,
        ServerOptions::default().passive_ports.1,
    );
    let _ = writeln!(
        w,
        "Each matrix cell is one client process through ftp-guard. It passes when the client \
         exits 0, its own protocol trace shows the requested mode's command and no other \
         data-connection command (a silent fallback, e.g. EPSV → PASV, fails), and the data \
         match by SHA-256. LIST: the listing names the test file; RETR: the downloaded {} \
         bytes; STOR: the file on the origin; REST: the local file holds the first third, the \
         trace must show `REST <that offset>`, and the result must be whole. n/a: the client \
         cannot be made to do it over IPv4 (the note says why). Per server: {} small files \
         (100 B – 8 KiB) downloaded on one control connection (ftplib, EPSV: one USER, {} \
         EPSV, {} RETR in its trace), and {} concurrent curl sessions (EPSV) each downloading \
         a different {}-byte file (crossed data connections would show as mismatches).\n",
        args.file_size, args.files, args.files, args.files, args.sessions, args.session_file_size
    );
    let _ = writeln!(w, "## Versions\n");
    let _ = writeln!(w, "| component | version |\n|---|---|");
    let mut seen = Vec::new();
    for r in reports {
        if !seen.contains(&r.kind) {
            seen.push(r.kind);
            let _ = writeln!(w, "| {} (server) | {} |", r.kind.name(), md(&r.version));
        }
    }
    for (c, v) in &meta.client_versions {
        let _ = writeln!(w, "| {} (client) | {} |", c.name(), md(v));
    }
    let _ = writeln!(w);
    if let Some(o) = reports.iter().find_map(|r| r.self_check.as_ref()) {
        let _ = writeln!(
            w,
            "Harness self-check (each client downloading a missing file must fail its run): \
             {}\n",
            cell(o)
        );
    }

    for plane in planes {
        let attach = reports
            .iter()
            .filter(|r| r.dataplane == *plane)
            .map(|r| r.attachments.as_str())
            .find(|a| !a.is_empty())
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        let _ = writeln!(w, "## {plane} data path{attach}\n");
        for r in reports.iter().filter(|r| r.dataplane == *plane) {
            server_section(w, r, args);
        }
        for r in reuse.iter().filter(|r| r.dataplane == *plane) {
            let _ = writeln!(
                w,
                "### Data-port reuse\n\n{} sequential downloads on one control connection \
                 ({}, ftplib, EPSV, {REUSE_PAUSE_SECS} s apart) through a gateway range of 40 \
                 ports ({REUSE_PORTS}), so each port carries several data connections in turn: \
                 {} ({:.1} s)\n",
                args.reuse_transfers,
                r.server.name(),
                cell(&r.outcome),
                r.elapsed.as_secs_f64()
            );
        }
    }

    let _ = writeln!(w, "## What each server needed\n");
    let _ = writeln!(
        w,
        "- **vsftpd** (Debian package): standalone in the foreground, local system user via \
         PAM, `pasv_promiscuous=NO`, `port_promiscuous=NO`, `seccomp_sandbox=NO` and \
         `isolate=NO` (namespaced test hosts), protocol log to a file.\n\
         - **ProFTPD** (Debian proftpd-core, unpacked into /opt/ftp-guard-test: it conflicts \
         with vsftpd as a package; needs libhiredis0.14, libmemcached11, libmemcachedutil2, \
         libpcre2-posix3): inetd mode behind `systemd-socket-activate --inetd --accept`, since \
         the 1.3.8 standalone daemon waits ~200 ms before serving each new session (upstream \
         issue #1623; ~470 ms per login measured here, ~20 ms in inetd mode); local user via \
         mod_auth_unix (`AuthPAM off`), `DefaultRoot` chroot, `DelayEngine off`, \
         `AllowStoreRestart on`, no `AllowForeignAddress`; ExtendedLog of every command.\n\
         - **Pure-FTPd** (Debian pure-ftpd, unpacked likewise; needs libsodium23): standalone \
         in the foreground; the system user through a PureDB entry with its own uid, gid and \
         SHA-512 hash and the FTP root as chrooted home (with `-l unix` the login directory \
         would be the user's home, `/`); `--maxclientsnumber`/`--maxclientsperip` raised from \
         the default 50 to {PURE_FTPD_MAX_CLIENTS} because every session comes from the \
         gateway's one address; the passive range holds twice that, since Pure-FTPd lowers \
         its limit to half the range and sizes its listen backlog from the limit (3 + \
         limit/8); FXP off (default). It logs commands only to syslog (none in the test namespaces): the \
         transfer log goes to a file.\n\
         - **pyftpdlib** (PyPI): a virtual user, `permit_foreign_addresses=False`.\n"
    );
    let _ = writeln!(w, "## Clients\n");
    let _ = writeln!(
        w,
        "- **curl**: `--ftp-pasv [--disable-epsv]`, `--ftp-port - [--disable-eprt]`; trace `-v`.\n\
         - **lftp**: `ftp:passive-mode`, `ftp:prefer-epsv`; over IPv4 it never sends EPRT; \
         trace `debug 5`.\n\
         - **Python ftplib**: a subclass sends exactly the requested verb; trace \
         `set_debuglevel(2)`.\n\
         - **wget**: passive (PASV) by default, `--no-passive-ftp` for PORT; it picks \
         EPSV/EPRT by address family only (IPv6) and cannot upload; `--tries=1` so a retry \
         cannot hide a failure; trace `-d`.\n\
         - **tnftp** (NetBSD ftp): `passive on|off` and `epsv4 on|off` give all four modes, \
         with no fallback to active; it exits 0 after failed commands in a script, so its \
         replies are checked; trace `-d`.\n"
    );
    let failures: Vec<&FailureReport> = reports
        .iter()
        .flat_map(|r| r.failures.iter())
        .chain(reuse.iter().flat_map(|r| r.failures.iter()))
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(w, "## Failures\n");
        for f in failures {
            let _ = writeln!(
                w,
                "<details><summary>{} — {}</summary>\n\n```text\n{}\n\n{}\n```\n</details>\n",
                html(&f.what),
                html(&f.reason),
                trim_lines(&f.detail, 20, 60).replace("```", "'''"),
                f.server_log.replace("```", "'''")
            );
        }
    }
    out
}

pub(crate) fn server_section(w: &mut String, r: &ServerReport, args: &Args) {
    let _ = writeln!(w, "### {} {}\n", r.kind.name(), md(&r.version));
    if let Some(why) = &r.started {
        let _ = writeln!(w, "**Did not start**:\n\n```text\n{}\n```\n", why.trim());
        return;
    }
    let _ = writeln!(w, "| client | mode | LIST | RETR | STOR | REST | note |");
    let _ = writeln!(w, "|---|---|---|---|---|---|---|");
    for row in &r.rows {
        let cells: Vec<String> = row.cells.iter().map(|(_, o)| cell(o)).collect();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            row.client.name(),
            row.mode.verb(),
            cells.join(" | "),
            row.note.as_deref().map(md).unwrap_or_default()
        );
    }
    let _ = writeln!(
        w,
        "\n- {} small files on one control connection: {}\n\
         - {} concurrent sessions: {}\n\
         - Server total: {:.1} s{}{}\n",
        args.files,
        bulk_cell(&r.many_files),
        args.sessions,
        bulk_cell(&r.concurrent),
        r.elapsed.as_secs_f64(),
        if r.counters.is_empty() {
            String::new()
        } else {
            format!("; kernel path counters: {}", r.counters)
        },
        if r.origin_tcp.is_empty() {
            String::new()
        } else {
            format!("; origin kernel: {}", r.origin_tcp)
        }
    );
}

pub(crate) fn totals_of<'a>(
    reports: &[&ServerReport],
    reuse: impl Iterator<Item = &'a ReuseReport>,
) -> (usize, usize, usize) {
    let mut sum = (0, 0, 0);
    for r in reports {
        let (p, f, n) = totals(std::slice::from_ref(*r), &[]);
        sum = (sum.0 + p, sum.1 + f, sum.2 + n);
    }
    for r in reuse {
        match r.outcome {
            Outcome::Pass => sum.0 += 1,
            Outcome::Fail(_) => sum.1 += 1,
            Outcome::NotApplicable(_) => sum.2 += 1,
        }
    }
    sum
}

pub(crate) fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The first `head` and last `tail` lines of `text`.
pub(crate) fn trim_lines(text: &str, head: usize, tail_n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= head + tail_n {
        return text.trim_end().to_owned();
    }
    format!(
        "{}\n[… {} lines …]\n{}",
        lines[..head].join("\n"),
        lines.len() - head - tail_n,
        lines[lines.len() - tail_n..].join("\n")
    )
}

pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) fn command_stdout(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{}`", command_line(cmd)))?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        command_line(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `abc1234` or `abc1234-dirty`, or "unknown" outside a git checkout.
pub(crate) fn git_commit() -> String {
    let root = default_report();
    let root = root
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(hash) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{hash}-dirty") } else { hash }
        }
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cells_stay_on_one_line() {
        assert_eq!(md("229 (|||40001|)\nnext"), "229 (\\|\\|\\|40001\\|) next");
        assert_eq!(cell(&Outcome::Fail("a|b".into())), "**FAIL**: a\\|b");
        assert_eq!(
            trim_lines("1\n2\n3\n4\n5\n6", 1, 2),
            "1\n[… 3 lines …]\n5\n6"
        );
        assert_eq!(trim_lines("1\n2", 1, 2), "1\n2");
    }
}

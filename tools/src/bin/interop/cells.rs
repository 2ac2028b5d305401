//! The checks behind the cells: one client operation verified by its trace and SHA-256,
//! many files on one connection, concurrent sessions, the harness self-check (a failure is
//! detected) and the data-port reuse check.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::Path,
    sync::{Arc, Barrier},
    time::Instant,
};

use anyhow::{Context as _, Result};
use ftp_guard_testbed::ftp_clients::{
    ClientKind, ClientRun, DataMode, UrlClient, curl_download, curl_list, curl_resume_download,
    curl_upload, ftplib_run, lftp_run, random_file, sha256_file, tnftp_run, wget_list,
};

use crate::{
    TEST_FILE,
    outcome::{Failure, Op},
    server::Ctx,
};

/// Runs one operation with one client in one mode and verifies it.
pub(crate) fn run_op(ctx: &Ctx, client: ClientKind, mode: DataMode, op: Op) -> Result<(), Failure> {
    let ns = ctx.ns();
    let login = &ctx.login;
    let tag = format!("{}-{}-{}", client.name(), mode.verb(), op.name()).to_lowercase();
    let local = ctx.work.join(format!("{tag}.bin"));
    let third = ctx.size / 3;
    let io = |e: anyhow::Error| Failure::from_error(&e);
    match op {
        Op::List => {
            let run = match client {
                ClientKind::Curl => curl_list(ns, login, "", mode),
                ClientKind::Lftp => lftp_run(ns, login, "ls", mode),
                ClientKind::Ftplib => ftplib_run(ns, login, &["LIST"], mode),
                ClientKind::Wget => {
                    let dir = ctx.work.join(&tag);
                    fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))
                        .map_err(io)?;
                    wget_list(ns, login, "", mode, &dir)
                }
                ClientKind::Tnftp => {
                    let listing = ctx.work.join(format!("{tag}.txt"));
                    tnftp_run(ns, login, &format!("ls . {}", listing.display()), mode).map(
                        |mut run| {
                            run.stdout = fs::read_to_string(&listing).unwrap_or_default();
                            run
                        },
                    )
                }
            };
            let run = checked(run, mode)?;
            if !run.stdout.lines().any(|l| l.contains(TEST_FILE)) {
                return Err(Failure::new(
                    format!("the listing does not name {TEST_FILE}"),
                    format!("listing:\n{}\n{}", run.stdout, run.describe()),
                ));
            }
            Ok(())
        }
        Op::Retr => {
            let l = local.display();
            let run = match client {
                ClientKind::Curl => curl_download(ns, login, TEST_FILE, &local, mode),
                ClientKind::Lftp => lftp_run(ns, login, &format!("get {TEST_FILE} -o {l}"), mode),
                ClientKind::Ftplib => {
                    ftplib_run(ns, login, &[&format!("RETR {TEST_FILE} {l}")], mode)
                }
                ClientKind::Wget => UrlClient::Wget.download(ns, login, TEST_FILE, &local, mode),
                ClientKind::Tnftp => tnftp_run(ns, login, &format!("get {TEST_FILE} {l}"), mode),
            };
            let run = checked(run, mode)?;
            same_content(&ctx.remote, &local, &run)
        }
        Op::Stor => {
            random_file(&local, ctx.size).map_err(io)?;
            let name = format!("up-{tag}.bin");
            let l = local.display();
            let run = match client {
                ClientKind::Curl => curl_upload(ns, &local, login, &name, mode),
                ClientKind::Lftp => lftp_run(ns, login, &format!("put {l} -o {name}"), mode),
                ClientKind::Ftplib => ftplib_run(ns, login, &[&format!("STOR {l} {name}")], mode),
                ClientKind::Tnftp => tnftp_run(ns, login, &format!("put {l} {name}"), mode),
                ClientKind::Wget => unreachable!("wget cannot upload (n/a)"),
            };
            let run = checked(run, mode)?;
            same_content(&local, &ctx.server.root().join(&name), &run)
        }
        Op::Rest => {
            let head = fs::read(&ctx.remote)
                .with_context(|| format!("reading {}", ctx.remote.display()))
                .map_err(io)?;
            let cut = usize::try_from(third).unwrap_or(head.len()).min(head.len());
            fs::write(&local, &head[..cut])
                .with_context(|| format!("writing {}", local.display()))
                .map_err(io)?;
            let l = local.display();
            let run = match client {
                ClientKind::Curl => curl_resume_download(ns, login, TEST_FILE, &local, mode),
                ClientKind::Lftp => {
                    lftp_run(ns, login, &format!("get -c {TEST_FILE} -o {l}"), mode)
                }
                ClientKind::Ftplib => ftplib_run(
                    ns,
                    login,
                    &[&format!("REST {third} RETR {TEST_FILE} {l}")],
                    mode,
                ),
                ClientKind::Wget => {
                    UrlClient::Wget.resume_download(ns, login, TEST_FILE, &local, mode)
                }
                ClientKind::Tnftp => tnftp_run(ns, login, &format!("reget {TEST_FILE} {l}"), mode),
            };
            let run = checked(run, mode)?;
            let want = format!("REST {third}");
            if !run.command_lines().contains(&want) {
                return Err(Failure::new(
                    format!("no `{want}` in the trace (not resumed)"),
                    run.describe(),
                ));
            }
            same_content(&ctx.remote, &local, &run)
        }
    }
}

/// The run exited 0 and used exactly `mode`.
pub(crate) fn checked(run: Result<ClientRun>, mode: DataMode) -> Result<ClientRun, Failure> {
    let run = run.map_err(|e| Failure::from_error(&e))?;
    if !run.status.success() {
        let code = run
            .status
            .code()
            .map_or_else(|| run.status.to_string(), |c| format!("exit {c}"));
        return Err(Failure::new(
            format!("{code}: {}", last_error(&run)),
            run.describe(),
        ));
    }
    if run.check_mode(mode).is_err() {
        let verbs = data_verbs(&run);
        return Err(Failure::new(
            if verbs.is_empty() {
                format!("no {} in the trace", mode.verb())
            } else {
                format!("fallback: sent {}", verbs.join(", "))
            },
            run.describe(),
        ));
    }
    Ok(run)
}

/// [`checked`] for an ftplib run of `total` transfers: a failure says how many completed.
pub(crate) fn checked_ftplib(
    run: Result<ClientRun>,
    mode: DataMode,
    total: usize,
) -> Result<ClientRun, Failure> {
    let done = run.as_ref().map_or(0, |r| {
        r.trace
            .lines()
            .filter(|l| l.starts_with("*resp* '226") || l.starts_with("*resp* \"226"))
            .count()
    });
    checked(run, mode).map_err(|mut f| {
        f.reason = format!("{} (after {done} of {total} transfers)", f.reason);
        f
    })
}

/// The data-connection verbs the client sent, consecutive repeats collapsed.
pub(crate) fn data_verbs(run: &ClientRun) -> Vec<String> {
    let mut verbs: Vec<String> = run
        .commands_sent()
        .into_iter()
        .filter(|v| DataMode::ALL.iter().any(|m| m.verb() == v))
        .collect();
    verbs.dedup();
    verbs
}

/// The most telling line of a failed run: its last 4xx/5xx FTP reply, else the last line of
/// its trace.
pub(crate) fn last_error(run: &ClientRun) -> String {
    let mut replies = run.trace.lines().rev().filter_map(|line| {
        let l = line
            .trim_start_matches("< ")
            .trim_start_matches("<--- ")
            .trim_start_matches("*resp* ")
            .trim_matches(|c| c == '\'' || c == '"');
        let b = l.as_bytes();
        (b.len() >= 4
            && matches!(b[0], b'4' | b'5')
            && b[..3].iter().all(u8::is_ascii_digit)
            && b[3] == b' ')
            .then_some(l)
    });
    let line = replies
        .next()
        .or_else(|| run.trace.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("no output");
    line.trim().chars().take(120).collect()
}

pub(crate) fn same_content(expected: &Path, got: &Path, run: &ClientRun) -> Result<(), Failure> {
    let sum = |p: &Path| sha256_file(p).map_err(|e| Failure::from_error(&e));
    let (a, b) = (sum(expected)?, sum(got)?);
    if a == b {
        return Ok(());
    }
    let len = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    Err(Failure::new(
        format!(
            "SHA-256 mismatch: {} bytes, expected {}",
            len(got),
            len(expected)
        ),
        format!(
            "{} ({a}) != {} ({b})\n{}",
            expected.display(),
            got.display(),
            run.describe()
        ),
    ))
}

/// `count` small files downloaded by one ftplib process: one login, one control connection,
/// `count` EPSV data connections; every file checksummed.
pub(crate) fn many_files(ctx: &Ctx, count: usize) -> Result<(), Failure> {
    let io = |e: anyhow::Error| Failure::from_error(&e);
    let remote_dir = ctx.server.root().join("many");
    let local_dir = ctx.work.join("many");
    for d in [&remote_dir, &local_dir] {
        fs::create_dir_all(d)
            .with_context(|| format!("creating {}", d.display()))
            .map_err(io)?;
    }
    ctx.server.give_to_user(&remote_dir).map_err(io)?;
    let mut ops = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("f{i:03}.bin");
        let path = remote_dir.join(&name);
        // 100 B .. ~8 KiB: small files, each a different size.
        random_file(&path, 100 + (i as u64 * 397) % 8000).map_err(io)?;
        ops.push(format!(
            "RETR many/{name} {}",
            local_dir.join(&name).display()
        ));
    }
    let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
    let run = checked_ftplib(
        ftplib_run(ctx.ns(), &ctx.login, &ops, DataMode::Epsv),
        DataMode::Epsv,
        count,
    )?;
    let sent = run.commands_sent();
    let count_of = |verb: &str| sent.iter().filter(|v| *v == verb).count();
    if count_of("USER") != 1 || count_of("RETR") != count || count_of("EPSV") != count {
        return Err(Failure::new(
            format!(
                "expected 1 USER, {count} EPSV and {count} RETR; got {}, {}, {}",
                count_of("USER"),
                count_of("EPSV"),
                count_of("RETR")
            ),
            run.describe(),
        ));
    }
    for i in 0..count {
        let name = format!("f{i:03}.bin");
        same_content(&remote_dir.join(&name), &local_dir.join(&name), &run)?;
    }
    Ok(())
}

/// `sessions` curl processes started together, each downloading its own file (so crossed
/// data connections would show as checksum mismatches), in EPSV.
/// Returns the peak number of client processes that were running at the same time.
pub(crate) fn concurrent_sessions(ctx: &Ctx, sessions: usize, size: u64) -> Result<usize, Failure> {
    let io = |e: anyhow::Error| Failure::from_error(&e);
    let remote_dir = ctx.server.root().join("concurrent");
    let local_dir = ctx.work.join("concurrent");
    for d in [&remote_dir, &local_dir] {
        fs::create_dir_all(d)
            .with_context(|| format!("creating {}", d.display()))
            .map_err(io)?;
    }
    ctx.server.give_to_user(&remote_dir).map_err(io)?;
    for i in 0..sessions {
        let path = remote_dir.join(format!("c{i:02}.bin"));
        random_file(&path, size).map_err(io)?;
    }
    let barrier = Arc::new(Barrier::new(sessions));
    type Timed = Result<(Instant, Instant), Failure>;
    let results: Vec<Timed> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..sessions)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                let (remote_dir, local_dir) = (&remote_dir, &local_dir);
                s.spawn(move || {
                    let name = format!("c{i:02}.bin");
                    let local = local_dir.join(&name);
                    barrier.wait();
                    let began = Instant::now();
                    let run = checked(
                        curl_download(
                            ctx.ns(),
                            &ctx.login,
                            &format!("concurrent/{name}"),
                            &local,
                            DataMode::Epsv,
                        ),
                        DataMode::Epsv,
                    )?;
                    let ended = Instant::now();
                    same_content(&remote_dir.join(&name), &local, &run).map(|()| (began, ended))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Failure::new(
                        "session thread panicked",
                        "a session thread panicked",
                    ))
                })
            })
            .collect()
    });
    let mut spans = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(span) => spans.push(span),
            Err(f) => failed.push(f),
        }
    }
    match failed.first() {
        None => Ok(peak_overlap(&spans)),
        Some(first) => {
            let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
            for f in &failed {
                *reasons.entry(f.reason.as_str()).or_default() += 1;
            }
            let summary: Vec<String> = reasons.iter().map(|(r, n)| format!("{n}× {r}")).collect();
            Err(Failure::new(
                format!("{}/{sessions} failed: {}", failed.len(), summary.join("; ")),
                format!("first failure:\n{}", first.detail),
            ))
        }
    }
}

/// The largest number of `(start, end)` spans open at one instant (a span ending when
/// another starts does not overlap it).
pub(crate) fn peak_overlap(spans: &[(Instant, Instant)]) -> usize {
    // (instant, is_start): at the same instant ends (`false`) sort before starts.
    let mut events: Vec<(Instant, bool)> = spans
        .iter()
        .flat_map(|(a, b)| [(*a, true), (*b, false)])
        .collect();
    events.sort();
    let (mut now, mut peak) = (0usize, 0usize);
    for (_, is_start) in events {
        if is_start {
            now += 1;
            peak = peak.max(now);
        } else {
            now = now.saturating_sub(1);
        }
    }
    peak
}

/// Each client downloading a file that does not exist must come out as a failed run: the
/// proof that a broken transfer cannot pass as a cell (tnftp's exit status, for one, is
/// reconstructed from its output).
pub(crate) fn self_check(ctx: &Ctx, clients: &[ClientKind]) -> Result<(), Failure> {
    const MISSING: &str = "no-such-file.bin";
    let (ns, login, mode) = (ctx.ns(), &ctx.login, DataMode::Pasv);
    let mut undetected = Vec::new();
    let mut traces = String::new();
    for client in clients {
        let local = ctx.work.join(format!("self-check-{}.bin", client.name()));
        let l = local.display();
        let run = match client {
            ClientKind::Curl => curl_download(ns, login, MISSING, &local, mode),
            ClientKind::Lftp => lftp_run(ns, login, &format!("get {MISSING} -o {l}"), mode),
            ClientKind::Ftplib => ftplib_run(ns, login, &[&format!("RETR {MISSING} {l}")], mode),
            ClientKind::Wget => UrlClient::Wget.download(ns, login, MISSING, &local, mode),
            ClientKind::Tnftp => tnftp_run(ns, login, &format!("get {MISSING} {l}"), mode),
        };
        match run {
            Ok(run) if run.status.success() => {
                undetected.push(client.name());
                let _ = writeln!(traces, "{}", run.describe());
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Failure::new(
                    format!("{} could not run", client.name()),
                    format!("{e:#}"),
                ));
            }
        }
    }
    if undetected.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            format!(
                "a download of a missing file exited 0 with {}",
                undetected.join(", ")
            ),
            traces,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::process::ExitStatusExt as _, time::Duration};

    use super::*;

    fn run(trace: &str) -> ClientRun {
        ClientRun {
            command: "x".into(),
            status: std::process::ExitStatus::from_raw(1 << 8),
            stdout: String::new(),
            trace: trace.into(),
        }
    }

    #[test]
    fn peak_overlap_counts_spans_open_together() {
        let t = Instant::now();
        let s = |a: u64, b: u64| (t + Duration::from_millis(a), t + Duration::from_millis(b));
        assert_eq!(peak_overlap(&[]), 0);
        assert_eq!(peak_overlap(&[s(0, 10), s(10, 20), s(20, 30)]), 1);
        assert_eq!(peak_overlap(&[s(0, 10), s(5, 20), s(6, 7), s(30, 40)]), 3);
    }

    #[test]
    fn last_error_prefers_the_last_ftp_error_reply() {
        let curl = run("> EPSV\n< 229 ok (|||1|)\n> RETR x\n< 550 No such file\ncurl: (78) gone\n");
        assert_eq!(last_error(&curl), "550 No such file");
        let ftplib = run("*cmd* 'EPSV'\n*resp* \"425 Can't open data connection\"\n");
        assert_eq!(last_error(&ftplib), "425 Can't open data connection");
        let lftp = run("---> PASV\n<--- 530 Not logged in\n");
        assert_eq!(last_error(&lftp), "530 Not logged in");
        assert_eq!(last_error(&run("no replies\nlast words\n\n")), "last words");
    }

    #[test]
    fn data_verbs_show_a_fallback_once() {
        let r = run("> EPSV\n< 500 no\n> PASV\n> PASV\n> RETR a\n");
        assert_eq!(data_verbs(&r), ["EPSV", "PASV"]);
    }
}

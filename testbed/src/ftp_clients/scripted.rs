//! The clients driven by a script of their own commands: lftp, Python ftplib (a small driver
//! driver script of ours) and tnftp (whose exit status is rebuilt from its output).
use std::{ffi::OsStr, fmt::Write as _, process::ExitStatus};

use anyhow::{Result, bail, ensure};

use super::{ClientRun, DataMode, IO_TIMEOUT_SECS, Login, process::run_client, sent_line};

/// Runs an lftp `script` (commands separated by `;` or newlines, e.g.
/// `"cls -1; put /tmp/a -o a; get a -o /tmp/b"`) after logging in to `login`.
///
/// Settings: `ftp:prefer-epsv yes|no` picks EPSV or PASV (lftp sends EPSV over IPv4 only with
/// `yes`), no TLS, `cmd:fail-exit yes` (the first failing command ends the run with a non-zero
/// status), one retry at most, 10 s network timeout, `xfer:clobber on`, no rc files (`--norc`).
/// The trace is lftp's `debug 5` output (`---> CMD` / `<--- reply`) from stderr.
pub fn lftp_run(ns: &str, login: &Login, script: &str, mode: DataMode) -> Result<ClientRun> {
    for (what, value) in [("user", &login.user), ("password", &login.password)] {
        ensure!(
            !value.contains(['"', '\\', ',', '\n']),
            "lftp_run: the {what} must not contain '\"', '\\\\', ',' or a newline"
        );
    }
    // lftp over IPv4: EPSV only with prefer-epsv; active mode always sends PORT.
    let (passive, prefer_epsv) = match mode {
        DataMode::Pasv => ("on", "no"),
        DataMode::Epsv => ("on", "yes"),
        DataMode::Port => ("off", "no"),
        DataMode::Eprt => bail!("lftp sends EPRT only over IPv6"),
    };
    let full = format!(
        "set cmd:fail-exit yes; set cmd:interactive no; set ftp:passive-mode {passive}; \
         set ftp:prefer-epsv {prefer_epsv}; set ftp:ssl-allow no; set net:max-retries 1; \
         set net:timeout {IO_TIMEOUT_SECS}; set net:reconnect-interval-base 1; \
         set xfer:clobber on; debug 5; \
         open -u \"{},{}\" -p {} {}\n{script}",
        login.user,
        login.password,
        login.addr.port(),
        login.addr.ip()
    );
    run_client(
        ns,
        "lftp",
        &["--norc".as_ref(), "-c".as_ref(), full.as_ref()],
        None,
    )
}

/// Python ftplib driver: logs in, runs `ops` in order, QUITs. Ops (names without spaces):
/// - `LIST [dir]`, `NLST [dir]`: listing lines go to `stdout`
/// - `RETR remote local`, `STOR local remote`
/// - `REST n RETR remote local`: resumes: `local` is cut to `n` bytes and written from there
/// - `QUOTE line...`: a raw command; its reply goes to `stdout`
/// - `SLEEP seconds`: pauses (e.g. to pace many transfers)
///
/// ftplib itself sends EPSV only when the control socket is IPv6: a subclass overrides
/// `makepasv` to send exactly the requested verb (PASV: the 227 address is ignored, as
/// ftplib does by default). The trace is `set_debuglevel(2)` (`*cmd* 'EPSV'`), sent to stderr.
pub fn ftplib_run(ns: &str, login: &Login, ops: &[&str], mode: DataMode) -> Result<ClientRun> {
    let ip = login.addr.ip().to_string();
    let port = login.addr.port().to_string();
    let timeout = IO_TIMEOUT_SECS.to_string();
    let mut args: Vec<&OsStr> = vec![
        "-u".as_ref(),
        "-c".as_ref(),
        FTPLIB_SCRIPT.as_ref(),
        ip.as_ref(),
        port.as_ref(),
        login.user.as_ref(),
        login.password.as_ref(),
        mode.verb().as_ref(),
        timeout.as_ref(),
    ];
    args.extend(ops.iter().map(OsStr::new));
    run_client(ns, "python3", &args, None)
}

const FTPLIB_SCRIPT: &str = r#"
import ftplib, functools, os, sys, time
# ftplib prints its debug trace with print(): send it to stderr, keep stdout for listings.
ftplib.print = functools.partial(print, file=sys.stderr, flush=True)
host, port, user, password, mode, timeout = sys.argv[1:7]
ops = sys.argv[7:]

class FTP(ftplib.FTP):
    def sendport(self, host, port):
        # ftplib sends PORT over IPv4; EPRT on request.
        if mode == "EPRT":
            return self.sendeprt(host, port)
        return super().sendport(host, port)

    def makepasv(self):
        if mode == "EPSV":
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        _untrusted, data_port = ftplib.parse227(self.sendcmd("PASV"))
        return self.sock.getpeername()[0], data_port

ftp = FTP(timeout=float(timeout))
ftp.set_pasv(mode in ("PASV", "EPSV"))
ftp.set_debuglevel(2)
ftp.connect(host, int(port))
ftp.login(user, password)
for op in ops:
    w = op.split()
    verb = w[0].upper()
    if verb in ("LIST", "NLST"):
        ftp.retrlines(" ".join([verb] + w[1:]), lambda line: print(line, flush=True))
    elif verb == "RETR" and len(w) == 3:
        with open(w[2], "wb") as f:
            ftp.retrbinary("RETR " + w[1], f.write)
    elif verb == "STOR" and len(w) == 3:
        with open(w[1], "rb") as f:
            ftp.storbinary("STOR " + w[2], f)
    elif verb == "REST" and len(w) == 5 and w[2].upper() == "RETR":
        offset = int(w[1])
        with open(w[4], "r+b" if os.path.exists(w[4]) else "w+b") as f:
            f.truncate(offset)
            f.seek(offset)
            ftp.retrbinary("RETR " + w[3], f.write, rest=offset)
    elif verb == "QUOTE" and len(w) > 1:
        print(ftp.sendcmd(" ".join(w[1:])), flush=True)
    elif verb == "SLEEP" and len(w) == 2:
        time.sleep(float(w[1]))
    else:
        sys.exit("ftplib_run: unknown op %r" % op)
ftp.quit()
"#;

/// Runs tnftp `script` (one command per line, e.g. `ls . /tmp/list.txt`, `get a /tmp/a`,
/// `put /tmp/b b`, `reget a /tmp/a`) after logging in to `login`, then `quit`.
///
/// Settings: `binary`, `epsv4 on|off` and `passive on|off` pick the mode (tnftp falls back
/// neither from passive to active nor, with these settings, silently: a failed EPSV shows as
/// PASV in the trace); `-i` no prompts, `-n` no auto-login (`user` from the script), `-q 10`
/// gives up on a 10 s stall. The trace is tnftp's `-d` output (`---> CMD`, replies).
///
/// tnftp exits 0 after a failed command in a script: when its output shows a failure (a 4xx
/// or 5xx reply to a login, mode or transfer command, "Not connected.", or an error line of
/// its own on stderr), the returned status is exit code 1 and the trace ends with the reason.
pub fn tnftp_run(ns: &str, login: &Login, script: &str, mode: DataMode) -> Result<ClientRun> {
    for (what, value) in [("user", &login.user), ("password", &login.password)] {
        ensure!(
            !value.contains(char::is_whitespace) && !value.is_empty(),
            "tnftp_run: the {what} must be non-empty, without whitespace"
        );
    }
    let (passive, epsv4) = match mode {
        DataMode::Pasv => ("on", "off"),
        DataMode::Epsv => ("on", "on"),
        DataMode::Port => ("off", "off"),
        DataMode::Eprt => ("off", "on"),
    };
    let input = format!(
        "user {} {}\nbinary\nepsv4 {epsv4}\npassive {passive}\n{}\nquit\n",
        login.user,
        login.password,
        script.trim_end()
    );
    let ip = login.addr.ip().to_string();
    let port = login.addr.port().to_string();
    let args: [&OsStr; 8] = [
        "-i".as_ref(),
        "-n".as_ref(),
        "-d".as_ref(),
        "-v".as_ref(),
        "-q".as_ref(),
        "10".as_ref(),
        ip.as_ref(),
        port.as_ref(),
    ];
    let mut run = run_client(ns, "tnftp", &args, Some(input.as_bytes()))?;
    // Everything tnftp says about the protocol is on stdout; its own errors on stderr.
    let stderr = std::mem::take(&mut run.trace);
    let failure = tnftp_failure(&run.stdout, &stderr);
    run.trace = format!("{}\n{}", run.stdout.trim_end(), stderr.trim_end());
    if let Some(reason) = failure
        && run.status.success()
    {
        use std::os::unix::process::ExitStatusExt as _;
        run.status = ExitStatus::from_raw(1 << 8);
        let _ = write!(
            run.trace,
            "\n(ftp-guard-tests: tnftp exited 0, but {reason})"
        );
    }
    Ok(run)
}

/// The first sign of failure in tnftp's output, if any (see [`tnftp_run`]).
fn tnftp_failure(stdout: &str, stderr: &str) -> Option<String> {
    const CHECKED: [&str; 14] = [
        "USER", "PASS", "TYPE", "CWD", "PASV", "EPSV", "PORT", "EPRT", "LIST", "NLST", "RETR",
        "STOR", "APPE", "REST",
    ];
    if let Some(line) = stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
        return Some(format!("it printed an error: {line:?}"));
    }
    let mut last_verb = String::new();
    for line in stdout.lines().map(str::trim_end) {
        if line == "Not connected." || line == "Login failed." {
            return Some(format!("it said {line:?}"));
        }
        if let Some(cmd) = sent_line(line) {
            last_verb = cmd
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            continue;
        }
        let b = line.as_bytes();
        let final_reply = b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ';
        if final_reply && matches!(b[0], b'4' | b'5') && CHECKED.contains(&last_verb.as_str()) {
            return Some(format!("{last_verb} got {line:?}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tnftp_failures_are_found_in_its_output() {
        let ok = "220 hi\n---> USER a\n331 pw\n---> PASS XXXX\n230 in\n---> SIZE x\n\
                  550 no such file\n---> EPSV\n229 ok (|||3|)\n---> RETR x\n150 go\n226 done\n";
        assert_eq!(tnftp_failure(ok, ""), None);
        let refused = "---> PASV\n227 ok (1,2,3,4,5,6)\n---> RETR x\n425 Can't open\n";
        let reason = tnftp_failure(refused, "").unwrap();
        assert!(
            reason.contains("RETR") && reason.contains("425"),
            "{reason}"
        );
        let login = "---> USER a\n331 pw\n---> PASS XXXX\n530 Login incorrect.\nLogin failed.\n";
        assert!(tnftp_failure(login, "").unwrap().contains("530"));
        assert!(tnftp_failure("Not connected.\n", "").is_some());
        // Continuation lines of a multi-line reply are not final replies.
        assert_eq!(
            tnftp_failure("---> LIST\n150-x\n 500 y\n226 ok\n", ""),
            None
        );
        assert!(
            tnftp_failure("", "tnftp: Can't connect to `1.2.3.4:21'\n")
                .unwrap()
                .contains("Can't connect")
        );
    }
}

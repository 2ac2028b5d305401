//! A minimal blocking FTP control client: for load generation (the benchmark's sessions/s,
//! reply latency, lease rate and idle-session figures: thousands of sessions where spawning
//! curl per session would measure curl) and, wrapped by [`crate::scenario::Control`], for
//! tests that need precise choreography. Errors are returned, never panicked, so a load run
//! can count them.
use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

/// One FTP reply: its code and its text (all lines, CRLF removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    /// The reply as it was sent: every line CRLF-terminated.
    pub fn raw(&self) -> String {
        self.text.lines().map(|l| format!("{l}\r\n")).collect()
    }
}

/// A control connection.
pub struct FtpControl {
    reader: BufReader<TcpStream>,
    peer: SocketAddrV4,
    /// The local address the control connection was bound to, if chosen: data connections
    /// come from it too (a data connection from another address is not the client's).
    source: Option<Ipv4Addr>,
    /// The server's 220 greeting.
    greeting: Reply,
}

/// A TCP connection to `addr`, from `source` (any port) when given.
fn connect_tcp(
    source: Option<Ipv4Addr>,
    addr: SocketAddrV4,
    timeout: Duration,
) -> Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)
            .with_context(|| format!("connecting to {addr}"));
    };
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket
        .bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())
        .with_context(|| format!("binding to {source}"))?;
    socket
        .connect_timeout(&SocketAddr::V4(addr).into(), timeout)
        .with_context(|| format!("connecting from {source} to {addr}"))?;
    Ok(socket.into())
}

impl FtpControl {
    /// Connects and reads the 220 greeting.
    pub fn connect(addr: SocketAddrV4, timeout: Duration) -> Result<FtpControl> {
        Self::connect_from(None, addr, timeout)
    }

    /// Connects from `source` (an address of this host; `None`: the kernel's choice) and
    /// reads the 220 greeting. Data connections will come from `source` too.
    pub fn connect_from(
        source: Option<Ipv4Addr>,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> Result<FtpControl> {
        let stream = connect_tcp(source, addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut control = FtpControl {
            reader: BufReader::new(stream),
            peer: addr,
            source,
            greeting: Reply {
                code: 0,
                text: String::new(),
            },
        };
        control.greeting = control.expect_reply(220).context("greeting")?;
        Ok(control)
    }

    /// The server's 220 greeting.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// Connects, logs in and switches to binary mode.
    pub fn login(
        addr: SocketAddrV4,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<FtpControl> {
        Self::login_from(None, addr, user, password, timeout)
    }

    /// [`FtpControl::login`] from `source` (see [`FtpControl::connect_from`]).
    pub fn login_from(
        source: Option<Ipv4Addr>,
        addr: SocketAddrV4,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<FtpControl> {
        let mut control = FtpControl::connect_from(source, addr, timeout)?;
        control.expect(&format!("USER {user}"), 331)?;
        control.expect(&format!("PASS {password}"), 230)?;
        control.expect("TYPE I", 200)?;
        Ok(control)
    }

    /// Reads one (possibly multi-line) reply.
    pub fn reply(&mut self) -> Result<Reply> {
        let mut text = String::new();
        let mut first_code: Option<u16> = None;
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .context("reading a reply")?;
            ensure!(n > 0, "the server closed the connection (after {text:?})");
            let line = line.trim_end_matches(['\r', '\n']);
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(line);
            let b = line.as_bytes();
            let code = (b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit))
                .then(|| line[..3].parse::<u16>().ok())
                .flatten();
            match (first_code, code) {
                // The first line fixes the code; a multi-line reply ends with "<code> ".
                (None, Some(c)) if b.get(3) == Some(&b'-') => first_code = Some(c),
                (None, Some(c)) => return Ok(Reply { code: c, text }),
                (None, None) => bail!("not an FTP reply: {line:?}"),
                (Some(f), Some(c)) if c == f && b.get(3).is_none_or(|&x| x == b' ') => {
                    return Ok(Reply { code: c, text });
                }
                (Some(_), _) => {}
            }
        }
    }

    /// Sends one command line and reads its reply.
    pub fn command(&mut self, line: &str) -> Result<Reply> {
        self.reader
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .with_context(|| format!("sending {line:?}"))?;
        self.reply()
    }

    /// Sends a command; its reply must have `code`.
    pub fn expect(&mut self, line: &str, code: u16) -> Result<Reply> {
        let reply = self.command(line)?;
        ensure!(
            reply.code == code,
            "{line:?} got {:?}, expected {code}",
            reply.text
        );
        Ok(reply)
    }

    fn expect_reply(&mut self, code: u16) -> Result<Reply> {
        let reply = self.reply()?;
        ensure!(reply.code == code, "got {:?}, expected {code}", reply.text);
        Ok(reply)
    }

    /// EPSV: the data port the server announced.
    pub fn epsv(&mut self) -> Result<u16> {
        let reply = self.expect("EPSV", 229)?;
        epsv_port(&reply.text).with_context(|| format!("no port in {:?}", reply.text))
    }

    /// EPSV + RETR of `path`: returns the bytes received (the data connection goes to the
    /// control connection's address, as EPSV says).
    pub fn retr(&mut self, path: &str) -> Result<u64> {
        self.retr_into(path, &mut io::sink())
    }

    /// EPSV + RETR of `path`, the bytes received written to `out`; returns their number.
    /// The data connection comes from the control connection's source address.
    pub fn retr_into(&mut self, path: &str, out: &mut impl Write) -> Result<u64> {
        let port = self.epsv()?;
        let data_addr = SocketAddrV4::new(*self.peer.ip(), port);
        let timeout = self
            .reader
            .get_ref()
            .read_timeout()?
            .unwrap_or(Duration::MAX);
        let mut data = connect_tcp(self.source, data_addr, timeout)
            .with_context(|| format!("data connection to {data_addr}"))?;
        data.set_read_timeout(Some(timeout))?;
        let mark = self.command(&format!("RETR {path}"))?;
        ensure!(
            mark.code == 150 || mark.code == 125,
            "RETR got {:?}",
            mark.text
        );
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0u64;
        loop {
            let n = data.read(&mut buf).context("reading the data connection")?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .context("keeping the data received")?;
            total += n as u64;
        }
        // Closed before the 226 is awaited (as ftplib does): vsftpd answers only once the
        // client has closed its end too, or after a delay (about 40 ms a transfer here).
        drop(data);
        self.expect_reply(226).context("end of transfer")?;
        Ok(total)
    }

    /// PASV: the data address the server announced.
    pub fn pasv(&mut self) -> Result<SocketAddrV4> {
        let reply = self.expect("PASV", 227)?;
        pasv_addr(&reply.text).with_context(|| format!("no address in {:?}", reply.text))
    }

    /// One passive download of `path` to nowhere, each step told apart when it fails (see
    /// [`TransferFailure`]): `mode`, the data connection to the announced address, RETR,
    /// the data until the server closes it, 226. Returns the bytes received and the data
    /// address used.
    pub fn passive_retr(
        &mut self,
        mode: Passive,
        path: &str,
    ) -> Result<(u64, SocketAddrV4), TransferFailure> {
        let command = match mode {
            Passive::Epsv => "EPSV",
            Passive::Pasv => "PASV",
        };
        let reply = self.command(command).map_err(TransferFailure::Control)?;
        let expected = match mode {
            Passive::Epsv => 229,
            Passive::Pasv => 227,
        };
        if reply.code != expected {
            return Err(TransferFailure::Refused {
                command,
                code: reply.code,
                text: reply.text,
            });
        }
        let data_addr = match mode {
            Passive::Epsv => epsv_port(&reply.text).map(|p| SocketAddrV4::new(*self.peer.ip(), p)),
            Passive::Pasv => pasv_addr(&reply.text),
        }
        .ok_or_else(|| {
            TransferFailure::Control(anyhow::anyhow!("no data address in {:?}", reply.text))
        })?;
        let timeout = self
            .reader
            .get_ref()
            .read_timeout()
            .ok()
            .flatten()
            .unwrap_or(Duration::MAX);
        let mut data = connect_tcp(self.source, data_addr, timeout)
            .with_context(|| format!("data connection to {data_addr}"))
            .map_err(|error| TransferFailure::DataConnect {
                addr: data_addr,
                error,
            })?;
        let transfer = |e: anyhow::Error| TransferFailure::Transfer(e);
        data.set_read_timeout(Some(timeout))
            .map_err(|e| transfer(e.into()))?;
        let mark = self
            .command(&format!("RETR {path}"))
            .map_err(TransferFailure::Control)?;
        if mark.code != 150 && mark.code != 125 {
            return Err(transfer(anyhow::anyhow!("RETR got {:?}", mark.text)));
        }
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0u64;
        loop {
            let n = data
                .read(&mut buf)
                .context("reading the data connection")
                .map_err(transfer)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        // Closed before the 226 is awaited (see `retr_into`).
        drop(data);
        let end = self.reply().map_err(TransferFailure::Control)?;
        if end.code != 226 {
            return Err(transfer(anyhow::anyhow!("end of transfer: {:?}", end.text)));
        }
        Ok((total, data_addr))
    }

    /// QUIT, expecting 221.
    pub fn quit(mut self) -> Result<()> {
        self.expect("QUIT", 221).map(drop)
    }
}

/// How a passive data connection is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passive {
    Epsv,
    Pasv,
}

/// Why one [`FtpControl::passive_retr`] failed.
#[derive(Debug)]
pub enum TransferFailure {
    /// EPSV/PASV got another reply than 229/227 (425: no data port free). The control
    /// connection is still in step.
    Refused {
        command: &'static str,
        code: u16,
        text: String,
    },
    /// The data connection could not be made (refused, timed out). The control connection
    /// is still in step (RETR was not sent).
    DataConnect {
        /// Where it was to go.
        addr: SocketAddrV4,
        error: anyhow::Error,
    },
    /// RETR was refused, or the data or the 226 did not come: whether a reply is still
    /// due is unknown, so the control connection is best replaced.
    Transfer(anyhow::Error),
    /// The control connection failed (closed, timed out, not FTP): it is unusable.
    Control(anyhow::Error),
}

impl TransferFailure {
    /// A short name of the kind of failure, for counting: `425 on EPSV`, `data connection`, …
    pub fn kind(&self) -> String {
        match self {
            TransferFailure::Refused { command, code, .. } => format!("{code} on {command}"),
            TransferFailure::DataConnect { .. } => "data connection".into(),
            TransferFailure::Transfer(_) => "transfer".into(),
            TransferFailure::Control(_) => "control connection".into(),
        }
    }

    /// Whether the control connection can go on with the next command.
    pub fn control_usable(&self) -> bool {
        matches!(
            self,
            TransferFailure::Refused { .. } | TransferFailure::DataConnect { .. }
        )
    }
}

impl std::fmt::Display for TransferFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferFailure::Refused { command, text, .. } => write!(f, "{command}: {text}"),
            TransferFailure::DataConnect { error: e, .. }
            | TransferFailure::Transfer(e)
            | TransferFailure::Control(e) => write!(f, "{}: {e:#}", self.kind()),
        }
    }
}

/// The address of a 227 reply: "227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)" (the
/// parentheses optional, as RFC 959 leaves them).
pub fn pasv_addr(text: &str) -> Option<SocketAddrV4> {
    let start = text.get(3..)?.find(|c: char| c.is_ascii_digit())? + 3;
    let numbers: Vec<u8> = text[start..]
        .split(|c: char| !c.is_ascii_digit() && c != ',')
        .next()?
        .split(',')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d, p1, p2] = numbers[..] else {
        return None;
    };
    Some(SocketAddrV4::new(
        std::net::Ipv4Addr::new(a, b, c, d),
        u16::from(p1) << 8 | u16::from(p2),
    ))
}

/// The port of a 229 reply: "229 Entering Extended Passive Mode (|||port|)" with any
/// delimiter.
pub fn epsv_port(text: &str) -> Option<u16> {
    let inner = text.split_once('(')?.1.split_once(')')?.0;
    let delim = inner.chars().next()?;
    let fields: Vec<&str> = inner.split(delim).collect();
    // "", "", "", port, ""
    if fields.len() != 5 {
        return None;
    }
    fields[3].parse().ok()
}

/// One whole short session, as a busy FTP site sees them: connect, log in, EPSV, RETR of
/// `path` (must be `expected` bytes), QUIT. Returns how long it took.
pub fn session(
    addr: SocketAddrV4,
    user: &str,
    password: &str,
    path: &str,
    expected: u64,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let mut control = FtpControl::login(addr, user, password, timeout)?;
    let got = control.retr(path)?;
    ensure!(
        got == expected,
        "RETR {path}: {got} bytes, expected {expected}"
    );
    control.quit()?;
    Ok(started.elapsed())
}

/// The `q`-quantile (0..=1) of sorted values, nearest-rank.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests;

//! One control connection as a state machine: client and origin bytes and data-lease
//! results go in ([`Event`]), actions come out ([`Action`], via [`Session::poll_action`]).
//!
//! Ordering is the core invariant: FTP replies answer commands in order, so every command
//! forwarded or answered locally takes a place in one queue ([`Pending`]); a local reply
//! or a rewritten passive reply leaves only when it reaches the front.
//!
//! Passive mode: whatever the client asked (PASV or EPSV), the origin is asked with PASV
//! (every IPv4 server supports it) and its 227 port is combined with the origin's control
//! address (the address in a 227 is often 0.0.0.0 or private; modern clients ignore it too).
//! The driver then installs a lease and the client gets the public address and port in the
//! form it asked for.
//!
//! Memory stays bounded whatever either peer sends: at most `max_pending` replies are owed
//! (local answers to bad lines included); at the limit the session takes no more client
//! lines ([`Session::wants_client_input`] tells the driver to stop reading), and a long
//! multi-line origin reply is passed on in pieces once it is the next one owed.
use std::{
    collections::VecDeque,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

use super::{
    address::{self, EpsvArg},
    command::{Command, CommandError, parse_command},
    line::{LineError, LineReader},
    reply::{Reply, ReplyAssembler},
    scrub::Scrubber,
};

/// Limits and addresses of one session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The client's address on the control connection: the only one PORT/EPRT may name.
    pub client_ip: Ipv4Addr,
    /// Whether active mode (PORT/EPRT) is offered at all.
    pub active_mode: bool,
    /// Address advertised to the client in 227 replies.
    pub public_ip: Ipv4Addr,
    /// The origin's control address: also where its passive data ports are.
    pub origin_ip: Ipv4Addr,
    /// Everything that must never reach the client (origin addresses), and what to say instead.
    pub scrubber: Scrubber,
    /// Longest client command line, without CRLF (pf's ftp-proxy uses 500).
    pub max_command_line: usize,
    /// Longest origin reply line.
    pub max_reply_line: usize,
    /// Most lines of one origin reply held at once (a longer reply is passed on in pieces
    /// where it can be, like one over `max_reply_bytes`).
    pub max_reply_lines: usize,
    /// Most replies owed to the client (pipelining bound): commands sent to the origin and
    /// answers made here alike. At the limit, client input waits.
    pub max_pending: usize,
    /// Error replies in a row (local refusals, origin 500-504) after which the session
    /// closes with 421; any 1xx-3xx reply starts the count again.
    pub max_consecutive_errors: usize,
    /// Bytes of one origin reply held before it is passed on in pieces.
    pub max_reply_bytes: usize,
}

/// Warnings a session logs before it only counts them (one summary line at its end).
const WARNINGS_LOGGED: usize = 5;

/// Something that happened to the session.
#[derive(Debug)]
pub enum Event<'a> {
    /// Bytes read from the client.
    FromClient(&'a [u8]),
    /// Bytes read from the origin.
    FromOrigin(&'a [u8]),
    /// The lease requested by [`Action::InstallLease`] exists: the client may connect here.
    LeaseInstalled { public_port: u16 },
    /// The lease requested by [`Action::InstallActiveLease`] exists: the origin is told to
    /// connect here.
    ActiveLeaseInstalled { origin_side: SocketAddrV4 },
    /// The lease (passive or active) could not be installed (ports or map exhausted…).
    LeaseFailed { reason: String },
    /// No lease was installed: the client's address holds as many as it may.
    LeaseLimit,
}

/// Something the driver must do, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    ToClient(Vec<u8>),
    /// Write these bytes to the origin.
    ToOrigin(Vec<u8>),
    /// Write these bytes to the origin, the last byte as TCP urgent data (Telnet "Synch",
    /// RFC 959 §4.1.3: how ABOR interrupts a server that is busy transferring).
    ToOriginUrgent(Vec<u8>),
    /// Revoke the current unused lease (a new passive request or the end of the session).
    RevokeLease,
    /// Before the actions after this one: let the data connections of the leases installed
    /// so far finish. Comes before a transfer's final success reply, which must not reach
    /// the client ahead of the data (a dataplane that ends the origin's connection at the
    /// gateway and copies from there could otherwise deliver it first).
    AwaitData,
    /// Install a lease: the client may open one data connection that reaches `origin`.
    /// Answer with [`Event::LeaseInstalled`] or [`Event::LeaseFailed`].
    InstallLease { origin: SocketAddrV4 },
    /// Install an active-mode lease: the origin may open one data connection that reaches
    /// `client` (the address the client named, already checked to be its own).
    /// Answer with [`Event::ActiveLeaseInstalled`] or [`Event::LeaseFailed`].
    InstallActiveLease { client: SocketAddrV4 },
    /// Log a protocol problem (the session goes on unless a `Close` follows).
    Warn(String),
    /// Close both connections after the writes above.
    Close,
}

/// Why a lease was not installed.
#[derive(Debug)]
enum LeaseFailure {
    /// The dataplane refused (its reason, for the log).
    Failed(String),
    /// The client's address holds as many leases as it may.
    ClientLimit,
}

/// How the client asked for passive mode, so the answer comes in the same form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PassiveForm {
    Pasv,
    Epsv,
}

/// What to do with the origin's reply to a command, once it reaches the queue's front.
#[derive(Debug)]
enum Pending {
    /// The origin's greeting.
    Greeting,
    /// Forward the origin's reply (scrubbed).
    Forward,
    /// A command that moves data over a data connection (RETR, STOR, LIST…): forward the
    /// reply, a success after a preliminary reply only once the data connection is over.
    Transfer { preliminary: bool },
    /// FEAT: forward minus what the gateway cannot carry.
    Feat,
    /// PASV sent to the origin for a client PASV/EPSV.
    Passive(PassiveForm),
    /// Waiting for the driver to install a lease for a passive reply.
    AwaitingLease(PassiveForm),
    /// Waiting for the driver to install an active-mode lease; the PORT for the origin
    /// is sent when it exists, and client input is held until then (command order).
    AwaitingActive,
    /// QUIT: forward the reply, then close.
    Quit,
    /// A reply made here; sent when it reaches the front.
    Local(Reply),
}

impl Pending {
    fn is_origin_bound(&self) -> bool {
        !matches!(self, Pending::Local(_))
    }
}

/// Features the gateway removes from FEAT: TLS (not carried yet, and a TLS handshake must
/// never reach the line parser); EPRT too when active mode is off.
const HIDDEN_FEATURES: &[&str] = &["AUTH", "PBSZ", "PROT", "CCC", "ADAT"];

pub struct Session {
    config: SessionConfig,
    client_lines: LineReader,
    origin_lines: LineReader,
    replies: ReplyAssembler,
    pending: VecDeque<Pending>,
    /// Complete origin replies not yet matched (held while a lease is being installed).
    unmatched: VecDeque<Reply>,
    actions: VecDeque<Action>,
    /// After `EPSV ALL` only EPSV may set up data connections (RFC 2428 §4).
    epsv_all: bool,
    /// A lease may exist that the next passive request or the end must revoke.
    lease_outstanding: bool,
    /// Client lines wait in their reader while an active lease is being installed.
    holding_client: bool,
    /// Error replies sent in a row (see [`SessionConfig::max_consecutive_errors`]).
    consecutive_errors: usize,
    /// The origin has answered 230: the client is logged in.
    logged_in: bool,
    /// Warnings logged, and those counted but not logged ([`WARNINGS_LOGGED`]).
    warnings: usize,
    warnings_suppressed: usize,
    closed: bool,
}

impl Session {
    pub fn new(config: SessionConfig) -> Self {
        let mut pending = VecDeque::new();
        pending.push_back(Pending::Greeting);
        Self {
            client_lines: LineReader::new(config.max_command_line, true),
            origin_lines: LineReader::new(config.max_reply_line, false),
            replies: ReplyAssembler::new(config.max_reply_lines),
            config,
            pending,
            unmatched: VecDeque::new(),
            actions: VecDeque::new(),
            epsv_all: false,
            lease_outstanding: false,
            holding_client: false,
            consecutive_errors: 0,
            logged_in: false,
            warnings: 0,
            warnings_suppressed: 0,
            closed: false,
        }
    }

    /// Whether the driver should read the client: false while the replies owed are at the
    /// limit or client lines are held (they wait in the reader, and the socket buffers
    /// and TCP flow control hold the rest).
    pub fn wants_client_input(&self) -> bool {
        !self.closed && !self.holding_client && self.pending.len() < self.config.max_pending
    }

    /// True once the origin has answered 230 (user logged in).
    pub fn logged_in(&self) -> bool {
        self.logged_in
    }

    /// Replies owed to the client (forwarded commands and local answers).
    pub fn replies_owed(&self) -> usize {
        self.pending.len()
    }

    /// Bytes the session holds: unread input of both peers, the origin reply in progress,
    /// complete replies and local answers waiting for their turn. Actions are not counted
    /// (the driver takes them after every event).
    pub fn buffered_bytes(&self) -> usize {
        let reply_bytes = |r: &Reply| r.lines.iter().map(|l| l.len() + 2).sum::<usize>();
        let locals: usize = self
            .pending
            .iter()
            .map(|p| match p {
                Pending::Local(r) => reply_bytes(r),
                _ => 0,
            })
            .sum();
        self.client_lines.buffered()
            + self.origin_lines.buffered()
            + self.replies.buffered_bytes()
            + self.unmatched.iter().map(reply_bytes).sum::<usize>()
            + locals
    }

    /// The next action, if any. Call until `None` after every [`Session::handle`].
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// True once the session has asked to close; later events are ignored.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Feeds one event.
    pub fn handle(&mut self, event: Event<'_>) {
        if self.closed {
            return;
        }
        match event {
            Event::FromClient(bytes) => {
                self.client_lines.push(bytes);
                self.drain_client_lines();
            }
            Event::FromOrigin(bytes) => {
                self.origin_lines.push(bytes);
                self.drain_origin_lines();
            }
            Event::LeaseInstalled { public_port } => self.lease_result(Ok(public_port)),
            Event::ActiveLeaseInstalled { origin_side } => {
                self.active_lease_result(Ok(origin_side))
            }
            Event::LeaseFailed { reason } => self.lease_failed(LeaseFailure::Failed(reason)),
            Event::LeaseLimit => self.lease_failed(LeaseFailure::ClientLimit),
        }
        self.settle();
    }

    /// Sends what is due, then takes client lines while there is room, until neither
    /// makes progress (a local answer sent makes room for the next line).
    fn settle(&mut self) {
        loop {
            self.flush();
            let before = self.client_lines.buffered();
            self.drain_client_lines();
            if self.closed || self.client_lines.buffered() == before {
                return;
            }
        }
    }

    fn lease_failed(&mut self, failure: LeaseFailure) {
        if matches!(self.pending.back(), Some(Pending::AwaitingActive)) {
            self.active_lease_result(Err(failure));
        } else {
            self.lease_result(Err(failure));
        }
    }

    /// The client's connection ended: nothing more can be said to it.
    pub fn client_closed(&mut self) {
        self.close();
    }

    /// The origin's connection ended: tell the client why, then close.
    pub fn origin_closed(&mut self) {
        if self.closed {
            return;
        }
        self.say(Reply::new(
            421,
            "Service not available: the server closed the connection.",
        ));
        self.close();
    }

    /// The origin accepted the connection but did not greet in time.
    pub fn greeting_timeout(&mut self) {
        if self.closed {
            return;
        }
        self.say(Reply::new(
            421,
            "Service not available: the server did not answer.",
        ));
        self.close();
    }

    /// The client has not logged in within the login timeout.
    pub fn login_timeout(&mut self) {
        if self.closed {
            return;
        }
        self.say(Reply::new(
            421,
            "Login timeout: closing control connection.",
        ));
        self.close();
    }

    /// The control connection was idle too long.
    pub fn idle_timeout(&mut self) {
        if self.closed {
            return;
        }
        self.say(Reply::new(421, "Idle timeout: closing control connection."));
        self.close();
    }

    fn drain_client_lines(&mut self) {
        while self.wants_client_input()
            && let Some(line) = self.client_lines.next_line()
        {
            if self.closed {
                return;
            }
            let reply = match line {
                Ok(line) => match parse_command(&line) {
                    Ok(command) => {
                        self.client_command(command);
                        continue;
                    }
                    Err(CommandError::Empty) => continue,
                    Err(CommandError::InvalidUtf8) => {
                        Reply::new(501, "Command is not valid UTF-8.")
                    }
                    Err(e) => Reply::new(500, &format!("Syntax error: {e}.")),
                },
                Err(LineError::TooLong { limit }) => Reply::new(
                    500,
                    &format!("Command line too long (limit {limit} bytes)."),
                ),
                Err(LineError::Nul) => Reply::new(500, "Command contains a NUL byte."),
            };
            self.warn(format!("client: {}", reply.text()));
            self.local(reply);
        }
    }

    fn client_command(&mut self, command: Command) {
        let verb = command.verb.as_str();
        match verb {
            "PASV" => {
                if self.epsv_all {
                    self.local(Reply::new(503, "EPSV ALL in effect: use EPSV."));
                } else {
                    self.passive(PassiveForm::Pasv);
                }
            }
            "EPSV" => match address::parse_epsv_arg(command.arg.as_deref()) {
                Ok(EpsvArg::Any | EpsvArg::Proto(1)) => self.passive(PassiveForm::Epsv),
                Ok(EpsvArg::Proto(_)) => {
                    self.local(Reply::new(522, "Network protocol not supported, use (1)"))
                }
                Ok(EpsvArg::All) => {
                    // Answered here: the origin keeps accepting the PASV the gateway sends it.
                    self.epsv_all = true;
                    self.local(Reply::new(200, "EPSV ALL ok."));
                }
                Err(_) => self.local(Reply::new(501, "Syntax error in EPSV argument.")),
            },
            "PORT" | "EPRT" => self.active(&command),
            "LPRT" | "LPSV" => self.local(Reply::new(
                502,
                "Long address forms are not supported: use PASV, EPSV, PORT or EPRT.",
            )),
            "AUTH" => self.local(Reply::new(
                534,
                "TLS is not available through this gateway; continue without it.",
            )),
            "PBSZ" | "PROT" | "CCC" | "ADAT" => self.local(Reply::new(
                503,
                "Security exchange not in effect (no AUTH).",
            )),
            "FEAT" => self.forward(&command, Pending::Feat),
            "RETR" | "STOR" | "STOU" | "APPE" | "LIST" | "NLST" | "MLSD" => {
                self.forward(&command, Pending::Transfer { preliminary: false })
            }
            "QUIT" => {
                self.revoke_lease();
                self.forward(&command, Pending::Quit);
            }
            "ABOR" => {
                // Telnet IP, then Synch (IAC DM, the DM as urgent data), then ABOR (RFC 959 §4.1.3).
                self.actions
                    .push_back(Action::ToOriginUrgent(vec![0xff, 0xf4, 0xff, 0xf2]));
                self.forward(&command, Pending::Forward);
            }
            _ => self.forward(&command, Pending::Forward),
        }
    }

    /// PORT/EPRT: only the client's own address and an unprivileged port (FTP bounce,
    /// RFC 2577); the origin is told a port of the gateway's instead, once it is leased.
    fn active(&mut self, command: &Command) {
        let verb = command.verb.as_str();
        if self.epsv_all {
            return self.local(Reply::new(503, "EPSV ALL in effect: use EPSV."));
        }
        if !self.config.active_mode {
            return self.local(Reply::new(
                502,
                "Active mode is disabled on this service: use PASV or EPSV.",
            ));
        }
        let arg = command.arg.as_deref().unwrap_or("");
        let parsed = if verb == "PORT" {
            address::parse_port_arg(arg).map(SocketAddr::V4)
        } else {
            address::parse_eprt_arg(arg)
        };
        let addr = match parsed {
            Ok(SocketAddr::V4(a)) => a,
            Ok(SocketAddr::V6(_)) => {
                return self.local(Reply::new(522, "Network protocol not supported, use (1)"));
            }
            Err(e) => {
                self.warn(format!("client: malformed {verb} ({e})"));
                return self.local(Reply::new(
                    501,
                    &format!("Syntax error in {verb} argument."),
                ));
            }
        };
        if *addr.ip() != self.config.client_ip {
            self.warn(format!(
                "FTP bounce refused: {verb} names {addr}, the client is {}",
                self.config.client_ip
            ));
            return self.local(Reply::new(
                504,
                &format!("Refused: {verb} must name your own address (no third parties)."),
            ));
        }
        if addr.port() < 1024 {
            self.warn(format!("refused {verb} to privileged port {addr}"));
            return self.local(Reply::new(
                504,
                "Refused: data ports below 1024 are not allowed.",
            ));
        }
        self.revoke_lease();
        self.actions
            .push_back(Action::InstallActiveLease { client: addr });
        self.lease_outstanding = true;
        self.pending.push_back(Pending::AwaitingActive);
        self.holding_client = true;
    }

    fn active_lease_result(&mut self, result: Result<SocketAddrV4, LeaseFailure>) {
        if !matches!(self.pending.back(), Some(Pending::AwaitingActive)) {
            self.warn("active lease result with none requested".into());
            return;
        }
        self.pending.pop_back();
        self.holding_client = false;
        match result {
            Ok(origin_side) => {
                // The origin is always told PORT: every IPv4 server understands it.
                let line = format!("PORT {}\r\n", address::port_arg(origin_side));
                self.actions.push_back(Action::ToOrigin(line.into_bytes()));
                self.pending.push_back(Pending::Forward);
            }
            Err(failure) => {
                self.lease_outstanding = false;
                let reply = self.lease_failure_reply(failure);
                self.local(reply);
            }
        }
    }

    /// Logs why a lease could not be had; the 425 the client gets.
    fn lease_failure_reply(&mut self, failure: LeaseFailure) -> Reply {
        match failure {
            LeaseFailure::Failed(reason) => {
                self.warn(format!("no data lease: {reason}"));
                Reply::new(425, "Can't open data connection now, try again later.")
            }
            LeaseFailure::ClientLimit => {
                self.warn("no data lease: the client's address holds as many as it may".into());
                Reply::new(
                    425,
                    "Can't open data connection: too many data connections pending for your address.",
                )
            }
        }
    }

    fn passive(&mut self, form: PassiveForm) {
        self.revoke_lease();
        self.actions
            .push_back(Action::ToOrigin(b"PASV\r\n".to_vec()));
        self.pending.push_back(Pending::Passive(form));
    }

    fn forward(&mut self, command: &Command, pending: Pending) {
        self.actions.push_back(Action::ToOrigin(command.to_line()));
        self.pending.push_back(pending);
    }

    /// Queues a reply made here behind every reply still owed to the client.
    fn local(&mut self, reply: Reply) {
        self.pending.push_back(Pending::Local(reply));
    }

    fn drain_origin_lines(&mut self) {
        while let Some(line) = self.origin_lines.next_line() {
            if self.closed {
                return;
            }
            let complete = match line {
                Ok(line) => self.replies.push_line(line),
                Err(e) => {
                    self.origin_violation(&format!("reply line: {e}"));
                    return;
                }
            };
            match complete {
                Ok(Some(reply)) => {
                    self.unmatched.push_back(reply);
                    // Matched at once, so that a long reply behind it finds itself next.
                    self.flush();
                }
                Ok(None) => {
                    if self.replies.buffered_bytes() > self.config.max_reply_bytes
                        || self.replies.buffered_lines() + 1 >= self.config.max_reply_lines
                    {
                        self.pass_on_partial_reply();
                    }
                }
                Err(e) => {
                    self.origin_violation(&format!("reply: {e}"));
                    return;
                }
            }
        }
    }

    /// Sends the lines held of a long multi-line reply (a STAT of a big directory) ahead
    /// of its end, so a session never holds more than about `max_reply_bytes` of it: possible
    /// when the reply is the next one owed and is passed on as it is. Replies the gateway
    /// must see whole (FEAT, the 227 for a lease) that are that long break the protocol.
    fn pass_on_partial_reply(&mut self) {
        let next_owed = self.unmatched.is_empty()
            && matches!(
                self.pending.front(),
                None | Some(
                    Pending::Greeting | Pending::Forward | Pending::Transfer { .. } | Pending::Quit
                )
            );
        if !next_owed {
            let limit = self.config.max_reply_bytes;
            return self.origin_violation(&format!(
                "reply: longer than {limit} bytes where it must be read whole"
            ));
        }
        let mut bytes = Vec::new();
        for line in self.replies.take_lines() {
            bytes.extend_from_slice(&self.config.scrubber.scrub(&line));
            bytes.extend_from_slice(b"\r\n");
        }
        self.actions.push_back(Action::ToClient(bytes));
    }

    /// The origin broke the protocol: the stream cannot be trusted to resynchronise.
    fn origin_violation(&mut self, what: &str) {
        self.warn(format!("origin sent an invalid {what}"));
        self.say(Reply::new(
            421,
            "The server sent an invalid reply; closing.",
        ));
        self.close();
    }

    /// Matches complete replies and local replies to the queue, front first.
    fn flush(&mut self) {
        while !self.closed {
            match self.pending.front() {
                Some(Pending::Local(_)) => {
                    if let Some(Pending::Local(reply)) = self.pending.pop_front() {
                        self.say_local(reply);
                    }
                }
                Some(Pending::AwaitingLease(_) | Pending::AwaitingActive) => return,
                Some(_) => {
                    let Some(reply) = self.unmatched.pop_front() else {
                        return;
                    };
                    self.origin_reply(reply);
                }
                None => {
                    // Unsolicited (e.g. "421 timeout" from the origin): pass it on.
                    let Some(reply) = self.unmatched.pop_front() else {
                        return;
                    };
                    let closing = reply.code == 421;
                    self.say_scrubbed(&reply);
                    if closing {
                        self.close();
                    }
                }
            }
        }
    }

    /// Handles an origin reply for the command at the queue's front.
    fn origin_reply(&mut self, reply: Reply) {
        self.logged_in |= reply.code == 230;
        // A 1xx reply is preliminary: the command waits for its final reply.
        let preliminary = reply.class() == 1;
        let front = if preliminary {
            if let Some(Pending::Transfer { preliminary }) = self.pending.front_mut() {
                *preliminary = true;
            }
            None
        } else {
            self.pending.pop_front()
        };
        match front {
            None => self.say_scrubbed(&reply),
            Some(Pending::Transfer { preliminary }) => {
                // The origin opened a data connection and reports success: the client
                // hears it once the data has arrived (curl in active mode, for one, fails
                // a transfer whose 226 comes before the data connection).
                if preliminary && reply.class() == 2 {
                    self.actions.push_back(Action::AwaitData);
                }
                let closing = reply.code == 421;
                self.say_scrubbed(&reply);
                if closing {
                    self.close();
                }
            }
            Some(Pending::Greeting | Pending::Forward) => {
                let closing = reply.code == 421;
                self.say_scrubbed(&reply);
                if closing {
                    self.close();
                }
            }
            Some(Pending::Feat) => {
                let filtered = filter_feat(&reply, self.config.active_mode);
                self.say_scrubbed(&filtered);
            }
            Some(Pending::Quit) => {
                self.say_scrubbed(&reply);
                self.close();
            }
            Some(Pending::Passive(form)) => self.passive_reply(form, &reply),
            Some(Pending::AwaitingLease(_) | Pending::AwaitingActive | Pending::Local(_)) => {
                unreachable!("flush never matches origin replies to these")
            }
        }
    }

    fn passive_reply(&mut self, form: PassiveForm, reply: &Reply) {
        if reply.code != 227 {
            // The origin refused (e.g. 425, 530 not logged in): its words, scrubbed.
            self.say_scrubbed(reply);
            return;
        }
        match address::parse_pasv_reply(reply) {
            Ok(announced) => {
                let origin = SocketAddrV4::new(self.config.origin_ip, announced.port());
                self.actions.push_back(Action::InstallLease { origin });
                self.lease_outstanding = true;
                self.pending.push_front(Pending::AwaitingLease(form));
            }
            Err(e) => {
                self.warn(format!(
                    "origin's 227 reply is unusable ({e}): {}",
                    reply.text()
                ));
                self.say_local(Reply::new(
                    425,
                    "Can't open data connection: the server's passive reply was invalid.",
                ));
            }
        }
    }

    fn lease_result(&mut self, result: Result<u16, LeaseFailure>) {
        let Some(Pending::AwaitingLease(form)) = self.pending.front() else {
            self.warn("lease result with no lease requested".into());
            return;
        };
        let form = *form;
        self.pending.pop_front();
        match result {
            Ok(port) => self.say_local(match form {
                PassiveForm::Pasv => {
                    address::pasv_reply(SocketAddrV4::new(self.config.public_ip, port))
                }
                PassiveForm::Epsv => address::epsv_reply(port),
            }),
            Err(failure) => {
                self.lease_outstanding = false;
                let reply = self.lease_failure_reply(failure);
                self.say_local(reply);
            }
        }
    }

    fn revoke_lease(&mut self) {
        if self.lease_outstanding {
            self.lease_outstanding = false;
            self.actions.push_back(Action::RevokeLease);
        }
    }

    /// An origin reply, cleaned of hidden addresses.
    fn say_scrubbed(&mut self, reply: &Reply) {
        let clean = self.config.scrubber.scrub_reply(reply);
        self.say(clean);
        self.count_errors(reply.code, (500..=504).contains(&reply.code));
    }

    /// A reply made here: refusals count as errors.
    fn say_local(&mut self, reply: Reply) {
        let code = reply.code;
        self.say(reply);
        self.count_errors(code, code >= 400);
    }

    /// Closes the session after too many error replies in a row (a client sending junk
    /// costs replies and log lines; nothing it sends then is worth more).
    fn count_errors(&mut self, code: u16, error: bool) {
        if error {
            self.consecutive_errors += 1;
        } else if code < 400 {
            self.consecutive_errors = 0;
        }
        let limit = self.config.max_consecutive_errors;
        if self.consecutive_errors >= limit && !self.closed {
            self.actions.push_back(Action::Warn(format!(
                "closing: {limit} error replies in a row"
            )));
            self.say(Reply::new(
                421,
                "Too many errors in a row: closing control connection.",
            ));
            self.close();
        }
    }

    fn say(&mut self, reply: Reply) {
        self.actions.push_back(Action::ToClient(reply.to_bytes()));
    }

    /// A warning for the log: the first [`WARNINGS_LOGGED`] of a session, then only counted.
    fn warn(&mut self, message: String) {
        if self.warnings < WARNINGS_LOGGED {
            self.warnings += 1;
            self.actions.push_back(Action::Warn(message));
        } else {
            self.warnings_suppressed += 1;
        }
    }

    fn close(&mut self) {
        if !self.closed {
            self.revoke_lease();
            if self.warnings_suppressed > 0 {
                self.actions.push_back(Action::Warn(format!(
                    "{} more warnings of this session not logged",
                    self.warnings_suppressed
                )));
            }
            self.actions.push_back(Action::Close);
            self.closed = true;
        }
    }

    /// Commands forwarded to the origin and not yet answered (for tests and status).
    pub fn commands_in_flight(&self) -> usize {
        self.pending.iter().filter(|p| p.is_origin_bound()).count()
    }
}

/// FEAT reply minus [`HIDDEN_FEATURES`] (and EPRT without active mode), plus EPSV (the
/// gateway offers it whatever the origin does). Feature lines start with a space
/// (RFC 2389 §3.2).
fn filter_feat(reply: &Reply, active_mode: bool) -> Reply {
    if reply.code != 211 || !reply.is_multiline() {
        return reply.clone();
    }
    let n = reply.lines.len();
    let mut lines = Vec::with_capacity(n + 1);
    lines.push(reply.lines[0].clone());
    let mut has_epsv = false;
    for line in &reply.lines[1..n - 1] {
        let name = feature_name(line);
        if HIDDEN_FEATURES.iter().any(|h| name.eq_ignore_ascii_case(h))
            || (!active_mode && name.eq_ignore_ascii_case("EPRT"))
        {
            continue;
        }
        has_epsv |= name.eq_ignore_ascii_case("EPSV");
        lines.push(line.clone());
    }
    if !has_epsv {
        lines.push(b" EPSV".to_vec());
    }
    lines.push(reply.lines[n - 1].clone());
    Reply {
        code: reply.code,
        lines,
    }
}

fn feature_name(line: &[u8]) -> &str {
    let text = std::str::from_utf8(line).unwrap_or("");
    text.split_whitespace().next().unwrap_or("")
}

#[cfg(test)]
mod tests;

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
mod tests {
    use std::net::IpAddr;

    use super::*;

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const ORIGIN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

    const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

    fn session() -> Session {
        session_with(true)
    }

    fn config() -> SessionConfig {
        SessionConfig {
            client_ip: CLIENT,
            active_mode: true,
            public_ip: PUBLIC,
            origin_ip: ORIGIN,
            scrubber: Scrubber::new(&[IpAddr::V4(ORIGIN)], PUBLIC),
            max_command_line: 500,
            max_reply_line: 8192,
            max_reply_lines: 100,
            max_pending: 8,
            max_consecutive_errors: 20,
            max_reply_bytes: 1024,
        }
    }

    fn session_with(active_mode: bool) -> Session {
        Session::new(SessionConfig {
            active_mode,
            ..config()
        })
    }

    /// A session past its greeting.
    fn greeted() -> Session {
        let mut s = session();
        s.handle(Event::FromOrigin(b"220 ready\r\n"));
        assert_eq!(drain(&mut s), vec![to_client("220 ready\r\n")]);
        s
    }

    fn drain(s: &mut Session) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn to_client(text: &str) -> Action {
        Action::ToClient(text.as_bytes().to_vec())
    }

    fn to_origin(text: &str) -> Action {
        Action::ToOrigin(text.as_bytes().to_vec())
    }

    fn client(s: &mut Session, text: &[u8]) -> Vec<Action> {
        s.handle(Event::FromClient(text));
        drain(s)
    }

    fn origin(s: &mut Session, text: &[u8]) -> Vec<Action> {
        s.handle(Event::FromOrigin(text));
        drain(s)
    }

    /// Only what went to the client, as text.
    fn client_text(actions: &[Action]) -> String {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::ToClient(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn greeting_is_scrubbed() {
        let mut s = session();
        let out = origin(
            &mut s,
            b"220-Welcome to 198.51.100.2\r\n220 ProFTPD [198.51.100.2]\r\n",
        );
        assert_eq!(
            client_text(&out),
            "220-Welcome to 203.0.113.1\r\n220 ProFTPD [203.0.113.1]\r\n"
        );
    }

    #[test]
    fn pasv_and_epsv_are_rewritten_to_the_public_port() {
        // (client command, origin's 227, reply the client must get)
        let cases: &[(&[u8], &[u8], &str)] = &[
            (
                b"PASV\r\n",
                b"227 Entering Passive Mode (198,51,100,2,117,48).\r\n",
                "227 Entering Passive Mode (203,0,113,1,156,65).\r\n",
            ),
            (
                b"pasv\r\n",
                b"227 Entering Passive Mode (0,0,0,0,117,48)\r\n",
                "227 Entering Passive Mode (203,0,113,1,156,65).\r\n",
            ),
            (
                b"EPSV\r\n",
                b"227 =10,0,0,5,117,48\r\n",
                "229 Entering Extended Passive Mode (|||40001|)\r\n",
            ),
            (
                b"EPSV 1\r\n",
                b"227 Entering Passive Mode 198,51,100,2,117,48\r\n",
                "229 Entering Extended Passive Mode (|||40001|)\r\n",
            ),
        ];
        for (command, reply, want) in cases {
            let mut s = greeted();
            assert_eq!(client(&mut s, command), vec![to_origin("PASV\r\n")]);
            let out = origin(&mut s, reply);
            // The origin's data port with the origin's control address, whatever the 227 said.
            assert_eq!(
                out,
                vec![Action::InstallLease {
                    origin: SocketAddrV4::new(ORIGIN, 30000)
                }],
                "{}",
                String::from_utf8_lossy(reply)
            );
            s.handle(Event::LeaseInstalled { public_port: 40001 });
            assert_eq!(client_text(&drain(&mut s)), *want);
        }
    }

    #[test]
    fn replies_keep_command_order_around_local_answers() {
        let mut s = greeted();
        let out = client(&mut s, b"NOOP\r\nAUTH TLS\r\nSYST\r\nPORT 1,2,3,4,5,6\r\n");
        let sent: Vec<_> = out
            .iter()
            .filter(|a| matches!(a, Action::ToOrigin(_)))
            .collect();
        assert_eq!(sent, [&to_origin("NOOP\r\n"), &to_origin("SYST\r\n")]);
        let out = origin(&mut s, b"200 ok\r\n");
        let text = client_text(&out);
        assert!(text.starts_with("200 ok\r\n534 "), "{text}");
        assert!(!text.contains("215"), "{text}");
        let text = client_text(&origin(&mut s, b"215 UNIX Type: L8\r\n"));
        assert!(text.starts_with("215 UNIX Type: L8\r\n504 "), "{text}");
    }

    #[test]
    fn replies_held_while_a_lease_is_installed() {
        let mut s = greeted();
        client(&mut s, b"PASV\r\nTYPE I\r\n");
        let out = origin(&mut s, b"227 (198,51,100,2,117,48)\r\n200 Type set\r\n");
        assert_eq!(client_text(&out), "", "the 200 must wait for the 227");
        s.handle(Event::LeaseInstalled { public_port: 40002 });
        let text = client_text(&drain(&mut s));
        assert_eq!(
            text,
            "227 Entering Passive Mode (203,0,113,1,156,66).\r\n200 Type set\r\n"
        );
    }

    #[test]
    fn lease_failure_gives_a_4xx() {
        let mut s = greeted();
        client(&mut s, b"EPSV\r\n");
        origin(&mut s, b"227 (198,51,100,2,117,48)\r\n");
        s.handle(Event::LeaseFailed {
            reason: "all 100 data ports are leased".into(),
        });
        let out = drain(&mut s);
        assert!(client_text(&out).starts_with("425 "), "{out:?}");
        assert!(out.iter().any(|a| matches!(a, Action::Warn(_))));
    }

    #[test]
    fn a_new_passive_request_revokes_the_lease() {
        let mut s = greeted();
        client(&mut s, b"PASV\r\n");
        origin(&mut s, b"227 (198,51,100,2,117,48)\r\n");
        s.handle(Event::LeaseInstalled { public_port: 40001 });
        drain(&mut s);
        assert_eq!(
            client(&mut s, b"EPSV\r\n"),
            vec![Action::RevokeLease, to_origin("PASV\r\n")]
        );
    }

    #[test]
    fn bad_origin_passive_replies_give_425() {
        for reply in [
            &b"227 Entering Passive Mode\r\n"[..],
            b"227 (1,2,3,4,0,0)\r\n",
            b"227 (1,2,3,4,999,1)\r\n",
        ] {
            let mut s = greeted();
            client(&mut s, b"PASV\r\n");
            let out = origin(&mut s, reply);
            assert!(client_text(&out).starts_with("425 "), "{out:?}");
            assert!(!out.iter().any(|a| matches!(a, Action::InstallLease { .. })));
        }
    }

    #[test]
    fn origin_refusing_pasv_is_passed_on() {
        let mut s = greeted();
        client(&mut s, b"PASV\r\n");
        let out = origin(&mut s, b"530 Please login with USER and PASS.\r\n");
        assert_eq!(
            client_text(&out),
            "530 Please login with USER and PASS.\r\n"
        );
    }

    #[test]
    fn bad_client_lines_get_errors_and_the_session_goes_on() {
        let mut long = vec![b'A'; 600];
        long.extend_from_slice(b"\r\n");
        let cases: &[(&[u8], &str)] = &[
            (&long, "500 "),
            (b"NO\0OP\r\n", "500 "),
            (b"STOR \xc3\x28\r\n", "501 "),
            (b"12345\r\n", "500 "),
        ];
        for (line, code) in cases {
            let mut s = greeted();
            let out = client(&mut s, line);
            assert!(
                client_text(&out).starts_with(code),
                "{:?}: {out:?}",
                String::from_utf8_lossy(line)
            );
            assert!(
                !out.iter()
                    .any(|a| matches!(a, Action::ToOrigin(_) | Action::Close))
            );
            assert_eq!(client(&mut s, b"NOOP\r\n"), vec![to_origin("NOOP\r\n")]);
        }
    }

    #[test]
    fn epsv_arguments() {
        let cases: &[(&[u8], &str)] = &[
            (b"EPSV 2\r\n", "522 "),
            (b"EPSV x\r\n", "501 "),
            (b"EPSV ALL\r\n", "200 "),
        ];
        for (line, code) in cases {
            let mut s = greeted();
            let text = client_text(&client(&mut s, line));
            assert!(text.starts_with(code), "{text}");
        }
        let mut s = greeted();
        client(&mut s, b"EPSV ALL\r\n");
        for refused in [
            &b"PASV\r\n"[..],
            b"PORT 203,0,113,2,200,1\r\n",
            b"EPRT |1|203.0.113.2|51201|\r\n",
        ] {
            assert!(client_text(&client(&mut s, refused)).starts_with("503 "));
        }
        assert_eq!(client(&mut s, b"EPSV\r\n"), vec![to_origin("PASV\r\n")]);
    }

    #[test]
    fn tls_is_refused_and_hidden_from_feat() {
        let mut s = greeted();
        for (line, code) in [
            (&b"AUTH TLS\r\n"[..], "534 "),
            (b"AUTH SSL\r\n", "534 "),
            (b"PBSZ 0\r\n", "503 "),
            (b"PROT P\r\n", "503 "),
        ] {
            let out = client(&mut s, line);
            assert!(client_text(&out).starts_with(code), "{out:?}");
            assert!(!out.iter().any(|a| matches!(a, Action::ToOrigin(_))));
        }
        assert_eq!(client(&mut s, b"FEAT\r\n"), vec![to_origin("FEAT\r\n")]);
        let feat = b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n EPRT\r\n SIZE\r\n MDTM\r\n UTF8\r\n211 End\r\n";
        let text = client_text(&origin(&mut s, feat));
        assert_eq!(
            text,
            "211-Features:\r\n EPRT\r\n SIZE\r\n MDTM\r\n UTF8\r\n EPSV\r\n211 End\r\n"
        );
        // Without active mode, EPRT is not offered and PORT/EPRT get a clear refusal.
        let mut s = session_with(false);
        s.handle(Event::FromOrigin(b"220 ready\r\n"));
        drain(&mut s);
        client(&mut s, b"FEAT\r\n");
        let text = client_text(&origin(&mut s, feat));
        assert_eq!(
            text,
            "211-Features:\r\n SIZE\r\n MDTM\r\n UTF8\r\n EPSV\r\n211 End\r\n"
        );
        for line in [
            &b"PORT 203,0,113,2,200,1\r\n"[..],
            b"EPRT |1|203.0.113.2|51201|\r\n",
        ] {
            let out = client(&mut s, line);
            assert!(client_text(&out).starts_with("502 "), "{out:?}");
            assert!(!out.iter().any(|a| matches!(a, Action::ToOrigin(_))));
        }
    }

    #[test]
    fn quit_revokes_and_closes_after_the_reply() {
        let mut s = greeted();
        client(&mut s, b"PASV\r\n");
        origin(&mut s, b"227 (198,51,100,2,117,48)\r\n");
        s.handle(Event::LeaseInstalled { public_port: 40001 });
        drain(&mut s);
        assert_eq!(
            client(&mut s, b"QUIT\r\n"),
            vec![Action::RevokeLease, to_origin("QUIT\r\n")]
        );
        assert_eq!(
            origin(&mut s, b"221 Goodbye.\r\n"),
            vec![to_client("221 Goodbye.\r\n"), Action::Close]
        );
        assert!(s.is_closed());
        assert_eq!(client(&mut s, b"NOOP\r\n"), vec![]);
    }

    #[test]
    fn abort_sends_telnet_synch_as_urgent_data() {
        let mut s = greeted();
        client(&mut s, b"RETR big\r\n");
        origin(&mut s, b"150 Opening BINARY mode data connection\r\n");
        // Telnet IP and Synch from a BSD-style client, inline (SO_OOBINLINE).
        let out = client(&mut s, b"\xff\xf4\xff\xf2ABOR\r\n");
        assert_eq!(
            out,
            vec![
                Action::ToOriginUrgent(vec![0xff, 0xf4, 0xff, 0xf2]),
                to_origin("ABOR\r\n")
            ]
        );
        let text = client_text(&origin(&mut s, b"426 Transfer aborted\r\n226 ABOR ok\r\n"));
        assert_eq!(text, "426 Transfer aborted\r\n226 ABOR ok\r\n");
    }

    #[test]
    fn preliminary_replies_do_not_complete_a_command() {
        let mut s = greeted();
        client(&mut s, b"RETR a\r\nNOOP\r\n");
        let text = client_text(&origin(&mut s, b"150 here\r\n226 done\r\n200 noop\r\n"));
        assert_eq!(text, "150 here\r\n226 done\r\n200 noop\r\n");
        assert_eq!(s.commands_in_flight(), 0);
    }

    #[test]
    fn origin_faults_end_the_session_with_421() {
        let mut s = greeted();
        s.origin_closed();
        let out = drain(&mut s);
        assert!(client_text(&out).starts_with("421 "));
        assert_eq!(out.last(), Some(&Action::Close));

        let mut s = greeted();
        let out = origin(&mut s, b"hello there\r\n");
        assert!(client_text(&out).starts_with("421 "), "{out:?}");
        assert_eq!(out.last(), Some(&Action::Close));

        let mut s = greeted();
        let out = origin(&mut s, b"421 Timeout (no operation for 300 seconds)\r\n");
        assert_eq!(
            out,
            vec![
                to_client("421 Timeout (no operation for 300 seconds)\r\n"),
                Action::Close
            ]
        );

        let mut s = greeted();
        s.idle_timeout();
        assert!(client_text(&drain(&mut s)).starts_with("421 Idle"));

        // Before any greeting: a client that already sent a command gets only the 421.
        let mut s = session();
        assert_eq!(client(&mut s, b"USER a\r\n"), vec![to_origin("USER a\r\n")]);
        s.greeting_timeout();
        let out = drain(&mut s);
        assert_eq!(
            out,
            vec![
                to_client("421 Service not available: the server did not answer.\r\n"),
                Action::Close
            ]
        );
        s.greeting_timeout();
        assert_eq!(drain(&mut s), vec![]);
    }

    #[test]
    fn a_transfer_success_waits_for_its_data_connection() {
        for verb in ["RETR f", "STOR f", "STOU", "APPE f", "LIST", "NLST", "MLSD"] {
            let mut s = greeted();
            client(&mut s, format!("{verb}\r\n").as_bytes());
            assert_eq!(
                origin(&mut s, b"150 Opening data connection\r\n"),
                vec![to_client("150 Opening data connection\r\n")]
            );
            assert_eq!(
                origin(&mut s, b"226 Transfer complete\r\n"),
                vec![Action::AwaitData, to_client("226 Transfer complete\r\n")],
                "{verb}"
            );
        }
        // Failures, replies without a data connection, other commands: no wait.
        let cases: &[(&[u8], &[u8])] = &[
            (b"RETR f\r\n", b"550 No such file\r\n"),
            (b"RETR f\r\n", b"150 Opening\r\n426 Connection closed\r\n"),
            (b"LIST\r\n", b"425 Can't open data connection\r\n"),
            (b"NOOP\r\n", b"200 ok\r\n"),
            (b"SIZE f\r\n", b"213 5\r\n"),
        ];
        for (command, replies) in cases {
            let mut s = greeted();
            client(&mut s, command);
            let out = origin(&mut s, replies);
            assert!(!out.contains(&Action::AwaitData), "{out:?}");
            assert_eq!(client_text(&out), String::from_utf8_lossy(replies));
        }
        // ABOR during a download: the 426 ends RETR, the 226 answers ABOR; nothing waits.
        let mut s = greeted();
        client(&mut s, b"RETR f\r\n");
        origin(&mut s, b"150 Opening\r\n");
        client(&mut s, b"ABOR\r\n");
        let out = origin(&mut s, b"426 Aborted\r\n226 ABOR ok\r\n");
        assert!(!out.contains(&Action::AwaitData), "{out:?}");
    }

    /// At `max_pending` replies owed the session takes no more lines (the driver stops
    /// reading); each reply makes room for one more, in order.
    #[test]
    fn pipelining_is_bounded_by_backpressure() {
        let mut s = greeted();
        let out = client(&mut s, &b"NOOP\r\n".repeat(20));
        assert_eq!(out, vec![to_origin("NOOP\r\n"); 8]);
        assert!(!s.wants_client_input());
        assert_eq!(s.replies_owed(), 8);
        let out = origin(&mut s, b"200 one\r\n200 two\r\n");
        assert_eq!(
            out,
            vec![
                to_client("200 one\r\n"),
                to_client("200 two\r\n"),
                to_origin("NOOP\r\n"),
                to_origin("NOOP\r\n"),
            ]
        );
        assert_eq!(s.replies_owed(), 8);
        assert!(!s.wants_client_input());
        // Ten lines left: eight go on now, the last two after eight more replies.
        assert_eq!(origin(&mut s, &b"200 ok\r\n".repeat(8)).len(), 8 + 8);
        assert_eq!(s.replies_owed(), 8);
        assert_eq!(origin(&mut s, &b"200 ok\r\n".repeat(8)).len(), 8 + 2);
        assert_eq!(s.replies_owed(), 2);
        assert!(s.wants_client_input());
    }

    /// The memory-and-logs attack: junk lines behind a slow reply (vsftpd delays a failed
    /// login) wait within the pipelining bound, and the session ends after
    /// `max_consecutive_errors` error replies; warnings past the first few are only counted.
    #[test]
    fn junk_behind_a_slow_reply_is_bounded_and_ends_the_session() {
        let mut s = Session::new(SessionConfig {
            max_consecutive_errors: 6,
            ..config()
        });
        origin(&mut s, b"220 ready\r\n");
        let mut flood = b"USER a\r\nPASS b\r\n".to_vec();
        flood.extend(b"1\n".repeat(1000));
        let syntax = "Syntax error: command verb must be 1 to 8 ASCII letters.";
        let warn = || Action::Warn(format!("client: {syntax}"));
        // Two commands, six junk lines queued: eight replies owed, input stops.
        let out = client(&mut s, &flood);
        let mut want = vec![to_origin("USER a\r\n"), to_origin("PASS b\r\n")];
        want.extend(std::iter::repeat_with(warn).take(5));
        assert_eq!(out, want);
        assert_eq!(s.replies_owed(), 8);
        assert!(!s.wants_client_input());
        // 331 resets the count; one more junk line takes its place (its warning not logged).
        assert_eq!(origin(&mut s, b"331 pw\r\n"), vec![to_client("331 pw\r\n")]);
        assert_eq!(s.replies_owed(), 8);
        // The failed login (not a syntax error: not counted), then six 500s and the end.
        let out = origin(&mut s, b"530 Login incorrect.\r\n");
        let mut want = vec![to_client("530 Login incorrect.\r\n")];
        want.extend(std::iter::repeat_n(
            to_client(&format!("500 {syntax}\r\n")),
            6,
        ));
        want.extend([
            Action::Warn("closing: 6 error replies in a row".into()),
            to_client("421 Too many errors in a row: closing control connection.\r\n"),
            Action::Warn("2 more warnings of this session not logged".into()),
            Action::Close,
        ]);
        assert_eq!(out, want);
        assert!(s.is_closed());
    }

    /// (client lines, origin replies in order, whether the session ends): with a limit of
    /// 3, local refusals and origin 500-504 count, any 1xx-3xx starts over, other 4xx/5xx
    /// neither count nor start over.
    #[test]
    fn consecutive_errors() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"1\r\n1\r\n", b"", false),
            (b"1\r\n1\r\n1\r\n", b"", true),
            (b"1\r\n1\r\nNOOP\r\n1\r\n1\r\n", b"200 ok\r\n", false),
            (b"1\r\nSITE x\r\n1\r\n", b"500 unknown\r\n", true),
            (b"1\r\nSITE x\r\n1\r\n", b"504 no\r\n", true),
            (b"1\r\nRETR x\r\n1\r\n", b"550 no such file\r\n", false),
            (b"1\r\nRETR x\r\n1\r\n1\r\n", b"550 no such file\r\n", true),
            (b"1\r\nRETR x\r\n1\r\n", b"150 go\r\n226 ok\r\n", false),
            (b"AUTH TLS\r\nPROT P\r\nEPSV 2\r\n", b"", true),
            (b"AUTH TLS\r\nEPSV ALL\r\nPASV\r\nPASV\r\n", b"", false),
        ];
        for (lines, replies, ends) in cases {
            let mut s = Session::new(SessionConfig {
                max_consecutive_errors: 3,
                ..config()
            });
            origin(&mut s, b"220 ready\r\n");
            let mut out = client(&mut s, lines);
            out.extend(origin(&mut s, replies));
            let shown = String::from_utf8_lossy(lines);
            assert_eq!(s.is_closed(), *ends, "{shown}: {out:?}");
            if *ends {
                assert!(
                    client_text(&out)
                        .ends_with("421 Too many errors in a row: closing control connection.\r\n"),
                    "{shown}: {out:?}"
                );
            }
        }
    }

    /// A long multi-line reply (STAT of a big directory) reaches the client whole and
    /// scrubbed, while the session never holds much more than `max_reply_bytes` of it.
    #[test]
    fn a_long_reply_is_passed_on_in_pieces() {
        // (command, first line, a middle line as sent and as the client gets it, last line):
        // long lines pass the byte limit (1024 here), short ones the line limit (100).
        let long = |i: usize| {
            (
                format!("-rw-r--r-- 1 ftp ftp {i:8} Jan 1 198.51.100.2"),
                format!("-rw-r--r-- 1 ftp ftp {i:8} Jan 1 203.0.113.1"),
            )
        };
        let short = |i: usize| (format!(" {}", i % 10), format!(" {}", i % 10));
        type Middle<'a> = &'a dyn Fn(usize) -> (String, String);
        let cases: [(&str, &str, Middle<'_>, &str); 3] = [
            (
                "STAT /\r\n",
                "213-Status follows:",
                &long,
                "213 End of status",
            ),
            ("LIST\r\n", "150-Here comes the listing:", &long, "150 go"),
            (
                "STAT /\r\n",
                "213-Status follows:",
                &short,
                "213 End of status",
            ),
        ];
        for (command, first, middle, last) in cases {
            let mut s = greeted();
            client(&mut s, command.as_bytes());
            let mut reply = format!("{first}\r\n");
            let mut want = reply.clone();
            for i in 0..5000 {
                let (sent, seen) = middle(i);
                reply.push_str(&format!("{sent}\r\n"));
                want.push_str(&format!("{seen}\r\n"));
            }
            reply.push_str(&format!("{last}\r\n"));
            want.push_str(&format!("{last}\r\n"));
            let mut out = Vec::new();
            let mut most = 0;
            for chunk in reply.as_bytes().chunks(4096) {
                out.extend(origin(&mut s, chunk));
                most = most.max(s.buffered_bytes());
            }
            // The reply's limit, plus one line in the reply and one in the reader.
            assert!(most <= 1024 + 2 * 60, "held {most} bytes");
            assert_eq!(client_text(&out), want);
            assert!(!s.is_closed());
            assert_eq!(client(&mut s, b"NOOP\r\n"), vec![to_origin("NOOP\r\n")]);
        }
        // Replies the gateway must read whole cannot be that long.
        for (command, head) in [("FEAT\r\n", "211-Features:"), ("PASV\r\n", "227-x")] {
            let mut s = greeted();
            client(&mut s, command.as_bytes());
            let long = format!("{head}\r\n{}", " SIZE\r\n".repeat(300));
            let out = origin(&mut s, long.as_bytes());
            assert_eq!(
                out,
                vec![
                    Action::Warn(
                        "origin sent an invalid reply: longer than 1024 bytes where it must be \
                         read whole"
                            .into()
                    ),
                    to_client("421 The server sent an invalid reply; closing.\r\n"),
                    Action::Close
                ]
            );
        }
    }

    #[test]
    fn login_is_seen_and_its_timeout_closes() {
        let mut s = greeted();
        client(&mut s, b"USER a\r\nPASS b\r\n");
        origin(&mut s, b"331 pw\r\n");
        assert!(!s.logged_in());
        s.login_timeout();
        assert_eq!(
            drain(&mut s),
            vec![
                to_client("421 Login timeout: closing control connection.\r\n"),
                Action::Close
            ]
        );
        let mut s = greeted();
        client(&mut s, b"USER a\r\nPASS b\r\n");
        origin(&mut s, b"331 pw\r\n230 in\r\n");
        assert!(s.logged_in());
    }

    #[test]
    fn the_client_lease_limit_gives_a_clear_425() {
        // Passive, then active: both answered in place, the session goes on.
        let mut s = greeted();
        client(&mut s, b"EPSV\r\n");
        origin(&mut s, b"227 (198,51,100,2,117,48)\r\n");
        s.handle(Event::LeaseLimit);
        let refusal = "425 Can't open data connection: too many data connections pending for your address.\r\n";
        let warning =
            Action::Warn("no data lease: the client's address holds as many as it may".into());
        assert_eq!(drain(&mut s), vec![warning, to_client(refusal)]);
        client(&mut s, b"PORT 203,0,113,2,200,1\r\nNOOP\r\n");
        s.handle(Event::LeaseLimit);
        let out = drain(&mut s);
        assert_eq!(
            out,
            vec![
                Action::Warn("no data lease: the client's address holds as many as it may".into()),
                to_client(refusal),
                to_origin("NOOP\r\n")
            ]
        );
    }

    /// Found by the `session` fuzz target: rejected lines queued a local reply each behind
    /// an unanswered command, without bound.
    #[test]
    fn rejected_lines_count_against_the_pipelining_bound() {
        let mut s = greeted();
        assert_eq!(client(&mut s, b"USER a\r\n"), vec![to_origin("USER a\r\n")]);
        let out = client(&mut s, &b"1\r\n".repeat(20));
        let warn = || {
            Action::Warn("client: Syntax error: command verb must be 1 to 8 ASCII letters.".into())
        };
        // Seven take the places left (five warnings logged, the rest only counted); the
        // others wait unread until replies make room.
        assert_eq!(
            out,
            std::iter::repeat_with(warn).take(5).collect::<Vec<_>>()
        );
        assert_eq!(s.replies_owed(), 8);
        assert!(!s.wants_client_input());
    }

    #[test]
    fn port_and_eprt_name_a_gateway_port_to_the_origin() {
        let client_data = SocketAddrV4::new(CLIENT, 51201);
        for line in [
            &b"PORT 203,0,113,2,200,1\r\n"[..],
            b"EPRT |1|203.0.113.2|51201|\r\n",
            b"eprt !1!203.0.113.2!51201!\r\n",
        ] {
            let mut s = greeted();
            let out = client(&mut s, line);
            assert_eq!(
                out,
                vec![Action::InstallActiveLease {
                    client: client_data
                }]
            );
            s.handle(Event::ActiveLeaseInstalled {
                origin_side: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 40005),
            });
            assert_eq!(
                drain(&mut s),
                vec![to_origin("PORT 198,51,100,1,156,69\r\n")]
            );
            let text = client_text(&origin(&mut s, b"200 PORT command successful.\r\n"));
            assert_eq!(text, "200 PORT command successful.\r\n");
        }
    }

    #[test]
    fn bounce_and_malformed_active_requests_are_refused() {
        // (line, reply code): nothing may reach the origin, no lease may be asked for.
        let cases: &[(&[u8], &str)] = &[
            (b"PORT 192,0,2,66,200,1\r\n", "504 "),
            (b"PORT 198,51,100,2,0,22\r\n", "504 "),
            (b"PORT 203,0,113,2,0,21\r\n", "504 "),
            (b"PORT 203,0,113,2,3,255\r\n", "504 "),
            (b"EPRT |1|192.0.2.66|51201|\r\n", "504 "),
            (b"EPRT |1|203.0.113.2|20|\r\n", "504 "),
            (b"EPRT |2|2001:db8::2|51201|\r\n", "522 "),
            (b"PORT 203,0,113,2,200\r\n", "501 "),
            (b"PORT 203,0,113,256,200,1\r\n", "501 "),
            (b"PORT\r\n", "501 "),
            (b"PORT 203,0,113,2,200,1,7\r\n", "501 "),
            (b"EPRT |1|203.0.113.2|\r\n", "501 "),
            (b"EPRT |3|203.0.113.2|51201|\r\n", "501 "),
            (b"EPRT 1|203.0.113.2|51201\r\n", "501 "),
        ];
        for (line, code) in cases {
            let mut s = greeted();
            let out = client(&mut s, line);
            let text = client_text(&out);
            let shown = String::from_utf8_lossy(line);
            assert!(text.starts_with(code), "{shown}: {text}");
            assert!(
                !out.iter()
                    .any(|a| matches!(a, Action::ToOrigin(_) | Action::InstallActiveLease { .. })),
                "{shown}: {out:?}"
            );
            // The session goes on.
            assert_eq!(client(&mut s, b"NOOP\r\n"), vec![to_origin("NOOP\r\n")]);
        }
    }

    #[test]
    fn commands_after_port_wait_for_its_lease() {
        let nat = Ipv4Addr::new(198, 51, 100, 1);
        let mut s = greeted();
        let out = client(&mut s, b"PORT 203,0,113,2,200,1\r\nRETR f\r\nNOOP\r\n");
        let client_data = SocketAddrV4::new(CLIENT, 51201);
        assert_eq!(
            out,
            vec![Action::InstallActiveLease {
                client: client_data
            }]
        );
        s.handle(Event::ActiveLeaseInstalled {
            origin_side: SocketAddrV4::new(nat, 40000),
        });
        assert_eq!(
            drain(&mut s),
            vec![
                to_origin("PORT 198,51,100,1,156,64\r\n"),
                to_origin("RETR f\r\n"),
                to_origin("NOOP\r\n")
            ]
        );
        let replies = b"200 PORT ok\r\n150 go\r\n226 done\r\n200 noop\r\n";
        let text = client_text(&origin(&mut s, replies));
        assert_eq!(text, String::from_utf8_lossy(replies));

        // A failed lease: 425, and the held commands go on in order.
        let mut s = greeted();
        client(&mut s, b"EPRT |1|203.0.113.2|51201|\r\nNOOP\r\n");
        s.handle(Event::LeaseFailed {
            reason: "all 2 data ports are leased".into(),
        });
        let out = drain(&mut s);
        assert!(client_text(&out).starts_with("425 "), "{out:?}");
        assert!(out.contains(&to_origin("NOOP\r\n")));

        // The next data command revokes the active lease.
        let mut s = greeted();
        client(&mut s, b"PORT 203,0,113,2,200,1\r\n");
        s.handle(Event::ActiveLeaseInstalled {
            origin_side: SocketAddrV4::new(nat, 40000),
        });
        drain(&mut s);
        origin(&mut s, b"200 ok\r\n");
        let out = client(&mut s, b"PASV\r\n");
        assert_eq!(out, vec![Action::RevokeLease, to_origin("PASV\r\n")]);
    }

    /// The same conversation fed whole and one byte at a time gives the same actions.
    #[test]
    fn byte_by_byte_equals_whole() {
        let client_bytes: &[u8] = b"USER a\r\nPASS b\r\nEPSV\r\nRETR f\r\nQUIT\r\n";
        let origin_bytes: &[u8] =
            b"220-hi 198.51.100.2\r\n220 x\r\n331 pw\r\n230 in\r\n227 (198,51,100,2,117,48)\r\n";
        let tail: &[u8] = b"150 go\r\n226 ok\r\n221 bye\r\n";
        let run = |chunk: usize| {
            let mut s = session();
            let mut out = Vec::new();
            for c in client_bytes.chunks(chunk) {
                out.extend(client(&mut s, c));
            }
            for c in origin_bytes.chunks(chunk) {
                out.extend(origin(&mut s, c));
            }
            s.handle(Event::LeaseInstalled { public_port: 40000 });
            out.extend(drain(&mut s));
            for c in tail.chunks(chunk) {
                out.extend(origin(&mut s, c));
            }
            out
        };
        let whole = run(usize::MAX);
        assert_eq!(run(1), whole);
        assert_eq!(run(3), whole);
        let text = client_text(&whole);
        assert!(
            text.contains("229 Entering Extended Passive Mode (|||40000|)"),
            "{text}"
        );
        assert!(!text.contains("198.51.100.2"), "{text}");
        assert_eq!(whole.last(), Some(&Action::Close));
    }
}

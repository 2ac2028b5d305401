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
//! Leases: the session owns which one is live (at most one, [`lease`]); each request
//! carries a [`LeaseTicket`] that the driver's answer and a later revocation name.
//!
//! Logins: a refusal of PASS (`530`, `430`) is reported ([`Action::LoginFailed`]) after it
//! went to the client; the driver's policy may answer [`Event::Banned`] (421, close).
//!
//! Time: the session has no clock. Events and [`Session::handle_timeout`] carry `now`;
//! [`Session::poll_timeout`] says when the driver must call it next ([`timers`]).
//!
//! Memory stays bounded whatever either peer sends: at most `max_pending` replies are owed
//! (local answers to bad lines included); at the limit the session takes no more client
//! lines ([`Session::wants_client_input`] tells the driver to stop reading), and a long
//! multi-line origin reply is passed on in pieces once it is the next one owed.
//!
//! Here: the types, the public interface, and what both sides share (replies to the
//! client, error counting, closing). [`client`] handles command lines, [`origin`] reply
//! lines, [`lease`] lease requests and results, [`timers`] the deadlines.
mod client;
mod lease;
mod origin;
mod timers;

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Instant,
};

pub use self::{
    lease::LeaseTicket,
    timers::{SessionTimeouts, Timer},
};
use self::{lease::Leases, timers::Timers};
use super::{
    line::LineReader,
    reply::{Reply, ReplyAssembler},
    scrub::Scrubber,
};

/// Limits and addresses of one session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The client's address on the control connection: the only one PORT/EPRT may name.
    pub client_ip: IpAddr,
    /// Whether active mode (PORT/EPRT) is offered at all.
    pub active_mode: bool,
    /// Address advertised to the client in 227 replies (IPv4 by definition).
    pub public_ip: Ipv4Addr,
    /// The origin's control address: also where its passive data ports are.
    pub origin_ip: IpAddr,
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
    pub timeouts: SessionTimeouts,
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
    LeaseInstalled {
        ticket: LeaseTicket,
        public_port: u16,
    },
    /// The lease requested by [`Action::InstallActiveLease`] exists: the origin is told to
    /// connect here.
    ActiveLeaseInstalled {
        ticket: LeaseTicket,
        origin_side: SocketAddr,
    },
    /// The lease (passive or active) could not be installed (ports or map exhausted…).
    LeaseFailed { ticket: LeaseTicket, reason: String },
    /// No lease was installed: the client's address holds as many as it may.
    LeaseLimit { ticket: LeaseTicket },
    /// The client's address has been banned (after an [`Action::LoginFailed`]): the
    /// session says so with a 421 and closes.
    Banned,
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
    /// Revoke this lease (a new data request or the end of the session made it stale);
    /// a data connection already under way goes on.
    RevokeLease { ticket: LeaseTicket },
    /// Before the actions after this one: let the data connections of the leases installed
    /// so far finish. Comes before a transfer's final success reply, which must not reach
    /// the client ahead of the data (a dataplane that ends the origin's connection at the
    /// gateway and copies from there could otherwise deliver it first).
    AwaitData,
    /// Install a lease: the client may open one data connection that reaches `origin`.
    /// Answer with [`Event::LeaseInstalled`], [`Event::LeaseFailed`] or
    /// [`Event::LeaseLimit`], naming `ticket`.
    InstallLease {
        ticket: LeaseTicket,
        origin: SocketAddr,
    },
    /// Install an active-mode lease: the origin may open one data connection that reaches
    /// `client` (the address the client named, already checked to be its own).
    /// Answer with [`Event::ActiveLeaseInstalled`], [`Event::LeaseFailed`] or
    /// [`Event::LeaseLimit`], naming `ticket`.
    InstallActiveLease {
        ticket: LeaseTicket,
        client: SocketAddr,
    },
    /// A data transfer's command got its final reply (for the audit log); comes just
    /// before that reply (and after the [`Action::AwaitData`] it may need).
    TransferDone(Transfer),
    /// A deadline passed (for the log and metrics); the 421 and `Close` follow.
    TimedOut(Timer),
    /// The origin refused a login (`530`, or `430` as RFC 7151 has it, in answer to PASS),
    /// after that reply went to the client. `user`: the last USER's name, as sent. The
    /// driver may answer [`Event::Banned`].
    LoginFailed { user: Option<String> },
    /// Log a protocol problem (the session goes on unless a `Close` follows).
    Warn(String),
    /// Close both connections after the writes above.
    Close,
}

/// One data transfer (RETR, STOR, STOU, APPE, LIST, NLST, MLSD) as the control connection
/// saw it: its command, the lease its data connection was to use, its final reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The verb, upper case.
    pub command: String,
    /// The command's argument (a path, or a listing's options and path), as sent.
    pub path: Option<String>,
    /// The name the client gave in its last USER command.
    pub user: Option<String>,
    /// The lease live when the command was sent: the one its data connection uses.
    pub ticket: Option<LeaseTicket>,
    /// Whether the origin sent a preliminary reply (150/125): a data connection opened.
    pub data_opened: bool,
    /// The final reply's code (226, 250, 425, 426, 451, 550…); 0 when the session ended
    /// before it came.
    pub reply_code: u16,
    /// When the command was sent, and when its final reply came.
    pub started: Instant,
    pub ended: Instant,
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
    /// `transfer` is filled in as replies come.
    Transfer { transfer: Box<Transfer> },
    /// FEAT: forward minus what the gateway cannot carry.
    Feat,
    /// PASV sent to the origin for a client PASV/EPSV.
    Passive(PassiveForm),
    /// Waiting for the driver to install a lease for a passive reply.
    AwaitingLease {
        ticket: LeaseTicket,
        form: PassiveForm,
    },
    /// Waiting for the driver to install an active-mode lease; the PORT for the origin
    /// is sent when it exists, and client input is held until then (command order).
    AwaitingActive { ticket: LeaseTicket },
    /// PASS: forward the reply; a refusal is a login failure ([`Action::LoginFailed`]).
    Login,
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
    /// The live lease, which the next data request or the end revokes.
    leases: Leases,
    timers: Timers,
    /// Client lines wait in their reader while an active lease is being installed.
    holding_client: bool,
    /// Error replies sent in a row (see [`SessionConfig::max_consecutive_errors`]).
    consecutive_errors: usize,
    /// The name the client last sent with USER, cut to 64 bytes (for
    /// [`Action::LoginFailed`] and [`Transfer`]).
    user: Option<String>,
    /// Warnings logged, and those counted but not logged ([`WARNINGS_LOGGED`]).
    warnings: usize,
    warnings_suppressed: usize,
    /// The time of the event being handled (the session has no clock of its own).
    now: Instant,
    closed: bool,
}

impl Session {
    /// A session that starts at `now` (its timers count from then).
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let mut pending = VecDeque::new();
        pending.push_back(Pending::Greeting);
        Self {
            client_lines: LineReader::new(config.max_command_line, true),
            origin_lines: LineReader::new(config.max_reply_line, false),
            replies: ReplyAssembler::new(config.max_reply_lines),
            timers: Timers::new(config.timeouts, now),
            config,
            pending,
            unmatched: VecDeque::new(),
            actions: VecDeque::new(),
            epsv_all: false,
            leases: Leases::default(),
            holding_client: false,
            consecutive_errors: 0,
            user: None,
            warnings: 0,
            warnings_suppressed: 0,
            now,
            closed: false,
        }
    }

    /// Whether the driver should read the client: false while the replies owed are at the
    /// limit or client lines are held (they wait in the reader, and the socket buffers
    /// and TCP flow control hold the rest).
    pub fn wants_client_input(&self) -> bool {
        !self.closed && !self.holding_client && self.pending.len() < self.config.max_pending
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

    /// Feeds one event that happened at `now`.
    pub fn handle(&mut self, now: Instant, event: Event<'_>) {
        if self.closed {
            return;
        }
        self.now = now;
        match event {
            Event::FromClient(bytes) => {
                self.timers.activity(now);
                self.client_lines.push(bytes);
                self.drain_client_lines();
            }
            Event::FromOrigin(bytes) => {
                self.timers.activity(now);
                self.timers.greeted();
                self.origin_lines.push(bytes);
                self.drain_origin_lines();
            }
            Event::LeaseInstalled {
                ticket,
                public_port,
            } => self.lease_result(ticket, Ok(public_port)),
            Event::ActiveLeaseInstalled {
                ticket,
                origin_side,
            } => self.active_lease_result(ticket, Ok(origin_side)),
            Event::LeaseFailed { ticket, reason } => {
                self.lease_failed(ticket, LeaseFailure::Failed(reason))
            }
            Event::LeaseLimit { ticket } => self.lease_failed(ticket, LeaseFailure::ClientLimit),
            Event::Banned => {
                self.say(Reply::new(
                    421,
                    "Too many failed logins from your address: closing control connection.",
                ));
                self.close();
            }
        }
        self.settle();
    }

    /// When [`Session::handle_timeout`] is due next; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.closed).then(|| self.timers.next())
    }

    /// Time has reached `now`: a deadline that passed closes the session with a 421
    /// (after [`Action::TimedOut`]); called early, nothing happens.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.now = now;
        let Some(timer) = self.timers.expired(now) else {
            return;
        };
        self.actions.push_back(Action::TimedOut(timer));
        self.say(Reply::new(
            421,
            match timer {
                Timer::Greeting => "Service not available: the server did not answer.",
                Timer::Login => "Login timeout: closing control connection.",
                Timer::Idle => "Idle timeout: closing control connection.",
            },
        ));
        self.close();
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

    /// The gateway's policy no longer admits the client (a reload denied its address):
    /// tell it, then close.
    pub fn close_by_policy(&mut self) {
        self.close_with_421("Access denied by policy: closing control connection.");
    }

    /// The client's connection ended: nothing more can be said to it.
    pub fn client_closed(&mut self) {
        self.close();
    }

    /// The origin's connection ended: tell the client why, then close.
    pub fn origin_closed(&mut self) {
        self.close_with_421("Service not available: the server closed the connection.");
    }

    /// Tells the client `text` with a 421 and closes, unless closed already.
    fn close_with_421(&mut self, text: &'static str) {
        if self.closed {
            return;
        }
        self.say(Reply::new(421, text));
        self.close();
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
            self.report_unanswered_transfers();
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

    /// Transfers the session ends before their final reply (the client went away during a
    /// download, the origin's connection broke) are reported with reply code 0.
    fn report_unanswered_transfers(&mut self) {
        for pending in &self.pending {
            if let Pending::Transfer { transfer } = pending {
                let transfer = Transfer {
                    ended: self.now,
                    ..(**transfer).clone()
                };
                self.actions.push_back(Action::TransferDone(transfer));
            }
        }
    }

    /// Commands forwarded to the origin and not yet answered (for tests and status).
    pub fn commands_in_flight(&self) -> usize {
        self.pending.iter().filter(|p| p.is_origin_bound()).count()
    }
}

#[cfg(test)]
mod tests;

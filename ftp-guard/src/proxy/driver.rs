//! Drives one [`Session`] over the two control streams: reads from both legs feed it, its
//! actions are carried out in order, and it is woken when its next deadline is due. All
//! protocol decisions, timers included, live in the session; the driver maps the session's
//! lease tickets to the dataplane's leases (and the client's lease slots they hold) and
//! revokes whatever is left when the session ends, whatever the path. Finished transfers
//! go to the audit log with their lease's mode and the end of its data connection.
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{
    ServiceContext,
    admission::{ClientShare, Refusal},
    stream::{ControlStream, Leg, WRITE_TIMEOUT},
    upstream::{self, UpstreamError},
};
use crate::{
    audit::TransferRecord,
    config::DataplaneKind,
    dataplane::{ActiveRequest, DataBytes, DataEnd, Dataplane, LeaseError, LeaseId, LeaseRequest},
    ftp::session::{
        Action, Event, LeaseTicket, Session, SessionConfig, SessionTimeouts, Timer, Transfer,
    },
};

/// The longest a transfer's final reply waits for its data connection to be over (a client
/// that stops reading the data holds it up; the reply goes out then anyway).
const DATA_DONE_TIMEOUT: Duration = WRITE_TIMEOUT;
const READ_BUFFER: usize = 4096;
/// Limits of origin replies (the origin is trusted more than clients, but not blindly).
const MAX_REPLY_LINE: usize = 8192;
const MAX_REPLY_LINES: usize = 10_000;
/// Replies a client may have owed (pipelined commands, answers to bad lines) before the
/// session stops reading it.
const MAX_PENDING: usize = 64;
/// Bytes of one origin reply held before it is passed on in pieces (a STAT of a big
/// directory).
pub const MAX_REPLY_BYTES: usize = 64 << 10;

/// Why a session ended, for the closing log line.
#[derive(Debug)]
enum End {
    Session,
    ClientIo(io::Error),
    OriginIo(io::Error),
}

pub async fn run(client: TcpStream, peer: SocketAddr, id: u64, ctx: Arc<ServiceContext>) {
    let service = &ctx.service;
    info!("client connected");
    // The session's timers count from here: the origin must accept and greet within the
    // connect timeout.
    let started = tokio::time::Instant::now();
    let origin = ctx.origins.pick();
    let upstream =
        match upstream::connect(origin, service.connect_timeout(), service.keepalive()).await {
            Ok(upstream) => upstream,
            Err(e) => {
                if !matches!(e, UpstreamError::NoLocalAddress(_)) {
                    ctx.metrics.origin_connect_failed(&service.name);
                }
                let refusal = Refusal::OriginUnreachable { why: e.to_string() };
                ctx.metrics
                    .session_rejected(&service.name, refusal.metric_reason());
                return refusal.send(client, peer, Some(0)).await;
            }
        };
    ctx.metrics
        .origin_connected(&service.name, upstream.connect_time);
    // Validation refuses a service without an IPv4 public address; one built by hand
    // without it is refused here (227 replies carry IPv4 only).
    let public_ip = match service.ipv4() {
        Ok(addresses) => addresses.public_ip,
        Err(e) => {
            let refusal = Refusal::OriginUnreachable { why: e.to_string() };
            ctx.metrics
                .session_rejected(&service.name, refusal.metric_reason());
            return refusal.send(client, peer, Some(0)).await;
        }
    };
    let client = ControlStream::new(client, Leg::Client, service.keepalive());
    let client_ip = peer.ip().to_canonical();
    let session = Session::new(
        SessionConfig {
            client_ip,
            active_mode: service.active_mode,
            public_ip,
            origin_ip: origin.ip(),
            scrubber: ctx.session_scrubber(upstream.local.ip()),
            max_command_line: service.max_command_line,
            max_reply_line: MAX_REPLY_LINE,
            max_reply_lines: MAX_REPLY_LINES,
            max_pending: MAX_PENDING,
            max_consecutive_errors: service.max_consecutive_errors,
            max_reply_bytes: MAX_REPLY_BYTES,
            timeouts: SessionTimeouts {
                greeting: service.connect_timeout(),
                login: service.login_timeout(),
                idle: service.idle_timeout(),
            },
        },
        started.into_std(),
    );
    let mut driver = Driver {
        ctx: ctx.clone(),
        client_ip,
        origin_ip: origin.ip(),
        client,
        origin: upstream.stream,
        session,
        leases: HashMap::new(),
        unsettled: Vec::new(),
        session_id: id,
        data_ends: HashMap::new(),
    };
    // The leases go with the driver, also when this task is dropped mid-way.
    let end = driver.run().await;
    drop(driver);
    let secs = started.elapsed().as_secs_f64();
    match end {
        End::Session => info!(secs, "session closed"),
        End::ClientIo(e) => info!(secs, error = %e, "session closed: client connection failed"),
        End::OriginIo(e) => warn!(secs, error = %e, "session closed: origin connection failed"),
    }
}

struct Driver {
    ctx: Arc<ServiceContext>,
    client_ip: IpAddr,
    origin_ip: IpAddr,
    client: ControlStream,
    origin: ControlStream,
    session: Session,
    /// The session's installed leases, by ticket, with the client's slot each holds. The
    /// session says which are live (it revokes the stale); what is here when the driver
    /// goes is revoked then.
    leases: HashMap<LeaseTicket, (LeaseId, ClientShare)>,
    /// Leases installed since the last [`Action::AwaitData`]: their data connections may
    /// still be under way.
    unsettled: Vec<LeaseId>,
    session_id: u64,
    /// For the audit log: the mode of the newest lease, and the end of its data connection
    /// (until a transfer takes it).
    data_ends: HashMap<LeaseTicket, (&'static str, Option<DataEnd>)>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        for (id, _slot) in self.leases.values() {
            self.ctx.dataplane.revoke(*id);
        }
    }
}

impl Driver {
    /// Revokes a lease (used or not: a data connection under way goes on); its client
    /// slot is given back.
    fn revoke_lease(&mut self, ticket: LeaseTicket) {
        if let Some((id, _slot)) = self.leases.remove(&ticket) {
            self.ctx.dataplane.revoke(id);
        }
    }

    /// Installs the lease `ticket` (`mode`: passive or active) with `install`, if the
    /// client's address has a slot left. Gives the event that tells the session.
    fn install_lease(
        &mut self,
        ticket: LeaseTicket,
        mode: &'static str,
        install: impl FnOnce(&dyn Dataplane) -> Result<(LeaseId, Event<'static>), LeaseError>,
    ) -> Event<'static> {
        let name = &self.ctx.service.name;
        let Some(slot) = self.ctx.admission.take_lease_slot(self.client_ip) else {
            self.ctx.metrics.lease_failed(name, "client_limit");
            return Event::LeaseLimit { ticket };
        };
        match install(self.ctx.dataplane.as_ref()) {
            Ok((id, event)) => {
                self.ctx.metrics.lease_installed(name, mode);
                self.leases.insert(ticket, (id, slot));
                self.note_unsettled(id);
                self.watch_data_end(ticket, mode, id);
                event
            }
            Err(e) => {
                self.ctx.metrics.lease_failed(name, e.metric_reason());
                Event::LeaseFailed {
                    ticket,
                    reason: e.to_string(),
                }
            }
        }
    }

    async fn run(&mut self) -> End {
        // One timer for the whole session, re-armed only when the session's next deadline
        // is earlier than the one armed (or it fired): re-arming on every message would
        // cost two timer-wheel operations per command and reply, and activity only moves
        // the idle deadline later (an early wake-up finds nothing due and re-arms).
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let mut acl = self.ctx.admission.acl_watch();
        let mut acl_open = true;
        loop {
            if let Some(end) = self.perform_actions().await {
                return end;
            }
            self.ctx.note_buffered(self.session.buffered_bytes());
            let due = self.session.poll_timeout();
            if let Some(due) = due
                && armed.is_none_or(|armed| due < armed)
            {
                timer.as_mut().reset(tokio::time::Instant::from_std(due));
                armed = Some(due);
            }
            // Backpressure: while the session owes the client its limit of replies, its
            // input waits in the socket and TCP holds the client back.
            let read_client = self.session.wants_client_input();
            let ready = tokio::select! {
                r = self.client.readable(), if read_client => Ready::Client(r),
                r = self.origin.readable() => Ready::Origin(r),
                () = &mut timer, if armed.is_some() => Ready::Timer,
                r = acl.changed(), if acl_open => match r {
                    Ok(()) => Ready::Acl,
                    Err(_) => {
                        acl_open = false;
                        continue;
                    }
                },
            };
            let now = now();
            // The buffer lives on the stack only while a read runs, not in the task: an
            // idle session holds no read buffers.
            let mut buf = [0u8; READ_BUFFER];
            match ready {
                Ready::Client(r) => match r.and_then(|()| self.client.try_read(&mut buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Ok(0) => {
                        debug!("client closed");
                        self.session.client_closed()
                    }
                    Ok(n) => self.session.handle(now, Event::FromClient(&buf[..n])),
                    Err(e) => return End::ClientIo(e),
                },
                Ready::Origin(r) => match r.and_then(|()| self.origin.try_read(&mut buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Ok(0) => {
                        info!("origin closed the control connection");
                        self.session.origin_closed()
                    }
                    Ok(n) => self.session.handle(now, Event::FromOrigin(&buf[..n])),
                    Err(e) => {
                        warn!(error = %e, "origin read failed");
                        self.session.origin_closed();
                    }
                },
                Ready::Timer => {
                    armed = None;
                    self.session.handle_timeout(now);
                }
                Ready::Acl => {
                    if acl.borrow_and_update().refuses(self.client_ip) {
                        info!("the reloaded ACL denies this client");
                        self.session.close_by_policy();
                    }
                }
            }
        }
    }

    /// The origin refused a login: counted against the client's address; banned (now or
    /// before), the session ends with a 421 after the refusal.
    fn login_failed(&mut self, user: Option<&str>) {
        let now = now();
        info!(user = user.unwrap_or(""), "login failed");
        if let Some(ban) = self.ctx.admission.login_failed(self.client_ip, now) {
            warn!(
                reason = %ban.reason,
                secs = ban.until.saturating_duration_since(now).as_secs(),
                "client banned: closing its session"
            );
            self.session.handle(now, Event::Banned);
        }
    }

    /// Logs a deadline the session saw pass (it closes with a 421).
    fn timed_out(&self, timer: Timer) {
        let service = &self.ctx.service;
        match timer {
            Timer::Greeting => {
                // E.g. a handshake that the origin's kernel completed with a SYN cookie
                // and then dropped because its accept queue was full: connected here,
                // unknown there, and neither side ever speaks.
                warn!(
                    secs = service.connect_timeout_secs,
                    "origin accepted the connection but sent no greeting"
                );
                self.ctx.metrics.origin_connect_failed(&service.name);
                self.ctx
                    .metrics
                    .session_rejected(&service.name, "origin_silent");
            }
            Timer::Login => info!(secs = service.login_timeout_secs, "login timeout"),
            Timer::Idle => info!(secs = service.idle_timeout_secs, "idle timeout"),
        }
    }

    /// For the audit log: lease `id` (`ticket`) is the newest, the one transfers use from
    /// now on; its data connection's end is watched.
    fn watch_data_end(&mut self, ticket: LeaseTicket, mode: &'static str, id: LeaseId) {
        if !self.ctx.audit.as_ref().is_some_and(|a| a.enabled()) {
            return;
        }
        self.data_ends.clear();
        let end = self.ctx.dataplane.data_end(id);
        self.data_ends.insert(ticket, (mode, end));
    }

    /// Hands a finished transfer to the audit log, with its data connection's end to
    /// wait for when the origin opened one.
    fn audit_transfer(&mut self, transfer: Transfer) {
        let Some(audit) = self.ctx.audit.as_ref().filter(|a| a.enabled()) else {
            return;
        };
        let lease = transfer.ticket.and_then(|t| self.data_ends.get_mut(&t));
        let (mode, end) = match lease {
            Some((mode, end)) => (Some(*mode), end.take().filter(|_| transfer.data_opened)),
            None => (None, None),
        };
        let record = TransferRecord {
            time: SystemTime::now(),
            service: self.ctx.service.name.clone(),
            session: self.session_id,
            client: self.client_ip,
            user: transfer.user,
            command: transfer.command,
            path: transfer.path,
            bytes: DataBytes::default(),
            duration: transfer.ended.duration_since(transfer.started),
            reply_code: transfer.reply_code,
            data_path: match self.ctx.service.dataplane {
                DataplaneKind::Kernel => "kernel",
                DataplaneKind::Userspace => "userspace",
            },
            mode,
        };
        audit.record_when_done(record, end);
    }

    /// Remembers a new lease for [`Driver::await_data`], forgetting those with nothing
    /// left to wait for (all of them on the kernel path), so the list stays short.
    fn note_unsettled(&mut self, id: LeaseId) {
        let dataplane = &self.ctx.dataplane;
        self.unsettled
            .retain(|old| dataplane.data_done(*old).is_some());
        self.unsettled.push(id);
    }

    /// Waits until the data connections of the leases installed so far are over, as far
    /// as the dataplane can hold data back (the userspace relay), within a bound.
    async fn await_data(&mut self) {
        let deadline = tokio::time::Instant::now() + DATA_DONE_TIMEOUT;
        for id in std::mem::take(&mut self.unsettled) {
            let Some(done) = self.ctx.dataplane.data_done(id) else {
                continue;
            };
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                warn!(
                    secs = DATA_DONE_TIMEOUT.as_secs(),
                    "data connection still busy: passing the transfer's reply on anyway"
                );
                return;
            }
        }
    }

    /// Carries out queued actions; `Some` when the session is over.
    async fn perform_actions(&mut self) -> Option<End> {
        let (client_ip, origin_ip) = (self.client_ip, self.origin_ip);
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::ToClient(bytes) => {
                    if let Err(e) = self.client.write(&bytes).await {
                        return Some(End::ClientIo(e));
                    }
                }
                Action::ToOrigin(bytes) => {
                    if let Err(e) = self.origin.write(&bytes).await {
                        return Some(End::OriginIo(e));
                    }
                }
                Action::ToOriginUrgent(bytes) => {
                    if let Err(e) = self.origin.write_urgent(&bytes).await {
                        return Some(End::OriginIo(e));
                    }
                }
                Action::AwaitData => self.await_data().await,
                Action::RevokeLease { ticket } => self.revoke_lease(ticket),
                Action::InstallLease { ticket, origin } => {
                    let event = self.install_lease(ticket, "passive", |dataplane| {
                        let grant = dataplane.install(LeaseRequest {
                            client: client_ip,
                            origin,
                        })?;
                        info!(public_port = grant.public_port, %origin, "data lease installed");
                        let public_port = grant.public_port;
                        Ok((
                            grant.id,
                            Event::LeaseInstalled {
                                ticket,
                                public_port,
                            },
                        ))
                    });
                    self.session.handle(now(), event);
                }
                Action::InstallActiveLease { ticket, client } => {
                    let event = self.install_lease(ticket, "active", |dataplane| {
                        let grant = dataplane.install_active(ActiveRequest {
                            origin: origin_ip,
                            client,
                        })?;
                        info!(%client, origin_side = %grant.origin_side, "active data lease installed");
                        let origin_side = grant.origin_side;
                        Ok((grant.id, Event::ActiveLeaseInstalled { ticket, origin_side }))
                    });
                    self.session.handle(now(), event);
                }
                Action::TransferDone(transfer) => self.audit_transfer(transfer),
                Action::TimedOut(timer) => self.timed_out(timer),
                Action::LoginFailed { user } => self.login_failed(user.as_deref()),
                Action::Warn(message) => warn!("{message}"),
                Action::Close => {
                    self.client.shutdown().await;
                    self.origin.shutdown().await;
                    return Some(End::Session);
                }
            }
        }
        None
    }
}

/// The session's time: tokio's clock (which tests may pause), as the session takes it.
pub(super) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What woke a session (reads: see [`ControlStream`]).
enum Ready {
    Client(io::Result<()>),
    Origin(io::Result<()>),
    /// The session's next deadline (or an earlier one it moved from).
    Timer,
    /// The service's ACL changed (a reload).
    Acl,
}

//! Drives one [`Session`] over the two control streams: reads from both legs feed it, its
//! actions are carried out in order. All protocol decisions live in the session; the driver
//! owns the timers (greeting, login, idle), the one lease a session may hold (a new one
//! revokes it; the session's end, whatever the path, too) and the client's share of leases.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{
    ServiceContext,
    admission::{LeaseSlot, Refusal},
    stream::{ControlStream, Leg, WRITE_TIMEOUT},
    upstream::{self, UpstreamError},
};
use crate::{
    dataplane::{ActiveRequest, Dataplane, LeaseError, LeaseId, LeaseRequest},
    ftp::session::{Action, Event, Session, SessionConfig},
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

pub async fn run(client: TcpStream, peer: SocketAddr, ctx: Arc<ServiceContext>) {
    let started = Instant::now();
    let service = &ctx.service;
    // Admission let only IPv4 clients (IPv4-mapped ones too) through.
    let IpAddr::V4(client_ip) = peer.ip().to_canonical() else {
        return;
    };
    info!("client connected");

    // The origin must accept and then greet within the connect timeout: FTP servers speak
    // first, so an origin that never greets would otherwise hold the client in silence.
    let greeting_due = tokio::time::Instant::now() + service.connect_timeout();
    let upstream = match upstream::connect(
        ctx.origins.pick(),
        service.connect_timeout(),
        service.keepalive(),
    )
    .await
    {
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
    let client = ControlStream::new(client, Leg::Client, service.keepalive());
    let scrubber = ctx.session_scrubber(upstream.local.ip());

    let session = Session::new(SessionConfig {
        client_ip,
        active_mode: service.active_mode,
        public_ip: service.public_ip(),
        origin_ip: *service.origin.ip(),
        scrubber,
        max_command_line: service.max_command_line,
        max_reply_line: MAX_REPLY_LINE,
        max_reply_lines: MAX_REPLY_LINES,
        max_pending: MAX_PENDING,
        max_consecutive_errors: service.max_consecutive_errors,
        max_reply_bytes: MAX_REPLY_BYTES,
    });
    let mut driver = Driver {
        ctx: ctx.clone(),
        client_ip,
        client,
        origin: upstream.stream,
        session,
        lease: None,
        unsettled: Vec::new(),
        greeting_due: Some(greeting_due),
        login_due: Some(tokio::time::Instant::now() + service.login_timeout()),
    };
    // The lease goes with the driver, also when this task is dropped mid-way.
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
    client_ip: Ipv4Addr,
    client: ControlStream,
    origin: ControlStream,
    session: Session,
    /// The lease and the client's slot it holds.
    lease: Option<(LeaseId, LeaseSlot)>,
    /// Leases installed since the last [`Action::AwaitData`]: their data connections may
    /// still be under way.
    unsettled: Vec<LeaseId>,
    /// Until the origin's first byte: when its greeting is overdue.
    greeting_due: Option<tokio::time::Instant>,
    /// Until the origin's 230: when the client must have logged in.
    login_due: Option<tokio::time::Instant>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.revoke_lease();
    }
}

impl Driver {
    /// Revokes the session's lease (used or not: a data connection under way goes on) and
    /// gives the client's slot back.
    fn revoke_lease(&mut self) {
        if let Some((id, _slot)) = self.lease.take() {
            self.ctx.dataplane.revoke(id);
        }
    }

    /// Installs a lease the session asked for (`mode`: passive or active) with `install`:
    /// the old lease goes first, and the client's address must have a slot left. Gives
    /// the event that tells the session the outcome.
    fn install_lease(
        &mut self,
        mode: &'static str,
        install: impl FnOnce(&dyn Dataplane) -> Result<(LeaseId, Event<'static>), LeaseError>,
    ) -> Event<'static> {
        self.revoke_lease();
        let name = &self.ctx.service.name;
        let Some(slot) = self.ctx.admission.take_lease_slot(self.client_ip.into()) else {
            self.ctx.metrics.lease_failed(name, "client_limit");
            return Event::LeaseLimit;
        };
        match install(self.ctx.dataplane.as_ref()) {
            Ok((id, event)) => {
                self.ctx.metrics.lease_installed(name, mode);
                self.lease = Some((id, slot));
                self.note_unsettled(id);
                event
            }
            Err(e) => {
                self.ctx.metrics.lease_failed(name, e.metric_reason());
                Event::LeaseFailed {
                    reason: e.to_string(),
                }
            }
        }
    }

    async fn run(&mut self) -> End {
        let idle = self.ctx.service.idle_timeout();
        // One timer for the whole session, re-armed only when it fires early: re-arming on
        // every message would cost two timer-wheel operations per command and reply.
        let mut last_activity = tokio::time::Instant::now();
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        loop {
            if let Some(end) = self.perform_actions().await {
                return end;
            }
            self.ctx.note_buffered(self.session.buffered_bytes());
            if self.session.logged_in() {
                self.login_due = None;
            }
            // Wait for readiness without a buffer: an idle session then holds no read
            // buffers (memory per idle session is a figure operators size by). The buffer
            // below lives on the stack only while a poll runs, not in the task.
            let greeting_due = self.greeting_due;
            let login_due = self.login_due;
            // Polled only while the greeting is awaited (any instant will do otherwise).
            let no_greeting =
                tokio::time::sleep_until(greeting_due.unwrap_or_else(tokio::time::Instant::now));
            let no_login =
                tokio::time::sleep_until(login_due.unwrap_or_else(tokio::time::Instant::now));
            // Backpressure: while the session owes the client its limit of replies, its
            // input waits in the socket and TCP holds the client back.
            let read_client = self.session.wants_client_input();
            let ready = tokio::select! {
                r = self.client.readable(), if read_client => Ready::Client(r),
                r = self.origin.readable() => Ready::Origin(r),
                () = no_greeting, if greeting_due.is_some() => Ready::NoGreeting,
                () = no_login, if login_due.is_some() => Ready::NoLogin,
                () = &mut idle_timer => Ready::Idle,
            };
            if !matches!(ready, Ready::Idle) {
                last_activity = tokio::time::Instant::now();
            }
            let mut buf = [0u8; READ_BUFFER];
            match ready {
                Ready::Client(r) => match r.and_then(|()| self.client.try_read(&mut buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Ok(0) => {
                        debug!("client closed");
                        self.session.client_closed()
                    }
                    Ok(n) => self.session.handle(Event::FromClient(&buf[..n])),
                    Err(e) => return End::ClientIo(e),
                },
                Ready::Origin(r) => match r.and_then(|()| self.origin.try_read(&mut buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Ok(0) => {
                        info!("origin closed the control connection");
                        self.session.origin_closed()
                    }
                    Ok(n) => {
                        self.greeting_due = None;
                        self.session.handle(Event::FromOrigin(&buf[..n]));
                    }
                    Err(e) => {
                        warn!(error = %e, "origin read failed");
                        self.session.origin_closed();
                    }
                },
                Ready::NoGreeting => {
                    // E.g. a handshake that the origin's kernel completed with a SYN cookie
                    // and then dropped because its accept queue was full: connected here,
                    // unknown there, and neither side ever speaks.
                    let name = &self.ctx.service.name;
                    warn!(
                        secs = self.ctx.service.connect_timeout_secs,
                        "origin accepted the connection but sent no greeting"
                    );
                    self.ctx.metrics.origin_connect_failed(name);
                    self.ctx.metrics.session_rejected(name, "origin_silent");
                    self.greeting_due = None;
                    self.session.greeting_timeout();
                }
                Ready::NoLogin => {
                    info!(secs = self.ctx.service.login_timeout_secs, "login timeout");
                    self.login_due = None;
                    self.session.login_timeout();
                }
                Ready::Idle if last_activity.elapsed() < idle => {
                    idle_timer.as_mut().reset(last_activity + idle);
                }
                Ready::Idle => {
                    info!(secs = idle.as_secs(), "idle timeout");
                    self.session.idle_timeout();
                    // Fires no more: the session ends with the reply.
                    idle_timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + idle);
                }
            }
        }
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
                Action::RevokeLease => self.revoke_lease(),
                Action::InstallLease { origin } => {
                    let request = LeaseRequest {
                        client: self.client_ip,
                        origin,
                    };
                    let event = self.install_lease("passive", |dataplane| {
                        let grant = dataplane.install(request)?;
                        info!(public_port = grant.public_port, %origin, "data lease installed");
                        let public_port = grant.public_port;
                        Ok((grant.id, Event::LeaseInstalled { public_port }))
                    });
                    self.session.handle(event);
                }
                Action::InstallActiveLease { client } => {
                    let request = ActiveRequest {
                        origin: *self.ctx.service.origin.ip(),
                        client,
                    };
                    let event = self.install_lease("active", |dataplane| {
                        let grant = dataplane.install_active(request)?;
                        info!(%client, origin_side = %grant.origin_side, "active data lease installed");
                        let origin_side = grant.origin_side;
                        Ok((grant.id, Event::ActiveLeaseInstalled { origin_side }))
                    });
                    self.session.handle(event);
                }
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

/// What woke a session (reads: see [`ControlStream`]).
enum Ready {
    Client(io::Result<()>),
    Origin(io::Result<()>),
    /// The origin's greeting is overdue.
    NoGreeting,
    /// The client has not logged in within the login timeout.
    NoLogin,
    Idle,
}

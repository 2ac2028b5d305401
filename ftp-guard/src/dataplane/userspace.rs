//! Data connections relayed in userspace: a listener per lease on the public data port,
//! the first connection from the lease's client is joined to a new connection to the
//! origin's data port and bytes are copied both ways. Connections from anyone else are
//! closed at once. A relayed connection silent for the data idle timeout is closed, and
//! both its legs carry TCP keepalive. With a guard (the kernel path's XDP/TC programs on
//! the client interface) each passive lease is also an admit-only lease in the guard's map
//! for as long as it lives, so the guard drops everyone else's packets to the data range
//! before the stack sees them. The explicit fallback (`dataplane = "userspace"`) and the
//! benchmark baseline for the kernel path.
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
};
use tracing::{Instrument as _, debug, info, warn};

use super::{
    ActiveGrant, ActiveRequest, DataDone, DataTimeouts, Dataplane, LeaseError, LeaseGrant, LeaseId,
    LeaseInfo, LeaseRequest, Leftovers, Snapshot, ports::PortPool,
};
use crate::{
    bpf::{BpfError, Handle},
    config::PortRange,
};

/// Bind attempts per lease when a chosen port turns out to be taken by another socket.
const BIND_ATTEMPTS: usize = 16;
/// Bytes read at once per direction of a relayed connection.
const COPY_BUFFER: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// Local address the passive data listeners bind to (the service's listen address);
    /// active-mode connections to clients come from it too.
    pub bind_ip: Ipv4Addr,
    /// The gateway's address towards the origin: active-mode listeners bind to it.
    pub origin_side_ip: Ipv4Addr,
    /// Active mode: connect to clients from port 20.
    pub active_port_20: bool,
    pub ports: PortRange,
    /// The address clients connect to (the key of admit leases in the guard's map).
    pub public_ip: Ipv4Addr,
}

pub struct UserspaceRelay {
    settings: RelaySettings,
    /// Replaced in place on reload; each lease takes those of its start.
    timeouts: Mutex<DataTimeouts>,
    /// The kernel path's guard in front of the passive listeners, if loaded.
    guard: Option<Handle>,
    pool: Arc<PortPool>,
    /// Leases still waiting for their client: dropping the sender cancels the wait.
    waiting: Arc<Mutex<HashMap<LeaseId, oneshot::Sender<()>>>>,
    /// Every lease alive (waiting or carrying), for status.
    live: Arc<Mutex<HashMap<LeaseId, LeaseInfo>>>,
    /// Every lease alive: its task signals (or, ending, drops the sender) once everything
    /// towards the client has been passed on. The origin's side ends at the relay, so the
    /// origin can report a transfer complete while the relay is still connecting to the
    /// client or copying.
    done: Arc<Mutex<HashMap<LeaseId, watch::Receiver<()>>>>,
    next_id: AtomicU64,
    stats: Arc<RelayStats>,
}

/// Totals since start, for logs and tests.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub installed: AtomicU64,
    pub used: AtomicU64,
    pub expired: AtomicU64,
    pub revoked: AtomicU64,
    pub strangers_refused: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub bytes_to_origin: AtomicU64,
    /// Relayed connections closed for being idle.
    pub idle_closed: AtomicU64,
}

impl UserspaceRelay {
    pub fn new(settings: RelaySettings, timeouts: DataTimeouts) -> Self {
        Self {
            pool: Arc::new(PortPool::new(settings.ports)),
            settings,
            timeouts: Mutex::new(timeouts),
            guard: None,
            waiting: Arc::default(),
            live: Arc::default(),
            done: Arc::default(),
            next_id: AtomicU64::new(1),
            stats: Arc::default(),
        }
    }

    /// Admits each passive lease's client through `guard` (the XDP/TC programs on the
    /// client interface, which drop everything else to the data range). At process start
    /// with pinned maps ([`Leftovers::Adopt`]) the admissions a previous process left in
    /// this range are removed first: their listeners died with it.
    pub fn guarded_by(mut self, guard: Handle, leftovers: Leftovers) -> Self {
        if leftovers == Leftovers::Adopt {
            let mut kernel = guard.lock();
            let mut dropped = 0;
            for (peer, local) in kernel.lease_keys() {
                if *local.ip() == self.settings.public_ip
                    && self.settings.ports.contains(local.port())
                    && matches!(kernel.remove_lease(peer, local), Ok(true))
                {
                    dropped += 1;
                }
            }
            if dropped > 0 {
                info!(dropped, "removed the previous process's admit leases");
            }
        }
        self.guard = Some(guard);
        self
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    pub fn ports_in_use(&self) -> usize {
        self.pool.in_use()
    }

    fn bind(&self, ip: Ipv4Addr) -> Result<(u16, TcpListener), LeaseError> {
        let mut last_error = None;
        let mut busy = Vec::new();
        for _ in 0..BIND_ATTEMPTS {
            let Some(port) = self.pool.allocate() else {
                break;
            };
            match bind_listener(SocketAddrV4::new(ip, port)) {
                Ok(listener) => {
                    busy.into_iter().for_each(|p| self.pool.release(p));
                    return Ok((port, listener));
                }
                Err(e) => {
                    // Someone else's socket holds it right now: try another, and give
                    // this one back afterwards (it may be free next time).
                    debug!(port, error = %e, "data port unavailable");
                    busy.push(port);
                    last_error = Some(e);
                }
            }
        }
        busy.into_iter().for_each(|p| self.pool.release(p));
        if last_error.is_none() {
            return Err(LeaseError::PortsExhausted(self.pool.capacity()));
        }
        Err(LeaseError::Io(last_error.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::AddrInUse, "no bindable data port")
        })))
    }
}

/// Connects to `target`, from `source` when given (port 20 needs SO_REUSEADDR: several
/// active transfers share it, each with its own 4-tuple).
async fn connect_from(source: Option<SocketAddrV4>, target: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::V4(source))?;
    }
    socket.connect(SocketAddr::V4(target)).await
}

fn bind_listener(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    // The previous data connection on this port may linger in TIME_WAIT for a minute.
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::V4(addr).into())?;
    socket.listen(1)?;
    TcpListener::from_std(socket.into())
}

impl UserspaceRelay {
    /// Lets `client`'s packets to the public `port` through the guard (if any).
    fn admit(&self, client: Ipv4Addr, port: u16) -> Result<Option<Admitted>, BpfError> {
        let Some(kernel) = &self.guard else {
            return Ok(None);
        };
        let local = SocketAddrV4::new(self.settings.public_ip, port);
        kernel
            .lock()
            .insert_lease(&crate::bpf::Lease::admit(client, local))?;
        Ok(Some(Admitted {
            kernel: kernel.clone(),
            client,
            local,
        }))
    }

    /// Starts the task that waits for `peer` on `listener` and relays to `target`.
    fn spawn(
        &self,
        port: u16,
        listener: TcpListener,
        peer: Ipv4Addr,
        target: SocketAddrV4,
        source: Option<SocketAddrV4>,
        admitted: Option<Admitted>,
    ) -> LeaseId {
        let id = LeaseId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, cancel_tx);
        self.stats.installed.fetch_add(1, Ordering::Relaxed);
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            LeaseInfo {
                mode: if source.is_some() {
                    "active"
                } else {
                    "passive"
                }
                .into(),
                port,
                peer: peer.to_string(),
                target: target.to_string(),
                state: "waiting".into(),
                age_secs: 0.0,
                bytes_to_client: 0,
                bytes_to_origin: 0,
            },
        );
        let (done_tx, done_rx) = watch::channel(());
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, done_rx);
        let lease = Lease {
            id,
            port,
            peer,
            target,
            source,
            timeouts: *self.timeouts.lock().unwrap_or_else(|e| e.into_inner()),
            admitted,
            pool: self.pool.clone(),
            waiting: self.waiting.clone(),
            live: self.live.clone(),
            done: self.done.clone(),
            done_tx,
            started: Instant::now(),
            stats: self.stats.clone(),
        };
        let span = tracing::info_span!("lease", id = id.0, port);
        tokio::spawn(lease.run(listener, cancel_rx).instrument(span));
        id
    }
}

impl Dataplane for UserspaceRelay {
    fn origin_side_ip(&self) -> Option<Ipv4Addr> {
        Some(self.settings.origin_side_ip)
    }

    fn install(&self, request: LeaseRequest) -> Result<LeaseGrant, LeaseError> {
        // Ports whose admission another relay holds (its data connection on the port
        // outlived a reload that gave the service a new relay): held until the end, so
        // that the next attempt picks another.
        let mut skipped = Vec::new();
        let bound = loop {
            let (port, listener) = match self.bind(self.settings.bind_ip) {
                Ok(bound) => bound,
                Err(e) => break Err(e),
            };
            match self.admit(request.client, port) {
                Ok(admitted) => break Ok((port, listener, admitted)),
                Err(BpfError::LeaseTaken { .. }) if skipped.len() + 1 < BIND_ATTEMPTS => {
                    debug!(
                        port,
                        "admission taken by another relay: trying another port"
                    );
                    skipped.push(port);
                }
                Err(e) => {
                    self.pool.release(port);
                    break Err(match e {
                        BpfError::LeasesFull(_) => LeaseError::TableFull,
                        other => LeaseError::Io(io::Error::other(other.to_string())),
                    });
                }
            }
        };
        skipped.into_iter().for_each(|p| self.pool.release(p));
        let (port, listener, admitted) = bound?;
        let id = self.spawn(
            port,
            listener,
            request.client,
            request.origin,
            None,
            admitted,
        );
        Ok(LeaseGrant {
            id,
            public_port: port,
        })
    }

    fn install_active(&self, request: ActiveRequest) -> Result<ActiveGrant, LeaseError> {
        let (port, listener) = self.bind(self.settings.origin_side_ip)?;
        let source_port = if self.settings.active_port_20 { 20 } else { 0 };
        let source = SocketAddrV4::new(self.settings.bind_ip, source_port);
        // The origin connects from the origin side: nothing for the client-side guard.
        let id = self.spawn(
            port,
            listener,
            request.origin,
            request.client,
            Some(source),
            None,
        );
        Ok(ActiveGrant {
            id,
            origin_side: SocketAddrV4::new(self.settings.origin_side_ip, port),
        })
    }

    fn snapshot(&self) -> Snapshot {
        let s = &self.stats;
        Snapshot {
            installed: s.installed.load(Ordering::Relaxed),
            used: s.used.load(Ordering::Relaxed),
            expired: s.expired.load(Ordering::Relaxed),
            revoked: s.revoked.load(Ordering::Relaxed),
            active: self.live.lock().unwrap_or_else(|e| e.into_inner()).len() as u64,
            bytes_to_client: s.bytes_to_client.load(Ordering::Relaxed),
            bytes_to_origin: s.bytes_to_origin.load(Ordering::Relaxed),
            flows_closed: s.used.load(Ordering::Relaxed),
            flows_idle: s.idle_closed.load(Ordering::Relaxed),
            strangers_refused: s.strangers_refused.load(Ordering::Relaxed),
        }
    }

    fn leases(&self) -> Vec<LeaseInfo> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn data_done(&self, id: LeaseId) -> Option<DataDone> {
        let mut done = self
            .done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)?
            .clone();
        // A change: the data towards the client is passed on; an error: the task ended.
        Some(Box::pin(async move {
            let _ = done.changed().await;
        }))
    }

    fn set_timeouts(&self, timeouts: DataTimeouts) {
        *self.timeouts.lock().unwrap_or_else(|e| e.into_inner()) = timeouts;
    }

    fn revoke(&self, id: LeaseId) {
        // Dropping the sender wakes the lease task, which ends if it is still waiting.
        let removed = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if removed.is_some() {
            self.stats.revoked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    PeerToTarget,
    TargetToPeer,
}

/// Bytes copied each way, and how the copying ended.
#[derive(Debug, Default)]
struct Copied {
    peer_to_target: AtomicU64,
    target_to_peer: AtomicU64,
    /// Milliseconds since the copying began, at the last byte read or written either way.
    last_activity_ms: AtomicU64,
}

impl Copied {
    fn touch(&self, since: tokio::time::Instant) {
        self.last_activity_ms
            .store(since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved either way for `idle`.
    async fn idle_for(&self, since: tokio::time::Instant, idle: Duration) {
        loop {
            let last = since + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
            if tokio::time::Instant::now() >= last + idle {
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    }
}

/// How a relayed connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// Both ways ended with an end of stream.
    Closed,
    /// Nothing moved either way for the idle timeout.
    Idle,
}

/// Copies `from` to `to` until the end of stream, counting into `count` and noting
/// activity; returns the bytes copied.
async fn copy_one_way(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    count: &AtomicU64,
    copied: &Copied,
    since: tokio::time::Instant,
) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        copied.touch(since);
        to.write_all(&buf[..n]).await?;
        copied.touch(since);
        total += n as u64;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Copies both ways until both have ended (each end of stream passed on as a shutdown)
/// or nothing has moved either way for `idle`; signals `done` as soon as the direction
/// `to_client` has ended. An error in either direction ends both. The bytes copied are in
/// `copied` however it ended.
async fn copy_both_ways(
    peer: &mut TcpStream,
    target: &mut TcpStream,
    to_client: Direction,
    done: &watch::Sender<()>,
    idle: Duration,
    copied: &Copied,
) -> io::Result<Ending> {
    let since = tokio::time::Instant::now();
    let (mut peer_read, mut peer_write) = peer.split();
    let (mut target_read, mut target_write) = target.split();
    let peer_to_target = async {
        copy_one_way(
            &mut peer_read,
            &mut target_write,
            &copied.peer_to_target,
            copied,
            since,
        )
        .await?;
        target_write.shutdown().await?;
        if to_client == Direction::PeerToTarget {
            done.send_replace(());
        }
        io::Result::Ok(())
    };
    let target_to_peer = async {
        copy_one_way(
            &mut target_read,
            &mut peer_write,
            &copied.target_to_peer,
            copied,
            since,
        )
        .await?;
        peer_write.shutdown().await?;
        if to_client == Direction::TargetToPeer {
            done.send_replace(());
        }
        io::Result::Ok(())
    };
    tokio::select! {
        result = async { tokio::try_join!(peer_to_target, target_to_peer) } => {
            result.map(|_| Ending::Closed)
        }
        () = copied.idle_for(since, idle) => Ok(Ending::Idle),
    }
}

/// Keepalive on a relayed leg: a peer that vanished without a FIN or RST is noticed
/// (besides the idle timeout, which ends even a live but silent connection).
fn set_keepalive(stream: &TcpStream, keepalive: Duration) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(keepalive.min(Duration::from_secs(30)))
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        warn!(error = %e, "cannot enable TCP keepalive on a data connection");
    }
}

/// A client admitted through the guard to a passive lease's port: removed from the
/// guard's map when dropped (the lease is over: expired, revoked, or its connection done).
struct Admitted {
    kernel: Handle,
    client: Ipv4Addr,
    local: SocketAddrV4,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let removed = self.kernel.lock().remove_lease(self.client, self.local);
        if let Err(e) = removed {
            warn!(client = %self.client, port = self.local.port(), error = %e, "cannot remove an admit lease from the guard");
        }
    }
}

/// One lease's task: waits for `peer` on the listener, then relays to `target`.
struct Lease {
    id: LeaseId,
    port: u16,
    peer: Ipv4Addr,
    target: SocketAddrV4,
    /// Where to connect to `target` from (active mode); `None`: the kernel's choice.
    source: Option<SocketAddrV4>,
    timeouts: DataTimeouts,
    /// The peer's admission through the guard, for as long as the lease lives: packets of
    /// its data connection need it too, not only the SYN.
    admitted: Option<Admitted>,
    pool: Arc<PortPool>,
    waiting: Arc<Mutex<HashMap<LeaseId, oneshot::Sender<()>>>>,
    live: Arc<Mutex<HashMap<LeaseId, LeaseInfo>>>,
    done: Arc<Mutex<HashMap<LeaseId, watch::Receiver<()>>>>,
    /// Signalled when the data towards the client has been passed on (end of stream
    /// included); dropped with the lease, when its data connection is over or never came.
    done_tx: watch::Sender<()>,
    started: Instant,
    stats: Arc<RelayStats>,
}

impl Lease {
    fn set_live(&self, update: impl FnOnce(&mut LeaseInfo)) {
        if let Some(info) = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&self.id)
        {
            info.age_secs = self.started.elapsed().as_secs_f64();
            update(info);
        }
    }

    async fn run(mut self, listener: TcpListener, mut cancel: oneshot::Receiver<()>) {
        let client = tokio::select! {
            c = self.wait_for_client(&listener) => c,
            _ = &mut cancel => {
                debug!("lease revoked before use");
                None
            }
        };
        drop(listener);
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if let Some(client) = client {
            self.stats.used.fetch_add(1, Ordering::Relaxed);
            let peer = client
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            self.set_live(|i| {
                i.state = "carrying".into();
                i.peer = peer;
            });
            self.relay(client).await;
        }
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        // Out of the guard before the port can go to another lease.
        drop(self.admitted.take());
        self.pool.release(self.port);
    }

    /// The first connection from the lease's peer within the TTL; strangers are closed.
    async fn wait_for_client(&self, listener: &TcpListener) -> Option<TcpStream> {
        let deadline = tokio::time::Instant::now() + self.timeouts.lease_ttl;
        loop {
            match tokio::time::timeout_at(deadline, listener.accept()).await {
                Err(_) => {
                    self.stats.expired.fetch_add(1, Ordering::Relaxed);
                    info!("lease expired unused");
                    return None;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "accepting a data connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Ok((stream, peer))) => {
                    if peer.ip() == IpAddr::V4(self.peer) {
                        return Some(stream);
                    }
                    self.stats.strangers_refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, expected = %self.peer, "data connection from a stranger refused");
                }
            }
        }
    }

    async fn relay(&self, mut from_peer: TcpStream) {
        let started = Instant::now();
        let connect = connect_from(self.source, self.target);
        let mut to_target = match tokio::time::timeout(self.timeouts.connect, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(target = %self.target, error = %e, "data connection to the target failed");
                return;
            }
            Err(_) => {
                warn!(target = %self.target, "data connection to the target timed out");
                return;
            }
        };
        for leg in [&from_peer, &to_target] {
            let _ = leg.set_nodelay(true);
            set_keepalive(leg, self.timeouts.keepalive);
        }
        // Active (a source is set): the peer is the origin, so data to the client flows
        // from the peer to the target; passive: the other way.
        let to_client = if self.source.is_some() {
            Direction::PeerToTarget
        } else {
            Direction::TargetToPeer
        };
        let copied = Copied::default();
        let ending = copy_both_ways(
            &mut from_peer,
            &mut to_target,
            to_client,
            &self.done_tx,
            self.timeouts.idle,
            &copied,
        )
        .await;
        let peer_to_target = copied.peer_to_target.load(Ordering::Relaxed);
        let target_to_peer = copied.target_to_peer.load(Ordering::Relaxed);
        // Passive: the peer is the client; active (a source is set): the origin.
        let (to_origin, to_client) = if self.source.is_some() {
            (target_to_peer, peer_to_target)
        } else {
            (peer_to_target, target_to_peer)
        };
        self.stats
            .bytes_to_origin
            .fetch_add(to_origin, Ordering::Relaxed);
        self.stats
            .bytes_to_client
            .fetch_add(to_client, Ordering::Relaxed);
        let ms = started.elapsed().as_millis() as u64;
        match ending {
            Ok(Ending::Closed) => info!(to_client, to_origin, ms, "data connection done"),
            Ok(Ending::Idle) => {
                self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                info!(
                    to_client,
                    to_origin,
                    ms,
                    idle_secs = self.timeouts.idle.as_secs(),
                    "data connection idle: closed"
                );
            }
            Err(e) => {
                warn!(to_client, to_origin, ms, error = %e, "data connection ended with an error")
            }
        }
    }
}

//! Data connections relayed in userspace: a listener per lease on a data port, the first
//! connection from the lease's peer is joined to a new connection to the lease's target
//! and bytes are copied both ways (`copy`); connections from anyone else are closed at
//! once (`task`). A relayed connection silent for the data idle timeout is closed, and
//! both its legs carry TCP keepalive. The explicit fallback (`dataplane = "userspace"`)
//! and the benchmark baseline for the kernel path.
//!
//! Without a guard the relay writes nothing to any BPF map. Only when built
//! [`UserspaceRelay::guarded_by`] the kernel path's programs (loaded for it when the
//! service names a `client_interface`) does each *passive* lease also put an admit-only
//! lease for its client into the guard's map, for as long as it lives, so that the guard
//! drops everyone else's packets to the data range before the stack sees them (`admit`).
//! Active leases never do: the origin connects from the origin side.
//!
//! Requests are address-family generic; IPv6 ones are refused for now
//! ([`LeaseError::Unsupported`]).
mod admit;
mod copy;
mod task;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
};
use tracing::{Instrument as _, debug};

use self::{admit::Admitted, task::LeaseTask};
use super::{
    ActiveGrant, ActiveRequest, DataDone, DataEnd, DataTimeouts, Dataplane, EndNotices, LeaseError,
    LeaseGrant, LeaseId, LeaseInfo, LeaseRequest, Snapshot, Totals, ports::PortPool,
};
use crate::sync::LockUnpoisoned as _;
use crate::{
    bpf::{BpfError, Handle},
    config::PortRange,
};

/// Bind attempts per lease when a chosen port turns out to be taken by another socket.
const BIND_ATTEMPTS: usize = 16;

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

/// The leases' shared books: each lease task takes itself out of them when it ends.
#[derive(Default)]
struct Books {
    /// Leases still waiting for their peer: dropping the sender cancels the wait.
    waiting: Mutex<HashMap<LeaseId, oneshot::Sender<()>>>,
    /// Every lease alive (waiting or carrying), for status.
    live: Mutex<HashMap<LeaseId, LeaseInfo>>,
    /// Every lease alive: its task signals (or, ending, drops the sender) once everything
    /// towards the client has been passed on. The origin's side ends at the relay, so the
    /// origin can report a transfer complete while the relay is still connecting to the
    /// client or copying.
    done: Mutex<HashMap<LeaseId, watch::Receiver<()>>>,
    /// Who waits to hear of a lease's data connection ending (the audit log).
    ends: EndNotices,
    totals: Totals,
}

pub struct UserspaceRelay {
    settings: RelaySettings,
    /// Replaced in place on reload; each lease takes those of its start.
    timeouts: Mutex<DataTimeouts>,
    /// The kernel path's guard in front of the passive listeners, if loaded.
    guard: Option<Handle>,
    pool: Arc<PortPool>,
    books: Arc<Books>,
    next_id: AtomicU64,
}

impl UserspaceRelay {
    pub fn new(settings: RelaySettings, timeouts: DataTimeouts) -> Self {
        Self {
            pool: Arc::new(PortPool::new(settings.ports)),
            settings,
            timeouts: Mutex::new(timeouts),
            guard: None,
            books: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }

    fn bind(&self, ip: IpAddr) -> Result<(u16, TcpListener), LeaseError> {
        let mut last_error = None;
        let mut busy = Vec::new();
        for _ in 0..BIND_ATTEMPTS {
            let Some(port) = self.pool.allocate() else {
                break;
            };
            match bind_listener(SocketAddr::new(ip, port)) {
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
        match last_error {
            None => Err(LeaseError::PortsExhausted(self.pool.capacity())),
            Some(e) => Err(LeaseError::Io(e)),
        }
    }

    /// Starts the task that waits for `peer` on `listener` and relays to `target`.
    fn spawn(
        &self,
        (port, listener): (u16, TcpListener),
        peer: IpAddr,
        target: SocketAddr,
        source: Option<SocketAddr>,
        admitted: Option<Admitted>,
    ) -> LeaseId {
        let id = LeaseId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.books.waiting.lock_unpoisoned().insert(id, cancel_tx);
        Totals::add(&self.books.totals.installed, 1);
        self.books.live.lock_unpoisoned().insert(
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
        self.books.done.lock_unpoisoned().insert(id, done_rx);
        let task = LeaseTask {
            id,
            port,
            peer,
            target,
            source,
            timeouts: *self.timeouts.lock_unpoisoned(),
            admitted,
            pool: self.pool.clone(),
            books: self.books.clone(),
            done_tx,
            started: Instant::now(),
        };
        let span = tracing::info_span!("lease", id = id.0, port);
        tokio::spawn(task.run(listener, cancel_rx).instrument(span));
        id
    }
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_nonblocking(true)?;
    // The previous data connection on this port may linger in TIME_WAIT for a minute.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1)?;
    TcpListener::from_std(socket.into())
}

impl Dataplane for UserspaceRelay {
    fn origin_side_ip(&self) -> Option<IpAddr> {
        Some(self.settings.origin_side_ip.into())
    }

    fn install(&self, request: LeaseRequest) -> Result<LeaseGrant, LeaseError> {
        let (client, origin) = request.ipv4()?;
        // Ports whose admission another relay holds (its data connection on the port
        // outlived a reload that gave the service a new relay): held until the end, so
        // that the next attempt picks another.
        let mut skipped = Vec::new();
        let bound = loop {
            let (port, listener) = match self.bind(self.settings.bind_ip.into()) {
                Ok(bound) => bound,
                Err(e) => break Err(e),
            };
            match self.admit(client, port) {
                Ok(admitted) => break Ok(((port, listener), admitted)),
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
        let (bound, admitted) = bound?;
        let public_port = bound.0;
        let id = self.spawn(bound, client.into(), origin.into(), None, admitted);
        Ok(LeaseGrant { id, public_port })
    }

    fn install_active(&self, request: ActiveRequest) -> Result<ActiveGrant, LeaseError> {
        let (origin, client) = request.ipv4()?;
        let origin_side_ip = IpAddr::V4(self.settings.origin_side_ip);
        let bound = self.bind(origin_side_ip)?;
        let origin_side = SocketAddr::new(origin_side_ip, bound.0);
        let source_port = if self.settings.active_port_20 { 20 } else { 0 };
        let source = SocketAddr::new(self.settings.bind_ip.into(), source_port);
        // The origin connects from the origin side: nothing for the client-side guard.
        let id = self.spawn(bound, origin.into(), client.into(), Some(source), None);
        Ok(ActiveGrant { id, origin_side })
    }

    fn snapshot(&self) -> Snapshot {
        let active = self.books.live.lock_unpoisoned().len() as u64;
        self.books.totals.snapshot(active)
    }

    fn leases(&self) -> Vec<LeaseInfo> {
        self.books
            .live
            .lock_unpoisoned()
            .values()
            .cloned()
            .collect()
    }

    fn data_done(&self, id: LeaseId) -> Option<DataDone> {
        let mut done = self.books.done.lock_unpoisoned().get(&id)?.clone();
        // A change: the data towards the client is passed on; an error: the task ended.
        Some(Box::pin(async move {
            let _ = done.changed().await;
        }))
    }

    fn data_end(&self, id: LeaseId) -> Option<DataEnd> {
        Some(self.books.ends.watch(id))
    }

    fn set_timeouts(&self, timeouts: DataTimeouts) {
        *self.timeouts.lock_unpoisoned() = timeouts;
    }

    fn revoke(&self, id: LeaseId) {
        // Dropping the sender wakes the lease task, which ends if it is still waiting.
        if self.books.waiting.lock_unpoisoned().remove(&id).is_some() {
            Totals::add(&self.books.totals.revoked, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddrV4, time::Duration};

    use super::*;

    #[test]
    fn ipv6_requests_are_refused_before_any_port_is_taken() {
        let relay = UserspaceRelay::new(
            RelaySettings {
                bind_ip: Ipv4Addr::LOCALHOST,
                origin_side_ip: Ipv4Addr::LOCALHOST,
                active_port_20: false,
                ports: PortRange {
                    first: 40000,
                    last: 40009,
                },
                public_ip: Ipv4Addr::LOCALHOST,
            },
            DataTimeouts {
                lease_ttl: Duration::from_secs(30),
                idle: Duration::from_secs(900),
                connect: Duration::from_secs(10),
                keepalive: Duration::from_secs(60),
            },
        );
        let v4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 50000);
        let v6: SocketAddr = "[2001:db8::2]:50000".parse().unwrap();
        let refusals = [
            relay
                .install(LeaseRequest {
                    client: v6.ip(),
                    origin: v4.into(),
                })
                .map(|g| g.public_port),
            relay
                .install_active(ActiveRequest {
                    origin: (*v4.ip()).into(),
                    client: v6,
                })
                .map(|g| g.origin_side.port()),
        ];
        for refusal in refusals {
            let e = refusal.unwrap_err();
            assert_eq!(
                (e.metric_reason(), e.to_string()),
                (
                    "unsupported",
                    "IPv6 data connections are not supported yet".to_owned()
                )
            );
        }
        assert_eq!(
            (relay.pool.in_use(), relay.snapshot()),
            (0, Snapshot::default())
        );
    }
}

//! Data connections relayed in userspace: a listener per lease on the public data port,
//! the first connection from the lease's client is joined to a new connection to the
//! origin's data port and bytes are copied both ways. Connections from anyone else are
//! closed at once. The explicit fallback (`dataplane = "userspace"`) and the benchmark
//! baseline for the kernel path.
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
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tracing::{Instrument as _, debug, info, warn};

use super::{Dataplane, LeaseError, LeaseGrant, LeaseId, LeaseRequest, ports::PortPool};
use crate::config::PortRange;

/// Bind attempts per lease when a chosen port turns out to be taken by another socket.
const BIND_ATTEMPTS: usize = 16;

#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// Local address the data listeners bind to (the service's listen address).
    pub bind_ip: Ipv4Addr,
    pub ports: PortRange,
    /// How long a lease waits for its client.
    pub lease_ttl: Duration,
    /// How long to wait for the origin to accept the data connection.
    pub connect_timeout: Duration,
}

pub struct UserspaceRelay {
    settings: RelaySettings,
    pool: Arc<PortPool>,
    /// Leases still waiting for their client: dropping the sender cancels the wait.
    waiting: Arc<Mutex<HashMap<LeaseId, oneshot::Sender<()>>>>,
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
}

impl UserspaceRelay {
    pub fn new(settings: RelaySettings) -> Self {
        Self {
            pool: Arc::new(PortPool::new(settings.ports)),
            settings,
            waiting: Arc::default(),
            next_id: AtomicU64::new(1),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    pub fn ports_in_use(&self) -> usize {
        self.pool.in_use()
    }

    fn bind(&self) -> Result<(u16, TcpListener), LeaseError> {
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            let Some(port) = self.pool.allocate() else {
                return Err(LeaseError::PortsExhausted(self.pool.capacity()));
            };
            match bind_listener(SocketAddrV4::new(self.settings.bind_ip, port)) {
                Ok(listener) => return Ok((port, listener)),
                Err(e) => {
                    // Someone else's socket holds it: keep it reserved, try another.
                    debug!(port, error = %e, "data port unavailable");
                    last_error = Some(e);
                }
            }
        }
        Err(LeaseError::Io(last_error.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::AddrInUse, "no bindable data port")
        })))
    }
}

fn bind_listener(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V4(addr).into())?;
    socket.listen(1)?;
    TcpListener::from_std(socket.into())
}

impl Dataplane for UserspaceRelay {
    fn install(&self, request: LeaseRequest) -> Result<LeaseGrant, LeaseError> {
        let (port, listener) = self.bind()?;
        let id = LeaseId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, cancel_tx);
        self.stats.installed.fetch_add(1, Ordering::Relaxed);
        let lease = Lease {
            id,
            port,
            request,
            settings: self.settings.clone(),
            pool: self.pool.clone(),
            waiting: self.waiting.clone(),
            stats: self.stats.clone(),
        };
        let span = tracing::info_span!("lease", id = id.0, port);
        tokio::spawn(lease.run(listener, cancel_rx).instrument(span));
        Ok(LeaseGrant {
            id,
            public_port: port,
        })
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

struct Lease {
    id: LeaseId,
    port: u16,
    request: LeaseRequest,
    settings: RelaySettings,
    pool: Arc<PortPool>,
    waiting: Arc<Mutex<HashMap<LeaseId, oneshot::Sender<()>>>>,
    stats: Arc<RelayStats>,
}

impl Lease {
    async fn run(self, listener: TcpListener, mut cancel: oneshot::Receiver<()>) {
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
            self.relay(client).await;
        }
        self.pool.release(self.port);
    }

    /// The first connection from the lease's client within the TTL; strangers are closed.
    async fn wait_for_client(&self, listener: &TcpListener) -> Option<TcpStream> {
        let deadline = tokio::time::Instant::now() + self.settings.lease_ttl;
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
                    if peer.ip() == IpAddr::V4(self.request.client) {
                        return Some(stream);
                    }
                    self.stats.strangers_refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, client = %self.request.client, "data connection from a stranger refused");
                }
            }
        }
    }

    async fn relay(&self, mut client: TcpStream) {
        let started = Instant::now();
        let connect = TcpStream::connect(self.request.origin);
        let mut origin = match tokio::time::timeout(self.settings.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(origin = %self.request.origin, error = %e, "origin data connection failed");
                return;
            }
            Err(_) => {
                warn!(origin = %self.request.origin, "origin data connection timed out");
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = origin.set_nodelay(true);
        match tokio::io::copy_bidirectional(&mut client, &mut origin).await {
            Ok((to_origin, to_client)) => {
                self.stats
                    .bytes_to_origin
                    .fetch_add(to_origin, Ordering::Relaxed);
                self.stats
                    .bytes_to_client
                    .fetch_add(to_client, Ordering::Relaxed);
                info!(
                    to_client,
                    to_origin,
                    ms = started.elapsed().as_millis() as u64,
                    "data connection done"
                );
            }
            Err(e) => warn!(error = %e, "data connection ended with an error"),
        }
    }
}

//! One relayed lease's task: waits for the lease's peer on its listener (strangers are
//! closed, the TTL ends the wait, a revoke cancels it), connects to the target, copies
//! both ways, and on its end takes the lease out of the relay's books, its admission out
//! of the guard, and gives its port back.
use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
};
use tracing::{debug, info, warn};

use super::{
    Books,
    admit::Admitted,
    copy::{Copied, Direction, Ending, copy_both_ways},
};
use crate::dataplane::{DataBytes, DataTimeouts, LeaseId, LeaseInfo, Totals, ports::PortPool};
use crate::sync::LockUnpoisoned as _;

/// One lease's task: waits for `peer` on the listener, then relays to `target`.
pub(super) struct LeaseTask {
    pub id: LeaseId,
    pub port: u16,
    pub peer: std::net::IpAddr,
    pub target: SocketAddr,
    /// Where to connect to `target` from (active mode); `None`: the kernel's choice.
    pub source: Option<SocketAddr>,
    pub timeouts: DataTimeouts,
    /// The peer's admission through the guard, for as long as the lease lives: packets of
    /// its data connection need it too, not only the SYN.
    pub admitted: Option<Admitted>,
    pub pool: Arc<PortPool>,
    pub books: Arc<Books>,
    /// Signalled when the data towards the client has been passed on (end of stream
    /// included); dropped with the lease, when its data connection is over or never came.
    pub done_tx: watch::Sender<()>,
    pub started: Instant,
}

/// Connects to `target`, from `source` when given (port 20 needs SO_REUSEADDR: several
/// active transfers share it, each with its own 4-tuple).
async fn connect_from(source: Option<SocketAddr>, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(source) = source {
        socket.set_reuseaddr(true)?;
        socket.bind(source)?;
    }
    socket.connect(target).await
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

impl LeaseTask {
    fn set_live(&self, update: impl FnOnce(&mut LeaseInfo)) {
        if let Some(info) = self.books.live.lock_unpoisoned().get_mut(&self.id) {
            info.age_secs = self.started.elapsed().as_secs_f64();
            update(info);
        }
    }

    pub async fn run(mut self, listener: TcpListener, mut cancel: oneshot::Receiver<()>) {
        let client = tokio::select! {
            c = self.wait_for_client(&listener) => c,
            _ = &mut cancel => {
                debug!("lease revoked before use");
                None
            }
        };
        drop(listener);
        self.books.waiting.lock_unpoisoned().remove(&self.id);
        if let Some(client) = client {
            // Every claimed lease counts as a closed flow (the relay's totals as before).
            Totals::add(&self.books.totals.used, 1);
            Totals::add(&self.books.totals.flows_closed, 1);
            let peer = client
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            self.set_live(|i| {
                i.state = "carrying".into();
                i.peer = peer;
            });
            let bytes = self.relay(client).await;
            self.books.ends.ended(self.id, bytes);
        }
        self.books.ends.unused(self.id);
        self.books.live.lock_unpoisoned().remove(&self.id);
        self.books.done.lock_unpoisoned().remove(&self.id);
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
                    Totals::add(&self.books.totals.expired, 1);
                    info!("lease expired unused");
                    return None;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "accepting a data connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Ok((stream, peer))) => {
                    if peer.ip() == self.peer {
                        return Some(stream);
                    }
                    Totals::add(&self.books.totals.strangers_refused, 1);
                    warn!(%peer, expected = %self.peer, "data connection from a stranger refused");
                }
            }
        }
    }

    /// Carries the data connection to its end; the bytes it carried.
    async fn relay(&self, mut from_peer: TcpStream) -> DataBytes {
        let started = Instant::now();
        let connect = connect_from(self.source, self.target);
        let mut to_target = match tokio::time::timeout(self.timeouts.connect, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(target = %self.target, error = %e, "data connection to the target failed");
                return DataBytes::default();
            }
            Err(_) => {
                warn!(target = %self.target, "data connection to the target timed out");
                return DataBytes::default();
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
        let totals = &self.books.totals;
        Totals::add(&totals.bytes_to_origin, to_origin);
        Totals::add(&totals.bytes_to_client, to_client);
        let ms = started.elapsed().as_millis() as u64;
        match ending {
            Ok(Ending::Closed) => info!(to_client, to_origin, ms, "data connection done"),
            Ok(Ending::Idle) => {
                Totals::add(&totals.flows_idle, 1);
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
        DataBytes {
            to_client,
            to_origin,
        }
    }
}

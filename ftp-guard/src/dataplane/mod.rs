//! The boundary between the control proxy and whatever carries data connections.
//!
//! The proxy asks for a lease when a passive reply arrives and revokes it when a new
//! passive request or the end of the session makes it stale. An implementation enforces
//! the lease rules: only `client` may use it, once, within its TTL.
//! - [`kernel::KernelDataplane`]: leases in BPF maps, NAT and forwarding in XDP/TC (default),
//!   its lease lifecycle kept apart from the map I/O in [`lifecycle`];
//! - [`userspace::UserspaceRelay`]: accepts and copies in userspace (fallback, baseline).
//!
//! The types here are address-family generic; both implementations carry IPv4 only for
//! now and refuse an IPv6 request with [`LeaseError::Unsupported`].
pub mod ends;
pub mod kernel;
pub mod lifecycle;
pub mod ports;
pub mod userspace;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

pub use ends::{DataBytes, DataEnd, EndNotices};

/// Passive mode: one data connection from `client` to a public port, carried to `origin`
/// (the address and port from the origin's 227 reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    pub client: IpAddr,
    pub origin: SocketAddr,
}

/// (`ip`, `socket`) when both are IPv4, the only family carried yet.
fn both_ipv4(ip: IpAddr, socket: SocketAddr) -> Result<(Ipv4Addr, SocketAddrV4), LeaseError> {
    match (ip, socket) {
        (IpAddr::V4(ip), SocketAddr::V4(socket)) => Ok((ip, socket)),
        _ => Err(LeaseError::IPV6),
    }
}

impl LeaseRequest {
    /// (client, origin) when both are IPv4.
    pub fn ipv4(&self) -> Result<(Ipv4Addr, SocketAddrV4), LeaseError> {
        both_ipv4(self.client, self.origin)
    }
}

/// Active mode: one data connection from the origin (`origin`, its address) to a port on
/// the gateway's origin-side address, carried to `client` (the address from PORT/EPRT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveRequest {
    pub origin: IpAddr,
    pub client: SocketAddr,
}

impl ActiveRequest {
    /// (origin, client) when both are IPv4.
    pub fn ipv4(&self) -> Result<(Ipv4Addr, SocketAddrV4), LeaseError> {
        both_ipv4(self.origin, self.client)
    }
}

/// An installed active lease: the origin is told to connect to `origin_side`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveGrant {
    pub id: LeaseId,
    pub origin_side: SocketAddr,
}

/// Identifies an installed lease for [`Dataplane::revoke`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub u64);

/// An installed lease: the client may connect to `public_port` on the public address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: LeaseId,
    pub public_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("all {0} data ports are leased")]
    PortsExhausted(usize),
    #[error("the lease table is full")]
    TableFull,
    #[error("another lease already carries a connection to {0}")]
    Conflict(SocketAddr),
    /// A request this dataplane cannot carry yet.
    #[error("{0} are not supported yet")]
    Unsupported(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl LeaseError {
    /// An IPv6 client, origin or address in a request.
    pub const IPV6: LeaseError = LeaseError::Unsupported("IPv6 data connections");

    /// The `reason` label of the `leases_failed` metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            LeaseError::PortsExhausted(_) => "exhausted",
            LeaseError::TableFull => "table_full",
            LeaseError::Conflict(_) => "conflict",
            LeaseError::Unsupported(_) => "unsupported",
            LeaseError::Io(_) => "error",
        }
    }
}

/// Totals of a dataplane since start, plus the leases alive now (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub installed: u64,
    pub used: u64,
    pub expired: u64,
    pub revoked: u64,
    pub active: u64,
    pub bytes_to_client: u64,
    pub bytes_to_origin: u64,
    pub flows_closed: u64,
    pub flows_idle: u64,
    pub strangers_refused: u64,
}

/// The totals of a [`Snapshot`], counted as they happen (by many tasks at once in the
/// relay).
#[derive(Debug, Default)]
pub struct Totals {
    pub installed: AtomicU64,
    pub used: AtomicU64,
    pub expired: AtomicU64,
    pub revoked: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub bytes_to_origin: AtomicU64,
    pub flows_closed: AtomicU64,
    pub flows_idle: AtomicU64,
    pub strangers_refused: AtomicU64,
}

impl Totals {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The totals so far, with `active` leases alive now.
    pub fn snapshot(&self, active: u64) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            installed: get(&self.installed),
            used: get(&self.used),
            expired: get(&self.expired),
            revoked: get(&self.revoked),
            active,
            bytes_to_client: get(&self.bytes_to_client),
            bytes_to_origin: get(&self.bytes_to_origin),
            flows_closed: get(&self.flows_closed),
            flows_idle: get(&self.flows_idle),
            strangers_refused: get(&self.strangers_refused),
        }
    }
}

/// One live lease, for `ftp-guard status`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LeaseInfo {
    /// passive or active.
    pub mode: String,
    /// The gateway port the peer connects to.
    pub port: u16,
    /// Who may connect (passive: the client; active: the origin), with its port once
    /// connected.
    pub peer: String,
    /// Where the connection is carried.
    pub target: String,
    /// waiting (for the peer) or carrying (a data connection).
    pub state: String,
    pub age_secs: f64,
    pub bytes_to_client: u64,
    pub bytes_to_origin: u64,
}

/// The timeouts of a service's data connections: on reload a running dataplane takes new
/// ones in place ([`Dataplane::set_timeouts`]), so its port pool, and the leases waiting in
/// it, live on. Leases installed from then on use them; so do the idle checks of
/// connections under way (the kernel path's sweeper; the relay's own, from its next lease).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataTimeouts {
    /// How long a lease waits for its peer.
    pub lease_ttl: Duration,
    /// A data connection silent this long (both ways) is closed.
    pub idle: Duration,
    /// How long to wait for the origin to accept a relayed data connection.
    pub connect: Duration,
    /// Seconds of silence before TCP keepalive probes start on relayed legs.
    pub keepalive: Duration,
}

impl DataTimeouts {
    pub fn of(service: &crate::config::Service) -> Self {
        Self {
            lease_ttl: service.lease_ttl(),
            idle: service.data_idle_timeout(),
            connect: service.connect_timeout(),
            keepalive: service.keepalive(),
        }
    }
}

/// Whether a new dataplane takes over what it finds of its ranges in the kernel's maps
/// (leases, flows, the relay's admissions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leftovers {
    /// Process start with pinned maps: they are a previous process's.
    Adopt,
    /// A reload (or no pins): they belong to dataplanes still running; never touched.
    Leave,
}

/// Resolves when a lease's data connection is over (see [`Dataplane::data_done`]).
pub type DataDone = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Installs and revokes data-connection leases. Calls are cheap and never block on the
/// network; implementations that need tasks spawn them on the current tokio runtime.
pub trait Dataplane: Send + Sync {
    fn install(&self, request: LeaseRequest) -> Result<LeaseGrant, LeaseError>;
    fn install_active(&self, request: ActiveRequest) -> Result<ActiveGrant, LeaseError>;
    /// Revokes a lease not yet used; a data connection already under way goes on to its end.
    fn revoke(&self, id: LeaseId);
    /// Totals, for metrics.
    fn snapshot(&self) -> Snapshot;
    /// The leases alive now, for status.
    fn leases(&self) -> Vec<LeaseInfo>;
    /// What to wait for before the client may hear that a transfer over lease `id` is
    /// complete: `Some` while the lease may still carry data the client has not received.
    /// A dataplane that forwards packets as they come (the kernel path: the origin's data
    /// connection reaches the client end to end) never holds any back: `None`, the default.
    fn data_done(&self, id: LeaseId) -> Option<DataDone> {
        let _ = id;
        None
    }
    /// Hears of the end of lease `id`'s data connection, with its bytes (for the audit
    /// log). Asked right after the install, before any connection can come. `None`: this
    /// dataplane does not tell (the default).
    fn data_end(&self, id: LeaseId) -> Option<DataEnd> {
        let _ = id;
        None
    }
    /// Takes new timeouts in place (a reload that changed only timeouts). A dataplane
    /// without any keeps the default, which ignores them.
    fn set_timeouts(&self, timeouts: DataTimeouts) {
        let _ = timeouts;
    }
    /// The gateway's address that data connections to and from the origin use, if the
    /// origin sees one: it must be hidden from clients like the origin's own.
    fn origin_side_ip(&self) -> Option<IpAddr> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_ipv4_or_unsupported() {
        let v4 = Ipv4Addr::new(203, 0, 113, 2);
        let origin = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 50000);
        let v6: SocketAddr = "[2001:db8::2]:50000".parse().unwrap();
        let passive = LeaseRequest {
            client: v4.into(),
            origin: origin.into(),
        };
        assert_eq!(passive.ipv4().unwrap(), (v4, origin));
        let active = ActiveRequest {
            origin: (*origin.ip()).into(),
            client: SocketAddrV4::new(v4, 40000).into(),
        };
        assert_eq!(
            active.ipv4().unwrap(),
            (*origin.ip(), SocketAddrV4::new(v4, 40000))
        );
        for err in [
            LeaseRequest {
                client: v6.ip(),
                origin: origin.into(),
            }
            .ipv4()
            .unwrap_err(),
            LeaseRequest {
                client: v4.into(),
                origin: v6,
            }
            .ipv4()
            .unwrap_err(),
            ActiveRequest {
                origin: v6.ip(),
                client: SocketAddrV4::new(v4, 40000).into(),
            }
            .ipv4()
            .unwrap_err(),
            ActiveRequest {
                origin: v4.into(),
                client: v6,
            }
            .ipv4()
            .unwrap_err(),
        ] {
            assert_eq!(
                (err.metric_reason(), err.to_string().as_str()),
                ("unsupported", "IPv6 data connections are not supported yet")
            );
        }
    }

    #[test]
    fn totals_snapshot_every_counter() {
        let totals = Totals::default();
        for (i, c) in [
            &totals.installed,
            &totals.used,
            &totals.expired,
            &totals.revoked,
            &totals.bytes_to_client,
            &totals.bytes_to_origin,
            &totals.flows_closed,
            &totals.flows_idle,
            &totals.strangers_refused,
        ]
        .into_iter()
        .enumerate()
        {
            Totals::add(c, i as u64 + 1);
        }
        assert_eq!(
            totals.snapshot(10),
            Snapshot {
                installed: 1,
                used: 2,
                expired: 3,
                revoked: 4,
                active: 10,
                bytes_to_client: 5,
                bytes_to_origin: 6,
                flows_closed: 7,
                flows_idle: 8,
                strangers_refused: 9,
            }
        );
    }
}

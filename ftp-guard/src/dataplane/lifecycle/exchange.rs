//! What the lease table and its driver exchange: a candidate lease to write to the map,
//! what to read before a step ([`Look`]) and what was found ([`Observed`]), and what a
//! step asks for ([`Step`]: entries to delete, [`Report`]s to log).
use std::net::{Ipv4Addr, SocketAddrV4};

use super::Tracked;
use crate::{
    bpf::{FlowState, FlowTuple},
    dataplane::{DataBytes, LeaseError},
};

/// A lease about to be installed: its ports are held. The driver writes it to the lease
/// map, then [`LeaseTable::commit`](super::LeaseTable::commit)s it or [`LeaseTable::give_back`](super::LeaseTable::give_back)s it.
#[derive(Debug, PartialEq)]
pub struct Candidate(pub(super) Tracked);

impl Candidate {
    pub fn lease(&self) -> &Tracked {
        &self.0
    }
}

/// Why no candidate.
#[derive(Debug)]
pub enum Refused {
    /// The peer holds every port with waiting leases: settle their claims, then retry.
    PeerHoldsAll,
    Error(LeaseError),
}

/// How the driver probes a waiting lease's entry in the lease map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Is it still there?
    Check,
    /// Delete it (withdrawal: revoked or past its deadline); was it there?
    Remove,
}

/// What the driver reads in the kernel's maps for one lease, in this order, before
/// [`LeaseTable::step`](super::LeaseTable::step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Look {
    /// Waiting: the lease's key (peer, local) and what to do with it.
    pub lease: Option<(Ipv4Addr, SocketAddrV4, Probe)>,
    /// The target's direction (read after the probe).
    pub pair: FlowTuple,
    /// Carrying: the peer's direction.
    pub forward: Option<FlowTuple>,
}

/// What the probe of [`Look::lease`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseSeen {
    /// Not probed (not waiting).
    NotLooked,
    /// Still in the map (checked).
    InMap,
    /// Was in the map and is deleted now.
    Removed,
    /// Not in the map: claimed, or removed by someone else.
    Absent,
}

/// What the driver found for a [`Look`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    pub lease: LeaseSeen,
    pub pair: Option<FlowState>,
    pub forward: Option<FlowState>,
    /// The kernel's monotonic clock now (the clock of the flows' `last_seen_ns`).
    pub clock_ns: u64,
}

/// What the driver is to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// A lease was claimed: its data connection started in the kernel.
    Started {
        mode: &'static str,
        from: SocketAddrV4,
        to: SocketAddrV4,
        port: u16,
    },
    /// A lease was deleted unused.
    Unused { port: u16, revoked: bool },
    /// The tentative flow of a handshake that never completed was deleted with its lease.
    Unfinished { from: SocketAddrV4, port: u16 },
    /// A data connection is over and forgotten.
    Done {
        mode: &'static str,
        from: SocketAddrV4,
        to: SocketAddrV4,
        port: u16,
        bytes_to_client: u64,
        bytes_to_origin: u64,
        /// What the connection carried (IP bytes above include the headers).
        payload: DataBytes,
        packets: u64,
        idle: bool,
    },
}

/// What one step asks of the driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Flow entries to delete, in order.
    pub remove_flows: Vec<FlowTuple>,
    pub reports: Vec<Report>,
    /// Look at the lease again at once: it changed stage, and the new one needs other reads.
    pub again: bool,
}

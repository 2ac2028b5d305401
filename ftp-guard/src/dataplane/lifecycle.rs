//! The kernel path's lease lifecycle, without I/O: the leases one dataplane tracks, where
//! each is in its life, the ports they hold, and what the driver (`kernel.rs`) must read
//! from and delete in the kernel's maps next. Like `ftp::session` it takes observations
//! and `now` in and hands back what to do; it never touches a map nor reads a clock.
//!
//! A lease's life:
//! - **waiting**: in the kernel's lease map, its public port (passive) or origin-side
//!   port (active) held against its peer. The peer's completed handshake claims it (the
//!   kernel deletes it; an event or the next look tells); at its deadline or when revoked
//!   the driver deletes it: withdrawn.
//! - **withdrawn**: deleted unclaimed; its port is free. Watched for
//!   [`TENTATIVE_LINGER`]: a SYN that read the lease just before it went may leave a
//!   tentative flow (removed), or even complete its handshake (then carried).
//! - **carrying**: claimed; its port is free for its peer again. Once its connection is
//!   over both ways (FINs acknowledged, or a RST) for [`CLOSE_GRACE`], or idle for the
//!   idle timeout, its flow entries are deleted, its bytes reported, and it is forgotten.
//!
//! A passive lease's NAT port is given back when its connection closes (it rests from
//! then: the origin's TIME_WAIT) or when the lease is forgotten. Each lease is looked at
//! when something may be due: its deadline, the end of its close grace, or the periodic
//! looks below, which catch what a full event ring lost.
//!
//! Here: the table and its operations; `stages`: the transitions of one lease; `exchange`:
//! the values passed to and from the driver.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

pub use self::exchange::{Candidate, LeaseSeen, Look, Observed, Probe, Refused, Report, Step};
use super::{DataTimeouts, LeaseError, LeaseId, LeaseInfo, Snapshot, Totals, ports};
use crate::{
    bpf::{Event, EventKind, FlowState, FlowTuple},
    config::PortRange,
};

/// How often the sweeper runs (claims and closes arrive as events).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A waiting lease is looked at in the kernel this often (in case its claim's event was
/// lost), besides at its deadline.
const LOOK_WAITING: Duration = Duration::from_secs(2);
/// A carried connection is looked at this often: idle timeout, a lost FIN/RST event.
const LOOK_CARRYING: Duration = Duration::from_secs(10);
/// How long a closed flow keeps its entries: a retransmitted last ACK may still pass, and
/// a peer whose SYN was answered by a stale connection at the target resets it
/// and sends the SYN again (after 1 s, then 2 s more), which the flow must still carry.
pub const CLOSE_GRACE: Duration = Duration::from_secs(4);
/// How long a withdrawn (expired or revoked) lease is still watched: a SYN that read the
/// lease just before it went may create its tentative flow just after (removed when
/// seen), or even complete its handshake (then carried). Generous against the microseconds
/// that race takes; it only delays giving back the NAT port.
pub const TENTATIVE_LINGER: Duration = Duration::from_secs(5);

/// The addresses and ports one kernel dataplane hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// Where clients connect (passive) and active connections reach them from.
    pub public_ip: Ipv4Addr,
    /// The gateway's origin-side address: passive connections reach the origin from it,
    /// the origin connects to it (active).
    pub nat_ip: Ipv4Addr,
    pub ports: PortRange,
    /// Active mode: data connections reach clients from public port 20.
    pub active_port_20: bool,
}

/// Where a lease is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// In the kernel's lease map, waiting for the peer's connection to complete its
    /// handshake (a tentative one may exist); its port is held.
    Waiting,
    /// Claimed by a connection from the peer's `peer_port` (its handshake completed),
    /// carried by the kernel.
    Carrying { peer_port: u16 },
    /// Deleted unclaimed (revoked or expired) at `since`; watched for a tentative flow
    /// left on it until [`TENTATIVE_LINGER`] has passed. Its port is free already.
    Withdrawn { since: Instant },
}

/// A lease as userspace follows it. The data connection arrives from `peer` at `local`
/// and is NATed to `target` from `source`:
/// passive: client → public:port ⇒ nat:nat_port → origin; active: origin → nat:port ⇒
/// public:(port|20) → client.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracked {
    pub peer: Ipv4Addr,
    pub local: SocketAddrV4,
    pub target: SocketAddrV4,
    pub source: SocketAddrV4,
    pub active: bool,
    deadline: Instant,
    revoked: bool,
    installed: Instant,
    pub stage: Stage,
    /// When the flow was first seen closed.
    closed_since: Option<Instant>,
    /// The flow entries as last read (forward, reverse): the final byte counts when the
    /// kernel has already let a new connection take the entries over.
    last_seen: (Option<FlowState>, Option<FlowState>),
    /// Its NAT pair was given back (at the close: it rests from then on, and a claim may
    /// take over the pair's finished entries).
    nat_released: bool,
    /// Seen neither in the lease map nor as a flow once: a claim may have been half done
    /// (the SYN deletes the lease, then inserts the flows). Forgotten if so again.
    vanished: bool,
    /// When to look at it next (events and revokes look at once).
    next_look: Instant,
}

impl Tracked {
    fn new(
        (peer, local): (Ipv4Addr, SocketAddrV4),
        (target, source): FlowTuple,
        active: bool,
        ttl: Duration,
        now: Instant,
    ) -> Self {
        Self {
            peer,
            local,
            target,
            source,
            active,
            deadline: now + ttl,
            revoked: false,
            installed: now,
            stage: Stage::Waiting,
            closed_since: None,
            last_seen: (None, None),
            nat_released: false,
            vanished: false,
            next_look: now,
        }
    }

    fn mode(&self) -> &'static str {
        if self.active { "active" } else { "passive" }
    }

    /// The key of the target's direction, which every event about the lease names.
    fn pair(&self) -> FlowTuple {
        (self.target, self.source)
    }

    /// The keys of the carried connection's entries (peer's direction, target's).
    pub fn carried_keys(&self) -> Option<(FlowTuple, FlowTuple)> {
        match self.stage {
            Stage::Carrying { peer_port } => Some((
                (SocketAddrV4::new(self.peer, peer_port), self.local),
                self.pair(),
            )),
            _ => None,
        }
    }

    /// The pair's entry when it belongs to a connection started under this lease.
    fn ours(&self, pair: Option<FlowState>) -> Option<FlowState> {
        pair.filter(|f| *f.reverse.0.ip() == self.peer && f.reverse.1 == self.local)
    }

    /// The connection's (forward, reverse) entries as (towards the origin, towards the
    /// client). Forward is peer → target: client → origin in passive mode, the reverse in
    /// active.
    fn up_down<T>(&self, (forward, reverse): (T, T)) -> (T, T) {
        if self.active {
            (reverse, forward)
        } else {
            (forward, reverse)
        }
    }

    /// What `ftp-guard status` shows of it, with its entries' states as read now.
    pub fn info(
        &self,
        (forward, reverse): (Option<FlowState>, Option<FlowState>),
        now: Instant,
    ) -> LeaseInfo {
        let (peer, state) = match self.stage {
            Stage::Carrying { peer_port } => (
                SocketAddrV4::new(self.peer, peer_port).to_string(),
                "carrying",
            ),
            _ => (self.peer.to_string(), "waiting"),
        };
        let (up, down) = self.up_down((forward, reverse));
        LeaseInfo {
            mode: self.mode().into(),
            port: self.local.port(),
            peer,
            target: self.target.to_string(),
            state: state.into(),
            age_secs: now.duration_since(self.installed).as_secs_f64(),
            bytes_to_client: down.map_or(0, |f| f.bytes),
            bytes_to_origin: up.map_or(0, |f| f.bytes),
        }
    }
}

/// The ports and totals the leases share, apart from the leases themselves so that a
/// lease can be changed while they are.
struct Shared {
    ports: ports::PeerPorts,
    nat_ports: ports::NatPorts,
    totals: Totals,
}

/// The leases one kernel dataplane tracks, indexed by id and by the (target, source) pair
/// of their connection — the key of the target's direction, which every event about it
/// names.
pub struct LeaseTable {
    addresses: Addresses,
    timeouts: DataTimeouts,
    leases: HashMap<LeaseId, Tracked>,
    by_pair: HashMap<FlowTuple, LeaseId>,
    shared: Shared,
    next_id: u64,
}

impl LeaseTable {
    pub fn new(addresses: Addresses, timeouts: DataTimeouts) -> Self {
        Self {
            shared: Shared {
                ports: ports::PeerPorts::new(addresses.ports),
                nat_ports: ports::NatPorts::new(addresses.ports),
                totals: Totals::default(),
            },
            addresses,
            timeouts,
            leases: HashMap::new(),
            by_pair: HashMap::new(),
            next_id: 1,
        }
    }

    pub fn timeouts(&self) -> DataTimeouts {
        self.timeouts
    }

    /// New timeouts: for leases installed from now on, and for idle checks of connections
    /// under way.
    pub fn set_timeouts(&mut self, timeouts: DataTimeouts) {
        self.timeouts = timeouts;
    }

    /// Leases waiting or carrying.
    pub fn active(&self) -> usize {
        self.live().count()
    }

    /// The leases waiting or carrying (not the withdrawn ones still watched).
    pub fn live(&self) -> impl Iterator<Item = &Tracked> {
        self.leases
            .values()
            .filter(|t| !matches!(t.stage, Stage::Withdrawn { .. }))
    }

    pub fn snapshot(&self) -> Snapshot {
        self.shared.totals.snapshot(self.active() as u64)
    }

    /// Whether a lease on `local` is one of this dataplane's.
    pub fn owns(&self, local: SocketAddrV4) -> bool {
        let a = &self.addresses;
        (*local.ip() == a.public_ip || *local.ip() == a.nat_ip) && a.ports.contains(local.port())
    }

    fn new_id(&mut self) -> LeaseId {
        let id = LeaseId(self.next_id);
        self.next_id += 1;
        id
    }

    fn insert(&mut self, t: Tracked) -> LeaseId {
        let id = self.new_id();
        self.by_pair.insert(t.pair(), id);
        self.leases.insert(id, t);
        id
    }

    fn forget(&mut self, id: LeaseId) {
        if let Some(t) = self.leases.remove(&id)
            && self.by_pair.get(&t.pair()) == Some(&id)
        {
            self.by_pair.remove(&t.pair());
        }
    }

    /// Ports and a lease for a passive data connection from `client` to `origin`.
    pub fn reserve_passive(
        &mut self,
        client: Ipv4Addr,
        origin: SocketAddrV4,
        now: Instant,
    ) -> Result<Candidate, Refused> {
        let a = self.addresses;
        let local = self.hold_port(client, a.public_ip)?;
        let shared = &mut self.shared;
        let Some(nat_port) = shared.nat_ports.allocate(origin.into(), now) else {
            shared.ports.release(client.into(), local.into());
            return Err(Refused::Error(LeaseError::PortsExhausted(
                shared.ports.capacity(),
            )));
        };
        let source = SocketAddrV4::new(a.nat_ip, nat_port);
        Ok(self.candidate((client, local), (origin, source), false, now))
    }

    /// A port of `local` held for `peer`'s new lease.
    fn hold_port(&mut self, peer: Ipv4Addr, local: Ipv4Addr) -> Result<SocketAddrV4, Refused> {
        let port = self
            .shared
            .ports
            .allocate(peer.into(), local.into())
            .ok_or(Refused::PeerHoldsAll)?;
        Ok(SocketAddrV4::new(local, port))
    }

    fn candidate(
        &self,
        lease_key: (Ipv4Addr, SocketAddrV4),
        pair: FlowTuple,
        active: bool,
        now: Instant,
    ) -> Candidate {
        Candidate(Tracked::new(
            lease_key,
            pair,
            active,
            self.timeouts.lease_ttl,
            now,
        ))
    }

    /// A port and a lease for an active data connection from `origin` to `client`.
    pub fn reserve_active(
        &mut self,
        origin: Ipv4Addr,
        client: SocketAddrV4,
        now: Instant,
    ) -> Result<Candidate, Refused> {
        let a = self.addresses;
        let local = self.hold_port(origin, a.nat_ip)?;
        let source_port = if a.active_port_20 { 20 } else { local.port() };
        let source = SocketAddrV4::new(a.public_ip, source_port);
        // Events find a lease by (target, source): two live leases must not share it (two
        // sessions of one client naming the same PORT address, with port 20 as source).
        let busy = self
            .by_pair
            .get(&(client, source))
            .and_then(|id| self.leases.get(id))
            .is_some_and(|t| match t.stage {
                Stage::Waiting => true,
                Stage::Carrying { .. } => t.closed_since.is_none(),
                Stage::Withdrawn { .. } => false,
            });
        if busy {
            self.shared.ports.release(origin.into(), local.into());
            return Err(Refused::Error(LeaseError::Conflict(client.into())));
        }
        Ok(self.candidate((origin, local), (client, source), true, now))
    }

    /// The candidate is in the kernel's lease map: tracked from now on.
    pub fn commit(&mut self, candidate: Candidate) -> LeaseId {
        Totals::add(&self.shared.totals.installed, 1);
        self.insert(candidate.0)
    }

    /// The candidate could not be installed: its NAT port is given back (it rests), and
    /// its port too unless `keep_port` (another lease has its key: held until the caller
    /// has picked another, then given back with [`LeaseTable::give_back_port`]).
    pub fn give_back(&mut self, candidate: Candidate, keep_port: bool, now: Instant) {
        let mut t = candidate.0;
        self.shared.release_nat_port(&mut t, now);
        if !keep_port {
            self.give_back_port(t.peer, t.local);
        }
    }

    pub fn give_back_port(&mut self, peer: Ipv4Addr, local: SocketAddrV4) {
        self.shared.ports.release(peer.into(), local.into());
    }

    /// The waiting leases of `peer` on `local`'s address (when it holds every port, one
    /// may have been claimed without its event).
    pub fn waiting_of(&self, peer: Ipv4Addr, local: Ipv4Addr) -> Vec<LeaseId> {
        self.leases
            .iter()
            .filter(|(_, t)| t.peer == peer && *t.local.ip() == local && t.stage == Stage::Waiting)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Takes over a connection a previous process left carried in the kernel: `peer`
    /// connected to `local`, NATed to `target` from `source`. False when not ours.
    pub fn adopt(
        &mut self,
        peer: SocketAddrV4,
        local: SocketAddrV4,
        (source, target): FlowTuple,
        now: Instant,
    ) -> bool {
        if !self.owns(local) {
            return false;
        }
        let active = *local.ip() == self.addresses.nat_ip;
        if !active {
            self.shared.nat_ports.mark(source.port(), target.into());
        }
        let mut t = Tracked::new(
            (*peer.ip(), local),
            (target, source),
            active,
            self.timeouts.lease_ttl,
            now,
        );
        t.stage = Stage::Carrying {
            peer_port: peer.port(),
        };
        self.insert(t);
        true
    }

    /// Revokes a lease: true when it was waiting, to be withdrawn at once (looked at now);
    /// a connection under way goes on to its end.
    pub fn revoke(&mut self, id: LeaseId, now: Instant) -> bool {
        let Some(t) = self.leases.get_mut(&id) else {
            return false;
        };
        t.revoked = true;
        if t.stage != Stage::Waiting {
            return false;
        }
        t.next_look = now;
        true
    }

    /// Settles what an event from the programs says about one of these leases: the lease
    /// and what to do (with [`Step::again`]: look at it now).
    pub fn on_event(&mut self, event: &Event) -> Option<(LeaseId, Step)> {
        let id = *self
            .by_pair
            .get(&event.reverse)
            .or_else(|| self.by_pair.get(&event.key))?;
        let t = self.leases.get_mut(&id)?;
        let mut step = Step::default();
        match event.kind {
            EventKind::Claimed => {
                // Only the claim of this very lease: its peer, to its address.
                if matches!(t.stage, Stage::Waiting | Stage::Withdrawn { .. })
                    && *event.key.0.ip() == t.peer
                    && event.key.1 == t.local
                {
                    self.shared.claimed(t, event.key.0.port(), &mut step);
                }
            }
            // Look now: a connection seen closed both ways starts its grace period.
            EventKind::Fin | EventKind::Rst => step.again = true,
        }
        Some((id, step))
    }

    /// The leases due for a look at `now`.
    pub fn due(&self, now: Instant) -> Vec<LeaseId> {
        self.leases
            .iter()
            .filter(|(_, t)| t.next_look <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether lease `id` is still tracked (not over and forgotten).
    pub fn knows(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// What to read for lease `id` before stepping it at `now`.
    pub fn look(&self, id: LeaseId, now: Instant) -> Option<Look> {
        let t = self.leases.get(&id)?;
        Some(match t.stage {
            Stage::Waiting => {
                let probe = if t.revoked || now >= t.deadline {
                    Probe::Remove
                } else {
                    Probe::Check
                };
                Look {
                    lease: Some((t.peer, t.local, probe)),
                    pair: t.pair(),
                    forward: None,
                }
            }
            Stage::Withdrawn { .. } => Look {
                lease: None,
                pair: t.pair(),
                forward: None,
            },
            Stage::Carrying { .. } => {
                let (forward, pair) = t.carried_keys()?;
                Look {
                    lease: None,
                    pair,
                    forward: Some(forward),
                }
            }
        })
    }

    /// Advances lease `id` with what its [`Look`] found at `now`.
    pub fn step(&mut self, id: LeaseId, seen: &Observed, now: Instant) -> Step {
        let mut step = Step::default();
        let Some(t) = self.leases.get_mut(&id) else {
            return step;
        };
        let idle = self.timeouts.idle;
        if !self.shared.advance(t, seen, now, idle, &mut step) {
            self.forget(id);
        }
        step
    }
}

mod exchange;
mod stages;
#[cfg(test)]
mod tests;

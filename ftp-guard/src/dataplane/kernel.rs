//! Data connections carried by the eBPF programs: a lease here is an entry in the
//! kernel's lease map; the client's SYN creates the NAT flow in the kernel, tentative, and
//! the client's ACK completing the handshake claims the lease (deleting it): a SYN spoofed
//! with the client's address cannot use the lease up. No data byte passes through
//! userspace.
//!
//! Ports (see `ports`): a public port is held only against the peer whose lease waits on
//! it, and is free for that peer again the moment its lease is claimed or gone — learned
//! from the programs' events (a claim, a FIN, a RST: read from their ring buffer as they
//! happen), and synchronously where it matters (revoking a lease, or a peer that holds
//! every port). Different peers share ports freely. The source port towards
//! the origin (the NAT port) is chosen separately, unique per (NAT port, origin address and
//! port); the data range is added to `net.ipv4.ip_local_reserved_ports` at start-up so the
//! gateway's own sockets never pick one as an ephemeral port.
//!
//! A sweeper task runs every [`SWEEP_EVERY`] (and is the safety net for events a full
//! ring buffer lost):
//! - a waiting lease past its TTL is deleted, with the tentative flow of a handshake that
//!   never completed on it (a spoofed SYN's); its NAT port is given back only once no
//!   flow of it is left ([`TENTATIVE_LINGER`]);
//! - a carried connection is watched: when each direction's FIN has been acknowledged by
//!   the other, or either sent a RST (in window: the kernel's rule), and [`CLOSE_GRACE`]
//!   has passed, or when it has been idle for
//!   the flow idle timeout, its flow entries are deleted and its byte counts logged. This
//!   frees only its flow entries and NAT port: its public port was free at the claim.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{
    ActiveGrant, ActiveRequest, DataTimeouts, Dataplane, LeaseError, LeaseGrant, LeaseId,
    LeaseInfo, LeaseRequest, Leftovers, Snapshot,
    ports::{NatPorts, PeerPorts},
};
use crate::{
    bpf::{
        Bpf, BpfError, Event, EventHandler, EventKind, EventRouter, FlowState, FlowTuple, Handle,
        Lease, LeaseAction, monotonic_ns,
    },
    config::PortRange,
    sync::LockUnpoisoned as _,
};

/// How often the sweeper runs (claims and closes arrive as events); each lease is looked
/// at only when something may be due: its deadline, the end of its close grace, or the
/// next of its periodic looks below.
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

#[derive(Clone, Debug)]
pub struct KernelSettings {
    pub public_ip: Ipv4Addr,
    /// The gateway's origin-facing address: the source of data connections to the origin.
    pub nat_ip: Ipv4Addr,
    /// Active mode: data connections reach clients from public port 20 (else from the
    /// lease's port).
    pub active_port_20: bool,
    pub ports: PortRange,
    /// The interface towards the origin (0: unknown), where a passive connection's first
    /// packet leaves.
    pub origin_ifindex: u32,
    /// The interface towards clients (0: unknown), where an active connection's first
    /// packet leaves.
    pub client_ifindex: u32,
    /// Largest MSS a data connection's SYNs may announce (0: no clamping).
    pub mss_max: u16,
    /// Active mode: the origin's data connection must come from its port 20.
    pub active_origin_port_20_only: bool,
}

/// Totals since start.
#[derive(Debug, Default)]
pub struct KernelStats {
    pub installed: AtomicU64,
    pub used: AtomicU64,
    pub expired: AtomicU64,
    pub revoked: AtomicU64,
    pub flows_closed: AtomicU64,
    pub flows_idle: AtomicU64,
    pub bytes_to_origin: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

pub struct KernelDataplane {
    kernel: Handle,
    settings: KernelSettings,
    /// The lease TTL and the flow idle timeout (the rest is the relay's); a reload
    /// replaces them in place.
    timeouts: Mutex<DataTimeouts>,
    /// Public ports (passive) and origin-side ports (active) held by waiting leases.
    ports: PeerPorts,
    /// Passive connections' source ports towards the origin.
    nat_ports: NatPorts,
    book: Mutex<Book>,
    next_id: AtomicU64,
    stats: KernelStats,
}

/// How many ports one lease request skips because another dataplane's lease holds their
/// key, before it gives up: that one holds at most a few ports for any one peer (its
/// sessions' waiting leases).
const TAKEN_SKIPS: usize = 64;

/// Why [`KernelDataplane::install_nat`] failed.
enum InstallFailed {
    /// Another lease has the key: its port is still held, for the caller to try another.
    Taken,
    Other(LeaseError),
}

/// The tracked leases, indexed by id and by the (target, source) pair of their connection
/// — the key of the target's direction, which every event about it names.
#[derive(Default)]
struct Book {
    leases: HashMap<LeaseId, Tracked>,
    by_pair: HashMap<FlowTuple, LeaseId>,
}

impl Book {
    fn insert(&mut self, id: LeaseId, t: Tracked) {
        self.by_pair.insert((t.target, t.source), id);
        self.leases.insert(id, t);
    }

    /// The lease an event is about, by either direction's key.
    fn about(&mut self, event: &Event) -> Option<(LeaseId, &mut Tracked)> {
        let id = *self
            .by_pair
            .get(&event.reverse)
            .or_else(|| self.by_pair.get(&event.key))?;
        self.leases.get_mut(&id).map(|t| (id, t))
    }

    fn remove(&mut self, id: LeaseId) {
        if let Some(t) = self.leases.remove(&id)
            && self.by_pair.get(&(t.target, t.source)) == Some(&id)
        {
            self.by_pair.remove(&(t.target, t.source));
        }
    }
}

/// Where a lease is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// In the kernel's lease map, waiting for the peer's connection to complete its
    /// handshake (a tentative one may exist); its port is held.
    Waiting,
    /// Claimed by a connection from the peer's `peer_port` (its handshake completed),
    /// carried by the kernel.
    Carrying { peer_port: u16 },
    /// Deleted unclaimed (revoked or expired) at `since`; watched for a tentative flow
    /// left on it until [`TENTATIVE_LINGER`] has passed. Its public port is free already.
    Withdrawn { since: Instant },
    /// Deleted unclaimed (revoked or expired), or its claim rolled back: nothing left.
    Gone,
}

/// A lease as userspace follows it. The data connection arrives from `peer` at `local`
/// and is NATed to `target` from `source`:
/// passive: client → public:port ⇒ nat:nat_port → origin; active: origin → nat:port ⇒
/// public:(port|20) → client.
#[derive(Debug)]
struct Tracked {
    peer: Ipv4Addr,
    local: SocketAddrV4,
    target: SocketAddrV4,
    source: SocketAddrV4,
    active: bool,
    deadline: Instant,
    revoked: bool,
    installed: Instant,
    stage: Stage,
    /// When the flow was first seen closed.
    closed_since: Option<Instant>,
    /// The flow entries as last read (forward, reverse): the final byte counts when the
    /// kernel has already let a new connection take the entries over.
    last_seen: (Option<FlowState>, Option<FlowState>),
    /// Its NAT pair was given back (at the close: it rests from then on, and a claim may
    /// take over the pair's finished entries).
    nat_released: bool,
    /// Seen neither in the lease map nor as a flow once: a claim may have been half done
    /// (the SYN deletes the lease, then inserts the flows). Gone if so again.
    vanished: bool,
    /// When the sweeper should look at it next (events and revokes look at once).
    next_look: Instant,
}

impl KernelDataplane {
    /// A dataplane over `kernel`, with its sweeper running on the current tokio runtime
    /// until the dataplane is dropped. With [`Leftovers::Adopt`] (process start with
    /// pinned maps) it first takes over what a previous process left in its ranges.
    pub fn start(
        kernel: Handle,
        events: &EventRouter,
        settings: KernelSettings,
        timeouts: DataTimeouts,
        leftovers: Leftovers,
    ) -> Arc<Self> {
        let dp = Arc::new(Self {
            kernel,
            ports: PeerPorts::new(settings.ports),
            nat_ports: NatPorts::new(settings.ports),
            settings,
            timeouts: Mutex::new(timeouts),
            book: Mutex::default(),
            next_id: AtomicU64::new(1),
            stats: KernelStats::default(),
        });
        if leftovers == Leftovers::Adopt {
            dp.adopt();
        }
        events.add(&dp);
        let weak = Arc::downgrade(&dp);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let Some(dp) = weak.upgrade() else { return };
                dp.sweep();
            }
        });
        dp
    }

    pub fn stats(&self) -> &KernelStats {
        &self.stats
    }

    fn timeouts(&self) -> DataTimeouts {
        *self.timeouts.lock_unpoisoned()
    }

    /// Leases (waiting or carrying) still tracked.
    pub fn active(&self) -> usize {
        self.book()
            .leases
            .values()
            .filter(|t| !matches!(t.stage, Stage::Withdrawn { .. }))
            .count()
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock_unpoisoned()
    }

    /// Settles what an event from the programs says about one of this service's leases.
    pub fn on_event(&self, event: &Event) {
        let mut book = self.book();
        let Some((id, t)) = book.about(event) else {
            return;
        };
        let keep = match event.kind {
            EventKind::Claimed => {
                // Only the claim of this very lease: its peer, to its address.
                if matches!(t.stage, Stage::Waiting | Stage::Withdrawn { .. })
                    && *event.key.0.ip() == t.peer
                    && event.key.1 == t.local
                {
                    self.claimed(t, event.key.0.port());
                }
                true
            }
            // Look now: a connection seen closed both ways starts its grace period.
            EventKind::Fin | EventKind::Rst => match self.step(t, Instant::now()) {
                Ok(keep) => keep,
                Err(e) => {
                    warn!(peer = %t.peer, port = t.local.port(), error = %e, "lease bookkeeping failed");
                    true
                }
            },
        };
        if !keep {
            book.remove(id);
        }
    }

    fn kernel(&self) -> std::sync::MutexGuard<'_, Bpf> {
        self.kernel.lock()
    }

    fn owns(&self, local: SocketAddrV4) -> bool {
        (*local.ip() == self.settings.public_ip || *local.ip() == self.settings.nat_ip)
            && self.settings.ports.contains(local.port())
    }

    /// Takes over what a previous ftp-guard left in pinned maps: data connections under
    /// way are tracked to their end; leases nobody claimed are dropped, their control
    /// sessions having died with that process. Only at process start: at a reload the
    /// map's other leases belong to dataplanes still running.
    fn adopt(&self) {
        let mut kernel = self.kernel();
        let mut adopted = 0;
        for (peer, local, source, target) in kernel.claimed_flows() {
            if !self.owns(local) {
                continue;
            }
            let active = *local.ip() == self.settings.nat_ip;
            if !active {
                self.nat_ports.mark(source.port(), target);
            }
            let mut t = self.tracked(*peer.ip(), local, target, source, active);
            t.stage = Stage::Carrying {
                peer_port: peer.port(),
            };
            let id = LeaseId(self.next_id.fetch_add(1, Ordering::Relaxed));
            self.book().insert(id, t);
            adopted += 1;
        }
        let mut dropped = 0;
        for (peer, local) in kernel.lease_keys() {
            if self.owns(local) && matches!(kernel.remove_lease(peer, local), Ok(true)) {
                dropped += 1;
            }
        }
        // Handshakes under those leases that never completed: nobody tracks them now.
        let unfinished = kernel.remove_tentative_flows().unwrap_or_else(|e| {
            warn!(error = %e, "cannot remove the previous process's unfinished connections");
            0
        });
        if adopted + dropped + unfinished > 0 {
            info!(
                adopted,
                dropped, unfinished, "took over the previous process's data connections"
            );
        }
    }

    /// One pass over every tracked lease.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut book = self.book();
        let mut done = Vec::new();
        for (id, t) in book.leases.iter_mut() {
            if now < t.next_look && t.stage != Stage::Gone {
                continue;
            }
            match self.step(t, now) {
                Ok(true) => {}
                Ok(false) => done.push(*id),
                Err(e) => {
                    warn!(peer = %t.peer, port = t.local.port(), error = %e, "lease bookkeeping failed")
                }
            }
        }
        for id in done {
            book.remove(id);
        }
    }

    /// The flow entry of the target's direction of `t`'s connection, if one exists (any
    /// connection on the same pair started under this lease).
    fn our_flow(&self, t: &Tracked, kernel: &Bpf) -> Result<Option<FlowState>, BpfError> {
        // The target's direction is keyed by the (target, source) pair userspace chose.
        Ok(kernel
            .flow((t.target, t.source))?
            .filter(|f| *f.reverse.0.ip() == t.peer && f.reverse.1 == t.local))
    }

    /// A waiting lease is no longer in the kernel's map: claimed (its connection completed
    /// its handshake, which deleted the lease) or gone otherwise. Either way its port is
    /// free for its peer again.
    fn settle_claim(&self, t: &mut Tracked, kernel: &Bpf) -> Result<(), BpfError> {
        // The kernel marks the target's entry complete before it deletes the lease.
        match self.our_flow(t, kernel)?.filter(|f| !f.tentative) {
            Some(f) => self.claimed(t, f.reverse.0.port()),
            // Removed by hand, or its connection over and taken over already: look once
            // more before giving the lease up.
            None if !t.vanished => t.vanished = true,
            None => {
                t.stage = Stage::Gone;
                self.ports.release(t.peer, t.local);
            }
        }
        Ok(())
    }

    /// A waiting lease was claimed by a connection from `peer_port`: its port is free for
    /// its peer again, the kernel carries the connection.
    fn claimed(&self, t: &mut Tracked, peer_port: u16) {
        self.stats.used.fetch_add(1, Ordering::Relaxed);
        // Debug: the connection's one info line is "done", with its bytes.
        debug!(
            mode = if t.active { "active" } else { "passive" },
            from = %SocketAddrV4::new(t.peer, peer_port),
            to = %t.target,
            port = t.local.port(),
            "data connection started in the kernel"
        );
        // A withdrawn lease's port was given back then (and may be held again by now).
        if t.stage == Stage::Waiting {
            self.ports.release(t.peer, t.local);
        }
        t.stage = Stage::Carrying { peer_port };
    }

    /// Removes the tentative flow of a handshake that never completed under `t`; true if
    /// there was one.
    fn drop_tentative(&self, t: &Tracked, kernel: &mut Bpf) -> Result<bool, BpfError> {
        let Some(f) = self.our_flow(t, kernel)?.filter(|f| f.tentative) else {
            return Ok(false);
        };
        kernel.remove_flow(f.reverse)?;
        kernel.remove_flow((t.target, t.source))?;
        debug!(
            from = %f.reverse.0,
            port = t.local.port(),
            "unfinished handshake removed with its lease"
        );
        Ok(true)
    }

    /// Deletes a waiting lease (revoked or expired) and any tentative flow on it; if the
    /// peer's completed handshake deleted it first, the lease is settled as claimed
    /// instead.
    fn withdraw(&self, t: &mut Tracked, kernel: &mut Bpf) -> Result<(), BpfError> {
        if kernel.remove_lease(t.peer, t.local)? {
            let counter = if t.revoked {
                &self.stats.revoked
            } else {
                &self.stats.expired
            };
            counter.fetch_add(1, Ordering::Relaxed);
            debug!(
                port = t.local.port(),
                revoked = t.revoked,
                "unused lease removed"
            );
            t.stage = Stage::Withdrawn {
                since: Instant::now(),
            };
            self.ports.release(t.peer, t.local);
            self.drop_tentative(t, kernel)?;
            Ok(())
        } else {
            self.settle_claim(t, kernel)
        }
    }

    /// Advances one lease; `Ok(false)` when it is over and forgotten.
    fn step(&self, t: &mut Tracked, now: Instant) -> Result<bool, BpfError> {
        let mut kernel = self.kernel();
        if t.stage == Stage::Waiting {
            if !kernel.has_lease(t.peer, t.local)? {
                self.settle_claim(t, &kernel)?;
            } else if t.revoked || now >= t.deadline {
                self.withdraw(t, &mut kernel)?;
            }
        }
        if let Stage::Withdrawn { since } = t.stage {
            match self.our_flow(t, &kernel)? {
                // The handshake completed after all (its ACK crossed the withdrawal).
                Some(f) if !f.tentative => self.claimed(t, f.reverse.0.port()),
                Some(_) => {
                    self.drop_tentative(t, &mut kernel)?;
                    t.next_look = now + SWEEP_EVERY;
                }
                None if now.duration_since(since) >= TENTATIVE_LINGER => t.stage = Stage::Gone,
                None => t.next_look = since + TENTATIVE_LINGER,
            }
        }
        let peer_port = match t.stage {
            Stage::Waiting => {
                t.next_look = if t.vanished {
                    now
                } else {
                    t.deadline.min(now + LOOK_WAITING)
                };
                return Ok(true);
            }
            Stage::Withdrawn { .. } => return Ok(true),
            Stage::Gone => {
                self.release_nat_port(t);
                return Ok(false);
            }
            Stage::Carrying { peer_port } => peer_port,
        };
        let forward_key = (SocketAddrV4::new(t.peer, peer_port), t.local);
        let pair = (t.target, t.source);
        // The forward 4-tuple may belong to a newer connection by now (the kernel hands a
        // tuple over once its connection is over): only an entry paired with ours counts.
        let forward = kernel.flow(forward_key)?.filter(|f| f.reverse == pair);
        let reverse = kernel.flow(pair)?.filter(|f| f.reverse == forward_key);
        if forward.is_some() && reverse.is_some() {
            t.last_seen = (forward, reverse);
        }
        let (closed, idle) = match (forward, reverse) {
            (Some(a), Some(b)) => {
                let closed = a.over_with(&b);
                let last = a.last_seen_ns.max(b.last_seen_ns);
                let idle_ns = monotonic_ns().saturating_sub(last);
                (closed, idle_ns > self.timeouts().idle.as_nanos() as u64)
            }
            // Gone from the kernel (removed by hand, or a previous process's leftovers).
            _ => (true, false),
        };
        if closed && !idle {
            // The pair's TIME_WAIT at the origin starts now: let it rest from here.
            self.release_nat_port(t);
            let since = *t.closed_since.get_or_insert(now);
            if now.duration_since(since) < CLOSE_GRACE {
                t.next_look = since + CLOSE_GRACE;
                return Ok(true);
            }
        } else if !idle {
            t.closed_since = None;
            // Reopened (its claiming SYN again after a reset): its NAT pair is in use again.
            if t.nat_released && !t.active {
                self.nat_ports.mark(t.source.port(), t.target);
                t.nat_released = false;
            }
            t.next_look = now + LOOK_CARRYING;
            return Ok(true);
        }
        if forward.is_some() {
            kernel.remove_flow(forward_key)?;
        }
        if reverse.is_some() {
            kernel.remove_flow(pair)?;
        }
        drop(kernel);
        let (forward, reverse) = t.last_seen;
        self.finish(t, peer_port, forward, reverse, idle);
        self.release_nat_port(t);
        Ok(false)
    }

    fn release_nat_port(&self, t: &mut Tracked) {
        if !t.active && !t.nat_released {
            self.nat_ports.release(t.source.port(), t.target);
            t.nat_released = true;
        }
    }

    fn finish(
        &self,
        t: &Tracked,
        peer_port: u16,
        forward: Option<FlowState>,
        reverse: Option<FlowState>,
        idle: bool,
    ) {
        // Forward is peer → target: client → origin in passive mode, the reverse in active.
        let (up, down) = if t.active {
            (reverse, forward)
        } else {
            (forward, reverse)
        };
        let up_bytes = up.map_or(0, |f| f.bytes);
        let down_bytes = down.map_or(0, |f| f.bytes);
        self.stats
            .bytes_to_origin
            .fetch_add(up_bytes, Ordering::Relaxed);
        self.stats
            .bytes_to_client
            .fetch_add(down_bytes, Ordering::Relaxed);
        let counter = if idle {
            &self.stats.flows_idle
        } else {
            &self.stats.flows_closed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        info!(
            mode = if t.active { "active" } else { "passive" },
            from = %SocketAddrV4::new(t.peer, peer_port),
            to = %t.target,
            port = t.local.port(),
            bytes_to_client = down_bytes,
            bytes_to_origin = up_bytes,
            packets = up.map_or(0, |f| f.packets) + down.map_or(0, |f| f.packets),
            ended = if idle { "idle timeout" } else { "closed" },
            "data connection done (kernel)"
        );
    }

    /// A port of `local` for `peer`'s next lease. When the peer holds every port, its
    /// waiting leases are checked against the kernel first: a claim frees a port at once.
    fn allocate(&self, peer: Ipv4Addr, local: Ipv4Addr) -> Result<u16, LeaseError> {
        if let Some(port) = self.ports.allocate(peer, local) {
            return Ok(port);
        }
        {
            let mut book = self.book();
            let kernel = self.kernel();
            for t in book.leases.values_mut() {
                if t.peer == peer
                    && *t.local.ip() == local
                    && t.stage == Stage::Waiting
                    && matches!(kernel.has_lease(t.peer, t.local), Ok(false))
                {
                    let _ = self.settle_claim(t, &kernel);
                }
            }
        }
        self.ports
            .allocate(peer, local)
            .ok_or(LeaseError::PortsExhausted(self.ports.capacity()))
    }

    /// Installs the lease `build` makes for a port of `local` held for `peer`. A port whose
    /// lease key is already in the map (another dataplane's lease on an overlapping range,
    /// still running after a reload) is skipped for another, up to [`TAKEN_SKIPS`] times.
    fn install_on_free_port(
        &self,
        peer: Ipv4Addr,
        local: Ipv4Addr,
        target_ifindex: u32,
        admitted: (u32, u16),
        mut build: impl FnMut(u16) -> Result<Tracked, LeaseError>,
    ) -> Result<LeaseId, LeaseError> {
        // Held until the end, so that the next attempt picks another port.
        let mut skipped = Vec::new();
        let result = loop {
            let port = match self.allocate(peer, local) {
                Ok(port) => port,
                Err(e) => break Err(e),
            };
            let t = match build(port) {
                Ok(t) => t,
                Err(e) => {
                    self.ports.release(peer, SocketAddrV4::new(local, port));
                    break Err(e);
                }
            };
            match self.install_nat(t, target_ifindex, admitted) {
                Ok(id) => break Ok(id),
                Err(InstallFailed::Taken) => {
                    debug!(%peer, port, "lease key taken by another dataplane: trying another port");
                    skipped.push(port);
                    if skipped.len() >= TAKEN_SKIPS {
                        break Err(LeaseError::PortsExhausted(self.ports.capacity()));
                    }
                }
                Err(InstallFailed::Other(e)) => break Err(e),
            }
        };
        for port in skipped {
            self.ports.release(peer, SocketAddrV4::new(local, port));
        }
        result
    }

    /// Installs a NAT lease for `peer` → `local`, carried to `target` from `source`, whose
    /// SYN must come in on `peer_ifindex` from `peer_port` (0: any); on failure its NAT
    /// port is given back, and its port too unless another lease has its key (the caller
    /// tries another port first).
    fn install_nat(
        &self,
        t: Tracked,
        target_ifindex: u32,
        (peer_ifindex, peer_port): (u32, u16),
    ) -> Result<LeaseId, InstallFailed> {
        let lease = Lease {
            peer: t.peer,
            local: t.local,
            action: LeaseAction::Nat {
                target: t.target,
                source: t.source,
                deadline_ns: monotonic_ns() + self.timeouts().lease_ttl.as_nanos() as u64,
                target_ifindex,
                mss_max: self.settings.mss_max,
                peer_ifindex,
                peer_port,
            },
        };
        if let Err(e) = self.kernel().insert_lease(&lease) {
            let mut t = t;
            self.release_nat_port(&mut t);
            if let BpfError::LeaseTaken { .. } = e {
                return Err(InstallFailed::Taken);
            }
            self.ports.release(t.peer, t.local);
            return Err(InstallFailed::Other(match e {
                BpfError::LeasesFull(_) => LeaseError::TableFull,
                other => LeaseError::Io(std::io::Error::other(other.to_string())),
            }));
        }
        let id = LeaseId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.stats.installed.fetch_add(1, Ordering::Relaxed);
        self.book().insert(id, t);
        Ok(id)
    }

    fn tracked(
        &self,
        peer: Ipv4Addr,
        local: SocketAddrV4,
        target: SocketAddrV4,
        source: SocketAddrV4,
        active: bool,
    ) -> Tracked {
        Tracked {
            peer,
            local,
            target,
            source,
            active,
            deadline: Instant::now() + self.timeouts().lease_ttl,
            installed: Instant::now(),
            revoked: false,
            stage: Stage::Waiting,
            closed_since: None,
            last_seen: (None, None),
            nat_released: false,
            vanished: false,
            next_look: Instant::now(),
        }
    }
}

impl Dataplane for KernelDataplane {
    fn origin_side_ip(&self) -> Option<Ipv4Addr> {
        Some(self.settings.nat_ip)
    }

    fn install(&self, request: LeaseRequest) -> Result<LeaseGrant, LeaseError> {
        let public_ip = self.settings.public_ip;
        let mut public_port = 0;
        let id = self.install_on_free_port(
            request.client,
            public_ip,
            self.settings.origin_ifindex,
            (0, 0),
            |port| {
                let nat_port = self
                    .nat_ports
                    .allocate(request.origin)
                    .ok_or(LeaseError::PortsExhausted(self.ports.capacity()))?;
                public_port = port;
                Ok(self.tracked(
                    request.client,
                    SocketAddrV4::new(public_ip, port),
                    request.origin,
                    SocketAddrV4::new(self.settings.nat_ip, nat_port),
                    false,
                ))
            },
        )?;
        Ok(LeaseGrant { id, public_port })
    }

    fn install_active(&self, request: ActiveRequest) -> Result<ActiveGrant, LeaseError> {
        let nat_ip = self.settings.nat_ip;
        let mut origin_side = SocketAddrV4::new(nat_ip, 0);
        let id = self.install_on_free_port(
            request.origin,
            nat_ip,
            self.settings.client_ifindex,
            // The origin's SYN must come from the origin's side (a spoofer elsewhere cannot
            // open the client's data connection), and from port 20 when so configured.
            (
                self.settings.origin_ifindex,
                if self.settings.active_origin_port_20_only {
                    20
                } else {
                    0
                },
            ),
            |port| {
                let source_port = if self.settings.active_port_20 {
                    20
                } else {
                    port
                };
                let source = SocketAddrV4::new(self.settings.public_ip, source_port);
                // Events find a lease by (target, source): two live leases must not share
                // it (two sessions of one client naming the same PORT address, with port
                // 20 as source).
                let busy = {
                    let book = self.book();
                    book.by_pair
                        .get(&(request.client, source))
                        .and_then(|id| book.leases.get(id))
                        .is_some_and(|t| match t.stage {
                            Stage::Waiting => true,
                            Stage::Carrying { .. } => t.closed_since.is_none(),
                            Stage::Withdrawn { .. } | Stage::Gone => false,
                        })
                };
                if busy {
                    return Err(LeaseError::Conflict(request.client));
                }
                origin_side = SocketAddrV4::new(nat_ip, port);
                Ok(self.tracked(request.origin, origin_side, request.client, source, true))
            },
        )?;
        Ok(ActiveGrant { id, origin_side })
    }

    fn set_timeouts(&self, timeouts: DataTimeouts) {
        *self.timeouts.lock_unpoisoned() = timeouts;
    }

    fn snapshot(&self) -> Snapshot {
        let s = &self.stats;
        Snapshot {
            installed: s.installed.load(Ordering::Relaxed),
            used: s.used.load(Ordering::Relaxed),
            expired: s.expired.load(Ordering::Relaxed),
            revoked: s.revoked.load(Ordering::Relaxed),
            active: self.active() as u64,
            bytes_to_client: s.bytes_to_client.load(Ordering::Relaxed),
            bytes_to_origin: s.bytes_to_origin.load(Ordering::Relaxed),
            flows_closed: s.flows_closed.load(Ordering::Relaxed),
            flows_idle: s.flows_idle.load(Ordering::Relaxed),
            strangers_refused: 0,
        }
    }

    fn leases(&self) -> Vec<LeaseInfo> {
        let book = self.book();
        let kernel = self.kernel();
        book.leases
            .values()
            .filter(|t| matches!(t.stage, Stage::Waiting | Stage::Carrying { .. }))
            .map(|t| {
                let (peer, state, forward, reverse) = match t.stage {
                    Stage::Carrying { peer_port } => {
                        let peer = SocketAddrV4::new(t.peer, peer_port);
                        let f = kernel.flow((peer, t.local)).ok().flatten();
                        let r = kernel.flow((t.target, t.source)).ok().flatten();
                        (peer.to_string(), "carrying", f, r)
                    }
                    _ => (t.peer.to_string(), "waiting", None, None),
                };
                let (up, down) = if t.active {
                    (reverse, forward)
                } else {
                    (forward, reverse)
                };
                LeaseInfo {
                    mode: if t.active { "active" } else { "passive" }.into(),
                    port: t.local.port(),
                    peer,
                    target: t.target.to_string(),
                    state: state.into(),
                    age_secs: t.installed.elapsed().as_secs_f64(),
                    bytes_to_client: down.map_or(0, |f| f.bytes),
                    bytes_to_origin: up.map_or(0, |f| f.bytes),
                }
            })
            .collect()
    }

    fn revoke(&self, id: LeaseId) {
        let mut book = self.book();
        let Some(t) = book.leases.get_mut(&id) else {
            return;
        };
        t.revoked = true;
        if t.stage != Stage::Waiting {
            return;
        }
        // Settled now rather than at the next sweep: the peer's next passive request
        // finds the port free again whether the lease was claimed or not.
        if let Err(e) = self.withdraw(t, &mut self.kernel()) {
            warn!(port = t.local.port(), error = %e, "revoking a lease failed; the sweeper retries");
        }
    }
}

impl EventHandler for KernelDataplane {
    fn on_event(&self, event: &Event) {
        KernelDataplane::on_event(self, event)
    }
}

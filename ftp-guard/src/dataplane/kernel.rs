//! Data connections carried by the eBPF programs: a lease here is an entry in the
//! kernel's lease map; the client's SYN creates the NAT flow in the kernel, tentative, and
//! the client's ACK completing the handshake claims the lease (deleting it): a SYN spoofed
//! with the client's address cannot use the lease up. No data byte passes through
//! userspace.
//!
//! [`KernelDataplane`] is the driver: it does the map I/O that the lease lifecycle (see
//! `lifecycle`, which owns the leases' stages, deadlines and ports) asks for — installing
//! leases, reading and deleting entries — as the programs' events arrive (a claim, a FIN, a
//! RST: read from their ring buffer as they happen), synchronously where it matters
//! (revoking a lease, or a peer that holds every port), and from a sweeper task every
//! [`SWEEP_EVERY`], the safety net for events a full ring buffer lost.
//!
//! Ports (see `ports`): a public port is held only against the peer whose lease waits on
//! it; different peers share ports freely. The source port towards the origin (the NAT
//! port) is chosen separately, unique per (NAT port, origin address and port); the data
//! range is added to `net.ipv4.ip_local_reserved_ports` at start-up so the gateway's own
//! sockets never pick one as an ephemeral port.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use tracing::{debug, info, warn};

use super::{
    ActiveGrant, ActiveRequest, DataEnd, DataTimeouts, Dataplane, EndNotices, LeaseError,
    LeaseGrant, LeaseId, LeaseInfo, LeaseRequest, Leftovers, Snapshot,
    lifecycle::{
        Addresses, Candidate, LeaseSeen, LeaseTable, Look, Observed, Probe, Refused, Report,
        SWEEP_EVERY, Step,
    },
};
use crate::{
    bpf::{
        Bpf, BpfError, Event, EventHandler, EventRouter, Handle, Lease, LeaseAction, monotonic_ns,
    },
    config::PortRange,
    sync::LockUnpoisoned as _,
};

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

impl KernelSettings {
    fn addresses(&self) -> Addresses {
        Addresses {
            public_ip: self.public_ip,
            nat_ip: self.nat_ip,
            ports: self.ports,
            active_port_20: self.active_port_20,
        }
    }
}

/// Lock order: `table` (this dataplane's own state) first, then `kernel` (shared with the
/// other dataplanes, the relay's guard and the admin endpoint), reached only through the
/// locked table (`Locked::maps`): nothing here takes the table's lock while holding the
/// kernel's.
pub struct KernelDataplane {
    table: Mutex<LeaseTable>,
    kernel: Handle,
    settings: KernelSettings,
    /// Who waits to hear of a lease's data connection ending (the audit log).
    ends: EndNotices,
}

/// How many ports one lease request skips because another dataplane's lease holds their
/// key, before it gives up: that one holds at most a few ports for any one peer (its
/// sessions' waiting leases).
const TAKEN_SKIPS: usize = 64;

/// How many looks one settling of a lease may take: an event, then waiting (or
/// withdrawn) → carrying → over, is the longest chain a single moment can settle.
const LOOKS_AT_ONCE: usize = 4;

/// Why [`Locked::install`] failed.
enum InstallFailed {
    /// Another lease has the key: its port is still held, for the caller to try another.
    Taken(u16),
    Other(LeaseError),
}

/// The lease table locked: the only way to the kernel's maps, so that the kernel's lock is
/// always taken after the table's.
struct Locked<'a> {
    table: MutexGuard<'a, LeaseTable>,
    kernel: &'a Handle,
    settings: &'a KernelSettings,
    ends: &'a EndNotices,
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
            table: Mutex::new(LeaseTable::new(settings.addresses(), timeouts)),
            kernel,
            settings,
            ends: EndNotices::default(),
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

    fn lock(&self) -> Locked<'_> {
        Locked {
            table: self.table.lock_unpoisoned(),
            kernel: &self.kernel,
            settings: &self.settings,
            ends: &self.ends,
        }
    }

    /// Settles what an event from the programs says about one of this service's leases.
    pub fn on_event(&self, event: &Event) {
        let mut locked = self.lock();
        if let Some((id, step)) = locked.table.on_event(event) {
            locked.carry_out(id, step, Instant::now());
        }
    }

    /// Takes over what a previous ftp-guard left in pinned maps: data connections under
    /// way are tracked to their end; leases nobody claimed are dropped, their control
    /// sessions having died with that process. Only at process start: at a reload the
    /// map's other leases belong to dataplanes still running.
    fn adopt(&self) {
        let now = Instant::now();
        let mut locked = self.lock();
        let mut kernel = locked.maps();
        let mut adopted = 0;
        for (peer, local, source, target) in kernel.claimed_flows() {
            if locked.table.adopt(peer, local, (source, target), now) {
                adopted += 1;
            }
        }
        let mut dropped = 0;
        for (peer, local) in kernel.lease_keys() {
            if locked.table.owns(local) && matches!(kernel.remove_lease(peer, local), Ok(true)) {
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

    /// Looks at every lease something may be due for.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut locked = self.lock();
        for id in locked.table.due(now) {
            locked.settle(id, now);
        }
    }

    /// Installs the lease `reserve` makes for `peer` on a port of `local`; returns it with
    /// the address its peer connects to. A port whose lease key is already in the map
    /// (another dataplane's lease on an overlapping range, still running after a reload)
    /// is skipped for another, up to [`TAKEN_SKIPS`] times.
    fn install_lease(
        &self,
        (peer, local): (Ipv4Addr, Ipv4Addr),
        target_ifindex: u32,
        admitted: (u32, u16),
        reserve: impl Fn(&mut LeaseTable, Instant) -> Result<Candidate, Refused>,
    ) -> Result<(LeaseId, SocketAddrV4), LeaseError> {
        let now = Instant::now();
        let mut locked = self.lock();
        // Held until the end, so that the next attempt picks another port.
        let mut skipped = Vec::new();
        let result = loop {
            let candidate = match locked.reserve(&reserve, (peer, local), now) {
                Ok(candidate) => candidate,
                Err(e) => break Err(e),
            };
            let at = candidate.lease().local;
            match locked.install(candidate, target_ifindex, admitted, now) {
                Ok(id) => break Ok((id, at)),
                Err(InstallFailed::Taken(port)) => {
                    debug!(%peer, port, "lease key taken by another dataplane: trying another port");
                    skipped.push(port);
                    if skipped.len() >= TAKEN_SKIPS {
                        break Err(LeaseError::PortsExhausted(self.settings.ports.len()));
                    }
                }
                Err(InstallFailed::Other(e)) => break Err(e),
            }
        };
        for port in skipped {
            locked
                .table
                .give_back_port(peer, SocketAddrV4::new(local, port));
        }
        result
    }
}

impl<'a> Locked<'a> {
    /// The kernel's maps, locked (after the table: see [`KernelDataplane`]).
    fn maps(&self) -> MutexGuard<'a, Bpf> {
        self.kernel.lock()
    }

    /// Looks at lease `id` in the kernel's maps and steps it until nothing more is due now.
    fn settle(&mut self, id: LeaseId, now: Instant) {
        let look_now = Step {
            again: true,
            ..Step::default()
        };
        self.carry_out(id, look_now, now);
    }

    /// Does what `step` asks for lease `id`, and looks again while it says so.
    fn carry_out(&mut self, id: LeaseId, mut step: Step, now: Instant) {
        let mut looks = 0;
        loop {
            self.remove_flows(&step);
            step.reports.iter().for_each(log);
            self.tell_ends(id, &step);
            if !step.again || looks == LOOKS_AT_ONCE {
                return;
            }
            looks += 1;
            let Some(look) = self.table.look(id, now) else {
                return;
            };
            step = match self.observe(&look) {
                Ok(seen) => self.table.step(id, &seen, now),
                Err(e) => {
                    warn!(lease = id.0, target = %look.pair.0, error = %e, "lease bookkeeping failed; the sweeper retries");
                    return;
                }
            };
        }
    }

    /// Resolves the watch on lease `id` once its connection is done, or once the lease is
    /// forgotten without one.
    fn tell_ends(&self, id: LeaseId, step: &Step) {
        for report in &step.reports {
            if let Report::Done { payload, .. } = *report {
                self.ends.ended(id, payload);
            }
        }
        if !self.table.knows(id) {
            self.ends.unused(id);
        }
    }

    fn remove_flows(&self, step: &Step) {
        if step.remove_flows.is_empty() {
            return;
        }
        let mut kernel = self.maps();
        for key in &step.remove_flows {
            if let Err(e) = kernel.remove_flow(*key) {
                warn!(from = %key.0, to = %key.1, error = %e, "cannot remove a flow entry");
            }
        }
    }

    /// Reads (and, withdrawing, deletes) what `look` names, in its order.
    fn observe(&self, look: &Look) -> Result<Observed, BpfError> {
        let mut kernel = self.maps();
        let lease = match look.lease {
            None => LeaseSeen::NotLooked,
            Some((peer, local, Probe::Check)) if kernel.has_lease(peer, local)? => LeaseSeen::InMap,
            Some((peer, local, Probe::Remove)) if kernel.remove_lease(peer, local)? => {
                LeaseSeen::Removed
            }
            Some(_) => LeaseSeen::Absent,
        };
        let flows = kernel.flow(look.pair).and_then(|pair| {
            let forward = look.forward.map(|key| kernel.flow(key)).transpose()?;
            Ok((pair, forward.flatten()))
        });
        let (pair, forward) = match flows {
            Ok(flows) => flows,
            // The lease is deleted: the step must learn it. A tentative flow left on it is
            // found by the look at the end of its linger.
            Err(e) if lease == LeaseSeen::Removed => {
                warn!(error = %e, "cannot read a withdrawn lease's flows");
                (None, None)
            }
            Err(e) => return Err(e),
        };
        Ok(Observed {
            lease,
            pair,
            forward,
            clock_ns: monotonic_ns(),
        })
    }

    /// A candidate from `reserve`. When the peer holds every port, its waiting leases are
    /// checked against the kernel first: a claim frees a port at once.
    fn reserve(
        &mut self,
        reserve: impl Fn(&mut LeaseTable, Instant) -> Result<Candidate, Refused>,
        (peer, local): (Ipv4Addr, Ipv4Addr),
        now: Instant,
    ) -> Result<Candidate, LeaseError> {
        let refused = match reserve(&mut self.table, now) {
            Ok(candidate) => return Ok(candidate),
            Err(Refused::PeerHoldsAll) => {
                for id in self.table.waiting_of(peer, local) {
                    self.settle(id, now);
                }
                reserve(&mut self.table, now)
            }
            Err(refused) => Err(refused),
        };
        refused.map_err(|refused| match refused {
            Refused::PeerHoldsAll => LeaseError::PortsExhausted(self.settings.ports.len()),
            Refused::Error(e) => e,
        })
    }

    /// Writes `candidate` to the lease map: a NAT lease whose SYN must come in on
    /// `peer_ifindex` from `peer_port` (0: any). On failure its NAT port is given back,
    /// and its port too unless another lease has its key (the caller tries another port
    /// first).
    fn install(
        &mut self,
        candidate: Candidate,
        target_ifindex: u32,
        (peer_ifindex, peer_port): (u32, u16),
        now: Instant,
    ) -> Result<LeaseId, InstallFailed> {
        let t = candidate.lease();
        let ttl = self.table.timeouts().lease_ttl;
        let lease = Lease {
            peer: t.peer,
            local: t.local,
            action: LeaseAction::Nat {
                target: t.target,
                source: t.source,
                deadline_ns: monotonic_ns() + ttl.as_nanos() as u64,
                target_ifindex,
                mss_max: self.settings.mss_max,
                peer_ifindex,
                peer_port,
            },
        };
        let port = t.local.port();
        let inserted = self.maps().insert_lease(&lease);
        match inserted {
            Ok(()) => Ok(self.table.commit(candidate)),
            Err(BpfError::LeaseTaken { .. }) => {
                self.table.give_back(candidate, true, now);
                Err(InstallFailed::Taken(port))
            }
            Err(e) => {
                self.table.give_back(candidate, false, now);
                Err(InstallFailed::Other(match e {
                    BpfError::LeasesFull(_) => LeaseError::TableFull,
                    other => LeaseError::Io(std::io::Error::other(other.to_string())),
                }))
            }
        }
    }
}

/// Logs what the lifecycle reports. Debug for a connection's start and the unused ends:
/// a connection's one info line is its end, with its bytes.
fn log(report: &Report) {
    match *report {
        Report::Started {
            mode,
            from,
            to,
            port,
        } => debug!(mode, %from, %to, port, "data connection started in the kernel"),
        Report::Unused { port, revoked } => debug!(port, revoked, "unused lease removed"),
        Report::Unfinished { from, port } => {
            debug!(%from, port, "unfinished handshake removed with its lease")
        }
        Report::Done {
            mode,
            from,
            to,
            port,
            bytes_to_client,
            bytes_to_origin,
            payload,
            packets,
            idle,
        } => info!(
            mode,
            %from,
            %to,
            port,
            bytes_to_client,
            bytes_to_origin,
            payload_to_client = payload.to_client,
            payload_to_origin = payload.to_origin,
            packets,
            ended = if idle { "idle timeout" } else { "closed" },
            "data connection done (kernel)"
        ),
    }
}

impl Dataplane for KernelDataplane {
    fn origin_side_ip(&self) -> Option<IpAddr> {
        Some(self.settings.nat_ip.into())
    }

    fn install(&self, request: LeaseRequest) -> Result<LeaseGrant, LeaseError> {
        let (client, origin) = request.ipv4()?;
        let (id, local) = self.install_lease(
            (client, self.settings.public_ip),
            self.settings.origin_ifindex,
            (0, 0),
            |table, now| table.reserve_passive(client, origin, now),
        )?;
        Ok(LeaseGrant {
            id,
            public_port: local.port(),
        })
    }

    fn install_active(&self, request: ActiveRequest) -> Result<ActiveGrant, LeaseError> {
        let (origin, client) = request.ipv4()?;
        let s = &self.settings;
        let (id, local) = self.install_lease(
            (origin, s.nat_ip),
            s.client_ifindex,
            // The origin's SYN must come from the origin's side (a spoofer elsewhere cannot
            // open the client's data connection), and from port 20 when so configured.
            (
                s.origin_ifindex,
                if s.active_origin_port_20_only { 20 } else { 0 },
            ),
            |table, now| table.reserve_active(origin, client, now),
        )?;
        Ok(ActiveGrant {
            id,
            origin_side: local.into(),
        })
    }

    fn data_end(&self, id: LeaseId) -> Option<DataEnd> {
        Some(self.ends.watch(id))
    }

    fn set_timeouts(&self, timeouts: DataTimeouts) {
        self.lock().table.set_timeouts(timeouts);
    }

    fn snapshot(&self) -> Snapshot {
        self.lock().table.snapshot()
    }

    fn leases(&self) -> Vec<LeaseInfo> {
        let now = Instant::now();
        let locked = self.lock();
        let kernel = locked.maps();
        let flow = |key| kernel.flow(key).ok().flatten();
        locked
            .table
            .live()
            .map(|t| {
                let flows = t.carried_keys().map_or((None, None), |(forward, reverse)| {
                    (flow(forward), flow(reverse))
                });
                t.info(flows, now)
            })
            .collect()
    }

    fn revoke(&self, id: LeaseId) {
        let now = Instant::now();
        let mut locked = self.lock();
        // Settled now rather than at the next sweep: the peer's next passive request
        // finds the port free again whether the lease was claimed or not.
        if locked.table.revoke(id, now) {
            locked.settle(id, now);
        }
    }
}

impl EventHandler for KernelDataplane {
    fn on_event(&self, event: &Event) {
        KernelDataplane::on_event(self, event)
    }
}

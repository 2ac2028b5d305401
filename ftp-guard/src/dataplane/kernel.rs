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
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{
    ActiveGrant, ActiveRequest, DataTimeouts, Dataplane, LeaseError, LeaseGrant, LeaseId,
    LeaseInfo, LeaseRequest, Leftovers, Snapshot,
    lifecycle::{
        Addresses, Candidate, LeaseSeen, LeaseTable, Look, Observed, Probe, Refused, Report,
        SWEEP_EVERY, Step,
    },
};
use crate::{
    config::PortRange,
    kernel::{Event, Kernel, KernelError, Lease, LeaseAction, monotonic_ns, parse_event},
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
    kernel: Arc<Mutex<Kernel>>,
    settings: KernelSettings,
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
    kernel: &'a Mutex<Kernel>,
    settings: &'a KernelSettings,
}

impl KernelDataplane {
    /// A dataplane over `kernel`, with its sweeper running on the current tokio runtime
    /// until the dataplane is dropped. With [`Leftovers::Adopt`] (process start with
    /// pinned maps) it first takes over what a previous process left in its ranges.
    pub fn start(
        kernel: Arc<Mutex<Kernel>>,
        events: &EventRouter,
        settings: KernelSettings,
        timeouts: DataTimeouts,
        leftovers: Leftovers,
    ) -> Arc<Self> {
        let dp = Arc::new(Self {
            table: Mutex::new(LeaseTable::new(settings.addresses(), timeouts)),
            kernel,
            settings,
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
            table: self.table.lock().unwrap_or_else(|e| e.into_inner()),
            kernel: &self.kernel,
            settings: &self.settings,
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
    fn maps(&self) -> MutexGuard<'a, Kernel> {
        self.kernel.lock().unwrap_or_else(|e| e.into_inner())
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
    fn observe(&self, look: &Look) -> Result<Observed, KernelError> {
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
            Err(KernelError::LeaseTaken { .. }) => {
                self.table.give_back(candidate, true, now);
                Err(InstallFailed::Taken(port))
            }
            Err(e) => {
                self.table.give_back(candidate, false, now);
                Err(InstallFailed::Other(match e {
                    KernelError::LeasesFull(_) => LeaseError::TableFull,
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
            packets,
            idle,
        } => info!(
            mode,
            %from,
            %to,
            port,
            bytes_to_client,
            bytes_to_origin,
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

/// The kernel path set up for a set of services: the loaded object with its programs
/// attached, each service's NAT address, and the events' way to the services' dataplanes.
pub struct KernelSetup {
    pub kernel: Arc<Mutex<Kernel>>,
    /// (service name, NAT address), in the order given.
    pub nat_ips: Vec<(String, Ipv4Addr)>,
    pub events: Arc<EventRouter>,
}

/// Hands each event from the programs to the dataplanes alive (each takes its own).
#[derive(Default)]
pub struct EventRouter {
    dataplanes: Mutex<Vec<std::sync::Weak<KernelDataplane>>>,
}

impl EventRouter {
    fn add(&self, dp: &Arc<KernelDataplane>) {
        let mut dps = self.dataplanes.lock().unwrap_or_else(|e| e.into_inner());
        dps.retain(|w| w.strong_count() > 0);
        dps.push(Arc::downgrade(dp));
    }

    fn route(&self, event: &Event) {
        let dps: Vec<Arc<KernelDataplane>> = self
            .dataplanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        for dp in dps {
            dp.on_event(event);
        }
    }
}

/// Reads the programs' event ring buffer as it fills, until the process ends.
async fn read_events(ring: aya::maps::RingBuf<aya::maps::MapData>, router: Arc<EventRouter>) {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the ring's map fd is owned by `ring`, which the AsyncFd owns from here on:
    // it stays open and the same until the AsyncFd is dropped.
    let mut ring = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot watch the kernel's event ring: leases settle at the sweeper's pace");
            return;
        }
    };
    // FINs and RSTs do not wake the reader (see the programs' `notify`): drained with
    // the next claim, or by this tick.
    let mut tick = tokio::time::interval(EVENT_DRAIN_EVERY);
    loop {
        let woken = tokio::select! {
            ready = ring.readable_mut() => match ready {
                Ok(mut guard) => {
                    drain_events(guard.get_inner_mut(), &router);
                    guard.clear_ready();
                    true
                }
                Err(e) => {
                    warn!(error = %e, "the kernel's event ring failed: leases settle at the sweeper's pace");
                    return;
                }
            },
            _ = tick.tick() => false,
        };
        if !woken {
            drain_events(ring.get_mut(), &router);
        }
    }
}

/// How often the event reader drains events that did not wake it.
const EVENT_DRAIN_EVERY: Duration = Duration::from_millis(100);

fn drain_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, router: &EventRouter) {
    while let Some(item) = ring.next() {
        let event = parse_event(&item);
        drop(item);
        if let Some(event) = event {
            router.route(&event);
        }
    }
}

/// Loads the eBPF object, protects every service's range, attaches to every interface
/// once and prepares the host (reserved ports, sysctls). Logs what it did.
pub fn setup(
    services: &[&crate::config::Service],
    max_leases: u32,
    pin: Option<&std::path::Path>,
) -> anyhow::Result<KernelSetup> {
    use crate::kernel::MapSizes;

    let kernel = Kernel::load_pinned(
        MapSizes {
            max_leases,
            max_flows: max_leases.saturating_mul(2),
        },
        pin,
    )?;
    let mut kernel = kernel;
    let events = Arc::new(EventRouter::default());
    if let Some(ring) = kernel.take_events() {
        tokio::spawn(read_events(ring, events.clone()));
    }
    let mut setup = KernelSetup {
        kernel: Arc::new(Mutex::new(kernel)),
        nat_ips: Vec::new(),
        events,
    };
    update(&mut setup, services)?;
    if pin.is_some() {
        // What a previous process left that this configuration no longer accounts for.
        let mut kernel = setup.kernel.lock().unwrap_or_else(|e| e.into_inner());
        let interfaces: Vec<&str> = services.iter().flat_map(|s| s.interfaces()).collect();
        let detached = kernel.detach_unconfigured_links(&interfaces)?;
        if !detached.is_empty() {
            info!(
                ?detached,
                "detached pinned links of interfaces no longer configured"
            );
        }
        let swept = kernel.sweep_unclaimed_flows()?;
        if swept > 0 {
            info!(
                swept,
                "removed pinned flow entries no connection accounts for"
            );
        }
    }
    tokio::spawn(refresh_local_ipv6(Arc::downgrade(&setup.kernel)));
    Ok(setup)
}

/// How often the host's IPv6 addresses are read again (SLAAC, temporary addresses and
/// operators add them at any time; each must be guarded from when it appears).
const LOCAL_IPV6_EVERY: Duration = Duration::from_secs(5);

/// Keeps the programs' list of the host's IPv6 addresses current, until the kernel path
/// is gone.
async fn refresh_local_ipv6(kernel: std::sync::Weak<Mutex<Kernel>>) {
    let mut tick = tokio::time::interval(LOCAL_IPV6_EVERY);
    let mut known = Vec::new();
    loop {
        tick.tick().await;
        let Some(kernel) = kernel.upgrade() else {
            return;
        };
        let now = local_ipv6_addresses();
        if now == known {
            continue;
        }
        let mut kernel = kernel.lock().unwrap_or_else(|e| e.into_inner());
        match kernel.set_local_ipv6(&now) {
            Ok(()) => {
                debug!(addresses = now.len(), "guarded IPv6 addresses updated");
                known = now;
            }
            Err(e) => warn!(error = %e, "cannot update the guarded IPv6 addresses"),
        }
    }
}

/// Brings a loaded kernel path in line with `services`: NAT addresses, protected ranges
/// (replaced in one map write) and attachments to interfaces not yet attached. Interfaces
/// no longer named stay attached until the process exits (their ranges are gone, so the
/// programs pass everything there). A userspace service among them is guarded only: its
/// range admits the relay's clients (admit leases), on its client interface.
pub fn update(setup: &mut KernelSetup, services: &[&crate::config::Service]) -> anyhow::Result<()> {
    use anyhow::Context as _;

    use crate::{
        config::{DataplaneKind, KernelHook},
        kernel::{ProtectedRange, XdpAttach},
    };

    let mut nat_ips = Vec::new();
    let mut ranges = Vec::new();
    for s in services {
        let addresses = s.ipv4()?;
        if s.dataplane == DataplaneKind::Userspace {
            ranges.push(ProtectedRange {
                public_ip: addresses.public_ip,
                first_port: s.data_ports.first,
                last_port: s.data_ports.last,
                nat_ip: None,
                active_port_20: false,
            });
            continue;
        }
        let nat_ip = match addresses.nat_ip {
            Some(ip) => ip,
            None => super::origin_side_ip(*addresses.origin.ip()).with_context(|| {
                format!(
                    "service `{}`: cannot find the address that reaches {}; set nat_ip",
                    s.name, s.origin
                )
            })?,
        };
        if s.origin_interface.is_none() {
            check_origin_side_attached(s, nat_ip)?;
        }
        nat_ips.push((s.name.clone(), nat_ip));
        ranges.push(ProtectedRange {
            public_ip: addresses.public_ip,
            first_port: s.data_ports.first,
            last_port: s.data_ports.last,
            nat_ip: Some(nat_ip),
            active_port_20: s.active_mode && s.active_from_port_20,
        });
    }
    // Leases and flows on a NAT address are keyed by its ports: two services sharing one
    // must not share ports (each keeps its own books).
    let nat_services: Vec<_> = services
        .iter()
        .filter(|s| s.dataplane == DataplaneKind::Kernel)
        .collect();
    for (i, a) in nat_services.iter().enumerate() {
        for (j, b) in nat_services.iter().enumerate().skip(i + 1) {
            if nat_ips[i].1 == nat_ips[j].1 && a.data_ports.overlaps(&b.data_ports) {
                anyhow::bail!(
                    "services `{}` and `{}` both use the NAT address {} with overlapping \
                     data_ports ({} and {}): give them separate ranges or separate nat_ip",
                    a.name,
                    b.name,
                    nat_ips[i].1,
                    a.data_ports,
                    b.data_ports
                );
            }
        }
    }
    let mut kernel = setup.kernel.lock().unwrap_or_else(|e| e.into_inner());
    for s in services {
        // A relay needs the guard where clients come from only.
        let interfaces = match s.dataplane {
            DataplaneKind::Kernel => s.interfaces(),
            DataplaneKind::Userspace => s.client_interface.iter().map(String::as_str).collect(),
        };
        for interface in interfaces {
            if kernel.attachments().iter().any(|(a, _)| a == interface) {
                continue;
            }
            let xdp = match s.kernel_hook {
                KernelHook::Auto => match crate::kernel::driver_name(interface) {
                    Some(driver) if SKB_DRIVERS.contains(&driver.as_str()) => {
                        info!(interface, %driver, "software device: using TC (XDP would copy every packet)");
                        None
                    }
                    _ => match kernel.attach_guard(interface, XdpAttach::Native) {
                        Ok(mode) => Some(Ok(mode)),
                        Err(e) => {
                            info!(interface, reason = %e, "native XDP unavailable: using TC");
                            None
                        }
                    },
                },
                KernelHook::Xdp => Some(kernel.attach_guard(interface, XdpAttach::Native)),
                KernelHook::XdpGeneric => Some(kernel.attach_guard(interface, XdpAttach::Generic)),
                KernelHook::Tc => None,
            }
            .transpose()
            .with_context(|| format!("service `{}`: attaching to {interface}", s.name))?;
            // TC always: alone, or behind XDP for the packets XDP leaves to it (a data
            // connection's first packets, before its next hop is known; checksums the
            // device must complete). Neither needs the host to forward.
            let tc = kernel
                .attach_tc(interface)
                .with_context(|| format!("service `{}`: attaching to {interface}", s.name))?;
            match xdp {
                Some(mode) => info!(interface, %mode, behind = %tc, "kernel data path attached"),
                None => info!(interface, mode = %tc, "kernel data path attached"),
            }
            set_sysctl(&format!("net/ipv4/conf/{interface}/accept_local"), "1");
        }
    }
    kernel.set_protected_ranges(&ranges)?;
    // IPv6 is not carried: the programs drop IPv6 to the data ports of these addresses.
    kernel.set_local_ipv6(&local_ipv6_addresses())?;
    drop(kernel);
    reserve_ports(services.iter().map(|s| s.data_ports));
    setup.nat_ips = nat_ips;
    Ok(())
}

/// Without `origin_interface` the programs are attached only to `client_interface`: the
/// origin's side of every data connection must arrive there too, or its packets reach the
/// stack un-NATed and the transfer hangs. Refuses the configuration when the gateway's
/// origin-side address lives on another interface.
fn check_origin_side_attached(s: &crate::config::Service, nat_ip: Ipv4Addr) -> anyhow::Result<()> {
    let holders: Vec<String> = super::host_addresses()?
        .into_iter()
        .filter(|(_, a)| *a == Some(std::net::IpAddr::V4(nat_ip)))
        .map(|(name, _)| name)
        .collect();
    let attached = s.interfaces();
    if holders.is_empty() || holders.iter().any(|h| attached.contains(&h.as_str())) {
        return Ok(());
    }
    anyhow::bail!(
        "service `{}`: the origin {} is reached through `{}` (the gateway's address {nat_ip} \
         is there), but the kernel data path would attach only to `{}`: set \
         origin_interface = \"{}\"",
        s.name,
        s.origin.ip(),
        holders[0],
        attached.join("`, `"),
        holders[0]
    )
}

/// Every IPv6 address of this host (namespace), link-local ones included.
fn local_ipv6_addresses() -> Vec<std::net::Ipv6Addr> {
    let all = super::host_addresses().unwrap_or_else(|e| {
        warn!(error = %e, "cannot list the host's IPv6 addresses");
        Vec::new()
    });
    let mut out = Vec::new();
    for (_, addr) in all {
        if let Some(std::net::IpAddr::V6(ip)) = addr
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Drivers of software devices, where `kernel_hook = "auto"` picks TC: their native XDP
/// (veth) copies each packet into a new page before the program runs and rebuilds an skb
/// after a redirect, and bridges, bonds and VLANs cannot take redirected XDP frames at all.
/// Measured on veth (`cargo xtask bench`): XDP 0.88×, TC 1.05× plain routing.
const SKB_DRIVERS: &[&str] = &[
    "veth",
    "bridge",
    "bonding",
    "802.1Q VLAN Support",
    "macvlan",
    "team",
    "tun",
    "dummy",
];

/// Keeps the gateway's own sockets off the data ports (they are NAT ports too).
fn reserve_ports(ranges: impl Iterator<Item = PortRange>) {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(PATH).unwrap_or_default();
    let mut parts: Vec<String> = current
        .trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    for r in ranges {
        let part = format!("{}-{}", r.first, r.last);
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    let value = parts.join(",");
    if value != current.trim() {
        set_sysctl("net/ipv4/ip_local_reserved_ports", &value);
    }
}

/// Sets a sysctl unless it already has `value` (in containers /proc/sys is often
/// read-only and set by the platform).
fn set_sysctl(key: &str, value: &str) {
    let path = format!("/proc/sys/{key}");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return;
    }
    match std::fs::write(&path, value) {
        Ok(()) => info!(key = %key.replace('/', "."), value, "sysctl set"),
        Err(e) => warn!(key = %key.replace('/', "."), value, error = %e, "cannot set sysctl"),
    }
}

//! Data connections carried by the eBPF programs: a lease here is an entry in the
//! kernel's lease map; the client's SYN claims it and creates the NAT flow in the kernel,
//! and no data byte passes through userspace.
//!
//! Userspace's part is bookkeeping, done by a sweeper task every [`SWEEP_EVERY`]:
//! - an unclaimed lease that outlived its TTL is deleted (a revoked one is deleted at once
//!   by `revoke`), and its port is freed one sweep later if no claim raced in meanwhile;
//! - a claimed lease's flow is watched: when both directions have sent FIN, or either
//!   sent RST, and [`CLOSE_GRACE`] has passed (for the last ACKs), or when it has been idle
//!   for the flow idle timeout, its flow entries, claim and lease are deleted, its byte
//!   counts are logged and its port is freed.
//!
//! NAT ports: the source port towards the origin is the lease's public port. Public ports
//! are unique while a lease or its flow lives, so NAT ports never collide with each other;
//! the data range is added to `net.ipv4.ip_local_reserved_ports` at start-up so that the
//! gateway's own sockets never pick one as an ephemeral port.
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
    ActiveGrant, ActiveRequest, Dataplane, LeaseError, LeaseGrant, LeaseId, LeaseInfo,
    LeaseRequest, Snapshot, ports::PortPool,
};
use crate::{
    config::PortRange,
    kernel::{FlowState, Kernel, KernelError, Lease, LeaseAction, monotonic_ns},
};

/// How often the sweeper looks at the leases.
pub const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// How long a closed flow keeps its entries, so the last ACKs still pass (they follow the
/// FINs within a round trip). Its port is busy meanwhile: a range of N ports carries about
/// N / (CLOSE_GRACE + SWEEP_EVERY) new data connections per second.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct KernelSettings {
    pub public_ip: Ipv4Addr,
    /// The gateway's origin-facing address: the source of data connections to the origin.
    pub nat_ip: Ipv4Addr,
    /// Active mode: data connections reach clients from public port 20 (else from the
    /// lease's port).
    pub active_port_20: bool,
    pub ports: PortRange,
    pub lease_ttl: Duration,
    /// A data connection silent for this long is removed.
    pub flow_idle_timeout: Duration,
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
    kernel: Arc<Mutex<Kernel>>,
    settings: KernelSettings,
    pool: PortPool,
    leases: Mutex<HashMap<LeaseId, Tracked>>,
    next_id: AtomicU64,
    stats: KernelStats,
}

/// A lease as userspace follows it. The data connection arrives from `peer` at `local`
/// and is NATed to `target` from `source`:
/// passive: client → public:port ⇒ nat:port → origin; active: origin → nat:port ⇒
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
    /// The peer's source port of the connection the lease admitted.
    claimed: Option<u16>,
    /// When the lease entry was deleted without a claim: the port is freed one sweep later.
    deleted: bool,
    /// When the flow was first seen closed.
    closed_since: Option<Instant>,
}

impl KernelDataplane {
    /// A dataplane over `kernel`, with its sweeper running on the current tokio runtime
    /// until the dataplane is dropped.
    pub fn start(kernel: Arc<Mutex<Kernel>>, settings: KernelSettings) -> Arc<Self> {
        let dp = Arc::new(Self {
            kernel,
            pool: PortPool::new(settings.ports),
            settings,
            leases: Mutex::default(),
            next_id: AtomicU64::new(1),
            stats: KernelStats::default(),
        });
        dp.adopt();
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

    /// Leases (claimed or not) still tracked.
    pub fn active(&self) -> usize {
        self.leases.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn public(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.settings.public_ip, port)
    }

    fn kernel(&self) -> std::sync::MutexGuard<'_, Kernel> {
        self.kernel.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn owns(&self, local: SocketAddrV4) -> bool {
        (*local.ip() == self.settings.public_ip || *local.ip() == self.settings.nat_ip)
            && self.settings.ports.contains(local.port())
    }

    /// Takes over what a previous ftp-guard left in pinned maps: data connections under
    /// way are tracked to their end (their ports stay taken); leases nobody claimed are
    /// dropped, their control sessions having died with that process.
    fn adopt(&self) {
        let kernel = self.kernel();
        let mut adopted = 0;
        for (peer, local) in kernel.claimed_leases() {
            if !self.owns(local) {
                continue;
            }
            let Ok(Some(peer_port)) = kernel.claim(peer, local) else {
                continue;
            };
            let Ok(Some((source, target))) =
                kernel.flow_rewrite((SocketAddrV4::new(peer, peer_port), local))
            else {
                continue;
            };
            self.pool.mark(local.port());
            let mut t = self.tracked(
                peer,
                local,
                target,
                source,
                *local.ip() == self.settings.nat_ip,
            );
            t.claimed = Some(peer_port);
            let id = LeaseId(self.next_id.fetch_add(1, Ordering::Relaxed));
            self.leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, t);
            adopted += 1;
        }
        drop(kernel);
        let mut kernel = self.kernel();
        let mut dropped = 0;
        for (peer, local) in kernel.lease_keys() {
            if self.owns(local) && matches!(kernel.claim(peer, local), Ok(None)) {
                let _ = kernel.remove_lease(peer, local);
                dropped += 1;
            }
        }
        if adopted + dropped > 0 {
            info!(
                adopted,
                dropped, "took over the previous process's data connections"
            );
        }
    }

    /// One pass over every tracked lease.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.retain(|_, t| match self.step(t, now) {
            Ok(keep) => keep,
            Err(e) => {
                warn!(peer = %t.peer, port = t.local.port(), error = %e, "lease bookkeeping failed");
                true
            }
        });
    }

    /// Advances one lease; `Ok(false)` when it is over and its port was freed.
    fn step(&self, t: &mut Tracked, now: Instant) -> Result<bool, KernelError> {
        let mut kernel = self.kernel();
        if t.claimed.is_none() {
            t.claimed = kernel.claim(t.peer, t.local)?;
            if let Some(peer_port) = t.claimed {
                self.stats.used.fetch_add(1, Ordering::Relaxed);
                info!(
                    mode = if t.active { "active" } else { "passive" },
                    from = %SocketAddrV4::new(t.peer, peer_port),
                    to = %t.target,
                    port = t.local.port(),
                    "data connection started in the kernel"
                );
                // The claim and the flows carry the connection from now on.
                kernel.remove_lease(t.peer, t.local)?;
            }
        }
        let Some(peer_port) = t.claimed else {
            if t.deleted {
                // A sweep has passed since the delete: no SYN can still be claiming it.
                self.pool.release(t.local.port());
                return Ok(false);
            }
            if t.revoked || now >= t.deadline {
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
                kernel.remove_lease(t.peer, t.local)?;
                t.deleted = true;
            }
            return Ok(true);
        };
        let forward_key = (SocketAddrV4::new(t.peer, peer_port), t.local);
        let forward = kernel.flow(forward_key)?;
        let reverse = kernel.flow((t.target, t.source))?;
        let (closed, idle) = match (forward, reverse) {
            (Some(a), Some(b)) => {
                let closed = (a.fin && b.fin) || a.rst || b.rst;
                let last = a.last_seen_ns.max(b.last_seen_ns);
                let idle_ns = monotonic_ns().saturating_sub(last);
                (
                    closed,
                    idle_ns > self.settings.flow_idle_timeout.as_nanos() as u64,
                )
            }
            // Rolled back in the kernel (flow table full): nothing left to carry.
            _ => (true, false),
        };
        if closed && !idle {
            let since = *t.closed_since.get_or_insert(now);
            if now.duration_since(since) < CLOSE_GRACE {
                return Ok(true);
            }
        } else if !idle {
            t.closed_since = None;
            return Ok(true);
        }
        kernel.remove_flow(forward_key)?;
        kernel.remove_flow((t.target, t.source))?;
        kernel.remove_claim(t.peer, t.local)?;
        kernel.remove_lease(t.peer, t.local)?;
        drop(kernel);
        self.finish(t, peer_port, forward, reverse, idle);
        self.pool.release(t.local.port());
        Ok(false)
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

    /// Installs a NAT lease for `peer` → `local`, carried to `target` from `source`.
    fn install_nat(&self, t: Tracked) -> Result<LeaseId, LeaseError> {
        let lease = Lease {
            peer: t.peer,
            local: t.local,
            action: LeaseAction::Nat {
                target: t.target,
                source: t.source,
                deadline_ns: monotonic_ns() + self.settings.lease_ttl.as_nanos() as u64,
            },
        };
        if let Err(e) = self.kernel().insert_lease(&lease) {
            self.pool.release(t.local.port());
            return Err(match e {
                KernelError::LeasesFull(_) => LeaseError::TableFull,
                other => LeaseError::Io(std::io::Error::other(other.to_string())),
            });
        }
        let id = LeaseId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.stats.installed.fetch_add(1, Ordering::Relaxed);
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, t);
        Ok(id)
    }

    fn allocate(&self) -> Result<u16, LeaseError> {
        self.pool
            .allocate()
            .ok_or(LeaseError::PortsExhausted(self.pool.capacity()))
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
            deadline: Instant::now() + self.settings.lease_ttl,
            installed: Instant::now(),
            revoked: false,
            claimed: None,
            deleted: false,
            closed_since: None,
        }
    }
}

impl Dataplane for KernelDataplane {
    fn install(&self, request: LeaseRequest) -> Result<LeaseGrant, LeaseError> {
        let port = self.allocate()?;
        let t = self.tracked(
            request.client,
            self.public(port),
            request.origin,
            SocketAddrV4::new(self.settings.nat_ip, port),
            false,
        );
        let id = self.install_nat(t)?;
        Ok(LeaseGrant {
            id,
            public_port: port,
        })
    }

    fn install_active(&self, request: ActiveRequest) -> Result<ActiveGrant, LeaseError> {
        let port = self.allocate()?;
        let origin_side = SocketAddrV4::new(self.settings.nat_ip, port);
        let source_port = if self.settings.active_port_20 {
            20
        } else {
            port
        };
        let t = self.tracked(
            request.origin,
            origin_side,
            request.client,
            self.public(source_port),
            true,
        );
        let id = self.install_nat(t)?;
        Ok(ActiveGrant { id, origin_side })
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
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let kernel = self.kernel();
        leases
            .values()
            .map(|t| {
                let (peer, state, forward, reverse) = match t.claimed {
                    Some(port) => {
                        let peer = SocketAddrV4::new(t.peer, port);
                        let f = kernel.flow((peer, t.local)).ok().flatten();
                        let r = kernel.flow((t.target, t.source)).ok().flatten();
                        (peer.to_string(), "carrying", f, r)
                    }
                    None => (t.peer.to_string(), "waiting", None, None),
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
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = leases.get_mut(&id) else {
            return;
        };
        t.revoked = true;
        if t.claimed.is_some() || t.deleted {
            return;
        }
        // Delete the unused lease now rather than at the next sweep: a client that sends
        // PASV after PASV then keeps ports out of the pool for one sweep, not two. The port
        // itself returns only after the next sweep has looked for a claim that raced in.
        match self.kernel().remove_lease(t.peer, t.local) {
            Ok(_) => {
                t.deleted = true;
                self.stats.revoked.fetch_add(1, Ordering::Relaxed);
                debug!(port = t.local.port(), "unused lease removed (revoked)");
            }
            Err(e) => {
                warn!(port = t.local.port(), error = %e, "revoking a lease failed; the sweeper retries")
            }
        }
    }
}

/// The kernel path set up for a set of services: the loaded object with its programs
/// attached, and each service's NAT address.
pub struct KernelSetup {
    pub kernel: Arc<Mutex<Kernel>>,
    /// (service name, NAT address), in the order given.
    pub nat_ips: Vec<(String, Ipv4Addr)>,
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
    let mut setup = KernelSetup {
        kernel: Arc::new(Mutex::new(kernel)),
        nat_ips: Vec::new(),
    };
    update(&mut setup, services)?;
    match std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward") {
        Ok(v) if v.trim() == "1" => {}
        _ => warn!(
            "net.ipv4.ip_forward is not 1: packets the programs cannot redirect themselves (unknown neighbour) will not be forwarded"
        ),
    }
    Ok(setup)
}

/// Brings a loaded kernel path in line with `services`: NAT addresses, protected ranges
/// (replaced in one map write) and attachments to interfaces not yet attached. Interfaces
/// no longer named stay attached until the process exits (their ranges are gone, so the
/// programs pass everything there).
pub fn update(setup: &mut KernelSetup, services: &[&crate::config::Service]) -> anyhow::Result<()> {
    use anyhow::Context as _;

    use crate::{
        config::KernelHook,
        kernel::{ProtectedRange, XdpAttach},
    };

    let mut nat_ips = Vec::new();
    let mut ranges = Vec::new();
    for s in services {
        let nat_ip = match s.nat_ip {
            Some(ip) => ip,
            None => super::origin_side_ip(*s.origin.ip()).with_context(|| {
                format!(
                    "service `{}`: cannot find the address that reaches {}; set nat_ip",
                    s.name, s.origin
                )
            })?,
        };
        nat_ips.push((s.name.clone(), nat_ip));
        ranges.push(ProtectedRange {
            public_ip: s.public_ip(),
            first_port: s.data_ports.first,
            last_port: s.data_ports.last,
            nat_ip: Some(nat_ip),
            active_port_20: s.active_mode && s.active_from_port_20,
        });
    }
    let mut kernel = setup.kernel.lock().unwrap_or_else(|e| e.into_inner());
    for s in services {
        for interface in s.interfaces() {
            if kernel.attachments().iter().any(|(a, _)| a == interface) {
                continue;
            }
            let mode = match s.kernel_hook {
                KernelHook::Auto => match crate::kernel::driver_name(interface) {
                    Some(driver) if SKB_DRIVERS.contains(&driver.as_str()) => {
                        info!(interface, %driver, "software device: using TC (XDP would copy every packet)");
                        kernel.attach_tc(interface)
                    }
                    _ => kernel
                        .attach_guard(interface, XdpAttach::Native)
                        .or_else(|e| {
                            info!(interface, reason = %e, "native XDP unavailable: using TC");
                            kernel.attach_tc(interface)
                        }),
                },
                KernelHook::Xdp => kernel.attach_guard(interface, XdpAttach::Native),
                KernelHook::XdpGeneric => kernel.attach_guard(interface, XdpAttach::Generic),
                KernelHook::Tc => kernel.attach_tc(interface),
            }
            .with_context(|| format!("service `{}`: attaching to {interface}", s.name))?;
            info!(interface, %mode, "kernel data path attached");
            set_sysctl(&format!("net/ipv4/conf/{interface}/accept_local"), "1");
        }
    }
    kernel.set_protected_ranges(&ranges)?;
    drop(kernel);
    reserve_ports(services.iter().map(|s| s.data_ports));
    setup.nat_ips = nat_ips;
    Ok(())
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

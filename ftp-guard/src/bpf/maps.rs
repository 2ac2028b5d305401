//! Typed access to the lease, protected-range, local-IPv6 and counter maps, and the
//! conversions between userspace addresses (`Ipv4Addr`, host-order ports) and map keys
//! (network byte order) — all key conversions live here, in one place.
use std::net::{Ipv4Addr, SocketAddrV4};

use aya::maps::MapError;
use ftp_guard_common::{
    Counter, DEFAULT_MAX_FLOWS, DEFAULT_MAX_LEASES, DataRange, FilterConfig, FlowKey, IpAddrBe,
    LEASE_ADMIT, LEASE_NAT, LeaseKey, LeaseValue, MAX_DATA_RANGES, names,
};

use super::{Bpf, BpfError};

/// One protected data-port range on a public address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtectedRange {
    pub public_ip: Ipv4Addr,
    pub first_port: u16,
    pub last_port: u16,
    /// The gateway's origin-facing address NATed data connections come from (kernel
    /// data path); `None` when leases on this range only admit.
    pub nat_ip: Option<Ipv4Addr>,
    /// Active-mode data connections reach clients from public port 20.
    pub active_port_20: bool,
}

/// A service's control endpoint as the programs guard it: its port on the range's public
/// address, and the SYN rate one source may open connections to it at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlGuard {
    pub port: u16,
    /// SYNs per second one source may send on average; 0 = no limit.
    pub syn_rate: u32,
    /// SYNs one source may send at once.
    pub syn_burst: u32,
    /// SYNs per second all sources of one /24 may send together on average; 0 = no limit.
    pub prefix_syn_rate: u32,
    /// SYNs all sources of one /24 may send at once.
    pub prefix_syn_burst: u32,
}

/// What the programs protect of one service: its data range and, when given, its control
/// endpoint. Its position in the list given to [`Bpf::set_protected_services`] is its
/// service index in the policy maps (ACL rules, SYN buckets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtectedService {
    pub range: ProtectedRange,
    pub control: Option<ControlGuard>,
}

/// What a lease lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Pass the peer's packets to the stack (a userspace relay listens on the port).
    Admit,
    /// NAT one connection to `target`, appearing to come from `source`; the peer's SYN
    /// must come before `deadline_ns` (CLOCK_MONOTONIC, see [`monotonic_ns`]).
    /// Passive: target = the origin's data address, source = the gateway's origin-side
    /// address and the lease's port. Active: target = the client's data address, source =
    /// the public address and the lease's port (or 20).
    Nat {
        target: SocketAddrV4,
        source: SocketAddrV4,
        deadline_ns: u64,
        /// The interface that leads to `target` (0: unknown, the FIB decides): where the
        /// connection's first packet leaves; later ones follow where the target's come from.
        target_ifindex: u32,
        /// Largest MSS the connection's SYNs may announce (0: no clamping).
        mss_max: u16,
        /// The interface the peer's SYN must arrive on (0: any).
        peer_ifindex: u32,
        /// The source port the peer's SYN must come from (0: any).
        peer_port: u16,
    },
}

/// A lease: `peer` may open one data connection to the gateway's `local` address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub peer: Ipv4Addr,
    pub local: SocketAddrV4,
    pub action: LeaseAction,
}

impl Lease {
    /// An admit-only lease (the guard passes the peer's packets to the stack).
    pub fn admit(peer: Ipv4Addr, local: SocketAddrV4) -> Lease {
        Lease {
            peer,
            local,
            action: LeaseAction::Admit,
        }
    }

    fn key(&self) -> LeaseKey {
        lease_key(self.peer, self.local)
    }
}

/// The clock the kernel programs use (bpf_ktime_get_ns), in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Packet counters summed over all CPUs, one per [`Counter`], in `Counter::ALL` order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub Vec<(Counter, u64)>);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0
            .iter()
            .find(|(c, _)| *c == counter)
            .map_or(0, |(_, n)| *n)
    }
}

/// Sizes of the maps; userspace decides them at load time.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// Leases at once.
    pub max_leases: u32,
    /// Flow entries at once: two per NATed data connection.
    pub max_flows: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            max_leases: DEFAULT_MAX_LEASES,
            max_flows: DEFAULT_MAX_FLOWS,
        }
    }
}

/// A TCP connection as the gateway sees it arrive: (source, destination).
pub type FlowTuple = (SocketAddrV4, SocketAddrV4);

// Key conversions: userspace addresses and host-order ports <-> map keys and values
// (addresses and ports in network byte order). The only place that packs them.

/// IPv4 only until IPv6 is carried: nothing writes anything but v4-mapped addresses into
/// the maps, so an IPv6 one (which would read as 0.0.0.0) cannot be there.
pub(super) fn ip_of(addr: IpAddrBe) -> Ipv4Addr {
    addr.to_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// The inverse of [`lease_key`]: (peer, local address).
pub(super) fn lease_of(k: &LeaseKey) -> (Ipv4Addr, SocketAddrV4) {
    (
        ip_of(k.peer_addr_be),
        SocketAddrV4::new(ip_of(k.addr_be), u16::from_be(k.port_be)),
    )
}

pub fn lease_key(peer: Ipv4Addr, local: SocketAddrV4) -> LeaseKey {
    LeaseKey::new(peer.into(), local.into())
}

pub(super) fn tuple_of(k: &FlowKey) -> FlowTuple {
    (
        SocketAddrV4::new(ip_of(k.src_addr_be), u16::from_be(k.src_port_be)),
        SocketAddrV4::new(ip_of(k.dst_addr_be), u16::from_be(k.dst_port_be)),
    )
}

pub(super) fn flow_key((src, dst): FlowTuple) -> FlowKey {
    FlowKey::new(src.into(), dst.into())
}

impl Bpf {
    /// Replaces the set of protected ranges, without control endpoints (see
    /// [`Bpf::set_protected_services`]).
    pub fn set_protected_ranges(&mut self, ranges: &[ProtectedRange]) -> Result<(), BpfError> {
        let services: Vec<ProtectedService> = ranges
            .iter()
            .map(|&range| ProtectedService {
                range,
                control: None,
            })
            .collect();
        self.set_protected_services(&services)
    }

    /// Replaces the set of protected services (atomically for the program: one map value).
    pub fn set_protected_services(
        &mut self,
        services: &[ProtectedService],
    ) -> Result<(), BpfError> {
        if services.len() > MAX_DATA_RANGES {
            return Err(BpfError::TooManyRanges(services.len()));
        }
        let mut config = FilterConfig {
            range_count: services.len() as u32,
            ..Default::default()
        };
        for (slot, service) in config.ranges.iter_mut().zip(services) {
            let r = &service.range;
            let control = service.control.unwrap_or(ControlGuard {
                port: 0,
                syn_rate: 0,
                syn_burst: 0,
                prefix_syn_rate: 0,
                prefix_syn_burst: 0,
            });
            *slot = DataRange {
                addr_be: r.public_ip.into(),
                nat_addr_be: r.nat_ip.map_or(IpAddrBe::UNSPECIFIED, IpAddrBe::from),
                port_lo: r.first_port,
                port_hi: r.last_port,
                flags: if r.active_port_20 {
                    ftp_guard_common::RANGE_ACTIVE_PORT_20
                } else {
                    0
                },
                control_port: control.port,
                _pad: 0,
                syn_interval_ns: syn_interval_ns(control.syn_rate),
                syn_burst: control.syn_burst.max(1),
                prefix_syn_interval_ns: syn_interval_ns(control.prefix_syn_rate),
                prefix_syn_burst: control.prefix_syn_burst.max(1),
            };
        }
        self.filter_config
            .set(0, config, 0)
            .map_err(|source| BpfError::Map {
                map: names::FILTER_CONFIG,
                source,
            })
    }

    /// Installs a lease; never replaces one: a key already taken (another dataplane's lease
    /// on an overlapping range) is [`BpfError::LeaseTaken`], a full map
    /// [`BpfError::LeasesFull`].
    pub fn insert_lease(&mut self, lease: &Lease) -> Result<(), BpfError> {
        let value = match lease.action {
            LeaseAction::Admit => LeaseValue {
                kind: LEASE_ADMIT,
                ..LeaseValue::default()
            },
            LeaseAction::Nat {
                target,
                source,
                deadline_ns,
                target_ifindex,
                mss_max,
                peer_ifindex,
                peer_port,
            } => LeaseValue {
                target_addr_be: (*target.ip()).into(),
                source_addr_be: (*source.ip()).into(),
                target_port_be: target.port().to_be(),
                source_port_be: source.port().to_be(),
                kind: LEASE_NAT,
                expires_ns: deadline_ns,
                target_ifindex,
                mss_max,
                _pad: 0,
                peer_ifindex,
                peer_port_be: peer_port.to_be(),
                _pad2: 0,
            },
        };
        // NOEXIST: never overwrite a lease (it may be another dataplane's, kept by a reload).
        match self.leases.insert(lease.key(), value, 1) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Err(BpfError::LeasesFull(self.max_leases))
            }
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Err(BpfError::LeaseTaken {
                    peer: lease.peer,
                    local: lease.local,
                })
            }
            Err(source) => Err(BpfError::Map {
                map: names::LEASES,
                source,
            }),
        }
    }

    /// Removes a lease; `Ok(false)` when there was none.
    pub fn remove_lease(&mut self, peer: Ipv4Addr, local: SocketAddrV4) -> Result<bool, BpfError> {
        removed(names::LEASES, self.leases.remove(&lease_key(peer, local)))
    }

    /// True while a lease waits in the map (the peer's completed handshake claims it by
    /// deleting it).
    pub fn has_lease(&self, peer: Ipv4Addr, local: SocketAddrV4) -> Result<bool, BpfError> {
        Ok(found(names::LEASES, self.leases.get(&lease_key(peer, local), 0))?.is_some())
    }

    /// Every lease in the map as (peer, local address) — e.g. leases a previous process left.
    pub fn lease_keys(&self) -> Vec<(Ipv4Addr, SocketAddrV4)> {
        self.leases
            .keys()
            .filter_map(Result::ok)
            .map(|k| lease_of(&k))
            .collect()
    }

    /// Number of leases in the map (walks the map: for status and tests, not hot paths).
    pub fn lease_count(&self) -> usize {
        self.leases.keys().filter(Result::is_ok).count()
    }

    /// Replaces the set of the gateway's own IPv6 addresses (IPv6 to their data ports is
    /// dropped).
    pub fn set_local_ipv6(&mut self, addrs: &[std::net::Ipv6Addr]) -> Result<(), BpfError> {
        let map_error = |source| BpfError::Map {
            map: names::LOCAL_V6,
            source,
        };
        let wanted: Vec<[u8; 16]> = addrs.iter().map(|a| a.octets()).collect();
        let stale: Vec<[u8; 16]> = self
            .local_v6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in stale {
            self.local_v6.remove(&k).map_err(map_error)?;
        }
        for k in wanted {
            self.local_v6.insert(k, 0, 0).map_err(map_error)?;
        }
        Ok(())
    }

    /// Reads every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, BpfError> {
        let mut out = Vec::with_capacity(Counter::ALL.len());
        for counter in Counter::ALL {
            let per_cpu =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| BpfError::Map {
                        map: names::COUNTERS,
                        source,
                    })?;
            out.push((counter, per_cpu.iter().sum()));
        }
        Ok(Counters(out))
    }
}

/// The SYN bucket's refill interval for `rate` SYNs per second (0: no limit).
fn syn_interval_ns(rate: u32) -> u32 {
    1_000_000_000u32.checked_div(rate).map_or(0, |ns| ns.max(1))
}

pub(super) fn is_absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// A map lookup's result: `Ok(None)` when the key is not there.
pub(super) fn found<V>(
    map: &'static str,
    result: Result<V, MapError>,
) -> Result<Option<V>, BpfError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_absent(&e) => Ok(None),
        Err(source) => Err(BpfError::Map { map, source }),
    }
}

/// A map removal's result: `Ok(false)` when the key was not there.
pub(super) fn removed(map: &'static str, result: Result<(), MapError>) -> Result<bool, BpfError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if is_absent(&e) => Ok(false),
        Err(source) => Err(BpfError::Map { map, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_convert_back_to_the_addresses_they_were_made_of() {
        let peer = Ipv4Addr::new(192, 0, 2, 10);
        let local = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 40_001);
        assert_eq!(lease_of(&lease_key(peer, local)), (peer, local));
        let tuple = (SocketAddrV4::new(peer, 50_000), local);
        assert_eq!(tuple_of(&flow_key(tuple)), tuple);
        assert_eq!(ip_of(peer.into()), peer);
    }
}

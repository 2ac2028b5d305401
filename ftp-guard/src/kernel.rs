//! The one module that owns the eBPF object: loads it, attaches its programs and is the
//! only code that reads or writes its maps. Everything above speaks in `Ipv4Addr`s and
//! host-order ports; byte order is handled here.
use std::net::{Ipv4Addr, SocketAddrV4};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use ftp_guard_common::{
    Counter, DEFAULT_MAX_LEASES, DataRange, FilterConfig, LeaseKey, LeaseValue, MAX_DATA_RANGES,
    names,
};

/// The eBPF object built by build.rs (crate `ftp-guard-ebpf`), embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ftp-guard"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the eBPF object failed (needs root or CAP_BPF+CAP_NET_ADMIN): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object lacks {0} (stale build?)")]
    Missing(&'static str),
    #[error("eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching XDP to {interface} failed in every allowed mode: {source}")]
    Attach {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("at most {MAX_DATA_RANGES} data-port ranges can be protected, got {0}")]
    TooManyRanges(usize),
    #[error("the lease map is full ({0} entries)")]
    LeasesFull(u32),
}

/// How the guard's XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpAttach {
    /// Driver (native) mode, fall back to generic (skb) mode when the driver lacks XDP.
    #[default]
    Auto,
    /// Driver mode only: fail when the driver lacks native XDP.
    Native,
    /// Generic (skb) mode: works on every device, runs later in the stack.
    Generic,
}

/// The mode an attachment ended up in, for the start-up report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "xdp-native",
            AttachedMode::Generic => "xdp-generic",
        })
    }
}

/// One protected data-port range on a public address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtectedRange {
    pub public_ip: Ipv4Addr,
    pub first_port: u16,
    pub last_port: u16,
}

/// A data-port lease: `client` may open one data connection to `public`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub client: Ipv4Addr,
    pub public: SocketAddrV4,
    pub origin: SocketAddrV4,
}

impl Lease {
    fn key(&self) -> LeaseKey {
        lease_key(self.client, self.public)
    }
}

fn lease_key(client: Ipv4Addr, public: SocketAddrV4) -> LeaseKey {
    LeaseKey {
        client_addr_be: u32::from_ne_bytes(client.octets()),
        public_addr_be: u32::from_ne_bytes(public.ip().octets()),
        public_port_be: public.port().to_be(),
        _pad: 0,
    }
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
    pub max_leases: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            max_leases: DEFAULT_MAX_LEASES,
        }
    }
}

/// The loaded eBPF object with its maps. Dropping it detaches every program it attached.
pub struct Kernel {
    ebpf: Ebpf,
    filter_config: Array<MapData, FilterConfig>,
    leases: HashMap<MapData, LeaseKey, LeaseValue>,
    counters: PerCpuArray<MapData, u64>,
    max_leases: u32,
    links: Vec<XdpLinkId>,
}

impl Kernel {
    /// Loads and verifies every program of the embedded object. Attaches nothing.
    pub fn load(sizes: MapSizes) -> Result<Self, KernelError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::LEASES, sizes.max_leases)
            .load(EBPF_OBJECT)?;
        let program: &mut Xdp = ebpf
            .program_mut(names::XDP_GUARD)
            .ok_or(KernelError::Missing(names::XDP_GUARD))?
            .try_into()
            .map_err(|source| KernelError::Program {
                program: names::XDP_GUARD,
                source,
            })?;
        program.load().map_err(|source| KernelError::Program {
            program: names::XDP_GUARD,
            source,
        })?;
        let filter_config = take_map(&mut ebpf, names::FILTER_CONFIG)?;
        let leases = take_map(&mut ebpf, names::LEASES)?;
        let counters = take_map(&mut ebpf, names::COUNTERS)?;
        Ok(Self {
            ebpf,
            filter_config,
            leases,
            counters,
            max_leases: sizes.max_leases,
            links: Vec::new(),
        })
    }

    /// The guard program, e.g. for `BPF_PROG_TEST_RUN` packet fixtures.
    pub fn guard_program(&self) -> &Xdp {
        self.ebpf
            .program(names::XDP_GUARD)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load")
    }

    /// Attaches the guard to `interface` (in the caller thread's network namespace).
    pub fn attach_guard(
        &mut self,
        interface: &str,
        mode: XdpAttach,
    ) -> Result<AttachedMode, KernelError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(names::XDP_GUARD)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load");
        let attempts: &[(XdpMode, AttachedMode)] = match mode {
            XdpAttach::Auto => &[
                (XdpMode::Driver, AttachedMode::Native),
                (XdpMode::Skb, AttachedMode::Generic),
            ],
            XdpAttach::Native => &[(XdpMode::Driver, AttachedMode::Native)],
            XdpAttach::Generic => &[(XdpMode::Skb, AttachedMode::Generic)],
        };
        let mut last_error = None;
        for (xdp_mode, attached) in attempts {
            match program.attach(interface, *xdp_mode) {
                Ok(link) => {
                    self.links.push(link);
                    return Ok(*attached);
                }
                Err(e) => {
                    tracing::debug!(interface, mode = %attached, error = %e, "XDP attach failed");
                    last_error = Some(e);
                }
            }
        }
        Err(KernelError::Attach {
            interface: interface.to_owned(),
            source: last_error.expect("at least one attempt"),
        })
    }

    /// Replaces the set of protected ranges (atomically for the program: one map value).
    pub fn set_protected_ranges(&mut self, ranges: &[ProtectedRange]) -> Result<(), KernelError> {
        if ranges.len() > MAX_DATA_RANGES {
            return Err(KernelError::TooManyRanges(ranges.len()));
        }
        let mut config = FilterConfig {
            range_count: ranges.len() as u32,
            ..Default::default()
        };
        for (slot, r) in config.ranges.iter_mut().zip(ranges) {
            *slot = DataRange {
                addr_be: u32::from_ne_bytes(r.public_ip.octets()),
                port_lo: r.first_port,
                port_hi: r.last_port,
            };
        }
        self.filter_config
            .set(0, config, 0)
            .map_err(|source| KernelError::Map {
                map: names::FILTER_CONFIG,
                source,
            })
    }

    /// Installs (or replaces) a lease. A full map is reported as [`KernelError::LeasesFull`].
    pub fn insert_lease(&mut self, lease: &Lease) -> Result<(), KernelError> {
        let value = LeaseValue {
            origin_addr_be: u32::from_ne_bytes(lease.origin.ip().octets()),
            origin_port_be: lease.origin.port().to_be(),
            _pad: 0,
        };
        match self.leases.insert(lease.key(), value, 0) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Err(KernelError::LeasesFull(self.max_leases))
            }
            Err(source) => Err(KernelError::Map {
                map: names::LEASES,
                source,
            }),
        }
    }

    /// Removes a lease; `Ok(false)` when there was none.
    pub fn remove_lease(
        &mut self,
        client: Ipv4Addr,
        public: SocketAddrV4,
    ) -> Result<bool, KernelError> {
        match self.leases.remove(&lease_key(client, public)) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(source) => Err(KernelError::Map {
                map: names::LEASES,
                source,
            }),
        }
    }

    /// Number of leases in the map (walks the map: for status and tests, not hot paths).
    pub fn lease_count(&self) -> usize {
        self.leases.keys().filter(Result::is_ok).count()
    }

    /// Reads every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, KernelError> {
        let mut out = Vec::with_capacity(Counter::ALL.len());
        for counter in Counter::ALL {
            let per_cpu =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| KernelError::Map {
                        map: names::COUNTERS,
                        source,
                    })?;
            out.push((counter, per_cpu.iter().sum()));
        }
        Ok(Counters(out))
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, KernelError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::Missing(name))?;
    M::try_from(map).map_err(|source| KernelError::Map { map: name, source })
}

//! The eBPF object and everything that touches it: this module loads the object
//! ([`Bpf`]), is the only code that reads or writes its maps, and prepares the host around
//! it. Everything above speaks in `Ipv4Addr`s and host-order ports; byte order is handled
//! here. One file per role:
//! - this file: the loaded object, its errors;
//! - [`pins`]: pin-directory hygiene, the layout marker, refusing incompatible pins, unpin;
//! - [`attach`]: the XDP-or-TC policy, attaching, link pins;
//! - [`maps`]: typed access to the lease, range, local-IPv6 and counter maps, and the key
//!   conversions between userspace addresses and map keys;
//! - [`flows`]: typed access to the flow map (the NATed data connections);
//! - [`policy`]: typed access to the protection policy's maps (ACLs with their per-rule
//!   counters, bans, the control port's SYN buckets);
//! - [`events`]: the programs' ring-buffer events;
//! - [`host`]: interface look-ups (index, MTU, driver, addresses), sysctls;
//! - [`provision`]: the kernel data path for a set of services (load, attach, protect
//!   their ranges, prepare the host), and its update on reload.
//!
//! The loaded object is shared through a [`Handle`], whose documentation gives the lock
//! order.
pub mod attach;
pub mod events;
pub mod flows;
pub mod host;
pub mod maps;
pub mod pins;
pub mod policy;
pub mod provision;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, Weak},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, xdp::DevMapHash},
    programs::{ProgramError, SchedClassifier, Xdp},
};
use ftp_guard_common::{
    AclKeyData, AclValue, BanValue, FilterConfig, FlowKey, FlowValue, IpAddrBe, LeaseKey,
    LeaseValue, MAX_DATA_RANGES, PIN_LAYOUT_VERSION, SynBucket, SynKey, names,
};

pub use attach::{AttachedMode, XdpAttach, XdpPlan};
pub use events::{Event, EventHandler, EventKind, EventRouter, parse_event};
pub use flows::FlowState;
pub use host::{
    driver_name, host_addresses, interface_addresses, interface_index, interface_mtu,
    origin_side_ip,
};
pub use maps::{
    ControlGuard, Counters, FlowTuple, Lease, LeaseAction, MapSizes, ProtectedRange,
    ProtectedService, lease_key, monotonic_ns,
};
pub use pins::unpin;
pub use policy::{AclAction, AclRuleCount};
pub use provision::Provisioned;

use crate::sync::LockUnpoisoned as _;
use pins::{PINNED_MAPS, check_pinned_maps, layout_marker, pin_error, prepare_pin_dir};

/// The eBPF object built by build.rs (crate `ftp-guard-ebpf`), embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ftp-guard"));

/// What can fail in loading, pinning, attaching, or a map operation.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
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
    #[error("a lease for {peer} on {local} is already in the map")]
    LeaseTaken { peer: Ipv4Addr, local: SocketAddrV4 },
    #[error("attaching TC to {interface} failed: {source}")]
    AttachTc {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("the XDP redirect map: {0}")]
    TxPorts(#[from] aya::maps::xdp::XdpMapError),
    #[error("pinning under {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("the ACL map is full ({0} rules over all services)")]
    AclFull(u32),
}

/// The loaded eBPF object with its maps. Dropping it detaches every program it attached.
pub struct Bpf {
    ebpf: Ebpf,
    filter_config: Array<MapData, FilterConfig>,
    leases: HashMap<MapData, LeaseKey, LeaseValue>,
    local_v6: HashMap<MapData, [u8; 16], u32>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    tx_ports: DevMapHash<MapData>,
    /// The programs' event ring, until [`Bpf::take_events`] hands it to a reader.
    events: Option<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    acl: LpmTrie<MapData, AclKeyData, AclValue>,
    acl_hits: PerCpuArray<MapData, u64>,
    bans: HashMap<MapData, IpAddrBe, BanValue>,
    syn_buckets: HashMap<MapData, SynKey, SynBucket>,
    max_leases: u32,
    attachments: Vec<(String, AttachedMode)>,
    /// Where maps and links are pinned, when they must outlive the process.
    pin: Option<PathBuf>,
}

impl Bpf {
    /// Loads and verifies every program of the embedded object. Attaches nothing.
    pub fn load(sizes: MapSizes) -> Result<Self, BpfError> {
        Self::load_pinned(sizes, None)
    }

    /// Like [`Bpf::load`], with maps and links pinned under `pin` (a bpffs directory):
    /// maps already pinned there are reused, with their contents, and links already
    /// pinned get the new programs (see [`Bpf::attach_guard`]) — a restarted ftp-guard
    /// adopts what the previous one left, and data connections go on meanwhile.
    pub fn load_pinned(sizes: MapSizes, pin: Option<&Path>) -> Result<Self, BpfError> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::LEASES, sizes.max_leases)
            .map_max_entries(names::FLOWS, sizes.max_flows);
        let map_paths: Vec<(&str, PathBuf)> = match pin {
            Some(dir) => {
                prepare_pin_dir(dir)?;
                check_pinned_maps(dir, sizes)?;
                PINNED_MAPS.iter().map(|m| (*m, dir.join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        let program_error = |program| move |source| BpfError::Program { program, source };
        program_mut::<Xdp>(&mut ebpf, names::XDP_GUARD)?
            .load()
            .map_err(program_error(names::XDP_GUARD))?;
        program_mut::<SchedClassifier>(&mut ebpf, names::TC_GUARD)?
            .load()
            .map_err(program_error(names::TC_GUARD))?;
        if let Some(dir) = pin {
            let marker = dir.join(layout_marker(PIN_LAYOUT_VERSION));
            if !marker.is_dir() {
                std::fs::create_dir(&marker).map_err(|e| pin_error(&marker, e))?;
            }
        }
        Ok(Self {
            filter_config: take_map(&mut ebpf, names::FILTER_CONFIG)?,
            leases: take_map(&mut ebpf, names::LEASES)?,
            local_v6: take_map(&mut ebpf, names::LOCAL_V6)?,
            flows: take_map(&mut ebpf, names::FLOWS)?,
            tx_ports: take_map(&mut ebpf, names::TX_PORTS)?,
            events: Some(take_map(&mut ebpf, names::EVENTS)?),
            counters: take_map(&mut ebpf, names::COUNTERS)?,
            acl: take_map(&mut ebpf, names::ACL)?,
            acl_hits: take_map(&mut ebpf, names::ACL_HITS)?,
            bans: take_map(&mut ebpf, names::BANS)?,
            syn_buckets: take_map(&mut ebpf, names::SYN_BUCKETS)?,
            ebpf,
            max_leases: sizes.max_leases,
            attachments: Vec::new(),
            pin: pin.map(Path::to_owned),
        })
    }

    /// The guard program, e.g. for `BPF_PROG_TEST_RUN` packet fixtures.
    pub fn guard_program(&self) -> &Xdp {
        self.ebpf
            .program(names::XDP_GUARD)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load")
    }

    /// The TC program, e.g. for `BPF_PROG_TEST_RUN` packet fixtures.
    pub fn tc_program(&self) -> &SchedClassifier {
        self.ebpf
            .program(names::TC_GUARD)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load")
    }

    /// The programs' event ring buffer (once: its reader owns it). Read items with
    /// [`parse_event`].
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }
}

/// The program `name` of the object, as its type (`Xdp`, `SchedClassifier`).
fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, BpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(BpfError::Missing(name))?
        .try_into()
        .map_err(|source| BpfError::Program {
            program: name,
            source,
        })
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(BpfError::Missing(name))?;
    M::try_from(map).map_err(|source| BpfError::Map { map: name, source })
}

/// The loaded object, shared: the kernel dataplanes, the relay's guard, provisioning and
/// the admin endpoint each hold a clone, metrics a [`WeakHandle`]. [`Handle::lock`] is the
/// only way in.
///
/// Lock order: this lock comes after a dataplane's own bookkeeping lock (take the book,
/// then this; never the reverse), and whoever holds it takes no lock that may itself be
/// held while waiting for this one — only leaf locks that never wait on anything (a port
/// pool's, a timeouts cell) may be taken under it. Hold it for map operations only: no
/// `.await`, no network I/O.
#[derive(Clone)]
pub struct Handle(Arc<Mutex<Bpf>>);

impl Handle {
    pub fn new(bpf: Bpf) -> Self {
        Handle(Arc::new(Mutex::new(bpf)))
    }

    /// The object, locked. A panic while another holder had it leaves the maps as they
    /// were written (each operation is one syscall), so poisoning is recovered from.
    pub fn lock(&self) -> MutexGuard<'_, Bpf> {
        self.0.lock_unpoisoned()
    }

    /// A reference that does not keep the object (and its attachments) alive.
    pub fn downgrade(&self) -> WeakHandle {
        WeakHandle(Arc::downgrade(&self.0))
    }
}

/// A [`Handle`] that does not keep the object alive (metrics, background refreshes).
#[derive(Clone, Default)]
pub struct WeakHandle(Weak<Mutex<Bpf>>);

impl WeakHandle {
    pub fn upgrade(&self) -> Option<Handle> {
        self.0.upgrade().map(Handle)
    }
}

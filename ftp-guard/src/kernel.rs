//! The one module that owns the eBPF object: loads it, attaches its programs and is the
//! only code that reads or writes its maps. Everything above speaks in `Ipv4Addr`s and
//! host-order ports; byte order is handled here.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, MapError, MapInfo, MapType, PerCpuArray, RingBuf, xdp::DevMapHash,
    },
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use ftp_guard_common::{
    Counter, DEFAULT_MAX_FLOWS, DEFAULT_MAX_LEASES, DataRange, FilterConfig, FlowKey, FlowValue,
    IpAddrBe, LEASE_ADMIT, LEASE_NAT, LeaseKey, LeaseValue, MAX_DATA_RANGES, PIN_LAYOUT_VERSION,
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
}

fn pin_error(path: &Path, e: impl std::fmt::Display) -> KernelError {
    KernelError::Pin {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Maps that outlive the process when pinning is on (everything the programs use).
const PINNED_MAPS: [&str; 6] = [
    names::FILTER_CONFIG,
    names::LEASES,
    names::LOCAL_V6,
    names::FLOWS,
    names::TX_PORTS,
    names::COUNTERS,
];

/// BPF_FS_MAGIC from linux/magic.h: pins only work on a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Checks that `dir` is (or can be created, mode 0700) on a bpffs mount, owned by root or
/// this process's user and writable by nobody else: whoever can write there can replace a
/// pinned map or link with their own, which the next start adopts.
fn prepare_pin_dir(dir: &Path) -> Result<(), KernelError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| pin_error(dir, e))?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| pin_error(dir, e))?;
    // SAFETY: a valid path and an out-parameter of the right type.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return Err(pin_error(dir, std::io::Error::last_os_error()));
    }
    if fs.f_type as i64 != BPF_FS_MAGIC {
        return Err(pin_error(
            dir,
            "not on a bpffs (mount one: `mount -t bpf -o mode=0700 bpf /sys/fs/bpf`; note that `ip netns exec` hides the host's /sys/fs/bpf)",
        ));
    }
    let meta = std::fs::metadata(dir).map_err(|e| pin_error(dir, e))?;
    // SAFETY: a call without preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(pin_error(
            dir,
            format!(
                "owned by uid {}, not by root or this process (uid {me}): refusing to adopt what another user could have pinned",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(pin_error(
            dir,
            format!(
                "mode {:o} is writable by group or others, who could replace the pinned maps and links: `chmod go-w` it (or choose another pin_path)",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// What each pinned map must be for this build to adopt it: (name, type, key size,
/// value size, max entries).
fn pinned_map_specs(sizes: MapSizes) -> [(&'static str, MapType, u32, u32, u32); 6] {
    use core::mem::size_of;
    let size = |n: usize| n as u32;
    [
        (
            names::FILTER_CONFIG,
            MapType::Array,
            4,
            size(size_of::<FilterConfig>()),
            1,
        ),
        (
            names::LEASES,
            MapType::Hash,
            size(size_of::<LeaseKey>()),
            size(size_of::<LeaseValue>()),
            sizes.max_leases,
        ),
        (names::LOCAL_V6, MapType::Hash, 16, 4, 256),
        (
            names::FLOWS,
            MapType::Hash,
            size(size_of::<FlowKey>()),
            size(size_of::<FlowValue>()),
            sizes.max_flows,
        ),
        // Value: struct bpf_devmap_val (ifindex, program).
        (names::TX_PORTS, MapType::DevMapHash, 4, 8, 64),
        (
            names::COUNTERS,
            MapType::PerCpuArray,
            4,
            8,
            ftp_guard_common::COUNTER_COUNT,
        ),
    ]
}

/// The empty directory in the pin directory that records [`PIN_LAYOUT_VERSION`] (bpffs
/// holds only pins and directories).
fn layout_marker(version: u32) -> String {
    format!("layout-v{version}")
}

/// The remedy every pin mismatch names.
const UNPIN_ADVICE: &str = "it was pinned by an incompatible ftp-guard: run `ftp-guard unpin` (ends the data connections it carries) and start again";

/// Refuses pinned maps under `dir` that this build cannot use as they are: another map
/// type, key or value size, capacity, or layout version (aya would adopt any map pinned
/// under the right name).
fn check_pinned_maps(dir: &Path, sizes: MapSizes) -> Result<(), KernelError> {
    let specs = pinned_map_specs(sizes);
    if !specs.iter().any(|(name, ..)| dir.join(name).exists()) {
        return Ok(());
    }
    let marker = layout_marker(PIN_LAYOUT_VERSION);
    if !dir.join(&marker).is_dir() {
        let found = std::fs::read_dir(dir)
            .map_err(|e| pin_error(dir, e))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .find(|n| n.starts_with("layout-v"));
        let found = found.map_or_else(
            || "none (an older ftp-guard)".to_owned(),
            |n| n[8..].to_owned(),
        );
        return Err(pin_error(
            dir,
            format!(
                "pinned maps of layout version {found}, this ftp-guard needs {PIN_LAYOUT_VERSION}: {UNPIN_ADVICE}"
            ),
        ));
    }
    for (name, map_type, key_size, value_size, max_entries) in specs {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| pin_error(&path, e))?;
        let found_type = info.map_type().map_err(|e| pin_error(&path, e))?;
        let mismatch = if found_type != map_type {
            Some(format!(
                "is a {found_type:?} map, this ftp-guard needs {map_type:?}"
            ))
        } else if info.key_size() != key_size {
            Some(format!(
                "has key size {}, this ftp-guard needs {key_size}",
                info.key_size()
            ))
        } else if info.value_size() != value_size {
            Some(format!(
                "has value size {}, this ftp-guard needs {value_size}",
                info.value_size()
            ))
        } else if info.max_entries() != max_entries {
            Some(format!(
                "has {} entries, this ftp-guard needs {max_entries} (max_leases changed?)",
                info.max_entries()
            ))
        } else {
            None
        };
        if let Some(mismatch) = mismatch {
            return Err(pin_error(
                &path,
                format!("map {name} {mismatch}: {UNPIN_ADVICE}"),
            ));
        }
    }
    Ok(())
}

/// Removes everything ftp-guard pinned under `dir`: its programs detach once nothing else
/// holds them, its maps are freed.
pub fn unpin(dir: &Path) -> Result<usize, KernelError> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(pin_error(dir, e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            // The layout marker.
            std::fs::remove_dir(&path).map_err(|e| pin_error(&path, e))?;
            continue;
        }
        std::fs::remove_file(&path).map_err(|e| pin_error(&path, e))?;
        removed += 1;
    }
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
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
    Tcx,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "xdp-native",
            AttachedMode::Generic => "xdp-generic",
            AttachedMode::Tcx => "tcx-ingress",
        })
    }
}

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

/// IPv4 only until IPv6 is carried: nothing writes anything but v4-mapped addresses into
/// the maps, so an IPv6 one (which would read as 0.0.0.0) cannot be there.
fn ip_of(addr: IpAddrBe) -> Ipv4Addr {
    addr.to_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// The inverse of [`lease_key`]: (peer, local address).
fn lease_of(k: &LeaseKey) -> (Ipv4Addr, SocketAddrV4) {
    (
        ip_of(k.peer_addr_be),
        SocketAddrV4::new(ip_of(k.addr_be), u16::from_be(k.port_be)),
    )
}

pub fn lease_key(peer: Ipv4Addr, local: SocketAddrV4) -> LeaseKey {
    LeaseKey::new(peer.into(), local.into())
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

/// The state of one direction of a NATed data connection, as read from the flow map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    pub packets: u64,
    pub bytes: u64,
    pub last_seen_ns: u64,
    pub fin: bool,
    pub rst: bool,
    /// This direction has acknowledged the other direction's FIN.
    pub peer_fin_acked: bool,
    /// Its handshake has not completed: the lease it was started under is not claimed.
    pub tentative: bool,
    /// The other direction's key: which connection this entry belongs to (a later
    /// connection may take over a 4-tuple once this one is over).
    pub reverse: FlowTuple,
}

impl From<FlowValue> for FlowState {
    fn from(v: FlowValue) -> Self {
        FlowState {
            packets: v.packets,
            bytes: v.bytes,
            last_seen_ns: v.last_seen_ns,
            fin: v.flags & ftp_guard_common::FLOW_FIN != 0,
            rst: v.flags & ftp_guard_common::FLOW_RST != 0,
            peer_fin_acked: v.flags & ftp_guard_common::FLOW_PEER_FIN_ACKED != 0,
            tentative: v.flags & ftp_guard_common::FLOW_TENTATIVE != 0,
            reverse: tuple_of(&v.reverse),
        }
    }
}

impl FlowState {
    /// True when the connection of this entry and its `pair` is over, by the kernel's own
    /// rule (`connection_over`): a RST either way, or both FINs acknowledged.
    pub fn over_with(&self, pair: &FlowState) -> bool {
        let flags = |f: &FlowState| {
            (if f.rst { ftp_guard_common::FLOW_RST } else { 0 })
                | if f.peer_fin_acked {
                    ftp_guard_common::FLOW_PEER_FIN_ACKED
                } else {
                    0
                }
        };
        ftp_guard_common::connection_over(flags(self), flags(pair))
    }
}

fn tuple_of(k: &FlowKey) -> FlowTuple {
    (
        SocketAddrV4::new(ip_of(k.src_addr_be), u16::from_be(k.src_port_be)),
        SocketAddrV4::new(ip_of(k.dst_addr_be), u16::from_be(k.dst_port_be)),
    )
}

/// A TCP connection as the gateway sees it arrive: (source, destination).
pub type FlowTuple = (SocketAddrV4, SocketAddrV4);

fn flow_key((src, dst): FlowTuple) -> FlowKey {
    FlowKey::new(src.into(), dst.into())
}

/// The loaded eBPF object with its maps. Dropping it detaches every program it attached.
pub struct Kernel {
    ebpf: Ebpf,
    filter_config: Array<MapData, FilterConfig>,
    leases: HashMap<MapData, LeaseKey, LeaseValue>,
    local_v6: HashMap<MapData, [u8; 16], u32>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    tx_ports: DevMapHash<MapData>,
    /// The programs' event ring, until [`Kernel::take_events`] hands it to a reader.
    events: Option<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    max_leases: u32,
    attachments: Vec<(String, AttachedMode)>,
    /// Where maps and links are pinned, when they must outlive the process.
    pin: Option<PathBuf>,
}

impl Kernel {
    /// Loads and verifies every program of the embedded object. Attaches nothing.
    pub fn load(sizes: MapSizes) -> Result<Self, KernelError> {
        Self::load_pinned(sizes, None)
    }

    /// Like [`Kernel::load`], with maps and links pinned under `pin` (a bpffs directory):
    /// maps already pinned there are reused, with their contents, and links already
    /// pinned get the new programs (see [`Kernel::attach_guard`]) — a restarted ftp-guard
    /// adopts what the previous one left, and data connections go on meanwhile.
    pub fn load_pinned(sizes: MapSizes, pin: Option<&Path>) -> Result<Self, KernelError> {
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
        let program_error = |program| move |source| KernelError::Program { program, source };
        let xdp: &mut Xdp = ebpf
            .program_mut(names::XDP_GUARD)
            .ok_or(KernelError::Missing(names::XDP_GUARD))?
            .try_into()
            .map_err(program_error(names::XDP_GUARD))?;
        xdp.load().map_err(program_error(names::XDP_GUARD))?;
        let tc: &mut SchedClassifier = ebpf
            .program_mut(names::TC_GUARD)
            .ok_or(KernelError::Missing(names::TC_GUARD))?
            .try_into()
            .map_err(program_error(names::TC_GUARD))?;
        tc.load().map_err(program_error(names::TC_GUARD))?;
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

    /// Lets the XDP program redirect to `interface` (done by [`Kernel::attach_guard`] for
    /// every interface it attaches to; packet fixtures use it directly).
    pub fn allow_xdp_redirect(&mut self, interface: &str) -> Result<(), KernelError> {
        let index = ifindex(interface)?;
        self.tx_ports.insert(index, index, None, 0)?;
        Ok(())
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
        let link_path = self
            .pin
            .as_ref()
            .map(|d| d.join(format!("link-xdp-{interface}")));
        if let Some(path) = link_path.as_ref().filter(|p| p.exists()) {
            // A link left by the previous ftp-guard: swap in our program, atomically.
            let link = PinnedLink::from_pin(path).map_err(|e| pin_error(path, e))?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| pin_error(path, e))?;
            let id = program
                .attach_to_link(link)
                .map_err(|e| pin_error(path, e))?;
            // The pin keeps the link; our handle may go.
            drop(program.take_link(id));
            let mode = attempts[0].1;
            tracing::info!(interface, %mode, "adopted the pinned XDP link");
            self.attachments.push((interface.to_owned(), mode));
            return Ok(mode);
        }
        let mut last_error = None;
        for (xdp_mode, attached) in attempts {
            match program.attach(interface, *xdp_mode) {
                Ok(id) => {
                    if let Some(path) = &link_path {
                        let link = program.take_link(id).map_err(|e| pin_error(path, e))?;
                        FdLink::try_from(link)
                            .map_err(|e| pin_error(path, e))?
                            .pin(path)
                            .map_err(|e| pin_error(path, e))?;
                    }
                    // XDP can redirect only to devices that take XDP frames: in native
                    // mode those attached natively, in generic mode any device.
                    let ifindex = ifindex(interface)?;
                    self.tx_ports.insert(ifindex, ifindex, None, 0)?;
                    self.attachments.push((interface.to_owned(), *attached));
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

    /// Attaches the TC program to `interface`'s ingress (tcx), for devices where XDP
    /// cannot redirect (bridges, bonds) or is not wanted.
    pub fn attach_tc(&mut self, interface: &str) -> Result<AttachedMode, KernelError> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(names::TC_GUARD)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load");
        let link_path = self
            .pin
            .as_ref()
            .map(|d| d.join(format!("link-tcx-{interface}")));
        if let Some(path) = link_path.as_ref().filter(|p| p.exists()) {
            let link = PinnedLink::from_pin(path).map_err(|e| pin_error(path, e))?;
            let link = SchedClassifierLink::try_from(FdLink::from(link))
                .map_err(|e| pin_error(path, e))?;
            let id = program
                .attach_to_link(link)
                .map_err(|e| pin_error(path, e))?;
            drop(program.take_link(id));
            tracing::info!(interface, "adopted the pinned tcx link");
        } else {
            let id = program
                .attach(interface, TcAttachType::Ingress)
                .map_err(|source| KernelError::AttachTc {
                    interface: interface.to_owned(),
                    source,
                })?;
            if let Some(path) = &link_path {
                let link = program.take_link(id).map_err(|e| pin_error(path, e))?;
                FdLink::try_from(link)
                    .map_err(|e| pin_error(path, e))?
                    .pin(path)
                    .map_err(|e| pin_error(path, e))?;
            }
        }
        self.attachments
            .push((interface.to_owned(), AttachedMode::Tcx));
        Ok(AttachedMode::Tcx)
    }

    /// The programs' event ring buffer (once: its reader owns it). Read items with
    /// [`parse_event`].
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Where the programs are attached, in order.
    pub fn attachments(&self) -> &[(String, AttachedMode)] {
        &self.attachments
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
                addr_be: r.public_ip.into(),
                nat_addr_be: r.nat_ip.map_or(IpAddrBe::UNSPECIFIED, IpAddrBe::from),
                port_lo: r.first_port,
                port_hi: r.last_port,
                flags: if r.active_port_20 {
                    ftp_guard_common::RANGE_ACTIVE_PORT_20
                } else {
                    0
                },
            };
        }
        self.filter_config
            .set(0, config, 0)
            .map_err(|source| KernelError::Map {
                map: names::FILTER_CONFIG,
                source,
            })
    }

    /// Installs a lease; never replaces one: a key already taken (another dataplane's lease
    /// on an overlapping range) is [`KernelError::LeaseTaken`], a full map
    /// [`KernelError::LeasesFull`].
    pub fn insert_lease(&mut self, lease: &Lease) -> Result<(), KernelError> {
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
                Err(KernelError::LeasesFull(self.max_leases))
            }
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Err(KernelError::LeaseTaken {
                    peer: lease.peer,
                    local: lease.local,
                })
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
        peer: Ipv4Addr,
        local: SocketAddrV4,
    ) -> Result<bool, KernelError> {
        removed(names::LEASES, self.leases.remove(&lease_key(peer, local)))
    }

    /// True while a lease waits in the map (the peer's completed handshake claims it by
    /// deleting it).
    pub fn has_lease(&self, peer: Ipv4Addr, local: SocketAddrV4) -> Result<bool, KernelError> {
        Ok(found(names::LEASES, self.leases.get(&lease_key(peer, local), 0))?.is_some())
    }

    /// Every connection in the flow map that claimed its lease (its handshake completed), by
    /// the claiming direction: (peer's address, gateway address it connected to, new
    /// source, new destination).
    pub fn claimed_flows(&self) -> Vec<(SocketAddrV4, SocketAddrV4, SocketAddrV4, SocketAddrV4)> {
        self.flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| {
                v.flags & ftp_guard_common::FLOW_CLAIMER != 0
                    && v.flags & ftp_guard_common::FLOW_TENTATIVE == 0
            })
            .map(|(k, v)| {
                (
                    SocketAddrV4::new(ip_of(k.src_addr_be), u16::from_be(k.src_port_be)),
                    SocketAddrV4::new(ip_of(k.dst_addr_be), u16::from_be(k.dst_port_be)),
                    SocketAddrV4::new(ip_of(v.new_src_addr_be), u16::from_be(v.new_src_port_be)),
                    SocketAddrV4::new(ip_of(v.new_dst_addr_be), u16::from_be(v.new_dst_port_be)),
                )
            })
            .collect()
    }

    /// Replaces the set of the gateway's own IPv6 addresses (IPv6 to their data ports is
    /// dropped).
    pub fn set_local_ipv6(&mut self, addrs: &[std::net::Ipv6Addr]) -> Result<(), KernelError> {
        let map_error = |source| KernelError::Map {
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

    /// One direction of a flow, keyed as its packets arrive at the gateway.
    pub fn flow(&self, tuple: FlowTuple) -> Result<Option<FlowState>, KernelError> {
        Ok(found(names::FLOWS, self.flows.get(&flow_key(tuple), 0))?.map(FlowState::from))
    }

    /// One direction of a flow as the programs keep it (for tests and diagnostics).
    pub fn flow_value(&self, tuple: FlowTuple) -> Result<Option<FlowValue>, KernelError> {
        found(names::FLOWS, self.flows.get(&flow_key(tuple), 0))
    }

    /// Removes every entry of a connection whose handshake never completed (a previous
    /// process's: their leases are gone with it); returns how many.
    pub fn remove_tentative_flows(&mut self) -> Result<usize, KernelError> {
        let keys: Vec<FlowKey> = self
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.flags & ftp_guard_common::FLOW_TENTATIVE != 0)
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            removed(names::FLOWS, self.flows.remove(k))?;
        }
        Ok(keys.len())
    }

    pub fn remove_flow(&mut self, tuple: FlowTuple) -> Result<bool, KernelError> {
        removed(names::FLOWS, self.flows.remove(&flow_key(tuple)))
    }

    /// Removes flow entries that no connection accounts for, e.g. left in pinned maps by
    /// a previous process: an entry whose pair is missing or paired with another entry,
    /// and both entries of a connection whose claimed address and port lie in no protected
    /// range (a service since removed from the config). Returns how many were removed.
    pub fn sweep_unclaimed_flows(&mut self) -> Result<usize, KernelError> {
        let config = self
            .filter_config
            .get(&0, 0)
            .map_err(|source| KernelError::Map {
                map: names::FILTER_CONFIG,
                source,
            })?;
        let ranges = &config.ranges[..(config.range_count as usize).min(MAX_DATA_RANGES)];
        let protected = |k: &FlowKey| {
            let port = u16::from_be(k.dst_port_be);
            ranges.iter().any(|r| {
                (r.addr_be == k.dst_addr_be
                    || (!r.nat_addr_be.is_unspecified() && r.nat_addr_be == k.dst_addr_be))
                    && r.contains(port)
            })
        };
        let entries: std::collections::HashMap<FlowKey, FlowValue> =
            self.flows.iter().filter_map(Result::ok).collect();
        let doomed: Vec<FlowKey> = entries
            .iter()
            .filter(|(key, value)| {
                let paired = entries
                    .get(&value.reverse)
                    .is_some_and(|pair| pair.reverse == **key);
                // The claiming direction's destination: the lease's address and port.
                let claimed = if value.flags & ftp_guard_common::FLOW_CLAIMER != 0 {
                    **key
                } else {
                    value.reverse
                };
                !paired || !protected(&claimed)
            })
            .map(|(key, _)| *key)
            .collect();
        let mut count = 0;
        for key in doomed {
            if removed(names::FLOWS, self.flows.remove(&key))? {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Unpins the links of interfaces that `configured` does not name (left by a previous
    /// process whose config did): with their last reference gone, the kernel detaches
    /// their programs. Returns the link pins removed.
    pub fn detach_unconfigured_links(
        &self,
        configured: &[&str],
    ) -> Result<Vec<String>, KernelError> {
        let Some(dir) = &self.pin else {
            return Ok(Vec::new());
        };
        let mut detached = Vec::new();
        for entry in std::fs::read_dir(dir)
            .map_err(|e| pin_error(dir, e))?
            .flatten()
        {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Some(interface) = name
                .strip_prefix("link-xdp-")
                .or_else(|| name.strip_prefix("link-tcx-"))
            else {
                continue;
            };
            if configured.contains(&interface) {
                continue;
            }
            std::fs::remove_file(entry.path()).map_err(|e| pin_error(&entry.path(), e))?;
            detached.push(name);
        }
        detached.sort();
        Ok(detached)
    }

    /// Every lease in the map as (peer, local address) — e.g. leases a previous process left.
    pub fn lease_keys(&self) -> Vec<(Ipv4Addr, SocketAddrV4)> {
        self.leases
            .keys()
            .filter_map(Result::ok)
            .map(|k| lease_of(&k))
            .collect()
    }

    /// How a flow direction is rewritten: (new source, new destination).
    pub fn flow_rewrite(
        &self,
        tuple: FlowTuple,
    ) -> Result<Option<(SocketAddrV4, SocketAddrV4)>, KernelError> {
        let value = found(names::FLOWS, self.flows.get(&flow_key(tuple), 0))?;
        Ok(value.map(|v| {
            (
                SocketAddrV4::new(ip_of(v.new_src_addr_be), u16::from_be(v.new_src_port_be)),
                SocketAddrV4::new(ip_of(v.new_dst_addr_be), u16::from_be(v.new_dst_port_be)),
            )
        }))
    }

    /// Number of flow entries (walks the map: for status and tests).
    pub fn flow_count(&self) -> usize {
        self.flows.keys().filter(Result::is_ok).count()
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

/// What happened to a flow, as the programs report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A connection's handshake completed and claimed its lease; `key` is the claiming
    /// direction.
    Claimed,
    /// The first FIN one way.
    Fin,
    /// The first RST one way.
    Rst,
}

/// One event from the programs' ring buffer: `key` is the direction the packet came in,
/// `reverse` the other one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: FlowTuple,
    pub reverse: FlowTuple,
}

/// Decodes one ring-buffer item; `None` for anything that is not a known event.
pub fn parse_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<ftp_guard_common::FlowEvent>() {
        return None;
    }
    // SAFETY: long enough (checked), and FlowEvent is plain integers: any bits are valid.
    let e: ftp_guard_common::FlowEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = match e.kind {
        ftp_guard_common::EVENT_CLAIMED => EventKind::Claimed,
        ftp_guard_common::EVENT_FIN => EventKind::Fin,
        ftp_guard_common::EVENT_RST => EventKind::Rst,
        _ => return None,
    };
    Some(Event {
        kind,
        key: tuple_of(&e.key),
        reverse: tuple_of(&e.reverse),
    })
}

fn is_absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// A map lookup's result: `Ok(None)` when the key is not there.
fn found<V>(map: &'static str, result: Result<V, MapError>) -> Result<Option<V>, KernelError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_absent(&e) => Ok(None),
        Err(source) => Err(KernelError::Map { map, source }),
    }
}

/// A map removal's result: `Ok(false)` when the key was not there.
fn removed(map: &'static str, result: Result<(), MapError>) -> Result<bool, KernelError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if is_absent(&e) => Ok(false),
        Err(source) => Err(KernelError::Map { map, source }),
    }
}

/// The driver behind `interface` (ethtool's GDRVINFO, in the caller's network namespace):
/// "veth", "bridge", "mlx5_core"…; `None` when the device does not say.
pub fn driver_name(interface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    // SAFETY: a plain C struct, zero is a valid start.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: the request points to a live DrvInfo, the struct SIOCETHTOOL fills.
    unsafe {
        interface_ioctl(interface, SIOCETHTOOL, |req| {
            req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
        })?
    };
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The MTU of `interface` (SIOCGIFMTU, in the caller thread's network namespace).
pub fn interface_mtu(interface: &str) -> Option<u32> {
    const SIOCGIFMTU: libc::c_ulong = 0x8921;
    // SAFETY: SIOCGIFMTU reads only the name and fills the union's mtu member.
    let req = unsafe { interface_ioctl(interface, SIOCGIFMTU, |_| {})? };
    // SAFETY: the member SIOCGIFMTU filled.
    Some(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// One SIOC* request about `interface` on a throwaway socket (so in the caller thread's
/// network namespace): the filled `ifreq`, or `None` when the request failed.
///
/// # Safety
/// `request` must be an interface ioctl whose argument is an `ifreq` as `prepare` leaves
/// it (pointers it stores must stay valid for the call).
unsafe fn interface_ioctl(
    interface: &str,
    request: libc::c_ulong,
    prepare: impl FnOnce(&mut libc::ifreq),
) -> Option<libc::ifreq> {
    if interface.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain C struct, zero is a valid start.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(interface.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    prepare(&mut req);
    // SAFETY: a socket we own and close; the request's validity is the caller's promise.
    let ok = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, request as _, &mut req);
        libc::close(fd);
        rc == 0
    };
    ok.then_some(req)
}

/// The index of `interface` in the caller's network namespace, if it exists.
pub fn interface_index(interface: &str) -> Option<u32> {
    ifindex(interface).ok()
}

fn ifindex(interface: &str) -> Result<u32, KernelError> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| KernelError::NoInterface(interface.to_owned()))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(KernelError::NoInterface(interface.to_owned())),
        i => Ok(i),
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, KernelError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::Missing(name))?;
    M::try_from(map).map_err(|source| KernelError::Map { map: name, source })
}

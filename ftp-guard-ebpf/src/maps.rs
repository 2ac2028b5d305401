//! Every map of the eBPF object, one line of purpose each. Userspace finds them by the
//! names in `ftp_guard_common::names`; sizes given here are defaults it may override.
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use ftp_guard_common::{
    AclKeyData, AclValue, BanValue, COUNTER_COUNT, Counter, DEFAULT_MAX_FLOWS, DEFAULT_MAX_LEASES,
    FilterConfig, FlowKey, FlowValue, IpAddrBe, LeaseKey, LeaseValue, MAX_ACL_RULES, MAX_BANS,
    MAX_SYN_SOURCES, SynBucket, SynKey,
};

/// What the guard protects: the public addresses and their data-port ranges (one entry).
#[map(name = "FILTER_CONFIG")]
pub static FILTER_CONFIG: Array<FilterConfig> = Array::with_max_entries(1, 0);

/// Leases written by the control proxy: (client, public address, public port) → origin.
/// The peer's ACK completing a connection's handshake claims one by deleting it.
#[map(name = "LEASES")]
pub static LEASES: HashMap<LeaseKey, LeaseValue> = HashMap::with_max_entries(DEFAULT_MAX_LEASES, 0);

/// The gateway's own IPv6 addresses (value unused): IPv6 to their data ports is dropped.
#[map(name = "LOCAL_V6")]
pub static LOCAL_V6: HashMap<[u8; 16], u32> = HashMap::with_max_entries(256, 0);

/// NAT state of every data connection, one entry per direction, keyed as packets arrive.
#[map(name = "FLOWS")]
pub static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Per-CPU scratch space in which a connection's first SYN builds its two flow entries.
#[map(name = "NEW_FLOWS")]
pub static NEW_FLOWS: PerCpuArray<NewFlows> = PerCpuArray::with_max_entries(1, 0);

/// The two flow entries of a new connection, before they are inserted.
#[repr(C)]
pub struct NewFlows {
    /// The claiming peer's direction (towards the target).
    pub forward: FlowValue,
    /// The target's direction (back to the peer).
    pub reverse: FlowValue,
}

/// Claims, FINs and RSTs, for userspace to settle leases and flows at once (256 KiB:
/// ~9,000 events; when full, userspace's periodic look still finds what it missed).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// bpf_ringbuf_output flag: queue the event without waking the reader.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// Tells userspace `kind` happened to the flow `key` (whose other direction is `reverse`).
/// Only claims wake the reader; FINs and RSTs wait for the next wake-up (the next claim,
/// or the reader's own periodic drain): nothing about them is urgent, and a wake-up costs
/// a context switch per event.
#[inline(always)]
pub fn notify(kind: u32, key: &FlowKey, reverse: &FlowKey) {
    let event = ftp_guard_common::FlowEvent {
        kind,
        key: *key,
        reverse: *reverse,
    };
    let flags = if kind == ftp_guard_common::EVENT_CLAIMED {
        0
    } else {
        BPF_RB_NO_WAKEUP
    };
    // A full ring loses the event; the sweeper's periodic look is the safety net.
    let _ = EVENTS.output::<ftp_guard_common::FlowEvent>(&event, flags);
}

/// Interfaces the XDP program may redirect to (those whose driver can transmit XDP frames).
#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// Every service's allow and deny rules, longest prefix first: (service, source) → rule.
#[map(name = "ACL")]
pub static ACL: LpmTrie<AclKeyData, AclValue> = LpmTrie::with_max_entries(MAX_ACL_RULES, 0);

/// Packets each ACL rule decided, per CPU, indexed by its rule id.
#[map(name = "ACL_HITS")]
pub static ACL_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_ACL_RULES, 0);

/// Banned sources (written by userspace): dropped at every protected endpoint until expiry.
#[map(name = "BANS")]
pub static BANS: HashMap<IpAddrBe, BanValue> = HashMap::with_max_entries(MAX_BANS, 0);

/// Control-port SYN token buckets per (service, source); the least recently used go first.
#[map(name = "SYN_BUCKETS")]
pub static SYN_BUCKETS: LruHashMap<SynKey, SynBucket> =
    LruHashMap::with_max_entries(MAX_SYN_SOURCES, 0);

/// Per-CPU scratch space for the policy's map keys (the stack has no room for them).
#[map(name = "POLICY_SCRATCH")]
pub static POLICY_SCRATCH: PerCpuArray<PolicyScratch> = PerCpuArray::with_max_entries(1, 0);

/// The keys one packet's policy look-ups use.
#[repr(C)]
pub struct PolicyScratch {
    /// The packet's source: the ban key.
    pub source: IpAddrBe,
    pub acl: aya_ebpf::maps::lpm_trie::Key<AclKeyData>,
    pub syn: SynKey,
}

/// Packets seen per verdict reason, per CPU (no atomics needed on the hot path).
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Adds one to `counter` on this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this program on this CPU writes it while it runs.
        unsafe { *slot += 1 };
    }
}

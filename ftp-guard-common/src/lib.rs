//! Types shared by the eBPF programs (`ftp-guard-ebpf`) and userspace (`ftp-guard`).
//!
//! Rules for everything in here (they are what the kernel and userspace agree on):
//! - `#[repr(C)]`, no implicit padding (explicit `_pad` fields, checked by the size
//!   asserts below), no `bool`, `Option` or enums inside map values;
//! - a field's byte order is in its name: `_be` is network order, otherwise host order;
//! - addresses are [`IpAddrBe`] (16 bytes, IPv4 v4-mapped), so IPv6 needs no new layout.
#![no_std]

mod addr;
mod policy;
#[cfg(any(feature = "user", test))]
mod sockets;

pub use addr::IpAddrBe;
pub use policy::*;

/// Names of the programs and maps in the eBPF object, so userspace never spells them twice.
pub mod names {
    /// XDP program on the gateway's interfaces: guards the public data-port range and
    /// NATs leased data connections in both directions.
    pub const XDP_GUARD: &str = "xdp_guard";
    /// The same logic as a TC (tcx) ingress program, for devices without XDP redirect
    /// (bridges, bonds, VLAN devices).
    pub const TC_GUARD: &str = "tc_guard";
    /// Array map, one [`FilterConfig`](super::FilterConfig): what the guard protects.
    pub const FILTER_CONFIG: &str = "FILTER_CONFIG";
    /// Hash map [`LeaseKey`](super::LeaseKey) → [`LeaseValue`](super::LeaseValue).
    pub const LEASES: &str = "LEASES";
    /// Per-CPU array of `u64` packet counters indexed by [`Counter`](super::Counter).
    pub const COUNTERS: &str = "COUNTERS";
    /// Hash map of the gateway's own IPv6 addresses (`[u8; 16]` → `u32`, value unused):
    /// IPv6 aimed at one of them on a data port is dropped (IPv6 is not carried yet).
    pub const LOCAL_V6: &str = "LOCAL_V6";
    /// Hash map [`FlowKey`](super::FlowKey) → [`FlowValue`](super::FlowValue): both
    /// directions of every NATed data connection.
    pub const FLOWS: &str = "FLOWS";
    /// Ring buffer of [`FlowEvent`](super::FlowEvent)s: what userspace must learn at once.
    pub const EVENTS: &str = "EVENTS";
    /// Device hash map: interfaces an XDP program may redirect to.
    pub const TX_PORTS: &str = "TX_PORTS";
    /// LPM trie `Key<`[`AclKeyData`](super::AclKeyData)`>` → [`AclValue`](super::AclValue):
    /// every service's allow and deny rules.
    pub const ACL: &str = "ACL";
    /// Per-CPU array of `u64`, indexed by [`AclValue::rule_id`](super::AclValue): packets
    /// each ACL rule decided.
    pub const ACL_HITS: &str = "ACL_HITS";
    /// Hash map [`IpAddrBe`](super::IpAddrBe) → [`BanValue`](super::BanValue): banned sources.
    pub const BANS: &str = "BANS";
    /// LRU hash map [`SynKey`](super::SynKey) → [`SynBucket`](super::SynBucket): the
    /// control port's SYN rate per source.
    pub const SYN_BUCKETS: &str = "SYN_BUCKETS";
}

/// Version of what pinned maps hold and mean (types, flags, field meanings). Raise it
/// with any change a process of the other version would misread: ftp-guard adopts pinned
/// maps only of its own version (and asks the operator to `unpin` others).
pub const PIN_LAYOUT_VERSION: u32 = 4;

/// How many (public address, data-port range) pairs the guard can protect.
pub const MAX_DATA_RANGES: usize = 16;

/// Default capacity of the lease map (at least 65,536 concurrent leases).
pub const DEFAULT_MAX_LEASES: u32 = 65_536;
/// Default capacity of the flow map: two entries (one per direction) per lease.
pub const DEFAULT_MAX_FLOWS: u32 = 2 * DEFAULT_MAX_LEASES;

/// One protected service: TCP to `addr_be` with a destination port in `port_lo..=port_hi`
/// (clients' side), the same ports on `nat_addr_be` (the origin's side), and its control
/// port on `addr_be`. Its index in [`FilterConfig::ranges`] is the service index of the
/// policy maps (ACL rules, SYN buckets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataRange {
    /// Public (client-facing) address.
    pub addr_be: IpAddrBe,
    /// The gateway's origin-facing address that NATed data connections come from;
    /// [`IpAddrBe::UNSPECIFIED`] when no lease of this range is NATed.
    pub nat_addr_be: IpAddrBe,
    /// First port of the range, host byte order.
    pub port_lo: u16,
    /// Last port of the range (inclusive), host byte order.
    pub port_hi: u16,
    /// [`RANGE_ACTIVE_PORT_20`]…
    pub flags: u32,
    /// The service's control port on `addr_be`, host order; 0 = none guarded.
    pub control_port: u16,
    pub _pad: u16,
    /// Control port: nanoseconds between SYNs one source may send on average (the SYN
    /// token bucket's refill interval); 0 = no limit.
    pub syn_interval_ns: u32,
    /// Control port: SYNs one source may send at once (the bucket's depth).
    pub syn_burst: u32,
    /// Control port: the same for all sources of one /24 together (a budget per source
    /// prefix against floods from many addresses); 0 = no limit.
    pub prefix_syn_interval_ns: u32,
    pub prefix_syn_burst: u32,
}

/// [`DataRange::flags`]: active-mode data connections reach clients from port 20 of the
/// public address, so packets from clients to public port 20 belong to flows too.
pub const RANGE_ACTIVE_PORT_20: u32 = 1;

impl DataRange {
    /// True when `port` (host order) lies in this range.
    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        self.port_lo <= port && port <= self.port_hi
    }
}

/// What the XDP guard protects; lives in a one-entry array map written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Number of valid entries at the start of `ranges`.
    pub range_count: u32,
    pub ranges: [DataRange; MAX_DATA_RANGES],
}

/// Key of a lease: who may open the data connection, and to which gateway address and port.
/// Passive mode: the client, to the public address and a public data port. Active mode:
/// the origin, to the gateway's origin-side address and the port given in its PORT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LeaseKey {
    /// The peer allowed to connect.
    pub peer_addr_be: IpAddrBe,
    /// Gateway address the connection is aimed at.
    pub addr_be: IpAddrBe,
    /// Gateway port the connection is aimed at, network order.
    pub port_be: u16,
    /// Always zero (hash keys are compared bytewise).
    pub _pad: u16,
}

/// [`LeaseValue::kind`]: the lease only admits the client (a userspace relay listens on
/// the port); the kernel passes its packets to the stack.
pub const LEASE_ADMIT: u32 = 0;
/// [`LeaseValue::kind`]: the kernel NATs the data connection to the origin and back.
pub const LEASE_NAT: u32 = 1;

/// What a lease allows. Written by userspace once, at install; never changed in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseValue {
    /// Where the admitted connection goes: the origin's data address (passive) or the
    /// client's (active).
    pub target_addr_be: IpAddrBe,
    /// What it appears to come from there: the gateway's origin-side address (passive)
    /// or its public address (active).
    pub source_addr_be: IpAddrBe,
    /// Target port, network order.
    pub target_port_be: u16,
    /// Source port, network order: chosen by userspace so that (source, target) is unique
    /// among live leases and flows (passive: a NAT port; active: the lease's public port
    /// or 20).
    pub source_port_be: u16,
    /// [`LEASE_ADMIT`] or [`LEASE_NAT`].
    pub kind: u32,
    /// CLOCK_MONOTONIC deadline (ns) for the client's SYN; 0 = none.
    pub expires_ns: u64,
    /// Interface that leads to the target (host order), used until the target's own
    /// packets show the way; 0 = unknown (the FIB decides).
    pub target_ifindex: u32,
    /// Largest TCP MSS the connection's SYNs may announce (host order); 0 = no clamping.
    pub mss_max: u16,
    pub _pad: u16,
    /// Interface the peer's SYN must arrive on (host order); 0 = any. Active mode: the
    /// origin's side, so a host elsewhere cannot open the lease by spoofing the origin.
    pub peer_ifindex: u32,
    /// Source port the peer's SYN must come from, network order; 0 = any.
    pub peer_port_be: u16,
    pub _pad2: u16,
}

/// A TCP connection as seen arriving at the gateway (one direction).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr_be: IpAddrBe,
    pub dst_addr_be: IpAddrBe,
    pub src_port_be: u16,
    pub dst_port_be: u16,
}

/// [`FlowValue::flags`] bits, set by the kernel as packets pass.
pub const FLOW_FIN: u32 = 1;
pub const FLOW_RST: u32 = 2;
/// [`FlowValue::dst_mac`] / [`FlowValue::src_mac`] are known (learned from the other
/// direction's packets): XDP can redirect this direction by itself.
pub const FLOW_L2: u32 = 4;
/// The other direction's entry has learned its link-layer addresses from this direction's
/// packets already: nothing more to learn.
pub const FLOW_PAIR_L2: u32 = 8;
/// This entry is the direction whose SYN claimed the lease (peer → gateway): how
/// userspace tells a connection's two entries apart, e.g. when adopting pinned flows.
pub const FLOW_CLAIMER: u32 = 16;
/// [`FlowValue::last_ack`] holds an acknowledgment number seen this way.
pub const FLOW_ACKED: u32 = 32;
/// Teardown tracking (see [`FlowValue::peer_fin_end`]): this direction's SYN announced
/// window scaling ([`FlowValue::wscale`]).
pub const FLOW_WSCALE: u32 = 1 << 8;
/// This direction has acknowledged the other direction's FIN: that half is closed.
pub const FLOW_PEER_FIN_ACKED: u32 = 1 << 9;
/// The other direction's FIN counted: [`FlowValue::peer_fin_end`] is valid.
pub const FLOW_PEER_FIN: u32 = 1 << 10;
/// Every flag that says the connection is ending (cleared when it opens again).
pub const FLOW_ENDING: u32 = FLOW_FIN | FLOW_RST | FLOW_PEER_FIN | FLOW_PEER_FIN_ACKED;

/// True when a connection whose two entries carry `flags` and `pair_flags` is over for
/// the gateway: a RST either way, or each direction's FIN acknowledged by the other.
#[inline(always)]
pub const fn connection_over(flags: u32, pair_flags: u32) -> bool {
    (flags | pair_flags) & FLOW_RST != 0
        || (flags & FLOW_PEER_FIN_ACKED != 0 && pair_flags & FLOW_PEER_FIN_ACKED != 0)
}
/// Both entries of a connection whose handshake has not completed: its SYN made them,
/// but its lease stays in the lease map (claimable) until the peer acknowledges the
/// target's SYN-ACK, which an off-path spoofer of the peer's address cannot do.
pub const FLOW_TENTATIVE: u32 = 1 << 11;
/// On the target's entry of a tentative connection: [`FlowValue::claim_seq`] holds the
/// sequence number of the target's SYN-ACK, which the confirming ACK must acknowledge.
pub const FLOW_TARGET_ISN: u32 = 1 << 12;

/// How to rewrite one direction of a NATed data connection, where to send it, and what
/// passed that way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub new_src_addr_be: IpAddrBe,
    pub new_dst_addr_be: IpAddrBe,
    pub new_src_port_be: u16,
    pub new_dst_port_be: u16,
    /// The other direction's key (the two entries are created and removed as a pair).
    pub reverse: FlowKey,
    /// [`FLOW_FIN`], [`FLOW_RST`], [`FLOW_L2`], [`FLOW_PAIR_L2`], [`FLOW_CLAIMER`],
    /// [`FLOW_ACKED`], [`FLOW_WSCALE`], [`FLOW_PEER_FIN`], [`FLOW_PEER_FIN_ACKED`],
    /// [`FLOW_TENTATIVE`], [`FLOW_TARGET_ISN`].
    pub flags: u32,
    /// Interface to send this direction out of (host order): where the other direction's
    /// packets arrive; 0 = unknown (the FIB decides).
    pub egress_ifindex: u32,
    /// Next hop's MAC on the egress interface (valid with [`FLOW_L2`]).
    pub dst_mac: [u8; 6],
    /// The gateway's own MAC on the egress interface (valid with [`FLOW_L2`]).
    pub src_mac: [u8; 6],
    /// Largest TCP MSS a SYN this way may announce (host order); 0 = no clamping.
    pub mss_max: u16,
    pub _pad: u16,
    /// The claiming SYN's sequence number, host order (on the claimer's entry): a SYN with
    /// the same one is that SYN again, not a new connection; the target's answer must
    /// acknowledge it before the way back is learned from it. On the target's entry: the
    /// target's SYN-ACK sequence number (confirmed with [`FLOW_TARGET_ISN`], kept once
    /// claimed). Each direction's ISN: its payload is what the other acknowledged beyond.
    pub claim_seq: u32,
    /// The last acknowledgment number sent this way, host order (valid with
    /// [`FLOW_ACKED`]): a FIN or RST the other way counts only from it to the end of this
    /// direction's receive window (RFC 5961: blind spoofing).
    pub last_ack: u32,
    // Teardown tracking (RFC 5961 windows, FINs acknowledged), all in this one block.
    /// The acknowledgment number that covers the other direction's FIN (valid once the
    /// other direction's [`FLOW_FIN`] is set): an ACK this way of exactly it sets
    /// [`FLOW_PEER_FIN_ACKED`] (nothing is sent after a FIN).
    pub peer_fin_end: u32,
    /// The receive window this direction last advertised, unscaled (as in the header).
    pub window: u16,
    /// The window scale this direction's SYN announced (valid with [`FLOW_WSCALE`]; used
    /// only when both SYNs announced one, RFC 7323).
    pub wscale: u8,
    pub _pad_teardown: u8,
    pub packets: u64,
    /// IP bytes (header included) that passed this way.
    pub bytes: u64,
    /// CLOCK_MONOTONIC time (ns) of the last packet.
    pub last_seen_ns: u64,
}

/// [`FlowEvent::kind`]: a connection's handshake completed under its lease, which it
/// claimed (deleted) then; both flow entries exist.
pub const EVENT_CLAIMED: u32 = 1;
/// [`FlowEvent::kind`]: the first FIN in one direction of a flow, or the other direction
/// acknowledging it (`key` is then the acknowledging direction).
pub const EVENT_FIN: u32 = 2;
/// [`FlowEvent::kind`]: the first RST in one direction of a flow.
pub const EVENT_RST: u32 = 3;

/// What the programs tell userspace through the event ring buffer, so that leases and
/// flows are settled when it happens, not at the next look.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// [`EVENT_CLAIMED`], [`EVENT_FIN`] or [`EVENT_RST`].
    pub kind: u32,
    /// The direction the packet came in (for a claim: peer → the lease's address).
    pub key: FlowKey,
    /// The other direction.
    pub reverse: FlowKey,
}

/// What the guard did with a packet, and why: the index into the per-CPU counter array.
///
/// Used only as an index, never stored in a map value.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not IPv4 (IPv6, ARP, …): not the guard's business.
    PassNotIpv4 = 0,
    /// Too short to read the Ethernet or IPv4 header, or an invalid IHL: the stack drops it.
    PassMalformed = 1,
    /// IPv4 but not TCP.
    PassNotTcp = 2,
    /// TCP to an address the guard does not protect.
    PassOtherAddress = 3,
    /// TCP to a protected address, port outside the data range (e.g. the control port).
    PassOtherPort = 4,
    /// TCP to the data range admitted by an admit-only lease (a userspace relay listens).
    PassLeased = 5,
    /// A non-first IPv4 fragment: carries no ports. Harmless, because the first fragment
    /// (which does carry them) is checked and a datagram cannot reassemble without it.
    PassLaterFragment = 6,
    /// From the origin's side to a NAT port with no flow and no lease: left to the stack
    /// (which resets it).
    PassNoFlow = 7,
    /// NATed from a client towards the origin.
    NatToOrigin = 8,
    /// NATed from the origin back to a client.
    NatToClient = 9,
    /// A NATed packet redirected by the program itself.
    Redirected = 10,
    /// A NATed packet handed to the stack to forward (no way out known; needs forwarding
    /// enabled — the programs avoid this whenever they know the egress interface).
    ForwardedByStack = 11,
    /// XDP left a data-connection packet untouched for the TC program on the same
    /// interface (next hop not learned yet, or a checksum the hardware must complete).
    DeferredToTc = 12,
    /// An ICMP error about a NATed data connection, translated for the other side.
    IcmpTranslated = 13,
    /// TCP to the data range with no lease for (client, address, port).
    DropNoLease = 14,
    /// First fragment aimed at the data range: the data path never handles fragments.
    DropFragment = 15,
    /// TCP to a protected address whose TCP header cannot be read (truncated, tiny fragment).
    DropTruncated = 16,
    /// A SYN that lost the race for its lease (to another SYN, or to userspace revoking
    /// it). A later second connection finds no lease at all: `DropNoLease`.
    DropLeaseUsed = 17,
    /// A SYN after the lease's deadline.
    DropLeaseExpired = 18,
    /// Not a SYN and no flow: nothing to continue.
    DropNoFlow = 19,
    /// The flow table is full: the connection cannot be NATed (its lease stays).
    DropFlowTableFull = 20,
    /// The TTL would expire: left to be dropped here rather than forwarded. A SYN (or the
    /// ACK completing a handshake) is dropped before it touches its lease or flows.
    DropTtl = 21,
    /// Not TCP (UDP, SCTP…) to a public address's data range: never ours to carry.
    DropNotTcp = 22,
    /// IPv6 TCP/UDP to a data-range port on one of the gateway's own IPv6 addresses
    /// (IPv6 is not carried yet; it must not reach whatever listens there).
    DropIpv6 = 23,
    /// The redirect helper refused the packet (egress interface gone).
    DropRedirect = 24,
    /// A SYN for a lease that arrived on another interface than the lease's peer is on
    /// (active mode: not from the origin's side).
    DropWrongInterface = 25,
    /// A SYN for a lease from another source port than the lease requires.
    DropWrongSourcePort = 26,
    /// From the claiming peer on a connection whose handshake has not completed: neither
    /// its SYN again, a RST, nor the ACK of the target's SYN-ACK.
    DropUnconfirmed = 27,
    /// A connection's flow key (either direction) is held by another connection still
    /// open: it cannot be NATed without hijacking that one (its lease stays).
    DropTupleTaken = 28,
    /// From a client to a protected endpoint (control port or data range) of a service
    /// whose ACL refuses the source: a deny rule, or no allow rule while it has some.
    DropAcl = 29,
    /// From a banned source to any protected endpoint, before its ban expired.
    DropBanned = 30,
    /// A SYN to a control port over its source's rate (`syn_rate_per_client`).
    DropSynRate = 31,
    /// A SYN to a control port over its source's /24's rate (`syn_rate_per_prefix`).
    DropSynPrefixRate = 32,
}

/// Number of [`Counter`] values: the size of the counter map.
pub const COUNTER_COUNT: u32 = 33;

impl Counter {
    /// Every counter in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::PassNotIpv4,
        Counter::PassMalformed,
        Counter::PassNotTcp,
        Counter::PassOtherAddress,
        Counter::PassOtherPort,
        Counter::PassLeased,
        Counter::PassLaterFragment,
        Counter::PassNoFlow,
        Counter::NatToOrigin,
        Counter::NatToClient,
        Counter::Redirected,
        Counter::ForwardedByStack,
        Counter::DeferredToTc,
        Counter::IcmpTranslated,
        Counter::DropNoLease,
        Counter::DropFragment,
        Counter::DropTruncated,
        Counter::DropLeaseUsed,
        Counter::DropLeaseExpired,
        Counter::DropNoFlow,
        Counter::DropFlowTableFull,
        Counter::DropTtl,
        Counter::DropNotTcp,
        Counter::DropIpv6,
        Counter::DropRedirect,
        Counter::DropWrongInterface,
        Counter::DropWrongSourcePort,
        Counter::DropUnconfirmed,
        Counter::DropTupleTaken,
        Counter::DropAcl,
        Counter::DropBanned,
        Counter::DropSynRate,
        Counter::DropSynPrefixRate,
    ];

    /// Stable snake_case name, used in logs and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassNotIpv4 => "pass_not_ipv4",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassNotTcp => "pass_not_tcp",
            Counter::PassOtherAddress => "pass_other_address",
            Counter::PassOtherPort => "pass_other_port",
            Counter::PassLeased => "pass_leased",
            Counter::PassLaterFragment => "pass_later_fragment",
            Counter::PassNoFlow => "pass_no_flow",
            Counter::NatToOrigin => "nat_to_origin",
            Counter::NatToClient => "nat_to_client",
            Counter::Redirected => "redirected",
            Counter::ForwardedByStack => "forwarded_by_stack",
            Counter::DeferredToTc => "deferred_to_tc",
            Counter::IcmpTranslated => "icmp_translated",
            Counter::DropNoLease => "drop_no_lease",
            Counter::DropFragment => "drop_fragment",
            Counter::DropTruncated => "drop_truncated",
            Counter::DropLeaseUsed => "drop_lease_used",
            Counter::DropLeaseExpired => "drop_lease_expired",
            Counter::DropNoFlow => "drop_no_flow",
            Counter::DropFlowTableFull => "drop_flow_table_full",
            Counter::DropTtl => "drop_ttl",
            Counter::DropNotTcp => "drop_not_tcp",
            Counter::DropIpv6 => "drop_ipv6",
            Counter::DropRedirect => "drop_redirect",
            Counter::DropWrongInterface => "drop_wrong_interface",
            Counter::DropWrongSourcePort => "drop_wrong_source_port",
            Counter::DropUnconfirmed => "drop_unconfirmed",
            Counter::DropTupleTaken => "drop_tuple_taken",
            Counter::DropAcl => "drop_acl",
            Counter::DropBanned => "drop_banned",
            Counter::DropSynRate => "drop_syn_rate",
            Counter::DropSynPrefixRate => "drop_syn_prefix_rate",
        }
    }

    /// True for the counters whose packets the guard drops.
    pub const fn is_drop(self) -> bool {
        (self as u32) >= (Counter::DropNoLease as u32)
    }
}

// Layouts the kernel and userspace must agree on, with no hidden padding.
const _: () = assert!(core::mem::size_of::<IpAddrBe>() == 16);
const _: () = assert!(core::mem::size_of::<DataRange>() == 60);
const _: () = assert!(core::mem::size_of::<FilterConfig>() == 4 + 60 * MAX_DATA_RANGES);
const _: () = assert!(core::mem::size_of::<LeaseKey>() == 36);
const _: () = assert!(core::mem::size_of::<LeaseValue>() == 64);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 36);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 136);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 76);
const _: () = assert!(Counter::ALL.len() == COUNTER_COUNT as usize);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain integers with no padding (asserted above),
    // so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::IpAddrBe {}
    unsafe impl aya::Pod for super::DataRange {}
    unsafe impl aya::Pod for super::FilterConfig {}
    unsafe impl aya::Pod for super::LeaseKey {}
    unsafe impl aya::Pod for super::LeaseValue {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::FlowEvent {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn counter_indices_match_their_position() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{} is out of order", c.name());
            assert_eq!(c.is_drop(), c.name().starts_with("drop_"), "{}", c.name());
        }
    }

    #[test]
    fn range_contains_is_inclusive() {
        let r = DataRange {
            port_lo: 40000,
            port_hi: 40099,
            ..DataRange::default()
        };
        assert!(!r.contains(39999));
        assert!(r.contains(40000));
        assert!(r.contains(40099));
        assert!(!r.contains(40100));
    }
}

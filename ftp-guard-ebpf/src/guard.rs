//! The data-port guard and NAT state machine, shared by the XDP and TC entry points.
//!
//! Rules, in order (each outcome is a `Counter`):
//! 1. IPv6 TCP/UDP to a data-range port on one of the gateway's own IPv6 addresses → drop
//!    (IPv6 is not carried yet); anything else not IPv4, or unparseable → pass;
//! 2. an ICMP error to a guarded address about a NATed data connection → translated for
//!    the other side and forwarded (see `icmp`); other ICMP → pass;
//! 3. not TCP: to a public address's data range → drop; otherwise pass;
//! 4. TCP to neither a protected public address nor a NAT address → pass;
//! 5. a later fragment (offset ≠ 0) → pass: no ports in it, and it cannot reassemble
//!    without the first fragment, which rule 6 checks;
//! 6. TCP header unreadable → drop; port outside every data range → pass;
//! 7. a first fragment aimed at the data range → drop (the data path never fragments);
//! 8. a packet of a known flow → NAT it (either direction) and forward;
//! 9. a lease for (source, destination, port) — passive leases on the client side, active
//!    leases on the origin side: an admit-only lease → pass; a NAT lease: only a SYN
//!    from the lease's interface and source port (when it names them), within the
//!    deadline, with a TTL left to forward may start a connection on it. The SYN
//!    creates both flow entries, marked tentative (rolled back together on failure), and
//!    leaves the lease in place → NAT and forward. The claim is made when the handshake
//!    completes (see `tentative`): the peer's ACK of the target's SYN-ACK deletes the
//!    lease (single use; the key is free at once for the peer's next lease on that port).
//!    So a SYN spoofed with the peer's address burns nothing: the real peer's SYN from
//!    another port replaces the tentative pair (same lease, same target tuple), and the
//!    peer's RST answering the stray SYN-ACK removes it;
//! 10. no lease: from a client → drop; from the origin's side → pass (nothing listens
//!     there: the stack resets it).
//!
//! The guard only decides; rewriting and sending are the entry points' job (`forward`),
//! because XDP and TC differ in what they can send and how checksums must be updated.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use ftp_guard_common::{
    Counter, EVENT_CLAIMED, FLOW_CLAIMER, FLOW_ENDING, FLOW_L2, FLOW_PAIR_L2, FLOW_RST,
    FLOW_TARGET_ISN, FLOW_TENTATIVE, FilterConfig, FlowKey, FlowValue, LEASE_ADMIT, LeaseKey,
    LeaseValue, MAX_DATA_RANGES, RANGE_ACTIVE_PORT_20, connection_over,
};
use network_types::{
    eth::EthHdr,
    ip::{IpProto, Ipv4Hdr},
    tcp::TcpHdr,
};

use crate::{
    icmp,
    maps::{self, FILTER_CONFIG, FLOWS, LEASES, LOCAL_V6},
    packet::{self, Ipv6, L3, Packet},
};

/// IPv4 "more fragments" flag within the 3-bit flags field.
const IP_MF: u8 = 0b001;
/// Map update flag: insert or replace.
const BPF_ANY: u64 = 0;
/// Map update flag: insert only if absent.
const BPF_NOEXIST: u64 = 1;

/// What the entry point must do with the packet.
pub enum Verdict {
    Pass,
    Drop,
    /// A packet of a NATed data connection: rewrite it by `Hit::flow` and send it on.
    Forward(Hit),
    /// An ICMP error already rewritten for the peer of `Hit::flow`'s direction: send it on.
    ForwardIcmp(Hit),
    /// Not for XDP to judge: the TC program behind it does (ICMP errors, whose way out
    /// XDP may not know once it has rewritten them).
    LeaveToTc,
}

/// Which program runs the guard.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

/// A packet that belongs to a flow, with what forwarding needs.
pub struct Hit {
    pub ip: *mut Ipv4Hdr,
    /// The TCP header (TCP packets only; null for an ICMP error).
    pub tcp: *mut TcpHdr,
    pub l3_offset: usize,
    pub l4_offset: usize,
    /// The flow entry that says how to rewrite and where to send the packet.
    pub flow: *mut FlowValue,
    /// Its key (the packet as it arrived).
    pub key: FlowKey,
    /// Remove both entries once the packet is sent on (the peer's RST ending a
    /// handshake that never completed).
    pub forget: bool,
}

/// Which side of the gateway a destination address belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A public address: the packet comes from a client.
    Client,
    /// A NAT address: the packet comes from the origin.
    Origin,
}

#[inline(always)]
pub fn process<P: Packet>(p: &P, ingress_ifindex: u32, hook: Hook) -> (Verdict, Counter) {
    let hdr = match packet::ipv4(p) {
        L3::Ipv4(h) => h,
        L3::Ipv6(h) => return ipv6(p, &h),
        L3::NotIpv4 => return (Verdict::Pass, Counter::PassNotIpv4),
        L3::Malformed => return (Verdict::Pass, Counter::PassMalformed),
    };
    let Some(config) = FILTER_CONFIG.get(0) else {
        return (Verdict::Pass, Counter::PassOtherAddress);
    };
    // SAFETY: packet::ipv4 checked that the whole header is inside the packet.
    let ip = unsafe { &*hdr.ip };
    // Addresses and ports stay in network order end to end: no byte swapping.
    let dst_be = u32::from_ne_bytes(ip.dst_addr);
    let Some(side) = side_of(config, dst_be) else {
        return (Verdict::Pass, Counter::PassOtherAddress);
    };
    if ip.proto == IpProto::Icmp as u8 {
        if ip.frag_offset() != 0 || ip.frag_flags() & IP_MF != 0 {
            return (Verdict::Pass, Counter::PassNotTcp);
        }
        if hook == Hook::Xdp {
            return (Verdict::LeaveToTc, Counter::DeferredToTc);
        }
        return match icmp::translate(p, &hdr) {
            Some(flow) => (
                Verdict::ForwardIcmp(Hit {
                    ip: hdr.ip,
                    tcp: core::ptr::null_mut(),
                    l3_offset: hdr.l3_offset,
                    l4_offset: hdr.l4_offset,
                    flow,
                    key: FlowKey::default(),
                    forget: false,
                }),
                Counter::IcmpTranslated,
            ),
            None => (Verdict::Pass, Counter::PassNotTcp),
        };
    }
    if ip.frag_offset() != 0 {
        return (Verdict::Pass, Counter::PassLaterFragment);
    }
    if ip.proto != IpProto::Tcp as u8 {
        return not_tcp(p, config, side, dst_be, ip.proto, hdr.l4_offset);
    }
    // The destination port decides whether the guard cares; read it before the whole
    // header so that a truncated packet to another port is left to the stack.
    let Some(ports) = packet::ptr_at::<[u8; 4], P>(p, hdr.l4_offset) else {
        return (Verdict::Drop, Counter::DropTruncated);
    };
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    let port_class = classify_port(config, side, dst_be, dst_port);
    if port_class == PortClass::Other {
        return (Verdict::Pass, Counter::PassOtherPort);
    }
    if ip.frag_flags() & IP_MF != 0 {
        return (Verdict::Drop, Counter::DropFragment);
    }
    let Some(tcp) = packet::ptr_at::<TcpHdr, P>(p, hdr.l4_offset) else {
        return (Verdict::Drop, Counter::DropTruncated);
    };
    let flow_key = FlowKey {
        src_addr_be: u32::from_ne_bytes(ip.src_addr),
        dst_addr_be: dst_be,
        src_port_be: u16::from_ne_bytes([ports[0], ports[1]]),
        dst_port_be: u16::from_ne_bytes([ports[2], ports[3]]),
    };
    let nat_counter = match side {
        Side::Client => Counter::NatToOrigin,
        Side::Origin => Counter::NatToClient,
    };
    let hit = |flow, forget| Hit {
        ip: hdr.ip,
        tcp,
        l3_offset: hdr.l3_offset,
        l4_offset: hdr.l4_offset,
        flow,
        key: flow_key,
        forget,
    };
    // SAFETY: tcp is a complete header (ptr_at above).
    let t = unsafe { &*tcp };
    let plain_syn = t.syn() != 0 && t.ack() == 0;
    let seq = u32::from_be_bytes(t.seq);
    if let Some(flow) = FLOWS.get_ptr_mut(&flow_key) {
        // SAFETY: map value pointers stay valid for the program run.
        if unsafe { (*flow).flags } & FLOW_TENTATIVE != 0 {
            match tentative(&flow_key, flow, t, ip.ttl) {
                Handshake::Forward { forget } => {
                    learn_l2(p, hdr.l3_offset, flow, ingress_ifindex, t);
                    return (Verdict::Forward(hit(flow, forget)), nat_counter);
                }
                Handshake::Drop(reason) => return (Verdict::Drop, reason),
                // Its entries are gone: the SYN is judged as new below.
                Handshake::Restart => {}
            }
        } else if !(plain_syn && forget_if_over(&flow_key, flow, seq)) {
            // (Otherwise: a new connection on the 4-tuple of one that is over — a peer
            // that reuses its source port, like an origin connecting from port 20: the
            // remnant went, the SYN is judged as new.)
            learn_l2(p, hdr.l3_offset, flow, ingress_ifindex, t);
            return (Verdict::Forward(hit(flow, false)), nat_counter);
        }
    }
    if port_class == PortClass::ActiveSource {
        // Port 20 is shared by every active flow: no flow, nothing of ours.
        return (Verdict::Pass, Counter::PassOtherPort);
    }
    let lease_key = LeaseKey {
        peer_addr_be: flow_key.src_addr_be,
        addr_be: dst_be,
        port_be: flow_key.dst_port_be,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; userspace replaces values whole.
    let Some(lease) = (unsafe { LEASES.get(&lease_key) }).copied() else {
        return match side {
            Side::Client => (Verdict::Drop, Counter::DropNoLease),
            Side::Origin => (Verdict::Pass, Counter::PassNoFlow),
        };
    };
    if lease.kind == LEASE_ADMIT {
        return (Verdict::Pass, Counter::PassLeased);
    }
    if !plain_syn {
        return (Verdict::Drop, Counter::DropNoFlow);
    }
    if lease.peer_ifindex != 0 && lease.peer_ifindex != ingress_ifindex {
        return (Verdict::Drop, Counter::DropWrongInterface);
    }
    if lease.peer_port_be != 0 && lease.peer_port_be != flow_key.src_port_be {
        return (Verdict::Drop, Counter::DropWrongSourcePort);
    }
    // Checked before the lease is touched: forwarding would drop the SYN anyway.
    if ip.ttl <= 1 {
        return (Verdict::Drop, Counter::DropTtl);
    }
    let link = link_of(p, hdr.l3_offset);
    if let Err(reason) = start(&flow_key, &lease, ingress_ifindex, link, seq) {
        return (Verdict::Drop, reason);
    }
    match FLOWS.get_ptr_mut(&flow_key) {
        Some(flow) => (Verdict::Forward(hit(flow, false)), nat_counter),
        None => (Verdict::Drop, Counter::DropFlowTableFull),
    }
}

/// What a packet of a tentative connection (handshake not complete) does.
enum Handshake {
    Forward {
        forget: bool,
    },
    Drop(Counter),
    /// The entries were removed: judge the packet as a new connection's SYN.
    Restart,
}

/// A packet on a tentative connection's entry `flow` (keyed `key`).
///
/// From the target: everything passes (it answers what it was sent); its SYN-ACK that
/// acknowledges the claiming SYN records its sequence number. From the claiming peer:
/// - its SYN again (same sequence number) passes; a SYN with another one is a new
///   connection on the same ports: the tentative pair goes and the SYN is judged anew;
/// - a RST passes; with the sequence number the target's SYN-ACK acknowledged (what the
///   peer's host answers a SYN-ACK to a SYN it never sent) it also ends the attempt;
/// - the ACK of the target's SYN-ACK completes the handshake — something an off-path
///   spoofer of the peer's address cannot send: the entries become a plain connection and
///   the lease is claimed (deleted; if userspace revoked it meanwhile, the handshake still
///   completed under a valid lease, so the connection stays) and userspace told;
/// - anything else is dropped.
#[inline(always)]
fn tentative(key: &FlowKey, flow: *mut FlowValue, tcp: &TcpHdr, ttl: u8) -> Handshake {
    // SAFETY: map value pointers stay valid for the program run.
    let f = unsafe { &mut *flow };
    let seq = u32::from_be_bytes(tcp.seq);
    let ack_seq = u32::from_be_bytes(tcp.ack_seq);
    if f.flags & FLOW_CLAIMER == 0 {
        if tcp.syn() != 0 && tcp.ack() != 0 {
            // SAFETY: a plain read of the other direction's entry.
            let acks_claim = unsafe { FLOWS.get(&f.reverse) }.is_some_and(|claimer| {
                claimer.flags & FLOW_CLAIMER != 0 && ack_seq == claimer.claim_seq.wrapping_add(1)
            });
            if acks_claim {
                f.claim_seq = seq;
                f.flags |= FLOW_TARGET_ISN;
            }
        }
        return Handshake::Forward { forget: false };
    }
    if tcp.rst() != 0 {
        return Handshake::Forward {
            forget: seq == f.claim_seq.wrapping_add(1),
        };
    }
    if tcp.syn() != 0 && tcp.ack() == 0 {
        if seq == f.claim_seq {
            return Handshake::Forward { forget: false };
        }
        if ttl <= 1 {
            return Handshake::Drop(Counter::DropTtl);
        }
        let _ = FLOWS.remove(&f.reverse);
        let _ = FLOWS.remove(key);
        return Handshake::Restart;
    }
    if tcp.ack() == 0 || tcp.syn() != 0 {
        return Handshake::Drop(Counter::DropUnconfirmed);
    }
    let reverse = f.reverse;
    let Some(pair) = FLOWS.get_ptr_mut(&reverse) else {
        return Handshake::Drop(Counter::DropUnconfirmed);
    };
    // SAFETY: as above.
    let pair = unsafe { &mut *pair };
    if pair.flags & FLOW_TARGET_ISN == 0 || ack_seq != pair.claim_seq.wrapping_add(1) {
        return Handshake::Drop(Counter::DropUnconfirmed);
    }
    // Before anything changes, as for the claiming SYN: forwarding would drop it.
    if ttl <= 1 {
        return Handshake::Drop(Counter::DropTtl);
    }
    // The target's entry first: userspace reads it to tell a claimed lease from one that
    // vanished otherwise, and it sees the lease gone only after this.
    pair.flags &= !(FLOW_TENTATIVE | FLOW_TARGET_ISN);
    pair.claim_seq = 0;
    f.flags &= !FLOW_TENTATIVE;
    let lease_key = LeaseKey {
        peer_addr_be: key.src_addr_be,
        addr_be: key.dst_addr_be,
        port_be: key.dst_port_be,
        _pad: 0,
    };
    let _ = LEASES.remove(&lease_key);
    maps::notify(EVENT_CLAIMED, key, &reverse);
    Handshake::Forward { forget: false }
}

/// IPv6 is not carried yet: TCP or UDP aimed at a data-range port on one of the gateway's
/// own addresses must not reach whatever listens there, behind extension headers too (up
/// to [`MAX_IPV6_EXTENSIONS`]; more to a gateway address are dropped); everything else
/// passes.
#[inline(always)]
fn ipv6<P: Packet>(p: &P, h: &Ipv6) -> (Verdict, Counter) {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DESTINATION: u8 = 60;
    // SAFETY: packet::ipv4 checked that the fixed header is inside the packet.
    let ip = unsafe { &*h.ip };
    // SAFETY: a plain lookup; the value is not used.
    if unsafe { LOCAL_V6.get(&ip.dst_addr) }.is_none() {
        return (Verdict::Pass, Counter::PassNotIpv4);
    }
    let Some(config) = FILTER_CONFIG.get(0) else {
        return (Verdict::Pass, Counter::PassNotIpv4);
    };
    let mut next = ip.next_hdr;
    let mut offset = h.l4_offset;
    let mut i = 0;
    while i < MAX_IPV6_EXTENSIONS {
        if next == IpProto::Tcp as u8 || next == IpProto::Udp as u8 {
            break;
        }
        match next {
            HOP_BY_HOP | ROUTING | DESTINATION => {
                let Some(ext) = packet::ptr_at::<[u8; 2], P>(p, offset) else {
                    return (Verdict::Drop, Counter::DropTruncated);
                };
                // SAFETY: bounds checked by ptr_at.
                let ext = unsafe { *ext };
                next = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            FRAGMENT => {
                let Some(ext) = packet::ptr_at::<[u8; 4], P>(p, offset) else {
                    return (Verdict::Drop, Counter::DropTruncated);
                };
                // SAFETY: bounds checked by ptr_at.
                let ext = unsafe { *ext };
                // A later fragment carries no ports and cannot reassemble without the
                // first, which is judged here.
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    return (Verdict::Pass, Counter::PassLaterFragment);
                }
                next = ext[0];
                offset += 8;
            }
            _ => return (Verdict::Pass, Counter::PassNotIpv4),
        }
        i += 1;
    }
    if next != IpProto::Tcp as u8 && next != IpProto::Udp as u8 {
        return (Verdict::Drop, Counter::DropIpv6);
    }
    let Some(ports) = packet::ptr_at::<[u8; 4], P>(p, offset) else {
        return (Verdict::Drop, Counter::DropTruncated);
    };
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    if in_any_range(config, u16::from_be_bytes([ports[2], ports[3]])) {
        return (Verdict::Drop, Counter::DropIpv6);
    }
    (Verdict::Pass, Counter::PassNotIpv4)
}

/// Extension headers the IPv6 guard walks past before it gives up (and drops).
const MAX_IPV6_EXTENSIONS: usize = 4;

/// UDP, SCTP… to a public address's data range: dropped (only leased TCP belongs there).
#[inline(always)]
fn not_tcp<P: Packet>(
    p: &P,
    config: &FilterConfig,
    side: Side,
    dst_be: u32,
    proto: u8,
    l4_offset: usize,
) -> (Verdict, Counter) {
    let ported = proto == IpProto::Udp as u8
        || proto == IpProto::Sctp as u8
        || proto == IpProto::UdpLite as u8
        || proto == IpProto::Dccp as u8;
    if side != Side::Client || !ported {
        return (Verdict::Pass, Counter::PassNotTcp);
    }
    let Some(ports) = packet::ptr_at::<[u8; 4], P>(p, l4_offset) else {
        return (Verdict::Pass, Counter::PassNotTcp);
    };
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    let port = u16::from_be_bytes([ports[2], ports[3]]);
    if classify_port(config, side, dst_be, port) == PortClass::Data {
        return (Verdict::Drop, Counter::DropNotTcp);
    }
    (Verdict::Pass, Counter::PassNotTcp)
}

/// Removes both entries of a connection that is over (a RST either way, or each
/// direction's FIN acknowledged by the other: `connection_over`); false (nothing
/// removed) while it is not.
///
/// The claiming SYN sent again (same sequence number) is the same connection still
/// opening, even after a RST: a peer whose SYN met a stale connection at the target (a
/// TIME_WAIT that answers with a bare ACK) resets it and retransmits; the flow carries
/// the retransmission, so its teardown marks are cleared.
#[inline(always)]
fn forget_if_over(key: &FlowKey, flow: *mut FlowValue, syn_seq: u32) -> bool {
    // SAFETY: map value pointers stay valid for the program run.
    let f = unsafe { &mut *flow };
    let reverse = f.reverse;
    let pair = FLOWS.get_ptr_mut(&reverse);
    // A half without its pair is as good as reset.
    // SAFETY: as above.
    let pair_flags = pair.map_or(FLOW_RST, |p| unsafe { (*p).flags });
    if (f.flags | pair_flags) & FLOW_ENDING == 0 {
        return false;
    }
    if f.flags & FLOW_CLAIMER != 0 && f.claim_seq == syn_seq {
        f.flags &= !FLOW_ENDING;
        if let Some(pair) = pair {
            // SAFETY: as above.
            unsafe { (*pair).flags &= !FLOW_ENDING };
        }
        return false;
    }
    let over = connection_over(f.flags, pair_flags);
    if over {
        let _ = FLOWS.remove(&reverse);
        let _ = FLOWS.remove(key);
    }
    over
}

/// The link-layer addresses of an untagged Ethernet frame: (source, destination).
#[inline(always)]
fn link_of<P: Packet>(p: &P, l3_offset: usize) -> Option<([u8; 6], [u8; 6])> {
    if l3_offset != EthHdr::LEN {
        return None;
    }
    let eth = packet::ptr_at::<EthHdr, P>(p, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &*eth };
    Some((eth.src_addr, eth.dst_addr))
}

/// A packet of `flow` arrived on `ingress_ifindex` from the MAC it carries: that is the
/// way back for the other direction. Learned once per flow (then FLOW_PAIR_L2 is set), and
/// only from a packet that acknowledges the claiming SYN: a blind spoofer on the target's
/// side does not know its sequence number, so cannot divert the connection.
#[inline(always)]
fn learn_l2<P: Packet>(
    p: &P,
    l3_offset: usize,
    flow: *mut FlowValue,
    ingress_ifindex: u32,
    tcp: &TcpHdr,
) {
    // SAFETY: map value pointers stay valid for the program run.
    let f = unsafe { &mut *flow };
    if f.flags & FLOW_PAIR_L2 != 0 || tcp.ack() == 0 {
        return;
    }
    let Some((src, dst)) = link_of(p, l3_offset) else {
        return;
    };
    if let Some(pair) = FLOWS.get_ptr_mut(&f.reverse) {
        // SAFETY: as above. Racing CPUs write the same values.
        let pair = unsafe { &mut *pair };
        if pair.flags & FLOW_CLAIMER == 0
            || u32::from_be_bytes(tcp.ack_seq) != pair.claim_seq.wrapping_add(1)
        {
            return;
        }
        pair.egress_ifindex = ingress_ifindex;
        pair.dst_mac = src;
        pair.src_mac = dst;
        pair.flags |= FLOW_L2;
    }
    f.flags |= FLOW_PAIR_L2;
}

/// Starts the connection `key` under `lease`: creates both flow entries, tentative (the
/// lease stays until the handshake completes, see `tentative`). The reverse entry
/// (towards the claiming peer) leaves by the interface the SYN came in on, to the MAC it
/// came from; the forward one by the lease's target interface.
#[inline(always)]
fn start(
    key: &FlowKey,
    lease: &LeaseValue,
    ingress_ifindex: u32,
    link: Option<([u8; 6], [u8; 6])>,
    syn_seq: u32,
) -> Result<(), Counter> {
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if lease.expires_ns != 0 && now > lease.expires_ns {
        return Err(Counter::DropLeaseExpired);
    }
    let reverse_key = FlowKey {
        src_addr_be: lease.target_addr_be,
        dst_addr_be: lease.source_addr_be,
        src_port_be: lease.target_port_be,
        dst_port_be: lease.source_port_be,
    };
    let forward = FlowValue {
        new_src_addr_be: lease.source_addr_be,
        new_dst_addr_be: lease.target_addr_be,
        new_src_port_be: lease.source_port_be,
        new_dst_port_be: lease.target_port_be,
        reverse: reverse_key,
        egress_ifindex: lease.target_ifindex,
        mss_max: lease.mss_max,
        claim_seq: syn_seq,
        flags: if link.is_some() {
            FLOW_TENTATIVE | FLOW_CLAIMER | FLOW_PAIR_L2
        } else {
            FLOW_TENTATIVE | FLOW_CLAIMER
        },
        last_seen_ns: now,
        ..FlowValue::default()
    };
    let mut reverse = FlowValue {
        new_src_addr_be: key.dst_addr_be,
        new_dst_addr_be: key.src_addr_be,
        new_src_port_be: key.dst_port_be,
        new_dst_port_be: key.src_port_be,
        reverse: *key,
        egress_ifindex: ingress_ifindex,
        mss_max: lease.mss_max,
        flags: FLOW_TENTATIVE,
        last_seen_ns: now,
        ..FlowValue::default()
    };
    if let Some((src, dst)) = link {
        reverse.dst_mac = src;
        reverse.src_mac = dst;
        reverse.flags |= FLOW_L2;
    }
    // Both directions or neither. A key already taken means a stale entry of an earlier
    // connection with the same ports: refuse rather than hijack it.
    if FLOWS.insert(key, &forward, BPF_NOEXIST).is_err() {
        return Err(Counter::DropFlowTableFull);
    }
    if FLOWS.insert(&reverse_key, &reverse, BPF_NOEXIST).is_err() {
        let taken = match FLOWS.get_ptr_mut(&reverse_key) {
            // The same lease's target tuple, held by a connection that never completed its
            // handshake (a SYN spoofed with the peer's address from another port, or the
            // peer's own earlier attempt): this SYN takes it over.
            // SAFETY: map value pointers stay valid for the program run.
            Some(old) if unsafe { (*old).flags } & FLOW_TENTATIVE != 0 => {
                // SAFETY: as above.
                let old_forward = unsafe { (*old).reverse };
                let _ = FLOWS.remove(&old_forward);
                FLOWS.insert(&reverse_key, &reverse, BPF_ANY).is_err()
            }
            // A finished connection's entries (its NAT pair came round again while they
            // wait out their close grace) give way.
            Some(old) => {
                !forget_if_over(&reverse_key, old, 0)
                    || FLOWS.insert(&reverse_key, &reverse, BPF_NOEXIST).is_err()
            }
            None => FLOWS.insert(&reverse_key, &reverse, BPF_NOEXIST).is_err(),
        };
        if taken {
            let _ = FLOWS.remove(key);
            return Err(Counter::DropFlowTableFull);
        }
    }
    Ok(())
}

/// The side `addr_be` belongs to, if any data range is on it.
#[inline(always)]
pub fn side_of(config: &FilterConfig, addr_be: u32) -> Option<Side> {
    let mut i = 0;
    while i < MAX_DATA_RANGES {
        if i as u32 >= config.range_count {
            break;
        }
        let range = &config.ranges[i];
        if range.addr_be == addr_be {
            return Some(Side::Client);
        }
        if range.nat_addr_be != 0 && range.nat_addr_be == addr_be {
            return Some(Side::Origin);
        }
        i += 1;
    }
    None
}

/// True when `port` lies in any protected range (whatever its address).
#[inline(always)]
fn in_any_range(config: &FilterConfig, port: u16) -> bool {
    let mut i = 0;
    while i < MAX_DATA_RANGES {
        if i as u32 >= config.range_count {
            break;
        }
        if config.ranges[i].contains(port) {
            return true;
        }
        i += 1;
    }
    false
}

/// What a destination port means on a guarded address.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PortClass {
    /// In a data range: leases and flows, everything else dropped (client side).
    Data,
    /// Port 20 of a public address whose range sends active data from it: flows only.
    ActiveSource,
    /// Anything else (the control port…): not the guard's business.
    Other,
}

#[inline(always)]
fn classify_port(config: &FilterConfig, side: Side, addr_be: u32, port: u16) -> PortClass {
    let mut class = PortClass::Other;
    let mut i = 0;
    while i < MAX_DATA_RANGES {
        if i as u32 >= config.range_count {
            break;
        }
        let range = &config.ranges[i];
        let addr = match side {
            Side::Client => range.addr_be,
            Side::Origin => range.nat_addr_be,
        };
        if addr == addr_be {
            if range.contains(port) {
                return PortClass::Data;
            }
            if side == Side::Client && port == 20 && range.flags & RANGE_ACTIVE_PORT_20 != 0 {
                class = PortClass::ActiveSource;
            }
        }
        i += 1;
    }
    class
}

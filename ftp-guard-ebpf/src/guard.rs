//! The data-port guard's rules, shared by the XDP and TC entry points: what to do with
//! a packet, and why (a `Counter`). The flow table's state machine is in `flows`, what the
//! configured ranges say in `ranges`, the IPv6 guard in `ipv6`.
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
//! 6. TCP header unreadable → drop; port outside every data range and control port → pass;
//!    from a client to a service's control port or data range: the policy (`policy`:
//!    bans, the service's ACL, the control port's SYN rate) may drop it; a control-port
//!    packet it lets through → pass (the proxy listens there);
//! 7. a first fragment aimed at the data range → drop (the data path never fragments);
//! 8. a packet of a known flow → NAT it (either direction) and forward;
//! 9. a lease for (source, destination, port) — passive leases on the client side, active
//!    leases on the origin side: an admit-only lease → pass; a NAT lease: only a SYN
//!    from the lease's interface and source port (when it names them), within the
//!    deadline, with a TTL left to forward may start a connection on it. The SYN
//!    creates both flow entries, marked tentative (rolled back together on failure), and
//!    leaves the lease in place → NAT and forward. The claim is made when the handshake
//!    completes (see `flows::tentative`): the peer's ACK of the target's SYN-ACK deletes the
//!    lease (single use; the key is free at once for the peer's next lease on that port).
//!    So a SYN spoofed with the peer's address burns nothing: the real peer's SYN from
//!    another port replaces the tentative pair (same lease, same target tuple), and the
//!    peer's RST answering the stray SYN-ACK removes it;
//! 10. no lease: from a client → drop; from the origin's side → pass (nothing listens
//!     there: the stack resets it).
//!
//! The guard only decides; rewriting and sending are the entry points' job (`forward`),
//! because XDP and TC differ in what they can send and how checksums must be updated.
use ftp_guard_common::{
    Counter, DataRange, FLOW_TENTATIVE, FilterConfig, FlowKey, FlowValue, IpAddrBe, LEASE_ADMIT,
};
use network_types::{
    ip::{IpProto, Ipv4Hdr},
    tcp::TcpHdr,
};

use crate::{
    flows::{self, Handshake},
    icmp, ipv6, keys,
    maps::{FILTER_CONFIG, FLOWS, LEASES},
    packet::{self, L3, Packet},
    policy,
    ranges::{Judge, NoJudge, PortClass, Side, classify_port, side_of},
};

/// IPv4 "more fragments" flag within the 3-bit flags field.
const IP_MF: u8 = 0b001;

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

#[inline(always)]
pub fn process<P: Packet>(p: &P, ingress_ifindex: u32, hook: Hook) -> (Verdict, Counter) {
    let hdr = match packet::ipv4(p) {
        L3::Ipv4(h) => h,
        L3::Ipv6(h) => return ipv6::guard(p, &h),
        L3::NotIpv4 => return (Verdict::Pass, Counter::PassNotIpv4),
        L3::Malformed => return (Verdict::Pass, Counter::PassMalformed),
    };
    let Some(config) = FILTER_CONFIG.get(0) else {
        return (Verdict::Pass, Counter::PassOtherAddress);
    };
    // SAFETY: packet::ipv4 checked that the whole header is inside the packet.
    let ip = unsafe { &*hdr.ip };
    // Addresses and ports stay in network order end to end: no byte swapping.
    let dst = keys::addr_v4(ip.dst_addr);
    let Some(side) = side_of(config, &dst) else {
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
        return not_tcp(p, config, side, &dst, ip.proto, hdr.l4_offset);
    }
    // The destination port decides whether the guard cares; read it before the whole
    // header so that a truncated packet to another port is left to the stack.
    let Some(ports) = packet::ptr_at::<[u8; 4], P>(p, hdr.l4_offset) else {
        return (Verdict::Drop, Counter::DropTruncated);
    };
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    let policy = PolicyJudge {
        p,
        ip,
        l4_offset: hdr.l4_offset,
        client: side == Side::Client,
    };
    let (port_class, refused) = classify_port(config, side, &dst, dst_port, &policy);
    if port_class == PortClass::Other {
        return (Verdict::Pass, Counter::PassOtherPort);
    }
    if let Some(reason) = refused {
        return (Verdict::Drop, reason);
    }
    if port_class == PortClass::Control {
        return (Verdict::Pass, Counter::PassOtherPort);
    }
    if ip.frag_flags() & IP_MF != 0 {
        return (Verdict::Drop, Counter::DropFragment);
    }
    let Some(tcp) = packet::ptr_at::<TcpHdr, P>(p, hdr.l4_offset) else {
        return (Verdict::Drop, Counter::DropTruncated);
    };
    let flow_key = keys::flow_v4(ip.src_addr, ip.dst_addr, ports);
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
            match flows::tentative(&flow_key, flow, t, ip.ttl) {
                Handshake::Forward { forget } => {
                    flows::learn_l2(p, hdr.l3_offset, flow, ingress_ifindex, t);
                    return (Verdict::Forward(hit(flow, forget)), nat_counter);
                }
                Handshake::Drop(reason) => return (Verdict::Drop, reason),
                // Its entries are gone: the SYN is judged as new below.
                Handshake::Restart => {}
            }
        } else if !(plain_syn && flows::forget_if_over(&flow_key, flow, seq)) {
            // (Otherwise: a new connection on the 4-tuple of one that is over — a peer
            // that reuses its source port, like an origin connecting from port 20: the
            // remnant went, the SYN is judged as new.)
            flows::learn_l2(p, hdr.l3_offset, flow, ingress_ifindex, t);
            return (Verdict::Forward(hit(flow, false)), nat_counter);
        }
    }
    if port_class == PortClass::ActiveSource {
        // Port 20 is shared by every active flow: no flow, nothing of ours.
        return (Verdict::Pass, Counter::PassOtherPort);
    }
    let lease_key = keys::lease_of(&flow_key);
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
    let link = flows::link_of(p, hdr.l3_offset);
    if let Err(reason) = flows::start(&flow_key, &lease, ingress_ifindex, link, seq) {
        return (Verdict::Drop, reason);
    }
    match FLOWS.get_ptr_mut(&flow_key) {
        Some(flow) => (Verdict::Forward(hit(flow, false)), nat_counter),
        None => (Verdict::Drop, Counter::DropFlowTableFull),
    }
}

/// The policy's verdict on a client's packet to a service's control port or data range
/// (see `policy`); the origin's side (the NAT address) is not subject to it. Only a
/// control-port SYN counts against the SYN rate; a truncated control-port packet is left
/// to the stack, which drops it.
struct PolicyJudge<'a, P> {
    p: &'a P,
    ip: &'a Ipv4Hdr,
    l4_offset: usize,
    client: bool,
}

impl<P: Packet> Judge for PolicyJudge<'_, P> {
    #[inline(always)]
    fn judge(&self, service: u32, range: &DataRange, class: PortClass) -> Option<Counter> {
        if !self.client {
            return None;
        }
        let control_syn = class == PortClass::Control
            && packet::ptr_at::<TcpHdr, P>(self.p, self.l4_offset).is_some_and(|tcp| {
                // SAFETY: bounds checked by ptr_at.
                let t = unsafe { &*tcp };
                t.syn() != 0 && t.ack() == 0
            });
        policy::refuses(service, range, keys::addr_v4(self.ip.src_addr), control_syn)
    }
}

/// UDP, SCTP… to a public address's data range: dropped (only leased TCP belongs there).
#[inline(always)]
fn not_tcp<P: Packet>(
    p: &P,
    config: &FilterConfig,
    side: Side,
    dst: &IpAddrBe,
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
    if classify_port(config, side, dst, port, &NoJudge).0 == PortClass::Data {
        return (Verdict::Drop, Counter::DropNotTcp);
    }
    (Verdict::Pass, Counter::PassNotTcp)
}

//! The data-port guard and NAT state machine, shared by the XDP and TC entry points.
//!
//! Rules, in order (each outcome is a `Counter`):
//! 1. not IPv4 / unparseable link or IP header → pass (the stack judges it);
//! 2. not TCP, or to neither a protected public address nor a NAT address → pass;
//! 3. a later fragment (offset ≠ 0) → pass: no ports in it, and it cannot reassemble
//!    without the first fragment, which rule 4 checks;
//! 4. TCP header unreadable → drop; port outside every data range → pass;
//! 5. a first fragment aimed at the data range → drop (the data path never fragments);
//! 6. a packet of a known flow → NAT it (either direction) and forward;
//! 7. a lease for (source, destination, port) — passive leases on the client side, active
//!    leases on the origin side: an admit-only lease → pass; a NAT lease: only a SYN
//!    within the deadline may claim it, once; the claim creates both flow entries (rolled
//!    back together on failure) → NAT and forward;
//! 8. no lease: from a client → drop; from the origin's side → pass (nothing listens
//!    there: the stack resets it).
use aya_ebpf::helpers::bpf_ktime_get_ns;
use ftp_guard_common::{
    Claim, Counter, FLOW_FIN, FLOW_RST, FilterConfig, FlowKey, FlowValue, LEASE_ADMIT, LeaseKey,
    LeaseValue, MAX_DATA_RANGES, RANGE_ACTIVE_PORT_20,
};
use network_types::{
    ip::{IpProto, Ipv4Hdr},
    tcp::TcpHdr,
};

use crate::{
    maps::{CLAIMS, FILTER_CONFIG, FLOWS, LEASES},
    nat,
    packet::{self, L3, Packet},
};

/// IPv4 "more fragments" flag within the 3-bit flags field.
const IP_MF: u8 = 0b001;
/// Map update flag: insert only if absent.
const BPF_NOEXIST: u64 = 1;

/// What the entry point must do with the packet.
pub enum Verdict {
    Pass,
    Drop,
    /// The packet was rewritten for its new destination: forward it.
    Forward(Rewritten),
}

/// A NATed packet's headers, for the forwarding step.
pub struct Rewritten {
    pub ip: *mut Ipv4Hdr,
    pub l3_offset: usize,
}

/// Which side of the gateway a destination address belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// A public address: the packet comes from a client.
    Client,
    /// A NAT address: the packet comes from the origin.
    Origin,
}

#[inline(always)]
pub fn process<P: Packet>(p: &P) -> (Verdict, Counter) {
    let hdr = match packet::ipv4(p) {
        L3::Ipv4(h) => h,
        L3::NotIpv4 => return (Verdict::Pass, Counter::PassNotIpv4),
        L3::Malformed => return (Verdict::Pass, Counter::PassMalformed),
    };
    // SAFETY: packet::ipv4 checked that the whole header is inside the packet.
    let ip = unsafe { &*hdr.ip };
    if ip.proto != IpProto::Tcp as u8 {
        return (Verdict::Pass, Counter::PassNotTcp);
    }
    let Some(config) = FILTER_CONFIG.get(0) else {
        return (Verdict::Pass, Counter::PassOtherAddress);
    };
    // Addresses and ports stay in network order end to end: no byte swapping.
    let dst_be = u32::from_ne_bytes(ip.dst_addr);
    let Some(side) = side_of(config, dst_be) else {
        return (Verdict::Pass, Counter::PassOtherAddress);
    };
    if ip.frag_offset() != 0 {
        return (Verdict::Pass, Counter::PassLaterFragment);
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
    if let Some(flow) = FLOWS.get_ptr_mut(&flow_key) {
        return forward_flow(hdr.ip, tcp, hdr.l3_offset, flow, nat_counter);
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
    // SAFETY: the value is only read; userspace replaces values whole, never in place.
    let Some(lease) = (unsafe { LEASES.get(&lease_key) }) else {
        return match side {
            Side::Client => (Verdict::Drop, Counter::DropNoLease),
            Side::Origin => (Verdict::Pass, Counter::PassNoFlow),
        };
    };
    if lease.kind == LEASE_ADMIT {
        return (Verdict::Pass, Counter::PassLeased);
    }
    // SAFETY: tcp is a complete header (ptr_at above).
    let t = unsafe { &*tcp };
    if t.syn() == 0 || t.ack() != 0 {
        return (Verdict::Drop, Counter::DropNoFlow);
    }
    if let Err(reason) = claim(&flow_key, &lease_key, lease) {
        return (Verdict::Drop, reason);
    }
    match FLOWS.get_ptr_mut(&flow_key) {
        Some(flow) => forward_flow(hdr.ip, tcp, hdr.l3_offset, flow, nat_counter),
        None => (Verdict::Drop, Counter::DropFlowTableFull),
    }
}

/// Claims `lease` for the connection `key` (single use) and creates both flow entries.
#[inline(always)]
fn claim(key: &FlowKey, lease_key: &LeaseKey, lease: &LeaseValue) -> Result<(), Counter> {
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if lease.expires_ns != 0 && now > lease.expires_ns {
        return Err(Counter::DropLeaseExpired);
    }
    let claim = Claim {
        peer_port_be: key.src_port_be,
        _pad: 0,
        _pad2: 0,
        created_ns: now,
    };
    // NOEXIST makes the claim atomic: of two racing SYNs only one inserts.
    if CLAIMS.insert(lease_key, &claim, BPF_NOEXIST).is_err() {
        return Err(Counter::DropLeaseUsed);
    }
    let forward = FlowValue {
        new_src_addr_be: lease.source_addr_be,
        new_dst_addr_be: lease.target_addr_be,
        new_src_port_be: lease.source_port_be,
        new_dst_port_be: lease.target_port_be,
        lease: *lease_key,
        last_seen_ns: now,
        ..FlowValue::default()
    };
    let reverse_key = FlowKey {
        src_addr_be: lease.target_addr_be,
        dst_addr_be: lease.source_addr_be,
        src_port_be: lease.target_port_be,
        dst_port_be: lease.source_port_be,
    };
    let reverse = FlowValue {
        new_src_addr_be: key.dst_addr_be,
        new_dst_addr_be: key.src_addr_be,
        new_src_port_be: key.dst_port_be,
        new_dst_port_be: key.src_port_be,
        lease: *lease_key,
        last_seen_ns: now,
        ..FlowValue::default()
    };
    // Both directions or neither: roll back what was inserted.
    if FLOWS.insert(key, &forward, BPF_NOEXIST).is_err() {
        let _ = CLAIMS.remove(lease_key);
        return Err(Counter::DropFlowTableFull);
    }
    if FLOWS.insert(&reverse_key, &reverse, BPF_NOEXIST).is_err() {
        let _ = FLOWS.remove(key);
        let _ = CLAIMS.remove(lease_key);
        return Err(Counter::DropFlowTableFull);
    }
    Ok(())
}

/// Accounts the packet to `flow`, rewrites it and asks for forwarding.
#[inline(always)]
fn forward_flow(
    ip: *mut Ipv4Hdr,
    tcp: *mut TcpHdr,
    l3_offset: usize,
    flow: *mut FlowValue,
    counter: Counter,
) -> (Verdict, Counter) {
    // SAFETY: map value pointers stay valid for the program run; headers are in bounds.
    unsafe {
        let f = &mut *flow;
        let t = &*tcp;
        let len = u64::from((*ip).tot_len());
        // Racing CPUs may lose an increment: statistics, not state.
        f.packets += 1;
        f.bytes += len;
        f.last_seen_ns = bpf_ktime_get_ns();
        if t.fin() != 0 {
            f.flags |= FLOW_FIN;
        }
        if t.rst() != 0 {
            f.flags |= FLOW_RST;
        }
        nat::rewrite(ip, tcp, f);
    }
    (Verdict::Forward(Rewritten { ip, l3_offset }), counter)
}

/// The side `addr_be` belongs to, if any data range is on it.
#[inline(always)]
fn side_of(config: &FilterConfig, addr_be: u32) -> Option<Side> {
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

//! ICMP errors about NATed data connections (fragmentation needed, unreachable, time
//! exceeded): the error quotes the packet as the gateway sent it; translated back to what
//! the other side sent, and addressed to that side, it lets path-MTU discovery and error
//! reporting work through the gateway as if there were no NAT.
//!
//! An error that reaches a guarded address (public or NAT) quotes a packet the gateway
//! sent from that address: (gateway:port → peer:port). The flow entry keyed by the peer's
//! direction, (peer:port → gateway:port), rewrites into exactly the connection on the
//! other side; so the quoted packet becomes (its new destination → its new source), and
//! the error goes from the new source's address to the new destination's, the way that
//! flow's packets go.
use ftp_guard_common::FlowValue;
use network_types::ip::{IpProto, Ipv4Hdr};

use crate::{
    csum, keys,
    maps::FLOWS,
    packet::{Ipv4, Packet, ptr_at},
};

const DEST_UNREACHABLE: u8 = 3;
const TIME_EXCEEDED: u8 = 11;
const PARAMETER_PROBLEM: u8 = 12;
/// Type, code, checksum and four bytes that depend on the type.
const ICMP_HEADER_LEN: usize = 8;

/// Rewrites an ICMP error about a NATed data connection for the other side; returns the
/// flow whose way out it must take, or `None` (then nothing was changed) when it is about
/// something else.
#[inline(always)]
pub fn translate<P: Packet>(p: &P, outer: &Ipv4) -> Option<*mut FlowValue> {
    let icmp = ptr_at::<[u8; ICMP_HEADER_LEN], P>(p, outer.l4_offset)?;
    // SAFETY: bounds checked by ptr_at.
    let kind = unsafe { (*icmp)[0] };
    if kind != DEST_UNREACHABLE && kind != TIME_EXCEEDED && kind != PARAMETER_PROBLEM {
        return None;
    }
    let inner_offset = outer.l4_offset + ICMP_HEADER_LEN;
    let inner = ptr_at::<Ipv4Hdr, P>(p, inner_offset)?;
    let ports = ptr_at::<[u8; 4], P>(p, inner_offset + Ipv4Hdr::LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let (inner, ports, outer_ip, icmp) =
        unsafe { (&mut *inner, &mut *ports, &mut *outer.ip, &mut *icmp) };
    if inner.ihl() as usize != Ipv4Hdr::LEN || inner.proto != IpProto::Tcp as u8 {
        return None;
    }
    // The quoted packet must be one the gateway sent from the address the error came to.
    if inner.src_addr != outer_ip.dst_addr {
        return None;
    }
    // The peer's direction: the quoted packet's destination back to its source.
    let key = keys::flow_v4(
        inner.dst_addr,
        inner.src_addr,
        [ports[2], ports[3], ports[0], ports[1]],
    );
    let flow = FLOWS.get_ptr_mut(&key)?;
    // SAFETY: map value pointers stay valid for the program run.
    let f = unsafe { &*flow };
    let (new_src, new_dst) = (f.new_src_addr_be.ipv4_be(), f.new_dst_addr_be.ipv4_be());

    // The quoted packet: from the flow's new destination to its new source.
    let old_src = u32::from_ne_bytes(inner.src_addr);
    let old_dst = u32::from_ne_bytes(inner.dst_addr);
    let old_ports = u32::from_ne_bytes(*ports);
    let d = f.new_dst_port_be.to_ne_bytes();
    let s = f.new_src_port_be.to_ne_bytes();
    let new_ports = u32::from_ne_bytes([d[0], d[1], s[0], s[1]]);
    let old_inner_check = u16::from_ne_bytes(inner.check);
    let mut inner_check = csum::replace32(old_inner_check, old_src, new_dst);
    inner_check = csum::replace32(inner_check, old_dst, new_src);
    inner.src_addr = new_dst.to_ne_bytes();
    inner.dst_addr = new_src.to_ne_bytes();
    inner.check = inner_check.to_ne_bytes();
    *ports = new_ports.to_ne_bytes();
    // (The quoted TCP checksum, if quoted at all, is left as it was: nobody checks it.)

    // The ICMP checksum covers the whole quote.
    let mut check = u16::from_ne_bytes([icmp[2], icmp[3]]);
    check = csum::replace32(check, old_src, new_dst);
    check = csum::replace32(check, old_dst, new_src);
    check = csum::replace16(check, old_inner_check, inner_check);
    check = csum::replace32(check, old_ports, new_ports);
    let check = check.to_ne_bytes();
    icmp[2] = check[0];
    icmp[3] = check[1];

    // The error itself: from the gateway's address on that side to the peer there.
    let old_outer_src = u32::from_ne_bytes(outer_ip.src_addr);
    let old_outer_dst = u32::from_ne_bytes(outer_ip.dst_addr);
    let mut outer_check = u16::from_ne_bytes(outer_ip.check);
    outer_check = csum::replace32(outer_check, old_outer_src, new_src);
    outer_check = csum::replace32(outer_check, old_outer_dst, new_dst);
    outer_ip.src_addr = new_src.to_ne_bytes();
    outer_ip.dst_addr = new_dst.to_ne_bytes();
    outer_ip.check = outer_check.to_ne_bytes();
    Some(flow)
}

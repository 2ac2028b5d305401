//! The IPv6 guard: IPv6 is not carried yet, so what is aimed at a data port of one of the
//! gateway's own IPv6 addresses is dropped before it reaches whatever listens there.

use ftp_guard_common::Counter;
use network_types::ip::IpProto;

use crate::{
    guard::Verdict,
    maps::{FILTER_CONFIG, LOCAL_V6},
    packet::{self, Ipv6, Packet},
    ranges::in_any_range,
};

/// IPv6 is not carried yet: TCP or UDP aimed at a data-range port on one of the gateway's
/// own addresses must not reach whatever listens there, behind extension headers too (up
/// to [`MAX_IPV6_EXTENSIONS`]; more to a gateway address are dropped); everything else
/// passes.
#[inline(always)]
pub fn guard<P: Packet>(p: &P, h: &Ipv6) -> (Verdict, Counter) {
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

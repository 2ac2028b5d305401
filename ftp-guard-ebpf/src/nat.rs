//! Rewriting one packet of a NATed flow: addresses and ports, with both checksums updated
//! incrementally. Never called on a packet whose TCP header is not entirely present.
use ftp_guard_common::FlowValue;
use network_types::{ip::Ipv4Hdr, tcp::TcpHdr};

use crate::csum;

/// Rewrites `ip`/`tcp` to `flow`'s new addresses and ports.
///
/// # Safety
/// `ip` and `tcp` must point to complete headers inside the packet.
#[inline(always)]
pub unsafe fn rewrite(ip: *mut Ipv4Hdr, tcp: *mut TcpHdr, flow: &FlowValue) {
    // SAFETY: the caller guarantees both headers are in bounds.
    let (ip, tcp) = unsafe { (&mut *ip, &mut *tcp) };
    let old_src = u32::from_ne_bytes(ip.src_addr);
    let old_dst = u32::from_ne_bytes(ip.dst_addr);
    let old_sport = u16::from_ne_bytes(tcp.source);
    let old_dport = u16::from_ne_bytes(tcp.dest);

    let mut ip_check = u16::from_ne_bytes(ip.check);
    ip_check = csum::replace32(ip_check, old_src, flow.new_src_addr_be);
    ip_check = csum::replace32(ip_check, old_dst, flow.new_dst_addr_be);
    ip.check = ip_check.to_ne_bytes();
    ip.src_addr = flow.new_src_addr_be.to_ne_bytes();
    ip.dst_addr = flow.new_dst_addr_be.to_ne_bytes();

    // The TCP checksum covers the pseudo-header (both addresses) and the ports.
    let mut tcp_check = u16::from_ne_bytes(tcp.check);
    tcp_check = csum::replace32(tcp_check, old_src, flow.new_src_addr_be);
    tcp_check = csum::replace32(tcp_check, old_dst, flow.new_dst_addr_be);
    tcp_check = csum::replace16(tcp_check, old_sport, flow.new_src_port_be);
    tcp_check = csum::replace16(tcp_check, old_dport, flow.new_dst_port_be);
    tcp.check = tcp_check.to_ne_bytes();
    tcp.source = flow.new_src_port_be.to_ne_bytes();
    tcp.dest = flow.new_dst_port_be.to_ne_bytes();
}

/// Decrements the TTL (a router's duty when the program forwards by itself); false when it
/// would reach zero, and then nothing is changed.
#[inline(always)]
pub fn decrement_ttl(ip: &mut Ipv4Hdr) -> bool {
    if ip.ttl <= 1 {
        return false;
    }
    // TTL and protocol share one 16-bit word of the header checksum.
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.ttl -= 1;
    let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.check = csum::replace16(u16::from_ne_bytes(ip.check), old, new).to_ne_bytes();
    true
}

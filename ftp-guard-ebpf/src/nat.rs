//! Rewriting one packet of a NATed flow: addresses and ports, the IPv4 header checksum,
//! and the TCP checksum when the packet's checksum is complete. Never called on a packet
//! whose TCP header is not entirely present.
//!
//! TCP checksums come in two states. A packet from the wire carries a complete checksum,
//! updated here incrementally (RFC 1624). A packet from a local sender, from GRO or from a
//! veth with offloads on carries only the pseudo-header's sum (CHECKSUM_PARTIAL), which
//! the device that finally sends it completes: its address part must change, its port
//! part must not (the device sums the ports itself). The TC program lets the kernel's
//! `bpf_l4_csum_replace` pick the right update (it knows the skb's state); XDP cannot see
//! the state, so it hands packets that look partial to TC (`looks_partial`).
use ftp_guard_common::FlowValue;
use network_types::{ip::Ipv4Hdr, tcp::TcpHdr};

use crate::{
    csum,
    packet::{Packet, ptr_at},
};

/// TCP option kind and length of the maximum segment size.
const TCPOPT_MSS: [u8; 2] = [2, 4];

/// What a rewrite replaced, as the words lie in the packet (native loads of network-order
/// bytes): for the checksum updates that follow it.
#[derive(Clone, Copy)]
pub struct Replaced {
    pub src_addr: u32,
    pub dst_addr: u32,
    /// Source and destination port, as one 32-bit word.
    pub ports: u32,
}

/// The new ports of `flow` as one word, laid out like [`Replaced::ports`].
#[inline(always)]
pub fn new_ports(flow: &FlowValue) -> u32 {
    let s = flow.new_src_port_be.to_ne_bytes();
    let d = flow.new_dst_port_be.to_ne_bytes();
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

/// Rewrites addresses and ports to `flow`'s and updates the IPv4 header checksum (always
/// complete); the TCP checksum is left to the caller.
///
/// # Safety
/// `ip` and `tcp` must point to complete headers inside the packet.
#[inline(always)]
pub unsafe fn rewrite(ip: *mut Ipv4Hdr, tcp: *mut TcpHdr, flow: &FlowValue) -> Replaced {
    // SAFETY: the caller guarantees both headers are in bounds.
    let (ip, tcp) = unsafe { (&mut *ip, &mut *tcp) };
    let old = Replaced {
        src_addr: u32::from_ne_bytes(ip.src_addr),
        dst_addr: u32::from_ne_bytes(ip.dst_addr),
        ports: u32::from_ne_bytes([tcp.source[0], tcp.source[1], tcp.dest[0], tcp.dest[1]]),
    };
    let mut ip_check = u16::from_ne_bytes(ip.check);
    let (new_src, new_dst) = (
        flow.new_src_addr_be.ipv4_be(),
        flow.new_dst_addr_be.ipv4_be(),
    );
    ip_check = csum::replace32(ip_check, old.src_addr, new_src);
    ip_check = csum::replace32(ip_check, old.dst_addr, new_dst);
    ip.check = ip_check.to_ne_bytes();
    ip.src_addr = new_src.to_ne_bytes();
    ip.dst_addr = new_dst.to_ne_bytes();
    tcp.source = flow.new_src_port_be.to_ne_bytes();
    tcp.dest = flow.new_dst_port_be.to_ne_bytes();
    old
}

/// Updates a complete TCP checksum for what [`rewrite`] replaced: the pseudo-header's
/// addresses and the ports.
///
/// # Safety
/// `tcp` must point to a complete header inside the packet.
#[inline(always)]
pub unsafe fn complete_checksum(tcp: *mut TcpHdr, old: &Replaced, flow: &FlowValue) {
    // SAFETY: the caller guarantees the header is in bounds.
    let tcp = unsafe { &mut *tcp };
    let mut check = u16::from_ne_bytes(tcp.check);
    check = csum::replace32(check, old.src_addr, flow.new_src_addr_be.ipv4_be());
    check = csum::replace32(check, old.dst_addr, flow.new_dst_addr_be.ipv4_be());
    check = csum::replace32(check, old.ports, new_ports(flow));
    tcp.check = check.to_ne_bytes();
}

/// True when the TCP checksum field holds exactly the pseudo-header's sum: the mark of a
/// CHECKSUM_PARTIAL packet (a complete checksum equals it by chance once in 65,536
/// packets, and such a packet merely takes the TC path, which knows the real state).
///
/// # Safety
/// `ip` and `tcp` must point to complete headers inside the packet.
#[inline(always)]
pub unsafe fn looks_partial(ip: *const Ipv4Hdr, tcp: *const TcpHdr) -> bool {
    // SAFETY: the caller guarantees both headers are in bounds.
    let (ip, tcp) = unsafe { (&*ip, &*tcp) };
    let tcp_len = ip.tot_len().wrapping_sub(u16::from(ip.ihl()));
    let words = [
        u16::from_ne_bytes([ip.src_addr[0], ip.src_addr[1]]),
        u16::from_ne_bytes([ip.src_addr[2], ip.src_addr[3]]),
        u16::from_ne_bytes([ip.dst_addr[0], ip.dst_addr[1]]),
        u16::from_ne_bytes([ip.dst_addr[2], ip.dst_addr[3]]),
        u16::from_ne_bytes([0, ip.proto]),
        u16::from_ne_bytes(tcp_len.to_be_bytes()),
    ];
    let mut sum = 0u32;
    for w in words {
        sum += u32::from(w);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    u16::from_ne_bytes(tcp.check) == sum as u16
}

/// Lowers the MSS a SYN announces to `max` (so that neither side sends segments larger
/// than the gateway's smaller interface can carry: a redirected packet too large for its
/// egress is dropped without an ICMP error). Looks at the first option only, where
/// stacks put the MSS. Returns the 16-bit word replaced (old, new) for the checksum.
///
/// # Safety
/// `tcp` must point to a complete header at `l4_offset` inside the packet.
#[inline(always)]
pub unsafe fn clamp_mss<P: Packet>(
    p: &P,
    l4_offset: usize,
    tcp: *const TcpHdr,
    max: u16,
) -> Option<(u16, u16)> {
    // SAFETY: the caller guarantees the header is in bounds.
    let t = unsafe { &*tcp };
    if max == 0 || t.syn() == 0 || t.doff() < 6 {
        return None;
    }
    let option = ptr_at::<[u8; 4], P>(p, l4_offset + TcpHdr::LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let option = unsafe { &mut *option };
    if option[0] != TCPOPT_MSS[0] || option[1] != TCPOPT_MSS[1] {
        return None;
    }
    if u16::from_be_bytes([option[2], option[3]]) <= max {
        return None;
    }
    let old = u16::from_ne_bytes([option[2], option[3]]);
    let new = max.to_be_bytes();
    option[2] = new[0];
    option[3] = new[1];
    Some((old, u16::from_ne_bytes(new)))
}

/// TCP option kinds: end of list, no-operation, window scale.
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_WSCALE: u8 = 3;
/// Options a SYN may carry (40 bytes): the walk gives up after this many.
const MAX_TCP_OPTIONS: usize = 10;
/// RFC 7323: a larger shift is treated as 14.
const MAX_WSCALE: u8 = 14;

/// The window scale a SYN announces (RFC 7323), walking its options (the MSS clamp reads
/// only the first; the scale usually comes after MSS, SACK-permitted and timestamps).
///
/// # Safety
/// `tcp` must point to a complete header at `l4_offset` inside the packet.
#[inline(always)]
pub unsafe fn window_scale<P: Packet>(p: &P, l4_offset: usize, tcp: *const TcpHdr) -> Option<u8> {
    // SAFETY: the caller guarantees the header is in bounds.
    let t = unsafe { &*tcp };
    let options_end = usize::from(t.doff()) * 4;
    let mut at = TcpHdr::LEN;
    let mut i = 0;
    while i < MAX_TCP_OPTIONS {
        if at >= options_end || at > 60 {
            return None;
        }
        // Two bytes (kind, length) even for a one-byte option: a one-byte load checked
        // by `+ 1 > end` compiles to a form the verifier cannot use, and a NOP as the
        // packet's last byte has no window scale after it anyway.
        let head = ptr_at::<[u8; 2], P>(p, l4_offset + at)?;
        // SAFETY: bounds checked by ptr_at.
        let [kind, len] = unsafe { *head };
        match kind {
            TCPOPT_EOL => return None,
            TCPOPT_NOP => at += 1,
            TCPOPT_WSCALE if len == 3 => {
                let option = ptr_at::<[u8; 3], P>(p, l4_offset + at)?;
                // SAFETY: bounds checked by ptr_at.
                return Some(unsafe { (*option)[2] }.min(MAX_WSCALE));
            }
            _ if len < 2 => return None,
            _ => at += usize::from(len),
        }
        i += 1;
    }
    None
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

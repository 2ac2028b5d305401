//! Bounds-checked access to packet bytes for XDP and TC alike: the only place that does
//! pointer arithmetic on packets.
use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

/// 802.1Q and 802.1ad ethertypes, network order (one tag is skipped).
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
const ETH_P_8021AD_BE: u16 = 0x88a8u16.to_be();
const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
const ETH_P_IPV6_BE: u16 = 0x86DDu16.to_be();
const VLAN_TAG_LEN: usize = 4;

/// What XDP and TC contexts have in common for direct packet access.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset` bytes into the packet, if all of it is inside the packet.
#[inline(always)]
pub fn ptr_at<T, P: Packet>(p: &P, offset: usize) -> Option<*mut T> {
    let start = p.data();
    let end = p.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Where the IPv4 header and its payload are.
pub struct Ipv4 {
    pub ip: *mut Ipv4Hdr,
    /// Offset of the IPv4 header (14, or 18 behind a VLAN tag).
    pub l3_offset: usize,
    /// Offset of the L4 header: IHL honoured, IP options skipped.
    pub l4_offset: usize,
}

/// Where an IPv6 header is (only the fixed header is parsed).
pub struct Ipv6 {
    pub ip: *mut Ipv6Hdr,
    /// Offset of the header after the fixed one (extension headers are not followed).
    pub l4_offset: usize,
}

/// Outcome of looking for an IP header behind the link layer.
pub enum L3 {
    Ipv4(Ipv4),
    Ipv6(Ipv6),
    /// Some other ethertype.
    NotIpv4,
    /// Too short or inconsistent to parse.
    Malformed,
}

/// Finds the IPv4 (or IPv6) header, behind at most one VLAN tag, and where its payload
/// starts.
#[inline(always)]
pub fn ipv4<P: Packet>(p: &P) -> L3 {
    let Some(eth) = ptr_at::<EthHdr, P>(p, 0) else {
        return L3::Malformed;
    };
    let mut l3_offset = EthHdr::LEN;
    // SAFETY: bounds checked by ptr_at.
    let mut ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_8021Q_BE || ether_type == ETH_P_8021AD_BE {
        // The inner ethertype is the last two bytes of the tag.
        let Some(inner) = ptr_at::<[u8; 2], P>(p, l3_offset + 2) else {
            return L3::Malformed;
        };
        // SAFETY: bounds checked by ptr_at.
        ether_type = u16::from_ne_bytes(unsafe { *inner });
        l3_offset += VLAN_TAG_LEN;
    }
    if ether_type == ETH_P_IPV6_BE {
        return match ptr_at::<Ipv6Hdr, P>(p, l3_offset) {
            Some(ip) => L3::Ipv6(Ipv6 {
                ip,
                l4_offset: l3_offset + Ipv6Hdr::LEN,
            }),
            None => L3::Malformed,
        };
    }
    if ether_type != ETH_P_IPV4_BE {
        return L3::NotIpv4;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr, P>(p, l3_offset) else {
        return L3::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let hdr = unsafe { &*ip };
    let ihl = hdr.ihl() as usize;
    if hdr.version() != 4 || ihl < Ipv4Hdr::LEN {
        return L3::Malformed;
    }
    L3::Ipv4(Ipv4 {
        ip,
        l3_offset,
        l4_offset: l3_offset + ihl,
    })
}

//! Bounds-checked access to packet bytes, the only place that does pointer arithmetic.
use aya_ebpf::programs::XdpContext;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// 802.1Q and 802.1ad ethertypes, network order (one tag is skipped).
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
const ETH_P_8021AD_BE: u16 = 0x88a8u16.to_be();
const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
const VLAN_TAG_LEN: usize = 4;

/// A pointer to a `T` at `offset` bytes into the packet, if all of it is inside the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Outcome of looking for an IPv4 header behind the link layer.
pub enum L3 {
    /// An IPv4 header with a sane version and IHL, and the offset of the L4 header.
    Ipv4 {
        ip: *const Ipv4Hdr,
        l4_offset: usize,
    },
    /// Some other ethertype.
    NotIpv4,
    /// Too short or inconsistent to parse.
    Malformed,
}

/// Finds the IPv4 header (behind at most one VLAN tag) and where its payload starts,
/// honouring IHL so that IP options are skipped, never assumed absent.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> L3 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return L3::Malformed;
    };
    let mut l3_offset = EthHdr::LEN;
    // SAFETY: bounds checked by ptr_at.
    let mut ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_8021Q_BE || ether_type == ETH_P_8021AD_BE {
        // The inner ethertype is the last two bytes of the tag.
        let Some(inner) = ptr_at::<[u8; 2]>(ctx, l3_offset + 2) else {
            return L3::Malformed;
        };
        // SAFETY: bounds checked by ptr_at.
        ether_type = u16::from_ne_bytes(unsafe { *inner });
        l3_offset += VLAN_TAG_LEN;
    }
    if ether_type != ETH_P_IPV4_BE {
        return L3::NotIpv4;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3_offset) else {
        return L3::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let hdr = unsafe { &*ip };
    let ihl = hdr.ihl() as usize;
    if hdr.version() != 4 || ihl < Ipv4Hdr::LEN {
        return L3::Malformed;
    }
    L3::Ipv4 {
        ip,
        l4_offset: l3_offset + ihl,
    }
}

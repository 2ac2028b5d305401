//! The data-port guard: decides, for one received frame, whether it may reach the stack.
//!
//! Rules, in order (each outcome is a `Counter`):
//! 1. not IPv4 / unparseable link or IP header → pass (the stack judges it);
//! 2. not TCP, or TCP to an address that is not protected → pass;
//! 3. a later fragment (offset ≠ 0) → pass: no ports in it, and it cannot reassemble
//!    without the first fragment, which rule 4 checks;
//! 4. ports unreadable → drop; port outside every data range → pass;
//! 5. a first fragment aimed at the data range → drop (the data path never fragments);
//! 6. a lease for (source address, destination address, destination port) → pass, else drop.
use aya_ebpf::programs::XdpContext;
use ftp_guard_common::{Counter, FilterConfig, LeaseKey, MAX_DATA_RANGES};
use network_types::ip::IpProto;

use crate::{
    maps::{FILTER_CONFIG, LEASES},
    packet::{self, L3},
};

/// IPv4 "more fragments" flag within the 3-bit flags field.
const IP_MF: u8 = 0b001;

/// Classifies the frame in `ctx`; the caller counts it and acts on `Counter::is_drop`.
#[inline(always)]
pub fn classify(ctx: &XdpContext) -> Counter {
    let (ip, l4_offset) = match packet::ipv4(ctx) {
        L3::Ipv4 { ip, l4_offset } => (ip, l4_offset),
        L3::NotIpv4 => return Counter::PassNotIpv4,
        L3::Malformed => return Counter::PassMalformed,
    };
    // SAFETY: packet::ipv4 checked that the whole header is inside the packet.
    let ip = unsafe { &*ip };
    if ip.proto != IpProto::Tcp as u8 {
        return Counter::PassNotTcp;
    }
    let Some(config) = FILTER_CONFIG.get(0) else {
        return Counter::PassOtherAddress;
    };
    // Addresses stay in network order end to end: no byte swapping on the hot path.
    let dst_be = u32::from_ne_bytes(ip.dst_addr);
    if !protects_address(config, dst_be) {
        return Counter::PassOtherAddress;
    }
    if ip.frag_offset() != 0 {
        return Counter::PassLaterFragment;
    }
    // Source and destination port: the first 4 bytes of the TCP header.
    let Some(ports) = packet::ptr_at::<[u8; 4]>(ctx, l4_offset) else {
        return Counter::DropTruncated;
    };
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    if !in_data_range(config, dst_be, dst_port) {
        return Counter::PassOtherPort;
    }
    if ip.frag_flags() & IP_MF != 0 {
        return Counter::DropFragment;
    }
    let key = LeaseKey {
        client_addr_be: u32::from_ne_bytes(ip.src_addr),
        public_addr_be: dst_be,
        public_port_be: dst_port.to_be(),
        _pad: 0,
    };
    if LEASES.get_ptr(&key).is_some() {
        Counter::PassLeased
    } else {
        Counter::DropNoLease
    }
}

/// True when some data range is on `addr_be`.
#[inline(always)]
fn protects_address(config: &FilterConfig, addr_be: u32) -> bool {
    let mut i = 0;
    while i < MAX_DATA_RANGES {
        if i as u32 >= config.range_count {
            break;
        }
        if config.ranges[i].addr_be == addr_be {
            return true;
        }
        i += 1;
    }
    false
}

/// True when `port` (host order) is in a data range on `addr_be`.
#[inline(always)]
fn in_data_range(config: &FilterConfig, addr_be: u32, port: u16) -> bool {
    let mut i = 0;
    while i < MAX_DATA_RANGES {
        if i as u32 >= config.range_count {
            break;
        }
        let range = &config.ranges[i];
        if range.addr_be == addr_be && range.contains(port) {
            return true;
        }
        i += 1;
    }
    false
}

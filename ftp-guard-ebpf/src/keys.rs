//! Map keys built from packet headers: the one place that widens an IPv4 header's
//! addresses to the maps' 16-byte form ([`IpAddrBe`], v4-mapped).
use ftp_guard_common::{FlowKey, IpAddrBe, LeaseKey};

/// An IPv4 address as it lies in a header, in the maps' form.
#[inline(always)]
pub fn addr_v4(bytes: [u8; 4]) -> IpAddrBe {
    IpAddrBe::from_ipv4_be(u32::from_ne_bytes(bytes))
}

/// The flow key of an IPv4 packet from `src` to `dst` with `ports` (source, then
/// destination), all as the bytes lie in its headers.
#[inline(always)]
pub fn flow_v4(src: [u8; 4], dst: [u8; 4], ports: [u8; 4]) -> FlowKey {
    FlowKey {
        src_addr_be: addr_v4(src),
        dst_addr_be: addr_v4(dst),
        src_port_be: u16::from_ne_bytes([ports[0], ports[1]]),
        dst_port_be: u16::from_ne_bytes([ports[2], ports[3]]),
    }
}

/// The lease a connection arriving as `flow` opens under: its source's, for its
/// destination address and port.
#[inline(always)]
pub fn lease_of(flow: &FlowKey) -> LeaseKey {
    LeaseKey {
        peer_addr_be: flow.src_addr_be,
        addr_be: flow.dst_addr_be,
        port_be: flow.dst_port_be,
        _pad: 0,
    }
}

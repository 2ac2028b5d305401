//! Userspace conversions between the map keys and values and socket addresses: the only
//! place that packs ports and addresses into them or unpacks them.
use core::net::{IpAddr, SocketAddr};

use crate::{FlowKey, FlowValue, IpAddrBe, LeaseKey};

fn socket(addr: IpAddrBe, port_be: u16) -> SocketAddr {
    SocketAddr::new(addr.to_ip(), u16::from_be(port_be))
}

impl LeaseKey {
    /// The lease that lets `peer` connect to the gateway's `local` address and port.
    pub fn new(peer: IpAddr, local: SocketAddr) -> Self {
        LeaseKey {
            peer_addr_be: peer.into(),
            addr_be: local.ip().into(),
            port_be: local.port().to_be(),
            _pad: 0,
        }
    }

    /// The peer allowed to connect.
    pub fn peer(&self) -> IpAddr {
        self.peer_addr_be.to_ip()
    }

    /// The gateway address and port the connection is aimed at.
    pub fn local(&self) -> SocketAddr {
        socket(self.addr_be, self.port_be)
    }
}

impl FlowKey {
    /// A connection's direction from `src` to `dst`, as its packets arrive.
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Self {
        FlowKey {
            src_addr_be: src.ip().into(),
            dst_addr_be: dst.ip().into(),
            src_port_be: src.port().to_be(),
            dst_port_be: dst.port().to_be(),
        }
    }

    pub fn src(&self) -> SocketAddr {
        socket(self.src_addr_be, self.src_port_be)
    }

    pub fn dst(&self) -> SocketAddr {
        socket(self.dst_addr_be, self.dst_port_be)
    }
}

impl FlowValue {
    /// The source this direction's packets are given.
    pub fn new_src(&self) -> SocketAddr {
        socket(self.new_src_addr_be, self.new_src_port_be)
    }

    /// The destination this direction's packets are given.
    pub fn new_dst(&self) -> SocketAddr {
        socket(self.new_dst_addr_be, self.new_dst_port_be)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
    }

    #[test]
    fn lease_key_packs_network_order() {
        let key = LeaseKey::new(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)),
            v4(203, 0, 113, 1, 40001),
        );
        assert_eq!(
            key,
            LeaseKey {
                peer_addr_be: IpAddrBe::from_ipv4_be(u32::from_ne_bytes([203, 0, 113, 2])),
                addr_be: IpAddrBe::from_ipv4_be(u32::from_ne_bytes([203, 0, 113, 1])),
                port_be: u16::from_ne_bytes(40001u16.to_be_bytes()),
                _pad: 0,
            }
        );
        assert_eq!(
            (key.peer(), key.local()),
            (
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)),
                v4(203, 0, 113, 1, 40001)
            )
        );
    }

    #[test]
    fn flow_key_round_trips_both_families() {
        let v6 = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
            51000,
        );
        for (src, dst) in [
            (v4(198, 51, 100, 2, 30001), v4(198, 51, 100, 1, 40001)),
            (v6, v4(203, 0, 113, 1, 20)),
        ] {
            let key = FlowKey::new(src, dst);
            assert_eq!((key.src(), key.dst()), (src, dst));
        }
    }

    #[test]
    fn flow_value_rewrite_addresses() {
        let value = FlowValue {
            new_src_addr_be: Ipv4Addr::new(198, 51, 100, 1).into(),
            new_dst_addr_be: Ipv4Addr::new(198, 51, 100, 2).into(),
            new_src_port_be: 40001u16.to_be(),
            new_dst_port_be: 30001u16.to_be(),
            ..FlowValue::default()
        };
        assert_eq!(
            (value.new_src(), value.new_dst()),
            (v4(198, 51, 100, 1, 40001), v4(198, 51, 100, 2, 30001))
        );
    }
}

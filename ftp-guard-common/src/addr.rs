//! [`IpAddrBe`]: the one address type of every map key and value, wide enough for IPv6,
//! so that carrying IPv6 later adds code, not a new layout.

/// An IP address as the maps hold it: 16 bytes in network order, IPv4 stored v4-mapped
/// (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2); all zeros ([`IpAddrBe::UNSPECIFIED`]) means none.
///
/// Kept as four 32-bit words, each loaded natively from its network-order bytes (as the
/// programs read addresses from headers): 4-byte aligned, so the programs copy and
/// compare it a word at a time instead of byte by byte.
#[repr(C)]
#[derive(Clone, Copy, Default, Eq)]
pub struct IpAddrBe {
    pub words: [u32; 4],
}

/// The third word of every v4-mapped address: bytes `00 00 ff ff`.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl IpAddrBe {
    /// `::`, no address.
    pub const UNSPECIFIED: IpAddrBe = IpAddrBe { words: [0; 4] };

    /// The v4-mapped form of an IPv4 address loaded natively from its network-order bytes
    /// (as `u32::from_ne_bytes(header.dst_addr)` gives it).
    #[inline(always)]
    pub const fn from_ipv4_be(addr_be: u32) -> Self {
        IpAddrBe {
            words: [0, 0, V4_MAPPED_WORD, addr_be],
        }
    }

    /// True when this is the v4-mapped form of `addr_be` (loaded as for
    /// [`from_ipv4_be`](Self::from_ipv4_be)).
    #[inline(always)]
    pub const fn is_ipv4_be(&self, addr_be: u32) -> bool {
        self.is_v4_mapped() && self.words[3] == addr_be
    }

    /// True for an IPv4 address (stored v4-mapped).
    #[inline(always)]
    pub const fn is_v4_mapped(&self) -> bool {
        self.words[0] | self.words[1] | (self.words[2] ^ V4_MAPPED_WORD) == 0
    }

    /// The IPv4 address of a v4-mapped address, loaded natively from network-order bytes
    /// (what the IPv4 programs write into headers); meaningless for an IPv6 address.
    #[inline(always)]
    pub const fn ipv4_be(&self) -> u32 {
        self.words[3]
    }

    /// True for `::` (no address).
    #[inline(always)]
    pub const fn is_unspecified(&self) -> bool {
        self.words[0] | self.words[1] | self.words[2] | self.words[3] == 0
    }
}

// Word by word, without branches or a call to memcmp (which eBPF has not got).
impl PartialEq for IpAddrBe {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.words, &other.words);
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
    }
}

// Consistent with `eq`: equal addresses have equal words.
impl core::hash::Hash for IpAddrBe {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.words.hash(state);
    }
}

// Userspace shows the address (in test failures, logs); the programs never format one.
#[cfg(any(feature = "user", test))]
impl core::fmt::Debug for IpAddrBe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.to_ip())
    }
}

#[cfg(not(any(feature = "user", test)))]
impl core::fmt::Debug for IpAddrBe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IpAddrBe")
            .field("words", &self.words)
            .finish()
    }
}

/// Userspace conversions: the only place that packs and unpacks addresses.
#[cfg(any(feature = "user", test))]
mod user {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::IpAddrBe;

    impl IpAddrBe {
        /// The 16 bytes in network order.
        pub fn octets(&self) -> [u8; 16] {
            let mut out = [0u8; 16];
            for (chunk, word) in out.chunks_exact_mut(4).zip(self.words) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            out
        }

        /// The address: IPv4 when v4-mapped, else IPv6.
        pub fn to_ip(&self) -> IpAddr {
            match self.to_ipv4() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(self.octets())),
            }
        }

        /// The IPv4 address, when v4-mapped.
        pub fn to_ipv4(&self) -> Option<Ipv4Addr> {
            self.is_v4_mapped()
                .then(|| Ipv4Addr::from(self.ipv4_be().to_ne_bytes()))
        }
    }

    impl From<Ipv4Addr> for IpAddrBe {
        fn from(ip: Ipv4Addr) -> Self {
            IpAddrBe::from_ipv4_be(u32::from_ne_bytes(ip.octets()))
        }
    }

    impl From<Ipv6Addr> for IpAddrBe {
        /// Stored as it is: an IPv4-mapped IPv6 address reads back as IPv4.
        fn from(ip: Ipv6Addr) -> Self {
            let o = ip.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            IpAddrBe {
                words: [word(0), word(4), word(8), word(12)],
            }
        }
    }

    impl From<IpAddr> for IpAddrBe {
        fn from(ip: IpAddr) -> Self {
            match ip {
                IpAddr::V4(v4) => v4.into(),
                IpAddr::V6(v6) => v6.into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn ipv4_is_stored_v4_mapped_in_network_order() {
        let addr = IpAddrBe::from(Ipv4Addr::new(203, 0, 113, 7));
        let mut want = [0u8; 16];
        want[10..].copy_from_slice(&[0xff, 0xff, 203, 0, 113, 7]);
        assert_eq!(addr.octets(), want);
        assert_eq!(
            addr,
            IpAddrBe::from_ipv4_be(u32::from_ne_bytes([203, 0, 113, 7]))
        );
        assert_eq!(addr.ipv4_be(), u32::from_ne_bytes([203, 0, 113, 7]));
    }

    #[test]
    fn addresses_round_trip() {
        for ip in [
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            assert_eq!(IpAddrBe::from(ip).to_ip(), ip);
        }
        // A v4-mapped IPv6 address is the IPv4 address.
        let mapped: Ipv6Addr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            IpAddrBe::from(mapped).to_ip(),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
        );
    }

    #[test]
    fn ipv6_is_stored_as_its_octets() {
        let ip = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6);
        let addr = IpAddrBe::from(ip);
        assert_eq!(addr.octets(), ip.octets());
        assert_eq!(addr.to_ipv4(), None);
        assert!(!addr.is_v4_mapped());
    }

    #[test]
    fn debug_shows_the_address() {
        let v4 = IpAddrBe::from(Ipv4Addr::new(192, 0, 2, 1));
        let v6 = IpAddrBe::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(
            std::format!("{v4:?} {v6:?} {:?}", IpAddrBe::UNSPECIFIED),
            "192.0.2.1 2001:db8::1 ::"
        );
    }

    #[test]
    fn predicates() {
        let v4 = IpAddrBe::from(Ipv4Addr::new(192, 0, 2, 1));
        let be = u32::from_ne_bytes([192, 0, 2, 1]);
        assert!(v4.is_ipv4_be(be));
        assert!(!v4.is_ipv4_be(u32::from_ne_bytes([192, 0, 2, 2])));
        assert!(!v4.is_unspecified());
        // 0.0.0.0 is an IPv4 address, not "none".
        assert!(!IpAddrBe::from(Ipv4Addr::UNSPECIFIED).is_unspecified());
        assert!(IpAddrBe::UNSPECIFIED.is_unspecified());
        assert_eq!(IpAddrBe::default(), IpAddrBe::UNSPECIFIED);
        // An IPv6 address whose last word equals an IPv4 address is not that address.
        let mut v6 = v4;
        v6.words[2] = 0;
        assert!(!v6.is_ipv4_be(be));
        assert_ne!(v6, v4);
    }
}

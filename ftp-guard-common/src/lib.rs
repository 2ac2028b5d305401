//! Types shared by the eBPF programs (`ftp-guard-ebpf`) and userspace (`ftp-guard`).
//!
//! Rules for everything in here (they are what the kernel and userspace agree on):
//! - `#[repr(C)]`, no implicit padding (explicit `_pad` fields, checked by the size
//!   asserts below), no `bool`, `Option` or enums inside map values;
//! - a field's byte order is in its name: `_be` is network order, otherwise host order.
#![no_std]

/// Names of the programs and maps in the eBPF object, so userspace never spells them twice.
pub mod names {
    /// XDP program on the client-facing interface: guards the public data-port range.
    pub const XDP_GUARD: &str = "xdp_guard";
    /// Array map, one [`FilterConfig`](super::FilterConfig): what the guard protects.
    pub const FILTER_CONFIG: &str = "FILTER_CONFIG";
    /// Hash map [`LeaseKey`](super::LeaseKey) → [`LeaseValue`](super::LeaseValue).
    pub const LEASES: &str = "LEASES";
    /// Per-CPU array of `u64` packet counters indexed by [`Counter`](super::Counter).
    pub const COUNTERS: &str = "COUNTERS";
}

/// How many (public address, data-port range) pairs the guard can protect.
pub const MAX_DATA_RANGES: usize = 16;

/// Default capacity of the lease map (issue: at least 65,536 concurrent leases).
pub const DEFAULT_MAX_LEASES: u32 = 65_536;

/// One protected range: TCP to `addr_be` with a destination port in `port_lo..=port_hi`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataRange {
    /// Public (client-facing) IPv4 address, network byte order.
    pub addr_be: u32,
    /// First port of the range, host byte order.
    pub port_lo: u16,
    /// Last port of the range (inclusive), host byte order.
    pub port_hi: u16,
}

impl DataRange {
    /// True when `port` (host order) lies in this range.
    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        self.port_lo <= port && port <= self.port_hi
    }
}

/// What the XDP guard protects; lives in a one-entry array map written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Number of valid entries at the start of `ranges`.
    pub range_count: u32,
    pub ranges: [DataRange; MAX_DATA_RANGES],
}

/// Key of a lease: the client that negotiated it and the public data port it may use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LeaseKey {
    /// The client's IPv4 address as seen on the control connection, network order.
    pub client_addr_be: u32,
    /// Public address the data connection is aimed at, network order.
    pub public_addr_be: u32,
    /// Public data port, network order.
    pub public_port_be: u16,
    /// Always zero (hash keys are compared bytewise).
    pub _pad: u16,
}

/// Where a leased data connection goes on the origin side.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseValue {
    /// The origin's data address, network order.
    pub origin_addr_be: u32,
    /// The origin's data port, network order.
    pub origin_port_be: u16,
    pub _pad: u16,
}

/// Why the guard passed or dropped a packet: the index into the per-CPU counter array.
///
/// Used only as an index, never stored in a map value.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not IPv4 (IPv6, ARP, …): not the guard's business.
    PassNotIpv4 = 0,
    /// Too short to read the Ethernet or IPv4 header, or an invalid IHL: the stack drops it.
    PassMalformed = 1,
    /// IPv4 but not TCP.
    PassNotTcp = 2,
    /// TCP to an address the guard does not protect.
    PassOtherAddress = 3,
    /// TCP to a protected address, port outside the data range (e.g. the control port).
    PassOtherPort = 4,
    /// TCP to the data range that matches a lease.
    PassLeased = 5,
    /// A non-first IPv4 fragment: carries no ports. Harmless, because the first fragment
    /// (which does carry them) is checked and a datagram cannot reassemble without it.
    PassLaterFragment = 6,
    /// TCP to the data range with no lease for (client, address, port).
    DropNoLease = 7,
    /// First fragment aimed at the data range: the data path never handles fragments.
    DropFragment = 8,
    /// TCP to a protected address whose ports cannot be read (truncated or tiny fragment).
    DropTruncated = 9,
}

/// Number of [`Counter`] values: the size of the counter map.
pub const COUNTER_COUNT: u32 = 10;

impl Counter {
    /// Every counter in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::PassNotIpv4,
        Counter::PassMalformed,
        Counter::PassNotTcp,
        Counter::PassOtherAddress,
        Counter::PassOtherPort,
        Counter::PassLeased,
        Counter::PassLaterFragment,
        Counter::DropNoLease,
        Counter::DropFragment,
        Counter::DropTruncated,
    ];

    /// Stable snake_case name, used in logs and (later) metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassNotIpv4 => "pass_not_ipv4",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassNotTcp => "pass_not_tcp",
            Counter::PassOtherAddress => "pass_other_address",
            Counter::PassOtherPort => "pass_other_port",
            Counter::PassLeased => "pass_leased",
            Counter::PassLaterFragment => "pass_later_fragment",
            Counter::DropNoLease => "drop_no_lease",
            Counter::DropFragment => "drop_fragment",
            Counter::DropTruncated => "drop_truncated",
        }
    }

    /// True for the counters whose packets the guard drops.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Counter::DropNoLease | Counter::DropFragment | Counter::DropTruncated
        )
    }
}

// Layouts the kernel and userspace must agree on, with no hidden padding.
const _: () = assert!(core::mem::size_of::<DataRange>() == 8);
const _: () = assert!(core::mem::size_of::<FilterConfig>() == 4 + 8 * MAX_DATA_RANGES);
const _: () = assert!(core::mem::size_of::<LeaseKey>() == 12);
const _: () = assert!(core::mem::size_of::<LeaseValue>() == 8);
const _: () = assert!(Counter::ALL.len() == COUNTER_COUNT as usize);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain integers with no padding (asserted above),
    // so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::DataRange {}
    unsafe impl aya::Pod for super::FilterConfig {}
    unsafe impl aya::Pod for super::LeaseKey {}
    unsafe impl aya::Pod for super::LeaseValue {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn counter_indices_match_their_position() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{} is out of order", c.name());
        }
    }

    #[test]
    fn range_contains_is_inclusive() {
        let r = DataRange {
            addr_be: 0,
            port_lo: 40000,
            port_hi: 40099,
        };
        assert!(!r.contains(39999));
        assert!(r.contains(40000));
        assert!(r.contains(40099));
        assert!(!r.contains(40100));
    }
}

//! Map types of the protection policy at the edge: per-service ACLs (an LPM trie with a
//! packet counter per rule), bans of source addresses, and per-source SYN token buckets
//! on the control port. See the maps' names in [`crate::names`].
use crate::IpAddrBe;

/// Rules the ACL trie and its per-rule counters can hold (all services together).
pub const MAX_ACL_RULES: u32 = 16_384;
/// Banned source addresses at once.
pub const MAX_BANS: u32 = 65_536;
/// Source addresses whose control-port SYN rate is tracked at once (least recently seen
/// ones are forgotten first: a forgotten source starts again with a full bucket).
pub const MAX_SYN_SOURCES: u32 = 131_072;

/// Bits of [`AclKeyData`] before the address: the service index.
pub const ACL_SERVICE_BITS: u32 = 32;
/// Bits of an IPv4 address's v4-mapped prefix (`::ffff:0:0/96`) within the 16 bytes: an
/// IPv4 rule `a.b.c.d/n` has prefix length `ACL_SERVICE_BITS + 96 + n`.
pub const ACL_V4_MAPPED_BITS: u32 = 96;

/// What an LPM-trie key of the ACL matches on, after its prefix length: the service
/// (first, so a prefix never crosses services) and the source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AclKeyData {
    /// Index of the service's [`DataRange`](crate::DataRange), network order (the trie
    /// compares bytes most significant first).
    pub service_be: u32,
    pub addr_be: IpAddrBe,
}

/// [`AclValue::action`]: the source passes.
pub const ACL_ALLOW: u32 = 1;
/// [`AclValue::action`]: the source's packets are dropped (`drop_acl`).
pub const ACL_DENY: u32 = 2;

/// What the most specific matching rule says.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclValue {
    /// Index into the per-rule counters.
    pub rule_id: u32,
    /// [`ACL_ALLOW`] or [`ACL_DENY`].
    pub action: u32,
}

/// A banned source: its packets to every protected endpoint are dropped until `expires_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanValue {
    /// CLOCK_MONOTONIC (ns) end of the ban; an entry past it counts as absent.
    pub expires_ns: u64,
    /// Why, as userspace defines it (e.g. login failures); the programs only store it.
    pub reason: u32,
    pub _pad: u32,
}

/// [`SynKey::service`] bit of a bucket shared by a source prefix (the /24 of an IPv4
/// source, its address's last byte zero) rather than one address's.
pub const SYN_PREFIX_BUCKET: u32 = 1 << 31;
/// Network-order bytes an IPv4 source keeps in its prefix bucket's key (a /24).
pub const SYN_PREFIX_V4_MASK: [u8; 4] = [0xff, 0xff, 0xff, 0];

/// Key of a control-port SYN bucket: one per (service, source address), and one per
/// (service, source prefix) with [`SYN_PREFIX_BUCKET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SynKey {
    pub addr_be: IpAddrBe,
    /// Index of the service's [`DataRange`](crate::DataRange), host order, with
    /// [`SYN_PREFIX_BUCKET`] for a prefix's bucket.
    pub service: u32,
}

/// A token bucket kept as its theoretical arrival time (GCRA): a SYN at `now` passes when
/// `tat - now` stays within the burst's tolerance, and moves `tat` on by one interval.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynBucket {
    /// CLOCK_MONOTONIC ns at which the bucket is full again.
    pub tat_ns: u64,
}

const _: () = assert!(core::mem::size_of::<AclKeyData>() == 20);
const _: () = assert!(core::mem::size_of::<AclValue>() == 8);
const _: () = assert!(core::mem::size_of::<BanValue>() == 16);
const _: () = assert!(core::mem::size_of::<SynKey>() == 20);
const _: () = assert!(core::mem::size_of::<SynBucket>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain integers without padding (asserted above).
    unsafe impl aya::Pod for super::AclKeyData {}
    unsafe impl aya::Pod for super::AclValue {}
    unsafe impl aya::Pod for super::BanValue {}
    unsafe impl aya::Pod for super::SynKey {}
    unsafe impl aya::Pod for super::SynBucket {}
}

//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! Operands are 16-bit words exactly as they lie in the packet, loaded in native order:
//! the one's-complement sum is byte-order independent (RFC 1071 §2(B)), so no swapping.

/// The checksum `check` after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The checksum `check` after a 32-bit value (two words) changed from `old` to `new`.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let check = replace16(check, old as u16, new as u16);
    replace16(check, (old >> 16) as u16, (new >> 16) as u16)
}

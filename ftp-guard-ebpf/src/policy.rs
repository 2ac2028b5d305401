//! The protection policy for packets from clients to a service's protected endpoints (its
//! control port and its data range), before anything else is done with them: bans, the
//! service's ACL, and the control port's SYN rate per source. Userspace writes the rules
//! (`BANS`, `ACL`); the programs keep the SYN buckets themselves.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use ftp_guard_common::{
    ACL_DENY, Counter, DataRange, IpAddrBe, SYN_PREFIX_BUCKET, SYN_PREFIX_V4_MASK, SynBucket,
    SynKey,
};

use crate::maps::{ACL, ACL_HITS, BANS, POLICY_SCRATCH, SYN_BUCKETS};

/// Bits an ACL key matches on in full: the service index and the 16-byte address.
const ACL_FULL_BITS: u32 = 32 + 128;

/// Why a packet from `src` to service `service` (its `range`) must be dropped, if it must.
/// `control_syn`: a SYN without ACK to the control port (the one that costs a socket).
#[inline(always)]
pub fn refuses(
    service: u32,
    range: &DataRange,
    src: IpAddrBe,
    control_syn: bool,
) -> Option<Counter> {
    // The keys live in per-CPU scratch space, not on the stack (it has no room left).
    // SAFETY: this CPU's slot, used by this program run only.
    let scratch = unsafe { &mut *POLICY_SCRATCH.get_ptr_mut(0)? };
    scratch.source = src;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the value is read at once.
    if let Some(ban) = unsafe { BANS.get(&scratch.source) }
        && ban.expires_ns > now
    {
        return Some(Counter::DropBanned);
    }
    scratch.acl.prefix_len = ACL_FULL_BITS;
    scratch.acl.data.service_be = service.to_be();
    scratch.acl.data.addr_be = src;
    if let Some(rule) = ACL.get(&scratch.acl) {
        if let Some(hits) = ACL_HITS.get_ptr_mut(rule.rule_id) {
            // SAFETY: per-CPU slot, only this program on this CPU writes it while it runs.
            unsafe { *hits += 1 };
        }
        if rule.action == ACL_DENY {
            return Some(Counter::DropAcl);
        }
    }
    if !control_syn {
        return None;
    }
    if range.syn_interval_ns != 0 {
        scratch.syn = SynKey {
            addr_be: src,
            service,
        };
        if !syn_within_rate(&scratch.syn, range.syn_interval_ns, range.syn_burst, now) {
            return Some(Counter::DropSynRate);
        }
    }
    if range.prefix_syn_interval_ns != 0 {
        let mut prefix = src;
        // IPv4 sources only (IPv6 is not carried): their /24.
        prefix.words[3] &= u32::from_ne_bytes(SYN_PREFIX_V4_MASK);
        scratch.syn = SynKey {
            addr_be: prefix,
            service: service | SYN_PREFIX_BUCKET,
        };
        let (interval, burst) = (range.prefix_syn_interval_ns, range.prefix_syn_burst);
        if !syn_within_rate(&scratch.syn, interval, burst, now) {
            return Some(Counter::DropSynPrefixRate);
        }
    }
    None
}

/// GCRA token bucket: a SYN at `now` conforms when the bucket's theoretical arrival time
/// is at most `burst - 1` intervals ahead; a conforming SYN moves it on by one interval.
/// A SYN over the rate leaves the bucket as it was (it refills while the source floods).
#[inline(always)]
fn syn_within_rate(key: &SynKey, interval_ns: u32, burst: u32, now: u64) -> bool {
    let interval = u64::from(interval_ns);
    let tolerance = interval * u64::from(burst.saturating_sub(1));
    match SYN_BUCKETS.get_ptr_mut(key) {
        Some(bucket) => {
            // SAFETY: map value pointers stay valid for the program run. Two CPUs racing
            // on one source may both pass: the limit is approximate by one SYN per CPU.
            let tat = unsafe { (*bucket).tat_ns }.max(now);
            if tat - now > tolerance {
                return false;
            }
            unsafe { (*bucket).tat_ns = tat + interval };
            true
        }
        None => {
            // A new (or forgotten) source starts with a full bucket, less this SYN.
            let _ = SYN_BUCKETS.insert(
                key,
                &SynBucket {
                    tat_ns: now + interval,
                },
                0,
            );
            true
        }
    }
}

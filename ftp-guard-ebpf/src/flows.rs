//! The NAT connection table (`FLOWS`): a connection starts under a lease as a tentative
//! pair of entries (`start`), its completed handshake claims the lease (`tentative`), the
//! remnants of a finished one give way to a new one on its tuple (`forget_if_over`), and
//! each direction learns the way back from the other's frames (`learn_l2`).
//!
//! Everything here works on flow entries; the guard (`guard`) decides when it is called.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use ftp_guard_common::{
    Counter, EVENT_CLAIMED, FLOW_CLAIMER, FLOW_ENDING, FLOW_L2, FLOW_PAIR_L2, FLOW_RST,
    FLOW_TARGET_ISN, FLOW_TENTATIVE, FlowKey, FlowValue, LeaseValue, connection_over,
};
use network_types::{eth::EthHdr, tcp::TcpHdr};

use crate::{
    keys,
    maps::{self, FLOWS, LEASES, NEW_FLOWS, NewFlows},
    packet::{self, Packet},
};

/// errno of an insert with [`BPF_NOEXIST`] whose key is already in the map.
const EEXIST: i32 = 17;

/// Why a flow entry could not be inserted: its key is held by another connection, or the
/// table is full (E2BIG) — or, rarely, out of memory, counted as full too.
#[inline(always)]
fn insert_failure(errno: i32) -> Counter {
    if errno == -EEXIST {
        Counter::DropTupleTaken
    } else {
        Counter::DropFlowTableFull
    }
}

/// Map update flag: insert or replace.
const BPF_ANY: u64 = 0;
/// Map update flag: insert only if absent.
const BPF_NOEXIST: u64 = 1;

/// What a packet of a tentative connection (handshake not complete) does.
pub enum Handshake {
    Forward {
        forget: bool,
    },
    Drop(Counter),
    /// The entries were removed: judge the packet as a new connection's SYN.
    Restart,
}

/// A packet on a tentative connection's entry `flow` (keyed `key`).
///
/// From the target: everything passes (it answers what it was sent); its SYN-ACK that
/// acknowledges the claiming SYN records its sequence number. From the claiming peer:
/// - its SYN again (same sequence number) passes; a SYN with another one is a new
///   connection on the same ports: the tentative pair goes and the SYN is judged anew;
/// - a RST passes; with the sequence number the target's SYN-ACK acknowledged (what the
///   peer's host answers a SYN-ACK to a SYN it never sent) it also ends the attempt;
/// - the ACK of the target's SYN-ACK completes the handshake — something an off-path
///   spoofer of the peer's address cannot send: the entries become a plain connection and
///   the lease is claimed (deleted; if userspace revoked it meanwhile, the handshake still
///   completed under a valid lease, so the connection stays) and userspace told;
/// - anything else is dropped.
#[inline(always)]
pub fn tentative(key: &FlowKey, flow: *mut FlowValue, tcp: &TcpHdr, ttl: u8) -> Handshake {
    // SAFETY: map value pointers stay valid for the program run.
    let f = unsafe { &mut *flow };
    let seq = u32::from_be_bytes(tcp.seq);
    let ack_seq = u32::from_be_bytes(tcp.ack_seq);
    if f.flags & FLOW_CLAIMER == 0 {
        if tcp.syn() != 0 && tcp.ack() != 0 {
            // SAFETY: a plain read of the other direction's entry.
            let acks_claim = unsafe { FLOWS.get(&f.reverse) }.is_some_and(|claimer| {
                claimer.flags & FLOW_CLAIMER != 0 && ack_seq == claimer.claim_seq.wrapping_add(1)
            });
            if acks_claim {
                f.claim_seq = seq;
                f.flags |= FLOW_TARGET_ISN;
            }
        }
        return Handshake::Forward { forget: false };
    }
    if tcp.rst() != 0 {
        return Handshake::Forward {
            forget: seq == f.claim_seq.wrapping_add(1),
        };
    }
    if tcp.syn() != 0 && tcp.ack() == 0 {
        if seq == f.claim_seq {
            return Handshake::Forward { forget: false };
        }
        if ttl <= 1 {
            return Handshake::Drop(Counter::DropTtl);
        }
        let _ = FLOWS.remove(&f.reverse);
        let _ = FLOWS.remove(key);
        return Handshake::Restart;
    }
    if tcp.ack() == 0 || tcp.syn() != 0 {
        return Handshake::Drop(Counter::DropUnconfirmed);
    }
    let reverse = f.reverse;
    let Some(pair) = FLOWS.get_ptr_mut(&reverse) else {
        return Handshake::Drop(Counter::DropUnconfirmed);
    };
    // SAFETY: as above.
    let pair = unsafe { &mut *pair };
    if pair.flags & FLOW_TARGET_ISN == 0 || ack_seq != pair.claim_seq.wrapping_add(1) {
        return Handshake::Drop(Counter::DropUnconfirmed);
    }
    // Before anything changes, as for the claiming SYN: forwarding would drop it.
    if ttl <= 1 {
        return Handshake::Drop(Counter::DropTtl);
    }
    // The target's entry first: userspace reads it to tell a claimed lease from one that
    // vanished otherwise, and it sees the lease gone only after this.
    // The target's ISN stays in `claim_seq`: userspace counts the payload by it.
    pair.flags &= !(FLOW_TENTATIVE | FLOW_TARGET_ISN);
    f.flags &= !FLOW_TENTATIVE;
    let _ = LEASES.remove(&keys::lease_of(key));
    maps::notify(EVENT_CLAIMED, key, &reverse);
    Handshake::Forward { forget: false }
}

/// Removes both entries of a connection that is over (a RST either way, or each
/// direction's FIN acknowledged by the other: `connection_over`); false (nothing
/// removed) while it is not.
///
/// The claiming SYN sent again (same sequence number) is the same connection still
/// opening, even after a RST: a peer whose SYN met a stale connection at the target (a
/// TIME_WAIT that answers with a bare ACK) resets it and retransmits; the flow carries
/// the retransmission, so its teardown marks are cleared.
#[inline(always)]
pub fn forget_if_over(key: &FlowKey, flow: *mut FlowValue, syn_seq: u32) -> bool {
    // SAFETY: map value pointers stay valid for the program run.
    let f = unsafe { &mut *flow };
    let reverse = f.reverse;
    let pair = FLOWS.get_ptr_mut(&reverse);
    // A half without its pair is as good as reset.
    // SAFETY: as above.
    let pair_flags = pair.map_or(FLOW_RST, |p| unsafe { (*p).flags });
    if (f.flags | pair_flags) & FLOW_ENDING == 0 {
        return false;
    }
    if f.flags & FLOW_CLAIMER != 0 && f.claim_seq == syn_seq {
        f.flags &= !FLOW_ENDING;
        if let Some(pair) = pair {
            // SAFETY: as above.
            unsafe { (*pair).flags &= !FLOW_ENDING };
        }
        return false;
    }
    let over = connection_over(f.flags, pair_flags);
    if over {
        let _ = FLOWS.remove(&reverse);
        let _ = FLOWS.remove(key);
    }
    over
}

/// The link-layer addresses of an untagged Ethernet frame: (source, destination).
#[inline(always)]
pub fn link_of<P: Packet>(p: &P, l3_offset: usize) -> Option<([u8; 6], [u8; 6])> {
    if l3_offset != EthHdr::LEN {
        return None;
    }
    let eth = packet::ptr_at::<EthHdr, P>(p, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &*eth };
    Some((eth.src_addr, eth.dst_addr))
}

/// A packet of `flow` arrived on `ingress_ifindex` from the MAC it carries: that is the
/// way back for the other direction. Learned once per flow (then FLOW_PAIR_L2 is set), and
/// only from a packet that acknowledges the claiming SYN: a blind spoofer on the target's
/// side does not know its sequence number, so cannot divert the connection.
#[inline(always)]
pub fn learn_l2<P: Packet>(
    p: &P,
    l3_offset: usize,
    flow: *mut FlowValue,
    ingress_ifindex: u32,
    tcp: &TcpHdr,
) {
    // SAFETY: map value pointers stay valid for the program run.
    let f = unsafe { &mut *flow };
    if f.flags & FLOW_PAIR_L2 != 0 || tcp.ack() == 0 {
        return;
    }
    let Some((src, dst)) = link_of(p, l3_offset) else {
        return;
    };
    if let Some(pair) = FLOWS.get_ptr_mut(&f.reverse) {
        // SAFETY: as above. Racing CPUs write the same values.
        let pair = unsafe { &mut *pair };
        if pair.flags & FLOW_CLAIMER == 0
            || u32::from_be_bytes(tcp.ack_seq) != pair.claim_seq.wrapping_add(1)
        {
            return;
        }
        pair.egress_ifindex = ingress_ifindex;
        pair.dst_mac = src;
        pair.src_mac = dst;
        pair.flags |= FLOW_L2;
    }
    f.flags |= FLOW_PAIR_L2;
}

/// Starts the connection `key` under `lease`: creates both flow entries, tentative (the
/// lease stays until the handshake completes, see `tentative`). The reverse entry
/// (towards the claiming peer) leaves by the interface the SYN came in on, to the MAC it
/// came from; the forward one by the lease's target interface.
#[inline(always)]
pub fn start(
    key: &FlowKey,
    lease: &LeaseValue,
    ingress_ifindex: u32,
    link: Option<([u8; 6], [u8; 6])>,
    syn_seq: u32,
) -> Result<(), Counter> {
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if lease.expires_ns != 0 && now > lease.expires_ns {
        return Err(Counter::DropLeaseExpired);
    }
    // Built in per-CPU scratch space: two entries do not fit on the stack with the rest.
    let Some(new) = NEW_FLOWS.get_ptr_mut(0) else {
        return Err(Counter::DropFlowTableFull);
    };
    // SAFETY: this CPU's slot, used by nothing else while the program runs.
    let NewFlows { forward, reverse } = unsafe { &mut *new };
    *forward = FlowValue::default();
    forward.new_src_addr_be = lease.source_addr_be;
    forward.new_dst_addr_be = lease.target_addr_be;
    forward.new_src_port_be = lease.source_port_be;
    forward.new_dst_port_be = lease.target_port_be;
    forward.reverse = FlowKey {
        src_addr_be: lease.target_addr_be,
        dst_addr_be: lease.source_addr_be,
        src_port_be: lease.target_port_be,
        dst_port_be: lease.source_port_be,
    };
    forward.egress_ifindex = lease.target_ifindex;
    forward.mss_max = lease.mss_max;
    forward.claim_seq = syn_seq;
    forward.flags = if link.is_some() {
        FLOW_TENTATIVE | FLOW_CLAIMER | FLOW_PAIR_L2
    } else {
        FLOW_TENTATIVE | FLOW_CLAIMER
    };
    forward.last_seen_ns = now;
    *reverse = FlowValue::default();
    reverse.new_src_addr_be = key.dst_addr_be;
    reverse.new_dst_addr_be = key.src_addr_be;
    reverse.new_src_port_be = key.dst_port_be;
    reverse.new_dst_port_be = key.src_port_be;
    reverse.reverse = *key;
    reverse.egress_ifindex = ingress_ifindex;
    reverse.mss_max = lease.mss_max;
    reverse.flags = FLOW_TENTATIVE;
    reverse.last_seen_ns = now;
    if let Some((src, dst)) = link {
        reverse.dst_mac = src;
        reverse.src_mac = dst;
        reverse.flags |= FLOW_L2;
    }
    let reverse_key = &forward.reverse;
    // Both directions or neither. A key already taken means a stale entry of an earlier
    // connection with the same ports: refuse rather than hijack it.
    if let Err(errno) = FLOWS.insert(key, &*forward, BPF_NOEXIST) {
        return Err(insert_failure(errno));
    }
    if FLOWS.insert(reverse_key, &*reverse, BPF_NOEXIST).is_err() {
        let retried = match FLOWS.get_ptr_mut(reverse_key) {
            // The same lease's target tuple, held by a connection that never completed its
            // handshake (a SYN spoofed with the peer's address from another port, or the
            // peer's own earlier attempt): this SYN takes it over.
            // SAFETY: map value pointers stay valid for the program run.
            Some(old) if unsafe { (*old).flags } & FLOW_TENTATIVE != 0 => {
                // SAFETY: as above.
                let old_forward = unsafe { (*old).reverse };
                let _ = FLOWS.remove(&old_forward);
                FLOWS.insert(reverse_key, &*reverse, BPF_ANY)
            }
            // A finished connection's entries (its NAT pair came round again while they
            // wait out their close grace) give way; an open one's do not.
            Some(old) => {
                if forget_if_over(reverse_key, old, 0) {
                    FLOWS.insert(reverse_key, &*reverse, BPF_NOEXIST)
                } else {
                    Err(-EEXIST)
                }
            }
            None => FLOWS.insert(reverse_key, &*reverse, BPF_NOEXIST),
        };
        if let Err(errno) = retried {
            let _ = FLOWS.remove(key);
            return Err(insert_failure(errno));
        }
    }
    Ok(())
}

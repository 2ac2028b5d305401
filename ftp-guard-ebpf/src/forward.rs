//! Sending a packet of a NATed data connection on, without the host's IP forwarding
//! (`net.ipv4.ip_forward` may be 0: the gateway is not a router).
//!
//! Where it goes out: the flow entry knows the egress interface (learned from the other
//! direction's packets, or given by userspace with the lease) and, once the other
//! direction has been seen, the next hop's MAC (`FLOW_L2`).
//! - TC: with the MACs, `bpf_redirect`; with only the interface, `bpf_redirect_neigh`,
//!   which routes out of that interface and resolves the neighbour itself (queueing the
//!   packet while it does); with neither, a FIB lookup (which needs forwarding enabled).
//! - XDP: with the MACs and an interface that takes XDP frames, a devmap redirect;
//!   otherwise, or when the packet's checksum must be completed by the device, the packet
//!   is left untouched for the TC program attached to the same interface.
//! A VLAN-tagged frame is NATed and handed to the stack (the tag would need rewriting).
use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_REDIRECT,
        TC_ACT_SHOT, bpf_fib_lookup, xdp_action,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
};
use ftp_guard_common::{
    Counter, EVENT_FIN, EVENT_RST, FLOW_ACKED, FLOW_FIN, FLOW_L2, FLOW_RST, FlowValue,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

use crate::{
    csum,
    guard::Hit,
    maps::{self, TX_PORTS},
    nat,
    packet::{Packet, ptr_at},
};

const AF_INET: u8 = 2;
/// bpf_l4_csum_replace: the field is part of the pseudo-header (addresses).
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// Offset of the checksum in the TCP header.
const TCP_CHECK_OFFSET: usize = 16;

/// How a packet leaves.
enum Out {
    /// Interface and both MAC addresses known.
    Link {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Interface known, the kernel resolves the next hop (TC only).
    Neighbour { ifindex: u32 },
    /// Nothing known: the stack forwards it (needs IP forwarding), or XDP defers to TC.
    Unknown,
}

/// The way out for a packet from `src_be` to `dst_be` according to the FIB. Fails with
/// forwarding disabled on `ingress_ifindex` (the kernel checks it), hence only a fallback.
#[inline(always)]
fn fib(ctx: *mut core::ffi::c_void, ip: &Ipv4Hdr, src_be: u32, dst_be: u32, ingress: u32) -> Out {
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is a valid start.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = ip.proto;
    // tot_len stays 0: the lookup would compare a GSO packet's full length with the MTU
    // and refuse it (FRAG_NEEDED); segment sizes are kept right by MSS clamping.
    params.__bindgen_anon_3.ipv4_src = src_be;
    params.__bindgen_anon_4.ipv4_dst = dst_be;
    params.ifindex = ingress;
    // SAFETY: ctx is the program's context, params a valid struct of the size given.
    let rc = unsafe { fib_lookup(ctx, &mut params, size_of::<bpf_fib_lookup>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Out::Link {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Out::Neighbour {
            ifindex: params.ifindex,
        },
        _ => Out::Unknown,
    }
}

/// The way out that `flow` knows by itself.
#[inline(always)]
fn known(flow: &FlowValue) -> Out {
    if flow.flags & FLOW_L2 != 0 && flow.egress_ifindex != 0 {
        Out::Link {
            ifindex: flow.egress_ifindex,
            smac: flow.src_mac,
            dmac: flow.dst_mac,
        }
    } else if flow.egress_ifindex != 0 {
        Out::Neighbour {
            ifindex: flow.egress_ifindex,
        }
    } else {
        Out::Unknown
    }
}

/// How far past the other side's last acknowledgment a FIN or RST may lie to count: data
/// in flight. A blind spoofer must guess the sequence number to within this (1 in 256).
const SEQ_WINDOW: u32 = 16 << 20;

/// Counts the packet on its flow and notes FIN/RST (telling userspace the first of each).
/// A FIN or RST ends the connection for the gateway only if its sequence number is where
/// the other side expects data: the endpoints ignore blind ones, so must the gateway.
#[inline(always)]
fn account(hit: &Hit, flow: &mut FlowValue, ip: &Ipv4Hdr, tcp: &TcpHdr) {
    // Racing CPUs may lose an increment: statistics, not state.
    flow.packets += 1;
    flow.bytes += u64::from(ip.tot_len());
    // SAFETY: a helper without preconditions.
    flow.last_seen_ns = unsafe { bpf_ktime_get_ns() };
    if tcp.ack() != 0 {
        flow.last_ack = u32::from_be_bytes(tcp.ack_seq);
        flow.flags |= FLOW_ACKED;
    }
    let fin = tcp.fin() != 0 && flow.flags & FLOW_FIN == 0;
    let rst = tcp.rst() != 0 && flow.flags & FLOW_RST == 0;
    if !(fin || rst) || !expected(u32::from_be_bytes(tcp.seq), &flow.reverse) {
        return;
    }
    if fin {
        flow.flags |= FLOW_FIN;
        maps::notify(EVENT_FIN, &hit.key, &flow.reverse);
    }
    if rst {
        flow.flags |= FLOW_RST;
        maps::notify(EVENT_RST, &hit.key, &flow.reverse);
    }
}

/// True when `seq` lies where the other direction (`reverse`) last acknowledged, give or
/// take data in flight; true too before that side has acknowledged anything.
#[inline(always)]
fn expected(seq: u32, reverse: &ftp_guard_common::FlowKey) -> bool {
    // SAFETY: a plain read of the other direction's entry.
    match unsafe { crate::maps::FLOWS.get(reverse) } {
        Some(other) if other.flags & FLOW_ACKED != 0 => {
            seq.wrapping_sub(other.last_ack) < SEQ_WINDOW
        }
        _ => true,
    }
}

/// Sets the frame's MAC addresses.
#[inline(always)]
fn set_link<P: Packet>(p: &P, smac: &[u8; 6], dmac: &[u8; 6]) -> bool {
    let Some(eth) = ptr_at::<EthHdr, P>(p, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst_addr = *dmac;
        (*eth).src_addr = *smac;
    }
    true
}

/// XDP: rewrite and redirect a TCP packet when the way out is known and the checksum
/// complete; else leave it untouched for TC.
#[inline(always)]
pub fn xdp(ctx: &XdpContext, hit: &Hit) -> (u32, Counter) {
    const DEFER: (u32, Counter) = (xdp_action::XDP_PASS, Counter::DeferredToTc);
    if hit.l3_offset != EthHdr::LEN {
        return DEFER;
    }
    // SAFETY: the guard checked the headers and the flow pointer.
    let (ip, flow) = unsafe { (&mut *hit.ip, &mut *hit.flow) };
    // SAFETY: a TCP hit has a complete TCP header.
    if unsafe { nat::looks_partial(hit.ip, hit.tcp) } {
        return DEFER;
    }
    let out = match known(flow) {
        Out::Link { .. } => known(flow),
        _ => fib(
            ctx.as_ptr(),
            ip,
            flow.new_src_addr_be,
            flow.new_dst_addr_be,
            ctx.ingress_ifindex() as u32,
        ),
    };
    let Out::Link {
        ifindex,
        smac,
        dmac,
    } = out
    else {
        return DEFER;
    };
    if TX_PORTS.get(ifindex).is_none() {
        return DEFER;
    }
    if ip.ttl <= 1 {
        return (xdp_action::XDP_DROP, Counter::DropTtl);
    }
    // SAFETY: a TCP hit has a complete TCP header.
    unsafe {
        account(hit, flow, ip, &*hit.tcp);
        let old = nat::rewrite(hit.ip, hit.tcp, flow);
        nat::complete_checksum(hit.tcp, &old, flow);
        if let Some((old, new)) = nat::clamp_mss(ctx, hit.l4_offset, hit.tcp, flow.mss_max) {
            let check = &mut (*hit.tcp).check;
            *check = csum::replace16(u16::from_ne_bytes(*check), old, new).to_ne_bytes();
        }
    }
    nat::decrement_ttl(ip);
    if !set_link(ctx, &smac, &dmac) {
        return (xdp_action::XDP_DROP, Counter::DropTruncated);
    }
    match TX_PORTS.redirect(ifindex, 0) {
        Ok(action) => (action, Counter::Redirected),
        Err(_) => (xdp_action::XDP_DROP, Counter::DropRedirect),
    }
}

/// TC: rewrite (the kernel updates the TCP checksum for the skb's checksum state) and
/// redirect by what the flow knows, else by the FIB, else via the stack.
#[inline(always)]
pub fn tc(ctx: &TcContext, hit: &Hit, icmp: bool) -> (i32, Counter) {
    // SAFETY: the guard checked the headers and the flow pointer.
    let (ip, flow) = unsafe { (&mut *hit.ip, &mut *hit.flow) };
    let tagged = hit.l3_offset != EthHdr::LEN;
    let out = match known(flow) {
        Out::Unknown if !icmp && !tagged => {
            // SAFETY: the context pointer is the program's own skb.
            let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
            fib(
                ctx.as_ptr(),
                ip,
                flow.new_src_addr_be,
                flow.new_dst_addr_be,
                ingress,
            )
        }
        _ if tagged => Out::Unknown,
        out => out,
    };
    let redirect = !matches!(out, Out::Unknown);
    if redirect && ip.ttl <= 1 {
        return (TC_ACT_SHOT as i32, Counter::DropTtl);
    }
    let mut replaced = None;
    let mut mss = None;
    if !icmp {
        // SAFETY: a TCP hit has a complete TCP header.
        unsafe {
            account(hit, flow, ip, &*hit.tcp);
            replaced = Some(nat::rewrite(hit.ip, hit.tcp, flow));
            mss = nat::clamp_mss(ctx, hit.l4_offset, hit.tcp, flow.mss_max);
        }
    }
    if redirect {
        nat::decrement_ttl(ip);
    }
    if let Out::Link { smac, dmac, .. } = &out {
        if !set_link(ctx, smac, dmac) {
            return (TC_ACT_SHOT as i32, Counter::DropTruncated);
        }
    }
    // Last: these helpers may move the packet, so no header pointer is used after them.
    if let Some(old) = replaced {
        let at = hit.l4_offset + TCP_CHECK_OFFSET;
        let ok = ctx
            .l4_csum_replace(
                at,
                u64::from(old.src_addr),
                u64::from(flow.new_src_addr_be),
                BPF_F_PSEUDO_HDR | 4,
            )
            .and_then(|_| {
                ctx.l4_csum_replace(
                    at,
                    u64::from(old.dst_addr),
                    u64::from(flow.new_dst_addr_be),
                    BPF_F_PSEUDO_HDR | 4,
                )
            })
            .and_then(|_| {
                ctx.l4_csum_replace(at, u64::from(old.ports), u64::from(nat::new_ports(flow)), 4)
            })
            .and_then(|_| match mss {
                Some((old, new)) => ctx.l4_csum_replace(at, u64::from(old), u64::from(new), 2),
                None => Ok(()),
            });
        if ok.is_err() {
            return (TC_ACT_SHOT as i32, Counter::DropTruncated);
        }
    }
    match out {
        Out::Link { ifindex, .. } => {
            // SAFETY: a helper without memory arguments.
            let rc = unsafe { bpf_redirect(ifindex, 0) };
            if rc == i64::from(TC_ACT_REDIRECT) {
                (rc as i32, Counter::Redirected)
            } else {
                (TC_ACT_SHOT as i32, Counter::DropRedirect)
            }
        }
        Out::Neighbour { ifindex } => {
            // SAFETY: a null params pointer asks the kernel to route the packet's
            // destination out of `ifindex` and resolve its neighbour.
            let rc = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
            if rc == i64::from(TC_ACT_REDIRECT) {
                (rc as i32, Counter::Redirected)
            } else {
                (TC_ACT_SHOT as i32, Counter::DropRedirect)
            }
        }
        Out::Unknown => (TC_ACT_OK as i32, Counter::ForwardedByStack),
    }
}

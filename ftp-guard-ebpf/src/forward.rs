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
    Counter, EVENT_FIN, EVENT_RST, FLOW_ACKED, FLOW_CLAIMER, FLOW_FIN, FLOW_L2, FLOW_PEER_FIN,
    FLOW_PEER_FIN_ACKED, FLOW_RST, FLOW_WSCALE, FlowValue,
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

/// Counts the packet on its flow and follows the connection's teardown (telling userspace
/// the first FIN and RST each way, and each FIN acknowledged).
///
/// RFC 5961: a FIN or RST ends anything for the gateway only if its sequence number lies
/// where the other side accepts data — exactly at its last acknowledgment, or within the
/// receive window it advertised — so a blind spoofer must hit a window, not a 16 MiB
/// range. Others are still forwarded: the endpoint judges them (with a challenge ACK).
#[inline(always)]
fn account<P: Packet>(p: &P, hit: &Hit, flow: &mut FlowValue, ip: &Ipv4Hdr, tcp: &TcpHdr) {
    // Racing CPUs may lose an increment: statistics, not state.
    flow.packets += 1;
    flow.bytes += u64::from(ip.tot_len());
    // SAFETY: a helper without preconditions.
    flow.last_seen_ns = unsafe { bpf_ktime_get_ns() };
    flow.window = u16::from_be_bytes(tcp.window);
    if tcp.syn() != 0 {
        // SAFETY: a TCP hit has a complete TCP header at l4_offset.
        if let Some(scale) = unsafe { nat::window_scale(p, hit.l4_offset, tcp) } {
            flow.wscale = scale;
            flow.flags |= FLOW_WSCALE;
        }
    }
    if tcp.ack() != 0 {
        let ack = u32::from_be_bytes(tcp.ack_seq);
        // The latest, not the highest: a blind spoofer's far-ahead ACK must not pin it
        // (the next genuine one puts it back).
        flow.last_ack = ack;
        flow.flags |= FLOW_ACKED;
        // Nothing follows a FIN: the acknowledgment that covers it is exactly its end,
        // which a blind spoofer would have to guess.
        if flow.flags & (FLOW_PEER_FIN | FLOW_PEER_FIN_ACKED) == FLOW_PEER_FIN
            && ack == flow.peer_fin_end
        {
            flow.flags |= FLOW_PEER_FIN_ACKED;
            maps::notify(EVENT_FIN, &hit.key, &flow.reverse);
        }
    }
    let fin = tcp.fin() != 0 && flow.flags & FLOW_FIN == 0;
    let rst = tcp.rst() != 0 && flow.flags & FLOW_RST == 0;
    if !(fin || rst) {
        return;
    }
    let seq = u32::from_be_bytes(tcp.seq);
    let other = crate::maps::FLOWS.get_ptr_mut(&flow.reverse);
    if let Some(other) = other {
        // SAFETY: map value pointers stay valid for the program run.
        if !acceptable(seq, tcp, flow, unsafe { &*other }) {
            return;
        }
    }
    if fin {
        flow.flags |= FLOW_FIN;
        if let Some(other) = other {
            // The FIN's own sequence number follows the segment's data.
            let data = ip
                .tot_len()
                .wrapping_sub(u16::from(ip.ihl()))
                .wrapping_sub(tcp.doff() * 4);
            // SAFETY: as above; racing CPUs write the same values.
            unsafe {
                (*other).peer_fin_end = seq.wrapping_add(u32::from(data)).wrapping_add(1);
                (*other).flags |= FLOW_PEER_FIN;
            }
        }
        maps::notify(EVENT_FIN, &hit.key, &flow.reverse);
    }
    if rst {
        flow.flags |= FLOW_RST;
        maps::notify(EVENT_RST, &hit.key, &flow.reverse);
    }
}

/// True when a FIN or RST with sequence number `seq`, sent this way (`flow`), lies where
/// the receiver (`other`, the other direction's entry) accepts it: at its last
/// acknowledgment or within its advertised receive window. Before the receiver has
/// acknowledged anything, the handshake's numbers decide: an answer to the claiming SYN
/// must acknowledge it (RFC 793), and the claimer's own must follow its SYN.
#[inline(always)]
fn acceptable(seq: u32, tcp: &TcpHdr, flow: &FlowValue, other: &FlowValue) -> bool {
    if other.flags & FLOW_ACKED != 0 {
        // RFC 7323: the scale applies only when both SYNs announced one.
        let scale = if flow.flags & other.flags & FLOW_WSCALE != 0 {
            other.wscale
        } else {
            0
        };
        let offset = seq.wrapping_sub(other.last_ack);
        return offset == 0 || offset < u32::from(other.window) << scale;
    }
    if other.flags & FLOW_CLAIMER != 0 {
        return tcp.ack() != 0
            && u32::from_be_bytes(tcp.ack_seq) == other.claim_seq.wrapping_add(1);
    }
    flow.flags & FLOW_CLAIMER != 0 && seq == flow.claim_seq.wrapping_add(1)
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
            flow.new_src_addr_be.ipv4_be(),
            flow.new_dst_addr_be.ipv4_be(),
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
        account(ctx, hit, flow, ip, &*hit.tcp);
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
                flow.new_src_addr_be.ipv4_be(),
                flow.new_dst_addr_be.ipv4_be(),
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
            account(ctx, hit, flow, ip, &*hit.tcp);
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
                u64::from(flow.new_src_addr_be.ipv4_be()),
                BPF_F_PSEUDO_HDR | 4,
            )
            .and_then(|_| {
                ctx.l4_csum_replace(
                    at,
                    u64::from(old.dst_addr),
                    u64::from(flow.new_dst_addr_be.ipv4_be()),
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

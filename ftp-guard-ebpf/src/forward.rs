//! Forwarding a NATed packet: a FIB lookup for its new destination, then the next hop's
//! MAC addresses, a TTL decrement and a redirect. When the kernel knows no neighbour yet
//! (or the route is not a plain forward), the packet goes to the stack, which forwards it.
use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_REDIRECT,
        TC_ACT_SHOT, bpf_fib_lookup, xdp_action,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
};
use ftp_guard_common::Counter;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{guard::Rewritten, maps::TX_PORTS, nat, packet::ptr_at};

const AF_INET: u8 = 2;

/// Result of the route lookup for a rewritten packet.
enum Route {
    /// Next hop resolved: egress interface and both MAC addresses.
    Resolved {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Route found, neighbour unknown.
    NoNeighbour { ifindex: u32 },
    /// Anything else (local, blackhole, needs fragmentation…): the stack decides.
    Stack,
}

#[inline(always)]
fn route(ctx: *mut core::ffi::c_void, ip: &Ipv4Hdr, ingress_ifindex: u32) -> Route {
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is a valid start.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = ip.proto;
    params.__bindgen_anon_1.tot_len = ip.tot_len();
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    params.ifindex = ingress_ifindex;
    // SAFETY: ctx is the program's context, params a valid struct of the size given.
    let rc = unsafe { fib_lookup(ctx, &mut params, size_of::<bpf_fib_lookup>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Route::Resolved {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::NoNeighbour {
            ifindex: params.ifindex,
        },
        _ => Route::Stack,
    }
}

/// Sets the MAC addresses and decrements the TTL; false (packet untouched) if the TTL
/// would expire.
#[inline(always)]
fn prepare<P: crate::packet::Packet>(p: &P, r: &Rewritten, smac: &[u8; 6], dmac: &[u8; 6]) -> bool {
    let Some(eth) = ptr_at::<EthHdr, P>(p, 0) else {
        return false;
    };
    // SAFETY: the IPv4 header was bounds-checked by the guard; eth just now.
    unsafe {
        if !nat::decrement_ttl(&mut *r.ip) {
            return false;
        }
        (*eth).dst_addr = *dmac;
        (*eth).src_addr = *smac;
    }
    true
}

/// XDP: redirect when the egress interface can take XDP frames, else the stack forwards.
#[inline(always)]
pub fn xdp(ctx: &XdpContext, r: &Rewritten) -> (u32, Counter) {
    // A VLAN-tagged frame would need its tag rewritten for the egress: leave it to the stack.
    if r.l3_offset != EthHdr::LEN {
        return (xdp_action::XDP_PASS, Counter::ForwardedByStack);
    }
    // SAFETY: checked by the guard.
    let ip = unsafe { &*r.ip };
    match route(ctx.as_ptr(), ip, ctx.ingress_ifindex() as u32) {
        Route::Resolved {
            ifindex,
            smac,
            dmac,
        } if TX_PORTS.get(ifindex).is_some() => {
            if !prepare(ctx, r, &smac, &dmac) {
                return (xdp_action::XDP_DROP, Counter::DropTtl);
            }
            match TX_PORTS.redirect(ifindex, 0) {
                Ok(action) => (action, Counter::Redirected),
                Err(_) => (xdp_action::XDP_DROP, Counter::DropFlowTableFull),
            }
        }
        _ => (xdp_action::XDP_PASS, Counter::ForwardedByStack),
    }
}

/// TC: redirect to any device; an unknown neighbour is resolved by bpf_redirect_neigh.
#[inline(always)]
pub fn tc(ctx: &TcContext, r: &Rewritten) -> (i32, Counter) {
    if r.l3_offset != EthHdr::LEN {
        return (TC_ACT_OK as i32, Counter::ForwardedByStack);
    }
    // SAFETY: checked by the guard.
    let ip = unsafe { &*r.ip };
    // SAFETY: the context pointer is the program's own skb.
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    match route(ctx.as_ptr(), ip, ingress) {
        Route::Resolved {
            ifindex,
            smac,
            dmac,
        } => {
            if !prepare(ctx, r, &smac, &dmac) {
                return (TC_ACT_SHOT as i32, Counter::DropTtl);
            }
            // SAFETY: a helper without memory arguments.
            let rc = unsafe { bpf_redirect(ifindex, 0) };
            (rc as i32, Counter::Redirected)
        }
        Route::NoNeighbour { ifindex } => {
            // SAFETY: checked by the guard.
            if !nat::decrement_ttl(unsafe { &mut *r.ip }) {
                return (TC_ACT_SHOT as i32, Counter::DropTtl);
            }
            // SAFETY: a null params pointer asks the kernel to use the packet's destination.
            let rc = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
            if rc == i64::from(TC_ACT_REDIRECT) {
                (rc as i32, Counter::Redirected)
            } else {
                (TC_ACT_SHOT as i32, Counter::DropFlowTableFull)
            }
        }
        Route::Stack => (TC_ACT_OK as i32, Counter::ForwardedByStack),
    }
}

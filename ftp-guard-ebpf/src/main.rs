//! ftp-guard's eBPF programs. Entry points only: each calls the shared guard, counts the
//! outcome and turns it into its hook's action.
#![no_std]
#![no_main]

mod csum;
mod flows;
mod forward;
mod guard;
mod icmp;
mod ipv6;
mod judged;
mod keys;
mod maps;
mod nat;
mod packet;
mod policy;
mod ranges;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use guard::{Hook, Verdict};

/// XDP on the gateway's interfaces: drops unleased traffic to the data ports, NATs and
/// redirects leased data connections in both directions once their way out is known
/// (the TC program on the same interface carries the rest).
#[xdp]
pub fn xdp_guard(ctx: XdpContext) -> u32 {
    let (verdict, counter) = guard::process(&ctx, ctx.ingress_ifindex() as u32, Hook::Xdp);
    match verdict {
        Verdict::Pass => {
            judged::mark(&ctx);
            pass_or_drop(counter, xdp_action::XDP_PASS)
        }
        // (The guard translates ICMP errors only for TC.)
        Verdict::LeaveToTc | Verdict::ForwardIcmp(_) => pass_or_drop(counter, xdp_action::XDP_PASS),
        Verdict::Drop => pass_or_drop(counter, xdp_action::XDP_DROP),
        Verdict::Forward(hit) => {
            let (action, how) = forward::xdp(&ctx, &hit);
            // A deferred packet is judged again by TC, which forgets then.
            if how != ftp_guard_common::Counter::DeferredToTc {
                forget(&hit);
            }
            forwarded(counter, (action, how))
        }
    }
}

/// The same as a TC (tcx) ingress program: for devices where XDP cannot redirect, and
/// behind XDP for what it defers.
#[classifier]
pub fn tc_guard(ctx: TcContext) -> i32 {
    if judged::by_xdp(&ctx) {
        return TC_ACT_OK as i32;
    }
    // SAFETY: the context pointer is the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (verdict, counter) = guard::process(&ctx, ifindex, Hook::Tc);
    match verdict {
        Verdict::Pass | Verdict::LeaveToTc => pass_or_drop(counter, TC_ACT_OK as i32),
        Verdict::Drop => pass_or_drop(counter, TC_ACT_SHOT as i32),
        Verdict::Forward(hit) => {
            let out = forward::tc(&ctx, &hit, false);
            forget(&hit);
            forwarded(counter, out)
        }
        Verdict::ForwardIcmp(hit) => forwarded(counter, forward::tc(&ctx, &hit, true)),
    }
}

/// Removes both entries of a hit that asked for it, after its packet was rewritten by
/// them (the entry must not be freed, and perhaps reused, while still in use).
#[inline(always)]
fn forget(hit: &guard::Hit) {
    if hit.forget {
        // SAFETY: map value pointers stay valid for the program run.
        let reverse = unsafe { (*hit.flow).reverse };
        let _ = maps::FLOWS.remove(&reverse);
        let _ = maps::FLOWS.remove(&hit.key);
    }
}

#[inline(always)]
fn pass_or_drop<A>(counter: ftp_guard_common::Counter, action: A) -> A {
    maps::count(counter);
    action
}

/// Counts a forwarded packet's verdict (NAT direction, ICMP) and how it left; a packet
/// XDP defers is counted only by how it left (TC counts it again when it carries it).
#[inline(always)]
fn forwarded<A>(
    verdict: ftp_guard_common::Counter,
    (action, how): (A, ftp_guard_common::Counter),
) -> A {
    if how != ftp_guard_common::Counter::DeferredToTc {
        maps::count(verdict);
    }
    maps::count(how);
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could panic.
    loop {}
}

/// The kernel only lets GPL-compatible programs call some helpers (bpf_redirect_neigh…).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

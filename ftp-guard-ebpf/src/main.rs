//! ftp-guard's eBPF programs. Entry points only: each calls the shared guard, counts the
//! outcome and turns it into its hook's action.
#![no_std]
#![no_main]

mod csum;
mod forward;
mod guard;
mod maps;
mod nat;
mod packet;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use guard::Verdict;

/// XDP on the gateway's interfaces: drops unleased traffic to the data ports, NATs and
/// forwards leased data connections in both directions.
#[xdp]
pub fn xdp_guard(ctx: XdpContext) -> u32 {
    let (verdict, counter) = guard::process(&ctx);
    maps::count(counter);
    match verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Forward(rewritten) => {
            let (action, how) = forward::xdp(&ctx, &rewritten);
            maps::count(how);
            action
        }
    }
}

/// The same as a TC (tcx) ingress program, for devices where XDP cannot redirect.
#[classifier]
pub fn tc_guard(ctx: TcContext) -> i32 {
    let (verdict, counter) = guard::process(&ctx);
    maps::count(counter);
    match verdict {
        Verdict::Pass => TC_ACT_OK as i32,
        Verdict::Drop => TC_ACT_SHOT as i32,
        Verdict::Forward(rewritten) => {
            let (action, how) = forward::tc(&ctx, &rewritten);
            maps::count(how);
            action
        }
    }
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

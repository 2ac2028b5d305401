//! ftp-guard's eBPF programs. Entry points only: each one calls into a module that owns
//! its logic and turns the result into a kernel action.
#![no_std]
#![no_main]

mod guard;
mod maps;
mod packet;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Client-facing XDP guard: drops TCP aimed at the public data-port range unless a lease
/// admits it; everything else passes untouched.
#[xdp]
pub fn xdp_guard(ctx: XdpContext) -> u32 {
    let counter = guard::classify(&ctx);
    maps::count(counter);
    if counter.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could panic.
    loop {}
}

/// The kernel only lets GPL-compatible programs call some helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

//! A mark XDP leaves in a packet's metadata when it let the packet pass with its verdict
//! made, so the TC program behind it neither judges nor counts it again. Packets XDP
//! defers to TC carry no mark. Metadata is written only by XDP, never from the wire; a
//! driver without metadata support simply leaves TC to judge the packet again.
use aya_ebpf::{
    helpers::bpf_xdp_adjust_meta,
    programs::{TcContext, XdpContext},
};

/// "FTG!": the mark.
const JUDGED: u32 = 0x4654_4721;
const MARK_LEN: usize = core::mem::size_of::<u32>();

/// Marks a packet XDP passes with its verdict made.
#[inline(always)]
pub fn mark(ctx: &XdpContext) {
    // SAFETY: the program's own context; the metadata is bounds-checked before the write.
    unsafe {
        if bpf_xdp_adjust_meta(ctx.ctx, -(MARK_LEN as i32)) != 0 {
            return;
        }
        let meta = (*ctx.ctx).data_meta as usize;
        let data = (*ctx.ctx).data as usize;
        if meta + MARK_LEN > data {
            return;
        }
        *(meta as *mut u32) = JUDGED;
    }
}

/// True when XDP already passed this packet with its verdict made.
#[inline(always)]
pub fn by_xdp(ctx: &TcContext) -> bool {
    // SAFETY: the program's own skb; the metadata is bounds-checked before the read.
    unsafe {
        let skb = ctx.skb.skb;
        let meta = (*skb).data_meta as usize;
        let data = (*skb).data as usize;
        if meta + MARK_LEN > data {
            return false;
        }
        *(meta as *const u32) == JUDGED
    }
}

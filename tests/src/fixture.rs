//! Running packet fixtures through the real programs with BPF_PROG_TEST_RUN.
use aya::programs::{TestRun, TestRunOptions};
use ftp_guard::kernel::Kernel;
use ftp_guard_common::Counter;

/// XDP return codes (enum xdp_action).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Runs one frame through the XDP program: its action, the frame as the program left it,
/// and the names of the counters that moved.
pub fn run_xdp(kernel: &Kernel, frame: &[u8]) -> (u32, Vec<u8>, Vec<&'static str>) {
    let before = kernel.counters().expect("read counters");
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    let result = kernel
        .guard_program()
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    let after = kernel.counters().expect("read counters");
    let moved = Counter::ALL
        .iter()
        .filter(|c| after.get(**c) != before.get(**c))
        .map(|c| c.name())
        .collect();
    (result.return_value, out, moved)
}

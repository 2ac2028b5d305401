//! Running packet fixtures through the real programs with BPF_PROG_TEST_RUN.
use aya::programs::{ProgramError, TestRun, TestRunOptions, TestRunResult};
use ftp_guard::bpf::Bpf;
use ftp_guard_common::Counter;

/// XDP return codes (enum xdp_action).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
/// TC return codes.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Runs one frame through the XDP program: its action, the frame as the program left it,
/// and the names of the counters that moved. The frame arrives on `lo` of the caller's
/// network namespace.
pub fn run_xdp(kernel: &Bpf, frame: &[u8]) -> (u32, Vec<u8>, Vec<&'static str>) {
    let (action, out, moved, _) = run_xdp_marked(kernel, frame);
    (action, out, moved)
}

/// The mark XDP leaves in the metadata of a packet it passed with its verdict made (so
/// that TC behind it does not judge it again), as the test run returns it: in front of
/// the frame.
const JUDGED_MARK: [u8; 4] = 0x4654_4721u32.to_ne_bytes();

/// Like [`run_xdp`], also telling whether XDP marked the packet as judged (the mark is
/// taken off the returned frame).
pub fn run_xdp_marked(kernel: &Bpf, frame: &[u8]) -> (u32, Vec<u8>, Vec<&'static str>, bool) {
    let (action, mut out, moved) = run(kernel, frame, |opts| kernel.guard_program().test_run(opts));
    let marked = out.len() == frame.len() + JUDGED_MARK.len() && out.starts_with(&JUDGED_MARK);
    if marked {
        out.drain(..JUDGED_MARK.len());
    }
    (action, out, moved, marked)
}

/// The same through the TC program (the skb arrives on `lo`, its checksum state "none").
pub fn run_tc(kernel: &Bpf, frame: &[u8]) -> (u32, Vec<u8>, Vec<&'static str>) {
    run(kernel, frame, |opts| kernel.tc_program().test_run(opts))
}

fn run(
    kernel: &Bpf,
    frame: &[u8],
    test_run: impl FnOnce(TestRunOptions<'_>) -> Result<TestRunResult, ProgramError>,
) -> (u32, Vec<u8>, Vec<&'static str>) {
    let before = kernel.counters().expect("read counters");
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    let result = test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    let after = kernel.counters().expect("read counters");
    let moved = Counter::ALL
        .iter()
        .filter(|c| after.get(**c) != before.get(**c))
        .map(|c| c.name())
        .collect();
    (result.return_value, out, moved)
}

/// A bpffs of a test's own (`ip netns exec` hides the host's /sys/fs/bpf), mounted (mode
/// 0700) on a fresh temporary directory; what is pinned in it is unpinned and it is
/// unmounted on drop, a failing test's too.
pub struct Bpffs {
    mount: std::path::PathBuf,
}

impl Bpffs {
    pub fn mount_fresh() -> Self {
        let dir = crate::ftp_clients::unique_temp_dir("fg-pins").unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "-o", "mode=0700", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t bpf");
        Bpffs { mount: dir }
    }

    /// The pin directory inside (not created).
    pub fn pin(&self) -> std::path::PathBuf {
        self.mount.join("ftp-guard")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = ftp_guard::bpf::unpin(&self.pin());
        let _ = std::process::Command::new("umount")
            .arg(&self.mount)
            .status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

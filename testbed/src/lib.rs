//! The test bed shared by ftp-guard's integration tests (crate `ftp-guard-tests`) and its
//! tools (crate `ftp-guard-tools`: demo, bench, interop).
//!
//! - [`ftp_servers`], [`ftp_clients`]: real FTP daemons (vsftpd, pyftpdlib) and clients (curl,
//!   lftp, Python ftplib) run in a network namespace, with protocol traces.
//! - [`ftp_load`]: a minimal blocking FTP client for load generation (benchmarks).
//! - [`flood`]: a spoofed-source TCP SYN flood generator (AF_PACKET) for benchmarks.
//! - [`fixture`]: runs packet fixtures through the programs (BPF_PROG_TEST_RUN).
//! - [`packet`]: builds Ethernet/IPv4/TCP frames with correct checksums for
//!   `BPF_PROG_TEST_RUN` fixtures, and checks checksums of what a program emits.
//! - [`netns`]: client / gateway / origin (and extra hosts) in network namespaces joined by
//!   veths, for end-to-end tests; or an ordinary gateway's network (bridges, forwarding off,
//!   default offloads: [`netns::Topology::field`]).
//! - [`pcap`]: `tcpdump` in a namespace, a pcap reader and a checksum audit of the capture.
//! - [`gateway`]: ftp-guard itself running in-process in the gateway namespace.
//! - [`scenario`]: topology + origin server + gateway, ready for an end-to-end test.
pub mod fixture;
pub mod flood;
pub mod ftp_clients;
pub mod ftp_load;
pub mod ftp_servers;
pub mod gateway;
pub mod netns;
pub mod packet;
pub mod pcap;
pub mod scenario;

/// Gate for tests that need root (BPF, netns). Returns false when the caller should skip.
/// In CI (`CI=true`) or under `cargo xtask test` (`FTP_GUARD_REQUIRE_PRIVILEGED=1`) a missing
/// privilege is a failure, never a silent skip.
pub fn require_privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("FTP_GUARD_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "this test needs root (CAP_BPF, CAP_NET_ADMIN, netns); run `cargo xtask test` as root"
    );
    eprintln!("skipped: needs root");
    false
}

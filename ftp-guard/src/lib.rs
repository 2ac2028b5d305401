//! ftp-guard: a transparent FTP protector.
//!
//! - [`kernel`]: the eBPF object and its maps (XDP data-port guard).
//! - [`guard_cmd`]: `ftp-guard guard`, the data-port guard on its own with static leases.
pub mod guard_cmd;
pub mod kernel;

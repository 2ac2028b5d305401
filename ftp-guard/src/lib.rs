//! ftp-guard: a transparent FTP protector.
//!
//! - [`ftp`]: the sans-IO FTP core (framing, parsing, the per-connection state machine);
//! - [`proxy`]: the tokio control-channel proxy that drives it;
//! - [`dataplane`]: what carries data connections (the `Dataplane` trait and its
//!   implementations);
//! - [`bpf`]: the eBPF object, its maps and the host around it (attachments, sysctls) —
//!   the only code that touches them;
//! - [`gateway`]: every configured service running (what `ftp-guard run` starts);
//! - [`config`]: the TOML configuration;
//! - [`policy`]: protection policy decided in userspace (login-failure bans);
//! - [`metrics`], [`admin`]: Prometheus metrics and the admin HTTP endpoint;
//! - [`run_cmd`], [`status_cmd`], [`guard_cmd`]: the CLI subcommands;
//! - [`sync`]: locking that survives a panic elsewhere (poisoned locks recovered in one place).
pub mod admin;
pub mod audit;
pub mod bpf;
pub mod config;
pub mod dataplane;
pub mod ftp;
pub mod gateway;
pub mod guard_cmd;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod run_cmd;
pub mod status_cmd;
pub mod sync;

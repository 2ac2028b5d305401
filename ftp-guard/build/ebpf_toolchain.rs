//! Which rustup toolchain builds the eBPF crate. `-Z build-std=core` needs one whose sysroot
//! holds the core library's source:
//! 1. `FTP_GUARD_EBPF_TOOLCHAIN=<rustup toolchain>` if set;
//! 2. else `nightly`, if it has the `rust-src` component;
//! 3. else `ftp-guard-bpf`, Debian's rustc-web linked into rustup by `cargo xtask setup`.
//!
//! The one copy of that rule: ftp-guard/build.rs builds with it, and xtask (setup,
//! build-ebpf) checks and reports it, both through `#[path]` to this file. Std only.
use std::{fmt, path::Path, process::Command};

/// Names a rustup toolchain (with rust-src) for the eBPF build.
pub const ENV_TOOLCHAIN: &str = "FTP_GUARD_EBPF_TOOLCHAIN";
/// Debian's rustc-web as rustup sees it (`rustup toolchain link`, done by setup).
pub const DEBIAN_TOOLCHAIN: &str = "ftp-guard-bpf";
/// Tried in this order when ENV_TOOLCHAIN is unset.
pub const FALLBACK_TOOLCHAINS: [&str; 2] = ["nightly", DEBIAN_TOOLCHAIN];

/// Why no toolchain can build the eBPF crate.
#[derive(Debug, PartialEq, Eq)]
pub enum NoEbpfToolchain {
    /// ENV_TOOLCHAIN names this toolchain, which does not exist or lacks the core source.
    Named(String),
    /// ENV_TOOLCHAIN is unset and no fallback has the core source.
    NoFallback,
}

impl fmt::Display for NoEbpfToolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Named(name) => write!(
                f,
                "{ENV_TOOLCHAIN}={name}: no such rustup toolchain, or it has no library/core source"
            ),
            Self::NoFallback => write!(
                f,
                "no rustup toolchain can build eBPF (nightly with rust-src, or {DEBIAN_TOOLCHAIN})"
            ),
        }
    }
}

impl std::error::Error for NoEbpfToolchain {}

/// The rule, given ENV_TOOLCHAIN's value and a test for the core source.
pub fn choose(
    named: Option<String>,
    has_core_source: impl Fn(&str) -> bool,
) -> Result<String, NoEbpfToolchain> {
    match named {
        Some(name) if has_core_source(&name) => Ok(name),
        Some(name) => Err(NoEbpfToolchain::Named(name)),
        None => FALLBACK_TOOLCHAINS
            .into_iter()
            .find(|name| has_core_source(name))
            .map(str::to_owned)
            .ok_or(NoEbpfToolchain::NoFallback),
    }
}

/// The rule applied to this machine.
pub fn ebpf_toolchain() -> Result<String, NoEbpfToolchain> {
    choose(std::env::var(ENV_TOOLCHAIN).ok(), has_core_source)
}

/// True when `rustup run NAME rustc` works and its sysroot holds `library/core`.
pub fn has_core_source(name: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
        // A RUSTC from the calling cargo would bypass rustup's choice.
        .env_remove("RUSTC")
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout);
    out.status.success()
        && Path::new(sysroot.trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

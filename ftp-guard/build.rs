//! Builds the eBPF object (crate `ftp-guard-ebpf`) into OUT_DIR so that `src/kernel` can
//! embed it: a plain `cargo build` builds everything. Which toolchain builds it:
//! build/ebpf_toolchain.rs (shared with xtask).
use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

#[path = "build/ebpf_toolchain.rs"]
mod ebpf_toolchain;

use ebpf_toolchain::ENV_TOOLCHAIN;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={ENV_TOOLCHAIN}");
    let toolchain = ebpf_toolchain::ebpf_toolchain().map_err(|e| {
        anyhow!(
            "{e}: run `cargo xtask setup`, or set {ENV_TOOLCHAIN} to a rustup toolchain with \
             rust-src"
        )
    })?;
    // aya-build passes `-Z build-std=core` when RUSTC_BOOTSTRAP=1; the Debian toolchain is
    // a stable release and needs it, nightly accepts it.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
        // aya-build relays the inner cargo's stderr as build warnings: keep it to errors.
        std::env::set_var("CARGO_TERM_QUIET", "true");
    }

    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("no workspace root above {manifest_dir}"))?
        .join("ftp-guard-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "ftp-guard-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .with_context(|| {
        format!(
            "building the eBPF object with toolchain `{toolchain}` failed; run `cargo xtask setup`"
        )
    })
}

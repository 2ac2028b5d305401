//! Builds the eBPF object (crate `ftp-guard-ebpf`) into OUT_DIR so that `src/kernel` can
//! embed it: a plain `cargo build` builds everything.
//!
//! eBPF needs `-Z build-std=core`, hence a toolchain with the core library's source:
//! 1. `FTP_GUARD_EBPF_TOOLCHAIN=<rustup toolchain>` if set;
//! 2. else `nightly`, if it has the `rust-src` component;
//! 3. else `ftp-guard-bpf`, Debian's rustc-web linked into rustup by `cargo xtask setup`.
use std::{path::Path, process::Command};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

const ENV_TOOLCHAIN: &str = "FTP_GUARD_EBPF_TOOLCHAIN";
const DEBIAN_TOOLCHAIN: &str = "ftp-guard-bpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={ENV_TOOLCHAIN}");
    let toolchain = choose_toolchain()?;
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

fn choose_toolchain() -> anyhow::Result<String> {
    if let Ok(name) = std::env::var(ENV_TOOLCHAIN) {
        if !has_core_source(&name) {
            bail!("{ENV_TOOLCHAIN}={name}: that rustup toolchain has no library/core source");
        }
        return Ok(name);
    }
    for name in ["nightly", DEBIAN_TOOLCHAIN] {
        if has_core_source(name) {
            return Ok(name.to_owned());
        }
    }
    bail!(
        "no toolchain can build eBPF here (needs the core library source): \
         run `cargo xtask setup`, or set {ENV_TOOLCHAIN} to a rustup toolchain with rust-src"
    )
}

/// True when `rustup run NAME rustc` exists and its sysroot holds `library/core`.
fn has_core_source(name: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
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

//! `cargo xtask build-ebpf`: builds ftp-guard (its build.rs builds the eBPF crate through
//! aya-build) and lists the programs and maps in the resulting eBPF object.
use std::{env, fs, path::Path};

use anyhow::{Context as _, Result, bail, ensure};
use object::{
    Architecture, Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind, SymbolKind,
};

use crate::{setup, util};

/// aya-build copies the eBPF binary into ftp-guard's OUT_DIR under its bin name.
const EBPF_BIN: &str = "ftp-guard";

pub fn run() -> Result<()> {
    let toolchain = ensure_toolchain()?;
    println!("eBPF toolchain: {toolchain}");
    let build = util::build_ftp_guard()?;
    let path = build.out_dir.join(EBPF_BIN);
    let data = fs::read(&path).with_context(|| {
        format!(
            "reading the eBPF object {} (ftp-guard/build.rs should have put it there)",
            path.display()
        )
    })?;
    println!("eBPF object: {} ({} bytes)", path.display(), data.len());
    print_contents(&path, &data)
}

/// Checks that ftp-guard/build.rs will find what it needs and returns the toolchain it
/// will pick. Under CI=true runs setup instead of stopping, since no one is there to.
pub fn ensure_toolchain() -> Result<String> {
    let problem = if setup::bpf_linker_version().is_none() {
        Some("bpf-linker is not on PATH".to_owned())
    } else {
        setup::ebpf_toolchain().err().map(|e| e.to_string())
    };
    if let Some(problem) = problem {
        if env::var("CI").as_deref() != Ok("true") {
            bail!("{problem}: run `cargo xtask setup`");
        }
        println!("{problem}: running `cargo xtask setup` (CI=true)");
        setup::run()?;
    }
    setup::ebpf_toolchain()
}

/// Programs are the symbols of executable sections other than `.text` (aya names them
/// `xdp`, `classifier`, `xdp/...`); maps are the symbols of `maps` (or BTF `.maps`).
fn print_contents(path: &Path, data: &[u8]) -> Result<()> {
    let file = object::File::parse(data)
        .with_context(|| format!("{} is not an ELF object", path.display()))?;
    ensure!(
        file.architecture() == Architecture::Bpf,
        "{} is an ELF object for {:?}, not eBPF",
        path.display(),
        file.architecture()
    );
    let (mut programs, mut maps) = (Vec::new(), Vec::new());
    for sym in file.symbols() {
        let Some(index) = sym.section_index() else {
            continue;
        };
        let section = file.section_by_index(index)?;
        let (section_name, name) = (section.name()?, sym.name()?);
        if name.is_empty() || sym.kind() == SymbolKind::Section {
            continue;
        }
        if section_name == "maps" || section_name == ".maps" {
            maps.push((section_name, name.to_owned()));
        } else if section.kind() == SectionKind::Text
            && section_name != ".text"
            && sym.kind() == SymbolKind::Text
        {
            // eBPF instructions are 8 bytes: the count says what the verifier will walk.
            programs.push((section_name, format!("{name} ({} insns)", sym.size() / 8)));
        }
    }
    for (title, mut rows) in [("programs", programs), ("maps", maps)] {
        rows.sort_unstable();
        println!("{title} ({}):", rows.len());
        let width = rows.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
        for (section, name) in rows {
            println!("  {section:<width$}  {name}");
        }
    }
    Ok(())
}

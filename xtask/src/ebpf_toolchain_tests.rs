//! The eBPF toolchain rule of ftp-guard/build/ebpf_toolchain.rs, with the machine replaced
//! by a set of toolchains that have the core source.
use crate::ebpf_toolchain::{DEBIAN_TOOLCHAIN, NoEbpfToolchain, choose};

fn with_core_source(names: &'static [&'static str]) -> impl Fn(&str) -> bool {
    move |name| names.contains(&name)
}

#[test]
fn a_named_toolchain_is_used_only_if_it_has_the_core_source() {
    assert_eq!(
        choose(Some("mine".into()), with_core_source(&["mine", "nightly"])),
        Ok("mine".to_owned())
    );
    // No fallback to nightly: the user asked for `mine`.
    assert_eq!(
        choose(Some("mine".into()), with_core_source(&["nightly"])),
        Err(NoEbpfToolchain::Named("mine".to_owned()))
    );
}

#[test]
fn unnamed_prefers_nightly_then_the_debian_toolchain() {
    assert_eq!(
        choose(None, with_core_source(&["nightly", DEBIAN_TOOLCHAIN])),
        Ok("nightly".to_owned())
    );
    assert_eq!(
        choose(None, with_core_source(&[DEBIAN_TOOLCHAIN])),
        Ok(DEBIAN_TOOLCHAIN.to_owned())
    );
    assert_eq!(
        choose(None, with_core_source(&["stable"])),
        Err(NoEbpfToolchain::NoFallback)
    );
}

//! Project tasks for ftp-guard, run as `cargo xtask <command>`.
mod bench;
mod build_ebpf;
mod demo;
#[path = "../../ftp-guard/build/ebpf_toolchain.rs"]
mod ebpf_toolchain;
#[cfg(test)]
mod ebpf_toolchain_tests;
mod fuzz;
mod interop;
mod run;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "ftp-guard project tasks",
    after_help = "Environment:\n  \
        FTP_GUARD_EBPF_TOOLCHAIN  rustup toolchain (with rust-src) that builds the eBPF crate;\n                            \
        when set, setup checks it and skips the Debian rustc-web steps.\n                            \
        Unset: nightly if it has rust-src, else `ftp-guard-bpf` (Debian's\n                            \
        rustc-web, linked into rustup by setup).\n  \
        CI=true                   build-ebpf and run install a missing toolchain themselves."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything needed (apt packages, eBPF toolchain, bpf-linker, pyftpdlib,
    /// bpffs); idempotent, needs root.
    Setup,
    /// Build ftp-guard and its eBPF object; list the object's programs and maps.
    BuildEbpf,
    /// Build ftp-guard and run it as root: `cargo xtask run -- ARGS...`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then run all workspace tests (privileged ones included) and the FTP
    /// interoperability matrix on both data paths and topologies (target/interop/) as
    /// root: `cargo xtask test [--no-interop] [-- TEST-BINARY-ARGS...]`.
    Test {
        /// Skip the interoperability matrix (e.g. when running a few tests by name).
        #[arg(long)]
        no_interop: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then the benchmark in release mode as root: routing vs ftp-guard's data
    /// paths, one topology, one run; reports in target/bench/. `cargo xtask bench -- --help`.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then the FTP interoperability matrix as root: every server × client × data
    /// mode × operation through ftp-guard; writes docs/interop.md, exits 1 if a cell that
    /// should pass failed. `cargo xtask interop -- --help`.
    Interop {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the fuzz targets (fuzz/, stable toolchain + libFuzzer) and run each in turn;
    /// prints executions, exec/s and corpus size per target. Crashes: fuzz/artifacts/.
    Fuzz {
        /// Only this target (repeatable); default: all.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Seconds per target.
        #[arg(long, conflicts_with = "runs")]
        secs: Option<u64>,
        /// Executions per target.
        #[arg(long)]
        runs: Option<u64>,
    },
    /// Setup, build, then run the demo driver (tools/src/bin/demo.rs) against the real
    /// `ftp-guard` binary in network namespaces.
    Demo {
        /// Run the demo scenario once and exit.
        #[arg(long)]
        once: bool,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Setup => setup::run().map(|()| 0),
        Cmd::BuildEbpf => build_ebpf::run().map(|()| 0),
        Cmd::Run { args } => run::run(&args).map(|()| 0),
        Cmd::Test { no_interop, args } => test::run(&args, !no_interop),
        Cmd::Bench { args } => bench::run(&args),
        Cmd::Interop { args } => interop::run(&args),
        Cmd::Fuzz {
            targets,
            secs,
            runs,
        } => {
            let budget = match (secs, runs) {
                (_, Some(n)) => fuzz::Budget::Runs(n),
                (s, None) => fuzz::Budget::Secs(s.unwrap_or(60)),
            };
            fuzz::run(&targets, budget).map(|()| 0)
        }
        Cmd::Demo { once } => demo::run(once).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

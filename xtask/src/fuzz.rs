//! `cargo xtask fuzz [--target T]... [--secs N | --runs N]`: builds the libFuzzer targets
//! of `fuzz/` with the stable toolchain and runs each in turn, then prints what each did.
//!
//! No nightly and no cargo-fuzz: the flags cargo-fuzz would pass are all stable
//! (SanitizerCoverage through `-Cpasses=sancov-module` and `-Cllvm-args`), minus
//! AddressSanitizer (`-Zsanitizer`, nightly only; the fuzzed code is safe Rust).
//! `--target <host>` keeps the instrumentation off build scripts and proc macros.
//! Corpora persist in fuzz/corpus/<target>, crashes land in fuzz/artifacts/<target>/.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::util;

pub const TARGETS: &[&str] = &[
    "line_reader",
    "reply_assembler",
    "address_parsers",
    "scrubber",
    "session",
];

const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// How long each target runs.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Secs(u64),
    Runs(u64),
}

/// What one run did, from libFuzzer's final statistics.
#[derive(Debug)]
pub struct Outcome {
    pub target: String,
    pub executions: u64,
    pub execs_per_sec: u64,
    pub corpus_files: usize,
    pub secs: f64,
}

pub fn run(targets: &[String], budget: Budget) -> Result<()> {
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    for t in &targets {
        ensure!(
            TARGETS.contains(t),
            "no fuzz target `{t}` (there are: {})",
            TARGETS.join(", ")
        );
    }
    let bins = build(&targets)?;
    let mut outcomes = Vec::new();
    for (target, bin) in targets.iter().zip(&bins) {
        outcomes.push(fuzz(target, bin, budget)?);
    }
    println!(
        "\n{:<16} {:>12} {:>9} {:>7} {:>8}",
        "TARGET", "EXECUTIONS", "EXEC/S", "CORPUS", "SECS"
    );
    for o in &outcomes {
        println!(
            "{:<16} {:>12} {:>9} {:>7} {:>8.1}",
            o.target, o.executions, o.execs_per_sec, o.corpus_files, o.secs
        );
    }
    Ok(())
}

fn fuzz_dir() -> PathBuf {
    util::workspace_root().join("fuzz")
}

fn host_triple() -> Result<String> {
    let vv = util::output(Command::new("rustc").arg("-vV"))?;
    vv.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` names no host")
}

/// Builds the targets (release, instrumented); their binaries in `targets`' order.
pub fn build(targets: &[&str]) -> Result<Vec<PathBuf>> {
    let host = host_triple()?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::workspace_root().join("target").join("fuzz"));
    let mut cmd = util::cargo();
    cmd.current_dir(fuzz_dir())
        .args(["build", "--release", "--locked", "--target", &host])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        // A RUSTFLAGS of the caller's would be overridden anyway; this one would win.
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    for t in targets {
        cmd.args(["--bin", t]);
    }
    println!("building: {}", util::cmdline(&cmd));
    util::run(&mut cmd)?;
    let dir = target_dir.join(&host).join("release");
    Ok(targets.iter().map(|t| dir.join(t)).collect())
}

/// Runs one target; fails with the crash's file and libFuzzer's last words if it found one.
pub fn fuzz(target: &str, bin: &Path, budget: Budget) -> Result<Outcome> {
    let corpus = fuzz_dir().join("corpus").join(target);
    let artifacts = fuzz_dir().join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut cmd = Command::new(bin);
    cmd.arg(&corpus)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .arg(match budget {
            Budget::Secs(s) => format!("-max_total_time={s}"),
            Budget::Runs(n) => format!("-runs={n}"),
        })
        .stdin(Stdio::null());
    println!("fuzzing: {}", util::cmdline(&cmd));
    let start = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", util::cmdline(&cmd)))?;
    let secs = start.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target `{target}` failed ({}); crash inputs are in {}:\n{}",
            out.status,
            artifacts.display(),
            tail.join("\n")
        );
    }
    let stat = |name: &str| -> u64 {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let corpus_files = std::fs::read_dir(&corpus)
        .with_context(|| format!("reading {}", corpus.display()))?
        .count();
    let outcome = Outcome {
        target: target.to_owned(),
        executions: stat("number_of_executed_units"),
        execs_per_sec: stat("average_exec_per_sec"),
        corpus_files,
        secs,
    };
    println!(
        "{target}: {} executions, {}/s, corpus {} files, {:.1} s",
        outcome.executions, outcome.execs_per_sec, outcome.corpus_files, secs
    );
    Ok(outcome)
}

/// CI's smoke run: every target for a few seconds, so a broken harness fails the build.
pub fn smoke(secs_each: u64) -> Result<()> {
    let bins = build(TARGETS)?;
    for (target, bin) in TARGETS.iter().zip(&bins) {
        fuzz(target, bin, Budget::Secs(secs_each))?;
    }
    Ok(())
}

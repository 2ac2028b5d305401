//! deploy/container: the Containerfile's stages (built with `cargo xtask setup`'s toolchain,
//! shipping only the binary), its build context filter, the rustup shim, and (on Debian 12
//! with apt lists) that every apt package it installs exists.
use std::{collections::BTreeSet, fs, process::Command};

use ftp_guard_packaging::{
    BINARY, CONFIG_PATH, CONTAINER_IGNORE, CONTAINERFILE, RUSTUP_SHIM, SETUP_RS, have_or_skip,
    program_on_path, read, repo,
};

/// One Containerfile instruction: keyword (upper case) and the rest of its line(s).
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// Instructions per stage (split at FROM), continuation lines joined, comments dropped.
fn containerfile_stages() -> Vec<Vec<Instruction>> {
    let text = read(CONTAINERFILE);
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        current.is_empty(),
        "{CONTAINERFILE}: ends inside a continuation"
    );
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in logical.iter().filter(|l| !l.trim().is_empty()) {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .unwrap_or_else(|| panic!("{CONTAINERFILE}: {keyword} before FROM"))
            .push(Instruction {
                keyword,
                args: args.split_whitespace().collect::<Vec<_>>().join(" "),
            });
    }
    stages
}

fn instructions<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

/// `ARG NAME=default` of a stage.
fn build_args(stage: &[Instruction]) -> Vec<(String, String)> {
    instructions(stage, "ARG")
        .into_iter()
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A `const NAME: &str = "value";` of xtask/src/setup.rs.
fn setup_const(name: &str) -> String {
    let text = read(SETUP_RS);
    let prefix = format!("const {name}: &str = \"");
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{SETUP_RS}: no `{prefix}...`"));
    line.split('"').next().unwrap().to_owned()
}

/// The packages of `apt-get install` in a RUN command, ARGs expanded.
fn apt_packages(run: &str, args: &[(String, String)]) -> Vec<String> {
    let mut expanded = run.to_owned();
    for (k, v) in args {
        expanded = expanded.replace(&format!("${{{k}}}"), v);
    }
    let Some((_, rest)) = expanded.split_once("apt-get install") else {
        return Vec::new();
    };
    rest.split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn containerfile_builds_with_the_setup_toolchain_and_ships_only_the_binary() {
    let stages = containerfile_stages();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (&stages[0], &stages[1]);
    assert_eq!(instructions(build, "FROM"), ["debian:bookworm AS build"]);
    let runtime_from = instructions(runtime, "FROM");
    assert!(
        runtime_from[0].starts_with("debian:bookworm-slim "),
        "{runtime_from:?}"
    );

    // The toolchain matches `cargo xtask setup`.
    let args = build_args(build);
    let arg = |name: &str| {
        args.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{CONTAINERFILE}: ARG {name}"))
    };
    assert_eq!(arg("LLVM_MAJOR"), setup_const("LLVM_MAJOR"));
    assert_eq!(arg("BPF_LINKER_VERSION"), setup_const("BPF_LINKER_VERSION"));
    let runs = instructions(build, "RUN");
    let packages: BTreeSet<String> = runs.iter().flat_map(|r| apt_packages(r, &args)).collect();
    let setup = read(SETUP_RS);
    let toolchain_list = setup
        .split_once("const DEBIAN_TOOLCHAIN_PACKAGES")
        .and_then(|(_, rest)| rest.split_once(';'))
        .map(|(list, _)| list)
        .expect("DEBIAN_TOOLCHAIN_PACKAGES in setup.rs");
    let toolchain: Vec<&str> = toolchain_list.split('"').skip(1).step_by(2).collect();
    assert!(!toolchain.is_empty());
    for p in toolchain
        .iter()
        .map(|p| p.to_string())
        .chain([format!("llvm-{}-dev", arg("LLVM_MAJOR"))])
    {
        assert!(
            packages.contains(&p),
            "{CONTAINERFILE}: apt package {p} missing"
        );
    }
    assert!(
        runs.iter().any(|r| r.contains("cargo install --locked")
            && r.contains("bpf-linker@${BPF_LINKER_VERSION}")
            && r.contains("--features \"llvm-${LLVM_MAJOR}\"")),
        "bpf-linker is installed like setup.rs does"
    );
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --locked --release -p ftp-guard")),
        "the release build"
    );
    assert!(
        instructions(build, "COPY")
            .contains(&format!("{RUSTUP_SHIM} /usr/local/bin/rustup").as_str()),
        "build.rs needs `rustup run`"
    );

    // Runtime: the binary and nothing else, started as `ftp-guard run`.
    let copies = instructions(runtime, "COPY");
    assert_eq!(
        copies,
        [format!(
            "--from=build /src/target/release/ftp-guard {BINARY}"
        )]
    );
    assert!(
        instructions(runtime, "RUN").is_empty(),
        "nothing installed at run time"
    );
    assert!(instructions(runtime, "ADD").is_empty());
    assert_eq!(
        instructions(runtime, "ENTRYPOINT"),
        [format!("[\"{BINARY}\"]")]
    );
    assert_eq!(
        instructions(runtime, "CMD"),
        [format!("[\"run\", \"--config\", \"{CONFIG_PATH}\"]")]
    );
}

#[test]
fn container_build_context_keeps_target_and_git_out_but_not_the_sources() {
    let patterns: Vec<String> = read(CONTAINER_IGNORE)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for must in [".git", "target"] {
        assert!(
            patterns.iter().any(|p| p == must),
            "{CONTAINER_IGNORE}: {must}"
        );
    }
    // What the build stage copies must reach it: the shim, and the workspace.
    let excluded = |path: &str| {
        patterns.iter().any(|p| {
            let p = p.trim_start_matches("**/").trim_matches('/');
            path == p || path.starts_with(&format!("{p}/"))
        })
    };
    let stages = containerfile_stages();
    for copy in instructions(&stages[0], "COPY") {
        let source = copy.split_whitespace().next().unwrap();
        if source != "." {
            assert!(
                repo().join(source).exists(),
                "COPY source {source} is missing"
            );
            assert!(
                !excluded(source),
                "COPY source {source} is in {CONTAINER_IGNORE}"
            );
        }
    }
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
        "ftp-guard",
        "ftp-guard-common",
        "ftp-guard-ebpf",
        "xtask",
        "testbed",
        "tests",
        "tools",
        "packaging",
    ] {
        assert!(
            !excluded(needed),
            "{needed} is needed by the workspace build"
        );
    }
}

#[test]
fn rustup_shim_runs_only_the_debian_toolchain() {
    let shim = repo().join(RUSTUP_SHIM);
    let run = |args: &[&str]| {
        Command::new("sh")
            .arg(&shim)
            .args(args)
            .env_remove("FTP_GUARD_EBPF_TOOLCHAIN")
            .output()
            .unwrap()
    };
    let out = run(&["run", "ftp-guard-bpf", "echo", "a b", "c"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a b c\n");
    // build.rs tries `nightly` first: it must not seem to exist.
    assert!(!run(&["run", "nightly", "true"]).status.success());
    assert!(!run(&["toolchain", "list"]).status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&shim).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{RUSTUP_SHIM} must be executable");
    }
}

#[test]
fn containerfile_apt_packages_exist_in_debian_bookworm() {
    let stages = containerfile_stages();
    let args = build_args(&stages[0]);
    let packages: BTreeSet<String> = instructions(&stages[0], "RUN")
        .iter()
        .flat_map(|r| apt_packages(r, &args))
        .collect();
    assert!(packages.len() >= 5, "{packages:?}");

    // The image is Debian 12; another host's index says nothing about it.
    let codename = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(str::to_owned));
    if codename.as_deref() != Some("bookworm") {
        eprintln!(
            "skipped: this host is not Debian 12 ({codename:?}), its apt index is not the image's"
        );
        return;
    }
    let Some(apt_cache) = program_on_path("apt-cache") else {
        have_or_skip(false, "apt-cache");
        return;
    };
    let lists = fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    if !have_or_skip(lists, "apt package lists (apt-get update)") {
        return;
    }
    let out = Command::new(apt_cache)
        .arg("policy")
        .args(&packages)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let policy = String::from_utf8_lossy(&out.stdout);
    let mut available = BTreeSet::new();
    let mut current = None;
    for line in policy.lines() {
        if !line.starts_with(' ') {
            current = line.strip_suffix(':');
        } else if let (Some(name), Some(candidate)) =
            (current, line.trim().strip_prefix("Candidate:"))
            && candidate.trim() != "(none)"
        {
            available.insert(name.to_owned());
        }
    }
    let missing: Vec<&String> = packages.difference(&available).collect();
    assert!(
        missing.is_empty(),
        "not in Debian 12's index (bookworm, -updates, -security): {missing:?}"
    );
}

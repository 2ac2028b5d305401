//! Shared by the tests of the deployment files under `deploy/` (tests/kubernetes.rs,
//! tests/systemd.rs, tests/container.rs): where the repository is, what every deployment
//! must agree on (capabilities, paths, ports), scratch directories, and the rule that in
//! CI (`CI=true`) or under `cargo xtask test` a missing offline tool is a failure, not a skip.
//! Nothing here needs a cluster, a container engine or a running systemd.
use std::{
    fs,
    path::{Path, PathBuf},
};

pub const MANIFEST: &str = "deploy/kubernetes/ftp-guard.yaml";
pub const UNIT: &str = "deploy/systemd/ftp-guard.service";
pub const UNIT_CONFIG: &str = "deploy/systemd/ftp-guard.toml";
pub const CONTAINERFILE: &str = "deploy/container/Containerfile";
pub const CONTAINER_IGNORE: &str = "deploy/container/Containerfile.dockerignore";
pub const RUSTUP_SHIM: &str = "deploy/container/rustup-shim";
pub const SETUP_RS: &str = "xtask/src/setup.rs";

/// The capabilities the daemon needs, each checked by hand to be necessary (README
/// "Deployment"): nothing more may be granted, nothing less works.
pub const CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "PERFMON", "NET_BIND_SERVICE"];
pub const CONFIG_DIR: &str = "/etc/ftp-guard";
pub const CONFIG_PATH: &str = "/etc/ftp-guard/ftp-guard.toml";
pub const BINARY: &str = "/usr/bin/ftp-guard";
pub const METRICS_PORT: u64 = 9640;

/// The repository root (this crate lives one level below it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("packaging/ has a parent")
        .to_owned()
}

/// A file of the repository, by its path relative to the root.
pub fn read(rel: &str) -> String {
    let path = repo().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// CI or `cargo xtask test`: a missing tool fails the test instead of skipping a check.
fn tools_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("FTP_GUARD_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// Skips (returns false) when `what` is missing, unless tools are required.
pub fn have_or_skip(available: bool, what: &str) -> bool {
    if !available {
        assert!(
            !tools_required(),
            "{what} is missing: `cargo xtask setup` should have installed it"
        );
        eprintln!("skipped: {what} is missing");
    }
    available
}

pub fn program_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A directory of its own under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ftp-guard-deploy-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

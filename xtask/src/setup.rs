//! `cargo xtask setup`: installs what building, testing and demoing ftp-guard needs on
//! Debian 12. Every step checks first, so a second run installs nothing and is fast.
//! proftpd-core and pure-ftpd conflict with vsftpd as packages: they are unpacked into
//! `/opt/ftp-guard-test/<package>` instead (see `PRIVATE_PACKAGES`).
use std::{
    collections::BTreeSet,
    env, fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    ebpf_toolchain::{DEBIAN_TOOLCHAIN, ENV_TOOLCHAIN, has_core_source},
    util::{self, output, probe, run as run_cmd},
};

/// bpf-linker must read the bitcode of the rustc that builds the eBPF crate, so its LLVM
/// matches Debian rustc-web's. Change both together when Debian moves.
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const PYFTPDLIB: &str = "pyftpdlib>=2,<3";
const BPFFS: &str = "/sys/fs/bpf";

/// FTP servers whose Debian packages conflict with vsftpd (each `Provides` and `Conflicts`
/// `ftp-server`): unpacked into `PRIVATE_PREFIX/<package>` (`apt-get download` + `dpkg-deb
/// -x`) instead of installed; with the binaries checked with `ldd`. testbed/src/ftp_servers.rs
/// looks for them there (keep the paths in step).
const PRIVATE_PACKAGES: &[(&str, &[&str])] = &[
    ("proftpd-core", &["usr/sbin/proftpd"]),
    ("pure-ftpd", &["usr/sbin/pure-ftpd", "usr/bin/pure-pw"]),
];
const PRIVATE_PREFIX: &str = "/opt/ftp-guard-test";
/// In each unpacked package's directory: the version that was unpacked.
const PRIVATE_VERSION_FILE: &str = ".ftp-guard-version";

/// Debian's rustc-web: the one compiler here whose own library source is installable
/// (rustup cannot fetch rust-src on these machines), needed for `-Z build-std=core`.
const DEBIAN_TOOLCHAIN_PACKAGES: &[&str] =
    &["rustc-web", "cargo-web", "rust-web-src", "rust-web-llvm"];
/// Needed whichever toolchain builds the eBPF crate (llvm-NN-dev is added at run time:
/// bpf-linker is built against it and loads its libLLVM).
const PACKAGES: &[&str] = &[
    // tests: namespaces and veths, checksum offload off, reachability, raw TCP
    "iproute2",
    "ethtool",
    "iputils-ping",
    "netcat-openbsd",
    // FTP servers and clients for the tests and the demo
    "vsftpd",
    "curl",
    "lftp",
    "python3-pip",
    // more FTP clients for the interoperability matrix (`cargo xtask interop`)
    "wget",
    "tnftp",
    // the kernel FTP helper baseline of `cargo xtask bench` (nftables DNAT + ct helper ftp)
    "nftables",
    // systemd-socket-activate runs the unpacked proftpd in inetd mode
    "systemd",
    // libraries of the unpacked proftpd-core and pure-ftpd (not in a base system; the
    // others are checked with ldd after unpacking)
    "libhiredis0.14",
    "libmemcached11",
    "libmemcachedutil2",
    "libpcre2-posix3",
    "libsodium23",
    // debugging
    "tcpdump",
    // `cargo xtask fuzz`: libfuzzer-sys compiles libFuzzer (C++) with the `cc` crate
    "g++",
];

pub fn run() -> Result<()> {
    ensure!(
        util::is_root(),
        "cargo xtask setup needs root (apt-get, rustup link, mount): run it as root"
    );
    let start = Instant::now();
    let custom = env::var(ENV_TOOLCHAIN).ok();
    apt_packages(custom.is_none())?;
    match custom {
        Some(name) => custom_toolchain(&name)?,
        None => {
            debian_rustc()?;
            link_debian_toolchain()?;
        }
    }
    bpf_linker()?;
    pyftpdlib()?;
    for (package, binaries) in PRIVATE_PACKAGES {
        private_package(package, binaries)?;
    }
    bpffs()?;
    println!("setup done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The toolchain ftp-guard/build.rs will use (the same rule), or what is missing.
pub fn ebpf_toolchain() -> Result<String> {
    Ok(crate::ebpf_toolchain::ebpf_toolchain()?)
}

/// `bpf-linker --version` of the one on PATH, if any.
pub fn bpf_linker_version() -> Option<String> {
    probe(Command::new("bpf-linker").arg("--version"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
}

fn apt_packages(debian_toolchain: bool) -> Result<()> {
    let llvm_dev = format!("llvm-{LLVM_MAJOR}-dev");
    let mut wanted: Vec<&str> = Vec::new();
    if debian_toolchain {
        wanted.extend(DEBIAN_TOOLCHAIN_PACKAGES);
    }
    wanted.push(&llvm_dev);
    wanted.extend(PACKAGES);

    let missing = missing_packages(&wanted)?;
    if missing.is_empty() {
        println!("ok: {} apt packages installed", wanted.len());
        return Ok(());
    }
    println!("installing: apt packages {}", missing.join(" "));
    // A fresh machine's package lists are empty or stale: always refresh before installing.
    run_cmd(Command::new("apt-get").args(["-q", "update"]))?;
    let unknown = without_candidate(&missing)?;
    ensure!(
        unknown.is_empty(),
        "apt has no installable version of: {} (check /etc/apt/sources.list has bookworm, \
         bookworm-updates and bookworm-security)",
        unknown.join(" ")
    );

    let ftpd_before = vsftpd_pids();
    {
        let _no_service_starts = PolicyRcD::install()?;
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "install", "-y", "--no-install-recommends"])
            .args(&missing);
        run_cmd(&mut cmd)?;
    }
    // Belt and braces: policy-rc.d stops invoke-rc.d, but nothing must be left serving
    // port 21 on the host, where tests start their own servers.
    if missing.contains(&"vsftpd") {
        for pid in vsftpd_pids().difference(&ftpd_before) {
            // SAFETY: kill has no memory-safety preconditions; pid was checked to be vsftpd.
            if unsafe { libc::kill(*pid, libc::SIGTERM) } == 0 {
                println!("stopped: vsftpd (pid {pid}) started by its package install");
            }
        }
    }
    let still_missing = missing_packages(&missing)?;
    ensure!(
        still_missing.is_empty(),
        "apt-get install finished but these are not installed: {}",
        still_missing.join(" ")
    );
    Ok(())
}

/// The packages dpkg does not report as "install ok installed".
fn missing_packages<'a>(wanted: &[&'a str]) -> Result<Vec<&'a str>> {
    // One call for all: dpkg-query exits 1 when some package is unknown but still lists
    // the known ones, so its status is not an error here.
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Package}\t${Status}\n"]).args(wanted);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", util::cmdline(&cmd)))?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.contains("install ok installed"))
        .map(|(name, _)| name)
        .collect();
    Ok(wanted
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

/// The packages `apt-cache policy` knows no candidate version for.
fn without_candidate<'a>(pkgs: &[&'a str]) -> Result<Vec<&'a str>> {
    let policy = output(Command::new("apt-cache").arg("policy").args(pkgs))?;
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
    Ok(pkgs
        .iter()
        .copied()
        .filter(|p| !available.contains(*p))
        .collect())
}

/// Makes invoke-rc.d refuse to start services (exit 101) while it exists: packages like
/// vsftpd start their daemon from postinst, which fails or lingers without systemd.
struct PolicyRcD {
    created: bool,
}

impl PolicyRcD {
    const PATH: &str = "/usr/sbin/policy-rc.d";

    fn install() -> Result<Self> {
        // Someone else's policy (a container image's) is respected and left in place.
        if Path::new(Self::PATH).exists() {
            return Ok(Self { created: false });
        }
        fs::write(
            Self::PATH,
            "#!/bin/sh\n# cargo xtask setup: no service starts during apt-get install\nexit 101\n",
        )
        .with_context(|| format!("writing {}", Self::PATH))?;
        fs::set_permissions(Self::PATH, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 755 {}", Self::PATH))?;
        Ok(Self { created: true })
    }
}

impl Drop for PolicyRcD {
    fn drop(&mut self) {
        if self.created
            && let Err(e) = fs::remove_file(Self::PATH)
        {
            eprintln!("warning: cannot remove {}: {e}", Self::PATH);
        }
    }
}

/// PIDs of vsftpd processes listening on port 21 or named in its pid file.
fn vsftpd_pids() -> BTreeSet<i32> {
    let mut pids: BTreeSet<i32> = BTreeSet::new();
    // `ss` comes with iproute2, which may be installed by this very run: no ss, no pids.
    if let Some(listing) = probe(Command::new("ss").args(["-Hltnp", "sport = :21"])) {
        pids.extend(
            listing
                .split("pid=")
                .skip(1)
                .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .filter_map(|digits| digits.parse::<i32>().ok()),
        );
    }
    if let Ok(text) = fs::read_to_string("/run/vsftpd.pid")
        && let Ok(pid) = text.trim().parse()
    {
        pids.insert(pid);
    }
    pids.retain(|pid| {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "vsftpd")
    });
    pids
}

fn debian_rustc() -> Result<()> {
    const RUSTC: &str = "/usr/bin/rustc";
    let alternative = format!("or set {ENV_TOOLCHAIN} to a rustup toolchain with rust-src");
    let vv = output(Command::new(RUSTC).arg("-vV")).with_context(|| {
        format!(
            "Debian's rustc-web is not usable: apt-get install --reinstall rustc-web, {alternative}"
        )
    })?;
    let field = |key: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(key))
            .map_or("unknown", str::trim)
    };
    let (release, llvm) = (field("release:"), field("LLVM version:"));
    ensure!(
        llvm.split('.').next() == Some(LLVM_MAJOR),
        "{RUSTC} {release} uses LLVM {llvm}, but bpf-linker {BPF_LINKER_VERSION} is set up for \
         LLVM {LLVM_MAJOR}: update LLVM_MAJOR (and BPF_LINKER_VERSION if needed) in \
         xtask/src/setup.rs, {alternative}"
    );
    let sysroot = output(Command::new(RUSTC).args(["--print", "sysroot"]))?;
    let core = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    ensure!(
        core.is_dir(),
        "{} is missing, so {RUSTC} {release} cannot build core for eBPF: \
         apt-get install rust-web-src, {alternative}",
        core.display()
    );
    println!("ok: Debian rustc {release} (LLVM {llvm}) with library/core source");
    Ok(())
}

fn link_debian_toolchain() -> Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    let listed = list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(DEBIAN_TOOLCHAIN));
    // A stale link (pointing elsewhere, no core source) is replaced.
    if listed && has_core_source(DEBIAN_TOOLCHAIN) {
        println!("ok: rustup toolchain {DEBIAN_TOOLCHAIN} (Debian rustc in /usr)");
        return Ok(());
    }
    println!("installing: rustup toolchain link {DEBIAN_TOOLCHAIN} /usr");
    run_cmd(Command::new("rustup").args(["toolchain", "link", DEBIAN_TOOLCHAIN, "/usr"]))?;
    ensure!(
        has_core_source(DEBIAN_TOOLCHAIN),
        "rustup toolchain {DEBIAN_TOOLCHAIN} was linked to /usr but `rustup run {DEBIAN_TOOLCHAIN} \
         rustc --print sysroot` has no library/core"
    );
    Ok(())
}

fn custom_toolchain(name: &str) -> Result<()> {
    ensure!(
        has_core_source(name),
        "{ENV_TOOLCHAIN}={name}: no such rustup toolchain, or it has no library/core source: \
         `rustup component add rust-src --toolchain {name}`, or unset {ENV_TOOLCHAIN} to use \
         Debian's rustc-web"
    );
    println!("ok: eBPF toolchain {name} from {ENV_TOOLCHAIN} (Debian toolchain steps skipped)");
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_version().as_deref() == Some(BPF_LINKER_VERSION) {
        println!("ok: bpf-linker {BPF_LINKER_VERSION}");
        return Ok(());
    }
    println!(
        "installing: bpf-linker {BPF_LINKER_VERSION} for LLVM {LLVM_MAJOR} (cargo install, ~1 min)"
    );
    // LLVM_PREFIX: otherwise bpf-linker's build may find an older LLVM first.
    // `cargo` here must be rustup's proxy (for `+stable`), not $CARGO.
    let mut cmd = Command::new("cargo");
    cmd.env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
        .args(["+stable", "install", "--locked"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{LLVM_MAJOR}"));
    run_cmd(&mut cmd)?;
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => Ok(()),
        found => {
            let bin = cargo_home().join("bin");
            bail!(
                "bpf-linker {BPF_LINKER_VERSION} was installed into {}, but the bpf-linker on \
                 PATH is {}: put {} first on PATH",
                bin.display(),
                found.map_or("missing".to_owned(), |v| format!("version {v}")),
                bin.display()
            )
        }
    }
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// For the `python3` first on PATH (pyenv's, say), which the tests and demo will run.
fn pyftpdlib() -> Result<()> {
    let installed = || {
        probe(Command::new("python3").args([
            "-c",
            "import sys, pyftpdlib; print(pyftpdlib.__ver__, sys.executable)",
        ]))
    };
    if let Some(found) = installed() {
        println!("ok: pyftpdlib {}", found.trim());
        return Ok(());
    }
    let python = util::find_in_path("python3").context("python3 is not on PATH")?;
    println!("installing: {PYFTPDLIB} for {} (pip)", python.display());
    let pip = |extra: &[&str]| {
        let mut cmd = Command::new("python3");
        // Env rather than flags: old pips ignore unknown variables but reject unknown flags.
        cmd.env("PIP_ROOT_USER_ACTION", "ignore")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .args(["-m", "pip", "install", "-q"])
            .args(extra)
            .arg(PYFTPDLIB);
        let out = cmd
            .output()
            .with_context(|| format!("cannot start `{}`", util::cmdline(&cmd)))?;
        anyhow::Ok((cmd, out))
    };
    let (mut cmd, mut out) = pip(&[])?;
    // Debian's own python3 refuses (PEP 668) unless told; pyenv's does not need it.
    if !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("externally-managed-environment")
    {
        (cmd, out) = pip(&["--break-system-packages"])?;
    }
    ensure!(
        out.status.success(),
        "`{}` failed ({}):\n{}",
        util::cmdline(&cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    let found = installed()
        .context("pip installed pyftpdlib, but `python3 -c 'import pyftpdlib'` still fails")?;
    println!("ok: pyftpdlib {}", found.trim());
    Ok(())
}

/// Unpacks apt's candidate version of the Debian `package` into `PRIVATE_PREFIX/<package>`
/// unless a complete unpacked copy is there already (remove the directory to get a newer
/// version: asking apt each time costs ~0.4 s where apt's pkgcache is off, as in Docker
/// images); then checks that `binaries` find their libraries.
fn private_package(package: &str, binaries: &[&str]) -> Result<()> {
    let dir = Path::new(PRIVATE_PREFIX).join(package);
    let unpacked = fs::read_to_string(dir.join(PRIVATE_VERSION_FILE))
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|_| binaries.iter().all(|b| is_executable(&dir.join(b))));
    if let Some(version) = &unpacked {
        check_libraries(&dir, binaries)?;
        println!("ok: {package} {version} unpacked in {}", dir.display());
        return Ok(());
    }
    let mut candidate = candidate_version(package)?;
    if candidate.is_none() {
        // A fresh machine's package lists may be empty.
        run_cmd(Command::new("apt-get").args(["-q", "update"]))?;
        candidate = candidate_version(package)?;
    }
    let version = candidate.with_context(|| {
        format!("apt has no installable version of {package} (is bookworm in sources.list?)")
    })?;
    println!(
        "installing: {package} {version} unpacked into {} (apt-get download + dpkg-deb -x; it \
         conflicts with vsftpd as a package)",
        dir.display()
    );
    let downloads = Path::new(PRIVATE_PREFIX).join(".downloads");
    let staging = Path::new(PRIVATE_PREFIX).join(format!(".{package}.new"));
    for d in [&downloads, &staging] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // As root into a root-owned dir: no `_apt` sandbox user (it could not write there).
    run_cmd(
        Command::new("apt-get")
            .current_dir(&downloads)
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .arg(format!("{package}={version}")),
    )?;
    let debs: Vec<PathBuf> = fs::read_dir(&downloads)
        .with_context(|| format!("reading {}", downloads.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    let [deb] = debs.as_slice() else {
        bail!(
            "`apt-get download {package}={version}` left {} .deb files in {}",
            debs.len(),
            downloads.display()
        );
    };
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&staging))?;
    fs::write(staging.join(PRIVATE_VERSION_FILE), format!("{version}\n"))
        .with_context(|| format!("writing the version into {}", staging.display()))?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::rename(&staging, &dir)
        .with_context(|| format!("renaming {} to {}", staging.display(), dir.display()))?;
    fs::remove_dir_all(&downloads).with_context(|| format!("removing {}", downloads.display()))?;
    for b in binaries {
        ensure!(
            is_executable(&dir.join(b)),
            "{package} {version} has no executable {b}"
        );
    }
    check_libraries(&dir, binaries)
}

/// apt's candidate version of `package`, if it knows one.
fn candidate_version(package: &str) -> Result<Option<String>> {
    let policy = output(Command::new("apt-cache").arg("policy").arg(package))?;
    Ok(policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| *v != "(none)")
        .map(str::to_owned))
}

/// Fails when `ldd` finds a library missing for one of the unpacked binaries (apt did not
/// install the package's dependencies): names the libraries and where to add their packages.
fn check_libraries(dir: &Path, binaries: &[&str]) -> Result<()> {
    for b in binaries {
        let path = dir.join(b);
        let listing = output(Command::new("ldd").arg(&path))?;
        let missing: Vec<&str> = listing
            .lines()
            .filter(|l| l.contains("not found"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        ensure!(
            missing.is_empty(),
            "{} needs {}, which no installed package provides: add the Debian packages that \
             ship them to PACKAGES in xtask/src/setup.rs",
            path.display(),
            missing.join(" ")
        );
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&BPFFS) && f.get(2) == Some(&"bpf")
    });
    if !mounted {
        // Not world-writable (bpffs defaults to 1777): whoever can pin there can plant
        // maps and links that ftp-guard with pin_path would adopt.
        println!("installing: mount -t bpf -o mode=0700 bpf {BPFFS}");
        return run_cmd(Command::new("mount").args(["-t", "bpf", "-o", "mode=0700", "bpf", BPFFS]));
    }
    let mode = fs::metadata(BPFFS)
        .with_context(|| format!("reading {BPFFS}"))?
        .permissions()
        .mode();
    if mode & 0o022 != 0 {
        println!(
            "fixing: chmod go-w {BPFFS} (mode {:o}: anyone could pin there)",
            mode & 0o7777
        );
        fs::set_permissions(BPFFS, fs::Permissions::from_mode(mode & 0o7755))
            .with_context(|| format!("chmod go-w {BPFFS}"))?;
        return Ok(());
    }
    println!("ok: bpffs on {BPFFS}");
    Ok(())
}

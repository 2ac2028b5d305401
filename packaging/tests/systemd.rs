//! deploy/systemd: the unit's assignments checked one by one, its example configuration
//! through ftp-guard's own parser, and `systemd-analyze verify` when the machine has it.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use ftp_guard::config::{Config, DataplaneKind};
use ftp_guard_packaging::{
    BINARY, CAPABILITIES, CONFIG_PATH, Scratch, UNIT, UNIT_CONFIG, have_or_skip, program_on_path,
    read,
};

/// (section, key, value) of every assignment in a unit file.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "{UNIT}: no continuation lines expected"
        );
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT}: not an assignment: {line}"));
        entries.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    entries
}

/// Every value of `key` in [Service], in order.
fn service_values<'a>(entries: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// The single value of `key` in [Service] (repeated keys are a mistake here).
fn service_value<'a>(entries: &'a [(String, String, String)], key: &str) -> Option<&'a str> {
    let found = service_values(entries, key);
    assert!(
        found.len() <= 1,
        "{UNIT}: {key} is set {} times",
        found.len()
    );
    found.first().copied()
}

#[test]
fn systemd_unit_checks_then_runs_with_exactly_the_needed_capabilities() {
    let entries = unit_entries(&read(UNIT));
    let service = |key: &str| {
        service_value(&entries, key).unwrap_or_else(|| panic!("{UNIT}: {key} is not set"))
    };
    assert_eq!(
        service("Type"),
        "simple",
        "ftp-guard does not speak sd_notify"
    );
    assert_eq!(
        service("ExecStartPre"),
        format!("{BINARY} check --config {CONFIG_PATH}")
    );
    assert_eq!(
        service("ExecStart"),
        format!("{BINARY} run --config {CONFIG_PATH}")
    );
    assert_eq!(
        service_values(&entries, "ExecReload"),
        [
            format!("{BINARY} check --config {CONFIG_PATH}").as_str(),
            "/bin/kill -HUP $MAINPID"
        ],
        "reload = check, then SIGHUP"
    );
    assert_eq!(service("Restart"), "on-failure");
    // systemd's SIGKILL must not cut ftp-guard's own graceful stop short.
    let example = Config::parse(&read(UNIT_CONFIG)).unwrap();
    let stop = service("TimeoutStopSec");
    let stop: u64 = stop
        .strip_suffix('s')
        .unwrap_or(stop)
        .parse()
        .unwrap_or_else(|e| panic!("TimeoutStopSec={stop}: {e}"));
    assert!(
        stop >= example.shutdown_grace_secs + 5,
        "TimeoutStopSec {stop} vs shutdown_grace_secs {}",
        example.shutdown_grace_secs
    );
    assert_eq!(service("LimitNOFILE"), "65536");

    let wanted: BTreeSet<String> = CAPABILITIES.iter().map(|c| format!("CAP_{c}")).collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let caps: BTreeSet<String> = service(key).split_whitespace().map(str::to_owned).collect();
        assert_eq!(caps, wanted, "{key}");
    }

    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("RestrictNamespaces", "yes"),
        // ftp-guard writes net.ipv4 sysctls at start: /proc/sys must stay writable.
        ("ProtectKernelTunables", "no"),
    ] {
        assert_eq!(service(key), value, "{key}");
    }
    let families: BTreeSet<&str> = service("RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    assert_eq!(
        families,
        BTreeSet::from(["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"])
    );
    let filter: BTreeSet<&str> = service("SystemCallFilter").split_whitespace().collect();
    assert!(
        filter.contains("bpf"),
        "bpf(2) is outside @system-service: allow it explicitly"
    );
    // Settings that would break the kernel path.
    assert_ne!(
        service_value(&entries, "PrivateUsers"),
        Some("yes"),
        "no BPF in a userns"
    );
    assert_ne!(service_value(&entries, "PrivateNetwork"), Some("yes"));
    assert_ne!(
        service_value(&entries, "ProcSubset"),
        Some("pid"),
        "hides /proc/sys"
    );
    assert!(
        service_value(&entries, "User").is_none(),
        "DynamicUser picks the uid"
    );
    assert!(
        entries
            .iter()
            .any(|(s, k, v)| s == "Install" && k == "WantedBy" && v == "multi-user.target")
    );
}

#[test]
fn systemd_example_config_is_valid() {
    // The unit reads /etc/ftp-guard/ftp-guard.toml: the example is that file.
    assert_eq!(
        Path::new(UNIT_CONFIG).file_name(),
        Path::new(CONFIG_PATH).file_name()
    );
    let config = Config::parse(&read(UNIT_CONFIG)).unwrap_or_else(|e| panic!("{UNIT_CONFIG}: {e}"));
    assert!(
        config
            .services()
            .all(|s| s.dataplane == DataplaneKind::Kernel)
    );
    // The unit's dynamic user cannot pin under systemd's mode-0700 /sys/fs/bpf.
    let entries = unit_entries(&read(UNIT));
    if service_value(&entries, "DynamicUser") == Some("yes") {
        assert!(
            config.pin_path.is_none(),
            "pin_path needs DynamicUser=no (see the unit)"
        );
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(analyze) = program_on_path("systemd-analyze") else {
        have_or_skip(false, "systemd-analyze (Debian package systemd)");
        return;
    };
    // `verify` checks that the executables exist, so the copy points at one that does:
    // the ftp-guard binary next to this test's target directory when cargo built it (a
    // plain `cargo test -p ftp-guard-tests` need not), otherwise /bin/true. The commands'
    // arguments are not executed, only parsed.
    let built = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("ftp-guard")))
        .filter(|p| p.is_file());
    let binary = built.unwrap_or_else(|| PathBuf::from("/bin/true"));
    let scratch = Scratch::new("unit");
    let unit = scratch.0.join("ftp-guard.service");
    let text = read(UNIT);
    assert!(text.contains(BINARY));
    fs::write(&unit, text.replace(BINARY, binary.to_str().unwrap())).unwrap();

    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and unparsable values are only warnings (exit 0): refuse those too.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ftp-guard.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify {} ({}):\n{stderr}",
        unit.display(),
        out.status
    );
}

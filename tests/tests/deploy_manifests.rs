//! The deployment files under `deploy/`: the Kubernetes manifest, the systemd unit and the
//! container build. Nothing here needs a cluster, a container engine or a running systemd:
//! the manifests are parsed and checked field by field, the configurations they carry go
//! through ftp-guard's own parser (`Config::parse`, what `ftp-guard check` runs), the init
//! container's script runs against a scratch directory, and the tools that can judge a
//! file offline (`systemd-analyze verify`, `apt-cache`) do so when the machine has them.
//! In CI (`CI=true`) or under `cargo xtask test` a missing tool is a failure, not a skip.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use ftp_guard::config::{Config, DataplaneKind};
use serde::Deserialize as _;
use serde_norway::Value;

const MANIFEST: &str = "deploy/kubernetes/ftp-guard.yaml";
const UNIT: &str = "deploy/systemd/ftp-guard.service";
const UNIT_CONFIG: &str = "deploy/systemd/ftp-guard.toml";
const CONTAINERFILE: &str = "deploy/container/Containerfile";
const CONTAINER_IGNORE: &str = "deploy/container/Containerfile.dockerignore";
const RUSTUP_SHIM: &str = "deploy/container/rustup-shim";
const SETUP_RS: &str = "xtask/src/setup.rs";

/// The capabilities the daemon needs, each checked by hand to be necessary (README
/// "Deployment"): nothing more may be granted, nothing less works.
const CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "PERFMON", "NET_BIND_SERVICE"];
const CONFIG_DIR: &str = "/etc/ftp-guard";
const CONFIG_PATH: &str = "/etc/ftp-guard/ftp-guard.toml";
const BINARY: &str = "/usr/bin/ftp-guard";
const METRICS_PORT: u64 = 9640;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// CI or `cargo xtask test`: a missing tool fails the test instead of skipping a check.
fn tools_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("FTP_GUARD_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// Skips (returns false) when `what` is missing, unless tools are required.
fn have_or_skip(available: bool, what: &str) -> bool {
    if !available {
        assert!(
            !tools_required(),
            "{what} is missing: `cargo xtask setup` should have installed it"
        );
        eprintln!("skipped: {what} is missing");
    }
    available
}

fn program_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A directory of its own under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
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

// ------------------------------------------------------------------------ Kubernetes --

/// Every YAML document of the manifest, in order.
fn manifest() -> Vec<Value> {
    let text = read(MANIFEST);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{MANIFEST}: {e}")))
        .collect()
}

/// The value at a dotted path; panics naming the path when a step is missing.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| {
        v.get(key)
            .unwrap_or_else(|| panic!("{MANIFEST}: `{path}` is missing (at `{key}`)"))
    })
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{MANIFEST}: `{path}` is not a string"))
}

fn seq_at<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    at(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{MANIFEST}: `{path}` is not a list"))
}

fn strings(values: &[Value]) -> BTreeSet<&str> {
    values
        .iter()
        .map(|v| v.as_str().expect("a list of strings"))
        .collect()
}

/// The one document of `kind`.
fn object<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "{MANIFEST}: expected exactly one {kind}");
    found[0]
}

fn pod_spec(docs: &[Value]) -> &Value {
    at(object(docs, "DaemonSet"), "spec.template.spec")
}

/// The entry of a list of named objects (containers, volumes, env...).
fn named<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{MANIFEST}: no entry named `{name}`"))
}

fn daemon_container(docs: &[Value]) -> &Value {
    named(seq_at(pod_spec(docs), "containers"), "ftp-guard")
}

fn init_container(docs: &[Value]) -> &Value {
    named(seq_at(pod_spec(docs), "initContainers"), "host-sysctls")
}

/// Every container of the pod, init containers included.
fn all_containers(docs: &[Value]) -> Vec<&Value> {
    let spec = pod_spec(docs);
    ["containers", "initContainers"]
        .into_iter()
        .filter_map(|key| spec.get(key).and_then(Value::as_sequence))
        .flatten()
        .collect()
}

/// The ftp-guard.toml carried by the ConfigMap, and its key.
fn configmap_toml(docs: &[Value]) -> (&str, &str) {
    let data = at(object(docs, "ConfigMap"), "data")
        .as_mapping()
        .expect("ConfigMap data is a mapping");
    assert_eq!(data.len(), 1, "the ConfigMap carries one file");
    let (key, value) = data.iter().next().unwrap();
    (
        key.as_str().expect("string key"),
        value.as_str().expect("string value"),
    )
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    str_at(named(seq_at(container, "env"), name), "value")
}

#[test]
fn manifest_holds_namespace_configmap_and_daemonset_in_one_namespace() {
    let docs = manifest();
    let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, "kind")).collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "DaemonSet"]);
    let namespace = str_at(object(&docs, "Namespace"), "metadata.name");
    for doc in &docs {
        assert!(!str_at(doc, "apiVersion").is_empty());
        assert!(!str_at(doc, "metadata.name").is_empty());
    }
    for kind in ["ConfigMap", "DaemonSet"] {
        assert_eq!(
            str_at(object(&docs, kind), "metadata.namespace"),
            namespace,
            "{kind} lives in the Namespace the manifest creates"
        );
    }
    // hostNetwork, hostPath and added capabilities are refused by the baseline level.
    assert_eq!(
        label(
            object(&docs, "Namespace"),
            "pod-security.kubernetes.io/enforce"
        ),
        Some("privileged")
    );
}

/// A label (`at` splits on dots, label keys contain them).
fn label<'a>(doc: &'a Value, key: &str) -> Option<&'a str> {
    doc.get("metadata")?.get("labels")?.get(key)?.as_str()
}

#[test]
fn daemonset_selector_matches_its_pods() {
    let docs = manifest();
    let ds = object(&docs, "DaemonSet");
    assert_eq!(str_at(ds, "apiVersion"), "apps/v1");
    let selector = at(ds, "spec.selector.matchLabels")
        .as_mapping()
        .expect("matchLabels");
    let labels = at(ds, "spec.template.metadata.labels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(labels.get(k.as_str().unwrap()), Some(v), "selector {k:?}");
    }
}

#[test]
fn daemonset_runs_in_the_host_network_with_exactly_the_needed_capabilities() {
    let docs = manifest();
    let spec = pod_spec(&docs);
    assert_eq!(at(spec, "hostNetwork").as_bool(), Some(true));
    assert_eq!(str_at(spec, "dnsPolicy"), "ClusterFirstWithHostNet");
    assert_eq!(
        at(spec, "automountServiceAccountToken").as_bool(),
        Some(false)
    );
    assert_eq!(
        str_at(spec, "securityContext.seccompProfile.type"),
        "RuntimeDefault"
    );
    for key in ["hostPID", "hostIPC"] {
        assert_ne!(spec.get(key).and_then(Value::as_bool), Some(true), "{key}");
    }

    let daemon = daemon_container(&docs);
    let add = strings(seq_at(daemon, "securityContext.capabilities.add"));
    assert_eq!(add, BTreeSet::from(CAPABILITIES), "capabilities added");

    for c in all_containers(&docs) {
        let name = str_at(c, "name");
        let sc = at(c, "securityContext");
        assert_eq!(
            sc.get("privileged").and_then(Value::as_bool),
            Some(false),
            "{name}: privileged must be explicitly false"
        );
        assert_eq!(
            sc.get("allowPrivilegeEscalation").and_then(Value::as_bool),
            Some(false),
            "{name}"
        );
        assert_eq!(
            sc.get("readOnlyRootFilesystem").and_then(Value::as_bool),
            Some(true),
            "{name}"
        );
        assert_eq!(
            strings(seq_at(sc, "capabilities.drop")),
            BTreeSet::from(["ALL"]),
            "{name}: drop ALL"
        );
        let added = sc
            .get("capabilities")
            .and_then(|c| c.get("add"))
            .and_then(Value::as_sequence)
            .map(|a| strings(a))
            .unwrap_or_default();
        assert!(
            !added.contains("SYS_ADMIN") && !added.contains("CAP_SYS_ADMIN"),
            "{name}: SYS_ADMIN is not needed"
        );
    }
    // The init container writes net.* sysctls as uid 0 of the host network namespace:
    // that needs no capability at all.
    let init = init_container(&docs);
    assert!(
        at(init, "securityContext.capabilities")
            .get("add")
            .is_none(),
        "host-sysctls needs no capability"
    );
}

#[test]
fn daemonset_mounts_the_configmap_and_bpffs() {
    let docs = manifest();
    let spec = pod_spec(&docs);
    let volumes = seq_at(spec, "volumes");
    let daemon = daemon_container(&docs);
    let mounts = seq_at(daemon, "volumeMounts");

    let config_volume = named(volumes, "config");
    let configmap_name = str_at(object(&docs, "ConfigMap"), "metadata.name");
    assert_eq!(str_at(config_volume, "configMap.name"), configmap_name);
    let config_mount = named(mounts, "config");
    assert_eq!(str_at(config_mount, "mountPath"), CONFIG_DIR);
    assert_eq!(
        config_mount.get("readOnly").and_then(Value::as_bool),
        Some(true)
    );
    // The file the daemon reads is the ConfigMap's key.
    let (key, _) = configmap_toml(&docs);
    assert_eq!(format!("{CONFIG_DIR}/{key}"), CONFIG_PATH);

    let bpffs = named(volumes, "bpffs");
    assert_eq!(str_at(bpffs, "hostPath.path"), "/sys/fs/bpf");
    assert_eq!(str_at(bpffs, "hostPath.type"), "Directory");
    let bpffs_mount = named(mounts, "bpffs");
    assert_eq!(str_at(bpffs_mount, "mountPath"), "/sys/fs/bpf");
    // pin_path must be on that mount, and writable, or the pod fails at start.
    let config = Config::parse(configmap_toml(&docs).1).unwrap();
    if let Some(pin) = &config.pin_path {
        assert!(
            pin.starts_with("/sys/fs/bpf/"),
            "pin_path {}",
            pin.display()
        );
        assert_ne!(
            bpffs_mount.get("readOnly").and_then(Value::as_bool),
            Some(true),
            "pin_path needs a writable bpffs"
        );
    }

    // The host's net sysctls reach the init container only, never the daemon.
    let sysctl_volume = named(volumes, "host-proc-sys-net");
    assert_eq!(str_at(sysctl_volume, "hostPath.path"), "/proc/sys/net");
    assert!(
        mounts
            .iter()
            .all(|m| str_at(m, "name") != "host-proc-sys-net"),
        "the daemon does not mount the host's /proc/sys/net"
    );
    let init_mount = named(
        seq_at(init_container(&docs), "volumeMounts"),
        "host-proc-sys-net",
    );
    assert_eq!(str_at(init_mount, "mountPath"), "/host/proc/sys/net");
    // Every hostPath is one of these three: nothing else of the host is exposed.
    let host_paths: BTreeSet<&str> = volumes
        .iter()
        .filter_map(|v| v.get("hostPath"))
        .map(|h| str_at(h, "path"))
        .collect();
    assert_eq!(host_paths, BTreeSet::from(["/sys/fs/bpf", "/proc/sys/net"]));
}

#[test]
fn daemonset_runs_the_configured_file_with_probes_resources_and_rollout() {
    let docs = manifest();
    let ds = object(&docs, "DaemonSet");
    let spec = pod_spec(&docs);
    let daemon = daemon_container(&docs);

    // The image's ENTRYPOINT is the binary: args select `run` on the mounted file.
    assert_eq!(
        seq_at(daemon, "args")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect::<Vec<_>>(),
        ["run", "--config", CONFIG_PATH]
    );
    for c in all_containers(&docs) {
        let image = str_at(c, "image");
        let (_, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("image `{image}` has no tag"));
        assert!(
            !tag.is_empty() && tag != "latest",
            "image `{image}`: pin a version"
        );
    }
    assert_eq!(
        str_at(init_container(&docs), "image"),
        str_at(daemon, "image"),
        "the init container reuses the daemon's image (its /bin/sh)"
    );

    // Probes: the admin endpoint of the configuration the pod runs. With hostNetwork the
    // kubelet reaches its loopback address.
    let config = Config::parse(configmap_toml(&docs).1).unwrap();
    let admin = config.admin_listen;
    assert_eq!(u64::from(admin.port()), METRICS_PORT, "admin_listen port");
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = at(daemon, &format!("{probe}.httpGet"));
        assert_eq!(str_at(get, "path"), path, "{probe}");
        assert_eq!(at(get, "port").as_u64(), Some(METRICS_PORT), "{probe}");
        if admin.ip().is_loopback() {
            assert_eq!(
                get.get("host").and_then(Value::as_str),
                Some(admin.ip().to_string().as_str()),
                "{probe}: admin_listen is {admin}, the probe must go there"
            );
        }
    }
    let ports = seq_at(daemon, "ports");
    assert_eq!(
        at(named(ports, "metrics"), "containerPort").as_u64(),
        Some(METRICS_PORT)
    );
    assert_eq!(at(named(ports, "ftp"), "containerPort").as_u64(), Some(21));

    for c in all_containers(&docs) {
        let name = str_at(c, "name");
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                let path = format!("resources.{kind}.{resource}");
                assert!(
                    c.get("resources")
                        .and_then(|r| r.get(kind))
                        .and_then(|r| r.get(resource))
                        .is_some(),
                    "{name}: {path} is not set"
                );
            }
        }
    }

    assert_eq!(str_at(ds, "spec.updateStrategy.type"), "RollingUpdate");
    assert_eq!(
        at(ds, "spec.updateStrategy.rollingUpdate.maxUnavailable").as_u64(),
        Some(1)
    );
    assert_eq!(
        at(ds, "spec.updateStrategy.rollingUpdate.maxSurge").as_u64(),
        Some(0),
        "two pods on one node would fight over port 21 and the attach points"
    );
    // The kubelet's SIGKILL must not cut ftp-guard's own graceful stop short.
    let grace = at(spec, "terminationGracePeriodSeconds").as_u64().unwrap();
    assert!(
        grace >= config.shutdown_grace_secs + 5,
        "terminationGracePeriodSeconds {grace} vs shutdown_grace_secs {}",
        config.shutdown_grace_secs
    );
    assert!(
        !at(spec, "nodeSelector").as_mapping().unwrap().is_empty(),
        "nodeSelector"
    );
    assert!(!seq_at(spec, "tolerations").is_empty(), "tolerations");
}

#[test]
fn configmap_carries_a_valid_kernel_dataplane_config() {
    let docs = manifest();
    let (key, toml) = configmap_toml(&docs);
    assert_eq!(key, "ftp-guard.toml");
    let config = Config::parse(toml).unwrap_or_else(|e| panic!("ConfigMap {key}: {e}"));
    let services: Vec<_> = config.services().collect();
    assert!(!services.is_empty());
    for s in &services {
        assert_eq!(s.dataplane, DataplaneKind::Kernel, "service `{}`", s.name);
    }
    assert_eq!(services[0].client_interface.as_deref(), Some("eth0"));
}

#[test]
fn init_container_covers_every_interface_and_data_range_of_the_configmap() {
    let docs = manifest();
    let config = Config::parse(configmap_toml(&docs).1).unwrap();
    let init = init_container(&docs);
    let interfaces: BTreeSet<&str> = env_value(init, "FTP_GUARD_INTERFACES")
        .split_whitespace()
        .collect();
    let ranges: BTreeSet<&str> = env_value(init, "FTP_GUARD_DATA_PORTS")
        .split_whitespace()
        .collect();
    let mut wanted_interfaces = BTreeSet::new();
    let mut wanted_ranges = BTreeSet::new();
    for s in config.services() {
        wanted_interfaces.extend(s.interfaces().into_iter().map(str::to_owned));
        wanted_ranges.insert(s.data_ports.to_string());
    }
    assert_eq!(
        interfaces,
        wanted_interfaces.iter().map(String::as_str).collect(),
        "FTP_GUARD_INTERFACES must list every client_interface/origin_interface"
    );
    assert_eq!(
        ranges,
        wanted_ranges.iter().map(String::as_str).collect(),
        "FTP_GUARD_DATA_PORTS must list every data_ports range"
    );
}

/// The init container's script (its `sh -c` argument).
fn init_script(docs: &[Value]) -> String {
    let init = init_container(docs);
    assert_eq!(
        seq_at(init, "command")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect::<Vec<_>>(),
        ["/bin/sh", "-c"]
    );
    let args = seq_at(init, "args");
    assert_eq!(args.len(), 1);
    args[0].as_str().unwrap().to_owned()
}

/// Runs the script against a fake `/proc/sys/net` tree.
fn run_init_script(script: &str, net: &Path, interfaces: &str, ranges: &str) -> (bool, String) {
    let out = Command::new("sh")
        .args(["-c", script])
        .env("FTP_GUARD_SYSCTL_NET", net)
        .env("FTP_GUARD_INTERFACES", interfaces)
        .env("FTP_GUARD_DATA_PORTS", ranges)
        .output()
        .expect("running sh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The init container's output on a node with `net.ipv4.ip_forward = 0`: no warning, and
/// nothing about forwarding (the kernel path does not need it).
fn assert_quiet_about_forwarding(log: &str) {
    let lower = log.to_lowercase();
    assert!(
        !lower.contains("warn") && !lower.contains("forward"),
        "the init container must not warn about IP forwarding:\n{log}"
    );
}

#[test]
fn init_container_script_merges_sysctls_idempotently() {
    let docs = manifest();
    let script = init_script(&docs);
    let scratch = Scratch::new("sysctl");
    let ipv4 = scratch.0.join("ipv4");
    fs::create_dir_all(ipv4.join("conf/eth0")).unwrap();
    fs::create_dir_all(ipv4.join("conf/eth1")).unwrap();
    fs::write(ipv4.join("conf/eth0/accept_local"), "0\n").unwrap();
    fs::write(ipv4.join("conf/eth1/accept_local"), "0\n").unwrap();
    // Forwarding off, as operators may keep it: the kernel path does not need it, so the
    // script must neither warn about it nor touch it.
    fs::write(ipv4.join("ip_forward"), "0\n").unwrap();
    // Someone else's reservation is kept.
    fs::write(ipv4.join("ip_local_reserved_ports"), "8080\n").unwrap();
    let reserved = || {
        fs::read_to_string(ipv4.join("ip_local_reserved_ports"))
            .unwrap()
            .trim()
            .to_owned()
    };

    for _ in 0..2 {
        let (ok, log) =
            run_init_script(&script, &scratch.0, "eth0 eth1", "40000-40999 50000-50009");
        assert!(ok, "script failed:\n{log}");
        assert_eq!(reserved(), "8080,40000-40999,50000-50009", "log:\n{log}");
        for i in ["eth0", "eth1"] {
            let v = fs::read_to_string(ipv4.join(format!("conf/{i}/accept_local"))).unwrap();
            assert_eq!(v.trim(), "1", "{i}");
        }
        assert_quiet_about_forwarding(&log);
    }

    // The kernel prints an empty reservation list as an empty line.
    fs::write(ipv4.join("ip_local_reserved_ports"), "\n").unwrap();
    let (ok, log) = run_init_script(&script, &scratch.0, "eth0", "40000-40999");
    assert!(ok, "{log}");
    assert_eq!(reserved(), "40000-40999");
    assert_quiet_about_forwarding(&log);
    assert_eq!(
        fs::read_to_string(ipv4.join("ip_forward")).unwrap(),
        "0\n",
        "the script must leave ip_forward alone"
    );

    // A missing interface stops the pod here, with the name in the log.
    let (ok, log) = run_init_script(&script, &scratch.0, "eth9", "40000-40999");
    assert!(
        !ok,
        "an unknown interface must fail the init container:\n{log}"
    );
    assert!(log.contains("eth9"), "{log}");
}

// --------------------------------------------------------------------------- systemd --

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

// ------------------------------------------------------------------------- container --

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
        "tests",
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

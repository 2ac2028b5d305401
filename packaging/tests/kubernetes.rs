//! deploy/kubernetes/ftp-guard.yaml: the manifest parsed and checked field by field, the
//! configuration its ConfigMap carries through ftp-guard's own parser (`Config::parse`, what
//! `ftp-guard check` runs), and the init container's script run against a scratch directory.
use std::{collections::BTreeSet, fs, path::Path, process::Command};

use ftp_guard::config::{Config, DataplaneKind};
use ftp_guard_packaging::{
    CAPABILITIES, CONFIG_DIR, CONFIG_PATH, MANIFEST, METRICS_PORT, Scratch, read,
};
use serde::Deserialize as _;
use serde_norway::Value;

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

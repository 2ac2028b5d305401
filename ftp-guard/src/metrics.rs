//! Prometheus metrics: counters the proxy updates as things happen, plus values read at
//! scrape time (dataplane totals, the ban list, the kernel's packet counters and ACL rule
//! counters). Every name is listed in README.md ("Metrics").
use std::{
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    admin::{AclRuleStatus, acl_rules},
    bpf::{self, Counters},
    dataplane::Dataplane,
    policy::bans::Bans,
    sync::LockUnpoisoned as _,
};

type Labels = Vec<(&'static str, String)>;

/// (name, help, how to read it from a dataplane snapshot).
type SnapshotCounter = (
    &'static str,
    &'static str,
    fn(&crate::dataplane::Snapshot) -> u64,
);

fn service(name: &str) -> Labels {
    vec![("service", name.to_owned())]
}

/// The metrics the proxy updates directly.
#[derive(Debug)]
pub struct Metrics {
    sessions_active: Family<Labels, Gauge>,
    sessions_total: Family<Labels, Counter>,
    sessions_rejected: Family<Labels, Counter>,
    leases_installed: Family<Labels, Counter>,
    leases_failed: Family<Labels, Counter>,
    origin_connect_errors: Family<Labels, Counter>,
    origin_connect_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Audit log records dropped because its writer was behind.
    pub audit_dropped: Counter,
}

fn connect_histogram() -> Histogram {
    // 0.5 ms … ~4 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            sessions_active: Family::default(),
            sessions_total: Family::default(),
            sessions_rejected: Family::default(),
            leases_installed: Family::default(),
            leases_failed: Family::default(),
            origin_connect_errors: Family::default(),
            origin_connect_seconds: Family::new_with_constructor(connect_histogram),
            audit_dropped: Counter::default(),
        }
    }

    pub fn session_started(&self, svc: &str) {
        self.sessions_total.get_or_create(&service(svc)).inc();
        self.sessions_active.get_or_create(&service(svc)).inc();
    }

    pub fn session_ended(&self, svc: &str) {
        self.sessions_active.get_or_create(&service(svc)).dec();
    }

    /// `reason`: limit, origin_unreachable, origin_silent (connected but no greeting), ipv6.
    pub fn session_rejected(&self, svc: &str, reason: &'static str) {
        let mut labels = service(svc);
        labels.push(("reason", reason.to_owned()));
        self.sessions_rejected.get_or_create(&labels).inc();
    }

    /// `mode`: passive or active.
    pub fn lease_installed(&self, svc: &str, mode: &'static str) {
        let mut labels = service(svc);
        labels.push(("mode", mode.to_owned()));
        self.leases_installed.get_or_create(&labels).inc();
    }

    /// `reason`: exhausted, table_full, error.
    pub fn lease_failed(&self, svc: &str, reason: &'static str) {
        let mut labels = service(svc);
        labels.push(("reason", reason.to_owned()));
        self.leases_failed.get_or_create(&labels).inc();
    }

    pub fn origin_connected(&self, svc: &str, took: Duration) {
        self.origin_connect_seconds
            .get_or_create(&service(svc))
            .observe(took.as_secs_f64());
    }

    pub fn origin_connect_failed(&self, svc: &str) {
        self.origin_connect_errors
            .get_or_create(&service(svc))
            .inc();
    }

    /// A registry with these metrics and the scrape-time collectors.
    pub fn registry(self: &Arc<Self>, sources: Arc<Sources>) -> Registry {
        let mut r = Registry::with_prefix("ftp_guard");
        r.register(
            "sessions_active",
            "Control sessions open now",
            self.sessions_active.clone(),
        );
        let counters = [
            (
                "sessions",
                "Control sessions accepted",
                &self.sessions_total,
            ),
            (
                "sessions_rejected",
                "Clients turned away, by reason (limit, origin_unreachable, origin_silent, ipv6)",
                &self.sessions_rejected,
            ),
            (
                "leases_installed",
                "Data leases installed, by mode (passive, active)",
                &self.leases_installed,
            ),
            (
                "leases_failed",
                "Data leases that could not be installed (exhausted, table_full, error)",
                &self.leases_failed,
            ),
            (
                "origin_connect_errors",
                "Control connections to the origin that failed",
                &self.origin_connect_errors,
            ),
        ];
        for (name, help, family) in counters {
            r.register(name, help, family.clone());
        }
        r.register(
            "origin_connect_seconds",
            "Time to connect to the origin",
            self.origin_connect_seconds.clone(),
        );
        r.register(
            "audit_dropped",
            "Audit log records dropped because the writer was behind",
            self.audit_dropped.clone(),
        );
        r.register_collector(Box::new(sources));
        r
    }
}

/// What is read at scrape time: each service's dataplane, the ban list and the kernel
/// object.
#[derive(Default)]
pub struct Sources {
    pub services: Mutex<Vec<(String, Weak<dyn Dataplane>)>>,
    pub bans: Mutex<Option<Arc<Bans>>>,
    pub kernel: Mutex<Option<bpf::WeakHandle>>,
    /// The services' names by their index in the kernel's policy maps (the ACL rules'
    /// `service` label).
    pub policy_services: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let services: Vec<(String, Arc<dyn Dataplane>)> = self
            .services
            .lock_unpoisoned()
            .iter()
            .filter_map(|(n, w)| Some((n.clone(), w.upgrade()?)))
            .collect();
        let snapshots: Vec<_> = services
            .iter()
            .map(|(n, d)| (n.as_str(), d.snapshot()))
            .collect();
        let counters: [SnapshotCounter; 8] = [
            (
                "leases_used",
                "Leases whose data connection was opened",
                |s| s.used,
            ),
            ("leases_expired", "Leases that expired unused", |s| {
                s.expired
            }),
            (
                "leases_revoked",
                "Leases revoked unused (new PASV/PORT, session end)",
                |s| s.revoked,
            ),
            (
                "data_bytes_to_client",
                "Data bytes carried to clients",
                |s| s.bytes_to_client,
            ),
            (
                "data_bytes_to_origin",
                "Data bytes carried to origins",
                |s| s.bytes_to_origin,
            ),
            ("flows_closed", "Data connections ended by FIN/RST", |s| {
                s.flows_closed
            }),
            (
                "flows_idle",
                "Data connections removed after the idle timeout",
                |s| s.flows_idle,
            ),
            (
                "leases_strangers_refused",
                "Data connections from anyone but the lease's peer (userspace relay)",
                |s| s.strangers_refused,
            ),
        ];
        for (name, help, get) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (svc, snap) in &snapshots {
                let labels = service(svc);
                ConstCounter::new(get(snap)).encode(family.encode_family(&labels)?)?;
            }
        }
        let help = "Leases waiting for or carrying a data connection";
        let mut family =
            encoder.encode_descriptor("leases_active", help, None, MetricType::Gauge)?;
        for (svc, snap) in &snapshots {
            ConstGauge::new(snap.active as i64).encode(family.encode_family(&service(svc))?)?;
        }
        let bans = self.bans.lock_unpoisoned().clone();
        if let Some(bans) = bans {
            encode_bans(&bans, &mut encoder)?;
        }
        let (counters, rules) = self.kernel_counts();
        if let Some(counters) = counters {
            let help = "Packets seen by the XDP/TC programs, by reason and verdict";
            let mut family =
                encoder.encode_descriptor("kernel_packets", help, None, MetricType::Counter)?;
            for (counter, value) in counters.0 {
                let labels: Labels = vec![
                    ("reason", counter.name().to_owned()),
                    (
                        "verdict",
                        if counter.is_drop() { "drop" } else { "pass" }.to_owned(),
                    ),
                ];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(rules) = rules {
            encode_acl_rules(&rules, &mut encoder)?;
        }
        Ok(())
    }
}

/// `acl_packets_total{service,block,action}`: one sample per rule in the kernel (at most
/// `MAX_ACL_RULES`), the catch-all's block `*`.
fn encode_acl_rules(
    rules: &[AclRuleStatus],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let help =
        "Packets each ACL rule decided in XDP/TC (deny: dropped), by service, block and action";
    let mut family = encoder.encode_descriptor("acl_packets", help, None, MetricType::Counter)?;
    for rule in rules {
        let labels: Labels = vec![
            ("service", rule.service.clone()),
            ("block", rule.block.clone()),
            ("action", rule.action.clone()),
        ];
        ConstCounter::new(rule.packets).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `bans_active` (gateway-wide: the list is one) and `bans_total{reason}`.
fn encode_bans(bans: &Bans, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let now = tokio::time::Instant::now().into_std();
    let active = bans.list(now).len() as i64;
    let help = "Client addresses banned now (every service refuses them)";
    let family = encoder.encode_descriptor("bans_active", help, None, MetricType::Gauge)?;
    ConstGauge::new(active).encode(family)?;
    let help = "Client addresses banned since start, by reason (login_failures)";
    let mut family = encoder.encode_descriptor("bans", help, None, MetricType::Counter)?;
    for (reason, total) in bans.totals() {
        let labels: Labels = vec![("reason", reason.name().to_owned())];
        ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Sources {
    /// The kernel programs' packet counters and ACL rules, each when the kernel path is
    /// set up and the map readable.
    fn kernel_counts(&self) -> (Option<Counters>, Option<Vec<AclRuleStatus>>) {
        let Some(kernel) = self
            .kernel
            .lock_unpoisoned()
            .as_ref()
            .and_then(bpf::WeakHandle::upgrade)
        else {
            return (None, None);
        };
        let names = self.policy_services.lock_unpoisoned().clone();
        let kernel = kernel.lock();
        (kernel.counters().ok(), acl_rules(&kernel, &names).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family a scrape shows, in order, once each has a sample (no dataplane and no
    /// kernel registered: the snapshot families without samples).
    #[test]
    fn the_registry_holds_every_family() {
        let metrics = Arc::new(Metrics::new());
        metrics.session_started("ftp");
        metrics.session_rejected("ftp", "limit");
        metrics.lease_installed("ftp", "passive");
        metrics.lease_failed("ftp", "exhausted");
        metrics.origin_connect_failed("ftp");
        metrics.origin_connected("ftp", Duration::from_millis(1));
        let registry = metrics.registry(Arc::new(Sources::default()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            families,
            [
                "ftp_guard_sessions_active gauge",
                "ftp_guard_sessions counter",
                "ftp_guard_sessions_rejected counter",
                "ftp_guard_leases_installed counter",
                "ftp_guard_leases_failed counter",
                "ftp_guard_origin_connect_errors counter",
                "ftp_guard_origin_connect_seconds histogram",
                "ftp_guard_audit_dropped counter",
                "ftp_guard_leases_used counter",
                "ftp_guard_leases_expired counter",
                "ftp_guard_leases_revoked counter",
                "ftp_guard_data_bytes_to_client counter",
                "ftp_guard_data_bytes_to_origin counter",
                "ftp_guard_flows_closed counter",
                "ftp_guard_flows_idle counter",
                "ftp_guard_leases_strangers_refused counter",
                "ftp_guard_leases_active gauge",
            ]
        );
        assert!(
            text.contains("ftp_guard_sessions_active{service=\"ftp\"} 1\n"),
            "{text}"
        );
    }

    /// The ACL family, whole: one sample per rule, labelled like `/status` shows it.
    #[test]
    fn acl_rules_are_one_counter_each() {
        #[derive(Debug)]
        struct Rules(Vec<AclRuleStatus>);
        impl Collector for Rules {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode_acl_rules(&self.0, &mut encoder)
            }
        }
        let rule = |service: &str, block: &str, action: &str, packets| AclRuleStatus {
            service: service.into(),
            block: block.into(),
            action: action.into(),
            packets,
        };
        let mut registry = Registry::with_prefix("ftp_guard");
        registry.register_collector(Box::new(Rules(vec![
            rule("ftp", "192.0.2.0/24", "allow", 12),
            rule("ftp", "*", "deny", 3),
        ])));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert_eq!(
            text,
            "# HELP ftp_guard_acl_packets Packets each ACL rule decided in XDP/TC (deny: dropped), by service, block and action\n\
             # TYPE ftp_guard_acl_packets counter\n\
             ftp_guard_acl_packets_total{service=\"ftp\",block=\"192.0.2.0/24\",action=\"allow\"} 12\n\
             ftp_guard_acl_packets_total{service=\"ftp\",block=\"*\",action=\"deny\"} 3\n\
             # EOF\n"
        );
    }

    /// With a ban list: its two families, whole, after the dataplanes'.
    #[test]
    fn bans_are_counted_and_gauged() {
        let now = tokio::time::Instant::now().into_std();
        let bans = crate::policy::bans::banned_for_tests(
            &["192.0.2.7", "192.0.2.8"],
            Duration::from_secs(60),
            now,
        );
        bans.unban("192.0.2.8".parse().unwrap());
        let sources = Arc::new(Sources::default());
        *sources.bans.lock().unwrap() = Some(bans);
        let registry = Arc::new(Metrics::new()).registry(sources);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let start = text.find("# HELP ftp_guard_bans_active").unwrap();
        assert_eq!(
            &text[start..],
            "# HELP ftp_guard_bans_active Client addresses banned now (every service refuses them)\n\
             # TYPE ftp_guard_bans_active gauge\n\
             ftp_guard_bans_active 1\n\
             # HELP ftp_guard_bans Client addresses banned since start, by reason (login_failures)\n\
             # TYPE ftp_guard_bans counter\n\
             ftp_guard_bans_total{reason=\"login_failures\"} 2\n\
             # EOF\n"
        );
    }
}

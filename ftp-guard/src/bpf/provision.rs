//! Provisioning the kernel data path for a set of services: loads the object (adopting
//! pins), protects every service's data-port range, attaches to every interface once (the
//! policy is [`super::attach`]'s), prepares the host (reserved ports, sysctls), keeps the
//! guarded IPv6 addresses current, and starts the reader that routes the programs' events
//! to the services' dataplanes. A reload brings all of it in line with the new services.
use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tracing::{debug, info, warn};

use super::{
    Bpf, ControlGuard, Handle, MapSizes, ProtectedRange, ProtectedService, WeakHandle,
    events::{EventRouter, read_events},
    host::{host_addresses, local_ipv6_addresses, origin_side_ip, reserve_ports, set_sysctl},
};
use crate::config::{DataplaneKind, Service};

/// The kernel data path set up for a set of services: the loaded object with its
/// programs attached, each service's NAT address, and the events' way to the services'
/// dataplanes.
pub struct Provisioned {
    pub bpf: Handle,
    pub nat_ips: NatIps,
    pub events: Arc<EventRouter>,
}

/// Each kernel service's NAT address: (service name, NAT address), in the order given.
pub type NatIps = Vec<(String, Ipv4Addr)>;

/// How often the host's IPv6 addresses are read again (SLAAC, temporary addresses and
/// operators add them at any time; each must be guarded from when it appears).
const LOCAL_IPV6_EVERY: Duration = Duration::from_secs(5);

impl Provisioned {
    /// Loads the eBPF object, protects every service's range, attaches to every interface
    /// once and prepares the host (reserved ports, sysctls). Logs what it did. Must run
    /// inside a tokio runtime (the event reader and the IPv6 refresher are tasks).
    pub fn setup(
        services: &[&Service],
        max_leases: u32,
        pin: Option<&std::path::Path>,
    ) -> anyhow::Result<Provisioned> {
        let mut bpf = Bpf::load_pinned(
            MapSizes {
                max_leases,
                max_flows: max_leases.saturating_mul(2),
            },
            pin,
        )?;
        let events = Arc::new(EventRouter::default());
        if let Some(ring) = bpf.take_events() {
            tokio::spawn(read_events(ring, events.clone()));
        }
        let mut provisioned = Provisioned {
            bpf: Handle::new(bpf),
            nat_ips: Vec::new(),
            events,
        };
        provisioned.update(services)?;
        if pin.is_some() {
            // What a previous process left that this configuration no longer accounts for.
            let mut bpf = provisioned.bpf.lock();
            let interfaces: Vec<&str> = services.iter().flat_map(|s| s.interfaces()).collect();
            let detached = bpf.detach_unconfigured_links(&interfaces)?;
            if !detached.is_empty() {
                info!(
                    ?detached,
                    "detached pinned links of interfaces no longer configured"
                );
            }
            let swept = bpf.sweep_unclaimed_flows()?;
            if swept > 0 {
                info!(
                    swept,
                    "removed pinned flow entries no connection accounts for"
                );
            }
        }
        tokio::spawn(refresh_local_ipv6(provisioned.bpf.downgrade()));
        Ok(provisioned)
    }

    /// Brings a loaded kernel path in line with `services`: NAT addresses, protected
    /// ranges (replaced in one map write) and attachments to interfaces not yet attached.
    /// Interfaces no longer named stay attached until the process exits (their ranges are
    /// gone, so the programs pass everything there). A userspace service among them is
    /// guarded only: its range admits the relay's clients (admit leases), on its client
    /// interface.
    pub fn update(&mut self, services: &[&Service]) -> anyhow::Result<()> {
        let (nat_ips, ranges) = nat_ips_and_ranges(services)?;
        let mut bpf = self.bpf.lock();
        for s in services {
            // A relay needs the guard where clients come from only.
            let interfaces = match s.dataplane {
                DataplaneKind::Kernel => s.interfaces(),
                DataplaneKind::Userspace => s.client_interface.iter().map(String::as_str).collect(),
            };
            for interface in interfaces {
                if bpf.attachments().iter().any(|(a, _)| a == interface) {
                    continue;
                }
                bpf.attach_data_path(interface, s.kernel_hook)
                    .with_context(|| format!("service `{}`: attaching to {interface}", s.name))?;
                set_sysctl(&format!("net/ipv4/conf/{interface}/accept_local"), "1");
            }
        }
        // Each service's ACL before the ranges that give it its index, and rules of
        // services gone after (see `Bpf::set_acl` for the order within one service).
        for (index, s) in services.iter().enumerate() {
            bpf.set_acl(index as u32, &s.allow, &s.deny)
                .with_context(|| format!("service `{}`: writing its ACL", s.name))?;
        }
        bpf.set_protected_services(&ranges)?;
        bpf.clear_acl_from(services.len() as u32)?;
        // IPv6 is not carried: the programs drop IPv6 to the data ports of these addresses.
        bpf.set_local_ipv6(&local_ipv6_addresses())?;
        drop(bpf);
        reserve_ports(services.iter().map(|s| s.data_ports));
        self.nat_ips = nat_ips;
        Ok(())
    }
}

/// Each kernel service's NAT address (configured, or the gateway's address towards its
/// origin) and every service's protected range and control endpoint, in the order of
/// `services` (their index in the policy maps). Refuses two services whose data ports
/// overlap on one NAT address.
fn nat_ips_and_ranges(services: &[&Service]) -> anyhow::Result<(NatIps, Vec<ProtectedService>)> {
    let mut nat_ips = Vec::new();
    let mut ranges = Vec::new();
    for s in services {
        let addresses = s.ipv4()?;
        let control = Some(ControlGuard {
            port: addresses.listen.port(),
            syn_rate: s.syn_rate_per_client,
            syn_burst: s.syn_burst_per_client,
            prefix_syn_rate: s.syn_rate_per_prefix,
            prefix_syn_burst: s.syn_burst_per_prefix,
        });
        if s.dataplane == DataplaneKind::Userspace {
            let range = ProtectedRange {
                public_ip: addresses.public_ip,
                first_port: s.data_ports.first,
                last_port: s.data_ports.last,
                nat_ip: None,
                active_port_20: false,
            };
            ranges.push(ProtectedService { range, control });
            continue;
        }
        let nat_ip = match addresses.nat_ip {
            Some(ip) => ip,
            None => origin_side_ip(*addresses.origin.ip()).with_context(|| {
                format!(
                    "service `{}`: cannot find the address that reaches {}; set nat_ip",
                    s.name, s.origin
                )
            })?,
        };
        if s.origin_interface.is_none() {
            check_origin_side_attached(s, nat_ip)?;
        }
        nat_ips.push((s.name.clone(), nat_ip));
        let range = ProtectedRange {
            public_ip: addresses.public_ip,
            first_port: s.data_ports.first,
            last_port: s.data_ports.last,
            nat_ip: Some(nat_ip),
            active_port_20: s.active_mode && s.active_from_port_20,
        };
        ranges.push(ProtectedService { range, control });
    }
    // Leases and flows on a NAT address are keyed by its ports: two services sharing one
    // must not share ports (each keeps its own books).
    let nat_services: Vec<_> = services
        .iter()
        .filter(|s| s.dataplane == DataplaneKind::Kernel)
        .collect();
    for (i, a) in nat_services.iter().enumerate() {
        for (j, b) in nat_services.iter().enumerate().skip(i + 1) {
            if nat_ips[i].1 == nat_ips[j].1 && a.data_ports.overlaps(&b.data_ports) {
                anyhow::bail!(
                    "services `{}` and `{}` both use the NAT address {} with overlapping \
                     data_ports ({} and {}): give them separate ranges or separate nat_ip",
                    a.name,
                    b.name,
                    nat_ips[i].1,
                    a.data_ports,
                    b.data_ports
                );
            }
        }
    }
    Ok((nat_ips, ranges))
}

/// Keeps the programs' list of the host's IPv6 addresses current, until the kernel path
/// is gone.
async fn refresh_local_ipv6(bpf: WeakHandle) {
    let mut tick = tokio::time::interval(LOCAL_IPV6_EVERY);
    let mut known = Vec::new();
    loop {
        tick.tick().await;
        let Some(bpf) = bpf.upgrade() else {
            return;
        };
        let now = local_ipv6_addresses();
        if now == known {
            continue;
        }
        let result = bpf.lock().set_local_ipv6(&now);
        match result {
            Ok(()) => {
                debug!(addresses = now.len(), "guarded IPv6 addresses updated");
                known = now;
            }
            Err(e) => warn!(error = %e, "cannot update the guarded IPv6 addresses"),
        }
    }
}

/// Without `origin_interface` the programs are attached only to `client_interface`: the
/// origin's side of every data connection must arrive there too, or its packets reach the
/// stack un-NATed and the transfer hangs. Refuses the configuration when the gateway's
/// origin-side address lives on another interface.
fn check_origin_side_attached(s: &Service, nat_ip: Ipv4Addr) -> anyhow::Result<()> {
    let holders: Vec<String> = host_addresses()?
        .into_iter()
        .filter(|(_, a)| *a == Some(std::net::IpAddr::V4(nat_ip)))
        .map(|(name, _)| name)
        .collect();
    let attached = s.interfaces();
    if holders.is_empty() || holders.iter().any(|h| attached.contains(&h.as_str())) {
        return Ok(());
    }
    anyhow::bail!(
        "service `{}`: the origin {} is reached through `{}` (the gateway's address {nat_ip} \
         is there), but the kernel data path would attach only to `{}`: set \
         origin_interface = \"{}\"",
        s.name,
        s.origin.ip(),
        holders[0],
        attached.join("`, `"),
        holders[0]
    )
}

//! `/status`: the model (what `ftp-guard status` deserializes and renders) and how it is
//! read from the running gateway; also the ACL rules as operators see them (by service
//! name), which `/metrics` reads the same way.
use serde::{Deserialize, Serialize};

use super::AdminState;
use crate::{
    bpf::{AclAction, Bpf, BpfError},
    dataplane::{LeaseInfo, Snapshot},
};

/// `/status`, also the input of `ftp-guard status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: f64,
    pub services: Vec<ServiceStatus>,
    /// The bans in force (one list for every service), by address.
    #[serde(default)]
    pub bans: Vec<BanStatus>,
    pub kernel: Option<KernelStatus>,
}

/// One ban: the address every service refuses, the service whose policy banned it.
#[derive(Debug, Serialize, Deserialize)]
pub struct BanStatus {
    pub address: String,
    pub service: String,
    pub remaining_secs: f64,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub listen: String,
    pub origin: String,
    pub public_ip: String,
    pub dataplane: String,
    pub sessions: Vec<SessionStatus>,
    pub leases: Vec<LeaseInfo>,
    pub totals: Snapshot,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SessionStatus {
    pub id: u64,
    pub client: String,
    pub age_secs: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KernelStatus {
    /// (interface, mode)
    pub attachments: Vec<(String, String)>,
    /// (counter, packets)
    pub counters: Vec<(String, u64)>,
    /// Every service's ACL rules with the packets each decided.
    #[serde(default)]
    pub acl_rules: Vec<AclRuleStatus>,
}

/// One ACL rule in the kernel with the packets it decided (dropped for `deny`, passed on
/// to the other checks for `allow`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRuleStatus {
    pub service: String,
    /// The source block; `*` for the catch-all deny of a service with an `allow` list.
    pub block: String,
    /// `allow` or `deny`.
    pub action: String,
    pub packets: u64,
}

/// The block column of the catch-all rule.
pub const CATCH_ALL: &str = "*";

/// The kernel's ACL rules, by service, most specific first. `services` names the services
/// by their index in the policy maps; a rule of an index not (or no longer) named shows
/// as `#INDEX` (a reload between writing the maps and publishing the new services).
pub fn acl_rules(kernel: &Bpf, services: &[String]) -> Result<Vec<AclRuleStatus>, BpfError> {
    Ok(kernel
        .acl_counts()?
        .into_iter()
        .map(|rule| AclRuleStatus {
            service: services
                .get(rule.service as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{}", rule.service)),
            block: rule
                .block
                .map_or_else(|| CATCH_ALL.to_owned(), |b| b.to_string()),
            action: match rule.action {
                AclAction::Allow => "allow",
                AclAction::Deny => "deny",
            }
            .to_owned(),
            packets: rule.packets,
        })
        .collect())
}

/// The gateway as of now.
pub(super) fn status(state: &AdminState) -> Status {
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: state.started.elapsed().as_secs_f64(),
        services: state
            .services()
            .iter()
            .map(|c| ServiceStatus {
                name: c.service.name.clone(),
                listen: c.service.listen.to_string(),
                origin: c.service.origin.to_string(),
                public_ip: c.service.public_ip().to_string(),
                dataplane: format!("{:?}", c.service.dataplane).to_lowercase(),
                sessions: c
                    .open_sessions()
                    .into_iter()
                    .map(|(id, s)| SessionStatus {
                        id,
                        client: s.client.to_string(),
                        age_secs: s.since.elapsed().as_secs_f64(),
                    })
                    .collect(),
                leases: c.dataplane.leases(),
                totals: c.dataplane.snapshot(),
            })
            .collect(),
        bans: ban_status(state),
        kernel: kernel_status(state),
    }
}

/// The bans in force now.
fn ban_status(state: &AdminState) -> Vec<BanStatus> {
    let Some(bans) = state.bans() else {
        return Vec::new();
    };
    let now = tokio::time::Instant::now().into_std();
    bans.list(now)
        .into_iter()
        .map(|b| BanStatus {
            address: b.address.to_string(),
            service: b.service,
            remaining_secs: b.until.saturating_duration_since(now).as_secs_f64(),
            reason: b.reason.name().to_owned(),
        })
        .collect()
}

/// The kernel data path's attachments, packet counters and ACL rules, if it is set up.
fn kernel_status(state: &AdminState) -> Option<KernelStatus> {
    let kernel = state.kernel()?;
    let names = crate::gateway::policy_service_names(&state.services());
    let k = kernel.lock();
    Some(KernelStatus {
        attachments: k
            .attachments()
            .iter()
            .map(|(i, m)| (i.clone(), m.to_string()))
            .collect(),
        counters: k
            .counters()
            .map(|c| c.0.iter().map(|(c, v)| (c.name().to_owned(), *v)).collect())
            .unwrap_or_default(),
        acl_rules: acl_rules(&k, &names).unwrap_or_default(),
    })
}

//! `/status`: the model (what `ftp-guard status` deserializes and renders) and how it is
//! read from the running gateway.
use serde::{Deserialize, Serialize};

use super::AdminState;
use crate::dataplane::{LeaseInfo, Snapshot};

/// `/status`, also the input of `ftp-guard status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: f64,
    pub services: Vec<ServiceStatus>,
    pub kernel: Option<KernelStatus>,
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
        kernel: kernel_status(state),
    }
}

/// The kernel data path's attachments and packet counters, if it is set up.
fn kernel_status(state: &AdminState) -> Option<KernelStatus> {
    let kernel = state.kernel()?;
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
    })
}

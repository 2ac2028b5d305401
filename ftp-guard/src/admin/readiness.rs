//! `/readyz`: what keeps the gateway from being ready (no service, the kernel path not
//! attached, an origin that does not accept), probed at most once per [`READY_CACHE`].
use std::time::{Duration, Instant};

use super::AdminState;
use crate::{config::DataplaneKind, proxy::upstream::probe};

/// How long one `/readyz` probe of the origins answers for.
pub const READY_CACHE: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// [`readiness`], probed at most once per [`READY_CACHE`]: a prober (or anyone) asking
/// often must not turn into a stream of connections to the origins.
pub(super) async fn cached_readiness(state: &AdminState) -> Vec<String> {
    let mut last = state.ready.lock().await;
    if let Some((at, problems)) = last.as_ref()
        && at.elapsed() < READY_CACHE
    {
        return problems.clone();
    }
    let at = Instant::now();
    let problems = readiness(state).await;
    *last = Some((at, problems.clone()));
    problems
}

/// What keeps the gateway from being ready; empty when ready.
async fn readiness(state: &AdminState) -> Vec<String> {
    let services = state.services();
    let mut problems = Vec::new();
    if services.is_empty() {
        problems.push("no service running".to_owned());
    }
    let kernel_wanted = services
        .iter()
        .any(|s| s.service.dataplane == DataplaneKind::Kernel);
    if kernel_wanted && !kernel_attached(state) {
        problems.push("kernel data path not attached".to_owned());
    }
    // Concurrently: a handful of origins, each given PROBE_TIMEOUT.
    let probes: Vec<_> = services
        .iter()
        .flat_map(|s| {
            s.origins.all().iter().map(|&origin| {
                let name = s.service.name.clone();
                tokio::spawn(async move {
                    probe(origin, PROBE_TIMEOUT)
                        .await
                        .map_err(|why| format!("service `{name}`: {why}"))
                })
            })
        })
        .collect();
    for probe in probes {
        if let Ok(Err(problem)) = probe.await {
            problems.push(problem);
        }
    }
    problems
}

/// Whether the kernel data path has programs attached.
fn kernel_attached(state: &AdminState) -> bool {
    state
        .kernel()
        .is_some_and(|k| !k.lock().attachments().is_empty())
}

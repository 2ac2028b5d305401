//! `/readyz`: what keeps the gateway from being ready (no service, the kernel path not
//! attached, an origin that does not accept), probed at most once per [`READY_CACHE`].
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use super::AdminState;
use crate::config::DataplaneKind;

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
        .map(|s| tokio::spawn(probe_origin(s.service.name.clone(), s.service.origin)))
        .collect();
    for probe in probes {
        if let Ok(Some(problem)) = probe.await {
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

/// Why service `name`'s origin is not reachable, if it is not: it must accept a
/// connection within [`PROBE_TIMEOUT`].
async fn probe_origin(name: String, origin: SocketAddr) -> Option<String> {
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(origin)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!(
            "service `{name}`: origin {origin} unreachable: {e}"
        )),
        Err(_) => Some(format!("service `{name}`: origin {origin} did not answer")),
    }
}

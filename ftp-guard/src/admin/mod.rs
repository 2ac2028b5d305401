//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process
//! answers), `/readyz` (programs attached and every origin reachable), `/status` (JSON,
//! what `ftp-guard status` shows) and `POST /bans/unban?addr=ADDRESS` (`ftp-guard unban`). This module owns serving: the accept loop, the bounds on
//! connections ([`Limits`]) and the state the endpoint reads ([`AdminState`]). The rest,
//! by concern: [`routes`] answers a request, [`auth`] the bearer token, [`readiness`] the
//! cached origin probe, [`status`] the `/status` model (shared with `ftp-guard status`),
//! [`client`] the requests `ftp-guard status` and `ftp-guard unban` send.
//!
//! HTTP/1.1 is hyper's (with hyper-util's tokio glue), not axum's: five routes need
//! no router, extractors or tower layers, and hyper alone keeps the dependency tree small.
//! One request per connection; the request head is bounded in size and time, the whole
//! exchange in time, the connections in number.
//!
//! `/status` names every client and live lease, and `/metrics` the traffic: with a token
//! configured (`admin_token_file`) both want `Authorization: Bearer <token>`, and so does
//! the unban route. `/healthz`
//! and `/readyz` stay open for probes; `/readyz` probes the origins at most once per
//! [`READY_CACHE`], however often it is asked.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

use crate::sync::{LockUnpoisoned as _, RwLockUnpoisoned as _};
use crate::{bpf::Handle, policy::bans::Bans, proxy::ServiceContext};

mod auth;
mod client;
mod readiness;
mod routes;
mod status;
#[cfg(test)]
mod tests;

pub use auth::{exposure_warning, read_token};
pub use client::{get, post};
pub use readiness::READY_CACHE;
pub use routes::UNBAN as UNBAN_PATH;
pub use status::{
    AclRuleStatus, BanStatus, CATCH_ALL, KernelStatus, ServiceStatus, SessionStatus, Status,
    acl_rules,
};

/// The largest request head taken (hyper's smallest read buffer); a larger one gets 431.
const MAX_REQUEST: usize = 8192;

/// Bounds on the endpoint's connections: what one scraper, prober or attacker can hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Time for the request head to arrive (a client sending half a request is cut then).
    pub read_timeout: Duration,
    /// Time to answer after that (a client that stops reading is cut then).
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// What the endpoint reads; the gateway updates it on start and reload.
pub struct AdminState {
    pub registry: Registry,
    pub services: RwLock<Vec<Arc<ServiceContext>>>,
    pub kernel: Mutex<Option<Handle>>,
    /// The gateway's ban list (status, unban).
    pub bans: Mutex<Option<Arc<Bans>>>,
    pub started: Instant,
    /// Bearer token `/status` and `/metrics` require; `None`: they are open.
    pub token: RwLock<Option<String>>,
    pub limits: Limits,
    /// The last readiness probe: when it started and what it found. Held across a probe,
    /// so concurrent requests wait for one probe instead of each opening connections.
    ready: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
}

impl AdminState {
    pub fn new(registry: Registry, limits: Limits) -> Self {
        AdminState {
            registry,
            services: RwLock::default(),
            kernel: Mutex::default(),
            bans: Mutex::default(),
            started: Instant::now(),
            token: RwLock::default(),
            limits,
            ready: tokio::sync::Mutex::default(),
        }
    }

    pub fn set_token(&self, token: Option<String>) {
        *self.token.write_unpoisoned() = token;
    }

    /// The running services, as of now.
    fn services(&self) -> Vec<Arc<ServiceContext>> {
        self.services.read_unpoisoned().clone()
    }

    /// The gateway's ban list, once set.
    fn bans(&self) -> Option<Arc<Bans>> {
        self.bans.lock_unpoisoned().clone()
    }

    /// The kernel data path, if one is set up.
    fn kernel(&self) -> Option<Handle> {
        self.kernel.lock_unpoisoned().clone()
    }
}

/// Serves the endpoint on `listener` until `shutdown` resolves. Accept errors (EMFILE)
/// back off instead of ending it; connections over the cap are closed at once (dropped),
/// so idle connections cannot pile up.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(state.limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "admin connection refused: too many open");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, state).await;
            drop(slot);
        });
    }
}

/// One connection, one request: the head within `read_timeout` (cut silently otherwise),
/// the whole exchange within `read_timeout + write_timeout`.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, state: Arc<AdminState>) {
    let limits = state.limits;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(MAX_REQUEST)
        .keep_alive(false)
        // The header lines as they were written before hyper, without a Date.
        .title_case_headers(true)
        .auto_date_header(false);
    let answer = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(routes::answer(&request, &state).await.into_http()) }
    });
    let connection = http.serve_connection(TokioIo::new(stream), answer);
    match tokio::time::timeout(limits.read_timeout + limits.write_timeout, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "admin connection ended"),
        Err(_) => debug!(%peer, "admin response write timed out"),
    }
}

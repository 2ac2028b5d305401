//! The control-channel proxy (tokio): accepts clients on a service's listen address and
//! runs one [`connection`] task per client, within a global session limit.
pub mod connection;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{Instrument as _, error, info, warn};

use crate::{config::Service, dataplane::Dataplane, ftp::scrub::Scrubber, metrics::Metrics};

/// Everything a session of one service needs, shared by its sessions.
pub struct ServiceContext {
    pub service: Service,
    pub dataplane: Arc<dyn Dataplane>,
    /// Global cap on open control sessions (over all services).
    pub sessions: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    /// The sessions open now, for status.
    pub open: Mutex<HashMap<u64, OpenSession>>,
    /// What replies are cleaned of: the origin's addresses and names, and the gateway's
    /// addresses on the origin side known when the service started (each session adds
    /// its own control connection's, see [`ServiceContext::session_scrubber`]).
    scrubber: Scrubber,
}

/// A control session as status shows it.
#[derive(Clone, Debug)]
pub struct OpenSession {
    pub client: SocketAddr,
    pub since: Instant,
}

impl ServiceContext {
    pub fn new(
        service: Service,
        dataplane: Arc<dyn Dataplane>,
        sessions: Arc<Semaphore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut scrubber = Scrubber::new(&service.hidden_addresses(), service.public_ip())
            .with_names(&service.hide_names);
        if let Some(ip) = dataplane.origin_side_ip() {
            hide_gateway_address(&mut scrubber, &service, IpAddr::V4(ip));
        }
        Self {
            service,
            dataplane,
            sessions,
            metrics,
            open: Mutex::default(),
            scrubber,
        }
    }

    /// Also hides these addresses of the gateway (those of its origin-side interface),
    /// the public address excepted.
    pub fn hiding_gateway_addresses(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        for ip in addresses {
            hide_gateway_address(&mut self.scrubber, &self.service, ip);
        }
        self
    }

    /// The scrubber for a session whose control connection to the origin comes from
    /// `local`: the address the origin sees it connected from (vsftpd's STAT shows it).
    pub fn session_scrubber(&self, local: IpAddr) -> Scrubber {
        let mut scrubber = self.scrubber.clone();
        hide_gateway_address(&mut scrubber, &self.service, local);
        scrubber
    }

    /// The sessions open now, oldest first.
    pub fn open_sessions(&self) -> Vec<(u64, OpenSession)> {
        let mut v: Vec<_> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }
}

/// Hides an address of the gateway's, unless it is the public address (a gateway with one
/// address on both sides shows the origin what clients know anyway) or says nothing.
fn hide_gateway_address(scrubber: &mut Scrubber, service: &Service, ip: IpAddr) {
    let ip = ip.to_canonical();
    if ip != IpAddr::V4(service.public_ip()) && !ip.is_unspecified() {
        scrubber.hide_address(ip);
    }
}

/// Accepts clients until `shutdown` resolves, then gives the listener back (a reload may
/// reuse it). Accept errors (e.g. EMFILE) back off and retry instead of ending the service.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ServiceContext>,
    shutdown: impl std::future::Future<Output = ()>,
) -> TcpListener {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    let mut next_id: u64 = 1;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                error!(service = %ctx.service.name, error = %e, "accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        let span = tracing::info_span!("session", service = %ctx.service.name, id, client = %peer);
        match ctx.sessions.clone().try_acquire_owned() {
            Ok(permit) => {
                let ctx = ctx.clone();
                ctx.metrics.session_started(&ctx.service.name);
                ctx.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    id,
                    OpenSession {
                        client: peer,
                        since: Instant::now(),
                    },
                );
                tokio::spawn(
                    async move {
                        connection::run(stream, peer, ctx.clone()).await;
                        ctx.open
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        ctx.metrics.session_ended(&ctx.service.name);
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                ctx.metrics.session_rejected(&ctx.service.name, "limit");
                tokio::spawn(refuse_busy(stream, peer).instrument(span));
            }
        }
    }
    info!(service = %ctx.service.name, "stopped accepting");
    listener
}

/// Tells a client over the session limit why it is turned away, without waiting on it.
async fn refuse_busy(mut stream: TcpStream, peer: SocketAddr) {
    warn!(%peer, "session limit reached: refusing client");
    let reply = b"421 Too many connections, try again later.\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(reply)).await;
}

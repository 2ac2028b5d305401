//! The control-channel proxy (tokio): accepts clients on a service's listen address and
//! runs one [`connection`] task per client, within a global session limit.
pub mod connection;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{Instrument as _, error, info, warn};

use crate::{config::Service, dataplane::Dataplane};

/// Everything a session of one service needs, shared by its sessions.
pub struct ServiceContext {
    pub service: Service,
    pub dataplane: Arc<dyn Dataplane>,
    /// Global cap on open control sessions (over all services).
    pub sessions: Arc<Semaphore>,
}

/// Accepts clients until `shutdown` resolves. Accept errors (e.g. EMFILE) back off and
/// retry instead of ending the service.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ServiceContext>,
    shutdown: impl std::future::Future<Output = ()>,
) {
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
                tokio::spawn(
                    async move {
                        connection::run(stream, peer, ctx).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                tokio::spawn(refuse_busy(stream, peer).instrument(span));
            }
        }
    }
    info!(service = %ctx.service.name, "stopped accepting");
}

/// Tells a client over the session limit why it is turned away, without waiting on it.
async fn refuse_busy(mut stream: TcpStream, peer: SocketAddr) {
    warn!(%peer, "session limit reached: refusing client");
    let reply = b"421 Too many connections, try again later.\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(reply)).await;
}

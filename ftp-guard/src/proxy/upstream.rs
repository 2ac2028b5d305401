//! The origin side of a session: which origin ([`OriginPool`]), connecting to it within the
//! connect timeout, its control stream's socket options, and the readiness probe. Origin
//! pools and the PROXY protocol plug in here. (The greeting deadline is a session timer:
//! [`crate::ftp::session::SessionTimeouts::greeting`].)
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use super::stream::{ControlStream, Leg};

/// The origins a service forwards to. Holds one today; [`OriginPool::pick`] is where a
/// choice among several will be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPool {
    origins: Vec<SocketAddr>,
}

impl OriginPool {
    pub fn single(origin: SocketAddr) -> Self {
        Self {
            origins: vec![origin],
        }
    }

    /// The origin for the next session.
    pub fn pick(&self) -> SocketAddr {
        self.origins[0]
    }

    /// Every origin, for readiness probes.
    pub fn all(&self) -> &[SocketAddr] {
        &self.origins
    }
}

/// Why the origin could not be had.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    TimedOut,
    /// Connected, but the socket knows no local address (the scrubber needs it).
    #[error("{0}")]
    NoLocalAddress(std::io::Error),
}

/// A connected origin.
pub struct Upstream {
    pub stream: ControlStream,
    /// The gateway's address on this connection: the origin shows it (vsftpd's STAT), so
    /// it is hidden from the client.
    pub local: SocketAddr,
    /// How long the connect took.
    pub connect_time: Duration,
}

/// Connects to `origin` within `timeout`, with keepalive on.
pub async fn connect(
    origin: SocketAddr,
    timeout: Duration,
    keepalive: Duration,
) -> Result<Upstream, UpstreamError> {
    let started = Instant::now();
    let tcp = open(origin, timeout).await?;
    let connect_time = started.elapsed();
    let local = tcp.local_addr().map_err(UpstreamError::NoLocalAddress)?;
    Ok(Upstream {
        stream: ControlStream::new(tcp, Leg::Origin, keepalive),
        local,
        connect_time,
    })
}

/// Whether `origin` accepts connections within `timeout` (the connection is closed at
/// once); the error says what failed, for the readiness report.
pub async fn probe(origin: SocketAddr, timeout: Duration) -> Result<(), String> {
    match open(origin, timeout).await {
        Ok(_) => Ok(()),
        Err(UpstreamError::TimedOut) => Err(format!("origin {origin} did not answer")),
        Err(e) => Err(format!("origin {origin} unreachable: {e}")),
    }
}

async fn open(origin: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    match tokio::time::timeout(timeout, TcpStream::connect(origin)).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(UpstreamError::Connect(e)),
        Err(_) => Err(UpstreamError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_tells_reachable_from_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        drop(listener);
        let closed = open;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let timeout = Duration::from_secs(2);
        assert_eq!(probe(open, timeout).await, Ok(()));
        let refused = probe(closed, timeout).await.unwrap_err();
        assert!(
            refused.starts_with(&format!("origin {closed} unreachable: ")),
            "{refused}"
        );
    }

    #[test]
    fn a_pool_of_one_picks_it() {
        let origin: SocketAddr = "198.51.100.2:21".parse().unwrap();
        let pool = OriginPool::single(origin);
        assert_eq!((pool.pick(), pool.all()), (origin, &[origin][..]));
    }
}

//! A control connection's byte stream, one per leg (client, origin): socket options,
//! readiness and non-blocking reads, bounded writes, urgent data (MSG_OOB), and the one
//! way a connection is refused (a 421 line, then close). The seat TLS will wrap: the
//! driver sees only this type.
use std::{io, os::fd::AsRawFd as _, time::Duration};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tracing::warn;

/// A peer that does not read what it is sent for this long is given up on.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// A refused client is told why for this long at most; nobody waits on it.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which end of the proxy a stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    Client,
    Origin,
}

/// One leg of a control connection.
///
/// Reading is [`ControlStream::readable`] + [`ControlStream::try_read`] rather than
/// `AsyncReadExt::read`: there a short read makes tokio assume the socket is drained, but
/// TCP stops a read at the urgent mark (a client's ABOR sent as urgent data), and the
/// bytes behind it would wait for the next event. Waiting for readiness without a buffer
/// also keeps idle sessions free of read buffers.
pub struct ControlStream {
    tcp: TcpStream,
}

impl ControlStream {
    /// Keepalive on both legs (control connections idle for hours during transfers); on
    /// the client leg, urgent data inline so the Telnet Synch before ABOR is seen and
    /// stripped.
    pub fn new(tcp: TcpStream, leg: Leg, keepalive: Duration) -> Self {
        let sock = socket2::SockRef::from(&tcp);
        let ka = socket2::TcpKeepalive::new()
            .with_time(keepalive)
            .with_interval(keepalive.min(Duration::from_secs(30)))
            .with_retries(4);
        if let Err(e) = sock.set_tcp_keepalive(&ka) {
            warn!(error = %e, "cannot enable TCP keepalive");
        }
        if leg == Leg::Client
            && let Err(e) = sock.set_out_of_band_inline(true)
        {
            warn!(error = %e, "cannot set SO_OOBINLINE");
        }
        let _ = tcp.set_nodelay(true);
        Self { tcp }
    }

    /// The address this end of the connection has.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.tcp.readable().await
    }

    /// Reads what is there without waiting (`WouldBlock` when nothing is).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.try_read(buf)
    }

    /// Writes all of `bytes`, or fails once the peer has not read for [`WRITE_TIMEOUT`].
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_within(&mut self.tcp, bytes, WRITE_TIMEOUT).await
    }

    /// Writes `bytes`, the last one as TCP urgent data (MSG_OOB).
    pub async fn write_urgent(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some((last, head)) = bytes.split_last() else {
            return Ok(());
        };
        self.write(head).await?;
        let stream = &self.tcp;
        loop {
            stream.writable().await?;
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                // SAFETY: a valid fd and a 1-byte buffer that outlives the call.
                let n = unsafe {
                    libc::send(
                        stream.as_raw_fd(),
                        (last as *const u8).cast(),
                        1,
                        libc::MSG_OOB,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match sent {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends the sending side (the peer reads EOF after what was written).
    pub async fn shutdown(&mut self) {
        let _ = self.tcp.shutdown().await;
    }
}

/// Tells a client it is turned away (`reply`, a 421 line) and closes, without waiting on it
/// long: the one path of every refusal (limits, origin unreachable, address family).
pub async fn refuse(mut tcp: TcpStream, reply: &[u8]) {
    let _ = write_within(&mut tcp, reply, REFUSAL_WRITE_TIMEOUT).await;
}

async fn write_within(tcp: &mut TcpStream, bytes: &[u8], limit: Duration) -> io::Result<()> {
    match tokio::time::timeout(limit, tcp.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "peer stopped reading",
        )),
    }
}

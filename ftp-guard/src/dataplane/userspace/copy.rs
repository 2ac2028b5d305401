//! The relay's copy loop: bytes both ways between a data connection's two legs, each end
//! of stream passed on as a shutdown, counted, and ended when nothing moves for the idle
//! timeout.
use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
};

/// Bytes read at once per direction of a relayed connection.
const COPY_BUFFER: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    PeerToTarget,
    TargetToPeer,
}

/// Bytes copied each way, and when anything last moved.
#[derive(Debug, Default)]
pub(super) struct Copied {
    pub peer_to_target: AtomicU64,
    pub target_to_peer: AtomicU64,
    /// Milliseconds since the copying began, at the last byte read or written either way.
    last_activity_ms: AtomicU64,
}

impl Copied {
    fn touch(&self, since: tokio::time::Instant) {
        self.last_activity_ms
            .store(since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved either way for `idle`.
    async fn idle_for(&self, since: tokio::time::Instant, idle: Duration) {
        loop {
            let last = since + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
            if tokio::time::Instant::now() >= last + idle {
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    }
}

/// How a relayed connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// Both ways ended with an end of stream.
    Closed,
    /// Nothing moved either way for the idle timeout.
    Idle,
}

/// Copies `from` to `to` until the end of stream, counting into `count` and noting
/// activity in `copied`, then passes the end of stream on (a shutdown) and signals
/// `done`, if given.
async fn pass_on(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    count: &AtomicU64,
    (copied, since): (&Copied, tokio::time::Instant),
    done: Option<&watch::Sender<()>>,
) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        copied.touch(since);
        to.write_all(&buf[..n]).await?;
        copied.touch(since);
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    to.shutdown().await?;
    if let Some(done) = done {
        done.send_replace(());
    }
    Ok(())
}

/// Copies both ways until both have ended (each end of stream passed on as a shutdown)
/// or nothing has moved either way for `idle`; signals `done` as soon as the direction
/// `to_client` has ended. An error in either direction ends both. The bytes copied are in
/// `copied` however it ended.
pub(super) async fn copy_both_ways(
    peer: &mut TcpStream,
    target: &mut TcpStream,
    to_client: Direction,
    done: &watch::Sender<()>,
    idle: Duration,
    copied: &Copied,
) -> io::Result<Ending> {
    let since = tokio::time::Instant::now();
    let (mut peer_read, mut peer_write) = peer.split();
    let (mut target_read, mut target_write) = target.split();
    let signal = |direction| (to_client == direction).then_some(done);
    let peer_to_target = pass_on(
        &mut peer_read,
        &mut target_write,
        &copied.peer_to_target,
        (copied, since),
        signal(Direction::PeerToTarget),
    );
    let target_to_peer = pass_on(
        &mut target_read,
        &mut peer_write,
        &copied.target_to_peer,
        (copied, since),
        signal(Direction::TargetToPeer),
    );
    tokio::select! {
        result = async { tokio::try_join!(peer_to_target, target_to_peer) } => {
            result.map(|_| Ending::Closed)
        }
        () = copied.idle_for(since, idle) => Ok(Ending::Idle),
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair of loopback streams.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, connected) = tokio::join!(listener.accept(), connect);
        (accepted.unwrap().0, connected.unwrap())
    }

    /// What a copy did: how it ended, the bytes (peer → target, target → peer), and
    /// whether the client's direction was signalled.
    type Outcome = (Ending, (u64, u64), bool);

    /// Copies between `peer` and `target` as the relay does, the client's direction being
    /// `to_client`.
    async fn copy(
        mut peer: TcpStream,
        mut target: TcpStream,
        to_client: Direction,
        idle: Duration,
    ) -> Outcome {
        let (done_tx, done_rx) = watch::channel(());
        let copied = Copied::default();
        let ending = copy_both_ways(&mut peer, &mut target, to_client, &done_tx, idle, &copied)
            .await
            .unwrap();
        let bytes = (
            copied.peer_to_target.load(Ordering::Relaxed),
            copied.target_to_peer.load(Ordering::Relaxed),
        );
        (ending, bytes, done_rx.has_changed().unwrap())
    }

    #[tokio::test]
    async fn copies_both_ways_counts_and_signals_the_clients_direction() {
        let (mut peer_far, peer) = pair().await;
        let (target, mut target_far) = pair().await;
        let relay = copy(
            peer,
            target,
            Direction::TargetToPeer,
            Duration::from_secs(30),
        );
        let ends = async {
            peer_far.write_all(b"upload").await.unwrap();
            peer_far.shutdown().await.unwrap();
            target_far.write_all(b"download!").await.unwrap();
            target_far.shutdown().await.unwrap();
            let (mut up, mut down) = (Vec::new(), Vec::new());
            target_far.read_to_end(&mut up).await.unwrap();
            peer_far.read_to_end(&mut down).await.unwrap();
            (up, down)
        };
        let (outcome, (up, down)) = tokio::join!(relay, ends);
        assert_eq!(outcome, (Ending::Closed, (6, 9), true));
        assert_eq!(
            (up.as_slice(), down.as_slice()),
            (&b"upload"[..], &b"download!"[..])
        );
    }

    #[tokio::test]
    async fn silence_ends_the_copy_as_idle_unsignalled() {
        let (_peer_far, peer) = pair().await;
        let (target, _target_far) = pair().await;
        let outcome = copy(
            peer,
            target,
            Direction::PeerToTarget,
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(outcome, (Ending::Idle, (0, 0), false));
    }
}

//! The control-channel proxy (tokio): accepts clients on a service's listen address and
//! runs one [`connection`] task per client, within a global session limit
//! ([`SessionSlots`]) and per-client-address limits on sessions and data leases.
pub mod driver;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::{Instrument as _, error, info, warn};

use crate::{config::Service, dataplane::Dataplane, ftp::scrub::Scrubber, metrics::Metrics};

/// Everything a session of one service needs, shared by its sessions.
pub struct ServiceContext {
    pub service: Service,
    pub dataplane: Arc<dyn Dataplane>,
    /// Global cap on open control sessions (over all services).
    pub sessions: Arc<SessionSlots>,
    pub metrics: Arc<Metrics>,
    /// The sessions open now, for status.
    pub open: Mutex<HashMap<u64, OpenSession>>,
    /// Per client address: its sessions and the leases they hold (entries go when both
    /// are zero).
    clients: Mutex<HashMap<IpAddr, ClientUse>>,
    /// The most bytes any session of this service has held (see
    /// [`crate::ftp::session::Session::buffered_bytes`]).
    peak_buffered: AtomicUsize,
    /// Refusals (session limits) are logged at most once a second: a client hammering
    /// the port at its limit must not turn each connection into a log line.
    refusals: Mutex<LogBudget>,
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
        sessions: Arc<SessionSlots>,
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
            clients: Mutex::default(),
            peak_buffered: AtomicUsize::new(0),
            refusals: Mutex::new(LogBudget::new(REFUSAL_LOG_EVERY)),
            scrubber,
        }
    }

    /// Whether to log a refusal now, and how many went unlogged since the last one.
    fn refusal_to_log(&self) -> Option<u64> {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now())
    }

    /// A session for `client`, unless its address has `max_sessions_per_client` open.
    fn admit_client(self: &Arc<Self>, client: IpAddr) -> Option<ClientSession> {
        let client = client.to_canonical();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let entry = clients.entry(client).or_default();
        if entry.sessions >= self.service.max_sessions_per_client {
            return None;
        }
        entry.sessions += 1;
        Some(ClientSession {
            ctx: self.clone(),
            client,
        })
    }

    /// Takes one of `client`'s lease slots: false when it holds `max_leases_per_client`.
    pub fn take_lease_slot(&self, client: IpAddr) -> bool {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let entry = clients.entry(client.to_canonical()).or_default();
        if entry.leases >= self.service.max_leases_per_client {
            return false;
        }
        entry.leases += 1;
        true
    }

    /// Gives back a slot taken by [`ServiceContext::take_lease_slot`].
    pub fn release_lease_slot(&self, client: IpAddr) {
        self.update_client(client.to_canonical(), |u| {
            u.leases = u.leases.saturating_sub(1);
        });
    }

    /// Leases held by `client`'s sessions now.
    pub fn client_leases(&self, client: IpAddr) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&client.to_canonical())
            .map_or(0, |u| u.leases)
    }

    fn update_client(&self, client: IpAddr, change: impl FnOnce(&mut ClientUse)) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = clients.get_mut(&client) {
            change(entry);
            if entry.sessions == 0 && entry.leases == 0 {
                clients.remove(&client);
            }
        }
    }

    /// Records how many bytes a session holds now.
    pub fn note_buffered(&self, bytes: usize) {
        self.peak_buffered.fetch_max(bytes, Ordering::Relaxed);
    }

    /// The most bytes any session of this service has held so far.
    pub fn peak_session_buffer(&self) -> usize {
        self.peak_buffered.load(Ordering::Relaxed)
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

/// What one client address uses.
#[derive(Debug, Default)]
struct ClientUse {
    sessions: usize,
    leases: usize,
}

/// One of a client address's sessions; counted until dropped.
struct ClientSession {
    ctx: Arc<ServiceContext>,
    client: IpAddr,
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.ctx.update_client(self.client, |u| {
            u.sessions = u.sessions.saturating_sub(1);
        });
    }
}

/// The global session limit, which a reload may lower while every slot is taken:
/// `Semaphore::forget_permits` only forgets free permits, so the rest is a debt paid by
/// the sessions that end next (their permits are forgotten instead of returned).
#[derive(Debug)]
pub struct SessionSlots {
    semaphore: Arc<Semaphore>,
    /// Permits still to forget.
    debt: Mutex<usize>,
}

/// A taken slot; freed (or forgotten to pay a debt) when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<SessionSlots>,
}

impl SessionSlots {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(SessionSlots {
            semaphore: Arc::new(Semaphore::new(limit)),
            debt: Mutex::new(0),
        })
    }

    /// A slot, if one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Option<SessionSlot> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(SessionSlot {
            permit: Some(permit),
            slots: self.clone(),
        })
    }

    /// Changes the limit from `old` to `new`. Lowered below the sessions open, it takes
    /// effect as they end.
    pub fn resize(&self, old: usize, new: usize) {
        let mut debt = self.debt.lock().unwrap_or_else(|e| e.into_inner());
        if new > old {
            let paid = (new - old).min(*debt);
            *debt -= paid;
            self.semaphore.add_permits(new - old - paid);
        } else {
            let owed = old - new;
            *debt += owed - self.semaphore.forget_permits(owed);
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut debt = self.slots.debt.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(permit) = self.permit.take() {
            if *debt > 0 {
                *debt -= 1;
                permit.forget();
            } else {
                drop(permit);
            }
        }
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
        let Some(client_session) = ctx.admit_client(peer.ip()) else {
            ctx.metrics
                .session_rejected(&ctx.service.name, "client_limit");
            let log = ctx.refusal_to_log();
            tokio::spawn(
                refuse_client(stream, peer, ctx.service.max_sessions_per_client, log)
                    .instrument(span),
            );
            continue;
        };
        match ctx.sessions.try_acquire() {
            Some(permit) => {
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
                        driver::run(stream, peer, ctx.clone()).await;
                        // Slots first: once status no longer lists the session, its
                        // slots are free (or paid to a lowered limit).
                        drop(permit);
                        drop(client_session);
                        ctx.open
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        ctx.metrics.session_ended(&ctx.service.name);
                    }
                    .instrument(span),
                );
            }
            None => {
                drop(client_session);
                ctx.metrics.session_rejected(&ctx.service.name, "limit");
                let log = ctx.refusal_to_log();
                tokio::spawn(refuse_busy(stream, peer, log).instrument(span));
            }
        }
    }
    info!(service = %ctx.service.name, "stopped accepting");
    listener
}

/// Tells a client whose address has its limit of sessions open why it is turned away;
/// logged when `log` says so (with the refusals not logged since the last line).
async fn refuse_client(mut stream: TcpStream, peer: SocketAddr, limit: usize, log: Option<u64>) {
    if let Some(unlogged) = log {
        warn!(%peer, limit, unlogged, "sessions per client address reached: refusing client");
    }
    let reply = b"421 Too many connections from your address, try again later.\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(reply)).await;
}

/// Tells a client over the session limit why it is turned away, without waiting on it.
async fn refuse_busy(mut stream: TcpStream, peer: SocketAddr, log: Option<u64>) {
    if let Some(unlogged) = log {
        warn!(%peer, unlogged, "session limit reached: refusing client");
    }
    let reply = b"421 Too many connections, try again later.\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(reply)).await;
}

/// How often refusals are logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// At most one log line per period; the events in between are counted, and the count
/// goes with the next line.
#[derive(Debug)]
struct LogBudget {
    every: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl LogBudget {
    fn new(every: Duration) -> Self {
        LogBudget {
            every,
            last: None,
            unlogged: 0,
        }
    }

    /// For an event at `now`: `Some(events not logged since the last line)` when this one
    /// is to be logged, else `None` (it is counted).
    fn take(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        config::Config,
        dataplane::{
            ActiveGrant, ActiveRequest, LeaseError, LeaseGrant, LeaseId, LeaseInfo, LeaseRequest,
            Snapshot,
        },
    };

    /// A dataplane that only tells its origin-side address.
    struct OriginSide(Option<Ipv4Addr>);

    impl Dataplane for OriginSide {
        fn install(&self, _: LeaseRequest) -> Result<LeaseGrant, LeaseError> {
            Err(LeaseError::TableFull)
        }
        fn install_active(&self, _: ActiveRequest) -> Result<ActiveGrant, LeaseError> {
            Err(LeaseError::TableFull)
        }
        fn revoke(&self, _: LeaseId) {}
        fn snapshot(&self) -> Snapshot {
            Snapshot::default()
        }
        fn leases(&self) -> Vec<LeaseInfo> {
            Vec::new()
        }
        fn origin_side_ip(&self) -> Option<Ipv4Addr> {
            self.0
        }
    }

    fn context(origin_side: Option<Ipv4Addr>) -> ServiceContext {
        let config = Config::parse(
            r#"
[[service]]
name = "ftp"
listen = "203.0.113.1:21"
origin = "198.51.100.2:21"
data_ports = "40000-40099"
dataplane = "userspace"
hide_addresses = ["10.0.0.5"]
hide_names = ["ftp.internal.example"]
"#,
        )
        .unwrap();
        ServiceContext::new(
            config.services().next().unwrap().clone(),
            Arc::new(OriginSide(origin_side)),
            SessionSlots::new(1),
            Arc::new(Metrics::new()),
        )
    }

    fn scrubbed(scrubber: &Scrubber, line: &str) -> String {
        String::from_utf8(scrubber.scrub(line.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn refusals_are_logged_once_a_period_with_the_count_between() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut budget = LogBudget::new(Duration::from_secs(1));
        let decisions: Vec<Option<u64>> = [0, 1, 500, 999, 1000, 1001, 2500, 2600]
            .into_iter()
            .map(|ms| budget.take(at(ms)))
            .collect();
        assert_eq!(
            decisions,
            [Some(0), None, None, None, Some(3), None, Some(1), None]
        );
    }

    #[test]
    fn replies_lose_every_internal_address_and_name() {
        let ctx = context(Some(Ipv4Addr::new(198, 51, 100, 1))).hiding_gateway_addresses(
            ["198.51.100.3", "fe80::1", "203.0.113.1", "0.0.0.0"].map(|a| a.parse().unwrap()),
        );
        let s = ctx.session_scrubber("::ffff:198.51.100.4".parse().unwrap());
        assert_eq!(s.replacement(), Ipv4Addr::new(203, 0, 113, 1));
        let cases = [
            // The origin's addresses and name.
            ("[198.51.100.2] 10.0.0.5", "[203.0.113.1] 203.0.113.1"),
            ("FTP.internal.example ready", "203.0.113.1 ready"),
            // The dataplane's origin-side address, the interface's, the session's own.
            ("Connected to 198.51.100.1", "Connected to 203.0.113.1"),
            (
                "198,51,100,3,4,5 [fe80::1]",
                "203,0,113,1,4,5 [203.0.113.1]",
            ),
            ("Connected from 198.51.100.4", "Connected from 203.0.113.1"),
            // The public address is what clients see anyway.
            ("203.0.113.1 0.0.0.0", "203.0.113.1 0.0.0.0"),
        ];
        for (line, expected) in cases {
            assert_eq!(scrubbed(&s, line), expected);
        }
        // A session's address stays its own.
        let other = ctx.session_scrubber("198.51.100.5".parse().unwrap());
        assert_eq!(scrubbed(&other, "198.51.100.4"), "198.51.100.4");
    }

    /// (limit changes, then sessions ending) → slots free at the end: a lower limit with
    /// every slot taken is paid by the sessions that end; a higher one pays the debt first.
    #[test]
    fn session_slots_follow_the_limit() {
        let slots = SessionSlots::new(2);
        let a = slots.try_acquire().unwrap();
        let b = slots.try_acquire().unwrap();
        assert!(slots.try_acquire().is_none());
        slots.resize(2, 1);
        drop(a);
        assert!(slots.try_acquire().is_none(), "one open, the limit is 1");
        drop(b);
        let c = slots.try_acquire().unwrap();
        assert!(slots.try_acquire().is_none());
        // Down to 0 and back to 3 while one is open: 2 more, not 3.
        slots.resize(1, 0);
        slots.resize(0, 3);
        let more: Vec<_> = std::iter::from_fn(|| slots.try_acquire()).collect();
        assert_eq!(more.len(), 2);
        drop(c);
        drop(more);
        let all: Vec<_> = std::iter::from_fn(|| slots.try_acquire()).collect();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn a_gateway_with_one_address_keeps_it() {
        let ctx = context(Some(Ipv4Addr::new(203, 0, 113, 1)));
        let s = ctx.session_scrubber("203.0.113.1".parse().unwrap());
        assert_eq!(s.replacement(), Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(
            scrubbed(&s, "Connected to 203.0.113.1"),
            "Connected to 203.0.113.1"
        );
        let s = context(None).session_scrubber("198.51.100.1".parse().unwrap());
        assert_eq!(
            scrubbed(&s, "Connected to 198.51.100.1"),
            "Connected to 203.0.113.1"
        );
    }
}

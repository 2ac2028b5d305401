//! The control-channel proxy (tokio). [`serve`] accepts clients on a service's listen
//! address and runs one session task per admitted client. The module's map:
//! - [`admission`]: whether a connection is served (address family, the ban list, global
//!   and per-client limits, lease slots) and the 421 refusals;
//! - [`upstream`]: the origin side (which origin, connecting, the readiness probe);
//! - [`stream`]: a control connection's byte stream (the seat TLS will wrap);
//! - [`driver`]: runs one sans-IO [`crate::ftp::session::Session`] over the two streams,
//!   carrying out its actions (writes, data leases, timers).
//!
//! [`ServiceContext`] is what a service's sessions share.
pub mod admission;
pub mod driver;
pub mod stream;
pub mod upstream;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::TcpListener;
use tracing::{Instrument as _, error, info};

pub use self::admission::SessionSlots;
use self::{admission::Admission, upstream::OriginPool};
use crate::sync::LockUnpoisoned as _;
use crate::{
    audit::AuditLog, config::Service, dataplane::Dataplane, ftp::scrub::Scrubber, metrics::Metrics,
    policy::bans::Bans,
};

/// Everything a session of one service needs, shared by its sessions.
pub struct ServiceContext {
    pub service: Service,
    pub dataplane: Arc<dyn Dataplane>,
    pub metrics: Arc<Metrics>,
    /// Who is served, and each client address's share of sessions and leases.
    pub admission: Arc<Admission>,
    /// Where sessions are forwarded.
    pub origins: OriginPool,
    /// The sessions open now, for status.
    pub open: Mutex<HashMap<u64, OpenSession>>,
    /// The transfer audit log, when the gateway keeps one.
    pub audit: Option<Arc<AuditLog>>,
    /// The most bytes any session of this service has held (see
    /// [`crate::ftp::session::Session::buffered_bytes`]).
    peak_buffered: AtomicUsize,
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
        // No IPv4 public address (a service built by hand; validation refuses it): mask,
        // and each session is refused in `connection::run`.
        let public_ip = service
            .ipv4()
            .map_or(Ipv4Addr::UNSPECIFIED, |a| a.public_ip);
        let mut scrubber =
            Scrubber::new(&service.hidden_addresses(), public_ip).with_names(&service.hide_names);
        if let Some(ip) = dataplane.origin_side_ip() {
            hide_gateway_address(&mut scrubber, &service, ip);
        }
        Self {
            // A service alone has a ban list of its own; the gateway's share one.
            admission: Arc::new(Admission::new(
                &service,
                sessions,
                Arc::new(Bans::default()),
            )),
            origins: OriginPool::single(service.origin),
            service,
            dataplane,
            metrics,
            open: Mutex::default(),
            audit: None,
            peak_buffered: AtomicUsize::new(0),
            scrubber,
        }
    }

    /// Leases held by `client`'s sessions now.
    pub fn client_leases(&self, client: IpAddr) -> usize {
        self.admission.client_leases(client)
    }

    /// Records how many bytes a session holds now.
    pub fn note_buffered(&self, bytes: usize) {
        self.peak_buffered.fetch_max(bytes, Ordering::Relaxed);
    }

    /// The most bytes any session of this service has held so far.
    pub fn peak_session_buffer(&self) -> usize {
        self.peak_buffered.load(Ordering::Relaxed)
    }

    /// Enforces (and adds to) `bans`, the ban list the gateway's services share.
    pub fn sharing_bans(mut self, bans: Arc<Bans>) -> Self {
        let sessions = self.admission.sessions().clone();
        self.admission = Arc::new(Admission::new(&self.service, sessions, bans));
        self
    }

    /// Logs this service's transfers to `audit`.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = Some(audit);
        self
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
            .lock_unpoisoned()
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
    if ip != service.public_ip() && !ip.is_unspecified() {
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
        let admitted = match ctx.admission.admit(peer, driver::now()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                ctx.metrics
                    .session_rejected(&ctx.service.name, refusal.metric_reason());
                let log = ctx.admission.refusal_to_log();
                tokio::spawn(refusal.send(stream, peer, log).instrument(span));
                continue;
            }
        };
        let ctx = ctx.clone();
        ctx.metrics.session_started(&ctx.service.name);
        ctx.open.lock_unpoisoned().insert(
            id,
            OpenSession {
                client: peer,
                since: Instant::now(),
            },
        );
        tokio::spawn(
            async move {
                driver::run(stream, peer, id, ctx.clone()).await;
                // Slots first: once status no longer lists the session, its slots are
                // free (or paid to a lowered limit).
                drop(admitted);
                ctx.open.lock_unpoisoned().remove(&id);
                ctx.metrics.session_ended(&ctx.service.name);
            }
            .instrument(span),
        );
    }
    info!(service = %ctx.service.name, "stopped accepting");
    listener
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
        fn origin_side_ip(&self) -> Option<IpAddr> {
            self.0.map(IpAddr::V4)
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

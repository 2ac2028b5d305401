//! Whether a connection is admitted, in one place: the address-family gate, the ban list
//! ([`Bans`], refused first, before any origin connection), the global session limit
//! ([`SessionSlots`]), per-client-address caps on sessions and data leases ([`ClientUse`]),
//! and the refusals with their replies and rate-limited log lines. Login failures are
//! reported here too ([`Admission::login_failed`]): the service's ban policy applies.
//! The service's ACL (enforced in XDP/TC) is also watched by its open sessions
//! ([`Admission::acl_watch`]): a reload that denies their client closes them with a 421.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::warn;

use super::stream;
use crate::config::{Acl, Service};
use crate::policy::bans::{Ban, BanPolicy, Bans};
use crate::sync::LockUnpoisoned as _;

/// How often refusals are logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// The admission state of one service.
pub struct Admission {
    /// Global cap on open control sessions (over all services).
    sessions: Arc<SessionSlots>,
    max_sessions_per_client: usize,
    max_leases_per_client: usize,
    /// The gateway's ban list (shared by its services) and this service's policy for it.
    bans: Arc<Bans>,
    ban_policy: Option<BanPolicy>,
    service_name: String,
    /// Per client address: its sessions and the leases they hold (entries go when both
    /// are zero).
    clients: Mutex<HashMap<IpAddr, ClientUse>>,
    /// Refusals (session limits) are logged at most once a second: a client hammering
    /// the port at its limit must not turn each connection into a log line.
    refusals: Mutex<LogBudget>,
    /// The ACL in force: the kernel programs drop the packets of a client it refuses, and
    /// its sessions already open close when a reload makes it refuse them.
    acl: tokio::sync::watch::Sender<Acl>,
}

/// Why a connection is turned away: each gets a 421 ([`Refusal::reply`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client's address family is not carried yet.
    Ipv6,
    /// The client's address is banned.
    Banned(Ban),
    /// The client's address has `limit` sessions open.
    ClientLimit { limit: usize },
    /// Every session slot of the gateway is taken.
    Busy,
    /// The origin could not be reached (why, for the log).
    OriginUnreachable { why: String },
}

impl Refusal {
    /// The `reason` label of the `sessions_rejected` metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Refusal::Ipv6 => "ipv6",
            Refusal::Banned(_) => "banned",
            Refusal::ClientLimit { .. } => "client_limit",
            Refusal::Busy => "limit",
            Refusal::OriginUnreachable { .. } => "origin_unreachable",
        }
    }

    /// The line the client gets before the connection closes.
    pub fn reply(&self) -> &'static [u8] {
        match self {
            Refusal::Ipv6 => b"421 IPv6 is not supported by this gateway.\r\n",
            Refusal::Banned(_) => {
                b"421 Your address is banned after too many failed logins, try again later.\r\n"
            }
            Refusal::ClientLimit { .. } => {
                b"421 Too many connections from your address, try again later.\r\n"
            }
            Refusal::Busy => b"421 Too many connections, try again later.\r\n",
            Refusal::OriginUnreachable { .. } => {
                b"421 Service not available: cannot reach the server.\r\n"
            }
        }
    }

    /// Turns the connection away: the log line (when `log` says so, with the refusals not
    /// logged since the last one), then the 421.
    pub async fn send(self, tcp: TcpStream, peer: SocketAddr, log: Option<u64>) {
        if let Some(unlogged) = log {
            self.log(peer, unlogged);
        }
        stream::refuse(tcp, self.reply()).await;
    }

    fn log(&self, peer: SocketAddr, unlogged: u64) {
        match self {
            Refusal::Ipv6 => warn!(%peer, "IPv6 clients are not supported yet"),
            Refusal::Banned(ban) => warn!(
                %peer, reason = %ban.reason, service = ban.service, unlogged,
                "client banned: refused"
            ),
            Refusal::ClientLimit { limit } => warn!(
                %peer, limit, unlogged,
                "sessions per client address reached: refusing client"
            ),
            Refusal::Busy => warn!(%peer, unlogged, "session limit reached: refusing client"),
            Refusal::OriginUnreachable { why } => warn!(error = why, "origin unreachable"),
        }
    }
}

/// An admitted connection: holds its global slot and its client's share until dropped.
/// Dropped in field order: the slot first, so that once status no longer lists the
/// session its slot is free (or paid to a lowered limit).
pub struct Admitted {
    _slot: SessionSlot,
    _client: ClientShare,
}

impl Admission {
    pub fn new(service: &Service, sessions: Arc<SessionSlots>, bans: Arc<Bans>) -> Self {
        Self {
            sessions,
            max_sessions_per_client: service.max_sessions_per_client,
            max_leases_per_client: service.max_leases_per_client,
            bans,
            ban_policy: BanPolicy::of(service),
            service_name: service.name.clone(),
            clients: Mutex::default(),
            refusals: Mutex::new(LogBudget::new(REFUSAL_LOG_EVERY)),
            acl: tokio::sync::watch::Sender::new(service.acl()),
        }
    }

    /// The ACL as it changes: an open session closes when it comes to refuse its client.
    pub fn acl_watch(&self) -> tokio::sync::watch::Receiver<Acl> {
        self.acl.subscribe()
    }

    /// A reload's new ACL for the sessions admitted here.
    pub fn set_acl(&self, acl: Acl) {
        self.acl.send_replace(acl);
    }

    /// Decides whether a connection from `peer` is served, at `now`.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, now: Instant) -> Result<Admitted, Refusal> {
        let client = peer.ip().to_canonical();
        if !client.is_ipv4() {
            return Err(Refusal::Ipv6);
        }
        if let Some(ban) = self.bans.banned(client, now) {
            return Err(Refusal::Banned(ban));
        }
        let client = self
            .take_share(client, Share::Session)
            .ok_or(Refusal::ClientLimit {
                limit: self.max_sessions_per_client,
            })?;
        let slot = self.sessions.try_acquire().ok_or(Refusal::Busy)?;
        Ok(Admitted {
            _slot: slot,
            _client: client,
        })
    }

    /// A login from `client` failed at `now`: the ban its address is under (maybe made by
    /// this failure), if any. Without a ban policy, only a ban made elsewhere counts.
    pub fn login_failed(&self, client: IpAddr, now: Instant) -> Option<Ban> {
        match &self.ban_policy {
            Some(policy) => self
                .bans
                .record_failure(client, &self.service_name, policy, now),
            None => self.bans.banned(client, now),
        }
    }

    /// The ban list this service enforces.
    pub fn bans(&self) -> &Arc<Bans> {
        &self.bans
    }

    /// The global session slots (shared by the gateway's services).
    pub fn sessions(&self) -> &Arc<SessionSlots> {
        &self.sessions
    }

    /// Whether to log a refusal now, and how many went unlogged since the last one.
    pub fn refusal_to_log(&self) -> Option<u64> {
        self.refusals.lock_unpoisoned().take(Instant::now())
    }

    /// One of `client`'s lease slots, given back when dropped: `None` when it holds
    /// `max_leases_per_client`.
    pub fn take_lease_slot(self: &Arc<Self>, client: IpAddr) -> Option<ClientShare> {
        self.take_share(client, Share::Lease)
    }

    /// One of `client`'s shares of `share`, unless its address holds its limit of them.
    fn take_share(self: &Arc<Self>, client: IpAddr, share: Share) -> Option<ClientShare> {
        let client = client.to_canonical();
        let limit = match share {
            Share::Session => self.max_sessions_per_client,
            Share::Lease => self.max_leases_per_client,
        };
        let mut clients = self.clients.lock_unpoisoned();
        let count = clients.entry(client).or_default().count(share);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientShare {
            admission: self.clone(),
            client,
            share,
        })
    }

    /// Leases held by `client`'s sessions now.
    pub fn client_leases(&self, client: IpAddr) -> usize {
        self.clients
            .lock_unpoisoned()
            .get(&client.to_canonical())
            .map_or(0, |u| u.leases)
    }

    fn update_client(&self, client: IpAddr, change: impl FnOnce(&mut ClientUse)) {
        let mut clients = self.clients.lock_unpoisoned();
        if let Some(entry) = clients.get_mut(&client) {
            change(entry);
            if entry.sessions == 0 && entry.leases == 0 {
                clients.remove(&client);
            }
        }
    }
}

/// What one client address uses.
#[derive(Debug, Default)]
struct ClientUse {
    sessions: usize,
    leases: usize,
}

impl ClientUse {
    fn count(&mut self, share: Share) -> &mut usize {
        match share {
            Share::Session => &mut self.sessions,
            Share::Lease => &mut self.leases,
        }
    }
}

/// What a client address holds a share of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Share {
    Session,
    Lease,
}

/// One session or data lease of a client address; counted until dropped.
pub struct ClientShare {
    admission: Arc<Admission>,
    client: IpAddr,
    share: Share,
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let share = self.share;
        self.admission.update_client(self.client, |u| {
            let count = u.count(share);
            *count = count.saturating_sub(1);
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
        let mut debt = self.debt.lock_unpoisoned();
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
        let mut debt = self.slots.debt.lock_unpoisoned();
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
mod tests;

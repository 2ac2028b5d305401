//! Admission decisions: the order of refusals, bans, client shares, session slots and
//! the refusal log budget.
use super::*;
use crate::{config::Config, policy::bans::BanReason};

fn admission(max_sessions: usize, per_client: usize) -> Arc<Admission> {
    let config = Config::parse(&format!(
        "[[service]]\nname = \"ftp\"\nlisten = \"203.0.113.1:21\"\n\
         origin = \"198.51.100.2:21\"\ndata_ports = \"40000-40099\"\n\
         dataplane = \"userspace\"\nmax_sessions_per_client = {per_client}\n\
         max_leases_per_client = {per_client}\n"
    ))
    .unwrap();
    let service = config.services().next().unwrap();
    Arc::new(Admission::new(
        service,
        SessionSlots::new(max_sessions),
        Arc::new(Bans::default()),
    ))
}

fn peer(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// A service banning after 2 failures for 30 s, and one without a policy sharing its
/// list: a banned address is refused by both (first, before the session caps), its
/// neighbour is not, and it is served again when the ban ends.
#[test]
fn banned_addresses_are_refused_by_every_service_until_the_ban_ends() {
    let parse = |extra: &str| {
        Config::parse(&format!(
            "[[service]]\nname = \"ftp\"\nlisten = \"203.0.113.1:21\"\n\
             origin = \"198.51.100.2:21\"\ndata_ports = \"40000-40099\"\n\
             dataplane = \"userspace\"\nmax_sessions_per_client = 1\n{extra}"
        ))
        .unwrap()
        .services()
        .next()
        .unwrap()
        .clone()
    };
    let bans = Arc::new(Bans::default());
    let slots = SessionSlots::new(10);
    let strict = parse("ban_after_failures = 2\nban_secs = 30\n");
    let strict = Arc::new(Admission::new(&strict, slots.clone(), bans.clone()));
    let other = Arc::new(Admission::new(&parse(""), slots, bans));
    let t0 = Instant::now();
    let client: IpAddr = "192.0.2.7".parse().unwrap();
    let held = strict.admit(peer("192.0.2.7:40000"), t0).unwrap();
    assert_eq!(other.login_failed(client, t0), None);
    assert_eq!(strict.login_failed(client, t0), None);
    let ban = strict.login_failed(client, t0).unwrap();
    assert_eq!(
        (ban.service.as_str(), ban.until, ban.reason),
        (
            "ftp",
            t0 + Duration::from_secs(30),
            BanReason::LoginFailures
        )
    );
    let at = |s| t0 + Duration::from_secs(s);
    // Another service's failure while banned: the same ban (its session closes).
    assert_eq!(other.login_failed(client, at(1)), Some(ban.clone()));
    let decisions: Vec<_> = [
        (&strict, "192.0.2.7:40001", 0),
        (&other, "[::ffff:192.0.2.7]:40002", 29),
        (&strict, "192.0.2.8:40000", 29),
        (&strict, "192.0.2.7:40003", 30),
    ]
    .into_iter()
    .map(|(a, p, s)| a.admit(peer(p), at(s)).map(drop))
    .collect();
    assert_eq!(
        decisions,
        [
            Err(Refusal::Banned(ban.clone())),
            Err(Refusal::Banned(ban.clone())),
            Ok(()),
            // Served again; the session cap still counts the one held.
            Err(Refusal::ClientLimit { limit: 1 }),
        ]
    );
    drop(held);
    assert!(strict.admit(peer("192.0.2.7:40004"), at(30)).is_ok());
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

/// (peer) → decision, with 3 global slots and 2 per client address; what was admitted
/// stays admitted through the table. IPv4-mapped IPv6 peers are their IPv4 address.
#[test]
fn admission_decides_in_order_family_client_cap_global_cap() {
    let admission = admission(3, 2);
    let cases = [
        ("[2001:db8::7]:40000", Err(Refusal::Ipv6)),
        ("192.0.2.7:40000", Ok(())),
        ("[::ffff:192.0.2.7]:40001", Ok(())),
        ("192.0.2.7:40002", Err(Refusal::ClientLimit { limit: 2 })),
        ("192.0.2.8:40000", Ok(())),
        ("192.0.2.9:40000", Err(Refusal::Busy)),
    ];
    let mut held = Vec::new();
    for (from, want) in cases {
        let got = admission
            .admit(peer(from), Instant::now())
            .map(|a| held.push(a));
        assert_eq!(got, want, "{from}");
    }
    // A refused session took no share: 192.0.2.9 gets one as soon as a slot is free.
    held.pop();
    assert!(
        admission
            .admit(peer("192.0.2.9:40001"), Instant::now())
            .is_ok()
    );
}

/// Lease slots per client address, given back when dropped; the address's entry goes
/// when it holds neither sessions nor leases.
#[test]
fn lease_slots_per_client() {
    let admission = admission(3, 2);
    let client: IpAddr = "192.0.2.7".parse().unwrap();
    let a = admission.take_lease_slot(client).unwrap();
    let b = admission
        .take_lease_slot("::ffff:192.0.2.7".parse().unwrap())
        .unwrap();
    assert!(admission.take_lease_slot(client).is_none());
    assert_eq!(admission.client_leases(client), 2);
    drop(a);
    assert_eq!(admission.client_leases(client), 1);
    drop(b);
    assert_eq!(admission.client_leases(client), 0);
    assert!(admission.clients.lock().unwrap().is_empty());
}

#[test]
fn every_refusal_is_one_421_line() {
    let refusals = [
        Refusal::Ipv6,
        Refusal::Banned(Ban {
            address: "192.0.2.7".parse().unwrap(),
            service: "ftp".into(),
            until: Instant::now(),
            reason: BanReason::LoginFailures,
        }),
        Refusal::ClientLimit { limit: 1 },
        Refusal::Busy,
        Refusal::OriginUnreachable { why: "x".into() },
    ];
    let replies: Vec<_> = refusals
        .iter()
        .map(|r| {
            (
                r.metric_reason(),
                String::from_utf8_lossy(r.reply()).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        replies,
        [
            (
                "ipv6",
                "421 IPv6 is not supported by this gateway.\r\n".to_owned()
            ),
            (
                "banned",
                "421 Your address is banned after too many failed logins, try again later.\r\n"
                    .to_owned()
            ),
            (
                "client_limit",
                "421 Too many connections from your address, try again later.\r\n".to_owned()
            ),
            (
                "limit",
                "421 Too many connections, try again later.\r\n".to_owned()
            ),
            (
                "origin_unreachable",
                "421 Service not available: cannot reach the server.\r\n".to_owned()
            ),
        ]
    );
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

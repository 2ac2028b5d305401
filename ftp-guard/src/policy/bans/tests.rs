//! The ban tracker: counting in a window, banning, expiry, unban, the caps, the sink.
use super::*;

const POLICY: BanPolicy = BanPolicy {
    after_failures: 3,
    window: Duration::from_secs(60),
    duration: Duration::from_secs(300),
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn tracker() -> (Bans, ListSink, Instant) {
    let sink = ListSink::default();
    (Bans::new(Box::new(sink.clone())), sink, Instant::now())
}

/// (seconds, address, service) → whether that failure leaves the address banned: three
/// within 60 s of the first ban it; failures spread wider start over; services count apart,
/// and IPv4-mapped IPv6 is its IPv4 address.
#[test]
fn failures_within_the_window_ban() {
    let (bans, sink, t0) = tracker();
    let at = |s| t0 + Duration::from_secs(s);
    let cases = [
        (0, "192.0.2.7", "ftp", false),
        (10, "192.0.2.7", "ftp", false),
        (61, "192.0.2.7", "ftp", false), // the window of the first ended: count starts over
        (62, "192.0.2.7", "archive", false),
        (70, "192.0.2.8", "ftp", false),
        (80, "::ffff:192.0.2.7", "ftp", false),
        (90, "192.0.2.7", "ftp", true),     // 61, 80, 90
        (91, "192.0.2.7", "archive", true), // already banned: the same ban
    ];
    let got: Vec<_> = cases
        .iter()
        .map(|(s, a, svc, _)| bans.record_failure(ip(a), svc, &POLICY, at(*s)).is_some())
        .collect();
    let want: Vec<_> = cases.iter().map(|c| c.3).collect();
    assert_eq!(got, want);
    let ban = Ban {
        address: ip("192.0.2.7"),
        service: "ftp".into(),
        until: at(390),
        reason: BanReason::LoginFailures,
    };
    assert_eq!(bans.list(at(91)), vec![ban.clone()]);
    assert_eq!(bans.banned(ip("::ffff:192.0.2.7"), at(389)), Some(ban));
    assert_eq!(
        sink.entries(),
        vec![(ip("192.0.2.7"), at(390), BanReason::LoginFailures)]
    );
    assert_eq!(bans.totals(), vec![(BanReason::LoginFailures, 1)]);
    // Expired: gone from the list and the sink; the counts of the window ended too.
    assert_eq!(bans.banned(ip("192.0.2.7"), at(390)), None);
    assert_eq!(bans.list(at(390)), vec![]);
    assert_eq!(sink.entries(), vec![]);
    assert_eq!(bans.tracked(), 0);
}

/// Unban lifts the ban (and the sink's entry) and forgets the failures counted.
#[test]
fn unban_lifts_the_ban_and_the_counts() {
    let (bans, sink, t0) = tracker();
    let client = ip("192.0.2.7");
    for _ in 0..3 {
        bans.record_failure(client, "ftp", &POLICY, t0);
    }
    bans.record_failure(client, "archive", &POLICY, t0);
    assert!(bans.banned(client, t0).is_some());
    assert!(bans.unban(ip("::ffff:192.0.2.7")));
    assert!(!bans.unban(client));
    assert_eq!(bans.banned(client, t0), None);
    assert_eq!(sink.entries(), vec![]);
    assert_eq!(bans.tracked(), 0);
    // Counting starts over: two more failures do not ban.
    bans.record_failure(client, "ftp", &POLICY, t0);
    assert_eq!(bans.record_failure(client, "ftp", &POLICY, t0), None);
}

/// A flood of addresses churns the capped maps but never grows them; the ban due soonest
/// makes room for a new one (and leaves the sink).
#[test]
fn counters_and_bans_are_capped() {
    let sink = ListSink::default();
    let bans = Bans::with_caps(Box::new(sink.clone()), 4, 2);
    let t0 = Instant::now();
    for n in 0..1000u32 {
        let a = IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + n));
        bans.record_failure(a, "ftp", &POLICY, t0);
    }
    assert_eq!(bans.tracked(), 4);
    let one = BanPolicy {
        after_failures: 1,
        ..POLICY
    };
    for (s, a) in [(0, "203.0.113.1"), (1, "203.0.113.2"), (2, "203.0.113.3")] {
        bans.record_failure(ip(a), "ftp", &one, t0 + Duration::from_secs(s));
    }
    let listed: Vec<_> = bans.list(t0).into_iter().map(|b| b.address).collect();
    assert_eq!(listed, [ip("203.0.113.2"), ip("203.0.113.3")]);
    let in_sink: Vec<_> = sink.entries().into_iter().map(|e| e.0).collect();
    assert_eq!(in_sink, listed);
    assert_eq!(bans.totals(), vec![(BanReason::LoginFailures, 3)]);
}

#[test]
fn the_policy_is_off_by_default() {
    let config = crate::config::Config::parse(
        "[[service]]\nname = \"ftp\"\nlisten = \"203.0.113.1:21\"\n\
         origin = \"198.51.100.2:21\"\ndata_ports = \"40000-40099\"\ndataplane = \"userspace\"\n\
         [[service]]\nname = \"b\"\nlisten = \"203.0.113.1:2121\"\n\
         origin = \"198.51.100.2:21\"\ndata_ports = \"40100-40199\"\ndataplane = \"userspace\"\n\
         ban_after_failures = 5\nban_window_secs = 30\nban_secs = 120\n",
    )
    .unwrap();
    let policies: Vec<_> = config.services().map(BanPolicy::of).collect();
    assert_eq!(
        policies,
        [
            None,
            Some(BanPolicy {
                after_failures: 5,
                window: Duration::from_secs(30),
                duration: Duration::from_secs(120),
            })
        ]
    );
}

/// A sink set later (the kernel path set up at a reload) gets the bans in force first.
#[test]
fn a_new_sink_gets_the_bans_in_force() {
    let (bans, _, t0) = tracker();
    let one = BanPolicy {
        after_failures: 1,
        ..POLICY
    };
    bans.record_failure(ip("192.0.2.7"), "ftp", &one, t0);
    let kernel = ListSink::default();
    bans.set_sink(Box::new(kernel.clone()));
    bans.record_failure(ip("192.0.2.8"), "ftp", &one, t0);
    let until = t0 + POLICY.duration;
    assert_eq!(
        kernel.entries(),
        vec![
            (ip("192.0.2.7"), until, BanReason::LoginFailures),
            (ip("192.0.2.8"), until, BanReason::LoginFailures)
        ]
    );
}

/// `ktime_ns` reads CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads) and adds the time
/// left: now lies between two readings of the clock, and 10 s ahead is 10 s more.
#[test]
fn ktime_is_the_monotonic_monotonic_ns() {
    let before = monotonic_ns();
    let now = ktime_ns(Instant::now());
    let later = ktime_ns(Instant::now() + Duration::from_secs(10));
    let after = monotonic_ns();
    assert!((before..=after).contains(&now), "{before} {now} {after}");
    let ahead = later - now;
    assert!(
        (10_000_000_000..10_000_000_000 + (after - before)).contains(&ahead),
        "{ahead}"
    );
}

//! The lease lifecycle driven by hand: what the driver would read, what each step asks.
use super::*;
use crate::dataplane::DataBytes;

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const NAT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const ORIGIN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 50000);
const TTL: Duration = Duration::from_secs(30);
const IDLE: Duration = Duration::from_secs(900);
/// The client's source port of its data connection.
const CLIENT_PORT: u16 = 5000;

fn table(active_port_20: bool) -> LeaseTable {
    LeaseTable::new(
        Addresses {
            public_ip: PUBLIC,
            nat_ip: NAT,
            ports: PortRange {
                first: 40000,
                last: 40003,
            },
            active_port_20,
        },
        DataTimeouts {
            lease_ttl: TTL,
            idle: IDLE,
            connect: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
        },
    )
}

/// A passive lease for [`CLIENT`] towards [`ORIGIN`], installed at `now`.
fn install(table: &mut LeaseTable, now: Instant) -> (LeaseId, Tracked) {
    let candidate = table.reserve_passive(CLIENT, ORIGIN, now).unwrap();
    let t = candidate.lease().clone();
    (table.commit(candidate), t)
}

/// A table with one passive lease, installed now: (table, now, the lease).
fn one_lease() -> (LeaseTable, Instant, LeaseId, Tracked) {
    let mut table = table(false);
    let t0 = Instant::now();
    let (id, t) = install(&mut table, t0);
    (table, t0, id, t)
}

/// The keys of `t`'s connection from [`CLIENT_PORT`]: (forward, pair).
fn keys(t: &Tracked) -> (FlowTuple, FlowTuple) {
    ((SocketAddrV4::new(t.peer, CLIENT_PORT), t.local), t.pair())
}

/// A flow entry whose other direction is `reverse`, last seen at 0 ns.
fn entry(reverse: FlowTuple, bytes: u64) -> FlowState {
    FlowState {
        packets: bytes / 100,
        bytes,
        last_seen_ns: 0,
        fin: false,
        rst: false,
        peer_fin_acked: false,
        tentative: false,
        reverse,
        isn: 0,
        last_ack: None,
    }
}

/// Both entries of `t`'s open connection: (forward, pair).
fn open(t: &Tracked) -> (FlowState, FlowState) {
    let (forward, pair) = keys(t);
    (entry(pair, 1000), entry(forward, 5000))
}

/// The same, closed both ways (each FIN acknowledged).
fn closed(t: &Tracked) -> (FlowState, FlowState) {
    let (mut f, mut r) = open(t);
    for e in [&mut f, &mut r] {
        e.fin = true;
        e.peer_fin_acked = true;
    }
    (f, r)
}

fn seen(lease: LeaseSeen, pair: Option<FlowState>, forward: Option<FlowState>) -> Observed {
    Observed {
        lease,
        pair,
        forward,
        clock_ns: 1_000_000,
    }
}

fn waiting_look(t: &Tracked, probe: Probe) -> Look {
    Look {
        lease: Some((t.peer, t.local, probe)),
        pair: t.pair(),
        forward: None,
    }
}

fn withdrawn_look(t: &Tracked) -> Look {
    Look {
        lease: None,
        pair: t.pair(),
        forward: None,
    }
}

fn carrying_look(t: &Tracked) -> Look {
    let (forward, pair) = keys(t);
    Look {
        lease: None,
        pair,
        forward: Some(forward),
    }
}

fn started(t: &Tracked) -> Report {
    Report::Started {
        mode: "passive",
        from: SocketAddrV4::new(CLIENT, CLIENT_PORT),
        to: ORIGIN,
        port: t.local.port(),
    }
}

fn done(t: &Tracked, idle: bool) -> Report {
    Report::Done {
        mode: "passive",
        from: SocketAddrV4::new(CLIENT, CLIENT_PORT),
        to: ORIGIN,
        port: t.local.port(),
        bytes_to_client: 5000,
        bytes_to_origin: 1000,
        // The entries acknowledge nothing (see `entry`).
        payload: DataBytes::default(),
        packets: 60,
        idle,
    }
}

fn unused(t: &Tracked, revoked: bool) -> Report {
    Report::Unused {
        port: t.local.port(),
        revoked,
    }
}

/// The claim event of `t`'s connection, delivered.
fn claim(table: &mut LeaseTable, t: &Tracked) -> Option<(LeaseId, Step)> {
    let (forward, pair) = keys(t);
    table.on_event(&Event {
        kind: EventKind::Claimed,
        key: forward,
        reverse: pair,
    })
}

fn again(reports: Vec<Report>) -> Step {
    Step {
        remove_flows: Vec::new(),
        reports,
        again: true,
    }
}

/// One look at a lease: at `at`, the table asks for `look`, the driver finds `found`, the
/// step asks for `then`.
struct Moment {
    at: Instant,
    look: Look,
    found: Observed,
    then: Step,
}

fn run(table: &mut LeaseTable, id: LeaseId, moments: Vec<Moment>) {
    for (i, m) in moments.into_iter().enumerate() {
        assert_eq!(table.look(id, m.at), Some(m.look), "look {i}");
        assert_eq!(table.step(id, &m.found, m.at), m.then, "step {i}");
    }
}

fn totals(installed: u64, used: u64, active: u64) -> Snapshot {
    Snapshot {
        installed,
        used,
        active,
        ..Snapshot::default()
    }
}

#[test]
fn claim_event_frees_the_port_and_carries() {
    let (mut table, t0, id, t) = one_lease();
    assert_eq!(table.shared.ports.held(), 1);
    assert_eq!(
        claim(&mut table, &t),
        Some((
            id,
            Step {
                reports: vec![started(&t)],
                ..Step::default()
            }
        ))
    );
    assert_eq!(
        table.leases[&id].stage,
        Stage::Carrying {
            peer_port: CLIENT_PORT
        }
    );
    assert_eq!(
        table.shared.ports.held(),
        0,
        "the claim keeps the port held"
    );
    assert_eq!(table.snapshot(), totals(1, 1, 1));
    assert_eq!(
        table
            .live()
            .map(|t| t.info((None, None), t0))
            .collect::<Vec<_>>(),
        vec![LeaseInfo {
            mode: "passive".into(),
            port: t.local.port(),
            peer: SocketAddrV4::new(CLIENT, CLIENT_PORT).to_string(),
            target: ORIGIN.to_string(),
            state: "carrying".into(),
            age_secs: 0.0,
            bytes_to_client: 0,
            bytes_to_origin: 0,
        }]
    );
}

#[test]
fn events_about_others_change_nothing() {
    let mut table = table(false);
    let (id, t) = install(&mut table, Instant::now());
    let (forward, pair) = keys(&t);
    // A claim by someone else's address on the same pair (not this lease's peer).
    let stranger = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), CLIENT_PORT);
    let spoofed = Event {
        kind: EventKind::Claimed,
        key: (stranger, t.local),
        reverse: pair,
    };
    assert_eq!(table.on_event(&spoofed), Some((id, Step::default())));
    assert_eq!(table.leases[&id].stage, Stage::Waiting);
    // An event about no lease of this table.
    let unknown = Event {
        kind: EventKind::Fin,
        key: (stranger, SocketAddrV4::new(PUBLIC, 41000)),
        reverse: (ORIGIN, SocketAddrV4::new(NAT, 41000)),
    };
    assert_eq!(table.on_event(&unknown), None);
    // A FIN on this lease: look now.
    let fin = Event {
        kind: EventKind::Fin,
        key: pair,
        reverse: forward,
    };
    assert_eq!(table.on_event(&fin), Some((id, again(Vec::new()))));
}

#[test]
fn a_lost_claim_is_caught_by_the_periodic_look() {
    let (mut table, t0, id, t) = one_lease();
    let (f, r) = open(&t);
    let t2 = t0 + LOOK_WAITING;
    run(
        &mut table,
        id,
        vec![
            // Still waiting: looked at again after LOOK_WAITING.
            Moment {
                at: t0,
                look: waiting_look(&t, Probe::Check),
                found: seen(LeaseSeen::InMap, None, None),
                then: Step::default(),
            },
            // Gone from the map, its connection complete: claimed, looked at as carried.
            Moment {
                at: t2,
                look: waiting_look(&t, Probe::Check),
                found: seen(LeaseSeen::Absent, Some(r), None),
                then: again(vec![started(&t)]),
            },
            Moment {
                at: t2,
                look: carrying_look(&t),
                found: seen(LeaseSeen::NotLooked, Some(r), Some(f)),
                then: Step::default(),
            },
        ],
    );
    assert_eq!(table.due(t0 + Duration::from_millis(1)), Vec::new());
    assert_eq!(table.due(t2 + LOOK_CARRYING), vec![id]);
    assert_eq!(table.snapshot(), totals(1, 1, 1));
}

#[test]
fn fin_close_waits_out_its_grace_then_removes_the_flows() {
    for (close, how) in [
        (closed as fn(&Tracked) -> (FlowState, FlowState), "FINs"),
        (
            |t: &Tracked| {
                let (f, mut r) = open(t);
                r.rst = true;
                (f, r)
            },
            "RST",
        ),
    ] {
        let mut table = table(false);
        let t0 = Instant::now();
        let (id, t) = install(&mut table, t0);
        let (f, r) = close(&t);
        let (forward_key, pair_key) = keys(&t);
        let t1 = t0 + Duration::from_secs(3);
        claim(&mut table, &t);
        run(
            &mut table,
            id,
            vec![
                // Seen closed: its grace begins, its NAT pair rests.
                Moment {
                    at: t1,
                    look: carrying_look(&t),
                    found: seen(LeaseSeen::NotLooked, Some(r), Some(f)),
                    then: Step::default(),
                },
                Moment {
                    at: t1 + CLOSE_GRACE,
                    look: carrying_look(&t),
                    found: seen(LeaseSeen::NotLooked, Some(r), Some(f)),
                    then: Step {
                        remove_flows: vec![forward_key, pair_key],
                        reports: vec![done(&t, false)],
                        again: false,
                    },
                },
            ],
        );
        assert_eq!(table.look(id, t1), None, "{how}: not forgotten");
        assert_eq!(
            table.snapshot(),
            Snapshot {
                installed: 1,
                used: 1,
                bytes_to_client: 5000,
                bytes_to_origin: 1000,
                flows_closed: 1,
                ..Snapshot::default()
            },
            "{how}"
        );
    }
}

#[test]
fn a_closed_connection_that_reopens_takes_its_nat_pair_back() {
    let (mut table, t0, id, t) = one_lease();
    claim(&mut table, &t);
    let (cf, cr) = closed(&t);
    let (of, or) = open(&t);
    table.step(id, &seen(LeaseSeen::NotLooked, Some(cr), Some(cf)), t0);
    assert!(table.leases[&id].nat_released);
    assert_eq!(
        table.step(id, &seen(LeaseSeen::NotLooked, Some(or), Some(of)), t0),
        Step::default()
    );
    let tracked = &table.leases[&id];
    assert_eq!(
        (
            tracked.nat_released,
            tracked.closed_since,
            tracked.next_look
        ),
        (false, None, t0 + LOOK_CARRYING)
    );
}

#[test]
fn idle_connection_is_removed_at_once() {
    let (mut table, t0, id, t) = one_lease();
    let (forward_key, pair_key) = keys(&t);
    let (f, r) = open(&t);
    claim(&mut table, &t);
    let mut quiet = seen(LeaseSeen::NotLooked, Some(r), Some(f));
    quiet.clock_ns = IDLE.as_nanos() as u64;
    assert_eq!(table.step(id, &quiet, t0), Step::default(), "not idle yet");
    quiet.clock_ns += 1;
    assert_eq!(
        table.step(id, &quiet, t0),
        Step {
            remove_flows: vec![forward_key, pair_key],
            reports: vec![done(&t, true)],
            again: false,
        }
    );
    assert_eq!(table.snapshot().flows_idle, 1);
}

#[test]
fn expiry_withdraws_and_removes_a_tentative_flow() {
    let (mut table, t0, id, t) = one_lease();
    let deadline = t0 + TTL;
    // A spoofed SYN's entry: tentative, of the client's address.
    let spoofer = SocketAddrV4::new(CLIENT, 6666);
    let mut tentative = entry((spoofer, t.local), 0);
    tentative.tentative = true;
    let unfinished = Report::Unfinished {
        from: spoofer,
        port: t.local.port(),
    };
    run(
        &mut table,
        id,
        vec![
            Moment {
                at: deadline,
                look: waiting_look(&t, Probe::Remove),
                found: seen(LeaseSeen::Removed, Some(tentative), None),
                then: Step {
                    remove_flows: vec![(spoofer, t.local), t.pair()],
                    reports: vec![unused(&t, false), unfinished],
                    again: false,
                },
            },
            // Another SYN that read the lease before it went: removed too, looked at soon.
            Moment {
                at: deadline + Duration::from_secs(1),
                look: withdrawn_look(&t),
                found: seen(LeaseSeen::NotLooked, Some(tentative), None),
                then: Step {
                    remove_flows: vec![(spoofer, t.local), t.pair()],
                    reports: vec![unfinished],
                    again: false,
                },
            },
        ],
    );
    assert_eq!(
        table.shared.ports.held(),
        0,
        "the withdrawn port is still held"
    );
    assert_eq!(table.active(), 0);
    assert_eq!(table.due(deadline + Duration::from_secs(2)), vec![id]);
    // Nothing left when its linger is over: forgotten.
    let over = deadline + TENTATIVE_LINGER;
    assert_eq!(
        table.step(id, &seen(LeaseSeen::NotLooked, None, None), over),
        Step::default()
    );
    assert_eq!(table.look(id, over), None);
    assert_eq!(
        table.snapshot(),
        Snapshot {
            expired: 1,
            ..totals(1, 0, 0)
        }
    );
}

/// How a revoked waiting lease's story goes from `t0`: the looks and steps.
type Story = fn(&Tracked, Instant) -> Vec<Moment>;

#[test]
fn a_revoked_lease_is_withdrawn_unless_claimed_and_a_late_claim_is_carried() {
    let cases: [(&str, Story, Snapshot); 2] = [
        (
            "withdrawn, then its handshake completes (its ACK crossed the withdrawal)",
            |t, t0| {
                vec![
                    Moment {
                        at: t0,
                        look: waiting_look(t, Probe::Remove),
                        found: seen(LeaseSeen::Removed, None, None),
                        then: Step {
                            reports: vec![unused(t, true)],
                            ..Step::default()
                        },
                    },
                    Moment {
                        at: t0 + Duration::from_secs(1),
                        look: withdrawn_look(t),
                        found: seen(LeaseSeen::NotLooked, Some(open(t).1), None),
                        then: again(vec![started(t)]),
                    },
                ]
            },
            Snapshot {
                revoked: 1,
                ..totals(1, 1, 1)
            },
        ),
        (
            "claimed already: settled as claimed",
            |t, t0| {
                vec![Moment {
                    at: t0,
                    look: waiting_look(t, Probe::Remove),
                    found: seen(LeaseSeen::Absent, Some(open(t).1), None),
                    then: again(vec![started(t)]),
                }]
            },
            totals(1, 1, 1),
        ),
    ];
    for (how, story, after) in cases {
        let (mut table, t0, id, t) = one_lease();
        assert!(table.revoke(id, t0), "{how}");
        run(&mut table, id, story(&t, t0));
        assert_eq!(table.look(id, t0), Some(carrying_look(&t)), "{how}");
        assert_eq!(table.snapshot(), after, "{how}");
        // Carrying: a revoke leaves the connection alone.
        assert!(!table.revoke(id, t0), "{how}");
        assert_eq!(table.look(id, t0), Some(carrying_look(&t)), "{how}");
    }
}

#[test]
fn a_lease_gone_without_a_connection_is_given_up_after_a_second_look() {
    let (mut table, t0, id, t) = one_lease();
    let t1 = t0 + Duration::from_secs(1);
    let gone = seen(LeaseSeen::Absent, None, None);
    run(
        &mut table,
        id,
        vec![Moment {
            at: t0,
            look: waiting_look(&t, Probe::Check),
            found: gone,
            then: Step::default(),
        }],
    );
    assert_eq!(table.due(t0), vec![id], "looked at again at the next sweep");
    assert_eq!(table.step(id, &gone, t1), Step::default());
    assert_eq!(table.look(id, t1), None);
    assert_eq!(table.shared.ports.held(), 0);
}

#[test]
fn a_peer_holding_every_port_is_refused_until_one_is_free() {
    let mut table = table(false);
    let t0 = Instant::now();
    let ids: Vec<LeaseId> = (0..4).map(|_| install(&mut table, t0).0).collect();
    assert!(matches!(
        table.reserve_passive(CLIENT, ORIGIN, t0),
        Err(Refused::PeerHoldsAll)
    ));
    let mut waiting = table.waiting_of(CLIENT, PUBLIC);
    waiting.sort_by_key(|id| id.0);
    assert_eq!(waiting, ids);
    // Another client shares the ports (towards another origin port: the four NAT ports
    // towards this one are taken).
    let other = Ipv4Addr::new(203, 0, 113, 3);
    let elsewhere = SocketAddrV4::new(*ORIGIN.ip(), 50001);
    assert!(table.reserve_passive(other, elsewhere, t0).is_ok());
    assert!(matches!(
        table.reserve_passive(other, ORIGIN, t0),
        Err(Refused::Error(LeaseError::PortsExhausted(4)))
    ));
}

#[test]
fn a_candidate_given_back_frees_its_ports() {
    let mut table = table(false);
    let t0 = Instant::now();
    let candidate = table.reserve_passive(CLIENT, ORIGIN, t0).unwrap();
    let local = candidate.lease().local;
    table.give_back(candidate, true, t0);
    assert_eq!(table.shared.ports.held(), 1, "kept for the caller to skip");
    table.give_back_port(CLIENT, local);
    assert_eq!(table.shared.ports.held(), 0);
    let candidate = table.reserve_passive(CLIENT, ORIGIN, t0).unwrap();
    table.give_back(candidate, false, t0);
    assert_eq!(table.shared.ports.held(), 0);
    assert_eq!(table.snapshot(), Snapshot::default());
}

#[test]
fn active_leases_sharing_a_source_conflict_while_alive() {
    let mut table = table(true);
    let t0 = Instant::now();
    let client = SocketAddrV4::new(CLIENT, 7000);
    let candidate = table.reserve_active(*ORIGIN.ip(), client, t0).unwrap();
    let t = candidate.lease().clone();
    assert_eq!(
        (t.peer, *t.local.ip(), t.target, t.source, t.active),
        (
            *ORIGIN.ip(),
            NAT,
            client,
            SocketAddrV4::new(PUBLIC, 20),
            true
        )
    );
    let id = table.commit(candidate);
    match table.reserve_active(*ORIGIN.ip(), client, t0) {
        Err(Refused::Error(LeaseError::Conflict(to))) => assert_eq!(to, client.into()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        table.shared.ports.held(),
        1,
        "the refused request's port is held"
    );
    // Once withdrawn, the pair is free again.
    assert!(table.revoke(id, t0));
    table.step(id, &seen(LeaseSeen::Removed, None, None), t0);
    assert!(table.reserve_active(*ORIGIN.ip(), client, t0).is_ok());
}

#[test]
fn adoption_takes_over_only_its_own_connections() {
    let mut table = table(false);
    let t0 = Instant::now();
    let peer = SocketAddrV4::new(CLIENT, CLIENT_PORT);
    let local = SocketAddrV4::new(PUBLIC, 40002);
    let source = SocketAddrV4::new(NAT, 40001);
    assert!(table.adopt(peer, local, (source, ORIGIN), t0));
    // Another address, or a port outside the range: another dataplane's.
    let elsewhere = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 40002);
    assert!(!table.adopt(peer, elsewhere, (source, ORIGIN), t0));
    let outside = SocketAddrV4::new(PUBLIC, 41000);
    assert!(!table.adopt(peer, outside, (source, ORIGIN), t0));
    let (id, t) = table
        .leases
        .iter()
        .map(|(id, t)| (*id, t.clone()))
        .next()
        .unwrap();
    assert_eq!(
        (t.peer, t.local, t.target, t.source, t.active, t.stage),
        (
            CLIENT,
            local,
            ORIGIN,
            source,
            false,
            Stage::Carrying {
                peer_port: CLIENT_PORT
            }
        )
    );
    assert_eq!(table.due(t0), vec![id], "looked at by the first sweep");
    // Its NAT pair is in use: a new lease towards the origin gets another NAT port.
    for _ in 0..3 {
        let c = table.reserve_passive(CLIENT, ORIGIN, t0).unwrap();
        assert_ne!(c.lease().source, source);
        table.commit(c);
    }
    assert!(matches!(
        table.reserve_passive(CLIENT, ORIGIN, t0),
        Err(Refused::Error(LeaseError::PortsExhausted(4)))
    ));
    // Its entries already gone (a previous process's leftovers): over after the grace.
    let gone = seen(LeaseSeen::NotLooked, None, None);
    assert_eq!(table.step(id, &gone, t0), Step::default());
    assert_eq!(
        table.step(id, &gone, t0 + CLOSE_GRACE),
        Step {
            remove_flows: Vec::new(),
            reports: vec![Report::Done {
                mode: "passive",
                from: peer,
                to: ORIGIN,
                port: 40002,
                bytes_to_client: 0,
                bytes_to_origin: 0,
                payload: DataBytes::default(),
                packets: 0,
                idle: false,
            }],
            again: false,
        }
    );
}

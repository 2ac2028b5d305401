//! Packet fixtures for the protection policy at the edge (ACLs, bans, the control port's
//! SYN rate), run in the kernel with BPF_PROG_TEST_RUN through both programs: each case
//! gives a frame and the whole outcome (action, counters moved, ACL rule counters moved).
//!
//! Two services are protected: 0 = 203.0.113.1 (control port 21, data 40000-40099),
//! 1 = 203.0.113.9 (control port 2121, data 50000-50009, no ACL, no SYN limit).
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use ftp_guard::{
    bpf::{AclAction, Bpf, ControlGuard, Lease, MapSizes, ProtectedRange, ProtectedService},
    config::Cidr,
};
use ftp_guard_testbed::{
    fixture::{Bpffs, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS, run_tc, run_xdp_marked},
    packet::{Ipv4Frame, flags},
    require_privileged,
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const OTHER_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const UNPROTECTED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
const CONTROL: u16 = 21;
const OTHER_CONTROL: u16 = 2121;
const DATA_PORT: u16 = 40001;

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const CLIENT2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
/// In the allow list's 203.0.113.0/24, denied by its own /32.
const DENIED_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// In 198.51.100.0/24, which is in both lists: deny wins.
const BOTH_LISTS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);
/// In no list.
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);

fn packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16, tcp_flags: u8) -> Vec<u8> {
    Ipv4Frame::tcp(
        SocketAddrV4::new(src, 51000),
        SocketAddrV4::new(dst, port),
        tcp_flags,
        &[],
    )
    .build()
}

fn syn(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    packet(src, dst, port, flags::SYN)
}

fn cidr(text: &str) -> Cidr {
    text.parse().unwrap()
}

/// Service 0's control port with SYN limits: per source (`syn_rate`/s, burst `syn_burst`)
/// and per /24 (`prefix_rate`/s, burst `prefix_burst`); a rate of 0 is no limit.
fn control(syn_rate: u32, syn_burst: u32, prefix_rate: u32, prefix_burst: u32) -> ControlGuard {
    ControlGuard {
        port: CONTROL,
        syn_rate,
        syn_burst,
        prefix_syn_rate: prefix_rate,
        prefix_syn_burst: prefix_burst,
    }
}

/// Both services protected, service 0's control port as `control0` says; admit leases on
/// DATA_PORT for every source of the fixtures.
fn kernel(control0: ControlGuard) -> Bpf {
    let mut kernel = Bpf::load(MapSizes::default()).expect("load eBPF object");
    let service = |public_ip, first_port, last_port, control| ProtectedService {
        range: ProtectedRange {
            public_ip,
            first_port,
            last_port,
            nat_ip: None,
            active_port_20: false,
        },
        control: Some(control),
    };
    kernel
        .set_protected_services(&[
            service(PUBLIC, 40000, 40099, control0),
            service(
                OTHER_PUBLIC,
                50000,
                50009,
                ControlGuard {
                    port: OTHER_CONTROL,
                    ..control(0, 0, 0, 0)
                },
            ),
        ])
        .unwrap();
    for peer in [CLIENT, CLIENT2, DENIED_HOST, BOTH_LISTS, STRANGER] {
        kernel
            .insert_lease(&Lease::admit(peer, SocketAddrV4::new(PUBLIC, DATA_PORT)))
            .unwrap();
    }
    kernel
}

/// Which program a run goes through.
#[derive(Clone, Copy, Debug)]
enum Program {
    Xdp,
    Tc,
}

const PROGRAMS: [Program; 2] = [Program::Xdp, Program::Tc];

/// A verdict as XDP spells it, whichever program gave it.
fn run(kernel: &Bpf, program: Program, frame: &[u8]) -> (u32, Vec<&'static str>) {
    let (action, out, moved) = match program {
        Program::Xdp => {
            let (action, out, moved, _) = run_xdp_marked(kernel, frame);
            (action, out, moved)
        }
        Program::Tc => {
            let (action, out, moved) = run_tc(kernel, frame);
            let action = match action {
                TC_ACT_OK => XDP_PASS,
                TC_ACT_SHOT => XDP_DROP,
                other => panic!("TC action {other}"),
            };
            (action, out, moved)
        }
    };
    // The policy never rewrites a packet.
    assert_eq!(out, frame, "{program:?} modified the frame");
    (action, moved)
}

/// Every ACL rule as (service, block, action, packets); the catch-all's block is "*".
type RuleRow = (u32, String, AclAction, u64);

fn acl_table(kernel: &Bpf) -> Vec<RuleRow> {
    kernel
        .acl_counts()
        .unwrap()
        .into_iter()
        .map(|r| {
            let block = r.block.map_or_else(|| "*".to_owned(), |b| b.to_string());
            (r.service, block, r.action, r.packets)
        })
        .collect()
}

/// The rules whose counters moved from `before` to `after`, with how much.
fn acl_moved(before: &[RuleRow], after: &[RuleRow]) -> Vec<RuleRow> {
    after
        .iter()
        .filter_map(|(service, block, action, packets)| {
            let old = before
                .iter()
                .find(|(s, b, a, _)| (s, b, a) == (service, block, action))
                .map_or(0, |r| r.3);
            (*packets != old).then(|| (*service, block.clone(), *action, packets - old))
        })
        .collect()
}

/// Service 0's ACL of the fixtures.
fn with_acl(kernel: &mut Bpf) {
    kernel
        .set_acl(
            0,
            &[cidr("203.0.113.0/24"), cidr("198.51.100.0/24")],
            &[cidr("203.0.113.66/32"), cidr("198.51.100.0/24")],
        )
        .unwrap();
}

fn row(block: &str, action: AclAction, packets: u64) -> RuleRow {
    (0, block.to_owned(), action, packets)
}

#[test]
fn acl_verdicts_and_rule_counters() {
    if !require_privileged() {
        return;
    }
    let mut kernel = kernel(control(0, 0, 0, 0));
    with_acl(&mut kernel);
    use AclAction::{Allow, Deny};
    let pass = |counter: &'static str| (XDP_PASS, vec![counter]);
    let drop_acl = (XDP_DROP, vec!["drop_acl"]);
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vec<u8>, (u32, Vec<&str>), Vec<RuleRow>)> = vec![
        (
            "allowed client to the control port",
            syn(CLIENT, PUBLIC, CONTROL),
            pass("pass_other_port"),
            vec![row("203.0.113.0/24", Allow, 1)],
        ),
        (
            "allowed client to its leased data port",
            syn(CLIENT, PUBLIC, DATA_PORT),
            pass("pass_leased"),
            vec![row("203.0.113.0/24", Allow, 1)],
        ),
        (
            "denied by its /32 inside the allowed /24, control port",
            syn(DENIED_HOST, PUBLIC, CONTROL),
            drop_acl.clone(),
            vec![row("203.0.113.66/32", Deny, 1)],
        ),
        (
            "denied by its /32, leased data port",
            packet(DENIED_HOST, PUBLIC, DATA_PORT, flags::ACK),
            drop_acl.clone(),
            vec![row("203.0.113.66/32", Deny, 1)],
        ),
        (
            "block in both lists: deny wins",
            syn(BOTH_LISTS, PUBLIC, CONTROL),
            drop_acl.clone(),
            vec![row("198.51.100.0/24", Deny, 1)],
        ),
        (
            "not in the allow list, control port",
            syn(STRANGER, PUBLIC, CONTROL),
            drop_acl.clone(),
            vec![row("*", Deny, 1)],
        ),
        (
            "not in the allow list, leased data port",
            syn(STRANGER, PUBLIC, DATA_PORT),
            drop_acl,
            vec![row("*", Deny, 1)],
        ),
        (
            "control port of another service (no ACL)",
            syn(STRANGER, OTHER_PUBLIC, OTHER_CONTROL),
            pass("pass_other_port"),
            vec![],
        ),
        (
            "another port of the public address",
            syn(STRANGER, PUBLIC, 22),
            pass("pass_other_port"),
            vec![],
        ),
        (
            "an address nobody protects",
            syn(STRANGER, UNPROTECTED, CONTROL),
            pass("pass_other_address"),
            vec![],
        ),
    ];
    let mut failures = Vec::new();
    for program in PROGRAMS {
        for (name, frame, want, want_rules) in &cases {
            let before = acl_table(&kernel);
            let got = run(&kernel, program, frame);
            let rules = acl_moved(&before, &acl_table(&kernel));
            if (&got, &rules) != (want, want_rules) {
                failures.push(format!(
                    "{program:?} {name}: got {got:?} rules {rules:?}, want {want:?} rules {want_rules:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The whole table, as userspace reads it: both programs' packets per rule.
    assert_eq!(
        acl_table(&kernel),
        vec![
            row("203.0.113.66/32", Deny, 4),
            row("203.0.113.0/24", Allow, 4),
            row("198.51.100.0/24", Deny, 2),
            row("*", Deny, 4),
        ]
    );
}

/// A reload's new ACL: rules kept keep their counts, removed ones go (with the catch-all
/// once the allow list is empty), and a source the old ACL denied passes at once.
#[test]
fn acl_replaced_in_place() {
    if !require_privileged() {
        return;
    }
    let mut kernel = kernel(control(0, 0, 0, 0));
    with_acl(&mut kernel);
    for frame in [
        syn(DENIED_HOST, PUBLIC, CONTROL),
        syn(CLIENT, PUBLIC, CONTROL),
    ] {
        run(&kernel, Program::Xdp, &frame);
    }
    kernel.set_acl(0, &[], &[cidr("198.51.100.0/24")]).unwrap();
    assert_eq!(
        acl_table(&kernel),
        vec![row("198.51.100.0/24", AclAction::Deny, 0)]
    );
    assert_eq!(
        run(&kernel, Program::Xdp, &syn(DENIED_HOST, PUBLIC, CONTROL)),
        (XDP_PASS, vec!["pass_other_port"])
    );
    assert_eq!(
        run(&kernel, Program::Xdp, &syn(BOTH_LISTS, PUBLIC, CONTROL)),
        (XDP_DROP, vec!["drop_acl"])
    );
    // A deny-only ACL, then the same again: the kept rule keeps its count.
    kernel.set_acl(0, &[], &[cidr("198.51.100.0/24")]).unwrap();
    assert_eq!(
        acl_table(&kernel),
        vec![row("198.51.100.0/24", AclAction::Deny, 1)]
    );
    // Services gone: their rules go.
    kernel.clear_acl_from(0).unwrap();
    assert_eq!(acl_table(&kernel), vec![]);
}

/// Ten thousand rules (as the policy benchmark uses): written, judged by the most specific
/// block, written again unchanged (every rule kept with its id), and cleared.
#[test]
fn ten_thousand_rules() {
    if !require_privileged() {
        return;
    }
    let mut kernel = kernel(control(0, 0, 0, 0));
    // Rule blocks only (no packet comes from them): /32s of 198.18.0.0/15.
    let deny: Vec<Cidr> = (0..10_000u32)
        .map(|i| Cidr {
            addr: IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)),
            prefix: 32,
        })
        .collect();
    let allow = [cidr("203.0.113.0/24")];
    kernel.set_acl(0, &allow, &deny).unwrap();
    let ids = |kernel: &Bpf| kernel.acl_counts().unwrap().len();
    assert_eq!(ids(&kernel), 10_002);
    let outcomes = [
        run(&kernel, Program::Xdp, &syn(CLIENT, PUBLIC, CONTROL)),
        run(&kernel, Program::Xdp, &syn(STRANGER, PUBLIC, CONTROL)),
    ];
    assert_eq!(
        outcomes,
        [
            (XDP_PASS, vec!["pass_other_port"]),
            (XDP_DROP, vec!["drop_acl"])
        ]
    );
    kernel.set_acl(0, &allow, &deny).unwrap();
    let counted: Vec<RuleRow> = acl_table(&kernel)
        .into_iter()
        .filter(|r| r.3 != 0)
        .collect();
    assert_eq!(
        counted,
        vec![
            row("203.0.113.0/24", AclAction::Allow, 1),
            row("*", AclAction::Deny, 1)
        ]
    );
    kernel.clear_acl_from(0).unwrap();
    assert_eq!(ids(&kernel), 0);
}

#[test]
fn bans_drop_until_they_expire() {
    if !require_privileged() {
        return;
    }
    let mut kernel = kernel(control(0, 0, 0, 0));
    let now = ftp_guard::bpf::monotonic_ns();
    let banned = IpAddr::V4(STRANGER);
    let expired = IpAddr::V4(CLIENT2);
    kernel.insert_ban(banned, now + 60_000_000_000, 7).unwrap();
    kernel.insert_ban(expired, now - 1, 8).unwrap();
    let drop_banned = (XDP_DROP, vec!["drop_banned"]);
    let cases = [
        (
            "banned, control port",
            syn(STRANGER, PUBLIC, CONTROL),
            drop_banned.clone(),
        ),
        (
            "banned, its leased data port",
            packet(STRANGER, PUBLIC, DATA_PORT, flags::ACK),
            drop_banned.clone(),
        ),
        (
            "banned, another service's control port",
            syn(STRANGER, OTHER_PUBLIC, OTHER_CONTROL),
            drop_banned,
        ),
        (
            "banned, an unprotected port",
            syn(STRANGER, PUBLIC, 22),
            (XDP_PASS, vec!["pass_other_port"]),
        ),
        (
            "ban expired",
            syn(CLIENT2, PUBLIC, CONTROL),
            (XDP_PASS, vec!["pass_other_port"]),
        ),
        (
            "never banned",
            syn(CLIENT, PUBLIC, DATA_PORT),
            (XDP_PASS, vec!["pass_leased"]),
        ),
    ];
    for program in PROGRAMS {
        for (name, frame, want) in &cases {
            assert_eq!(run(&kernel, program, frame), *want, "{program:?} {name}");
        }
    }
    let mut bans = kernel.bans();
    bans.sort();
    let mut want = vec![(banned, now + 60_000_000_000, 7), (expired, now - 1, 8)];
    want.sort();
    assert_eq!(bans, want);
    assert_eq!(kernel.sweep_bans(now).unwrap(), 1);
    assert_eq!(kernel.bans(), vec![(banned, now + 60_000_000_000, 7)]);
    assert!(kernel.remove_ban(banned).unwrap());
    assert!(!kernel.remove_ban(banned).unwrap());
    assert_eq!(
        run(&kernel, Program::Xdp, &syn(STRANGER, PUBLIC, CONTROL)),
        (XDP_PASS, vec!["pass_other_port"])
    );
}

/// Service 0 allows 1 SYN/s with a burst of 3 per source: the 4th SYN in a row is
/// dropped; packets that are not SYNs, other sources and the other service's control port
/// are not limited; giving the bucket one interval back lets exactly one more SYN in.
#[test]
fn control_port_syn_rate_per_source() {
    if !require_privileged() {
        return;
    }
    let mut kernel = kernel(control(1, 3, 0, 0));
    let client = IpAddr::V4(CLIENT);
    let pass = (XDP_PASS, vec!["pass_other_port"]);
    let over = (XDP_DROP, vec!["drop_syn_rate"]);
    for program in PROGRAMS {
        // A full bucket to start with.
        kernel.set_syn_bucket(0, client, 0).unwrap();
        let outcomes: Vec<_> = (0..4)
            .map(|_| run(&kernel, program, &syn(CLIENT, PUBLIC, CONTROL)))
            .collect();
        assert_eq!(
            outcomes,
            vec![pass.clone(), pass.clone(), pass.clone(), over.clone()],
            "{program:?}: burst"
        );
        let others = [
            packet(CLIENT, PUBLIC, CONTROL, flags::ACK),
            packet(CLIENT, PUBLIC, CONTROL, flags::SYN | flags::ACK),
            syn(CLIENT2, PUBLIC, CONTROL),
        ];
        for frame in &others {
            assert_eq!(
                run(&kernel, program, frame),
                pass,
                "{program:?}: not limited"
            );
        }
        for _ in 0..5 {
            assert_eq!(
                run(&kernel, program, &syn(CLIENT, OTHER_PUBLIC, OTHER_CONTROL)),
                pass,
                "{program:?}: the other service has no limit"
            );
        }
        // Refill by one interval (what one second would do): one SYN more, not two.
        let full_at = kernel.syn_bucket(0, client).unwrap().expect("tracked");
        kernel
            .set_syn_bucket(0, client, full_at - 1_000_000_000)
            .unwrap();
        let outcomes: Vec<_> = (0..2)
            .map(|_| run(&kernel, program, &syn(CLIENT, PUBLIC, CONTROL)))
            .collect();
        assert_eq!(
            outcomes,
            vec![pass.clone(), over.clone()],
            "{program:?}: refill"
        );
    }
}

/// All sources of one /24 share a budget (1 SYN/s, burst 2) on service 0's control port,
/// with no per-source limit: the third SYN from the network is dropped whichever address
/// sends it; another network is not affected.
#[test]
fn control_port_syn_budget_per_prefix() {
    if !require_privileged() {
        return;
    }
    let kernel = kernel(control(0, 0, 1, 2));
    let pass = (XDP_PASS, vec!["pass_other_port"]);
    let over = (XDP_DROP, vec!["drop_syn_prefix_rate"]);
    let outcomes: Vec<_> = [CLIENT, CLIENT2, DENIED_HOST, STRANGER, STRANGER]
        .into_iter()
        .map(|source| run(&kernel, Program::Xdp, &syn(source, PUBLIC, CONTROL)))
        .collect();
    assert_eq!(
        outcomes,
        vec![pass.clone(), pass.clone(), over, pass.clone(), pass]
    );
}

/// With pinning, a restarted ftp-guard adopts the policy maps with their contents: bans
/// and ACL rules (with their counts) hold across the restart.
#[test]
fn bans_and_rules_outlive_a_pinned_restart() {
    if !require_privileged() {
        return;
    }
    let bpffs = Bpffs::mount_fresh();
    let until = ftp_guard::bpf::monotonic_ns() + 60_000_000_000;
    let service0 = ProtectedService {
        range: ProtectedRange {
            public_ip: PUBLIC,
            first_port: 40000,
            last_port: 40099,
            nat_ip: None,
            active_port_20: false,
        },
        control: Some(control(0, 0, 0, 0)),
    };
    {
        let mut first = Bpf::load_pinned(MapSizes::default(), Some(&bpffs.pin())).unwrap();
        first.set_protected_services(&[service0]).unwrap();
        first.insert_ban(IpAddr::V4(STRANGER), until, 3).unwrap();
        with_acl(&mut first);
        assert_eq!(
            run(&first, Program::Xdp, &syn(DENIED_HOST, PUBLIC, CONTROL)),
            (XDP_DROP, vec!["drop_acl"])
        );
    }
    let second = Bpf::load_pinned(MapSizes::default(), Some(&bpffs.pin())).unwrap();
    assert_eq!(second.bans(), vec![(IpAddr::V4(STRANGER), until, 3)]);
    assert_eq!(
        acl_table(&second),
        vec![
            row("203.0.113.66/32", AclAction::Deny, 1),
            row("203.0.113.0/24", AclAction::Allow, 0),
            row("198.51.100.0/24", AclAction::Deny, 0),
            row("*", AclAction::Deny, 0),
        ]
    );
    assert_eq!(
        run(&second, Program::Xdp, &syn(STRANGER, PUBLIC, CONTROL)),
        (XDP_DROP, vec!["drop_banned"])
    );
}

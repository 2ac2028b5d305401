//! Packet-in/packet-out fixtures for the data-port guard, run in the kernel with
//! BPF_PROG_TEST_RUN (no interface needed), through both programs: `xdp_guard` and
//! `tc_guard` (the guard on devices without XDP redirect) judge alike. Each case: input
//! frame, expected action, expected counter; the output frame must equal the input (the
//! guard never rewrites). NAT and redirects are in `ebpf_nat_fixtures.rs`.
use std::net::{Ipv4Addr, SocketAddrV4};

use ftp_guard::bpf::{Bpf, Lease, MapSizes, ProtectedRange};
use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    fixture::{TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS, run_tc, run_xdp, run_xdp_marked},
    packet::{self, Ipv4Frame, flags},
    require_privileged,
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const OTHER_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
const LEASED_PORT: u16 = 40001;
const UNLEASED_PORT: u16 = 40002;

fn from(ip: Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(ip, 51000)
}

fn to(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn syn(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Ipv4Frame {
    Ipv4Frame::tcp(from(src), to(dst, port), flags::SYN, &[])
}

/// A kernel with 203.0.113.1:40000-40099 protected and one lease: CLIENT → 40001.
fn guarded_kernel() -> Bpf {
    let mut kernel = Bpf::load(MapSizes::default()).expect("load eBPF object");
    kernel
        .set_protected_ranges(&[ProtectedRange {
            public_ip: PUBLIC,
            first_port: 40000,
            last_port: 40099,
            nat_ip: None,
            active_port_20: false,
        }])
        .unwrap();
    kernel
        .insert_lease(&Lease::admit(CLIENT, to(PUBLIC, LEASED_PORT)))
        .unwrap();
    // The destination of packet::ipv6_tcp_syn is one of the gateway's addresses.
    kernel
        .set_local_ipv6(&["2001:db8::1".parse().unwrap()])
        .unwrap();
    kernel
}

/// [`packet::ipv6_tcp_syn`] with one 8-byte extension header of type `kind` (0:
/// hop-by-hop, 44: fragment) between the fixed header and TCP.
fn ipv6_with_extension(dst_port: u16, kind: u8, extension: [u8; 8]) -> Vec<u8> {
    let plain = packet::ipv6_tcp_syn(dst_port);
    let fixed_end = packet::ETH_HLEN + 40;
    let mut frame = plain[..fixed_end].to_vec();
    frame[packet::ETH_HLEN + 6] = kind;
    let payload = u16::from_be_bytes([frame[packet::ETH_HLEN + 4], frame[packet::ETH_HLEN + 5]]);
    frame[packet::ETH_HLEN + 4..packet::ETH_HLEN + 6].copy_from_slice(&(payload + 8).to_be_bytes());
    frame.extend_from_slice(&extension);
    frame.extend_from_slice(&plain[fixed_end..]);
    frame
}

/// Runs one frame through the program; returns the action and the output frame.
fn run(kernel: &Bpf, frame: &[u8]) -> (u32, Vec<u8>) {
    let (action, out, _) = run_xdp(kernel, frame);
    (action, out)
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    counter: Counter,
}

fn cases() -> Vec<Case> {
    let with_options = {
        let mut f = syn(CLIENT, PUBLIC, UNLEASED_PORT);
        // Router Alert (4 bytes) + NOP: IHL 7, the port sits 8 bytes later than usual.
        f.ip_options = vec![0x94, 0x04, 0x00, 0x00, 0x01];
        f
    };
    let leased_with_options = {
        let mut f = syn(CLIENT, PUBLIC, LEASED_PORT);
        f.ip_options = vec![0x01; 8];
        f
    };
    let first_fragment = {
        let mut f = syn(CLIENT, PUBLIC, LEASED_PORT);
        f.more_fragments = true;
        f
    };
    let later_fragment = {
        let mut f = syn(CLIENT, PUBLIC, UNLEASED_PORT);
        f.fragment_offset = 3;
        f.payload = vec![0xaa; 16];
        f
    };
    let tiny_first_fragment = {
        // Offset 0 with only 2 bytes of TCP: the destination port is not in this fragment.
        let mut f = syn(STRANGER, PUBLIC, UNLEASED_PORT);
        f.more_fragments = true;
        f.payload.truncate(2);
        f
    };
    let vlan_tagged = {
        let mut f = syn(CLIENT, PUBLIC, UNLEASED_PORT);
        f.vlan = Some(42);
        f
    };
    let vlan_leased = {
        let mut f = syn(CLIENT, PUBLIC, LEASED_PORT);
        f.vlan = Some(42);
        f
    };
    let bad_ihl = {
        let mut bytes = syn(CLIENT, PUBLIC, UNLEASED_PORT).build();
        bytes[packet::ETH_HLEN] = 0x44; // IHL 4 words < 20 bytes
        bytes
    };
    let truncated_ip = syn(CLIENT, PUBLIC, UNLEASED_PORT).build()[..packet::ETH_HLEN + 12].to_vec();
    let truncated_tcp =
        syn(CLIENT, PUBLIC, UNLEASED_PORT).build()[..packet::ETH_HLEN + 22].to_vec();

    vec![
        Case {
            name: "leased SYN from its client",
            frame: syn(CLIENT, PUBLIC, LEASED_PORT).build(),
            action: XDP_PASS,
            counter: Counter::PassLeased,
        },
        Case {
            name: "leased flow, later ACK with data",
            frame: Ipv4Frame::tcp(
                from(CLIENT),
                to(PUBLIC, LEASED_PORT),
                flags::ACK | flags::PSH,
                b"RETR data",
            )
            .build(),
            action: XDP_PASS,
            counter: Counter::PassLeased,
        },
        Case {
            name: "unleased port in range",
            frame: syn(CLIENT, PUBLIC, UNLEASED_PORT).build(),
            action: XDP_DROP,
            counter: Counter::DropNoLease,
        },
        Case {
            name: "leased port from another client",
            frame: syn(STRANGER, PUBLIC, LEASED_PORT).build(),
            action: XDP_DROP,
            counter: Counter::DropNoLease,
        },
        Case {
            name: "first port of the range",
            frame: syn(CLIENT, PUBLIC, 40000).build(),
            action: XDP_DROP,
            counter: Counter::DropNoLease,
        },
        Case {
            name: "last port of the range",
            frame: syn(CLIENT, PUBLIC, 40099).build(),
            action: XDP_DROP,
            counter: Counter::DropNoLease,
        },
        Case {
            name: "port just above the range",
            frame: syn(CLIENT, PUBLIC, 40100).build(),
            action: XDP_PASS,
            counter: Counter::PassOtherPort,
        },
        Case {
            name: "control port on the public address",
            frame: syn(STRANGER, PUBLIC, 21).build(),
            action: XDP_PASS,
            counter: Counter::PassOtherPort,
        },
        Case {
            name: "data-range port on another address",
            frame: syn(CLIENT, OTHER_PUBLIC, UNLEASED_PORT).build(),
            action: XDP_PASS,
            counter: Counter::PassOtherAddress,
        },
        Case {
            name: "IPv4 options, unleased",
            frame: with_options.build(),
            action: XDP_DROP,
            counter: Counter::DropNoLease,
        },
        Case {
            name: "IPv4 options, leased",
            frame: leased_with_options.build(),
            action: XDP_PASS,
            counter: Counter::PassLeased,
        },
        Case {
            name: "first fragment to the data range, even leased",
            frame: first_fragment.build(),
            action: XDP_DROP,
            counter: Counter::DropFragment,
        },
        Case {
            name: "later fragment (no ports)",
            frame: later_fragment.build(),
            action: XDP_PASS,
            counter: Counter::PassLaterFragment,
        },
        Case {
            name: "tiny first fragment hiding the port",
            frame: tiny_first_fragment.build(),
            action: XDP_DROP,
            counter: Counter::DropTruncated,
        },
        Case {
            name: "TCP header cut before the destination port",
            frame: truncated_tcp,
            action: XDP_DROP,
            counter: Counter::DropTruncated,
        },
        Case {
            name: "IPv4 header cut short",
            frame: truncated_ip,
            action: XDP_PASS,
            counter: Counter::PassMalformed,
        },
        Case {
            name: "IHL below 5",
            frame: bad_ihl,
            action: XDP_PASS,
            counter: Counter::PassMalformed,
        },
        Case {
            name: "UDP to the data range",
            frame: Ipv4Frame::udp(from(CLIENT), to(PUBLIC, UNLEASED_PORT), b"x").build(),
            action: XDP_DROP,
            counter: Counter::DropNotTcp,
        },
        Case {
            name: "UDP to another port of the public address",
            frame: Ipv4Frame::udp(from(CLIENT), to(PUBLIC, 53), b"x").build(),
            action: XDP_PASS,
            counter: Counter::PassNotTcp,
        },
        Case {
            name: "IPv6 TCP to the data port of a gateway address",
            frame: packet::ipv6_tcp_syn(UNLEASED_PORT),
            action: XDP_DROP,
            counter: Counter::DropIpv6,
        },
        Case {
            name: "IPv6 TCP to the data port behind a hop-by-hop header",
            frame: ipv6_with_extension(UNLEASED_PORT, 0, [6, 0, 1, 4, 0, 0, 0, 0]),
            action: XDP_DROP,
            counter: Counter::DropIpv6,
        },
        Case {
            name: "IPv6 TCP to the data port in a first fragment",
            frame: ipv6_with_extension(UNLEASED_PORT, 44, [6, 0, 0, 1, 0, 0, 0, 7]),
            action: XDP_DROP,
            counter: Counter::DropIpv6,
        },
        Case {
            name: "IPv6 later fragment to a gateway address (no ports in it)",
            frame: ipv6_with_extension(UNLEASED_PORT, 44, [6, 0, 0x05, 0x01, 0, 0, 0, 7]),
            action: XDP_PASS,
            counter: Counter::PassLaterFragment,
        },
        Case {
            name: "IPv6 TCP to another port behind a hop-by-hop header",
            frame: ipv6_with_extension(22, 0, [6, 0, 1, 4, 0, 0, 0, 0]),
            action: XDP_PASS,
            counter: Counter::PassNotIpv4,
        },
        Case {
            name: "IPv6 TCP to another port of a gateway address",
            frame: packet::ipv6_tcp_syn(22),
            action: XDP_PASS,
            counter: Counter::PassNotIpv4,
        },
        Case {
            name: "IPv6 TCP to the data port of an address not the gateway's",
            frame: {
                let mut f = packet::ipv6_tcp_syn(UNLEASED_PORT);
                // Destination 2001:db8::1 → 2001:db8::77 (last byte of the IPv6 header).
                f[packet::ETH_HLEN + 39] = 0x77;
                f
            },
            action: XDP_PASS,
            counter: Counter::PassNotIpv4,
        },
        Case {
            name: "ARP",
            frame: packet::arp_request(),
            action: XDP_PASS,
            counter: Counter::PassNotIpv4,
        },
        Case {
            name: "802.1Q tagged, unleased",
            frame: vlan_tagged.build(),
            action: XDP_DROP,
            counter: Counter::DropNoLease,
        },
        Case {
            name: "802.1Q tagged, leased",
            frame: vlan_leased.build(),
            action: XDP_PASS,
            counter: Counter::PassLeased,
        },
    ]
}

#[test]
fn guard_fixtures() {
    if !require_privileged() {
        return;
    }
    let kernel = guarded_kernel();
    let mut failures = Vec::new();
    for case in cases() {
        let (action, out, bumped, marked) = run_xdp_marked(&kernel, &case.frame);
        // A packet XDP passes carries the mark that spares TC behind it a second verdict.
        if marked != (action == XDP_PASS) {
            failures.push(format!(
                "{}: judged mark {marked} after action {action}",
                case.name
            ));
        }
        if action != case.action {
            failures.push(format!(
                "{}: action {action}, want {}",
                case.name, case.action
            ));
        }
        if bumped != [case.counter.name()] {
            failures.push(format!(
                "{}: counters bumped {bumped:?}, want [{}]",
                case.name,
                case.counter.name()
            ));
        }
        if action == XDP_PASS && out != case.frame {
            failures.push(format!("{}: passed frame was modified", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "fixture failures:\n{}",
        failures.join("\n")
    );
}

/// TC's action for the guard's verdict that XDP expresses as `xdp_action`.
fn tc_action(xdp_action: u32) -> u32 {
    match xdp_action {
        XDP_PASS => TC_ACT_OK,
        XDP_DROP => TC_ACT_SHOT,
        other => panic!("the guard gives no XDP action {other}"),
    }
}

/// What one program run did: (action, counters moved, output frame).
type Outcome = (u32, Vec<&'static str>, Vec<u8>);

/// Every case through `tc_guard`: the same verdict as TC's action, the same one counter,
/// the frame untouched — passed or dropped. (TC skips a packet XDP already judged by a
/// metadata mark; a test run cannot give an skb metadata, so that path is covered by the
/// netns tests, where XDP and TC run together.)
#[test]
fn tc_guard_fixtures() {
    if !require_privileged() {
        return;
    }
    let kernel = guarded_kernel();
    let failures: Vec<String> = cases()
        .into_iter()
        // A test run builds no skb from an IPv4 frame whose header is cut short (EINVAL).
        .filter(|case| case.name != "IPv4 header cut short")
        .filter_map(|case| {
            let (action, out, bumped) = run_tc(&kernel, &case.frame);
            let got: Outcome = (action, bumped, out);
            let want: Outcome = (
                tc_action(case.action),
                vec![case.counter.name()],
                case.frame.clone(),
            );
            (got != want).then(|| {
                format!(
                    "{}: action {} counters {:?} frame kept {}, want action {} counters {:?}",
                    case.name,
                    got.0,
                    got.1,
                    got.2 == case.frame,
                    want.0,
                    want.1
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "fixture failures:\n{}",
        failures.join("\n")
    );
}

/// ICMP to a guarded address: XDP leaves it to TC unjudged (unmarked, counted only as
/// deferred), because only TC can send a translated error on; TC passes what is not an
/// error about a data connection. A fragment, or ICMP to another address, both pass.
#[test]
fn icmp_is_judged_by_tc() {
    if !require_privileged() {
        return;
    }
    let kernel = guarded_kernel();
    let echo = |dst| Ipv4Frame::icmp(CLIENT, dst, 8, 0, &[0, 1, 0, 1, b'p', b'i', b'n', b'g']);
    // A "fragmentation needed" about a packet the gateway never sent (no flow).
    let quoted = syn(PUBLIC, CLIENT, 40001).build()[packet::ETH_HLEN..][..28].to_vec();
    let frag_needed = Ipv4Frame::icmp(CLIENT, PUBLIC, 3, 4, &[&[0, 0, 5, 0][..], &quoted].concat());
    let fragmented_echo = {
        let mut f = echo(PUBLIC);
        f.more_fragments = true;
        f
    };
    let deferred = (XDP_PASS, vec!["deferred_to_tc"], false);
    let judged = |counter: Counter| (XDP_PASS, vec![counter.name()], true);
    let cases = [
        (
            "echo request to the public address",
            echo(PUBLIC),
            deferred.clone(),
            Counter::PassNotTcp,
        ),
        (
            "error about no data connection",
            frag_needed,
            deferred,
            Counter::PassNotTcp,
        ),
        (
            "fragmented echo to the public address",
            fragmented_echo,
            judged(Counter::PassNotTcp),
            Counter::PassNotTcp,
        ),
        (
            "echo request to another address",
            echo(OTHER_PUBLIC),
            judged(Counter::PassOtherAddress),
            Counter::PassOtherAddress,
        ),
    ];
    for (name, frame, xdp, tc_counter) in cases {
        let frame = frame.build();
        let (action, out, bumped, marked) = run_xdp_marked(&kernel, &frame);
        assert_eq!((action, bumped, marked), xdp, "XDP: {name}");
        assert_eq!(out, frame, "XDP: {name}");
        let (action, out, bumped) = run_tc(&kernel, &frame);
        assert_eq!(
            (action, bumped, out),
            (TC_ACT_OK, vec![tc_counter.name()], frame),
            "TC: {name}"
        );
    }
}

#[test]
fn removing_a_lease_closes_the_port() {
    if !require_privileged() {
        return;
    }
    let mut kernel = guarded_kernel();
    let frame = syn(CLIENT, PUBLIC, LEASED_PORT).build();
    assert_eq!(run(&kernel, &frame).0, XDP_PASS);
    assert!(
        kernel
            .remove_lease(CLIENT, to(PUBLIC, LEASED_PORT))
            .unwrap()
    );
    assert_eq!(run(&kernel, &frame).0, XDP_DROP);
    assert!(
        !kernel
            .remove_lease(CLIENT, to(PUBLIC, LEASED_PORT))
            .unwrap()
    );
}

#[test]
fn nothing_is_protected_until_configured() {
    if !require_privileged() {
        return;
    }
    let kernel = Bpf::load(MapSizes::default()).unwrap();
    let (action, _) = run(&kernel, &syn(CLIENT, PUBLIC, UNLEASED_PORT).build());
    assert_eq!(action, XDP_PASS);
    assert_eq!(kernel.counters().unwrap().get(Counter::PassOtherAddress), 1);
}

#[test]
fn several_ranges_on_several_addresses() {
    if !require_privileged() {
        return;
    }
    let mut kernel = Bpf::load(MapSizes::default()).unwrap();
    kernel
        .set_protected_ranges(&[
            ProtectedRange {
                public_ip: PUBLIC,
                first_port: 40000,
                last_port: 40009,
                nat_ip: None,
                active_port_20: false,
            },
            ProtectedRange {
                public_ip: PUBLIC,
                first_port: 50000,
                last_port: 50009,
                nat_ip: None,
                active_port_20: false,
            },
            ProtectedRange {
                public_ip: OTHER_PUBLIC,
                first_port: 60000,
                last_port: 60000,
                nat_ip: None,
                active_port_20: false,
            },
        ])
        .unwrap();
    for (dst, port, want) in [
        (PUBLIC, 40005, XDP_DROP),
        (PUBLIC, 45000, XDP_PASS),
        (PUBLIC, 50009, XDP_DROP),
        (PUBLIC, 60000, XDP_PASS),
        (OTHER_PUBLIC, 60000, XDP_DROP),
        (OTHER_PUBLIC, 40005, XDP_PASS),
    ] {
        let (action, _) = run(&kernel, &syn(CLIENT, dst, port).build());
        assert_eq!(action, want, "{dst}:{port}");
    }
}

#[test]
fn a_full_lease_map_is_reported() {
    if !require_privileged() {
        return;
    }
    let mut kernel = Bpf::load(MapSizes {
        max_leases: 4,
        ..MapSizes::default()
    })
    .unwrap();
    let lease = |port| Lease::admit(CLIENT, to(PUBLIC, port));
    for port in 40000..40004 {
        kernel.insert_lease(&lease(port)).unwrap();
    }
    let err = kernel.insert_lease(&lease(40004)).unwrap_err();
    assert!(
        matches!(err, ftp_guard::bpf::BpfError::LeasesFull(4)),
        "{err}"
    );
    assert_eq!(kernel.lease_count(), 4);
}

/// A lease key already in the map is never overwritten: the insert reports it taken (its
/// caller tries another port) and the lease in the map stays as it was.
#[test]
fn a_taken_lease_key_is_reported_not_overwritten() {
    if !require_privileged() {
        return;
    }
    let mut kernel = Bpf::load(MapSizes::default()).unwrap();
    let local = to(PUBLIC, 40000);
    kernel.insert_lease(&Lease::admit(CLIENT, local)).unwrap();
    let err = kernel
        .insert_lease(&Lease::admit(CLIENT, local))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("a lease for {CLIENT} on {local} is already in the map")
    );
    assert_eq!(kernel.lease_keys(), [(CLIENT, local)]);
}

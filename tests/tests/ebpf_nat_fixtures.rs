//! Packet-in/packet-out fixtures for the kernel NAT path (XDP program, BPF_PROG_TEST_RUN):
//! for each direction and each drop reason, the input frame, the expected action, the
//! expected output frame (addresses, ports, valid checksums) and the expected counters.
//!
//! Each test runs on a thread inside a fresh, empty network namespace (forwarding off, only
//! `lo`), so a FIB lookup finds nothing: a packet whose way out the flow does not know yet
//! is NATed and handed to the stack by TC (`forwarded_by_stack`), and left untouched by
//! XDP for TC (`deferred_to_tc`); once the other direction has been seen on `lo`, both
//! redirect it there by themselves. The redirect itself is covered by the netns tests.
use std::net::{Ipv4Addr, SocketAddrV4};

use ftp_guard::bpf::{Bpf, Lease, LeaseAction, MapSizes, ProtectedRange, monotonic_ns};
use ftp_guard_common::{
    FLOW_ACKED, FLOW_CLAIMER, FLOW_L2, FLOW_PAIR_L2, FLOW_TARGET_ISN, FLOW_TENTATIVE, FlowKey,
    FlowValue,
};
use ftp_guard_testbed::{
    fixture::{
        TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT, run_tc, run_xdp,
        run_xdp_marked,
    },
    packet::{self, FIXTURE_ISN, Ipv4Frame, flags, internet_checksum, parse_tcp},
    require_privileged,
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
const NAT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const ORIGIN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PORT: u16 = 40001;
const ORIGIN_PORT: u16 = 30001;
const CLIENT_PORT: u16 = 51000;

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Runs `f` on a thread in a new, empty network namespace.
fn in_empty_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: affects only this thread's network namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("test thread panicked")
    })
}

fn nat_lease(port: u16, deadline_ns: u64) -> Lease {
    lease_to(
        CLIENT,
        sa(PUBLIC, port),
        [sa(ORIGIN, ORIGIN_PORT + (port - PORT)), sa(NAT, port)],
        deadline_ns,
    )
}

/// A NAT lease for `peer` on the gateway's `local` to `target` from `source`, without
/// interface, source-port or MSS conditions.
fn lease_to(
    peer: Ipv4Addr,
    local: SocketAddrV4,
    [target, source]: [SocketAddrV4; 2],
    deadline_ns: u64,
) -> Lease {
    Lease {
        peer,
        local,
        action: LeaseAction::Nat {
            target,
            source,
            deadline_ns,
            target_ifindex: 0,
            mss_max: 0,
            peer_ifindex: 0,
            peer_port: 0,
        },
    }
}

fn kernel_with(sizes: MapSizes, leases: &[Lease]) -> Bpf {
    let mut kernel = Bpf::load(sizes).expect("load eBPF object");
    kernel
        .set_protected_ranges(&[ProtectedRange {
            public_ip: PUBLIC,
            first_port: 40000,
            last_port: 40099,
            nat_ip: Some(NAT),
            active_port_20: false,
        }])
        .unwrap();
    for lease in leases {
        kernel.insert_lease(lease).unwrap();
    }
    kernel
}

/// A kernel with the fixture's one passive lease, claimed through TC by the client's
/// completed handshake, and the connection's ends: [client, public address and port,
/// origin, NAT address and port].
fn claimed() -> (Bpf, [SocketAddrV4; 4]) {
    let kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
    let ends = [
        sa(CLIENT, CLIENT_PORT),
        sa(PUBLIC, PORT),
        sa(ORIGIN, ORIGIN_PORT),
        sa(NAT, PORT),
    ];
    let (action, _, moved) = run_tc(&kernel, &tcp(ends[0], ends[1], flags::SYN, &[]));
    assert_eq!(
        (action, moved),
        (TC_ACT_OK, vec!["nat_to_origin", "forwarded_by_stack"])
    );
    complete_handshake(&kernel, ends);
    (kernel, ends)
}

/// After the client's SYN: the origin's SYN-ACK and the client's ACK of it through TC,
/// which claim the lease. `[client, public, origin, nat]` as [`claimed`] returns them.
fn complete_handshake(kernel: &Bpf, [client, public, origin, nat]: [SocketAddrV4; 4]) {
    let (action, _, moved) = run_tc(kernel, &tcp(origin, nat, flags::SYN | flags::ACK, &[]));
    assert_eq!(
        (action, moved),
        (TC_ACT_REDIRECT, vec!["nat_to_client", "redirected"])
    );
    let (action, _, moved) = run_tc(kernel, &tcp(client, public, flags::ACK, &[]));
    assert_eq!(
        (action, moved),
        (TC_ACT_REDIRECT, vec!["nat_to_origin", "redirected"])
    );
    assert!(!kernel.has_lease(*client.ip(), public).unwrap());
}

fn far_future() -> u64 {
    monotonic_ns() + 3_600_000_000_000
}

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
    Ipv4Frame::tcp(src, dst, tcp_flags, payload).build()
}

/// Asserts the frame was rewritten to (src, dst) with valid checksums and the same payload.
fn assert_rewritten(out: &[u8], input: &[u8], src: SocketAddrV4, dst: SocketAddrV4) {
    let p = parse_tcp(out).unwrap();
    assert_eq!((p.src, p.dst), (src, dst), "rewritten addresses");
    assert!(p.ip_checksum_ok, "IPv4 header checksum wrong after NAT");
    assert!(p.tcp_checksum_ok, "TCP checksum wrong after NAT");
    assert_eq!(out.len(), input.len());
    let payload_at = packet::ETH_HLEN + 20 + 20;
    assert_eq!(out[payload_at..], input[payload_at..], "payload changed");
    let q = parse_tcp(input).unwrap();
    assert_eq!(p.tcp_flags, q.tcp_flags);
    assert_eq!(
        p.ttl, q.ttl,
        "the stack, not the program, decrements on this path"
    );
}

/// Like [`assert_rewritten`] for a packet the program redirected itself: TTL one less, and
/// the MAC addresses swapped from what arrived from the other side.
fn assert_redirected(out: &[u8], input: &[u8], src: SocketAddrV4, dst: SocketAddrV4) {
    let p = parse_tcp(out).unwrap();
    assert_eq!((p.src, p.dst), (src, dst), "rewritten addresses");
    assert!(p.ip_checksum_ok, "IPv4 header checksum wrong after NAT");
    assert!(p.tcp_checksum_ok, "TCP checksum wrong after NAT");
    assert_eq!(
        p.ttl + 1,
        parse_tcp(input).unwrap().ttl,
        "TTL not decremented"
    );
    // Every fixture frame goes from the same MAC to the same MAC: the way back swaps them.
    assert_eq!(
        out[0..6],
        input[6..12],
        "destination MAC = where the peer's came from"
    );
    assert_eq!(out[6..12], input[0..6], "source MAC = the gateway's own");
}

#[test]
fn both_directions_are_nated_with_valid_checksums() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
        let client = sa(CLIENT, CLIENT_PORT);
        let public = sa(PUBLIC, PORT);
        let origin = sa(ORIGIN, ORIGIN_PORT);
        let nat = sa(NAT, PORT);

        let syn = tcp(client, public, flags::SYN, &[]);
        let (action, out, moved) = run_tc(&kernel, &syn);
        assert_eq!(action, TC_ACT_OK);
        assert_eq!(moved, ["nat_to_origin", "forwarded_by_stack"]);
        assert_rewritten(&out, &syn, nat, origin);
        // The SYN started the connection; its lease waits for the handshake to complete.
        assert!(kernel.has_lease(CLIENT, public).unwrap());
        assert_eq!(kernel.flow_count(), 2);

        // The way back to the client was learned from its SYN: redirected, not routed.
        let syn_ack = tcp(origin, nat, flags::SYN | flags::ACK, &[]);
        let (action, out, moved) = run_tc(&kernel, &syn_ack);
        assert_eq!(action, TC_ACT_REDIRECT);
        assert_eq!(moved, ["nat_to_client", "redirected"]);
        assert_redirected(&out, &syn_ack, public, client);
        // The client's ACK completes the handshake: the lease is used up, and the same
        // client may be given this port again.
        let ack = tcp(client, public, flags::ACK, &[]);
        let (action, out, moved) = run_tc(&kernel, &ack);
        assert_eq!(
            (action, moved),
            (TC_ACT_REDIRECT, vec!["nat_to_origin", "redirected"])
        );
        assert_redirected(&out, &ack, nat, origin);
        assert!(!kernel.has_lease(CLIENT, public).unwrap());

        // Data both ways, then FIN both ways: bytes and flags land in the flow entries.
        let data = tcp(origin, nat, flags::ACK | flags::PSH, &[0x5a; 1000]);
        let (_, out, _) = run_tc(&kernel, &data);
        assert_redirected(&out, &data, public, client);
        run_tc(&kernel, &tcp(origin, nat, flags::FIN | flags::ACK, &[]));
        // ...and the way to the origin from the origin's packets.
        let fin = tcp(client, public, flags::FIN | flags::ACK, &[]);
        let (action, out, moved) = run_tc(&kernel, &fin);
        assert_eq!(
            (action, moved),
            (TC_ACT_REDIRECT, vec!["nat_to_origin", "redirected"])
        );
        assert_redirected(&out, &fin, nat, origin);
        let down = kernel.flow((origin, nat)).unwrap().unwrap();
        let up = kernel.flow((client, public)).unwrap().unwrap();
        assert_eq!(down.packets, 3);
        assert_eq!(down.bytes, 40 + 1040 + 40);
        assert_eq!((up.packets, up.bytes), (3, 40 + 40 + 40));
        assert!(down.fin && up.fin && !down.rst);
    });
}

#[test]
fn retransmitted_syn_follows_the_flow() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
        let syn = tcp(sa(CLIENT, CLIENT_PORT), sa(PUBLIC, PORT), flags::SYN, &[]);
        run_tc(&kernel, &syn);
        let (action, out, moved) = run_tc(&kernel, &syn);
        assert_eq!(action, TC_ACT_OK);
        assert_eq!(moved, ["nat_to_origin", "forwarded_by_stack"]);
        assert_rewritten(&out, &syn, sa(NAT, PORT), sa(ORIGIN, ORIGIN_PORT));
    });
}

#[test]
fn drop_reasons() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let past = monotonic_ns() - 1;
        let kernel = kernel_with(
            MapSizes::default(),
            &[
                nat_lease(PORT, far_future()),
                nat_lease(PORT + 1, past),
                nat_lease(PORT + 2, far_future()),
            ],
        );
        // The first connection claims the lease on PORT (XDP starts it, then leaves it to
        // TC; its handshake completes through TC).
        let syn = tcp(sa(CLIENT, CLIENT_PORT), sa(PUBLIC, PORT), flags::SYN, &[]);
        let (action, _, moved) = run_xdp(&kernel, &syn);
        assert_eq!((action, moved), (XDP_PASS, vec!["deferred_to_tc"]));
        run_tc(&kernel, &syn);
        complete_handshake(
            &kernel,
            [
                sa(CLIENT, CLIENT_PORT),
                sa(PUBLIC, PORT),
                sa(ORIGIN, ORIGIN_PORT),
                sa(NAT, PORT),
            ],
        );
        let cases: &[(&str, Vec<u8>, u32, &str)] = &[
            (
                "second connection to a used lease",
                tcp(
                    sa(CLIENT, CLIENT_PORT + 1),
                    sa(PUBLIC, PORT),
                    flags::SYN,
                    &[],
                ),
                XDP_DROP,
                "drop_no_lease",
            ),
            (
                "leased port from a stranger",
                tcp(sa(STRANGER, CLIENT_PORT), sa(PUBLIC, PORT), flags::SYN, &[]),
                XDP_DROP,
                "drop_no_lease",
            ),
            (
                "SYN after the lease's deadline",
                tcp(
                    sa(CLIENT, CLIENT_PORT),
                    sa(PUBLIC, PORT + 1),
                    flags::SYN,
                    &[],
                ),
                XDP_DROP,
                "drop_lease_expired",
            ),
            (
                "ACK with no flow on a live lease",
                tcp(
                    sa(CLIENT, CLIENT_PORT),
                    sa(PUBLIC, PORT + 2),
                    flags::ACK,
                    b"x",
                ),
                XDP_DROP,
                "drop_no_flow",
            ),
            (
                "SYN-ACK (not a plain SYN) with no flow",
                tcp(
                    sa(CLIENT, CLIENT_PORT),
                    sa(PUBLIC, PORT + 2),
                    flags::SYN | flags::ACK,
                    &[],
                ),
                XDP_DROP,
                "drop_no_flow",
            ),
            (
                "unleased port",
                tcp(
                    sa(CLIENT, CLIENT_PORT),
                    sa(PUBLIC, PORT + 50),
                    flags::SYN,
                    &[],
                ),
                XDP_DROP,
                "drop_no_lease",
            ),
            (
                "origin side, NAT port without a flow",
                tcp(
                    sa(ORIGIN, 30077),
                    sa(NAT, PORT + 50),
                    flags::SYN | flags::ACK,
                    &[],
                ),
                XDP_PASS,
                "pass_no_flow",
            ),
            (
                "origin side, port outside the range",
                tcp(sa(ORIGIN, 21), sa(NAT, 50123), flags::ACK, &[]),
                XDP_PASS,
                "pass_other_port",
            ),
        ];
        for (name, frame, want_action, want_counter) in cases {
            let (action, out, moved) = run_xdp(&kernel, frame);
            assert_eq!(action, *want_action, "{name}");
            assert_eq!(moved, [*want_counter], "{name}");
            if action == XDP_PASS {
                assert_eq!(&out, frame, "{name}: a passed packet must not be modified");
            }
        }
        // The refused connections created no state.
        assert_eq!(kernel.flow_count(), 2);
        assert_eq!(kernel.claimed_flows().len(), 1);
    });
}

#[test]
fn ip_options_and_broken_checksums_survive_nat() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
        let mut f = Ipv4Frame::tcp(sa(CLIENT, CLIENT_PORT), sa(PUBLIC, PORT), flags::SYN, &[]);
        f.ip_options = vec![0x01; 8];
        let with_options = f.build();
        let (action, out, _) = run_tc(&kernel, &with_options);
        assert_eq!(action, TC_ACT_OK);
        let p = parse_tcp(&out).unwrap();
        assert_eq!((p.src, p.dst), (sa(NAT, PORT), sa(ORIGIN, ORIGIN_PORT)));
        assert!(p.ip_checksum_ok && p.tcp_checksum_ok, "{p:?}");
        complete_handshake(
            &kernel,
            [
                sa(CLIENT, CLIENT_PORT),
                sa(PUBLIC, PORT),
                sa(ORIGIN, ORIGIN_PORT),
                sa(NAT, PORT),
            ],
        );

        // A segment that arrives corrupted must leave corrupted (the update is incremental,
        // never recomputed): the receiver's check still catches it. This is also the proof
        // that the checksum checker used above can fail.
        let mut bad = tcp(
            sa(CLIENT, CLIENT_PORT),
            sa(PUBLIC, PORT),
            flags::ACK,
            b"data",
        );
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert!(!parse_tcp(&bad).unwrap().tcp_checksum_ok);
        let (_, out, _) = run_tc(&kernel, &bad);
        let p = parse_tcp(&out).unwrap();
        assert_eq!(p.dst, sa(ORIGIN, ORIGIN_PORT));
        assert!(p.ip_checksum_ok);
        assert!(
            !p.tcp_checksum_ok,
            "NAT must not launder a corrupted segment"
        );
    });
}

#[test]
fn a_full_flow_table_rolls_back_the_claim() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let sizes = MapSizes {
            max_leases: 4,
            max_flows: 3,
        };
        let kernel = kernel_with(
            sizes,
            &[
                nat_lease(PORT, far_future()),
                nat_lease(PORT + 1, far_future()),
            ],
        );
        run_tc(
            &kernel,
            &tcp(sa(CLIENT, CLIENT_PORT), sa(PUBLIC, PORT), flags::SYN, &[]),
        );
        complete_handshake(
            &kernel,
            [
                sa(CLIENT, CLIENT_PORT),
                sa(PUBLIC, PORT),
                sa(ORIGIN, ORIGIN_PORT),
                sa(NAT, PORT),
            ],
        );
        assert_eq!(kernel.flow_count(), 2);
        // The second lease's pair does not fit: no entry may remain, the lease stays.
        let syn = tcp(
            sa(CLIENT, CLIENT_PORT + 1),
            sa(PUBLIC, PORT + 1),
            flags::SYN,
            &[],
        );
        let (action, _, moved) = run_tc(&kernel, &syn);
        assert_eq!(action, TC_ACT_SHOT);
        assert_eq!(moved, ["drop_flow_table_full"]);
        assert_eq!(kernel.flow_count(), 2);
        assert_eq!(kernel.claimed_flows().len(), 1);
        assert!(kernel.has_lease(CLIENT, sa(PUBLIC, PORT + 1)).unwrap());
    });
}

/// A lease whose target tuple (origin and NAT address and port) an open connection holds
/// cannot start a connection: it would hijack that one. The SYN is dropped as
/// `drop_tuple_taken` (not as a full table), nothing is left behind, the lease stays.
#[test]
fn a_tuple_held_by_an_open_connection_is_not_taken() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let (mut kernel, [_, _, origin, nat]) = claimed();
        let public = sa(PUBLIC, PORT + 1);
        kernel
            .insert_lease(&lease_to(STRANGER, public, [origin, nat], far_future()))
            .unwrap();
        let syn = tcp(sa(STRANGER, CLIENT_PORT), public, flags::SYN, &[]);
        let (action, out, moved) = run_tc(&kernel, &syn);
        assert_eq!(
            (action, moved, out),
            (TC_ACT_SHOT, vec!["drop_tuple_taken"], syn)
        );
        assert_eq!(kernel.flow_count(), 2);
        assert_eq!(kernel.claimed_flows().len(), 1);
        assert!(kernel.has_lease(STRANGER, public).unwrap());
    });
}

/// Active mode: the origin's SYN to the gateway's origin-side port claims the lease and
/// is NATed to the client's PORT address, from the public address (port 20 here); the
/// client's answers to public port 20 follow the flow back.
#[test]
fn active_mode_both_directions_from_port_20() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let mut kernel = Bpf::load(MapSizes::default()).unwrap();
        kernel
            .set_protected_ranges(&[ProtectedRange {
                public_ip: PUBLIC,
                first_port: 40000,
                last_port: 40099,
                nat_ip: Some(NAT),
                active_port_20: true,
            }])
            .unwrap();
        let client_data = sa(CLIENT, 51201);
        let origin_side = sa(NAT, 40007);
        kernel
            .insert_lease(&lease_to(
                ORIGIN,
                origin_side,
                [client_data, sa(PUBLIC, 20)],
                far_future(),
            ))
            .unwrap();
        let origin = sa(ORIGIN, 20);

        // Before the origin connects, the client's port-20 traffic is nobody's: passed.
        let early = tcp(client_data, sa(PUBLIC, 20), flags::ACK, &[]);
        let (action, out, moved) = run_tc(&kernel, &early);
        assert_eq!((action, moved), (TC_ACT_OK, vec!["pass_other_port"]));
        assert_eq!(out, early);

        let syn = tcp(origin, origin_side, flags::SYN, &[]);
        let (action, out, moved) = run_tc(&kernel, &syn);
        assert_eq!(action, TC_ACT_OK);
        assert_eq!(moved, ["nat_to_client", "forwarded_by_stack"]);
        assert_rewritten(&out, &syn, sa(PUBLIC, 20), client_data);
        assert!(kernel.has_lease(ORIGIN, origin_side).unwrap());
        assert_eq!(kernel.claimed_flows(), []);

        let syn_ack = tcp(client_data, sa(PUBLIC, 20), flags::SYN | flags::ACK, &[]);
        let (action, out, moved) = run_tc(&kernel, &syn_ack);
        assert_eq!(action, TC_ACT_REDIRECT);
        assert_eq!(moved, ["nat_to_origin", "redirected"]);
        assert_redirected(&out, &syn_ack, origin_side, origin);
        // The origin's ACK completes the handshake and claims the lease.
        let ack = tcp(origin, origin_side, flags::ACK, &[]);
        let (action, out, moved) = run_tc(&kernel, &ack);
        assert_eq!(
            (action, moved),
            (TC_ACT_REDIRECT, vec!["nat_to_client", "redirected"])
        );
        assert_redirected(&out, &ack, sa(PUBLIC, 20), client_data);
        assert!(!kernel.has_lease(ORIGIN, origin_side).unwrap());
        assert_eq!(
            kernel.claimed_flows(),
            [(origin, origin_side, sa(PUBLIC, 20), client_data)]
        );

        // Only the origin may claim an active lease, and only once.
        let stranger = tcp(
            sa(Ipv4Addr::new(198, 51, 100, 9), 20),
            origin_side,
            flags::SYN,
            &[],
        );
        let (action, _, moved) = run_tc(&kernel, &stranger);
        assert_eq!((action, moved), (TC_ACT_OK, vec!["pass_no_flow"]));
        // The lease is consumed: a second SYN finds none (the stack resets it).
        let again = tcp(sa(ORIGIN, 21), origin_side, flags::SYN, &[]);
        let (action, _, moved) = run_tc(&kernel, &again);
        assert_eq!((action, moved), (TC_ACT_OK, vec!["pass_no_flow"]));
    });
}

/// XDP carries a connection by itself once both directions have been seen (it knows the
/// next hop's MAC and the egress accepts XDP frames); before that, and for a checksum the
/// device must still complete, it leaves the packet untouched to TC.
#[test]
fn xdp_redirects_what_it_knows_and_defers_the_rest_to_tc() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let mut kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
        kernel.allow_xdp_redirect("lo").unwrap();
        let (client, public) = (sa(CLIENT, CLIENT_PORT), sa(PUBLIC, PORT));
        let (origin, nat) = (sa(ORIGIN, ORIGIN_PORT), sa(NAT, PORT));

        let syn = tcp(client, public, flags::SYN, &[]);
        let (action, out, moved, marked) = run_xdp_marked(&kernel, &syn);
        assert_eq!((action, moved), (XDP_PASS, vec!["deferred_to_tc"]));
        assert_eq!(out, syn, "a deferred packet must reach TC unchanged");
        assert!(!marked, "a deferred packet must not be marked as judged");
        assert_eq!(kernel.flow_count(), 2, "XDP started the connection");
        let (action, out, _) = run_tc(&kernel, &syn);
        assert_eq!(action, TC_ACT_OK);
        assert_rewritten(&out, &syn, nat, origin);

        // A packet from the origin's side that does not acknowledge the client's SYN (a
        // blind spoofer) teaches nothing: the client's next packet (its SYN again) still
        // goes by TC.
        let blind = with_numbers(&tcp(origin, nat, flags::ACK, &[]), 1001, 0x1234_5678);
        run_xdp(&kernel, &blind);
        let (_, _, moved) = run_xdp(&kernel, &syn);
        assert_eq!(moved, ["deferred_to_tc"], "learned from a blind packet");

        let syn_ack = tcp(origin, nat, flags::SYN | flags::ACK, &[]);
        let (action, out, moved) = run_xdp(&kernel, &syn_ack);
        assert_eq!(
            (action, moved),
            (XDP_REDIRECT, vec!["nat_to_client", "redirected"])
        );
        assert_redirected(&out, &syn_ack, public, client);

        // The SYN-ACK showed the way to the origin: the client's packets go by XDP now,
        // from the ACK that completes the handshake on.
        let ack = tcp(client, public, flags::ACK, b"data");
        let (action, out, moved) = run_xdp(&kernel, &ack);
        assert_eq!(
            (action, moved),
            (XDP_REDIRECT, vec!["nat_to_origin", "redirected"])
        );
        assert_redirected(&out, &ack, nat, origin);

        // A CHECKSUM_PARTIAL packet (its checksum field holds the pseudo-header's sum
        // only) must not be updated as if complete: XDP leaves it to TC, which knows.
        let mut partial = tcp(client, public, flags::ACK, b"more");
        let tcp_at = packet::ETH_HLEN + 20;
        let len = (partial.len() - tcp_at) as u16;
        let seed = pseudo_header_sum(CLIENT, PUBLIC, len);
        partial[tcp_at + 16..tcp_at + 18].copy_from_slice(&seed.to_be_bytes());
        let (action, out, moved) = run_xdp(&kernel, &partial);
        assert_eq!((action, moved), (XDP_PASS, vec!["deferred_to_tc"]));
        assert_eq!(out, partial);
    });
}

/// The folded (not inverted) one's-complement sum of the TCP pseudo-header: what Linux
/// leaves in the checksum field of a CHECKSUM_PARTIAL segment.
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: u16) -> u16 {
    let mut words = Vec::new();
    words.extend_from_slice(&src.octets());
    words.extend_from_slice(&dst.octets());
    words.extend_from_slice(&[0, packet::PROTO_TCP]);
    words.extend_from_slice(&tcp_len.to_be_bytes());
    !internet_checksum(&words)
}

/// An ICMP "fragmentation needed" from a router on the origin's side, about a segment the
/// gateway sent to the origin, reaches the client as if about the segment the client sent:
/// from the public address, quoting (client → public address and port), checksums valid.
#[test]
fn icmp_errors_about_a_data_connection_are_translated() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let (kernel, [_, _, origin, nat]) = claimed();

        let router = Ipv4Addr::new(198, 51, 100, 254);
        let quoted = tcp(nat, origin, flags::ACK, &[0x11; 1400]);
        let error = icmp_frag_needed(router, NAT, &quoted[packet::ETH_HLEN..], 1280);
        let (action, out, moved) = run_tc(&kernel, &error);
        assert_eq!(action, TC_ACT_REDIRECT, "{moved:?}");
        assert_eq!(moved, ["redirected", "icmp_translated"]);
        let ip = &out[packet::ETH_HLEN..];
        assert_eq!(ip[12..16], PUBLIC.octets(), "outer source");
        assert_eq!(ip[16..20], CLIENT.octets(), "outer destination");
        assert_eq!(internet_checksum(&ip[..20]), 0, "outer IPv4 checksum");
        assert_eq!(ip[8] + 1, error[packet::ETH_HLEN + 8], "TTL decremented");
        let icmp = &ip[20..];
        assert_eq!(internet_checksum(icmp), 0, "ICMP checksum");
        assert_eq!(icmp[..2], [3, 4]);
        assert_eq!(icmp[6..8], 1280u16.to_be_bytes(), "MTU kept");
        let inner = &icmp[8..];
        assert_eq!(inner[12..16], CLIENT.octets(), "quoted source");
        assert_eq!(inner[16..20], PUBLIC.octets(), "quoted destination");
        assert_eq!(internet_checksum(&inner[..20]), 0, "quoted IPv4 checksum");
        assert_eq!(inner[20..22], CLIENT_PORT.to_be_bytes());
        assert_eq!(inner[22..24], PORT.to_be_bytes());

        // About a connection the gateway does not carry: left to the stack, untouched.
        let other = tcp(sa(NAT, 40077), origin, flags::ACK, &[0; 8]);
        let error = icmp_frag_needed(router, NAT, &other[packet::ETH_HLEN..], 1280);
        let (action, out, moved) = run_tc(&kernel, &error);
        assert_eq!((action, moved), (TC_ACT_OK, vec!["pass_not_tcp"]));
        assert_eq!(out, error);
    });
}

/// An Ethernet frame with ICMP type 3 code 4 from `src` to `dst` quoting the first 48
/// bytes of `packet` (an IPv4 packet: its header, the TCP header and 8 bytes of data).
fn icmp_frag_needed(src: Ipv4Addr, dst: Ipv4Addr, packet: &[u8], mtu: u16) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&mtu.to_be_bytes());
    body.extend_from_slice(&packet[..48]);
    Ipv4Frame::icmp(src, dst, 3, 4, &body).build()
}

/// A SYN (from `src` to `dst`) whose first TCP option announces `mss`.
fn syn_with_mss(src: SocketAddrV4, dst: SocketAddrV4, tcp_flags: u8, mss: u16) -> Vec<u8> {
    let mut seg = packet::tcp_segment(src, dst, tcp_flags, &[]);
    seg[12] = 6 << 4; // data offset: 6 words
    seg.extend_from_slice(&[2, 4]);
    seg.extend_from_slice(&mss.to_be_bytes());
    seg[16..18].copy_from_slice(&[0, 0]);
    let sum = packet::transport_checksum(*src.ip(), *dst.ip(), packet::PROTO_TCP, &seg);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Ipv4Frame::tcp(src, dst, tcp_flags, &[]);
    frame.payload = seg;
    frame.build()
}

/// The MSS a frame built by [`syn_with_mss`] announces.
fn mss_of(frame: &[u8]) -> u16 {
    let at = packet::ETH_HLEN + 20 + 20 + 2;
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Both SYNs of a data connection announce at most the lease's MSS (the gateway's smaller
/// MTU minus 40), with valid checksums, through TC and through XDP; a smaller MSS and
/// packets other than SYNs are left alone.
#[test]
fn syns_announce_at_most_the_clamped_mss() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let mut lease = nat_lease(PORT, far_future());
        let LeaseAction::Nat { mss_max, .. } = &mut lease.action else {
            unreachable!()
        };
        *mss_max = 1240;
        let mut kernel = kernel_with(MapSizes::default(), &[lease]);
        kernel.allow_xdp_redirect("lo").unwrap();
        let (client, public) = (sa(CLIENT, CLIENT_PORT), sa(PUBLIC, PORT));
        let (origin, nat) = (sa(ORIGIN, ORIGIN_PORT), sa(NAT, PORT));

        let syn = syn_with_mss(client, public, flags::SYN, 1460);
        let (action, out, _) = run_tc(&kernel, &syn);
        assert_eq!(action, TC_ACT_OK);
        assert_eq!(mss_of(&out), 1240);
        let p = parse_tcp(&out).unwrap();
        assert_eq!((p.src, p.dst), (nat, origin));
        assert!(p.ip_checksum_ok && p.tcp_checksum_ok, "{p:?}");

        // The origin's SYN-ACK, by XDP (the way back is known from the SYN).
        let syn_ack = syn_with_mss(origin, nat, flags::SYN | flags::ACK, 8960);
        let (action, out, _) = run_xdp(&kernel, &syn_ack);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(mss_of(&out), 1240);
        let p = parse_tcp(&out).unwrap();
        assert_eq!((p.src, p.dst), (public, client));
        assert!(p.ip_checksum_ok && p.tcp_checksum_ok, "{p:?}");

        // Already small enough: unchanged (but NATed).
        let retransmit = syn_with_mss(client, public, flags::SYN, 536);
        let (_, out, _) = run_tc(&kernel, &retransmit);
        assert_eq!(mss_of(&out), 536);
        assert!(parse_tcp(&out).unwrap().tcp_checksum_ok);
    });
}

/// An origin that connects from a fixed port (20, as Pure-FTPd does in active mode) opens
/// the same 4-tuple for every transfer to the same gateway port. Once the earlier
/// connection is over (FIN both ways), a SYN on that tuple is a new connection: it
/// claims the new lease and goes to the new target, not down the old flow.
#[test]
fn a_syn_on_the_tuple_of_a_finished_connection_starts_a_new_one() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let mut kernel = kernel_with(MapSizes::default(), &[]);
        let origin_side = sa(NAT, 40007);
        let active_lease = |target: SocketAddrV4| Lease {
            peer: ORIGIN,
            local: origin_side,
            action: LeaseAction::Nat {
                target,
                source: sa(PUBLIC, 40007),
                deadline_ns: far_future(),
                target_ifindex: 0,
                mss_max: 0,
                peer_ifindex: 0,
                peer_port: 0,
            },
        };
        let origin = sa(ORIGIN, 20);
        let (first, second) = (sa(CLIENT, 51201), sa(CLIENT, 51202));
        kernel.insert_lease(&active_lease(first)).unwrap();
        let syn = tcp(origin, origin_side, flags::SYN, &[]);
        let (_, out, _) = run_tc(&kernel, &syn);
        assert_eq!(parse_tcp(&out).unwrap().dst, first);
        run_tc(
            &kernel,
            &tcp(first, sa(PUBLIC, 40007), flags::SYN | flags::ACK, &[]),
        );
        run_tc(&kernel, &tcp(origin, origin_side, flags::ACK, &[]));
        assert!(!kernel.has_lease(ORIGIN, origin_side).unwrap());

        // Still open: a SYN on the tuple is a retransmission and follows the flow.
        kernel.insert_lease(&active_lease(second)).unwrap();
        let (_, out, _) = run_tc(&kernel, &syn);
        assert_eq!(parse_tcp(&out).unwrap().dst, first);

        // Over (each FIN acknowledged by the other side): a new SYN on the tuple (a new
        // sequence number) now claims the second lease.
        let fin_acked = FIXTURE_ISN + 2;
        let fin_ack = |frame: &[u8]| with_numbers(frame, FIXTURE_ISN + 1, fin_acked);
        run_tc(
            &kernel,
            &tcp(origin, origin_side, flags::FIN | flags::ACK, &[]),
        );
        run_tc(
            &kernel,
            &fin_ack(&tcp(first, sa(PUBLIC, 40007), flags::FIN | flags::ACK, &[])),
        );
        run_tc(
            &kernel,
            &fin_ack(&tcp(origin, origin_side, flags::ACK, &[])),
        );
        let syn = with_seq(&syn, 777_000);
        let (action, out, moved) = run_tc(&kernel, &syn);
        assert_eq!(
            (action, moved),
            (TC_ACT_OK, vec!["nat_to_client", "forwarded_by_stack"])
        );
        assert_rewritten(&out, &syn, sa(PUBLIC, 40007), second);
        assert_eq!(kernel.flow_count(), 2);
        // Claimed once its handshake completes.
        run_tc(
            &kernel,
            &with_numbers(
                &tcp(second, sa(PUBLIC, 40007), flags::SYN | flags::ACK, &[]),
                5000,
                777_001,
            ),
        );
        assert!(kernel.has_lease(ORIGIN, origin_side).unwrap());
        run_tc(
            &kernel,
            &with_numbers(&tcp(origin, origin_side, flags::ACK, &[]), 777_001, 5001),
        );
        assert!(!kernel.has_lease(ORIGIN, origin_side).unwrap());
        assert_eq!(
            kernel.claimed_flows(),
            [(origin, origin_side, sa(PUBLIC, 40007), second)]
        );
        assert_eq!(kernel.flow_count(), 2);
    });
}

/// `frame` (Ethernet/IPv4 without options/TCP) with another sequence number.
fn with_seq(frame: &[u8], seq: u32) -> Vec<u8> {
    let tcp_at = packet::ETH_HLEN + 20;
    let ack = u32::from_be_bytes(frame[tcp_at + 8..tcp_at + 12].try_into().unwrap());
    with_numbers(frame, seq, ack)
}

/// `frame` (Ethernet/IPv4 without options/TCP) with another sequence and acknowledgment
/// number.
fn with_numbers(frame: &[u8], seq: u32, ack: u32) -> Vec<u8> {
    let mut out = frame.to_vec();
    let tcp_at = packet::ETH_HLEN + 20;
    out[tcp_at + 4..tcp_at + 8].copy_from_slice(&seq.to_be_bytes());
    out[tcp_at + 8..tcp_at + 12].copy_from_slice(&ack.to_be_bytes());
    out[tcp_at + 16..tcp_at + 18].copy_from_slice(&[0, 0]);
    let src = Ipv4Addr::new(out[26], out[27], out[28], out[29]);
    let dst = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    let sum = packet::transport_checksum(src, dst, packet::PROTO_TCP, &out[tcp_at..]);
    out[tcp_at + 16..tcp_at + 18].copy_from_slice(&sum.to_be_bytes());
    out
}

/// A client's SYN meets a stale connection at the origin (a TIME_WAIT answers with a bare
/// ACK), the client resets it and sends the same SYN again: the flow carries the
/// retransmission to the origin instead of treating it as a new connection (whose lease
/// is used up: it would be dropped and the transfer would hang).
#[test]
fn the_claiming_syn_again_after_a_reset_still_opens_the_connection() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let (kernel, [client, public, origin, nat]) = claimed();
        let syn = tcp(client, public, flags::SYN, &[]);
        run_tc(&kernel, &tcp(origin, nat, flags::ACK, &[]));
        run_tc(&kernel, &tcp(client, public, flags::RST, &[]));
        assert!(kernel.flow((client, public)).unwrap().unwrap().rst);

        let (action, out, moved) = run_tc(&kernel, &syn);
        assert_eq!(
            (action, moved),
            (TC_ACT_REDIRECT, vec!["nat_to_origin", "redirected"])
        );
        assert_redirected(&out, &syn, nat, origin);
        let (up, down) = (
            kernel.flow((client, public)).unwrap().unwrap(),
            kernel.flow((origin, nat)).unwrap().unwrap(),
        );
        assert!(
            !up.rst && !down.rst && !up.fin,
            "the connection is opening again"
        );

        // Another SYN on the same tuple (another sequence number) after a RST is a new
        // connection: the lease is used up, so it is dropped.
        run_tc(&kernel, &tcp(client, public, flags::RST, &[]));
        let (action, _, moved) = run_tc(&kernel, &with_seq(&syn, 5_000_000));
        assert_eq!((action, moved), (TC_ACT_SHOT, vec!["drop_no_lease"]));
        assert_eq!(kernel.flow_count(), 0);
    });
}

/// A blind RST or FIN (a sequence number far from where the other side expects data) does
/// not end a connection for the gateway: the endpoints would ignore it, and so must the
/// gateway, or a spoofer could have its flow entries removed. One in the window does.
#[test]
fn a_blind_reset_does_not_end_a_connection() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let (kernel, [client, public, origin, nat]) = claimed();
        run_tc(&kernel, &tcp(origin, nat, flags::SYN | flags::ACK, &[]));
        run_tc(&kernel, &tcp(client, public, flags::ACK, &[]));

        for blind in [flags::RST, flags::FIN | flags::ACK] {
            let spoofed = with_seq(&tcp(client, public, blind, &[]), 0x8000_0000);
            let (action, _, moved) = run_tc(&kernel, &spoofed);
            assert_eq!(action, TC_ACT_REDIRECT, "{moved:?}");
            let up = kernel.flow((client, public)).unwrap().unwrap();
            assert!(
                !up.rst && !up.fin,
                "a blind {blind:#x} marked the flow: {up:?}"
            );
        }
        // Nor does a SYN on the tuple now: the connection is not over, so the SYN follows
        // the flow instead of replacing it.
        let (_, out, _) = run_tc(
            &kernel,
            &with_seq(&tcp(client, public, flags::SYN, &[]), 77),
        );
        assert_eq!(parse_tcp(&out).unwrap().dst, origin);
        assert_eq!(kernel.flow_count(), 2);

        // In the window: it counts.
        run_tc(&kernel, &tcp(client, public, flags::RST, &[]));
        assert!(kernel.flow((client, public)).unwrap().unwrap().rst);
    });
}

/// A SYN (from `src` to `dst`) whose options announce window scale `shift` (after an MSS,
/// SACK-permitted and a timestamp, as Linux orders them), or no options at all.
fn syn_with_wscale(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    tcp_flags: u8,
    shift: Option<u8>,
) -> Vec<u8> {
    let Some(shift) = shift else {
        return tcp(src, dst, tcp_flags, &[]);
    };
    let mut seg = packet::tcp_segment(src, dst, tcp_flags, &[]);
    seg[12] = 10 << 4; // data offset: 10 words (20 bytes of options)
    seg.extend_from_slice(&[2, 4, 0x05, 0xb4, 4, 2, 8, 10]);
    seg.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    seg.extend_from_slice(&[1, 3, 3, shift]);
    seg[16..18].copy_from_slice(&[0, 0]);
    let sum = packet::transport_checksum(*src.ip(), *dst.ip(), packet::PROTO_TCP, &seg);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Ipv4Frame::tcp(src, dst, tcp_flags, &[]);
    frame.payload = seg;
    frame.build()
}

/// The fixture builder's advertised window (unscaled).
const FIXTURE_WINDOW: u32 = 64240;

/// A connection through the handshake, each SYN announcing the given window scale: the
/// kernel and the ends [client, public, origin, nat].
fn established(client_scale: Option<u8>, origin_scale: Option<u8>) -> (Bpf, [SocketAddrV4; 4]) {
    let kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
    let [client, public, origin, nat] = [
        sa(CLIENT, CLIENT_PORT),
        sa(PUBLIC, PORT),
        sa(ORIGIN, ORIGIN_PORT),
        sa(NAT, PORT),
    ];
    let (action, _, _) = run_tc(
        &kernel,
        &syn_with_wscale(client, public, flags::SYN, client_scale),
    );
    assert_eq!(action, TC_ACT_OK);
    let syn_ack = syn_with_wscale(origin, nat, flags::SYN | flags::ACK, origin_scale);
    assert_eq!(run_tc(&kernel, &syn_ack).0, TC_ACT_REDIRECT);
    assert_eq!(
        run_tc(&kernel, &tcp(client, public, flags::ACK, &[])).0,
        TC_ACT_REDIRECT
    );
    (kernel, [client, public, origin, nat])
}

/// Runs `frame` (from `src` to `dst`) through TC and asserts that it was carried on
/// (redirected) and that the flow entry `(src, dst)` changed only by its counts, i.e. the
/// packet did not touch the connection's teardown state.
fn assert_forwarded_without_effect(
    kernel: &Bpf,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    frame: &[u8],
) {
    let before = kernel.flow((src, dst)).unwrap().unwrap();
    let pair_before = kernel.flow(before.reverse).unwrap().unwrap();
    let (action, _, moved) = run_tc(kernel, frame);
    let to_origin = *dst.ip() == PUBLIC;
    let nat_counter = if to_origin {
        "nat_to_origin"
    } else {
        "nat_to_client"
    };
    assert_eq!(
        (action, moved),
        (TC_ACT_REDIRECT, vec![nat_counter, "redirected"])
    );
    let after = kernel.flow((src, dst)).unwrap().unwrap();
    assert_eq!(
        after,
        ftp_guard::bpf::FlowState {
            packets: before.packets + 1,
            bytes: before.bytes + 40,
            last_seen_ns: after.last_seen_ns,
            ..before
        }
    );
    assert_eq!(kernel.flow(before.reverse).unwrap().unwrap(), pair_before);
}

/// RFC 5961: a RST counts for the gateway only exactly at the receiver's last
/// acknowledgment or within the receive window it advertised (here 64,240 bytes, no
/// scaling); one a byte past the window is carried (the endpoint answers it with a
/// challenge ACK) but leaves the flow as it was.
#[test]
fn a_reset_counts_only_at_the_last_ack_or_within_the_window() {
    if !require_privileged() {
        return;
    }
    let last_ack = FIXTURE_ISN + 1;
    for (name, seq, counts) in [
        ("exactly at the last ack", last_ack, true),
        (
            "last byte of the window",
            last_ack + FIXTURE_WINDOW - 1,
            true,
        ),
        ("one past the window", last_ack + FIXTURE_WINDOW, false),
        ("one before the last ack", last_ack - 1, false),
    ] {
        in_empty_netns(|| {
            let (kernel, [client, public, ..]) = established(None, None);
            let rst = with_seq(&tcp(client, public, flags::RST, &[]), seq);
            if counts {
                let (action, _, moved) = run_tc(&kernel, &rst);
                assert_eq!(
                    (action, moved),
                    (TC_ACT_REDIRECT, vec!["nat_to_origin", "redirected"]),
                    "{name}"
                );
                let up = kernel.flow((client, public)).unwrap().unwrap();
                assert_eq!((up.rst, up.fin), (true, false), "{name}");
            } else {
                assert_forwarded_without_effect(&kernel, client, public, &rst);
            }
        });
    }
}

/// The window a RST is judged by is the receiver's advertised window shifted by the scale
/// its SYN announced, only when both SYNs announced one (RFC 7323).
#[test]
fn the_reset_window_follows_the_announced_window_scale() {
    if !require_privileged() {
        return;
    }
    let past_unscaled = FIXTURE_ISN + 1 + FIXTURE_WINDOW;
    for (name, client_scale, origin_scale, counts) in [
        ("both scaled by 7", Some(7), Some(7), true),
        ("only the origin announced", None, Some(7), false),
        ("only the client announced", Some(7), None, false),
    ] {
        in_empty_netns(|| {
            let (kernel, [_, _, origin, nat]) = established(client_scale, origin_scale);
            // From the origin, judged by the client's window (scaled by the client's 7).
            let rst = with_seq(&tcp(origin, nat, flags::RST, &[]), past_unscaled);
            if counts {
                run_tc(&kernel, &rst);
                assert!(kernel.flow((origin, nat)).unwrap().unwrap().rst, "{name}");
            } else {
                assert_forwarded_without_effect(&kernel, origin, nat, &rst);
            }
        });
    }
}

/// A FIN outside the receiver's window is carried but does not half-close the flow for
/// the gateway (nor tell the other side's entry where the FIN ends).
#[test]
fn a_fin_outside_the_window_is_ignored() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let (kernel, [client, public, origin, nat]) = established(None, None);
        let fin = with_seq(
            &tcp(client, public, flags::FIN | flags::ACK, &[]),
            FIXTURE_ISN + 1 + FIXTURE_WINDOW,
        );
        assert_forwarded_without_effect(&kernel, client, public, &fin);
        // The origin acknowledging "past" it does not close that half either.
        let ack = with_numbers(
            &tcp(origin, nat, flags::ACK, &[]),
            FIXTURE_ISN + 1,
            fin_end(&fin),
        );
        run_tc(&kernel, &ack);
        assert!(!kernel.flow((origin, nat)).unwrap().unwrap().peer_fin_acked);
    });
}

/// The acknowledgment number that covers the FIN in `frame` (no payload).
fn fin_end(frame: &[u8]) -> u32 {
    let tcp_at = packet::ETH_HLEN + 20;
    u32::from_be_bytes(frame[tcp_at + 4..tcp_at + 8].try_into().unwrap()) + 1
}

/// A connection is over for the gateway only once each FIN has been acknowledged by the
/// other side: until then a new SYN on its tuple follows the flow (it is not replaced), and
/// userspace's rule (`FlowState::over_with`) says the same.
#[test]
fn a_flow_is_over_only_when_both_fins_are_acknowledged() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let (kernel, [client, public, origin, nat]) = established(None, None);
        let new_syn = |seq| with_seq(&tcp(client, public, flags::SYN, &[]), seq);
        let still_open = |step: &str, seq| {
            let (_, out, moved) = run_tc(&kernel, &new_syn(seq));
            assert_eq!(moved, ["nat_to_origin", "redirected"], "{step}");
            assert_eq!(parse_tcp(&out).unwrap().dst, origin, "{step}");
            assert_eq!(kernel.flow_count(), 2, "{step}");
            let up = kernel.flow((client, public)).unwrap().unwrap();
            let down = kernel.flow((origin, nat)).unwrap().unwrap();
            assert!(!up.over_with(&down), "{step}");
        };
        let isn1 = FIXTURE_ISN + 1;
        // Both FINs, neither acknowledged (each FIN|ACK acknowledges only the SYN).
        run_tc(&kernel, &tcp(client, public, flags::FIN | flags::ACK, &[]));
        run_tc(&kernel, &tcp(origin, nat, flags::FIN | flags::ACK, &[]));
        let (up, down) = (
            kernel.flow((client, public)).unwrap().unwrap(),
            kernel.flow((origin, nat)).unwrap().unwrap(),
        );
        assert_eq!(
            (up.fin, up.peer_fin_acked, down.fin, down.peer_fin_acked),
            (true, false, true, false)
        );
        still_open("both FINs, none acknowledged", 7_000);
        // The client acknowledges the origin's FIN: one half closed.
        run_tc(
            &kernel,
            &with_numbers(&tcp(client, public, flags::ACK, &[]), isn1 + 1, isn1 + 1),
        );
        assert!(
            kernel
                .flow((client, public))
                .unwrap()
                .unwrap()
                .peer_fin_acked
        );
        still_open("the origin's FIN acknowledged", 8_000);
        // An acknowledgment short of the FIN, or past it (nothing follows a FIN: a
        // blind guess), does not count.
        run_tc(
            &kernel,
            &with_numbers(&tcp(origin, nat, flags::ACK, &[]), isn1 + 1, isn1),
        );
        still_open("an ACK short of the client's FIN", 9_000);
        run_tc(
            &kernel,
            &with_numbers(&tcp(origin, nat, flags::ACK, &[]), isn1 + 1, isn1 + 2),
        );
        still_open("an ACK past the client's FIN", 9_500);
        // The origin acknowledges the client's FIN: over. A new SYN replaces the flow (and,
        // the lease being used, is dropped as one without a lease).
        run_tc(
            &kernel,
            &with_numbers(&tcp(origin, nat, flags::ACK, &[]), isn1 + 1, isn1 + 1),
        );
        let (up, down) = (
            kernel.flow((client, public)).unwrap().unwrap(),
            kernel.flow((origin, nat)).unwrap().unwrap(),
        );
        assert!(up.over_with(&down) && down.over_with(&up));
        let (action, _, moved) = run_tc(&kernel, &new_syn(10_000));
        assert_eq!((action, moved), (TC_ACT_SHOT, vec!["drop_no_lease"]));
        assert_eq!(kernel.flow_count(), 0);
    });
}

/// Active mode: the origin's SYN claims its lease only when it arrives on the origin's
/// interface (a host elsewhere spoofing the origin's address cannot open the client's
/// data connection) and, when the lease asks for it, from port 20. A refused SYN leaves
/// the lease for the real one. (Test runs arrive on `lo`, ifindex 1.)
#[test]
fn an_active_syn_is_admitted_only_from_the_origins_interface_and_port() {
    if !require_privileged() {
        return;
    }
    const LO: u32 = 1;
    in_empty_netns(|| {
        let mut kernel = kernel_with(MapSizes::default(), &[]);
        let active_lease = |port: u16, peer_ifindex: u32, peer_port: u16| Lease {
            peer: ORIGIN,
            local: sa(NAT, port),
            action: LeaseAction::Nat {
                target: sa(CLIENT, 51201),
                source: sa(PUBLIC, port),
                deadline_ns: far_future(),
                target_ifindex: 0,
                mss_max: 0,
                peer_ifindex,
                peer_port,
            },
        };
        kernel
            .insert_lease(&active_lease(40007, LO + 1, 0))
            .unwrap();
        kernel.insert_lease(&active_lease(40008, LO, 20)).unwrap();
        kernel.insert_lease(&active_lease(40009, LO, 0)).unwrap();

        let syn = |src_port, port| tcp(sa(ORIGIN, src_port), sa(NAT, port), flags::SYN, &[]);
        let (action, _, moved) = run_xdp(&kernel, &syn(20, 40007));
        assert_eq!((action, moved), (XDP_DROP, vec!["drop_wrong_interface"]));
        let (action, _, moved) = run_tc(&kernel, &syn(20, 40007));
        assert_eq!((action, moved), (TC_ACT_SHOT, vec!["drop_wrong_interface"]));
        assert!(kernel.has_lease(ORIGIN, sa(NAT, 40007)).unwrap());

        let (action, _, moved) = run_tc(&kernel, &syn(2020, 40008));
        assert_eq!(
            (action, moved),
            (TC_ACT_SHOT, vec!["drop_wrong_source_port"])
        );
        assert!(kernel.has_lease(ORIGIN, sa(NAT, 40008)).unwrap());
        assert_eq!(kernel.flow_count(), 0);

        let (action, _, moved) = run_tc(&kernel, &syn(20, 40008));
        assert_eq!(
            (action, moved),
            (TC_ACT_OK, vec!["nat_to_client", "forwarded_by_stack"])
        );
        let (action, _, moved) = run_tc(&kernel, &syn(2021, 40009));
        assert_eq!(
            (action, moved),
            (TC_ACT_OK, vec!["nat_to_client", "forwarded_by_stack"])
        );
        // Each admitted SYN started its connection (tentative until the handshake
        // completes); the refused ones started none.
        let started: Vec<_> = [(20, 40008), (2021, 40009)]
            .into_iter()
            .map(|(src_port, port)| {
                let up = kernel.flow((sa(ORIGIN, src_port), sa(NAT, port))).unwrap();
                (up.map(|f| (f.tentative, f.reverse)), port)
            })
            .collect();
        assert_eq!(
            started,
            [
                (Some((true, (sa(CLIENT, 51201), sa(PUBLIC, 40008)))), 40008),
                (Some((true, (sa(CLIENT, 51201), sa(PUBLIC, 40009)))), 40009),
            ]
        );
        assert_eq!(kernel.flow_count(), 4);
    });
}

/// The key the programs use for a flow direction arriving from `src` at `dst`.
fn flow_key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey::new(src.into(), dst.into())
}

/// The two entries a SYN from `client` to the fixture's lease on PORT creates (arriving on
/// `lo`, from the fixtures' MAC): (client's direction, origin's direction), tentative.
/// Time and counts are the caller's to fill in.
fn tentative_pair(client: SocketAddrV4) -> (FlowValue, FlowValue) {
    let (public, origin, nat) = (sa(PUBLIC, PORT), sa(ORIGIN, ORIGIN_PORT), sa(NAT, PORT));
    let forward = FlowValue {
        new_src_addr_be: NAT.into(),
        new_dst_addr_be: ORIGIN.into(),
        new_src_port_be: PORT.to_be(),
        new_dst_port_be: ORIGIN_PORT.to_be(),
        reverse: flow_key(origin, nat),
        flags: FLOW_TENTATIVE | FLOW_CLAIMER | FLOW_PAIR_L2,
        claim_seq: packet::FIXTURE_ISN,
        ..FlowValue::default()
    };
    let reverse = FlowValue {
        new_src_addr_be: PUBLIC.into(),
        new_dst_addr_be: (*client.ip()).into(),
        new_src_port_be: PORT.to_be(),
        new_dst_port_be: client.port().to_be(),
        reverse: flow_key(client, public),
        flags: FLOW_TENTATIVE | FLOW_L2,
        egress_ifindex: LO_IFINDEX,
        // The fixtures' frames go from the client's MAC to the gateway's.
        dst_mac: [0x02, 0, 0, 0, 0, 0x02],
        src_mac: [0x02, 0, 0, 0, 0, 0x01],
        ..FlowValue::default()
    };
    (forward, reverse)
}

/// `lo` in a fresh network namespace.
const LO_IFINDEX: u32 = 1;

/// `expected` with what only the kernel knows (the time of the last packet) taken from
/// `actual`, so that everything else compares whole.
fn at_time_of(expected: FlowValue, actual: FlowValue) -> FlowValue {
    FlowValue {
        last_seen_ns: actual.last_seen_ns,
        ..expected
    }
}

/// A SYN starts a connection without claiming its lease: both entries are tentative and
/// the lease stays. The origin's SYN-ACK records its sequence number; the client's ACK of
/// it completes the handshake: the lease is deleted (claimed) and the entries become a
/// plain connection.
#[test]
fn the_lease_is_claimed_when_the_handshake_completes() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
        let (client, public) = (sa(CLIENT, CLIENT_PORT), sa(PUBLIC, PORT));
        let (origin, nat) = (sa(ORIGIN, ORIGIN_PORT), sa(NAT, PORT));
        let value = |tuple| kernel.flow_value(tuple).unwrap().unwrap();

        let (action, _, moved) = run_tc(&kernel, &tcp(client, public, flags::SYN, &[]));
        assert_eq!(
            (action, moved),
            (TC_ACT_OK, vec!["nat_to_origin", "forwarded_by_stack"])
        );
        assert!(kernel.has_lease(CLIENT, public).unwrap());
        let (mut forward, mut reverse) = tentative_pair(client);
        forward.packets = 1;
        forward.bytes = 40;
        forward.window = FIXTURE_WINDOW as u16;
        assert_eq!(
            value((client, public)),
            at_time_of(forward, value((client, public)))
        );
        assert_eq!(
            value((origin, nat)),
            at_time_of(reverse, value((origin, nat)))
        );
        assert_eq!(kernel.claimed_flows(), []);

        let (action, _, moved) = run_tc(&kernel, &tcp(origin, nat, flags::SYN | flags::ACK, &[]));
        assert_eq!(
            (action, moved),
            (TC_ACT_REDIRECT, vec!["nat_to_client", "redirected"])
        );
        assert!(kernel.has_lease(CLIENT, public).unwrap());
        // It also taught the way to the origin (FLOW_PAIR_L2: learned).
        reverse.flags |= FLOW_TARGET_ISN | FLOW_ACKED | FLOW_PAIR_L2;
        reverse.claim_seq = packet::FIXTURE_ISN;
        reverse.last_ack = packet::FIXTURE_ISN + 1;
        reverse.packets = 1;
        reverse.bytes = 40;
        reverse.window = FIXTURE_WINDOW as u16;
        assert_eq!(
            value((origin, nat)),
            at_time_of(reverse, value((origin, nat)))
        );
        // The SYN-ACK showed the way to the origin (lo, same MACs).
        forward.flags |= FLOW_L2;
        forward.egress_ifindex = LO_IFINDEX;
        forward.dst_mac = [0x02, 0, 0, 0, 0, 0x02];
        forward.src_mac = [0x02, 0, 0, 0, 0, 0x01];
        assert_eq!(
            value((client, public)),
            at_time_of(forward, value((client, public)))
        );

        let (action, _, moved) = run_tc(&kernel, &tcp(client, public, flags::ACK, &[]));
        assert_eq!(
            (action, moved),
            (TC_ACT_REDIRECT, vec!["nat_to_origin", "redirected"])
        );
        assert!(!kernel.has_lease(CLIENT, public).unwrap());
        forward.flags &= !FLOW_TENTATIVE;
        forward.flags |= FLOW_ACKED;
        forward.last_ack = packet::FIXTURE_ISN + 1;
        forward.packets = 2;
        forward.bytes = 80;
        // The target's ISN stays (the payload is counted from it).
        reverse.flags &= !(FLOW_TENTATIVE | FLOW_TARGET_ISN);
        assert_eq!(
            value((client, public)),
            at_time_of(forward, value((client, public)))
        );
        assert_eq!(
            value((origin, nat)),
            at_time_of(reverse, value((origin, nat)))
        );
        assert_eq!(kernel.claimed_flows(), [(client, public, nat, origin)]);
        assert_eq!(kernel.flow_count(), 2);
    });
}

/// A SYN spoofed with the client's address (from a port the client does not use) cannot
/// burn the lease: the client's own SYN from another port takes the tentative connection
/// over (same lease, same tuple towards the origin), and its handshake claims the lease.
#[test]
fn the_clients_syn_replaces_a_spoofed_tentative_connection() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
        let (spoofed, client, public) = (
            sa(CLIENT, CLIENT_PORT + 7),
            sa(CLIENT, CLIENT_PORT),
            sa(PUBLIC, PORT),
        );
        let (origin, nat) = (sa(ORIGIN, ORIGIN_PORT), sa(NAT, PORT));
        let value = |tuple| kernel.flow_value(tuple).unwrap().unwrap();

        run_tc(&kernel, &tcp(spoofed, public, flags::SYN, &[]));
        assert_eq!(value((origin, nat)).reverse, flow_key(spoofed, public));

        let syn = with_seq(&tcp(client, public, flags::SYN, &[]), packet::FIXTURE_ISN);
        let (action, out, moved) = run_tc(&kernel, &syn);
        assert_eq!(
            (action, moved),
            (TC_ACT_OK, vec!["nat_to_origin", "forwarded_by_stack"])
        );
        assert_rewritten(&out, &syn, nat, origin);
        assert_eq!(kernel.flow_value((spoofed, public)).unwrap(), None);
        let (mut forward, reverse) = tentative_pair(client);
        forward.packets = 1;
        forward.bytes = 40;
        forward.window = FIXTURE_WINDOW as u16;
        assert_eq!(
            value((client, public)),
            at_time_of(forward, value((client, public)))
        );
        assert_eq!(
            value((origin, nat)),
            at_time_of(reverse, value((origin, nat)))
        );
        assert_eq!(kernel.flow_count(), 2);
        assert!(kernel.has_lease(CLIENT, public).unwrap());

        complete_handshake(&kernel, [client, public, origin, nat]);
        assert_eq!(kernel.claimed_flows(), [(client, public, nat, origin)]);

        // Claimed: a SYN from yet another port replaces nothing (and finds no lease).
        let late = tcp(sa(CLIENT, CLIENT_PORT + 9), public, flags::SYN, &[]);
        let (action, _, moved) = run_tc(&kernel, &late);
        assert_eq!((action, moved), (TC_ACT_SHOT, vec!["drop_no_lease"]));
        assert_eq!(kernel.claimed_flows(), [(client, public, nat, origin)]);
        assert_eq!(kernel.flow_count(), 2);
    });
}

/// Until its handshake completes, only the handshake passes from the claiming side: its
/// SYN again, a RST, and the ACK of the origin's SYN-ACK. Data, a FIN, or an ACK that does
/// not acknowledge the SYN-ACK (a spoofer cannot know its sequence number) are dropped
/// and change nothing.
#[test]
fn a_tentative_connection_carries_only_the_handshake() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
        let (client, public) = (sa(CLIENT, CLIENT_PORT), sa(PUBLIC, PORT));
        let (origin, nat) = (sa(ORIGIN, ORIGIN_PORT), sa(NAT, PORT));
        run_tc(&kernel, &tcp(client, public, flags::SYN, &[]));
        let state = || {
            (
                kernel.flow_value((client, public)).unwrap(),
                kernel.flow_value((origin, nat)).unwrap(),
            )
        };
        let before_syn_ack = state();
        // Before the SYN-ACK, even the ACK a real client would send next is premature.
        for (name, frame) in [
            ("ACK", tcp(client, public, flags::ACK, &[])),
            ("data", tcp(client, public, flags::ACK | flags::PSH, b"x")),
        ] {
            let (action, _, moved) = run_tc(&kernel, &frame);
            assert_eq!(
                (action, moved),
                (TC_ACT_SHOT, vec!["drop_unconfirmed"]),
                "{name}"
            );
        }
        assert_eq!(state(), before_syn_ack);

        run_tc(
            &kernel,
            &with_numbers(&tcp(origin, nat, flags::SYN | flags::ACK, &[]), 9000, 1001),
        );
        let before = state();
        for (name, frame) in [
            ("guessed ACK", tcp(client, public, flags::ACK, &[])),
            (
                "guessed data",
                tcp(client, public, flags::ACK | flags::PSH, b"x"),
            ),
            (
                "FIN",
                with_numbers(
                    &tcp(client, public, flags::FIN | flags::ACK, &[]),
                    1001,
                    9002,
                ),
            ),
            ("bare FIN", tcp(client, public, flags::FIN, &[])),
            ("SYN-ACK", tcp(client, public, flags::SYN | flags::ACK, &[])),
        ] {
            let (action, _, moved) = run_tc(&kernel, &frame);
            assert_eq!(
                (action, moved),
                (TC_ACT_SHOT, vec!["drop_unconfirmed"]),
                "{name}"
            );
        }
        assert_eq!(state(), before);
        assert!(kernel.has_lease(CLIENT, public).unwrap());

        // Its SYN again passes and changes nothing but the counts.
        let (action, _, moved) = run_tc(&kernel, &tcp(client, public, flags::SYN, &[]));
        assert_eq!(
            (action, moved),
            (TC_ACT_REDIRECT, vec!["nat_to_origin", "redirected"])
        );
        assert!(kernel.flow((client, public)).unwrap().unwrap().tentative);

        let ack = with_numbers(&tcp(client, public, flags::ACK, &[]), 1001, 9001);
        let (action, _, moved) = run_tc(&kernel, &ack);
        assert_eq!(
            (action, moved),
            (TC_ACT_REDIRECT, vec!["nat_to_origin", "redirected"])
        );
        assert!(!kernel.has_lease(CLIENT, public).unwrap());
        assert!(!kernel.flow((client, public)).unwrap().unwrap().tentative);
        assert!(!kernel.flow((origin, nat)).unwrap().unwrap().tentative);
    });
}

/// The client's host answers the origin's SYN-ACK to a SYN it never sent (a spoofed one)
/// with a RST whose sequence number is the one the SYN-ACK acknowledged: the RST goes on to
/// the origin and the tentative connection is removed; the lease stays. A RST with another
/// sequence number passes without removing anything.
#[test]
fn the_clients_reset_ends_a_tentative_connection() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
        let (client, public) = (sa(CLIENT, CLIENT_PORT), sa(PUBLIC, PORT));
        let (origin, nat) = (sa(ORIGIN, ORIGIN_PORT), sa(NAT, PORT));
        run_tc(&kernel, &tcp(client, public, flags::SYN, &[]));
        run_tc(&kernel, &tcp(origin, nat, flags::SYN | flags::ACK, &[]));

        let other = with_seq(&tcp(client, public, flags::RST, &[]), 5_000_000);
        let (action, _, moved) = run_tc(&kernel, &other);
        assert_eq!(
            (action, moved),
            (TC_ACT_REDIRECT, vec!["nat_to_origin", "redirected"])
        );
        assert_eq!(kernel.flow_count(), 2);

        let rst = tcp(client, public, flags::RST, &[]);
        let (action, out, moved) = run_tc(&kernel, &rst);
        assert_eq!(
            (action, moved),
            (TC_ACT_REDIRECT, vec!["nat_to_origin", "redirected"])
        );
        assert_redirected(&out, &rst, nat, origin);
        assert_eq!(kernel.flow_count(), 0);
        assert!(kernel.has_lease(CLIENT, public).unwrap());

        // The same through XDP (which redirects by itself here).
        let mut kernel = kernel;
        kernel.allow_xdp_redirect("lo").unwrap();
        run_tc(&kernel, &tcp(client, public, flags::SYN, &[]));
        run_tc(&kernel, &tcp(origin, nat, flags::SYN | flags::ACK, &[]));
        let (action, _, moved) = run_xdp(&kernel, &rst);
        assert_eq!(
            (action, moved),
            (XDP_REDIRECT, vec!["nat_to_origin", "redirected"])
        );
        assert_eq!(kernel.flow_count(), 0);
        assert!(kernel.has_lease(CLIENT, public).unwrap());
    });
}

/// A SYN whose TTL would expire on the way through is dropped before it touches its
/// lease: no flow entries, the lease untouched (by XDP and by TC); so is a tentative
/// connection's completing ACK with TTL 1.
#[test]
fn a_syn_with_ttl_1_is_dropped_before_it_starts_a_connection() {
    if !require_privileged() {
        return;
    }
    in_empty_netns(|| {
        let kernel = kernel_with(MapSizes::default(), &[nat_lease(PORT, far_future())]);
        let (client, public) = (sa(CLIENT, CLIENT_PORT), sa(PUBLIC, PORT));
        let (origin, nat) = (sa(ORIGIN, ORIGIN_PORT), sa(NAT, PORT));
        let ttl_1 = |tcp_flags| {
            let mut f = Ipv4Frame::tcp(client, public, tcp_flags, &[]);
            f.ttl = 1;
            f.build()
        };
        let (action, _, moved) = run_xdp(&kernel, &ttl_1(flags::SYN));
        assert_eq!((action, moved), (XDP_DROP, vec!["drop_ttl"]));
        let (action, _, moved) = run_tc(&kernel, &ttl_1(flags::SYN));
        assert_eq!((action, moved), (TC_ACT_SHOT, vec!["drop_ttl"]));
        assert_eq!(kernel.flow_count(), 0);
        assert_eq!(kernel.lease_keys(), [(CLIENT, public)]);

        run_tc(&kernel, &tcp(client, public, flags::SYN, &[]));
        run_tc(&kernel, &tcp(origin, nat, flags::SYN | flags::ACK, &[]));
        let (action, _, moved) = run_tc(&kernel, &ttl_1(flags::ACK));
        assert_eq!((action, moved), (TC_ACT_SHOT, vec!["drop_ttl"]));
        assert_eq!(kernel.lease_keys(), [(CLIENT, public)]);
        assert!(kernel.flow((client, public)).unwrap().unwrap().tentative);
    });
}

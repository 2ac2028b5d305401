//! The protection policy at the edge, end to end in network namespaces (client 203.0.113.2
//! and an attacker 203.0.113.66 on the client's host — gateway — origin running vsftpd):
//! an ACL keeps the attacker off the control port and the data range while an allowed
//! client transfers, and a reload that lifts the deny lets it in without disturbing the
//! allowed client's session; each rule's packet count, as operators read it, is exactly
//! the packets it decided.
use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use ftp_guard::{
    admin::{AclRuleStatus, Status},
    bpf::AclAction,
};
use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    flood::{mac_address, send_frames, syn_frame},
    ftp_servers::ServerKind,
    netns::{self, CLIENT, GATEWAY, GATEWAY_PUBLIC_IF, HOST_IF},
    require_privileged,
    scenario::{Control, Env, VIP, connect_from},
};

const ATTACKER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
const DENY: &str = "deny = [\"203.0.113.66/32\"]\n";

/// (drop_acl, drop_no_lease, the deny rule's packets) as the kernel counts them now.
fn drops(env: &Env) -> (u64, u64, u64) {
    let c = env.gateway.counters();
    let kernel = env.gateway.bpf().expect("kernel path").lock();
    let rule = kernel
        .acl_counts()
        .unwrap()
        .into_iter()
        .find(|r| r.action == AclAction::Deny)
        .map_or(0, |r| r.packets);
    (c.get(Counter::DropAcl), c.get(Counter::DropNoLease), rule)
}

#[test]
fn denied_source_reaches_nothing_until_a_reload_lifts_the_deny() {
    if !require_privileged() {
        return;
    }
    let mut env = Env::start("policy", ServerKind::Vsftpd, "kernel");
    env.reconfigure("kernel", DENY);
    env.topo
        .run(
            CLIENT,
            &["ip", "addr", "add", "203.0.113.66/24", "dev", "eth0"],
        )
        .unwrap();
    let remote = env.origin_file("policy.bin", 512 * 1024);
    let content = std::fs::read(&remote).unwrap();

    let mut control = Control::login(&env);
    let port = control.epsv();
    // The attacker can reach neither the control port nor the client's leased data port:
    // every packet is dropped by the deny rule, none reaches the lease check.
    let before = drops(&env);
    assert!(connect_from(&env, ATTACKER, 21).is_err(), "control port");
    assert!(connect_from(&env, ATTACKER, port).is_err(), "data port");
    let after = drops(&env);
    let dropped = after.0 - before.0;
    assert!(dropped >= 2, "{before:?} → {after:?}");
    assert_eq!(
        (after.1 - before.1, after.2 - before.2),
        (0, dropped),
        "drop_no_lease and the deny rule's count moved by {before:?} → {after:?}"
    );
    // Meanwhile the allowed client transfers.
    assert_eq!(control.retr_over(&env, port, "policy.bin"), content);

    // Lift the deny: the same session goes on, the attacker gets the greeting.
    let config = env.config("kernel", "40000-40099", &env.client_if, &env.origin_if);
    env.gateway.reload(&config).unwrap();
    assert_eq!(
        env.gateway.bpf().unwrap().lock().acl_counts().unwrap(),
        vec![]
    );
    let port = control.epsv();
    assert_eq!(control.retr_over(&env, port, "policy.bin"), content);
    let attacker = connect_from(&env, ATTACKER, 21).expect("attacker after the reload");
    let mut greeting = String::new();
    BufReader::new(attacker).read_line(&mut greeting).unwrap();
    assert_eq!(&greeting[..4], "220 ", "{greeting}");
    assert_eq!(drops(&env).0, after.0, "drop_acl moved after the reload");
}

/// A reload whose ACL denies the client of an open session closes that session with a
/// 421 (the kernel drops the client's packets from then on, so the session could only
/// stall), and the client cannot connect again.
#[test]
fn reload_denying_an_open_session_closes_it_with_421() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("policy-421", ServerKind::Vsftpd, "kernel");
    let mut control = Control::login(&env);
    assert_eq!(control.cmd("NOOP"), "200 NOOP ok.\r\n");
    let config = env.config("kernel", "40000-40099", &env.client_if, &env.origin_if);
    env.gateway
        .reload(&format!("{config}deny = [\"203.0.113.2/32\"]\n"))
        .unwrap();
    assert_eq!(
        control.reply(),
        "421 Access denied by policy: closing control connection.\r\n"
    );
    assert!(connect_from(&env, netns::CLIENT_IP, 21).is_err());
}

/// What the gateway's admin endpoint (its default `admin_listen`, in its namespace) answers
/// on `path`.
fn admin_get(env: &Env, path: &str) -> String {
    let url = format!("http://127.0.0.1:9640{path}");
    let out = env.topo.run(GATEWAY, &["curl", "-sSf", &url]).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// The ACL rules' packet counts in `/status`, `ftp-guard status` and `/metrics` are
/// exactly the SYNs sent (raw frames: no retransmits): a denied block's SYNs to the
/// control port and the data range, a source in no `allow` block counted by the
/// catch-all, and nothing on the allow rule (the allowed client sent nothing).
#[test]
fn acl_rule_counts_are_exactly_the_packets_sent() {
    if !require_privileged() {
        return;
    }
    let mut env = Env::start("policy-counts", ServerKind::Vsftpd, "kernel");
    env.reconfigure(
        "kernel",
        "allow = [\"203.0.113.0/24\"]\ndeny = [\"203.0.113.64/26\"]\n",
    );
    let client_mac = mac_address(&env.topo, CLIENT, HOST_IF).unwrap();
    let gateway_mac = mac_address(&env.topo, GATEWAY, GATEWAY_PUBLIC_IF).unwrap();
    // One SYN to each of `ports`, each from its own source port.
    let syns = |source: Ipv4Addr, ports: &[u16]| -> Vec<Vec<u8>> {
        (50_000..)
            .zip(ports)
            .map(|(source_port, port)| {
                syn_frame(
                    (client_mac, SocketAddrV4::new(source, source_port)),
                    (gateway_mac, SocketAddrV4::new(VIP, *port)),
                )
            })
            .collect()
    };
    // 5 to the control port and 3 into the data range from the denied block; 4 to the
    // control port from a source outside the allow list.
    let frames = [
        syns(ATTACKER, &[21, 21, 21, 21, 21, 40000, 40001, 40002]),
        syns(Ipv4Addr::new(192, 0, 2, 10), &[21, 21, 21, 21]),
    ]
    .concat();
    let sent = frames.len() as u64;
    env.topo
        .thread_in_ns(CLIENT, move || send_frames(HOST_IF, &frames))
        .join()
        .unwrap()
        .unwrap();
    // The frames cross the veth asynchronously: wait until XDP has seen them all.
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.gateway.counters().get(Counter::DropAcl) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(env.gateway.counters().get(Counter::DropAcl), sent);

    let status: Status = serde_json::from_str(&admin_get(&env, "/status")).unwrap();
    let rule = |block: &str, action: &str, packets| AclRuleStatus {
        service: "e2e".into(),
        block: block.into(),
        action: action.into(),
        packets,
    };
    assert_eq!(
        status.kernel.as_ref().unwrap().acl_rules,
        [
            rule("203.0.113.64/26", "deny", 8),
            rule("203.0.113.0/24", "allow", 0),
            rule("*", "deny", 4),
        ]
    );
    let rendered = ftp_guard::status_cmd::render(&status);
    let table =
        &rendered[rendered.find("ACL RULES\n").unwrap()..rendered.find("\nKERNEL PATH").unwrap()];
    assert_eq!(
        table,
        "ACL RULES\n\
         SERVICE  BLOCK            ACTION  PACKETS\n\
         e2e      203.0.113.64/26  deny    8\n\
         e2e      203.0.113.0/24   allow   0\n\
         e2e      *                deny    4\n"
    );
    let metrics = admin_get(&env, "/metrics");
    let samples: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ftp_guard_acl_packets_total"))
        .collect();
    assert_eq!(
        samples,
        [
            "ftp_guard_acl_packets_total{service=\"e2e\",block=\"203.0.113.64/26\",action=\"deny\"} 8",
            "ftp_guard_acl_packets_total{service=\"e2e\",block=\"203.0.113.0/24\",action=\"allow\"} 0",
            "ftp_guard_acl_packets_total{service=\"e2e\",block=\"*\",action=\"deny\"} 4",
        ]
    );
}

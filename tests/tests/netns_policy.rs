//! The protection policy at the edge, end to end in network namespaces (client 203.0.113.2
//! and an attacker 203.0.113.66 on the client's host — gateway — origin running vsftpd):
//! an ACL keeps the attacker off the control port and the data range while an allowed
//! client transfers, and a reload that lifts the deny lets it in without disturbing the
//! allowed client's session.
use std::{
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
};

use ftp_guard::bpf::AclAction;
use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    ftp_servers::ServerKind,
    netns::{self, CLIENT},
    require_privileged,
    scenario::{Control, Env, connect_from},
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

//! Login-failure bans end to end: a client guessing passwords against a real vsftpd behind
//! ftp-guard is banned after `ban_after_failures` refused logins (its session ends with a
//! 421, its next connections are dropped by the programs in front of the gateway: the ban
//! is in their map; without them admission refuses it with a 421, see `proxy::admission`),
//! another client of the same host is served meanwhile, and the banned address is served
//! again once `ftp-guard unban`'s route lifts the ban or `ban_secs` have passed; a reload
//! keeps the list.
use std::{
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ftp_guard::admin::{self, Status};
use ftp_guard_testbed::{
    ftp_servers::ServerKind,
    netns::{CLIENT, GATEWAY, HOST_IF, Topology},
    require_privileged,
    scenario::{Control, Env, connect_from},
};

const ADMIN: &str = "127.0.0.1:9640";
/// The brute-forcing address, a second address of the client host.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 4);
const BAN_SECS: u64 = 5;

const CLOSED: &str =
    "421 Too many failed logins from your address: closing control connection.\r\n";

/// Connects from `source`, sends `lines` at once (FTP allows pipelining) and returns
/// everything the client received until the gateway closed the connection.
fn conversation(env: &Env, source: Ipv4Addr, lines: &[&str]) -> String {
    let mut stream = connect_from(env, source, 21).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
    // A banned client may be gone before it writes: what it reads is the point.
    let _ = stream.write_all(text.as_bytes());
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8(got).unwrap()
}

/// Whether `source`'s connection to port 21 goes unanswered (its SYNs dropped in the
/// kernel: the ban is in the programs' map, the gateway's stack never sees it).
fn dropped_in_kernel(env: &Env, source: Ipv4Addr) -> bool {
    matches!(connect_from(env, source, 21), Err(e) if e.kind() == std::io::ErrorKind::TimedOut)
}

/// The programs' `drop_banned` packet count, from the admin endpoint's metrics.
fn banned_packets(topo: &Topology) -> u64 {
    let metrics = admin(topo, false, "/metrics").unwrap();
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "ftp_guard_kernel_packets_total{reason=\"drop_banned\",verdict=\"drop\"} ",
            )
        })
        .map_or(0, |v| v.parse().unwrap())
}

/// One request to the admin endpoint inside the gateway namespace.
fn admin(topo: &Topology, post: bool, path: &str) -> anyhow::Result<String> {
    topo.in_ns(GATEWAY, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr = ADMIN.parse().unwrap();
        runtime.block_on(async {
            if post {
                admin::post(addr, path, None).await
            } else {
                admin::get(addr, path, None).await
            }
        })
    })
}

#[test]
fn a_brute_forcing_client_is_banned_and_served_again() {
    if !require_privileged() {
        return;
    }
    let mut env = Env::start("bans", ServerKind::Vsftpd, "userspace");
    let bans = format!("ban_after_failures = 3\nban_window_secs = 60\nban_secs = {BAN_SECS}\n");
    env.reconfigure("userspace", &bans);
    env.topo
        .add_address(CLIENT, HOST_IF, &format!("{ATTACKER}/24"))
        .unwrap();
    let login = env.login();
    let greeting = Control::login(&env).greeting;
    let user = format!("USER {}", login.user);
    let wrong = "PASS not-the-password";
    let good = format!("PASS {}", login.password);

    // Three wrong passwords on one connection (vsftpd allows three): the third refusal
    // reaches the client, then the gateway's 421 and the end.
    let guesses = [user.as_str(), wrong, &user, wrong, &user, wrong];
    let refused = "331 Please specify the password.\r\n530 Login incorrect.\r\n";
    assert_eq!(
        conversation(&env, ATTACKER, &guesses),
        format!("{greeting}{}{CLOSED}", refused.repeat(3))
    );
    let banned_at = Instant::now();
    // The guard is attached (client_interface): the ban is in the programs' map, so the
    // address's SYNs are dropped before the stack, even with the right password on its
    // mind; the host's other address is served.
    // (The banned session's own last ACKs count already: its client is banned too.)
    let before = banned_packets(&env.topo);
    assert!(dropped_in_kernel(&env, ATTACKER));
    assert!(banned_packets(&env.topo) > before);
    let mut bystander = Control::login(&env);
    assert_eq!(bystander.cmd("NOOP"), "200 NOOP ok.\r\n");
    // A reload that changes the service (a new accept loop) keeps the list.
    let changed = env.config("userspace", "40000-40099", &env.client_if, &env.origin_if)
        + &bans
        + "login_timeout_secs = 30\n";
    env.gateway.reload(&changed).unwrap();
    assert!(dropped_in_kernel(&env, ATTACKER));

    let status: Status =
        serde_json::from_str(&admin(&env.topo, false, "/status").unwrap()).unwrap();
    let bans: Vec<_> = status
        .bans
        .iter()
        .map(|b| (b.address.as_str(), b.service.as_str(), b.reason.as_str()))
        .collect();
    assert_eq!(bans, [("203.0.113.4", "e2e", "login_failures")]);
    let metrics = admin(&env.topo, false, "/metrics").unwrap();
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("ftp_guard_bans") || l.starts_with("ftp_guard_sessions_rejected_total{")
        })
        .collect();
    assert_eq!(
        lines,
        [
            "ftp_guard_bans_active 1",
            "ftp_guard_bans_total{reason=\"login_failures\"} 1",
        ]
    );

    // Lifted by the unban route: served at once.
    assert_eq!(
        admin(&env.topo, true, &format!("/bans/unban?addr={ATTACKER}")).unwrap(),
        format!("unbanned {ATTACKER}\n")
    );
    let served = conversation(&env, ATTACKER, &[&user, &good, "QUIT"]);
    assert_eq!(
        served,
        format!(
            "{greeting}331 Please specify the password.\r\n230 Login successful.\r\n221 Goodbye.\r\n"
        )
    );
    assert!(
        banned_at.elapsed() < Duration::from_secs(BAN_SECS),
        "slow run"
    );

    // Banned again, then served once the ban has run its time.
    assert_eq!(
        conversation(&env, ATTACKER, &guesses),
        format!("{greeting}{}{CLOSED}", refused.repeat(3))
    );
    let banned_at = Instant::now();
    assert!(dropped_in_kernel(&env, ATTACKER));
    std::thread::sleep(Duration::from_secs(BAN_SECS).saturating_sub(banned_at.elapsed()));
    assert_eq!(
        conversation(&env, ATTACKER, &[&user, &good, "QUIT"]),
        served
    );
    assert_eq!(bystander.cmd("NOOP"), "200 NOOP ok.\r\n");
}

//! The userspace relay (`dataplane = "userspace"`) hardened: relayed data connections
//! carry keepalive and end when idle (a client that never closes does not keep its port),
//! and with `client_interface` set the kernel path's guard drops everyone but a lease's
//! client before the stack.
use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    ftp_servers::ServerKind,
    gateway::RunningGateway,
    netns::{self, CLIENT, GATEWAY},
    require_privileged,
    scenario::{Control, Env, VIP, connect_from},
};

/// The `ss -tno` lines of the gateway's established connections whose local or peer
/// address contains `needle`.
fn sockets(env: &Env, needle: &str) -> Vec<String> {
    let out = env
        .topo
        .run(GATEWAY, &["ss", "-tnoH", "state", "established"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_silent_relayed_connection_is_closed_and_its_port_reused() {
    if !require_privileged() {
        return;
    }
    let mut env = Env::start("relay-idle", ServerKind::Vsftpd, "userspace");
    // One data port: a port the relay still holds shows at the next EPSV.
    let config = env.config("userspace", "40000-40000", &env.client_if, &env.origin_if)
        + "data_idle_timeout_secs = 2\nkeepalive_secs = 45\n";
    env.gateway.stop();
    env.gateway = RunningGateway::start(&env.topo, &config).unwrap();
    let mut control = Control::login(&env);
    assert_eq!(control.epsv(), 40000);
    // Taken before the connect: the relay's idle timer cannot start earlier, so the
    // close cannot come less than the timeout after this.
    let connected = Instant::now();
    let mut data = connect_from(&env, netns::CLIENT_IP, 40000).unwrap();

    // Both legs carry keepalive: the client's (to the public data port) and the origin's
    // (the only connection to the origin that is not the control connection).
    let legs = loop {
        let client_leg = sockets(&env, &format!("{VIP}:40000 "));
        let origin_leg: Vec<String> = sockets(&env, &format!("{}:", netns::ORIGIN_IP))
            .into_iter()
            .filter(|l| !l.contains(&format!("{}:21 ", netns::ORIGIN_IP)))
            .collect();
        let legs = [client_leg, origin_leg];
        if legs
            .iter()
            .all(|l| l.len() == 1 && l[0].contains("timer:(keepalive,"))
            || connected.elapsed() > Duration::from_millis(1500)
        {
            break legs;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for leg in &legs {
        assert_eq!(leg.len(), 1, "{legs:?}");
        assert!(leg[0].contains("timer:(keepalive,4"), "{legs:?}");
    }

    // Nobody sends: the relay closes both legs after the idle timeout.
    data.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    assert_eq!(data.read_to_end(&mut got).unwrap(), 0);
    assert!(
        connected.elapsed() >= Duration::from_secs(2),
        "closed after {:?}, before the idle timeout",
        connected.elapsed()
    );
    // Its only port is free again.
    assert_eq!(control.epsv(), 40000);
}

/// A SYN from `source` (an address of the client host) to the public `port`, with time for
/// the first SYN only (its retransmission comes after 1 s).
fn one_syn(env: &Env, source: Ipv4Addr, port: u16) -> std::io::Result<std::net::TcpStream> {
    env.topo.in_ns(CLIENT, || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())?;
        socket.connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(VIP, port)).into(),
            Duration::from_millis(800),
        )?;
        Ok(socket.into())
    })
}

#[test]
fn the_guard_admits_only_a_relay_lease_client() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("relay-guard", ServerKind::Vsftpd, "userspace");
    let stranger = Ipv4Addr::new(203, 0, 113, 66);
    env.topo
        .run(
            CLIENT,
            &["ip", "addr", "add", "203.0.113.66/24", "dev", "eth0"],
        )
        .unwrap();
    let remote = env.origin_file("guarded.bin", 256 * 1024);
    let mut control = Control::login(&env);
    let port = control.epsv();
    let kernel = env
        .gateway
        .bpf()
        .expect("no guard loaded for the relay")
        .clone();
    assert_eq!(
        kernel.lock().lease_keys(),
        [(netns::CLIENT_IP, SocketAddrV4::new(VIP, port))]
    );

    // The stranger's SYN never reaches the relay's listener: dropped, no SYN-ACK.
    let dropped = env.gateway.counters().get(Counter::DropNoLease);
    let err = one_syn(&env, stranger, port).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert_eq!(
        env.gateway.counters().get(Counter::DropNoLease) - dropped,
        1
    );

    // The client's transfer works.
    let mut data = connect_from(&env, netns::CLIENT_IP, port).unwrap();
    assert_eq!(
        control.cmd("RETR guarded.bin"),
        "150 Opening BINARY mode data connection for guarded.bin (262144 bytes).\r\n"
    );
    let mut got = Vec::new();
    data.read_to_end(&mut got).unwrap();
    assert_eq!(control.reply(), "226 Transfer complete.\r\n");
    assert_eq!(got, std::fs::read(&remote).unwrap());
    drop(data);

    // The connection is over both ways: the lease's admission goes with it.
    let started = Instant::now();
    while !kernel.lock().lease_keys().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "admit lease left: {:?}",
            kernel.lock().lease_keys()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // So the client's own next SYN to the port is dropped too.
    let dropped = env.gateway.counters().get(Counter::DropNoLease);
    let err = one_syn(&env, netns::CLIENT_IP, port).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert_eq!(
        env.gateway.counters().get(Counter::DropNoLease) - dropped,
        1
    );
}

/// A reload that gives a guarded relay service a new range starts a new relay beside the
/// old one: a port whose data connection the old relay still carries keeps its admission,
/// and the new relay takes another port rather than failing the client's EPSV.
#[test]
fn a_new_relay_skips_ports_another_relay_still_admits() {
    if !require_privileged() {
        return;
    }
    let mut env = Env::start("relay-rl", ServerKind::Vsftpd, "userspace");
    env.restart_gateway("userspace", "40000-40000");
    let remote = env.origin_file("rl.bin", 64 * 1024);
    let mut old = Control::login(&env);
    assert_eq!(old.epsv(), 40000);
    // Connected and silent: the old relay carries it on port 40000 until it ends.
    let old_data = connect_from(&env, netns::CLIENT_IP, 40000).unwrap();

    env.gateway
        .reload(&env.config("userspace", "40000-40001", &env.client_if, &env.origin_if))
        .unwrap();
    let mut new = Control::login(&env);
    // The new relay can bind 40000 (the old listener is gone) but the client's admission
    // there belongs to the old relay's connection: every lease lands on 40001.
    let ports: Vec<u16> = (0..4).map(|_| new.epsv()).collect();
    assert_eq!(ports, [40001; 4]);
    let mut data = connect_from(&env, netns::CLIENT_IP, 40001).unwrap();
    assert_eq!(
        new.cmd("RETR rl.bin"),
        "150 Opening BINARY mode data connection for rl.bin (65536 bytes).\r\n"
    );
    let mut got = Vec::new();
    data.read_to_end(&mut got).unwrap();
    assert_eq!(new.reply(), "226 Transfer complete.\r\n");
    assert_eq!(got, std::fs::read(&remote).unwrap());
    drop(old_data);
}

//! End to end through ftp-guard: real FTP servers as origins, real clients, in network
//! namespaces (client 203.0.113.2 — gateway 203.0.113.1 | 198.51.100.1 — origin
//! 198.51.100.2). Every transfer is verified by checksum and every client's trace shows
//! the passive mode it really used.
use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    ftp_clients::{DataMode, curl_download, curl_upload, ftplib_run},
    ftp_servers::ServerKind,
    gateway::RunningGateway,
    netns::{self, CLIENT, GATEWAY, ORIGIN},
    require_privileged,
    scenario::{Control, Env, VIP, assert_same, connect_from},
};

#[test]
fn kernel_path_vsftpd() {
    if !require_privileged() {
        return;
    }
    // XDP in driver mode, chosen explicitly (auto picks TC on veth, see the next test).
    let mut env = Env::start("kvs", ServerKind::Vsftpd, "kernel");
    env.reconfigure("kernel", "kernel_hook = \"xdp\"\n");
    env.client_sweep(&DataMode::PASSIVE);
    let c = env.gateway.counters();
    assert!(
        c.get(Counter::NatToOrigin) > 0 && c.get(Counter::NatToClient) > 0,
        "{c:?}"
    );
    assert!(
        c.get(Counter::Redirected) > 0,
        "no packet was redirected by XDP: {c:?}"
    );
    let kernel = env.gateway.bpf().unwrap().lock();
    let modes: Vec<_> = kernel
        .attachments()
        .iter()
        .map(|(i, m)| format!("{i}={m}"))
        .collect();
    // TC behind XDP carries what XDP defers: a connection's first packets, before the
    // next hop towards their destination has been seen.
    assert_eq!(
        modes,
        [
            "pub0=xdp-native",
            "pub0=tcx-ingress",
            "priv0=xdp-native",
            "priv0=tcx-ingress"
        ]
    );
    let nated = c.get(Counter::NatToOrigin) + c.get(Counter::NatToClient);
    assert!(
        c.get(Counter::DeferredToTc) * 4 < nated,
        "XDP left most packets to TC: {c:?}"
    );
}

#[test]
fn kernel_path_pyftpdlib() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("kpy", ServerKind::Pyftpdlib, "kernel");
    env.client_sweep(&DataMode::PASSIVE);
    let c = env.gateway.counters();
    assert!(
        c.get(Counter::NatToOrigin) > 0 && c.get(Counter::NatToClient) > 0,
        "{c:?}"
    );
    assert!(c.get(Counter::Redirected) > 0, "{c:?}");
    // `auto` on veth: TC, which redirects skbs without XDP's per-packet copy.
    let kernel = env.gateway.bpf().unwrap().lock();
    let modes: Vec<_> = kernel
        .attachments()
        .iter()
        .map(|(i, m)| format!("{i}={m}"))
        .collect();
    assert_eq!(modes, ["pub0=tcx-ingress", "priv0=tcx-ingress"]);
}

#[test]
fn userspace_relay_vsftpd() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("uvs", ServerKind::Vsftpd, "userspace");
    env.client_sweep(&DataMode::PASSIVE);
}

#[test]
fn userspace_relay_pyftpdlib() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("upy", ServerKind::Pyftpdlib, "userspace");
    env.client_sweep(&DataMode::PASSIVE);
}

/// 100 MiB each way in each mode through the kernel path, checksummed.
#[test]
fn kernel_path_100_mib_transfers() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("kbig", ServerKind::Vsftpd, "kernel");
    let login = env.login();
    let remote = env.origin_file("big.bin", 100 << 20);
    for mode in DataMode::PASSIVE {
        let m = mode.verb();
        let local = env.local(&format!("big-{m}.bin"));
        let started = Instant::now();
        curl_download(env.client_ns(), &login, "big.bin", &local, mode)
            .unwrap()
            .success()
            .unwrap()
            .check_mode(mode)
            .unwrap();
        eprintln!("{m} download 100 MiB in {:?}", started.elapsed());
        assert_same(&remote, &local);
        let started = Instant::now();
        curl_upload(
            env.client_ns(),
            &local,
            &login,
            &format!("big-up-{m}.bin"),
            mode,
        )
        .unwrap()
        .success()
        .unwrap()
        .check_mode(mode)
        .unwrap();
        eprintln!("{m} upload 100 MiB in {:?}", started.elapsed());
        assert_same(&remote, &env.server.root().join(format!("big-up-{m}.bin")));
    }
    let c = env.gateway.counters();
    // At least 4 × 100 MiB of segments went through the programs.
    assert!(
        c.get(Counter::NatToClient) + c.get(Counter::NatToOrigin) > 4 * 70_000,
        "{c:?}"
    );
    assert_eq!(c.get(Counter::ForwardedByStack), 0, "{c:?}");
}

/// Someone else on the client's network races for the leased port and gets nothing; the
/// client's own transfer works; a second connection to the used lease gets nothing either,
/// nor does one to a lease the next EPSV superseded.
#[test]
fn leases_serve_only_their_client_once() {
    if !require_privileged() {
        return;
    }
    for dataplane in ["kernel", "userspace"] {
        let env = Env::start(
            &format!("lease-{}", &dataplane[..1]),
            ServerKind::Vsftpd,
            dataplane,
        );
        let attacker = Ipv4Addr::new(203, 0, 113, 66);
        env.topo
            .run(
                CLIENT,
                &["ip", "addr", "add", "203.0.113.66/24", "dev", "eth0"],
            )
            .unwrap();
        let remote = env.origin_file("secret.bin", 256 * 1024);
        let mut control = Control::login(&env);
        // A lease superseded by the next EPSV serves nobody, not even its client.
        let superseded = control.epsv();
        let port = control.epsv();
        assert_ne!(superseded, port, "{dataplane}");
        let no_lease_before = env.gateway.counters().get(Counter::DropNoLease);
        assert!(
            connect_from(&env, netns::CLIENT_IP, superseded).is_err(),
            "{dataplane}: connection to a superseded lease"
        );
        // Dropped at the gateway, not refused by the origin behind it.
        if dataplane == "kernel" {
            let c = env.gateway.counters();
            assert!(
                c.get(Counter::DropNoLease) > no_lease_before,
                "superseded lease not dropped: {c:?}"
            );
        }

        // The attacker connects first.
        match connect_from(&env, attacker, port) {
            Err(_) => {}
            Ok(mut s) => {
                // The userspace relay accepts and closes at once: nothing may be read.
                let mut buf = Vec::new();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = s.read_to_end(&mut buf);
                assert!(
                    buf.is_empty(),
                    "{dataplane}: the attacker read {} bytes",
                    buf.len()
                );
            }
        }
        let mut data = connect_from(&env, netns::CLIENT_IP, port)
            .unwrap_or_else(|e| panic!("{dataplane}: client data connection: {e}"));
        let reply = control.cmd("RETR secret.bin");
        assert!(
            reply.starts_with("150") || reply.starts_with("125"),
            "{reply}"
        );
        let mut got = Vec::new();
        data.read_to_end(&mut got).unwrap();
        assert!(control.reply().starts_with("226"));
        assert_eq!(got, std::fs::read(&remote).unwrap(), "{dataplane}: content");

        // The lease was used: a second connection to the same port is refused.
        assert!(
            connect_from(&env, netns::CLIENT_IP, port).is_err(),
            "{dataplane}: second connection to a used lease"
        );
        if dataplane == "kernel" {
            let c = env.gateway.counters();
            assert!(
                c.get(Counter::DropNoLease) > 0,
                "attacker not dropped: {c:?}"
            );
            assert!(
                c.get(Counter::DropLeaseUsed) + c.get(Counter::DropNoLease) >= 2,
                "{c:?}"
            );
        }
    }
}

/// No origin address, in any form, in any reply a client gets across many commands.
#[test]
fn no_origin_address_reaches_the_client() {
    if !require_privileged() {
        return;
    }
    for kind in ServerKind::ALL {
        let env = Env::start(&format!("leak-{}", &kind.name()[..2]), kind, "kernel");
        env.origin_file("file.txt", 1000);
        let mut control = Control::login(&env);
        let mut transcript = String::new();
        for command in [
            "SYST",
            "FEAT",
            "HELP",
            "STAT",
            "STAT file.txt",
            "PWD",
            "CWD /nonexistent",
            "SIZE file.txt",
            "MDTM file.txt",
            "SITE HELP",
            "NOOP",
            "PASV",
            "EPSV",
            "EPSV 1",
            "MLST file.txt",
            "OPTS UTF8 ON",
            "PORT 203,0,113,2,200,10",
            "EPRT |1|203.0.113.2|51210|",
            "HOST x",
            "ALLO 10",
            "MODE S",
            "STRU F",
            "XPWD",
            "BOGUS",
        ] {
            transcript.push_str(&control.cmd(command));
        }
        transcript.push_str(&control.cmd("QUIT"));
        // The probe must have reached the server: its own words are in the transcript.
        assert!(
            transcript.contains("211") && transcript.contains("257"),
            "{transcript}"
        );
        for needle in ["198.51.100.2", "198,51,100,2"] {
            assert!(
                !transcript.contains(needle),
                "{}: `{needle}` leaked:\n{transcript}",
                kind.name()
            );
        }
        assert!(transcript.contains("203,0,113,1"), "{transcript}");
    }
}

/// Many transfers on one control connection: one lease each, all freed afterwards.
#[test]
fn many_files_on_one_control_connection() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("many", ServerKind::Vsftpd, "kernel");
    let mut ops = Vec::new();
    for i in 0..40 {
        env.origin_file(&format!("f{i}.bin"), 10_000 + i * 977);
        ops.push(format!(
            "RETR f{i}.bin {}",
            env.local(&format!("f{i}.bin")).display()
        ));
    }
    let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
    ftplib_run(env.client_ns(), &env.login(), &ops, DataMode::Epsv)
        .unwrap()
        .success()
        .unwrap();
    for i in 0..40 {
        assert_same(
            &env.server.root().join(format!("f{i}.bin")),
            &env.local(&format!("f{i}.bin")),
        );
    }
    // Flows end on FIN (+ grace) and the sweeper frees them.
    let kernel = env.gateway.bpf().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flows = kernel.lock().flow_count();
        if flows == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{flows} flow entries left behind"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Bridges as the client- and origin-facing devices: native XDP is not available there,
/// so `auto` picks TC, and transfers still go through the kernel path.
#[test]
fn bridges_as_attach_points() {
    if !require_privileged() {
        return;
    }
    let env = Env::start_with(
        "bridge",
        ServerKind::Vsftpd,
        "kernel",
        |topo| {
            for (port, bridge, cidr) in [
                ("pub0", "brpub", "203.0.113.1/24"),
                ("priv0", "brpriv", "198.51.100.1/24"),
            ] {
                topo.run(GATEWAY, &["ip", "addr", "flush", "dev", port])
                    .unwrap();
                topo.run(
                    GATEWAY,
                    &["ip", "link", "add", "name", bridge, "type", "bridge"],
                )
                .unwrap();
                topo.run(GATEWAY, &["ip", "link", "set", port, "master", bridge])
                    .unwrap();
                topo.run(GATEWAY, &["ip", "addr", "add", cidr, "dev", bridge])
                    .unwrap();
                topo.run(GATEWAY, &["ip", "link", "set", bridge, "up"])
                    .unwrap();
            }
            // Wait for the bridges to forward (no STP: immediately), then prove the path.
            topo.run(CLIENT, &["ping", "-c", "1", "-W", "2", "198.51.100.2"])
                .unwrap();
        },
        "brpub",
        "brpriv",
    );
    let remote = env.origin_file("via-bridge.bin", 8 << 20);
    for mode in DataMode::PASSIVE {
        let local = env.local(&format!("bridge-{}.bin", mode.verb()));
        curl_download(
            env.client_ns(),
            &env.login(),
            "via-bridge.bin",
            &local,
            mode,
        )
        .unwrap()
        .success()
        .unwrap();
        assert_same(&remote, &local);
    }
    let c = env.gateway.counters();
    assert!(
        c.get(Counter::NatToClient) > 5000 && c.get(Counter::Redirected) > 0,
        "{c:?}"
    );
    let kernel = env.gateway.bpf().unwrap().lock();
    let modes: Vec<_> = kernel
        .attachments()
        .iter()
        .map(|(i, m)| format!("{i}={m}"))
        .collect();
    assert_eq!(modes, ["brpub=tcx-ingress", "brpriv=tcx-ingress"]);
}

/// Python ftplib's abort() sends ABOR as TCP urgent data (BSD style): the transfer must
/// stop, the replies must arrive, and the session must go on.
#[test]
fn abort_with_urgent_data_stops_a_transfer() {
    if !require_privileged() {
        return;
    }
    for dataplane in ["kernel", "userspace"] {
        let env = Env::start(
            &format!("abor-{}", &dataplane[..1]),
            ServerKind::Vsftpd,
            dataplane,
        );
        env.origin_file("huge.bin", 200 << 20);
        let login = env.login();
        let script = format!(
            r#"
import ftplib, sys
ftp = ftplib.FTP(timeout=15)
ftp.connect("{ip}", {port})
ftp.login("{user}", "{password}")
ftp.voidcmd("TYPE I")
conn = ftp.transfercmd("RETR huge.bin")
got = len(conn.recv(65536))
reply = ftp.abort()
conn.close()
print("abort-reply", reply.split()[0])
# ftplib's abort() reads only the first reply: after a 426 the ABOR's own 226 follows.
after = ftp.voidcmd("NOOP")
if reply.startswith("426"):
    assert after.startswith("226"), after
    after = ftp.voidcmd("NOOP")
print("after", after.split()[0])
ftp.quit()
"#,
            ip = login.addr.ip(),
            port = login.addr.port(),
            user = login.user,
            password = login.password,
        );
        let out = env.topo.run(CLIENT, &["python3", "-c", &script]).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            ["426", "225", "226"]
                .iter()
                .any(|c| stdout.contains(&format!("abort-reply {c}"))),
            "{dataplane}: {stdout}"
        );
        assert!(stdout.contains("after 200"), "{dataplane}: {stdout}");
    }
}

/// When every data port is leased, the next passive request gets a clear 4xx, and a
/// freed port is leased again.
#[test]
fn exhausted_data_ports_give_425() {
    if !require_privileged() {
        return;
    }
    for dataplane in ["kernel", "userspace"] {
        let mut env = Env::start(
            &format!("full-{}", &dataplane[..1]),
            ServerKind::Vsftpd,
            dataplane,
        );
        env.restart_gateway(dataplane, "40000-40001");
        let mut first = Control::login(&env);
        let mut second = Control::login(&env);
        let mut third = Control::login(&env);
        first.epsv();
        second.epsv();
        let reply = third.cmd("EPSV");
        assert!(reply.starts_with("425 "), "{dataplane}: {reply}");
        // The first session ends: its lease is revoked and its port comes back.
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let reply = third.cmd("EPSV");
            if reply.starts_with("229") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{dataplane}: port never freed: {reply}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn active_mode_kernel_vsftpd() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("actkvs", ServerKind::Vsftpd, "kernel");
    env.client_sweep(&DataMode::ACTIVE);
    let c = env.gateway.counters();
    assert!(
        c.get(Counter::NatToClient) > 0 && c.get(Counter::Redirected) > 0,
        "{c:?}"
    );
}

#[test]
fn active_mode_kernel_pyftpdlib() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("actkpy", ServerKind::Pyftpdlib, "kernel");
    env.client_sweep(&DataMode::ACTIVE);
}

#[test]
fn active_mode_userspace_relay() {
    if !require_privileged() {
        return;
    }
    for kind in ServerKind::ALL {
        let env = Env::start(&format!("actu{}", &kind.name()[..2]), kind, "userspace");
        env.client_sweep(&DataMode::ACTIVE);
    }
}

/// With `active_from_port_20`, the client sees the data connection come from port 20 of
/// the public address (what client-side firewalls often expect).
#[test]
fn active_mode_from_port_20() {
    if !require_privileged() {
        return;
    }
    for dataplane in ["kernel", "userspace"] {
        let mut env = Env::start(
            &format!("act20-{}", &dataplane[..1]),
            ServerKind::Vsftpd,
            dataplane,
        );
        env.reconfigure(dataplane, "active_from_port_20 = true\n");
        let remote = env.origin_file("p20.bin", 300_000);
        // A listener of our own on the client, so we see the peer address.
        let listener = env.topo.in_ns(CLIENT, || {
            std::net::TcpListener::bind((netns::CLIENT_IP, 0)).unwrap()
        });
        let port = listener.local_addr().unwrap().port();
        let mut control = Control::login(&env);
        let reply = control.cmd(&format!("PORT 203,0,113,2,{},{}", port >> 8, port & 0xff));
        assert!(reply.starts_with("200"), "{dataplane}: {reply}");
        let reply = control.cmd("RETR p20.bin");
        assert!(reply.starts_with("150"), "{dataplane}: {reply}");
        let (mut data, peer) = listener.accept().unwrap();
        assert_eq!(
            peer,
            SocketAddr::V4(SocketAddrV4::new(VIP, 20)),
            "{dataplane}"
        );
        let mut got = Vec::new();
        data.read_to_end(&mut got).unwrap();
        assert!(control.reply().starts_with("226"));
        assert_eq!(got, std::fs::read(&remote).unwrap(), "{dataplane}");
    }
}

/// FTP bounce (RFC 2577): PORT/EPRT naming a third host, on either side of the gateway,
/// is refused and nothing reaches that host; the origin never sees the command.
#[test]
fn ftp_bounce_is_refused() {
    if !require_privileged() {
        return;
    }
    let env = Env::start("bounce", ServerKind::Vsftpd, "kernel");
    env.topo
        .run(
            CLIENT,
            &["ip", "addr", "add", "203.0.113.66/24", "dev", "eth0"],
        )
        .unwrap();
    // Listeners on a third host next to the client and on the origin host itself.
    let witness_client = env.topo.in_ns(CLIENT, || {
        std::net::TcpListener::bind((Ipv4Addr::new(203, 0, 113, 66), 2525)).unwrap()
    });
    let witness_origin = env.topo.in_ns(ORIGIN, || {
        std::net::TcpListener::bind((netns::ORIGIN_IP, 2626)).unwrap()
    });
    witness_client.set_nonblocking(true).unwrap();
    witness_origin.set_nonblocking(true).unwrap();
    env.origin_file("x.bin", 10_000);
    let mut control = Control::login(&env);
    for (command, code) in [
        ("PORT 203,0,113,66,9,221", "504"),
        ("EPRT |1|203.0.113.66|2525|", "504"),
        ("PORT 198,51,100,2,10,58", "504"),
        ("EPRT |1|198.51.100.2|2626|", "504"),
        ("PORT 198,51,100,1,10,58", "504"),
        ("PORT 203,0,113,2,0,25", "504"),
        ("PORT 203,0,113,2,10", "501"),
        ("EPRT |1|203.0.113.2|70000|", "501"),
    ] {
        let reply = control.cmd(command);
        assert!(reply.starts_with(code), "{command}: {reply}");
        // Whatever the origin does with a RETR now, it must not connect to the witnesses.
        let reply = control.cmd("RETR x.bin");
        assert!(
            reply.starts_with('4') || reply.starts_with('5'),
            "{command} then RETR: {reply}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    for (name, witness) in [
        ("client side", &witness_client),
        ("origin side", &witness_origin),
    ] {
        match witness.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the {name} witness was contacted: {other:?}"),
        }
    }
    assert!(
        env.server.log().contains("RETR"),
        "the probe did not reach the server"
    );
    assert!(
        !env.server.log().contains("203.0.113.66"),
        "a bounce command reached the origin"
    );
}

/// The per-service switch: active mode off means a clear 502 and nothing to the origin.
#[test]
fn active_mode_can_be_turned_off() {
    if !require_privileged() {
        return;
    }
    let mut env = Env::start("actoff", ServerKind::Vsftpd, "kernel");
    env.reconfigure("kernel", "active_mode = false\n");
    let mut control = Control::login(&env);
    for command in ["PORT 203,0,113,2,200,1", "EPRT |1|203.0.113.2|51201|"] {
        let reply = control.cmd(command);
        assert!(reply.starts_with("502"), "{command}: {reply}");
    }
    let feat = control.cmd("FEAT");
    assert!(!feat.contains("EPRT"), "{feat}");
    let run = curl_download(
        env.client_ns(),
        &env.login(),
        "nothing",
        &env.local("x"),
        DataMode::Port,
    )
    .unwrap();
    assert!(!run.status.success(), "{}", run.describe());
}

/// Without `origin_interface`, the programs attach only to the client side: if the origin
/// is reached through another interface, its data packets would come back un-NATed and
/// every transfer would hang. ftp-guard refuses to start instead, naming the interface.
#[test]
fn origin_side_off_the_attach_points_is_refused() {
    if !require_privileged() {
        return;
    }
    let topo = ftp_guard_testbed::scenario::standard_topology("noorig").unwrap();
    let origin = SocketAddrV4::new(netns::ORIGIN_IP, 21);
    let config = format!(
        "[[service]]\nname = \"e2e\"\nlisten = \"{}:21\"\norigin = \"{origin}\"\n\
         data_ports = \"40000-40099\"\nclient_interface = \"{}\"\n",
        netns::GATEWAY_PUBLIC_IP,
        netns::GATEWAY_PUBLIC_IF
    );
    let err = match RunningGateway::start(&topo, &config) {
        Ok(_) => panic!("a gateway that cannot carry data connections started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.ends_with(&format!(
            "service `e2e`: the origin {} is reached through `{}` (the gateway's address {} \
             is there), but the kernel data path would attach only to `{}`: set \
             origin_interface = \"{}\"",
            netns::ORIGIN_IP,
            netns::GATEWAY_PRIVATE_IF,
            netns::GATEWAY_PRIVATE_IP,
            netns::GATEWAY_PUBLIC_IF,
            netns::GATEWAY_PRIVATE_IF
        )),
        "{err}"
    );
}

/// A link on the client's side that is smaller than the client believes (MTU 1280, while
/// the client announces MSS 1460, as behind a tunnel): the origin's full-size segments,
/// redirected by the program, would be dropped at the gateway's egress without any ICMP
/// error. With `data_mss = "auto"` the gateway lowers the MSS in the data connection's
/// SYNs to its smaller MTU minus 40, and the download completes; with clamping off it
/// stalls (proving the test can fail).
#[test]
fn smaller_mtu_on_the_client_side_is_clamped() {
    if !require_privileged() {
        return;
    }
    let shrink = |topo: &netns::Topology| {
        topo.run(GATEWAY, &["ip", "link", "set", "pub0", "mtu", "1280"])
            .unwrap();
        topo.run(CLIENT, &["ip", "link", "set", "eth0", "mtu", "1280"])
            .unwrap();
        for route in [
            ["203.0.113.0/24", "dev", "eth0"],
            ["default", "via", "203.0.113.1"],
        ] {
            let mut args = vec!["ip", "route", "change"];
            args.extend(route);
            args.extend(["advmss", "1460"]);
            topo.run(CLIENT, &args).unwrap();
        }
    };
    let mut env = Env::start_with(
        "mtu",
        ServerKind::Pyftpdlib,
        "kernel",
        shrink,
        "pub0",
        "priv0",
    );
    let remote = env.origin_file("mtu.bin", 4 << 20);
    let local = env.local("mtu.bin");
    curl_download(
        env.client_ns(),
        &env.login(),
        "mtu.bin",
        &local,
        DataMode::Epsv,
    )
    .unwrap()
    .success()
    .unwrap();
    assert_same(&remote, &local);

    let previous = ftp_guard_testbed::ftp_clients::client_timeout();
    ftp_guard_testbed::ftp_clients::set_client_timeout(Duration::from_secs(8));
    env.reconfigure("kernel", "data_mss = \"off\"\n");
    let _ = std::fs::remove_file(&local);
    let unclamped = curl_download(
        env.client_ns(),
        &env.login(),
        "mtu.bin",
        &local,
        DataMode::Epsv,
    )
    .unwrap();
    ftp_guard_testbed::ftp_clients::set_client_timeout(previous);
    assert!(
        !unclamped.status.success(),
        "without clamping the transfer should have stalled: {}",
        unclamped.describe()
    );
}

/// Two services whose data connections come from the same NAT address must not share data
/// ports there (their leases and flows would collide in the kernel): refused at start, also
/// when only one names the address (`check` cannot tell; the configuration parses).
#[test]
fn services_sharing_a_nat_address_and_ports_are_refused() {
    if !require_privileged() {
        return;
    }
    let topo = ftp_guard_testbed::scenario::standard_topology("natclash").unwrap();
    let origin = SocketAddrV4::new(netns::ORIGIN_IP, 21);
    let service = |name: &str, port: u16, public: &str, ports: &str, nat: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"{}:{port}\"\npublic_ip = \"{public}\"\n\
             origin = \"{origin}\"\ndata_ports = \"{ports}\"\nclient_interface = \"{}\"\n\
             origin_interface = \"{}\"\n{nat}",
            netns::GATEWAY_PUBLIC_IP,
            netns::GATEWAY_PUBLIC_IF,
            netns::GATEWAY_PRIVATE_IF
        )
    };
    let named = format!("nat_ip = \"{}\"\n", netns::GATEWAY_PRIVATE_IP);
    let config = service("one", 21, "203.0.113.1", "40000-40099", &named)
        + &service("two", 2121, "203.0.113.9", "40050-40149", "");
    ftp_guard::config::Config::parse(&config).unwrap();
    let err = match RunningGateway::start(&topo, &config) {
        Ok(_) => panic!("two services sharing NAT ports started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.ends_with(&format!(
            "services `one` and `two` both use the NAT address {} with overlapping data_ports \
             (40000-40099 and 40050-40149): give them separate ranges or separate nat_ip",
            netns::GATEWAY_PRIVATE_IP
        )),
        "{err}"
    );
}

//! The topologies built for real (root): routes, the field layout's isolation, entering a
//! namespace, spawned processes and the sweep of a dead run's namespaces.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use super::{cleanup::owner_pid, exec::kill_and_reap, *};
use crate::require_privileged;

fn namespaces() -> String {
    let out = run_checked(Command::new("ip").args(["netns", "list"])).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn owner_pid_parses_only_our_names() {
    assert_eq!(owner_pid("fgt-1234-guard-client"), Some(1234));
    assert_eq!(owner_pid("fgt-1234-"), None);
    assert_eq!(owner_pid("fgt-x-guard-client"), None);
    assert_eq!(owner_pid("other-1234-guard"), None);
}

#[test]
fn bad_tag_is_refused() {
    assert!(Topology::new("a b").is_err());
    assert!(Topology::new("").is_err());
}

/// Client → origin through the forwarding gateway, with the client's own address seen
/// by the origin (routed, not NATed); offload off on the veths; names as documented.
#[test]
fn standard_topology_routes_through_gateway() {
    if !require_privileged() {
        return;
    }
    let topo = Topology::standard("unit-std").unwrap();
    let pid = std::process::id();
    assert_eq!(topo.ns_name(CLIENT), format!("fgt-{pid}-unit-std-client"));
    assert_eq!(topo.roles().collect::<Vec<_>>(), [GATEWAY, CLIENT, ORIGIN]);

    let listener = topo.in_ns(ORIGIN, || TcpListener::bind((ORIGIN_IP, 0)).unwrap());
    let origin = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(b"hi").unwrap();
        peer
    });
    let greeting = topo.in_ns(CLIENT, || {
        let mut conn = TcpStream::connect_timeout(&origin, Duration::from_secs(2)).unwrap();
        let mut buf = String::new();
        conn.read_to_string(&mut buf).unwrap();
        buf
    });
    assert_eq!(greeting, "hi");
    let peer = server.join().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(CLIENT_IP));

    for (role, ifname) in [
        (CLIENT, HOST_IF),
        (GATEWAY, GATEWAY_PUBLIC_IF),
        (GATEWAY, GATEWAY_PRIVATE_IF),
        (ORIGIN, HOST_IF),
    ] {
        let out = topo.run(role, &["ethtool", "-k", ifname]).unwrap();
        let features = String::from_utf8_lossy(&out.stdout);
        for feature in ["rx-checksumming: off", "tx-checksumming: off"] {
            assert!(features.contains(feature), "{role}/{ifname}: {features}");
        }
    }
}

/// The field layout: forwarding off, bridges with both hosts enslaved, default
/// offloads; hosts reach their bridge's address, but not each other across the gateway.
#[test]
fn field_topology_is_an_ordinary_gateway() {
    if !require_privileged() {
        return;
    }
    let topo = Topology::field("unit-field").unwrap();
    assert_eq!(
        topo.roles().collect::<Vec<_>>(),
        [GATEWAY, CLIENT, CLIENT2, ORIGIN, ORIGIN2]
    );
    for key in [
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.forwarding",
        "net.ipv4.conf.brc0.forwarding",
        "net.ipv4.conf.bro0.forwarding",
    ] {
        assert_eq!(topo.sysctl_value(GATEWAY, key).unwrap(), "0", "{key}");
    }
    for (bridge, ports) in [
        (FIELD_CLIENT_BRIDGE, FIELD_CLIENT_PORTS),
        (FIELD_ORIGIN_BRIDGE, FIELD_ORIGIN_PORTS),
    ] {
        let out = topo
            .run(GATEWAY, &["ip", "-o", "link", "show", "master", bridge])
            .unwrap();
        let links = String::from_utf8_lossy(&out.stdout);
        for port in ports {
            assert!(links.contains(&format!("{port}@")), "{bridge}: {links}");
        }
    }
    for (role, ifname) in [
        (CLIENT, HOST_IF),
        (ORIGIN2, HOST_IF),
        (GATEWAY, FIELD_CLIENT_PORTS[0]),
        (GATEWAY, FIELD_ORIGIN_PORTS[1]),
    ] {
        let out = topo.run(role, &["ethtool", "-k", ifname]).unwrap();
        let features = String::from_utf8_lossy(&out.stdout);
        for feature in ["rx-checksumming: on", "tx-checksumming: on"] {
            assert!(features.contains(feature), "{role}/{ifname}: {features}");
        }
    }
    for (role, target) in [
        (CLIENT, GATEWAY_PUBLIC_IP),
        (CLIENT2, GATEWAY_PUBLIC_IP),
        (ORIGIN, GATEWAY_PRIVATE_IP),
        (ORIGIN2, GATEWAY_PRIVATE_IP),
    ] {
        topo.run(role, &["ping", "-c", "1", "-W", "2", &target.to_string()])
            .unwrap();
    }
    let listener = topo.in_ns(ORIGIN2, || TcpListener::bind((ORIGIN2_IP, 0)).unwrap());
    let target = listener.local_addr().unwrap();
    let crossed = topo.in_ns(CLIENT2, || {
        TcpStream::connect_timeout(&target, Duration::from_secs(1))
    });
    assert!(
        crossed.is_err(),
        "forwarding is off, yet {target} was reached"
    );
}

/// An extra host reaches the gateway's public address through its own veth.
#[test]
fn add_host_routes_via_gateway() {
    if !require_privileged() {
        return;
    }
    let mut topo = Topology::standard("unit-host").unwrap();
    topo.add_host("attacker", "pub1", "192.0.2.1/24", "192.0.2.66/24")
        .unwrap();
    let listener = topo.in_ns(GATEWAY, || {
        TcpListener::bind((GATEWAY_PUBLIC_IP, 0)).unwrap()
    });
    let target = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || listener.accept().unwrap().1);
    topo.in_ns("attacker", || {
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap()
    });
    let peer: SocketAddr = server.join().unwrap();
    assert_eq!(peer.ip().to_string(), "192.0.2.66");
}

/// in_ns really switches namespaces: eth0/pub0 exist there, not in the root namespace.
#[test]
fn in_ns_enters_the_namespace() {
    if !require_privileged() {
        return;
    }
    let topo = Topology::standard("unit-inns").unwrap();
    let index = |name: &str| {
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    assert_ne!(topo.in_ns(GATEWAY, || index("pub0")), 0);
    assert_ne!(topo.in_ns(CLIENT, || index("eth0")), 0);
    assert_eq!(topo.in_ns(CLIENT, || index("pub0")), 0);
    assert_eq!(index("pub0"), 0);
}

/// run() reports stderr on failure; spawn()ed servers are found by wait_for_tcp_listen
/// and killed on drop, and the namespaces are gone afterwards.
#[test]
fn spawn_wait_and_cleanup() {
    if !require_privileged() {
        return;
    }
    let topo = Topology::standard("unit-spawn").unwrap();
    let err = topo
        .run(CLIENT, &["ip", "link", "show", "nosuchdev"])
        .unwrap_err();
    assert!(format!("{err:#}").contains("nosuchdev"), "{err:#}");

    let server = topo.spawn(ORIGIN, &["nc", "-lk", "7021"]).unwrap();
    let sleeper = topo.spawn(CLIENT, &["sleep", "1000"]).unwrap();
    topo.wait_for_tcp_listen(ORIGIN, 7021, Duration::from_secs(5))
        .unwrap();
    // The PID is the program's own, not an `ip` wrapper's.
    let comm = std::fs::read_to_string(format!("/proc/{server}/comm")).unwrap();
    assert!(comm.starts_with("nc"), "{comm}");
    assert!(
        topo.wait_for_tcp_listen(CLIENT, 7021, Duration::from_millis(100))
            .is_err()
    );
    topo.stop(sleeper).unwrap();
    assert!(!Path::new(&format!("/proc/{sleeper}")).exists());

    let names: Vec<String> = topo.roles().map(|r| topo.ns_name(r).to_owned()).collect();
    drop(topo);
    assert!(!Path::new(&format!("/proc/{server}")).exists());
    let after = namespaces();
    for name in names {
        assert!(!after.contains(&name), "{name} still exists: {after}");
    }
}

/// A namespace left by a dead test process is deleted (its processes killed) by the
/// next Topology::new; one owned by a live process is kept.
#[test]
fn sweep_removes_namespaces_of_dead_runs() {
    if !require_privileged() {
        return;
    }
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead_pid = gone.id();
    assert!(!Path::new(&format!("/proc/{dead_pid}")).exists());
    let stale = format!("fgt-{dead_pid}-unit-sweep-stale");
    let live = format!("fgt-{}-unit-sweep-live", std::process::id());
    for name in [&stale, &live] {
        run_checked(Command::new("ip").args(["netns", "add", name])).unwrap();
    }
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "1000"])
        .spawn()
        .unwrap();
    // Wait until the sleeper is inside the namespace, or the sweep cannot see it.
    let start = Instant::now();
    while run_checked(Command::new("ip").args(["netns", "pids", &stale]))
        .unwrap()
        .stdout
        .is_empty()
    {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }

    let _topo = Topology::new("unit-sweep").unwrap();
    let after = namespaces();
    run_checked(Command::new("ip").args(["netns", "del", &live])).unwrap();
    // SIGKILL is asynchronous: poll, and never leave the sleeper behind on failure.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = orphan.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(5) {
            kill_and_reap(&mut orphan).unwrap();
            panic!("the sweep did not kill the process in {stale}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!after.contains(&stale), "{after}");
    assert!(after.contains(&live), "{after}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

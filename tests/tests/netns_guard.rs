//! End-to-end proof that the XDP guard protects the data-port range on a real veth:
//! client → gateway (guard on pub0/pub1) with TCP listeners in the gateway namespace.
//! A dropped SYN shows as a connect *timeout* (no RST: the stack never saw the packet).
//! Each step first shows the path works without the guard, so a refusal is the guard's
//! doing and not a routing mistake.
use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ftp_guard::bpf::{AttachedMode, Bpf, Lease, MapSizes, ProtectedRange, XdpAttach};
use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    netns::{CLIENT, CLIENT_IP, GATEWAY, GATEWAY_PUBLIC_IF, GATEWAY_PUBLIC_IP, Topology},
    require_privileged,
};

const LEASED_PORT: u16 = 40001;
const UNLEASED_PORT: u16 = 40002;
/// Outside the protected range (stands in for the control port).
const OTHER_PORT: u16 = 2121;
const ATTACKER: &str = "attacker";
const ATTACKER_IF: &str = "pub1";
/// Long enough for the first SYN and its 1 s retransmission, both dropped.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

fn public(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(GATEWAY_PUBLIC_IP, port)
}

/// An admit-only lease: the guard passes the client to the gateway's own listener.
fn lease_for(client: Ipv4Addr) -> Lease {
    Lease::admit(client, public(LEASED_PORT))
}

fn greeting(port: u16) -> String {
    format!("hello from {port}\n")
}

/// Listeners in the gateway namespace that send a greeting to whoever connects.
struct Greeters {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Greeters {
    fn start(topo: &Topology, ports: &[u16]) -> Self {
        let listeners: Vec<TcpListener> = topo.in_ns(GATEWAY, || {
            ports
                .iter()
                .map(|&port| TcpListener::bind(public(port)).expect("bind in gateway ns"))
                .collect()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let threads = listeners
            .into_iter()
            .zip(ports)
            .map(|(listener, &port)| {
                let stop = stop.clone();
                // Non-blocking so Drop can end the thread: a blocked accept would outlive
                // the test.
                listener.set_nonblocking(true).unwrap();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((mut conn, _)) => {
                                conn.set_nonblocking(false).unwrap();
                                let _ = conn.write_all(greeting(port).as_bytes());
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            Err(e) => panic!("accept on {port}: {e}"),
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Greeters {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Greeting(String),
    /// No answer at all: the SYN was dropped.
    TimedOut,
    Failed(io::ErrorKind),
}

/// Connects from `role` to the gateway's public address and reads the greeting.
fn probe(topo: &Topology, role: &str, port: u16) -> Probe {
    let target = SocketAddr::V4(public(port));
    topo.in_ns(role, || {
        match TcpStream::connect_timeout(&target, PROBE_TIMEOUT) {
            Ok(mut conn) => {
                conn.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
                let mut buf = String::new();
                match conn.read_to_string(&mut buf) {
                    Ok(_) => Probe::Greeting(buf),
                    Err(e) => Probe::Failed(e.kind()),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Probe::TimedOut,
            Err(e) => Probe::Failed(e.kind()),
        }
    })
}

fn connects(port: u16) -> Probe {
    Probe::Greeting(greeting(port))
}

/// Runs `f` and returns how much `counter` grew meanwhile.
fn delta<T>(kernel: &Bpf, counter: Counter, f: impl FnOnce() -> T) -> (T, u64) {
    let before = kernel.counters().unwrap().get(counter);
    let out = f();
    (out, kernel.counters().unwrap().get(counter) - before)
}

fn guard_scenario(tag: &str, mode: XdpAttach, expected: AttachedMode) {
    if !require_privileged() {
        return;
    }
    let start = Instant::now();
    let mut topo = Topology::standard(tag).expect("standard topology");
    topo.add_host(ATTACKER, ATTACKER_IF, "192.0.2.1/24", "192.0.2.66/24")
        .expect("attacker host");
    let _greeters = Greeters::start(&topo, &[LEASED_PORT, UNLEASED_PORT, OTHER_PORT]);

    // Controls: without a guard, both the client and the attacker reach the data range.
    assert_eq!(probe(&topo, CLIENT, UNLEASED_PORT), connects(UNLEASED_PORT));
    assert_eq!(probe(&topo, ATTACKER, LEASED_PORT), connects(LEASED_PORT));

    let mut kernel = Bpf::load(MapSizes::default()).expect("load eBPF object");
    kernel
        .set_protected_ranges(&[ProtectedRange {
            public_ip: GATEWAY_PUBLIC_IP,
            first_port: 40000,
            last_port: 40099,
            nat_ip: None,
            active_port_20: false,
        }])
        .unwrap();
    kernel.insert_lease(&lease_for(CLIENT_IP)).unwrap();
    let attached = topo.in_ns(GATEWAY, || kernel.attach_guard(GATEWAY_PUBLIC_IF, mode));
    assert_eq!(attached.expect("attach guard to pub0"), expected);

    // The client: its leased port works, an unleased one is silently dropped, ports outside
    // the range are not the guard's business.
    let (p, n) = delta(&kernel, Counter::PassLeased, || {
        probe(&topo, CLIENT, LEASED_PORT)
    });
    assert_eq!(p, connects(LEASED_PORT));
    assert!(n > 0, "pass_leased did not count the leased connection");
    let (p, n) = delta(&kernel, Counter::DropNoLease, || {
        probe(&topo, CLIENT, UNLEASED_PORT)
    });
    assert_eq!(p, Probe::TimedOut, "unleased port {UNLEASED_PORT}");
    // The first SYN and its retransmission.
    assert!(n >= 2, "drop_no_lease grew by {n}");
    let (p, n) = delta(&kernel, Counter::PassOtherPort, || {
        probe(&topo, CLIENT, OTHER_PORT)
    });
    assert_eq!(p, connects(OTHER_PORT));
    assert!(n > 0, "pass_other_port did not count port {OTHER_PORT}");

    // XDP guards only the interfaces it is attached to: the attacker, arriving on pub1,
    // still gets through to the leased port. Every ingress interface needs the guard.
    assert_eq!(probe(&topo, ATTACKER, LEASED_PORT), connects(LEASED_PORT));
    let attached = topo.in_ns(GATEWAY, || kernel.attach_guard(ATTACKER_IF, mode));
    assert_eq!(attached.expect("attach guard to pub1"), expected);
    // Now the client's lease does not open the port to the attacker.
    let (p, n) = delta(&kernel, Counter::DropNoLease, || {
        probe(&topo, ATTACKER, LEASED_PORT)
    });
    assert_eq!(p, Probe::TimedOut, "attacker on the client's leased port");
    assert!(n > 0);
    assert_eq!(probe(&topo, CLIENT, LEASED_PORT), connects(LEASED_PORT));

    // Without its lease the client is refused too.
    assert!(kernel.remove_lease(CLIENT_IP, public(LEASED_PORT)).unwrap());
    assert_eq!(
        probe(&topo, CLIENT, LEASED_PORT),
        Probe::TimedOut,
        "leased port after the lease was removed"
    );

    // A lease serves only its own client.
    kernel
        .insert_lease(&lease_for(Ipv4Addr::new(203, 0, 113, 99)))
        .unwrap();
    assert_eq!(kernel.lease_count(), 1);
    assert_eq!(
        probe(&topo, CLIENT, LEASED_PORT),
        Probe::TimedOut,
        "leased port with a lease for another client"
    );

    let counters = kernel.counters().unwrap();
    eprintln!(
        "{tag}: {expected} done in {:.1} s; counters {:?}",
        start.elapsed().as_secs_f64(),
        counters.0
    );
    for counter in [
        Counter::DropNoLease,
        Counter::PassLeased,
        Counter::PassOtherPort,
    ] {
        assert!(counters.get(counter) > 0, "{counter:?} is 0");
    }
}

#[test]
fn guard_native_xdp_on_veth() {
    guard_scenario("guard-native", XdpAttach::Native, AttachedMode::Native);
}

#[test]
fn guard_generic_xdp_on_veth() {
    guard_scenario("guard-generic", XdpAttach::Generic, AttachedMode::Generic);
}

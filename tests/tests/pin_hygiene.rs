//! Pinned-state hygiene (`pin_path`): what a restarted ftp-guard adopts from its bpffs pin
//! directory, and what it refuses or clears. Each test mounts a bpffs of its own (mode
//! 0700) in a temporary directory.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use ftp_guard::bpf::{
    Bpf, Lease, LeaseAction, MapSizes, ProtectedRange, XdpAttach, monotonic_ns, unpin,
};
use ftp_guard_common::PIN_LAYOUT_VERSION;
use ftp_guard_testbed::{
    fixture::{Bpffs, TC_ACT_OK, run_tc},
    packet::{Ipv4Frame, flags},
    require_privileged,
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PUBLIC_GONE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const NAT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const ORIGIN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

fn sizes(max_leases: u32, max_flows: u32) -> MapSizes {
    MapSizes {
        max_leases,
        max_flows,
    }
}

/// The error `Bpf::load_pinned` gives, as the operator reads it.
fn load_error(sizes: MapSizes, pin: &Path) -> String {
    match Bpf::load_pinned(sizes, Some(pin)) {
        Ok(_) => panic!("adopted what it must refuse under {}", pin.display()),
        Err(e) => e.to_string(),
    }
}

const ADVICE: &str = "it was pinned by an incompatible ftp-guard: run `ftp-guard unpin` (ends the data connections it carries) and start again";

/// A pinned map of another capacity, value size or layout version is refused, with an
/// error naming the map, the mismatch and the remedy; aya alone would adopt any map pinned
/// under the right name.
#[test]
fn pinned_maps_of_another_shape_or_version_are_refused() {
    if !require_privileged() {
        return;
    }
    let fs = Bpffs::mount_fresh();
    let pin = fs.pin();
    drop(Bpf::load_pinned(sizes(1024, 2048), Some(&pin)).unwrap());
    assert_eq!(
        load_error(sizes(1024, 4096), &pin),
        format!(
            "pinning under {}/FLOWS: map FLOWS has 2048 entries, this ftp-guard needs 4096 (max_leases changed?): {ADVICE}",
            pin.display()
        )
    );
    // The same sizes adopt.
    drop(Bpf::load_pinned(sizes(1024, 2048), Some(&pin)).unwrap());

    // A map of another value size under the name (the lease map pinned as FLOWS).
    unpin(&pin).unwrap();
    drop(Bpf::load_pinned(sizes(2048, 2048), Some(&pin)).unwrap());
    std::fs::remove_file(pin.join("FLOWS")).unwrap();
    std::fs::rename(pin.join("LEASES"), pin.join("FLOWS")).unwrap();
    assert_eq!(
        load_error(sizes(2048, 2048), &pin),
        format!(
            "pinning under {}/FLOWS: map FLOWS has value size {}, this ftp-guard needs {}: {ADVICE}",
            pin.display(),
            size_of::<ftp_guard_common::LeaseValue>(),
            size_of::<ftp_guard_common::FlowValue>(),
        )
    );

    // Maps of another layout version, or of none (pinned before versions were recorded).
    unpin(&pin).unwrap();
    drop(Bpf::load_pinned(sizes(1024, 2048), Some(&pin)).unwrap());
    let marker = pin.join(format!("layout-v{PIN_LAYOUT_VERSION}"));
    assert!(marker.is_dir());
    std::fs::remove_dir(&marker).unwrap();
    assert_eq!(
        load_error(sizes(1024, 2048), &pin),
        format!(
            "pinning under {}: pinned maps of layout version none (an older ftp-guard), this ftp-guard needs {PIN_LAYOUT_VERSION}: {ADVICE}",
            pin.display()
        )
    );
    std::fs::create_dir(pin.join("layout-v1")).unwrap();
    assert_eq!(
        load_error(sizes(1024, 2048), &pin),
        format!(
            "pinning under {}: pinned maps of layout version 1, this ftp-guard needs {PIN_LAYOUT_VERSION}: {ADVICE}",
            pin.display()
        )
    );
    // `unpin` clears it all, markers included.
    unpin(&pin).unwrap();
    assert!(!pin.exists());
}

/// A pin directory that others could write to (or that another user owns) is refused:
/// whatever was planted there would be adopted. One ftp-guard creates is mode 0700.
#[test]
fn a_pin_directory_others_could_write_is_refused() {
    if !require_privileged() {
        return;
    }
    let fs = Bpffs::mount_fresh();
    let pin = fs.pin();
    drop(Bpf::load_pinned(MapSizes::default(), Some(&pin)).unwrap());
    let mode = std::fs::metadata(&pin).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700);
    unpin(&pin).unwrap();

    for (mode, shown) in [(0o777, "777"), (0o1777, "1777"), (0o770, "770")] {
        std::fs::create_dir(&pin).unwrap();
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            load_error(MapSizes::default(), &pin),
            format!(
                "pinning under {}: mode {shown} is writable by group or others, who could replace the pinned maps and links: `chmod go-w` it (or choose another pin_path)",
                pin.display()
            )
        );
        std::fs::remove_dir(&pin).unwrap();
    }

    std::fs::create_dir(&pin).unwrap();
    std::os::unix::fs::chown(&pin, Some(65534), Some(65534)).unwrap();
    assert_eq!(
        load_error(MapSizes::default(), &pin),
        format!(
            "pinning under {}: owned by uid 65534, not by root or this process (uid 0): refusing to adopt what another user could have pinned",
            pin.display()
        )
    );
    std::fs::remove_dir(&pin).unwrap();
}

/// Runs `f` on a thread in a new, empty network namespace (commands it runs start there).
fn in_empty_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: affects only this thread's network namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("test thread panicked")
    })
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn range(public_ip: Ipv4Addr, first_port: u16) -> ProtectedRange {
    ProtectedRange {
        public_ip,
        first_port,
        last_port: first_port + 99,
        nat_ip: Some(NAT),
        active_port_20: false,
    }
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Installs a passive lease (client → `public`) and claims it with a handshake from
/// `client_port`.
fn claim(kernel: &mut Bpf, public: SocketAddrV4, client_port: u16) {
    kernel
        .insert_lease(&Lease {
            peer: CLIENT,
            local: public,
            action: LeaseAction::Nat {
                target: sa(ORIGIN, 30000 + client_port % 1000),
                source: sa(NAT, public.port()),
                deadline_ns: monotonic_ns() + 3_600_000_000_000,
                target_ifindex: 0,
                mss_max: 0,
                peer_ifindex: 0,
                peer_port: 0,
            },
        })
        .unwrap();
    // The handshake claims it: the client's SYN, the origin's SYN-ACK, the client's ACK.
    let (client, origin) = (
        sa(CLIENT, client_port),
        sa(ORIGIN, 30000 + client_port % 1000),
    );
    let syn = Ipv4Frame::tcp(client, public, flags::SYN, &[]).build();
    assert_eq!(run_tc(kernel, &syn).0, TC_ACT_OK);
    let syn_ack = Ipv4Frame::tcp(origin, sa(NAT, public.port()), flags::SYN | flags::ACK, &[]);
    run_tc(kernel, &syn_ack.build());
    run_tc(
        kernel,
        &Ipv4Frame::tcp(client, public, flags::ACK, &[]).build(),
    );
    assert!(!kernel.has_lease(CLIENT, public).unwrap(), "not claimed");
}

/// On adopting pinned state, a restarted ftp-guard detaches the pinned links of interfaces
/// its configuration no longer names, and removes flow entries nothing accounts for: a
/// half whose pair is gone, and connections on a range no longer protected. The rest is
/// kept.
#[test]
fn adopting_clears_stale_links_and_unclaimed_flows() {
    if !require_privileged() {
        return;
    }
    let fs = Bpffs::mount_fresh();
    let pin = fs.pin();
    in_empty_netns(|| {
        for dev in ["fgd0", "fgd1"] {
            let peer = format!("{dev}p");
            ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", dev, "up"]);
        }
        let kept = sa(PUBLIC, 40001);
        {
            let mut first = Bpf::load_pinned(MapSizes::default(), Some(&pin)).unwrap();
            first.attach_guard("fgd0", XdpAttach::Generic).unwrap();
            first.attach_guard("fgd1", XdpAttach::Generic).unwrap();
            first
                .set_protected_ranges(&[range(PUBLIC, 40000), range(PUBLIC_GONE, 41000)])
                .unwrap();
            claim(&mut first, kept, 51001);
            claim(&mut first, sa(PUBLIC, 40002), 51002);
            claim(&mut first, sa(PUBLIC_GONE, 41001), 51003);
            // Half of the second connection goes missing.
            first
                .remove_flow((sa(ORIGIN, 30002), sa(NAT, 40002)))
                .unwrap();
            assert_eq!(first.flow_count(), 5);
        }
        assert!(pin.join("link-xdp-fgd1").exists());

        let mut second = Bpf::load_pinned(MapSizes::default(), Some(&pin)).unwrap();
        second.attach_guard("fgd0", XdpAttach::Generic).unwrap();
        second
            .set_protected_ranges(&[range(PUBLIC, 40000)])
            .unwrap();
        assert_eq!(
            second.detach_unconfigured_links(&["fgd0"]).unwrap(),
            ["link-xdp-fgd1"]
        );
        assert_eq!(second.sweep_unclaimed_flows().unwrap(), 3);
        assert_eq!(
            second.claimed_flows(),
            [(sa(CLIENT, 51001), kept, sa(NAT, 40001), sa(ORIGIN, 30001))]
        );
        assert_eq!(second.flow_count(), 2);
        assert!(!pin.join("link-xdp-fgd1").exists());
        // The kernel releases a link asynchronously once its last reference is gone.
        let started = Instant::now();
        while ip(&["link", "show", "fgd1"]).contains("prog/xdp") {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "XDP still attached to fgd1"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(ip(&["link", "show", "fgd0"]).contains("prog/xdp"));
        drop(second);
        unpin(&pin).unwrap();
    });
}

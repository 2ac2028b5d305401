//! A TCP SYN flood generator for benchmarks: pre-built Ethernet frames with spoofed
//! sources written in batches to an AF_PACKET socket (`sendmmsg`, qdisc bypassed) on one
//! interface, for a bounded time and optionally at a bounded rate. Run it on a thread in
//! the attacker's namespace ([`crate::netns::Topology::thread_in_ns`]): the socket is bound
//! to that namespace's interface, so nothing leaves the test bed.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::packet::{Ipv4Frame, flags};

/// Distinct frames built in advance; the flood cycles through them.
const DISTINCT_FRAMES: usize = 4096;
/// Frames per `sendmmsg` call.
const BATCH: usize = 64;

/// What to send, where, for how long.
#[derive(Clone, Debug)]
pub struct SynFlood {
    /// The interface to write to (in the calling thread's namespace).
    pub ifname: String,
    pub src_mac: [u8; 6],
    /// The next hop's MAC (the gateway interface facing the attacker).
    pub dst_mac: [u8; 6],
    /// Spoofed sources: `/24`-style network base and how many addresses from it (hosts
    /// `.1` to `.count`).
    pub src_net: Ipv4Addr,
    pub src_count: u8,
    pub dst: Ipv4Addr,
    /// Destination ports, cycled through (e.g. a data range, or just 21).
    pub dst_ports: (u16, u16),
    /// Frames per second at most; `None`: as fast as the socket takes them.
    pub rate: Option<u64>,
    pub duration: Duration,
}

/// What a flood did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FloodReport {
    /// Frames the socket accepted.
    pub sent: u64,
    pub seconds: f64,
}

impl SynFlood {
    /// The frames the flood cycles through: SYNs from every source address × source port
    /// combination in turn to every destination port in turn, checksums correct.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        let (first, last) = self.dst_ports;
        let ports = u32::from(last.saturating_sub(first)) + 1;
        let count = u32::from(self.src_count.max(1));
        let base = u32::from(self.src_net) & !0xff;
        (0..DISTINCT_FRAMES as u32)
            .map(|i| {
                let src_ip = Ipv4Addr::from(base + 1 + i % count);
                let src_port = 1024 + (i % 60_000) as u16;
                let dst_port = first + (i % ports) as u16;
                syn_frame(
                    (self.src_mac, SocketAddrV4::new(src_ip, src_port)),
                    (self.dst_mac, SocketAddrV4::new(self.dst, dst_port)),
                )
            })
            .collect()
    }

    /// Sends until `duration` has passed or `stop` is set. Frames the device refuses
    /// (`ENOBUFS`, a full queue) are not counted and the flood goes on.
    pub fn run(&self, stop: &AtomicBool) -> Result<FloodReport> {
        let socket = packet_socket(&self.ifname)?;
        let frames = self.frames();
        let mut iovecs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            })
            .collect();
        let started = Instant::now();
        let mut sent = 0u64;
        let mut next = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let elapsed = started.elapsed();
            if elapsed >= self.duration {
                break;
            }
            if let Some(rate) = self.rate {
                // Paced: never ahead of `rate` frames per second since the start.
                let due = (elapsed.as_secs_f64() * rate as f64) as u64;
                if sent >= due {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
            }
            let n = BATCH.min(DISTINCT_FRAMES - next);
            let mut msgs: Vec<libc::mmsghdr> = iovecs[next..next + n]
                .iter_mut()
                .map(|iov| {
                    // SAFETY: an all-zero msghdr is valid (no name, no control data).
                    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                    hdr.msg_iov = iov;
                    hdr.msg_iovlen = 1;
                    libc::mmsghdr {
                        msg_hdr: hdr,
                        msg_len: 0,
                    }
                })
                .collect();
            // SAFETY: `msgs` points at `n` valid headers whose iovecs point into `frames`,
            // alive for the call.
            let done =
                unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            if done < 0 {
                let e = std::io::Error::last_os_error();
                ensure!(
                    e.raw_os_error() == Some(libc::ENOBUFS)
                        || e.raw_os_error() == Some(libc::EAGAIN),
                    "sendmmsg on {}: {e}",
                    self.ifname
                );
                std::thread::yield_now();
                continue;
            }
            sent += done as u64;
            next = (next + done as usize) % DISTINCT_FRAMES;
        }
        Ok(FloodReport {
            sent,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// An Ethernet frame with a TCP SYN from `src` (MAC, address) to `dst`, checksums correct.
pub fn syn_frame(src: ([u8; 6], SocketAddrV4), dst: ([u8; 6], SocketAddrV4)) -> Vec<u8> {
    let mut frame = Ipv4Frame::tcp(src.1, dst.1, flags::SYN, &[]).build();
    frame[..6].copy_from_slice(&dst.0);
    frame[6..12].copy_from_slice(&src.0);
    frame
}

/// Writes each of `frames` once to `ifname` (in the calling thread's namespace): an exact
/// number of packets, for tests that count them. Fails if the device refuses one.
pub fn send_frames(ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    let socket = packet_socket(ifname)?;
    for frame in frames {
        // SAFETY: `frame` is a valid buffer of the length passed, alive for the call.
        let sent = unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent != frame.len() as isize {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("send on {ifname}"));
        }
    }
    Ok(())
}

/// An AF_PACKET raw socket bound to `ifname` for sending only (protocol 0: it receives
/// nothing), bypassing the qdisc.
fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {ifname} in this namespace");
    // SAFETY: plain socket creation; the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
    let bound = unsafe {
        libc::bind(
            fd,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if bound != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bind to {ifname}"));
    }
    let one: libc::c_int = 1;
    // SAFETY: an int option of the size passed.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
    }
    Ok(socket)
}

/// The MAC address of `ifname` in `role`'s namespace (`/sys/class/net/IF/address`).
pub fn mac_address(topo: &crate::netns::Topology, role: &str, ifname: &str) -> Result<[u8; 6]> {
    let out = topo.run(role, &["cat", &format!("/sys/class/net/{ifname}/address")])?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_mac(text.trim()).with_context(|| format!("MAC address of {role}/{ifname}: {text:?}"))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{ParsedTcp, parse_tcp};

    fn flood() -> SynFlood {
        SynFlood {
            ifname: "atk0".into(),
            src_mac: [2, 0, 0, 0, 0, 0x66],
            // Neither is a MAC the fixture frames carry by default.
            dst_mac: [2, 0, 0, 0, 0, 0x0a],
            src_net: Ipv4Addr::new(192, 0, 2, 0),
            src_count: 254,
            dst: Ipv4Addr::new(203, 0, 113, 1),
            dst_ports: (40000, 40099),
            rate: None,
            duration: Duration::from_secs(1),
        }
    }

    #[test]
    fn frames_are_valid_syns_from_the_spoofed_range_to_the_ports() {
        let frames = flood().frames();
        assert_eq!(frames.len(), DISTINCT_FRAMES);
        let mut sources = std::collections::BTreeSet::new();
        let mut ports = std::collections::BTreeSet::new();
        for frame in &frames {
            assert_eq!(&frame[..12], &[2, 0, 0, 0, 0, 0x0a, 2, 0, 0, 0, 0, 0x66]);
            let tcp = parse_tcp(frame).unwrap();
            assert_eq!(
                tcp,
                ParsedTcp {
                    dst: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), tcp.dst.port()),
                    ttl: 64,
                    tcp_flags: flags::SYN,
                    ip_checksum_ok: true,
                    tcp_checksum_ok: true,
                    ..tcp.clone()
                }
            );
            sources.insert(*tcp.src.ip());
            ports.insert(tcp.dst.port());
        }
        let expected_sources: std::collections::BTreeSet<_> =
            (1..=254).map(|h| Ipv4Addr::new(192, 0, 2, h)).collect();
        assert_eq!(sources, expected_sources);
        assert_eq!(ports, (40000..=40099).collect());
    }

    #[test]
    fn parses_a_mac() {
        assert_eq!(
            parse_mac("02:00:0a:ff:00:66"),
            Some([2, 0, 10, 255, 0, 0x66])
        );
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:66:01"), None);
    }
}

//! Packet fixtures: frames built field by field (no capture files), with correct checksums
//! unless a test asks otherwise, plus parsers that check what a program wrote back.
use std::net::{Ipv4Addr, SocketAddrV4};

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;

/// TCP flag bits.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// An IPv4 packet in an Ethernet frame, described field by field.
#[derive(Clone, Debug)]
pub struct Ipv4Frame {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// IP options (padded to a multiple of 4 by `build`).
    pub ip_options: Vec<u8>,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub fragment_offset: u16,
    /// An 802.1Q tag (VLAN id) between the MAC addresses and the ethertype.
    pub vlan: Option<u16>,
    pub ttl: u8,
    /// Everything after the IP header (for TCP: header + payload, see [`tcp_segment`]).
    pub payload: Vec<u8>,
}

impl Ipv4Frame {
    /// A TCP segment from `src` to `dst` with the given flags and payload.
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, tcp_flags: u8, payload: &[u8]) -> Self {
        Self {
            src: *src.ip(),
            dst: *dst.ip(),
            protocol: PROTO_TCP,
            ip_options: Vec::new(),
            more_fragments: false,
            fragment_offset: 0,
            vlan: None,
            ttl: 64,
            payload: tcp_segment(src, dst, tcp_flags, payload),
        }
    }

    /// A UDP datagram (to show non-TCP traffic passes).
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Self {
        let mut udp = Vec::with_capacity(8 + payload.len());
        udp.extend_from_slice(&src.port().to_be_bytes());
        udp.extend_from_slice(&dst.port().to_be_bytes());
        udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let sum = transport_checksum(*src.ip(), *dst.ip(), PROTO_UDP, &udp);
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        Self {
            protocol: PROTO_UDP,
            payload: udp,
            ..Self::tcp(src, dst, 0, &[])
        }
    }

    /// An ICMP message of `kind` and `code` with `body` after its 4-byte header, checksum
    /// filled in.
    pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, code: u8, body: &[u8]) -> Self {
        let mut icmp = vec![kind, code, 0, 0];
        icmp.extend_from_slice(body);
        let sum = internet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        Self {
            protocol: PROTO_ICMP,
            payload: icmp,
            ..Self::tcp(SocketAddrV4::new(src, 0), SocketAddrV4::new(dst, 0), 0, &[])
        }
    }

    /// Serializes the frame: Ethernet (+VLAN), IPv4 with checksum, payload.
    pub fn build(&self) -> Vec<u8> {
        let mut options = self.ip_options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0); // End of Options List padding
        }
        let ihl = 20 + options.len();
        assert!(ihl <= 60, "IPv4 options longer than 40 bytes");
        let mut frame = ethernet_header(self.vlan, ETHERTYPE_IPV4);
        let ip_start = frame.len();
        let total_len = (ihl + self.payload.len()) as u16;
        let frag = (u16::from(self.more_fragments) << 13) | (self.fragment_offset & 0x1fff);
        frame.push(0x40 | (ihl / 4) as u8);
        frame.push(0); // DSCP/ECN
        frame.extend_from_slice(&total_len.to_be_bytes());
        frame.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
        frame.extend_from_slice(&frag.to_be_bytes());
        frame.push(self.ttl);
        frame.push(self.protocol);
        frame.extend_from_slice(&[0, 0]); // checksum, filled below
        frame.extend_from_slice(&self.src.octets());
        frame.extend_from_slice(&self.dst.octets());
        frame.extend_from_slice(&options);
        let sum = internet_checksum(&frame[ip_start..ip_start + ihl]);
        frame[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&self.payload);
        frame
    }
}

/// Every fixture endpoint's initial sequence number: a SYN carries it, every later segment
/// ISN + 1, and an ACK acknowledges the other side's ISN + 1 (a coherent handshake and
/// teardown without data accounting).
pub const FIXTURE_ISN: u32 = 1000;

/// A TCP header (20 bytes, no options) plus payload, with its checksum.
pub fn tcp_segment(src: SocketAddrV4, dst: SocketAddrV4, tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut seg = Vec::with_capacity(20 + payload.len());
    seg.extend_from_slice(&src.port().to_be_bytes());
    seg.extend_from_slice(&dst.port().to_be_bytes());
    let seq = if tcp_flags & flags::SYN != 0 {
        FIXTURE_ISN
    } else {
        FIXTURE_ISN + 1
    };
    seg.extend_from_slice(&seq.to_be_bytes());
    let ack = if tcp_flags & flags::ACK != 0 {
        FIXTURE_ISN + 1
    } else {
        0
    };
    seg.extend_from_slice(&ack.to_be_bytes());
    seg.push(5 << 4); // data offset: 5 words
    seg.push(tcp_flags);
    seg.extend_from_slice(&64240u16.to_be_bytes()); // window
    seg.extend_from_slice(&[0, 0]); // checksum, filled below
    seg.extend_from_slice(&[0, 0]); // urgent pointer
    seg.extend_from_slice(payload);
    let sum = transport_checksum(*src.ip(), *dst.ip(), PROTO_TCP, &seg);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    seg
}

/// An IPv6 TCP SYN (the guard is IPv4-only and must pass it untouched).
pub fn ipv6_tcp_syn(dst_port: u16) -> Vec<u8> {
    let mut frame = ethernet_header(None, ETHERTYPE_IPV6);
    let src: [u8; 16] = "2001:db8::2"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let dst: [u8; 16] = "2001:db8::1"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&50000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags::SYN;
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    frame.push(PROTO_TCP);
    frame.push(64);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&tcp);
    frame
}

/// An ARP request frame (not IP at all).
pub fn arp_request() -> Vec<u8> {
    let mut frame = ethernet_header(None, ETHERTYPE_ARP);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&[203, 0, 113, 2]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[203, 0, 113, 1]);
    frame
}

fn ethernet_header(vlan: Option<u16>, ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&GATEWAY_MAC);
    frame.extend_from_slice(&CLIENT_MAC);
    if let Some(id) = vlan {
        frame.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        frame.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// RFC 1071 one's-complement sum of `data`, folded and inverted.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data))
}

fn sum_words(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// TCP/UDP checksum over the IPv4 pseudo-header and `segment` (its checksum field zeroed
/// by the caller when computing, left in place when verifying: then the result is 0).
pub fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.push(0);
    pseudo.push(protocol);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    !fold(sum_words(&pseudo) + sum_words(segment))
}

/// The IPv4 and TCP fields of a frame, parsed back for assertions on program output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedTcp {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    pub tcp_flags: u8,
    pub ip_checksum_ok: bool,
    pub tcp_checksum_ok: bool,
}

/// Parses an untagged Ethernet/IPv4/TCP frame and verifies both checksums.
pub fn parse_tcp(frame: &[u8]) -> Result<ParsedTcp, String> {
    if frame.len() < ETH_HLEN + 20 {
        return Err(format!("frame of {} bytes is too short", frame.len()));
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return Err("not IPv4".into());
    }
    let ip = &frame[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[9] != PROTO_TCP || ihl < 20 || total > ip.len() || total < ihl + 20 {
        return Err("not a complete TCP/IPv4 packet".into());
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp = &ip[ihl..total];
    Ok(ParsedTcp {
        src: SocketAddrV4::new(src_ip, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: SocketAddrV4::new(dst_ip, u16::from_be_bytes([tcp[2], tcp[3]])),
        ttl: ip[8],
        tcp_flags: tcp[13],
        ip_checksum_ok: internet_checksum(&ip[..ihl]) == 0,
        tcp_checksum_ok: transport_checksum(src_ip, dst_ip, PROTO_TCP, tcp) == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn built_frames_have_valid_checksums() {
        let mut f = Ipv4Frame::tcp(
            addr("203.0.113.2:50000"),
            addr("203.0.113.1:40001"),
            flags::SYN,
            b"abc",
        );
        f.ip_options = vec![1, 1, 1]; // NOPs, padded to 4
        let bytes = f.build();
        let p = parse_tcp(&bytes).unwrap();
        assert_eq!(p.src, addr("203.0.113.2:50000"));
        assert_eq!(p.dst, addr("203.0.113.1:40001"));
        assert!(p.ip_checksum_ok && p.tcp_checksum_ok, "{p:?}");
    }

    #[test]
    fn corrupted_frames_fail_checksum_checks() {
        let f = Ipv4Frame::tcp(
            addr("203.0.113.2:50000"),
            addr("203.0.113.1:40001"),
            0,
            b"x",
        );
        let mut bytes = f.build();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(!parse_tcp(&bytes).unwrap().tcp_checksum_ok);
        bytes[ETH_HLEN + 8] ^= 1; // TTL
        assert!(!parse_tcp(&bytes).unwrap().ip_checksum_ok);
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example words: 0001 f203 f4f5 f6f7 → sum 0xddf2, inverted.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
    }
}

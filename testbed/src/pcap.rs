//! Packet captures for end-to-end checks: `tcpdump` run inside a test namespace
//! ([`Capture`]), a reader for the classic pcap files it writes ([`read_pcap`]) and a
//! checksum audit of the TCP/IPv4 frames in them ([`audit_tcp_checksums`]).
//!
//! What a capture shows is what crossed the interface: on a receiving interface, the
//! checksums the receiving kernel is about to verify. (Frames a host *sends* with checksum
//! offload on carry only the pseudo-header sum: capture on the receiving side, `-Q in`.)
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    ftp_clients::{command_line, ns_command, require_program},
    packet::{self, ParsedTcp},
};

/// pcap link type of Ethernet frames (`DLT_EN10MB`).
pub const LINKTYPE_ETHERNET: u32 = 1;

/// The frames of a classic pcap file and its link type.
#[derive(Debug, Default)]
pub struct Pcap {
    pub linktype: u32,
    /// Each record's bytes as captured.
    pub frames: Vec<Vec<u8>>,
    /// Records whose captured length was below their length on the wire (snaplen).
    pub truncated: usize,
}

/// Parses a classic pcap file (either byte order, micro- or nanosecond timestamps). A
/// record cut short at the end (the writer was killed mid-write) is ignored.
pub fn parse_pcap(bytes: &[u8]) -> Result<Pcap> {
    ensure!(
        bytes.len() >= 24,
        "not a pcap file: {} bytes, the header alone is 24",
        bytes.len()
    );
    let magic = u32::from_le_bytes(bytes[0..4].try_into()?);
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        other => bail!("not a classic pcap file (magic {other:#010x}; pcapng is not read)"),
    };
    let u32_at = |at: usize| -> u32 {
        let b: [u8; 4] = bytes[at..at + 4].try_into().unwrap_or_default();
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut pcap = Pcap {
        linktype: u32_at(20) & 0x0fff_ffff,
        ..Pcap::default()
    };
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let incl = u32_at(at + 8) as usize;
        let orig = u32_at(at + 12) as usize;
        let start = at + 16;
        let Some(frame) = bytes.get(start..start + incl) else {
            break;
        };
        if incl < orig {
            pcap.truncated += 1;
        }
        pcap.frames.push(frame.to_vec());
        at = start + incl;
    }
    Ok(pcap)
}

/// Reads and parses the pcap file at `path`.
pub fn read_pcap(path: &Path) -> Result<Pcap> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_pcap(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The checksum audit of a capture's TCP/IPv4 frames.
#[derive(Debug, Default)]
pub struct ChecksumAudit {
    /// Ethernet/IPv4/TCP frames checked.
    pub tcp_frames: usize,
    /// Frames that are not complete TCP/IPv4 in Ethernet (ARP, truncated ones...): not checked.
    pub skipped: usize,
    /// Frames whose TCP checksum is wrong.
    pub bad_tcp: Vec<ParsedTcp>,
    /// Frames whose IPv4 header checksum is wrong.
    pub bad_ip: Vec<ParsedTcp>,
}

impl ChecksumAudit {
    pub fn ok(&self) -> bool {
        self.bad_tcp.is_empty() && self.bad_ip.is_empty()
    }

    /// One line, plus the first few bad frames.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} TCP frames checked, {} with a bad TCP checksum, {} with a bad IPv4 header \
             checksum ({} other frames not checked)",
            self.tcp_frames,
            self.bad_tcp.len(),
            self.bad_ip.len(),
            self.skipped
        );
        // Retransmissions repeat a frame: one line per distinct kind, with its count.
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for p in self.bad_tcp.iter().chain(&self.bad_ip) {
            let kind = format!(
                "{} -> {} flags {:#04x} (tcp checksum {}, ip checksum {})",
                p.src,
                p.dst,
                p.tcp_flags,
                if p.tcp_checksum_ok { "ok" } else { "BAD" },
                if p.ip_checksum_ok { "ok" } else { "BAD" },
            );
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((kind, 1)),
            }
        }
        for (kind, n) in kinds.iter().take(6) {
            let _ = write!(text, "\n    e.g. {kind} x{n}");
        }
        if kinds.len() > 6 {
            let _ = write!(text, "\n    ... {} more kinds", kinds.len() - 6);
        }
        text
    }
}

/// Verifies the IPv4 and TCP checksum of every TCP/IPv4 frame of an Ethernet capture.
pub fn audit_tcp_checksums(pcap: &Pcap) -> Result<ChecksumAudit> {
    ensure!(
        pcap.linktype == LINKTYPE_ETHERNET,
        "capture link type {} is not Ethernet",
        pcap.linktype
    );
    let mut audit = ChecksumAudit::default();
    for frame in &pcap.frames {
        match packet::parse_tcp(frame) {
            Ok(p) => {
                audit.tcp_frames += 1;
                if !p.tcp_checksum_ok {
                    audit.bad_tcp.push(p.clone());
                }
                if !p.ip_checksum_ok {
                    audit.bad_ip.push(p);
                }
            }
            Err(_) => audit.skipped += 1,
        }
    }
    Ok(audit)
}

/// `tcpdump` capturing in a network namespace into a pcap file, until [`Capture::stop`]
/// (or drop, which kills it).
pub struct Capture {
    child: Option<Child>,
    path: PathBuf,
    command: String,
    stderr: mpsc::Receiver<String>,
}

impl Capture {
    /// Starts `tcpdump -i IFNAME -Q in -U -s 0 -w PATH FILTER` in `ns` (only frames the
    /// interface receives, whole, written out one by one) and waits until it listens.
    pub fn start(ns: &str, ifname: &str, filter: &str, path: &Path) -> Result<Capture> {
        let tcpdump = require_program("tcpdump")?;
        let mut cmd = ns_command(ns)?;
        cmd.arg(tcpdump)
            .args([
                "-i", ifname, "-Q", "in", "-U", "-n", "-s", "0", "-Z", "root", "-w",
            ])
            .arg(path)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let command = command_line(&cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not run `{command}`"))?;
        let stderr = child.stderr.take().context("tcpdump's stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let capture = Capture {
            child: Some(child),
            path: path.to_owned(),
            command,
            stderr: rx,
        };
        // "listening on eth0, link-type EN10MB ..." once the socket is open.
        let mut said = String::new();
        loop {
            match capture.stderr.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("listening on") => return Ok(capture),
                Ok(line) => {
                    said.push_str(&line);
                    said.push('\n');
                }
                Err(_) => bail!(
                    "`{}` did not start listening within 10 s: {said}",
                    capture.command
                ),
            }
        }
    }

    /// Stops tcpdump (SIGTERM: it flushes its file) and returns what it captured, with its
    /// closing statistics (packets dropped by the kernel, if any).
    pub fn stop(mut self) -> Result<(Pcap, String)> {
        let Some(mut child) = self.child.take() else {
            bail!("capture already stopped");
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while child.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        let stats: Vec<String> = self
            .stderr
            .try_iter()
            .filter(|l| l.contains("packets"))
            .collect();
        let pcap = read_pcap(&self.path)?;
        Ok((pcap, stats.join("; ")))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Ipv4Frame, flags};

    fn pcap_file(frames: &[Vec<u8>], cut_last: usize) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&262_144u32.to_le_bytes());
        out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        for f in frames {
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(f);
        }
        out.truncate(out.len() - cut_last);
        out
    }

    #[test]
    fn reads_frames_and_finds_bad_checksums() {
        let good = Ipv4Frame::tcp(
            "203.0.113.2:50000".parse().unwrap(),
            "198.51.100.2:30000".parse().unwrap(),
            flags::SYN,
            b"",
        )
        .build();
        let mut bad = Ipv4Frame::tcp(
            "198.51.100.1:40000".parse().unwrap(),
            "198.51.100.2:30000".parse().unwrap(),
            flags::ACK,
            b"payload",
        )
        .build();
        let last = bad.len() - 1;
        bad[last] ^= 0x5a;
        let arp = packet::arp_request();
        let bytes = pcap_file(&[good.clone(), bad, arp, good], 3);
        let pcap = parse_pcap(&bytes).unwrap();
        // The last record was cut short: ignored.
        assert_eq!(pcap.frames.len(), 3);
        let audit = audit_tcp_checksums(&pcap).unwrap();
        assert_eq!(audit.tcp_frames, 2);
        assert_eq!(audit.skipped, 1);
        assert_eq!(audit.bad_tcp.len(), 1);
        assert!(audit.bad_ip.is_empty());
        assert!(!audit.ok());
        assert!(
            audit.describe().contains("198.51.100.1:40000"),
            "{}",
            audit.describe()
        );
    }

    #[test]
    fn refuses_what_is_not_pcap() {
        assert!(parse_pcap(b"short").is_err());
        assert!(parse_pcap(&[0x0a, 0x0d, 0x0d, 0x0a].repeat(8)).is_err());
    }
}

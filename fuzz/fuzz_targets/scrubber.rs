//! After scrubbing, no hidden address is left (`leaks()` is the oracle); nothing changes
//! when nothing leaks; reply codes survive.
//!
//! Input: hidden IPv4 (4 bytes), hidden IPv6 (16), replacement (4), which to hide (1:
//! bit 0 the IPv4, bit 1 the IPv6, bit 2 the host names `ftp.internal.example` and
//! `a-1`), then the line. In the line, bytes 1..=6 stand for the hidden addresses and name
//! written out (dotted, comma, IPv6 compressed, IPv6 expanded upper-case, mapped, the name
//! in mixed case), so the fuzzer meets real matches next to arbitrary bytes.
#![no_main]
use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ftp_guard::ftp::{reply::Reply, scrub::Scrubber};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, template)) = data.split_first_chunk::<25>() else {
        return;
    };
    let v4 = Ipv4Addr::from(<[u8; 4]>::try_from(&head[..4]).unwrap_or_default());
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(&head[4..20]).unwrap_or_default());
    let replacement = Ipv4Addr::from(<[u8; 4]>::try_from(&head[20..24]).unwrap_or_default());
    let mut hide = Vec::new();
    if head[24] & 1 == 1 {
        hide.push(IpAddr::V4(v4));
    }
    if head[24] & 2 == 2 {
        hide.push(IpAddr::V6(v6));
    }
    let mut scrubber = Scrubber::new(&hide, replacement);
    if head[24] & 4 == 4 {
        scrubber = scrubber.with_names(&["ftp.internal.example", "a-1"]);
    }

    let [a, b, c, d] = v4.octets();
    let segments = v6.segments().map(|s| format!("{s:04X}")).join(":");
    let mut line = Vec::new();
    for &byte in template {
        match byte {
            1 => line.extend_from_slice(v4.to_string().as_bytes()),
            2 => line.extend_from_slice(format!("{a},{b},{c},{d}").as_bytes()),
            3 => line.extend_from_slice(v6.to_string().as_bytes()),
            4 => line.extend_from_slice(segments.as_bytes()),
            5 => line.extend_from_slice(v4.to_ipv6_mapped().to_string().as_bytes()),
            6 => line.extend_from_slice(b"FTP.Internal.example"),
            _ => line.push(byte),
        }
    }

    let out = scrubber.scrub(&line);
    assert!(!scrubber.leaks(&out), "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(matches!(out, Cow::Borrowed(_)), !scrubber.leaks(&line));

    let reply = Reply {
        code: 220,
        lines: vec![[b"220 ".as_slice(), &line].concat()],
    };
    let clean = scrubber.scrub_reply(&reply);
    assert!(clean.lines[0].starts_with(b"220 "));
    assert!(!scrubber.leaks(&clean.to_bytes()));
});

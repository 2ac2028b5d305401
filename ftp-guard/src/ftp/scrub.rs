//! Keeps the origin's addresses out of everything sent to clients.
//!
//! Servers put their own address in banners (proftpd's `[198.51.100.2]`), STAT output
//! (vsftpd, pyftpdlib), PORT errors (pure-ftpd) and 227 replies. The scrubber finds the
//! hidden addresses in any of these forms and puts the public address in their place:
//!
//! - dotted IPv4, leading zeros included (`198.51.100.2`, `198.051.100.002`, `[198.51.100.2]`);
//! - the comma form of 227/PORT, spaces after commas included (`198,51,100,2,156,64`);
//! - IPv6 in any textual form RFC 4291 §2.2 allows (compressed, expanded, any case), and
//!   IPv4-mapped IPv6 (`::ffff:198.51.100.2`, `::ffff:c633:6402`).
//!
//! Numbers are compared as whole digit runs, so `198.51.100.2` is not found in
//! `198.51.100.23` or `1198.51.100.2`. Inside a longer run of dotted numbers any four in a
//! row count (`198.51.100.2.21`, the BSD netstat form of address and port, is a leak): a
//! false positive costs a wrong-looking number in a message, a false negative reveals the
//! origin. Only the matched bytes change; everything else, non-UTF-8 included, is kept.
use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::reply::Reply;

/// Replaces hidden addresses with a public one. Cheap to clone; built once per listener.
#[derive(Clone, Debug)]
pub struct Scrubber {
    /// Hidden IPv4 addresses, as octets (also the IPv4 part of hidden mapped IPv6).
    v4: Vec<[u8; 4]>,
    /// Hidden IPv6 addresses.
    v6: Vec<Ipv6Addr>,
    /// What is shown instead.
    replacement: Ipv4Addr,
}

/// How a match was written, which decides how the replacement is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Dotted,
    Comma,
    Ipv6,
}

/// A hidden address found at `line[start..end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    start: usize,
    end: usize,
    form: Form,
}

/// Replacement passes before falling back to masking. One pass is enough unless a
/// replacement next to other digits forms another hidden address (contrived, but an
/// attacker-influenced reply must not be able to bring one back).
const MAX_PASSES: usize = 4;

impl Scrubber {
    /// `hide`: the origin's addresses (IPv4 and/or IPv6); `replacement`: the public IPv4
    /// address shown instead. If `replacement` is itself hidden (a misconfiguration), the
    /// first address from 0.0.0.0 upwards that is not hidden is shown instead.
    pub fn new(hide: &[IpAddr], replacement: Ipv4Addr) -> Self {
        let mut scrubber = Scrubber {
            v4: Vec::new(),
            v6: Vec::new(),
            replacement,
        };
        for ip in hide {
            match *ip {
                IpAddr::V4(v4) => scrubber.add_v4(v4),
                IpAddr::V6(v6) => {
                    if !scrubber.v6.contains(&v6) {
                        scrubber.v6.push(v6);
                    }
                    if let Some(v4) = v6.to_ipv4_mapped() {
                        scrubber.add_v4(v4);
                    }
                }
            }
        }
        if scrubber.v4.contains(&replacement.octets()) {
            // At most `hide.len()` addresses are skipped, so this ends long before overflow.
            let mut candidate = 0u32;
            while scrubber.v4.contains(&Ipv4Addr::from(candidate).octets()) {
                candidate += 1;
            }
            scrubber.replacement = Ipv4Addr::from(candidate);
        }
        scrubber
    }

    fn add_v4(&mut self, v4: Ipv4Addr) {
        if !self.v4.contains(&v4.octets()) {
            self.v4.push(v4.octets());
        }
    }

    /// The address shown in place of hidden ones.
    pub fn replacement(&self) -> Ipv4Addr {
        self.replacement
    }

    /// `line` with every hidden address replaced; borrowed when there was none.
    pub fn scrub<'a>(&self, line: &'a [u8]) -> Cow<'a, [u8]> {
        let found = self.find(line);
        if found.is_empty() {
            return Cow::Borrowed(line);
        }
        let mut out = self.replace(line, &found);
        for _ in 1..MAX_PASSES {
            let found = self.find(&out);
            if found.is_empty() {
                return Cow::Owned(out);
            }
            out = self.replace(&out, &found);
        }
        // Still finding some: blot them out. `*` is in no form, so each round removes
        // matched bytes for good and the loop ends.
        loop {
            let found = self.find(&out);
            if found.is_empty() {
                return Cow::Owned(out);
            }
            for f in found {
                out[f.start..f.end].fill(b'*');
            }
        }
    }

    /// `reply` with every line scrubbed. The codes stay: a code is followed by a space or
    /// `-`, so it is never part of an address form.
    pub fn scrub_reply(&self, reply: &Reply) -> Reply {
        Reply {
            code: reply.code,
            lines: reply
                .lines
                .iter()
                .map(|line| self.scrub(line).into_owned())
                .collect(),
        }
    }

    /// True if a hidden address appears in `bytes` in any form [`scrub`](Self::scrub)
    /// removes.
    pub fn leaks(&self, bytes: &[u8]) -> bool {
        !self.find(bytes).is_empty()
    }

    /// `line` with the (non-overlapping, sorted) matches replaced.
    fn replace(&self, line: &[u8], found: &[Found]) -> Vec<u8> {
        let mut out = Vec::with_capacity(line.len() + 16 * found.len());
        let mut copied = 0;
        for f in found {
            out.extend_from_slice(&line[copied..f.start]);
            let [a, b, c, d] = self.replacement.octets();
            let text = match f.form {
                Form::Dotted | Form::Ipv6 => format!("{a}.{b}.{c}.{d}"),
                Form::Comma => format!("{a},{b},{c},{d}"),
            };
            out.extend_from_slice(text.as_bytes());
            copied = f.end;
        }
        out.extend_from_slice(&line[copied..]);
        out
    }

    /// Every hidden address in `line`, sorted, overlaps resolved to the earliest (then
    /// longest) match.
    fn find(&self, line: &[u8]) -> Vec<Found> {
        let mut found = Vec::new();
        if !self.v4.is_empty() {
            self.find_v4(line, Form::Dotted, &mut found);
            self.find_v4(line, Form::Comma, &mut found);
        }
        if !self.v6.is_empty() || !self.v4.is_empty() {
            self.find_v6(line, &mut found);
        }
        found.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
        let mut end = 0;
        found.retain(|f| {
            let keep = f.start >= end;
            if keep {
                end = f.end;
            }
            keep
        });
        found
    }

    /// Runs of numbers joined by `.` (or by `,` plus optional spaces); any four in a row
    /// that equal a hidden address are a match.
    fn find_v4(&self, line: &[u8], form: Form, found: &mut Vec<Found>) {
        let mut i = 0;
        let mut numbers: Vec<(usize, usize, u32)> = Vec::new();
        while i < line.len() {
            if !line[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            // A maximal chain of numbers starting at `i` (the byte before is no digit).
            numbers.clear();
            loop {
                let start = i;
                let mut value = 0u32;
                while i < line.len() && line[i].is_ascii_digit() {
                    value = value
                        .saturating_mul(10)
                        .saturating_add(u32::from(line[i] - b'0'));
                    i += 1;
                }
                numbers.push((start, i, value));
                match next_number(line, i, form) {
                    Some(next) => i = next,
                    None => break,
                }
            }
            for window in numbers.windows(4) {
                let octets = [window[0].2, window[1].2, window[2].2, window[3].2];
                if self.v4.iter().any(|h| h.map(u32::from) == octets) {
                    found.push(Found {
                        start: window[0].0,
                        end: window[3].1,
                        form,
                    });
                }
            }
        }
    }

    /// Runs of hex digits, `:` and `.` with at least two colons that parse as a hidden
    /// IPv6 address, or as an IPv4-mapped one of a hidden IPv4 address. A trailing `.` or
    /// `:` (end of sentence) or `:port` is tolerated.
    fn find_v6(&self, line: &[u8], found: &mut Vec<Found>) {
        let is_v6_byte = |b: &u8| b.is_ascii_hexdigit() || *b == b':' || *b == b'.';
        let mut i = 0;
        while i < line.len() {
            if !is_v6_byte(&line[i]) {
                i += 1;
                continue;
            }
            let start = i;
            i += line[i..].iter().take_while(|b| is_v6_byte(b)).count();
            let run = &line[start..i];
            if run.iter().filter(|&&b| b == b':').count() < 2 {
                continue;
            }
            if let Some(len) = self.hidden_v6_prefix(run) {
                found.push(Found {
                    start,
                    end: start + len,
                    form: Form::Ipv6,
                });
            }
        }
    }

    /// The length of the part of `run` that is a hidden IPv6 address, if any.
    fn hidden_v6_prefix(&self, run: &[u8]) -> Option<usize> {
        let trimmed = run.len()
            - run
                .iter()
                .rev()
                .take_while(|&&b| b == b'.' || b == b':')
                .count();
        let without_port = run.iter().rposition(|&b| b == b':').filter(|&colon| {
            colon + 1 < run.len() && run[colon + 1..].iter().all(u8::is_ascii_digit)
        });
        [Some(run.len()), Some(trimmed), without_port]
            .into_iter()
            .flatten()
            .find(|&len| self.is_hidden_v6(&run[..len]))
    }

    fn is_hidden_v6(&self, text: &[u8]) -> bool {
        let Some(ip) = std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<Ipv6Addr>().ok())
        else {
            return false;
        };
        self.v6.contains(&ip)
            || ip
                .to_ipv4_mapped()
                .is_some_and(|v4| self.v4.contains(&v4.octets()))
    }
}

/// Where the next number of a chain starts after a number ending at `i`, if the chain
/// goes on: `.` then a digit, or `,` then optional spaces then a digit.
fn next_number(line: &[u8], i: usize, form: Form) -> Option<usize> {
    let mut j = i;
    match (form, line.get(j)) {
        (Form::Dotted, Some(b'.')) => j += 1,
        (Form::Comma, Some(b',')) => {
            j += 1;
            while line.get(j) == Some(&b' ') {
                j += 1;
            }
        }
        _ => return None,
    }
    line.get(j).is_some_and(u8::is_ascii_digit).then_some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

    fn scrubber(hide: &[&str]) -> Scrubber {
        let hide: Vec<IpAddr> = hide.iter().map(|h| h.parse().unwrap()).collect();
        Scrubber::new(&hide, PUBLIC)
    }

    /// (hidden addresses, line, expected line; None = unchanged and borrowed)
    type Case = (
        &'static [&'static str],
        &'static [u8],
        Option<&'static [u8]>,
    );

    fn check(cases: &[Case]) {
        for (hide, line, expected) in cases {
            let s = scrubber(hide);
            let out = s.scrub(line);
            let shown = String::from_utf8_lossy(line);
            match expected {
                None => {
                    assert!(
                        matches!(out, Cow::Borrowed(_)),
                        "{shown}: changed to {out:?}"
                    );
                    assert!(!s.leaks(line), "{shown}: leaks() disagrees");
                }
                Some(expected) => {
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(expected),
                        "{shown}"
                    );
                    assert!(s.leaks(line), "{shown}: leaks() disagrees");
                }
            }
            assert!(!s.leaks(&out), "{shown}: still leaks after scrubbing");
        }
    }

    const V4: &[&str] = &["198.51.100.2"];

    #[test]
    fn ipv4_forms() {
        check(&[
            (
                V4,
                b"220 ProFTPD Server [198.51.100.2]",
                Some(b"220 ProFTPD Server [203.0.113.7]"),
            ),
            (V4, b"198.51.100.2", Some(b"203.0.113.7")),
            (
                V4,
                b"Connected to 198.51.100.2.",
                Some(b"Connected to 203.0.113.7."),
            ),
            (V4, b"from 198.51.100.2:21", Some(b"from 203.0.113.7:21")),
            (V4, b"198.051.100.002", Some(b"203.0.113.7")),
            (V4, b"(198,51,100,2,156,64)", Some(b"(203,0,113,7,156,64)")),
            (V4, b"=198, 51, 100,  2,1,2", Some(b"=203,0,113,7,1,2")),
            (V4, b"::ffff:198.51.100.2", Some(b"203.0.113.7")),
            (V4, b"::FFFF:198.51.100.2 ok", Some(b"203.0.113.7 ok")),
            (V4, b"::ffff:c633:6402", Some(b"203.0.113.7")),
            (V4, b"0:0:0:0:0:ffff:c633:6402", Some(b"203.0.113.7")),
            (V4, b"64:ff9b::198.51.100.2", Some(b"64:ff9b::203.0.113.7")),
            // Four in a row of a longer run: address.port (BSD netstat), or a prefix.
            (V4, b"198.51.100.2.21", Some(b"203.0.113.7.21")),
            (V4, b"v1.198.51.100.2", Some(b"v1.203.0.113.7")),
            (
                V4,
                b"a 198.51.100.2 b 198,51,100,2 c",
                Some(b"a 203.0.113.7 b 203,0,113,7 c"),
            ),
            (V4, b"198.51.100.2198.51.100.2", None),
            (V4, b"\xff198.51.100.2\xfe", Some(b"\xff203.0.113.7\xfe")),
            // Boundaries: other numbers are other addresses.
            (V4, b"198.51.100.23", None),
            (V4, b"1198.51.100.2", None),
            (V4, b"198.51.100.20 and 98.51.100.2", None),
            (V4, b"198.51.100", None),
            (V4, b"198.51.1002", None),
            (V4, b"198. 51.100.2", None),
            (V4, b"198,51,100,23", None),
            (V4, b"198 ,51,100,2", None),
            (V4, b"198,51.100,2", None),
            (V4, b"198.51.100.258", None),
            (V4, b"198.51.100.4294967298", None),
            (V4, b"::ffff:c633:6403", None),
            (V4, b"220 Service ready \xc3\xa9\xff", None),
            (V4, b"", None),
        ]);
    }

    #[test]
    fn ipv6_forms() {
        const V6: &[&str] = &["2001:db8::1"];
        check(&[
            (
                V6,
                b"220 [2001:db8::1] ready",
                Some(b"220 [203.0.113.7] ready"),
            ),
            (V6, b"2001:DB8::1", Some(b"203.0.113.7")),
            (
                V6,
                b"2001:0db8:0000:0000:0000:0000:0000:0001",
                Some(b"203.0.113.7"),
            ),
            (V6, b"2001:db8:0:0:0:0:0:1", Some(b"203.0.113.7")),
            (V6, b"at 2001:db8::1.", Some(b"at 203.0.113.7.")),
            (
                V6,
                b"at 2001:db8::1: refused",
                Some(b"at 203.0.113.7: refused"),
            ),
            (V6, b"2001:db8::1%eth0", Some(b"203.0.113.7%eth0")),
            // Address:port without brackets: the port goes, a hidden prefix is enough.
            (V6, b"2001:db8::1:21", Some(b"203.0.113.7:21")),
            (V6, b"2001:db8::11", None),
            (V6, b"2001:db8::1:ab", None),
            (V6, b"12001:db8::1", None),
            (V6, b"2001:db8::", None),
            (V6, b"198.51.100.2", None),
            (V6, b"12:30:45", None),
            // A hidden mapped address hides its IPv4 address too.
            (
                &["::ffff:198.51.100.2"],
                b"198.51.100.2",
                Some(b"203.0.113.7"),
            ),
            (
                &["2001:db8::1", "198.51.100.2"],
                b"2001:db8::1 198.51.100.2",
                Some(b"203.0.113.7 203.0.113.7"),
            ),
        ]);
    }

    #[test]
    fn no_reappearing_addresses() {
        // Replacing one address next to other numbers forms another hidden one.
        check(&[
            (
                &["1.2.3.4", "7.5.6.7"],
                b"1.2.3.4.5.6.7",
                Some(b"203.0.113.203.0.113.7"),
            ),
            (
                &["1.2.3.4", "0.113.7.5"],
                b"1.2.3.4.5",
                Some(b"203.203.0.113.7"),
            ),
        ]);
        // Each replacement forms the next hidden address: after MAX_PASSES, masking.
        let chain = &[
            "1.2.3.4",
            "0.113.7.5",
            "0.113.7.6",
            "0.113.7.7",
            "0.113.7.8",
        ];
        check(&[(
            chain,
            b"1.2.3.4.5.6.7.8.9",
            Some(b"203.203.203.203.*********.9"),
        )]);
        // A hidden replacement is not used.
        let s = Scrubber::new(&["203.0.113.7".parse().unwrap()], PUBLIC);
        assert_eq!(s.replacement(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(s.scrub(b"203.0.113.7").as_ref(), b"0.0.0.0");
        let hide = ["203.0.113.7".parse().unwrap(), "0.0.0.0".parse().unwrap()];
        assert_eq!(
            Scrubber::new(&hide, PUBLIC).replacement(),
            Ipv4Addr::new(0, 0, 0, 1)
        );
        // Nothing hidden: nothing changes.
        assert!(matches!(
            Scrubber::new(&[], PUBLIC).scrub(b"1.2.3.4"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn replies() {
        let s = scrubber(V4);
        let reply = Reply::multi(
            211,
            &[
                "Status of 198.51.100.2:",
                "Connected to 198,51,100,2,0,21",
                "End",
            ],
        );
        let clean = s.scrub_reply(&reply);
        assert_eq!(
            clean.to_bytes(),
            b"211-Status of 203.0.113.7:\r\nConnected to 203,0,113,7,0,21\r\n211 End\r\n"
        );
        assert!(!s.leaks(&clean.to_bytes()));
        // A hidden address that looks like a code does not touch the code.
        let s = scrubber(&["227.1.2.3"]);
        let reply = Reply::new(227, "Entering Passive Mode (227,1,2,3,4,5)");
        assert_eq!(
            s.scrub_reply(&reply).to_bytes(),
            b"227 Entering Passive Mode (203,0,113,7,4,5)\r\n"
        );
    }
}

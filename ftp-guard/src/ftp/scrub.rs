//! Keeps internal addresses and names out of everything sent to clients.
//!
//! Servers put their own address in banners (proftpd's `[198.51.100.2]`), STAT output
//! (vsftpd, pyftpdlib), PORT errors (pure-ftpd) and 227 replies, and the address their
//! client came from (the gateway's origin-side address: vsftpd's `Connected to …`) in STAT.
//! The scrubber finds the hidden addresses in any of these forms and puts the public
//! address in their place:
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
//!
//! Hidden host names (the origin's own, e.g. in a banner) are found in any ASCII case, as
//! whole names: the bytes around a match must not be letters, digits, `-` or `_` (a `.`
//! may be: `ftp.internal.example.` ends a sentence, `www.ftp.internal.example` is one of
//! its names too). They are replaced with the public address as well.
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
    /// Hidden host names, in lower case.
    names: Vec<Vec<u8>>,
    /// The replacement asked for (shown unless it is hidden itself).
    wanted: Ipv4Addr,
    /// What is shown instead.
    replacement: Ipv4Addr,
}

/// How a match was written, which decides how the replacement is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Dotted,
    Comma,
    Ipv6,
    Name,
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
    /// `hide`: the addresses to hide (IPv4 and/or IPv6); `replacement`: the public IPv4
    /// address shown instead. If `replacement` is itself hidden (a misconfiguration), the
    /// first address from 0.0.0.0 upwards that is not hidden is shown instead.
    pub fn new(hide: &[IpAddr], replacement: Ipv4Addr) -> Self {
        let mut scrubber = Scrubber {
            v4: Vec::new(),
            v6: Vec::new(),
            names: Vec::new(),
            wanted: replacement,
            replacement,
        };
        for ip in hide {
            scrubber.hide_address(*ip);
        }
        scrubber
    }

    /// Hides one more address (see [`new`](Self::new) for a hidden replacement).
    pub fn hide_address(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add_v4(v4),
            IpAddr::V6(v6) => {
                if !self.v6.contains(&v6) {
                    self.v6.push(v6);
                }
                if let Some(v4) = v6.to_ipv4_mapped() {
                    self.add_v4(v4);
                }
            }
        }
        self.replacement = self.wanted;
        if self.v4.contains(&self.replacement.octets()) {
            // At most `v4.len()` addresses are skipped, so this ends long before overflow.
            let mut candidate = 0u32;
            while self.v4.contains(&Ipv4Addr::from(candidate).octets()) {
                candidate += 1;
            }
            self.replacement = Ipv4Addr::from(candidate);
        }
    }

    /// Hides a host name (a trailing `.` aside), in any ASCII case. Only names of letters,
    /// digits, `-`, `_` and `.` with at least one letter are taken (configuration refuses
    /// others): without a letter a name could be part of an address, the replacement's
    /// included, and the masking fallback relies on `*` being in no name.
    pub fn hide_name(&mut self, name: &str) {
        let name = name.trim_end_matches('.').to_ascii_lowercase().into_bytes();
        if is_host_name(&name) && !self.names.contains(&name) {
            self.names.push(name);
        }
    }

    /// [`hide_name`](Self::hide_name) for each of `names`.
    pub fn with_names<S: AsRef<str>>(mut self, names: &[S]) -> Self {
        for name in names {
            self.hide_name(name.as_ref());
        }
        self
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
                Form::Dotted | Form::Ipv6 | Form::Name => format!("{a}.{b}.{c}.{d}"),
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
        for name in &self.names {
            find_name(line, name, &mut found);
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

/// Letters, digits, `-`, `_` and `.`, at least one letter.
fn is_host_name(name: &[u8]) -> bool {
    name.iter().any(u8::is_ascii_alphabetic) && name.iter().all(|&b| is_name_byte(b) || b == b'.')
}

/// A byte that continues a label, so that a name next to it is part of another name.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Every whole-name occurrence of `name` (lower case) in `line`, in any ASCII case.
fn find_name(line: &[u8], name: &[u8], found: &mut Vec<Found>) {
    let in_name = |b: Option<&u8>| b.is_some_and(|&b| is_name_byte(b));
    if name.is_empty() || line.len() < name.len() {
        return;
    }
    for start in 0..=line.len() - name.len() {
        let end = start + name.len();
        if line[start..end].eq_ignore_ascii_case(name)
            && !in_name(start.checked_sub(1).and_then(|i| line.get(i)))
            && !in_name(line.get(end))
        {
            found.push(Found {
                start,
                end,
                form: Form::Name,
            });
        }
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
mod tests;

//! Value types of the configuration that parse themselves: port ranges and host names.
use serde::{Deserialize, Deserializer};

/// An inclusive port range, "FIRST-LAST", never below 1024.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}`: expected FIRST-LAST, e.g. \"40000-40099\""))?;
        let first: u16 = a.trim().parse().map_err(|e| format!("`{a}`: {e}"))?;
        let last: u16 = b.trim().parse().map_err(|e| format!("`{b}`: {e}"))?;
        if first < 1024 {
            return Err(format!("`{s}`: data ports below 1024 are never leased"));
        }
        if first > last {
            return Err(format!("`{s}`: first port is above last port"));
        }
        Ok(PortRange { first, last })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A host name to hide: letters, digits, `-`, `_` and `.`, at least one letter (so that
/// it can never be mistaken for an address), at most 253 bytes; a trailing `.` is dropped.
/// Checked by the configuration's validation, which names the line it is on.
#[derive(Clone, Debug)]
pub struct HostName {
    pub(super) name: String,
    /// Where it is in the file.
    pub(super) span: std::ops::Range<usize>,
}

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Why this is no host name, if it is not.
    pub(super) fn problem(&self) -> Option<String> {
        let name = &self.name;
        if name.is_empty() {
            Some("empty".into())
        } else if name.len() > 253 {
            Some("longer than 253 bytes".into())
        } else if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            Some(format!(
                "`{}` is not allowed (letters, digits, `-`, `_` and `.` are)",
                c.escape_default()
            ))
        } else if name.starts_with('.') || name.contains("..") {
            Some("an empty label".into())
        } else if !name.chars().any(|c| c.is_ascii_alphabetic()) {
            Some("no letter (addresses go in hide_addresses)".into())
        } else {
            None
        }
    }
}

/// The name alone: where it is written is no part of the configuration.
impl PartialEq for HostName {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for HostName {}

impl AsRef<str> for HostName {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = toml::Spanned::<String>::deserialize(d)?;
        let span = spanned.span();
        let mut name = spanned.into_inner();
        if name.ends_with('.') {
            name.pop();
        }
        Ok(HostName { name, span })
    }
}

/// An address block, "ADDRESS/PREFIX" (a bare address is the block of that one address).
/// Host bits below the prefix must be zero, so that a rule means what it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// True when `ip` lies in the block (addresses of the other family never do).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_bits(u32::from(ip).into(), 32, self.prefix) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_bits(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `value` (of `width` bits) with every bit below the first `prefix` cleared.
fn mask_bits(value: u128, width: u32, prefix: u8) -> u128 {
    let host_bits = width - u32::from(prefix);
    if host_bits >= 128 {
        0
    } else {
        value >> host_bits << host_bits
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: expected ADDRESS/PREFIX, e.g. \"192.0.2.0/24\""))?;
        let width: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={width}"))?,
        };
        let bits = match addr {
            std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
            std::net::IpAddr::V6(a) => u128::from(a),
        };
        if mask_bits(bits, u32::from(width), prefix) != bits {
            return Err(format!(
                "`{s}`: host bits are set below the /{prefix} prefix (the block starts lower)"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A list of blocks under `key`, whose error names the key (the block alone cannot).
fn blocks<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| serde::de::Error::custom(format!("{key}: {e}")))
        })
        .collect()
}

/// `allow = [...]`.
pub(super) fn allow_blocks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    blocks(d, "allow")
}

/// `deny = [...]`.
pub(super) fn deny_blocks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    blocks(d, "deny")
}

/// A service's ACL as userspace applies it to sessions already open (the kernel programs
/// apply the same rules to packets): the most specific block containing the address
/// decides, `deny` winning a tie; with an `allow` list, an address in no block is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl Acl {
    /// True when `ip` may not reach the service.
    pub fn refuses(&self, ip: std::net::IpAddr) -> bool {
        let most_specific = |blocks: &[Cidr]| {
            blocks
                .iter()
                .filter(|b| b.contains(ip))
                .map(|b| b.prefix)
                .max()
        };
        match (most_specific(&self.deny), most_specific(&self.allow)) {
            (Some(deny), Some(allow)) => deny >= allow,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => !self.allow.is_empty(),
        }
    }
}

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

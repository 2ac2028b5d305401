//! The configuration file (TOML): parsing with unknown keys refused, defaults as
//! functions, then [`Config::validate`] for what one field alone cannot tell. Every error
//! names the key and the line.
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Deserializer};

/// Where `ftp-guard run` and `check` look when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/ftp-guard/ftp-guard.toml";

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Control sessions open at once over all services; one more gets "421" and is closed.
    #[serde(default = "defaults::max_sessions")]
    pub max_sessions: usize,
    /// Capacity of the kernel's lease table (passive leases waiting or in use, all
    /// services); the flow table holds twice as many entries. A full table gives the
    /// client a 425 at PASV time.
    #[serde(default = "defaults::max_leases")]
    pub max_leases: u32,
    /// Where the admin HTTP endpoint listens: /metrics (Prometheus), /healthz, /readyz,
    /// /status (what `ftp-guard status` shows).
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: std::net::SocketAddr,
    /// A file holding a bearer token that /status and /metrics then require
    /// (`Authorization: Bearer <token>`); read at start and on reload. Must not be readable
    /// by others. /healthz and /readyz stay open for probes. Unset: no token.
    pub admin_token_file: Option<toml::Spanned<std::path::PathBuf>>,
    /// A bpffs directory where the kernel path's maps and program links are pinned, so
    /// that they outlive the process: a restarted ftp-guard adopts them and data
    /// connections in flight go on. Unset: everything is removed when ftp-guard exits.
    /// `ftp-guard unpin` removes what is pinned.
    pub pin_path: Option<std::path::PathBuf>,
    /// SIGTERM: seconds to let sessions and data transfers finish before exiting.
    #[serde(default = "defaults::shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    #[serde(rename = "service", default)]
    pub services: Vec<toml::Spanned<Service>>,
}

/// One protected FTP origin behind one public listen address.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// A name for logs and metrics.
    pub name: String,
    /// Where clients connect (IPv4 address and port).
    pub listen: SocketAddrV4,
    /// The protected server's control address.
    pub origin: SocketAddrV4,
    /// Address advertised to clients in 227 replies; defaults to the listen address.
    pub public_ip: Option<Ipv4Addr>,
    /// Public passive data-port range on the gateway, "FIRST-LAST".
    pub data_ports: PortRange,
    /// Interface where client traffic arrives (attach point of the kernel data path).
    pub client_interface: Option<String>,
    /// Interface towards the origin (may equal client_interface).
    pub origin_interface: Option<String>,
    /// How data connections are carried.
    #[serde(default)]
    pub dataplane: DataplaneKind,
    /// Kernel data path: the gateway's origin-facing address that data connections come
    /// from (default: the address the kernel picks to reach the origin).
    pub nat_ip: Option<Ipv4Addr>,
    /// Kernel data path: which hook carries packets (auto: TC on software devices, XDP in
    /// driver mode on NICs).
    #[serde(default)]
    pub kernel_hook: KernelHook,
    /// Kernel data path: the largest MSS data connections' SYNs may announce: `"auto"`
    /// (the smallest MTU of the attach points minus 40), `"off"`, or a number.
    #[serde(default)]
    pub data_mss: DataMss,
    /// Kernel data path: seconds a data connection may stay silent before it is removed.
    #[serde(default = "defaults::data_idle_timeout_secs")]
    pub data_idle_timeout_secs: u64,
    /// Accept active mode (PORT/EPRT naming the client's own address). Off: a clear 502.
    #[serde(default = "defaults::active_mode")]
    pub active_mode: bool,
    /// Active mode: data connections reach clients from port 20 of the public address (what
    /// some client firewalls expect), instead of from a port of the data range.
    #[serde(default)]
    pub active_from_port_20: bool,
    /// Kernel data path, active mode: the origin's data connection must come from its port
    /// 20 (RFC 959's default data port); others are dropped.
    #[serde(default)]
    pub active_origin_port_20_only: bool,
    /// More addresses of the origin to hide from clients (e.g. its address behind a NAT),
    /// besides `origin`'s own.
    #[serde(default)]
    pub hide_addresses: Vec<IpAddr>,
    /// Host names of the origin to hide from clients (e.g. in its banner), in any case;
    /// replaced with the public address like hidden addresses.
    #[serde(default)]
    pub hide_names: Vec<HostName>,
    /// Longest command line accepted from a client, without CRLF.
    #[serde(default = "defaults::max_command_line")]
    pub max_command_line: usize,
    /// Seconds a control connection may stay silent (transfers keep it silent: keep it long).
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Seconds a passive lease waits for the client's data connection.
    #[serde(default = "defaults::lease_ttl_secs")]
    pub lease_ttl_secs: u64,
    /// Seconds to wait for the origin to accept a data connection, or to accept a control
    /// connection and send its greeting.
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Seconds of silence before TCP keepalive probes start, on both legs.
    #[serde(default = "defaults::keepalive_secs")]
    pub keepalive_secs: u64,
    /// Seconds a client has from connecting to being logged in (the origin's 230).
    #[serde(default = "defaults::login_timeout_secs")]
    pub login_timeout_secs: u64,
    /// Control sessions one client address may have open at once; the next gets 421.
    #[serde(default = "defaults::max_sessions_per_client")]
    pub max_sessions_per_client: usize,
    /// Data leases the sessions of one client address may hold at once (each session holds
    /// at most one: its latest); the next PASV/EPSV/PORT/EPRT gets 425.
    #[serde(default = "defaults::max_leases_per_client")]
    pub max_leases_per_client: usize,
    /// Error replies in a row (refusals made here, the origin's 500-504) after which a
    /// session is closed with 421.
    #[serde(default = "defaults::max_consecutive_errors")]
    pub max_consecutive_errors: usize,
}

/// [`Service::data_mss`]: MSS clamping on data connections' SYNs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum DataMss {
    /// At most this many bytes.
    Fixed(u16),
    /// `"auto"` or `"off"` (checked by `validate`).
    Word(String),
}

impl Default for DataMss {
    fn default() -> Self {
        DataMss::Word("auto".into())
    }
}

/// How a service carries data connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    /// NAT and forward in the kernel (XDP/TC): no data byte through userspace.
    #[default]
    Kernel,
    /// Relay in userspace: accept the client's data connection, connect to the origin, copy.
    Userspace,
}

/// Where the kernel data path hooks into the interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelHook {
    /// TC (tcx) on software devices (veth, bridge, bond, VLAN…), where native XDP copies
    /// packets or cannot redirect; XDP in driver mode on NICs, TC if that fails.
    #[default]
    Auto,
    /// XDP in driver mode only.
    Xdp,
    /// XDP in generic (skb) mode.
    XdpGeneric,
    /// TC ingress (tcx): works on every device, bridges and bonds included.
    Tc,
}

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
/// Checked by [`Config::validate`], which names the line it is on.
#[derive(Clone, Debug)]
pub struct HostName {
    name: String,
    /// Where it is in the file.
    span: std::ops::Range<usize>,
}

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Why this is no host name, if it is not.
    fn problem(&self) -> Option<String> {
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

mod defaults {
    pub fn max_sessions() -> usize {
        1024
    }
    pub fn admin_listen() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 9640))
    }
    pub fn shutdown_grace_secs() -> u64 {
        30
    }
    pub fn max_leases() -> u32 {
        ftp_guard_common::DEFAULT_MAX_LEASES
    }
    pub fn data_idle_timeout_secs() -> u64 {
        900
    }
    pub fn active_mode() -> bool {
        true
    }
    pub fn max_command_line() -> usize {
        500
    }
    pub fn idle_timeout_secs() -> u64 {
        24 * 3600
    }
    pub fn lease_ttl_secs() -> u64 {
        30
    }
    pub fn connect_timeout_secs() -> u64 {
        10
    }
    pub fn keepalive_secs() -> u64 {
        60
    }
    pub fn login_timeout_secs() -> u64 {
        60
    }
    /// A client host running parallel transfers (50 concurrent curls in the interop
    /// matrix, `lftp mirror -P`, `rclone --transfers`) stays below it; a NAT'd office may not.
    pub fn max_sessions_per_client() -> usize {
        64
    }
    /// One lease per session: as many as the sessions a client may have.
    pub fn max_leases_per_client() -> usize {
        64
    }
    pub fn max_consecutive_errors() -> usize {
        20
    }
}

impl Service {
    /// The address shown to clients.
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip.unwrap_or(*self.listen.ip())
    }

    /// Every address of the origin that must never reach a client.
    pub fn hidden_addresses(&self) -> Vec<IpAddr> {
        let mut v = vec![IpAddr::V4(*self.origin.ip())];
        v.extend(self.hide_addresses.iter().copied());
        v
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs)
    }
    pub fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.login_timeout_secs)
    }
    pub fn data_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.data_idle_timeout_secs)
    }
    /// The MSS clamp in force for data connections (0: none). `auto` reads the attach
    /// points' MTUs now (in the caller thread's network namespace).
    pub fn data_mss_max(&self) -> u16 {
        match &self.data_mss {
            DataMss::Fixed(n) => *n,
            DataMss::Word(w) if w == "off" => 0,
            DataMss::Word(_) => self
                .interfaces()
                .into_iter()
                .filter_map(crate::bpf::interface_mtu)
                .min()
                .map_or(0, |mtu| {
                    mtu.saturating_sub(40).min(u32::from(u16::MAX)) as u16
                }),
        }
    }

    /// The interfaces the kernel data path attaches to (client side first, no duplicate).
    pub fn interfaces(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.client_interface.iter().map(String::as_str).collect();
        if let Some(o) = &self.origin_interface
            && !v.contains(&o.as_str())
        {
            v.push(o);
        }
        v
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text).map_err(|message| ConfigError {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates TOML text; the error names the line and the key.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_owned(),
            }
        })?;
        config.validate(text)?;
        Ok(config)
    }

    /// Checks what no single field can: defaults that need a value, clashes between
    /// services, sane limits.
    fn validate(&self, text: &str) -> Result<(), String> {
        if self.services.is_empty() {
            return Err("no [[service]] defined: there is nothing to protect".into());
        }
        if let Some(file) = &self.admin_token_file
            && !file.get_ref().is_absolute()
        {
            return Err(format!(
                "line {}: admin_token_file: `{}` must be an absolute path",
                line_of(text, file.span().start),
                file.get_ref().display()
            ));
        }
        if self.max_sessions == 0 {
            return Err("max_sessions: must be at least 1".into());
        }
        if !(16..=4_000_000).contains(&self.max_leases) {
            return Err("max_leases: must be within 16..=4000000".into());
        }
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        for (i, spanned) in self.services.iter().enumerate() {
            let s = spanned.get_ref();
            let at = |key: &str, msg: String| {
                format!(
                    "line {}: service `{}`: {key}: {msg}",
                    line_of(text, spanned.span().start),
                    s.name
                )
            };
            if s.name.trim().is_empty() {
                return Err(at("name", "must not be empty".into()));
            }
            match &s.data_mss {
                DataMss::Fixed(n) if !(536..=9000).contains(n) => {
                    return Err(at(
                        "data_mss",
                        format!("{n} is outside 536..=9000 (or use \"auto\" or \"off\")"),
                    ));
                }
                DataMss::Word(w) if w != "auto" && w != "off" => {
                    return Err(at(
                        "data_mss",
                        format!("`{w}`: use \"auto\", \"off\" or a number"),
                    ));
                }
                _ => {}
            }
            if !names.insert(s.name.as_str()) {
                return Err(at("name", "another service has this name".into()));
            }
            if !listens.insert(s.listen) {
                return Err(at(
                    "listen",
                    format!("{} is used by another service", s.listen),
                ));
            }
            if s.public_ip.is_none() && s.listen.ip().is_unspecified() {
                return Err(at(
                    "public_ip",
                    "required when listen is 0.0.0.0 (clients need a real address in 227 replies)"
                        .into(),
                ));
            }
            if s.origin.ip().is_unspecified() || s.origin.port() == 0 {
                return Err(at(
                    "origin",
                    format!("{} is not a connectable address", s.origin),
                ));
            }
            if s.public_ip().is_unspecified() {
                return Err(at(
                    "public_ip",
                    "must be a real address, not 0.0.0.0".into(),
                ));
            }
            if s.public_ip() == *s.listen.ip() && s.data_ports.contains(s.listen.port()) {
                return Err(at(
                    "data_ports",
                    format!(
                        "{} contains the listen port {}",
                        s.data_ports,
                        s.listen.port()
                    ),
                ));
            }
            if !(16..=8192).contains(&s.max_command_line) {
                return Err(at("max_command_line", "must be within 16..=8192".into()));
            }
            if s.active_origin_port_20_only
                && (s.dataplane != DataplaneKind::Kernel || !s.active_mode)
            {
                return Err(at(
                    "active_origin_port_20_only",
                    "needs dataplane = \"kernel\" and active_mode = true".into(),
                ));
            }
            if s.dataplane == DataplaneKind::Kernel && s.client_interface.is_none() {
                return Err(at(
                    "client_interface",
                    "required with dataplane = \"kernel\" (where the XDP/TC programs attach)"
                        .into(),
                ));
            }
            for name in &s.hide_names {
                if let Some(problem) = name.problem() {
                    return Err(format!(
                        "line {}: service `{}`: hide_names: `{}`: {problem}",
                        line_of(text, name.span.start),
                        s.name,
                        name.name.escape_debug(),
                    ));
                }
            }
            for (key, value) in [
                ("data_idle_timeout_secs", s.data_idle_timeout_secs),
                ("idle_timeout_secs", s.idle_timeout_secs),
                ("lease_ttl_secs", s.lease_ttl_secs),
                ("connect_timeout_secs", s.connect_timeout_secs),
                ("keepalive_secs", s.keepalive_secs),
                ("login_timeout_secs", s.login_timeout_secs),
            ] {
                if value == 0 {
                    return Err(at(key, "must be at least 1".into()));
                }
            }
            for (key, value) in [
                ("max_sessions_per_client", s.max_sessions_per_client),
                ("max_leases_per_client", s.max_leases_per_client),
                ("max_consecutive_errors", s.max_consecutive_errors),
            ] {
                if !(1..=1_000_000).contains(&value) {
                    return Err(at(key, "must be within 1..=1000000".into()));
                }
            }
            for other in &self.services[..i] {
                let o = other.get_ref();
                if o.public_ip() == s.public_ip() && o.data_ports.overlaps(&s.data_ports) {
                    return Err(at(
                        "data_ports",
                        format!(
                            "{} overlaps service `{}` ({}) on the same public address",
                            s.data_ports, o.name, o.data_ports
                        ),
                    ));
                }
                // The origin side: the kernel path keys leases and flows there by the NAT
                // address's ports, so two kernel services reaching one origin from one
                // address must not share them (without nat_ip both use the address the
                // route to the origin picks; `run` checks the addresses it resolves too).
                let same_nat = o.nat_ip == s.nat_ip
                    && (s.nat_ip.is_some() || o.origin.ip() == s.origin.ip())
                    && s.dataplane == DataplaneKind::Kernel
                    && o.dataplane == DataplaneKind::Kernel;
                if same_nat && o.data_ports.overlaps(&s.data_ports) {
                    return Err(at(
                        "data_ports",
                        format!(
                            "{} overlaps service `{}` ({}) on the same NAT address ({})",
                            s.data_ports,
                            o.name,
                            o.data_ports,
                            match s.nat_ip {
                                Some(ip) => ip.to_string(),
                                None => format!("the one that reaches {}", s.origin.ip()),
                            }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The services, without their spans.
    /// [`Config::admin_token_file`] without its place in the file.
    pub fn admin_token_path(&self) -> Option<&Path> {
        self.admin_token_file
            .as_ref()
            .map(|f| f.get_ref().as_path())
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().map(|s| s.get_ref())
    }
}

/// 1-based line number of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[service]]
name = "ftp"
listen = "203.0.113.1:21"
origin = "198.51.100.2:21"
data_ports = "40000-40099"
client_interface = "eth0"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        let s = c.services().next().unwrap();
        assert_eq!(s.public_ip(), Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(s.max_command_line, 500);
        assert_eq!(s.idle_timeout_secs, 86400);
        assert_eq!(s.dataplane, DataplaneKind::Kernel);
        assert_eq!(s.kernel_hook, KernelHook::Auto);
        assert_eq!(s.interfaces(), ["eth0"]);
        assert_eq!(s.data_ports.len(), 100);
        assert_eq!(c.max_sessions, 1024);
        assert_eq!(s.login_timeout_secs, 60);
        assert_eq!(s.max_sessions_per_client, 64);
        assert_eq!(s.max_leases_per_client, 64);
        assert_eq!(s.max_consecutive_errors, 20);
    }

    /// (change to MINIMAL, expected words in the error).
    #[test]
    fn invalid_configs_name_key_and_line() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "data_ports = \"40000-40099\"",
                "data_ports = \"80-90\"",
                &["line 6", "below 1024"],
            ),
            (
                "data_ports = \"40000-40099\"",
                "data_ports = \"5-4\"",
                &["line 6"],
            ),
            (
                "name = \"ftp\"",
                "name = \"ftp\"\ncolour = \"red\"",
                &["line 4", "colour"],
            ),
            (
                "listen = \"203.0.113.1:21\"",
                "listen = \"0.0.0.0:21\"",
                &["public_ip", "line 2"],
            ),
            (
                "origin = \"198.51.100.2:21\"",
                "origin = \"nowhere\"",
                &["line 5"],
            ),
            (
                "origin = \"198.51.100.2:21\"",
                "origin = \"0.0.0.0:21\"",
                &["origin"],
            ),
            (
                "data_ports = \"40000-40099\"",
                "data_ports = \"40000-40099\"\ndataplane = \"magic\"",
                &["line 7", "magic"],
            ),
            (
                "data_ports = \"40000-40099\"",
                "data_ports = \"40000-40099\"\nmax_command_line = 5",
                &["max_command_line"],
            ),
            (
                "data_ports = \"40000-40099\"",
                "data_ports = \"40000-40099\"\nactive_mode = false\nactive_origin_port_20_only = true",
                &[
                    "line 2: service `ftp`: active_origin_port_20_only: needs dataplane = \"kernel\" and active_mode = true",
                ],
            ),
            (
                "data_ports = \"40000-40099\"",
                "data_ports = \"40000-40099\"\nlease_ttl_secs = 0",
                &["lease_ttl_secs"],
            ),
            (
                "listen = \"203.0.113.1:21\"",
                "listen = \"203.0.113.1:40050\"",
                &["listen port"],
            ),
            (
                "data_ports = \"40000-40099\"",
                "data_ports = \"40000-40099\"\nlogin_timeout_secs = 0",
                &["line 2", "login_timeout_secs", "at least 1"],
            ),
            (
                "data_ports = \"40000-40099\"",
                "data_ports = \"40000-40099\"\nmax_sessions_per_client = 0",
                &["line 2", "max_sessions_per_client", "1..=1000000"],
            ),
            (
                "data_ports = \"40000-40099\"",
                "data_ports = \"40000-40099\"\nmax_leases_per_client = 0",
                &["line 2", "max_leases_per_client", "1..=1000000"],
            ),
            (
                "data_ports = \"40000-40099\"",
                "data_ports = \"40000-40099\"\nmax_consecutive_errors = 0",
                &["line 2", "max_consecutive_errors", "1..=1000000"],
            ),
            (
                "client_interface = \"eth0\"",
                "client_interface = \"eth0\"\nhide_names = [\"ftp internal\"]",
                &["line 8", "hide_names", "`ftp internal`", "` `"],
            ),
            (
                "client_interface = \"eth0\"",
                "client_interface = \"eth0\"\nhide_names = [\n  \"ftp.internal.example\",\n  \"10.0.0.5\",\n]",
                &["line 10", "hide_names", "`10.0.0.5`", "no letter"],
            ),
            (
                "client_interface = \"eth0\"",
                "client_interface = \"eth0\"\nhide_names = [\"ftp..example\", \"\"]",
                &["line 8", "hide_names", "empty label"],
            ),
            (
                "client_interface = \"eth0\"",
                "client_interface = \"eth0\"\nhide_names = [\".\"]",
                &["line 8", "hide_names", "empty"],
            ),
            (
                "client_interface = \"eth0\"",
                "client_interface = \"eth0\"\nhide_names = \"ftp.internal.example\"",
                &["line 8", "sequence"],
            ),
        ];
        for (from, to, words) in cases {
            let text = MINIMAL.replace(from, to);
            let err = Config::parse(&text).expect_err(to);
            for w in *words {
                assert!(err.contains(w), "{to}: error `{err}` lacks `{w}`");
            }
        }
    }

    #[test]
    fn data_mss_is_auto_off_or_a_sane_number() {
        let with = |v: &str| Config::parse(&format!("{MINIMAL}data_mss = {v}\n"));
        let s = Config::parse(MINIMAL).unwrap();
        assert_eq!(s.services().next().unwrap().data_mss, DataMss::default());
        let off = with("\"off\"").unwrap();
        assert_eq!(off.services().next().unwrap().data_mss_max(), 0);
        let fixed = with("1400").unwrap();
        assert_eq!(fixed.services().next().unwrap().data_mss_max(), 1400);
        assert_eq!(
            with("100").unwrap_err(),
            "line 2: service `ftp`: data_mss: 100 is outside 536..=9000 (or use \"auto\" or \"off\")"
        );
        assert_eq!(
            with("\"big\"").unwrap_err(),
            "line 2: service `ftp`: data_mss: `big`: use \"auto\", \"off\" or a number"
        );
    }

    #[test]
    fn services_must_not_clash() {
        let second = |name: &str, listen: &str, ports: &str| {
            format!(
                "{MINIMAL}\n[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\norigin = \"198.51.100.3:21\"\ndata_ports = \"{ports}\"\ndataplane = \"userspace\"\n"
            )
        };
        let ok = second("two", "203.0.113.1:2121", "40100-40199");
        assert_eq!(Config::parse(&ok).unwrap().services.len(), 2);
        for (text, word) in [
            (second("ftp", "203.0.113.1:2121", "40100-40199"), "name"),
            (second("two", "203.0.113.1:21", "40100-40199"), "listen"),
            (second("two", "203.0.113.1:2121", "40099-40199"), "overlaps"),
        ] {
            let err = Config::parse(&text).unwrap_err();
            assert!(err.contains(word) && err.contains("line 9"), "{err}");
        }
    }

    #[test]
    fn services_must_not_share_ports_on_the_nat_side() {
        let two = |public: &str, origin: &str, nat: &str, nat2: &str, ports: &str| {
            format!(
                "[[service]]\nname = \"one\"\nlisten = \"203.0.113.1:21\"\n\
                 origin = \"198.51.100.2:21\"\ndata_ports = \"40000-40099\"\n\
                 client_interface = \"eth0\"\n{nat}\
                 [[service]]\nname = \"two\"\nlisten = \"203.0.113.1:2121\"\n\
                 public_ip = \"{public}\"\norigin = \"{origin}:21\"\ndata_ports = \"{ports}\"\n\
                 client_interface = \"eth0\"\n{nat2}"
            )
        };
        let nat = "nat_ip = \"198.51.100.1\"\n";
        let other_nat = "nat_ip = \"198.51.100.9\"\n";
        // Separate public addresses, so only the NAT side can clash.
        let public = "203.0.113.9";
        assert_eq!(
            Config::parse(&two(public, "198.51.100.2", "", "", "40050-40149")).unwrap_err(),
            "line 7: service `two`: data_ports: 40050-40149 overlaps service `one` \
             (40000-40099) on the same NAT address (the one that reaches 198.51.100.2)"
        );
        assert_eq!(
            Config::parse(&two(public, "198.51.100.3", nat, nat, "40099-40099")).unwrap_err(),
            "line 8: service `two`: data_ports: 40099-40099 overlaps service `one` \
             (40000-40099) on the same NAT address (198.51.100.1)"
        );
        for ok in [
            two(public, "198.51.100.2", "", "", "40100-40199"),
            two(public, "198.51.100.3", "", "", "40050-40149"),
            two(public, "198.51.100.2", nat, other_nat, "40050-40149"),
            // One given, one resolved: only `run` can tell.
            two(public, "198.51.100.2", nat, "", "40050-40149"),
        ] {
            Config::parse(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../config/ftp-guard.example.toml");
        let c = Config::parse(text).unwrap();
        let s = c.services().next().unwrap();
        assert_eq!(
            s.hide_addresses,
            vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(s.client_interface.as_deref(), Some("eth0"));
        let names: Vec<&str> = s.hide_names.iter().map(HostName::as_str).collect();
        assert_eq!(names, ["ftp.internal.example", "ftp01"]);
    }

    #[test]
    fn hide_names_are_host_names() {
        let c = Config::parse(&format!(
            "{MINIMAL}hide_names = [\"FTP.Internal.Example.\", \"ftp-01_a\"]\n"
        ))
        .unwrap();
        let s = c.services().next().unwrap();
        let names: Vec<&str> = s.hide_names.iter().map(HostName::as_str).collect();
        assert_eq!(names, ["FTP.Internal.Example", "ftp-01_a"]);
        assert!(
            Config::parse(MINIMAL)
                .unwrap()
                .services()
                .all(|s| s.hide_names.is_empty())
        );
        let long = format!("{}.example", "a".repeat(250));
        let err = Config::parse(&format!("{MINIMAL}hide_names = [\"{long}\"]\n")).unwrap_err();
        assert!(err.contains("253") && err.contains("line 8"), "{err}");
    }

    #[test]
    fn no_service_is_an_error() {
        assert!(
            Config::parse("max_sessions = 5\n")
                .unwrap_err()
                .contains("no [[service]]")
        );
    }

    #[test]
    fn admin_token_file_is_an_absolute_path() {
        let with = |v: &str| Config::parse(&format!("admin_token_file = {v}\n{MINIMAL}"));
        assert_eq!(
            with("\"token\"").unwrap_err(),
            "line 1: admin_token_file: `token` must be an absolute path"
        );
        let c = with("\"/etc/ftp-guard/admin.token\"").unwrap();
        assert_eq!(
            c.admin_token_path(),
            Some(Path::new("/etc/ftp-guard/admin.token"))
        );
        assert_eq!(Config::parse(MINIMAL).unwrap().admin_token_path(), None);
    }
}

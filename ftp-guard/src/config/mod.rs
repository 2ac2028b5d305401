//! The configuration file (TOML): the types, with unknown keys refused and defaults as
//! functions; loading and parsing. [`validate`] checks what one field alone cannot tell,
//! [`values`] holds the value types that parse themselves. Every error names the key and
//! the line.
//!
//! Addresses are of either family here; what cannot carry IPv6 yet asks for
//! [`Service::ipv4`], and validation refuses IPv6 in those keys up front.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use serde::Deserialize;

use crate::audit::{AuditFormat, AuditSettings, AuditTarget};

#[cfg(test)]
mod tests;
mod validate;
mod values;

pub use values::{Acl, Cidr, HostName, PortRange};

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
    /// The transfer audit log, one line per data transfer: `"stderr"`, or an absolute
    /// file path (appended to; reopened on SIGHUP, for logrotate). Unset: none.
    pub audit_log: Option<toml::Spanned<String>>,
    /// The audit log's lines: `"json"` (one object per line) or `"xferlog"` (wu-ftpd's).
    #[serde(default)]
    pub audit_format: AuditFormat,
    #[serde(rename = "service", default)]
    pub services: Vec<toml::Spanned<Service>>,
}

/// One protected FTP origin behind one public listen address.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// A name for logs and metrics.
    pub name: String,
    /// Where clients connect (address and port; IPv4 only yet).
    pub listen: SocketAddr,
    /// The protected server's control address (IPv4 only yet).
    pub origin: SocketAddr,
    /// Address advertised to clients in 227 replies; defaults to the listen address.
    pub public_ip: Option<IpAddr>,
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
    pub nat_ip: Option<IpAddr>,
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
    /// Refused logins (the origin's 530/430 to PASS) from one client address within
    /// `ban_window_secs` that ban it for `ban_secs`, from every service; 0: off.
    #[serde(default)]
    pub ban_after_failures: u32,
    /// Seconds from an address's first counted failure within which the rest must come.
    #[serde(default = "defaults::ban_window_secs")]
    pub ban_window_secs: u64,
    /// Seconds a ban lasts.
    #[serde(default = "defaults::ban_secs")]
    pub ban_secs: u64,
    // Protection at the edge (enforced by the XDP/TC programs on the control port and the
    // data range; see the README's "Protection").
    /// Only sources in these blocks may reach the service (empty: everyone not denied).
    #[serde(default, deserialize_with = "values::allow_blocks")]
    pub allow: Vec<Cidr>,
    /// Sources in these blocks are dropped; the most specific matching block of `allow`
    /// and `deny` decides, and `deny` wins over the same block in `allow`.
    #[serde(default, deserialize_with = "values::deny_blocks")]
    pub deny: Vec<Cidr>,
    /// SYNs per second one source address may send to the control port on average.
    #[serde(default = "defaults::syn_rate_per_client")]
    pub syn_rate_per_client: u32,
    /// SYNs one source address may send to the control port at once.
    #[serde(default = "defaults::syn_burst_per_client")]
    pub syn_burst_per_client: u32,
    /// SYNs per second all source addresses of one /24 may send to the control port
    /// together on average (a budget against floods from many addresses of one network).
    #[serde(default = "defaults::syn_rate_per_prefix")]
    pub syn_rate_per_prefix: u32,
    /// SYNs all source addresses of one /24 may send to the control port at once.
    #[serde(default = "defaults::syn_burst_per_prefix")]
    pub syn_burst_per_prefix: u32,
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

/// [`Service`]'s addresses where only IPv4 works yet (see [`Service::ipv4`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceIpv4 {
    pub listen: SocketAddrV4,
    pub origin: SocketAddrV4,
    pub public_ip: Ipv4Addr,
    pub nat_ip: Option<Ipv4Addr>,
}

/// An IPv6 address where the service cannot carry one yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("service `{service}`: {key}: {address}: IPv6 is not supported yet")]
pub struct Ipv6Unsupported {
    pub service: String,
    /// The configuration key that holds it.
    pub key: &'static str,
    pub address: IpAddr,
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
    pub fn ban_window_secs() -> u64 {
        600
    }
    pub fn ban_secs() -> u64 {
        900
    }
    /// Far above what one client does: a script opening sessions back to back reaches
    /// ~300 a second against a fast origin on this machine (the bench's `sessions`).
    pub fn syn_rate_per_client() -> u32 {
        500
    }
    pub fn syn_burst_per_client() -> u32 {
        1000
    }
    /// Ten clients of one network each at the per-client rate.
    pub fn syn_rate_per_prefix() -> u32 {
        5000
    }
    pub fn syn_burst_per_prefix() -> u32 {
        10_000
    }
}

impl Service {
    /// The address shown to clients.
    pub fn public_ip(&self) -> IpAddr {
        self.public_ip.unwrap_or(self.listen.ip())
    }

    /// The addresses as IPv4, what the data paths and the FTP core carry today. A parsed
    /// configuration has no IPv6 in them; a [`Service`] built by hand may.
    pub fn ipv4(&self) -> Result<ServiceIpv4, Ipv6Unsupported> {
        let v4 = |key: &'static str, ip: IpAddr| match ip {
            IpAddr::V4(ip) => Ok(ip),
            IpAddr::V6(_) => Err(Ipv6Unsupported {
                service: self.name.clone(),
                key,
                address: ip,
            }),
        };
        Ok(ServiceIpv4 {
            listen: SocketAddrV4::new(v4("listen", self.listen.ip())?, self.listen.port()),
            origin: SocketAddrV4::new(v4("origin", self.origin.ip())?, self.origin.port()),
            public_ip: v4("public_ip", self.public_ip())?,
            nat_ip: self.nat_ip.map(|ip| v4("nat_ip", ip)).transpose()?,
        })
    }

    /// The service's ACL (`allow`, `deny`).
    pub fn acl(&self) -> Acl {
        Acl {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
        }
    }

    /// Every address of the origin that must never reach a client.
    pub fn hidden_addresses(&self) -> Vec<IpAddr> {
        let mut v = vec![self.origin.ip()];
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

    /// [`Config::admin_token_file`] without its place in the file.
    pub fn admin_token_path(&self) -> Option<&Path> {
        self.admin_token_file
            .as_ref()
            .map(|f| f.get_ref().as_path())
    }

    /// What the audit log does (validation made `audit_log` "stderr" or an absolute path).
    pub fn audit_settings(&self) -> AuditSettings {
        let target = match self.audit_log.as_ref()?.get_ref().as_str() {
            "stderr" => AuditTarget::Stderr,
            path => AuditTarget::File(path.into()),
        };
        Some((target, self.audit_format))
    }

    /// The services, without their spans.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().map(|s| s.get_ref())
    }
}

/// 1-based line number of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

//! What no single field of the configuration can tell: defaults that need a value, IPv6
//! where it cannot work yet, clashes between services, sane limits. Each error names the
//! line and the key.
use std::collections::HashSet;

use super::{Config, DataMss, DataplaneKind, Service, line_of};

/// A key of a service and what is wrong with it.
type Problem = (&'static str, String);

impl Config {
    pub(super) fn validate(&self, text: &str) -> Result<(), String> {
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
        if let Some(log) = &self.audit_log
            && log.get_ref() != "stderr"
            && !std::path::Path::new(log.get_ref()).is_absolute()
        {
            return Err(format!(
                "line {}: audit_log: `{}` must be \"stderr\" or an absolute path",
                line_of(text, log.span().start),
                log.get_ref()
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
            let at = |(key, msg): Problem| {
                format!(
                    "line {}: service `{}`: {key}: {msg}",
                    line_of(text, spanned.span().start),
                    s.name
                )
            };
            if !names.insert(s.name.as_str()) {
                return Err(at(("name", "another service has this name".into())));
            }
            if !listens.insert(s.listen) {
                return Err(at((
                    "listen",
                    format!("{} is used by another service", s.listen),
                )));
            }
            check_service(s).map_err(at)?;
            check_hide_names(s, text)?;
            for other in &self.services[..i] {
                check_clash(other.get_ref(), s).map_err(at)?;
            }
        }
        Ok(())
    }
}

/// One service on its own.
fn check_service(s: &Service) -> Result<(), Problem> {
    if s.name.trim().is_empty() {
        return Err(("name", "must not be empty".into()));
    }
    if let Err(e) = s.ipv4() {
        return Err((e.key, format!("{}: IPv6 is not supported yet", e.address)));
    }
    match &s.data_mss {
        DataMss::Fixed(n) if !(536..=9000).contains(n) => {
            return Err((
                "data_mss",
                format!("{n} is outside 536..=9000 (or use \"auto\" or \"off\")"),
            ));
        }
        DataMss::Word(w) if w != "auto" && w != "off" => {
            return Err((
                "data_mss",
                format!("`{w}`: use \"auto\", \"off\" or a number"),
            ));
        }
        _ => {}
    }
    if s.public_ip.is_none() && s.listen.ip().is_unspecified() {
        return Err((
            "public_ip",
            "required when listen is 0.0.0.0 (clients need a real address in 227 replies)".into(),
        ));
    }
    if s.origin.ip().is_unspecified() || s.origin.port() == 0 {
        return Err((
            "origin",
            format!("{} is not a connectable address", s.origin),
        ));
    }
    if s.public_ip().is_unspecified() {
        return Err(("public_ip", "must be a real address, not 0.0.0.0".into()));
    }
    if s.public_ip() == s.listen.ip() && s.data_ports.contains(s.listen.port()) {
        return Err((
            "data_ports",
            format!(
                "{} contains the listen port {}",
                s.data_ports,
                s.listen.port()
            ),
        ));
    }
    if !(16..=8192).contains(&s.max_command_line) {
        return Err(("max_command_line", "must be within 16..=8192".into()));
    }
    if s.active_origin_port_20_only && (s.dataplane != DataplaneKind::Kernel || !s.active_mode) {
        return Err((
            "active_origin_port_20_only",
            "needs dataplane = \"kernel\" and active_mode = true".into(),
        ));
    }
    if s.dataplane == DataplaneKind::Kernel && s.client_interface.is_none() {
        return Err((
            "client_interface",
            "required with dataplane = \"kernel\" (where the XDP/TC programs attach)".into(),
        ));
    }
    let timeouts = [
        ("data_idle_timeout_secs", s.data_idle_timeout_secs),
        ("idle_timeout_secs", s.idle_timeout_secs),
        ("lease_ttl_secs", s.lease_ttl_secs),
        ("connect_timeout_secs", s.connect_timeout_secs),
        ("keepalive_secs", s.keepalive_secs),
        ("login_timeout_secs", s.login_timeout_secs),
    ];
    if let Some((key, _)) = timeouts.into_iter().find(|(_, value)| *value == 0) {
        return Err((key, "must be at least 1".into()));
    }
    check_edge_policy(s)?;
    let limits = [
        ("max_sessions_per_client", s.max_sessions_per_client),
        ("max_leases_per_client", s.max_leases_per_client),
        ("max_consecutive_errors", s.max_consecutive_errors),
        ("syn_rate_per_client", s.syn_rate_per_client as usize),
        ("syn_burst_per_client", s.syn_burst_per_client as usize),
        ("syn_rate_per_prefix", s.syn_rate_per_prefix as usize),
        ("syn_burst_per_prefix", s.syn_burst_per_prefix as usize),
    ];
    if let Some((key, _)) = limits
        .into_iter()
        .find(|(_, value)| !(1..=1_000_000).contains(value))
    {
        return Err((key, "must be within 1..=1000000".into()));
    }
    check_bans(s)
}

/// The ban knobs: a window and a ban of at most a week, at most 1000 failures.
fn check_bans(s: &Service) -> Result<(), Problem> {
    const WEEK: u64 = 7 * 24 * 3600;
    if s.ban_after_failures > 1000 {
        return Err((
            "ban_after_failures",
            "must be within 0..=1000 (0: off)".into(),
        ));
    }
    for (key, value) in [
        ("ban_window_secs", s.ban_window_secs),
        ("ban_secs", s.ban_secs),
    ] {
        if !(1..=WEEK).contains(&value) {
            return Err((key, format!("must be within 1..={WEEK} (a week)")));
        }
    }
    Ok(())
}

/// ACLs (the kernel programs enforce them).
fn check_edge_policy(s: &Service) -> Result<(), Problem> {
    for (key, blocks) in [("allow", &s.allow), ("deny", &s.deny)] {
        if let Some(block) = blocks.iter().find(|b| b.addr.is_ipv6()) {
            return Err((key, format!("{block}: IPv6 is not supported yet")));
        }
    }
    if s.client_interface.is_none() && !(s.allow.is_empty() && s.deny.is_empty()) {
        let key = if s.allow.is_empty() { "deny" } else { "allow" };
        return Err((
            key,
            "needs client_interface (the XDP/TC programs attached there enforce the ACL)".into(),
        ));
    }
    let rules = s.allow.len() + s.deny.len() + 1;
    if rules > ftp_guard_common::MAX_ACL_RULES as usize {
        return Err((
            "allow",
            format!(
                "{} rules in allow and deny: at most {} fit",
                rules - 1,
                ftp_guard_common::MAX_ACL_RULES - 1
            ),
        ));
    }
    Ok(())
}

/// `hide_names`: the error names the line of the name, not of its service.
fn check_hide_names(s: &Service, text: &str) -> Result<(), String> {
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
    Ok(())
}

/// Service `s` against an earlier service `o`: their data ports must not meet on one address.
fn check_clash(o: &Service, s: &Service) -> Result<(), Problem> {
    if o.public_ip() == s.public_ip() && o.data_ports.overlaps(&s.data_ports) {
        return Err((
            "data_ports",
            format!(
                "{} overlaps service `{}` ({}) on the same public address",
                s.data_ports, o.name, o.data_ports
            ),
        ));
    }
    // The origin side: the kernel path keys leases and flows there by the NAT address's
    // ports, so two kernel services reaching one origin from one address must not share
    // them (without nat_ip both use the address the route to the origin picks; `run`
    // checks the addresses it resolves too).
    let same_nat = o.nat_ip == s.nat_ip
        && (s.nat_ip.is_some() || o.origin.ip() == s.origin.ip())
        && s.dataplane == DataplaneKind::Kernel
        && o.dataplane == DataplaneKind::Kernel;
    if same_nat && o.data_ports.overlaps(&s.data_ports) {
        return Err((
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
    Ok(())
}

//! The configuration's parsing and validation, by example.
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
    assert_eq!(s.public_ip(), IpAddr::from([203, 0, 113, 1]));
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
    assert_eq!(
        (s.ban_after_failures, s.ban_window_secs, s.ban_secs),
        (0, 600, 900)
    );
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
            "listen = \"203.0.113.1:21\"",
            "listen = \"203.0.113.1:40050\"",
            &["listen port"],
        ),
    ];
    // (keys added at the end, from line 8 on, expected words in the error).
    let added: &[(&str, &[&str])] = &[
        ("dataplane = \"magic\"", &["line 8", "magic"]),
        ("max_command_line = 5", &["max_command_line"]),
        (
            "active_mode = false\nactive_origin_port_20_only = true",
            &[
                "line 2: service `ftp`: active_origin_port_20_only: needs dataplane = \"kernel\" and active_mode = true",
            ],
        ),
        ("lease_ttl_secs = 0", &["lease_ttl_secs"]),
        (
            "login_timeout_secs = 0",
            &["line 2", "login_timeout_secs", "at least 1"],
        ),
        (
            "max_sessions_per_client = 0",
            &["line 2", "max_sessions_per_client", "1..=1000000"],
        ),
        (
            "max_leases_per_client = 0",
            &["line 2", "max_leases_per_client", "1..=1000000"],
        ),
        (
            "max_consecutive_errors = 0",
            &["line 2", "max_consecutive_errors", "1..=1000000"],
        ),
        (
            "ban_after_failures = 1001",
            &["line 2", "ban_after_failures", "0..=1000 (0: off)"],
        ),
        (
            "ban_window_secs = 0",
            &["line 2", "ban_window_secs", "1..=604800 (a week)"],
        ),
        (
            "ban_secs = 604801",
            &["line 2", "ban_secs", "1..=604800 (a week)"],
        ),
        (
            "hide_names = [\"ftp internal\"]",
            &["line 8", "hide_names", "`ftp internal`", "` `"],
        ),
        (
            "hide_names = [\n  \"ftp.internal.example\",\n  \"10.0.0.5\",\n]",
            &["line 10", "hide_names", "`10.0.0.5`", "no letter"],
        ),
        (
            "hide_names = [\"ftp..example\", \"\"]",
            &["line 8", "hide_names", "empty label"],
        ),
        ("hide_names = [\".\"]", &["line 8", "hide_names", "empty"]),
        (
            "hide_names = \"ftp.internal.example\"",
            &["line 8", "sequence"],
        ),
    ];
    let texts = cases
        .iter()
        .map(|(from, to, words)| (MINIMAL.replace(from, to), *words))
        .chain(
            added
                .iter()
                .map(|(keys, words)| (format!("{MINIMAL}{keys}\n"), *words)),
        );
    for (text, words) in texts {
        let err = Config::parse(&text).expect_err(&text);
        for w in words {
            assert!(err.contains(w), "{text}: error `{err}` lacks `{w}`");
        }
    }
}

/// IPv6 where the data paths cannot carry it yet: refused, naming the key.
#[test]
fn ipv6_addresses_are_refused_where_they_cannot_work_yet() {
    let with = |from: &str, to: &str| Config::parse(&MINIMAL.replace(from, to)).unwrap_err();
    let listen = "listen = \"203.0.113.1:21\"";
    assert_eq!(
        with(listen, "listen = \"[2001:db8::1]:21\""),
        "line 2: service `ftp`: listen: 2001:db8::1: IPv6 is not supported yet"
    );
    assert_eq!(
        with(
            "origin = \"198.51.100.2:21\"",
            "origin = \"[2001:db8::2]:21\""
        ),
        "line 2: service `ftp`: origin: 2001:db8::2: IPv6 is not supported yet"
    );
    assert_eq!(
        with(listen, &format!("{listen}\npublic_ip = \"2001:db8::3\"")),
        "line 2: service `ftp`: public_ip: 2001:db8::3: IPv6 is not supported yet"
    );
    assert_eq!(
        with(listen, &format!("{listen}\nnat_ip = \"2001:db8::4\"")),
        "line 2: service `ftp`: nat_ip: 2001:db8::4: IPv6 is not supported yet"
    );
    // Addresses to hide may be of either family: the scrubber hides both.
    let hidden = Config::parse(&format!("{MINIMAL}hide_addresses = [\"2001:db8::5\"]\n")).unwrap();
    assert_eq!(
        hidden.services().next().unwrap().hide_addresses,
        ["2001:db8::5".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn the_ipv4_view_of_a_service() {
    let with_nat = format!("{MINIMAL}nat_ip = \"198.51.100.1\"\n");
    let c = Config::parse(&with_nat).unwrap();
    let mut service = c.services().next().unwrap().clone();
    assert_eq!(
        service.ipv4(),
        Ok(ServiceIpv4 {
            listen: "203.0.113.1:21".parse().unwrap(),
            origin: "198.51.100.2:21".parse().unwrap(),
            public_ip: Ipv4Addr::new(203, 0, 113, 1),
            nat_ip: Some(Ipv4Addr::new(198, 51, 100, 1)),
        })
    );
    // Built by hand, past validation: the error names the service and the key.
    service.public_ip = Some("2001:db8::3".parse().unwrap());
    assert_eq!(
        service.ipv4(),
        Err(Ipv6Unsupported {
            service: "ftp".into(),
            key: "public_ip",
            address: "2001:db8::3".parse().unwrap(),
        })
    );
    assert_eq!(
        service.ipv4().unwrap_err().to_string(),
        "service `ftp`: public_ip: 2001:db8::3: IPv6 is not supported yet"
    );
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
    let text = include_str!("../../../config/ftp-guard.example.toml");
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

#[test]
fn the_audit_log_is_off_stderr_or_an_absolute_file() {
    use crate::audit::{AuditFormat, AuditTarget};
    let with = |keys: &str| Config::parse(&format!("{keys}\n{MINIMAL}"));
    let settings = |keys: &str| with(keys).map(|c| c.audit_settings());
    assert_eq!(settings(""), Ok(None));
    assert_eq!(
        settings("audit_log = \"stderr\""),
        Ok(Some((AuditTarget::Stderr, AuditFormat::Json)))
    );
    assert_eq!(
        settings("audit_format = \"xferlog\"\naudit_log = \"/var/log/ftp-guard/xferlog\""),
        Ok(Some((
            AuditTarget::File("/var/log/ftp-guard/xferlog".into()),
            AuditFormat::Xferlog
        )))
    );
    assert_eq!(
        settings("max_sessions = 5\naudit_log = \"audit.log\"").unwrap_err(),
        "line 2: audit_log: `audit.log` must be \"stderr\" or an absolute path"
    );
    assert_eq!(
        settings("audit_format = \"csv\"").unwrap_err(),
        "line 1: unknown variant `csv`, expected `json` or `xferlog`"
    );
}
/// The edge policy's knobs: defaults that never bite, ACL blocks parsed, and each wrong
/// value refused with the whole message naming line and key.
#[test]
fn edge_policy_knobs() {
    let s = Config::parse(MINIMAL).unwrap().services[0]
        .get_ref()
        .clone();
    assert_eq!(
        (
            s.allow,
            s.deny,
            s.syn_rate_per_client,
            s.syn_burst_per_client
        ),
        (vec![], vec![], 500, 1000)
    );
    let with = |lines: &str| Config::parse(&format!("{MINIMAL}{lines}\n"));
    let s = with("allow = [\"192.0.2.0/24\", \"198.51.100.7\"]\ndeny = [\"0.0.0.0/0\"]")
        .unwrap()
        .services[0]
        .get_ref()
        .clone();
    let block = |addr: [u8; 4], prefix| Cidr {
        addr: IpAddr::from(addr),
        prefix,
    };
    assert_eq!(
        (s.allow, s.deny),
        (
            vec![block([192, 0, 2, 0], 24), block([198, 51, 100, 7], 32)],
            vec![block([0, 0, 0, 0], 0)]
        )
    );
    let errors = [
        (
            "allow = [\"192.0.2.1/24\"]",
            "line 8: allow: `192.0.2.1/24`: host bits are set below the /24 prefix (the block starts lower)",
        ),
        (
            "deny = [\"192.0.2.0/33\"]",
            "line 8: deny: `192.0.2.0/33`: the prefix length must be 0..=32",
        ),
        (
            "deny = [\"bogus\"]",
            "line 8: deny: `bogus`: expected ADDRESS/PREFIX, e.g. \"192.0.2.0/24\"",
        ),
        (
            "allow = [\"2001:db8::/32\"]",
            "line 2: service `ftp`: allow: 2001:db8::/32: IPv6 is not supported yet",
        ),
        (
            "syn_rate_per_client = 0",
            "line 2: service `ftp`: syn_rate_per_client: must be within 1..=1000000",
        ),
        (
            "syn_burst_per_client = 2000000",
            "line 2: service `ftp`: syn_burst_per_client: must be within 1..=1000000",
        ),
        (
            "syn_rate_per_prefix = 0",
            "line 2: service `ftp`: syn_rate_per_prefix: must be within 1..=1000000",
        ),
    ];
    for (line, want) in errors {
        assert_eq!(with(line).unwrap_err(), want, "{line}");
    }
    let relay = MINIMAL.replace(
        "client_interface = \"eth0\"",
        "dataplane = \"userspace\"\ndeny = [\"192.0.2.0/24\"]",
    );
    assert_eq!(
        Config::parse(&relay).unwrap_err(),
        "line 2: service `ftp`: deny: needs client_interface (the XDP/TC programs attached there enforce the ACL)"
    );
}

/// The userspace ACL decides like the kernel's trie: most specific block, deny on a tie,
/// an allow list refuses the rest.
#[test]
fn acl_decisions() {
    let acl = |allow: &[&str], deny: &[&str]| Acl {
        allow: allow.iter().map(|b| b.parse().unwrap()).collect(),
        deny: deny.iter().map(|b| b.parse().unwrap()).collect(),
    };
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    let lists = acl(
        &["203.0.113.0/24", "198.51.100.0/24", "192.0.2.128/25"],
        &["203.0.113.66", "198.51.100.0/24", "192.0.2.0/24"],
    );
    let verdicts: Vec<bool> = [
        "203.0.113.2",
        "203.0.113.66",
        "198.51.100.5",
        "192.0.2.129",
        "192.0.2.1",
        "233.252.0.1",
    ]
    .into_iter()
    .map(|a| lists.refuses(ip(a)))
    .collect();
    assert_eq!(verdicts, [false, true, true, false, true, true]);
    let deny_only = acl(&[], &["203.0.113.66/32"]);
    assert_eq!(
        (
            deny_only.refuses(ip("203.0.113.66")),
            deny_only.refuses(ip("233.252.0.1"))
        ),
        (true, false)
    );
    assert!(!Acl::default().refuses(ip("203.0.113.66")));
}

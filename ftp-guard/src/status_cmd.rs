//! `ftp-guard status`: what a running daemon is doing, read from its admin endpoint; and
//! `ftp-guard unban ADDRESS`, which lifts a ban through the same endpoint.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use clap::Args;

use crate::{
    admin::{self, ServiceStatus, Status},
    config::Config,
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// Print the raw JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UnbanArgs {
    /// The banned client address (IPv4 or IPv6).
    pub address: IpAddr,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

/// Where the daemon's admin endpoint is and the token it wants.
#[derive(Debug, Args)]
pub struct EndpointArgs {
    /// The daemon's admin endpoint (its `admin_listen`) [default: the config's
    /// admin_listen with --config, else 127.0.0.1:9640].
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// A file with the admin token (`admin_token_file`) [default: the config's with --config].
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The daemon's configuration: where its endpoint listens and its token file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl EndpointArgs {
    /// The endpoint and the token to use: flags first, then the configuration.
    pub fn endpoint(&self) -> anyhow::Result<(SocketAddr, Option<String>)> {
        let config = self.config.as_deref().map(Config::load).transpose()?;
        let admin = self
            .admin
            .or(config.as_ref().map(|c| c.admin_listen))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9640)));
        let token_file = self
            .token_file
            .as_deref()
            .or(config.as_ref().and_then(Config::admin_token_path));
        let token = token_file.map(admin::read_token).transpose()?;
        Ok((admin, token))
    }
}

/// `ftp-guard unban`: prints the endpoint's answer (`unbanned ADDRESS`); an address that
/// is not banned is an error.
pub async fn unban(args: &UnbanArgs) -> anyhow::Result<()> {
    let (addr, token) = args.endpoint.endpoint()?;
    let path = format!("{}?addr={}", admin::UNBAN_PATH, args.address);
    print!("{}", admin::post(addr, &path, token.as_deref()).await?);
    Ok(())
}

pub async fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let (addr, token) = args.endpoint.endpoint()?;
    let body = admin::get(addr, "/status", token.as_deref()).await?;
    if args.json {
        print!("{body}");
        return Ok(());
    }
    let status: Status = serde_json::from_str(&body)?;
    print!("{}", render(&status));
    Ok(())
}

/// The tables `ftp-guard status` prints.
pub fn render(status: &Status) -> String {
    let mut out = format!(
        "ftp-guard {} up {:.0} s\n\n",
        status.version, status.uptime_secs
    );
    out += &table(
        &[
            "SERVICE",
            "LISTEN",
            "ORIGIN",
            "PUBLIC",
            "DATAPLANE",
            "SESSIONS",
            "LEASES",
            "BYTES->CLIENT",
            "BYTES->ORIGIN",
        ],
        status
            .services
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.listen.clone(),
                    s.origin.clone(),
                    s.public_ip.clone(),
                    s.dataplane.clone(),
                    s.sessions.len().to_string(),
                    s.leases.len().to_string(),
                    s.totals.bytes_to_client.to_string(),
                    s.totals.bytes_to_origin.to_string(),
                ]
            })
            .collect(),
    );
    let sessions = per_service(
        status,
        |s| &s.sessions,
        |x| {
            vec![
                x.id.to_string(),
                x.client.clone(),
                format!("{:.0}", x.age_secs),
            ]
        },
    );
    out += "\nSESSIONS\n";
    out += &table(&["SERVICE", "ID", "CLIENT", "AGE_S"], sessions);
    let leases = per_service(
        status,
        |s| &s.leases,
        |l| {
            vec![
                l.mode.clone(),
                l.port.to_string(),
                l.peer.clone(),
                l.target.clone(),
                l.state.clone(),
                format!("{:.0}", l.age_secs),
                l.bytes_to_client.to_string(),
                l.bytes_to_origin.to_string(),
            ]
        },
    );
    out += "\nLEASES AND DATA CONNECTIONS\n";
    out += &table(
        &[
            "SERVICE",
            "MODE",
            "PORT",
            "PEER",
            "TARGET",
            "STATE",
            "AGE_S",
            "BYTES->CLIENT",
            "BYTES->ORIGIN",
        ],
        leases,
    );
    out += "\nBANS\n";
    out += &table(
        &["ADDRESS", "SERVICE", "REMAINING_S", "REASON"],
        status
            .bans
            .iter()
            .map(|b| {
                vec![
                    b.address.clone(),
                    b.service.clone(),
                    format!("{:.0}", b.remaining_secs.ceil()),
                    b.reason.clone(),
                ]
            })
            .collect(),
    );
    let acl_rules = status.kernel.as_ref().map_or(&[][..], |k| &k.acl_rules);
    if !acl_rules.is_empty() {
        out += "\nACL RULES\n";
        out += &table(
            &["SERVICE", "BLOCK", "ACTION", "PACKETS"],
            acl_rules
                .iter()
                .map(|r| {
                    vec![
                        r.service.clone(),
                        r.block.clone(),
                        r.action.clone(),
                        r.packets.to_string(),
                    ]
                })
                .collect(),
        );
    }
    if let Some(k) = &status.kernel {
        out += "\nKERNEL PATH\n";
        out += &table(
            &["INTERFACE", "MODE"],
            k.attachments
                .iter()
                .map(|(i, m)| vec![i.clone(), m.clone()])
                .collect(),
        );
        out += &table(
            &["COUNTER", "PACKETS"],
            k.counters
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(c, v)| vec![c.clone(), v.to_string()])
                .collect(),
        );
    }
    out
}

/// A row per item of every service (its sessions, its leases): the service's name, then
/// the item's `cells`.
fn per_service<T>(
    status: &Status,
    items: impl Fn(&ServiceStatus) -> &[T],
    cells: impl Fn(&T) -> Vec<String>,
) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for s in &status.services {
        for item in items(s) {
            rows.push([vec![s.name.clone()], cells(item)].concat());
        }
    }
    rows
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    if rows.is_empty() {
        out += "(none)\n";
    }
    for row in rows {
        out += &line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        admin::{AclRuleStatus, BanStatus, KernelStatus, SessionStatus},
        dataplane::{LeaseInfo, Snapshot},
    };

    fn acl_rule(service: &str, block: &str, action: &str, packets: u64) -> AclRuleStatus {
        AclRuleStatus {
            service: service.into(),
            block: block.into(),
            action: action.into(),
            packets,
        }
    }

    fn status() -> Status {
        Status {
            version: "1.2.3".into(),
            uptime_secs: 61.4,
            services: vec![
                ServiceStatus {
                    name: "ftp".into(),
                    listen: "203.0.113.1:21".into(),
                    origin: "198.51.100.2:21".into(),
                    public_ip: "203.0.113.1".into(),
                    dataplane: "kernel".into(),
                    sessions: vec![
                        SessionStatus {
                            id: 7,
                            client: "192.0.2.10:50000".into(),
                            age_secs: 12.6,
                        },
                        SessionStatus {
                            id: 12,
                            client: "192.0.2.11:50001".into(),
                            age_secs: 0.2,
                        },
                    ],
                    leases: vec![LeaseInfo {
                        mode: "passive".into(),
                        port: 40001,
                        peer: "192.0.2.10:50002".into(),
                        target: "198.51.100.2:30000".into(),
                        state: "carrying".into(),
                        age_secs: 3.0,
                        bytes_to_client: 1048576,
                        bytes_to_origin: 0,
                    }],
                    totals: Snapshot {
                        bytes_to_client: 2097152,
                        bytes_to_origin: 512,
                        ..Snapshot::default()
                    },
                },
                ServiceStatus {
                    name: "archive".into(),
                    listen: "203.0.113.1:2121".into(),
                    origin: "198.51.100.3:21".into(),
                    public_ip: "203.0.113.9".into(),
                    dataplane: "userspace".into(),
                    sessions: vec![],
                    leases: vec![],
                    totals: Snapshot::default(),
                },
            ],
            bans: vec![
                BanStatus {
                    address: "192.0.2.66".into(),
                    service: "ftp".into(),
                    remaining_secs: 899.2,
                    reason: "login_failures".into(),
                },
                BanStatus {
                    address: "2001:db8::66".into(),
                    service: "archive".into(),
                    remaining_secs: 12.0,
                    reason: "login_failures".into(),
                },
            ],
            kernel: Some(KernelStatus {
                attachments: vec![("eth0".into(), "tc".into()), ("eth1".into(), "xdp".into())],
                counters: vec![
                    ("passed".into(), 1500),
                    ("dropped_stranger".into(), 0),
                    ("nat_to_origin".into(), 42),
                ],
                acl_rules: vec![
                    acl_rule("ftp", "192.0.2.0/24", "allow", 1200),
                    acl_rule("ftp", "*", "deny", 7),
                    acl_rule("archive", "2001:db8::/32", "deny", 0),
                ],
            }),
        }
    }

    /// The whole output: real line breaks, aligned columns, empty tables as "(none)",
    /// counters at zero left out.
    #[test]
    fn renders_tables_with_line_breaks() {
        let expected = "\
ftp-guard 1.2.3 up 61 s

SERVICE  LISTEN            ORIGIN           PUBLIC       DATAPLANE  SESSIONS  LEASES  BYTES->CLIENT  BYTES->ORIGIN
ftp      203.0.113.1:21    198.51.100.2:21  203.0.113.1  kernel     2         1       2097152        512
archive  203.0.113.1:2121  198.51.100.3:21  203.0.113.9  userspace  0         0       0              0

SESSIONS
SERVICE  ID  CLIENT            AGE_S
ftp      7   192.0.2.10:50000  13
ftp      12  192.0.2.11:50001  0

LEASES AND DATA CONNECTIONS
SERVICE  MODE     PORT   PEER              TARGET              STATE     AGE_S  BYTES->CLIENT  BYTES->ORIGIN
ftp      passive  40001  192.0.2.10:50002  198.51.100.2:30000  carrying  3      1048576        0

BANS
ADDRESS       SERVICE  REMAINING_S  REASON
192.0.2.66    ftp      900          login_failures
2001:db8::66  archive  12           login_failures

ACL RULES
SERVICE  BLOCK          ACTION  PACKETS
ftp      192.0.2.0/24   allow   1200
ftp      *              deny    7
archive  2001:db8::/32  deny    0

KERNEL PATH
INTERFACE  MODE
eth0       tc
eth1       xdp
COUNTER        PACKETS
passed         1500
nat_to_origin  42
";
        assert_eq!(render(&status()), expected);
    }

    /// Empty tables; no KERNEL PATH without a kernel path, and no ACL RULES with one
    /// whose services have no rules.
    #[test]
    fn renders_empty_tables_and_no_kernel_or_acl_section() {
        let mut status = status();
        status.services.truncate(1);
        status.services[0].sessions.clear();
        status.services[0].leases.clear();
        status.bans.clear();
        status.kernel = None;
        let expected = "\
ftp-guard 1.2.3 up 61 s

SERVICE  LISTEN          ORIGIN           PUBLIC       DATAPLANE  SESSIONS  LEASES  BYTES->CLIENT  BYTES->ORIGIN
ftp      203.0.113.1:21  198.51.100.2:21  203.0.113.1  kernel     0         0       2097152        512

SESSIONS
SERVICE  ID  CLIENT  AGE_S
(none)

LEASES AND DATA CONNECTIONS
SERVICE  MODE  PORT  PEER  TARGET  STATE  AGE_S  BYTES->CLIENT  BYTES->ORIGIN
(none)

BANS
ADDRESS  SERVICE  REMAINING_S  REASON
(none)
";
        assert_eq!(render(&status), expected);
        status.kernel = Some(KernelStatus {
            attachments: vec![("eth0".into(), "tc".into())],
            counters: vec![("passed".into(), 1500)],
            acl_rules: vec![],
        });
        let kernel_path = "
KERNEL PATH
INTERFACE  MODE
eth0       tc
COUNTER  PACKETS
passed   1500
";
        assert_eq!(render(&status), format!("{expected}{kernel_path}"));
    }

    #[test]
    fn the_endpoint_and_token_come_from_flags_then_the_config() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("ftp-guard-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (token, other, config) = (dir.join("token"), dir.join("other"), dir.join("c.toml"));
        for (file, text) in [(&token, "from-config\n"), (&other, "from-flag\n")] {
            std::fs::write(file, text).unwrap();
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(
            &config,
            format!(
                "admin_listen = \"127.0.0.1:9641\"\nadmin_token_file = \"{}\"\n\
                 [[service]]\nname = \"ftp\"\nlisten = \"203.0.113.1:21\"\n\
                 origin = \"198.51.100.2:21\"\ndata_ports = \"40000-40099\"\ndataplane = \"userspace\"\n",
                token.display()
            ),
        )
        .unwrap();
        let args = |admin: Option<&str>, token_file: Option<&PathBuf>, config: Option<&PathBuf>| {
            EndpointArgs {
                admin: admin.map(|a| a.parse().unwrap()),
                token_file: token_file.cloned(),
                config: config.cloned(),
            }
            .endpoint()
            .unwrap()
        };
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert_eq!(args(None, None, None), (at("127.0.0.1:9640"), None));
        assert_eq!(
            args(None, None, Some(&config)),
            (at("127.0.0.1:9641"), Some("from-config".into()))
        );
        assert_eq!(
            args(Some("127.0.0.1:9642"), Some(&other), Some(&config)),
            (at("127.0.0.1:9642"), Some("from-flag".into()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

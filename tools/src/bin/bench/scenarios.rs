//! The ways a gateway can carry an FTP session, set up on the shared topology one at a
//! time: plain routing (the limit), the Linux kernel FTP helper (nftables DNAT + `ct helper
//! ftp`), and ftp-guard with each of its data paths.
use std::{
    net::SocketAddrV4,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use ftp_guard_testbed::{
    gateway::RunningGateway,
    netns::{self, GATEWAY, GATEWAY_PRIVATE_IF, GATEWAY_PUBLIC_IF, Topology},
};

pub const VIP: std::net::Ipv4Addr = netns::GATEWAY_PUBLIC_IP;
/// ftp-guard's public data ports in every ftp-guard scenario: wide enough that port
/// turnover (the relay holds a port for its whole data connection) never limits sessions/s.
pub const DATA_PORTS: &str = "40000-44999";
/// ftp-guard's public data ports in the `data-conns` figure: exactly 100, a range a
/// firewall admin would open, so that the figure measures port turnover.
pub const NARROW_DATA_PORTS: &str = "40000-40099";
/// The nftables table of the kernel-helper scenario.
const NFT_TABLE: &str = "ftp_guard_bench";

/// How the gateway carries the FTP session in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// No FTP-aware component: the client talks to the origin itself, the gateway routes.
    Routed,
    /// The Linux kernel FTP helper: nftables DNATs the public address's port 21 to the
    /// origin, `ct helper ftp` (nf_conntrack_ftp + nf_nat_ftp) rewrites 227/229 and opens
    /// the data connection as RELATED; the forward chain drops everything else, as a
    /// protecting firewall would.
    KernelHelper,
    /// ftp-guard on the gateway with these `dataplane` and (if some) `kernel_hook` settings.
    FtpGuard {
        dataplane: &'static str,
        kernel_hook: Option<&'static str>,
    },
}

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub carrier: Carrier,
    /// Run without `--scenarios`; the others are there to be asked for.
    pub default: bool,
}

/// Every scenario, in report order. A new way to carry the data is one more entry (and,
/// for a new kind of setup, one more [`Carrier`]).
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "routing",
        about: "client → origin, routed by the gateway (ip_forward); no NAT, no protection",
        carrier: Carrier::Routed,
        default: true,
    },
    Scenario {
        name: "kernel-helper",
        about: "the Linux kernel FTP helper: nftables DNAT of port 21 + `ct helper ftp` \
                (nf_nat_ftp rewrites 227/229), forward chain drops all but established, \
                related and new control connections",
        carrier: Carrier::KernelHelper,
        default: true,
    },
    Scenario {
        name: "userspace",
        about: "through ftp-guard, data relayed in userspace (dataplane = \"userspace\")",
        carrier: Carrier::FtpGuard {
            dataplane: "userspace",
            kernel_hook: None,
        },
        default: true,
    },
    Scenario {
        name: "kernel",
        about: "through ftp-guard, data NATed in the kernel (dataplane = \"kernel\", \
                kernel_hook = \"auto\": TC on veths, XDP in driver mode on NICs)",
        carrier: Carrier::FtpGuard {
            dataplane: "kernel",
            kernel_hook: None,
        },
        default: true,
    },
    Scenario {
        name: "kernel-xdp",
        about: "as `kernel`, XDP in driver mode (kernel_hook = \"xdp\"): on veth each \
                packet is copied before the program runs",
        carrier: Carrier::FtpGuard {
            dataplane: "kernel",
            kernel_hook: Some("xdp"),
        },
        default: true,
    },
    Scenario {
        name: "kernel-tc",
        about: "as `kernel`, hooked at TC ingress (tcx) instead (kernel_hook = \"tc\")",
        carrier: Carrier::FtpGuard {
            dataplane: "kernel",
            kernel_hook: Some("tc"),
        },
        default: false,
    },
    Scenario {
        name: "kernel-generic",
        about: "as `kernel`, XDP in generic (skb) mode (kernel_hook = \"xdp-generic\")",
        carrier: Carrier::FtpGuard {
            dataplane: "kernel",
            kernel_hook: Some("xdp-generic"),
        },
        default: false,
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// A scenario's setup while it is up: torn down when dropped.
pub struct Active {
    /// Where the client connects (control channel).
    pub target: SocketAddrV4,
    pub gateway: Option<RunningGateway>,
    /// The namespace whose nftables table goes when dropped.
    nft_ns: Option<String>,
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(ns) = self.nft_ns.take() {
            let _ = nft(&ns, &format!("delete table ip {NFT_TABLE}\n"));
        }
    }
}

impl Active {
    /// The kernel path's counters, if this scenario has one.
    pub fn counters(&self) -> Option<ftp_guard::bpf::Counters> {
        let gateway = self.gateway.as_ref()?;
        gateway.bpf()?;
        Some(gateway.counters())
    }

    /// Where the kernel path's programs are attached (`pub0=xdp-native`, …), if it has one.
    pub fn attachments(&self) -> Option<Vec<String>> {
        let kernel = self.gateway.as_ref()?.bpf()?.lock();
        Some(
            kernel
                .attachments()
                .iter()
                .map(|(ifname, mode)| format!("{ifname}={mode}"))
                .collect(),
        )
    }
}

impl Carrier {
    /// ftp-guard's configuration for this carrier in front of `origin` (None for the
    /// carriers without ftp-guard). `extra` goes into the top level (before the service).
    pub fn ftp_guard_config(self, origin: SocketAddrV4, extra: &str) -> Option<String> {
        self.ftp_guard_config_with_ports(origin, extra, DATA_PORTS)
    }

    /// As [`Carrier::ftp_guard_config`], with these public data ports (`"first-last"`).
    pub fn ftp_guard_config_with_ports(
        self,
        origin: SocketAddrV4,
        extra: &str,
        data_ports: &str,
    ) -> Option<String> {
        let Carrier::FtpGuard {
            dataplane,
            kernel_hook,
        } = self
        else {
            return None;
        };
        // Every benchmark client comes from one address, standing for many: the memory
        // figure holds thousands of sessions from it.
        let mut config = format!(
            "{extra}[[service]]\nname = \"bench\"\nlisten = \"{VIP}:21\"\norigin = \"{origin}\"\n\
             data_ports = \"{data_ports}\"\nclient_interface = \"{GATEWAY_PUBLIC_IF}\"\n\
             origin_interface = \"{GATEWAY_PRIVATE_IF}\"\ndataplane = \"{dataplane}\"\n\
             max_sessions_per_client = 20000\n"
        );
        if let Some(hook) = kernel_hook {
            config += &format!("kernel_hook = \"{hook}\"\n");
        }
        Some(config)
    }

    /// Sets the scenario up in front of `origin`; ftp-guard (if any) runs in-process with
    /// public data ports `data_ports` (`"first-last"`, e.g. [`DATA_PORTS`]).
    pub fn start(self, topo: &Topology, origin: SocketAddrV4, data_ports: &str) -> Result<Active> {
        match self {
            Carrier::Routed | Carrier::KernelHelper => self.start_without_ftp_guard(topo, origin),
            Carrier::FtpGuard { dataplane, .. } => {
                let config = self
                    .ftp_guard_config_with_ports(origin, "max_sessions = 20000\n", data_ports)
                    .context("an ftp-guard carrier has a config")?;
                let gateway = RunningGateway::start(topo, &config)
                    .with_context(|| format!("starting ftp-guard (dataplane {dataplane})"))?;
                Ok(Active {
                    target: SocketAddrV4::new(VIP, 21),
                    gateway: Some(gateway),
                    nft_ns: None,
                })
            }
        }
    }

    /// The carriers that need no ftp-guard process (routing, the kernel helper), e.g. for
    /// a figure that runs ftp-guard as a separate process.
    pub fn start_without_ftp_guard(self, topo: &Topology, origin: SocketAddrV4) -> Result<Active> {
        match self {
            Carrier::Routed => {
                ensure_clean(topo)?;
                Ok(Active {
                    target: origin,
                    gateway: None,
                    nft_ns: None,
                })
            }
            Carrier::KernelHelper => {
                ensure_clean(topo)?;
                let ns = topo.ns_name(GATEWAY).to_owned();
                nft(&ns, &helper_ruleset(origin)).context("loading the kernel-helper ruleset")?;
                Ok(Active {
                    target: SocketAddrV4::new(VIP, 21),
                    gateway: None,
                    nft_ns: Some(ns),
                })
            }
            Carrier::FtpGuard { .. } => anyhow::bail!("an ftp-guard carrier needs ftp-guard"),
        }
    }
}

/// nftables for the kernel-helper scenario: DNAT of VIP:21 to the origin, the ftp helper
/// on that control connection, and a forward chain that lets through only what the helper
/// relates (the data connections) besides the control connections themselves.
fn helper_ruleset(origin: SocketAddrV4) -> String {
    let (oip, oport) = (origin.ip(), origin.port());
    format!(
        "table ip {NFT_TABLE} {{\n\
         \tct helper ftp-standard {{ type \"ftp\" protocol tcp; }}\n\
         \tchain to_origin {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tiifname \"{GATEWAY_PUBLIC_IF}\" ip daddr {VIP} tcp dport 21 dnat to {origin}\n\
         \t}}\n\
         \tchain assign_helper {{\n\
         \t\ttype filter hook prerouting priority filter; policy accept;\n\
         \t\tiifname \"{GATEWAY_PUBLIC_IF}\" ip daddr {oip} tcp dport {oport} ct helper set \"ftp-standard\"\n\
         \t}}\n\
         \tchain filter_forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"{GATEWAY_PUBLIC_IF}\" ip daddr {oip} tcp dport {oport} ct state new accept\n\
         \t}}\n\
         }}\n"
    )
}

/// Applies an nftables script in namespace `ns`.
pub fn nft(ns: &str, script: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (is nftables installed? `cargo xtask setup`)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "nft -f failed ({}): {}\n{script}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Nothing of another scenario may be left on the gateway: no XDP program, no nftables.
fn ensure_clean(topo: &Topology) -> Result<()> {
    for ifname in [GATEWAY_PUBLIC_IF, GATEWAY_PRIVATE_IF] {
        let out = topo.run(GATEWAY, &["ip", "link", "show", ifname])?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            !text.contains("xdp"),
            "an XDP program is still attached to {ifname}: {text}"
        );
    }
    let out = topo.run(GATEWAY, &["nft", "list", "tables"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.trim().is_empty(),
        "nftables tables left in the gateway: {text}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, s) in SCENARIOS.iter().enumerate() {
            assert!(
                SCENARIOS[i + 1..].iter().all(|t| t.name != s.name),
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn the_narrow_range_has_exactly_100_ports() {
        let range: ftp_guard::config::PortRange = NARROW_DATA_PORTS.parse().unwrap();
        assert_eq!(range.len(), 100);
        let carrier = find("kernel").unwrap().carrier;
        let origin = SocketAddrV4::new(netns::ORIGIN_IP, 21);
        let text = carrier
            .ftp_guard_config_with_ports(origin, "", NARROW_DATA_PORTS)
            .unwrap();
        let config = ftp_guard::config::Config::parse(&text).unwrap();
        let service = config.services().next().unwrap();
        assert_eq!(service.data_ports.len(), 100, "{text}");
    }

    #[test]
    fn helper_ruleset_names_the_origin() {
        let rules = helper_ruleset(SocketAddrV4::new(netns::ORIGIN_IP, 2121));
        assert!(rules.contains("dnat to 198.51.100.2:2121"), "{rules}");
        assert!(rules.contains("tcp dport 2121 ct helper set"), "{rules}");
        assert!(rules.contains("policy drop"), "{rules}");
    }
}

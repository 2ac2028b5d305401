//! Network-namespace topologies for end-to-end tests: a client, a gateway and an origin
//! (plus any extra hosts, e.g. attackers) joined by veth pairs, all outside the root
//! namespace, so tests never touch the machine's own interfaces and can run side by side.
//!
//! ```text
//!  client ns                gateway ns                          origin ns
//!  eth0 203.0.113.2/24 ──── pub0 203.0.113.1/24
//!                           priv0 198.51.100.1/24 ──────────── eth0 198.51.100.2/24
//!  <extra host> eth0 ────── <gw_if> (add_host)
//! ```
//!
//! The field layout ([`Topology::field`]) is an ordinary gateway instead: Linux bridges as
//! its attach points, each with a second host on it, IPv4 forwarding off, and every veth
//! with the kernel's default offloads (checksum offload, TSO/GSO on; GRO off):
//!
//! ```text
//!  client ns   eth0 203.0.113.2/24 ── cport0 ┐  gateway ns (ip_forward = 0)
//!  client2 ns  eth0 203.0.113.3/24 ── cport1 ┴─ brc0 203.0.113.1/24
//!                                               bro0 198.51.100.1/24 ─┬ oport0 ── eth0 198.51.100.2/24  origin ns
//!                                                                     └ oport1 ── eth0 198.51.100.3/24  origin2 ns
//! ```
//!
//! Every host has a default route via its bridge's address. `client2` and `origin2` are
//! bystanders: with forwarding off they must not reach each other through the gateway.
//!
//! Namespaces are named `fgt-<pid>-<tag>-<role>`: unique per test process and test, and a
//! later run can tell from the pid whether the owner is gone (crashed or killed) and sweep.
use std::{
    net::Ipv4Addr,
    process::{Child, Command},
    sync::Mutex,
};

use anyhow::{Result, ensure};

mod cleanup;
mod exec;
#[cfg(test)]
mod tests;

use cleanup::{require_program, run_checked, sweep_stale_namespaces};

pub const CLIENT: &str = "client";
pub const GATEWAY: &str = "gateway";
pub const ORIGIN: &str = "origin";

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The gateway's client-facing address: the public address (VIP) clients connect to.
pub const GATEWAY_PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const GATEWAY_PRIVATE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const ORIGIN_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Gateway interface facing the client.
pub const GATEWAY_PUBLIC_IF: &str = "pub0";
/// Gateway interface facing the origin.
pub const GATEWAY_PRIVATE_IF: &str = "priv0";
/// The interface of every non-gateway host.
pub const HOST_IF: &str = "eth0";

/// [`Topology::field`]: the second host on the client-side bridge.
pub const CLIENT2: &str = "client2";
/// [`Topology::field`]: the second host on the origin-side bridge.
pub const ORIGIN2: &str = "origin2";
/// [`Topology::field`]: the address of [`CLIENT2`].
pub const CLIENT2_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
/// [`Topology::field`]: the address of [`ORIGIN2`].
pub const ORIGIN2_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
/// [`Topology::field`]: the client-side bridge, carrying [`GATEWAY_PUBLIC_IP`] (the VIP).
pub const FIELD_CLIENT_BRIDGE: &str = "brc0";
/// [`Topology::field`]: the origin-side bridge, carrying [`GATEWAY_PRIVATE_IP`].
pub const FIELD_ORIGIN_BRIDGE: &str = "bro0";
/// [`Topology::field`]: the gateway's ends of the veths of [`CLIENT`] and [`CLIENT2`],
/// ports of [`FIELD_CLIENT_BRIDGE`].
pub const FIELD_CLIENT_PORTS: [&str; 2] = ["cport0", "cport1"];
/// [`Topology::field`]: the gateway's ends of the veths of [`ORIGIN`] and [`ORIGIN2`],
/// ports of [`FIELD_ORIGIN_BRIDGE`].
pub const FIELD_ORIGIN_PORTS: [&str; 2] = ["oport0", "oport1"];

const NAME_PREFIX: &str = "fgt-";

/// The offloads of a veth made by [`Topology::add_veth_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offloads {
    /// `ethtool -K IF rx off tx off` on both ends: every checksum is computed and checked
    /// for real (the standard layout).
    ChecksumOff,
    /// The kernel's defaults (rx/tx checksum, TSO, GSO on; GRO off): what a gateway meets in
    /// the field. Senders pass CHECKSUM_PARTIAL skbs whose checksum nobody completes unless
    /// a device without checksum offload transmits them.
    Default,
}

/// A set of namespaces owned by this test. Dropping it kills what was spawned in them and
/// deletes them (which deletes their veths).
pub struct Topology {
    /// `fgt-<pid>-<tag>`
    prefix: String,
    /// (role, namespace name), in creation order.
    namespaces: Vec<(String, String)>,
    /// Spawned with [`Topology::spawn`]; a Mutex so tests can share `&Topology` with threads.
    children: Mutex<Vec<Child>>,
}

impl Topology {
    /// An empty topology for this process and `tag` (letters, digits, `_`, `-`). Sweeps the
    /// namespaces that crashed runs of the test suite left behind first.
    pub fn new(tag: &str) -> Result<Self> {
        ensure!(
            !tag.is_empty()
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "netns tag {tag:?}: use letters, digits, '_' and '-' only"
        );
        sweep_stale_namespaces()?;
        Ok(Self {
            prefix: format!("{NAME_PREFIX}{}-{tag}", std::process::id()),
            namespaces: Vec::new(),
            children: Mutex::new(Vec::new()),
        })
    }

    /// The standard layout (see the module docs): `client`, `gateway` (forwarding on) and
    /// `origin`, with default routes through the gateway.
    pub fn standard(tag: &str) -> Result<Self> {
        let mut topo = Self::new(tag)?;
        topo.add_namespace(GATEWAY)?;
        topo.sysctl(GATEWAY, "net.ipv4.ip_forward", "1")?;
        topo.add_host(
            CLIENT,
            GATEWAY_PUBLIC_IF,
            &format!("{GATEWAY_PUBLIC_IP}/24"),
            &format!("{CLIENT_IP}/24"),
        )?;
        topo.add_host(
            ORIGIN,
            GATEWAY_PRIVATE_IF,
            &format!("{GATEWAY_PRIVATE_IP}/24"),
            &format!("{ORIGIN_IP}/24"),
        )?;
        Ok(topo)
    }

    /// The field layout (see the module docs): an ordinary gateway rather than a test rig.
    /// `gateway` has IPv4 forwarding off (`net.ipv4.ip_forward`, `conf.all.forwarding` and
    /// `conf.default.forwarding` = 0, set before any interface exists) and two Linux bridges,
    /// [`FIELD_CLIENT_BRIDGE`] and [`FIELD_ORIGIN_BRIDGE`], as its attach points; `client`
    /// and `client2` hang on the first, `origin` and `origin2` on the second, through veths
    /// whose offloads are the kernel's defaults (checksum offload on: senders hand out
    /// CHECKSUM_PARTIAL skbs). Hosts route by default via their bridge's address.
    pub fn field(tag: &str) -> Result<Self> {
        let mut topo = Self::new(tag)?;
        topo.add_namespace(GATEWAY)?;
        for key in [
            "net.ipv4.ip_forward",
            "net.ipv4.conf.all.forwarding",
            "net.ipv4.conf.default.forwarding",
        ] {
            topo.sysctl(GATEWAY, key, "0")?;
        }
        for (bridge, cidr) in [
            (FIELD_CLIENT_BRIDGE, format!("{GATEWAY_PUBLIC_IP}/24")),
            (FIELD_ORIGIN_BRIDGE, format!("{GATEWAY_PRIVATE_IP}/24")),
        ] {
            // `name` first: `ip link add bro0 ...` would parse `bro…` as `broadcast`.
            topo.run(
                GATEWAY,
                &["ip", "link", "add", "name", bridge, "type", "bridge"],
            )?;
            topo.add_address(GATEWAY, bridge, &cidr)?;
            topo.run(GATEWAY, &["ip", "link", "set", bridge, "up"])?;
        }
        let hosts = [
            (
                CLIENT,
                CLIENT_IP,
                FIELD_CLIENT_PORTS[0],
                FIELD_CLIENT_BRIDGE,
                GATEWAY_PUBLIC_IP,
            ),
            (
                CLIENT2,
                CLIENT2_IP,
                FIELD_CLIENT_PORTS[1],
                FIELD_CLIENT_BRIDGE,
                GATEWAY_PUBLIC_IP,
            ),
            (
                ORIGIN,
                ORIGIN_IP,
                FIELD_ORIGIN_PORTS[0],
                FIELD_ORIGIN_BRIDGE,
                GATEWAY_PRIVATE_IP,
            ),
            (
                ORIGIN2,
                ORIGIN2_IP,
                FIELD_ORIGIN_PORTS[1],
                FIELD_ORIGIN_BRIDGE,
                GATEWAY_PRIVATE_IP,
            ),
        ];
        for (role, ip, port, bridge, via) in hosts {
            topo.add_namespace(role)?;
            topo.add_veth_with(role, HOST_IF, GATEWAY, port, Offloads::Default)?;
            topo.run(GATEWAY, &["ip", "link", "set", port, "master", bridge])?;
            topo.add_address(role, HOST_IF, &format!("{ip}/24"))?;
            topo.add_default_route(role, &via.to_string())?;
        }
        Ok(topo)
    }

    /// Adds namespace `role` joined to the gateway by a veth: `eth0` with `host_cidr` in the
    /// new namespace, `gw_if` with `gw_cidr` in the gateway, and a default route via the
    /// gateway address. E.g. `add_host("attacker", "pub1", "192.0.2.1/24", "192.0.2.66/24")`.
    pub fn add_host(
        &mut self,
        role: &str,
        gw_if: &str,
        gw_cidr: &str,
        host_cidr: &str,
    ) -> Result<()> {
        let gw_addr = gw_cidr
            .split_once('/')
            .map_or(gw_cidr, |(addr, _)| addr)
            .to_owned();
        self.add_namespace(role)?;
        self.add_veth(role, HOST_IF, GATEWAY, gw_if)?;
        self.add_address(GATEWAY, gw_if, gw_cidr)?;
        self.add_address(role, HOST_IF, host_cidr)?;
        self.add_default_route(role, &gw_addr)
    }

    /// Creates namespace `role` with `lo` up.
    pub fn add_namespace(&mut self, role: &str) -> Result<()> {
        ensure!(
            !self.namespaces.iter().any(|(r, _)| r == role),
            "role {role:?} already exists"
        );
        let name = format!("{}-{role}", self.prefix);
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        // Recorded before anything else can fail, so Drop deletes it.
        self.namespaces.push((role.to_owned(), name.clone()));
        run_checked(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        Ok(())
    }

    /// A veth pair `if_a` (in `role_a`) ↔ `if_b` (in `role_b`), created directly inside the
    /// namespaces (never in the root one), checksum offload off on both ends, both up.
    pub fn add_veth(&self, role_a: &str, if_a: &str, role_b: &str, if_b: &str) -> Result<()> {
        self.add_veth_with(role_a, if_a, role_b, if_b, Offloads::ChecksumOff)
    }

    /// [`Topology::add_veth`] with a choice of offloads.
    pub fn add_veth_with(
        &self,
        role_a: &str,
        if_a: &str,
        role_b: &str,
        if_b: &str,
        offloads: Offloads,
    ) -> Result<()> {
        if offloads == Offloads::ChecksumOff {
            require_program(
                "ethtool",
                "it turns veth checksum offload off; `cargo xtask setup` installs it",
            )?;
        }
        let (ns_a, ns_b) = (self.ns_name(role_a), self.ns_name(role_b));
        run_checked(Command::new("ip").args([
            "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
        ]))?;
        for (role, ifname) in [(role_a, if_a), (role_b, if_b)] {
            // With offload on, a veth hands the peer CHECKSUM_PARTIAL skbs whose checksums
            // nobody verifies: a data path that rewrites packets with a broken checksum
            // would still pass. Off, every checksum is computed and checked for real.
            if offloads == Offloads::ChecksumOff {
                self.run(role, &["ethtool", "-K", ifname, "rx", "off", "tx", "off"])?;
            }
            run_checked(Command::new("ip").args([
                "-n",
                self.ns_name(role),
                "link",
                "set",
                ifname,
                "up",
            ]))?;
        }
        Ok(())
    }

    /// Turns rx and tx checksum offload of `ifname` in `role` on (a veth's default, and a
    /// NIC's: TSO/GSO, which need tx checksumming, come back with it) or off (what
    /// [`Topology::add_veth`] sets).
    pub fn set_checksum_offload(&self, role: &str, ifname: &str, on: bool) -> Result<()> {
        let state = if on { "on" } else { "off" };
        self.run(role, &["ethtool", "-K", ifname, "rx", state, "tx", state])?;
        Ok(())
    }

    /// `ip addr add CIDR dev IFNAME` in `role`.
    pub fn add_address(&self, role: &str, ifname: &str, cidr: &str) -> Result<()> {
        run_checked(Command::new("ip").args([
            "-n",
            self.ns_name(role),
            "addr",
            "add",
            cidr,
            "dev",
            ifname,
        ]))
        .map(drop)
    }

    /// `ip route add default via VIA` in `role`.
    pub fn add_default_route(&self, role: &str, via: &str) -> Result<()> {
        run_checked(Command::new("ip").args([
            "-n",
            self.ns_name(role),
            "route",
            "add",
            "default",
            "via",
            via,
        ]))
        .map(drop)
    }

    /// Sets a (per-namespace) sysctl in `role`, e.g. `net.ipv4.ip_forward`.
    pub fn sysctl(&self, role: &str, key: &str, value: &str) -> Result<()> {
        self.run(role, &["sysctl", "-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Reads a (per-namespace) sysctl in `role`, e.g. `net.ipv4.ip_forward` → `"0"`.
    pub fn sysctl_value(&self, role: &str, key: &str) -> Result<String> {
        let out = self.run(role, &["sysctl", "-n", key])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

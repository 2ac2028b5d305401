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
    fs::File,
    io,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

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

    /// The namespace name of `role`. Panics on an unknown role (a bug in the test).
    pub fn ns_name(&self, role: &str) -> &str {
        self.namespaces
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, name)| name.as_str())
            .unwrap_or_else(|| {
                let roles: Vec<_> = self.namespaces.iter().map(|(r, _)| r.as_str()).collect();
                panic!("no namespace for role {role:?}; roles: {roles:?}")
            })
    }

    /// Roles in creation order.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.namespaces.iter().map(|(r, _)| r.as_str())
    }

    /// `ip netns exec NS program`; add arguments, stdio and env as usual.
    pub fn cmd(&self, role: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns_name(role), program]);
        cmd
    }

    /// Runs `args` in `role` to completion; a non-zero exit is an error carrying the
    /// command line, stdout and stderr.
    pub fn run(&self, role: &str, args: &[&str]) -> Result<Output> {
        let (program, rest) = args.split_first().context("run: empty command")?;
        run_checked(self.cmd(role, program).args(rest))
    }

    /// Starts `args` in `role` in the background (stdin null, stdout/stderr inherited) and
    /// returns its PID. Killed on drop, or earlier with [`Topology::stop`].
    pub fn spawn(&self, role: &str, args: &[&str]) -> Result<u32> {
        let (program, rest) = args.split_first().context("spawn: empty command")?;
        let mut cmd = self.cmd(role, program);
        cmd.args(rest).stdin(Stdio::null());
        self.spawn_command(cmd)
    }

    /// Like [`Topology::spawn`] for a command built with [`Topology::cmd`], e.g. to redirect
    /// its output.
    pub fn spawn_command(&self, mut cmd: Command) -> Result<u32> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning `{}`", cmdline(&cmd)))?;
        // `ip netns exec` execs the program in place (no fork), so this is its PID.
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        Ok(pid)
    }

    /// Kills (SIGKILL) and reaps a process started with [`Topology::spawn`].
    pub fn stop(&self, pid: u32) -> Result<()> {
        let mut children = self.children.lock().unwrap();
        let index = children
            .iter()
            .position(|c| c.id() == pid)
            .with_context(|| format!("pid {pid} was not spawned by this topology"))?;
        let mut child = children.swap_remove(index);
        kill_and_reap(&mut child).with_context(|| format!("stopping pid {pid}"))
    }

    /// Runs `f` on a new thread that has entered `role`'s network namespace, and returns its
    /// result (a panic in `f` is passed on). Sockets created there stay in that namespace
    /// wherever they are used later; XDP attaches there.
    pub fn in_ns<T: Send>(&self, role: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = netns_path(self.ns_name(role));
        std::thread::scope(|s| {
            s.spawn(move || {
                enter_netns(&path).unwrap_or_else(|e| panic!("{e:#}"));
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A long-lived thread in `role`'s namespace (e.g. a server or a tokio runtime: threads
    /// it spawns inherit the namespace). The namespace must outlive the thread's sockets'
    /// use; joining is up to the caller.
    pub fn thread_in_ns<T: Send + 'static>(
        &self,
        role: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = netns_path(self.ns_name(role));
        std::thread::spawn(move || {
            enter_netns(&path).unwrap_or_else(|e| panic!("{e:#}"));
            f()
        })
    }

    /// Waits until something in `role` listens on TCP `port` (any address), e.g. a server
    /// started with [`Topology::spawn`]. Polls `ss` every 20 ms.
    pub fn wait_for_tcp_listen(&self, role: &str, port: u16, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let filter = format!("sport = :{port}");
        loop {
            let out = self.run(role, &["ss", "-Hltn", &filter])?;
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "nothing listens on TCP port {port} in {} after {timeout:?}{}",
                    self.ns_name(role),
                    self.exited_children()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawned processes that have exited already, for error messages.
    fn exited_children(&self) -> String {
        let mut children = self.children.lock().unwrap();
        let mut out = String::new();
        for child in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                out += &format!("; spawned pid {} exited: {status}", child.id());
            }
        }
        out
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let children = std::mem::take(self.children.get_mut().unwrap_or_else(|p| p.into_inner()));
        for mut child in children {
            if let Err(e) = kill_and_reap(&mut child) {
                eprintln!("netns: killing spawned pid {}: {e:#}", child.id());
            }
        }
        for (_, name) in self.namespaces.iter().rev() {
            // Whatever still runs there (a daemon that forked away from its spawned parent)
            // keeps the namespace, and so its veths and addresses, alive: end it too.
            kill_namespace_processes(name);
            if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", name])) {
                eprintln!("netns: {e:#}");
            }
        }
    }
}

fn kill_and_reap(child: &mut Child) -> io::Result<()> {
    if child.try_wait()?.is_none() {
        child.kill()?;
    }
    child.wait().map(drop)
}

fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid open fd; setns only changes this thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns({path})"));
    }
    Ok(())
}

/// Deletes `fgt-<pid>-*` namespaces whose `<pid>` is no longer running: left by a test run
/// that crashed or was killed before its Drop ran. Live owners (tests running right now in
/// another process) are left alone.
fn sweep_stale_namespaces() -> Result<()> {
    let list = run_checked(Command::new("ip").args(["netns", "list"]))?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        // Lines look like `NAME` or `NAME (id: 3)`.
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(owner) = owner_pid(name) else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        eprintln!("netns: removing stale namespace {name} (pid {owner} is gone)");
        kill_namespace_processes(name);
        // Another test process may be sweeping the same namespace: losing the race is fine.
        if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", name])) {
            eprintln!("netns: {e:#}");
        }
    }
    Ok(())
}

/// The `<pid>` of a `fgt-<pid>-…` namespace name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    (!rest.is_empty()).then_some(())?;
    pid.parse().ok()
}

/// SIGKILLs every process in namespace `name` (ours: only our tests start processes in
/// `fgt-` namespaces), never this process itself. Errors are logged.
fn kill_namespace_processes(name: &str) {
    let pids = match run_checked(Command::new("ip").args(["netns", "pids", name])) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => {
            eprintln!("netns: {e:#}");
            return;
        }
    };
    let own = std::process::id() as libc::pid_t;
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
    {
        if pid == own || pid <= 1 {
            continue;
        }
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                eprintln!("netns: kill {pid} in {name}: {e}");
            }
        }
    }
}

/// Fails with a clear message when `program` is not on PATH (or in /usr/sbin, /sbin, which
/// a non-login root shell may lack on PATH but `ip netns exec` finds via execvp anyway).
fn require_program(program: &str, why: &str) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file());
    ensure!(found, "`{program}` is not installed: {why}");
    Ok(())
}

/// Runs `cmd`; a non-zero exit is an error with the command line, stdout and stderr.
fn run_checked(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running `{}`", cmdline(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\nstdout: {}\nstderr: {}",
            cmdline(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(out)
}

fn cmdline(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpListener, TcpStream},
    };

    use super::*;
    use crate::require_privileged;

    fn namespaces() -> String {
        let out = run_checked(Command::new("ip").args(["netns", "list"])).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("fgt-1234-guard-client"), Some(1234));
        assert_eq!(owner_pid("fgt-1234-"), None);
        assert_eq!(owner_pid("fgt-x-guard-client"), None);
        assert_eq!(owner_pid("other-1234-guard"), None);
    }

    #[test]
    fn bad_tag_is_refused() {
        assert!(Topology::new("a b").is_err());
        assert!(Topology::new("").is_err());
    }

    /// Client → origin through the forwarding gateway, with the client's own address seen
    /// by the origin (routed, not NATed); offload off on the veths; names as documented.
    #[test]
    fn standard_topology_routes_through_gateway() {
        if !require_privileged() {
            return;
        }
        let topo = Topology::standard("unit-std").unwrap();
        let pid = std::process::id();
        assert_eq!(topo.ns_name(CLIENT), format!("fgt-{pid}-unit-std-client"));
        assert_eq!(topo.roles().collect::<Vec<_>>(), [GATEWAY, CLIENT, ORIGIN]);

        let listener = topo.in_ns(ORIGIN, || TcpListener::bind((ORIGIN_IP, 0)).unwrap());
        let origin = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, peer) = listener.accept().unwrap();
            conn.write_all(b"hi").unwrap();
            peer
        });
        let greeting = topo.in_ns(CLIENT, || {
            let mut conn = TcpStream::connect_timeout(&origin, Duration::from_secs(2)).unwrap();
            let mut buf = String::new();
            conn.read_to_string(&mut buf).unwrap();
            buf
        });
        assert_eq!(greeting, "hi");
        let peer = server.join().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(CLIENT_IP));

        for (role, ifname) in [
            (CLIENT, HOST_IF),
            (GATEWAY, GATEWAY_PUBLIC_IF),
            (GATEWAY, GATEWAY_PRIVATE_IF),
            (ORIGIN, HOST_IF),
        ] {
            let out = topo.run(role, &["ethtool", "-k", ifname]).unwrap();
            let features = String::from_utf8_lossy(&out.stdout);
            for feature in ["rx-checksumming: off", "tx-checksumming: off"] {
                assert!(features.contains(feature), "{role}/{ifname}: {features}");
            }
        }
    }

    /// The field layout: forwarding off, bridges with both hosts enslaved, default
    /// offloads; hosts reach their bridge's address, but not each other across the gateway.
    #[test]
    fn field_topology_is_an_ordinary_gateway() {
        if !require_privileged() {
            return;
        }
        let topo = Topology::field("unit-field").unwrap();
        assert_eq!(
            topo.roles().collect::<Vec<_>>(),
            [GATEWAY, CLIENT, CLIENT2, ORIGIN, ORIGIN2]
        );
        for key in [
            "net.ipv4.ip_forward",
            "net.ipv4.conf.all.forwarding",
            "net.ipv4.conf.brc0.forwarding",
            "net.ipv4.conf.bro0.forwarding",
        ] {
            assert_eq!(topo.sysctl_value(GATEWAY, key).unwrap(), "0", "{key}");
        }
        for (bridge, ports) in [
            (FIELD_CLIENT_BRIDGE, FIELD_CLIENT_PORTS),
            (FIELD_ORIGIN_BRIDGE, FIELD_ORIGIN_PORTS),
        ] {
            let out = topo
                .run(GATEWAY, &["ip", "-o", "link", "show", "master", bridge])
                .unwrap();
            let links = String::from_utf8_lossy(&out.stdout);
            for port in ports {
                assert!(links.contains(&format!("{port}@")), "{bridge}: {links}");
            }
        }
        for (role, ifname) in [
            (CLIENT, HOST_IF),
            (ORIGIN2, HOST_IF),
            (GATEWAY, FIELD_CLIENT_PORTS[0]),
            (GATEWAY, FIELD_ORIGIN_PORTS[1]),
        ] {
            let out = topo.run(role, &["ethtool", "-k", ifname]).unwrap();
            let features = String::from_utf8_lossy(&out.stdout);
            for feature in ["rx-checksumming: on", "tx-checksumming: on"] {
                assert!(features.contains(feature), "{role}/{ifname}: {features}");
            }
        }
        for (role, target) in [
            (CLIENT, GATEWAY_PUBLIC_IP),
            (CLIENT2, GATEWAY_PUBLIC_IP),
            (ORIGIN, GATEWAY_PRIVATE_IP),
            (ORIGIN2, GATEWAY_PRIVATE_IP),
        ] {
            topo.run(role, &["ping", "-c", "1", "-W", "2", &target.to_string()])
                .unwrap();
        }
        let listener = topo.in_ns(ORIGIN2, || TcpListener::bind((ORIGIN2_IP, 0)).unwrap());
        let target = listener.local_addr().unwrap();
        let crossed = topo.in_ns(CLIENT2, || {
            TcpStream::connect_timeout(&target, Duration::from_secs(1))
        });
        assert!(
            crossed.is_err(),
            "forwarding is off, yet {target} was reached"
        );
    }

    /// An extra host reaches the gateway's public address through its own veth.
    #[test]
    fn add_host_routes_via_gateway() {
        if !require_privileged() {
            return;
        }
        let mut topo = Topology::standard("unit-host").unwrap();
        topo.add_host("attacker", "pub1", "192.0.2.1/24", "192.0.2.66/24")
            .unwrap();
        let listener = topo.in_ns(GATEWAY, || {
            TcpListener::bind((GATEWAY_PUBLIC_IP, 0)).unwrap()
        });
        let target = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || listener.accept().unwrap().1);
        topo.in_ns("attacker", || {
            TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap()
        });
        let peer: SocketAddr = server.join().unwrap();
        assert_eq!(peer.ip().to_string(), "192.0.2.66");
    }

    /// in_ns really switches namespaces: eth0/pub0 exist there, not in the root namespace.
    #[test]
    fn in_ns_enters_the_namespace() {
        if !require_privileged() {
            return;
        }
        let topo = Topology::standard("unit-inns").unwrap();
        let index = |name: &str| {
            let name = std::ffi::CString::new(name).unwrap();
            // SAFETY: a valid NUL-terminated string.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        };
        assert_ne!(topo.in_ns(GATEWAY, || index("pub0")), 0);
        assert_ne!(topo.in_ns(CLIENT, || index("eth0")), 0);
        assert_eq!(topo.in_ns(CLIENT, || index("pub0")), 0);
        assert_eq!(index("pub0"), 0);
    }

    /// run() reports stderr on failure; spawn()ed servers are found by wait_for_tcp_listen
    /// and killed on drop, and the namespaces are gone afterwards.
    #[test]
    fn spawn_wait_and_cleanup() {
        if !require_privileged() {
            return;
        }
        let topo = Topology::standard("unit-spawn").unwrap();
        let err = topo
            .run(CLIENT, &["ip", "link", "show", "nosuchdev"])
            .unwrap_err();
        assert!(format!("{err:#}").contains("nosuchdev"), "{err:#}");

        let server = topo.spawn(ORIGIN, &["nc", "-lk", "7021"]).unwrap();
        let sleeper = topo.spawn(CLIENT, &["sleep", "1000"]).unwrap();
        topo.wait_for_tcp_listen(ORIGIN, 7021, Duration::from_secs(5))
            .unwrap();
        // The PID is the program's own, not an `ip` wrapper's.
        let comm = std::fs::read_to_string(format!("/proc/{server}/comm")).unwrap();
        assert!(comm.starts_with("nc"), "{comm}");
        assert!(
            topo.wait_for_tcp_listen(CLIENT, 7021, Duration::from_millis(100))
                .is_err()
        );
        topo.stop(sleeper).unwrap();
        assert!(!Path::new(&format!("/proc/{sleeper}")).exists());

        let names: Vec<String> = topo.roles().map(|r| topo.ns_name(r).to_owned()).collect();
        drop(topo);
        assert!(!Path::new(&format!("/proc/{server}")).exists());
        let after = namespaces();
        for name in names {
            assert!(!after.contains(&name), "{name} still exists: {after}");
        }
    }

    /// A namespace left by a dead test process is deleted (its processes killed) by the
    /// next Topology::new; one owned by a live process is kept.
    #[test]
    fn sweep_removes_namespaces_of_dead_runs() {
        if !require_privileged() {
            return;
        }
        let mut gone = Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let dead_pid = gone.id();
        assert!(!Path::new(&format!("/proc/{dead_pid}")).exists());
        let stale = format!("fgt-{dead_pid}-unit-sweep-stale");
        let live = format!("fgt-{}-unit-sweep-live", std::process::id());
        for name in [&stale, &live] {
            run_checked(Command::new("ip").args(["netns", "add", name])).unwrap();
        }
        let mut orphan = Command::new("ip")
            .args(["netns", "exec", &stale, "sleep", "1000"])
            .spawn()
            .unwrap();
        // Wait until the sleeper is inside the namespace, or the sweep cannot see it.
        let start = Instant::now();
        while run_checked(Command::new("ip").args(["netns", "pids", &stale]))
            .unwrap()
            .stdout
            .is_empty()
        {
            assert!(start.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        }

        let _topo = Topology::new("unit-sweep").unwrap();
        let after = namespaces();
        run_checked(Command::new("ip").args(["netns", "del", &live])).unwrap();
        // SIGKILL is asynchronous: poll, and never leave the sleeper behind on failure.
        let start = Instant::now();
        let status = loop {
            if let Some(status) = orphan.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(5) {
                kill_and_reap(&mut orphan).unwrap();
                panic!("the sweep did not kill the process in {stale}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!after.contains(&stale), "{after}");
        assert!(after.contains(&live), "{after}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}

//! `ftp-guard guard`: runs the XDP data-port guard on its own, with leases given on the
//! command line. A diagnostic tool (and the first stage of the demo): it shows what the
//! kernel drops and passes without the control-channel proxy in the loop.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::bpf::{Bpf, Counters, Lease, MapSizes, ProtectedRange, XdpAttach};
use crate::config::PortRange;

#[derive(Debug, Args)]
pub struct GuardArgs {
    /// Client-facing interface to attach the XDP guard to.
    #[arg(long)]
    pub interface: String,
    /// Public address whose data-port range is guarded.
    #[arg(long)]
    pub public_ip: Ipv4Addr,
    /// Guarded range, FIRST-LAST (inclusive). Ports below 1024 are refused.
    #[arg(long, value_parser = parse_port_range)]
    pub data_ports: (u16, u16),
    /// A static lease CLIENT_IP:PORT (repeatable): that client may use that data port.
    #[arg(long = "lease", value_name = "CLIENT_IP:PORT")]
    pub leases: Vec<SocketAddrV4>,
    /// XDP attach mode: auto (native, else generic), native or generic.
    #[arg(long, default_value = "auto", value_parser = parse_xdp_mode)]
    pub xdp_mode: XdpAttach,
    /// Print the counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    pub report_every: u64,
    /// Exit after this many seconds instead of waiting for SIGINT/SIGTERM.
    #[arg(long)]
    pub duration: Option<u64>,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let r: PortRange = s.parse()?;
    Ok((r.first, r.last))
}

fn parse_xdp_mode(s: &str) -> Result<XdpAttach, String> {
    match s {
        "auto" => Ok(XdpAttach::Auto),
        "native" => Ok(XdpAttach::Native),
        "generic" => Ok(XdpAttach::Generic),
        _ => Err(format!("`{s}`: expected auto, native or generic")),
    }
}

pub async fn run(args: GuardArgs) -> anyhow::Result<()> {
    let (first_port, last_port) = args.data_ports;
    let mut kernel = Bpf::load(MapSizes::default())?;
    kernel.set_protected_ranges(&[ProtectedRange {
        public_ip: args.public_ip,
        first_port,
        last_port,
        nat_ip: None,
        active_port_20: false,
    }])?;
    for lease in &args.leases {
        if !(first_port..=last_port).contains(&lease.port()) {
            bail!("lease {lease}: port outside --data-ports {first_port}-{last_port}");
        }
        kernel.insert_lease(&Lease::admit(
            *lease.ip(),
            SocketAddrV4::new(args.public_ip, lease.port()),
        ))?;
    }
    let mode = kernel
        .attach_guard(&args.interface, args.xdp_mode)
        .with_context(|| format!("guarding {}", args.interface))?;
    tracing::info!(
        interface = %args.interface,
        %mode,
        public_ip = %args.public_ip,
        data_ports = %format!("{first_port}-{last_port}"),
        leases = args.leases.len(),
        "data-port guard attached"
    );
    // Machine-readable line for scripts (the demo and tests wait for it).
    println!("ready mode={mode}");

    let deadline = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    let reports = async {
        if args.report_every == 0 {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(args.report_every));
        tick.tick().await;
        loop {
            tick.tick().await;
            match kernel.counters() {
                Ok(c) => print_counters(&c),
                Err(e) => tracing::warn!(error = %e, "reading counters failed"),
            }
        }
    };
    tokio::select! {
        () = deadline => {}
        () = reports => {}
        r = shutdown_signal() => r?,
    }
    print_counters(&kernel.counters()?);
    tracing::info!(interface = %args.interface, "detaching the data-port guard");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// One line per counter: `counter NAME VALUE (pass|drop)`, stable for scripts.
pub fn print_counters(counters: &Counters) {
    for (counter, value) in &counters.0 {
        let verdict = if counter.is_drop() { "drop" } else { "pass" };
        println!("counter {:<22} {value:>10} {verdict}", counter.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("40000-40099"), Ok((40000, 40099)));
        assert_eq!(parse_port_range("40000-40000"), Ok((40000, 40000)));
        for bad in ["40000", "1000-2000", "5-4", "a-b", "40000-70000", ""] {
            assert!(parse_port_range(bad).is_err(), "{bad} accepted");
        }
    }
}

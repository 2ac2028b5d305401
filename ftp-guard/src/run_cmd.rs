//! `ftp-guard run` and `ftp-guard check`: the daemon and its config check.
use std::path::PathBuf;

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tracing::{error, info};

use crate::{
    config::{self, Config},
    gateway::Gateway,
    guard_cmd::print_counters,
};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Configuration file.
    #[arg(long, short, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
}

/// Validates the file; the error says which key on which line is wrong.
pub fn check(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    println!(
        "{}: ok ({} service{})",
        args.config.display(),
        config.services.len(),
        if config.services.len() == 1 { "" } else { "s" }
    );
    for s in config.services() {
        println!(
            "  {}: {} -> {} public {} data ports {} ({:?})",
            s.name,
            s.listen,
            s.origin,
            s.public_ip(),
            s.data_ports,
            s.dataplane
        );
    }
    Ok(())
}

/// Runs every service until SIGTERM (graceful: up to `shutdown_grace_secs` for sessions
/// and transfers to finish) or SIGINT (at once); SIGHUP reloads the configuration.
pub async fn run(args: &ConfigArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let config = Config::load(&args.config)?;
    let mut gateway = Gateway::start(&config).await?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Machine-readable line for scripts (the demo and tests wait for it).
    println!("ready services={}", gateway.services().len());
    let grace = loop {
        tokio::select! {
            _ = hup.recv() => match Config::load(&args.config) {
                Ok(new) => {
                    if let Err(e) = gateway.reload(new).await {
                        error!("reload failed: {e:#}; the previous configuration stays in force");
                    }
                }
                Err(e) => error!("reload refused: {e}; the previous configuration stays in force"),
            },
            _ = term.recv() => {
                info!(grace_secs = config.shutdown_grace_secs, "SIGTERM: stopping gracefully");
                break Duration::from_secs(config.shutdown_grace_secs);
            }
            _ = int.recv() => {
                info!("SIGINT: stopping now");
                break Duration::ZERO;
            }
        }
    };
    if let Some(bpf) = gateway.bpf() {
        let counters = bpf.lock().counters();
        if let Ok(counters) = counters {
            print_counters(&counters);
        }
    }
    gateway.shutdown(grace).await;
    Ok(())
}

/// Removes the maps and program links pinned under the configuration's `pin_path`.
pub fn unpin(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let Some(dir) = config.pin_path else {
        anyhow::bail!(
            "{}: no pin_path configured: nothing is pinned",
            args.config.display()
        );
    };
    let removed = crate::bpf::unpin(&dir)?;
    println!("{}: removed {removed} pinned objects", dir.display());
    Ok(())
}

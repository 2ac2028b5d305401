//! `ftp-guard run` and `ftp-guard check`: the daemon and its config check.
use std::path::PathBuf;

use clap::Args;
use tracing::info;

use crate::{
    config::{self, Config},
    gateway::Gateway,
    guard_cmd::{print_counters, shutdown_signal},
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

/// Runs every service until SIGINT or SIGTERM.
pub async fn run(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let gateway = Gateway::start(&config).await?;
    // Machine-readable line for scripts (the demo and tests wait for it).
    println!("ready services={}", gateway.services().len());
    shutdown_signal().await?;
    info!("shutting down");
    if let Some(kernel) = gateway.kernel() {
        let kernel = kernel.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(counters) = kernel.counters() {
            print_counters(&counters);
        }
    }
    gateway.shutdown().await;
    Ok(())
}

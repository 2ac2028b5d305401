//! `ftp-guard run` and `ftp-guard check`: the daemon and its config check.
use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::Args;
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::info;

use crate::{
    config::{self, Config, DataplaneKind},
    dataplane::{
        Dataplane,
        kernel::{self as kernel_path, KernelDataplane, KernelSettings},
        userspace::{RelaySettings, UserspaceRelay},
    },
    guard_cmd::shutdown_signal,
    proxy::{self, ServiceContext},
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
    let sessions = Arc::new(Semaphore::new(config.max_sessions));
    let kernel_services: Vec<_> = config
        .services()
        .filter(|s| s.dataplane == DataplaneKind::Kernel)
        .collect();
    // Dropped at the end of run: that detaches the programs.
    let kernel = if kernel_services.is_empty() {
        None
    } else {
        Some(kernel_path::setup(&kernel_services, config.max_leases)?)
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for service in config.services() {
        let listener = TcpListener::bind(service.listen).await.with_context(|| {
            format!(
                "service `{}`: cannot listen on {}",
                service.name, service.listen
            )
        })?;
        let dataplane: Arc<dyn Dataplane> = match service.dataplane {
            DataplaneKind::Kernel => {
                let setup = kernel.as_ref().expect("set up for kernel services");
                let nat_ip = setup
                    .nat_ips
                    .iter()
                    .find(|(name, _)| *name == service.name)
                    .map(|(_, ip)| *ip)
                    .expect("one per kernel service");
                KernelDataplane::start(
                    setup.kernel.clone(),
                    KernelSettings {
                        public_ip: service.public_ip(),
                        nat_ip,
                        ports: service.data_ports,
                        lease_ttl: service.lease_ttl(),
                        flow_idle_timeout: service.data_idle_timeout(),
                    },
                )
            }
            DataplaneKind::Userspace => Arc::new(UserspaceRelay::new(RelaySettings {
                bind_ip: *service.listen.ip(),
                ports: service.data_ports,
                lease_ttl: service.lease_ttl(),
                connect_timeout: service.connect_timeout(),
            })),
        };
        info!(
            service = %service.name,
            listen = %service.listen,
            origin = %service.origin,
            public_ip = %service.public_ip(),
            data_ports = %service.data_ports,
            dataplane = ?service.dataplane,
            "service ready"
        );
        let ctx = Arc::new(ServiceContext {
            service: service.clone(),
            dataplane,
            sessions: sessions.clone(),
        });
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(proxy::serve(listener, ctx, async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    // Machine-readable line for scripts (the demo and tests wait for it).
    println!("ready services={}", tasks.len());
    shutdown_signal().await?;
    info!("shutting down");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

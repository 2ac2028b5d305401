//! A running gateway: every service of a configuration with its listener, dataplane and
//! proxy task, and the kernel path when a service uses it. `ftp-guard run` is this plus
//! signal handling; tests and benchmarks start it in-process.
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tracing::info;

use crate::{
    config::{Config, DataplaneKind},
    dataplane::{
        Dataplane,
        kernel::{self as kernel_path, KernelDataplane, KernelSettings},
        userspace::{RelaySettings, UserspaceRelay},
    },
    kernel::Kernel,
    proxy::{self, ServiceContext},
};

pub struct Gateway {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The kernel path's object (programs stay attached while it lives).
    kernel: Option<Arc<Mutex<Kernel>>>,
    services: Vec<Arc<ServiceContext>>,
}

impl Gateway {
    /// Binds every service's listener, sets up the kernel path if needed and starts
    /// accepting. Must run inside a tokio runtime.
    pub async fn start(config: &Config) -> anyhow::Result<Gateway> {
        let sessions = Arc::new(Semaphore::new(config.max_sessions));
        let kernel_services: Vec<_> = config
            .services()
            .filter(|s| s.dataplane == DataplaneKind::Kernel)
            .collect();
        let kernel = if kernel_services.is_empty() {
            None
        } else {
            Some(kernel_path::setup(&kernel_services, config.max_leases)?)
        };
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let mut services = Vec::new();
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
                            active_port_20: service.active_from_port_20,
                            ports: service.data_ports,
                            lease_ttl: service.lease_ttl(),
                            flow_idle_timeout: service.data_idle_timeout(),
                        },
                    )
                }
                DataplaneKind::Userspace => Arc::new(UserspaceRelay::new(RelaySettings {
                    bind_ip: *service.listen.ip(),
                    origin_side_ip: match service.nat_ip {
                        Some(ip) => ip,
                        None => crate::dataplane::origin_side_ip(*service.origin.ip())
                            .with_context(|| {
                                format!(
                                    "service `{}`: no route to {}",
                                    service.name, service.origin
                                )
                            })?,
                    },
                    active_port_20: service.active_from_port_20,
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
            services.push(ctx.clone());
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(proxy::serve(listener, ctx, async move {
                let _ = stop.wait_for(|s| *s).await;
            })));
        }
        Ok(Gateway {
            stop,
            tasks,
            kernel: kernel.map(|k| k.kernel),
            services,
        })
    }

    /// The kernel path's maps and counters, when a service uses it.
    pub fn kernel(&self) -> Option<&Arc<Mutex<Kernel>>> {
        self.kernel.as_ref()
    }

    pub fn services(&self) -> &[Arc<ServiceContext>] {
        &self.services
    }

    /// Stops accepting; sessions under way end with the runtime.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        info!("gateway stopped");
    }
}

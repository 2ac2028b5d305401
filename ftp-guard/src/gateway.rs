//! A running gateway: every service of a configuration with its listener, dataplane and
//! proxy task, the kernel path when a service uses it, and the admin endpoint. `ftp-guard
//! run` is this plus signal handling; tests and benchmarks start it in-process.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    admin::{self, AdminState},
    audit::AuditLog,
    bpf::{self, Provisioned},
    config::{Config, DataplaneKind, Service},
    dataplane::{
        DataTimeouts, Dataplane, Leftovers,
        kernel::{KernelDataplane, KernelSettings},
        userspace::{RelaySettings, UserspaceRelay},
    },
    metrics::{Metrics, Sources},
    policy::bans::{BanReason, BanSink, Bans, ktime_ns},
    proxy::{self, ServiceContext, SessionSlots},
    sync::{LockUnpoisoned as _, RwLockUnpoisoned as _},
};

/// The admin token the configuration names, read now (start and reload).
fn admin_token(config: &Config) -> anyhow::Result<Option<String>> {
    config.admin_token_path().map(admin::read_token).transpose()
}

/// `listen`: where the endpoint really listens (a reload keeps the first address).
fn warn_if_admin_exposed(listen: std::net::SocketAddr, config: &Config) {
    if let Some(warning) = admin::exposure_warning(listen, config.admin_token_file.is_some()) {
        warn!("{warning}");
    }
}

/// The sink bans are mirrored into once the kernel path is set up: the programs' ban
/// map, so a banned address's packets to every protected endpoint are dropped in XDP/TC.
fn kernel_ban_sink(kernel: &Provisioned) -> Box<dyn BanSink> {
    Box::new(KernelBanSink(kernel.bpf.clone()))
}

/// Bans written to the programs' `BANS` map. Called with the ban tracker's lock held: the
/// BPF lock is taken after it (and never the other way round).
struct KernelBanSink(bpf::Handle);

impl BanSink for KernelBanSink {
    fn ban(&mut self, address: std::net::IpAddr, until: std::time::Instant, reason: BanReason) {
        let written = self
            .0
            .lock()
            .insert_ban(address, ktime_ns(until), reason.code());
        if let Err(e) = written {
            warn!(%address, error = %e, "cannot write a ban to the kernel's map: refused in userspace only");
        }
    }

    fn unban(&mut self, address: std::net::IpAddr) {
        if let Err(e) = self.0.lock().remove_ban(address) {
            warn!(%address, error = %e, "cannot remove a ban from the kernel's map");
        }
    }
}

/// One service accepting clients.
struct Running {
    ctx: Arc<ServiceContext>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<TcpListener>,
}

impl Running {
    /// Stops accepting and returns the listener; sessions under way go on.
    async fn stop(self) -> Option<TcpListener> {
        let _ = self.stop.send(());
        self.task.await.ok()
    }
}

pub struct Gateway {
    config: Config,
    sessions: Arc<SessionSlots>,
    metrics: Arc<Metrics>,
    sources: Arc<Sources>,
    kernel: Option<Provisioned>,
    /// The ban list every service enforces (and adds to); it outlives reloads.
    bans: Arc<Bans>,
    running: Vec<Running>,
    admin: Arc<AdminState>,
    admin_task: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    audit: Arc<AuditLog>,
}

impl Gateway {
    /// Binds every service's listener and the admin endpoint, sets up the kernel path if
    /// needed and starts accepting. Must run inside a tokio runtime.
    pub async fn start(config: &Config) -> anyhow::Result<Gateway> {
        let metrics = Arc::new(Metrics::new());
        let sources = Arc::new(Sources::default());
        let admin = Arc::new(AdminState::new(
            metrics.registry(sources.clone()),
            admin::Limits::default(),
        ));
        admin.set_token(admin_token(config)?);
        let audit = AuditLog::start(config.audit_settings(), metrics.audit_dropped.clone())?;
        let mut gateway = Gateway {
            config: config.clone(),
            sessions: SessionSlots::new(config.max_sessions),
            metrics,
            sources,
            kernel: None,
            bans: Arc::new(Bans::default()),
            running: Vec::new(),
            admin: admin.clone(),
            admin_task: None,
            audit: Arc::new(audit),
        };
        warn_if_fd_limit_too_low(config);
        gateway.setup_kernel(config)?;
        // What pinned maps hold at process start is a previous process's.
        let leftovers = if config.pin_path.is_some() {
            Leftovers::Adopt
        } else {
            Leftovers::Leave
        };
        for service in config.services() {
            let running = gateway
                .start_service(service, None, None, leftovers)
                .await?;
            gateway.running.push(running);
        }
        gateway.publish();
        let listener = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("admin_listen: cannot listen on {}", config.admin_listen))?;
        info!(listen = %config.admin_listen, "admin endpoint ready (/metrics /healthz /readyz /status)");
        warn_if_admin_exposed(config.admin_listen, config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(admin::serve(listener, admin, async move {
            let _ = stopped.await;
        }));
        gateway.admin_task = Some((stop, task));
        Ok(gateway)
    }

    /// Loads the kernel path for the config's kernel services and guarded relays (if any
    /// and not yet loaded), or updates its ranges and attachments.
    fn setup_kernel(&mut self, config: &Config) -> anyhow::Result<()> {
        let kernel_services: Vec<&Service> = config.services().filter(|s| uses_kernel(s)).collect();
        if kernel_services.is_empty() {
            return Ok(());
        }
        match &mut self.kernel {
            None => {
                let provisioned = Provisioned::setup(
                    &kernel_services,
                    config.max_leases,
                    config.pin_path.as_deref(),
                )?;
                self.bans.set_sink(kernel_ban_sink(&provisioned));
                self.kernel = Some(provisioned);
            }
            Some(provisioned) => provisioned.update(&kernel_services)?,
        }
        Ok(())
    }

    fn nat_ip(&self, service: &Service) -> anyhow::Result<std::net::Ipv4Addr> {
        let setup = self.kernel.as_ref().context("kernel path not set up")?;
        setup
            .nat_ips
            .iter()
            .find(|(name, _)| *name == service.name)
            .map(|(_, ip)| *ip)
            .with_context(|| format!("service `{}`: no NAT address", service.name))
    }

    fn dataplane(
        &self,
        service: &Service,
        leftovers: Leftovers,
    ) -> anyhow::Result<Arc<dyn Dataplane>> {
        let addresses = service.ipv4()?;
        Ok(match service.dataplane {
            DataplaneKind::Kernel => {
                let setup = self.kernel.as_ref().context("kernel path not set up")?;
                KernelDataplane::start(
                    setup.bpf.clone(),
                    &setup.events,
                    KernelSettings {
                        public_ip: addresses.public_ip,
                        nat_ip: self.nat_ip(service)?,
                        active_port_20: service.active_from_port_20,
                        ports: service.data_ports,
                        origin_ifindex: service
                            .origin_interface
                            .as_deref()
                            .or(service.client_interface.as_deref())
                            .and_then(bpf::interface_index)
                            .unwrap_or(0),
                        client_ifindex: service
                            .client_interface
                            .as_deref()
                            .and_then(bpf::interface_index)
                            .unwrap_or(0),
                        mss_max: service.data_mss_max(),
                        active_origin_port_20_only: service.active_origin_port_20_only,
                    },
                    DataTimeouts::of(service),
                    leftovers,
                )
            }
            DataplaneKind::Userspace => {
                let relay = UserspaceRelay::new(
                    RelaySettings {
                        bind_ip: *addresses.listen.ip(),
                        origin_side_ip: match addresses.nat_ip {
                            Some(ip) => ip,
                            None => {
                                bpf::origin_side_ip(*addresses.origin.ip()).with_context(|| {
                                    format!(
                                        "service `{}`: no route to {}",
                                        service.name, service.origin
                                    )
                                })?
                            }
                        },
                        active_port_20: service.active_from_port_20,
                        ports: service.data_ports,
                        public_ip: addresses.public_ip,
                    },
                    DataTimeouts::of(service),
                );
                match (&self.kernel, uses_kernel(service)) {
                    (Some(setup), true) => Arc::new(relay.guarded_by(setup.bpf.clone(), leftovers)),
                    _ => Arc::new(relay),
                }
            }
        })
    }

    /// Starts one service, reusing a listener and a dataplane where given.
    async fn start_service(
        &self,
        service: &Service,
        listener: Option<TcpListener>,
        dataplane: Option<Arc<dyn Dataplane>>,
        leftovers: Leftovers,
    ) -> anyhow::Result<Running> {
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(service.listen).await.with_context(|| {
                format!(
                    "service `{}`: cannot listen on {}",
                    service.name, service.listen
                )
            })?,
        };
        let dataplane = match dataplane {
            Some(d) => d,
            None => self.dataplane(service, leftovers)?,
        };
        info!(
            service = %service.name,
            listen = %service.listen,
            origin = %service.origin,
            public_ip = %service.public_ip(),
            data_ports = %service.data_ports,
            dataplane = ?service.dataplane,
            active_mode = service.active_mode,
            "service ready"
        );
        let ctx = Arc::new(
            ServiceContext::new(
                service.clone(),
                dataplane,
                self.sessions.clone(),
                self.metrics.clone(),
            )
            .hiding_gateway_addresses(origin_interface_addresses(service))
            .sharing_bans(self.bans.clone())
            .with_audit(self.audit.clone()),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy::serve(listener, ctx.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(Running { ctx, stop, task })
    }

    /// Tells metrics and the admin endpoint what runs now.
    fn publish(&self) {
        let ctxs: Vec<Arc<ServiceContext>> = self.running.iter().map(|r| r.ctx.clone()).collect();
        *self.sources.services.lock_unpoisoned() = ctxs
            .iter()
            .map(|c| (c.service.name.clone(), Arc::downgrade(&c.dataplane)))
            .collect();
        *self.sources.policy_services.lock_unpoisoned() = policy_service_names(&ctxs);
        let bpf = self.bpf().cloned();
        *self.sources.kernel.lock_unpoisoned() = bpf.as_ref().map(bpf::Handle::downgrade);
        *self.admin.kernel.lock_unpoisoned() = bpf;
        *self.sources.bans.lock_unpoisoned() = Some(self.bans.clone());
        *self.admin.bans.lock_unpoisoned() = Some(self.bans.clone());
        *self.admin.services.write_unpoisoned() = ctxs;
    }

    /// Applies a new configuration (SIGHUP). Unchanged services keep running untouched;
    /// changed ones get a new accept loop (same listener when the address is the same),
    /// and their sessions under way finish with the old settings; removed ones stop
    /// accepting. On error the gateway keeps what it had.
    pub async fn reload(&mut self, config: Config) -> anyhow::Result<()> {
        if config.admin_listen != self.config.admin_listen {
            warn!(
                "admin_listen changes need a restart; keeping {}",
                self.config.admin_listen
            );
        }
        let token = admin_token(&config)?;
        // Reopened whatever changed: logrotate moved the file and sent SIGHUP.
        self.audit.configure(config.audit_settings()).await?;
        self.setup_kernel(&config)?;
        // Check everything that can fail before stopping anything.
        for s in config.services() {
            let old = self.running.iter().find(|r| r.ctx.service.name == s.name);
            let same_listener = old.is_some_and(|r| r.ctx.service.listen == s.listen);
            let listen_taken = self
                .running
                .iter()
                .any(|r| r.ctx.service.listen == s.listen && r.ctx.service.name != s.name);
            if !same_listener && listen_taken {
                anyhow::bail!(
                    "service `{}`: {} is still used by another service",
                    s.name,
                    s.listen
                );
            }
        }
        let mut old = std::mem::take(&mut self.running);
        let mut next = Vec::new();
        for s in config.services() {
            match old.iter().position(|r| r.ctx.service.name == s.name) {
                Some(i) if old[i].ctx.service == *s => {
                    next.push(old.swap_remove(i));
                }
                Some(i) => {
                    let previous = old.swap_remove(i);
                    // Its open sessions of clients the new ACL denies close with a 421.
                    previous.ctx.admission.set_acl(s.acl());
                    // One dataplane (one port pool) per range: new timeouts are taken in
                    // place; a new dataplane only for new ports or addresses, and it
                    // leaves the old one's leases alone.
                    let keep_dataplane = same_data_path(&previous.ctx.service, s).then(|| {
                        previous.ctx.dataplane.set_timeouts(DataTimeouts::of(s));
                        previous.ctx.dataplane.clone()
                    });
                    let same_address = previous.ctx.service.listen == s.listen;
                    let listener = previous.stop().await.filter(|_| same_address);
                    info!(service = %s.name, "service changed: restarting its accept loop");
                    next.push(
                        self.start_service(s, listener, keep_dataplane, Leftovers::Leave)
                            .await?,
                    );
                }
                None => {
                    info!(service = %s.name, "service added");
                    next.push(self.start_service(s, None, None, Leftovers::Leave).await?);
                }
            }
        }
        for removed in old {
            info!(service = %removed.ctx.service.name, "service removed: no new sessions");
            removed.stop().await;
        }
        self.running = next;
        // A lower limit takes effect as sessions end.
        self.sessions
            .resize(self.config.max_sessions, config.max_sessions);
        warn_if_fd_limit_too_low(&config);
        self.admin.set_token(token);
        warn_if_admin_exposed(self.config.admin_listen, &config);
        self.config = config;
        self.publish();
        info!(services = self.running.len(), "configuration reloaded");
        Ok(())
    }

    /// The kernel path's maps and counters, when a service uses it.
    pub fn bpf(&self) -> Option<&bpf::Handle> {
        self.kernel.as_ref().map(|k| &k.bpf)
    }

    pub fn services(&self) -> Vec<Arc<ServiceContext>> {
        self.running.iter().map(|r| r.ctx.clone()).collect()
    }

    /// Stops accepting, then waits up to `grace` for sessions and data connections to
    /// finish; then the programs are detached (when the gateway is dropped).
    pub async fn shutdown(mut self, grace: Duration) {
        let running = std::mem::take(&mut self.running);
        let contexts: Vec<_> = running.iter().map(|r| r.ctx.clone()).collect();
        for r in running {
            r.stop().await;
        }
        let deadline = Instant::now() + grace;
        loop {
            let sessions: usize = contexts.iter().map(|c| c.open_sessions().len()).sum();
            let leases: u64 = contexts.iter().map(|c| c.dataplane.snapshot().active).sum();
            if sessions == 0 && leases == 0 {
                break;
            }
            if Instant::now() >= deadline {
                warn!(
                    sessions,
                    leases, "shutdown grace over: closing what is left"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some((stop, task)) = self.admin_task.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        info!("gateway stopped");
    }
}

/// The addresses of the service's `origin_interface` (none when it has none): the origin
/// may see any of them, so replies are cleaned of them all.
fn origin_interface_addresses(service: &Service) -> Vec<std::net::IpAddr> {
    let Some(interface) = &service.origin_interface else {
        return Vec::new();
    };
    bpf::interface_addresses(interface).unwrap_or_else(|e| {
        warn!(
            service = %service.name,
            interface,
            error = %e,
            "cannot read the origin interface's addresses: replies are cleaned of the NAT \
             address and each session's own only"
        );
        Vec::new()
    })
}

/// Whether a changed service can keep its dataplane (and the leases in it): the same
/// ports on the same addresses. Timeouts ([`DataTimeouts`]) are taken in place.
fn same_data_path(a: &Service, b: &Service) -> bool {
    a.dataplane == b.dataplane
        && a.data_ports == b.data_ports
        && a.public_ip() == b.public_ip()
        && a.listen.ip() == b.listen.ip()
        && a.nat_ip == b.nat_ip
        && a.origin.ip() == b.origin.ip()
        && a.active_from_port_20 == b.active_from_port_20
        && uses_kernel(a) == uses_kernel(b)
}

/// A kernel dataplane, or a userspace relay with a client interface to guard.
/// The names of the services by their index in the kernel's policy maps (the services
/// using the kernel path, in the configuration's order: see `setup_kernel`).
pub(crate) fn policy_service_names(services: &[Arc<ServiceContext>]) -> Vec<String> {
    services
        .iter()
        .filter(|c| uses_kernel(&c.service))
        .map(|c| c.service.name.clone())
        .collect()
}

fn uses_kernel(service: &Service) -> bool {
    match service.dataplane {
        DataplaneKind::Kernel => true,
        DataplaneKind::Userspace => service.client_interface.is_some(),
    }
}

/// Open files a session can hold: its two control sockets, and with the userspace relay a
/// listener and both legs of a data connection.
fn files_per_session(config: &Config) -> u64 {
    let relay = config
        .services()
        .any(|s| s.dataplane == crate::config::DataplaneKind::Userspace);
    if relay { 5 } else { 2 }
}

/// Warns when `max_sessions` cannot be reached because the open-files limit runs out
/// first: sessions beyond it would fail with EMFILE instead of a clean 421 at the limit.
fn warn_if_fd_limit_too_low(config: &Config) {
    /// Listeners, the admin endpoint, BPF maps and programs, logs.
    const RESERVE: u64 = 64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let per = files_per_session(config);
    let needed = config.max_sessions as u64 * per + RESERVE;
    if limit.rlim_cur != libc::RLIM_INFINITY && needed > limit.rlim_cur {
        warn!(
            max_sessions = config.max_sessions,
            open_files_needed = needed,
            open_files_limit = limit.rlim_cur,
            sessions_possible = limit.rlim_cur.saturating_sub(RESERVE) / per,
            "the open-files limit is below what max_sessions needs: raise it (LimitNOFILE=, \
             ulimit -n) or lower max_sessions"
        );
    }
}

//! ftp-guard running in-process inside a topology's gateway namespace: a tokio runtime on
//! a thread that entered the namespace, so listeners, XDP/TC attachments and sysctls all
//! land there. Reloaded like SIGHUP does ([`RunningGateway::reload`]). Stopped (programs
//! detached) when dropped.
use std::{
    sync::{Arc, mpsc},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, anyhow};
use ftp_guard::{
    bpf::{Counters, Handle},
    config::Config,
    dataplane::Dataplane,
    gateway::Gateway,
};
use tokio::sync::{mpsc as async_mpsc, oneshot};

use crate::netns::{GATEWAY, Topology};

/// What the test thread asks of the gateway running on its runtime.
enum Command {
    /// Apply a configuration (as SIGHUP does); answers with the outcome.
    Reload(Box<Config>, mpsc::Sender<Result<()>>),
    /// The dataplane of each running service, in the configuration's order.
    Dataplanes(mpsc::Sender<Vec<Arc<dyn Dataplane>>>),
}

pub struct RunningGateway {
    stop: Option<oneshot::Sender<()>>,
    commands: async_mpsc::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
    bpf: Option<Handle>,
}

impl RunningGateway {
    /// Parses `config_toml` and starts every service in the gateway namespace; returns
    /// once all listeners are bound and programs attached.
    pub fn start(topo: &Topology, config_toml: &str) -> Result<RunningGateway> {
        let config = Config::parse(config_toml).map_err(|e| anyhow!("test config: {e}"))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (commands, mut command_rx) = async_mpsc::unbounded_channel::<Command>();
        let thread = topo.thread_in_ns(GATEWAY, move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("tokio runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                match Gateway::start(&config).await {
                    Ok(mut gateway) => {
                        let _ = ready_tx.send(Ok(gateway.bpf().cloned()));
                        loop {
                            tokio::select! {
                                _ = &mut stop_rx => break,
                                Some(command) = command_rx.recv() => match command {
                                    Command::Reload(config, reply) => {
                                        let _ = reply.send(gateway.reload(*config).await);
                                    }
                                    Command::Dataplanes(reply) => {
                                        let _ = reply.send(
                                            gateway
                                                .services()
                                                .iter()
                                                .map(|s| s.dataplane.clone())
                                                .collect(),
                                        );
                                    }
                                },
                            }
                        }
                        gateway.shutdown(std::time::Duration::ZERO).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        });
        let bpf = ready_rx
            .recv()
            .context("the gateway thread died while starting")??;
        Ok(RunningGateway {
            stop: Some(stop_tx),
            commands,
            thread: Some(thread),
            bpf,
        })
    }

    /// Applies `config_toml` to the running gateway, as SIGHUP does.
    pub fn reload(&self, config_toml: &str) -> Result<()> {
        let config = Config::parse(config_toml).map_err(|e| anyhow!("test config: {e}"))?;
        let (reply, answer) = mpsc::channel();
        self.commands
            .send(Command::Reload(Box::new(config), reply))
            .map_err(|_| anyhow!("the gateway is stopped"))?;
        answer
            .recv()
            .context("the gateway thread died while reloading")?
    }

    /// The dataplane of each running service, in the configuration's order.
    pub fn dataplanes(&self) -> Vec<Arc<dyn Dataplane>> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .send(Command::Dataplanes(reply))
            .expect("the gateway is stopped");
        answer.recv().expect("the gateway thread died")
    }

    /// The kernel path's object, if a service uses it.
    pub fn bpf(&self) -> Option<&Handle> {
        self.bpf.as_ref()
    }

    /// The kernel path's packet counters (all zero without a kernel path).
    pub fn counters(&self) -> Counters {
        self.bpf
            .as_ref()
            .and_then(|k| k.lock().counters().ok())
            .unwrap_or_default()
    }
}

impl RunningGateway {
    /// Stops the gateway and waits for it (programs detached, listeners closed).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Drop our handle on the kernel object first: the runtime thread's copy goes with it.
        self.bpf = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            eprintln!("the gateway thread panicked");
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

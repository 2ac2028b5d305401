//! Running things in a topology's namespaces: commands, spawned processes (reaped on
//! drop), closures on a thread inside a namespace, waiting for a listener; and the teardown
//! (processes, then namespaces) when the topology is dropped.
use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    process::{Child, Command, Output, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Topology,
    cleanup::{cmdline, kill_namespace_processes, run_checked},
};

impl Topology {
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
    pub(super) fn exited_children(&self) -> String {
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

pub(super) fn kill_and_reap(child: &mut Child) -> io::Result<()> {
    if child.try_wait()?.is_none() {
        child.kill()?;
    }
    child.wait().map(drop)
}

pub(super) fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Moves the calling thread into the network namespace at `path`.
pub(super) fn enter_netns(path: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid open fd; setns only changes this thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns({path})"));
    }
    Ok(())
}

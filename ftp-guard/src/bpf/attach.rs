//! Attaching the programs: the XDP guard (native or generic) and the TC program (tcx
//! ingress) per interface, adopting the links a previous process pinned, and detaching the
//! pinned links of interfaces no longer configured.
use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};
use ftp_guard_common::names;

use super::{Bpf, BpfError, host::ifindex, pin_error};

/// How the guard's XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpAttach {
    /// Driver (native) mode, fall back to generic (skb) mode when the driver lacks XDP.
    #[default]
    Auto,
    /// Driver mode only: fail when the driver lacks native XDP.
    Native,
    /// Generic (skb) mode: works on every device, runs later in the stack.
    Generic,
}

/// The mode an attachment ended up in, for the start-up report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
    Tcx,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "xdp-native",
            AttachedMode::Generic => "xdp-generic",
            AttachedMode::Tcx => "tcx-ingress",
        })
    }
}

impl Bpf {
    /// Lets the XDP program redirect to `interface` (done by [`Bpf::attach_guard`] for
    /// every interface it attaches to; packet fixtures use it directly).
    pub fn allow_xdp_redirect(&mut self, interface: &str) -> Result<(), BpfError> {
        let index = ifindex(interface)?;
        self.tx_ports.insert(index, index, None, 0)?;
        Ok(())
    }

    /// Attaches the guard to `interface` (in the caller thread's network namespace).
    pub fn attach_guard(
        &mut self,
        interface: &str,
        mode: XdpAttach,
    ) -> Result<AttachedMode, BpfError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(names::XDP_GUARD)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load");
        let attempts: &[(XdpMode, AttachedMode)] = match mode {
            XdpAttach::Auto => &[
                (XdpMode::Driver, AttachedMode::Native),
                (XdpMode::Skb, AttachedMode::Generic),
            ],
            XdpAttach::Native => &[(XdpMode::Driver, AttachedMode::Native)],
            XdpAttach::Generic => &[(XdpMode::Skb, AttachedMode::Generic)],
        };
        let link_path = self
            .pin
            .as_ref()
            .map(|d| d.join(format!("link-xdp-{interface}")));
        if let Some(path) = link_path.as_ref().filter(|p| p.exists()) {
            // A link left by the previous ftp-guard: swap in our program, atomically.
            let link = PinnedLink::from_pin(path).map_err(|e| pin_error(path, e))?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| pin_error(path, e))?;
            let id = program
                .attach_to_link(link)
                .map_err(|e| pin_error(path, e))?;
            // The pin keeps the link; our handle may go.
            drop(program.take_link(id));
            let mode = attempts[0].1;
            tracing::info!(interface, %mode, "adopted the pinned XDP link");
            self.attachments.push((interface.to_owned(), mode));
            return Ok(mode);
        }
        let mut last_error = None;
        for (xdp_mode, attached) in attempts {
            match program.attach(interface, *xdp_mode) {
                Ok(id) => {
                    if let Some(path) = &link_path {
                        let link = program.take_link(id).map_err(|e| pin_error(path, e))?;
                        FdLink::try_from(link)
                            .map_err(|e| pin_error(path, e))?
                            .pin(path)
                            .map_err(|e| pin_error(path, e))?;
                    }
                    // XDP can redirect only to devices that take XDP frames: in native
                    // mode those attached natively, in generic mode any device.
                    let ifindex = ifindex(interface)?;
                    self.tx_ports.insert(ifindex, ifindex, None, 0)?;
                    self.attachments.push((interface.to_owned(), *attached));
                    return Ok(*attached);
                }
                Err(e) => {
                    tracing::debug!(interface, mode = %attached, error = %e, "XDP attach failed");
                    last_error = Some(e);
                }
            }
        }
        Err(BpfError::Attach {
            interface: interface.to_owned(),
            source: last_error.expect("at least one attempt"),
        })
    }

    /// Attaches the TC program to `interface`'s ingress (tcx), for devices where XDP
    /// cannot redirect (bridges, bonds) or is not wanted.
    pub fn attach_tc(&mut self, interface: &str) -> Result<AttachedMode, BpfError> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(names::TC_GUARD)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load");
        let link_path = self
            .pin
            .as_ref()
            .map(|d| d.join(format!("link-tcx-{interface}")));
        if let Some(path) = link_path.as_ref().filter(|p| p.exists()) {
            let link = PinnedLink::from_pin(path).map_err(|e| pin_error(path, e))?;
            let link = SchedClassifierLink::try_from(FdLink::from(link))
                .map_err(|e| pin_error(path, e))?;
            let id = program
                .attach_to_link(link)
                .map_err(|e| pin_error(path, e))?;
            drop(program.take_link(id));
            tracing::info!(interface, "adopted the pinned tcx link");
        } else {
            let id = program
                .attach(interface, TcAttachType::Ingress)
                .map_err(|source| BpfError::AttachTc {
                    interface: interface.to_owned(),
                    source,
                })?;
            if let Some(path) = &link_path {
                let link = program.take_link(id).map_err(|e| pin_error(path, e))?;
                FdLink::try_from(link)
                    .map_err(|e| pin_error(path, e))?
                    .pin(path)
                    .map_err(|e| pin_error(path, e))?;
            }
        }
        self.attachments
            .push((interface.to_owned(), AttachedMode::Tcx));
        Ok(AttachedMode::Tcx)
    }

    /// Where the programs are attached, in order.
    pub fn attachments(&self) -> &[(String, AttachedMode)] {
        &self.attachments
    }

    /// Unpins the links of interfaces that `configured` does not name (left by a previous
    /// process whose config did): with their last reference gone, the kernel detaches
    /// their programs. Returns the link pins removed.
    pub fn detach_unconfigured_links(&self, configured: &[&str]) -> Result<Vec<String>, BpfError> {
        let Some(dir) = &self.pin else {
            return Ok(Vec::new());
        };
        let mut detached = Vec::new();
        for entry in std::fs::read_dir(dir)
            .map_err(|e| pin_error(dir, e))?
            .flatten()
        {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Some(interface) = name
                .strip_prefix("link-xdp-")
                .or_else(|| name.strip_prefix("link-tcx-"))
            else {
                continue;
            };
            if configured.contains(&interface) {
                continue;
            }
            std::fs::remove_file(entry.path()).map_err(|e| pin_error(&entry.path(), e))?;
            detached.push(name);
        }
        detached.sort();
        Ok(detached)
    }
}

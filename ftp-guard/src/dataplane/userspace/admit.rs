//! The relay's admissions through the guard (the kernel path's programs on the client
//! interface): an admit-only lease per passive lease, keyed by (client, public address,
//! port), written when the lease is installed and deleted when it is over, so that only
//! the lease's client reaches the relay's listener on that port.
use std::net::{Ipv4Addr, SocketAddrV4};

use tracing::{info, warn};

use super::UserspaceRelay;
use crate::{
    bpf::{BpfError, Handle, Lease},
    dataplane::Leftovers,
};

impl UserspaceRelay {
    /// Admits each passive lease's client through `guard` (the XDP/TC programs on the
    /// client interface, which drop everything else to the data range). At process start
    /// with pinned maps ([`Leftovers::Adopt`]) the admissions a previous process left in
    /// this range are removed first: their listeners died with it.
    pub fn guarded_by(mut self, guard: Handle, leftovers: Leftovers) -> Self {
        if leftovers == Leftovers::Adopt {
            let mut kernel = guard.lock();
            let mut dropped = 0;
            for (peer, local) in kernel.lease_keys() {
                if *local.ip() == self.settings.public_ip
                    && self.settings.ports.contains(local.port())
                    && matches!(kernel.remove_lease(peer, local), Ok(true))
                {
                    dropped += 1;
                }
            }
            if dropped > 0 {
                info!(dropped, "removed the previous process's admit leases");
            }
        }
        self.guard = Some(guard);
        self
    }

    /// Lets `client`'s packets to the public `port` through the guard (if any).
    pub(super) fn admit(&self, client: Ipv4Addr, port: u16) -> Result<Option<Admitted>, BpfError> {
        let Some(kernel) = &self.guard else {
            return Ok(None);
        };
        let local = SocketAddrV4::new(self.settings.public_ip, port);
        kernel.lock().insert_lease(&Lease::admit(client, local))?;
        Ok(Some(Admitted {
            kernel: kernel.clone(),
            client,
            local,
        }))
    }
}

/// A client admitted through the guard to a passive lease's port: removed from the
/// guard's map when dropped (the lease is over: expired, revoked, or its connection done).
pub(super) struct Admitted {
    kernel: Handle,
    client: Ipv4Addr,
    local: SocketAddrV4,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let removed = self.kernel.lock().remove_lease(self.client, self.local);
        if let Err(e) = removed {
            warn!(client = %self.client, port = self.local.port(), error = %e, "cannot remove an admit lease from the guard");
        }
    }
}

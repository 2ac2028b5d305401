//! The ends of data connections, by lease, for whoever asked to hear of them (the audit
//! log joins a transfer's final reply with its data connection's bytes this way). Each
//! dataplane keeps one [`EndNotices`]: a watch registered at install time resolves once,
//! with the bytes carried, or with `None` when the lease ends without a connection.
use std::{collections::HashMap, sync::Mutex};

use tokio::sync::oneshot;

use super::LeaseId;
use crate::sync::LockUnpoisoned as _;

/// What one data connection carried, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataBytes {
    pub to_client: u64,
    pub to_origin: u64,
}

/// Resolves when a lease's data connection is over: its bytes, or `None` when the lease
/// ended without one (expired, revoked unused) or its dataplane went away.
pub type DataEnd = std::pin::Pin<Box<dyn std::future::Future<Output = Option<DataBytes>> + Send>>;

/// The watches registered and not yet resolved.
#[derive(Debug, Default)]
pub struct EndNotices(Mutex<HashMap<LeaseId, oneshot::Sender<DataBytes>>>);

impl EndNotices {
    /// A watch on lease `id` (one per lease: a second replaces the first).
    pub fn watch(&self, id: LeaseId) -> DataEnd {
        let (tx, rx) = oneshot::channel();
        self.0.lock_unpoisoned().insert(id, tx);
        Box::pin(async move { rx.await.ok() })
    }

    /// Lease `id`'s data connection is over, having carried `bytes`.
    pub fn ended(&self, id: LeaseId, bytes: DataBytes) {
        if let Some(tx) = self.0.lock_unpoisoned().remove(&id) {
            let _ = tx.send(bytes);
        }
    }

    /// Lease `id` is over without a data connection: its watch resolves with `None`.
    pub fn unused(&self, id: LeaseId) {
        self.0.lock_unpoisoned().remove(&id);
    }

    /// Watches not resolved yet.
    pub fn pending(&self) -> usize {
        self.0.lock_unpoisoned().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_watch_resolves_once_with_its_end() {
        let notices = EndNotices::default();
        let carried = notices.watch(LeaseId(1));
        let unused = notices.watch(LeaseId(2));
        let bytes = DataBytes {
            to_client: 10,
            to_origin: 3,
        };
        notices.ended(LeaseId(1), bytes);
        notices.unused(LeaseId(2));
        // Ends of leases nobody watches are ignored.
        notices.ended(LeaseId(3), bytes);
        assert_eq!(
            (carried.await, unused.await, notices.pending()),
            (Some(bytes), None, 0)
        );
    }
}

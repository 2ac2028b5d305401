//! Locking that survives a panic elsewhere: the one place ftp-guard decides what a
//! poisoned `std::sync::Mutex` or `RwLock` means.
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `lock()` that recovers a poisoned mutex instead of failing. A panic in one task (one
/// session, one lease's bookkeeping) must not take down every other user of shared state,
/// and every critical section in ftp-guard leaves its data usable at each step: the guard
/// is taken back as it is.
pub trait LockUnpoisoned<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T> LockUnpoisoned<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `read()` and `write()` that recover a poisoned `RwLock`, as [`LockUnpoisoned`] does.
pub trait RwLockUnpoisoned<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockUnpoisoned<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_is_taken_back_with_its_value() {
        let shared = std::sync::Arc::new(Mutex::new(vec![1, 2]));
        let in_thread = shared.clone();
        let panicked = std::thread::spawn(move || {
            let mut v = in_thread.lock().unwrap();
            v.push(3);
            panic!("poison it");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.is_poisoned());
        assert_eq!(*shared.lock_unpoisoned(), vec![1, 2, 3]);
    }

    #[test]
    fn a_poisoned_rwlock_is_taken_back_with_its_value() {
        let shared = std::sync::Arc::new(RwLock::new(1));
        let in_thread = shared.clone();
        let panicked = std::thread::spawn(move || {
            let mut value = in_thread.write().unwrap();
            *value = 2;
            panic!("poison it");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.is_poisoned());
        assert_eq!(*shared.read_unpoisoned(), 2);
        *shared.write_unpoisoned() = 3;
        assert_eq!(*shared.read_unpoisoned(), 3);
    }
}

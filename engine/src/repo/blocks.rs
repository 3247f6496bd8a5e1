//! Decoded bundles, kept for a while: restoring a directory of small files
//! reads one bundle for many files, and each bundle should be fetched and
//! decompressed once, not once per member.
//!
//! The cache is small and bounded: a few bundles of about 2 MiB per worker
//! thread, 32 at most, none over 4 MiB (see `read.rs`). Two threads that
//! want the same bundle at once wait for one decode rather than doing it
//! twice.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use haul_formats::Id;

/// Where a stored blob starts: (pack, offset).
pub(crate) type BlockKey = (Id, u32);

type Cell = Arc<Mutex<Option<Arc<Vec<u8>>>>>;

struct Slot {
    key: BlockKey,
    used: u64,
    cell: Cell,
}

pub(crate) struct BlockCache {
    slots: Mutex<Vec<Slot>>,
    cap: usize,
    tick: AtomicU64,
}

impl BlockCache {
    pub(crate) fn new() -> BlockCache {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        BlockCache {
            slots: Mutex::new(Vec::new()),
            cap: (4 * cpus + 4).clamp(8, 32),
            tick: AtomicU64::new(0),
        }
    }

    /// The plaintext of the stored blob at `key`, decoded by `load` unless it
    /// is cached (or being decoded by another thread, which is waited for).
    pub(crate) fn get<E>(
        &self,
        key: BlockKey,
        load: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<Vec<u8>>, E> {
        let cell = {
            let now = self.tick.fetch_add(1, Relaxed);
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            // Offsets differ far more often than packs: compare them first.
            match slots
                .iter_mut()
                .find(|s| s.key.1 == key.1 && s.key.0 == key.0)
            {
                Some(s) => {
                    s.used = now;
                    s.cell.clone()
                }
                None => {
                    if slots.len() >= self.cap {
                        let lru = (0..slots.len())
                            .min_by_key(|&i| slots[i].used)
                            .expect("cap is at least 1");
                        slots.swap_remove(lru);
                    }
                    let cell = Cell::default();
                    slots.push(Slot {
                        key,
                        used: now,
                        cell: cell.clone(),
                    });
                    cell
                }
            }
        };
        let mut got = cell.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = &*got {
            return Ok(b.clone());
        }
        // On an error the cell stays empty, and the next caller tries again.
        let b = Arc::new(load()?);
        *got = Some(b.clone());
        Ok(b)
    }

    /// Drops `key` (a blob stored alone, which nothing else will ask for).
    pub(crate) fn forget(&self, key: BlockKey) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.key != key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_bounded_and_single_flight() {
        let c = BlockCache::new();
        let loads = AtomicU64::new(0);
        let load = |n: u8| {
            loads.fetch_add(1, Relaxed);
            Ok::<_, ()>(vec![n; 4])
        };
        let k = |i: u32| (Id::default(), i);
        assert_eq!(*c.get(k(1), || load(1)).unwrap(), vec![1; 4]);
        assert_eq!(*c.get(k(1), || load(9)).unwrap(), vec![1; 4]);
        assert_eq!(loads.load(Relaxed), 1);
        // An error is not cached.
        assert!(c.get(k(2), || Err::<Vec<u8>, ()>(())).is_err());
        assert_eq!(*c.get(k(2), || load(2)).unwrap(), vec![2; 4]);
        // The least recently used goes first; the cache never passes its cap.
        for i in 3..100 {
            c.get(k(i), || load(i as u8)).unwrap();
            c.get(k(1), || load(1)).unwrap();
        }
        assert!(c.slots.lock().unwrap().len() <= c.cap);
        assert_eq!(*c.get(k(1), || load(7)).unwrap(), vec![1; 4]);
        c.forget(k(1));
        assert_eq!(*c.get(k(1), || load(7)).unwrap(), vec![7; 4]);
        // Threads asking for one block at once decode it once.
        let c = BlockCache::new();
        let loads = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    c.get(k(5), || {
                        loads.fetch_add(1, Relaxed);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        Ok::<_, ()>(vec![5])
                    })
                    .unwrap()
                });
            }
        });
        assert_eq!(loads.load(Relaxed), 1);
    }
}

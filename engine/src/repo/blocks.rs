//! Decoded bundles, kept for a while: restoring a directory of small files
//! reads one bundle for many files, and each bundle should be fetched and
//! decompressed once, not once per member.
//!
//! The cache is small and bounded: a few bundles of about 2 MiB per worker
//! thread, 32 at most, none over 4 MiB (see `read.rs`). Two threads that
//! want the same bundle at once wait for one decode rather than doing it
//! twice.
//!
//! The buffers of dropped blocks are kept (a few) and decoded into again:
//! fresh memory for every decode cost a page fault per 4 KiB, about 2% of a
//! restore's CPU.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use haul_formats::Id;

/// Where a stored blob starts: (pack, offset).
pub(crate) type BlockKey = (Id, u32);

type Cell = Arc<Mutex<Option<Arc<Block>>>>;

/// The largest decoded bundle the cache keeps (haul writes a little over
/// 2 MiB; a data chunk is at most 4 MiB).
pub(crate) const MAX_CACHED_BLOCK: usize = 4 << 20;

/// Buffers kept for reuse at most, and the largest one kept (so no cached
/// block holds more memory than the largest it may cache).
const SPARE_MAX: usize = 8;
const SPARE_MAX_LEN: usize = MAX_CACHED_BLOCK;

/// Spare buffers, and how many are kept at most.
struct Spare(Mutex<Vec<Vec<u8>>>, std::sync::atomic::AtomicUsize);

impl Default for Spare {
    fn default() -> Spare {
        Spare(
            Mutex::default(),
            std::sync::atomic::AtomicUsize::new(SPARE_MAX),
        )
    }
}

impl Spare {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, v: Vec<u8>) {
        if v.capacity() == 0 || v.capacity() > SPARE_MAX_LEN {
            return;
        }
        let mut spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < self.1.load(Relaxed) {
            spare.push(v);
        }
    }
}

/// A decoded stored blob. Its buffer goes back to the cache's spares when
/// the last reference is dropped.
pub(crate) struct Block {
    data: Vec<u8>,
    spare: Arc<Spare>,
}

impl std::ops::Deref for Block {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.spare.give(std::mem::take(&mut self.data));
    }
}

struct Slot {
    key: BlockKey,
    used: u64,
    cell: Cell,
}

pub(crate) struct BlockCache {
    slots: Mutex<Vec<Slot>>,
    cap: std::sync::atomic::AtomicUsize,
    tick: AtomicU64,
    spare: Arc<Spare>,
}

impl BlockCache {
    pub(crate) fn new() -> BlockCache {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        BlockCache {
            slots: Mutex::new(Vec::new()),
            cap: std::sync::atomic::AtomicUsize::new((4 * cpus + 4).clamp(8, 32)),
            tick: AtomicU64::new(0),
            spare: Arc::default(),
        }
    }

    /// The plaintext of the stored blob at `key`, decoded by `load` (into
    /// the buffer it is given, which holds junk) unless it is cached (or
    /// being decoded by another thread, which is waited for).
    pub(crate) fn get<E>(
        &self,
        key: BlockKey,
        load: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Arc<Block>, E> {
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
                    let cap = self.cap.load(Relaxed).max(1);
                    while slots.len() >= cap {
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
        let mut block = Block {
            data: self.spare.take(),
            spare: self.spare.clone(),
        };
        load(&mut block.data)?;
        let b = Arc::new(block);
        *got = Some(b.clone());
        Ok(b)
    }

    /// Keeps at most `cap` blocks from now on (a reader with few threads,
    /// such as `snapshot download`, needs few, and its memory is capped).
    pub(crate) fn limit(&self, cap: usize) {
        self.cap.store(cap.max(1), Relaxed);
        let keep = cap.min(SPARE_MAX);
        self.spare.1.store(keep, Relaxed);
        let mut spare = self.spare.0.lock().unwrap_or_else(|e| e.into_inner());
        spare.truncate(keep);
    }

    /// Drops every cached block (a phase that reads no more trees).
    pub(crate) fn clear(&self) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
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
            let loads = &loads;
            move |v: &mut Vec<u8>| {
                loads.fetch_add(1, Relaxed);
                v.clear();
                v.extend_from_slice(&[n; 4]);
                Ok::<_, ()>(())
            }
        };
        let k = |i: u32| (Id::default(), i);
        assert_eq!(c.get(k(1), load(1)).unwrap()[..], [1; 4]);
        assert_eq!(c.get(k(1), load(9)).unwrap()[..], [1; 4]);
        assert_eq!(loads.load(Relaxed), 1);
        // An error is not cached.
        assert!(c.get(k(2), |_| Err::<(), ()>(())).is_err());
        assert_eq!(c.get(k(2), load(2)).unwrap()[..], [2; 4]);
        // The least recently used goes first; the cache never passes its cap.
        for i in 3..100 {
            c.get(k(i), load(i as u8)).unwrap();
            c.get(k(1), load(1)).unwrap();
        }
        assert!(c.slots.lock().unwrap().len() <= c.cap.load(Relaxed));
        assert_eq!(c.get(k(1), load(7)).unwrap()[..], [1; 4]);
        c.forget(k(1));
        assert_eq!(c.get(k(1), load(7)).unwrap()[..], [7; 4]);
        // Threads asking for one block at once decode it once.
        let c = BlockCache::new();
        let loads = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    c.get(k(5), |v| {
                        loads.fetch_add(1, Relaxed);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        v.push(5);
                        Ok::<_, ()>(())
                    })
                    .unwrap()
                });
            }
        });
        assert_eq!(loads.load(Relaxed), 1);
    }

    #[test]
    fn buffers_of_dropped_blocks_are_decoded_into_again() {
        let c = BlockCache::new();
        let k = |i: u32| (Id::default(), i);
        let fill = |n: usize| {
            move |v: &mut Vec<u8>| {
                v.clear();
                v.resize(n, 7);
                Ok::<_, ()>(())
            }
        };
        let b = c.get(k(1), fill(1000)).unwrap();
        c.forget(k(1));
        // Still referenced: its buffer is not handed out.
        c.get(k(2), |v| {
            assert_eq!(v.capacity(), 0);
            fill(10)(v)
        })
        .unwrap();
        drop(b);
        c.get(k(3), |v| {
            assert!(v.capacity() >= 1000);
            fill(10)(v)
        })
        .unwrap();
        // A buffer larger than is worth keeping is let go.
        let big = c.get(k(4), fill(SPARE_MAX_LEN + 1)).unwrap();
        c.forget(k(4));
        drop(big);
        assert!(c.spare.0.lock().unwrap().is_empty());
    }
}

//! A parallel walk over a tree of directories without recursion.
//!
//! Each directory is a task on the rayon pool. A directory's entries are
//! listed a batch at a time; while one batch is handled (its entries in
//! parallel), the rest of the listing waits as a task of its own that
//! another worker can take, so one flat directory of a million files is
//! shared out too. A subdirectory is not descended into on the spot: it
//! becomes a task, opened only when it starts, so a queued subdirectory
//! holds no handle. A directory is finished (copy applies its metadata
//! there, after its contents) once its listing and every subdirectory
//! below it are done; a count per directory says when, and finishing walks
//! up the chain of parents in a loop.
//!
//! `ordered.rs` is the walker's ordered mode: one stream, depth first and
//! by name, for archives and the wire, with file data prepared ahead.
//!
//! So no stack grows with the tree's depth (a chain of 10,000 directories
//! is a real attack on a nightly backup), and a directory being worked on
//! holds only what its visitor keeps for it until it is finished.
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

pub(crate) mod ordered;

/// A rayon pool with deep stacks (deep enough for what a worker does per entry; no walk recurses per
/// directory level).
pub(crate) fn worker_pool(jobs: usize, what: &'static str) -> io::Result<rayon::ThreadPool> {
    let jobs = if jobs == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        jobs
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .stack_size(16 << 20)
        .thread_name(move |i| format!("haul-{what}-{i}"))
        .build()
        .map_err(io::Error::other)
}

/// Waits for the result of a job spawned on the pool, running the pool's
/// pending jobs meanwhile if called on one of its threads: a thread that
/// blocked instead would hold up the jobs queued behind it, and with one
/// worker (`-j 1`) nobody else would ever run the job it waits for.
/// `None`: the job ended without sending a result.
pub(crate) fn pool_recv<T>(rx: &crossbeam_channel::Receiver<T>) -> Option<T> {
    use crossbeam_channel::{RecvTimeoutError, TryRecvError};
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
            match rx.recv_timeout(std::time::Duration::from_millis(1)) {
                Ok(v) => return Some(v),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

/// What a walk does at each directory. The walker owns the order; the
/// visitor owns the meaning.
pub(crate) trait TreeVisitor: Sync {
    /// A directory being worked on, kept until it is finished.
    type Dir: Send + Sync;
    /// Where a directory's listing stands.
    type Listing: Send;
    /// Shared by the entries of one listing (for example the source
    /// directory's handle), dropped once the listing and the subdirectories
    /// found in it no longer need it.
    type Shared: Send + Sync + Clone;
    /// One listed entry.
    type Item: Send + Sync;
    /// A subdirectory found in a listing, not yet opened.
    type Sub: Send;

    /// Appends the next batch of `dir`'s entries to `out`; returns whether
    /// more may follow. An error is reported by the visitor and ends the
    /// listing.
    fn next_batch(
        &self,
        dir: &Self::Dir,
        listing: &mut Self::Listing,
        out: &mut Vec<Self::Item>,
    ) -> bool;

    /// Handles one entry; a subdirectory is handed back, to be walked.
    fn visit(&self, dir: &Self::Dir, ctx: &Self::Shared, item: &Self::Item) -> Option<Self::Sub>;

    /// Opens a subdirectory found in `parent`: `None` if that failed (the
    /// visitor reported it), else the directory and, unless it cannot be
    /// listed, its listing.
    fn open(&self, parent: &Self::Dir, sub: Self::Sub) -> Option<Opened<Self>>;

    /// Everything in `dir` and below it is done; `parent` is the directory
    /// it was found in (`None` for the root), not yet finished itself.
    fn finish(&self, dir: &Self::Dir, parent: Option<&Self::Dir>);
}

/// [`TreeVisitor::next_batch`] for a directory read from disk: a batch of
/// its entries, and whether more may follow; a read error goes to
/// `failed` and ends the listing.
pub(crate) fn next_dir_batch(
    listing: &mut crate::sys::DirStream,
    out: &mut Vec<crate::sys::RawEntry>,
    failed: impl FnOnce(std::io::Error),
) -> bool {
    match listing.read_batch(out, crate::sys::BATCH) {
        Ok(n) => n == crate::sys::BATCH,
        Err(e) => {
            failed(e);
            false
        }
    }
}

/// A walk of directories on disk, listed a batch at a time with
/// `DirStream`: what every local walk (copy, `--verify`, the progress scan,
/// create) shares, so each says only what is its own. Every `DiskVisitor`
/// is a [`TreeVisitor`].
pub(crate) trait DiskVisitor: Sync {
    /// A directory being worked on, kept until it is finished.
    type Dir: Send + Sync;
    /// Shared by the entries of one listing (the directory's handle, or two).
    type Shared: Send + Sync + Clone;
    /// A subdirectory found, not yet opened.
    type Sub: Send;

    /// A directory's listing failed part-way; what was read is visited.
    fn list_failed(&self, dir: &Self::Dir, e: io::Error);
    /// Whether the walk is winding down: nothing more is listed.
    fn stopped(&self) -> bool {
        false
    }
    /// Puts a batch in the order its entries are visited.
    fn order(&self, _batch: &mut [crate::sys::RawEntry]) {}
    /// Handles one entry; a subdirectory is handed back, to be walked.
    fn entry(
        &self,
        dir: &Self::Dir,
        shared: &Self::Shared,
        e: &crate::sys::RawEntry,
    ) -> Option<Self::Sub>;
    /// Opens a subdirectory (`None`: that failed, and was reported).
    #[allow(clippy::type_complexity)]
    fn open_sub(
        &self,
        parent: &Self::Dir,
        sub: Self::Sub,
    ) -> Option<(Self::Dir, Option<(crate::sys::DirStream, Self::Shared)>)>;
    /// Everything in `dir` and below it is done.
    fn done(&self, dir: &Self::Dir, parent: Option<&Self::Dir>);
}

impl<T: DiskVisitor> TreeVisitor for T {
    type Dir = T::Dir;
    type Listing = crate::sys::DirStream;
    type Shared = T::Shared;
    type Item = crate::sys::RawEntry;
    type Sub = T::Sub;

    fn next_batch(
        &self,
        dir: &T::Dir,
        listing: &mut crate::sys::DirStream,
        out: &mut Vec<crate::sys::RawEntry>,
    ) -> bool {
        if self.stopped() {
            return false;
        }
        let more = next_dir_batch(listing, out, |e| self.list_failed(dir, e));
        self.order(out);
        more
    }

    fn visit(&self, dir: &T::Dir, shared: &T::Shared, e: &crate::sys::RawEntry) -> Option<T::Sub> {
        self.entry(dir, shared, e)
    }

    fn open(&self, parent: &T::Dir, sub: T::Sub) -> Option<Opened<Self>> {
        self.open_sub(parent, sub)
    }

    fn finish(&self, dir: &T::Dir, parent: Option<&T::Dir>) {
        self.done(dir, parent)
    }
}

/// An opened directory and, if it can be listed, its listing and context.
pub(crate) type Opened<V> = (
    <V as TreeVisitor>::Dir,
    Option<(<V as TreeVisitor>::Listing, <V as TreeVisitor>::Shared)>,
);

struct Node<D> {
    dir: D,
    /// Listing steps, and subdirectories, not yet done.
    pending: AtomicUsize,
    parent: Option<Arc<Node<D>>>,
}

impl<D> Drop for Node<D> {
    /// Drops the chain of parents in a loop: the default, recursive drop of
    /// a chain 10,000 directories deep would overflow the stack.
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(p) = next {
            next = match Arc::try_unwrap(p) {
                Ok(mut node) => node.parent.take(),
                Err(_) => None,
            };
        }
    }
}

/// Walks the tree below `root` on the current rayon pool (call it inside
/// `pool.install`); returns once every directory is finished.
pub(crate) fn walk<V: TreeVisitor>(v: &V, root: Opened<V>) {
    rayon::scope(|s| start(s, v, root, None));
}

fn start<'s, V: TreeVisitor>(
    s: &rayon::Scope<'s>,
    v: &'s V,
    (dir, listing): Opened<V>,
    parent: Option<Arc<Node<V::Dir>>>,
) {
    let node = Arc::new(Node {
        dir,
        pending: AtomicUsize::new(1),
        parent,
    });
    match listing {
        Some((l, ctx)) => step(s, v, node, l, ctx),
        None => release(v, node),
    }
}

/// One batch of a listing. The step holds one unit of its directory's
/// count, and gives the rest of the listing a unit of its own.
fn step<'s, V: TreeVisitor>(
    s: &rayon::Scope<'s>,
    v: &'s V,
    node: Arc<Node<V::Dir>>,
    mut listing: V::Listing,
    ctx: V::Shared,
) {
    let mut items = Vec::new();
    if v.next_batch(&node.dir, &mut listing, &mut items) {
        node.pending.fetch_add(1, Ordering::Relaxed);
        let (n, c) = (node.clone(), ctx.clone());
        s.spawn(move |s| step(s, v, n, listing, c));
    } else {
        drop(listing);
    }
    let subs: Vec<V::Sub> = items
        .par_iter()
        .filter_map(|it| v.visit(&node.dir, &ctx, it))
        .collect();
    drop(items);
    drop(ctx);
    // Pushed last, so this worker takes them first: the walk goes depth
    // first, and a directory's handles are released soon.
    for sub in subs {
        node.pending.fetch_add(1, Ordering::Relaxed);
        let n = node.clone();
        s.spawn(move |s| match v.open(&n.dir, sub) {
            Some(opened) => start(s, v, opened, Some(n)),
            None => release(v, n),
        });
    }
    release(v, node);
}

/// Gives back one unit of `node`'s count; the last one finishes it, and
/// then gives back its unit of the parent's, up the chain.
fn release<V: TreeVisitor>(v: &V, node: Arc<Node<V::Dir>>) {
    let mut cur = node;
    loop {
        if cur.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        v.finish(&cur.dir, cur.parent.as_ref().map(|p| &p.dir));
        let Some(parent) = cur.parent.clone() else {
            return;
        };
        drop(cur);
        cur = parent;
    }
}

/// The progress scan's [`TreeVisitor`]: counts entries and bytes.
struct ScanWalk<'a> {
    filter: &'a crate::filter::Filter,
    progress: &'a dyn crate::progress::Progress,
}

/// A directory found by the scan, opened when its turn comes.
struct ScanSub {
    parent: Arc<std::fs::File>,
    name: std::ffi::CString,
    rel: std::path::PathBuf,
}

impl DiskVisitor for ScanWalk<'_> {
    type Dir = std::path::PathBuf;
    type Shared = Arc<std::fs::File>;
    type Sub = ScanSub;

    /// A scan is only an estimate for the bar: unreadable parts are skipped.
    fn list_failed(&self, _: &std::path::PathBuf, _: io::Error) {}

    fn entry(
        &self,
        rel: &std::path::PathBuf,
        dir: &Arc<std::fs::File>,
        e: &crate::sys::RawEntry,
    ) -> Option<ScanSub> {
        use crate::meta::FileKind;
        let st = crate::sys::stat_at(dir, &e.name).ok()?;
        let crel = rel.join(std::ffi::OsStr::from_bytes(e.name.to_bytes()));
        let is_dir = st.kind() == FileKind::Dir;
        if self.filter.excluded(&crel, is_dir) {
            return None;
        }
        let bytes = if st.kind() == FileKind::File {
            st.size
        } else {
            0
        };
        self.progress.discovered(1, bytes);
        is_dir.then(|| ScanSub {
            parent: dir.clone(),
            name: e.name.clone(),
            rel: crel,
        })
    }

    fn open_sub(&self, _: &std::path::PathBuf, sub: ScanSub) -> Option<Opened<Self>> {
        let d = crate::sys::open_dir_at(&sub.parent, &sub.name).ok()?;
        let l = crate::sys::DirStream::new(&d).ok()?;
        Some((sub.rel, Some((l, Arc::new(d)))))
    }

    fn done(&self, _: &std::path::PathBuf, _: Option<&std::path::PathBuf>) {}
}

/// Counting-only walk for progress totals (entries and bytes), run on a
/// thread of its own beside the real work so a progress bar can show an
/// ETA: the same walk as the work's, on a pool of one.
pub(crate) fn scan(
    root: std::fs::File,
    filter: &crate::filter::Filter,
    progress: &dyn crate::progress::Progress,
) {
    let Ok(pool) = worker_pool(1, "scan") else {
        return;
    };
    let Ok(listing) = crate::sys::DirStream::new(&root) else {
        return;
    };
    let v = ScanWalk { filter, progress };
    pool.install(|| {
        walk(
            &v,
            (std::path::PathBuf::new(), Some((listing, Arc::new(root)))),
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A synthetic tree: node `i` has children `children[i]` and `leaves[i]`
    /// leaf entries; listings come in batches of 3.
    struct Synthetic {
        children: Vec<Vec<usize>>,
        leaves: Vec<usize>,
        visited: AtomicUsize,
        finished: Mutex<Vec<usize>>,
        order_ok: std::sync::atomic::AtomicBool,
        done: Vec<AtomicUsize>,
    }

    impl TreeVisitor for Synthetic {
        type Dir = usize;
        type Listing = Vec<Option<usize>>;
        type Shared = ();
        type Item = Option<usize>;
        type Sub = usize;

        fn next_batch(
            &self,
            _: &usize,
            l: &mut Self::Listing,
            out: &mut Vec<Option<usize>>,
        ) -> bool {
            let n = l.len().min(3);
            out.extend(l.drain(..n));
            !l.is_empty()
        }
        fn visit(&self, _: &usize, _: &(), item: &Option<usize>) -> Option<usize> {
            self.visited.fetch_add(1, Ordering::Relaxed);
            *item
        }
        fn open(&self, _: &usize, sub: usize) -> Option<Opened<Self>> {
            Some((sub, Some((self.listing(sub), ()))))
        }
        fn finish(&self, d: &usize, parent: Option<&usize>) {
            if let Some(&p) = parent {
                if !self.children[p].contains(d) {
                    self.order_ok.store(false, Ordering::SeqCst);
                }
            }
            // Every child must be finished before its parent.
            for &c in &self.children[*d] {
                if self.done[c].load(Ordering::SeqCst) == 0 {
                    self.order_ok.store(false, Ordering::SeqCst);
                }
            }
            self.done[*d].store(1, Ordering::SeqCst);
            self.finished.lock().unwrap().push(*d);
        }
    }

    impl Synthetic {
        fn new(children: Vec<Vec<usize>>, leaves: Vec<usize>) -> Synthetic {
            let n = children.len();
            Synthetic {
                children,
                leaves,
                visited: AtomicUsize::new(0),
                finished: Mutex::new(Vec::new()),
                order_ok: std::sync::atomic::AtomicBool::new(true),
                done: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            }
        }
        fn listing(&self, d: usize) -> Vec<Option<usize>> {
            let mut l: Vec<Option<usize>> = self.children[d].iter().map(|&c| Some(c)).collect();
            l.extend(std::iter::repeat_n(None, self.leaves[d]));
            l
        }
        fn run(&self, threads: usize) {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                // A small stack: the walk must not need a deep one.
                .stack_size(256 << 10)
                .build()
                .unwrap();
            pool.install(|| walk(self, (0, Some((self.listing(0), ())))));
        }
    }

    #[test]
    fn a_chain_far_deeper_than_any_stack_is_walked_children_first() {
        let depth = 100_000;
        let children = (0..depth)
            .map(|i| if i + 1 < depth { vec![i + 1] } else { vec![] })
            .collect();
        let t = Synthetic::new(children, vec![1; depth]);
        t.run(2);
        let f = t.finished.lock().unwrap();
        assert_eq!(f.len(), depth);
        assert_eq!(f.first(), Some(&(depth - 1)));
        assert_eq!(f.last(), Some(&0));
        assert!(t.order_ok.load(Ordering::SeqCst));
        assert_eq!(t.visited.load(Ordering::Relaxed), 2 * depth - 1);
    }

    #[test]
    fn a_wide_tree_is_finished_once_per_directory_children_first() {
        // A root with 50 subdirectories of 40 leaves and 3 subdirectories each.
        let mut children = vec![(1..=50).collect::<Vec<_>>()];
        let mut leaves = vec![1000];
        let mut next = 51;
        for _ in 1..=50 {
            children.push((next..next + 3).collect());
            leaves.push(40);
            next += 3;
        }
        for _ in 51..next {
            children.push(vec![]);
            leaves.push(2);
        }
        for threads in [1, 2, 4] {
            let t = Synthetic::new(children.clone(), leaves.clone());
            t.run(threads);
            let mut f = t.finished.lock().unwrap().clone();
            assert_eq!(f.last(), Some(&0));
            f.sort();
            assert_eq!(f, (0..next).collect::<Vec<_>>());
            assert!(t.order_ok.load(Ordering::SeqCst));
        }
    }
}

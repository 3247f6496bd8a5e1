//! Repository locks: `locks/<id>` records. Creates, restores and checks take
//! a shared lock, prune an exclusive one. The holder renews its record every
//! [`REFRESH_EVERY`] on a background thread, so a lock's refresh time shows
//! whether its holder still runs, on any host (a repository in object storage
//! has no other way to tell). A lock is stale, and broken with a notice, when
//! it has not been refreshed for [`STALE_AFTER_SECS`], or when its process is
//! gone from this host; `force_unlock` removes the rest.
use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use haul_formats::{Lock, RepoFile, Timestamp, MAX_LOCK_LEN};

use super::backend::Backend;
use super::{hostname, username, Repository};
use crate::error::Error;

/// How often a holder renews its lock.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// A lock not refreshed for this many seconds is stale, whichever host holds
/// it: six missed refreshes, far more than a busy machine delays a thread.
pub(crate) const STALE_AFTER_SECS: i64 = 30 * 60;

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct LockGuard<'r> {
    repo: &'r Repository,
    /// None when the repository was opened without locks.
    held: Option<Held>,
    notices: Vec<String>,
}

#[derive(Debug)]
struct Held {
    /// The record's name as first written.
    name: String,
    /// Renews the record; it hands back the record's current name when told
    /// to stop (the channel closing).
    refresher: Option<(mpsc::Sender<()>, JoinHandle<String>)>,
}

impl LockGuard<'_> {
    /// Messages about stale locks that were broken to take this one.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let name = match held.refresher {
            Some((stop, thread)) => {
                drop(stop);
                thread.join().unwrap_or(held.name)
            }
            None => held.name,
        };
        // A lock left behind is harmless once its process is gone (the next
        // run breaks it as stale), so a failure here is not worth a panic.
        let _ = self.repo.backend().remove(&name);
    }
}

/// Starts the thread that renews lock record `name` every `every` by writing
/// a new record and then removing the old one, so a record always exists.
/// A failed write keeps the old record and is tried again next time.
fn spawn_refresher(
    backend: Arc<dyn Backend>,
    mut lock: Lock,
    mut name: String,
    every: Duration,
) -> io::Result<(mpsc::Sender<()>, JoinHandle<String>)> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("haul-lock".into())
        .spawn(move || {
            // Nothing is ever sent: the guard dropping the sender ends the wait.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                lock.refreshed = Some(Timestamp::now());
                let Ok((id, bytes)) = lock.to_json() else {
                    continue;
                };
                let new = RepoFile::Lock.path(&id);
                if backend.put(&new, &bytes).is_ok() {
                    let _ = backend.remove(&name);
                    name = new;
                }
            }
            name
        })?;
    Ok((stop, thread))
}

fn process_alive(pid: u32) -> bool {
    use nix::errno::Errno;
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Whether writing into the repository was refused (permissions, a
/// read-only mount): the case `--no-lock` is for.
fn not_writable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339().unwrap_or_else(|_| t.secs().to_string())
}

impl Repository {
    /// Lock records other than `mine`, after breaking the stale ones.
    /// `read_only`: the caller only reads, so a repository it cannot write
    /// to is met with advice to use `--no-lock`.
    fn live_locks(
        &self,
        mine: Option<&str>,
        read_only: bool,
        notices: &mut Vec<String>,
    ) -> Result<Vec<(String, Lock)>, Error> {
        let dir = RepoFile::Lock.dir();
        let names = self
            .backend()
            .list(dir)
            .map_err(|e| Error::io("listing locks", self.file_path(dir), e))?;
        let me = hostname();
        let now = Timestamp::now().secs();
        let mut out = Vec::new();
        for name in names {
            if Some(name.as_str()) == mine {
                continue;
            }
            let Some((RepoFile::Lock, id)) = RepoFile::parse_path(&name) else {
                continue;
            };
            let bytes = match self.backend().get(&name, MAX_LOCK_LEN as u64) {
                Ok(b) => b,
                // Released between the listing and the read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("reading lock", self.file_path(&name), e)),
            };
            let lock = match Lock::from_json(&bytes, &id) {
                Ok(l) => l,
                Err(e) => {
                    notices.push(format!(
                        "ignoring unreadable lock {} ({e}); remove it with --force-unlock",
                        self.file_path(&name).display()
                    ));
                    continue;
                }
            };
            let why = if now.saturating_sub(lock.last_refresh().secs()) > STALE_AFTER_SECS {
                format!(
                    "not refreshed since {}, more than {} minutes ago",
                    rfc3339(lock.last_refresh()),
                    STALE_AFTER_SECS / 60
                )
            } else if lock.hostname == me
                && lock.pid != std::process::id()
                && !process_alive(lock.pid)
            {
                "no longer running".to_string()
            } else {
                out.push((name, lock));
                continue;
            };
            self.backend().remove(&name).map_err(|e| {
                let e = if read_only && not_writable(&e) {
                    io::Error::new(e.kind(), format!("{e}; use --no-lock for read-only access"))
                } else {
                    e
                };
                Error::io("removing stale lock", self.file_path(&name), e)
            })?;
            notices.push(format!(
                "removed stale lock {} of process {} on {} ({why})",
                id.short(),
                lock.pid,
                lock.hostname
            ));
        }
        Ok(out)
    }

    /// Takes a shared or exclusive lock. Conflicts are checked both before and
    /// after writing the lock record, so two processes racing for it cannot
    /// both win. The lock is renewed while the guard lives.
    pub fn lock(&self, exclusive: bool) -> Result<LockGuard<'_>, Error> {
        if !self.locking {
            return Err(Error::invalid(
                self.location(),
                "opened without locks (--no-lock), which only commands that read allow",
            ));
        }
        self.take_lock(exclusive, false, REFRESH_EVERY)
    }

    /// The shared lock of a command that only reads (restore, check): none
    /// for a repository opened without locks.
    pub(crate) fn read_lock(&self) -> Result<LockGuard<'_>, Error> {
        if !self.locking {
            return Ok(LockGuard {
                repo: self,
                held: None,
                notices: Vec::new(),
            });
        }
        self.take_lock(false, true, REFRESH_EVERY)
    }

    fn take_lock(
        &self,
        exclusive: bool,
        read_only: bool,
        refresh_every: Duration,
    ) -> Result<LockGuard<'_>, Error> {
        let mut notices = Vec::new();
        let conflict = |locks: &[(String, Lock)]| {
            locks
                .iter()
                .find(|(_, l)| exclusive || l.exclusive)
                .map(|(_, l)| {
                    format!(
                        "locked {} by process {} on {} since {} (last refreshed {}); if that \
                     process is gone, use --force-unlock (a lock not refreshed for {} \
                     minutes is broken automatically)",
                        if l.exclusive {
                            "exclusively"
                        } else {
                            "(shared)"
                        },
                        l.pid,
                        l.hostname,
                        rfc3339(l.time),
                        rfc3339(l.last_refresh()),
                        STALE_AFTER_SECS / 60
                    )
                })
        };
        if let Some(msg) = conflict(&self.live_locks(None, read_only, &mut notices)?) {
            return Err(Error::locked(self.location(), msg));
        }
        let now = Timestamp::now();
        let lock = Lock {
            hostname: hostname(),
            username: username(),
            pid: std::process::id(),
            time: now,
            exclusive,
            refreshed: Some(now),
        };
        let (id, bytes) = lock
            .to_json()
            .map_err(|e| Error::corrupt("writing lock", self.location(), e))?;
        // A record's id is the hash of its bytes (pid and ns time make it unique).
        let name = RepoFile::Lock.path(&id);
        self.backend().put(&name, &bytes).map_err(|e| {
            let e = if read_only && not_writable(&e) {
                io::Error::new(e.kind(), format!("{e}; use --no-lock for read-only access"))
            } else {
                e
            };
            Error::io("writing lock", self.file_path(&name), e)
        })?;
        let mut guard = LockGuard {
            repo: self,
            held: Some(Held {
                name: name.clone(),
                refresher: None,
            }),
            notices: Vec::new(),
        };
        if let Some(msg) = conflict(&self.live_locks(Some(&name), read_only, &mut notices)?) {
            return Err(Error::locked(self.location(), msg));
        }
        match spawn_refresher(Arc::clone(&self.backend), lock, name, refresh_every) {
            Ok(r) => {
                if let Some(h) = guard.held.as_mut() {
                    h.refresher = Some(r);
                }
            }
            // The lock still holds; others may break it as stale after a while.
            Err(e) => notices.push(format!(
                "cannot start the thread that refreshes the lock ({e}); it may be \
                 broken as stale after {} minutes",
                STALE_AFTER_SECS / 60
            )),
        }
        guard.notices = notices;
        Ok(guard)
    }

    /// Removes every lock record, whoever holds it.
    pub fn force_unlock(&self) -> Result<usize, Error> {
        let dir = RepoFile::Lock.dir();
        let names = self
            .backend()
            .list(dir)
            .map_err(|e| Error::io("listing locks", self.file_path(dir), e))?;
        for n in &names {
            self.backend()
                .remove(n)
                .map_err(|e| Error::io("removing lock", self.file_path(n), e))?;
        }
        Ok(names.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul_formats::Id;

    fn lock_files(repo: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(repo.join("locks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            // Not the temporary names of a record being written.
            .filter(|n| Id::from_hex(n).is_ok())
            .collect();
        v.sort();
        v
    }

    /// The holder renews its record (a new file, a later refresh time, the
    /// same start time) and removes it when the guard is dropped.
    #[test]
    fn a_held_lock_is_refreshed_and_released() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("repo");
        let repo = Repository::init(&path, &Default::default()).unwrap();
        let guard = repo
            .take_lock(false, false, Duration::from_millis(20))
            .unwrap();
        let first = lock_files(&path);
        assert_eq!(first.len(), 1);
        // None when the refresher replaced the record meanwhile.
        let read = |name: &str| {
            let bytes = std::fs::read(path.join("locks").join(name)).ok()?;
            Some(Lock::from_json(&bytes, &Id::from_hex(name).unwrap()).unwrap())
        };
        let before = read(&first[0]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let after = loop {
            let now = lock_files(&path);
            if let (1, true, Some(l)) = (now.len(), now != first, read(&now[0])) {
                break l;
            }
            assert!(std::time::Instant::now() < deadline, "never refreshed");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(after.time, before.time);
        assert!(after.last_refresh() > before.last_refresh());
        drop(guard);
        assert!(lock_files(&path).is_empty());
    }
}

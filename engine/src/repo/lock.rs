//! Repository locks: `locks/<id>` records. Creates and restores take a
//! shared lock, prune an exclusive one. A lock whose process is gone from
//! this host is stale and broken (with a notice); `force_unlock` removes the
//! rest.
use haul_formats::{FileKind as RepoFile, Id, Lock, Timestamp, MAX_LOCK_LEN};

use super::{hostname, username, Repository};
use crate::error::Error;

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct LockGuard<'r> {
    repo: &'r Repository,
    name: String,
    notices: Vec<String>,
}

impl LockGuard<'_> {
    /// Messages about stale locks that were broken to take this one.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // A lock left behind is harmless once its process is gone (the next
        // run breaks it as stale), so a failure here is not worth a panic.
        let _ = self.repo.backend().remove(&self.name);
    }
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

impl Repository {
    fn live_locks(&self, notices: &mut Vec<String>) -> Result<Vec<(String, Lock)>, Error> {
        let dir = RepoFile::Lock.dir();
        let names = self
            .backend()
            .list(dir)
            .map_err(|e| Error::io("listing locks", self.file_path(dir), e))?;
        let me = hostname();
        let mut out = Vec::new();
        for name in names {
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
            if lock.hostname == me && lock.pid != std::process::id() && !process_alive(lock.pid) {
                self.backend()
                    .remove(&name)
                    .map_err(|e| Error::io("removing stale lock", self.file_path(&name), e))?;
                notices.push(format!(
                    "removed stale lock {} of process {} on {} (no longer running)",
                    id.short(),
                    lock.pid,
                    lock.hostname
                ));
                continue;
            }
            out.push((name, lock));
        }
        Ok(out)
    }

    /// Takes a shared or exclusive lock. Conflicts are checked both before and
    /// after writing the lock record, so two processes racing for it cannot
    /// both win.
    pub fn lock(&self, exclusive: bool) -> Result<LockGuard<'_>, Error> {
        let mut notices = Vec::new();
        let conflict = |locks: &[(String, Lock)], mine: Option<&str>| {
            locks
                .iter()
                .filter(|(n, _)| Some(n.as_str()) != mine)
                .find(|(_, l)| exclusive || l.exclusive)
                .map(|(_, l)| {
                    format!(
                        "locked {} by process {} on {} since {}; if that process is gone, use --force-unlock",
                        if l.exclusive { "exclusively" } else { "(shared)" },
                        l.pid,
                        l.hostname,
                        l.time.to_rfc3339().unwrap_or_default()
                    )
                })
        };
        if let Some(msg) = conflict(&self.live_locks(&mut notices)?, None) {
            return Err(Error::locked(self.location(), msg));
        }
        let lock = Lock {
            hostname: hostname(),
            username: username(),
            pid: std::process::id(),
            time: Timestamp::now(),
            exclusive,
        };
        let (_, bytes) = lock
            .to_json()
            .map_err(|e| Error::corrupt("writing lock", self.location(), e))?;
        // A record's id is the hash of its bytes (pid and ns time make it unique).
        let id = Id::hash(&bytes);
        let name = RepoFile::Lock.path(&id);
        self.backend()
            .put(&name, &bytes)
            .map_err(|e| Error::io("writing lock", self.file_path(&name), e))?;
        let mut guard = LockGuard {
            repo: self,
            name,
            notices: Vec::new(),
        };
        if let Some(msg) = conflict(&self.live_locks(&mut notices)?, Some(&guard.name)) {
            return Err(Error::locked(self.location(), msg));
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

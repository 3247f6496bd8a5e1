//! What a receiver checks beyond one message: indexes against the entries
//! announced ([`Indexes`]), and paths against leaving the root
//! ([`checked_rel_path`]).
use super::*;

/// The entries announced so far in one session, so that a message naming
/// an index is checked against them (rsync's CVE-2024-12087 came from an
/// index it never announced). Entries are numbered 0, 1, 2... in the order
/// they are sent, so "announced" is "below the next index"; the sender and
/// the receiver each keep one and pass every Entry through it, sent or
/// received.
#[derive(Clone, Debug, Default)]
pub struct Indexes {
    next: u64,
}

impl Indexes {
    /// No entry announced yet.
    pub fn new() -> Self {
        Indexes::default()
    }

    /// How many entries were announced (the next index expected).
    pub fn announced(&self) -> u64 {
        self.next
    }

    /// Records an Entry: its index must be the next one, and a hardlink
    /// must name an entry already announced.
    pub fn announce(&mut self, entry: &Entry) -> Result<(), WireError> {
        if entry.index != self.next {
            return Err(WireError::Index {
                kind: "Entry",
                index: entry.index,
                reason: format!("entries must be numbered in order; expected {}", self.next),
            });
        }
        if let Some(h) = entry.hardlink_of {
            self.check("Entry", h)?;
        }
        self.next += 1;
        Ok(())
    }

    /// Checks that `index` names an entry already announced.
    pub fn check(&self, kind: &'static str, index: u64) -> Result<(), WireError> {
        if index >= self.next {
            return Err(WireError::Index {
                kind,
                index,
                reason: format!("not announced ({} entries so far)", self.next),
            });
        }
        Ok(())
    }

    /// [`announce`](Indexes::announce) for an Entry, [`check`](Indexes::check)
    /// for any other message naming an index.
    pub fn observe(&mut self, msg: &Message) -> Result<(), WireError> {
        match msg {
            Message::Entry(e) => self.announce(e),
            m => match m.index() {
                Some(i) => self.check(m.name(), i),
                None => Ok(()),
            },
        }
    }
}

/// The components of a path the peer sent, for a receiver to resolve one
/// by one beneath its root without following symlinks. Refused: an empty
/// path, one over [`MAX_PATH`], a NUL, an absolute path, a `..` or `.`
/// component, an empty component (`a//b`, `a/`). A leading `./` is
/// allowed and dropped; `.` alone is the root itself (no components).
pub fn checked_rel_path(path: &[u8]) -> Result<Vec<&[u8]>, WireError> {
    let refuse = |reason| {
        Err(WireError::Path {
            path: escape(path),
            reason,
        })
    };
    if path.is_empty() {
        return refuse("empty path");
    }
    if path.len() > MAX_PATH {
        return refuse("longer than 4096 bytes");
    }
    if path.contains(&0) {
        return refuse("contains a NUL byte");
    }
    if path[0] == b'/' {
        return refuse("absolute path");
    }
    if path == b"." {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix(b"./").unwrap_or(path);
    let mut out = Vec::new();
    for c in rest.split(|&b| b == b'/') {
        match c {
            b"" => return refuse("empty component"),
            b".." => return refuse("`..` component"),
            b"." => return refuse("`.` component"),
            c => out.push(c),
        }
    }
    Ok(out)
}

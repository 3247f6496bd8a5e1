//! The writing half: members as a PAX stream GNU tar reads.
use std::io::{self, Write};

use tar::{EntryType, Header};

use super::{encode_sparse_map, padding, pax_record, TarKind, TarMember, BLOCK};

/// Writes members as a PAX stream that GNU tar reads with `--xattrs
/// --xattrs-include='*' --acls`.
pub struct TarWriter<W> {
    w: W,
    written: u64,
}

/// Renders a binary `system.posix_acl_*` value as the text GNU tar stores
/// in `SCHILY.acl.*` (numeric ids), or `None` if it does not parse.
pub fn acl_text(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 || v[..4] != [2, 0, 0, 0] {
        return None;
    }
    let mut out = String::new();
    for e in v[4..].chunks(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let who = match tag {
            0x01 => "user::".to_string(),
            0x02 => format!("user:{id}:"),
            0x04 => "group::".to_string(),
            0x08 => format!("group:{id}:"),
            0x10 => "mask::".to_string(),
            0x20 => "other::".to_string(),
            _ => return None,
        };
        out.push_str(&who);
        out.push(if perm & 4 != 0 { 'r' } else { '-' });
        out.push(if perm & 2 != 0 { 'w' } else { '-' });
        out.push(if perm & 1 != 0 { 'x' } else { '-' });
        out.push('\n');
    }
    Some(out.into_bytes())
}

pub(super) fn pax_time_str((s, ns): (i64, u32)) -> String {
    if s < 0 && ns > 0 {
        // (-2, 0.75 s) is -1.25.
        let rest = 1_000_000_000 - ns;
        format!("-{}.{:09}", -(s + 1), rest)
    } else {
        format!("{s}.{ns:09}")
    }
}

impl<W: Write> TarWriter<W> {
    /// A writer into `w`.
    pub fn new(w: W) -> TarWriter<W> {
        TarWriter { w, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self, n: u64) -> io::Result<()> {
        let p = padding(n) as usize;
        self.put(&[0u8; BLOCK][..p])
    }

    /// Writes `m`'s headers; the caller then writes exactly
    /// [`TarMember::data_len`] bytes with [`TarWriter::data`] and ends the
    /// member with [`TarWriter::end_member`].
    pub fn begin_member(&mut self, m: &TarMember) -> io::Result<()> {
        let mut pax = Vec::new();
        let mut h = Header::new_ustar();
        let ty = match m.kind {
            TarKind::File => EntryType::Regular,
            TarKind::Dir => EntryType::Directory,
            TarKind::Symlink => EntryType::Symlink,
            TarKind::Hardlink => EntryType::Link,
            TarKind::CharDev => EntryType::Char,
            TarKind::BlockDev => EntryType::Block,
            TarKind::Fifo => EntryType::Fifo,
        };
        h.set_entry_type(ty);
        let mut path = m.path.clone();
        if m.kind == TarKind::Dir && !path.ends_with(b"/") {
            path.push(b'/');
        }
        // GNU tar sizes a sparse file by its last region's end: a trailing
        // hole is an empty region at the real size, as GNU tar writes it.
        let sparse = m.sparse.as_ref().map(|map| {
            let mut map = map.clone();
            if map.last().is_none_or(|&(o, l)| o + l < m.size) {
                map.push((m.size, 0));
            }
            map
        });
        let stored = match &sparse {
            Some(map) => {
                pax.extend(pax_record(b"GNU.sparse.major", b"1"));
                pax.extend(pax_record(b"GNU.sparse.minor", b"0"));
                pax.extend(pax_record(b"GNU.sparse.name", &path));
                pax.extend(pax_record(
                    b"GNU.sparse.realsize",
                    m.size.to_string().as_bytes(),
                ));
                // What GNU tar puts in the header's name field.
                let base = path.rsplit(|&b| b == b'/').next().unwrap_or(&path);
                let mut p = b"GNUSparseFile.0/".to_vec();
                p.extend_from_slice(base);
                path = p;
                encode_sparse_map(map).len() as u64 + m.data_len()
            }
            None => m.data_len(),
        };
        // Name and link: in the header when they fit and are plain ASCII,
        // else a PAX record (and a truncated header field).
        let fits = |p: &[u8], max: usize| p.len() <= max && p.is_ascii() && !p.contains(&0);
        if set_header_path(&mut h, &path).is_err() || !path.is_ascii() {
            pax.extend(pax_record(b"path", &path));
            let short: Vec<u8> = path.iter().copied().filter(u8::is_ascii).take(99).collect();
            let _ = set_header_path(&mut h, &short);
        }
        if matches!(m.kind, TarKind::Symlink | TarKind::Hardlink) {
            if fits(&m.link, 100) {
                h.set_link_name_literal(&m.link)?;
            } else {
                pax.extend(pax_record(b"linkpath", &m.link));
            }
        }
        h.set_mode(m.mode);
        for (key, v, max) in [(&b"uid"[..], m.uid, 0o7777777), (b"gid", m.gid, 0o7777777)] {
            if v > max {
                pax.extend(pax_record(key, v.to_string().as_bytes()));
            }
        }
        h.set_uid(m.uid.min(0o7777777));
        h.set_gid(m.gid.min(0o7777777));
        h.set_mtime(m.mtime.0.clamp(0, 0o77777777777) as u64);
        pax.extend(pax_record(b"mtime", pax_time_str(m.mtime).as_bytes()));
        if let Some(a) = m.atime {
            pax.extend(pax_record(b"atime", pax_time_str(a).as_bytes()));
        }
        if stored > 0o77777777777 {
            pax.extend(pax_record(b"size", stored.to_string().as_bytes()));
            h.set_size(0);
        } else {
            h.set_size(stored);
        }
        if matches!(m.kind, TarKind::CharDev | TarKind::BlockDev) {
            h.set_device_major(m.dev.0)?;
            h.set_device_minor(m.dev.1)?;
        }
        for (k, v) in &m.xattrs {
            // GNU tar restores ACLs from the text form; both are written,
            // as GNU tar writes them.
            let text = match &k[..] {
                b"system.posix_acl_access" => Some(b"SCHILY.acl.access".as_slice()),
                b"system.posix_acl_default" => Some(b"SCHILY.acl.default".as_slice()),
                _ => None,
            };
            if let (Some(key), Some(t)) = (text, acl_text(v)) {
                pax.extend(pax_record(key, &t));
            }
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax.extend(pax_record(&key, v));
        }
        if !pax.is_empty() {
            let mut x = Header::new_ustar();
            x.set_entry_type(EntryType::XHeader);
            let mut xp = b"./PaxHeaders/".to_vec();
            let base = path.rsplit(|&b| b == b'/').find(|s| !s.is_empty());
            xp.extend(
                base.unwrap_or(b"x")
                    .iter()
                    .copied()
                    .filter(u8::is_ascii)
                    .take(80),
            );
            let _ = set_header_path(&mut x, &xp);
            x.set_mode(0o644);
            x.set_size(pax.len() as u64);
            x.set_mtime(h.mtime().unwrap_or(0));
            x.set_cksum();
            self.put(x.as_bytes())?;
            self.put(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        h.set_cksum();
        self.put(h.as_bytes())?;
        if let Some(map) = &sparse {
            self.put(&encode_sparse_map(map))?;
        }
        Ok(())
    }

    /// Writes member data.
    pub fn data(&mut self, b: &[u8]) -> io::Result<()> {
        self.put(b)
    }

    /// Pads the member's data, `data_len` bytes, to a whole block.
    pub fn end_member(&mut self, m: &TarMember) -> io::Result<()> {
        self.pad(m.data_len())
    }

    /// Writes the end-of-archive blocks and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.put(&[0u8; BLOCK * 2])?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Puts a path in the header's name (and ustar prefix) fields, or fails if
/// it does not fit.
fn set_header_path(h: &mut Header, p: &[u8]) -> Result<(), ()> {
    if p.contains(&0) {
        return Err(());
    }
    let ustar = h.as_ustar_mut().ok_or(())?;
    if p.len() <= 100 {
        ustar.name = [0; 100];
        ustar.name[..p.len()].copy_from_slice(p);
        ustar.prefix = [0; 155];
        return Ok(());
    }
    // Split at a '/' so the prefix takes at most 155 bytes and the name 100.
    let split = p
        .iter()
        .enumerate()
        .rev()
        .filter(|&(i, &b)| b == b'/' && i <= 155 && p.len() - i - 1 <= 100 && i > 0)
        .map(|(i, _)| i)
        .next()
        .ok_or(())?;
    let (pre, name) = (&p[..split], &p[split + 1..]);
    if name.is_empty() {
        return Err(());
    }
    ustar.name = [0; 100];
    ustar.name[..name.len()].copy_from_slice(name);
    ustar.prefix = [0; 155];
    ustar.prefix[..pre.len()].copy_from_slice(pre);
    Ok(())
}

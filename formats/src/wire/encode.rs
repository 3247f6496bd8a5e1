//! Encoding: messages into payloads and frames, and the preamble.
use super::*;

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_strings(out: &mut Vec<u8>, v: &[String]) {
    put_varint(out, v.len() as u64);
    for s in v {
        put_bytes(out, s.as_bytes());
    }
}

fn put_time(out: &mut Vec<u8>, t: WireTime) {
    put_varint(out, zigzag(t.secs));
    put_varint(out, u64::from(t.nanos));
}

/// Encoder-side checks: what the decoder would refuse. Tests turn them
/// off to build the bytes a hostile peer would send.
struct Enc {
    kind: &'static str,
    checked: bool,
}

impl Enc {
    fn check(&self, field: &'static str, r: Check) -> Result<(), WireError> {
        if !self.checked {
            return Ok(());
        }
        r.map_err(|reason| WireError::Unencodable {
            kind: self.kind,
            field,
            reason,
        })
    }
}

impl Enc {
    fn check_entry(&self, en: &Entry) -> Result<(), WireError> {
        if !self.checked {
            return Ok(());
        }
        entry_checks(en).map_err(|(field, reason)| WireError::Unencodable {
            kind: "Entry",
            field,
            reason,
        })
    }
}

fn check_strings(e: &Enc, field: &'static str, v: &[String]) -> Result<(), WireError> {
    e.check(field, count(v.len() as u64, MAX_STRINGS))?;
    for s in v {
        e.check(field, cap(s.len(), MAX_TEXT))?;
    }
    Ok(())
}

/// The payload of `msg`, uncompressed; with `checked`, refusing what the
/// decoder would refuse.
pub(super) fn encode_payload(
    msg: &Message,
    out: &mut Vec<u8>,
    checked: bool,
) -> Result<(), WireError> {
    let e = Enc {
        kind: msg.name(),
        checked,
    };
    match msg {
        Message::Hello {
            protocol,
            haul_version,
            role,
            root,
            options: o,
        } => {
            e.check("haul_version", cap(haul_version.len(), MAX_VERSION_LEN))?;
            e.check("root", raw_path(root))?;
            check_strings(&e, "exclude", &o.exclude)?;
            check_strings(&e, "usermap", &o.usermap)?;
            check_strings(&e, "groupmap", &o.groupmap)?;
            if let Some(c) = &o.chown {
                e.check("chown", cap(c.len(), MAX_TEXT))?;
            }
            put_varint(out, u64::from(*protocol));
            put_bytes(out, haul_version.as_bytes());
            out.push(*role as u8);
            put_bytes(out, root);
            let flags = [
                o.delete,
                o.checksum,
                o.dry_run,
                o.verify,
                o.no_owner,
                o.no_xattrs,
                o.no_acls,
                o.map_by_name,
                o.record_changes,
            ]
            .iter()
            .enumerate()
            .fold(0u64, |acc, (bit, &on)| acc | (u64::from(on) << bit));
            put_varint(out, flags);
            put_strings(out, &o.exclude);
            put_strings(out, &o.usermap);
            put_strings(out, &o.groupmap);
            match &o.chown {
                None => out.push(0),
                Some(c) => {
                    out.push(1);
                    put_bytes(out, c.as_bytes());
                }
            }
            match o.compress_level {
                None => out.push(0),
                Some(l) => {
                    out.push(1);
                    put_varint(out, zigzag(i64::from(l)));
                }
            }
        }
        Message::HelloOk {
            protocol,
            haul_version,
        } => {
            e.check("haul_version", cap(haul_version.len(), MAX_VERSION_LEN))?;
            put_varint(out, u64::from(*protocol));
            put_bytes(out, haul_version.as_bytes());
        }
        Message::Entry(en) => {
            e.check("path", raw_path(&en.path))?;
            e.check("atime", nanos(en.atime.nanos))?;
            e.check("mtime", nanos(en.mtime.nanos))?;
            e.check("xattrs", count(en.xattrs.len() as u64, MAX_XATTRS))?;
            let mut total = 0usize;
            for (n, v) in &en.xattrs {
                e.check("xattr name", xattr_name(n))?;
                e.check("xattr value", cap(v.len(), MAX_XATTR_VALUE))?;
                total += n.len() + v.len();
            }
            e.check("xattrs", cap(total, MAX_XATTRS_TOTAL))?;
            if let Some(t) = &en.symlink_target {
                e.check("symlink_target", raw_path(t))?;
            }
            if let Some(r) = &en.regions {
                e.check("regions", count(r.len() as u64, MAX_REGIONS))?;
            }
            e.check_entry(en)?;
            put_varint(out, en.index);
            put_bytes(out, &en.path);
            out.push(en.kind as u8);
            put_varint(out, u64::from(en.perm));
            put_varint(out, u64::from(en.uid));
            put_varint(out, u64::from(en.gid));
            put_varint(out, en.size);
            put_varint(out, en.rdev);
            put_time(out, en.atime);
            put_time(out, en.mtime);
            put_varint(out, en.xattrs.len() as u64);
            for (n, v) in &en.xattrs {
                put_bytes(out, n);
                put_bytes(out, v);
            }
            match &en.symlink_target {
                None => out.push(0),
                Some(t) => {
                    out.push(1);
                    put_bytes(out, t);
                }
            }
            // 0: no link; 1: a further name, with the first's index;
            // 2: the first name of an inode with more to come.
            match (en.hardlink_of, en.link_leader) {
                (Some(h), _) => {
                    out.push(1);
                    put_varint(out, h);
                }
                (None, false) => out.push(0),
                (None, true) => out.push(2),
            }
            match &en.regions {
                None => out.push(0),
                Some(r) => {
                    out.push(1);
                    put_varint(out, r.len() as u64);
                    for &(off, len) in r {
                        put_varint(out, off);
                        put_varint(out, len);
                    }
                }
            }
            put_varint(out, u64::from(en.attrs));
        }
        Message::Need { index, old_chunks } => {
            put_varint(out, *index);
            match old_chunks {
                None => out.push(0),
                Some(c) => {
                    e.check("old_chunks", count(c.len() as u64, MAX_CHUNKS))?;
                    out.push(1);
                    put_varint(out, c.len() as u64);
                    for ch in c {
                        let sum = ch.offset.checked_add(ch.len);
                        e.check(
                            "old_chunks",
                            sum.map(drop).ok_or("offset + len overflows".into()),
                        )?;
                        out.extend_from_slice(&ch.id);
                        put_varint(out, ch.offset);
                        put_varint(out, ch.len);
                    }
                }
            }
        }
        Message::Skip { index } => put_varint(out, *index),
        Message::Data {
            index,
            offset,
            bytes,
        } => {
            let sum = offset.checked_add(bytes.len() as u64);
            e.check(
                "offset",
                sum.map(drop).ok_or("offset + length overflows".into()),
            )?;
            put_varint(out, *index);
            put_varint(out, *offset);
            out.extend_from_slice(bytes);
        }
        Message::Chunk { index, offset, id } => {
            put_varint(out, *index);
            put_varint(out, *offset);
            out.extend_from_slice(id);
        }
        Message::FileDone { index, blake3 } => {
            put_varint(out, *index);
            out.extend_from_slice(blake3);
        }
        Message::Delete { path } => {
            e.check("path", raw_path(path))?;
            put_bytes(out, path);
        }
        Message::EndOfList | Message::Done | Message::KeepAlive => {}
        Message::Summary { json } | Message::QueryReply { json } => out.extend_from_slice(json),
        Message::Error { index, message } => {
            e.check("message", cap(message.len(), MAX_TEXT))?;
            match index {
                None => out.push(0),
                Some(i) => {
                    out.push(1);
                    put_varint(out, *i);
                }
            }
            put_bytes(out, message.as_bytes());
        }
        Message::Query { kind } => match kind {
            QueryKind::Users => out.push(0),
            QueryKind::Groups => out.push(1),
            QueryKind::PathInUse(p) => {
                e.check("path", raw_path(p))?;
                out.push(2);
                put_bytes(out, p);
            }
        },
    }
    Ok(())
}

/// The preamble this side sends first: [`MAGIC`], [`PROTOCOL_VERSION`]
/// (u16 LE), then `haul_version` (u8 length, printable ASCII, at most
/// [`MAX_VERSION_LEN`] bytes).
pub fn encode_preamble(haul_version: &str) -> Result<Vec<u8>, WireError> {
    let v = haul_version.as_bytes();
    if v.len() > MAX_VERSION_LEN || !v.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(WireError::Unencodable {
            kind: "preamble",
            field: "haul_version",
            reason: format!(
                "{} is not printable ASCII of at most {MAX_VERSION_LEN} bytes",
                escape(v)
            ),
        });
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.push(v.len() as u8);
    out.extend_from_slice(v);
    Ok(out)
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
}

fn zstd_compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, comp) = c.as_mut().expect("just set");
        // The bulk compressor writes the content size into the frame
        // header, which the decoder requires.
        comp.compress(data)
    })
}

/// Appends one frame holding `msg` to `out`. With `compress` set to a zstd
/// level, a payload of 64 bytes or more is compressed, and sent that way
/// if that makes it smaller. Fails, with nothing appended, on a message the
/// decoder would refuse (a field over its cap, a payload over
/// [`MAX_FRAME`]).
pub fn encode_frame(
    msg: &Message,
    compress: Option<i32>,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    if let Err(e) = encode_payload(msg, out, true) {
        out.truncate(start);
        return Err(e);
    }
    let plain_len = out.len() - start - FRAME_HEADER_LEN;
    if plain_len > MAX_FRAME {
        out.truncate(start);
        return Err(WireError::Unencodable {
            kind: msg.name(),
            field: "payload",
            reason: format!("{plain_len} bytes is over the frame limit of {MAX_FRAME}"),
        });
    }
    let mut flags = 0;
    if let Some(level) = compress.filter(|_| plain_len >= MIN_COMPRESS) {
        let z = match zstd_compress(&out[start + FRAME_HEADER_LEN..], level) {
            Ok(z) => z,
            Err(e) => {
                out.truncate(start);
                return Err(WireError::Unencodable {
                    kind: msg.name(),
                    field: "payload",
                    reason: format!("zstd: {e}"),
                });
            }
        };
        if z.len() < plain_len {
            out.truncate(start + FRAME_HEADER_LEN);
            out.extend_from_slice(&z);
            flags |= FLAG_ZSTD;
        }
    }
    let len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4] = msg.kind_byte();
    out[start + 5] = flags;
    Ok(())
}

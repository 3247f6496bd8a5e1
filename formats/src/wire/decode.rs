//! Decoding: the preamble, frames and payloads, checked field by field, and
//! the incremental [`Decoder`] of one direction of a session.
use super::*;

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// What the peer said in its preamble.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// Its protocol version (always [`PROTOCOL_VERSION`] once decoded: the
    /// decoder refuses others).
    pub protocol: u16,
    /// Its haul version.
    pub haul_version: String,
}

/// Decodes a preamble at the start of `buf`: `Ok(None)` if more bytes are
/// needed, else the preamble and its length. Bytes that are not a
/// preamble are reported once a newline or [`PREVIEW_LEN`] bytes have
/// arrived, so the error shows the whole line a banner printed.
pub fn decode_preamble(buf: &[u8]) -> Result<Option<(Preamble, usize)>, WireError> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        if buf.len() >= PREVIEW_LEN || buf.contains(&b'\n') {
            return Err(WireError::NotHaul { got: escape(buf) });
        }
        return Ok(None);
    }
    let head = MAGIC.len() + 3;
    if buf.len() < head {
        return Ok(None);
    }
    let protocol = u16::from_le_bytes([buf[8], buf[9]]);
    let len = usize::from(buf[10]);
    let Some(v) = buf.get(head..head + len) else {
        return Ok(None);
    };
    if len > MAX_VERSION_LEN || !v.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(WireError::BadVersion { got: escape(v) });
    }
    let haul_version = String::from_utf8(v.to_vec()).expect("ASCII");
    if protocol != PROTOCOL_VERSION {
        return Err(WireError::Protocol {
            got: protocol,
            peer_version: haul_version,
            supported: PROTOCOL_VERSION,
        });
    }
    Ok(Some((
        Preamble {
            protocol,
            haul_version,
        },
        head + len,
    )))
}

/// A field that failed: which, where in the payload, why.
struct Bad {
    field: &'static str,
    at: usize,
    reason: String,
}

/// A cursor over a payload.
struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    fn bad(&self, field: &'static str, reason: impl Into<String>) -> Bad {
        Bad {
            field,
            at: self.pos,
            reason: reason.into(),
        }
    }

    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], Bad> {
        if n > self.left() {
            return Err(self.bad(
                field,
                format!("needs {n} bytes, the payload has {} left", self.left()),
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, Bad> {
        Ok(self.take(field, 1)?[0])
    }

    /// LEB128, at most 10 bytes, canonical (no trailing zero groups), so
    /// that a decoded message re-encodes to the same bytes.
    fn varint(&mut self, field: &'static str) -> Result<u64, Bad> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&c) = self.b.get(self.pos) else {
                self.pos = start;
                return Err(self.bad(field, "the payload ends inside a varint"));
            };
            self.pos += 1;
            if i == 9 && c > 1 {
                self.pos = start;
                return Err(self.bad(field, "varint overflows 64 bits"));
            }
            v |= u64::from(c & 0x7f) << (7 * i);
            if c & 0x80 == 0 {
                if c == 0 && i > 0 {
                    self.pos = start;
                    return Err(self.bad(field, "overlong varint"));
                }
                return Ok(v);
            }
        }
        unreachable!("the 10th byte ends the loop")
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, Bad> {
        let at = self.pos;
        let v = self.varint(field)?;
        u32::try_from(v).map_err(|_| Bad {
            field,
            at,
            reason: format!("{v} does not fit 32 bits"),
        })
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, Bad> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            b => {
                self.pos -= 1;
                Err(self.bad(field, format!("option tag {b} is neither 0 nor 1")))
            }
        }
    }

    /// A length-prefixed byte string, the length checked against `max`
    /// and the bytes present before anything is copied.
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], Bad> {
        let at = self.pos;
        let n = self.varint(field)?;
        if n > max as u64 {
            self.pos = at;
            return Err(self.bad(field, format!("{n} bytes is over the limit of {max}")));
        }
        self.take(field, n as usize)
    }

    fn text(&mut self, field: &'static str, max: usize) -> Result<String, Bad> {
        let at = self.pos;
        let b = self.bytes(field, max)?;
        String::from_utf8(b.to_vec()).map_err(|_| Bad {
            field,
            at,
            reason: "not UTF-8".into(),
        })
    }

    fn path(&mut self, field: &'static str) -> Result<Vec<u8>, Bad> {
        let at = self.pos;
        let p = self.bytes(field, MAX_PATH)?;
        raw_path(p).map_err(|reason| Bad { field, at, reason })?;
        Ok(p.to_vec())
    }

    fn digest(&mut self, field: &'static str) -> Result<[u8; 32], Bad> {
        Ok(self.take(field, 32)?.try_into().expect("32 bytes"))
    }

    /// A count, checked against `max` and against what the remaining
    /// bytes could hold at `min_item` bytes each; returns it with a
    /// capacity safe to allocate.
    fn count(&mut self, field: &'static str, max: usize, min_item: usize) -> Result<usize, Bad> {
        let at = self.pos;
        let n = self.varint(field)?;
        let r = count(n, max).and_then(|()| {
            if n > (self.left() / min_item) as u64 {
                Err(format!(
                    "count {n} cannot fit in the {} bytes left",
                    self.left()
                ))
            } else {
                Ok(())
            }
        });
        r.map_err(|reason| Bad { field, at, reason })?;
        Ok(n as usize)
    }

    fn strings(&mut self, field: &'static str) -> Result<Vec<String>, Bad> {
        let n = self.count(field, MAX_STRINGS, 1)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.text(field, MAX_TEXT)?);
        }
        Ok(v)
    }

    fn time(&mut self, field: &'static str) -> Result<WireTime, Bad> {
        let secs = unzigzag(self.varint(field)?);
        let at = self.pos;
        let n = self.u32(field)?;
        nanos(n).map_err(|reason| Bad { field, at, reason })?;
        Ok(WireTime { secs, nanos: n })
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.pos..];
        self.pos = self.b.len();
        s
    }
}

fn decode_payload(kind: u8, p: &[u8]) -> Result<Message, Bad> {
    let mut r = Rd { b: p, pos: 0 };
    let msg = match kind {
        1 => {
            let protocol = r.varint("protocol")?;
            let protocol = u16::try_from(protocol).map_err(|_| Bad {
                field: "protocol",
                at: 0,
                reason: format!("{protocol} does not fit 16 bits"),
            })?;
            let haul_version = r.text("haul_version", MAX_VERSION_LEN)?;
            let role = match r.u8("role")? {
                0 => Role::Push,
                1 => Role::Pull,
                2 => Role::Query,
                b => {
                    r.pos -= 1;
                    return Err(r.bad("role", format!("unknown role {b}")));
                }
            };
            let root = r.path("root")?;
            let at = r.pos;
            let flags = r.varint("flags")?;
            if flags >> 9 != 0 {
                return Err(Bad {
                    field: "flags",
                    at,
                    reason: format!("unknown option bits {flags:#x}"),
                });
            }
            let bit = |i: u32| flags & (1 << i) != 0;
            let exclude = r.strings("exclude")?;
            let usermap = r.strings("usermap")?;
            let groupmap = r.strings("groupmap")?;
            let chown = if r.flag("chown")? {
                Some(r.text("chown", MAX_TEXT)?)
            } else {
                None
            };
            let compress_level = if r.flag("compress_level")? {
                let at = r.pos;
                let l = unzigzag(r.varint("compress_level")?);
                Some(i32::try_from(l).map_err(|_| Bad {
                    field: "compress_level",
                    at,
                    reason: format!("{l} does not fit 32 bits"),
                })?)
            } else {
                None
            };
            Message::Hello {
                protocol,
                haul_version,
                role,
                root,
                options: Box::new(Options {
                    delete: bit(0),
                    checksum: bit(1),
                    dry_run: bit(2),
                    verify: bit(3),
                    no_owner: bit(4),
                    no_xattrs: bit(5),
                    no_acls: bit(6),
                    map_by_name: bit(7),
                    record_changes: bit(8),
                    exclude,
                    usermap,
                    groupmap,
                    chown,
                    compress_level,
                }),
            }
        }
        2 => {
            let protocol = r.varint("protocol")?;
            let protocol = u16::try_from(protocol).map_err(|_| Bad {
                field: "protocol",
                at: 0,
                reason: format!("{protocol} does not fit 16 bits"),
            })?;
            Message::HelloOk {
                protocol,
                haul_version: r.text("haul_version", MAX_VERSION_LEN)?,
            }
        }
        3 => Message::Entry(Box::new(decode_entry(&mut r)?)),
        4 => {
            let index = r.varint("index")?;
            let old_chunks = if r.flag("old_chunks")? {
                let n = r.count("old_chunks", MAX_CHUNKS, 34)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.digest("old_chunks")?;
                    let offset = r.varint("old_chunks")?;
                    let at = r.pos;
                    let len = r.varint("old_chunks")?;
                    if offset.checked_add(len).is_none() {
                        return Err(Bad {
                            field: "old_chunks",
                            at,
                            reason: "offset + len overflows".into(),
                        });
                    }
                    v.push(OldChunk { id, offset, len });
                }
                Some(v)
            } else {
                None
            };
            Message::Need { index, old_chunks }
        }
        5 => Message::Skip {
            index: r.varint("index")?,
        },
        6 => {
            let index = r.varint("index")?;
            let offset = r.varint("offset")?;
            let at = r.pos;
            let bytes = r.rest().to_vec();
            if offset.checked_add(bytes.len() as u64).is_none() {
                return Err(Bad {
                    field: "offset",
                    at,
                    reason: "offset + length overflows".into(),
                });
            }
            Message::Data {
                index,
                offset,
                bytes,
            }
        }
        7 => Message::Chunk {
            index: r.varint("index")?,
            offset: r.varint("offset")?,
            id: r.digest("id")?,
        },
        8 => Message::FileDone {
            index: r.varint("index")?,
            blake3: r.digest("blake3")?,
        },
        9 => Message::Delete {
            path: r.path("path")?,
        },
        10 => Message::EndOfList,
        11 => Message::Done,
        16 => Message::KeepAlive,
        12 => Message::Summary {
            json: r.rest().to_vec(),
        },
        13 => {
            let index = if r.flag("index")? {
                Some(r.varint("index")?)
            } else {
                None
            };
            Message::Error {
                index,
                message: r.text("message", MAX_TEXT)?,
            }
        }
        14 => {
            let kind = match r.u8("kind")? {
                0 => QueryKind::Users,
                1 => QueryKind::Groups,
                2 => QueryKind::PathInUse(r.path("path")?),
                b => {
                    r.pos -= 1;
                    return Err(r.bad("kind", format!("unknown query kind {b}")));
                }
            };
            Message::Query { kind }
        }
        15 => Message::QueryReply {
            json: r.rest().to_vec(),
        },
        _ => unreachable!("kind checked by the caller"),
    };
    if r.left() != 0 {
        return Err(r.bad(
            "payload",
            format!("{} bytes follow the last field", r.left()),
        ));
    }
    Ok(msg)
}

fn decode_entry(r: &mut Rd<'_>) -> Result<Entry, Bad> {
    let index = r.varint("index")?;
    let path = r.path("path")?;
    let b = r.u8("kind")?;
    let Some(kind) = EntryKind::from_u8(b) else {
        r.pos -= 1;
        return Err(r.bad("kind", format!("unknown file type {b}")));
    };
    let perm = r.u32("perm")?;
    let uid = r.u32("uid")?;
    let gid = r.u32("gid")?;
    let size = r.varint("size")?;
    let rdev = r.varint("rdev")?;
    let atime = r.time("atime")?;
    let mtime = r.time("mtime")?;
    // Each xattr takes at least 3 bytes: two lengths and a name byte.
    let n = r.count("xattrs", MAX_XATTRS, 3)?;
    let mut xattrs = Vec::with_capacity(n);
    let mut total = 0usize;
    for _ in 0..n {
        let at = r.pos;
        let name = r.bytes("xattr name", MAX_XATTR_NAME)?;
        xattr_name(name).map_err(|reason| Bad {
            field: "xattr name",
            at,
            reason,
        })?;
        let value = r.bytes("xattr value", MAX_XATTR_VALUE)?;
        total += name.len() + value.len();
        cap(total, MAX_XATTRS_TOTAL).map_err(|reason| Bad {
            field: "xattrs",
            at,
            reason,
        })?;
        xattrs.push((name.to_vec(), value.to_vec()));
    }
    let symlink_target = if r.flag("symlink_target")? {
        Some(r.path("symlink_target")?)
    } else {
        None
    };
    let (hardlink_of, link_leader) = match r.u8("hardlink_of")? {
        0 => (None, false),
        1 => (Some(r.varint("hardlink_of")?), false),
        2 => (None, true),
        b => {
            r.pos -= 1;
            return Err(r.bad("hardlink_of", format!("link tag {b} is not 0, 1 or 2")));
        }
    };
    let regions = if r.flag("regions")? {
        let n = r.count("regions", MAX_REGIONS, 2)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push((r.varint("regions")?, r.varint("regions")?));
        }
        Some(v)
    } else {
        None
    };
    let attrs = r.u32("attrs")?;
    let e = Entry {
        index,
        path,
        kind,
        perm,
        uid,
        gid,
        size,
        rdev,
        atime,
        mtime,
        xattrs,
        symlink_target,
        hardlink_of,
        link_leader,
        regions,
        attrs,
    };
    let at = r.pos;
    entry_checks(&e).map_err(|(field, reason)| Bad { field, at, reason })?;
    Ok(e)
}

fn unzstd(p: &[u8]) -> Result<Vec<u8>, String> {
    let declared = match zstd::zstd_safe::get_frame_content_size(p) {
        Ok(Some(n)) => n,
        Ok(None) => return Err("the zstd frame does not declare its content size".into()),
        Err(_) => return Err("not a zstd frame".into()),
    };
    if declared > MAX_FRAME as u64 {
        return Err(format!(
            "declared content size {declared} is over the limit of {MAX_FRAME}"
        ));
    }
    match zstd::zstd_safe::find_frame_compressed_size(p) {
        Ok(n) if n == p.len() => {}
        Ok(n) => return Err(format!("{} bytes follow the zstd frame", p.len() - n)),
        Err(_) => return Err("damaged zstd frame".into()),
    }
    let out = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            let mut z = zstd::bulk::Decompressor::new()?;
            z.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                ZSTD_WINDOW_LOG_MAX,
            ))?;
            *d = Some(z);
        }
        // The output buffer is the declared size, and zstd refuses to
        // write past it: the actual size cannot exceed the cap either.
        d.as_mut()
            .expect("just set")
            .decompress(p, declared as usize)
    });
    let out = out.map_err(|e| format!("damaged zstd frame: {e}"))?;
    if out.len() as u64 != declared {
        return Err(format!(
            "the zstd frame declares {declared} bytes but holds {}",
            out.len()
        ));
    }
    Ok(out)
}

/// Decodes one frame at the start of `buf`, whose first byte is at
/// `offset` in the stream (for errors): `Ok(None)` if more bytes are
/// needed, else the message and the frame's length. The header is checked
/// (length cap, kind, flags) as soon as its 6 bytes are present, before
/// the payload has arrived.
pub fn decode_frame(buf: &[u8], offset: u64) -> Result<Option<(Message, usize)>, WireError> {
    let Some(h) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let (kind, flags) = (h[4], h[5]);
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge {
            offset,
            len: len as u64,
            max: MAX_FRAME as u64,
        });
    }
    let Some(&name) = KIND_NAMES.get(usize::from(kind)).filter(|_| kind != 0) else {
        return Err(WireError::UnknownKind { offset, kind });
    };
    if flags & !FLAG_ZSTD != 0 {
        return Err(WireError::Flags {
            kind: name,
            offset,
            flags,
        });
    }
    let Some(payload) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Ok(None);
    };
    let plain;
    let payload = if flags & FLAG_ZSTD != 0 {
        plain = unzstd(payload).map_err(|reason| WireError::Zstd {
            kind: name,
            offset,
            reason,
        })?;
        &plain[..]
    } else {
        payload
    };
    let msg = decode_payload(kind, payload).map_err(|b| WireError::Field {
        kind: name,
        offset,
        field: b.field,
        at: b.at as u64,
        reason: b.reason,
    })?;
    Ok(Some((msg, FRAME_HEADER_LEN + len)))
}

/// What [`Decoder::next`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// The peer's preamble: always first.
    Preamble(Preamble),
    /// A message.
    Message(Message),
}

/// An incremental decoder of one direction of a session: give it bytes as
/// they arrive ([`feed`](Decoder::feed)), take what they complete
/// ([`next`](Decoder::next) until `None`), and at the end of the stream
/// ask whether it ended cleanly ([`finish`](Decoder::finish)).
///
/// It buffers at most one frame beyond what it was last fed, as long as
/// the caller drains [`next`](Decoder::next) after each feed. After an
/// error the stream is out of step: drop the decoder.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    preamble_done: bool,
}

impl Decoder {
    /// A decoder that expects the peer's preamble first.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Adds bytes read from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        // Shift out what was consumed once it is at least half the buffer,
        // so each byte moves at most once on average.
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next preamble or message the bytes fed so far complete, or
    /// `None` if more are needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Received>, WireError> {
        let buf = &self.buf[self.start..];
        let (r, used) = if self.preamble_done {
            match decode_frame(buf, self.offset)? {
                None => return Ok(None),
                Some((m, used)) => (Received::Message(m), used),
            }
        } else {
            match decode_preamble(buf)? {
                None => return Ok(None),
                Some((p, used)) => {
                    self.preamble_done = true;
                    (Received::Preamble(p), used)
                }
            }
        };
        self.start += used;
        self.offset += used as u64;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(r))
    }

    /// At the end of the stream: an error if it stopped inside the
    /// preamble or a frame (or never sent one), else `Ok`.
    pub fn finish(&self) -> Result<(), WireError> {
        let buf = &self.buf[self.start..];
        if !self.preamble_done {
            let n = buf.len().min(MAGIC.len());
            if buf[..n] != MAGIC[..n] {
                return Err(WireError::NotHaul { got: escape(buf) });
            }
            let need = match buf.get(MAGIC.len() + 2) {
                Some(&l) => MAGIC.len() + 3 + usize::from(l),
                None => MAGIC.len() + 3,
            };
            return Err(WireError::Truncated {
                what: "preamble",
                offset: self.offset,
                have: buf.len() as u64,
                need: need as u64,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let (what, need) = match buf.get(..FRAME_HEADER_LEN) {
            None => ("frame header", FRAME_HEADER_LEN),
            Some(h) => (
                KIND_NAMES
                    .get(usize::from(h[4]))
                    .copied()
                    .unwrap_or("frame"),
                FRAME_HEADER_LEN + u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize,
            ),
        };
        Err(WireError::Truncated {
            what,
            offset: self.offset,
            have: buf.len() as u64,
            need: need as u64,
        })
    }
}

//! Zip header codecs haul needs beyond what crates write: the Info-ZIP
//! Unix uid/gid field (0x7875), the extended timestamp (0x5455), haul's own
//! extra field (0x6168, see `FORMAT.md`), and the fixed zip records
//! (local header, central directory record, data descriptor, zip64
//! records, end of central directory), all little-endian as APPNOTE 6.3.
//!
//! Decoders never panic and never allocate beyond their input.

/// Info-ZIP "ux": Unix uid and gid of any size.
pub const UNIX_ID: u16 = 0x7875;
/// Extended timestamp "UT": seconds since the epoch, signed 32-bit.
pub const TIMESTAMP_ID: u16 = 0x5455;
/// Zip64 extended information.
pub const ZIP64_ID: u16 = 0x0001;
/// haul's field ("ha"): what zip cannot carry otherwise.
pub const HAUL_ID: u16 = 0x6168;

/// Local file header signature.
pub const LOCAL_SIG: u32 = 0x0403_4b50;
/// Central directory record signature.
pub const CENTRAL_SIG: u32 = 0x0201_4b50;
/// Data descriptor signature.
pub const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
/// End of central directory signature.
pub const EOCD_SIG: u32 = 0x0605_4b50;
/// Zip64 end of central directory record signature.
pub const EOCD64_SIG: u32 = 0x0606_4b50;
/// Zip64 end of central directory locator signature.
pub const LOCATOR64_SIG: u32 = 0x0706_4b50;

/// General purpose flag: sizes and CRC follow the data.
pub const FLAG_DESCRIPTOR: u16 = 1 << 3;
/// General purpose flag: the name is UTF-8.
pub const FLAG_UTF8: u16 = 1 << 11;

/// Why a field could not be decoded.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZipFieldError {
    /// The field ends before its content does.
    #[error("zip extra field {0:#06x} is truncated")]
    Truncated(u16),
    /// A version this code does not know.
    #[error("zip extra field {0:#06x} has unknown version {1}")]
    Version(u16, u8),
    /// A value out of range.
    #[error("zip extra field {0:#06x}: {1}")]
    Invalid(u16, &'static str),
    /// The encoded field would exceed 65,535 bytes.
    #[error("zip extra field {0:#06x} would be {1} bytes, over the 65,535 zip allows")]
    TooLarge(u16, usize),
}

/// One extra field: id, length, payload. Errors when it would not fit.
pub fn extra_field(id: u16, payload: &[u8]) -> Result<Vec<u8>, ZipFieldError> {
    let len =
        u16::try_from(payload.len()).map_err(|_| ZipFieldError::TooLarge(id, payload.len()))?;
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(payload);
    Ok(v)
}

/// The fields of an extra area, `(id, payload)`; a truncated last field
/// ends the walk (as Info-ZIP unzip does).
pub fn fields(mut extra: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if extra.len() < 4 {
            return None;
        }
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
        if extra.len() < 4 + len {
            extra = &[];
            return None;
        }
        let data = &extra[4..4 + len];
        extra = &extra[4 + len..];
        Some((id, data))
    })
}

/// The 0x7875 field for `uid`, `gid` (version 1, 4-byte ids).
pub fn encode_unix_ids(uid: u32, gid: u32) -> Vec<u8> {
    let mut p = vec![1, 4];
    p.extend_from_slice(&uid.to_le_bytes());
    p.push(4);
    p.extend_from_slice(&gid.to_le_bytes());
    extra_field(UNIX_ID, &p).expect("15 bytes")
}

/// The uid and gid of a 0x7875 payload (ids of 0 to 8 bytes).
pub fn decode_unix_ids(p: &[u8]) -> Result<(u64, u64), ZipFieldError> {
    let t = ZipFieldError::Truncated(UNIX_ID);
    let (&ver, mut rest) = p.split_first().ok_or(t.clone())?;
    if ver != 1 {
        return Err(ZipFieldError::Version(UNIX_ID, ver));
    }
    let mut id = || -> Result<u64, ZipFieldError> {
        let (&n, r) = rest.split_first().ok_or(t.clone())?;
        let n = usize::from(n);
        if n > 8 {
            return Err(ZipFieldError::Invalid(UNIX_ID, "id wider than 8 bytes"));
        }
        if r.len() < n {
            return Err(t.clone());
        }
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&r[..n]);
        rest = &r[n..];
        Ok(u64::from_le_bytes(b))
    };
    let uid = id()?;
    let gid = id()?;
    Ok((uid, gid))
}

/// The 0x5455 field with a modification time (and an access time, for a
/// local header). `None` when a time does not fit its signed 32 bits.
pub fn encode_timestamp(mtime: i64, atime: Option<i64>) -> Option<Vec<u8>> {
    let m = i32::try_from(mtime).ok()?;
    let mut p = vec![if atime.is_some() { 3 } else { 1 }];
    p.extend_from_slice(&m.to_le_bytes());
    if let Some(a) = atime {
        p.extend_from_slice(&i32::try_from(a).ok()?.to_le_bytes());
    }
    Some(extra_field(TIMESTAMP_ID, &p).expect("small"))
}

/// The modification and access times of a 0x5455 payload, those present.
/// (A central directory's field holds at most the modification time,
/// whatever its flags say.)
pub fn decode_timestamp(p: &[u8]) -> Result<(Option<i64>, Option<i64>), ZipFieldError> {
    let (&flags, mut rest) = p
        .split_first()
        .ok_or(ZipFieldError::Truncated(TIMESTAMP_ID))?;
    let mut take = |present: bool| {
        if !present || rest.len() < 4 {
            return None;
        }
        let v = i32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        Some(i64::from(v))
    };
    let m = take(flags & 1 != 0);
    let a = take(flags & 2 != 0);
    Ok((m, a))
}

/// What a member is beyond what zip says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaulKind {
    /// What the zip entry says (file, directory, symlink).
    Plain = 0,
    /// A character device (`rdev` set).
    CharDev = 1,
    /// A block device (`rdev` set).
    BlockDev = 2,
    /// A fifo.
    Fifo = 3,
    /// Another name of the earlier member `link`; no data here.
    Hardlink = 4,
}

/// haul's extra field: exact times, specials, hardlinks, holes, extended
/// attributes. Layout (version 1): `u8 version, u8 kind, i64 mtime_s,
/// u32 mtime_ns, i64 atime_s, u32 atime_ns`, then records `u8 tag, u16 len,
/// bytes`: 1 rdev (u64), 2 hardlink target path, 3 data regions
/// (`u64 offset, u64 len` each), 4 one attribute (`u16 name len, name,
/// value`). Unknown tags are skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaulExtra {
    /// The member's kind, where zip has none for it.
    pub kind: HaulKind,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, u32),
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, u32),
    /// A device's number.
    pub rdev: u64,
    /// A hardlink's earlier member path.
    pub link: Vec<u8>,
    /// A sparse file's data regions (the zip data holds the whole file,
    /// holes as zeros).
    pub regions: Option<Vec<(u64, u64)>>,
    /// Extended attributes (ACLs and capabilities are ones too).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

const HAUL_VERSION: u8 = 1;

impl HaulExtra {
    /// The whole extra field (id and length included).
    pub fn encode(&self) -> Result<Vec<u8>, ZipFieldError> {
        let mut p = vec![HAUL_VERSION, self.kind as u8];
        p.extend_from_slice(&self.mtime.0.to_le_bytes());
        p.extend_from_slice(&self.mtime.1.to_le_bytes());
        p.extend_from_slice(&self.atime.0.to_le_bytes());
        p.extend_from_slice(&self.atime.1.to_le_bytes());
        let mut rec = |tag: u8, parts: &[&[u8]]| -> Result<(), ZipFieldError> {
            let len: usize = parts.iter().map(|b| b.len()).sum();
            let l = u16::try_from(len).map_err(|_| ZipFieldError::TooLarge(HAUL_ID, len))?;
            p.push(tag);
            p.extend_from_slice(&l.to_le_bytes());
            for b in parts {
                p.extend_from_slice(b);
            }
            Ok(())
        };
        if matches!(self.kind, HaulKind::CharDev | HaulKind::BlockDev) {
            rec(1, &[&self.rdev.to_le_bytes()])?;
        }
        if self.kind == HaulKind::Hardlink {
            rec(2, &[&self.link])?;
        }
        if let Some(r) = &self.regions {
            let b: Vec<u8> = r
                .iter()
                .flat_map(|&(o, l)| o.to_le_bytes().into_iter().chain(l.to_le_bytes()))
                .collect();
            rec(3, &[&b])?;
        }
        for (k, v) in &self.xattrs {
            let kl =
                u16::try_from(k.len()).map_err(|_| ZipFieldError::TooLarge(HAUL_ID, k.len()))?;
            rec(4, &[&kl.to_le_bytes(), k, v])?;
        }
        let n = p.len();
        extra_field(HAUL_ID, &p).map_err(|_| ZipFieldError::TooLarge(HAUL_ID, n + 4))
    }

    /// Decodes a payload (without id and length).
    pub fn decode(p: &[u8]) -> Result<HaulExtra, ZipFieldError> {
        let t = ZipFieldError::Truncated(HAUL_ID);
        if p.len() < 26 {
            return Err(t);
        }
        if p[0] != HAUL_VERSION {
            return Err(ZipFieldError::Version(HAUL_ID, p[0]));
        }
        let kind = match p[1] {
            0 => HaulKind::Plain,
            1 => HaulKind::CharDev,
            2 => HaulKind::BlockDev,
            3 => HaulKind::Fifo,
            4 => HaulKind::Hardlink,
            _ => return Err(ZipFieldError::Invalid(HAUL_ID, "unknown kind")),
        };
        let i64_at = |o: usize| i64::from_le_bytes(p[o..o + 8].try_into().expect("8"));
        let u32_at = |o: usize| u32::from_le_bytes(p[o..o + 4].try_into().expect("4"));
        let ns = |v: u32| {
            if v < 1_000_000_000 {
                Ok(v)
            } else {
                Err(ZipFieldError::Invalid(HAUL_ID, "nanoseconds out of range"))
            }
        };
        let mut x = HaulExtra {
            kind,
            mtime: (i64_at(2), ns(u32_at(10))?),
            atime: (i64_at(14), ns(u32_at(22))?),
            rdev: 0,
            link: Vec::new(),
            regions: None,
            xattrs: Vec::new(),
        };
        let mut rest = &p[26..];
        while !rest.is_empty() {
            if rest.len() < 3 {
                return Err(t);
            }
            let tag = rest[0];
            let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
            let body = rest.get(3..3 + len).ok_or(t.clone())?;
            rest = &rest[3 + len..];
            match tag {
                // A record that does not belong to the kind is refused, not
                // kept: it would be read one way here and written another
                // (found by the `manifest` fuzz target).
                1 if !matches!(kind, HaulKind::CharDev | HaulKind::BlockDev) => {
                    return Err(ZipFieldError::Invalid(
                        HAUL_ID,
                        "a device number on a member that is not a device",
                    ))
                }
                2 if kind != HaulKind::Hardlink => {
                    return Err(ZipFieldError::Invalid(
                        HAUL_ID,
                        "a hardlink target on a member that is not a hardlink",
                    ))
                }
                1 => {
                    let b: [u8; 8] = body.try_into().map_err(|_| t.clone())?;
                    x.rdev = u64::from_le_bytes(b);
                }
                2 => x.link = body.to_vec(),
                3 => {
                    if body.len() % 16 != 0 {
                        return Err(t);
                    }
                    let r: Vec<(u64, u64)> = body
                        .chunks_exact(16)
                        .map(|c| {
                            (
                                u64::from_le_bytes(c[..8].try_into().expect("8")),
                                u64::from_le_bytes(c[8..].try_into().expect("8")),
                            )
                        })
                        .collect();
                    // Regions in order, not overlapping: the reader skips
                    // the holes between them.
                    let mut end = 0u64;
                    for &(o, l) in &r {
                        if o < end {
                            return Err(ZipFieldError::Invalid(HAUL_ID, "regions out of order"));
                        }
                        end = o
                            .checked_add(l)
                            .ok_or(ZipFieldError::Invalid(HAUL_ID, "region past 2^64"))?;
                    }
                    x.regions = Some(r);
                }
                4 => {
                    if body.len() < 2 {
                        return Err(t);
                    }
                    let kl = usize::from(u16::from_le_bytes([body[0], body[1]]));
                    let k = body.get(2..2 + kl).ok_or(t.clone())?;
                    x.xattrs.push((k.to_vec(), body[2 + kl..].to_vec()));
                }
                _ => {}
            }
        }
        if x.kind == HaulKind::Hardlink && x.link.is_empty() {
            return Err(ZipFieldError::Invalid(HAUL_ID, "hardlink without a target"));
        }
        Ok(x)
    }
}

/// MS-DOS date and time (UTC; readers prefer the 0x5455 field) of a
/// time in seconds since the epoch, clamped to 1980..2107.
pub fn dos_datetime(secs: i64) -> (u16, u16) {
    const MIN: i64 = 315_532_800; // 1980-01-01
    const MAX: i64 = 4_354_819_199; // 2107-12-31 23:59:59
    let s = secs.clamp(MIN, MAX);
    let days = s.div_euclid(86_400);
    let rem = s.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let time = ((rem / 3600) << 11 | (rem % 3600 / 60) << 5 | ((rem % 60) / 2)) as u16;
    let date = ((y - 1980) << 9 | m << 5 | d) as u16;
    (time, date)
}

/// Seconds since the epoch of an MS-DOS date and time, read as UTC.
pub fn dos_to_unix(time: u16, date: u16) -> i64 {
    let y = 1980 + i64::from(date >> 9);
    let m = i64::from((date >> 5) & 15).clamp(1, 12);
    let d = i64::from(date & 31).max(1);
    let days = days_from_civil(y, m, d);
    days * 86_400
        + i64::from(time >> 11) * 3600
        + i64::from((time >> 5) & 63) * 60
        + i64::from(time & 31) * 2
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What a local header and a central directory record share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    /// Version needed to extract (20, or 45 with zip64).
    pub version_needed: u16,
    /// General purpose flags.
    pub flags: u16,
    /// Compression method (0 store, 8 deflate, 93 zstd).
    pub method: u16,
    /// MS-DOS time.
    pub dos_time: u16,
    /// MS-DOS date.
    pub dos_date: u16,
    /// CRC-32 of the data.
    pub crc: u32,
    /// Compressed size.
    pub csize: u64,
    /// Uncompressed size.
    pub usize: u64,
    /// The member's name.
    pub name: Vec<u8>,
}

const MAX32: u64 = 0xFFFF_FFFF;

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// A 32-bit field's value: the size, or 0xFFFFFFFF with the size in the
/// zip64 field.
fn field32(x: u64, zip64: &mut Vec<u8>) -> u32 {
    if x >= MAX32 {
        put64(zip64, x);
        u32::MAX
    } else {
        x as u32
    }
}

impl EntryHeader {
    /// A local file header. With `zip64_local` (a member whose sizes follow
    /// in a data descriptor but may pass 4 GiB) the sizes are 0xFFFFFFFF
    /// and a zip64 field with zeros is written, so readers expect 8-byte
    /// descriptor sizes. `extra` is appended after that.
    pub fn local(&self, zip64_local: bool, extra: &[u8]) -> Vec<u8> {
        let mut z = Vec::new();
        let (cs, us) = if zip64_local {
            put64(&mut z, self.usize);
            put64(&mut z, self.csize);
            (u32::MAX, u32::MAX)
        } else {
            let us = field32(self.usize, &mut z);
            let cs = field32(self.csize, &mut z);
            (cs, us)
        };
        let z = if z.is_empty() {
            Vec::new()
        } else {
            extra_field(ZIP64_ID, &z).expect("small")
        };
        let mut v = Vec::with_capacity(30 + self.name.len() + z.len() + extra.len());
        put32(&mut v, LOCAL_SIG);
        put16(&mut v, self.version_needed);
        put16(&mut v, self.flags);
        put16(&mut v, self.method);
        put16(&mut v, self.dos_time);
        put16(&mut v, self.dos_date);
        put32(&mut v, self.crc);
        put32(&mut v, cs);
        put32(&mut v, us);
        put16(&mut v, self.name.len() as u16);
        put16(&mut v, (z.len() + extra.len()) as u16);
        v.extend_from_slice(&self.name);
        v.extend_from_slice(&z);
        v.extend_from_slice(extra);
        v
    }

    /// A central directory record, made by Unix (3) with spec 6.3.
    pub fn central(&self, external: u32, offset: u64, extra: &[u8]) -> Vec<u8> {
        let mut z = Vec::new();
        let us = field32(self.usize, &mut z);
        let cs = field32(self.csize, &mut z);
        let off = field32(offset, &mut z);
        let z = if z.is_empty() {
            Vec::new()
        } else {
            extra_field(ZIP64_ID, &z).expect("small")
        };
        let mut v = Vec::with_capacity(46 + self.name.len() + z.len() + extra.len());
        put32(&mut v, CENTRAL_SIG);
        put16(&mut v, (3 << 8) | 63);
        put16(&mut v, self.version_needed);
        put16(&mut v, self.flags);
        put16(&mut v, self.method);
        put16(&mut v, self.dos_time);
        put16(&mut v, self.dos_date);
        put32(&mut v, self.crc);
        put32(&mut v, cs);
        put32(&mut v, us);
        put16(&mut v, self.name.len() as u16);
        put16(&mut v, (z.len() + extra.len()) as u16);
        put16(&mut v, 0); // comment length
        put16(&mut v, 0); // disk number
        put16(&mut v, 0); // internal attributes
        put32(&mut v, external);
        put32(&mut v, off);
        v.extend_from_slice(&self.name);
        v.extend_from_slice(&z);
        v.extend_from_slice(extra);
        v
    }
}

/// A data descriptor (with its signature), 8-byte sizes when `zip64`.
pub fn data_descriptor(crc: u32, csize: u64, usize: u64, zip64: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    put32(&mut v, DESCRIPTOR_SIG);
    put32(&mut v, crc);
    if zip64 {
        put64(&mut v, csize);
        put64(&mut v, usize);
    } else {
        put32(&mut v, csize as u32);
        put32(&mut v, usize as u32);
    }
    v
}

/// The end records for `entries` records of `cd_size` bytes at
/// `cd_offset`: a zip64 record and locator first when any value does not
/// fit the classic record.
pub fn end_records(entries: u64, cd_offset: u64, cd_size: u64) -> Vec<u8> {
    let mut v = Vec::new();
    let zip64 = entries >= 0xFFFF || cd_offset >= MAX32 || cd_size >= MAX32;
    if zip64 {
        let eocd64_at = cd_offset + cd_size;
        put32(&mut v, EOCD64_SIG);
        put64(&mut v, 44);
        put16(&mut v, (3 << 8) | 63);
        put16(&mut v, 45);
        put32(&mut v, 0);
        put32(&mut v, 0);
        put64(&mut v, entries);
        put64(&mut v, entries);
        put64(&mut v, cd_size);
        put64(&mut v, cd_offset);
        put32(&mut v, LOCATOR64_SIG);
        put32(&mut v, 0);
        put64(&mut v, eocd64_at);
        put32(&mut v, 1);
    }
    put32(&mut v, EOCD_SIG);
    put16(&mut v, 0);
    put16(&mut v, 0);
    let n = if zip64 { 0xFFFF } else { entries as u16 };
    put16(&mut v, n);
    put16(&mut v, n);
    put32(&mut v, if zip64 { u32::MAX } else { cd_size as u32 });
    put32(&mut v, if zip64 { u32::MAX } else { cd_offset as u32 });
    put16(&mut v, 0);
    v
}

/// A local file header's fixed part, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFixed {
    /// General purpose flags.
    pub flags: u16,
    /// Compression method.
    pub method: u16,
    /// CRC-32 (0 with a data descriptor).
    pub crc: u32,
    /// Compressed size (32-bit field).
    pub csize: u32,
    /// Uncompressed size (32-bit field).
    pub usize: u32,
    /// Name length.
    pub name_len: u16,
    /// Extra field length.
    pub extra_len: u16,
}

/// Parses a local header's first 30 bytes; `None` if the signature is
/// wrong or it is short.
pub fn parse_local(b: &[u8]) -> Option<LocalFixed> {
    if b.len() < 30 || u32::from_le_bytes(b[..4].try_into().ok()?) != LOCAL_SIG {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    Some(LocalFixed {
        flags: u16_at(6),
        method: u16_at(8),
        crc: u32_at(14),
        csize: u32_at(18),
        usize: u32_at(22),
        name_len: u16_at(26),
        extra_len: u16_at(28),
    })
}

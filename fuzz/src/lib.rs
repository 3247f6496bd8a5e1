//! The bodies of haul's fuzz targets, as plain functions.
//!
//! Each takes arbitrary bytes, runs one family of decoders on them with
//! capped sizes, and panics only if a decoder breaks an invariant (a
//! round-trip that disagrees, a path-traversal name getting through). A
//! decoder returning `Err` is the expected outcome for most inputs.
//!
//! The libFuzzer targets in `fuzz_targets/` are one-line wrappers, and
//! `src/bin/repro.rs` calls the same functions on a file or stdin, so a crash
//! found by the fuzzer reproduces with a plain stable `cargo run`.
#![deny(missing_docs)]

use haul_formats::{
    bundle_member, decode_blob, decode_blob_unverified, decode_tree, encode_blob, encode_tree,
    merge_indexes, pack_trailer_len, parse_pack_trailer, BlobKind, Id, IndexReader, Lock, NodeKind,
    PackReader, RepoConfig, Snapshot, TreeReader,
};

/// Inputs longer than this are ignored: the decoders' own caps are what is
/// under test, not the fuzzer's patience.
pub const MAX_INPUT: usize = 1 << 20;

/// Plaintext cap handed to blob decoders.
pub const MAX_BLOB: usize = 4 << 20;

/// A target body.
pub type Target = fn(&[u8]);

/// The targets by name, for the reproducer.
pub const TARGETS: &[(&str, Target)] = &[
    ("blob", blob),
    ("pack", pack),
    ("index", index),
    ("tree", tree),
    ("snapshot", snapshot),
    ("tar", tar),
    ("extract", extract),
    ("zip", zip),
    ("manifest", manifest),
    ("wire", wire),
];

/// Blob decoding: raw and zstd payloads, encrypted and unknown encodings.
pub fn blob(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    if let Ok((kind, plain)) = decode_blob_unverified(data, MAX_BLOB) {
        assert!(plain.len() <= MAX_BLOB);
        let id = Id::hash(&plain);
        let (kind2, plain2) = decode_blob(data, &id, MAX_BLOB).expect("verified decode");
        assert_eq!((kind, &plain), (kind2, &plain2));
        let again = encode_blob(kind, &plain, 1).expect("re-encode");
        assert_eq!(
            decode_blob(&again.bytes, &id, plain.len())
                .expect("round trip")
                .1,
            plain
        );
    }
    let _ = decode_blob(data, &Id::default(), 16);
}

/// Pack trailers from a suffix, and whole packs with every blob read.
pub fn pack(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    if let Ok(need) = pack_trailer_len(data) {
        if let Ok(t) = parse_pack_trailer(data) {
            assert!(need <= data.len() as u64);
            assert!(t.entries.len() as u64 * 48 < need);
        }
    }
    check_pack(data);
    // Random bytes almost never carry a valid trailer checksum, which would
    // hide everything behind it from the fuzzer: also try the input with the
    // checksum recomputed, as a writer with a bug (not a flipped bit) would.
    if let Ok(need) = pack_trailer_len(data) {
        if need <= data.len() as u64 {
            let mut fixed = data.to_vec();
            let n = fixed.len();
            let start = n - need as usize;
            let sum = Id::hash(&fixed[start..n - 40]);
            fixed[n - 40..n - 8].copy_from_slice(sum.as_bytes());
            check_pack(&fixed);
        }
    }
}

fn check_pack(data: &[u8]) {
    if let Ok(reader) = PackReader::new(data) {
        let _ = reader.verify(&Id::default());
        for e in reader.entries() {
            assert!(e.range().end <= data.len() as u64);
            if let Ok(plain) = reader.read_blob(e, MAX_BLOB) {
                assert_eq!(plain.len(), e.raw_len as usize);
                assert_eq!(Id::hash(&plain), e.id);
            }
        }
        // Bundles: a decoded stored blob is exactly as long as its entries
        // say, and each member is its slice.
        for group in reader.stored_blobs() {
            if let Ok(plain) = reader.read_stored(group, MAX_BLOB) {
                let last = group[group.len() - 1];
                let len = u64::from(last.inner) + u64::from(last.raw_len);
                assert_eq!(plain.len() as u64, len);
                for e in group {
                    if let Ok(m) = bundle_member(&plain, e.inner, e.raw_len, &e.id) {
                        assert_eq!(m.len(), e.raw_len as usize);
                    }
                }
            }
        }
    }
}

/// Index files: header, lookups, full verification, iteration and merging.
pub fn index(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    check_index(data);
    // As for packs: also try with the trailing checksum made right, so the
    // fuzzer reaches the record checks and the merge.
    if data.len() >= 32 {
        let mut fixed = data.to_vec();
        let n = fixed.len();
        let sum = Id::hash(&fixed[..n - 32]);
        fixed[n - 32..].copy_from_slice(sum.as_bytes());
        check_index(&fixed);
    }
}

fn check_index(data: &[u8]) {
    let Ok(reader) = IndexReader::new(data) else {
        return;
    };
    let verified = reader.verify().is_ok();
    let probe = Id::hash(data);
    let _ = reader.lookup(&probe);
    let _ = reader.lookup_kind(&probe, BlobKind::Tree);
    let entries: Vec<_> = reader.iter().take(10_000).collect();
    for e in entries.iter().flatten() {
        let found = reader.lookup_kind(&e.id, e.kind);
        if verified {
            assert_eq!(found.expect("lookup").expect("present").id, e.id);
        }
    }
    let mut out = Vec::new();
    let merged = merge_indexes(&[reader.clone(), reader.clone()], |_| true, &mut out);
    if verified {
        let merged = merged.expect("merging a verified index with itself");
        assert_eq!(merged.records, reader.len());
        assert_eq!(out, data, "an index merged with itself must not change");
    }
}

/// Tree blob plaintext: every node checked, names safe, re-encoding stable.
pub fn tree(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    if let Ok(reader) = TreeReader::new(data) {
        for node in reader.take(100_000) {
            let Ok(node) = node else { break };
            assert!(!node.name.is_empty() && node.name != b"." && node.name != b"..");
            assert!(!node.name.contains(&b'/') && !node.name.contains(&0));
            if let NodeKind::Symlink { target } = &node.kind {
                assert!(!target.is_empty());
            }
        }
    }
    if let Ok(nodes) = decode_tree(data) {
        let bytes = encode_tree(nodes.clone()).expect("decoded nodes re-encode");
        assert_eq!(decode_tree(&bytes).expect("re-decode"), nodes);
    }
}

/// JSON records: snapshot, lock, repository config.
pub fn snapshot(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let id = Id::hash(data);
    if let Ok(s) = Snapshot::from_json(data, &id) {
        let (id2, bytes) = s.to_json().expect("re-encode snapshot");
        assert_eq!(Snapshot::from_json(&bytes, &id2).expect("round trip"), s);
    }
    if let Ok(l) = Lock::from_json(data, &id) {
        let (id2, bytes) = l.to_json().expect("re-encode lock");
        assert_eq!(Lock::from_json(&bytes, &id2).expect("round trip"), l);
    }
    if let Ok(c) = RepoConfig::from_json(data) {
        let bytes = c.to_json().expect("re-encode config");
        assert_eq!(RepoConfig::from_json(&bytes).expect("round trip"), c);
    }
}

/// The tar stream reader: every member and all its data read, within the
/// reader's caps; then the same bytes extracted (see [`extract`]).
pub fn tar(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut r = haul_formats::tarfmt::TarReader::new(data);
    let mut buf = [0u8; 4096];
    'members: while let Ok(Some(m)) = r.next_member() {
        if let Some(map) = &m.sparse {
            let mut end = 0;
            for &(o, l) in map {
                assert!(
                    o >= end && o + l <= m.size,
                    "sparse map out of bounds: {map:?}"
                );
                end = o + l;
            }
        }
        let mut got = 0u64;
        loop {
            match r.read_data(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(_) => break 'members,
            }
        }
        assert_eq!(got, m.data_len(), "data read is not the member's length");
        assert!(r.position() <= data.len() as u64);
    }
    extract(data);
}

/// What a directory holds, by lstat: path, kind and mode bits, size,
/// mtime, link count and symlink target; `skip` (a name at the top) left
/// out.
fn listing(root: &std::path::Path, skip: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if d == root && e.file_name() == skip {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let target = std::fs::read_link(&p).ok();
            out.push(format!(
                "{} {:o} {} {} {} {:?}",
                p.display(),
                m.mode(),
                m.len(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                m.nlink(),
                target
            ));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Extraction of an archive of any format (tar, tar.zst, zip: told apart
/// by content) into a throwaway directory: whatever the bytes, nothing
/// outside DST may change. A sibling directory and file stand for the
/// outside; an `Err` or failed members are normal outcomes.
pub fn extract(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("file"), b"keep").expect("write");
    let archive = t.path().join("in.archive");
    std::fs::write(&archive, data).expect("write");
    let dst = t.path().join("dst");
    let before = listing(t.path(), "dst");
    let opts = haul_engine::ExtractOptions {
        jobs: 2,
        ..Default::default()
    };
    let _ = haul_engine::extract_archive(
        &haul_engine::ArchiveInput::Path(archive),
        &dst,
        &opts,
        &haul_engine::NoProgress,
    );
    assert_eq!(
        before,
        listing(t.path(), "dst"),
        "something outside DST changed"
    );
}

/// The zip reader: the bytes extracted as [`extract`] does (zip is told
/// apart by content; a seed corpus of zips steers the fuzzer there).
pub fn zip(data: &[u8]) {
    extract(data);
}

/// A one-member zip (`f`, stored) whose central record carries `field` as
/// haul's 0x6168 extra field.
fn zip_with_haul_field(field: &[u8], content: &[u8]) -> Option<Vec<u8>> {
    use haul_formats::zipfmt::{end_records, extra_field, EntryHeader, HAUL_ID};
    let extra = extra_field(HAUL_ID, field).ok()?;
    let h = EntryHeader {
        version_needed: 20,
        flags: 0,
        method: 0,
        dos_time: 0,
        dos_date: 0x21,
        crc: crc32fast::hash(content),
        csize: content.len() as u64,
        usize: content.len() as u64,
        name: b"f".to_vec(),
    };
    let mut z = h.local(false, &[]);
    z.extend_from_slice(content);
    let cd_at = z.len() as u64;
    let cd = h.central(0o100644 << 16, 0, &extra);
    z.extend_from_slice(&cd);
    z.extend(end_records(1, cd_at, cd.len() as u64));
    Some(z)
}

/// haul's per-member zip field (0x6168: nanosecond times, kind, device,
/// hardlink target, holes, xattrs): a field that decodes re-encodes to the
/// same value; then a zip carrying it is extracted as [`extract`] does.
pub fn manifest(data: &[u8]) {
    use haul_formats::zipfmt::HaulExtra;
    if data.len() > 60_000 {
        return;
    }
    if let Ok(h) = HaulExtra::decode(data) {
        let again = h.encode().expect("a decoded field re-encodes");
        // encode gives the whole field: id and length, then the payload.
        assert_eq!(HaulExtra::decode(&again[4..]).expect("round trip"), h);
    }
    if let Some(z) = zip_with_haul_field(data, b"content") {
        extract(&z);
    }
}

/// Everything a [`wire::Decoder`](haul_formats::wire::Decoder) yields
/// from `data` fed in pieces of the given sizes (cycled), up to the
/// first error, and whether it stopped on one.
fn wire_decode(data: &[u8], pieces: &[usize]) -> (Vec<haul_formats::wire::Received>, bool) {
    let mut d = haul_formats::wire::Decoder::new();
    let mut got = Vec::new();
    let mut rest = data;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().expect("cycled")).clamp(1, rest.len());
        d.feed(&rest[..n]);
        rest = &rest[n..];
        loop {
            match d.next() {
                Ok(Some(r)) => got.push(r),
                Ok(None) => break,
                Err(_) => return (got, true),
            }
        }
    }
    (got, d.finish().is_err())
}

/// The wire protocol's incremental decoder: the bytes as they are (the
/// preamble check), and behind a valid preamble (the frames), each fed in
/// pieces whose sizes the first byte picks and then whole. Split points
/// must not change what decodes; every message must re-encode, plain and
/// compressed, to bytes that decode to it again (plain ones to the very
/// same bytes); index tracking and the receiver's path check must hold
/// their promises.
pub fn wire(data: &[u8]) {
    use haul_formats::wire::{
        checked_rel_path, decode_frame, encode_frame, encode_preamble, Indexes, Message, Received,
    };
    if data.len() > MAX_INPUT {
        return;
    }
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    // Piece sizes from the seed: 1 to 64 bytes, varied.
    let mut x = u32::from(seed) | 1;
    let pieces: Vec<usize> = (0..16)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            1 + (x >> 16) as usize % 64
        })
        .collect();
    let framed = [encode_preamble("fuzz").expect("preamble"), body.to_vec()].concat();
    for input in [body, &framed[..]] {
        let whole = wire_decode(input, &[usize::MAX]);
        let split = wire_decode(input, &pieces);
        assert_eq!(whole, split, "split points changed what decodes");
        let mut indexes = Indexes::new();
        for r in whole.0 {
            let Received::Message(m) = r else { continue };
            let mut plain = Vec::new();
            encode_frame(&m, None, &mut plain).expect("a decoded message re-encodes");
            let (again, used) = decode_frame(&plain, 0)
                .expect("re-decode")
                .expect("complete");
            assert_eq!((&again, used), (&m, plain.len()));
            let mut z = Vec::new();
            encode_frame(&m, Some(1), &mut z).expect("re-encode compressed");
            assert_eq!(
                decode_frame(&z, 0).expect("re-decode").expect("complete").0,
                m
            );
            if indexes.observe(&m).is_ok() {
                if let Some(i) = m.index() {
                    assert!(i < indexes.announced());
                }
            }
            let path = match &m {
                Message::Entry(e) => &e.path[..],
                Message::Delete { path } => &path[..],
                _ => continue,
            };
            if let Ok(parts) = checked_rel_path(path) {
                for p in parts {
                    assert!(!p.is_empty() && p != b".." && p != b".");
                    assert!(!p.contains(&b'/') && !p.contains(&0));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The targets must accept the trivial inputs without panicking.
    #[test]
    fn smoke() {
        for (_, f) in TARGETS {
            f(b"");
            f(&[0; 64]);
            f(&[0xff; 300]);
        }
    }

    /// Every committed seed (`fuzz/seeds/<target>/*`) replays cleanly: the
    /// hostile ones (escaping paths, symlink tricks, lying sizes) included.
    #[test]
    fn seeds_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        let mut n = 0;
        for (name, f) in TARGETS {
            let Ok(rd) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for e in rd {
                let p = e.unwrap().path();
                f(&std::fs::read(&p).unwrap());
                n += 1;
            }
        }
        assert!(n >= 8, "only {n} seeds found under {}", root.display());
    }
}

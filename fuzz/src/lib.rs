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
}

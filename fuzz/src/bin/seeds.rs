//! Writes a few valid inputs per target into `DIR/<target>/` (default
//! `fuzz/corpus`), so fuzzing starts from real structures instead of
//! guessing magics and checksums.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --bin seeds -- [DIR]
//! ```

use std::path::PathBuf;

use haul_formats::{
    encode_blob, encode_tree, BlobKind, BundleBuilder, Extent, Id, IndexWriter, Lock, Node,
    NodeKind, PackWriter, RepoConfig, Snapshot, SnapshotSummary, Timestamp, Xattr,
    SNAPSHOT_VERSION,
};

fn node(name: &[u8], kind: NodeKind) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: 0o755,
        uid: 1000,
        gid: 1000,
        user: Some(b"u".to_vec()),
        group: None,
        mtime: Timestamp::EPOCH,
        atime: Timestamp::EPOCH,
        ctime: Timestamp::EPOCH,
        inode: 1,
        device: 2,
        nlink: 1,
        size: 100,
        hardlink_group: None,
        xattrs: vec![Xattr {
            name: b"user.x".to_vec(),
            value: b"y".to_vec(),
        }],
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)
    };

    let tree = encode_tree(vec![
        node(
            b"file",
            NodeKind::File {
                data_map: Some(vec![Extent {
                    offset: 10,
                    len: 20,
                }]),
                chunks: vec![Id::hash(b"c")],
            },
        ),
        node(
            b"dir",
            NodeKind::Dir {
                subtree: Id::hash(b"t"),
            },
        ),
        node(
            b"link",
            NodeKind::Symlink {
                target: b"file".to_vec(),
            },
        ),
        node(b"dev", NodeKind::CharDevice { rdev: 5 }),
    ])?;
    write("tree", "four-nodes", &tree)?;
    write("tree", "empty", &encode_tree(vec![])?)?;

    let text = b"some text some text some text some text".repeat(10);
    write(
        "blob",
        "zstd",
        &encode_blob(BlobKind::Data, &text, 3)?.bytes,
    )?;
    write(
        "blob",
        "raw",
        &encode_blob(BlobKind::Tree, b"abc", 3)?.bytes,
    )?;

    let mut pack = PackWriter::new(Vec::new(), 3)?;
    pack.add(BlobKind::Data, &text)?;
    pack.add(BlobKind::Data, b"tiny")?;
    pack.add(BlobKind::Tree, &tree)?;
    let mut bundle = BundleBuilder::new(BlobKind::Data);
    for m in [&b"first member"[..], b"", &text] {
        bundle.push(Id::hash(m), m)?;
    }
    pack.add_bundle(&bundle.finish(3)?)?;
    let pack = pack.finish()?;
    write("pack", "three-blobs-and-a-bundle", &pack.writer)?;

    let mut index = IndexWriter::new();
    index.add_pack(pack.id, &pack.entries);
    index.add_pack(Id::hash(b"other"), &pack.entries[..1]);
    write("index", "two-packs", &index.finish()?.1)?;

    let snap = Snapshot {
        version: SNAPSHOT_VERSION,
        time: Timestamp::new(1_700_000_000, 5)?,
        hostname: "h".into(),
        username: "u".into(),
        paths: vec!["/a".into()],
        tags: vec!["t".into()],
        tree: Id::hash(&tree),
        parent: Some(Id::hash(b"p")),
        summary: SnapshotSummary::default(),
        original: None,
    };
    write("snapshot", "snapshot", &snap.to_json()?.1)?;
    let lock = Lock {
        hostname: "h".into(),
        username: "u".into(),
        pid: 1,
        time: Timestamp::EPOCH,
        exclusive: true,
        refreshed: None,
    };
    write("snapshot", "lock", &lock.to_json()?.1)?;
    let config = RepoConfig::new(Id::hash(b"r"), Timestamp::EPOCH);
    write("snapshot", "config", &config.to_json()?)?;
    eprintln!("seeds written under {}", dir.display());
    Ok(())
}

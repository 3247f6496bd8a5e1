//! Pure readers and writers for haul's on-disk structures.
//!
//! This crate does no filesystem walking and no I/O policy of its own: it turns
//! bytes into typed values and back, and rejects malformed input with an error
//! rather than a panic. Every decoder caps what it allocates by the size of its
//! input or an explicit limit, because repository bytes may come from a
//! damaged disk or a hostile server.
//!
//! A snapshot repository (see `FORMAT.md` beside this crate) holds:
//!
//! - [`RepoConfig`] at `config` (JSON);
//! - pack files at `data/<2 hex>/<id>` ([`PackWriter`], [`PackReader`],
//!   [`parse_pack_trailer`]), each a run of blobs ([`encode_blob`],
//!   [`decode_blob`]) with its own index at the end;
//! - index files at `index/<id>` ([`IndexWriter`], [`IndexReader`],
//!   [`merge_indexes`]): sorted fixed-size records, binary-searchable in place;
//! - tree blobs ([`TreeWriter`], [`TreeReader`], [`Node`]) describing
//!   directories;
//! - snapshot records at `snapshots/<id>` ([`Snapshot`]) and lock records at
//!   `locks/<id>` ([`Lock`]).
//!
//! Every id is a blake3 hash: of a blob's plaintext, or of a file's bytes.
//!
//! # Example
//!
//! Store one file's chunk and a tree naming it, index the pack, find the
//! chunk again:
//!
//! ```
//! use haul_formats::{
//!     decode_blob, decode_tree, encode_tree, BlobKind, Id, IndexReader, IndexWriter, Node,
//!     NodeKind, PackReader, PackWriter, Snapshot, SnapshotSummary, Timestamp,
//!     MAX_DATA_BLOB_LEN, MAX_TREE_BLOB_LEN, SNAPSHOT_VERSION,
//! };
//!
//! # fn main() -> Result<(), haul_formats::FormatError> {
//! let content = b"hello, haul\n";
//! let mut pack = PackWriter::new(Vec::new(), 3)?;
//! let chunk = pack.add(BlobKind::Data, content)?;
//!
//! let file = Node {
//!     name: b"greeting.txt".to_vec(),
//!     kind: NodeKind::File { data_map: None, chunks: vec![chunk.id] },
//!     mode: 0o644,
//!     uid: 1000,
//!     gid: 1000,
//!     user: Some(b"me".to_vec()),
//!     group: None,
//!     mtime: Timestamp::new(1_700_000_000, 0)?,
//!     atime: Timestamp::new(1_700_000_000, 0)?,
//!     ctime: Timestamp::new(1_700_000_000, 0)?,
//!     inode: 42,
//!     device: 1,
//!     nlink: 1,
//!     size: content.len() as u64,
//!     hardlink_group: None,
//!     xattrs: vec![],
//! };
//! let tree = pack.add(BlobKind::Tree, &encode_tree(vec![file.clone()])?)?;
//! let pack = pack.finish()?;
//!
//! let mut index = IndexWriter::new();
//! index.add_pack(pack.id, &pack.entries);
//! let (_written, index_bytes) = index.finish()?;
//!
//! // Later: look the chunk up and read it back from the pack.
//! let index = IndexReader::new(&index_bytes)?;
//! let found = index.lookup(&chunk.id)?.expect("indexed");
//! assert_eq!(found.pack, pack.id);
//! let range = found.range();
//! let stored = &pack.writer[range.start as usize..range.end as usize];
//! let (kind, data) = decode_blob(stored, &chunk.id, MAX_DATA_BLOB_LEN)?;
//! assert_eq!((kind, &data[..]), (BlobKind::Data, &content[..]));
//!
//! // The tree decodes to the same node.
//! let reader = PackReader::new(&pack.writer)?;
//! let tree_bytes = reader.read_blob(&reader.entries()[1], MAX_TREE_BLOB_LEN)?;
//! assert_eq!(decode_tree(&tree_bytes)?, vec![file]);
//!
//! // A snapshot record names the root tree; its id is the hash of its bytes.
//! let snapshot = Snapshot {
//!     version: SNAPSHOT_VERSION,
//!     time: Timestamp::now(),
//!     hostname: "host".into(),
//!     username: "me".into(),
//!     paths: vec!["/home/me".into()],
//!     tags: vec![],
//!     tree: tree.id,
//!     parent: None,
//!     summary: SnapshotSummary { files: 1, bytes: 12, bytes_new: 12, ..Default::default() },
//!     original: None,
//! };
//! let (id, json) = snapshot.to_json()?;
//! assert_eq!(Snapshot::from_json(&json, &id)?, snapshot);
//! assert_eq!(id, Id::hash(&json));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod blob;
mod chunker;
mod codec;
mod error;
mod id;
mod index;
mod layout;
mod pack;
mod snapshot;
pub mod tarfmt;
mod time;
mod tree;
pub mod wire;
pub mod zipfmt;

pub use crate::{
    blob::{
        bundle_member, decode_blob, decode_blob_into, decode_blob_unverified, encode_blob,
        encode_blob_with_id, BlobKind, BundleBuilder, BundleMember, EncodedBlob, EncodedBundle,
        BLOB_HEADER_LEN, ENCODING_ENCRYPTED, ENCODING_RAW, ENCODING_ZSTD, MAX_DATA_BLOB_LEN,
        MAX_TREE_BLOB_LEN, ZSTD_WINDOW_LOG,
    },
    chunker::{ChunkSpan, ChunkerParams, StreamChunk},
    error::FormatError,
    id::{find_by_prefix, Id},
    index::{
        merge_indexes, merged_entries, IndexEntry, IndexLayout, IndexReader, IndexWriter,
        MergedEntry, WrittenIndex, INDEX_FOOTER_LEN, INDEX_HEADER_LEN, INDEX_MAGIC,
        INDEX_RECORD_LEN, INDEX_VERSION,
    },
    layout::{
        RepoConfig, RepoFile, CONFIG_FILE, DATA_DIR, DEFAULT_PACK_SIZE, DEFAULT_ZSTD_LEVEL,
        INDEX_DIR, KEYS_DIR, LOCKS_DIR, MAX_CONFIG_LEN, PACK_SIZE_RANGE, REPO_VERSION,
        SNAPSHOTS_DIR,
    },
    pack::{
        pack_trailer_len, parse_pack_header, parse_pack_trailer, FinishedPack, PackEntry,
        PackReader, PackTrailer, PackWriter, PACK_END_MAGIC, PACK_ENTRY_LEN, PACK_FOOTER_LEN,
        PACK_HEADER_LEN, PACK_MAGIC, PACK_VERSION,
    },
    snapshot::{Lock, Snapshot, SnapshotSummary, MAX_LOCK_LEN, MAX_SNAPSHOT_LEN, SNAPSHOT_VERSION},
    time::Timestamp,
    tree::{
        decode_tree, encode_tree, Extent, Node, NodeKind, TreeReader, TreeWriter, Xattr,
        TREE_HEADER_LEN, TREE_MAGIC, TREE_VERSION,
    },
};

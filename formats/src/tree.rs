//! Tree blobs: one directory's entries with full metadata.
//!
//! ```text
//! "HTRE" | version u32 LE | node | node | ... (to the end of the blob)
//! ```
//!
//! Each node is one [`Node`] in postcard's wire format (a documented, stable
//! encoding: varint integers, zigzag for signed ones, length-prefixed byte
//! strings, enum variants as varint indexes, fields in declaration order).
//! Nodes are sorted by name bytes, strictly, so a directory has one encoding
//! and so one id. Nodes are encoded and decoded one at a time: a huge
//! directory costs its encoded bytes, not a `Vec` of structs.

use serde::{Deserialize, Serialize};

use crate::error::FormatError;
use crate::id::Id;
use crate::time::Timestamp;

/// Magic at the start of a tree blob's plaintext.
pub const TREE_MAGIC: &[u8; 4] = b"HTRE";
/// Tree format version this build reads and writes.
pub const TREE_VERSION: u32 = 1;
/// Length of the tree header.
pub const TREE_HEADER_LEN: usize = 8;

const WHAT: &str = "tree";

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The entry's name: raw bytes, not necessarily UTF-8; never empty, `.`,
    /// `..`, nor containing `/` or NUL.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Type, and what only that type has.
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777` at
    /// most); the file type lives in `kind`.
    pub mode: u32,
    /// Owner's numeric id.
    pub uid: u32,
    /// Group's numeric id.
    pub gid: u32,
    /// Owner's name, if it could be resolved.
    #[serde(with = "serde_bytes")]
    pub user: Option<Vec<u8>>,
    /// Group's name, if it could be resolved.
    #[serde(with = "serde_bytes")]
    pub group: Option<Vec<u8>>,
    /// Modification time.
    pub mtime: Timestamp,
    /// Access time.
    pub atime: Timestamp,
    /// Status-change time (informational; it cannot be restored).
    pub ctime: Timestamp,
    /// Inode number on the source.
    pub inode: u64,
    /// Device number of the source filesystem.
    pub device: u64,
    /// Link count on the source.
    pub nlink: u64,
    /// Size in bytes (for files, the logical size including holes).
    pub size: u64,
    /// Entries with the same key within a snapshot are hard links to one
    /// inode; set only when `nlink > 1`. Each member still carries the full
    /// content, so any one of them restores on its own.
    pub hardlink_group: Option<u64>,
    /// Extended attributes in every namespace (`user.`, `trusted.`,
    /// `security.`, and ACLs as `system.posix_acl_*`), sorted by name.
    pub xattrs: Vec<Xattr>,
}

/// The type of a node, with the fields only that type has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A regular file.
    File {
        /// `None` for a dense file (all of `0..size` is data); for a sparse
        /// file, the data extents in order, everything else being holes.
        data_map: Option<Vec<Extent>>,
        /// Ids of the data blobs whose concatenation is the file's data (the
        /// data extents, concatenated, for a sparse file).
        chunks: Vec<Id>,
    },
    /// A directory.
    Dir {
        /// Id of the tree blob listing its entries.
        subtree: Id,
    },
    /// A symbolic link.
    Symlink {
        /// The target, raw bytes, never empty.
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket (restored, if at all, as a placeholder).
    Socket,
    /// A character device.
    CharDevice {
        /// Device number.
        rdev: u64,
    },
    /// A block device.
    BlockDevice {
        /// Device number.
        rdev: u64,
    },
}

/// One data extent of a sparse file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Extent {
    /// Offset of the extent in the file.
    pub offset: u64,
    /// Length in bytes, never zero.
    pub len: u64,
}

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Xattr {
    /// Full name including namespace, e.g. `user.comment`.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Value, raw bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl Node {
    /// Checks the invariants listed on each field. Decoders call this, so a
    /// tree from a hostile repository cannot name `..` or `a/b`.
    pub fn validate(&self) -> Result<(), FormatError> {
        let name = String::from_utf8_lossy(&self.name);
        let bad = |reason: String| FormatError::invalid(WHAT, format!("node {name:?}: {reason}"));
        if self.name.is_empty() || self.name == b"." || self.name == b".." {
            return Err(bad("name must not be empty, '.' or '..'".into()));
        }
        if self.name.iter().any(|&c| c == b'/' || c == 0) {
            return Err(bad("name must not contain '/' or NUL".into()));
        }
        if self.mode & !0o7777 != 0 {
            return Err(bad(format!("mode {:o} has bits outside 7777", self.mode)));
        }
        for pair in self.xattrs.windows(2) {
            if pair[0].name >= pair[1].name {
                return Err(bad("xattrs are not sorted by unique name".into()));
            }
        }
        if self
            .xattrs
            .iter()
            .any(|x| x.name.is_empty() || x.name.contains(&0))
        {
            return Err(bad("xattr name is empty or contains NUL".into()));
        }
        match &self.kind {
            NodeKind::Symlink { target } if target.is_empty() || target.contains(&0) => {
                return Err(bad("symlink target is empty or contains NUL".into()));
            }
            NodeKind::File {
                data_map: Some(extents),
                ..
            } => {
                let mut end = 0u64;
                for e in extents {
                    let e_end = e.offset.checked_add(e.len);
                    match e_end {
                        Some(x) if e.len > 0 && e.offset >= end && x <= self.size => end = x,
                        _ => {
                            return Err(bad(format!(
                                "data extent {}+{} overlaps, is empty, or passes size {}",
                                e.offset, e.len, self.size
                            )))
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Bytes of data the file's chunks must add up to: `size` for a dense
    /// file, the sum of extent lengths for a sparse one, 0 for other kinds.
    pub fn data_len(&self) -> u64 {
        match &self.kind {
            NodeKind::File {
                data_map: Some(extents),
                ..
            } => extents.iter().map(|e| e.len).sum(),
            NodeKind::File { data_map: None, .. } => self.size,
            _ => 0,
        }
    }
}

/// Builds a tree blob's plaintext from nodes given in name order.
#[derive(Debug)]
pub struct TreeWriter {
    buf: Vec<u8>,
    last_name: Option<Vec<u8>>,
    count: u64,
}

impl Default for TreeWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeWriter {
    /// An empty tree.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(TREE_MAGIC);
        buf.extend_from_slice(&TREE_VERSION.to_le_bytes());
        TreeWriter {
            buf,
            last_name: None,
            count: 0,
        }
    }

    /// Appends a node; fails if it is invalid or not after the previous
    /// node in byte order of names.
    pub fn push(&mut self, node: &Node) -> Result<(), FormatError> {
        node.validate()?;
        if let Some(last) = &self.last_name {
            if *last >= node.name {
                return Err(FormatError::invalid(
                    WHAT,
                    format!(
                        "node {:?} is not after {:?}: names must be sorted and unique",
                        String::from_utf8_lossy(&node.name),
                        String::from_utf8_lossy(last)
                    ),
                ));
            }
        }
        self.buf = postcard::to_extend(node, std::mem::take(&mut self.buf))
            .map_err(|source| FormatError::Postcard { what: WHAT, source })?;
        self.last_name = Some(node.name.clone());
        self.count += 1;
        Ok(())
    }

    /// Nodes added so far.
    pub fn node_count(&self) -> u64 {
        self.count
    }

    /// Encoded bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The plaintext of the tree blob, to pass to [`crate::encode_blob`].
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Sorts `nodes` by name and encodes them as a tree blob's plaintext.
pub fn encode_tree(mut nodes: Vec<Node>) -> Result<Vec<u8>, FormatError> {
    nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let mut w = TreeWriter::new();
    for n in &nodes {
        w.push(n)?;
    }
    Ok(w.finish())
}

/// Iterates over the nodes of a tree blob's plaintext, checking each node
/// and their order. Stops after the first error.
#[derive(Debug)]
pub struct TreeReader<'a> {
    rest: &'a [u8],
    last_name: Option<Vec<u8>>,
    failed: bool,
}

impl<'a> TreeReader<'a> {
    /// Checks the header; nodes are decoded as they are iterated. Inputs
    /// longer than [`crate::MAX_TREE_BLOB_LEN`] are refused.
    pub fn new(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let max = crate::blob::MAX_TREE_BLOB_LEN;
        if bytes.len() > max {
            return Err(FormatError::too_large(WHAT, bytes.len() as u64, max as u64));
        }
        if bytes.len() < TREE_HEADER_LEN {
            return Err(FormatError::truncated(WHAT, TREE_HEADER_LEN, bytes.len()));
        }
        if &bytes[..4] != TREE_MAGIC {
            return Err(FormatError::bad_magic(WHAT, TREE_MAGIC, &bytes[..4]));
        }
        let version = crate::codec::u32_at(bytes, 4);
        if version != TREE_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: WHAT,
                got: u64::from(version),
                supported: u64::from(TREE_VERSION),
            });
        }
        Ok(TreeReader {
            rest: &bytes[TREE_HEADER_LEN..],
            last_name: None,
            failed: false,
        })
    }

    fn next_node(&mut self) -> Result<Node, FormatError> {
        let (node, rest) = postcard::take_from_bytes::<Node>(self.rest)
            .map_err(|source| FormatError::Postcard { what: WHAT, source })?;
        node.validate()?;
        if let Some(last) = &self.last_name {
            if *last >= node.name {
                return Err(FormatError::invalid(
                    WHAT,
                    "nodes are not sorted by unique name",
                ));
            }
        }
        self.last_name = Some(node.name.clone());
        self.rest = rest;
        Ok(node)
    }
}

impl Iterator for TreeReader<'_> {
    type Item = Result<Node, FormatError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let r = self.next_node();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Decodes a whole tree blob's plaintext into nodes.
pub fn decode_tree(bytes: &[u8]) -> Result<Vec<Node>, FormatError> {
    TreeReader::new(bytes)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn node(name: &[u8], kind: NodeKind) -> Node {
        Node {
            name: name.to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: Timestamp::EPOCH,
            atime: Timestamp::EPOCH,
            ctime: Timestamp::EPOCH,
            inode: 1,
            device: 1,
            nlink: 1,
            size: 10,
            hardlink_group: None,
            xattrs: vec![],
        }
    }

    #[test]
    fn round_trip_sorted() {
        let nodes = vec![
            node(b"z", NodeKind::Fifo),
            node(b"\xff\xfe", NodeKind::Socket),
            node(
                b"a",
                NodeKind::Symlink {
                    target: b"../x".to_vec(),
                },
            ),
            node(
                b"B",
                NodeKind::Dir {
                    subtree: Id::hash(b"sub"),
                },
            ),
        ];
        let bytes = encode_tree(nodes).unwrap();
        let names: Vec<Vec<u8>> = decode_tree(&bytes)
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(
            names,
            vec![
                b"B".to_vec(),
                b"a".to_vec(),
                b"z".to_vec(),
                b"\xff\xfe".to_vec()
            ]
        );
        let empty = TreeWriter::new().finish();
        assert_eq!(empty, b"HTRE\x01\0\0\0");
        assert!(decode_tree(&empty).unwrap().is_empty());
    }

    #[test]
    fn writer_rejects() {
        let mut w = TreeWriter::new();
        w.push(&node(b"b", NodeKind::Fifo)).unwrap();
        assert!(w.push(&node(b"a", NodeKind::Fifo)).is_err());
        assert!(w.push(&node(b"b", NodeKind::Fifo)).is_err());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(node(bad, NodeKind::Fifo).validate().is_err(), "{bad:?}");
        }
        let mut n = node(b"f", NodeKind::Fifo);
        n.mode = 0o10644;
        assert!(n.validate().is_err());
        let n = node(b"l", NodeKind::Symlink { target: vec![] });
        assert!(n.validate().is_err());
        let mut n = node(b"x", NodeKind::Fifo);
        n.xattrs = vec![
            Xattr {
                name: b"user.b".to_vec(),
                value: vec![],
            },
            Xattr {
                name: b"user.a".to_vec(),
                value: vec![],
            },
        ];
        assert!(n.validate().is_err());
        let sparse = |extents: Vec<(u64, u64)>| {
            node(
                b"s",
                NodeKind::File {
                    data_map: Some(
                        extents
                            .into_iter()
                            .map(|(offset, len)| Extent { offset, len })
                            .collect(),
                    ),
                    chunks: vec![],
                },
            )
        };
        sparse(vec![(0, 2), (4, 6)]).validate().unwrap();
        assert_eq!(sparse(vec![(0, 2), (4, 6)]).data_len(), 8);
        assert!(sparse(vec![(0, 2), (1, 2)]).validate().is_err());
        assert!(sparse(vec![(4, 0)]).validate().is_err());
        assert!(sparse(vec![(4, 7)]).validate().is_err());
        assert!(sparse(vec![(u64::MAX, 2)]).validate().is_err());
    }

    #[test]
    fn reader_rejects() {
        let bytes =
            encode_tree(vec![node(b"a", NodeKind::Fifo), node(b"b", NodeKind::Fifo)]).unwrap();
        for cut in 0..bytes.len() {
            if cut == TREE_HEADER_LEN {
                continue; // an empty tree is valid
            }
            let r = decode_tree(&bytes[..cut]);
            // A cut exactly between the two nodes leaves a valid one-node tree.
            if let Ok(nodes) = r {
                assert_eq!(nodes.len(), 1, "cut at {cut}");
            }
        }
        // Swapped order is refused.
        let a = postcard::to_allocvec(&node(b"a", NodeKind::Fifo)).unwrap();
        let b = postcard::to_allocvec(&node(b"b", NodeKind::Fifo)).unwrap();
        let mut swapped = TreeWriter::new().finish();
        swapped.extend_from_slice(&b);
        swapped.extend_from_slice(&a);
        assert!(decode_tree(&swapped).is_err());
        // Path traversal in a name is refused at decode.
        let evil = postcard::to_allocvec(&node(b"..", NodeKind::Fifo)).unwrap();
        let mut t = TreeWriter::new().finish();
        t.extend_from_slice(&evil);
        assert!(decode_tree(&t).is_err());
        // Wrong version / magic.
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert!(matches!(
            decode_tree(&v2),
            Err(FormatError::UnsupportedVersion { got: 2, .. })
        ));
        assert!(matches!(
            decode_tree(b"NOPE\x01\0\0\0"),
            Err(FormatError::BadMagic { .. })
        ));
        // A huge claimed name length fails without allocating it.
        let mut huge = TreeWriter::new().finish();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode_tree(&huge).is_err());
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn arb_ts() -> impl Strategy<Value = Timestamp> {
        (any::<i64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Timestamp::new(s, n).unwrap())
    }

    fn arb_kind() -> impl Strategy<Value = NodeKind> {
        prop_oneof![
            (
                proptest::option::of(proptest::collection::vec((0u64..50, 1u64..50), 0..5)),
                proptest::collection::vec(any::<[u8; 32]>(), 0..5)
            )
                .prop_map(|(map, chunks)| {
                    let data_map = map.map(|gaps| {
                        let mut at = 0;
                        gaps.into_iter()
                            .map(|(gap, len)| {
                                let e = Extent {
                                    offset: at + gap,
                                    len,
                                };
                                at = e.offset + len;
                                e
                            })
                            .collect()
                    });
                    NodeKind::File {
                        data_map,
                        chunks: chunks.into_iter().map(Id::from_bytes).collect(),
                    }
                }),
            any::<[u8; 32]>().prop_map(|s| NodeKind::Dir {
                subtree: Id::from_bytes(s)
            }),
            proptest::collection::vec(1u8..=255, 1..30)
                .prop_map(|target| NodeKind::Symlink { target }),
            Just(NodeKind::Fifo),
            Just(NodeKind::Socket),
            any::<u64>().prop_map(|rdev| NodeKind::CharDevice { rdev }),
            any::<u64>().prop_map(|rdev| NodeKind::BlockDevice { rdev }),
        ]
    }

    prop_compose! {
        fn arb_node()(
            name in proptest::collection::vec(any::<u8>().prop_filter("no / or NUL", |c| *c != b'/' && *c != 0), 1..20)
                .prop_filter("not . or ..", |n| n != b"." && n != b".."),
            kind in arb_kind(),
            mode in 0u32..=0o7777,
            ids in any::<(u32, u32, u64, u64, u64)>(),
            names in (proptest::option::of(arb_bytes(10)), proptest::option::of(arb_bytes(10))),
            times in (arb_ts(), arb_ts(), arb_ts()),
            hardlink_group in proptest::option::of(any::<u64>()),
            xattrs in proptest::collection::btree_map(proptest::collection::vec(1u8..=255, 1..10), arb_bytes(20), 0..4),
        ) -> Node {
            Node {
                name, kind, mode,
                uid: ids.0, gid: ids.1, inode: ids.2, device: ids.3, nlink: ids.4,
                user: names.0, group: names.1,
                mtime: times.0, atime: times.1, ctime: times.2,
                size: 1 << 20,
                hardlink_group,
                xattrs: xattrs.into_iter().map(|(name, value)| Xattr { name, value }).collect(),
            }
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip(nodes in proptest::collection::vec(arb_node(), 0..20)) {
            let mut nodes = nodes;
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            nodes.dedup_by(|a, b| a.name == b.name);
            let bytes = encode_tree(nodes.clone()).unwrap();
            prop_assert_eq!(decode_tree(&bytes).unwrap(), nodes);
        }

        #[test]
        fn garbage_never_panics(data in arb_bytes(300)) {
            let mut t = TreeWriter::new().finish();
            t.extend_from_slice(&data);
            let _ = decode_tree(&t);
            let _ = decode_tree(&data);
        }
    }
}

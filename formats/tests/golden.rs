//! Golden vectors: fixed inputs and the exact bytes (or hashes) they encode
//! to. If one of these fails, the on-disk format changed: that needs a
//! version bump and a migration story, not an updated constant.
//!
//! Compressed output is never pinned, because zstd does not promise the same
//! bytes across its releases; instead a pinned zstd blob must still decode.

use haul_formats::{
    bundle_member, decode_blob, decode_blob_unverified, decode_tree, encode_tree,
    parse_pack_trailer, BlobKind, BundleMember, ChunkerParams, EncodedBlob, EncodedBundle, Extent,
    Id, IndexEntry, IndexReader, IndexWriter, Lock, Node, NodeKind, PackReader, PackWriter,
    RepoConfig, Snapshot, SnapshotSummary, Timestamp, Xattr, SNAPSHOT_VERSION,
};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ts(secs: i64, nanos: u32) -> Timestamp {
    Timestamp::new(secs, nanos).unwrap()
}

fn base(name: &[u8], kind: NodeKind) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 100,
        user: Some(b"alice".to_vec()),
        group: Some(b"users".to_vec()),
        mtime: ts(1_700_000_000, 123_456_789),
        atime: ts(1_700_000_001, 0),
        ctime: ts(1_700_000_002, 5),
        inode: 4242,
        device: 2049,
        nlink: 1,
        size: 0,
        hardlink_group: None,
        xattrs: vec![],
    }
}

/// One node of every kind, with the awkward cases: non-UTF-8 names and link
/// targets, pre-1970 times, setuid/sticky bits, sparse data, xattrs, ACLs,
/// hard links, missing user names.
fn golden_nodes() -> Vec<Node> {
    let mut dense = base(
        b"dense.txt",
        NodeKind::File {
            data_map: None,
            chunks: vec![Id::hash(b"chunk-1"), Id::hash(b"chunk-2")],
        },
    );
    dense.size = 2_000_000;
    dense.nlink = 2;
    dense.hardlink_group = Some(7);
    dense.xattrs = vec![
        Xattr {
            name: b"system.posix_acl_access".to_vec(),
            value: vec![2, 0, 0, 0, 1, 0, 6, 0],
        },
        Xattr {
            name: b"user.comment".to_vec(),
            value: b"hi".to_vec(),
        },
    ];
    let mut sparse = base(
        b"sparse.img",
        NodeKind::File {
            data_map: Some(vec![
                Extent {
                    offset: 0,
                    len: 4096,
                },
                Extent {
                    offset: 1 << 30,
                    len: 8192,
                },
            ]),
            chunks: vec![Id::hash(b"chunk-3")],
        },
    );
    sparse.size = (1 << 30) + 8192;
    let mut dir = base(
        b"dir",
        NodeKind::Dir {
            subtree: Id::hash(b"subtree"),
        },
    );
    dir.mode = 0o1777;
    let mut link = base(
        b"link-\xff",
        NodeKind::Symlink {
            target: b"../target-\xfe".to_vec(),
        },
    );
    link.mtime = ts(-86_400, 999_999_999);
    link.user = None;
    link.group = None;
    let mut suid = base(
        b"suid",
        NodeKind::File {
            data_map: None,
            chunks: vec![],
        },
    );
    suid.mode = 0o4755;
    vec![
        dense,
        sparse,
        dir,
        link,
        suid,
        base(b"fifo", NodeKind::Fifo),
        base(b"sock", NodeKind::Socket),
        base(b"tty", NodeKind::CharDevice { rdev: 0x0501 }),
        base(b"sda", NodeKind::BlockDevice { rdev: 0x0800 }),
    ]
}

const TREE_HEX: &str = "48545245010000000964656e73652e7478740000022ed52c29dade3989ba736b4d0e0080bb796d77a15ecc6a26dd4289c2ca3d66b51248fe96039335085532bebaafbb36c0c4d07dc187ea9c86c6e13ca1181ca7f5a403e807640105616c6963650105757365727380c49fd50c959aef3a82c49fd50c0084c49fd50c05922181100280897a0107021773797374656d2e706f7369785f61636c5f6163636573730802000000010006000c757365722e636f6d6d656e74026869036469720137d0e4a50a0ac1cd69fe2445af91644163cc26979503ccfa7055394af9e6e55cff07e807640105616c6963650105757365727380c49fd50c959aef3a82c49fd50c0084c49fd50c059221811001000000046669666f03a403e807640105616c6963650105757365727380c49fd50c959aef3a82c49fd50c0084c49fd50c059221811001000000066c696e6b2dff020b2e2e2f7461726765742dfea403e807640000ffc50aff93ebdc0382c49fd50c0084c49fd50c05922181100100000003736461068010a403e807640105616c6963650105757365727380c49fd50c959aef3a82c49fd50c0084c49fd50c05922181100100000004736f636b04a403e807640105616c6963650105757365727380c49fd50c959aef3a82c49fd50c0084c49fd50c0592218110010000000a7370617273652e696d6700010200802080808080048040013a46288effc96e869373a6f0bbbe03508defe8965ef03694c44fc2d05c2b4887a403e807640105616c6963650105757365727380c49fd50c959aef3a82c49fd50c0084c49fd50c05922181100180c080800400000473756964000000ed13e807640105616c6963650105757365727380c49fd50c959aef3a82c49fd50c0084c49fd50c0592218110010000000374747905810aa403e807640105616c6963650105757365727380c49fd50c959aef3a82c49fd50c0084c49fd50c059221811001000000";
const TREE_ID: &str = "3632fbbf64f50739ff6fd1feef8d32a655f78c84b07caf4dbf80b9a013405564";

#[test]
fn tree_blob() {
    let bytes = encode_tree(golden_nodes()).unwrap();
    assert_eq!(hex(&bytes), TREE_HEX);
    assert_eq!(Id::hash(&bytes).to_hex(), TREE_ID);
    // And the pinned bytes decode to the same nodes, sorted.
    let mut nodes = golden_nodes();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(decode_tree(&unhex(TREE_HEX)).unwrap(), nodes);
}

/// A zstd blob written by zstd 1.5.x; any later reader must decode it.
const ZSTD_BLOB_HEX: &str =
    "010028b52ffd601400dd0000506861756c20206861756c06000502a085020168a143904021152d";

#[test]
fn zstd_blob_still_decodes() {
    let plain = b"haul haul haul haul haul haul haul haul haul haul haul haul haul haul".repeat(4);
    // Today's zstd may pick other bytes, but it must still compress and agree
    // on the id.
    let fresh = haul_formats::encode_blob(BlobKind::Data, &plain, 3).unwrap();
    assert_eq!(fresh.bytes[0], 0x01);
    assert_eq!(fresh.id, Id::hash(&plain));
    let pinned = unhex(ZSTD_BLOB_HEX);
    assert_eq!(pinned[..2], [0x01, 0x00]);
    let (kind, data) = decode_blob(&pinned, &Id::hash(&plain), plain.len()).unwrap();
    assert_eq!((kind, data), (BlobKind::Data, plain));
}

fn raw_blob(kind: BlobKind, plain: &[u8]) -> EncodedBlob {
    let mut bytes = vec![0x00, kind.as_u8()];
    bytes.extend_from_slice(plain);
    EncodedBlob {
        id: Id::hash(plain),
        kind,
        raw_len: plain.len() as u32,
        bytes,
    }
}

fn golden_pack() -> haul_formats::FinishedPack<Vec<u8>> {
    let mut w = PackWriter::new(Vec::new(), 3).unwrap();
    w.add_encoded(&raw_blob(BlobKind::Data, b"hello")).unwrap();
    w.add_encoded(&raw_blob(BlobKind::Tree, b"HTRE\x01\0\0\0"))
        .unwrap();
    let plain = b"haul haul haul haul haul haul haul haul haul haul haul haul haul haul".repeat(4);
    w.add_encoded(&EncodedBlob {
        id: Id::hash(&plain),
        kind: BlobKind::Data,
        raw_len: plain.len() as u32,
        bytes: unhex(ZSTD_BLOB_HEX),
    })
    .unwrap();
    // A bundle of two data blobs, stored raw so its bytes can be pinned.
    let members: [&[u8]; 2] = [b"small one", b"small two"];
    let mut bytes = vec![0x00, 0x00];
    let mut listed = Vec::new();
    for m in members {
        listed.push(BundleMember {
            id: Id::hash(m),
            inner: (bytes.len() - 2) as u32,
            raw_len: m.len() as u32,
        });
        bytes.extend_from_slice(m);
    }
    w.add_bundle(&EncodedBundle {
        kind: BlobKind::Data,
        members: listed,
        bytes,
    })
    .unwrap();
    w.finish().unwrap()
}

const PACK_HEX: &str = "4841554c5041434b0200000000000000000068656c6c6f00014854524501000000010028b52ffd601400dd0000506861756c20206861756c06000502a085020168a143904021152d0000736d616c6c206f6e65736d616c6c2074776fea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f10000000070000000500000000000000000000001e8cd6baa40027c10dd04e72809ab45631cc3d216bea74779ae9a4f02e3f5b18170000000a000000080000000000000001000000876edaa9261435fb58e80e4a60033cdb300bec6f875a1dacae63075e0f867e412100000027000000140100000000000000000000069ce81606d07fbb003f7e62b4fd13d000ecc52cc9d1128b16fd535df321fec14800000014000000090000000000000000000000996c08be26eee25ad547542685bb95c339aaf72e2205ec579b9e94c83cfca6ff4800000014000000090000000900000000000000050000005c0000000000000000000000cfab5bc835e933517355282efae117d59f83c522e8985119ba6831d0d48247354841554c50454e44";
const PACK_ID: &str = "63c16d062c1b8210a2db81899fd88831a4e237334f3b81891601dd72b276cc5a";

#[test]
fn pack_file() {
    let p = golden_pack();
    assert_eq!(hex(&p.writer), PACK_HEX);
    assert_eq!(p.id.to_hex(), PACK_ID);
    let r = PackReader::new(&p.writer).unwrap();
    r.verify(&p.id).unwrap();
    assert_eq!(r.read_blob(&r.entries()[0], 100).unwrap(), b"hello");
    assert_eq!(r.read_blob(&r.entries()[4], 100).unwrap(), b"small two");
    let e = r.entries()[4];
    assert_eq!((e.offset, e.stored_len, e.inner, e.raw_len), (72, 20, 9, 9));
    let stored = &p.writer[e.range().start as usize..e.range().end as usize];
    let (_, plain) = decode_blob_unverified(stored, 100).unwrap();
    assert_eq!(
        bundle_member(&plain, e.inner, e.raw_len, &e.id).unwrap(),
        b"small two"
    );
    assert_eq!(parse_pack_trailer(&p.writer).unwrap().entries, p.entries);
}

const INDEX_HEX: &str = "4841554c494e4458020000000000000002000000000000000600000000000000543e971ab884923ae1fef4d0ee4cd095722cfd2aa5a864b37c4a42aefe28990c63c16d062c1b8210a2db81899fd88831a4e237334f3b81891601dd72b276cc5a069ce81606d07fbb003f7e62b4fd13d000ecc52cc9d1128b16fd535df321fec10000000001000000480000001400000009000000000000001e8cd6baa40027c10dd04e72809ab45631cc3d216bea74779ae9a4f02e3f5b180100000001000000170000000a000000080000000000000076ea1cfe2346880aa77a3909ef798014533fa81db07a990ab98f2fba83f47a8f000000000000000010000000e8030000a00f000046000000876edaa9261435fb58e80e4a60033cdb300bec6f875a1dacae63075e0f867e41000000000100000021000000270000001401000000000000996c08be26eee25ad547542685bb95c339aaf72e2205ec579b9e94c83cfca6ff000000000100000048000000140000000900000009000000ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f000000000100000010000000070000000500000000000000c09fad02dce618330ab01ab810e467e8d29ed5d6b5f7c499f28fbbebcd282c8c";
const INDEX_ID: &str = "9df56366f5271498ec443ef05ffe1fb2172a5dee40af20e98f92271ad90a2cc3";

#[test]
fn index_file() {
    let pack = golden_pack();
    let mut w = IndexWriter::new();
    w.add_pack(pack.id, &pack.entries);
    w.add(IndexEntry {
        id: Id::hash(b"elsewhere"),
        kind: BlobKind::Data,
        pack: Id::hash(b"another pack"),
        offset: 16,
        stored_len: 1000,
        raw_len: 4000,
        inner: 70,
    });
    let (written, bytes) = w.finish().unwrap();
    assert_eq!(hex(&bytes), INDEX_HEX);
    assert_eq!(written.id.to_hex(), INDEX_ID);
    let r = IndexReader::new(&bytes).unwrap();
    r.verify().unwrap();
    assert_eq!(
        r.lookup(&Id::hash(b"hello")).unwrap().unwrap().pack,
        pack.id
    );
}

const SNAPSHOT_JSON: &str = r#"{"version":1,"time":"2023-11-14T22:13:20.25Z","hostname":"build-01","username":"alice","paths":["/home/alice","/etc"],"tags":["daily"],"tree":"a2eb9a7ddb9af056fdd07370580a53915e38412027b84fe0e3c695a62976ef79","parent":"ebdea6058df2230dc25b7a7c7b487b470c508c2e0a5119c96893c443de3a9e79","summary":{"files":10,"dirs":2,"bytes":123456,"bytes_new":789}}
"#;
const SNAPSHOT_ID: &str = "9c3223cf9be22d893568b0fdb4a73837fe0d9b73fc3c9a3a8eb1c875bf99d8bb";

#[test]
fn snapshot_record() {
    let s = Snapshot {
        version: SNAPSHOT_VERSION,
        time: ts(1_700_000_000, 250_000_000),
        hostname: "build-01".into(),
        username: "alice".into(),
        paths: vec!["/home/alice".into(), "/etc".into()],
        tags: vec!["daily".into()],
        tree: Id::hash(b"root tree"),
        parent: Some(Id::hash(b"parent")),
        summary: SnapshotSummary {
            files: 10,
            dirs: 2,
            bytes: 123_456,
            bytes_new: 789,
            ..SnapshotSummary::default()
        },
        original: None,
    };
    let (id, bytes) = s.to_json().unwrap();
    assert_eq!(String::from_utf8(bytes.clone()).unwrap(), SNAPSHOT_JSON);
    assert_eq!(id.to_hex(), SNAPSHOT_ID);
    assert_eq!(
        Snapshot::from_json(SNAPSHOT_JSON.as_bytes(), &id).unwrap(),
        s
    );

    // Counts by kind follow bytes_new, and only when not zero, so the record
    // above (and every record written before they existed) is unchanged.
    let mut k = s.clone();
    k.summary.symlinks = 3;
    k.summary.specials = 1;
    let (kid, kbytes) = k.to_json().unwrap();
    let text = String::from_utf8(kbytes.clone()).unwrap();
    assert!(
        text.contains(r#""summary":{"files":10,"dirs":2,"bytes":123456,"bytes_new":789,"symlinks":3,"specials":1}"#),
        "{text}"
    );
    assert_eq!(Snapshot::from_json(&kbytes, &kid).unwrap(), k);
    assert_eq!(k.summary.entries(), 16);
}

const LOCK_JSON: &str = r#"{"hostname":"build-01","username":"alice","pid":4321,"time":"2023-11-14T22:13:20Z","exclusive":false}
"#;
const CONFIG_JSON: &str = r#"{
  "version": 2,
  "id": "8c76dc55ea9c9a9f84764ae8fe5dfd8f26dd5e2fbf94d1d53546e010e16995d5",
  "chunker": {
    "min_size": 262144,
    "avg_size": 1048576,
    "max_size": 4194304
  },
  "zstd_level": 3,
  "pack_size": 33554432,
  "created": "2023-11-14T22:13:20Z"
}
"#;

#[test]
fn lock_and_config_records() {
    let l = Lock {
        hostname: "build-01".into(),
        username: "alice".into(),
        pid: 4321,
        time: ts(1_700_000_000, 0),
        exclusive: false,
        refreshed: None,
    };
    let (id, bytes) = l.to_json().unwrap();
    assert_eq!(String::from_utf8(bytes).unwrap(), LOCK_JSON);
    assert_eq!(Lock::from_json(LOCK_JSON.as_bytes(), &id).unwrap(), l);

    let c = RepoConfig::new(Id::hash(b"repo"), ts(1_700_000_000, 0));
    let json = c.to_json().unwrap();
    assert_eq!(String::from_utf8(json).unwrap(), CONFIG_JSON);
    assert_eq!(RepoConfig::from_json(CONFIG_JSON.as_bytes()).unwrap(), c);
}

/// splitmix64: a fixed, dependency-free PRNG so the fixture never changes.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// (offset, length, blake3 of the chunk) of every chunk of an 8 MiB
/// pseudo-random buffer with the default parameters.
const CHUNKS: &[(u64, u32, &str)] = &[
    (
        0,
        1032430,
        "936ea893680261434da9babe9da07813b5afd9a32df1108a4880e2f35adbc825",
    ),
    (
        1032430,
        1258602,
        "c7a6fd78219a01ddab61f5b8c2dd2f387978b12668fc4693d31300ddf0cc532b",
    ),
    (
        2291032,
        279417,
        "5ed0d1b14d17e710160fcd410e4533fe03b35a575c8ba1d769390920bee25e22",
    ),
    (
        2570449,
        1585143,
        "278d295acd9bcefeecc5edd0baff5bc19fad789188d8c899d60562175531cb5d",
    ),
    (
        4155592,
        1581724,
        "c5801926cb31c23d523b797b4aaf3ffbd85f4eb56fd6c516a07b1e6ff96dc19d",
    ),
    (
        5737316,
        984401,
        "6f14a81a13abee3b72db1b949a1f648905093431b24eeeb5b5d9d80f0b2bfcfe",
    ),
    (
        6721717,
        1666891,
        "18dcdf5535d49c6b21a6f7dd69c4ce82944e7a0571e8e372520d3d2f679f9615",
    ),
];

#[test]
fn fastcdc_boundaries() {
    let data = pseudo_random(8 << 20, 0x6861_756c);
    let chunks: Vec<_> = ChunkerParams::DEFAULT.chunks(&data).unwrap().collect();
    assert_eq!(chunks.len(), CHUNKS.len());
    for (c, (offset, len, digest)) in chunks.iter().zip(CHUNKS) {
        assert_eq!((c.offset, c.len), (*offset, *len));
        let range = c.offset as usize..c.offset as usize + c.len as usize;
        assert_eq!(Id::hash(&data[range]).to_hex(), *digest);
    }
    // Streaming gives the same boundaries.
    let streamed: Vec<_> = ChunkerParams::DEFAULT
        .stream_chunks(&data[..])
        .unwrap()
        .map(|c| {
            let c = c.unwrap();
            (c.offset, c.data.len() as u32, Id::hash(&c.data).to_hex())
        })
        .collect();
    let pinned: Vec<_> = CHUNKS
        .iter()
        .map(|(o, l, d)| (*o, *l, d.to_string()))
        .collect();
    assert_eq!(streamed, pinned);
}

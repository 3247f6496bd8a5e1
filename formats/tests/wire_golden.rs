//! Golden vectors of the wire protocol (formats/FORMAT.md, "Wire
//! protocol"): the preamble and one frame of each message kind, byte for
//! byte, and a zstd-flagged frame that must decode. If one fails, what
//! haul sends over ssh changed, and a haul of the previous release can no
//! longer talk to this one: bump `PROTOCOL_VERSION`, or undo the change.

use haul_formats::wire::{
    decode_frame, encode_frame, encode_preamble, Decoder, Entry, EntryKind, Message, OldChunk,
    Options, QueryKind, Received, Role, WireTime, PROTOCOL_VERSION,
};

fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}

/// The hex of a vector without the spaces and `|` that separate fields.
fn clean(s: &str) -> String {
    s.chars().filter(char::is_ascii_hexdigit).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s = clean(s);
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn preamble() {
    assert_eq!(PROTOCOL_VERSION, 1);
    let p = encode_preamble("0.1.0").unwrap();
    // "\0HAUL\x1a\r\n", protocol 1 (u16 LE), length 5, "0.1.0".
    assert_eq!(
        hex(&p),
        "004841554c1a0d0a 0100 05 302e312e30".replace(' ', "")
    );
}

/// One message of each kind with fixed values, and its frame's bytes.
fn vectors() -> Vec<(Message, &'static str)> {
    vec![
        (
            Message::Hello {
                protocol: 1,
                haul_version: "0.1.0".into(),
                role: Role::Pull,
                root: b"/srv".to_vec(),
                options: Box::new(Options {
                    delete: true,
                    checksum: true,
                    map_by_name: true,
                    exclude: vec!["*.o".into()],
                    usermap: vec!["1000:2000".into()],
                    groupmap: vec![],
                    chown: Some("root:".into()),
                    compress_level: Some(3),
                    ..Default::default()
                }),
            },
            "29000000 01 00 | 01 05 302e312e30 01 04 2f737276 8301 | 01 03 2a2e6f | 01 09 313030303a32303030 | 00 | 01 05 726f6f743a | 01 06",
        ),
        (
            Message::HelloOk {
                protocol: 1,
                haul_version: "0.1.0".into(),
            },
            "07000000 02 00 | 0105302e312e30",
        ),
        (
            Message::Entry(Box::new(Entry {
                index: 2,
                path: b"d/f".to_vec(),
                kind: EntryKind::File,
                perm: 0o644,
                uid: 1000,
                gid: 100,
                size: 300,
                rdev: 0,
                atime: WireTime { secs: -1, nanos: 5 },
                mtime: WireTime {
                    secs: 1_700_000_000,
                    nanos: 0,
                },
                xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
                symlink_target: None,
                hardlink_of: Some(1),
                link_leader: false,
                regions: Some(vec![(0, 10), (200, 100)]),
                attrs: 2,
            })),
            "2b000000 03 00 | 02 03 642f66 00 a403 e807 64 ac02 00 | 01 05 | 80c49fd50c 00 | 01 06 757365722e6b 01 76 | 00 | 01 01 | 01 02 00 0a c801 64 | 02",
        ),
        (
            Message::Entry(Box::new(Entry {
                index: 3,
                path: b"l".to_vec(),
                kind: EntryKind::Symlink,
                perm: 0o777,
                uid: 0,
                gid: 0,
                size: 1,
                rdev: 0,
                atime: WireTime::default(),
                mtime: WireTime::default(),
                xattrs: vec![],
                symlink_target: Some(b"f".to_vec()),
                hardlink_of: None,
                link_leader: false,
                regions: None,
                attrs: 0,
            })),
            "15000000 03 00 | 03 01 6c 02 ff03 00 00 01 00 | 00 00 | 00 00 | 00 | 01 01 66 | 00 | 00 | 00",
        ),
        (
            Message::Entry(Box::new(Entry {
                index: 4,
                path: b"h".to_vec(),
                kind: EntryKind::File,
                perm: 0o600,
                uid: 0,
                gid: 0,
                size: 0,
                rdev: 0,
                atime: WireTime::default(),
                mtime: WireTime::default(),
                xattrs: vec![],
                symlink_target: None,
                hardlink_of: None,
                link_leader: true,
                regions: None,
                attrs: 0,
            })),
            "13000000 03 00 | 04 01 68 00 8003 00 00 00 00 | 00 00 | 00 00 | 00 | 00 | 02 | 00 | 00",
        ),
        (
            Message::Need {
                index: 2,
                old_chunks: Some(vec![OldChunk {
                    id: [0xaa; 32],
                    offset: 0,
                    len: 128,
                }]),
            },
            "26000000 04 00 | 02 01 01 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 00 8001",
        ),
        (
            Message::Need {
                index: 2,
                old_chunks: None,
            },
            "02000000 04 00 | 0200",
        ),
        (Message::Skip { index: 300 }, "02000000 05 00 | ac02"),
        (
            Message::Data {
                index: 2,
                offset: 10,
                bytes: b"abc".to_vec(),
            },
            "05000000 06 00 | 020a616263",
        ),
        (
            Message::Chunk {
                index: 2,
                offset: 128,
                id: [0xbb; 32],
            },
            "23000000 07 00 | 02 8001 bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        ),
        (
            Message::FileDone {
                index: 2,
                blake3: [0xcc; 32],
            },
            "21000000 08 00 | 02 cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
        ),
        (
            Message::Delete {
                path: b"old".to_vec(),
            },
            "04000000 09 00 | 036f6c64",
        ),
        (Message::EndOfList, "00000000 0a 00"),
        (Message::Done, "00000000 0b 00"),
        (Message::KeepAlive, "00000000 10 00"),
        (
            Message::Summary {
                json: b"{}".to_vec(),
            },
            "02000000 0c 00 | 7b7d",
        ),
        (
            Message::Error {
                index: Some(2),
                message: "no".into(),
            },
            "05000000 0d 00 | 0102026e6f",
        ),
        (
            Message::Error {
                index: None,
                message: String::new(),
            },
            "02000000 0d 00 | 0000",
        ),
        (
            Message::Query {
                kind: QueryKind::Users,
            },
            "01000000 0e 00 | 00",
        ),
        (
            Message::Query {
                kind: QueryKind::Groups,
            },
            "01000000 0e 00 | 01",
        ),
        (
            Message::Query {
                kind: QueryKind::PathInUse(b"/opt".to_vec()),
            },
            "06000000 0e 00 | 02042f6f7074",
        ),
        (
            Message::QueryReply {
                json: b"[]".to_vec(),
            },
            "02000000 0f 00 | 5b5d",
        ),
    ]
}

#[test]
fn one_frame_of_each_kind() {
    let mut kinds = std::collections::BTreeSet::new();
    for (m, want) in vectors() {
        let mut b = Vec::new();
        encode_frame(&m, None, &mut b).unwrap();
        assert_eq!(hex(&b), clean(want), "{}", m.name());
        assert_eq!(decode_frame(&unhex(want), 0).unwrap().unwrap().0, m);
        kinds.insert(m.kind_byte());
    }
    assert_eq!(kinds, (1..=16).collect());
}

/// A zstd-flagged frame (as zstd 1.5 at level 3 wrote it; the compressed
/// bytes themselves are not pinned, since another zstd may choose others)
/// must keep decoding, and what this build compresses must decode to the
/// same message.
#[test]
fn a_zstd_frame_decodes() {
    let frame = "12000000 06 01 | 28b52ffd 20 66 4d0000180200610100200543";
    let want = Message::Data {
        index: 2,
        offset: 0,
        bytes: vec![b'a'; 100],
    };
    let (m, used) = decode_frame(&unhex(frame), 0).unwrap().unwrap();
    assert_eq!((m, used), (want.clone(), 6 + 18));
    let mut b = Vec::new();
    encode_frame(&want, Some(3), &mut b).unwrap();
    assert_eq!(b[4..6], [6, 1], "kind Data, flag zstd");
    assert_eq!(decode_frame(&b, 0).unwrap().unwrap().0, want);
}

/// The vectors as one stream behind a preamble, through the incremental
/// decoder.
#[test]
fn a_whole_stream_decodes() {
    let mut b = encode_preamble("0.1.0").unwrap();
    for (_, h) in vectors() {
        b.extend(unhex(h));
    }
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for piece in b.chunks(7) {
        d.feed(piece);
        while let Some(r) = d.next().unwrap() {
            got.push(r);
        }
    }
    d.finish().unwrap();
    assert!(matches!(&got[0], Received::Preamble(p) if p.haul_version == "0.1.0"));
    let msgs: Vec<_> = vectors()
        .into_iter()
        .map(|(m, _)| Received::Message(m))
        .collect();
    assert_eq!(got[1..], msgs[..]);
}

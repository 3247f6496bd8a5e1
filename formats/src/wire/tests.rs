use super::encode::{encode_payload, put_varint};
use super::*;
use proptest::prelude::*;

fn entry() -> Entry {
    Entry {
        index: 3,
        path: b"dir/file".to_vec(),
        kind: EntryKind::File,
        perm: 0o4755,
        uid: 1000,
        gid: 100,
        size: 10_000,
        rdev: 0,
        atime: WireTime {
            secs: -5,
            nanos: 999_999_999,
        },
        mtime: WireTime {
            secs: 1_700_000_000,
            nanos: 7,
        },
        xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
        symlink_target: None,
        hardlink_of: Some(1),
        link_leader: false,
        regions: Some(vec![(0, 10), (4096, 100)]),
        attrs: 0,
    }
}

/// One of each message, with every optional part present somewhere.
pub(super) fn samples() -> Vec<Message> {
    let mut link = entry();
    link.kind = EntryKind::Symlink;
    link.symlink_target = Some(b"../t".to_vec());
    link.regions = None;
    link.hardlink_of = None;
    link.xattrs.clear();
    vec![
        Message::Hello {
            protocol: PROTOCOL_VERSION,
            haul_version: "0.1.0".into(),
            role: Role::Push,
            root: b"/srv/dst".to_vec(),
            options: Box::new(Options {
                delete: true,
                map_by_name: true,
                exclude: vec!["*.o".into()],
                usermap: vec!["1000:2000".into()],
                groupmap: vec![],
                chown: Some("root:".into()),
                compress_level: Some(-3),
                ..Default::default()
            }),
        },
        Message::Hello {
            protocol: 7,
            haul_version: String::new(),
            role: Role::Query,
            root: vec![],
            options: Box::default(),
        },
        Message::HelloOk {
            protocol: PROTOCOL_VERSION,
            haul_version: "0.1.0".into(),
        },
        Message::Entry(Box::new(entry())),
        Message::Entry(Box::new(link)),
        Message::Need {
            index: 3,
            old_chunks: Some(vec![OldChunk {
                id: [7; 32],
                offset: 0,
                len: 65536,
            }]),
        },
        Message::Need {
            index: 0,
            old_chunks: None,
        },
        Message::Skip { index: 300 },
        Message::Data {
            index: 3,
            offset: 1 << 40,
            bytes: vec![b'x'; 1000],
        },
        Message::Chunk {
            index: 3,
            offset: 65536,
            id: [9; 32],
        },
        Message::FileDone {
            index: 3,
            blake3: [1; 32],
        },
        Message::Delete {
            path: b"old".to_vec(),
        },
        Message::EndOfList,
        Message::Done,
        Message::Summary {
            json: br#"{"files":1}"#.to_vec(),
        },
        Message::Error {
            index: Some(2),
            message: "permission denied".into(),
        },
        Message::Error {
            index: None,
            message: String::new(),
        },
        Message::Query {
            kind: QueryKind::Users,
        },
        Message::Query {
            kind: QueryKind::Groups,
        },
        Message::Query {
            kind: QueryKind::PathInUse(b"/opt/cycle_server".to_vec()),
        },
        Message::QueryReply { json: vec![] },
    ]
}

fn round_trip(m: &Message) {
    for level in [None, Some(1)] {
        let mut b = Vec::new();
        encode_frame(m, level, &mut b).unwrap();
        let (got, used) = decode_frame(&b, 0).unwrap().unwrap();
        assert_eq!(used, b.len());
        assert_eq!(&got, m);
        if b[5] == 0 {
            // Plain frames are canonical: decoding then encoding gives
            // back the same bytes.
            let mut again = Vec::new();
            encode_frame(&got, None, &mut again).unwrap();
            assert_eq!(again, b);
        }
    }
}

#[test]
fn every_message_round_trips() {
    let s = samples();
    let kinds: std::collections::BTreeSet<u8> = s.iter().map(Message::kind_byte).collect();
    assert_eq!(kinds.len(), 15);
    for m in &s {
        round_trip(m);
    }
}

#[test]
fn compressible_payloads_are_compressed() {
    let mut b = Vec::new();
    let m = &samples()[8];
    encode_frame(m, Some(3), &mut b).unwrap();
    assert_eq!(b[5], FLAG_ZSTD);
    assert!(b.len() < 100);
    assert_eq!(&decode_frame(&b, 0).unwrap().unwrap().0, m);
    // Small payloads stay plain.
    b.clear();
    encode_frame(&Message::Skip { index: 1 }, Some(3), &mut b).unwrap();
    assert_eq!(b, [1, 0, 0, 0, 5, 0, 1]);
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_path() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 0..40)
}

fn arb_time() -> impl Strategy<Value = WireTime> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| WireTime { secs, nanos })
}

prop_compose! {
    fn arb_entry()(
        index in 0u64..u64::MAX,
        path in arb_path(),
        kind in 0u8..7,
        perm in 0u32..=0o7777,
        uid in any::<u32>(),
        gid in any::<u32>(),
        size in any::<u64>(),
        rdev in any::<u64>(),
        atime in arb_time(),
        mtime in arb_time(),
        xattrs in proptest::collection::vec(
            (proptest::collection::vec(1u8..=255, 1..20), arb_bytes(50)), 0..4),
        target in proptest::collection::vec(1u8..=255, 0..30),
        link in any::<Option<u64>>(),
        regions in proptest::option::of(proptest::collection::vec((0u64..1000, 0u64..1000), 0..5)),
    ) -> Entry {
        let kind = EntryKind::from_u8(kind).unwrap();
        // Make the cross-field invariants hold: regions in order and
        // within size, a hardlink to an earlier index.
        let regions = regions.filter(|_| kind == EntryKind::File).map(|r| {
            let mut at = 0u64;
            r.into_iter().map(|(gap, len)| { let o = at + gap; at = o + len; (o, len) }).collect::<Vec<_>>()
        });
        let size = match &regions {
            Some(r) => r.last().map_or(0, |&(o, l)| o + l) + size % 1000,
            None => size,
        };
        Entry {
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
            symlink_target: (kind == EntryKind::Symlink).then_some(target),
            hardlink_of: link.filter(|_| kind != EntryKind::Dir).map(|h| h % (index.max(1))).filter(|&h| h < index),
            link_leader: false,
            regions,
            attrs: (index % 4) as u32,
        }
    }
}

proptest! {
    #[test]
    fn entries_round_trip(e in arb_entry()) {
        round_trip(&Message::Entry(Box::new(e)));
    }

    #[test]
    fn needs_round_trip(
        index in any::<u64>(),
        chunks in proptest::option::of(proptest::collection::vec(
            (any::<[u8; 32]>(), 0u64..u64::MAX / 2, 0u64..u64::MAX / 2), 0..20)),
    ) {
        let old_chunks = chunks.map(|c| c.into_iter().map(|(id, offset, len)| OldChunk { id, offset, len }).collect());
        round_trip(&Message::Need { index, old_chunks });
    }

    #[test]
    fn garbage_frames_never_panic(b in arb_bytes(200)) {
        let _ = decode_frame(&b, 0);
        for kind in 1..16u8 {
            if let Ok(Some((m, _))) = decode_frame(&frame(kind, 0, &b), 0) {
                round_trip(&m);
            }
        }
    }
}

fn stream() -> Vec<u8> {
    let mut b = encode_preamble("0.1.0").unwrap();
    for (i, m) in samples().iter().enumerate() {
        encode_frame(m, (i % 2 == 0).then_some(1), &mut b).unwrap();
    }
    b
}

fn drain(d: &mut Decoder) -> Result<usize, WireError> {
    let mut n = 0;
    while d.next()?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[test]
fn truncation_anywhere_is_need_more() {
    let b = stream();
    let total = samples().len() + 1;
    let mut boundaries = 0;
    for cut in 0..b.len() {
        let mut d = Decoder::new();
        d.feed(&b[..cut]);
        let n = drain(&mut d).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert!(n < total);
        if d.finish().is_ok() {
            boundaries += 1;
        }
        // The rest completes the stream.
        d.feed(&b[cut..]);
        assert_eq!(n + drain(&mut d).unwrap(), total);
        d.finish().unwrap();
    }
    // The cut falls on a frame boundary once per frame (not at 0:
    // an empty stream lacks its preamble).
    assert_eq!(boundaries, total - 1);
    // Byte by byte.
    let mut d = Decoder::new();
    let mut n = 0;
    for c in b.chunks(1) {
        d.feed(c);
        n += drain(&mut d).unwrap();
    }
    assert_eq!(n, total);
}

proptest! {
    /// A valid stream with a few bytes changed: whatever still decodes
    /// round-trips, and nothing panics.
    #[test]
    fn mutated_streams_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..5),
        piece in 1usize..100,
    ) {
        let mut b = stream();
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        let mut d = Decoder::new();
        'feed: for c in b.chunks(piece) {
            d.feed(c);
            loop {
                match d.next() {
                    Ok(Some(Received::Message(m))) => round_trip(&m),
                    Ok(Some(Received::Preamble(_))) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }
}

#[test]
fn finish_names_what_was_cut() {
    let b = stream();
    let mut d = Decoder::new();
    // The last frame (an empty QueryReply, 6 bytes) and one byte of
    // the Query before it.
    d.feed(&b[..b.len() - 7]);
    drain(&mut d).unwrap();
    let e = d.finish().unwrap_err().to_string();
    assert!(e.contains("ends inside the Query at byte"), "{e}");
    d.feed(&b[b.len() - 7..b.len() - 1]);
    drain(&mut d).unwrap();
    let e = d.finish().unwrap_err().to_string();
    assert!(e.contains("inside the frame header"), "{e}");
    let e = Decoder::new().finish().unwrap_err().to_string();
    assert!(e.contains("inside the preamble"), "{e}");
}

#[test]
fn a_banner_before_the_preamble_is_named() {
    let mut b = b"Welcome to host.example!\r\nLast login: today\n".to_vec();
    b.extend(encode_preamble("0.1.0").unwrap());
    let mut d = Decoder::new();
    d.feed(&b);
    let e = d.next().unwrap_err();
    assert!(matches!(e, WireError::NotHaul { .. }));
    let e = e.to_string();
    assert!(
        e.contains(r#"it sent "Welcome to host.example!\r\nLast login: today\n\x00HAUL"#),
        "{e}"
    );
    assert!(e.contains("login banner"), "{e}");
    // A stray word with no newline yet: more is awaited, then the end
    // of the stream reports it.
    let mut d = Decoder::new();
    d.feed(b"bash: haul: ");
    assert!(d.next().unwrap().is_none());
    let e = d.finish().unwrap_err().to_string();
    assert!(e.contains(r#""bash: haul: ""#), "{e}");
    // A long line with no newline is reported after PREVIEW_LEN bytes.
    let mut d = Decoder::new();
    d.feed(&[b'x'; PREVIEW_LEN]);
    assert!(matches!(d.next(), Err(WireError::NotHaul { .. })));
}

#[test]
fn preamble_versions() {
    let p = encode_preamble("0.1.0").unwrap();
    assert_eq!(&p[..8], b"\0HAUL\x1a\r\n");
    for cut in 0..p.len() {
        assert!(decode_preamble(&p[..cut]).unwrap().is_none());
    }
    let (got, used) = decode_preamble(&p).unwrap().unwrap();
    assert_eq!(used, p.len());
    assert_eq!(got.haul_version, "0.1.0");
    let mut other = p.clone();
    other[8] = 9;
    let e = decode_preamble(&other).unwrap_err().to_string();
    assert!(
        e.contains("haul 0.1.0") && e.contains("version 9") && e.contains("speaks version 1"),
        "{e}"
    );
    let mut bad = p.clone();
    bad[11] = 0x07;
    assert!(matches!(
        decode_preamble(&bad),
        Err(WireError::BadVersion { .. })
    ));
    assert!(encode_preamble("1.0\n").is_err());
    assert!(encode_preamble(&"9".repeat(65)).is_err());
}

/// The payload bytes of `m` without the encoder's checks: what a
/// hostile peer could send.
fn hostile(m: &Message) -> Vec<u8> {
    let mut p = Vec::new();
    encode_payload(m, &mut p, false).unwrap();
    frame(m.kind_byte(), 0, &p)
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = (payload.len() as u32).to_le_bytes().to_vec();
    b.extend([kind, flags]);
    b.extend_from_slice(payload);
    b
}

/// The message is refused by the encoder and, sent anyway, by the
/// decoder, naming `field`.
fn refused(m: Message, field: &str) {
    let e = encode_frame(&m, None, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(&e, WireError::Unencodable { field: f, .. } if *f == field),
        "{m:?}: {e}"
    );
    let e = decode_frame(&hostile(&m), 100).unwrap_err();
    assert!(
        matches!(&e, WireError::Field { field: f, kind, offset: 100, .. }
            if *f == field && *kind == m.name()),
        "{e}"
    );
}

fn with(f: impl FnOnce(&mut Entry)) -> Message {
    let mut e = entry();
    f(&mut e);
    Message::Entry(Box::new(e))
}

#[test]
fn every_cap_is_enforced() {
    let long = vec![b'a'; MAX_PATH + 1];
    refused(with(|e| e.path = long.clone()), "path");
    refused(with(|e| e.path = b"a\0b".to_vec()), "path");
    refused(Message::Delete { path: long.clone() }, "path");
    refused(
        Message::Query {
            kind: QueryKind::PathInUse(b"\0".to_vec()),
        },
        "path",
    );
    refused(
        with(|e| {
            e.kind = EntryKind::Symlink;
            e.regions = None;
            e.symlink_target = Some(long.clone());
        }),
        "symlink_target",
    );
    refused(
        with(|e| e.xattrs = vec![(vec![b'n'; MAX_XATTR_NAME + 1], vec![])]),
        "xattr name",
    );
    refused(with(|e| e.xattrs = vec![(vec![], vec![])]), "xattr name");
    refused(
        with(|e| e.xattrs = vec![(b"a".to_vec(), vec![0; MAX_XATTR_VALUE + 1])]),
        "xattr value",
    );
    refused(
        with(|e| e.xattrs = vec![(b"a".to_vec(), vec![]); MAX_XATTRS + 1]),
        "xattrs",
    );
    refused(
        with(|e| e.xattrs = vec![(b"a".to_vec(), vec![0; MAX_XATTR_VALUE]); 17]),
        "xattrs",
    );
    refused(
        with(|e| {
            e.size = u64::MAX;
            e.regions = Some(vec![(0, 0); MAX_REGIONS + 1]);
        }),
        "regions",
    );
    refused(
        with(|e| e.regions = Some(vec![(10, 5), (12, 1)])),
        "regions",
    );
    refused(with(|e| e.regions = Some(vec![(10_000, 1)])), "regions");
    refused(with(|e| e.regions = Some(vec![(u64::MAX, 2)])), "regions");
    refused(with(|e| e.mtime.nanos = 1_000_000_000), "mtime");
    refused(with(|e| e.atime.nanos = u32::MAX), "atime");
    refused(with(|e| e.perm = 0o10000), "perm");
    refused(with(|e| e.attrs = 4), "attrs");
    refused(with(|e| e.hardlink_of = Some(3)), "hardlink_of");
    refused(
        with(|e| {
            e.hardlink_of = None;
            e.kind = EntryKind::Dir;
            e.regions = None;
            e.link_leader = true;
        }),
        "hardlink_of",
    );
    refused(
        with(|e| {
            e.kind = EntryKind::Dir;
            e.regions = None;
        }),
        "hardlink_of",
    );
    refused(
        with(|e| e.symlink_target = Some(b"t".to_vec())),
        "symlink_target",
    );
    refused(
        Message::Error {
            index: None,
            message: "e".repeat(MAX_TEXT + 1),
        },
        "message",
    );
    refused(
        Message::Need {
            index: 0,
            old_chunks: Some(vec![OldChunk {
                id: [0; 32],
                offset: u64::MAX,
                len: 1,
            }]),
        },
        "old_chunks",
    );
    refused(
        Message::Data {
            index: 0,
            offset: u64::MAX,
            bytes: vec![1],
        },
        "offset",
    );
    let hello = |f: fn(&mut Options)| {
        let mut o = Options::default();
        f(&mut o);
        Message::Hello {
            protocol: 1,
            haul_version: "1".into(),
            role: Role::Pull,
            root: vec![],
            options: Box::new(o),
        }
    };
    refused(
        hello(|o| o.exclude = vec![String::new(); MAX_STRINGS + 1]),
        "exclude",
    );
    refused(
        hello(|o| o.usermap = vec!["u".repeat(MAX_TEXT + 1)]),
        "usermap",
    );
    refused(hello(|o| o.chown = Some("u".repeat(MAX_TEXT + 1))), "chown");
}

fn field_error(b: &[u8]) -> (&'static str, String) {
    match decode_frame(b, 0) {
        Err(WireError::Field { field, reason, .. }) => (field, reason),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_payloads_are_refused() {
    // Counts larger than the bytes present are refused before any
    // allocation sized by them.
    let mut p = vec![0, 1];
    put_varint(&mut p, MAX_CHUNKS as u64);
    assert!(field_error(&frame(4, 0, &p)).1.contains("cannot fit"));
    let mut p = vec![0, 1];
    put_varint(&mut p, MAX_CHUNKS as u64 + 1);
    assert!(field_error(&frame(4, 0, &p)).1.contains("over the limit"));
    // Digests are exactly 32 bytes: short is truncated, long is
    // trailing bytes.
    let mut p = vec![0, 0];
    p.extend([0; 31]);
    assert_eq!(field_error(&frame(7, 0, &p)).0, "id");
    p.extend([0; 2]);
    assert_eq!(field_error(&frame(7, 0, &p)).0, "payload");
    // Varints: overlong, over 64 bits, cut.
    assert!(field_error(&frame(5, 0, &[0x80, 0])).1.contains("overlong"));
    assert!(field_error(&frame(5, 0, &[0xff; 10])).1.contains("64 bits"));
    assert!(field_error(&frame(5, 0, &[0x80])).1.contains("ends inside"));
    // Option tags are 0 or 1; text is UTF-8; roles and kinds known.
    assert!(field_error(&frame(13, 0, &[2])).1.contains("option tag"));
    assert!(field_error(&frame(13, 0, &[0, 1, 0xff]))
        .1
        .contains("UTF-8"));
    assert_eq!(field_error(&frame(14, 0, &[3])).0, "kind");
    let mut h = Vec::new();
    encode_payload(&samples()[1], &mut h, true).unwrap();
    let role_at = 2;
    h[role_at] = 3;
    assert_eq!(field_error(&frame(1, 0, &h)).0, "role");
    h[role_at] = 2;
    h[role_at + 2] = 0x80;
    h.insert(role_at + 3, 4);
    assert!(field_error(&frame(1, 0, &h)).1.contains("option bits"));
    // Entry: file type, uid width.
    let mut e = Vec::new();
    encode_payload(&samples()[3], &mut e, true).unwrap();
    let kind_at = 1 + 1 + 8;
    assert_eq!(e[kind_at], 0);
    e[kind_at] = 7;
    assert_eq!(field_error(&frame(3, 0, &e)).0, "kind");
    // Empty messages carry nothing.
    assert_eq!(field_error(&frame(11, 0, &[0])).0, "payload");
}

#[test]
fn frame_headers_are_checked_before_the_payload() {
    let mut h = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    h.extend([6, 0]);
    let e = decode_frame(&h, 42).unwrap_err();
    assert!(
        matches!(e, WireError::FrameTooLarge { offset: 42, .. }),
        "{e}"
    );
    // MAX_FRAME itself is allowed, and waits for its payload.
    h[..4].copy_from_slice(&(MAX_FRAME as u32).to_le_bytes());
    assert!(decode_frame(&h, 0).unwrap().is_none());
    for kind in [0, 17, 255] {
        let e = decode_frame(&frame(kind, 0, &[]), 0).unwrap_err();
        assert!(matches!(e, WireError::UnknownKind { .. }), "{e}");
    }
    let e = decode_frame(&frame(11, 2, &[]), 0).unwrap_err();
    assert_eq!(e.to_string(), "Done frame at byte 0: unknown flags 0x02");
    let e = decode_frame(&frame(3, 0, &[]), 9).unwrap_err().to_string();
    assert_eq!(
        e,
        "Entry frame at byte 9: index (payload byte 0): the payload ends inside a varint"
    );
}

#[test]
fn zstd_payloads_are_capped() {
    let zstd_err = |b: &[u8]| match decode_frame(b, 0) {
        Err(WireError::Zstd { reason, .. }) => reason,
        other => panic!("{other:?}"),
    };
    // Declared over the cap: refused before decompressing.
    let big = zstd::bulk::compress(&vec![0; MAX_FRAME + 1], 1).unwrap();
    assert!(zstd_err(&frame(6, 1, &big)).contains("declared content size"));
    // No declared size (a streaming encoder's frame).
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    std::io::Write::write_all(&mut enc, &[0, 0, 1]).unwrap();
    let streamed = enc.finish().unwrap();
    assert!(zstd_err(&frame(6, 1, &streamed)).contains("does not declare"));
    // Two frames, or garbage.
    let one = zstd::bulk::compress(&[0, 0, 1], 1).unwrap();
    let two = [one.clone(), one.clone()].concat();
    assert!(zstd_err(&frame(6, 1, &two)).contains("follow the zstd frame"));
    assert!(zstd_err(&frame(6, 1, b"not zstd")).contains("not a zstd frame"));
    let mut cut = one.clone();
    cut.pop();
    assert!(zstd_err(&frame(6, 1, &cut)).contains("damaged"));
    // The decompressed payload is checked like a plain one.
    let (m, _) = decode_frame(&frame(6, 1, &one), 0).unwrap().unwrap();
    assert_eq!(
        m,
        Message::Data {
            index: 0,
            offset: 0,
            bytes: vec![1]
        }
    );
    let junk = zstd::bulk::compress(&[0x80], 1).unwrap();
    assert!(matches!(
        decode_frame(&frame(5, 1, &junk), 0),
        Err(WireError::Field { .. })
    ));
}

#[test]
fn oversized_messages_are_not_encoded() {
    let m = Message::Data {
        index: 0,
        offset: 0,
        bytes: vec![0; MAX_FRAME],
    };
    let mut out = vec![1, 2];
    let e = encode_frame(&m, None, &mut out).unwrap_err();
    assert!(matches!(
        e,
        WireError::Unencodable {
            field: "payload",
            ..
        }
    ));
    assert_eq!(out, [1, 2], "nothing appended on failure");
    // Compression does not lift the cap: the decoder caps the
    // decompressed size too.
    assert!(encode_frame(&m, Some(1), &mut out).is_err());
    // Just at the cap is fine.
    let m = Message::Data {
        index: 0,
        offset: 0,
        bytes: vec![0; MAX_FRAME - 2],
    };
    encode_frame(&m, Some(1), &mut out).unwrap();
    assert_eq!(decode_frame(&out[2..], 0).unwrap().unwrap().0, m);
}

#[test]
fn indexes_must_be_announced() {
    let mut ix = Indexes::new();
    let mut e = entry();
    e.hardlink_of = None;
    e.index = 1;
    let err = ix.announce(&e).unwrap_err().to_string();
    assert_eq!(
        err,
        "Entry: entry index 1: entries must be numbered in order; expected 0"
    );
    let err = ix
        .observe(&Message::Skip { index: 0 })
        .unwrap_err()
        .to_string();
    assert_eq!(err, "Skip: entry index 0: not announced (0 entries so far)");
    e.index = 0;
    ix.observe(&Message::Entry(Box::new(e.clone()))).unwrap();
    ix.observe(&Message::Skip { index: 0 }).unwrap();
    assert!(ix
        .observe(&Message::FileDone {
            index: 1,
            blake3: [0; 32]
        })
        .is_err());
    assert!(ix
        .observe(&Message::Error {
            index: Some(5),
            message: String::new()
        })
        .is_err());
    ix.observe(&Message::Error {
        index: None,
        message: String::new(),
    })
    .unwrap();
    ix.observe(&Message::Done).unwrap();
    // A hardlink names an announced entry.
    e.index = 1;
    e.hardlink_of = Some(0);
    ix.announce(&e).unwrap();
    assert_eq!(ix.announced(), 2);
    e.index = 1;
    assert!(ix.announce(&e).is_err(), "an index announced twice");
}

#[test]
fn relative_paths() {
    fn ok(p: &[u8]) -> Vec<&[u8]> {
        checked_rel_path(p).unwrap()
    }
    assert_eq!(ok(b"."), Vec::<&[u8]>::new());
    assert_eq!(ok(b"a"), vec![b"a".as_slice()]);
    assert_eq!(ok(b"./a/b"), vec![b"a".as_slice(), b"b"]);
    assert_eq!(ok(b"...").len(), 1);
    assert_eq!(ok(b"a/..b/c.").len(), 3);
    for (p, why) in [
        (&b""[..], "empty path"),
        (b"/etc/passwd", "absolute"),
        (b"..", "`..`"),
        (b"a/../../b", "`..`"),
        (b"a/..", "`..`"),
        (b"./../x", "`..`"),
        (b"a//b", "empty component"),
        (b"a/", "empty component"),
        (b"./", "empty component"),
        (b".//a", "empty component"),
        (b"a/./b", "`.` component"),
        (b"././a", "`.` component"),
        (b"a\0b", "NUL"),
    ] {
        let e = checked_rel_path(p).unwrap_err().to_string();
        assert!(e.contains(why), "{p:?}: {e}");
    }
    assert!(checked_rel_path(&[b'a'; MAX_PATH + 1]).is_err());
    assert!(checked_rel_path(&[b'a'; MAX_PATH]).is_ok());
}

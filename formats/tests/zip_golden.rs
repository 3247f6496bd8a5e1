//! Golden vectors for the zip extra fields haul writes (`haul_formats::zipfmt`):
//! pinned bytes, so a change of layout is a deliberate one.
use haul_formats::zipfmt::{
    decode_timestamp, decode_unix_ids, dos_datetime, dos_to_unix, encode_timestamp,
    encode_unix_ids, end_records, fields, HaulExtra, HaulKind, HAUL_ID,
};

#[test]
fn unix_ids_0x7875() {
    let f = encode_unix_ids(1234, 5678);
    assert_eq!(
        f,
        [0x75, 0x78, 11, 0, 1, 4, 0xd2, 0x04, 0, 0, 4, 0x2e, 0x16, 0, 0]
    );
    assert_eq!(decode_unix_ids(&f[4..]), Ok((1234, 5678)));
    // Info-ZIP also writes 2-byte ids.
    assert_eq!(
        decode_unix_ids(&[1, 2, 0xe8, 3, 2, 0x64, 0]),
        Ok((1000, 100))
    );
    assert!(decode_unix_ids(&[1, 4, 0]).is_err());
    assert!(decode_unix_ids(&[2, 0, 0]).is_err());
}

#[test]
fn timestamp_0x5455() {
    let f = encode_timestamp(1_500_000_000, None).unwrap();
    assert_eq!(f, [0x55, 0x54, 5, 0, 1, 0x00, 0x2f, 0x68, 0x59]);
    assert_eq!(decode_timestamp(&f[4..]), Ok((Some(1_500_000_000), None)));
    let f = encode_timestamp(-1, Some(7)).unwrap();
    assert_eq!(decode_timestamp(&f[4..]), Ok((Some(-1), Some(7))));
    assert_eq!(encode_timestamp(1 << 40, None), None);
}

#[test]
fn haul_field_0x6168() {
    let x = HaulExtra {
        kind: HaulKind::Hardlink,
        mtime: (1, 2),
        atime: (3, 4),
        rdev: 0,
        link: b"a/b".to_vec(),
        regions: Some(vec![(4096, 10)]),
        xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
    };
    let f = x.encode().unwrap();
    let mut want = vec![0x68, 0x61, 0, 0, 1, 4];
    want.extend_from_slice(&1i64.to_le_bytes());
    want.extend_from_slice(&2u32.to_le_bytes());
    want.extend_from_slice(&3i64.to_le_bytes());
    want.extend_from_slice(&4u32.to_le_bytes());
    want.extend_from_slice(&[2, 3, 0]);
    want.extend_from_slice(b"a/b");
    want.extend_from_slice(&[3, 16, 0]);
    want.extend_from_slice(&4096u64.to_le_bytes());
    want.extend_from_slice(&10u64.to_le_bytes());
    want.extend_from_slice(&[4, 9, 0, 6, 0]);
    want.extend_from_slice(b"user.kv");
    let n = (want.len() - 4) as u16;
    want[2..4].copy_from_slice(&n.to_le_bytes());
    assert_eq!(f, want);
    let (id, payload) = fields(&f).next().unwrap();
    assert_eq!(id, HAUL_ID);
    assert_eq!(HaulExtra::decode(payload).unwrap(), x);
    // Truncated anywhere: an error, never a panic.
    for cut in 0..payload.len() {
        let _ = HaulExtra::decode(&payload[..cut]);
    }
    let dev = HaulExtra {
        kind: HaulKind::CharDev,
        rdev: 0x0103,
        link: vec![],
        regions: None,
        xattrs: vec![],
        ..x
    };
    assert_eq!(HaulExtra::decode(&dev.encode().unwrap()[4..]).unwrap(), dev);
}

#[test]
fn dos_time() {
    // 2017-07-14 02:40:00 UTC
    let (t, d) = dos_datetime(1_500_000_000);
    assert_eq!((t, d), (0x1500, 0x4aee));
    assert_eq!(dos_to_unix(t, d), 1_500_000_000);
    assert_eq!(dos_datetime(0), (0, 0x21));
}

#[test]
fn end_records_zip64_past_65534_entries() {
    assert_eq!(end_records(1, 100, 50).len(), 22);
    let e = end_records(70_000, 100, 50);
    assert_eq!(e.len(), 56 + 20 + 22);
    assert_eq!(&e[..4], &[0x50, 0x4b, 0x06, 0x06]);
}

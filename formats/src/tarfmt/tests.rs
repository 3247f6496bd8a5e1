use super::read::pax_time;
use super::write::pax_time_str;
use super::*;
use tar::{EntryType, Header};

fn member(path: &str, kind: TarKind) -> TarMember {
    TarMember {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        size: 0,
        mtime: (1_700_000_000, 123_456_789),
        atime: None,
        link: Vec::new(),
        dev: (0, 0),
        xattrs: Vec::new(),
        sparse: None,
    }
}

fn round_trip(members: &[(TarMember, Vec<u8>)]) -> Vec<(TarMember, Vec<u8>)> {
    let mut w = TarWriter::new(Vec::new());
    for (m, d) in members {
        w.begin_member(m).unwrap();
        w.data(d).unwrap();
        w.end_member(m).unwrap();
    }
    let bytes = w.finish().unwrap();
    let mut r = TarReader::new(&bytes[..]);
    let mut out = Vec::new();
    while let Some(m) = r.next_member().unwrap() {
        let mut d = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = r.read_data(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            d.extend_from_slice(&buf[..n]);
        }
        out.push((m, d));
    }
    out
}

#[test]
fn members_round_trip() {
    let mut f = member("dir/file", TarKind::File);
    f.size = 5;
    f.xattrs = vec![(b"user.k".to_vec(), vec![0, 1, 2, b'\n', 255])];
    f.atime = Some((-2, 750_000_000));
    let mut long = member(&"x/".repeat(200), TarKind::Dir);
    long.path.extend_from_slice("é".as_bytes());
    let mut l = member("l", TarKind::Symlink);
    l.link = "t".repeat(300).into_bytes();
    let mut sp = member("sparse", TarKind::File);
    sp.size = 1 << 40;
    sp.sparse = Some(vec![(4096, 3), ((1 << 40) - 2, 2)]);
    let mut dev = member("dev", TarKind::CharDev);
    dev.dev = (1, 3);
    let mut big = member("big-uid", TarKind::Fifo);
    big.uid = 4_000_000_000;
    let ms = vec![
        (member("dir", TarKind::Dir), vec![]),
        (f, b"hello".to_vec()),
        (long, vec![]),
        (l, vec![]),
        (sp, b"abcde".to_vec()),
        (dev, vec![]),
        (big, vec![]),
    ];
    let got = round_trip(&ms);
    assert_eq!(got.len(), ms.len());
    for ((a, ad), (b, bd)) in ms.iter().zip(&got) {
        let mut a = a.clone();
        if a.kind == TarKind::Dir {
            a.path.push(b'/');
        }
        assert_eq!(&a, b);
        assert_eq!(ad, bd);
    }
}

#[test]
fn pax_records() {
    assert_eq!(pax_record(b"a", b"b"), b"6 a=b\n");
    // 9 + 1 digit would be 10: the length counts its own digits.
    assert_eq!(pax_record(b"ab", b"cdef"), b"11 ab=cdef\n");
    assert_eq!(
        parse_pax(b"11 ab=cdef\n6 a=b\n").unwrap(),
        vec![
            (b"ab".to_vec(), b"cdef".to_vec()),
            (b"a".to_vec(), b"b".to_vec())
        ]
    );
    assert!(parse_pax(b"99 a=b\n").is_err());
    assert!(parse_pax(b"x a=b\n").is_err());
}

#[test]
fn times() {
    assert_eq!(pax_time(b"1.5"), Some((1, 500_000_000)));
    assert_eq!(pax_time(b"-1.25"), Some((-2, 750_000_000)));
    assert_eq!(pax_time(b"7"), Some((7, 0)));
    assert_eq!(pax_time(b"1.x"), None);
    assert_eq!(pax_time_str((-2, 750_000_000)), "-1.250000000");
}

#[test]
fn truncation_and_bad_checksums_are_errors() {
    let mut w = TarWriter::new(Vec::new());
    let mut f = member("f", TarKind::File);
    f.size = 1000;
    w.begin_member(&f).unwrap();
    w.data(&[7; 1000]).unwrap();
    w.end_member(&f).unwrap();
    let bytes = w.finish().unwrap();
    for cut in [100, 600, 1500, 2000] {
        let mut r = TarReader::new(&bytes[..cut]);
        let mut res = r.next_member().map(|_| ());
        if res.is_ok() {
            let mut buf = [0; 4096];
            res = (|| {
                while r.read_data(&mut buf)? > 0 {}
                r.next_member().map(drop)
            })();
        }
        assert!(res.is_err(), "cut at {cut}");
    }
    let mut bad = bytes.clone();
    bad[10] ^= 1;
    assert!(matches!(
        TarReader::new(&bad[..]).next_member(),
        Err(TarError::BadChecksum(_))
    ));
}

#[test]
fn oversized_extension_is_refused_before_allocating() {
    let mut x = Header::new_ustar();
    x.set_entry_type(EntryType::XHeader);
    x.set_size(1 << 40);
    x.set_cksum();
    let r = TarReader::new(&x.as_bytes()[..]).next_member();
    assert!(matches!(r, Err(TarError::TooLarge { .. })), "{r:?}");
}

#[test]
fn acl_text_matches_gnu_tar() {
    // A file ACL u::rw-,u:99:r-x,g::r-x,m::r--,o::r-- as the kernel stores it.
    let mut v = vec![2, 0, 0, 0];
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 5, 99),
        (4, 5, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    assert_eq!(
        acl_text(&v).unwrap(),
        b"user::rw-\nuser:99:r-x\ngroup::r-x\nmask::r--\nother::r--\n"
    );
}

//! Golden vectors of the tar codec: the GNU sparse 1.0 map, PAX records,
//! and the exact bytes of a small PAX stream (by hash, with the fields
//! that matter spelled out). If one fails, what haul writes into `.tar`
//! changed: GNU tar must still read it the same way (tests/tests/e2e/
//! archive_tar.rs checks that), and this constant moves only with a reason.

use haul_formats::tarfmt::{
    encode_sparse_map, pax_record, TarKind, TarMember, TarReader, TarWriter,
};

fn member(path: &str, kind: TarKind) -> TarMember {
    TarMember {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o4755,
        uid: 1234,
        gid: 99,
        size: 0,
        mtime: (1_700_000_000, 5),
        atime: None,
        link: Vec::new(),
        dev: (0, 0),
        xattrs: Vec::new(),
        sparse: None,
    }
}

#[test]
fn sparse_map_is_gnu_sparse_1_0() {
    let m = encode_sparse_map(&[(4096, 3), (1 << 20, 0)]);
    assert_eq!(m.len(), 512);
    assert_eq!(&m[..22], b"2\n4096\n3\n1048576\n0\n\0\0\0");
    assert!(m[19..].iter().all(|&b| b == 0));
}

#[test]
fn pax_record_counts_its_own_length() {
    assert_eq!(
        pax_record(b"mtime", b"1700000000.000000005"),
        b"30 mtime=1700000000.000000005\n"
    );
    // 99 bytes fit two digits; one byte more needs three, and so 101.
    assert_eq!(
        pax_record(&[b'k'; 94], b""),
        [b"99 ".as_slice(), &[b'k'; 94], b"=\n"].concat()
    );
    assert_eq!(
        pax_record(&[b'k'; 95], b""),
        [b"101 ".as_slice(), &[b'k'; 95], b"=\n"].concat()
    );
}

#[test]
fn a_small_stream_is_byte_for_byte_pinned() {
    let mut f = member("dir/file", TarKind::File);
    f.size = 5;
    f.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
    let mut sp = member("sp", TarKind::File);
    sp.size = 10_000;
    sp.sparse = Some(vec![(0, 2)]);
    let mut l = member("l", TarKind::Symlink);
    l.link = b"dir/file".to_vec();
    let mut h = member("h", TarKind::Hardlink);
    h.link = b"dir/file".to_vec();
    let mut w = TarWriter::new(Vec::new());
    for (m, d) in [
        (member("dir", TarKind::Dir), &b""[..]),
        (f, b"hello"),
        (sp, b"ab"),
        (l, b""),
        (h, b""),
    ] {
        w.begin_member(&m).unwrap();
        w.data(d).unwrap();
        w.end_member(&m).unwrap();
    }
    let bytes = w.finish().unwrap();
    // Spelled out: the PAX header of the first member, then its ustar header.
    assert_eq!(&bytes[156..157], b"x");
    assert_eq!(&bytes[512..512 + 30], b"30 mtime=1700000000.000000005\n");
    assert_eq!(&bytes[1024..1028], b"dir/");
    assert_eq!(&bytes[1024 + 100..1024 + 107], b"0004755");
    assert_eq!(&bytes[1024 + 257..1024 + 263], b"ustar\0");
    assert_eq!(bytes.len(), 10240);
    assert_eq!(
        blake3::hash(&bytes).to_hex().as_str(),
        "6dd15d20b2dfc4bdc2b8eab64f2dfa8000c77020a116cbee54421cfd9e0d2a68",
        "the tar stream haul writes changed"
    );
    // And it reads back.
    let mut r = TarReader::new(&bytes[..]);
    let mut n = 0;
    while r.next_member().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 5);
}

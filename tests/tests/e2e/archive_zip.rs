//! `haul archive` with zip files: round trips checked by the independent walker,
//! interoperability with Info-ZIP `zip`/`unzip` and Python's `zipfile`, zip64, and
//! members that lie.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use haul_tests::fixture;
use haul_tests::util::{all, tmp};
use haul_tests::{assert_trees_equal, exists, read, require_root, run_haul, walk, without};

/// `path/` as an argument.
fn with_slash(p: &Path) -> OsString {
    let mut s = p.as_os_str().to_os_string();
    s.push("/");
    s
}

fn create(src: &Path, out: &Path, extra: &[&str]) {
    let mut args: Vec<OsString> = vec!["archive".into(), "create".into(), with_slash(src)];
    args.extend([
        "-o".into(),
        out.as_os_str().to_owned(),
        "--no-progress".into(),
    ]);
    args.extend(extra.iter().map(OsString::from));
    let r = run_haul(&args);
    // Sockets are not archived: a notice, not a failure.
    assert!(matches!(r.code, 0 | 4), "{}", r.describe());
}

fn extract(zip: &Path, dst: &Path) -> haul_tests::RunResult {
    run_haul([
        "archive".as_ref(),
        "extract".as_ref(),
        zip.as_os_str(),
        dst.as_os_str(),
        "--no-progress".as_ref(),
    ])
}

fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run tool");
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every metadata kind, through create and extract, for each compression.
#[test]
fn round_trip_every_kind_each_compression() {
    require_root("the privileged fixture");
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_full_as_root(&src);
    let want = without(&walk(&src), &["special/sock"]);
    for c in ["deflate", "zstd", "store"] {
        let zip = t.path().join(format!("{c}.zip"));
        let dst = t.path().join(format!("dst-{c}"));
        create(&src, &zip, &["--compression", c]);
        let r = extract(&zip, &dst);
        assert_eq!(r.code, 0, "{}", r.describe());
        assert_trees_equal(&want, &walk(&dst), &all(), &format!("zip {c}"));
    }
}

fn small_tree(src: &Path) {
    fixture::write_file(&src.join("f.txt"), b"hello zip\n");
    fixture::write_file(&src.join("d/x.bin"), &fixture::random_bytes("x", 3 << 20));
    fixture::chmod(&src.join("d/x.bin"), 0o751);
    fixture::symlink("../f.txt", &src.join("d/link"));
    fixture::lchown(&src.join("f.txt"), 1234, 5678);
    fixture::set_mtime(&src.join("f.txt"), 1_500_000_000, 0);
    fixture::set_mtime(&src.join("d/x.bin"), 1_600_000_000, 0);
}

/// unzip and Python's zipfile read haul's deflate zip: modes, symlinks, mtimes,
/// uid/gid (unzip -X as root), and the 0x7875/0x5455 fields are where they list them.
#[test]
fn other_tools_read_hauls_zip() {
    require_root("chown in the fixture");
    let t = tmp();
    let src = t.path().join("src");
    small_tree(&src);
    let zip = t.path().join("a.zip");
    create(&src, &zip, &[]);

    let u = t.path().join("unzip");
    fs::create_dir(&u).unwrap();
    sh(Command::new("unzip")
        .args(["-q", "-X"])
        .arg(&zip)
        .arg("-d")
        .arg(&u));
    let md = fs::symlink_metadata(u.join("f.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(md.mtime(), 1_500_000_000);
    assert_eq!(read(&u.join("d/x.bin")), read(&src.join("d/x.bin")));
    let md = fs::symlink_metadata(u.join("d/x.bin")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o751);
    assert_eq!(md.mtime(), 1_600_000_000);
    assert_eq!(
        fs::read_link(u.join("d/link")).unwrap(),
        Path::new("../f.txt")
    );

    let py = t.path().join("py");
    let out = sh(Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import sys, zipfile, struct
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2])
for i in z.infolist():
    ids = []
    e = i.extra
    while len(e) >= 4:
        fid, n = struct.unpack('<HH', e[:4]); ids.append(hex(fid)); e = e[4 + n:]
    print(i.filename, oct(i.external_attr >> 16), i.date_time, ','.join(ids))
"#,
        )
        .arg(&zip)
        .arg(&py));
    assert_eq!(read(&py.join("d/x.bin")), read(&src.join("d/x.bin")));
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not listed: {out}"))
            .to_string()
    };
    let f = line("f.txt");
    assert!(
        f.contains("0o100644") && f.contains("0x5455") && f.contains("0x7875"),
        "{f}"
    );
    assert!(line("d/link").contains("0o120777"), "{out}");
    assert!(line("d/").contains("0o40"), "{out}");
    assert!(line("d/x.bin").contains("0o100751"), "{out}");
}

/// haul extracts what Info-ZIP `zip -ry --symlinks` and Python's zipfile make.
#[test]
fn haul_reads_zip_and_python_zips() {
    let t = tmp();
    let src = t.path().join("src");
    small_tree(&src);
    let a = t.path().join("info.zip");
    sh(Command::new("zip")
        .args(["-qry", "--symlinks"])
        .arg(&a)
        .arg(".")
        .current_dir(&src));
    let dst = t.path().join("dst-info");
    let r = extract(&a, &dst);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert_eq!(read(&dst.join("d/x.bin")), read(&src.join("d/x.bin")));
    assert_eq!(
        fs::read_link(dst.join("d/link")).unwrap(),
        Path::new("../f.txt")
    );
    let md = fs::symlink_metadata(dst.join("d/x.bin")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o751);
    assert_eq!(md.mtime(), 1_600_000_000);
    assert_eq!(fs::symlink_metadata(dst.join("f.txt")).unwrap().uid(), 1234);

    let p = t.path().join("py.zip");
    sh(Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('top/', '')
    z.write(sys.argv[2], 'top/x.bin')
    z.writestr('top/s.txt', 'stored text', compress_type=zipfile.ZIP_STORED)
"#,
        )
        .arg(&p)
        .arg(src.join("d/x.bin")));
    let dst = t.path().join("dst-py");
    let r = extract(&p, &dst);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert_eq!(read(&dst.join("top/x.bin")), read(&src.join("d/x.bin")));
    assert_eq!(read(&dst.join("top/s.txt")), b"stored text");
}

/// More than 65,535 members: zip64 end records, read back by haul and by Python.
#[test]
fn zip64_many_entries() {
    let t = tmp();
    let src = t.path().join("src");
    for d in 0..70 {
        let dir = src.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            fs::File::create(dir.join(format!("{f}"))).unwrap();
        }
    }
    let zip = t.path().join("many.zip");
    create(&src, &zip, &[]);
    let n = sh(Command::new("python3")
        .arg("-c")
        .arg("import sys, zipfile; print(len(zipfile.ZipFile(sys.argv[1]).infolist()))")
        .arg(&zip));
    assert_eq!(n.trim(), "70071");
    let dst = t.path().join("dst");
    let r = extract(&zip, &dst);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert!(exists(&dst.join("d69/999")));
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "zip64");
}

/// Offset of `name`'s central directory record in `zip`.
fn central_record(zip: &[u8], name: &[u8]) -> usize {
    (0..zip.len() - 46)
        .find(|&i| {
            zip[i..i + 4] == [0x50, 0x4b, 0x01, 0x02] && {
                let n = u16::from_le_bytes([zip[i + 28], zip[i + 29]]) as usize;
                &zip[i + 46..i + 46 + n] == name
            }
        })
        .expect("central record")
}

fn local_record(zip: &[u8], name: &[u8]) -> usize {
    (0..zip.len() - 30)
        .find(|&i| {
            zip[i..i + 4] == [0x50, 0x4b, 0x03, 0x04] && {
                let n = u16::from_le_bytes([zip[i + 26], zip[i + 27]]) as usize;
                &zip[i + 30..i + 30 + n] == name
            }
        })
        .expect("local record")
}

/// A member whose declared size is smaller than its data, and one whose CRC is
/// wrong: each fails (exit 3, named), nothing is left under its name, the rest is
/// extracted.
#[test]
fn lying_size_and_bad_crc_fail_the_member() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("ok.txt"), b"fine\n");
    fixture::write_file(&src.join("liar.txt"), &vec![b'a'; 5000]);
    fixture::write_file(&src.join("crc.txt"), &vec![b'b'; 5000]);
    let zip = t.path().join("a.zip");
    create(&src, &zip, &[]);
    let mut z = read(&zip);
    // Declared size 100 in both headers (they agree: the lie is the data's).
    for at in [
        local_record(&z, b"liar.txt") + 22,
        central_record(&z, b"liar.txt") + 24,
    ] {
        z[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
    }
    for at in [
        local_record(&z, b"crc.txt") + 14,
        central_record(&z, b"crc.txt") + 16,
    ] {
        z[at] ^= 0x55;
    }
    let bad = t.path().join("bad.zip");
    fs::write(&bad, &z).unwrap();
    let dst = t.path().join("dst");
    let r = extract(&bad, &dst);
    assert_eq!(r.code, 3, "{}", r.describe());
    assert!(
        r.stderr.contains("liar.txt") && r.stderr.contains("crc.txt"),
        "{}",
        r.describe()
    );
    assert!(!exists(&dst.join("liar.txt")));
    assert!(!exists(&dst.join("crc.txt")));
    assert_eq!(read(&dst.join("ok.txt")), b"fine\n");
    let names: Vec<_> = fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("ok.txt")], "leftovers in DST");
}

/// A zip on standard input is a usage error.
#[test]
fn zip_on_stdin_is_usage_error() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"x");
    let zip = t.path().join("a.zip");
    create(&src, &zip, &[]);
    let out = Command::new(haul_tests::haul_bin())
        .args(["archive", "extract", "-", "--no-progress"])
        .arg(t.path().join("dst"))
        .stdin(fs::File::open(&zip).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("zip"),
        "{out:?}"
    );
}

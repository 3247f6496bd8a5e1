//! Unit tests of the destination writer on its own: the metadata order, a
//! hostile name, a link key outside the root, and removal of what the
//! source no longer has.
use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::entry::Entry;
use super::leaf::{DataSink, LeafSource, Place};
use super::*;
use crate::error::StepError;
use crate::meta::Xattrs;
use crate::sys::{self, Stat};

/// A leaf made up in memory: a regular file with `data`, or a symlink.
struct Fake {
    st: Entry,
    data: Vec<u8>,
    xattrs: Xattrs,
}

impl LeafSource for Fake {
    fn entry(&self) -> &Entry {
        &self.st
    }
    fn same_content(&self, _: &File, _: &CStr, _: &Stat) -> Result<bool, StepError> {
        Ok(false)
    }
    fn target(&self) -> Result<Vec<u8>, StepError> {
        Ok(self.data.clone())
    }
    fn xattrs(&self) -> Result<Xattrs, StepError> {
        Ok(self.xattrs.clone())
    }
    fn read_data(&self, each: &mut DataSink<'_>) -> Result<(), StepError> {
        each(0, &self.data)
    }
    fn fill(&self, out: &File) -> Result<(Entry, Xattrs), StepError> {
        use std::os::unix::fs::FileExt;
        out.write_all_at(&self.data, 0).map_err(StepError::from)?;
        Ok((self.st.clone(), self.xattrs.clone()))
    }
}

fn file_stat(mode: u32, uid: u32, size: u64) -> Entry {
    Entry {
        kind: crate::meta::FileKind::File,
        perm: mode,
        uid,
        gid: uid,
        size,
        rdev: 0,
        atime: (1_600_000_000, 5),
        mtime: (1_600_000_100, 7),
        attrs: 0,
        link: None,
    }
}

fn writer_parts() -> (WriteOptions, Filter) {
    (WriteOptions::default(), Filter::default())
}

fn place(d: &File) -> Place<'_> {
    Place {
        dir: Some(d),
        fresh: false,
        acl_inherit: false,
        seen: None,
    }
}

#[test]
fn metadata_goes_owner_xattrs_mode_then_times() {
    assert_eq!(
        sys::euid(),
        0,
        "this test sets foreign owners: run it as root (CI does)"
    );
    let t = tempfile::tempdir().unwrap();
    let d = sys::open_dir_path(t.path()).unwrap();
    let (opts, protect) = writer_parts();
    let w = DestWriter::new(&opts, false, &protect, false, &crate::NoProgress);
    let xattrs: Xattrs = vec![("user.order".into(), b"after chown".to_vec())];
    let src = Fake {
        st: file_stat(0o6755, 1234, 3),
        data: b"abc".to_vec(),
        xattrs,
    };
    let name = CString::new("suid").unwrap();
    w.put_leaf(place(&d), &name, Path::new("suid"), &src)
        .unwrap();
    let md = std::fs::symlink_metadata(t.path().join("suid")).unwrap();
    // chown before chmod: the setuid and setgid bits a chown clears survive.
    assert_eq!(md.permissions().mode() & 0o7777, 0o6755);
    assert_eq!((md.uid(), md.gid()), (1234, 1234));
    // xattrs after chown (which would clear a capability), times last.
    assert_eq!(
        xattr::get(t.path().join("suid"), "user.order")
            .unwrap()
            .unwrap(),
        b"after chown"
    );
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_100, 7));
    assert_eq!(std::fs::read(t.path().join("suid")).unwrap(), b"abc");
    let s = w.summary(std::time::Instant::now());
    assert_eq!((s.created, s.failed.len(), s.partial.len()), (1, 0, 0));
}

#[test]
fn a_hostile_name_is_refused_and_nothing_lands_outside() {
    let t = tempfile::tempdir().unwrap();
    let inside = t.path().join("inside");
    std::fs::create_dir(&inside).unwrap();
    let d = sys::open_dir_path(&inside).unwrap();
    let (opts, protect) = writer_parts();
    let w = DestWriter::new(&opts, false, &protect, false, &crate::NoProgress);
    let src = Fake {
        st: file_stat(0o644, sys::euid(), 4),
        data: b"evil".to_vec(),
        xattrs: Xattrs::new(),
    };
    for bad in ["../escaped", "..", ".", "a/b", ""] {
        let name = CString::new(bad).unwrap();
        assert!(
            w.put_leaf(place(&d), &name, Path::new(bad), &src).is_err(),
            "{bad:?} accepted"
        );
        assert!(w
            .ensure_dir(Some(&d), false, &name, Path::new(bad))
            .is_err());
    }
    assert!(!t.path().join("escaped").exists());
    assert_eq!(std::fs::read_dir(&inside).unwrap().count(), 0);
}

#[test]
fn a_link_key_outside_the_root_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(t.path().join("secret"), b"outside").unwrap();
    let (opts, protect) = writer_parts();
    let mut w = DestWriter::new(&opts, false, &protect, false, &crate::NoProgress);
    w.dst_root = Some(sys::open_dir_path(&root).unwrap());
    for key in ["../secret", "/etc/passwd", "a/../../secret"] {
        assert!(w.open_dst_parent(Path::new(key)).is_err(), "{key} opened");
    }
    // A later name of a group whose first name is outside is not linked.
    let d = sys::open_dir_path(&root).unwrap();
    let name = CString::new("second").unwrap();
    let r = w.make_link(&d, &name, Path::new("second"), Path::new("../secret"), None);
    assert!(r.is_err());
    assert!(!root.join("second").exists());
}

#[test]
fn removal_takes_what_the_source_lacks_and_keeps_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    for p in [
        "keep",
        "gone",
        "olddir/deep/f",
        "protected/x",
        ".haul-tmp.0123456789abcdef",
    ] {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
    }
    let opts = WriteOptions::default();
    let protect = Filter::new(&["protected/"]).unwrap();
    let w = DestWriter::new(&opts, true, &protect, false, &crate::NoProgress);
    let d = sys::open_dir_path(root).unwrap();
    w.remove_extraneous(&d, Path::new(""), |n| n == b"keep");
    let mut left: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["keep", "protected"]);
    let s = w.summary(std::time::Instant::now());
    // gone, olddir, olddir/deep, olddir/deep/f; the leftover temporary
    // file goes uncounted.
    assert_eq!(s.deleted, 4);
    assert!(s.failed.is_empty(), "{:?}", s.failed);
}

/// A stream in the worst order a tar can have: a file before its directory,
/// the directory read-only, a hardlink by path, a symlink planted by the
/// stream itself, and hostile paths. Nothing may land outside the root.
#[test]
fn by_path_mode_takes_any_order_and_never_leaves_the_root() {
    use super::bypath::PathWriter;
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let (opts, protect) = writer_parts();
    let mut w = DestWriter::new(&opts, false, &protect, false, &crate::NoProgress);
    w.dst_root = Some(sys::open_dir_path(&root).unwrap());
    let mut pw = PathWriter::new(&w, sys::open_dir_path(&root).unwrap());
    let me = sys::euid();

    // A file before the directory that holds it; the directory comes later,
    // read-only, with an old mtime.
    let file = Fake {
        st: file_stat(0o640, me, 5),
        data: b"hello".to_vec(),
        xattrs: Xattrs::new(),
    };
    pw.put_leaf(Path::new("a/b/f"), &file).unwrap();
    pw.put_link(Path::new("a/b/g"), Path::new("a/b/f")).unwrap();
    let mut dir = file_stat(0o555, me, 0);
    dir.kind = crate::meta::FileKind::Dir;
    dir.mtime = (1_500_000_000, 1);
    pw.put_dir(Path::new("a/b"), dir.clone(), Xattrs::new())
        .unwrap();
    pw.put_dir(Path::new("a"), dir, Xattrs::new()).unwrap();

    // A symlink in the stream pointing outside, then entries through it.
    let link = Fake {
        st: Entry {
            kind: crate::meta::FileKind::Symlink,
            ..file_stat(0o777, me, 0)
        },
        data: outside.as_os_str().as_encoded_bytes().to_vec(),
        xattrs: Xattrs::new(),
    };
    pw.put_leaf(Path::new("evil"), &link).unwrap();
    assert!(pw.put_leaf(Path::new("evil/x"), &file).is_err());
    let mut d2 = file_stat(0o755, me, 0);
    d2.kind = crate::meta::FileKind::Dir;
    assert!(pw
        .put_dir(Path::new("evil/sub"), d2, Xattrs::new())
        .is_err());
    // Hostile paths and link targets.
    for bad in ["../x", "/etc/x", "a/../../x", ""] {
        assert!(pw.put_leaf(Path::new(bad), &file).is_err(), "{bad:?}");
    }
    assert!(pw
        .put_link(Path::new("h"), Path::new("../outside/y"))
        .is_err());
    pw.finish();

    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(std::fs::read(root.join("a/b/f")).unwrap(), b"hello");
    let (f, g) = (
        std::fs::metadata(root.join("a/b/f")).unwrap(),
        std::fs::metadata(root.join("a/b/g")).unwrap(),
    );
    assert_eq!(f.ino(), g.ino());
    for d in ["a", "a/b"] {
        let md = std::fs::metadata(root.join(d)).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o555, "{d}");
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 1), "{d}");
    }
    assert!(std::fs::symlink_metadata(root.join("evil"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Read-only directories would stop the tempdir's cleanup.
    for d in ["a/b", "a"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Past its cap, the by-path writer's deferred directories go to a
/// temporary file in blocks and come back at the end: every directory
/// still gets its metadata (an archive of millions of directories would
/// otherwise hold them all in memory).
#[test]
fn by_path_deferred_directories_spill_and_come_back() {
    use super::bypath::PathWriter;
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let (opts, protect) = writer_parts();
    let mut w = DestWriter::new(&opts, false, &protect, false, &crate::NoProgress);
    w.dst_root = Some(sys::open_dir_path(&root).unwrap());
    let mut pw = PathWriter::new(&w, sys::open_dir_path(&root).unwrap());
    pw.spill_past(7);
    let me = sys::euid();
    let mut paths = Vec::new();
    for i in 0..5 {
        paths.push(format!("d{i}"));
        for j in 0..6 {
            paths.push(format!("d{i}/e{j}"));
        }
    }
    for (n, p) in paths.iter().enumerate() {
        let mut d = file_stat(0o700 + (n as u32 % 8), me, 0);
        d.kind = crate::meta::FileKind::Dir;
        d.mtime = (1_600_000_000 + n as i64, n as i64);
        let x = vec![(
            std::ffi::OsString::from("user.n"),
            n.to_string().into_bytes(),
        )];
        pw.put_dir(Path::new(p), d, x).unwrap();
    }
    pw.finish();
    let s = w.summary(std::time::Instant::now());
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    for (n, p) in paths.iter().enumerate() {
        let md = std::fs::metadata(root.join(p)).unwrap();
        assert_eq!(
            md.permissions().mode() & 0o7777,
            0o700 + (n as u32 % 8),
            "{p}"
        );
        assert_eq!(
            (md.mtime(), md.mtime_nsec()),
            (1_600_000_000 + n as i64, n as i64),
            "{p}"
        );
        let v = xattr::get(root.join(p), "user.n").unwrap();
        assert_eq!(v, Some(n.to_string().into_bytes()), "{p}");
    }
}

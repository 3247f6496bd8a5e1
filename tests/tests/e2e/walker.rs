//! Self-tests of the test harness (walker, comparison, fixture). They do not run haul.

use std::path::Path;

use haul_tests::fixture::{self, paths};
use haul_tests::util::tmp;
use haul_tests::{compare, require_root, walk, CompareOpts, Kind, ROOT};

#[test]
fn fixture_has_every_kind_and_metadata() {
    require_root("the privileged fixture");
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_full_as_root(&src);
    let tree = walk(&src);

    let kinds: std::collections::BTreeSet<Kind> = tree.values().map(|r| r.kind).collect();
    for k in [
        Kind::File,
        Kind::Dir,
        Kind::Symlink,
        Kind::Fifo,
        Kind::Socket,
        Kind::CharDev,
        Kind::BlockDev,
    ] {
        assert!(kinds.contains(&k), "fixture lacks a {k:?}");
    }
    let sparse = &tree[Path::new(paths::SPARSE)];
    assert_eq!(sparse.size, fixture::SPARSE_SIZE);
    assert!(
        sparse.allocated < 1 << 20,
        "fixture sparse file allocates {}",
        sparse.allocated
    );
    assert_eq!(
        sparse.data_bytes(),
        3 * 4096,
        "segments {:?}",
        sparse.data_segments
    );
    assert_eq!(
        tree[Path::new("hl/two")].link_group.as_deref(),
        Some(Path::new("hl/one"))
    );
    assert_eq!(
        tree[Path::new("a/b/c/g3_c")].link_group.as_deref(),
        Some(Path::new("a/b/c/g3_c"))
    );
    assert_eq!(
        tree[Path::new("hl/g3_a")].link_group.as_deref(),
        Some(Path::new("a/b/c/g3_c"))
    );
    assert_eq!(tree[Path::new("small.txt")].link_group, None);
    let acl = &tree[Path::new(paths::ACL_FILE)];
    assert!(acl
        .xattrs
        .contains_key(std::ffi::OsStr::new("system.posix_acl_access")));
    let defdir = &tree[Path::new(paths::ACL_DEFDIR)];
    assert!(defdir
        .xattrs
        .contains_key(std::ffi::OsStr::new("system.posix_acl_default")));
    assert!(!tree[Path::new("acl/defdir/before.txt")]
        .xattrs
        .contains_key(std::ffi::OsStr::new("system.posix_acl_access")));
    assert!(tree[Path::new("acl/defdir/after.txt")]
        .xattrs
        .contains_key(std::ffi::OsStr::new("system.posix_acl_access")));
    let cap = &tree[Path::new(paths::CAP_FILE)];
    assert!(cap
        .xattrs
        .contains_key(std::ffi::OsStr::new("security.capability")));
    assert_eq!(cap.uid, 1234);
    assert_eq!(tree[Path::new("owners/suid1234")].mode, 0o6755);
    assert_eq!(tree[Path::new("modes/setgid_dir/inner")].mode, 0o755);
    assert_eq!(
        tree[Path::new("times/old_file")].mtime,
        (-1_234_567_890, 123_456_789)
    );
    assert_eq!(tree[Path::new("times/old_link")].mtime, (-1, 5));
    assert_eq!(
        tree[Path::new("times/future_dir")].mtime,
        (fixture::YEAR_2400 + 86_400, 1)
    );
    assert_eq!(tree[Path::new(ROOT)].mtime, (1_500_000_000, 5));
    assert_eq!(
        tree[Path::new(paths::STICK_DIR)].mtime,
        (1_000_000_000, 500_000_000)
    );

    // Walking twice gives the same tree.
    let again = walk(&src);
    assert_eq!(
        compare(&tree, &again, &CompareOpts::default()),
        Vec::<String>::new()
    );
}

#[test]
fn compare_detects_differences() {
    require_root("the privileged fixture");
    let t = tmp();
    let a = t.path().join("a");
    let b = t.path().join("b");
    fixture::build_small(&a);
    fixture::build_small(&b);
    let opts = CompareOpts::default();
    let ta = walk(&a);
    assert_eq!(compare(&ta, &walk(&b), &opts), Vec::<String>::new());

    fixture::chmod(&b.join("top.txt"), 0o600);
    fixture::set_mtime(&b.join("top.txt"), 1_650_000_000, 123);
    fixture::write_file(&b.join("dir/inner.txt"), b"INNER\n");
    fixture::set_mtime(&b.join("dir/inner.txt"), 1_650_000_001, 456);
    fixture::set_mtime(&b.join("dir"), 1_650_000_005, 3);
    fixture::set_xattr(&b.join("dir/sub/deep.bin"), "user.extra", b"x");
    let diffs = compare(&ta, &walk(&b), &opts);
    let joined = diffs.join("\n");
    assert!(joined.contains("\"top.txt\": mode"), "{joined}");
    assert!(
        joined.contains("\"dir/inner.txt\": content differs"),
        "{joined}"
    );
    assert!(joined.contains("\"dir/sub/deep.bin\": xattrs"), "{joined}");
    assert_eq!(diffs.len(), 4, "{joined}"); // hardlink "dir/hard" shares top.txt's inode
    let no_x = CompareOpts {
        xattrs: false,
        ..CompareOpts::default()
    };
    assert_eq!(compare(&ta, &walk(&b), &no_x).len(), 3);
}

/// `cp -a` is the reference: a full-fidelity copier must do at least as well. This checks
/// that the walker does not report differences a faithful copy cannot avoid.
#[test]
fn walker_accepts_cp_a_copy() {
    require_root("the privileged fixture");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fixture::build_full_as_root(&src);
    let st = std::process::Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(&src)
        .arg(&dst)
        .status()
        .expect("run cp");
    assert!(st.success());
    let diffs = compare(&walk(&src), &walk(&dst), &CompareOpts::default());
    assert_eq!(diffs, Vec::<String>::new());
}

#[test]
fn command_as_drops_to_uid_gid_without_groups() {
    require_root("switching users");
    let out = haul_tests::command_as(Path::new("/usr/bin/id"), Some((65534, 65534)))
        .output()
        .expect("run id");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("uid=65534"), "{s}");
    assert!(s.contains("gid=65534"), "{s}");
    assert!(
        s.trim_end().ends_with("groups=65534(nogroup)"),
        "supplementary groups kept: {s}"
    );
}

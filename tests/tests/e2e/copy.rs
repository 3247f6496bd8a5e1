//! End-to-end tests of `haul copy`: run the real binary, compare SRC and DST with the
//! independent walker from `haul_tests`.
//!
//! Run as root (CI does): most tests need root to build the fixture (devices, foreign
//! owners, trusted.* xattrs, capabilities) or to run haul as an unprivileged user.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use haul_tests::fixture::{self, paths, FixtureOpts};
use haul_tests::util::{all, kill9, tmp, tmp_for_nobody, NOBODY};
use haul_tests::{
    assert_trees_equal, compare, ctimes, exists, haul_copy, haul_copy_as, inode, is_acl_xattr,
    json_changes, json_count, json_paths, read, require_root, run_haul, spawn_haul, walk, without,
    CompareOpts, Kind, Tree, Untouched,
};

mod safety;

fn full_fixture(src: &Path) {
    fixture::build_full_as_root(src);
}

/// `path/` as an argument.
fn with_slash(p: &Path) -> OsString {
    let mut s = p.as_os_str().to_os_string();
    s.push("/");
    s
}

/// Paths of entries named `.haul-tmp.*` under `root`.
fn tmp_leftovers(root: &Path) -> Vec<PathBuf> {
    haul_tests::list_entries(root)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b".haul-tmp."))
        })
        .collect()
}

fn assert_no_tmp_leftovers(root: &Path) {
    let left = tmp_leftovers(root);
    assert!(
        left.is_empty(),
        "temporary files left in {}: {left:?}",
        root.display()
    );
}

fn has_change(v: &serde_json::Value, action: &str, path: &str) -> bool {
    json_changes(v)
        .iter()
        .any(|(a, p)| a == action && p == path)
}

fn assert_change(v: &serde_json::Value, action: &str, path: &str) {
    assert!(
        has_change(v, action, path),
        "expected change ({action}, {path}) in JSON changes: {:?}",
        json_changes(v)
    );
}

fn count_kind(t: &Tree, kinds: &[Kind]) -> u64 {
    t.values().filter(|r| kinds.contains(&r.kind)).count() as u64
}

// ---------------------------------------------------------------------------------------
// Full fidelity
// ---------------------------------------------------------------------------------------

#[test]
fn full_fidelity_copy_as_root() {
    require_root("full_fidelity_copy_as_root");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    full_fixture(&src);

    let r = haul_copy(&[], &src, &dst);
    let v = r.expect_clean();
    assert_eq!(
        v["dry_run"],
        serde_json::Value::Bool(false),
        "{}",
        r.describe()
    );
    let s = walk(&src);
    let d = walk(&dst);
    assert_trees_equal(&s, &d, &all(), "full-fidelity copy as root");

    let sparse = &d[Path::new(paths::SPARSE)];
    assert_eq!(sparse.size, fixture::SPARSE_SIZE);
    assert!(
        sparse.allocated < 1 << 20,
        "1 GiB sparse file with 12 KiB of data allocates {} bytes in DST (segments {:?})",
        sparse.allocated,
        sparse.data_segments
    );
    let cap = &d[Path::new(paths::CAP_FILE)];
    assert!(cap
        .xattrs
        .contains_key(std::ffi::OsStr::new("security.capability")));
    assert_eq!((cap.uid, cap.gid), (1234, 5678));
    assert!(json_count(&v, "created") > 0, "{}", r.describe());
    assert_eq!(json_count(&v, "deleted"), 0, "{}", r.describe());
    assert_eq!(
        json_count(&v["source"], "symlinks"),
        count_kind(&s, &[Kind::Symlink]),
        "{v}"
    );
    assert_eq!(
        json_count(&v["source"], "specials"),
        count_kind(
            &s,
            &[Kind::Fifo, Kind::Socket, Kind::CharDev, Kind::BlockDev]
        ),
        "{v}"
    );
    assert_no_tmp_leftovers(&dst);
}

#[test]
fn unprivileged_copy_of_own_tree_is_full_fidelity() {
    require_root("unprivileged_copy_of_own_tree_is_full_fidelity (to run haul as nobody)");
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    // Missing parents: DST's parent does not exist yet either.
    let dst = t.path().join("out/dst");
    fixture::build_full(
        &src,
        &FixtureOpts {
            privileged: false,
            owner: Some(NOBODY),
        },
    );

    let r = haul_copy_as(NOBODY.0, NOBODY.1, &[], &src, &dst);
    r.expect_clean();
    let s = walk(&src);
    let d = walk(&dst);
    assert_trees_equal(&s, &d, &all(), "unprivileged copy of a tree the user owns");
    let acl = &d[Path::new(paths::ACL_FILE)];
    assert!(acl
        .xattrs
        .contains_key(std::ffi::OsStr::new("system.posix_acl_access")));
    let defdir = &d[Path::new(paths::ACL_DEFDIR)];
    assert!(defdir
        .xattrs
        .contains_key(std::ffi::OsStr::new("system.posix_acl_default")));
    let ux = &d[Path::new(paths::USER_XATTR_FILE)];
    assert_eq!(
        ux.xattrs
            .get(std::ffi::OsStr::new("user.comment"))
            .map(Vec::as_slice),
        Some(&b"hello xattr"[..])
    );
    assert!(d.values().all(|e| (e.uid, e.gid) == NOBODY));
    assert_no_tmp_leftovers(&dst);
}

#[test]
fn unprivileged_copy_of_foreign_owned_entries_is_partial() {
    require_root("unprivileged_copy_of_foreign_owned_entries_is_partial");
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fixture::write_file(&src.join("own.txt"), b"mine\n");
    fixture::write_file(&src.join("root_file"), b"owned by root\n");
    fixture::write_file(&src.join("gid_only.txt"), b"group root\n");
    fixture::write_file(&src.join("foreign/inner.txt"), b"owned by 1234\n");
    fixture::chown_tree(&src, NOBODY.0, NOBODY.1);
    fixture::lchown(&src.join("root_file"), 0, 0);
    fixture::lchown(&src.join("gid_only.txt"), NOBODY.0, 0);
    fixture::lchown(&src.join("foreign"), 1234, 5678);
    fixture::lchown(&src.join("foreign/inner.txt"), 1234, 5678);

    let r = haul_copy_as(NOBODY.0, NOBODY.1, &[], &src, &dst);
    r.expect_code(4);
    let v = r.json();
    let partial: BTreeSet<String> = json_paths(&v, "partial").into_iter().collect();
    for p in ["root_file", "gid_only.txt", "foreign", "foreign/inner.txt"] {
        assert!(
            partial.contains(p),
            "JSON partial does not name {p}: {partial:?}\n{}",
            r.describe()
        );
    }
    assert!(
        !partial.contains("own.txt"),
        "own.txt wrongly partial: {partial:?}"
    );
    assert_eq!(
        json_paths(&v, "failed"),
        Vec::<String>::new(),
        "{}",
        r.describe()
    );
    // Everything but the owners is still copied.
    let no_owner = CompareOpts {
        owner: false,
        ..all()
    };
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &no_owner,
        "partial copy (owners ignored)",
    );
    assert_no_tmp_leftovers(&dst);
}

// ---------------------------------------------------------------------------------------
// Argument forms and parallelism
// ---------------------------------------------------------------------------------------

#[test]
fn trailing_slash_independence() {
    require_root("trailing_slash_independence (xattrs/hardlinks fixture)");
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    let s = walk(&src);

    let existing = t.path().join("existing");
    fs::create_dir(&existing).unwrap();
    let cases: Vec<(&str, OsString, OsString, PathBuf)> = vec![
        (
            "SRC DST",
            src.clone().into(),
            t.path().join("d1").into(),
            t.path().join("d1"),
        ),
        (
            "SRC/ DST",
            with_slash(&src),
            t.path().join("d2").into(),
            t.path().join("d2"),
        ),
        (
            "SRC DST/ (missing parents)",
            src.clone().into(),
            with_slash(&t.path().join("missing/parents/d3")),
            t.path().join("missing/parents/d3"),
        ),
        (
            "SRC/ DST/",
            with_slash(&src),
            with_slash(&t.path().join("d4")),
            t.path().join("d4"),
        ),
        (
            "SRC existing-DST",
            src.clone().into(),
            existing.clone().into(),
            existing.clone(),
        ),
    ];
    for (name, a, b, dst) in cases {
        let r = run_haul([
            OsString::from("copy"),
            "--json".into(),
            "--no-progress".into(),
            a,
            b,
        ]);
        r.expect_clean();
        assert_trees_equal(&s, &walk(&dst), &all(), &format!("haul copy {name}"));
    }
}

#[test]
fn jobs_1_equals_jobs_4() {
    require_root("jobs_1_equals_jobs_4");
    let t = tmp();
    let src = t.path().join("src");
    full_fixture(&src);
    let d1 = t.path().join("j1");
    let d4 = t.path().join("j4");
    haul_copy(&["-j", "1"], &src, &d1).expect_clean();
    haul_copy(&["--jobs", "4"], &src, &d4).expect_clean();
    let (t1, t4) = (walk(&d1), walk(&d4));
    assert_trees_equal(&t1, &t4, &all(), "-j 1 copy vs -j 4 copy");
    assert_trees_equal(&walk(&src), &t4, &all(), "-j 4 copy");
}

// ---------------------------------------------------------------------------------------
// Re-runs and incremental updates
// ---------------------------------------------------------------------------------------

#[test]
fn noop_rerun_writes_nothing() {
    require_root("noop_rerun_writes_nothing");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    full_fixture(&src);
    haul_copy(&[], &src, &dst).expect_clean();
    let before = walk(&dst);
    let before_ct = ctimes(&dst);

    for extra in [&[][..], &["--delete", "-j", "4"][..], &["--checksum"][..]] {
        let r = haul_copy(extra, &src, &dst);
        let v = r.expect_clean();
        for k in ["created", "updated", "metadata_only", "deleted"] {
            assert_eq!(
                json_count(&v, k),
                0,
                "no-op re-run {extra:?}: {k} != 0\n{}",
                r.describe()
            );
        }
        assert!(json_count(&v, "unchanged") > 0, "{}", r.describe());
        let after_ct = ctimes(&dst);
        let touched: Vec<_> = after_ct
            .iter()
            .filter(|(p, c)| before_ct.get(*p) != Some(c))
            .map(|(p, _)| p)
            .collect();
        assert!(
            touched.is_empty(),
            "no-op re-run {extra:?} changed the ctime of {touched:?}"
        );
        assert_eq!(before_ct.len(), after_ct.len());
        assert_trees_equal(
            &before,
            &walk(&dst),
            &all(),
            "DST before/after a no-op re-run",
        );
    }
}

/// SRC for the incremental tests: the small tree plus files to modify.
fn incremental_src(src: &Path) {
    fixture::build_small(src);
    fixture::write_file(&src.join("mod.txt"), b"original content\n");
    fixture::write_file(&src.join("chmod.txt"), b"mode changes\n");
    fixture::write_file(&src.join("gone.txt"), b"will be deleted\n");
    fixture::write_file(&src.join("gone_dir/x.txt"), b"dir will be deleted\n");
    fixture::write_file(&src.join("keep.txt"), b"untouched\n");
    fixture::chmod(&src.join("chmod.txt"), 0o644);
    fixture::set_mtime(&src.join("mod.txt"), 1_600_000_000, 1);
}

#[test]
fn incremental_update_with_and_without_delete() {
    require_root("incremental_update_with_and_without_delete");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    incremental_src(&src);
    haul_copy(&[], &src, &dst).expect_clean();

    // Same size, new content, new mtime.
    fixture::overwrite_in_place(&src.join("mod.txt"), b"ORIGINAL CONTENT\n");
    fixture::set_mtime(&src.join("mod.txt"), 1_600_000_100, 2);
    fixture::chmod(&src.join("chmod.txt"), 0o600);
    fixture::write_file(&src.join("new.txt"), b"new file\n");
    fixture::write_file(&src.join("new_dir/nested.txt"), b"new nested\n");
    fs::remove_file(src.join("gone.txt")).unwrap();
    fs::remove_dir_all(src.join("gone_dir")).unwrap();

    // Without --delete: updated, stale entries stay.
    let r = haul_copy(&["-v"], &src, &dst);
    let v = r.expect_clean();
    assert_eq!(json_count(&v, "deleted"), 0, "{}", r.describe());
    assert!(json_count(&v, "updated") >= 1, "{}", r.describe());
    assert!(json_count(&v, "created") >= 2, "{}", r.describe());
    assert_change(&v, "update", "mod.txt");
    assert_change(&v, "metadata", "chmod.txt");
    assert_change(&v, "create", "new.txt");
    assert_change(&v, "create", "new_dir/nested.txt");
    assert!(
        !json_changes(&v).iter().any(|(a, _)| a == "delete"),
        "{}",
        r.describe()
    );
    assert_eq!(read(&dst.join("mod.txt")), b"ORIGINAL CONTENT\n");
    assert_eq!(read(&dst.join("gone.txt")), b"will be deleted\n");
    assert_eq!(read(&dst.join("gone_dir/x.txt")), b"dir will be deleted\n");
    assert_trees_equal(
        &walk(&src),
        &without(&walk(&dst), &["gone.txt", "gone_dir"]),
        &all(),
        "incremental copy without --delete",
    );

    // With --delete: stale entries disappear.
    let r = haul_copy(&["--delete", "-v"], &src, &dst);
    let v = r.expect_clean();
    assert!(json_count(&v, "deleted") >= 2, "{}", r.describe());
    assert_eq!(json_count(&v, "updated"), 0, "{}", r.describe());
    assert_eq!(json_count(&v, "created"), 0, "{}", r.describe());
    assert_change(&v, "delete", "gone.txt");
    assert_change(&v, "delete", "gone_dir");
    assert!(!exists(&dst.join("gone.txt")));
    assert!(!exists(&dst.join("gone_dir")));
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "incremental copy with --delete",
    );
    assert_no_tmp_leftovers(&dst);
}

/// `-j 1` keeps this deterministic; the parallel case is
/// `hardlinks_to_a_file_being_copied_keep_dir_mtime_with_parallel_jobs`.
#[test]
fn hardlink_changes_between_runs_are_mirrored() {
    require_root("hardlink_changes_between_runs_are_mirrored");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fixture::write_file(&src.join("x"), b"x content\n");
    fixture::write_file(&src.join("z"), b"z content\n");
    fixture::write_file(&src.join("d/w"), b"w content\n");
    haul_copy(&["-j", "1"], &src, &dst).expect_clean();

    // New links to existing files, in the same dir and across dirs.
    fixture::hardlink(&src.join("x"), &src.join("y"));
    fixture::hardlink(&src.join("x"), &src.join("d/x3"));
    haul_copy(&["--delete", "-j", "1"], &src, &dst).expect_clean();
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "after adding hardlinks");

    // Break a link (y becomes an independent copy) and re-point x2 at z's inode.
    fs::remove_file(src.join("y")).unwrap();
    fixture::write_file(&src.join("y"), b"x content\n");
    fixture::hardlink(&src.join("z"), &src.join("x2"));
    fs::remove_file(src.join("d/w")).unwrap();
    fixture::hardlink(&src.join("z"), &src.join("d/w"));
    haul_copy(&["--delete", "-j", "1"], &src, &dst).expect_clean();
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "after breaking/re-pointing hardlinks",
    );
}

/// A large file with two more names in the same directory: with several workers the
/// later names are met while the first is still being written.
fn big_hardlink_src(src: &Path, dir: &str) {
    let big = src.join(dir).join("big");
    fixture::write_file(&big, &fixture::random_bytes("big-hardlink", 32 << 20));
    fixture::hardlink(&big, &src.join(dir).join("link"));
    fixture::hardlink(&big, &src.join(dir).join("link2"));
    fixture::write_file(&src.join(dir).join("other"), b"other\n");
    fixture::set_mtime(&src.join(dir), 1_600_000_000, 42);
    fixture::set_mtime(src, 1_600_000_001, 43);
}

#[test]
fn hardlinks_to_a_file_being_copied_keep_dir_mtime_with_parallel_jobs() {
    require_root("hardlinks_to_a_file_being_copied_keep_dir_mtime_with_parallel_jobs");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    big_hardlink_src(&src, "a");
    haul_copy(&["-j", "4"], &src, &dst).expect_clean();
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "hardlinked big file, -j 4",
    );
}

#[test]
fn unprivileged_hardlinks_in_read_only_dir() {
    require_root("unprivileged_hardlinks_in_read_only_dir (to run haul as nobody)");
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    big_hardlink_src(&src, "ro");
    fixture::chown_tree(&src, NOBODY.0, NOBODY.1);
    fixture::chmod(&src.join("ro"), 0o555);
    fixture::set_mtime(&src.join("ro"), 1_600_000_000, 42);
    let r = haul_copy_as(NOBODY.0, NOBODY.1, &["-j", "4"], &src, &dst);
    r.expect_clean();
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "unprivileged, hardlinks in a 0o555 dir",
    );
}

#[test]
fn exclude_patterns_skip_and_protect_from_delete() {
    require_root("exclude_patterns_skip_and_protect_from_delete");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fixture::mkdir(&src);
    for f in [
        "keep.txt",
        "logs.txt",
        "skip.log",
        "sub/skip.log",
        "sub/deeper/x.log",
        "cache/data",
        "sub/cache/data",
        "other/cache",
        "sub/anchored.txt",
        "x/sub/anchored.txt",
        "a/mid.txt",
    ] {
        fixture::write_file(&src.join(f), f.as_bytes());
    }
    // A leading '/' anchors at SRC's root; a '/' in the middle matches at least there.
    let excluded = [
        "skip.log",
        "sub/skip.log",
        "sub/deeper/x.log",
        "cache",
        "sub/cache",
        "sub/anchored.txt",
        "a/mid.txt",
    ];
    let ex_args = [
        "--exclude",
        "*.log",
        "--exclude",
        "cache/",
        "--exclude",
        "/sub/anchored.txt",
        "--exclude",
        "a/mid.txt",
    ];

    let r = haul_copy(&ex_args, &src, &dst);
    r.expect_clean();
    for e in excluded {
        assert!(
            !exists(&dst.join(e)),
            "excluded {e} was copied\n{}",
            r.describe()
        );
    }
    for k in [
        "keep.txt",
        "logs.txt",
        "other/cache",
        "x/sub/anchored.txt",
        "sub/deeper",
    ] {
        assert!(
            exists(&dst.join(k)),
            "{k} is missing (wrongly excluded)\n{}",
            r.describe()
        );
    }
    assert!(fs::symlink_metadata(dst.join("other/cache"))
        .unwrap()
        .is_file());
    assert_trees_equal(
        &without(&walk(&src), &excluded),
        &walk(&dst),
        &all(),
        "copy with --exclude",
    );

    // Entries in DST that match an exclude survive --delete; others are deleted.
    fixture::write_file(&dst.join("skip.log"), b"dst's own log\n");
    fixture::write_file(&dst.join("sub/cache/mine"), b"dst's own cache\n");
    fixture::write_file(&dst.join("stale.txt"), b"not in src\n");
    let mut args: Vec<&str> = ex_args.to_vec();
    args.push("--delete");
    let r = haul_copy(&args, &src, &dst);
    r.expect_clean();
    assert!(
        !exists(&dst.join("stale.txt")),
        "--delete kept stale.txt\n{}",
        r.describe()
    );
    assert_eq!(
        read(&dst.join("skip.log")),
        b"dst's own log\n",
        "excluded DST file was touched"
    );
    assert_eq!(read(&dst.join("sub/cache/mine")), b"dst's own cache\n");
    assert_trees_equal(
        &without(&walk(&src), &excluded),
        &without(&walk(&dst), &excluded),
        &all(),
        "copy with --exclude --delete",
    );
}

/// SRC for the metadata-only tests: the small tree plus `a.txt`, `b.txt`, `c.txt`.
fn metadata_src(src: &Path) {
    fixture::build_small(src);
    for f in ["a.txt", "b.txt", "c.txt"] {
        fixture::write_file(&src.join(f), &fixture::random_bytes(f, 50_000));
        fixture::set_mtime(&src.join(f), 1_650_000_000, 9);
    }
    fixture::set_mtime(src, 1_650_000_000, 10);
}

/// Re-run after metadata-only changes to `changed`: they are fixed in place (same DST
/// inode), reported as such, and nothing else is touched.
fn check_fixed_in_place(src: &Path, dst: &Path, changed: &[&str], inos: &[u64]) {
    let r = haul_copy(&["-v"], src, dst);
    let v = r.expect_clean();
    for (f, ino) in changed.iter().zip(inos) {
        assert_eq!(
            inode(&dst.join(f)),
            *ino,
            "metadata-only change of {f} replaced the DST file (inode changed)\n{}",
            r.describe()
        );
        assert_change(&v, "metadata", f);
    }
    assert_eq!(json_count(&v, "created"), 0, "{}", r.describe());
    assert_eq!(json_count(&v, "updated"), 0, "{}", r.describe());
    assert_eq!(json_count(&v, "deleted"), 0, "{}", r.describe());
    assert_eq!(
        json_count(&v, "metadata_only"),
        changed.len() as u64,
        "{}",
        r.describe()
    );
    let unexpected: Vec<_> = json_changes(&v)
        .into_iter()
        .filter(|(_, p)| !changed.contains(&p.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "changes reported for untouched entries: {unexpected:?}"
    );
    assert_trees_equal(
        &walk(src),
        &walk(dst),
        &all(),
        "after metadata-only changes",
    );
}

#[test]
fn chmod_and_setfattr_are_fixed_in_place() {
    require_root("chmod_and_setfattr_are_fixed_in_place");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    metadata_src(&src);
    haul_copy(&[], &src, &dst).expect_clean();
    let changed = ["a.txt", "c.txt"];
    let inos: Vec<u64> = changed.iter().map(|f| inode(&dst.join(f))).collect();

    fixture::chmod(&src.join("a.txt"), 0o600); // chmod
    fixture::set_xattr(&src.join("c.txt"), "user.added", b"later"); // setfattr
    check_fixed_in_place(&src, &dst, &changed, &inos);
}

#[test]
fn touch_m_is_fixed_in_place() {
    require_root("touch_m_is_fixed_in_place");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    metadata_src(&src);
    haul_copy(&[], &src, &dst).expect_clean();
    let changed = ["b.txt"];
    let inos: Vec<u64> = changed.iter().map(|f| inode(&dst.join(f))).collect();

    // touch -m: new mtime, same size and content.
    fixture::set_mtime(&src.join("b.txt"), 1_700_000_000, 123_456_789);
    check_fixed_in_place(&src, &dst, &changed, &inos);
}

#[test]
fn checksum_catches_same_size_same_mtime_change() {
    require_root("checksum_catches_same_size_same_mtime_change");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fixture::build_small(&src);
    fixture::write_file(&src.join("same.txt"), b"version one\n");
    fixture::set_mtime(&src.join("same.txt"), 1_650_000_000, 777);
    fixture::set_mtime(&src, 1_650_000_000, 778);
    haul_copy(&[], &src, &dst).expect_clean();

    fixture::overwrite_in_place(&src.join("same.txt"), b"VERSION ONE\n");
    fixture::set_mtime(&src.join("same.txt"), 1_650_000_000, 777);

    let r = haul_copy(&[], &src, &dst);
    let v = r.expect_clean();
    assert_eq!(
        read(&dst.join("same.txt")),
        b"version one\n",
        "quick check should miss it"
    );
    assert_eq!(json_count(&v, "updated"), 0, "{}", r.describe());

    let r = haul_copy(&["--checksum"], &src, &dst);
    let v = r.expect_clean();
    assert_eq!(
        read(&dst.join("same.txt")),
        b"VERSION ONE\n",
        "--checksum missed the change"
    );
    assert_eq!(json_count(&v, "updated"), 1, "{}", r.describe());
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "after --checksum");

    // -c is the short form; nothing left to do.
    let r = haul_copy(&["-c"], &src, &dst);
    let v = r.expect_clean();
    assert_eq!(json_count(&v, "updated"), 0, "{}", r.describe());
}

#[test]
fn dry_run_lists_changes_and_touches_nothing() {
    require_root("dry_run_lists_changes_and_touches_nothing");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    incremental_src(&src);
    haul_copy(&[], &src, &dst).expect_clean();

    fixture::write_file(&src.join("mod.txt"), b"original content, now longer\n");
    fixture::chmod(&src.join("chmod.txt"), 0o600);
    fixture::write_file(&src.join("new.txt"), b"new\n");
    fs::remove_file(src.join("gone.txt")).unwrap();

    let before = walk(&dst);
    let before_ct = ctimes(&dst);
    for flag in ["-n", "--dry-run"] {
        let r = haul_copy(&[flag, "--delete"], &src, &dst);
        let v = r.expect_clean();
        assert_eq!(
            v["dry_run"],
            serde_json::Value::Bool(true),
            "{}",
            r.describe()
        );
        assert_change(&v, "create", "new.txt");
        assert_change(&v, "update", "mod.txt");
        assert_change(&v, "metadata", "chmod.txt");
        assert_change(&v, "delete", "gone.txt");
        assert!(!has_change(&v, "update", "keep.txt") && !has_change(&v, "metadata", "keep.txt"));
        assert_trees_equal(&before, &walk(&dst), &all(), &format!("DST after {flag}"));
        assert_eq!(before_ct, ctimes(&dst), "{flag} changed a ctime in DST");
    }

    // A dry run into a missing DST creates nothing.
    let never = t.path().join("never/dst");
    let r = haul_copy(&["-n"], &src, &never);
    let v = r.expect_clean();
    assert_change(&v, "create", "top.txt");
    assert!(
        !exists(&t.path().join("never")),
        "dry run created DST's parent"
    );
}

// ---------------------------------------------------------------------------------------
// Ownership and attribute options
// ---------------------------------------------------------------------------------------

/// A tree with a mix of owners, named (0, 65534, gid 20) and unnamed (1234, 4242, 5678).
fn owned_fixture(src: &Path) {
    fixture::write_file(&src.join("root_file"), b"root\n");
    fixture::write_file(&src.join("u1234"), b"1234\n");
    fixture::write_file(&src.join("d4242/f"), b"4242\n");
    fixture::write_file(&src.join("nobody_file"), b"nobody\n");
    fixture::symlink("u1234", &src.join("link_1234"));
    fixture::mkfifo(&src.join("fifo_1234"), 0o644);
    fixture::lchown(&src.join("u1234"), 1234, 5678);
    fixture::lchown(&src.join("d4242"), 4242, 20);
    fixture::lchown(&src.join("d4242/f"), 4242, 20);
    fixture::lchown(&src.join("nobody_file"), 65534, 65534);
    fixture::lchown(&src.join("link_1234"), 1234, 5678);
    fixture::lchown(&src.join("fifo_1234"), 1234, 5678);
}

#[test]
fn id_maps_as_root() {
    require_root("id_maps_as_root");
    let t = tmp();
    let src = t.path().join("src");
    owned_fixture(&src);
    let s = walk(&src);
    type Map = fn(u32, u32) -> (u32, u32);
    let cases: Vec<(&[&str], Map)> = vec![
        (&["--usermap", "1234:4321"], |u, g| {
            (if u == 1234 { 4321 } else { u }, g)
        }),
        (&["--groupmap", "*:99"], |u, _| (u, 99)),
        (&["--chown", "10:20"], |_, _| (10, 20)),
        (&["--chown", "nobody:nogroup"], |_, _| (65534, 65534)),
        (&["--usermap", "root:1234"], |u, g| {
            (if u == 0 { 1234 } else { u }, g)
        }),
        (&["--map-by-name"], |u, g| (u, g)),
        (
            &[
                "--usermap",
                "1234:4321,4242:42",
                "--groupmap",
                "5678:nogroup",
            ],
            |u, g| {
                let u = match u {
                    1234 => 4321,
                    4242 => 42,
                    x => x,
                };
                (u, if g == 5678 { 65534 } else { g })
            },
        ),
    ];
    for (i, (args, map)) in cases.iter().enumerate() {
        let dst = t.path().join(format!("dst{i}"));
        let r = haul_copy(args, &src, &dst);
        r.expect_clean();
        let d = walk(&dst);
        let no_owner = CompareOpts {
            owner: false,
            ..all()
        };
        assert_trees_equal(&s, &d, &no_owner, &format!("copy with {args:?}"));
        let mut wrong = Vec::new();
        for (p, e) in &s {
            let want = map(e.uid, e.gid);
            let got = (d[p].uid, d[p].gid);
            if got != want {
                wrong.push(format!(
                    "{p:?}: src {}:{} -> want {want:?} got {got:?}",
                    e.uid, e.gid
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "owners after {args:?}:\n  {}\n{}",
            wrong.join("\n  "),
            r.describe()
        );
    }
}

#[test]
fn no_owner_keeps_everything_but_owners() {
    require_root("no_owner_keeps_everything_but_owners");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    full_fixture(&src);
    // The one setuid file with a foreign owner would be root's here: its
    // setuid and setgid bits are cleared, and that is reported.
    let r = haul_copy(&["--no-owner"], &src, &dst);
    r.expect_code(4);
    assert_eq!(json_paths(&r.json(), "partial"), ["owners/suid1234"]);
    let mut d = walk(&dst);
    let suid = Path::new("owners/suid1234");
    assert_eq!(d[suid].mode, 0o755 & walk(&src)[suid].mode);
    d.get_mut(suid).unwrap().mode = walk(&src)[suid].mode;
    let no_owner = CompareOpts {
        owner: false,
        ..all()
    };
    assert_trees_equal(&walk(&src), &d, &no_owner, "--no-owner");
    let foreign: Vec<_> = d
        .iter()
        .filter(|(_, e)| e.uid != 0)
        .map(|(p, e)| (p, e.uid))
        .collect();
    assert!(
        foreign.is_empty(),
        "--no-owner as root left non-root owners: {foreign:?}"
    );
}

#[test]
fn no_xattrs_drops_xattrs() {
    require_root("no_xattrs_drops_xattrs");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    full_fixture(&src);
    haul_copy(&["--no-xattrs"], &src, &dst).expect_clean();
    let d = walk(&dst);
    let opts = CompareOpts {
        xattrs: false,
        acls: false,
        ..all()
    };
    assert_trees_equal(&walk(&src), &d, &opts, "--no-xattrs");
    let mut found = Vec::new();
    for (p, e) in &d {
        for k in e.xattrs.keys() {
            let k = k.as_bytes();
            if k.starts_with(b"user.") || k.starts_with(b"trusted.") {
                found.push(format!("{p:?}: {}", String::from_utf8_lossy(k)));
            }
        }
    }
    assert!(found.is_empty(), "--no-xattrs still copied: {found:?}");
}

#[test]
fn no_acls_drops_acls_keeps_xattrs() {
    require_root("no_acls_drops_acls_keeps_xattrs");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    full_fixture(&src);
    haul_copy(&["--no-acls"], &src, &dst).expect_clean();
    let d = walk(&dst);
    let opts = CompareOpts {
        acls: false,
        ..all()
    };
    assert_trees_equal(
        &walk(&src),
        &d,
        &opts,
        "--no-acls (other xattrs must be kept)",
    );
    let acls: Vec<_> = d
        .iter()
        .flat_map(|(p, e)| {
            e.xattrs
                .keys()
                .filter(|k| is_acl_xattr(k))
                .map(move |k| (p, k))
        })
        .collect();
    assert!(acls.is_empty(), "--no-acls still copied ACLs: {acls:?}");
    assert!(d[Path::new(paths::USER_XATTR_FILE)]
        .xattrs
        .contains_key(std::ffi::OsStr::new("user.comment")));
}

// ---------------------------------------------------------------------------------------
// Crash safety and destination hazards
// ---------------------------------------------------------------------------------------

/// Every regular file in DST under a name SRC also has holds SRC's full content.
fn assert_no_incomplete_final_files(s: &Tree, dst: &Path, when: &str) {
    if !exists(dst) {
        return;
    }
    let d = walk(dst);
    for (p, e) in &d {
        if e.kind != Kind::File {
            continue;
        }
        if let Some(se) = s.get(p) {
            assert_eq!(
                (e.size, &e.hash),
                (se.size, &se.hash),
                "{when}: {p:?} is present under its final name but its content is incomplete"
            );
        }
    }
    eprintln!(
        "{when}: DST holds {} entries, leftovers {:?}",
        d.len(),
        tmp_leftovers(dst)
    );
}

#[test]
fn kill_9_mid_copy_leaves_no_truncated_files_and_rerun_completes() {
    require_root("kill_9_mid_copy_leaves_no_truncated_files_and_rerun_completes");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    for i in 0..4 {
        fixture::write_file(
            &src.join(format!("big_{i}.bin")),
            &fixture::random_bytes(&format!("kill{i}"), 64 << 20),
        );
    }
    fixture::write_file(&src.join("small/a.txt"), b"a\n");
    fixture::write_file(&src.join("small/b.txt"), b"b\n");
    let s = walk(&src);

    // Kill it several times, later and later: first while the first big file is being
    // written, then with (hopefully) some files complete and another one in flight.
    for (round, threshold) in [1u64 << 20, 70 << 20, 150 << 20].into_iter().enumerate() {
        let mut child = spawn_haul(
            [
                OsString::from("copy"),
                "-j".into(),
                "1".into(),
                "--no-progress".into(),
                src.clone().into(),
                dst.clone().into(),
            ],
            None,
        );
        let start = Instant::now();
        let mut finished_early = None;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                finished_early = Some(st);
                break;
            }
            if haul_tests::tree_bytes(&dst) >= threshold {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "haul made no progress in 60 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        match finished_early {
            None => {
                kill9(child.id());
                let st = child.wait().unwrap();
                eprintln!(
                    "round {round}: killed haul after {:?}: {st:?}",
                    start.elapsed()
                );
            }
            Some(st) => eprintln!("round {round}: haul finished ({st:?}) before it was killed"),
        }
        // Nothing under its final name may be truncated or partially written.
        assert_no_incomplete_final_files(&s, &dst, &format!("after kill round {round}"));
    }

    haul_copy(&["-j", "1"], &src, &dst).expect_clean();
    assert_trees_equal(&s, &walk(&dst), &all(), "re-run after kill -9");
    assert_no_tmp_leftovers(&dst);
}

#[test]
fn symlink_in_destination_is_replaced_not_followed() {
    require_root("symlink_in_destination_is_replaced_not_followed");
    let t = tmp();
    let victim = t.path().join("victim");
    fixture::write_file(&victim.join("orig.txt"), b"victim content\n");
    fixture::write_file(&victim.join("target_file"), b"victim target file\n");
    fixture::set_mtime(&victim, 1_000_000_000, 0);

    let src = t.path().join("src");
    fixture::write_file(&src.join("d/f.txt"), b"through the link?\n");
    fixture::write_file(&src.join("d/sub/g.txt"), b"deeper\n");
    fixture::write_file(&src.join("f2"), b"src regular file\n");
    fixture::write_file(&src.join("nested/a/x.txt"), b"nested\n");
    fixture::write_file(&src.join("e/inner.txt"), b"dir where dst has a file\n");

    let dst = t.path().join("dst");
    fixture::mkdir(&dst.join("nested"));
    fixture::symlink(&victim, &dst.join("d"));
    fixture::symlink(victim.join("target_file"), &dst.join("f2"));
    fixture::symlink(&victim, &dst.join("nested/a"));
    fixture::write_file(&dst.join("e"), b"regular file where src has a dir\n");

    let victim_state = Untouched::record(&victim);
    let r = haul_copy(&[], &src, &dst);
    r.expect_clean();

    for p in ["d", "nested/a", "e"] {
        let md = fs::symlink_metadata(dst.join(p)).unwrap();
        assert!(
            md.is_dir(),
            "DST/{p} is not a real directory after the copy: {md:?}"
        );
    }
    assert!(
        fs::symlink_metadata(dst.join("f2")).unwrap().is_file(),
        "DST/f2 is not a regular file"
    );
    assert_eq!(read(&dst.join("f2")), b"src regular file\n");
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "copy over symlinks in DST",
    );
    victim_state.assert_unchanged("victim/ (outside DST)");
    assert_eq!(read(&victim.join("target_file")), b"victim target file\n");
}

#[test]
fn verify_on_clean_copy_exits_0() {
    require_root("verify_on_clean_copy_exits_0");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    full_fixture(&src);
    for round in ["first copy", "re-run"] {
        let r = haul_copy(&["--verify"], &src, &dst);
        let v = r.expect_clean();
        assert_eq!(
            json_paths(&v, "verify_mismatches"),
            Vec::<String>::new(),
            "--verify ({round}):\n{}",
            r.describe()
        );
    }
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "--verify copy");
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[test]
fn missing_source_is_fatal_and_named() {
    let t = tmp();
    let src = t.path().join("no-such-source-dir");
    let dst = t.path().join("dst");
    let r = run_haul([
        OsString::from("copy"),
        "--no-progress".into(),
        src.clone().into(),
        dst.into(),
    ]);
    r.expect_code(1);
    assert!(
        r.stderr.contains(&*src.to_string_lossy()),
        "stderr does not name the missing source {}:\n{}",
        src.display(),
        r.describe()
    );
}

#[test]
fn usage_errors_exit_2() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"f\n");
    let dst = t.path().join("dst");
    let r = run_haul([
        OsString::from("copy"),
        "--no-such-option".into(),
        src.clone().into(),
        dst.clone().into(),
    ]);
    r.expect_code(2);
    run_haul([OsString::from("copy"), src.clone().into()]).expect_code(2);
    run_haul([
        OsString::from("copy"),
        "-j".into(),
        "lots".into(),
        src.into(),
        dst.clone().into(),
    ])
    .expect_code(2);
    assert!(!exists(&dst), "a usage error still created DST");
}

#[test]
fn unreadable_source_entries_fail_with_exit_3() {
    require_root("unreadable_source_entries_fail_with_exit_3 (to run haul as nobody)");
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fixture::write_file(&src.join("ok.txt"), b"readable\n");
    fixture::write_file(
        &src.join("sub/ok2.txt"),
        &fixture::random_bytes("ok2", 100_000),
    );
    fixture::write_file(&src.join("sub/secret"), b"unreadable\n");
    fixture::write_file(&src.join("locked/inside.txt"), b"in an unreadable dir\n");
    fixture::write_file(&src.join("z_last.txt"), b"after the failures\n");
    fixture::chown_tree(&src, NOBODY.0, NOBODY.1);
    fixture::chmod(&src.join("sub/secret"), 0o000);
    fixture::chmod(&src.join("locked"), 0o000);

    let r = haul_copy_as(NOBODY.0, NOBODY.1, &[], &src, &dst);
    r.expect_code(3);
    let v = r.json();
    assert_eq!(v["ok"], serde_json::Value::Bool(false), "{}", r.describe());
    for e in v["failed"].as_array().unwrap() {
        assert!(
            e.get("error").is_some_and(|x| x.is_string()),
            "JSON failed entries must be {{\"path\", \"error\"}}: {e}"
        );
    }
    let failed = json_paths(&v, "failed");
    assert!(
        failed.iter().any(|p| p == "sub/secret"),
        "failed does not name sub/secret: {failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|p| p == "locked" || p.starts_with("locked/")),
        "failed does not name locked/: {failed:?}"
    );
    assert!(
        !failed.iter().any(|p| p.contains("ok")),
        "readable files reported failed: {failed:?}"
    );
    for f in ["ok.txt", "sub/ok2.txt", "z_last.txt"] {
        assert_eq!(read(&dst.join(f)), read(&src.join(f)), "{f} not copied");
    }
    let s = without(&walk(&src), &["sub/secret", "locked"]);
    let d = without(&walk(&dst), &["sub/secret", "locked"]);
    let diffs = compare(&s, &d, &all());
    assert!(
        diffs.is_empty(),
        "other entries not faithfully copied:\n  {}",
        diffs.join("\n  ")
    );
    assert_no_tmp_leftovers(&dst);
}

/// A new empty file is created under its final name (it has no content to
/// tear). If a kill leaves it there with unfinished metadata (mode 0600, the
/// creation time, no xattrs), the next run completes it in place.
#[test]
fn empty_file_with_unfinished_metadata_is_completed_in_place() {
    require_root("empty_file_with_unfinished_metadata_is_completed_in_place");
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fixture::write_file(&src.join("empty"), b"");
    fixture::chmod(&src.join("empty"), 0o4755);
    fixture::lchown(&src.join("empty"), 1234, 5678);
    fixture::set_xattr(&src.join("empty"), "user.tag", b"kept");
    fixture::set_mtime(&src.join("empty"), 1_600_000_000, 5);
    fixture::set_mtime(&src, 1_600_000_000, 6);
    // What a kill between create and metadata leaves behind.
    fixture::write_file(&dst.join("empty"), b"");
    fixture::chmod(&dst.join("empty"), 0o600);
    let ino = inode(&dst.join("empty"));

    let r = haul_copy(&[], &src, &dst);
    r.expect_clean();
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "after completing an empty file",
    );
    assert_eq!(
        inode(&dst.join("empty")),
        ino,
        "the empty file was replaced, not completed"
    );

    // And a fresh copy of empty files is exact too (they take the direct path).
    let dst2 = t.path().join("dst2");
    haul_copy(&["-j", "4"], &src, &dst2).expect_clean();
    assert_trees_equal(
        &walk(&src),
        &walk(&dst2),
        &all(),
        "fresh copy of an empty file",
    );
    assert!(tmp_leftovers(&dst2).is_empty());
}

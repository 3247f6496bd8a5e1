//! End-to-end tests of snapshot repositories (`haul repo init`, `haul snapshot ...`): run
//! the real binary, compare what comes back with the independent walker from `haul_tests`,
//! and look at the repository's files directly (pack trailers, indexes, records, locks).
//!
//! Run as root (CI does): the full fixture needs root, and some tests run haul as nobody.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use haul_tests::fixture::{self, paths, FixtureOpts};
use haul_tests::repo::{
    dead_pid, expected_keep, file_name, hostname, index_records, is_id, jarr, jstr, jstrs, ju64,
    os, pack_blobs, parse_rfc3339, rfc3339, stdout_json, write_lock, Calendar, Policy, Repo,
};
use haul_tests::util::{
    all, ci_contains, flip_byte, kill9, short, tmp, tmp_for_nobody, MIB, NOBODY,
};
use haul_tests::{
    assert_trees_equal, exists, json_paths, read, require_root, spawn_haul, walk, CompareOpts,
    Kind, Tree, Untouched, ROOT,
};

mod damage;
mod edges;
mod restore_modes;

/// Restore that must be clean (exit 0, ok, nothing failed or partial).
fn restore_clean(repo: &Repo, id: &str, dst: &Path, extra: &[&str]) -> serde_json::Value {
    repo.restore(id, dst, extra).expect_clean()
}

/// The walker's tree below `rel` of `tree`, re-rooted there (`rel` becomes `"."`).
fn subtree(tree: &Tree, rel: &str) -> Tree {
    let base = Path::new(rel);
    tree.iter()
        .filter_map(|(p, r)| {
            if p == base {
                Some((PathBuf::from(ROOT), r.clone()))
            } else {
                p.strip_prefix(base)
                    .ok()
                    .map(|q| (q.to_path_buf(), r.clone()))
            }
        })
        .filter(|(p, _)| !p.as_os_str().is_empty())
        .collect()
}

/// The relative paths (as strings) of a walked tree, without the root.
fn rel_paths(tree: &Tree) -> BTreeSet<String> {
    tree.keys()
        .filter(|p| p.as_os_str() != ROOT)
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// Seconds and nanoseconds from a JSON time: RFC 3339 text, or a number of seconds.
fn json_time(v: &serde_json::Value) -> (i64, i64) {
    match v {
        serde_json::Value::String(s) => parse_rfc3339(s),
        serde_json::Value::Number(n) if n.is_i64() => (n.as_i64().unwrap(), 0),
        serde_json::Value::Number(n) => {
            let f = n.as_f64().unwrap();
            let s = f.floor();
            (s as i64, ((f - s) * 1e9).round() as i64)
        }
        other => panic!("not a time: {other}"),
    }
}

/// Random file content of `len` bytes under `root/rel`.
fn random_file(root: &Path, rel: &str, seed: &str, len: usize) {
    fixture::write_file(&root.join(rel), &fixture::random_bytes(seed, len));
}

/// The one complete pack file holding blob `id` (hex), with the blob's trailer entry.
fn find_blob(repo: &Repo, id: &str) -> (PathBuf, haul_tests::repo::PackBlob) {
    let mut found = Vec::new();
    for p in repo.packs() {
        for b in pack_blobs(&read(&p)) {
            if b.id == id {
                found.push((p.clone(), b));
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "blob {id} should be stored exactly once in the packs of {}: {found:?}",
        repo.root.display()
    );
    found.pop().unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Round trips
// ---------------------------------------------------------------------------------------

#[test]
fn round_trip_full_fixture_as_root() {
    require_root("round_trip_full_fixture_as_root");
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_full_as_root(&src);
    let repo = Repo::new(t.path().join("repo"));
    let r = repo.create_raw(&[&src], &[]);
    r.expect_code(0);
    assert!(
        ci_contains(&r.stderr, "creat") || ci_contains(&r.stderr, "init"),
        "create on a missing repository must say on stderr that it created it:\n{}",
        r.describe()
    );
    assert!(
        repo.root.join("config").is_file(),
        "no config in the new repository"
    );
    let v = stdout_json(&r);
    let id = jstr(&v, "id").to_string();
    assert!(is_id(&id), "{}", r.describe());
    assert!(jarr(&v["failed"]).is_empty(), "{}", r.describe());
    assert!(v["parent"].is_null(), "first snapshot has a parent: {v}");

    let dst = t.path().join("dst");
    restore_clean(&repo, &id, &dst, &[]);
    let s = walk(&src);
    let d = walk(&dst);
    assert_trees_equal(
        &s,
        &d,
        &all(),
        "snapshot round trip of the full fixture as root",
    );
    let sparse = &d[Path::new(paths::SPARSE)];
    assert!(
        sparse.allocated < MIB,
        "1 GiB sparse file with 12 KiB of data allocates {} bytes after restore",
        sparse.allocated
    );
    let cap = &d[Path::new(paths::CAP_FILE)];
    assert!(cap
        .xattrs
        .contains_key(std::ffi::OsStr::new("security.capability")));

    // The repository holds nothing like the sparse file's apparent size.
    assert!(
        repo.total_bytes() < 64 * MIB,
        "repository is {} bytes for a tree of ~5 MiB of data",
        repo.total_bytes()
    );
    repo.check(true, &[]).expect_code(0);

    // A second snapshot taken through the parent (nothing read) is just as complete.
    let v2 = repo.create(&[&src], &[]);
    assert_eq!(v2["parent"].as_str(), Some(id.as_str()), "{v2}");
    assert_eq!(
        ju64(&v2, "bytes_read"),
        0,
        "unchanged fixture was read again: {v2}"
    );
    let dst2 = t.path().join("dst2");
    restore_clean(&repo, jstr(&v2, "id"), &dst2, &["-j", "1"]);
    assert_trees_equal(&s, &walk(&dst2), &all(), "second (parent-based) snapshot");
}

#[test]
fn restore_without_owner_xattrs_or_acls() {
    require_root("restore_without_owner_xattrs_or_acls");
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_full_as_root(&src);
    let s = walk(&src);
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);

    let dst = t.path().join("no_owner");
    // The one setuid file with a foreign owner would be root's: its setuid
    // and setgid bits are cleared, and that is reported.
    let r = repo.restore(&id, &dst, &["--no-owner"]);
    r.expect_code(4);
    assert_eq!(json_paths(&r.json(), "partial"), ["owners/suid1234"]);
    let mut d = walk(&dst);
    let suid = Path::new("owners/suid1234");
    assert_eq!(d[suid].mode, 0o755 & s[suid].mode);
    d.get_mut(suid).unwrap().mode = s[suid].mode;
    let opts = CompareOpts {
        owner: false,
        ..all()
    };
    assert_trees_equal(&s, &d, &opts, "restore --no-owner");
    let foreign: Vec<_> = d
        .iter()
        .filter(|(_, e)| e.uid != 0)
        .map(|(p, e)| (p, e.uid))
        .collect();
    assert!(
        foreign.is_empty(),
        "--no-owner as root left non-root owners: {foreign:?}"
    );

    let dst = t.path().join("no_xattrs");
    restore_clean(&repo, &id, &dst, &["--no-xattrs"]);
    let d = walk(&dst);
    let opts = CompareOpts {
        xattrs: false,
        acls: false,
        ..all()
    };
    assert_trees_equal(&s, &d, &opts, "restore --no-xattrs");
    let found: Vec<String> = d
        .iter()
        .flat_map(|(p, e)| {
            e.xattrs
                .keys()
                .filter(|k| {
                    let k = k.to_string_lossy();
                    k.starts_with("user.") || k.starts_with("trusted.")
                })
                .map(move |k| format!("{p:?}: {k:?}"))
        })
        .collect();
    assert!(found.is_empty(), "--no-xattrs still restored: {found:?}");

    let dst = t.path().join("no_acls");
    restore_clean(&repo, &id, &dst, &["--no-acls"]);
    let d = walk(&dst);
    let opts = CompareOpts {
        acls: false,
        ..all()
    };
    assert_trees_equal(&s, &d, &opts, "restore --no-acls (other xattrs kept)");
    let acls: Vec<_> = d
        .iter()
        .flat_map(|(p, e)| {
            e.xattrs
                .keys()
                .filter(|k| haul_tests::is_acl_xattr(k))
                .map(move |k| (p, k))
        })
        .collect();
    assert!(acls.is_empty(), "--no-acls still restored ACLs: {acls:?}");
}

#[test]
fn round_trip_unprivileged_own_tree() {
    require_root("round_trip_unprivileged_own_tree (to run haul as nobody)");
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    fixture::build_full(
        &src,
        &FixtureOpts {
            privileged: false,
            owner: Some(NOBODY),
        },
    );
    let repo = Repo::new_as(t.path().join("repo"), NOBODY.0, NOBODY.1);
    repo.init().expect_code(0);
    let v = repo.create(&[&src], &[]);
    let id = jstr(&v, "id").to_string();
    let dst = t.path().join("dst");
    restore_clean(&repo, &id, &dst, &[]);
    let d = walk(&dst);
    assert_trees_equal(&walk(&src), &d, &all(), "unprivileged snapshot round trip");
    assert!(d.values().all(|e| (e.uid, e.gid) == NOBODY));
    assert!(d[Path::new(paths::ACL_DEFDIR)]
        .xattrs
        .contains_key(std::ffi::OsStr::new("system.posix_acl_default")));
    let show = repo.show(&id);
    assert_eq!(jstr(&show, "username"), "nobody", "{show}");
    repo.check(true, &[]).expect_code(0);
}

// ---------------------------------------------------------------------------------------
// 2. Multi-path snapshots, --path, restoring over symlinks
// ---------------------------------------------------------------------------------------

fn second_tree(root: &Path) {
    fixture::write_file(&root.join("x/y.txt"), b"two/x/y\n");
    random_file(root, "x/z.bin", "two-z", 70_000);
    fixture::write_file(&root.join("w.txt"), b"two/w\n");
    fixture::set_mtime(&root.join("x"), 1_600_000_100, 100);
    fixture::chmod(root, 0o750);
    fixture::set_mtime(root, 1_600_000_101, 101);
}

#[test]
fn multi_path_snapshot_restores_each_under_its_basename() {
    require_root("multi_path_snapshot_restores_each_under_its_basename");
    let t = tmp();
    let one = t.path().join("one");
    let two = t.path().join("two");
    fixture::build_small(&one);
    second_tree(&two);
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let id = repo.create_id(&[&one, &two], &[]);
    let show = repo.show(&id);
    assert_eq!(
        jstrs(&show, "paths"),
        vec![one.to_string_lossy(), two.to_string_lossy()],
        "{show}"
    );

    let dst = t.path().join("dst");
    restore_clean(&repo, &id, &dst, &[]);
    let d = walk(&dst);
    let top: BTreeSet<String> = rel_paths(&d)
        .into_iter()
        .filter(|p| !p.contains('/'))
        .collect();
    assert_eq!(
        top,
        BTreeSet::from(["one".to_string(), "two".to_string()]),
        "DST top level"
    );
    assert_trees_equal(&walk(&one), &walk(&dst.join("one")), &all(), "DST/one");
    assert_trees_equal(&walk(&two), &walk(&dst.join("two")), &all(), "DST/two");

    // --path in a multi-path snapshot: relative to the snapshot root (DST/<basename>/...).
    let dst2 = t.path().join("dst2");
    restore_clean(&repo, &id, &dst2, &["--path", "two/x"]);
    assert_eq!(
        rel_paths(&walk(&dst2)),
        BTreeSet::from([
            "two".to_string(),
            "two/x".to_string(),
            "two/x/y.txt".to_string(),
            "two/x/z.bin".to_string()
        ]),
        "--path two/x"
    );
    assert_trees_equal(
        &walk(&two.join("x")),
        &walk(&dst2.join("two/x")),
        &all(),
        "--path two/x",
    );
}

#[test]
fn path_option_restores_only_the_subtrees() {
    require_root("path_option_restores_only_the_subtrees");
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);
    let s = walk(&src);

    let dst = t.path().join("dst");
    restore_clean(&repo, &id, &dst, &["--path", "dir/sub"]);
    let d = walk(&dst);
    assert_eq!(
        rel_paths(&d),
        BTreeSet::from([
            "dir".to_string(),
            "dir/sub".to_string(),
            "dir/sub/deep.bin".to_string()
        ]),
        "--path dir/sub restores exactly that subtree at its relative position"
    );
    assert_trees_equal(
        &subtree(&s, "dir/sub"),
        &subtree(&d, "dir/sub"),
        &all(),
        "--path dir/sub",
    );

    // Several --path, one of them a file.
    let dst2 = t.path().join("dst2");
    restore_clean(
        &repo,
        &id,
        &dst2,
        &[
            "--path",
            "top.txt",
            "--path",
            "dir/sub",
            "--path",
            "empty_dir",
        ],
    );
    let d2 = walk(&dst2);
    assert_eq!(
        rel_paths(&d2),
        BTreeSet::from([
            "top.txt".to_string(),
            "empty_dir".to_string(),
            "dir".to_string(),
            "dir/sub".to_string(),
            "dir/sub/deep.bin".to_string()
        ]),
        "several --path"
    );
    for p in ["top.txt", "empty_dir", "dir/sub/deep.bin", "dir/sub"] {
        let (a, b) = (&s[Path::new(p)], &d2[Path::new(p)]);
        assert_eq!(
            (a.kind, a.mode, a.uid, a.gid, a.mtime, &a.hash, &a.xattrs),
            (b.kind, b.mode, b.uid, b.gid, b.mtime, &b.hash, &b.xattrs),
            "{p} after --path restore"
        );
    }

    // A --path the snapshot does not have is an error, not a silent no-op.
    let r = repo.restore(&id, &t.path().join("dst3"), &["--path", "no/such/thing"]);
    assert_ne!(
        r.code,
        0,
        "restore --path of a missing path:\n{}",
        r.describe()
    );
}

#[test]
fn restore_replaces_symlinks_in_dst_and_never_follows_them() {
    require_root("restore_replaces_symlinks_in_dst_and_never_follows_them");
    let t = tmp();
    let victim = t.path().join("victim");
    fixture::write_file(&victim.join("orig.txt"), b"victim content\n");
    fixture::write_file(&victim.join("inner.txt"), b"victim inner\n");
    fixture::write_file(&victim.join("top.txt"), b"victim top\n");
    fixture::set_mtime(&victim, 1_000_000_000, 0);

    let src = t.path().join("src");
    fixture::build_small(&src);
    fixture::write_file(&src.join("nested/a/x.txt"), b"nested\n");
    fixture::set_mtime(&src, 1_650_000_007, 5);
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);

    // DST exists: symlinks where the snapshot has directories and a file, a stale file.
    let dst = t.path().join("dst");
    fixture::mkdir(&dst.join("nested"));
    fixture::symlink(&victim, &dst.join("dir"));
    fixture::symlink(&victim, &dst.join("nested/a"));
    fixture::symlink(victim.join("top.txt"), &dst.join("top.txt"));
    fixture::write_file(
        &dst.join("empty_dir"),
        b"a file where the snapshot has a dir\n",
    );

    let victim_state = Untouched::record(&victim);
    restore_clean(&repo, &id, &dst, &[]);
    for p in ["dir", "nested/a", "empty_dir"] {
        let md = fs::symlink_metadata(dst.join(p)).unwrap();
        assert!(md.is_dir(), "DST/{p} is not a real directory: {md:?}");
    }
    assert!(fs::symlink_metadata(dst.join("top.txt")).unwrap().is_file());
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "restore over symlinks");
    victim_state.assert_unchanged("victim/ (outside DST)");
    assert_eq!(read(&victim.join("top.txt")), b"victim top\n");
}

#[test]
fn restore_over_an_older_restore_updates_everything() {
    require_root("restore_over_an_older_restore_updates_everything");
    let t = tmp();
    let src = t.path().join("src");
    listing_tree(&src);
    fixture::write_file(&src.join("becomes_dir"), b"a file first\n");
    fixture::mkdir(&src.join("becomes_file"));
    fixture::write_file(&src.join("becomes_file/child"), b"child\n");
    fixture::symlink("top.txt", &src.join("retarget"));
    let repo = Repo::new(t.path().join("repo"));
    let id1 = repo.create_id(&[&src], &[]);

    fixture::overwrite_in_place(&src.join("dir/inner.txt"), b"inner, second version\n");
    fixture::chmod(&src.join("chmod_me.txt"), 0o604);
    fixture::set_xattr(&src.join("top.txt"), "user.v", b"2");
    fs::remove_file(src.join("gone.txt")).unwrap();
    fixture::write_file(&src.join("dir/added.txt"), b"added\n");
    fs::remove_file(src.join("becomes_dir")).unwrap();
    fixture::write_file(&src.join("becomes_dir/inside"), b"now a dir\n");
    fs::remove_dir_all(src.join("becomes_file")).unwrap();
    fixture::write_file(&src.join("becomes_file"), b"now a file\n");
    fs::remove_file(src.join("retarget")).unwrap();
    fixture::symlink("chmod_me.txt", &src.join("retarget"));
    fixture::set_mtime(&src.join("dir"), 1_650_000_005, 3);
    let id2 = repo.create_id(&[&src], &[]);

    let dst = t.path().join("dst");
    restore_clean(&repo, &id1, &dst, &[]);
    // DST/top.txt becomes a hard link to a file outside DST.
    let victim_dir = t.path().join("victim");
    let victim = victim_dir.join("v.txt");
    fixture::write_file(&victim, b"victim, must not change\n");
    fs::remove_file(dst.join("top.txt")).unwrap();
    fixture::hardlink(&victim, &dst.join("top.txt"));
    let victim_before = walk(&victim_dir);

    // A directory that became a file is only replaced with --delete
    // (tests/tests/e2e/copy/safety.rs has the refusal without it), which also
    // removes what the snapshot does not have.
    restore_clean(&repo, &id2, &dst, &["--delete"]);
    let s = walk(&src);
    let d = walk(&dst);
    let diffs: Vec<String> = haul_tests::compare(&s, &d, &all());
    assert!(
        diffs.is_empty(),
        "restore of snapshot 2 over a restore of snapshot 1:\n  {}",
        diffs.join("\n  ")
    );
    assert_eq!(read(&victim), b"victim, must not change\n");
    // (Its ctime changes: replacing DST/top.txt drops one of its links.)
    assert_trees_equal(
        &victim_before,
        &walk(&victim_dir),
        &all(),
        "the hard-linked victim",
    );
}

// ---------------------------------------------------------------------------------------
// 3. Deduplication
// ---------------------------------------------------------------------------------------

#[test]
fn unchanged_resnapshot_reads_nothing_and_stores_almost_nothing() {
    require_root("unchanged_resnapshot_reads_nothing_and_stores_almost_nothing");
    let t = tmp();
    let src = t.path().join("src");
    let mut total = 0u64;
    for i in 0..300usize {
        let len = 1000 + (i * 7919) % 20_000;
        random_file(
            &src,
            &format!("d{}/f{i}.bin", i % 10),
            &format!("dd{i}"),
            len,
        );
        total += len as u64;
    }
    for i in 0..4usize {
        random_file(
            &src,
            &format!("big/b{i}.bin"),
            &format!("ddbig{i}"),
            MIB as usize,
        );
        total += MIB;
    }
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let v1 = repo.create(&[&src], &[]);
    assert_eq!(ju64(&v1, "bytes"), total, "first snapshot bytes: {v1}");
    assert!(
        ju64(&v1, "bytes_read") >= total,
        "first snapshot must read all data: {v1}"
    );
    assert!(
        ju64(&v1, "bytes_new") >= total,
        "first snapshot adds all data: {v1}"
    );
    assert_eq!(ju64(&v1, "files"), 304, "{v1}");
    let size1 = repo.total_bytes();
    assert!(
        size1 >= total && size1 < total + total / 10 + MIB,
        "repository of {size1} bytes for {total} bytes of random data"
    );

    let v2 = repo.create(&[&src], &[]);
    let size2 = repo.total_bytes();
    assert_eq!(
        v2["parent"], v1["id"],
        "re-snapshot must use the first as parent"
    );
    assert_eq!(
        ju64(&v2, "bytes_read"),
        0,
        "unchanged files were read: {v2}"
    );
    assert!(ju64(&v2, "bytes_new") < 64 * 1024, "{v2}");
    assert_eq!(ju64(&v2, "bytes"), total, "{v2}");
    assert!(
        size2 - size1 < MIB,
        "re-snapshot of an unchanged tree grew the repository by {} bytes",
        size2 - size1
    );
    repo.check(true, &[]).expect_code(0);
    // Both snapshots restore the same tree.
    let s = walk(&src);
    for (n, v) in [(1, &v1), (2, &v2)] {
        let dst = t.path().join(format!("dst{n}"));
        restore_clean(&repo, jstr(v, "id"), &dst, &[]);
        assert_trees_equal(&s, &walk(&dst), &all(), &format!("snapshot {n}"));
    }
}

#[test]
fn parent_shortcut_still_sees_every_change() {
    require_root("parent_shortcut_still_sees_every_change");
    let t = tmp();
    let src = t.path().join("src");
    for i in 0..20 {
        random_file(&src, &format!("f{i}.bin"), &format!("shortcut{i}"), 30_000);
    }
    let repo = Repo::new(t.path().join("repo"));
    let id1 = repo.create_id(&[&src], &[]);
    let mtime = |p: &Path| filetime_of(&fs::symlink_metadata(p).unwrap());
    let t_root = mtime(&src);
    // f0: same size, same mtime, new content written in place (only ctime tells).
    let f0 = src.join("f0.bin");
    let t0 = mtime(&f0);
    fixture::overwrite_in_place(&f0, &fixture::random_bytes("shortcut-new0", 30_000));
    fixture::set_mtime(&f0, t0.0, t0.1);
    // f1: replaced by another inode with the same size and mtime.
    let f1 = src.join("f1.bin");
    let t1 = mtime(&f1);
    let tmpf = src.join(".new_f1");
    fixture::write_file(&tmpf, &fixture::random_bytes("shortcut-new1", 30_000));
    fixture::set_mtime(&tmpf, t1.0, t1.1);
    fs::rename(&tmpf, &f1).unwrap();
    // f2: a new xattr only; f3: chmod only.
    fixture::set_xattr(&src.join("f2.bin"), "user.added", b"later");
    fixture::chmod(&src.join("f3.bin"), 0o600);
    fixture::set_mtime(&src, t_root.0, t_root.1);

    let v2 = repo.create(&[&src], &[]);
    let id2 = jstr(&v2, "id").to_string();
    assert_eq!(v2["parent"].as_str(), Some(id1.as_str()));
    let read_bytes = ju64(&v2, "bytes_read");
    assert!(
        (60_000..=120_000).contains(&read_bytes),
        "bytes_read {read_bytes}: f0 and f1 must be read, f4..f19 must not: {v2}"
    );
    let dst = t.path().join("dst");
    restore_clean(&repo, &id2, &dst, &[]);
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "snapshot after subtle changes",
    );
    let diff = repo.diff(&id1, &id2);
    let want: BTreeSet<(String, String)> = [
        ("f0.bin", "content"),
        ("f1.bin", "content"),
        ("f2.bin", "metadata"),
        ("f3.bin", "metadata"),
    ]
    .iter()
    .map(|(p, c)| (p.to_string(), c.to_string()))
    .collect();
    assert_eq!(diff, want, "diff after subtle changes");
}

fn filetime_of(m: &fs::Metadata) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (m.mtime(), m.mtime_nsec())
}

#[test]
fn exclude_patterns_are_not_recorded() {
    require_root("exclude_patterns_are_not_recorded");
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(
        &src.join("keep.txt"),
        b"keep
",
    );
    fixture::write_file(
        &src.join("debug.log"),
        b"log
",
    );
    fixture::write_file(
        &src.join("sub/deeper.log"),
        b"log
",
    );
    fixture::write_file(
        &src.join("sub/keep.bin"),
        b"bin
",
    );
    fixture::write_file(
        &src.join("cache/big.bin"),
        b"cache
",
    );
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &["--exclude", "*.log", "--exclude", "cache"]);
    let listed: BTreeSet<String> = repo
        .ls(&id, None)
        .iter()
        .map(|e| jstr(e, "path").to_string())
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from(["keep.txt".into(), "sub".into(), "sub/keep.bin".into()]),
        "ls after --exclude '*.log' --exclude cache"
    );
    let dst = t.path().join("dst");
    restore_clean(&repo, &id, &dst, &[]);
    assert_eq!(
        rel_paths(&walk(&dst)),
        BTreeSet::from(["keep.txt".into(), "sub".into(), "sub/keep.bin".into()])
    );
}

#[test]
fn duplicate_content_is_stored_once() {
    require_root("duplicate_content_is_stored_once");
    let t = tmp();
    let data = fixture::random_bytes("dup8", 8 * MIB as usize);
    let src = t.path().join("src");
    fixture::write_file(&src.join("a.bin"), &data);
    fixture::write_file(&src.join("sub/b.bin"), &data);
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let v = repo.create(&[&src], &[]);
    let packs1 = repo.pack_bytes();
    assert!(
        (8 * MIB..8 * MIB + MIB / 2).contains(&packs1),
        "two identical 8 MiB random files take {packs1} bytes of packs (expected one copy)"
    );
    assert!(
        ju64(&v, "bytes_new") < 8 * MIB + MIB / 2,
        "bytes_new counts duplicate content twice: {v}"
    );
    assert_eq!(ju64(&v, "bytes"), 16 * MIB, "{v}");

    // The same content in another tree (no parent) is not stored again.
    let other = t.path().join("other");
    fixture::write_file(&other.join("c.bin"), &data);
    fixture::write_file(&other.join("d.txt"), b"small\n");
    let v2 = repo.create(&[&other], &[]);
    assert!(v2["parent"].is_null(), "another path has no parent: {v2}");
    let packs2 = repo.pack_bytes();
    assert!(
        packs2 - packs1 < 256 * 1024,
        "a third copy of known content grew the packs by {} bytes",
        packs2 - packs1
    );
    assert!(ju64(&v2, "bytes_new") < 64 * 1024, "{v2}");
    let dst = t.path().join("dst");
    restore_clean(&repo, jstr(&v2, "id"), &dst, &[]);
    assert_trees_equal(&walk(&other), &walk(&dst), &all(), "other tree");
}

// ---------------------------------------------------------------------------------------
// 4. repo init, list, show, ls, diff
// ---------------------------------------------------------------------------------------

#[test]
fn repo_init_layout_and_refusal() {
    require_root("repo_init_layout_and_refusal");
    let t = tmp();
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    for d in ["data", "index", "snapshots", "locks", "keys"] {
        assert!(repo.root.join(d).is_dir(), "no {d}/ in a new repository");
    }
    assert!(repo.root.join("config").is_file());
    assert_eq!(repo.list(), Vec::<serde_json::Value>::new());
    // Again: R exists and is not empty.
    let config = read(&repo.root.join("config"));
    repo.init().expect_code(1);
    assert_eq!(
        read(&repo.root.join("config")),
        config,
        "init rewrote the config"
    );
    // A non-empty directory that is not a repository.
    let other = Repo::new(t.path().join("other"));
    fixture::write_file(&other.root.join("precious.txt"), b"mine\n");
    other.init().expect_code(1);
    assert_eq!(read(&other.root.join("precious.txt")), b"mine\n");
    // An empty existing directory is fine.
    let empty = Repo::new(t.path().join("empty"));
    fixture::mkdir(&empty.root);
    empty.init().expect_code(0);
    assert!(empty.root.join("config").is_file());
    // HAUL_REPO works like --repo.
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"f\n");
    let (mut cmd, _) = haul_tests::haul_command(
        ["snapshot", "create", "--no-progress", src.to_str().unwrap()],
        None,
    );
    let out = cmd.env("HAUL_REPO", &repo.root).output().unwrap();
    assert!(
        out.status.success(),
        "create with HAUL_REPO: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = repo.list_ids();
    assert_eq!(ids.len(), 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("snapshot {} saved", ids[0])),
        "create prints `snapshot <id> saved`, got: {stdout}"
    );
}

/// A tree without hardlinks (so that counts are unambiguous).
fn listing_tree(root: &Path) {
    fixture::write_file(&root.join("top.txt"), b"top\n");
    fixture::write_file(&root.join("chmod_me.txt"), b"chmod me\n");
    fixture::write_file(&root.join("gone.txt"), b"to be removed\n");
    fixture::write_file(&root.join("dir/inner.txt"), b"inner\n");
    random_file(root, "dir/sub/deep.bin", "listing-deep", 50_000);
    fixture::symlink("inner.txt", &root.join("dir/link"));
    fixture::mkfifo(&root.join("dir/fifo"), 0o640);
    fixture::mkdir(&root.join("empty_dir"));
    fixture::chmod(&root.join("dir/sub/deep.bin"), 0o640);
    fixture::set_mtime(&root.join("top.txt"), 1_650_000_000, 123);
    fixture::set_mtime(&root.join("dir/link"), 1_650_000_003, 1);
    fixture::set_mtime(&root.join("dir/sub"), 1_650_000_004, 2);
    fixture::set_mtime(&root.join("dir"), 1_650_000_005, 3);
    fixture::set_mtime(root, 1_650_000_007, 5);
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::CharDev => "chardev",
        Kind::BlockDev => "blockdev",
    }
}

/// Check `ls --json` entries against the walked tree (paths relative to the snapshot root).
fn assert_ls_matches(entries: &[serde_json::Value], s: &Tree, context: &str) {
    for e in entries {
        let p = jstr(e, "path");
        let rec = s
            .get(Path::new(p))
            .unwrap_or_else(|| panic!("{context}: ls lists {p:?}, which the source does not have"));
        assert_eq!(
            jstr(e, "kind"),
            kind_name(rec.kind),
            "{context}: kind of {p}: {e}"
        );
        if rec.kind == Kind::File {
            assert_eq!(ju64(e, "size"), rec.size, "{context}: size of {p}: {e}");
        }
        assert_eq!(
            ju64(e, "mode") as u32 & 0o7777,
            rec.mode,
            "{context}: mode of {p}: {e}"
        );
        assert_eq!(
            (ju64(e, "uid") as u32, ju64(e, "gid") as u32),
            (rec.uid, rec.gid),
            "{context}: owner of {p}: {e}"
        );
        assert_eq!(
            json_time(&e["mtime"]),
            rec.mtime,
            "{context}: mtime of {p}: {e}"
        );
    }
}

#[test]
fn list_show_ls_and_diff() {
    require_root("list_show_ls_and_diff");
    let t = tmp();
    let src = t.path().join("src");
    listing_tree(&src);
    let s = walk(&src);
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let v1 = repo.create(&[&src], &["--tag", "alpha", "--tag", "beta"]);
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let id1 = jstr(&v1, "id").to_string();

    let nondirs = s
        .iter()
        .filter(|(p, r)| p.as_os_str() != ROOT && r.kind != Kind::Dir)
        .count() as u64;
    let dirs_below_root = s
        .iter()
        .filter(|(p, r)| p.as_os_str() != ROOT && r.kind == Kind::Dir)
        .count() as u64;
    let bytes: u64 = s
        .values()
        .filter(|r| r.kind == Kind::File)
        .map(|r| r.size)
        .sum();

    let list = repo.list();
    assert_eq!(list.len(), 1, "{list:?}");
    let l = &list[0];
    assert_eq!(jstr(l, "id"), id1);
    let (secs, _) = json_time(&l["time"]);
    assert!(
        (before - 1..=after + 1).contains(&secs),
        "snapshot time {} is not the time it was taken ({before}..{after})",
        l["time"]
    );
    assert_eq!(jstr(l, "hostname"), hostname(), "{l}");
    assert_eq!(jstr(l, "username"), "root", "{l}");
    assert_eq!(
        jstrs(l, "paths"),
        vec![src.to_string_lossy().into_owned()],
        "{l}"
    );
    let tags: BTreeSet<String> = jstrs(l, "tags").into_iter().collect();
    assert_eq!(tags, BTreeSet::from(["alpha".into(), "beta".into()]), "{l}");
    // Non-directories are counted by kind, as copy and restore count them.
    assert_eq!(
        ["files", "symlinks", "hardlinks", "specials"]
            .iter()
            .map(|k| ju64(l, k))
            .sum::<u64>(),
        nondirs,
        "files, symlinks, hardlinks and specials add up to the non-directories: {l}"
    );
    assert_eq!(ju64(l, "symlinks"), 1, "{l}");
    // The root directory may or may not be counted, but nothing else.
    let dirs = ju64(l, "dirs");
    assert!(
        dirs == dirs_below_root || dirs == dirs_below_root + 1,
        "dirs {dirs}, tree has {dirs_below_root} directories below the root: {l}"
    );
    assert_eq!(ju64(l, "bytes"), bytes, "{l}");
    assert!(l["parent"].is_null(), "{l}");
    // create --json agrees with the record.
    for k in [
        "files",
        "symlinks",
        "hardlinks",
        "specials",
        "dirs",
        "bytes",
    ] {
        assert_eq!(v1[k], l[k], "create --json and list disagree on {k}");
    }

    // show: by id, by prefix, latest.
    assert_eq!(&repo.show(&id1), l, "show ID");
    assert_eq!(&repo.show(&id1[..8]), l, "show PREFIX");
    assert_eq!(&repo.show("latest"), l, "show latest");
    let r = repo.snap("show", &[os("0123456789abcdef0123"), os("--json")]);
    assert_ne!(r.code, 0, "show of an unknown id:\n{}", r.describe());

    // ls: every entry, with metadata.
    let ls = repo.ls(&id1, None);
    let listed: BTreeSet<String> = ls.iter().map(|e| jstr(e, "path").to_string()).collect();
    assert_eq!(listed.len(), ls.len(), "ls lists a path twice");
    let listed: BTreeSet<String> = listed
        .into_iter()
        .filter(|p| p != "." && !p.is_empty())
        .collect();
    assert_eq!(listed, rel_paths(&s), "ls paths");
    let ls_no_root: Vec<serde_json::Value> = ls
        .into_iter()
        .filter(|e| !matches!(jstr(e, "path"), "." | ""))
        .collect();
    assert_ls_matches(&ls_no_root, &s, "ls");
    // ls below a path.
    let ls_dir = repo.ls(&id1, Some("dir"));
    let below: BTreeSet<String> = ls_dir
        .iter()
        .map(|e| jstr(e, "path").to_string())
        .filter(|p| p != "dir")
        .collect();
    let expected: BTreeSet<String> = rel_paths(&s)
        .into_iter()
        .filter(|p| p.starts_with("dir/"))
        .collect();
    assert_eq!(below, expected, "ls ID dir");
    assert_ls_matches(&ls_dir, &s, "ls ID dir");
    // ls of a path the snapshot does not hold: an error that names it, and
    // on stdout only the JSON error object (not the start of an array).
    let r = repo.snap("ls", &[os(&id1), os("no/such/dir"), os("--json")]);
    r.expect_code(1);
    assert!(
        jstr(&r.json(), "error").contains("no/such/dir") && r.stderr.contains("no/such/dir"),
        "ls of a missing path:\n{}",
        r.describe()
    );

    // Changes: content, chmod, added, removed. Directory mtimes are put back so that only
    // the intended entries differ.
    let t_dir = s[Path::new("dir")].mtime;
    let t_root = s[Path::new(ROOT)].mtime;
    fixture::overwrite_in_place(&src.join("dir/inner.txt"), b"inner, changed\n");
    fixture::chmod(&src.join("chmod_me.txt"), 0o600);
    fixture::write_file(&src.join("new.txt"), b"new\n");
    fixture::write_file(&src.join("dir/new2.txt"), b"new 2\n");
    fs::remove_file(src.join("gone.txt")).unwrap();
    fixture::set_mtime(&src.join("dir"), t_dir.0, t_dir.1);
    fixture::set_mtime(&src, t_root.0, t_root.1);

    let v2 = repo.create(&[&src], &[]);
    let id2 = jstr(&v2, "id").to_string();
    assert_eq!(jstr(&v2, "parent"), id1);
    let list = repo.list();
    assert_eq!(
        list.iter().map(|x| jstr(x, "id")).collect::<Vec<_>>(),
        vec![id1.as_str(), id2.as_str()],
        "list is oldest first"
    );
    assert_eq!(jstr(&list[1], "parent"), id1);
    assert_eq!(jstr(&repo.show("latest"), "id"), id2);

    let diff = repo.diff(&id1, &id2);
    let want: BTreeSet<(String, String)> = [
        ("new.txt", "added"),
        ("dir/new2.txt", "added"),
        ("gone.txt", "removed"),
        ("dir/inner.txt", "content"),
        ("chmod_me.txt", "metadata"),
    ]
    .iter()
    .map(|(p, c)| (p.to_string(), c.to_string()))
    .collect();
    assert_eq!(diff, want, "diff A B");
    // Reversed.
    let rev = repo.diff(&id2, &id1);
    let want_rev: BTreeSet<(String, String)> = want
        .iter()
        .map(|(p, c)| {
            let c = match c.as_str() {
                "added" => "removed",
                "removed" => "added",
                x => x,
            };
            (p.clone(), c.to_string())
        })
        .collect();
    assert_eq!(rev, want_rev, "diff B A");
    assert!(repo.diff(&id1, &id1).is_empty(), "diff A A is not empty");
}

// ---------------------------------------------------------------------------------------
// 5. Retention
// ---------------------------------------------------------------------------------------

/// 2024-03-04T00:00:00Z, a Monday.
const BASE: i64 = 1_709_510_400;

/// Offsets (seconds before BASE) of the retention test's snapshots, +7 s so that no time
/// sits on a bucket boundary or a --keep-within cutoff.
fn retention_times() -> Vec<i64> {
    let m = 60;
    let h = 3600;
    let d = 86_400;
    [
        40 * d,
        21 * d,
        15 * d,
        8 * d + 3 * h,
        7 * d,
        6 * d,
        3 * d + 2 * h,
        2 * d + 5 * h,
        d + 30 * m,
        20 * h,
        9 * h,
        4 * h + 10 * m,
        2 * h + 50 * m,
        h,
        40 * m,
        17 * m,
        12 * m,
        6 * m,
        3 * m,
        m,
        0,
    ]
    .iter()
    .map(|o| BASE - o + 7)
    .collect()
}

const CYCLECLOUD: &[&str] = &[
    "--keep-interval",
    "5m:3",
    "--keep-interval",
    "15m:3",
    "--keep-interval",
    "1h:3",
    "--keep-interval",
    "4h:2",
    "--keep-interval",
    "8h:2",
    "--keep-interval",
    "1d:3",
    "--keep-interval",
    "7d:2",
];

fn cyclecloud_policy() -> Policy {
    Policy {
        intervals: vec![
            (300, 3),
            (900, 3),
            (3600, 3),
            (4 * 3600, 2),
            (8 * 3600, 2),
            (86_400, 3),
            (7 * 86_400, 2),
        ],
        ..Default::default()
    }
}

/// A repository with one snapshot of a tiny tree at each of [`retention_times`], created
/// out of time order. Returns the snapshots as (id, time), in creation order.
fn retention_repo(t: &Path) -> (Repo, Vec<(String, i64)>) {
    let src = t.join("src");
    fixture::write_file(&src.join("f.txt"), b"tiny\n");
    let repo = Repo::new(t.join("repo"));
    repo.init().expect_code(0);

    let times = retention_times();
    // Created out of time order: list must still be by time.
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by_key(|&i| (i * 7) % times.len());
    let mut snaps: Vec<(String, i64)> = Vec::new();
    for &i in &order {
        let id = repo.create_id(&[&src], &["--time", &rfc3339(times[i])]);
        snaps.push((id, times[i]));
    }
    (repo, snaps)
}

/// `forget ARGS --dry-run` must keep exactly what `policy` keeps.
fn assert_forget_dry_run(repo: &Repo, snaps: &[(String, i64)], args: &[&str], policy: &Policy) {
    let all_ids: BTreeSet<String> = snaps.iter().map(|s| s.0.clone()).collect();
    let want = expected_keep(snaps, policy);
    let mut a = args.to_vec();
    a.push("--dry-run");
    let (keep, remove) = repo.forget(&a);
    let want_remove: BTreeSet<String> = all_ids.difference(&want).cloned().collect();
    let name = |ids: &BTreeSet<String>| -> Vec<String> {
        let mut v: Vec<(i64, String)> = snaps
            .iter()
            .filter(|s| ids.contains(&s.0))
            .map(|s| (s.1, rfc3339(s.1)))
            .collect();
        v.sort();
        v.into_iter().map(|x| x.1).collect()
    };
    assert_eq!(
        name(&keep),
        name(&want),
        "forget {args:?}: kept snapshots (by time)"
    );
    assert_eq!(keep, want, "forget {args:?}: keep");
    assert_eq!(remove, want_remove, "forget {args:?}: remove");
}

#[test]
fn retention_policies_match_an_independent_model() {
    require_root("retention_policies_match_an_independent_model");
    let t = tmp();
    let (repo, snaps) = retention_repo(t.path());
    let mut by_time = snaps.clone();
    by_time.sort_by_key(|s| s.1);
    let list = repo.list();
    let listed: Vec<(String, i64)> = list
        .iter()
        .map(|l| (jstr(l, "id").to_string(), json_time(&l["time"]).0))
        .collect();
    assert_eq!(listed, by_time, "list: ids and --time, oldest first");
    assert_eq!(
        jstr(&repo.show("latest"), "id"),
        by_time.last().unwrap().0,
        "latest is the newest by time"
    );
    let all_ids: BTreeSet<String> = snaps.iter().map(|s| s.0.clone()).collect();

    let cases: Vec<(Vec<&str>, Policy)> = vec![
        (
            vec!["--keep-last", "5"],
            Policy {
                last: Some(5),
                ..Default::default()
            },
        ),
        (
            vec!["--keep-within", "1d"],
            Policy {
                within: Some(86_400),
                ..Default::default()
            },
        ),
        (
            vec!["--keep-within", "2h30m"],
            Policy {
                within: Some(9000),
                ..Default::default()
            },
        ),
        (
            vec!["--keep-hourly", "6"],
            Policy {
                intervals: vec![(3600, 6)],
                ..Default::default()
            },
        ),
        (
            vec!["--keep-daily", "4"],
            Policy {
                intervals: vec![(86_400, 4)],
                ..Default::default()
            },
        ),
        (
            vec![
                "--keep-last",
                "2",
                "--keep-hourly",
                "3",
                "--keep-daily",
                "3",
            ],
            Policy {
                last: Some(2),
                intervals: vec![(3600, 3), (86_400, 3)],
                ..Default::default()
            },
        ),
        (
            vec!["--keep-interval", "1h30m:4"],
            Policy {
                intervals: vec![(5400, 4)],
                ..Default::default()
            },
        ),
        (
            vec!["--keep-interval", "30s:100"],
            Policy {
                intervals: vec![(30, 100)],
                ..Default::default()
            },
        ),
        (
            vec!["--keep-interval", "7d:3"],
            Policy {
                intervals: vec![(7 * 86_400, 3)],
                ..Default::default()
            },
        ),
        (CYCLECLOUD.to_vec(), cyclecloud_policy()),
    ];
    for (args, policy) in &cases {
        let want = expected_keep(&snaps, policy);
        assert!(
            !want.is_empty() && want.len() < snaps.len() || args.contains(&"30s:100"),
            "test case {args:?} does not discriminate"
        );
        assert_forget_dry_run(&repo, &snaps, args, policy);
    }
    assert_eq!(
        repo.list_ids().len(),
        snaps.len(),
        "--dry-run removed snapshots"
    );

    // The real thing.
    let want = expected_keep(&snaps, &cyclecloud_policy());
    let (keep, remove) = repo.forget(CYCLECLOUD);
    assert_eq!(keep, want);
    assert_eq!(remove.len(), snaps.len() - want.len());
    let left: Vec<String> = repo.list_ids();
    let want_left: Vec<String> = by_time
        .iter()
        .filter(|s| want.contains(&s.0))
        .map(|s| s.0.clone())
        .collect();
    assert_eq!(left, want_left, "list after forget");
    assert_eq!(repo.id_files("snapshots").len(), want.len());

    // forget by prefix.
    let victim = left[0].clone();
    let (_, removed) = repo.forget(&[&victim[..12]]);
    assert_eq!(removed, BTreeSet::from([victim.clone()]), "forget PREFIX");
    let left2 = repo.list_ids();
    assert_eq!(left2, left[1..].to_vec());
    // forget latest.
    let (_, removed) = repo.forget(&["latest"]);
    assert_eq!(
        removed,
        BTreeSet::from([left.last().unwrap().clone()]),
        "forget latest"
    );
    assert_eq!(repo.list_ids(), left[1..left.len() - 1].to_vec());
    // An unknown id is an error and removes nothing.
    let unknown = (0..16u32)
        .map(|d| format!("{d:x}"))
        .map(|c| c.repeat(6))
        .find(|p| !all_ids.iter().any(|id| id.starts_with(p.as_str())))
        .unwrap();
    let r = repo.snap("forget", &[os(&unknown)]);
    assert_ne!(r.code, 0, "forget of an unknown id:\n{}", r.describe());
    assert_eq!(repo.list_ids().len(), left.len() - 2);
    repo.check(false, &[]).expect_code(0);
}

/// restic's --keep-weekly buckets are ISO weeks (Monday to Sunday), not 7-day buckets
/// aligned to the epoch (a Thursday); `--keep-interval 7d:N` is the latter.
#[test]
fn keep_weekly_uses_iso_weeks() {
    require_root("keep_weekly_uses_iso_weeks");
    let t = tmp();
    let (repo, snaps) = retention_repo(t.path());
    assert_forget_dry_run(
        &repo,
        &snaps,
        &["--keep-weekly", "3"],
        &Policy {
            calendar: vec![(Calendar::Week, 3)],
            ..Default::default()
        },
    );
}

/// restic's --keep-monthly and --keep-yearly buckets are calendar months and years, not
/// 30- or 365-day buckets aligned to the epoch.
#[test]
fn keep_monthly_and_yearly_use_calendar_months_and_years() {
    require_root("keep_monthly_and_yearly_use_calendar_months_and_years");
    let t = tmp();
    let (repo, snaps) = retention_repo(t.path());
    assert_forget_dry_run(
        &repo,
        &snaps,
        &["--keep-monthly", "2"],
        &Policy {
            calendar: vec![(Calendar::Month, 2)],
            ..Default::default()
        },
    );
    assert_forget_dry_run(
        &repo,
        &snaps,
        &["--keep-monthly", "1", "--keep-yearly", "1"],
        &Policy {
            calendar: vec![(Calendar::Month, 1), (Calendar::Year, 1)],
            ..Default::default()
        },
    );
}

/// Forgetting the newest snapshot, whose data is all its own, leaves an index the same
/// as the older snapshot's own index file, byte for byte: prune writes it under that
/// file's name, and must not then delete it as an old index (it once did, and the older
/// snapshot could no longer be read).
#[test]
fn prune_keeps_an_old_index_that_it_writes_again() {
    require_root("prune_keeps_an_old_index_that_it_writes_again");
    let t = tmp();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    random_file(&x, "a.bin", "prune-same-index-x", 300_000);
    random_file(&y, "b.bin", "prune-same-index-y", 300_000);
    let repo = Repo::new(t.path().join("repo"));
    let old = repo.create_id(&[&x], &[]);
    let new = repo.create_id(&[&y], &[]);
    assert_eq!(repo.id_files("index").len(), 2, "one index file per create");
    repo.forget(&[&new]);
    repo.snap("prune", &[os("--no-progress")]).expect_code(0);
    repo.check(true, &[]).expect_code(0);
    let dst = t.path().join("dst");
    restore_clean(&repo, &old, &dst, &[]);
    assert_trees_equal(&walk(&x), &walk(&dst), &all(), "restore after prune");
}

#[test]
fn prune_frees_unreferenced_data_and_keeps_the_rest_restorable() {
    require_root("prune_frees_unreferenced_data_and_keeps_the_rest_restorable");
    let t = tmp();
    let src = t.path().join("src");
    random_file(&src, "stable.bin", "prune-stable", 3 * MIB as usize);
    fixture::write_file(&src.join("small.txt"), b"small\n");
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let id1 = repo.create_id(&[&src], &[]);
    let s1 = walk(&src);
    random_file(&src, "only2.bin", "prune-only2", 3 * MIB as usize);
    let id2 = repo.create_id(&[&src], &[]);
    fs::remove_file(src.join("only2.bin")).unwrap();
    random_file(&src, "only3.bin", "prune-only3", 2 * MIB as usize);
    let id3 = repo.create_id(&[&src], &[]);
    let s3 = walk(&src);

    let before = repo.pack_bytes();
    let (_, removed) = repo.forget(&[&id2]);
    assert_eq!(removed, BTreeSet::from([id2.clone()]));
    let r = repo.snap("prune", &[os("--json")]);
    r.expect_code(0);
    let v = stdout_json(&r);
    let after = repo.pack_bytes();
    assert!(ju64(&v, "blobs_removed") >= 1, "{v}");
    assert!(ju64(&v, "bytes_freed") >= 2 * MIB, "{v}");
    assert!(
        before - after >= 2 * MIB && after >= 5 * MIB,
        "packs {before} -> {after} bytes after pruning a 3 MiB file only snapshot 2 had"
    );
    repo.check(true, &[]).expect_code(0);
    for (id, s, n) in [(&id1, &s1, 1), (&id3, &s3, 3)] {
        let dst = t.path().join(format!("dst{n}"));
        restore_clean(&repo, id, &dst, &[]);
        assert_trees_equal(s, &walk(&dst), &all(), &format!("snapshot {n} after prune"));
    }
    // A second prune finds nothing.
    let r = repo.snap("prune", &[os("--json")]);
    r.expect_code(0);
    let v = stdout_json(&r);
    assert_eq!(ju64(&v, "blobs_removed"), 0, "{v}");
    assert_eq!(repo.pack_bytes(), after);
}

#[test]
fn prune_rebundles_the_used_members_of_a_partly_used_bundle() {
    require_root("prune_rebundles_the_used_members_of_a_partly_used_bundle");
    let t = tmp();
    let src = t.path().join("src");
    let text = |i: usize| format!("small file {i}, some text to compress\n").repeat(40 + i);
    for i in 0..30 {
        fixture::write_file(&src.join(format!("f{i:02}.txt")), text(i).as_bytes());
    }
    let repo = Repo::new(t.path().join("repo"));
    // One worker: each worker fills a bundle of its own, so with more the
    // small files could be split between two bundles.
    let id1 = repo.create_id(&[&src], &["-j1"]);
    // Every small file sits in one bundle of one pack.
    let hash = |i: usize| blake3::hash(text(i).as_bytes()).to_hex().to_string();
    let (_, b0) = find_blob(&repo, &hash(0));
    for i in 1..30 {
        let (_, b) = find_blob(&repo, &hash(i));
        assert_eq!(
            b.offset, b0.offset,
            "f{i:02}.txt is not in f00.txt's bundle"
        );
    }
    // Snapshot 2 drops ten of them; forgetting snapshot 1 leaves that bundle partly used.
    for i in 0..10 {
        fs::remove_file(src.join(format!("f{i:02}.txt"))).unwrap();
    }
    let id2 = repo.create_id(&[&src], &[]);
    let s2 = walk(&src);
    repo.forget(&[&id1]);
    let r = repo.snap("prune", &[os("--json")]);
    r.expect_code(0);
    let v = stdout_json(&r);
    assert!(ju64(&v, "blobs_removed") >= 10, "{v}");

    // What is left, by an independent reading of the packs: the twenty used files,
    // once each; none of the ten dropped ones.
    let stored: Vec<String> = repo
        .packs()
        .iter()
        .flat_map(|p| pack_blobs(&read(p)))
        .map(|b| b.id)
        .collect();
    for i in 0..30 {
        let n = stored.iter().filter(|s| **s == hash(i)).count();
        assert_eq!(
            n,
            usize::from(i >= 10),
            "f{i:02}.txt stored {n} times after prune"
        );
    }
    repo.check(true, &[]).expect_code(0);
    let dst = t.path().join("dst");
    restore_clean(&repo, &id2, &dst, &[]);
    assert_trees_equal(&s2, &walk(&dst), &all(), "snapshot 2 after prune");
}

// ---------------------------------------------------------------------------------------
// 6. Crash safety
// ---------------------------------------------------------------------------------------

#[test]
fn kill_9_mid_create_leaves_a_consistent_repo_and_packs_are_reused() {
    require_root("kill_9_mid_create_leaves_a_consistent_repo_and_packs_are_reused");
    let t = tmp();
    let src = t.path().join("src");
    const N: usize = 4;
    const SIZE: usize = 48 << 20;
    for i in 0..N {
        random_file(&src, &format!("big_{i}.bin"), &format!("crash{i}"), SIZE);
    }
    fixture::write_file(&src.join("small.txt"), b"small\n");
    let data = (N * SIZE) as u64;
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);

    // Kill once two thirds of the data sit in complete packs: if those were not reused,
    // the rerun would need more than 1.5 × the data.
    let threshold = data * 2 / 3;
    let mut child = spawn_haul(
        [
            os("snapshot"),
            os("create"),
            os("--no-progress"),
            os(&src),
            os("--repo"),
            os(&repo.root),
        ],
        None,
    );
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "haul finished ({st:?}) before {threshold} bytes of packs were seen \
                 (packs: {} bytes); cannot test the crash",
                repo.pack_bytes()
            );
        }
        if repo.pack_bytes() >= threshold {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "haul made no progress in 120 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kill9(child.id());
    child.wait().unwrap();
    let packs_after_kill: BTreeSet<PathBuf> = repo.packs().into_iter().collect();
    eprintln!(
        "killed after {:?}: {} packs, {} bytes in the repository",
        start.elapsed(),
        packs_after_kill.len(),
        repo.total_bytes()
    );
    assert!(
        repo.id_files("snapshots").is_empty(),
        "a snapshot was recorded"
    );

    repo.check(false, &[]).expect_code(0);
    repo.check(true, &[]).expect_code(0);
    assert_eq!(
        repo.list(),
        Vec::<serde_json::Value>::new(),
        "list after the crash"
    );

    let v = repo.create(&[&src], &[]);
    let packs_after: BTreeSet<PathBuf> = repo.packs().into_iter().collect();
    let lost: Vec<&PathBuf> = packs_after_kill.difference(&packs_after).collect();
    assert!(
        lost.is_empty(),
        "packs of the interrupted run were deleted: {lost:?}"
    );
    let total = repo.total_bytes();
    assert!(
        total < data + data / 2,
        "repository is {total} bytes after the rerun for {data} bytes of data: \
         the interrupted run's packs were not reused"
    );
    repo.check(true, &[]).expect_code(0);
    let dst = t.path().join("dst");
    restore_clean(&repo, jstr(&v, "id"), &dst, &[]);
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "restore after crash + rerun",
    );
}

// ---------------------------------------------------------------------------------------
// 7. Concurrency
// ---------------------------------------------------------------------------------------

#[test]
fn concurrent_creates_into_one_repo() {
    require_root("concurrent_creates_into_one_repo");
    let t = tmp();
    let a = t.path().join("a");
    let b = t.path().join("b");
    for (root, tag) in [(&a, "a"), (&b, "b")] {
        for i in 0..3 {
            random_file(
                root,
                &format!("big{i}.bin"),
                &format!("conc-{tag}-{i}"),
                6 * MIB as usize,
            );
        }
        for i in 0..100 {
            random_file(
                root,
                &format!("s/{i}.bin"),
                &format!("conc-{tag}-s{i}"),
                3000 + i,
            );
        }
        // Shared content between the two trees.
        random_file(root, "shared.bin", "conc-shared", 2 * MIB as usize);
    }
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let (ra, rb) = std::thread::scope(|sc| {
        let ha = sc.spawn(|| repo.create_raw(&[&a], &[]));
        let hb = sc.spawn(|| repo.create_raw(&[&b], &[]));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    ra.expect_code(0);
    rb.expect_code(0);
    let ida = jstr(&stdout_json(&ra), "id").to_string();
    let idb = jstr(&stdout_json(&rb), "id").to_string();
    let ids: BTreeSet<String> = repo.list_ids().into_iter().collect();
    assert_eq!(ids, BTreeSet::from([ida.clone(), idb.clone()]));
    assert!(repo.id_files("locks").is_empty(), "locks left behind");
    repo.check(true, &[]).expect_code(0);
    for (id, src, n) in [(&ida, &a, "a"), (&idb, &b, "b")] {
        let dst = t.path().join(format!("dst_{n}"));
        restore_clean(&repo, id, &dst, &[]);
        assert_trees_equal(
            &walk(src),
            &walk(&dst),
            &all(),
            &format!("concurrent snapshot {n}"),
        );
    }
}

#[test]
fn prune_during_create_keeps_the_new_snapshot_whole() {
    require_root("prune_during_create_keeps_the_new_snapshot_whole");
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("old.txt"), b"old\n");
    let repo = Repo::new(t.path().join("repo"));
    let id0 = repo.create_id(&[&src], &[]);
    // Something for prune to do.
    random_file(
        &src,
        "dropped.bin",
        "prune-during-dropped",
        2 * MIB as usize,
    );
    let id1 = repo.create_id(&[&src], &[]);
    repo.forget(&[&id1]);
    fs::remove_file(src.join("dropped.bin")).unwrap();
    for i in 0..4 {
        random_file(
            &src,
            &format!("new{i}.bin"),
            &format!("prune-during{i}"),
            16 * MIB as usize,
        );
    }
    let packs_before: BTreeSet<PathBuf> = repo.packs().into_iter().collect();
    let (create, prune) = std::thread::scope(|sc| {
        let h = sc.spawn(|| repo.create_raw(&[&src], &[]));
        // Wait until the create has written new data, then prune.
        let start = Instant::now();
        while !h.is_finished()
            && repo.packs().iter().all(|p| packs_before.contains(p))
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let prune = repo.snap("prune", &[os("--json")]);
        (h.join().unwrap(), prune)
    });
    eprintln!("prune during create: exit {}", prune.code);
    create.expect_code(0);
    let id2 = jstr(&stdout_json(&create), "id").to_string();
    repo.check(true, &[]).expect_code(0);
    let dst = t.path().join("dst");
    restore_clean(&repo, &id2, &dst, &[]);
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "snapshot created during a prune",
    );
    // And a prune now does its job, leaving everything restorable.
    repo.snap("prune", &[os("--json")]).expect_code(0);
    repo.check(true, &[]).expect_code(0);
    let dst = t.path().join("dst2");
    restore_clean(&repo, &id2, &dst, &[]);
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "after the second prune");
    assert_eq!(repo.list_ids(), vec![id0, id2]);
}

// ---------------------------------------------------------------------------------------
// 8. Corruption
// ---------------------------------------------------------------------------------------

const VICTIM: &str = "victim/victim.bin";

/// A tree whose files are all no larger than the minimum chunk size (256 KiB), so each is
/// exactly one data blob whose id is blake3 of the file's content.
fn corruption_tree(root: &Path) -> Vec<u8> {
    let victim = fixture::random_bytes("corrupt-victim", 200_000);
    fixture::write_file(&root.join(VICTIM), &victim);
    random_file(root, "ok/a.bin", "corrupt-a", 100_000);
    random_file(root, "ok/c.bin", "corrupt-c", 150_000);
    fixture::write_file(&root.join("ok/b.txt"), b"fine\n");
    fixture::write_file(&root.join("victim/neighbour.txt"), b"next to the victim\n");
    victim
}

fn corruption_repo(t: &Path, name: &str) -> (Repo, PathBuf, String, Vec<u8>) {
    let src = t.join(format!("src_{name}"));
    let victim = corruption_tree(&src);
    let repo = Repo::new(t.join(format!("repo_{name}")));
    repo.init().expect_code(0);
    let id = repo.create_id(&[&src], &[]);
    (repo, src, id, victim)
}

/// Flip the last byte of the id in the index record of blob `blob` (hex); returns the
/// index file.
fn damage_index_record(repo: &Repo, blob: &str) -> PathBuf {
    let mut hits = Vec::new();
    for f in repo.id_files("index") {
        if let Some(&at) = index_records(&read(&f)).get(blob) {
            hits.push((f, at));
        }
    }
    assert_eq!(
        hits.len(),
        1,
        "blob {blob} should be in exactly one index record"
    );
    let (f, at) = hits.pop().unwrap();
    flip_byte(&f, (at + 31) as u64);
    f
}

#[test]
fn flipped_byte_in_a_pack_is_found_by_read_data_and_never_restored() {
    require_root("flipped_byte_in_a_pack_is_found_by_read_data_and_never_restored");
    let t = tmp();
    let (repo, src, id, victim) = corruption_repo(t.path(), "flip");
    // A second snapshot (other path) that does not contain the victim.
    let other = t.path().join("other");
    fixture::write_file(&other.join("unrelated.txt"), b"unrelated\n");
    let id_other = repo.create_id(&[&other], &[]);
    repo.check(true, &[]).expect_code(0);

    let blob_id = blake3::hash(&victim).to_hex().to_string();
    let (pack, blob) = find_blob(&repo, &blob_id);
    assert_eq!(blob.kind, 0, "victim blob is not a data blob: {blob:?}");
    assert_eq!(blob.raw_len, victim.len() as u64);
    // Random bytes do not compress, so the victim is stored raw (encoding byte 0),
    // alone or as a member of a bundle of its neighbours: the flip lands in the
    // middle of the victim's own bytes, and only the victim is damaged.
    assert_eq!(
        read(&pack)[blob.offset as usize],
        0,
        "victim not stored raw: {blob:?}"
    );
    flip_byte(&pack, blob.offset + 2 + blob.inner + blob.raw_len / 2);

    // Structure only: may pass (the pack's layout is intact) but must not crash.
    let r = repo.check(false, &[]);
    assert!(
        matches!(r.code, 0 | 5),
        "check without --read-data:\n{}",
        r.describe()
    );

    let r = repo.check(true, &[]);
    r.expect_code(5);
    assert!(
        r.stderr.contains(short(&id)),
        "check --read-data does not name snapshot {id}:\n{}",
        r.describe()
    );
    assert!(
        r.stderr.contains(VICTIM),
        "check --read-data does not name the file {VICTIM}:\n{}",
        r.describe()
    );
    let r = repo.check(true, &["--json"]);
    r.expect_code(5);
    let v = stdout_json(&r);
    assert_eq!(v["ok"], serde_json::Value::Bool(false), "{v}");
    assert!(!jarr(&v["errors"]).is_empty(), "{v}");
    assert_eq!(jstrs(&v, "affected_snapshots"), vec![id.clone()], "{v}");
    let files: Vec<(String, String)> = jarr(&v["affected_files"])
        .iter()
        .map(|f| (jstr(f, "snapshot").to_string(), jstr(f, "path").to_string()))
        .collect();
    assert_eq!(files.len(), 1, "affected_files: {v}");
    assert_eq!(files[0].0, id, "{v}");
    assert!(
        files[0].1.ends_with(VICTIM),
        "affected file {:?}: {v}",
        files[0].1
    );

    // Restore: exit 3, the victim is not written (not even truncated or with wrong bytes),
    // everything else is.
    let dst = t.path().join("dst");
    let r = repo.restore(&id, &dst, &[]);
    r.expect_code(3);
    let v = r.json();
    let failed = json_paths(&v, "failed");
    assert!(
        failed.iter().any(|p| p.ends_with(VICTIM)),
        "failed does not name {VICTIM}:\n{}",
        r.describe()
    );
    assert!(
        !exists(&dst.join(VICTIM)),
        "the corrupt file was written under its final name"
    );
    let s = walk(&src);
    let d = walk(&dst);
    for (p, e) in &d {
        if p.as_os_str() == ROOT {
            continue;
        }
        let se = s.get(p).unwrap_or_else(|| {
            panic!("DST holds {p:?}, which the snapshot does not have (a temporary file?)")
        });
        if e.kind == Kind::File {
            assert_eq!(e.hash, se.hash, "{p:?} restored with wrong content");
        }
    }
    assert_trees_equal(
        &subtree(&s, "ok"),
        &subtree(&d, "ok"),
        &all(),
        "unaffected ok/",
    );
    assert_eq!(
        read(&dst.join("victim/neighbour.txt")),
        b"next to the victim\n"
    );
    // The other snapshot still restores cleanly.
    let dst2 = t.path().join("dst_other");
    restore_clean(&repo, &id_other, &dst2, &[]);
    assert_trees_equal(&walk(&other), &walk(&dst2), &all(), "unaffected snapshot");
}

#[test]
fn flipped_byte_in_a_compressed_bundle_fails_exactly_the_files_it_damages() {
    require_root("flipped_byte_in_a_compressed_bundle_fails_exactly_the_files_it_damages");
    let t = tmp();
    let src = t.path().join("src");
    // Small text files compress, so they share one zstd bundle; a random file
    // over the bundling limit is stored alone.
    let mut texts = Vec::new();
    for i in 0..40 {
        let rel = format!("dir/f{i:02}.txt");
        let body = format!("line {i} of a small text file, repeated\n").repeat(150 + i);
        fixture::write_file(&src.join(&rel), body.as_bytes());
        texts.push(rel);
    }
    random_file(&src, "alone/other.bin", "bundle-alone", 600_000);
    let repo = Repo::new(t.path().join("repo"));
    // One worker, so that the small files make one bundle (each worker
    // fills its own).
    let id = repo.create_id(&[&src], &["-j1"]);
    repo.check(true, &[]).expect_code(0);

    let first = blake3::hash(&read(&src.join(&texts[0])))
        .to_hex()
        .to_string();
    let (pack, blob) = find_blob(&repo, &first);
    let bytes = read(&pack);
    assert_eq!(
        bytes[blob.offset as usize], 1,
        "text bundle not zstd: {blob:?}"
    );
    let members: BTreeSet<String> = pack_blobs(&bytes)
        .into_iter()
        .filter(|b| b.offset == blob.offset)
        .map(|b| b.id)
        .collect();
    let text_ids: BTreeSet<String> = texts
        .iter()
        .map(|r| blake3::hash(&read(&src.join(r))).to_hex().to_string())
        .collect();
    assert!(
        text_ids.is_subset(&members),
        "the 40 small files are not one bundle: {} members",
        members.len()
    );
    flip_byte(&pack, blob.offset + blob.stored_len / 2);

    // check names some of the bundle's files, and nothing else, by the
    // paths restore uses (relative to the one snapshotted path).
    let r = repo.check(true, &["--json"]);
    r.expect_code(5);
    let v = stdout_json(&r);
    let affected: BTreeSet<String> = jarr(&v["affected_files"])
        .iter()
        .map(|f| jstr(f, "path").to_string())
        .collect();
    assert!(!affected.is_empty(), "no affected file named: {v}");
    for p in &affected {
        assert!(texts.contains(p), "{p} is not in the damaged bundle: {v}");
    }

    // restore fails exactly those files, writes none of them, and restores the
    // rest with the right content.
    let dst = t.path().join("dst");
    let r = repo.restore(&id, &dst, &[]);
    r.expect_code(3);
    let failed: BTreeSet<String> = json_paths(&r.json(), "failed").into_iter().collect();
    assert_eq!(
        failed,
        affected,
        "restore and check disagree:\n{}",
        r.describe()
    );
    for rel in texts.iter().chain([&"alone/other.bin".to_string()]) {
        if failed.contains(rel) {
            assert!(
                !exists(&dst.join(rel)),
                "{rel} was written although damaged"
            );
        } else {
            assert_eq!(
                read(&dst.join(rel)),
                read(&src.join(rel)),
                "{rel} restored wrong"
            );
        }
    }
}

#[test]
fn corrupt_middle_chunk_of_a_large_file_is_never_restored_partially() {
    require_root("corrupt_middle_chunk_of_a_large_file_is_never_restored_partially");
    let t = tmp();
    let src = t.path().join("src");
    let small = corruption_tree(&src);
    // 12 MiB: several chunks (at most 4 MiB each).
    random_file(&src, "large/large.bin", "corrupt-large", 12 * MIB as usize);
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);
    // The data blobs that are not one of the small files are the large file's chunks.
    let s = walk(&src);
    let small_ids: BTreeSet<String> = s
        .iter()
        .filter(|(p, e)| e.kind == Kind::File && !p.starts_with("large"))
        .map(|(p, _)| blake3::hash(&read(&src.join(p))).to_hex().to_string())
        .collect();
    assert!(small_ids.contains(blake3::hash(&small).to_hex().as_str()));
    let mut chunks: Vec<(PathBuf, haul_tests::repo::PackBlob)> = Vec::new();
    for p in repo.packs() {
        for b in pack_blobs(&read(&p)) {
            if b.kind == 0 && !small_ids.contains(&b.id) {
                chunks.push((p.clone(), b));
            }
        }
    }
    let total: u64 = chunks.iter().map(|c| c.1.raw_len).sum();
    assert_eq!(total, 12 * MIB, "chunks of large.bin: {chunks:?}");
    assert!(
        chunks.len() >= 3,
        "large.bin is only {} chunks",
        chunks.len()
    );
    // Not the first nor the last chunk in the pack order: the one in the middle.
    chunks.sort_by_key(|c| (c.0.clone(), c.1.offset));
    let (pack, blob) = &chunks[chunks.len() / 2];
    flip_byte(pack, blob.offset + blob.stored_len / 2);

    let r = repo.check(true, &["--json"]);
    r.expect_code(5);
    let v = stdout_json(&r);
    let files: Vec<String> = jarr(&v["affected_files"])
        .iter()
        .map(|f| jstr(f, "path").to_string())
        .collect();
    assert!(
        files.len() == 1 && files[0].ends_with("large/large.bin"),
        "affected_files: {v}"
    );

    let dst = t.path().join("dst");
    let r = repo.restore(&id, &dst, &[]);
    r.expect_code(3);
    let v = r.json();
    let failed = json_paths(&v, "failed");
    assert!(
        failed.len() == 1 && failed[0].ends_with("large/large.bin"),
        "failed must name exactly large/large.bin:\n{}",
        r.describe()
    );
    assert!(
        !exists(&dst.join("large/large.bin")),
        "a partial large.bin was written"
    );
    let d = walk(&dst);
    let leftovers: Vec<&PathBuf> = d.keys().filter(|p| !s.contains_key(*p)).collect();
    assert!(
        leftovers.is_empty(),
        "DST holds entries the snapshot lacks: {leftovers:?}"
    );
    let s_rest = haul_tests::without(&s, &["large"]);
    let d_rest = haul_tests::without(&d, &["large"]);
    let opts = CompareOpts {
        root: false,
        ..all()
    };
    assert_trees_equal(&s_rest, &d_rest, &opts, "everything but large/");
}

#[test]
fn truncated_pack_fails_check() {
    require_root("truncated_pack_fails_check");
    let t = tmp();
    let (repo, _src, id, victim) = corruption_repo(t.path(), "trunc");
    let (pack, _) = find_blob(&repo, &blake3::hash(&victim).to_hex());
    let len = fs::metadata(&pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    repo.check(false, &[]).expect_code(5);
    repo.check(true, &[]).expect_code(5);
    let r = repo.restore(&id, &t.path().join("dst"), &[]);
    assert!(
        matches!(r.code, 1 | 3),
        "restore with a truncated pack:\n{}",
        r.describe()
    );
}

#[test]
fn deleted_pack_fails_check_naming_the_snapshot() {
    require_root("deleted_pack_fails_check_naming_the_snapshot");
    let t = tmp();
    let (repo, src, id, victim) = corruption_repo(t.path(), "del");
    let (pack, _) = find_blob(&repo, &blake3::hash(&victim).to_hex());
    fs::remove_file(&pack).unwrap();
    let r = repo.check(false, &[]);
    r.expect_code(5);
    assert!(
        r.stderr.contains(short(&id)),
        "check does not name snapshot {id}:\n{}",
        r.describe()
    );
    let r = repo.check(false, &["--json"]);
    r.expect_code(5);
    let v = stdout_json(&r);
    assert_eq!(jstrs(&v, "affected_snapshots"), vec![id.clone()], "{v}");
    repo.check(true, &[]).expect_code(5);
    // Restoring names the missing data rather than crashing.
    let dst = t.path().join("dst");
    let r = repo.restore(&id, &dst, &[]);
    assert!(
        matches!(r.code, 1 | 3),
        "restore with a missing pack:\n{}",
        r.describe()
    );
    if exists(&dst) {
        let s = walk(&src);
        for (p, e) in walk(&dst) {
            if e.kind == Kind::File {
                assert_eq!(
                    Some(&e.hash),
                    s.get(&p).map(|x| &x.hash),
                    "{p:?} restored with wrong content or should not exist"
                );
            }
        }
    }
}

#[test]
fn corrupt_index_is_a_clear_error() {
    require_root("corrupt_index_is_a_clear_error");
    let t = tmp();

    // Index file: a flipped byte in the middle. `check` reports it; a restore names it and
    // either fails or (if it finds the blobs another way) restores exactly.
    let (repo, src, id, victim) = corruption_repo(t.path(), "index");
    let index = damage_index_record(&repo, &blake3::hash(&victim).to_hex());
    let name = file_name(&index);
    let r = repo.check(false, &[]);
    r.expect_code(5);
    assert!(
        r.stderr.contains(&name[..8]),
        "check does not name the corrupt index {name}:\n{}",
        r.describe()
    );
    let dst = t.path().join("dst_index");
    let r = repo.restore(&id, &dst, &[]);
    assert!(
        r.stderr.contains(&name[..8]),
        "restore does not name the corrupt index {name}:\n{}",
        r.describe()
    );
    if r.code == 0 {
        assert_trees_equal(
            &walk(&src),
            &walk(&dst),
            &all(),
            "restore with a corrupt index",
        );
    }

    // Index file: garbage.
    let (repo, _src, _id, _) = corruption_repo(t.path(), "index2");
    let index = repo.id_files("index")[0].clone();
    fs::write(&index, b"not an index at all").unwrap();
    let name = file_name(&index);
    let r = repo.check(false, &[]);
    r.expect_code(5);
    assert!(r.stderr.contains(&name[..8]), "{}", r.describe());
    let r = repo.check(true, &[]);
    r.expect_code(5);
}

/// After an index file is damaged, a new snapshot (whose parent's data is only known from
/// that index) must not be recorded with references to blobs the repository cannot find:
/// either create fails, or it stores what it needs again.
#[test]
fn create_after_index_damage_records_no_damaged_snapshot() {
    require_root("create_after_index_damage_records_no_damaged_snapshot");
    let t = tmp();
    let (repo, src, _id, victim) = corruption_repo(t.path(), "index3");
    // The victim file does not change, so the new snapshot reuses the parent's node for it.
    let index = damage_index_record(&repo, &blake3::hash(&victim).to_hex());
    let r = repo.create_raw(&[&src], &[]);
    if r.code != 0 {
        assert!(
            r.stderr.contains(&file_name(&index)[..8]),
            "create fails without naming the damaged index:\n{}",
            r.describe()
        );
        return;
    }
    let id2 = jstr(&stdout_json(&r), "id").to_string();
    let c = repo.check(false, &["--json"]);
    let v = stdout_json(&c);
    let affected = jstrs(&v, "affected_snapshots");
    assert!(
        !affected.contains(&id2),
        "create exited 0 but the snapshot it recorded is damaged:\n{}\n{}",
        r.describe(),
        c.describe()
    );
    let dst = t.path().join("dst");
    restore_clean(&repo, &id2, &dst, &[]);
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "snapshot taken after index damage",
    );
}

#[test]
fn corrupt_snapshot_record_is_a_clear_error() {
    require_root("corrupt_snapshot_record_is_a_clear_error");
    let t = tmp();
    let (repo, _src, id, _) = corruption_repo(t.path(), "record");
    let rec = repo.root.join("snapshots").join(&id);
    let mut b = read(&rec);
    let mid = b.len() / 2;
    b[mid] = if b[mid] == b'x' { b'y' } else { b'x' };
    fs::write(&rec, &b).unwrap();
    for (what, r) in [
        ("check", repo.check(false, &[])),
        ("show", repo.snap("show", &[os(&id), os("--json")])),
        ("restore", repo.restore(&id, &t.path().join("dst_rec"), &[])),
    ] {
        assert_ne!(
            r.code,
            0,
            "{what} with a corrupt snapshot record:\n{}",
            r.describe()
        );
        assert!(
            r.stderr.contains(short(&id)),
            "{what} does not name the corrupt record {id}:\n{}",
            r.describe()
        );
    }
    repo.check(false, &[]).expect_code(5);
    // Truncated record (not JSON any more).
    fs::write(&rec, &b[..mid]).unwrap();
    let r = repo.check(false, &[]);
    r.expect_code(5);
    assert!(r.stderr.contains(short(&id)), "{}", r.describe());
}

// ---------------------------------------------------------------------------------------
// 9. Locks
// ---------------------------------------------------------------------------------------

#[test]
fn stale_lock_of_a_dead_process_is_broken() {
    require_root("stale_lock_of_a_dead_process_is_broken");
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    repo.create_id(&[&src], &[]);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let pid = dead_pid();
    let lock = write_lock(
        &repo.root,
        &hostname(),
        "root",
        pid,
        &rfc3339(now - 5),
        true,
    );
    let r = repo.create_raw(&[&src], &[]);
    r.expect_code(0);
    assert!(
        ci_contains(&r.stderr, "lock") && r.stderr.contains(&pid.to_string()),
        "breaking the stale lock of pid {pid} must be reported on stderr:\n{}",
        r.describe()
    );
    assert!(!exists(&lock), "stale lock still there");
    assert!(repo.id_files("locks").is_empty(), "locks left behind");
    assert_eq!(repo.list_ids().len(), 2);
}

#[test]
fn lock_of_a_killed_create_is_broken() {
    require_root("lock_of_a_killed_create_is_broken");
    let t = tmp();
    let src = t.path().join("src");
    for i in 0..4 {
        random_file(
            &src,
            &format!("f{i}.bin"),
            &format!("lockkill{i}"),
            16 * MIB as usize,
        );
    }
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let mut child = spawn_haul(
        [
            os("snapshot"),
            os("create"),
            os("--no-progress"),
            os(&src),
            os("--repo"),
            os(&repo.root),
        ],
        None,
    );
    let start = Instant::now();
    let lock = loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("haul finished ({st:?}) before its lock was seen");
        }
        if let Some(l) = repo.id_files("locks").into_iter().next() {
            break l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no lock file in 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let pid = child.id();
    kill9(pid);
    child.wait().unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&read(&lock)).expect("lock is JSON");
    assert_eq!(ju64(&rec, "pid"), u64::from(pid), "lock record: {rec}");
    assert_eq!(jstr(&rec, "hostname"), hostname(), "lock record: {rec}");
    assert!(exists(&lock), "the killed process's lock vanished");

    let r = repo.create_raw(&[&src], &[]);
    r.expect_code(0);
    assert!(
        ci_contains(&r.stderr, "lock") && r.stderr.contains(&pid.to_string()),
        "breaking the stale lock of pid {pid} must be reported:\n{}",
        r.describe()
    );
    assert!(!exists(&lock));
    assert_eq!(repo.list_ids().len(), 1);
    repo.check(true, &[]).expect_code(0);
}

#[test]
fn foreign_lock_blocks_until_force_unlock() {
    require_root("foreign_lock_blocks_until_force_unlock");
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Another host's exclusive lock: haul cannot tell whether it is stale.
    let lock = write_lock(
        &repo.root,
        "some-other-host.invalid",
        "root",
        1,
        &rfc3339(now),
        true,
    );
    let r = repo.create_raw(&[&src], &[]);
    assert_ne!(
        r.code,
        0,
        "create under another host's exclusive lock:\n{}",
        r.describe()
    );
    assert!(ci_contains(&r.stderr, "lock"), "{}", r.describe());
    assert!(
        exists(&lock),
        "a live foreign lock was removed without --force-unlock"
    );
    assert_eq!(
        repo.id_files("locks").len(),
        1,
        "the failed create left its own lock"
    );
    assert!(repo.id_files("snapshots").is_empty());

    // A live local process's lock (this test's own pid) is not stale either.
    fs::remove_file(&lock).unwrap();
    let mine = write_lock(
        &repo.root,
        &hostname(),
        "root",
        std::process::id(),
        &rfc3339(now),
        true,
    );
    let r = repo.create_raw(&[&src], &[]);
    assert_ne!(
        r.code,
        0,
        "create under a live exclusive lock:\n{}",
        r.describe()
    );
    assert!(exists(&mine));

    let r = repo.create_raw(&[&src], &["--force-unlock"]);
    r.expect_code(0);
    assert!(!exists(&mine), "--force-unlock left the lock");
    assert!(repo.id_files("locks").is_empty());
    assert_eq!(repo.list_ids().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[test]
fn unreadable_entries_are_reported_and_the_summary_matches_the_snapshot() {
    require_root("unreadable_entries_are_reported_and_the_summary_matches_the_snapshot");
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    fixture::write_file(&src.join("ok.txt"), b"readable\n");
    fixture::write_file(&src.join("secret"), b"root only\n");
    fixture::write_file(&src.join("closed/inner"), b"behind a closed door\n");
    fixture::write_file(&src.join("open/fine.txt"), b"fine\n");
    fixture::chown_tree(&src, NOBODY.0, NOBODY.1);
    fixture::lchown(&src.join("secret"), 0, 0);
    fixture::chmod(&src.join("secret"), 0o600);
    fixture::lchown(&src.join("closed"), 0, 0);
    fixture::chmod(&src.join("closed"), 0o700);
    let repo = Repo::new_as(t.path().join("repo"), NOBODY.0, NOBODY.1);
    let r = repo.create_raw(&[&src], &[]);
    r.expect_code(3);
    let v = stdout_json(&r);
    let failed = json_paths(&v, "failed");
    for name in ["secret", "closed"] {
        assert!(
            failed.iter().any(|p| p.ends_with(name)),
            "failed does not name {name}:\n{}",
            r.describe()
        );
    }
    let id = jstr(&v, "id").to_string();
    let ls = repo.ls(&id, None);
    let files: Vec<&serde_json::Value> = ls.iter().filter(|e| jstr(e, "kind") != "dir").collect();
    assert!(
        !files.iter().any(|e| jstr(e, "path") == "secret"),
        "the unreadable file was recorded: {ls:?}"
    );
    let show = repo.show(&id);
    assert_eq!(
        ju64(&show, "files"),
        files.len() as u64,
        "files in the record vs entries in the snapshot: {show} vs {ls:?}"
    );
    assert_eq!(
        ju64(&show, "bytes"),
        files.iter().map(|e| ju64(e, "size")).sum::<u64>(),
        "bytes in the record vs the snapshot's files: {show} vs {ls:?}"
    );
    for k in ["files", "dirs", "bytes"] {
        assert_eq!(v[k], show[k], "create --json and show disagree on {k}");
    }
    let dst = t.path().join("dst");
    let r = repo.restore(&id, &dst, &[]);
    assert!(matches!(r.code, 0 | 4), "{}", r.describe());
    assert_eq!(read(&dst.join("ok.txt")), b"readable\n");
    assert_eq!(read(&dst.join("open/fine.txt")), b"fine\n");
    assert!(!exists(&dst.join("secret")));
}

#[test]
fn usage_errors_exit_2() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"f\n");
    let repo = Repo::new(t.path().join("repo"));
    let dst = t.path().join("dst");
    repo.snap("create", &[os("--no-such-option"), os(&src)])
        .expect_code(2);
    repo.snap("create", &[os("-j"), os("lots"), os(&src)])
        .expect_code(2);
    repo.snap("restore", &[os("latest")]).expect_code(2);
    repo.snap("restore", &[os("latest"), os(&dst), os("--bogus")])
        .expect_code(2);
    assert!(!exists(&dst), "a usage error created DST");
    assert!(!exists(&repo.root), "a usage error created the repository");
}

#[test]
fn invalid_policy_values_are_usage_errors() {
    require_root("invalid_policy_values_are_usage_errors");
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"f\n");
    let repo = Repo::new(t.path().join("repo"));
    repo.create_id(&[&src], &[]);
    for args in [
        &["--keep-interval", "5x:3"][..],
        &["--keep-interval", "5m"],
        &["--keep-interval", "5m:lots"],
        &["--keep-within", "forever"],
        &["--keep-last", "-1"],
    ] {
        let a: Vec<OsString> = args.iter().map(os).collect();
        let r = repo.snap("forget", &a);
        assert_eq!(
            r.code,
            2,
            "forget {args:?} is a usage error:\n{}",
            r.describe()
        );
    }
    let r = repo.create_raw(&[&src], &["--time", "yesterday"]);
    assert_eq!(r.code, 2, "create --time yesterday:\n{}", r.describe());
    assert_eq!(
        repo.list_ids().len(),
        1,
        "an invalid policy removed snapshots"
    );
}

/// One create that adds much new data writes an index file every N new blobs
/// (so its memory stays flat); the result must be as good as one index: the
/// repository checks clean, restores exactly, and a re-snapshot finds every
/// blob (nothing new is stored).
#[test]
fn index_flushes_during_a_large_create_keep_the_repository_whole() {
    require_root("index_flushes_during_a_large_create_keep_the_repository_whole");
    let t = tmp();
    let src = t.path().join("src");
    for i in 0..48 {
        let data = fixture::random_bytes(&format!("flush{i}"), 200 * 1024);
        fixture::write_file(&src.join(format!("d{}/f{i}", i % 4)), &data);
    }
    let repo = Repo::new(t.path().join("repo"));
    repo.run(vec![os("repo"), os("init"), os("--pack-size"), os("1")])
        .expect_code(0);
    let v = repo.create(&[&src], &["--index-flush-every", "8"]);
    let indexes = repo.id_files("index").len();
    assert!(
        indexes >= 3,
        "expected several index files from flushes, found {indexes}"
    );
    repo.check(true, &[]).expect_code(0);
    let dst = t.path().join("dst");
    restore_clean(&repo, jstr(&v, "id"), &dst, &[]);
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "restore after index flushes",
    );
    // Touch every file's ctime so nothing is taken from the parent: every
    // chunk must be found through the flushed indexes.
    for e in fs::read_dir(&src).unwrap() {
        let d = e.unwrap().path();
        for f in fs::read_dir(&d).unwrap() {
            fixture::chmod(&f.unwrap().path(), 0o640);
        }
    }
    let v2 = repo.create(&[&src], &[]);
    assert_eq!(
        ju64(&v2, "bytes_new"),
        0,
        "blobs in flushed indexes were stored again: {v2}"
    );
}

/// Runs `haul ARGS` on a terminal (a pseudo-terminal from util-linux's
/// `script`) and returns what it wrote there, with its exit code.
fn on_terminal(args: &[&str]) -> (String, i32) {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = quote(haul_tests::haul_bin().to_str().unwrap());
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("running `script` (install util-linux / bsdutils, which has it): {e}")
        });
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// Every long-running snapshot command draws a progress bar when its
/// stderr is a terminal, and none with --no-progress.
#[test]
fn long_running_commands_show_progress_on_a_terminal() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    fixture::write_file(&src.join("big"), &fixture::random_bytes("big", 3 << 20));
    let repo = t.path().join("repo");
    let (r, s, d) = (
        repo.to_str().unwrap(),
        src.to_str().unwrap(),
        t.path().join("dst"),
    );
    let dst = d.to_str().unwrap();
    // The bar's template holds "ETA"; no summary line does.
    let commands: [&[&str]; 4] = [
        &["snapshot", "create", "--repo", r, s],
        &["snapshot", "restore", "--repo", r, "latest", dst],
        &["snapshot", "check", "--read-data", "--repo", r],
        &["snapshot", "prune", "--repo", r],
    ];
    for cmd in commands {
        let (out, code) = on_terminal(cmd);
        assert_eq!(code, 0, "{cmd:?} failed on a terminal:\n{out}");
        assert!(out.contains("ETA"), "{cmd:?} drew no progress bar:\n{out}");
        let mut quiet = cmd.to_vec();
        quiet.insert(2, "--no-progress");
        let _ = fs::remove_dir_all(&d);
        let (out, code) = on_terminal(&quiet);
        assert_eq!(code, 0, "{quiet:?} failed on a terminal:\n{out}");
        assert!(
            !out.contains("ETA"),
            "{quiet:?} drew a progress bar:\n{out}"
        );
        let _ = fs::remove_dir_all(&d);
    }
}

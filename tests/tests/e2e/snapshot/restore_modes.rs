//! End-to-end tests of the restore modes: `snapshot restore --delete` (DST
//! becomes an exact mirror of the snapshot, excluded paths kept) and
//! `snapshot restore -n/--dry-run [-v] [--json]` (lists what a restore would
//! create, update, fix or delete, with the counts a real run reports, and
//! touches nothing), and `copy -n` counting as its real run does.
//!
//! Trees are compared with the independent walker from `haul_tests`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use haul_tests::fixture;
use haul_tests::repo::{os, Repo};
use haul_tests::util::{all, tmp};
use haul_tests::{
    assert_trees_equal, exists, haul_copy, json_changes, json_count, json_paths, read, walk,
    RunResult, Untouched,
};

/// The counts a run reports: created, updated, metadata_only, unchanged, deleted.
fn counts(v: &serde_json::Value) -> [u64; 5] {
    [
        "created",
        "updated",
        "metadata_only",
        "unchanged",
        "deleted",
    ]
    .map(|k| json_count(v, k))
}

/// The `changes` of a JSON summary as a set of (action, path).
fn change_set(v: &serde_json::Value) -> BTreeSet<(String, String)> {
    json_changes(v).into_iter().collect()
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(a, p)| (a.to_string(), p.to_string()))
        .collect()
}

/// The change lines (`ACTION PATH`) a `-v` or `-n` run printed on stdout.
fn change_lines(r: &RunResult) -> BTreeSet<(String, String)> {
    r.stdout
        .lines()
        .map(|l| {
            let (a, p) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("not a change line: {l:?}\n{}", r.describe()));
            (a.to_string(), p.to_string())
        })
        .collect()
}

/// `snapshot restore ID DST ARGS... --no-progress` without `--json`.
fn restore_human(repo: &Repo, id: &str, dst: &Path, extra: &[&str]) -> RunResult {
    let mut v = vec![os(id), os(dst), os("--no-progress")];
    v.extend(extra.iter().map(os));
    repo.snap("restore", &v)
}

/// A tree with a file, a symlink, nested directories, and entries the tests
/// below turn into something else in DST.
fn build(src: &Path) {
    fixture::write_file(&src.join("keep.txt"), b"kept as is\n");
    fixture::write_file(&src.join("changed.txt"), b"original\n");
    fixture::write_file(&src.join("mode.txt"), b"mode\n");
    fixture::chmod(&src.join("mode.txt"), 0o644);
    fixture::write_file(&src.join("gone.txt"), b"removed from DST\n");
    fixture::symlink("keep.txt", &src.join("link"));
    fixture::write_file(&src.join("sub/inner.txt"), b"inner\n");
    fixture::write_file(&src.join("sub/deeper/leaf.txt"), b"leaf\n");
    fixture::write_file(&src.join("was_file.txt"), b"a file in the snapshot\n");
    fixture::write_file(&src.join("was_dir/in.txt"), b"in a directory\n");
    fixture::set_mtime(&src.join("sub/deeper"), 1_650_000_001, 1);
    fixture::set_mtime(&src.join("sub"), 1_650_000_002, 2);
    fixture::set_mtime(&src.join("was_dir"), 1_650_000_003, 3);
    fixture::set_mtime(src, 1_650_000_004, 4);
}

/// Every entry of [`build`]'s tree, created, the root included.
fn all_created() -> BTreeSet<(String, String)> {
    set(&[
        ("create", "."),
        ("create", "keep.txt"),
        ("create", "changed.txt"),
        ("create", "mode.txt"),
        ("create", "gone.txt"),
        ("create", "link"),
        ("create", "sub"),
        ("create", "sub/inner.txt"),
        ("create", "sub/deeper"),
        ("create", "sub/deeper/leaf.txt"),
        ("create", "was_file.txt"),
        ("create", "was_dir"),
        ("create", "was_dir/in.txt"),
    ])
}

/// Changes DST (a restore of [`build`]'s tree) in every way a restore
/// undoes; returns what a `--delete` restore lists for it.
fn disturb(dst: &Path) -> BTreeSet<(String, String)> {
    fixture::write_file(&dst.join("added.txt"), b"added after the snapshot\n");
    fixture::write_file(&dst.join("added_dir/x/y.txt"), b"also added\n");
    fixture::overwrite_in_place(&dst.join("changed.txt"), b"CHANGED, and longer\n");
    fixture::chmod(&dst.join("mode.txt"), 0o600);
    fs::remove_file(dst.join("gone.txt")).unwrap();
    fs::remove_dir_all(dst.join("sub")).unwrap();
    fs::remove_file(dst.join("was_file.txt")).unwrap();
    fixture::write_file(&dst.join("was_file.txt/z.txt"), b"a directory now\n");
    fs::remove_dir_all(dst.join("was_dir")).unwrap();
    fixture::write_file(&dst.join("was_dir"), b"a file now\n");
    // A leftover of an interrupted run: a real run removes it, uncounted.
    fixture::write_file(&dst.join(".haul-tmp.0123456789abcdef"), b"leftover");
    set(&[
        ("delete", "added.txt"),
        ("delete", "added_dir"),
        ("delete", "added_dir/x"),
        ("delete", "added_dir/x/y.txt"),
        ("update", "changed.txt"),
        ("metadata", "mode.txt"),
        ("create", "gone.txt"),
        ("create", "sub"),
        ("create", "sub/inner.txt"),
        ("create", "sub/deeper"),
        ("create", "sub/deeper/leaf.txt"),
        ("delete", "was_file.txt/z.txt"),
        ("delete", "was_file.txt"),
        ("update", "was_file.txt"),
        ("update", "was_dir"),
        ("create", "was_dir/in.txt"),
        ("metadata", "."),
    ])
}

#[test]
fn restore_delete_removes_what_was_added_and_puts_changed_files_back() {
    let t = tmp();
    let src = t.path().join("src");
    build(&src);
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);
    let dst = t.path().join("dst");
    repo.restore(&id, &dst, &[]).expect_clean();
    let expected = disturb(&dst);

    let r = repo.restore(&id, &dst, &["--delete", "-v"]);
    let v = r.expect_clean();
    assert_eq!(change_set(&v), expected, "{}", r.describe());
    assert_eq!(json_count(&v, "deleted"), 6, "{}", r.describe());
    assert_eq!(json_count(&v, "changes_not_listed"), 0, "{}", r.describe());
    assert!(!exists(&dst.join("added.txt")));
    assert!(!exists(&dst.join("added_dir")));
    assert!(!exists(&dst.join(".haul-tmp.0123456789abcdef")));
    assert_eq!(read(&dst.join("changed.txt")), b"original\n");
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "restore --delete");

    // Restoring again changes nothing.
    let r = repo.restore(&id, &dst, &["--delete", "-v"]);
    let v = r.expect_clean();
    assert_eq!(change_set(&v), BTreeSet::new(), "{}", r.describe());
}

#[test]
fn restore_delete_keeps_excluded_paths_and_restores_no_excluded_entry() {
    let t = tmp();
    let src = t.path().join("src");
    build(&src);
    fixture::write_file(&src.join("x.log"), b"a log in the snapshot\n");
    fixture::write_file(&src.join("sub/y.log"), b"another\n");
    fixture::write_file(&src.join("cache/data"), b"cache in the snapshot\n");
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);
    let excl = ["--exclude", "*.log", "--exclude", "/cache/"];

    // Into a new DST: the excluded entries are not restored.
    let dst = t.path().join("dst");
    let mut args = excl.to_vec();
    args.push("-v");
    let r = repo.restore(&id, &dst, &args);
    let v = r.expect_clean();
    assert!(!exists(&dst.join("x.log")), "{}", r.describe());
    assert!(!exists(&dst.join("sub/y.log")), "{}", r.describe());
    assert!(!exists(&dst.join("cache")), "{}", r.describe());
    assert_eq!(change_set(&v), all_created(), "{}", r.describe());

    // With --delete, excluded entries in DST stay, whatever they hold.
    fixture::write_file(&dst.join("keep.log"), b"not in the snapshot\n");
    fixture::write_file(&dst.join("sub/y.log"), b"not the snapshot's\n");
    fixture::write_file(&dst.join("cache/data"), b"DST's own cache\n");
    fixture::write_file(&dst.join("added.txt"), b"goes\n");
    let mut args = excl.to_vec();
    args.extend(["--delete", "-v"]);
    let r = repo.restore(&id, &dst, &args);
    let v = r.expect_clean();
    assert_eq!(
        change_set(&v),
        set(&[
            ("delete", "added.txt"),
            ("metadata", "."),
            ("metadata", "sub")
        ]),
        "{}",
        r.describe()
    );
    assert_eq!(read(&dst.join("keep.log")), b"not in the snapshot\n");
    assert_eq!(read(&dst.join("sub/y.log")), b"not the snapshot's\n");
    assert_eq!(read(&dst.join("cache/data")), b"DST's own cache\n");
    assert!(!exists(&dst.join("added.txt")));

    // A directory to remove that holds an excluded entry stays, with it,
    // and fails by name; a dry run says so too, and touches nothing.
    fixture::write_file(&dst.join("old/a.log"), b"excluded\n");
    let before = Untouched::record(&dst);
    let mut args = excl.to_vec();
    args.extend(["--delete", "-n"]);
    let r = repo.restore(&id, &dst, &args);
    r.expect_code(3);
    assert_eq!(json_paths(&r.json(), "failed"), ["old"], "{}", r.describe());
    before.assert_unchanged("restore -n --delete --exclude");
    let mut args = excl.to_vec();
    args.push("--delete");
    let r = repo.restore(&id, &dst, &args);
    r.expect_code(3);
    let v = r.json();
    assert_eq!(json_paths(&v, "failed"), ["old"], "{}", r.describe());
    assert!(
        v["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("excluded"),
        "{}",
        r.describe()
    );
    assert_eq!(read(&dst.join("old/a.log")), b"excluded\n");
}

#[test]
fn restore_dry_run_on_an_existing_dst_touches_nothing_and_lists_what_a_restore_does() {
    let t = tmp();
    let src = t.path().join("src");
    build(&src);
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);
    let dst = t.path().join("dst");
    repo.restore(&id, &dst, &[]).expect_clean();
    let expected = disturb(&dst);
    let before = Untouched::record(&dst);

    let r = repo.restore(&id, &dst, &["--delete", "-n"]);
    let dry = r.expect_clean();
    assert_eq!(dry["dry_run"], true, "{}", r.describe());
    assert_eq!(change_set(&dry), expected, "{}", r.describe());
    assert_eq!(json_count(&dry, "bytes_copied"), 0, "{}", r.describe());
    before.assert_unchanged("restore --delete -n");

    // Without --delete nothing would be deleted, and the directory in the
    // place of a file fails, as it would in a real run.
    let r = repo.restore(&id, &dst, &["-n"]);
    r.expect_code(3);
    let v = r.json();
    assert_eq!(
        json_paths(&v, "failed"),
        ["was_file.txt"],
        "{}",
        r.describe()
    );
    assert_eq!(json_count(&v, "deleted"), 0, "{}", r.describe());
    before.assert_unchanged("restore -n");

    // The real run does what the dry run listed, and counts the same.
    let r = repo.restore(&id, &dst, &["--delete", "-v"]);
    let real = r.expect_clean();
    assert_eq!(change_set(&real), expected, "{}", r.describe());
    assert_eq!(counts(&real), counts(&dry), "{}", r.describe());
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "restore after -n");
}

#[test]
fn restore_dry_run_into_a_missing_dst_creates_nothing() {
    let t = tmp();
    let src = t.path().join("src");
    build(&src);
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);
    let top = t.path().join("no");
    let dst = top.join("such/dst");

    let r = repo.restore(&id, &dst, &["-n"]);
    let dry = r.expect_clean();
    assert_eq!(change_set(&dry), all_created(), "{}", r.describe());
    assert!(!exists(&top), "a dry run created {}", top.display());

    // --path: the same, below parents that do not exist either.
    let r = repo.restore(&id, &dst, &["-n", "--path", "sub/deeper"]);
    let v = r.expect_clean();
    assert_eq!(
        change_set(&v),
        set(&[
            ("create", "."),
            ("create", "sub/deeper"),
            ("create", "sub/deeper/leaf.txt")
        ]),
        "{}",
        r.describe()
    );
    assert!(!exists(&top));

    // A snapshot of one file, restored to a path whose parent is missing.
    let one = repo.create_id(&[&src.join("keep.txt")], &[]);
    let r = repo.restore(&one, &top.join("one/keep.copy"), &["-n"]);
    let v = r.expect_clean();
    assert_eq!(
        change_set(&v),
        set(&[("create", "keep.copy")]),
        "{}",
        r.describe()
    );
    assert!(!exists(&top));

    // The real run creates exactly what the dry run listed.
    let r = repo.restore(&id, &dst, &["-v"]);
    let real = r.expect_clean();
    assert_eq!(change_set(&real), all_created(), "{}", r.describe());
    assert_eq!(counts(&real), counts(&dry), "{}", r.describe());
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "restore after -n");
}

#[test]
fn restore_dry_run_and_verbose_print_one_line_per_change() {
    let t = tmp();
    let src = t.path().join("src");
    build(&src);
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);
    let dst = t.path().join("dst");

    let r = restore_human(&repo, &id, &dst, &["-n", "-v"]);
    r.expect_code(0);
    assert_eq!(change_lines(&r), all_created(), "{}", r.describe());
    assert!(r.stderr.contains("dry run: "), "{}", r.describe());
    assert!(!exists(&dst));

    let r = restore_human(&repo, &id, &dst, &["-v"]);
    r.expect_code(0);
    assert_eq!(change_lines(&r), all_created(), "{}", r.describe());
    assert!(!r.stderr.contains("dry run"), "{}", r.describe());
    let expected = disturb(&dst);
    let before = Untouched::record(&dst);
    let r = restore_human(&repo, &id, &dst, &["-n", "--delete"]);
    r.expect_code(0);
    assert_eq!(change_lines(&r), expected, "{}", r.describe());
    before.assert_unchanged("restore -n --delete, human output");

    // Without -n or -v, no change lines.
    let r = restore_human(&repo, &id, &dst, &["--delete"]);
    r.expect_code(0);
    assert_eq!(r.stdout, "", "{}", r.describe());
}

#[test]
fn copy_dry_run_counts_what_the_real_run_does() {
    let t = tmp();
    let src = t.path().join("src");
    build(&src);
    // Into a missing DST: the root is created too.
    let dst = t.path().join("dst");
    let r = haul_copy(&["-n"], &src, &dst);
    let dry = r.expect_clean();
    assert!(!exists(&dst));
    let r = haul_copy(&["-v"], &src, &dst);
    let real = r.expect_clean();
    assert_eq!(change_set(&real), all_created(), "{}", r.describe());
    assert_eq!(change_set(&dry), change_set(&real), "{}", r.describe());
    assert_eq!(counts(&dry), counts(&real), "{}", r.describe());

    // A directory to delete counts everything in it.
    fixture::write_file(&dst.join("added_dir/x/y.txt"), b"added\n");
    let before = Untouched::record(&dst);
    let r = haul_copy(&["-n", "--delete"], &src, &dst);
    let dry = r.expect_clean();
    before.assert_unchanged("copy -n --delete");
    let r = haul_copy(&["-v", "--delete"], &src, &dst);
    let real = r.expect_clean();
    assert_eq!(json_count(&real, "deleted"), 3, "{}", r.describe());
    assert_eq!(change_set(&dry), change_set(&real), "{}", r.describe());
    assert_eq!(counts(&dry), counts(&real), "{}", r.describe());
}

#[test]
fn dry_runs_relink_every_name_of_a_hardlinked_file_a_real_run_rewrites() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("h1"), b"linked\n");
    fixture::hardlink(&src.join("h1"), &src.join("h2"));
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);
    let rdst = t.path().join("restored");
    repo.restore(&id, &rdst, &[]).expect_clean();
    let cdst = t.path().join("copied");
    haul_copy(&[], &src, &cdst).expect_clean();
    let both = set(&[("update", "h1"), ("update", "h2")]);
    for dst in [&rdst, &cdst] {
        // Both names see the new content: the real run rewrites the first
        // name as a new inode and links the second to it.
        fixture::overwrite_in_place(&dst.join("h1"), b"changed, longer\n");
        let before = Untouched::record(dst);
        let run = |extra: &str| {
            if dst == &rdst {
                repo.restore(&id, dst, &[extra])
            } else {
                haul_copy(&[extra], &src, dst)
            }
        };
        let dry = run("-n");
        before.assert_unchanged("a dry run over a hardlinked pair");
        let real = run("-v");
        let (d, r) = (dry.expect_clean(), real.expect_clean());
        let files = |v: &serde_json::Value| -> BTreeSet<(String, String)> {
            change_set(v)
                .into_iter()
                .filter(|(_, p)| p != ".")
                .collect()
        };
        assert_eq!(files(&d), both, "{}", dry.describe());
        assert_eq!(files(&r), both, "{}", real.describe());
        assert_eq!(read(&dst.join("h2")), b"linked\n");
    }
}

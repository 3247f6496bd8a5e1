//! End-to-end tests of snapshot edge cases: snapshots of single files, read-only
//! repositories (`--no-lock`), locks from other hosts, a repository inside the source,
//! and retention policies that keep nothing.
//!
//! Run as root (CI does): some tests run haul as nobody.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use haul_tests::fixture;
use haul_tests::repo::{
    jstr, ju64, os, pack_blobs, rfc3339, stdout_json, write_named_by_hash, Repo,
};
use haul_tests::util::{ci_contains, tmp, NOBODY};
use haul_tests::{exists, read, require_root};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------
// Retention policies of only zeros
// ---------------------------------------------------------------------------------------

#[test]
fn all_zero_retention_policy_is_a_usage_error() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"x");
    let repo = Repo::new(t.path().join("repo"));
    let day = 86_400;
    let base = now() - 10 * day;
    for i in 0..3 {
        fixture::write_file(&src.join("f"), format!("v{i}").as_bytes());
        repo.create_id(&[&src], &["--time", &rfc3339(base + i * day)]);
    }
    for policy in [
        &["--keep-daily", "0"][..],
        &["--keep-last", "0"],
        &[
            "--keep-last",
            "0",
            "--keep-monthly",
            "0",
            "--keep-interval",
            "1h:0",
        ],
    ] {
        let mut args: Vec<_> = policy.iter().map(os).collect();
        args.push(os("--json"));
        let r = repo.snap("forget", &args);
        r.expect_code(2);
        assert!(
            ci_contains(&r.stderr, "keeps no snapshot") && ci_contains(&r.stderr, "no policy"),
            "the refusal must say that the policy would forget everything:\n{}",
            r.describe()
        );
        assert_eq!(repo.list_ids().len(), 3, "{policy:?} removed snapshots");
    }
    // A zero beside a real rule is fine: the rule keeps what it keeps.
    let (keep, remove) = repo.forget(&["--keep-last", "0", "--keep-daily", "2"]);
    assert_eq!((keep.len(), remove.len()), (2, 1));
    assert_eq!(repo.list_ids().len(), 2);
}

#[test]
fn help_names_calendar_months_and_years() {
    let r = haul_tests::run_haul(["snapshot", "forget", "--help"]);
    r.expect_code(0);
    assert!(
        !r.stdout.contains("30-day") && !r.stdout.contains("365-day"),
        "{}",
        r.describe()
    );
    assert!(
        r.stdout.contains("calendar months") && r.stdout.contains("calendar years"),
        "{}",
        r.describe()
    );
}

// ---------------------------------------------------------------------------------------
// Read-only repositories: --no-lock
// ---------------------------------------------------------------------------------------

/// `chmod -R a+rX,a-w`: everyone may read, nobody but root may write.
fn make_read_only(root: &Path) {
    for e in walkdir(root) {
        let m = fs::symlink_metadata(&e).unwrap();
        let mode = if m.is_dir() { 0o555 } else { 0o444 };
        fixture::chmod(&e, mode);
    }
}

fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    if fs::symlink_metadata(root).unwrap().is_dir() {
        for e in fs::read_dir(root).unwrap() {
            out.extend(walkdir(&e.unwrap().path()));
        }
    }
    out
}

#[test]
fn read_only_repository_is_read_with_no_lock() {
    require_root("read_only_repository_is_read_with_no_lock");
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("a"), b"alpha");
    fixture::write_file(&src.join("d/b"), &fixture::random_bytes("ro", 300_000));
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);
    make_read_only(&repo.root);
    let out = t.path().join("out");
    fixture::mkdir(&out);
    fixture::lchown(&out, NOBODY.0, NOBODY.1);
    let ro = Repo::new_as(&repo.root, NOBODY.0, NOBODY.1);

    // Without --no-lock: refused, with the advice, and DST is not created.
    let dst = out.join("dst");
    let r = ro.restore(&id, &dst, &[]);
    r.expect_code(1);
    assert!(
        r.stderr.contains("Permission denied") && r.stderr.contains("use --no-lock"),
        "the refusal must advise --no-lock:\n{}",
        r.describe()
    );
    assert!(!exists(&dst), "a refused restore left DST behind");
    let r = ro.check(false, &[]);
    r.expect_code(1);
    assert!(r.stderr.contains("--no-lock"), "{}", r.describe());

    // With it: every read-only command works.
    ro.restore(&id, &dst, &["--no-lock", "--no-owner"])
        .expect_clean();
    assert_eq!(read(&dst.join("a")), b"alpha");
    assert_eq!(read(&dst.join("d/b")), read(&src.join("d/b")));
    ro.check(true, &["--no-lock"]).expect_code(0);
    for args in [
        vec![os("list"), os("--no-lock")],
        vec![os("show"), os(&id), os("--no-lock")],
        vec![os("ls"), os(&id), os("--no-lock")],
        vec![os("diff"), os(&id), os(&id), os("--no-lock")],
    ] {
        ro.snap(&args[0].to_string_lossy(), &args[1..])
            .expect_code(0);
    }
    // Commands that write have no such flag; nothing was written.
    let r = ro.snap("prune", &[os("--no-lock")]);
    r.expect_code(2);
    assert!(fs::read_dir(repo.root.join("locks"))
        .unwrap()
        .next()
        .is_none());
}

// ---------------------------------------------------------------------------------------
// Locks from other hosts
// ---------------------------------------------------------------------------------------

/// A lock record of another host, with an optional refresh time (records of older haul
/// versions have none).
fn foreign_lock(repo: &Path, time: &str, refreshed: Option<&str>, exclusive: bool) -> PathBuf {
    let mut v = serde_json::json!({
        "hostname": "some-other-host.invalid",
        "username": "alice",
        "pid": 4321,
        "time": time,
        "exclusive": exclusive,
    });
    if let Some(r) = refreshed {
        v["refreshed"] = serde_json::json!(r);
    }
    let mut bytes = serde_json::to_vec(&v).unwrap();
    bytes.push(b'\n');
    write_named_by_hash(&repo.join("locks"), &bytes)
}

#[test]
fn a_foreign_lock_not_refreshed_for_30_minutes_is_broken() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"data");
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);

    // A 2020 lock in the old format (no refresh time) and one refreshed long ago.
    let old = "2020-03-01T10:00:00Z";
    let locks = [
        foreign_lock(&repo.root, old, None, true),
        foreign_lock(&repo.root, old, Some(&rfc3339(now() - 31 * 60)), true),
    ];
    let r = repo.create_raw(&[&src], &[]);
    r.expect_code(0);
    assert!(
        ci_contains(&r.stderr, "stale lock")
            && r.stderr.contains("some-other-host.invalid")
            && r.stderr.contains("2020-03-01"),
        "breaking the stale locks must be reported:\n{}",
        r.describe()
    );
    for l in &locks {
        assert!(!exists(l), "stale lock {} still there", l.display());
    }
    assert!(repo.id_files("locks").is_empty(), "locks left behind");

    // Restore and check break one too.
    for run in 0..2 {
        let l = foreign_lock(&repo.root, old, None, true);
        let r = if run == 0 {
            repo.restore(&id, &t.path().join("dst"), &[])
        } else {
            repo.check(false, &[])
        };
        r.expect_code(0);
        assert!(ci_contains(&r.stderr, "stale lock"), "{}", r.describe());
        assert!(!exists(&l));
    }
}

#[test]
fn a_refreshed_foreign_lock_still_blocks() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"data");
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&src], &[]);

    // Taken in 2020 but refreshed a minute ago: its holder is alive.
    let lock = foreign_lock(
        &repo.root,
        "2020-03-01T10:00:00Z",
        Some(&rfc3339(now() - 60)),
        true,
    );
    for r in [
        repo.create_raw(&[&src], &[]),
        repo.restore(&id, &t.path().join("dst"), &[]),
    ] {
        r.expect_code(1);
        assert!(
            r.stderr.contains("some-other-host.invalid")
                && r.stderr.contains("--force-unlock")
                && ci_contains(&r.stderr, "refreshed"),
            "the refusal must name the holder and --force-unlock:\n{}",
            r.describe()
        );
        assert!(exists(&lock), "a live foreign lock was removed");
        assert_eq!(repo.id_files("locks").len(), 1, "own lock left behind");
    }
    assert!(!exists(&t.path().join("dst")));
    assert_eq!(repo.list_ids().len(), 1);
    // A fresh record without a refresh time blocks as well.
    fs::remove_file(&lock).unwrap();
    foreign_lock(&repo.root, &rfc3339(now()), None, true);
    repo.create_raw(&[&src], &[]).expect_code(1);
    repo.create_raw(&[&src], &["--force-unlock"]).expect_code(0);
    assert!(repo.id_files("locks").is_empty());
}

// ---------------------------------------------------------------------------------------
// Snapshots of a single file
// ---------------------------------------------------------------------------------------

fn ls_paths(repo: &Repo, id: &str, path: Option<&str>) -> Vec<(String, String)> {
    repo.ls(id, path)
        .iter()
        .map(|e| (jstr(e, "path").to_string(), jstr(e, "kind").to_string()))
        .collect()
}

#[test]
fn a_snapshot_of_one_file_lists_and_restores() {
    let t = tmp();
    let conf = t.path().join("etc/app.conf");
    fixture::write_file(&conf, b"key = value\n");
    fixture::chmod(&conf, 0o640);
    fixture::set_mtime(&conf, 1_600_000_000, 5);
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&conf], &[]);
    repo.check(true, &[]).expect_code(0);

    let want = vec![("app.conf".to_string(), "file".to_string())];
    assert_eq!(ls_paths(&repo, &id, None), want);
    assert_eq!(ls_paths(&repo, &id, Some("app.conf")), want);
    let ls = repo.ls(&id, None);
    assert_eq!(ju64(&ls[0], "size"), 12);
    assert_eq!(ju64(&ls[0], "mode"), 0o640);

    let same = |p: &Path| {
        assert_eq!(read(p), b"key = value\n", "{}", p.display());
        let m = fs::metadata(p).unwrap();
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o7777, 0o640, "{}", p.display());
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 5));
    };
    // DST missing (and its parent too): DST is the file's new name.
    let dst = t.path().join("out/new/app.conf.restored");
    repo.restore(&id, &dst, &[]).expect_clean();
    same(&dst);
    // Again over it: nothing to do.
    let v = repo.restore(&id, &dst, &[]).expect_clean();
    assert_eq!(ju64(&v, "unchanged"), 1, "{v}");
    // DST an existing directory: the file lands inside it.
    let dir = t.path().join("outdir");
    fixture::mkdir(&dir);
    repo.restore(&id, &dir, &[]).expect_clean();
    same(&dir.join("app.conf"));
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    // --path takes the name ls shows; it lands at that place under DST.
    let sub = t.path().join("sub");
    repo.restore(&id, &sub, &["--path", "app.conf"])
        .expect_clean();
    same(&sub.join("app.conf"));
    // A refused restore leaves no DST behind.
    let none = t.path().join("none");
    let r = repo.restore(&id, &none, &["--path", "nosuch"]);
    r.expect_code(1);
    assert!(!exists(&none), "{}", r.describe());

    // diff sees the file change.
    fixture::write_file(&conf, b"key = other\n");
    let id2 = repo.create_id(&[&conf], &[]);
    let d = repo.diff(&id, &id2);
    assert!(
        d.contains(&("app.conf".to_string(), "content".to_string())),
        "{d:?}"
    );
    assert!(repo.diff(&id2, &id2).is_empty());
    repo.check(true, &[]).expect_code(0);
}

#[test]
fn a_snapshot_of_a_directory_and_a_file_restores_both() {
    let t = tmp();
    let dir = t.path().join("srcdir");
    fixture::write_file(&dir.join("x"), b"x");
    let file = t.path().join("other/app.conf");
    fixture::write_file(&file, b"conf");
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&dir, &file], &[]);
    let listed = ls_paths(&repo, &id, None);
    for p in ["app.conf", "srcdir", "srcdir/x"] {
        assert!(listed.iter().any(|(l, _)| l == p), "{p} not in {listed:?}");
    }
    let dst = t.path().join("dst");
    repo.restore(&id, &dst, &[]).expect_clean();
    assert_eq!(read(&dst.join("app.conf")), b"conf");
    assert_eq!(read(&dst.join("srcdir/x")), b"x");
    repo.check(false, &[]).expect_code(0);
}

// ---------------------------------------------------------------------------------------
// A repository inside the source
// ---------------------------------------------------------------------------------------

#[test]
fn a_repository_inside_the_source_is_left_out() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("a"), &fixture::random_bytes("in-src", 200_000));
    fixture::write_file(&src.join("backups/keep"), b"kept");
    // Named through a symlink and `..` the first time: found by inode, not by path.
    fixture::symlink(&src, &t.path().join("link"));
    let via_link = Repo::new(t.path().join("link/backups/../backups/repo"));
    let repo = Repo::new(src.join("backups/repo"));

    let mut sizes = Vec::new();
    for (i, r) in [&via_link, &repo].into_iter().enumerate() {
        let out = r.create_raw(&[&src], &[]);
        out.expect_code(0);
        assert!(
            out.stderr.contains("backups/repo") && ci_contains(&out.stderr, "repository"),
            "run {i}: leaving the repository out must be reported:\n{}",
            out.describe()
        );
        let v = stdout_json(&out);
        sizes.push((ju64(&v, "bytes"), ju64(&v, "files"), ju64(&v, "dirs")));
        let id = jstr(&v, "id").to_string();
        let listed: Vec<String> = repo
            .ls(&id, None)
            .iter()
            .map(|e| jstr(e, "path").to_string())
            .collect();
        assert_eq!(listed, ["a", "backups", "backups/keep"], "run {i}");
    }
    assert_eq!(sizes[0], sizes[1], "the second snapshot grew");
    // The files a and backups/keep; the directories src and backups.
    assert_eq!(sizes[0], (200_004, 2, 2));

    // The repository itself as a source is refused.
    let r = repo.create_raw(&[&repo.root], &[]);
    assert_ne!(r.code, 0, "{}", r.describe());
    assert!(
        ci_contains(&r.stderr, "repository itself"),
        "{}",
        r.describe()
    );
    assert_eq!(repo.list_ids().len(), 2);
}

#[test]
fn check_names_the_damaged_file_of_a_one_file_snapshot() {
    let t = tmp();
    let file = t.path().join("disk.img");
    fixture::write_file(&file, &fixture::random_bytes("one-file", 600_000));
    let repo = Repo::new(t.path().join("repo"));
    let id = repo.create_id(&[&file], &[]);
    // Flip a byte in the middle of the file's largest data blob.
    let pack = repo.packs().pop().expect("a pack");
    let mut bytes = read(&pack);
    let blob = pack_blobs(&bytes)
        .into_iter()
        .filter(|b| b.kind == 0)
        .max_by_key(|b| b.stored_len)
        .expect("a data blob");
    let at = (blob.offset + blob.stored_len / 2) as usize;
    bytes[at] ^= 0xff;
    fixture::chmod(&pack, 0o644);
    fs::write(&pack, &bytes).unwrap();
    let r = repo.check(true, &[]);
    r.expect_code(5);
    assert!(
        r.stderr
            .contains(&format!("damaged file: disk.img in snapshot {}", &id[..8])),
        "check must name the file as ls does:\n{}",
        r.describe()
    );
}

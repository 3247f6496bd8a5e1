//! A full disk, for real: each test mounts a small tmpfs of its own and runs haul
//! against it. Whatever writes (`copy`, `snapshot create`, `snapshot restore`) must stop
//! with an error that names the path and the cause, exit with its documented code, not
//! panic or hang, and leave nothing half-written under a final name; once there is room,
//! running it again completes the job.
//!
//! Run as root (CI does): mounting a tmpfs needs root (CAP_SYS_ADMIN).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use haul_tests::fixture;
use haul_tests::repo::{assert_no_panic, jarr, jstr, ju64, os, Repo};
use haul_tests::util::tmp;
use haul_tests::{
    assert_trees_equal, haul_copy, require_root, walk, CompareOpts, Kind, RunResult, Tree,
};

const ENOSPC: &str = "No space left on device";

/// A tmpfs of a given size mounted on a temporary directory, unmounted on drop
/// (also used by the remote tests).
pub(crate) struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    pub(crate) fn mount(kib: u64) -> SmallFs {
        let dir = tempfile::Builder::new()
            .prefix("haul-full-")
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let opt = format!("size={kib}k,mode=0755");
        mount(&["-t", "tmpfs", "-o", &opt, "tmpfs"], dir.path());
        SmallFs { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the filesystem room (a tmpfs can be resized in place).
    fn resize(&self, kib: u64) {
        mount(&["-o", &format!("remount,size={kib}k")], self.path());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn mount(args: &[&str], at: &Path) {
    let out = Command::new("mount")
        .args(args)
        .arg(at)
        .output()
        .unwrap_or_else(|e| panic!("running mount (util-linux's `mount` must be installed): {e}"));
    assert!(
        out.status.success(),
        "mount {args:?} {}: {}; these tests need root with CAP_SYS_ADMIN to mount a small tmpfs",
        at.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The full fixture (every kind of entry and metadata) plus `bulk/`: `n` random files of
/// 100 KiB, which compress to nothing smaller.
fn source(root: &Path, n: usize) {
    fixture::build_full_as_root(root);
    for i in 0..n {
        fixture::write_file(
            &root.join(format!("bulk/f{i:03}")),
            &fixture::random_bytes(&format!("full-{i}"), 100 << 10),
        );
    }
}

/// Every regular file in `dst` has exactly the content of the file at its path in `src`:
/// nothing is half-written under a final name. Every entry of `dst` is one of `src`'s.
fn nothing_half_written(src: &Tree, dst: &Tree, context: &str) {
    for (rel, d) in dst {
        let Some(s) = src.get(rel) else {
            panic!("{context}: {} is in DST but not in SRC", rel.display());
        };
        if d.kind == Kind::File && s.kind == Kind::File {
            assert_eq!(
                (d.size, &d.hash),
                (s.size, &s.hash),
                "{context}: {} is under its final name with other content",
                rel.display()
            );
        }
    }
}

/// The `failed` entries of a `--json` report: each names a path and says the disk is full.
fn failed_for_want_of_space(v: &serde_json::Value, context: &str) -> BTreeSet<String> {
    let failed = jarr(&v["failed"]);
    assert!(!failed.is_empty(), "{context}: nothing failed: {v}");
    failed
        .iter()
        .map(|e| {
            assert!(
                jstr(e, "error").contains(ENOSPC),
                "{context}: a failure that does not say the disk is full: {e}"
            );
            jstr(e, "path").to_string()
        })
        .collect()
}

/// Runs `write` (a copy or a restore of `src`'s tree into the directory it is given) into
/// a 1 MiB filesystem, which it fills, and then again once the filesystem has room.
fn fills_then_completes(src: &Path, what: &str, write: impl Fn(&Path) -> RunResult) {
    let fs = SmallFs::mount(1024);
    let dst = fs.path().join("dst");

    let r = write(&dst);
    assert_no_panic(&r);
    r.expect_code(3);
    let context = format!("{what} into a full disk");
    let failed = failed_for_want_of_space(&r.json(), &context);
    assert!(
        failed.iter().any(|p| p.starts_with("bulk/")),
        "{context}: no bulk file failed: {failed:?}"
    );
    let want = walk(src);
    nothing_half_written(&want, &walk(&dst), &context);

    fs.resize(16 << 10);
    write(&dst).expect_clean();
    assert_trees_equal(
        &want,
        &walk(&dst),
        &CompareOpts::default(),
        &format!("{what} once there is room"),
    );
}

#[test]
fn copy_into_a_full_disk_fails_cleanly_and_completes_with_room() {
    require_root("copy_into_a_full_disk_fails_cleanly_and_completes_with_room");
    let t = tmp();
    let src = t.path().join("src");
    source(&src, 40);
    fills_then_completes(&src, "copy", |dst| haul_copy(&[], &src, dst));
}

#[test]
fn restore_into_a_full_disk_fails_cleanly_and_completes_with_room() {
    require_root("restore_into_a_full_disk_fails_cleanly_and_completes_with_room");
    let t = tmp();
    let src = t.path().join("src");
    source(&src, 40);
    let repo = Repo::new(t.path().join("repo"));
    let id = jstr(&repo.create(&[&src], &[]), "id").to_string();
    fills_then_completes(&src, "restore", |dst| repo.restore(&id, dst, &[]));
}

/// Files under `dir` (recursively) that are not complete packs of `repo`.
fn non_packs_under(repo: &Repo, dir: &Path) -> Vec<PathBuf> {
    let packs: BTreeSet<PathBuf> = repo.packs().into_iter().collect();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if !packs.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn create_into_a_full_repository_fails_cleanly_and_reuses_its_packs() {
    require_root("create_into_a_full_repository_fails_cleanly_and_reuses_its_packs");
    let t = tmp();
    let src = t.path().join("src");
    // 12 MiB that does not compress, in packs of 1 MiB, on a 6 MiB filesystem: some
    // packs are complete before the disk fills.
    source(&src, 120);
    let fs = SmallFs::mount(6 << 10);
    let repo = Repo::new(fs.path().join("repo"));
    repo.run(vec![os("repo"), os("init"), os("--pack-size"), os("1")])
        .expect_code(0);

    let r = repo.create_raw(&[&src], &[]);
    r.expect_code(1);
    assert!(
        r.stderr.contains(ENOSPC) && r.stderr.contains(&*repo.root.to_string_lossy()),
        "the error names neither the repository's file nor the cause:\n{}",
        r.describe()
    );
    let packs_before: BTreeSet<PathBuf> = repo.packs().into_iter().collect();
    assert!(
        !packs_before.is_empty(),
        "no pack was complete before the disk filled; the test needs some"
    );
    assert!(
        repo.id_files("snapshots").is_empty(),
        "a snapshot was recorded"
    );
    let strays = non_packs_under(&repo, &repo.root.join("data"));
    assert!(
        strays.is_empty(),
        "files left in data/ that are not complete packs: {strays:?}"
    );
    repo.check(true, &[]).expect_code(0);

    fs.resize(64 << 10);
    let v = repo.create(&[&src], &[]);
    let packs_after: BTreeSet<PathBuf> = repo.packs().into_iter().collect();
    let lost: Vec<&PathBuf> = packs_before.difference(&packs_after).collect();
    assert!(
        lost.is_empty(),
        "packs of the failed run were deleted: {lost:?}"
    );
    // Random data compresses to about itself, so the packs kept hold about `kept`
    // bytes of it: the rerun must not have added them again.
    let kept: u64 = packs_before
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    let (read, new) = (ju64(&v, "bytes_read"), ju64(&v, "bytes_new"));
    eprintln!(
        "{} packs ({kept} bytes) kept from the failed run; the rerun read {read}, added {new}",
        packs_before.len()
    );
    assert!(
        new + kept / 2 < read,
        "the rerun added {new} of {read} bytes read, beside {kept} bytes of packs kept: \
         the failed run's packs were not reused"
    );
    repo.check(true, &[]).expect_code(0);
    let dst = t.path().join("dst");
    repo.restore(jstr(&v, "id"), &dst, &[]).expect_clean();
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &CompareOpts::default(),
        "restore of the snapshot made once there was room",
    );
}

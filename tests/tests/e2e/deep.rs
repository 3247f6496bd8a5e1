//! Trees deeper than any stack or open-file budget would allow a recursive
//! walk (issue 14, point 11): a chain of 10,000 directories, which any
//! local user can plant to stop a nightly backup. Paths this deep exceed
//! PATH_MAX, so the tree is built and checked here one level at a time
//! through directory handles, independently of haul.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use haul_tests::util::tmp;
use haul_tests::{haul_copy, json_count};

const DEPTH: usize = 10_000;

/// `name` inside the directory `dir` is open on, as a path through
/// /proc, so that no path is ever longer than a few dozen bytes.
fn at(dir: &File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

fn open_dir_at(dir: &File, name: &str) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(at(dir, name))
}

/// `root/d/d/.../d/leaf` with `depth` directories named `d`, each 0o751
/// with mtime 1_600_000_000 + level, and `leaf` holding "bottom\n".
fn build_chain(root: &Path, depth: usize) {
    let mut dir = File::open(root).unwrap();
    for _ in 0..depth {
        std::fs::DirBuilder::new()
            .mode(0o751)
            .create(at(&dir, "d"))
            .unwrap();
        // The umask may have taken bits away.
        std::fs::set_permissions(at(&dir, "d"), std::fs::Permissions::from_mode(0o751)).unwrap();
        dir = open_dir_at(&dir, "d").unwrap();
    }
    std::fs::write(at(&dir, "leaf"), b"bottom\n").unwrap();
    // Directory mtimes last, bottom up, through a fresh descent.
    set_mtimes(root, depth);
}

fn set_mtimes(root: &Path, depth: usize) {
    // Walk down again keeping every handle would need `depth` fds; go down
    // once per 1,000 levels instead and set those levels' times bottom up.
    let mut level = depth;
    while level > 0 {
        let lo = level.saturating_sub(1000);
        let mut dir = File::open(root).unwrap();
        for _ in 0..lo {
            dir = open_dir_at(&dir, "d").unwrap();
        }
        let mut handles = Vec::new();
        for _ in lo..level {
            dir = open_dir_at(&dir, "d").unwrap();
            handles.push(dir.try_clone().unwrap());
        }
        for (i, h) in handles.iter().enumerate().rev() {
            let t = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000 + (lo + i) as u64, 7);
            h.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
                .unwrap();
        }
        level = lo;
    }
}

/// Checks that `root` holds exactly the chain `build_chain` made.
fn check_chain(root: &Path, depth: usize) {
    let mut dir = File::open(root).unwrap();
    for level in 0..depth {
        let names: Vec<String> = list(&dir);
        assert_eq!(names, ["d"], "level {level}");
        dir = open_dir_at(&dir, "d").unwrap_or_else(|e| panic!("level {level}: {e}"));
        let st = dir.metadata().unwrap();
        assert_eq!(st.mode() & 0o7777, 0o751, "mode at level {level}");
        assert_eq!(
            (st.mtime(), st.mtime_nsec()),
            (1_600_000_000 + level as i64, 7),
            "mtime at level {level}"
        );
    }
    assert_eq!(list(&dir), ["leaf"]);
    let leaf = std::fs::read(at(&dir, "leaf")).unwrap();
    assert_eq!(leaf, b"bottom\n");
}

fn list(dir: &File) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `rm -rf`, which handles any depth (std's remove_dir_all recurses).
fn remove(p: &Path) {
    let ok = Command::new("rm")
        .arg("-rf")
        .arg(p)
        .status()
        .unwrap()
        .success();
    assert!(ok, "rm -rf {}", p.display());
}

#[test]
fn copy_of_a_10000_level_chain() {
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    std::fs::create_dir(&src).unwrap();
    build_chain(&src, DEPTH);
    let v = haul_copy(&["--verify"], &src, &dst).expect_clean();
    assert_eq!(json_count(&v["source"], "dirs"), DEPTH as u64 + 1);
    check_chain(&dst, DEPTH);
    // A re-run finds everything in place.
    let v = haul_copy(&[], &src, &dst).expect_clean();
    assert_eq!(json_count(&v, "created"), 0);
    check_chain(&dst, DEPTH);
    remove(&src);
    remove(&dst);
}

/// The leaf's path in the chain, as `snapshot ls` and `diff` name it.
fn leaf_path(depth: usize) -> String {
    let mut p = "d/".repeat(depth);
    p.push_str("leaf");
    p
}

#[test]
fn snapshot_commands_on_a_10000_level_chain() {
    use haul_tests::repo::{os, Repo};
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_chain(&src, DEPTH);
    let repo = Repo::new(t.path().join("repo"));
    let v = repo.create(&[&src], &[]);
    assert_eq!(json_count(&v, "dirs"), DEPTH as u64 + 1, "{v}");
    let id1 = v["id"].as_str().unwrap().to_string();

    // ls reaches the bottom.
    let ls = repo.ls(&id1, None);
    assert_eq!(ls.len(), DEPTH + 1);
    assert!(ls.iter().any(|e| e["path"] == leaf_path(DEPTH)));

    // A change at the bottom: a second create (with the first as parent),
    // and diff names exactly that file.
    let mut dir = File::open(&src).unwrap();
    for _ in 0..DEPTH {
        dir = open_dir_at(&dir, "d").unwrap();
    }
    std::fs::write(at(&dir, "leaf"), b"changed\n").unwrap();
    drop(dir);
    let id2 = repo.create_id(&[&src], &[]);
    let diff = repo.diff(&id1, &id2);
    assert!(
        diff.contains(&(leaf_path(DEPTH), "content".to_string())),
        "{diff:?}"
    );

    // check, restore (compared level by level), forget and prune, check.
    repo.check(true, &[]).expect_code(0);
    let dst = t.path().join("dst");
    repo.restore(&id1, &dst, &[]).expect_clean();
    check_chain(&dst, DEPTH);
    remove(&dst);
    let r = repo.snap("forget", &[os(&id1), os("--json")]);
    r.expect_code(0);
    let r = repo.snap("prune", &[os("--json")]);
    r.expect_code(0);
    repo.check(true, &[]).expect_code(0);
    assert_eq!(repo.list().len(), 1);
    remove(&src);
}

#[test]
fn delete_of_a_10000_level_chain() {
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    build_chain(&dst, DEPTH);
    let v = haul_copy(&["--delete"], &src, &dst).expect_clean();
    // DEPTH directories and the leaf.
    assert_eq!(json_count(&v, "deleted"), DEPTH as u64 + 1);
    assert_eq!(list(&File::open(&dst).unwrap()), Vec::<String>::new());
}

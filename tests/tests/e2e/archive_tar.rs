//! End-to-end tests of `haul archive` with `.tar` and `.tar.zst`: exact
//! round trips of a tree holding every metadata kind, GNU tar reading
//! haul's archives and haul reading GNU tar's, streams on stdin and stdout,
//! and the extraction modes (`--path`, `--exclude`, `--delete`, `-n`), the
//! permission policy for unprivileged users.
//!
//! Trees are compared with the independent walker from `haul_tests`.

use std::path::Path;
use std::process::{Command, Stdio};

use haul_tests::fixture;
use haul_tests::repo::{assert_no_panic, os, stdout_json};
use haul_tests::util::{all, tmp, tmp_for_nobody, NOBODY};
use haul_tests::{
    assert_trees_equal, exists, haul_bin, json_count, json_paths, read, run_haul, run_haul_as,
    walk, without, RunResult,
};

/// GNU tar's flags that keep everything (as the issue names them).
const TAR_KEEP: &[&str] = &[
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--numeric-owner",
];

fn ok(r: &RunResult) {
    assert_no_panic(r);
    assert_eq!(r.code, 0, "{}", r.describe());
}

fn tar(args: &[&std::ffi::OsStr]) {
    let out = Command::new("tar")
        .args(args)
        .output()
        .expect("GNU tar is needed: apt-get install tar zstd");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn create(src: &Path, out: &Path, extra: &[&str]) -> RunResult {
    let mut a = vec![
        os("archive"),
        os("create"),
        os(src),
        os("-o"),
        os(out),
        os("--no-progress"),
    ];
    a.extend(extra.iter().map(os));
    run_haul(a)
}

fn extract(archive: &Path, dst: &Path, extra: &[&str]) -> RunResult {
    let mut a = vec![
        os("archive"),
        os("extract"),
        os(archive),
        os(dst),
        os("--no-progress"),
    ];
    a.extend(extra.iter().map(os));
    run_haul(a)
}

/// `SRC/` as a string with its trailing slash.
fn contents(src: &Path) -> String {
    format!("{}/", src.display())
}

#[test]
fn tar_and_tar_zst_round_trip_every_metadata_kind() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_full_as_root(&src);
    // Sockets: no archive format holds one; they are named in the notices.
    let want = without(&walk(&src), &["special/sock"]);
    for name in ["a.tar", "a.tar.zst", "a.tzst"] {
        let out = t.path().join(name);
        let r = create(Path::new(&contents(&src)), &out, &["--json"]);
        ok(&r);
        let v = stdout_json(&r);
        assert_eq!(
            json_paths(&v, "notices"),
            ["special/sock"],
            "{}",
            r.describe()
        );
        let dst = t.path().join(format!("dst-{name}"));
        let r = extract(&out, &dst, &["--json"]);
        ok(&r);
        assert_trees_equal(&want, &walk(&dst), &all(), name);
    }
}

#[test]
fn gnu_tar_reproduces_hauls_archives() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_full_as_root(&src);
    let want = without(&walk(&src), &["special/sock"]);
    for (name, zstd) in [("a.tar", false), ("a.tar.zst", true)] {
        let out = t.path().join(name);
        ok(&create(Path::new(&contents(&src)), &out, &[]));
        let dst = t.path().join(format!("gnu-{name}"));
        std::fs::create_dir(&dst).unwrap();
        let mut a: Vec<&std::ffi::OsStr> = TAR_KEEP.iter().map(|s| s.as_ref()).collect();
        if zstd {
            a.push("-I".as_ref());
            a.push("zstd".as_ref());
        }
        a.extend([
            "-xpf".as_ref(),
            out.as_os_str(),
            "-C".as_ref(),
            dst.as_os_str(),
        ]);
        tar(&a);
        assert_trees_equal(&want, &walk(&dst), &all(), &format!("GNU tar -x of {name}"));
    }
}

#[test]
fn haul_reproduces_gnu_tar_archives() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_full_as_root(&src);
    let want = without(&walk(&src), &["special/sock"]);
    for (name, zstd) in [("gnu.tar", false), ("gnu.tar.zst", true)] {
        let out = t.path().join(name);
        let mut a: Vec<&std::ffi::OsStr> = TAR_KEEP.iter().map(|s| s.as_ref()).collect();
        if zstd {
            a.push("-I".as_ref());
            a.push("zstd -3 -T0".as_ref());
        }
        a.extend([
            "-S".as_ref(),
            "-cf".as_ref(),
            out.as_os_str(),
            "-C".as_ref(),
            src.as_os_str(),
            ".".as_ref(),
        ]);
        tar(&a);
        let dst = t.path().join(format!("dst-{name}"));
        let r = extract(&out, &dst, &[]);
        ok(&r);
        assert_trees_equal(&want, &walk(&dst), &all(), &format!("haul of {name}"));
    }
}

#[test]
fn streams_on_stdin_and_stdout() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    // create -o - | extract -
    let mut producer = Command::new(haul_bin())
        .args([
            "archive",
            "create",
            "--format",
            "tar.zst",
            "-o",
            "-",
            "--no-progress",
        ])
        .arg(contents(&src))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let dst = t.path().join("dst");
    let consumer = Command::new(haul_bin())
        .args(["archive", "extract", "-", "--no-progress"])
        .arg(&dst)
        .stdin(producer.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(producer.wait().unwrap().success());
    assert!(
        consumer.status.success(),
        "{}",
        String::from_utf8_lossy(&consumer.stderr)
    );
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "stdout to stdin");

    // A zip cannot come from a stream: a usage error, not a crash.
    let z = Command::new(haul_bin())
        .args(["archive", "extract", "-", "--no-progress"])
        .arg(t.path().join("z"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            let mut i = c.stdin.take().unwrap();
            let _ = i.write_all(b"PK\x03\x04 not really a zip, but it starts like one");
            drop(i);
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        z.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&z.stderr)
    );
}

#[test]
fn named_archive_source_keeps_its_name_and_lists() {
    let t = tmp();
    let src = t.path().join("app");
    fixture::build_small(&src);
    let out = t.path().join("a.tar");
    ok(&create(&src, &out, &[]));
    let r = run_haul(vec![os("archive"), os("list"), os(&out), os("--json")]);
    ok(&r);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let paths: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths[0], "app/", "{paths:?}");
    assert!(paths.contains(&"app/dir/sub/deep.bin"), "{paths:?}");
    let hard = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["hardlink"].is_string())
        .expect("a hardlink member");
    assert_eq!(hard["hardlink"], "app/dir/hard");
    let dst = t.path().join("dst");
    ok(&extract(&out, &dst, &[]));
    assert_trees_equal(&walk(&src), &walk(&dst.join("app")), &all(), "named source");
}

#[test]
fn path_exclude_delete_and_dry_run() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    let out = t.path().join("a.tar.zst");
    ok(&create(Path::new(&contents(&src)), &out, &[]));

    // --path: that subtree only, at its place.
    let sub = t.path().join("sub");
    ok(&extract(&out, &sub, &["--path", "dir/sub"]));
    assert!(exists(&sub.join("dir/sub/deep.bin")));
    assert!(!exists(&sub.join("top.txt")));

    // --exclude skips members.
    let ex = t.path().join("ex");
    ok(&extract(&out, &ex, &["--exclude", "*.bin"]));
    assert!(!exists(&ex.join("dir/sub/deep.bin")));
    assert!(exists(&ex.join("dir/inner.txt")));

    // --delete makes DST a mirror, keeping excluded entries; -n touches nothing.
    let dst = t.path().join("dst");
    ok(&extract(&out, &dst, &[]));
    fixture::write_file(&dst.join("extra/x"), b"x");
    fixture::write_file(&dst.join("keep.log"), b"x");
    let before = walk(&dst);
    let r = extract(
        &out,
        &dst,
        &["--delete", "--exclude", "*.log", "-n", "--json"],
    );
    ok(&r);
    assert_eq!(
        json_count(&stdout_json(&r), "deleted"),
        2,
        "{}",
        r.describe()
    );
    assert_trees_equal(&before, &walk(&dst), &all(), "dry run");
    let r = extract(&out, &dst, &["--delete", "--exclude", "*.log", "--json"]);
    ok(&r);
    assert_eq!(
        json_count(&stdout_json(&r), "deleted"),
        2,
        "{}",
        r.describe()
    );
    assert!(exists(&dst.join("keep.log")));
    assert_trees_equal(
        &walk(&src),
        &without(&walk(&dst), &["keep.log"]),
        &all(),
        "after --delete",
    );
}

#[test]
fn unprivileged_extraction_clears_special_bits_and_skips_devices() {
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    fixture::mkdir(&src);
    fixture::write_file(&src.join("suid"), b"#!/bin/sh\n");
    fixture::chmod(&src.join("suid"), 0o4755);
    fixture::mkdev(&src.join("null"), false, 1, 3, 0o666);
    fixture::mkdir(&src.join("sticky"));
    fixture::chmod(&src.join("sticky"), 0o1777);
    let out = t.path().join("a.tar");
    ok(&create(Path::new(&contents(&src)), &out, &[]));
    fixture::lchown(&out, NOBODY.0, NOBODY.1);
    let dst = t.path().join("dst");
    let r = run_haul_as(
        NOBODY.0,
        NOBODY.1,
        [
            os("archive"),
            os("extract"),
            os(&out),
            os(&dst),
            os("--json"),
            os("--no-progress"),
        ],
    );
    ok(&r);
    let v = stdout_json(&r);
    let notices = json_paths(&v, "notices");
    assert!(notices.contains(&"suid".to_string()), "{}", r.describe());
    assert!(notices.contains(&"null".to_string()), "{}", r.describe());
    use std::os::unix::fs::PermissionsExt;
    let m = |p: &str| {
        std::fs::symlink_metadata(dst.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(m("suid"), 0o755);
    assert_eq!(m("sticky"), 0o777);
    assert!(!exists(&dst.join("null")));
    assert_eq!(read(&dst.join("suid")), b"#!/bin/sh\n");

    // As root, the same archive keeps them; --no-same-permissions does not.
    let root_dst = t.path().join("root");
    ok(&extract(&out, &root_dst, &[]));
    assert_eq!(
        std::fs::symlink_metadata(root_dst.join("suid"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert!(exists(&root_dst.join("null")));
    let safe = t.path().join("safe");
    ok(&extract(&out, &safe, &["--no-same-permissions"]));
    assert!(!exists(&safe.join("null")));
    assert_eq!(
        std::fs::symlink_metadata(safe.join("suid"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
}

/// Writes a tar with Python's tarfile from a list of (name, type, link,
/// data) members, in that order.
fn python_tar(out: &Path, members: &str) {
    let script = format!(
        "import tarfile, io\n\
         t = tarfile.open({out:?}, 'w', format=tarfile.PAX_FORMAT)\n\
         for name, ty, link, data in {members}:\n\
         \x20   m = tarfile.TarInfo(name); m.type = ty; m.linkname = link; m.mtime = 1700000000\n\
         \x20   m.size = len(data) if ty == tarfile.REGTYPE else 0\n\
         \x20   t.addfile(m, io.BytesIO(data) if ty == tarfile.REGTYPE else None)\n\
         t.close()\n",
        out = out.display().to_string()
    );
    let st = Command::new("python3")
        .arg("-c")
        .arg(script)
        .status()
        .expect("python3 is needed: apt-get install python3");
    assert!(st.success());
}

/// Small members are written on the pool; the result must be what a
/// one-thread run writes, whatever the order tricks: the same name twice
/// (the last wins), a file where a directory was, a file through a
/// symlink named earlier, a hardlink to a member just written.
#[test]
fn parallel_extraction_equals_sequential() {
    let t = tmp();
    let out = t.path().join("tricky.tar");
    let mut members = String::from("[");
    for i in 0..300 {
        members.push_str(&format!(
            "('d{}/f{i}', tarfile.REGTYPE, '', b'v1-{i}'),",
            i % 7
        ));
    }
    members.push_str(
        "('d1/f1', tarfile.REGTYPE, '', b'second'),\
         ('d1/f1', tarfile.REGTYPE, '', b'third and last'),\
         ('x', tarfile.REGTYPE, '', b'file first'),\
         ('x', tarfile.DIRTYPE, '', b''),\
         ('x/in', tarfile.REGTYPE, '', b'inside x'),\
         ('l', tarfile.SYMTYPE, 'd2', b''),\
         ('l/through', tarfile.REGTYPE, '', b'must not land in d2'),\
         ('h', tarfile.LNKTYPE, 'd1/f1', b''),\
         ('d3/f3', tarfile.REGTYPE, '', b'replaced by a dir'),\
         ('d3/f3', tarfile.DIRTYPE, '', b''),\
         ('d3/f3/g', tarfile.REGTYPE, '', b'g'),\
         ]",
    );
    python_tar(&out, &members);
    let mut trees = Vec::new();
    for jobs in ["1", "8"] {
        let dst = t.path().join(format!("j{jobs}"));
        let r = extract(&out, &dst, &["-j", jobs, "--json", "--delete"]);
        assert_no_panic(&r);
        let v = stdout_json(&r);
        trees.push((walk(&dst), r.code, json_paths(&v, "failed"), dst));
    }
    let (a, b) = (&trees[0], &trees[1]);
    // Directories the archive does not name get the time of the run.
    let no_mtime = haul_tests::CompareOpts {
        mtime: false,
        ..all()
    };
    assert_trees_equal(&a.0, &b.0, &no_mtime, "-j 1 against -j 8");
    assert_eq!((a.1, &a.2), (b.1, &b.2), "exit codes and failures");
    let dst = &a.3;
    assert_eq!(read(&dst.join("d1/f1")), b"third and last");
    assert_eq!(read(&dst.join("h")), b"third and last");
    assert_eq!(read(&dst.join("x/in")), b"inside x");
    assert_eq!(read(&dst.join("d3/f3/g")), b"g");
    assert!(
        !exists(&dst.join("d2/through")),
        "written through a symlink"
    );
    assert_eq!(a.2, ["l/through"], "the member through the symlink fails");
}

/// Runs haul, failing the test if it does not finish within `secs`.
fn finishes_within(secs: u64, args: &[&std::ffi::OsStr]) -> std::process::ExitStatus {
    let mut c = haul_tests::spawn_haul(args, None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        if std::time::Instant::now() > deadline {
            let _ = c.kill();
            panic!("haul {args:?} hung (killed after {secs} s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// With one worker (`-j 1`) the thread that writes the archive is the
/// pool's only thread: waiting on a job queued behind it used to hang
/// create (tar, tar.zst) for good.
#[test]
fn one_worker_creates_and_extracts_every_format() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    for f in ["tar", "tar.zst", "zip"] {
        let out = t.path().join(format!("a.{f}"));
        let dst = t.path().join(format!("dst-{f}"));
        let st = finishes_within(
            120,
            &[
                "archive".as_ref(),
                "create".as_ref(),
                "-j".as_ref(),
                "1".as_ref(),
                contents(&src).as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
            ],
        );
        assert!(st.success(), "create {f}: {st}");
        let st = finishes_within(
            120,
            &[
                "archive".as_ref(),
                "extract".as_ref(),
                "-j".as_ref(),
                "1".as_ref(),
                out.as_os_str(),
                dst.as_os_str(),
            ],
        );
        assert!(st.success(), "extract {f}: {st}");
        assert_trees_equal(&walk(&src), &walk(&dst), &all(), f);
    }
}

/// `haul archive create . -o ./a.tar` does not archive the archive it is
/// writing (as GNU tar: "file is the archive; not dumped").
#[test]
fn the_archive_being_written_is_left_out() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    let out = src.join("self.tar");
    let r = create(Path::new(&contents(&src)), &out, &["--json"]);
    ok(&r);
    let v = stdout_json(&r);
    let notices = json_paths(&v, "notices");
    assert_eq!(notices.len(), 1, "{}", r.describe());
    assert!(notices[0].contains("haul-part"), "{notices:?}");
    let dst = t.path().join("dst");
    ok(&extract(&out, &dst, &[]));
    assert_trees_equal(
        &without(&walk(&src), &["self.tar"]),
        &walk(&dst),
        &haul_tests::CompareOpts {
            root: false,
            ..all()
        },
        "archive of a tree holding it",
    );
}

/// `-n` into an existing DST whose archive brings new directories: every
/// new entry is listed as created, nothing fails, nothing is written.
#[test]
fn dry_run_below_new_directories() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    let out = t.path().join("a.tar.zst");
    ok(&create(Path::new(&contents(&src)), &out, &[]));
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let before = walk(&dst);
    let r = extract(&out, &dst, &["-n", "--json", "-j", "4"]);
    ok(&r);
    let v = stdout_json(&r);
    assert!(json_paths(&v, "failed").is_empty(), "{}", r.describe());
    // Every entry of the tree but the root would be created.
    let entries = walk(&src).len() as u64 - 1;
    assert_eq!(json_count(&v, "created"), entries, "{}", r.describe());
    assert_trees_equal(&before, &walk(&dst), &all(), "dry run");
}

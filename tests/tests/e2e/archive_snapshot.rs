//! End-to-end tests of `haul snapshot download` and `haul snapshot upload` (aliases
//! `export`, `import`): a snapshot of a tree holding every metadata kind written as an
//! archive that `haul archive extract` and GNU tar reproduce exactly, archives (haul's and
//! GNU tar's) recorded as snapshots that restore exactly, deduplication, streams, member
//! order, hostile paths and truncated input.
//!
//! Trees are compared with the independent walker from `haul_tests`.

use std::path::Path;
use std::process::{Command, Stdio};

use haul_tests::fixture;
use haul_tests::repo::{is_id, jstr, ju64, os, stdout_json, Repo};
use haul_tests::util::{all, tmp};
use haul_tests::{assert_trees_equal, haul_bin, json_paths, require_root, run_haul, walk, without};

/// GNU tar's flags that keep everything (as the issue names them).
const TAR_KEEP: &[&str] = &[
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--numeric-owner",
];

/// `snapshot download ID -o OUT --json EXTRA...` (not checked).
fn download(repo: &Repo, id: &str, out: &Path, extra: &[&str]) -> haul_tests::RunResult {
    let mut a = vec![os(id), os("-o"), os(out), os("--json"), os("--no-progress")];
    a.extend(extra.iter().map(os));
    repo.snap("download", &a)
}

/// `snapshot upload IN --json` (not checked).
fn upload(repo: &Repo, input: &Path) -> haul_tests::RunResult {
    repo.snap("upload", &[os(input), os("--json"), os("--no-progress")])
}

/// An upload that must succeed cleanly; returns its JSON summary.
fn upload_ok(repo: &Repo, input: &Path) -> serde_json::Value {
    let r = upload(repo, input);
    r.expect_code(0);
    let v = stdout_json(&r);
    assert!(is_id(jstr(&v, "id")), "{}", r.describe());
    v
}

fn extract(archive: &Path, dst: &Path) {
    let r = run_haul([
        os("archive"),
        os("extract"),
        os(archive),
        os(dst),
        os("--no-progress"),
    ]);
    r.expect_code(0);
}

/// A repository holding a snapshot of the full fixture (as root): (repo, id, source).
fn full_snapshot(t: &Path) -> (Repo, String, std::path::PathBuf) {
    require_root("the full fixture");
    let src = t.join("src");
    fixture::build_full_as_root(&src);
    let repo = Repo::new(t.join("repo"));
    repo.init().expect_code(0);
    let id = repo.create_id(&[&src], &[]);
    (repo, id, src)
}

#[test]
fn download_as_tar_and_tar_zst_extracts_to_the_source() {
    let t = tmp();
    let (repo, id, src) = full_snapshot(t.path());
    // Sockets: no archive format holds one; they are named in the notices.
    let want = without(&walk(&src), &["special/sock"]);
    for name in ["a.tar.zst", "a.tar"] {
        let out = t.path().join(name);
        let r = download(&repo, &id, &out, &[]);
        r.expect_code(0);
        let v = stdout_json(&r);
        assert_eq!(
            json_paths(&v, "notices"),
            ["special/sock"],
            "{}",
            r.describe()
        );
        // Written under a temporary name, renamed when complete: nothing else is left.
        let left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("haul-part"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        let dst = t.path().join(format!("dst-{name}"));
        extract(&out, &dst);
        assert_trees_equal(&want, &walk(&dst), &all(), &format!("download {name}"));

        // GNU tar reproduces it too.
        let gnu = t.path().join(format!("gnu-{name}"));
        std::fs::create_dir(&gnu).unwrap();
        let mut c = Command::new("tar");
        c.args(TAR_KEEP);
        if name.ends_with(".zst") {
            c.args(["-I", "zstd"]);
        }
        let o = c
            .arg("-xpf")
            .arg(&out)
            .arg("-C")
            .arg(&gnu)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_trees_equal(&want, &walk(&gnu), &all(), &format!("GNU tar of {name}"));
    }
}

#[test]
fn download_then_upload_then_restore_equals_the_source() {
    let t = tmp();
    let (repo, id, src) = full_snapshot(t.path());
    let want = without(&walk(&src), &["special/sock"]);
    let out = t.path().join("a.tar.zst");
    download(&repo, &id, &out, &[]).expect_code(0);
    let v = upload_ok(&repo, &out);
    // Everything it holds is already in the repository.
    assert_eq!(ju64(&v, "bytes_new"), 0, "{v}");
    let dst = t.path().join("dst");
    repo.restore(jstr(&v, "id"), &dst, &[]).expect_clean();
    assert_trees_equal(&want, &walk(&dst), &all(), "download, upload, restore");
    repo.check(true, &[]).expect_code(0);

    // The aliases: export and import.
    let out2 = t.path().join("b.tar");
    repo.snap(
        "export",
        &[os(&id), os("-o"), os(&out2), os("--no-progress")],
    )
    .expect_code(0);
    let r = repo.snap(
        "import",
        &[os(&out2), os("--no-progress"), os("--tag"), os("x")],
    );
    r.expect_code(0);
    assert!(r.stdout.contains("snapshot "), "{}", r.describe());
}

#[test]
fn upload_of_a_gnu_tar_archive_restores_the_tree() {
    let t = tmp();
    require_root("the full fixture");
    let src = t.path().join("src");
    fixture::build_full_as_root(&src);
    let want = without(&walk(&src), &["special/sock"]);
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let out = t.path().join("gnu.tar");
    let o = Command::new("tar")
        .args(TAR_KEEP)
        .args(["-S", "-cf"])
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = upload_ok(&repo, &out);
    let dst = t.path().join("dst");
    repo.restore(jstr(&v, "id"), &dst, &[]).expect_clean();
    assert_trees_equal(&want, &walk(&dst), &all(), "upload of GNU tar's archive");
}

#[test]
fn upload_twice_adds_no_new_data() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    fixture::write_file(&src.join("big"), &fixture::random_bytes("big", 3 << 20));
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let out = t.path().join("a.tar");
    let o = Command::new("tar")
        .args(["-cf"])
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success());
    let first = upload_ok(&repo, &out);
    assert!(ju64(&first, "bytes_new") >= 3 << 20, "{first}");
    let size = repo.total_bytes();
    let second = upload_ok(&repo, &out);
    assert_eq!(ju64(&second, "bytes_new"), 0, "{second}");
    assert_ne!(jstr(&first, "id"), jstr(&second, "id"));
    // Only a snapshot record and a little tree and index data, not the data again.
    assert!(
        repo.total_bytes() < size + (64 << 10),
        "repository grew from {size} to {}",
        repo.total_bytes()
    );
}

#[test]
fn download_to_stdout_pipes_into_tar() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let id = repo.create_id(&[&src], &[]);
    for (format, z) in [("tar", false), ("tar.zst", true)] {
        let mut producer = Command::new(haul_bin())
            .args(["snapshot", "download", &id, "-o", "-", "--format", format])
            .arg("--repo")
            .arg(&repo.root)
            .args(["--no-progress"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut c = Command::new("tar");
        if z {
            c.args(["-I", "zstd"]);
        }
        let listing = c
            .args(["-tf", "-"])
            .stdin(producer.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(producer.wait().unwrap().success());
        assert!(listing.status.success());
        let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .map(|l| l.trim_end_matches('/').to_string())
            .collect();
        for want in [
            ".",
            "top.txt",
            "dir/inner.txt",
            "dir/sub/deep.bin",
            "dir/link",
            "empty_dir",
        ] {
            assert!(
                names.contains(&want.to_string()),
                "{want} missing in {names:?}"
            );
        }
    }
}

#[test]
fn truncated_archive_upload_fails_and_records_no_snapshot() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    fixture::write_file(&src.join("big"), &fixture::random_bytes("big", 2 << 20));
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let full = t.path().join("full.tar");
    let o = Command::new("tar")
        .arg("-cf")
        .arg(&full)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success());
    let bytes = std::fs::read(&full).unwrap();
    let cut = t.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let r = upload(&repo, &cut);
    assert_eq!(r.code, 1, "{}", r.describe());
    assert!(r.stderr.contains("cut.tar"), "{}", r.describe());
    assert!(repo.list_ids().is_empty(), "a snapshot was recorded");
}

/// A tar archive of `members` (path, data; a path ending in `/` is a directory), in that
/// order, written with Python's tarfile (not haul, not GNU tar).
fn python_tar(out: &Path, members: &[(&str, &str)]) {
    let list: Vec<String> = members
        .iter()
        .map(|(p, d)| format!("({p:?}, {d:?})"))
        .collect();
    let script = format!(
        "import tarfile, io\n\
         t = tarfile.open({out:?}, 'w', format=tarfile.PAX_FORMAT)\n\
         for p, d in [{}]:\n\
         \x20   i = tarfile.TarInfo(p.rstrip('/'))\n\
         \x20   i.mtime = 1600000000\n\
         \x20   if p.endswith('/'):\n\
         \x20       i.type = tarfile.DIRTYPE; i.mode = 0o750\n\
         \x20       t.addfile(i)\n\
         \x20   else:\n\
         \x20       b = d.encode(); i.size = len(b); i.mode = 0o640\n\
         \x20       t.addfile(i, io.BytesIO(b))\n\
         t.close()\n",
        list.join(", "),
        out = out.display().to_string()
    );
    let o = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn upload_takes_members_in_any_order_and_refuses_hostile_paths() {
    let t = tmp();
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let out = t.path().join("odd.tar");
    python_tar(
        &out,
        &[
            ("a/x", "x1"),
            ("b/deep/y", "y"),
            ("a/z", "z"),      // back into a/ after leaving it
            ("a/", ""),        // a directory named after its children
            ("../evil", "no"), // refused
            ("/abs", "no"),    // refused
            ("a/x", "x2"),     // a duplicate: the last one wins
        ],
    );
    let r = upload(&repo, &out);
    assert_eq!(r.code, 3, "{}", r.describe());
    let v = stdout_json(&r);
    let failed = json_paths(&v, "failed");
    assert_eq!(failed, ["/abs", "../evil"], "{}", r.describe());
    let dst = t.path().join("dst");
    repo.restore(jstr(&v, "id"), &dst, &[]).expect_code(0);
    assert_eq!(std::fs::read(dst.join("a/x")).unwrap(), b"x2");
    assert_eq!(std::fs::read(dst.join("a/z")).unwrap(), b"z");
    assert_eq!(std::fs::read(dst.join("b/deep/y")).unwrap(), b"y");
    use std::os::unix::fs::PermissionsExt;
    let a = std::fs::metadata(dst.join("a")).unwrap();
    assert_eq!(a.permissions().mode() & 0o7777, 0o750, "a/'s own member");
    let b = std::fs::metadata(dst.join("b")).unwrap();
    assert_eq!(b.permissions().mode() & 0o7777, 0o755, "b/ was never named");
    assert!(!t.path().join("evil").exists() && !Path::new("/abs").exists());
}

#[test]
fn download_memory_stays_bounded() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::mkdir(&src);
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 160M /dev/urandom > {}/big", src.display()))
        .output()
        .unwrap();
    assert!(o.status.success());
    let repo = Repo::new(t.path().join("repo"));
    repo.init().expect_code(0);
    let id = repo.create_id(&[&src], &[]);
    let out = t.path().join("a.tar.zst");
    let o = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(haul_bin())
        .args([
            "snapshot",
            "download",
            &id,
            "-j",
            "2",
            "--no-progress",
            "-o",
        ])
        .arg(&out)
        .arg("--repo")
        .arg(&repo.root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let kib: u64 = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {err}"));
    assert!(kib < 100 << 10, "peak RSS {kib} KiB for a 160 MiB snapshot");
}

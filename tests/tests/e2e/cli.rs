//! End-to-end tests of the command line itself: how names are printed, which
//! argument values are usage errors, what `--json` prints when a run fails,
//! and how partially preserved entries are summed up.
//!
//! Run as root (CI does): some tests run haul as nobody.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use haul_tests::fixture;
use haul_tests::repo::{jstr, os, stdout_json, Repo};
use haul_tests::util::{tmp, tmp_for_nobody, NOBODY};
use haul_tests::{
    assert_trees_equal, exists, haul_command, json_changes, json_paths, run_haul, run_haul_as,
    walk, CompareOpts, RunResult,
};

/// A name that, printed raw, clears the screen and forges a line.
const EVIL: &[u8] = b"evil\x1b[2J\rforged\nhaul: ok";
/// How it must look in human output.
const EVIL_ESCAPED: &str = "evil\\#033[2J\\#015forged\\#012haul: ok";

fn name(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

/// Panics if `text` holds a control character other than the newlines that
/// end its lines.
fn assert_no_controls(text: &str, r: &RunResult) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "control characters printed raw:\n{}",
        r.describe()
    );
}

fn args(v: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    v.iter().map(|a| a.as_ref().to_os_string()).collect()
}

// ---------------------------------------------------------------------------------------
// Terminal injection
// ---------------------------------------------------------------------------------------

#[test]
fn names_with_control_characters_are_escaped_in_human_output() {
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    fixture::write_file(&src.join(name(EVIL)), b"x\n");
    fixture::write_file(&src.join(name(b"latin1-\xe9")), b"y\n");
    fixture::write_file(&src.join(name(b"back\\#033slash")), b"z\n");
    fixture::chown_tree(&src, NOBODY.0, NOBODY.1);
    let dst = t.path().join("dst");

    // copy -n and copy -v: the change lines.
    for flag in ["-n", "-v"] {
        let r = run_haul(args(&[&"copy", &"--no-progress", &flag, &src, &dst]));
        r.expect_code(0);
        assert_no_controls(&r.stdout, &r);
        assert!(
            r.stdout.contains(&format!("create {EVIL_ESCAPED}\n")),
            "{}",
            r.describe()
        );
        // Not UTF-8: the byte, escaped (not U+FFFD).
        assert!(
            r.stdout.contains("create latin1-\\#351\n"),
            "{}",
            r.describe()
        );
        // A literal `\#` is escaped too, so it cannot pass for an escape.
        assert!(
            r.stdout.contains("create back\\#134#033slash\n"),
            "{}",
            r.describe()
        );
    }
    // The copy itself kept the name byte for byte.
    assert!(exists(&dst.join(name(EVIL))));

    // --json is not escaped: the name is the real one.
    let dst2 = t.path().join("dst2");
    let r = run_haul(args(&[&"copy", &"--json", &"-v", &src, &dst2]));
    let v = r.expect_clean();
    let raw = String::from_utf8(EVIL.to_vec()).unwrap();
    assert!(
        json_changes(&v).contains(&("create".to_string(), raw)),
        "{}",
        r.describe()
    );
    // The root, when it changes, is `.` in JSON as in human output.
    fixture::chmod(&src, 0o750);
    let r = run_haul(args(&[&"copy", &"--json", &"-v", &src, &dst2]));
    let v = r.expect_clean();
    assert_eq!(
        json_changes(&v),
        vec![("metadata".to_string(), ".".to_string())],
        "{}",
        r.describe()
    );
    let r = run_haul(args(&[&"copy", &"--no-progress", &"-v", &src, &dst]));
    r.expect_code(0);
    assert_eq!(r.stdout, "metadata .\n", "{}", r.describe());

    // A failed entry, as nobody: the failure line and the summary.
    let bad = src.join(name(b"locked\x1b]0;owned\x07"));
    fixture::write_file(&bad, b"secret\n");
    fixture::lchown(&bad, 0, 0);
    fixture::chmod(&bad, 0o600);
    let dst3 = t.path().join("dst3");
    let r = run_haul_as(
        NOBODY.0,
        NOBODY.1,
        args(&[&"copy", &"--no-progress", &src, &dst3]),
    );
    r.expect_code(3);
    assert_no_controls(&r.stderr, &r);
    assert!(
        r.stderr
            .contains("haul: failed: locked\\#033]0;owned\\#007: "),
        "{}",
        r.describe()
    );

    // A fatal error whose message names the path.
    let missing = t.path().join(name(b"no\rsuch"));
    let r = run_haul(args(&[&"copy", &"--no-progress", &missing, &dst3]));
    r.expect_code(1);
    assert_no_controls(&r.stderr, &r);
    assert!(r.stderr.contains("no\\#015such"), "{}", r.describe());

    // snapshot ls and diff.
    let repo = Repo::new(t.path().join("repo"));
    let clean = t.path().join("clean");
    fixture::write_file(&clean.join("plain"), b"p\n");
    let a = repo.create_id(&[&clean], &[]);
    fixture::write_file(&clean.join(name(EVIL)), b"x\n");
    let b = repo.create_id(&[&clean], &[]);
    let r = repo.snap("ls", &[os(&b)]);
    r.expect_code(0);
    assert_no_controls(&r.stdout, &r);
    assert!(
        r.stdout.contains(&format!(" {EVIL_ESCAPED}\n")),
        "{}",
        r.describe()
    );
    let r = repo.snap("diff", &[os(&a), os(&b)]);
    r.expect_code(0);
    assert_no_controls(&r.stdout, &r);
    assert!(
        r.stdout.contains(&format!("+ {EVIL_ESCAPED}\n")),
        "{}",
        r.describe()
    );
}

// ---------------------------------------------------------------------------------------
// Argument values
// ---------------------------------------------------------------------------------------

#[test]
fn jobs_must_be_between_1_and_1024() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("a/b"), b"data\n");
    let repo = t.path().join("repo");
    let dst = t.path().join("dst");
    for j in ["0", "1025", "100000"] {
        let r = run_haul(args(&[&"copy", &"--no-progress", &"-j", &j, &src, &dst]));
        r.expect_code(2);
        assert!(!exists(&dst), "copy -j {j} wrote DST");
        let r = run_haul(args(&[
            &"snapshot",
            &"create",
            &"--repo",
            &repo,
            &"--no-progress",
            &"-j",
            &j,
            &src,
        ]));
        r.expect_code(2);
        assert!(!exists(&repo), "create -j {j} made a repository");
    }
    // The top of the range works for all three.
    let r = run_haul(args(&[
        &"copy",
        &"--no-progress",
        &"-j",
        &"1024",
        &src,
        &dst,
    ]));
    r.expect_code(0);
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &CompareOpts::default(),
        "copy -j 1024",
    );
    let r = Repo::new(&repo);
    let id = r.create_id(&[&src], &["-j", "1024"]);
    for j in ["0", "100000"] {
        r.restore(&id, &t.path().join("r0"), &["-j", j])
            .expect_code(2);
    }
    assert!(!exists(&t.path().join("r0")));
    let out = t.path().join("restored");
    r.restore(&id, &out, &["-j", "1024"]).expect_clean();
    assert_trees_equal(
        &walk(&src),
        &walk(&out),
        &CompareOpts::default(),
        "restore -j 1024",
    );
}

#[test]
fn bad_argument_values_are_usage_errors() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"data\n");
    let dst = t.path().join("dst");
    for bad in [
        &["--usermap", "garbage"][..],
        &["--groupmap", "5-2:1"],
        &["--usermap", "1:no-such-user-haul"],
        &["--chown", "no-such-user-haul"],
        &["--chown", ":no-such-group-haul"],
        &["--exclude", "["],
    ] {
        let mut v: Vec<OsString> = vec![os("copy"), os("--no-progress")];
        v.extend(bad.iter().map(os));
        v.extend([os(&src), os(&dst)]);
        let r = run_haul(v);
        r.expect_code(2);
        assert!(r.stderr.contains(bad[1]), "{}", r.describe());
        assert!(!exists(&dst), "{bad:?} wrote DST");
    }
    let repo = t.path().join("repo");
    let r = run_haul(args(&[
        &"snapshot",
        &"create",
        &"--repo",
        &repo,
        &"--exclude",
        &"a/[",
        &src,
    ]));
    r.expect_code(2);
    for level in ["0", "23", "-5"] {
        let r = run_haul(args(&[
            &"repo",
            &"init",
            &"--repo",
            &repo,
            &"--compression-level",
            &level,
        ]));
        r.expect_code(2);
        assert!(
            !exists(&repo),
            "--compression-level {level} made a repository"
        );
    }
    // The help names the range that is accepted, and its ends are.
    let r = run_haul(["repo", "init", "--help"]);
    assert!(r.stdout.contains("1-22"), "{}", r.describe());
    for level in ["1", "22"] {
        let repo = t.path().join(format!("repo{level}"));
        run_haul(args(&[
            &"repo",
            &"init",
            &"--repo",
            &repo,
            &"--compression-level",
            &level,
        ]))
        .expect_code(0);
    }
}

#[test]
fn triple_star_excludes_the_directory_and_everything_below() {
    let t = tmp();
    let src = t.path().join("src");
    fixture::write_file(&src.join("cache/a"), b"1\n");
    fixture::write_file(&src.join("cache/deep/b"), b"2\n");
    fixture::write_file(&src.join("sub/cache/c"), b"3\n");
    fixture::write_file(&src.join("cachex/keep"), b"4\n");
    fixture::write_file(&src.join("sub/keep"), b"5\n");
    let dst = t.path().join("dst");
    let r = run_haul(args(&[
        &"copy",
        &"--json",
        &"--no-progress",
        &"--exclude",
        &"cache/***",
        &src,
        &dst,
    ]));
    r.expect_clean();
    let got: Vec<PathBuf> = walk(&dst).keys().cloned().collect();
    let want: Vec<PathBuf> = [".", "cachex", "cachex/keep", "sub", "sub/keep"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(got, want, "{}", r.describe());
}

// ---------------------------------------------------------------------------------------
// --json
// ---------------------------------------------------------------------------------------

/// Asserts a fatal run that printed one JSON error object on stdout.
fn assert_json_error(r: &RunResult) {
    r.expect_code(1);
    let v = r.json();
    assert_eq!(v["ok"], serde_json::Value::Bool(false), "{}", r.describe());
    assert!(
        !jstr(&v, "error").is_empty(),
        "empty error:\n{}",
        r.describe()
    );
}

#[test]
fn json_fatal_errors_print_an_error_object() {
    let t = tmp();
    let not_a_repo = t.path().join("file");
    fixture::write_file(&not_a_repo, b"not a repository\n");
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"data\n");
    let repo = Repo::new(t.path().join("repo"));
    repo.create_id(&[&src], &[]);

    let r = run_haul(args(&[
        &"snapshot",
        &"create",
        &"--json",
        &"--repo",
        &not_a_repo,
        &src,
    ]));
    assert_json_error(&r);
    for sub in [&["list"][..], &["show", "latest"], &["ls", "latest"]] {
        let mut v: Vec<OsString> = vec![os("snapshot")];
        v.extend(sub.iter().map(os));
        v.extend([os("--json"), os("--repo"), os(&not_a_repo)]);
        assert_json_error(&run_haul(v));
    }
    assert_json_error(&repo.snap("show", &[os("ffff"), os("--json")]));
    let r = run_haul(args(&[
        &"repo",
        &"init",
        &"--json",
        &"--repo",
        &t.path().join("repo"),
    ]));
    assert_json_error(&r);
    // copy keeps doing so.
    let r = run_haul(args(&[
        &"copy",
        &"--json",
        &t.path().join("missing"),
        &t.path().join("dst"),
    ]));
    assert_json_error(&r);
}

#[test]
fn json_keeps_entry_failures_off_stderr() {
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    fixture::write_file(&src.join("ok"), b"fine\n");
    fixture::write_file(&src.join("locked/f"), b"secret\n");
    fixture::write_file(&src.join("rootowned"), b"r\n");
    fixture::chown_tree(&src, NOBODY.0, NOBODY.1);
    fixture::lchown(&src.join("locked"), 0, 0);
    fixture::chmod(&src.join("locked"), 0o700);
    fixture::lchown(&src.join("rootowned"), 0, 0);

    let r = run_haul_as(
        NOBODY.0,
        NOBODY.1,
        args(&[&"copy", &"--json", &src, &t.path().join("dst")]),
    );
    r.expect_code(3);
    let v = r.json();
    assert_eq!(json_paths(&v, "failed"), vec!["locked"], "{}", r.describe());
    assert_eq!(
        json_paths(&v, "partial"),
        vec!["rootowned"],
        "{}",
        r.describe()
    );
    assert_eq!(r.stderr, "", "{}", r.describe());

    let repo = t.path().join("repo");
    let r = run_haul_as(
        NOBODY.0,
        NOBODY.1,
        args(&[&"repo", &"init", &"--repo", &repo]),
    );
    r.expect_code(0);
    let r = run_haul_as(
        NOBODY.0,
        NOBODY.1,
        args(&[&"snapshot", &"create", &"--json", &"--repo", &repo, &src]),
    );
    r.expect_code(3);
    let v = r.json();
    assert_eq!(json_paths(&v, "failed"), vec!["locked"], "{}", r.describe());
    assert_eq!(r.stderr, "", "{}", r.describe());
}

#[test]
fn json_broken_pipe_is_silent() {
    let t = tmp();
    let src = t.path().join("src");
    // Enough entries that the listing is far larger than a pipe holds.
    for i in 0..3000 {
        fixture::write_file(&src.join(format!("d{}/file-{i:05}", i % 10)), b"x");
    }
    let repo = Repo::new(t.path().join("repo"));
    repo.create_id(&[&src], &[]);
    for json in [true, false] {
        let mut v = vec![
            os("snapshot"),
            os("ls"),
            os("latest"),
            os("--repo"),
            os(t.path().join("repo")),
        ];
        if json {
            v.push(os("--json"));
        }
        let (mut cmd, _) = haul_command(v, None);
        let mut child = cmd
            .env_remove("HAUL_REPO")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haul");
        // Read a little, then close the pipe as `head` does.
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 100];
        out.read_exact(&mut buf).expect("some output");
        drop(out);
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            (status.code(), err.as_str()),
            (Some(0), ""),
            "json={json}: a closed pipe is not an error"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Partially preserved entries
// ---------------------------------------------------------------------------------------

#[test]
fn partial_entries_are_grouped_by_reason_and_the_failure_stands_out() {
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    for i in 0..40 {
        fixture::write_file(&src.join(format!("f{i:02}")), b"data\n");
    }
    // One real failure among them.
    fixture::write_file(&src.join("secret"), b"s\n");
    fixture::chmod(&src.join("secret"), 0o600);
    // Everything is root's: as nobody, no owner can be set.
    fixture::chown_tree(&src, 0, 0);

    let dst = t.path().join("dst");
    let r = run_haul_as(
        NOBODY.0,
        NOBODY.1,
        args(&[&"copy", &"--no-progress", &src, &dst]),
    );
    r.expect_code(3);
    let partial_lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("haul: not fully preserved"))
        .collect();
    assert_eq!(
        partial_lines,
        vec![
            "haul: not fully preserved: owner not set: Operation not permitted (os error 1): \
             41 entries: ., f00, f01, ... (-v lists them all)"
        ],
        "{}",
        r.describe()
    );
    assert!(
        r.stderr.contains("haul: failed: secret: "),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr.contains("; 1 failed, 41 not fully preserved"),
        "{}",
        r.describe()
    );

    // -v lists every entry, the root as `.`.
    let r = run_haul_as(
        NOBODY.0,
        NOBODY.1,
        args(&[
            &"copy",
            &"--no-progress",
            &"-v",
            &src,
            &t.path().join("dst2"),
        ]),
    );
    r.expect_code(3);
    let n = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("haul: not fully preserved: "))
        .count();
    assert_eq!(n, 41, "{}", r.describe());
    assert!(
        r.stderr
            .contains("haul: not fully preserved: .: owner 0:0 not set: "),
        "{}",
        r.describe()
    );

    // --json lists them all, the root as `.`.
    let r = run_haul_as(
        NOBODY.0,
        NOBODY.1,
        args(&[&"copy", &"--json", &src, &t.path().join("dst3")]),
    );
    r.expect_code(3);
    let partial = json_paths(&r.json(), "partial");
    assert_eq!(partial.len(), 41, "{}", r.describe());
    assert_eq!(partial[0], ".", "{}", r.describe());
}

#[test]
fn json_output_of_a_restore_names_the_root_dot() {
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"data\n");
    fixture::chown_tree(&src, 0, 0);
    let repo = t.path().join("repo");
    let id = Repo::new(&repo).create_id(&[&src], &[]);
    fixture::chown_tree(&repo, NOBODY.0, NOBODY.1);
    let r = Repo::new_as(&repo, NOBODY.0, NOBODY.1).restore(&id, &t.path().join("out"), &[]);
    r.expect_code(4);
    let v = stdout_json(&r);
    assert_eq!(
        json_paths(&v, "partial"),
        vec![".", "f"],
        "{}",
        r.describe()
    );
    assert_eq!(r.stderr, "", "{}", r.describe());
}

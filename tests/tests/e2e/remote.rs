//! End-to-end tests of `haul copy` over ssh (issue 17), against a real sshd on 127.0.0.1
//! (`haul_tests::sshd`). The remote side is this machine too, so the independent walker
//! compares what landed "remotely" with SRC, exactly as the local copy tests do.
//!
//! Every run passes `--remote-haul` (the haul under test, by absolute path) and `-e` (the
//! harness's ssh command line: its port, its key, no host key checks). The remote side
//! runs as root: the harness's sshd lets only root in. Where a test needs the remote haul
//! to see another user database or run as another user, `--remote-haul` is a small
//! script that sets that up and then runs the real haul.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use haul_tests::fixture::{self, FixtureOpts};
use haul_tests::sshd::Sshd;
use haul_tests::util::{all, kill9, tmp, tmp_for_nobody, NOBODY};
use haul_tests::{
    assert_trees_equal, ctimes, exists, haul_bin, haul_copy, json_changes, json_count, json_paths,
    read, require_root, run_haul, run_haul_as, spawn_haul, walk, without, CompareOpts, Kind,
    RunResult, Tree,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn start_sshd() -> Sshd {
    Sshd::start().unwrap_or_else(|e| panic!("cannot start the test sshd: {e}"))
}

/// `root@127.0.0.1:/abs/path`, the rsync form of a remote path.
fn rpath(sshd: &Sshd, p: &Path) -> OsString {
    assert!(p.is_absolute());
    let mut s = OsString::from(format!("{}:", sshd.user_at_host()));
    s.push(p.as_os_str());
    s
}

/// `ssh://root@127.0.0.1:PORT/abs/path`.
fn url(port: u16, p: &Path) -> OsString {
    assert!(p.is_absolute());
    let mut s = OsString::from(format!("ssh://root@127.0.0.1:{port}"));
    s.push(p.as_os_str());
    s
}

/// The harness's ssh command without its `-p PORT`, for the ssh:// form, which carries
/// the port itself (OpenSSH keeps the first `-p` it is given, so one in `-e` would win
/// over the URL's).
fn ssh_command_without_port(sshd: &Sshd) -> String {
    let cmd = sshd.ssh_command();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "-p" {
            i += 2;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    let s = out.join(" ");
    assert!(!s.contains(" -p "), "{s}");
    s
}

/// `copy --json --no-progress --remote-haul HAUL -e RSH EXTRA... SRC DST...`.
fn remote_args_with(
    rsh: &str,
    remote_haul: &OsStr,
    extra: &[&str],
    src: &OsStr,
    dsts: &[OsString],
) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "copy".into(),
        "--json".into(),
        "--no-progress".into(),
        "--remote-haul".into(),
        remote_haul.to_os_string(),
        "-e".into(),
        rsh.into(),
    ];
    v.extend(extra.iter().map(OsString::from));
    v.push(src.to_os_string());
    v.extend(dsts.iter().cloned());
    v
}

fn remote_args(sshd: &Sshd, extra: &[&str], src: &OsStr, dsts: &[OsString]) -> Vec<OsString> {
    remote_args_with(
        &sshd.ssh_command(),
        haul_bin().as_os_str(),
        extra,
        src,
        dsts,
    )
}

/// A push: local `src` to `root@127.0.0.1:dst`.
fn push(sshd: &Sshd, extra: &[&str], src: &Path, dst: &Path) -> RunResult {
    run_haul(remote_args(
        sshd,
        extra,
        src.as_os_str(),
        &[rpath(sshd, dst)],
    ))
}

/// A pull: `root@127.0.0.1:src` to local `dst`.
fn pull(sshd: &Sshd, extra: &[&str], src: &Path, dst: &Path) -> RunResult {
    run_haul(remote_args(
        sshd,
        extra,
        &rpath(sshd, src),
        &[dst.as_os_str().to_os_string()],
    ))
}

/// A run's description with the sshd log, for assertion messages.
fn describe(r: &RunResult, sshd: &Sshd) -> String {
    let log = sshd.log();
    let tail: String = log
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    format!("{}\n--- sshd log (tail) ---\n{tail}", r.describe())
}

/// The byte counters the contract adds to a remote run's JSON summary.
fn bytes_sent_received(v: &serde_json::Value) -> (u64, u64) {
    (json_count(v, "bytes_sent"), json_count(v, "bytes_received"))
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

/// The counts a local no-op re-copy of `src` reports, to compare a remote re-run with.
fn local_noop_counts(src: &Path) -> serde_json::Value {
    let t = tmp();
    let dst = t.path().join("dst");
    haul_copy(&[], src, &dst).expect_clean();
    haul_copy(&[], src, &dst).expect_clean()
}

/// Writes an executable script.
fn script(path: &Path, body: &str) {
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Shell-quotes `p` (single quotes).
fn sh_quote(p: &Path) -> String {
    let s = p.to_str().expect("UTF-8 test path");
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------------------
// Fidelity both ways, and a no-op re-run
// ---------------------------------------------------------------------------------------

#[test]
fn push_and_pull_of_every_metadata_kind_are_exact() {
    require_root("push_and_pull_of_every_metadata_kind_are_exact");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("remote_dst");
    let back = t.path().join("pulled");
    fixture::build_full_as_root(&src);
    let s = walk(&src);

    let r = push(&sshd, &[], &src, &dst);
    let v = r.expect_clean();
    assert_trees_equal(&s, &walk(&dst), &all(), "push of the full fixture");
    let (sent, received) = bytes_sent_received(&v);
    assert!(
        sent > 0 && received > 0,
        "push: bytes_sent {sent}, bytes_received {received}\n{}",
        describe(&r, &sshd)
    );
    assert!(json_count(&v, "created") > 0, "{}", describe(&r, &sshd));
    assert!(tmp_leftovers(&dst).is_empty(), "{:?}", tmp_leftovers(&dst));
    // The 1 GiB sparse file stays sparse on the receiving side, and its holes were not
    // sent as zeros.
    let sparse = &walk(&dst)[Path::new(fixture::paths::SPARSE)];
    assert!(sparse.allocated < 1 << 20, "{sparse:?}");
    assert!(
        sent < 256 << 20,
        "push sent {sent} bytes: holes sent as data?\n{}",
        describe(&r, &sshd)
    );

    // Nothing changed: a second push says so and writes nothing.
    let before_ct = ctimes(&dst);
    let r = push(&sshd, &["-v"], &src, &dst);
    let v = r.expect_clean();
    for k in [
        "created",
        "updated",
        "metadata_only",
        "deleted",
        "bytes_copied",
    ] {
        assert_eq!(
            json_count(&v, k),
            0,
            "re-push: {k}\n{}",
            describe(&r, &sshd)
        );
    }
    let local = local_noop_counts(&src);
    assert_eq!(
        json_count(&v, "unchanged"),
        json_count(&local, "unchanged"),
        "re-push: unchanged differs from a local no-op re-copy's ({local})\n{}",
        describe(&r, &sshd)
    );
    assert_eq!(v["source"], local["source"], "re-push: source counts");
    assert_eq!(before_ct, ctimes(&dst), "the no-op re-push changed a ctime");

    // Pull it back.
    let r = pull(&sshd, &[], &dst, &back);
    let v = r.expect_clean();
    assert_trees_equal(&s, &walk(&back), &all(), "pull of the pushed tree");
    let (sent, received) = bytes_sent_received(&v);
    assert!(sent > 0 && received > 0, "pull: {sent} {received}");
    assert!(tmp_leftovers(&back).is_empty());
    // And a second pull has nothing to do either.
    let r = pull(&sshd, &[], &dst, &back);
    let v = r.expect_clean();
    for k in [
        "created",
        "updated",
        "metadata_only",
        "deleted",
        "bytes_copied",
    ] {
        assert_eq!(
            json_count(&v, k),
            0,
            "re-pull: {k}\n{}",
            describe(&r, &sshd)
        );
    }
}

#[test]
fn trailing_slash_and_human_summary() {
    require_root("trailing_slash_and_human_summary");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fixture::build_small(&src);
    // A trailing slash on either side makes no difference: DST mirrors SRC's contents.
    let mut src_slash = src.as_os_str().to_os_string();
    src_slash.push("/");
    let mut dst_slash = rpath(&sshd, &dst);
    dst_slash.push("/");
    let mut args = remote_args(&sshd, &[], &src_slash, &[dst_slash]);
    args.retain(|a| a != "--json");
    let r = run_haul(args);
    r.expect_code(0);
    assert_trees_equal(
        &walk(&src),
        &walk(&dst),
        &all(),
        "push with trailing slashes",
    );
    assert!(
        r.stdout.trim().is_empty(),
        "without --json nothing goes to stdout\n{}",
        r.describe()
    );
    assert!(
        !r.stderr.trim().is_empty(),
        "without --json the summary goes to stderr\n{}",
        r.describe()
    );
}

#[test]
fn ssh_url_with_port_works_both_ways() {
    require_root("ssh_url_with_port_works_both_ways");
    let sshd = start_sshd();
    let rsh = ssh_command_without_port(&sshd);
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    let back = t.path().join("back");
    fixture::build_small(&src);
    let hb = haul_bin();

    let r = run_haul(remote_args_with(
        &rsh,
        hb.as_os_str(),
        &[],
        src.as_os_str(),
        &[url(sshd.port(), &dst)],
    ));
    r.expect_clean();
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "push to ssh://...:PORT/");

    let r = run_haul(remote_args_with(
        &rsh,
        hb.as_os_str(),
        &[],
        &url(sshd.port(), &dst),
        &[back.as_os_str().to_os_string()],
    ));
    r.expect_clean();
    assert_trees_equal(
        &walk(&src),
        &walk(&back),
        &all(),
        "pull from ssh://...:PORT/",
    );
}

// ---------------------------------------------------------------------------------------
// Copy flags, remotely
// ---------------------------------------------------------------------------------------

#[test]
fn delete_and_exclude_remotely() {
    require_root("delete_and_exclude_remotely");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    for f in [
        "keep.txt",
        "skip.log",
        "sub/skip.log",
        "cache/data",
        "sub/x.txt",
    ] {
        fixture::write_file(&src.join(f), f.as_bytes());
    }
    let excluded = ["skip.log", "sub/skip.log", "cache"];
    let ex = ["--exclude", "*.log", "--exclude", "cache/"];

    let r = push(&sshd, &ex, &src, &dst);
    r.expect_clean();
    for e in excluded {
        assert!(
            !exists(&dst.join(e)),
            "excluded {e} was pushed\n{}",
            r.describe()
        );
    }
    assert_trees_equal(
        &without(&walk(&src), &excluded),
        &walk(&dst),
        &all(),
        "push with --exclude",
    );

    // DST's own extraneous entries: removed by --delete unless excluded.
    fixture::write_file(&dst.join("stale.txt"), b"not in src\n");
    fixture::write_file(&dst.join("stale_dir/f"), b"not in src\n");
    fixture::write_file(&dst.join("mine.log"), b"dst's own log\n");
    fixture::write_file(&dst.join("cache/mine"), b"dst's own cache\n");
    let r = push(&sshd, &ex, &src, &dst);
    r.expect_clean();
    assert!(exists(&dst.join("stale.txt")), "deleted without --delete");

    let mut args = ex.to_vec();
    args.extend(["--delete", "-v"]);
    let r = push(&sshd, &args, &src, &dst);
    let v = r.expect_clean();
    assert!(!exists(&dst.join("stale.txt")), "{}", describe(&r, &sshd));
    assert!(!exists(&dst.join("stale_dir")), "{}", describe(&r, &sshd));
    assert_change(&v, "delete", "stale.txt");
    assert_change(&v, "delete", "stale_dir");
    assert!(json_count(&v, "deleted") >= 2, "{}", r.describe());
    assert_eq!(read(&dst.join("mine.log")), b"dst's own log\n");
    assert_eq!(read(&dst.join("cache/mine")), b"dst's own cache\n");
    let dst_excluded = ["mine.log", "cache"];
    assert_trees_equal(
        &without(&walk(&src), &excluded),
        &without(&walk(&dst), &dst_excluded),
        &all(),
        "push with --exclude --delete",
    );

    // The same in a pull: the local DST's extraneous entries go, excluded ones stay.
    let back = t.path().join("back");
    fixture::write_file(&back.join("stale.txt"), b"stale\n");
    fixture::write_file(&back.join("local.log"), b"local log\n");
    let r = pull(&sshd, &["--exclude", "*.log", "--delete"], &dst, &back);
    r.expect_clean();
    assert!(!exists(&back.join("stale.txt")), "{}", r.describe());
    assert_eq!(read(&back.join("local.log")), b"local log\n");
    assert!(!exists(&back.join("mine.log")), "excluded file pulled");
}

#[test]
fn dry_run_changes_nothing_remotely() {
    require_root("dry_run_changes_nothing_remotely");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fixture::build_small(&src);
    fixture::write_file(&src.join("mod.txt"), b"original\n");
    fixture::write_file(&src.join("chmod.txt"), b"mode\n");
    fixture::write_file(&src.join("gone.txt"), b"gone\n");
    push(&sshd, &[], &src, &dst).expect_clean();

    fixture::write_file(&src.join("mod.txt"), b"original, now longer\n");
    fixture::chmod(&src.join("chmod.txt"), 0o600);
    fixture::write_file(&src.join("new.txt"), b"new\n");
    fs::remove_file(src.join("gone.txt")).unwrap();

    let before = walk(&dst);
    let before_ct = ctimes(&dst);
    let r = push(&sshd, &["-n", "--delete"], &src, &dst);
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
    assert!(!has_change(&v, "update", "top.txt"), "{}", r.describe());
    assert_trees_equal(&before, &walk(&dst), &all(), "remote DST after -n");
    assert_eq!(
        before_ct,
        ctimes(&dst),
        "-n changed a ctime on the remote side"
    );

    // A dry-run pull touches nothing locally either.
    let local = t.path().join("local");
    push(&sshd, &[], &src, &dst).expect_clean();
    fixture::build_small(&local);
    let before = walk(&local);
    let before_ct = ctimes(&local);
    let r = pull(&sshd, &["-n"], &dst, &local);
    let v = r.expect_clean();
    assert_change(&v, "create", "new.txt");
    assert_trees_equal(&before, &walk(&local), &all(), "local DST after pull -n");
    assert_eq!(before_ct, ctimes(&local));
}

#[test]
fn checksum_fixes_same_size_same_mtime_change_remotely() {
    require_root("checksum_fixes_same_size_same_mtime_change_remotely");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fixture::build_small(&src);
    fixture::write_file(&src.join("same.txt"), b"version one\n");
    fixture::set_mtime(&src.join("same.txt"), 1_650_000_000, 777);
    fixture::set_mtime(&src, 1_650_000_000, 778);
    push(&sshd, &[], &src, &dst).expect_clean();

    fixture::overwrite_in_place(&src.join("same.txt"), b"VERSION ONE\n");
    fixture::set_mtime(&src.join("same.txt"), 1_650_000_000, 777);

    let r = push(&sshd, &[], &src, &dst);
    let v = r.expect_clean();
    assert_eq!(
        read(&dst.join("same.txt")),
        b"version one\n",
        "quick check should miss it"
    );
    assert_eq!(json_count(&v, "updated"), 0, "{}", r.describe());

    let r = push(&sshd, &["-c"], &src, &dst);
    let v = r.expect_clean();
    assert_eq!(
        read(&dst.join("same.txt")),
        b"VERSION ONE\n",
        "-c missed it\n{}",
        r.describe()
    );
    assert_eq!(json_count(&v, "updated"), 1, "{}", r.describe());
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "after push -c");

    // The same in a pull, the other way round.
    fixture::overwrite_in_place(&dst.join("same.txt"), b"version two\n");
    fixture::set_mtime(&dst.join("same.txt"), 1_650_000_000, 777);
    let r = pull(&sshd, &[], &dst, &src);
    r.expect_clean();
    assert_eq!(read(&src.join("same.txt")), b"VERSION ONE\n");
    let r = pull(&sshd, &["--checksum"], &dst, &src);
    let v = r.expect_clean();
    assert_eq!(
        read(&src.join("same.txt")),
        b"version two\n",
        "{}",
        r.describe()
    );
    assert_eq!(json_count(&v, "updated"), 1, "{}", r.describe());
}

#[test]
fn verify_remotely() {
    require_root("verify_remotely");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    let back = t.path().join("back");
    fixture::build_full_as_root(&src);
    for round in ["first push", "re-push"] {
        let r = push(&sshd, &["--verify"], &src, &dst);
        let v = r.expect_clean();
        assert_eq!(
            json_paths(&v, "verify_mismatches"),
            Vec::<String>::new(),
            "--verify ({round})\n{}",
            r.describe()
        );
    }
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "push --verify");
    let r = pull(&sshd, &["--verify"], &dst, &back);
    let v = r.expect_clean();
    assert_eq!(json_paths(&v, "verify_mismatches"), Vec::<String>::new());
    assert_trees_equal(&walk(&src), &walk(&back), &all(), "pull --verify");
}

// ---------------------------------------------------------------------------------------
// Owners
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

/// Owners in `d` that are not `map` of those in `s`.
fn wrong_owners(s: &Tree, d: &Tree, map: impl Fn(u32, u32) -> (u32, u32)) -> Vec<String> {
    let mut wrong = Vec::new();
    for (p, e) in s {
        let want = map(e.uid, e.gid);
        let got = d.get(p).map(|x| (x.uid, x.gid));
        if got != Some(want) {
            wrong.push(format!(
                "{p:?}: src {}:{} -> want {want:?} got {got:?}",
                e.uid, e.gid
            ));
        }
    }
    wrong
}

#[test]
fn id_maps_apply_on_the_receiving_side() {
    require_root("id_maps_apply_on_the_receiving_side");
    let sshd = start_sshd();
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
    let no_owner = CompareOpts {
        owner: false,
        ..all()
    };
    for (i, (args, map)) in cases.iter().enumerate() {
        let dst = t.path().join(format!("pushed{i}"));
        let r = push(&sshd, args, &src, &dst);
        r.expect_clean();
        let d = walk(&dst);
        assert_trees_equal(&s, &d, &no_owner, &format!("push with {args:?}"));
        let wrong = wrong_owners(&s, &d, map);
        assert!(
            wrong.is_empty(),
            "owners after push {args:?}:\n  {}\n{}",
            wrong.join("\n  "),
            r.describe()
        );

        let back = t.path().join(format!("pulled{i}"));
        let r = pull(&sshd, args, &src, &back);
        r.expect_clean();
        let d = walk(&back);
        assert_trees_equal(&s, &d, &no_owner, &format!("pull with {args:?}"));
        let wrong = wrong_owners(&s, &d, map);
        assert!(
            wrong.is_empty(),
            "owners after pull {args:?}:\n  {}\n{}",
            wrong.join("\n  "),
            r.describe()
        );
    }
}

/// `--map-by-name` resolves names with the RECEIVING host's databases. Both "hosts" are
/// this machine, so the remote haul is given other databases: `--remote-haul` is a script
/// that bind-mounts its own /etc/passwd and /etc/group in a private mount namespace
/// (`unshare -m`) and runs haul there. In them `daemon` is uid 1777 and group `daemon` is
/// gid 1888 (1 and 1 here); uids 1234 and 5678 have no name on either side.
#[test]
fn map_by_name_uses_the_receiving_hosts_databases() {
    require_root("map_by_name_uses_the_receiving_hosts_databases");
    let sshd = start_sshd();
    let t = tmp();
    let etc = t.path().join("remote_etc");
    fixture::mkdir(&etc);
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    let group = fs::read_to_string("/etc/group").unwrap();
    let rewrite = |db: &str, from: &str, to: &str| -> String {
        let out: Vec<String> = db
            .lines()
            .map(|l| {
                if l.starts_with("daemon:") {
                    l.replacen(from, to, 1)
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert_ne!(out.join("\n"), db.trim_end(), "no daemon entry to rewrite");
        out.join("\n") + "\n"
    };
    assert!(
        passwd.lines().any(|l| l.starts_with("daemon:x:1:1:")),
        "this test expects daemon to be uid 1, gid 1 in /etc/passwd"
    );
    assert!(group.lines().any(|l| l.starts_with("daemon:x:1:")));
    fs::write(
        etc.join("passwd"),
        rewrite(&passwd, ":x:1:1:", ":x:1777:1888:"),
    )
    .unwrap();
    fs::write(etc.join("group"), rewrite(&group, ":x:1:", ":x:1888:")).unwrap();
    let wrapper = t.path().join("remote-haul-other-db");
    script(
        &wrapper,
        &format!(
            "#!/bin/sh\nexec unshare -m --propagation private sh -c \
             'mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/group && \
             shift 2 && exec \"$@\"' sh {} {} {} \"$@\"\n",
            sh_quote(&etc.join("passwd")),
            sh_quote(&etc.join("group")),
            sh_quote(&haul_bin()),
        ),
    );
    // The wrapper works: it shows the other database.
    let out = sshd
        .ssh(&format!(
            "unshare -m --propagation private sh -c 'mount --bind {} /etc/passwd && id -u daemon'",
            etc.join("passwd").display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1777",
        "the other user database is not visible through a private mount namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let src = t.path().join("src");
    fixture::write_file(&src.join("daemons"), b"daemon:daemon here\n");
    fixture::write_file(&src.join("unnamed"), b"1234:5678\n");
    fixture::lchown(&src.join("daemons"), 1, 1);
    fixture::lchown(&src.join("unnamed"), 1234, 5678);
    let run = |extra: &[&str], from: OsString, to: OsString| -> RunResult {
        run_haul(remote_args_with(
            &sshd.ssh_command(),
            wrapper.as_os_str(),
            extra,
            &from,
            &[to],
        ))
    };
    let owner = |p: &Path| {
        let d = walk(p.parent().unwrap());
        let e = &d[Path::new(p.file_name().unwrap())];
        (e.uid, e.gid)
    };

    // Push: names resolved on the remote (receiving) side: daemon is 1777:1888 there.
    let pushed = t.path().join("pushed");
    let r = run(
        &["--map-by-name"],
        src.clone().into(),
        rpath(&sshd, &pushed),
    );
    r.expect_clean();
    assert_eq!(
        owner(&pushed.join("daemons")),
        (1777, 1888),
        "push --map-by-name did not use the receiving host's names\n{}",
        describe(&r, &sshd)
    );
    assert_eq!(
        owner(&pushed.join("unnamed")),
        (1234, 5678),
        "unnamed ids stay numeric"
    );
    // Without it, numbers travel as they are.
    let numeric = t.path().join("numeric");
    let r = run(&[], src.clone().into(), rpath(&sshd, &numeric));
    r.expect_clean();
    assert_eq!(owner(&numeric.join("daemons")), (1, 1), "{}", r.describe());

    // Pull from the remote, where the file is daemon's = 1777:1888: it lands as the
    // local daemon, 1:1.
    let pulled = t.path().join("pulled");
    let r = run(
        &["--map-by-name"],
        rpath(&sshd, &pushed),
        pulled.clone().into(),
    );
    r.expect_clean();
    assert_eq!(
        owner(&pulled.join("daemons")),
        (1, 1),
        "pull --map-by-name did not use the receiving (local) host's names\n{}",
        describe(&r, &sshd)
    );
    assert_eq!(owner(&pulled.join("unnamed")), (1234, 5678));
    let r = run(
        &[],
        rpath(&sshd, &pushed),
        t.path().join("pulled_numeric").into(),
    );
    r.expect_clean();
    assert_eq!(
        owner(&t.path().join("pulled_numeric/daemons")),
        (1777, 1888)
    );
}

// ---------------------------------------------------------------------------------------
// Incremental transfer
// ---------------------------------------------------------------------------------------

#[test]
fn appending_1_kib_to_a_64_mib_file_sends_little() {
    require_root("appending_1_kib_to_a_64_mib_file_sends_little");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    let big = src.join("big.bin");
    fixture::write_file(&big, &fixture::random_bytes("remote-big", 64 << 20));
    let r = push(&sshd, &[], &src, &dst);
    let v = r.expect_clean();
    let (first_sent, _) = bytes_sent_received(&v);
    assert!(
        first_sent >= 60 << 20,
        "random data compressed? sent {first_sent}"
    );

    let mut f = fs::OpenOptions::new().append(true).open(&big).unwrap();
    std::io::Write::write_all(&mut f, &fixture::random_bytes("appended", 1024)).unwrap();
    drop(f);
    let r = push(&sshd, &[], &src, &dst);
    let v = r.expect_clean();
    let (sent, received) = bytes_sent_received(&v);
    assert!(
        sent < 2 << 20,
        "appending 1 KiB to a 64 MiB file sent {sent} bytes (received {received})\n{}",
        describe(&r, &sshd)
    );
    assert_eq!(json_count(&v, "updated"), 1, "{}", r.describe());
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "incremental push");

    // The same for a pull: change the remote copy, pull into the local one.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(dst.join("big.bin"))
        .unwrap();
    std::io::Write::write_all(&mut f, &fixture::random_bytes("appended2", 1024)).unwrap();
    drop(f);
    let r = pull(&sshd, &[], &dst, &src);
    let v = r.expect_clean();
    let (sent, received) = bytes_sent_received(&v);
    assert!(
        received < 2 << 20,
        "pulling a 1 KiB append to a 64 MiB file received {received} bytes (sent {sent})\n{}",
        describe(&r, &sshd)
    );
    assert_trees_equal(&walk(&dst), &walk(&src), &all(), "incremental pull");
}

// ---------------------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------------------

fn hosts(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("fan-out JSON has no hosts array: {v}"))
}

/// The entry of `hosts` whose `dest` names 127.0.0.1 and ends with `path` (the contract
/// shows `host:path`; how the user and port are spelt is not pinned down).
fn host_entry<'a>(h: &'a [serde_json::Value], path: &Path, r: &RunResult) -> &'a serde_json::Value {
    let p = path.to_str().unwrap();
    let found: Vec<_> = h
        .iter()
        .filter(|x| {
            x["dest"]
                .as_str()
                .is_some_and(|d| d.contains("127.0.0.1") && d.ends_with(p))
        })
        .collect();
    assert_eq!(found.len(), 1, "one host entry for {p}\n{}", r.describe());
    found[0]
}

#[test]
fn fan_out_to_two_destinations() {
    require_root("fan_out_to_two_destinations");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_full_as_root(&src);
    let s = walk(&src);
    for mode in [&[][..], &["--serial"][..]] {
        let tag = if mode.is_empty() {
            "parallel"
        } else {
            "serial"
        };
        let a = t.path().join(format!("{tag}_a"));
        let b = t.path().join(format!("{tag}_b"));
        let dests = [rpath(&sshd, &a), rpath(&sshd, &b)];
        let r = run_haul(remote_args(&sshd, mode, src.as_os_str(), &dests));
        r.expect_code(0);
        let v = r.json();
        assert_eq!(v["ok"], serde_json::Value::Bool(true), "{}", r.describe());
        let h = hosts(&v);
        assert_eq!(h.len(), 2, "{}", r.describe());
        for d in [&a, &b] {
            host_entry(h, d, &r);
        }
        for x in h {
            assert_eq!(x["ok"], serde_json::Value::Bool(true), "{x}");
            assert_eq!(x["exit_code"], 0, "{x}");
            assert!(json_count(x, "created") > 0, "{x}");
            assert!(json_count(x, "bytes_sent") > 0, "{x}");
        }
        assert_trees_equal(&s, &walk(&a), &all(), &format!("{tag} fan-out, first"));
        assert_trees_equal(&s, &walk(&b), &all(), &format!("{tag} fan-out, second"));
    }
}

#[test]
fn fan_out_with_an_unreachable_destination() {
    require_root("fan_out_with_an_unreachable_destination");
    let sshd = start_sshd();
    let rsh = ssh_command_without_port(&sshd);
    let t = tmp();
    let src = t.path().join("src");
    let good = t.path().join("good");
    fixture::build_small(&src);
    let bad_dest = url(1, Path::new("/x"));
    let good_dest = url(sshd.port(), &good);
    let hb = haul_bin();
    for mode in [&[][..], &["--serial"][..]] {
        let _ = fs::remove_dir_all(&good);
        // The bad one first: the good one must still be done.
        let r = run_haul(remote_args_with(
            &rsh,
            hb.as_os_str(),
            mode,
            src.as_os_str(),
            &[bad_dest.clone(), good_dest.clone()],
        ));
        r.expect_code(1);
        let v = r.json();
        assert_eq!(v["ok"], serde_json::Value::Bool(false), "{}", r.describe());
        let h = hosts(&v);
        assert_eq!(h.len(), 2, "{}", r.describe());
        let b = host_entry(h, Path::new("/x"), &r);
        assert_eq!(b["ok"], serde_json::Value::Bool(false), "{b}");
        assert_eq!(b["exit_code"], 1, "{b}");
        assert!(
            b["error"].as_str().is_some_and(|e| !e.is_empty()),
            "the unreachable host has no error message: {b}"
        );
        let g = host_entry(h, &good, &r);
        assert_eq!(
            g["ok"],
            serde_json::Value::Bool(true),
            "{g}\n{}",
            r.describe()
        );
        assert_eq!(g["exit_code"], 0, "{g}");
        assert_trees_equal(
            &walk(&src),
            &walk(&good),
            &all(),
            "the reachable destination",
        );
    }
}

// ---------------------------------------------------------------------------------------
// Interruption
// ---------------------------------------------------------------------------------------

/// Every regular file in DST under a name SRC also has holds SRC's full content.
fn assert_no_incomplete_final_files(s: &Tree, dst: &Path, when: &str) {
    if !exists(dst) {
        return;
    }
    let d = walk(dst);
    for (p, e) in &d {
        if e.kind != Kind::File
            || p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b".haul-tmp."))
        {
            continue;
        }
        let se = s
            .get(p)
            .unwrap_or_else(|| panic!("{when}: {p:?} in DST is neither in SRC nor a temp file"));
        assert_eq!(
            (e.size, &e.hash),
            (se.size, &se.hash),
            "{when}: {p:?} is present under its final name but its content is incomplete"
        );
    }
    eprintln!(
        "{when}: DST holds {} entries, leftovers {:?}",
        d.len(),
        tmp_leftovers(dst)
    );
}

#[test]
fn killed_push_leaves_no_partial_files_and_rerun_completes() {
    require_root("killed_push_leaves_no_partial_files_and_rerun_completes");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    for i in 0..4 {
        fixture::write_file(
            &src.join(format!("big_{i}.bin")),
            &fixture::random_bytes(&format!("rkill{i}"), 32 << 20),
        );
    }
    for i in 0..200 {
        fixture::write_file(
            &src.join(format!("small/{i}.txt")),
            format!("{i}\n").as_bytes(),
        );
    }
    let s = walk(&src);

    for (round, threshold) in [1u64 << 20, 40 << 20, 90 << 20].into_iter().enumerate() {
        let mut args = remote_args(&sshd, &["-j", "1"], src.as_os_str(), &[rpath(&sshd, &dst)]);
        args.retain(|a| a != "--json");
        let mut child = spawn_haul(args, None);
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
                "the push made no progress in 60 s\n{}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        match finished_early {
            None => {
                kill9(child.id());
                let st = child.wait().unwrap();
                eprintln!(
                    "round {round}: killed the client after {:?}: {st:?}",
                    start.elapsed()
                );
            }
            Some(st) => eprintln!("round {round}: the push ended ({st:?}) before the kill"),
        }
        assert_no_incomplete_final_files(&s, &dst, &format!("after kill round {round}"));
        // The serving side notices its client is gone and stops: check again once it had
        // time to finish whatever it was writing.
        std::thread::sleep(Duration::from_millis(500));
        assert_no_incomplete_final_files(&s, &dst, &format!("after kill round {round}, later"));
    }

    let r = push(&sshd, &["-j", "1"], &src, &dst);
    r.expect_clean();
    assert_trees_equal(&s, &walk(&dst), &all(), "re-run after the killed pushes");
    assert!(
        tmp_leftovers(&dst).is_empty(),
        "temporary files left after the re-run: {:?}",
        tmp_leftovers(&dst)
    );
}

// ---------------------------------------------------------------------------------------
// A remote haul that is missing or talks garbage
// ---------------------------------------------------------------------------------------

#[test]
fn missing_remote_haul_is_fatal_and_names_the_host() {
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    let dst = t.path().join("dst");
    for (what, from, to) in [
        ("push", src.as_os_str().to_os_string(), rpath(&sshd, &dst)),
        ("pull", rpath(&sshd, &src), dst.as_os_str().to_os_string()),
    ] {
        let r = run_haul(remote_args_with(
            &sshd.ssh_command(),
            OsStr::new("/nonexistent/haul"),
            &[],
            &from,
            &[to],
        ));
        r.expect_code(1);
        assert!(
            r.stderr.contains("127.0.0.1"),
            "{what}: the error does not name the host\n{}",
            r.describe()
        );
        assert!(
            r.stderr.contains("--remote-haul") || r.stderr.contains("not found"),
            "{what}: the error does not say the remote haul was not found\n{}",
            r.describe()
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.describe());
    }
    assert!(!exists(&dst), "something was written without a remote haul");
}

#[test]
fn banner_on_stdout_is_refused_with_the_preamble_message() {
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_small(&src);
    let dst = t.path().join("dst");
    let chatty = t.path().join("chatty-haul");
    script(
        &chatty,
        &format!(
            "#!/bin/sh\necho 'Welcome to the machine! Last login: yesterday'\nexec {} \"$@\"\n",
            sh_quote(&haul_bin())
        ),
    );
    let remote_dst = t.path().join("remote_dst");
    for (what, from, to) in [
        (
            "push",
            src.as_os_str().to_os_string(),
            rpath(&sshd, &remote_dst),
        ),
        ("pull", rpath(&sshd, &src), dst.as_os_str().to_os_string()),
    ] {
        let r = run_haul(remote_args_with(
            &sshd.ssh_command(),
            chatty.as_os_str(),
            &[],
            &from,
            &[to],
        ));
        r.expect_code(1);
        assert!(
            r.stderr.contains("preamble"),
            "{what}: the error does not mention the protocol preamble\n{}",
            r.describe()
        );
        assert!(
            r.stderr.contains("Welcome"),
            "{what}: the error does not show what the remote side printed\n{}",
            r.describe()
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.describe());
    }
    // The real haul behind the banner got the Hello and may have made the (empty)
    // root before the client hung up; nothing of SRC may be there.
    assert!(
        !exists(&remote_dst) || haul_tests::list_entries(&remote_dst).len() == 1,
        "the refused push wrote into the remote DST"
    );
    assert!(
        !exists(&dst),
        "something was written by a pull from a chatty remote"
    );
}

#[test]
fn remote_to_remote_is_a_usage_error() {
    let sshd = start_sshd();
    let t = tmp();
    let r = run_haul(remote_args(
        &sshd,
        &[],
        &rpath(&sshd, &t.path().join("a")),
        &[rpath(&sshd, &t.path().join("b"))],
    ));
    r.expect_code(2);
    // A path with a slash before its first colon is local.
    let src = t.path().join("x:y");
    fixture::build_small(&src);
    let dst = t.path().join("dst");
    let r = push(&sshd, &[], &src, &dst);
    r.expect_clean();
    assert_trees_equal(&walk(&src), &walk(&dst), &all(), "local SRC with a colon");
}

// ---------------------------------------------------------------------------------------
// Unprivileged sides
// ---------------------------------------------------------------------------------------

/// The harness's sshd logs in as root only (nobody has no login shell), so a remote haul
/// as another user is run by a `--remote-haul` wrapper that drops to nobody with
/// `setpriv`; the local haul runs as nobody with `run_haul_as`, with its own copy of the
/// client key (ssh refuses a key its user cannot read or others can).
#[test]
fn unprivileged_on_either_side() {
    require_root("unprivileged_on_either_side");
    let sshd = start_sshd();
    let t = tmp_for_nobody();
    let src = t.path().join("src");
    fixture::build_full(
        &src,
        &FixtureOpts {
            privileged: false,
            owner: Some(NOBODY),
        },
    );
    let s = walk(&src);

    // 1. The receiving (remote) haul runs as nobody and writes into nobody's directory.
    let as_nobody = t.path().join("haul-as-nobody");
    script(
        &as_nobody,
        &format!(
            "#!/bin/sh\nexec setpriv --reuid={} --regid={} --clear-groups {} \"$@\"\n",
            NOBODY.0,
            NOBODY.1,
            sh_quote(&haul_bin())
        ),
    );
    fixture::lchown(&as_nobody, 0, 0);
    let dst = t.path().join("remote_as_nobody");
    let r = run_haul(remote_args_with(
        &sshd.ssh_command(),
        as_nobody.as_os_str(),
        &[],
        src.as_os_str(),
        &[rpath(&sshd, &dst)],
    ));
    r.expect_clean();
    let d = walk(&dst);
    assert_trees_equal(&s, &d, &all(), "push to a remote haul running as nobody");
    assert!(d.values().all(|e| (e.uid, e.gid) == NOBODY));

    // 2. The local haul runs as nobody; the remote one as root.
    let key = t.path().join("key");
    fs::copy(sshd.key(), &key).unwrap();
    fixture::lchown(&key, NOBODY.0, NOBODY.1);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let rsh = sshd.ssh_command().replace(
        &sshd.key().display().to_string(),
        &key.display().to_string(),
    );
    let hb = haul_bin();
    let pushed = t.path().join("pushed_by_nobody");
    let r = run_haul_as(
        NOBODY.0,
        NOBODY.1,
        remote_args_with(
            &rsh,
            hb.as_os_str(),
            &[],
            src.as_os_str(),
            &[rpath(&sshd, &pushed)],
        ),
    );
    r.expect_clean();
    assert_trees_equal(
        &s,
        &walk(&pushed),
        &all(),
        "push by a local haul running as nobody",
    );
    let pulled = t.path().join("pulled_by_nobody");
    let r = run_haul_as(
        NOBODY.0,
        NOBODY.1,
        remote_args_with(
            &rsh,
            hb.as_os_str(),
            &[],
            &rpath(&sshd, &src),
            &[pulled.clone().into()],
        ),
    );
    r.expect_clean();
    assert_trees_equal(
        &s,
        &walk(&pulled),
        &all(),
        "pull by a local haul running as nobody",
    );
}

// ---------------------------------------------------------------------------------------
// Transport flags
// ---------------------------------------------------------------------------------------

#[test]
fn compression_flags_and_bwlimit() {
    require_root("compression_flags_and_bwlimit");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    // 8 MiB of text that compresses well (not zeros: those could be sent as holes).
    let text: Vec<u8> = (0..8 << 20).map(|i| b"haul over ssh\n"[i % 14]).collect();
    fixture::write_file(&src.join("text.txt"), &text);
    fixture::build_small(&src.join("small"));
    let s = walk(&src);

    let mut sent = Vec::new();
    for (i, extra) in [
        &["--no-compress"][..],
        &[][..],
        &["--compress-level", "19"][..],
        &["--bwlimit", "200M"][..],
        &["--bwlimit", "2M"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let dst = t.path().join(format!("dst{i}"));
        let r = push(&sshd, extra, &src, &dst);
        let v = r.expect_clean();
        assert_trees_equal(&s, &walk(&dst), &all(), &format!("push {extra:?}"));
        sent.push(json_count(&v, "bytes_sent"));
        let back = t.path().join(format!("back{i}"));
        pull(&sshd, extra, &dst, &back).expect_clean();
        assert_trees_equal(&s, &walk(&back), &all(), &format!("pull {extra:?}"));
    }
    assert!(
        sent[0] >= 8 << 20,
        "--no-compress sent {} bytes, less than the file",
        sent[0]
    );
    // Frames are compressed when they queue for the pipe (the link limits, not the
    // CPU), so how much the default saves depends on the machine; a 2 MiB/s cap makes
    // them queue.
    assert!(
        sent[4] < 6 << 20,
        "with --bwlimit 2M the default compression sent {} bytes of 8 MiB of repeated text \
         (all sent: {sent:?})",
        sent[4]
    );
    for bad in [
        &["--compress-level", "0"][..],
        &["--compress-level", "20"][..],
        &["--bwlimit", "fast"][..],
    ] {
        let r = push(&sshd, bad, &src, &t.path().join("never"));
        r.expect_code(2);
    }
    assert!(!exists(&t.path().join("never")));
}

// ---------------------------------------------------------------------------------------
// More of the local copy's flags and cases, remotely
// ---------------------------------------------------------------------------------------

#[test]
fn hardlink_changes_between_runs_are_mirrored_remotely() {
    require_root("hardlink_changes_between_runs_are_mirrored_remotely");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    let back = t.path().join("back");
    fixture::write_file(&src.join("x"), b"x content\n");
    fixture::write_file(&src.join("z"), b"z content\n");
    fixture::write_file(&src.join("d/w"), b"w content\n");
    for j in ["1", "4"] {
        let _ = fs::remove_dir_all(&dst);
        let _ = fs::remove_dir_all(&back);
        push(&sshd, &["-j", j], &src, &dst).expect_clean();
        pull(&sshd, &["-j", j], &dst, &back).expect_clean();
        fixture::hardlink(&src.join("x"), &src.join("y"));
        fixture::hardlink(&src.join("x"), &src.join("d/x3"));
        push(&sshd, &["--delete", "-j", j], &src, &dst).expect_clean();
        assert_trees_equal(&walk(&src), &walk(&dst), &all(), "push: hardlinks added");
        pull(&sshd, &["--delete", "-j", j], &dst, &back).expect_clean();
        assert_trees_equal(&walk(&src), &walk(&back), &all(), "pull: hardlinks added");

        fs::remove_file(src.join("y")).unwrap();
        fixture::write_file(&src.join("y"), b"x content\n");
        fixture::hardlink(&src.join("z"), &src.join("x2"));
        fs::remove_file(src.join("d/w")).unwrap();
        fixture::hardlink(&src.join("z"), &src.join("d/w"));
        push(&sshd, &["--delete", "-j", j], &src, &dst).expect_clean();
        assert_trees_equal(&walk(&src), &walk(&dst), &all(), "push: links re-pointed");
        pull(&sshd, &["--delete", "-j", j], &dst, &back).expect_clean();
        assert_trees_equal(&walk(&src), &walk(&back), &all(), "pull: links re-pointed");

        // Back to the start for the next round.
        for f in ["y", "x2", "d/x3", "d/w"] {
            fs::remove_file(src.join(f)).unwrap();
        }
        fixture::write_file(&src.join("d/w"), b"w content\n");
    }
}

#[test]
fn no_owner_no_xattrs_no_acls_remotely() {
    require_root("no_owner_no_xattrs_no_acls_remotely");
    let sshd = start_sshd();
    let t = tmp();
    let src = t.path().join("src");
    fixture::build_full_as_root(&src);
    let s = walk(&src);

    for (i, (flag, opts)) in [
        (
            "--no-xattrs",
            CompareOpts {
                xattrs: false,
                acls: false,
                ..all()
            },
        ),
        (
            "--no-acls",
            CompareOpts {
                acls: false,
                ..all()
            },
        ),
    ]
    .into_iter()
    .enumerate()
    {
        for (dir, pushing) in [("push", true), ("pull", false)] {
            let dst = t.path().join(format!("{dir}{i}"));
            let r = if pushing {
                push(&sshd, &[flag], &src, &dst)
            } else {
                pull(&sshd, &[flag], &src, &dst)
            };
            r.expect_clean();
            let d = walk(&dst);
            assert_trees_equal(&s, &d, &opts, &format!("{dir} {flag}"));
            let dropped: Vec<String> = d
                .iter()
                .flat_map(|(p, e)| {
                    e.xattrs
                        .keys()
                        .filter(|k| {
                            haul_tests::is_acl_xattr(k)
                                || (flag == "--no-xattrs"
                                    && !k.as_bytes().starts_with(b"security.selinux"))
                        })
                        .map(move |k| format!("{p:?}: {}", k.to_string_lossy()))
                })
                .collect();
            assert!(dropped.is_empty(), "{dir} {flag} still copied {dropped:?}");
        }
    }

    // --no-owner: as root on the receiving side everything is root's; the one setuid
    // file with a foreign owner loses its setuid and setgid bits, and says so (exit 4).
    for (dir, pushing) in [("push", true), ("pull", false)] {
        let dst = t.path().join(format!("{dir}_no_owner"));
        let r = if pushing {
            push(&sshd, &["--no-owner"], &src, &dst)
        } else {
            pull(&sshd, &["--no-owner"], &src, &dst)
        };
        r.expect_code(4);
        assert_eq!(
            json_paths(&r.json(), "partial"),
            ["owners/suid1234"],
            "{dir}\n{}",
            r.describe()
        );
        let mut d = walk(&dst);
        let suid = Path::new("owners/suid1234");
        assert_eq!(d[suid].mode, 0o755 & s[suid].mode, "{dir}");
        d.get_mut(suid).unwrap().mode = s[suid].mode;
        let no_owner = CompareOpts {
            owner: false,
            ..all()
        };
        assert_trees_equal(&s, &d, &no_owner, &format!("{dir} --no-owner"));
        let foreign: Vec<_> = d
            .iter()
            .filter(|(_, e)| e.uid != 0)
            .map(|(p, _)| p)
            .collect();
        assert!(
            foreign.is_empty(),
            "{dir} --no-owner left owners: {foreign:?}"
        );
    }
}

//! Hostile and broken input for `haul archive extract` / `list` (issue 16): archives
//! crafted byte by byte (`haul_tests::hostile`) so that the cases do not depend on what
//! GNU tar or Python agree to make. Every case checks, on top of its own outcome, that
//! nothing outside DST changed, that haul neither panicked nor hung (a deadline kills it),
//! and that DST holds no temporary leftover and no file with wrong content.
//!
//! The numbers in the test names are the points of issue 16's "Hostile and broken input".

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use haul_tests::fixture;
use haul_tests::hostile::{
    check_run, crc32, crc32_zeros, deflate_zeros, failed, names, notices, quoted_overlap_zip,
    report, run_deadline, walk_at, zstd, zstd_first_block, Fmt, Run, RunSpec, Scene, Tar,
    TarHeader, Zip, ZipEntry, DEFLATE,
};
use haul_tests::repo::Repo;
use haul_tests::util::{ci_contains, NOBODY};
use haul_tests::{file_hash, walk, Kind};

const OK: &[u8] = b"an honest member\n";
const PWN: &[u8] = b"written by a hostile archive\n";

const ALL: [Fmt; 3] = [Fmt::Tar, Fmt::TarZst, Fmt::Zip];
const TARS: [Fmt; 2] = [Fmt::Tar, Fmt::TarZst];

/// One member, for archives built the same way in every format.
#[derive(Clone)]
enum M {
    File(String, Vec<u8>),
    Dir(String, u32),
    Link(String, String),
    Hard(String, String),
}

fn file(name: &str, data: &[u8]) -> M {
    M::File(name.into(), data.to_vec())
}

fn dir(name: &str, mode: u32) -> M {
    M::Dir(name.into(), mode)
}

fn link(name: &str, target: &str) -> M {
    M::Link(name.into(), target.into())
}

fn hard(name: &str, target: &str) -> M {
    M::Hard(name.into(), target.into())
}

/// The members as an archive of format `fmt` (zip has no hardlinks).
fn build(fmt: Fmt, members: &[M]) -> Vec<u8> {
    if fmt == Fmt::Zip {
        let mut z = Zip::new();
        for m in members {
            match m {
                M::File(n, d) => z.add(&ZipEntry::stored(n, d)),
                M::Dir(n, mode) => z.add(&ZipEntry::dir(format!("{n}/"), *mode)),
                M::Link(n, t) => z.add(&ZipEntry::symlink(n, t)),
                M::Hard(..) => panic!("zip has no hardlinks"),
            };
        }
        return z.finish();
    }
    let mut t = Tar::new();
    for m in members {
        match m {
            M::File(n, d) => t.file(n, d),
            M::Dir(n, mode) => t.dir(n, *mode),
            M::Link(n, target) => t.symlink(n, target),
            M::Hard(n, target) => t.hardlink(n, target),
        };
    }
    fmt.wrap_tar(&t.finish())
}

/// A scene (as root, or as nobody) holding the archive of `members`, armed.
fn scene(fmt: Fmt, members: &[M], nobody: bool) -> (Scene, std::path::PathBuf) {
    scene_with(fmt, nobody, |_| members.to_vec())
}

/// Same, the members computed from the scene (for absolute paths into it).
fn scene_with(
    fmt: Fmt,
    nobody: bool,
    members: impl FnOnce(&Scene) -> Vec<M>,
) -> (Scene, std::path::PathBuf) {
    let mut s = if nobody {
        Scene::for_nobody()
    } else {
        Scene::new()
    };
    let ms = members(&s);
    let a = s.archive(fmt.file_name(), &build(fmt, &ms));
    s.arm();
    (s, a)
}

/// `member` ends as a regular file `DST/member` with `content`, reached through real
/// directories only (exit 0, or exit 3 for another member), or the run refuses it and
/// names it (exit 3).
fn written_or_refused(case: &str, s: &Scene, run: &Run, member: &str, content: &[u8]) {
    let written = s.content(member);
    match run.r.code {
        0 | 3 if written.as_deref() == Some(content) => {}
        0 => panic!(
            "{case}: exit 0 but DST/{member} is not a regular file with its content \
             (kind {:?}):\n{}",
            s.kind(member),
            run.r.describe()
        ),
        3 => assert!(
            names(&run.r, member),
            "{case}: exit 3, {member} neither extracted nor named as failed:\n{}",
            run.r.describe()
        ),
        c => panic!("{case}: exit {c}:\n{}", run.r.describe()),
    }
}

// ---- 1. names that leave DST ------------------------------------------------------------

#[test]
fn n1_dotdot_and_absolute_names_are_refused() {
    for fmt in ALL {
        for hostile in ["../escape", "a/../../escape", "./../escape", "ABS"] {
            let case = format!("{fmt:?} member {hostile}");
            let (s, a) = scene_with(fmt, false, |s| {
                let name = if hostile == "ABS" {
                    s.outside_abs("escape")
                } else {
                    hostile.to_string()
                };
                vec![file("ok", OK), file(&name, PWN)]
            });
            let run = s.extract(&a, &[]);
            s.check(&case, &run, &[3], &[("ok", OK)]);
            assert!(
                names(&run.r, "escape"),
                "{case}: refused member not named:\n{}",
                run.r.describe()
            );
            assert_eq!(s.content("ok").as_deref(), Some(OK), "{case}: ok missing");
        }
    }
}

#[test]
fn n1_backslash_and_drive_letter_names_stay_inside() {
    for fmt in ALL {
        for hostile in [
            r"a\..\..\escape",
            r"..\escape",
            r"\escape",
            "C:/escape",
            r"C:\escape",
            r"C:..\escape",
        ] {
            let case = format!("{fmt:?} member {hostile}");
            let (s, a) = scene(fmt, &[file("ok", OK), file(hostile, PWN)], false);
            let run = s.extract(&a, &[]);
            // Refused, or kept under some name inside DST (the literal one, or without
            // the drive): never outside.
            s.check(&case, &run, &[0, 3], &[("ok", OK), ("*", PWN)]);
            let kept = walk_at(&s.dst)
                .into_iter()
                .filter(|e| e.content.as_deref() == Some(PWN))
                .count();
            match run.r.code {
                0 => assert_eq!(kept, 1, "{case}: exit 0 but member not kept inside DST"),
                _ => {
                    assert!(
                        names(&run.r, "escape"),
                        "{case}: not named:\n{}",
                        run.r.describe()
                    );
                    assert_eq!(kept, 0, "{case}: refused but written");
                }
            }
            assert_eq!(s.content("ok").as_deref(), Some(OK), "{case}: ok missing");
        }
    }
}

// ---- 2. a file written through a symlink member (zip: CVE-2025-29787) -------------------

fn through_symlink_member(nobody: bool) {
    for fmt in ALL {
        for abs in [true, false] {
            let case = format!(
                "{fmt:?} l -> {} then l/x",
                if abs { "/abs/outside" } else { "../outside" }
            );
            let (s, a) = scene_with(fmt, nobody, |s| {
                let target = if abs {
                    s.outside_abs("")
                } else {
                    "../outside".into()
                };
                vec![link("l", &target), file("l/x", PWN), file("ok", OK)]
            });
            let run = s.extract(&a, &[]);
            s.check(&case, &run, &[0, 3], &[("ok", OK), ("l/x", PWN)]);
            written_or_refused(&case, &s, &run, "l/x", PWN);
        }
    }
}

#[test]
fn n2_file_through_symlink_member_stays_inside() {
    through_symlink_member(false);
}

#[test]
fn n2_file_through_symlink_member_stays_inside_as_nobody() {
    through_symlink_member(true);
}

// ---- 3. a symlink member, then a file of the same name ----------------------------------

#[test]
fn n3_file_member_replaces_symlink_member() {
    for fmt in ALL {
        for abs in [true, false] {
            let case = format!("{fmt:?} l -> outside/f, then file l (abs {abs})");
            let (s, a) = scene_with(fmt, false, |s| {
                let target = if abs {
                    s.outside_abs("f")
                } else {
                    "../outside/f".into()
                };
                vec![link("l", &target), file("l", b"new\n")]
            });
            let run = s.extract(&a, &[]);
            // Exit 3 only if the symlink member itself was refused (an extractor may
            // refuse links out of DST); the file must be there either way.
            s.check(&case, &run, &[0, 3], &[("l", b"new\n")]);
            if run.r.code == 3 {
                assert_eq!(failed(&run.r), ["l"], "{case}: {}", run.r.describe());
            }
            assert_eq!(
                s.kind("l"),
                Some(Kind::File),
                "{case}: {}",
                run.r.describe()
            );
        }
    }
}

// ---- 4. a directory member over a symlink to a directory (tar-rs CVE-2026-33056) --------

fn dir_over_symlink(nobody: bool) {
    for fmt in ALL {
        for (abs, tgt) in [(true, "sub"), (false, "sub"), (true, "")] {
            let case = format!("{fmt:?} d -> outside/{tgt} (abs {abs}), then dir d 0777, d/x");
            let (s, a) = scene_with(fmt, nobody, |s| {
                let target = if abs {
                    s.outside_abs(tgt)
                } else {
                    format!("../outside/{tgt}")
                };
                vec![link("d", &target), dir("d", 0o777), file("d/x", PWN)]
            });
            let run = s.extract(&a, &[]);
            // check() compares outside/ and outside/sub's modes with the walker.
            s.check(&case, &run, &[0, 3], &[("d/x", PWN)]);
            if run.r.code == 0 {
                assert_eq!(s.kind("d"), Some(Kind::Dir), "{case}: {}", run.r.describe());
                let mode = std::fs::symlink_metadata(s.dst.join("d")).unwrap().mode() & 0o7777;
                assert_eq!(mode, 0o777, "{case}: DST/d mode");
            }
            written_or_refused(&case, &s, &run, "d/x", PWN);
        }
    }
}

#[test]
fn n4_dir_member_over_symlink_leaves_target_mode() {
    dir_over_symlink(false);
}

#[test]
fn n4_dir_member_over_symlink_leaves_target_mode_as_nobody() {
    dir_over_symlink(true);
}

// ---- 5. a chain of symlinks -------------------------------------------------------------

#[test]
fn n5_symlink_chain_then_file() {
    for fmt in ALL {
        for abs in [false, true] {
            let case = format!("{fmt:?} a -> b -> c -> outside (abs {abs}), then a/x");
            let (s, a) = scene_with(fmt, false, |s| {
                let target = if abs {
                    s.outside_abs("")
                } else {
                    "../outside".into()
                };
                vec![
                    link("a", "b"),
                    link("b", "c"),
                    link("c", &target),
                    file("a/x", PWN),
                    file("ok", OK),
                ]
            });
            let run = s.extract(&a, &[]);
            s.check(&case, &run, &[0, 3], &[("ok", OK), ("a/x", PWN)]);
            written_or_refused(&case, &s, &run, "a/x", PWN);
        }
    }
}

// ---- 6. a symlink chain whose expansion is longer than PATH_MAX (CVE-2025-4517) ---------

/// Python's reproducer, in Rust: 16 nested directories of 247-character names, each level
/// with a one-letter symlink to the next, so that `a/b/.../p` is short but expands to
/// almost 4 KiB; a symlink below it climbs back 16 levels (its expansion passes
/// PATH_MAX), and `escape` goes through all of that to `../outside`; then a file is
/// written through `escape`.
#[test]
fn n6_symlink_chain_longer_than_path_max() {
    let comp = "d".repeat(247);
    let steps: Vec<char> = "abcdefghijklmnop".chars().collect();
    let long_link = "l".repeat(254);
    let mut t = Tar::new();
    let mut path = String::new();
    for step in &steps {
        t.dir(format!("{path}{comp}"), 0o755);
        t.symlink(format!("{path}{step}"), &comp);
        path = format!("{path}{comp}/");
    }
    let linkpath: String = steps
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join("/");
    t.symlink(format!("{linkpath}/{long_link}"), "../".repeat(steps.len()));
    t.symlink("escape", format!("{linkpath}/{long_link}/../outside"));
    t.file("escape/pwned", PWN);
    t.file("ok", OK);
    let tar = t.finish();
    for fmt in TARS {
        let case = format!("{fmt:?} PATH_MAX symlink chain");
        let mut s = Scene::new();
        let a = s.archive(fmt.file_name(), &fmt.wrap_tar(&tar));
        s.arm();
        let run = s.extract(&a, &[]);
        s.check(&case, &run, &[0, 3], &[("ok", OK), ("*", PWN)]);
        if run.r.code == 3 {
            assert!(
                names(&run.r, "escape"),
                "{case}: not named:\n{}",
                run.r.describe()
            );
        }
    }
}

// ---- 7. hardlinks out of DST ------------------------------------------------------------

#[test]
fn n7_hardlinks_never_link_outside() {
    for fmt in TARS {
        let case = format!("{fmt:?} hardlinks to outside");
        let (s, a) = scene_with(fmt, false, |s| {
            vec![
                file("ok", OK),
                hard("h_abs", &s.outside_abs("f")),
                hard("h_rel", "../outside/f"),
                link("s", &s.outside_abs("f")),
                hard("h_sym", "s"),
                link("dl", &s.outside_abs("")),
                hard("h_via", "dl/f"),
            ]
        });
        let nlink = std::fs::metadata(s.outside.join("f")).unwrap().nlink();
        let run = s.extract(&a, &[]);
        s.check(&case, &run, &[3], &[("ok", OK)]);
        for m in ["h_abs", "h_rel", "h_via"] {
            assert!(
                names(&run.r, m),
                "{case}: {m} not named:\n{}",
                run.r.describe()
            );
            assert!(
                !matches!(s.kind(m), Some(Kind::File)),
                "{case}: {m} created as a file"
            );
        }
        // A hardlink to the symlink member is the symlink itself (or refused).
        match s.kind("h_sym") {
            Some(Kind::Symlink) => assert_eq!(
                std::fs::read_link(s.dst.join("h_sym")).unwrap(),
                Path::new(&s.outside_abs("f"))
            ),
            None => assert!(
                names(&run.r, "h_sym"),
                "{case}: h_sym neither made nor named"
            ),
            k => panic!("{case}: h_sym is {k:?}"),
        }
        assert_eq!(
            std::fs::metadata(s.outside.join("f")).unwrap().nlink(),
            nlink,
            "{case}: outside/f's link count changed"
        );
    }
}

// ---- 8. a symlink already in DST (GNU tar CVE-2025-45582) -------------------------------

fn existing_symlink_in_dst(nobody: bool) {
    for fmt in ALL {
        let case = format!("{fmt:?} DST/l -> outside, DST/r -> ../outside; members l/x, r/y");
        let mut s = if nobody {
            Scene::for_nobody()
        } else {
            Scene::new()
        };
        fixture::symlink(s.outside_abs(""), &s.dst.join("l"));
        fixture::symlink("../outside", &s.dst.join("r"));
        if nobody {
            fixture::lchown(&s.dst.join("l"), NOBODY.0, NOBODY.1);
            fixture::lchown(&s.dst.join("r"), NOBODY.0, NOBODY.1);
        }
        let a = s.archive(
            fmt.file_name(),
            &build(fmt, &[file("l/x", PWN), file("r/y", PWN), file("ok", OK)]),
        );
        s.arm();
        let run = s.extract(&a, &[]);
        s.check(
            &case,
            &run,
            &[0, 3],
            &[("ok", OK), ("l/x", PWN), ("r/y", PWN)],
        );
        written_or_refused(&case, &s, &run, "l/x", PWN);
        written_or_refused(&case, &s, &run, "r/y", PWN);
    }
}

#[test]
fn n8_member_through_symlink_already_in_dst() {
    existing_symlink_in_dst(false);
}

#[test]
fn n8_member_through_symlink_already_in_dst_as_nobody() {
    existing_symlink_in_dst(true);
}

// ---- 9. setuid, setgid, sticky, devices -------------------------------------------------

fn special_tar() -> Vec<u8> {
    let mut t = Tar::new();
    t.file_mode("suid", 0o4755, b"suid\n")
        .file_mode("sgid", 0o2755, b"sgid\n")
        .file_mode("sticky", 0o1644, b"sticky\n")
        .dir("tmpdir", 0o1777);
    t.chardev("null", 0o666, 1, 3);
    t.finish()
}

fn special_zip() -> Vec<u8> {
    let mut z = Zip::new();
    z.add(&ZipEntry::stored("suid", b"suid\n").mode(0o104755))
        .add(&ZipEntry::stored("sgid", b"sgid\n").mode(0o102755))
        .add(&ZipEntry::stored("sticky", b"sticky\n").mode(0o101644))
        .add(&ZipEntry::dir("tmpdir/", 0o1777));
    z.finish()
}

const SPECIAL_FILES: [(&str, &[u8]); 3] = [
    ("suid", b"suid\n"),
    ("sgid", b"sgid\n"),
    ("sticky", b"sticky\n"),
];

fn mode_of(s: &Scene, rel: &str) -> u32 {
    std::fs::symlink_metadata(s.dst.join(rel)).unwrap().mode() & 0o7777
}

fn special_scene(fmt: Fmt, nobody: bool) -> (Scene, std::path::PathBuf) {
    let mut s = if nobody {
        Scene::for_nobody()
    } else {
        Scene::new()
    };
    let bytes = match fmt {
        Fmt::Zip => special_zip(),
        _ => fmt.wrap_tar(&special_tar()),
    };
    let a = s.archive(fmt.file_name(), &bytes);
    s.arm();
    (s, a)
}

#[test]
fn n9_special_bits_and_devices_kept_as_root() {
    for fmt in ALL {
        let case = format!("{fmt:?} special bits as root");
        let (s, a) = special_scene(fmt, false);
        let run = s.extract(&a, &[]);
        s.check(&case, &run, &[0], &SPECIAL_FILES);
        for (m, want) in [
            ("suid", 0o4755),
            ("sgid", 0o2755),
            ("sticky", 0o1644),
            ("tmpdir", 0o1777),
        ] {
            assert_eq!(
                mode_of(&s, m),
                want,
                "{case}: mode of {m}:\n{}",
                run.r.describe()
            );
        }
        if fmt != Fmt::Zip {
            let md = std::fs::symlink_metadata(s.dst.join("null"))
                .unwrap_or_else(|e| panic!("{case}: no device: {e}\n{}", run.r.describe()));
            assert_eq!(s.kind("null"), Some(Kind::CharDev), "{case}");
            assert_eq!(md.rdev(), nix::sys::stat::makedev(1, 3), "{case}: rdev");
            assert_eq!(md.mode() & 0o7777, 0o666, "{case}: device mode");
        }
    }
}

fn assert_special_cleared(case: &str, s: &Scene, run: &Run, fmt: Fmt) {
    for (m, want) in [
        ("suid", 0o755),
        ("sgid", 0o755),
        ("sticky", 0o644),
        ("tmpdir", 0o777),
    ] {
        assert_eq!(
            mode_of(s, m),
            want,
            "{case}: mode of {m}:\n{}",
            run.r.describe()
        );
    }
    if fmt != Fmt::Zip {
        assert_eq!(
            s.kind("null"),
            None,
            "{case}: device created:\n{}",
            run.r.describe()
        );
    }
}

#[test]
fn n9_no_same_permissions_clears_bits_and_skips_devices() {
    for fmt in ALL {
        let case = format!("{fmt:?} --no-same-permissions");
        let (s, a) = special_scene(fmt, false);
        let run = s.extract(&a, &["--no-same-permissions"]);
        s.check(&case, &run, &[0], &SPECIAL_FILES);
        assert_special_cleared(&case, &s, &run, fmt);
        let n = notices(&run.r);
        let mut named = vec!["suid", "sgid", "sticky", "tmpdir"];
        if fmt != Fmt::Zip {
            named.push("null");
        }
        for m in named {
            assert!(
                n.iter().any(|p| p.trim_end_matches('/').ends_with(m)),
                "{case}: {m} not in notices {n:?}:\n{}",
                run.r.describe()
            );
        }
    }
}

#[test]
fn n9_special_bits_cleared_as_nobody() {
    for fmt in ALL {
        let case = format!("{fmt:?} special bits as nobody");
        let (s, a) = special_scene(fmt, true);
        let run = s.extract(&a, &[]);
        s.check(&case, &run, &[0, 4], &SPECIAL_FILES);
        assert_special_cleared(&case, &s, &run, fmt);
    }
}

// ---- 10. bombs --------------------------------------------------------------------------

/// Peak RSS haul may reach on any input.
const MAX_RSS_KIB: u64 = 100 * 1024;

fn measured() -> RunSpec {
    RunSpec {
        // Generous: the million-entry extract takes about a minute in a debug build.
        deadline: std::time::Duration::from_secs(300),
        measure: true,
        discard_stdout: true,
        ..RunSpec::default()
    }
}

fn extract_measured(s: &Scene, a: &Path) -> Run {
    let args: Vec<std::ffi::OsString> = vec![
        "archive".into(),
        "extract".into(),
        a.into(),
        s.dst.clone().into(),
        "--json".into(),
    ];
    run_deadline(&args, &measured())
}

fn list_measured(a: &Path) -> Run {
    let args: Vec<std::ffi::OsString> =
        vec!["archive".into(), "list".into(), a.into(), "--json".into()];
    run_deadline(&args, &measured())
}

fn assert_rss(case: &str, run: &Run) {
    let rss = run.max_rss_kib.unwrap();
    eprintln!("{case}: exit {}, peak RSS {rss} KiB", run.r.code);
    assert!(
        rss < MAX_RSS_KIB,
        "{case}: peak RSS {rss} KiB >= {MAX_RSS_KIB} KiB\n{}",
        run.r.describe()
    );
}

/// A tar.zst of a few KiB holding a 1 GiB member of zeros: extracted with bounded memory
/// (or refused), never an OOM.
#[test]
fn n10a_zstd_bomb_bounded_memory() {
    const SIZE: u64 = 1 << 30;
    let mut e = zstd::Encoder::new(Vec::new(), 3).unwrap();
    e.include_checksum(true).unwrap();
    let mut h = TarHeader::new("big", b'0');
    h.size = SIZE;
    use std::io::Write;
    e.write_all(&h.encode()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..SIZE >> 20 {
        e.write_all(&zeros).unwrap();
    }
    e.write_all(&[0u8; 1024]).unwrap();
    let z = e.finish().unwrap();
    assert!(z.len() < 256 << 10, "bomb is {} bytes", z.len());

    let case = "tar.zst 1 GiB of zeros";
    let mut s = Scene::new();
    let a = s.archive("bomb.tar.zst", &z);
    s.arm();
    let run = extract_measured(&s, &a);
    check_run(case, &run.r, &[0, 3]);
    s.check_outside(case, &run.r);
    assert_rss(case, &run);
    let entries = walk_at(&s.dst);
    if run.r.code == 0 {
        assert_eq!(
            entries.len(),
            1,
            "{case}: DST holds {} entries",
            entries.len()
        );
        let md = &entries[0].md;
        assert!(
            md.is_file() && md.len() == SIZE,
            "{case}: DST/big is {md:?}"
        );
        let zero = s.root().join("zero");
        fixture::make_sparse(&zero, SIZE, &[]);
        assert_eq!(
            file_hash(&s.dst.join("big")),
            file_hash(&zero),
            "{case}: content"
        );
    } else {
        assert!(
            entries.is_empty(),
            "{case}: refused but left {} entries",
            entries.len()
        );
    }
}

/// A zip whose 512 MiB member of zeros deflates to about half a MiB: extracted with
/// bounded memory (or refused), never an OOM.
#[test]
fn n10a_zip_deflate_bomb_bounded_memory() {
    const SIZE: u64 = 512 << 20;
    let payload = deflate_zeros(SIZE);
    let bomb = ZipEntry {
        name: b"big".to_vec(),
        method: DEFLATE,
        csize: payload.len() as u32,
        payload,
        crc: crc32_zeros(SIZE),
        usize: SIZE as u32,
        mode: Some(0o100644),
    };
    let mut z = Zip::new();
    z.add(&bomb);
    let case = "zip deflate bomb of 512 MiB";
    let mut s = Scene::new();
    let a = s.archive("bomb.zip", &z.finish());
    s.arm();
    let run = extract_measured(&s, &a);
    check_run(case, &run.r, &[0, 3]);
    s.check_outside(case, &run.r);
    assert_rss(case, &run);
    let entries = walk_at(&s.dst);
    if run.r.code == 0 {
        assert_eq!(
            entries.len(),
            1,
            "{case}: DST holds {} entries",
            entries.len()
        );
        let md = &entries[0].md;
        assert!(
            md.is_file() && md.len() == SIZE,
            "{case}: DST/big is {md:?}"
        );
        let zero = s.root().join("zero");
        fixture::make_sparse(&zero, SIZE, &[]);
        assert_eq!(
            file_hash(&s.dst.join("big")),
            file_hash(&zero),
            "{case}: content"
        );
    } else {
        assert!(
            entries.is_empty(),
            "{case}: refused but left {} entries",
            entries.len()
        );
    }
}

/// Two central-directory entries over one local record (Fifield's overlapping-file zip
/// bomb): refused.
#[test]
fn n10b_overlapping_zip_entries_refused() {
    let data = fixture::random_bytes("overlap", 4096);
    let mut z = Zip::new();
    let e = ZipEntry::stored("member-a", &data);
    let off = z.local(&e);
    z.central(&e, off);
    for name in ["member-b", "member-c"] {
        let mut other = e.clone();
        other.name = name.as_bytes().to_vec();
        z.central(&other, off);
    }
    let mut s = Scene::new();
    let a = s.archive("overlap.zip", &z.finish());
    s.arm();
    let run = s.extract(&a, &[]);
    let case = "overlapping zip entries";
    let all: [(&str, &[u8]); 3] = [
        ("member-a", &data),
        ("member-b", &data),
        ("member-c", &data),
    ];
    s.check(case, &run, &[1, 3], &all);
    let written = all.iter().filter(|(n, _)| s.kind(n).is_some()).count();
    assert!(
        written < 3,
        "{case}: all three extracted:\n{}",
        run.r.describe()
    );
    assert!(
        names(&run.r, "overlap.zip") || names(&run.r, "member-"),
        "{case}: no message naming the archive or member:\n{}",
        run.r.describe()
    );
    let list = s.list(&a);
    check_run("list overlapping zip", &list.r, &[0, 1, 3]);
    if run.r.code == 3 {
        for n in ["member-a", "member-b", "member-c"] {
            if s.kind(n).is_none() {
                assert_failed_member(case, &run, n);
            }
        }
    }
}

/// The contract names each failed member by its path in `failed`.
fn assert_failed_member(case: &str, run: &Run, member: &str) {
    assert!(
        failed(&run.r).iter().any(|p| p == member),
        "{case}: exit 3 but `failed` has no entry with path {member:?} (the contract names \
         each failed member by its path): {:?}\n{}",
        failed(&run.r),
        run.r.describe()
    );
}

/// Fifield's quoted-overlap zip bomb: every member well-formed on its own, their data
/// overlapping; refused, at most one member extracted (with its right content).
#[test]
fn n10b_quoted_overlap_zip_refused() {
    let (bytes, members) = quoted_overlap_zip(10, 1 << 20);
    let case = "quoted-overlap zip bomb";
    let mut s = Scene::new();
    let a = s.archive("quoted.zip", &bytes);
    s.arm();
    let run = s.extract(&a, &[]);
    let allowed: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    s.check(case, &run, &[1, 3], &allowed);
    let written: Vec<&str> = members
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| s.kind(n).is_some())
        .collect();
    assert!(written.len() <= 1, "{case}: extracted {written:?}");
    assert!(
        names(&run.r, "quoted.zip") || names(&run.r, "overlap-"),
        "{case}: no message naming the archive or a member:\n{}",
        run.r.describe()
    );
    check_run("list quoted overlap", &s.list(&a).r, &[0, 1, 3]);
    if run.r.code == 3 {
        for (n, _) in &members {
            if !written.contains(&n.as_str()) {
                assert_failed_member(case, &run, n);
            }
        }
    }
}

/// A zip member that inflates past its declared size fails alone; nothing is left under
/// its name.
#[test]
fn n10c_zip_member_longer_than_declared_fails() {
    for method in [0u16, DEFLATE] {
        let case = format!("zip member longer than declared (method {method})");
        let data = fixture::random_bytes("liar", 100_000);
        let mut liar = if method == 0 {
            ZipEntry::stored("liar", &data)
        } else {
            ZipEntry::deflated("liar", &data)
        };
        liar.usize = 10;
        if method == 0 {
            // Stored: the compressed size is the declared size too; the local record
            // still carries all the bytes.
            liar.csize = 10;
        }
        let mut z = Zip::new();
        z.add(&ZipEntry::stored("ok", OK));
        let off = z.local(&liar);
        z.central(&liar, off);
        z.add(&ZipEntry::stored("ok2", OK));
        let mut s = Scene::new();
        let a = s.archive("liar.zip", &z.finish());
        s.arm();
        let run = s.extract(&a, &[]);
        s.check(&case, &run, &[1, 3], &[("ok", OK), ("ok2", OK)]);
        assert!(
            names(&run.r, "liar"),
            "{case}: not named:\n{}",
            run.r.describe()
        );
        if run.r.code == 3 {
            assert_eq!(s.content("ok").as_deref(), Some(OK), "{case}: ok missing");
        }
    }
}

/// A tar member whose header size runs past the end of the stream: a truncated-archive
/// error, the member not left half-written.
#[test]
fn n10c_tar_size_past_end_of_stream() {
    for fmt in TARS {
        let case = format!("{fmt:?} member size past the end");
        let mut t = Tar::new();
        t.file("ok", OK);
        let mut h = TarHeader::new("big", b'0');
        h.size = 1 << 20;
        t.header(&h);
        t.bytes
            .extend_from_slice(&fixture::random_bytes("short", 1000));
        let mut s = Scene::new();
        let a = s.archive(fmt.file_name(), &fmt.wrap_tar(&t.bytes));
        s.arm();
        let run = s.extract(&a, &[]);
        s.check(&case, &run, &[1, 3], &[("ok", OK)]);
        assert!(
            names(&run.r, fmt.file_name()) || names(&run.r, "big"),
            "{case}: error names neither the archive nor the member:\n{}",
            run.r.describe()
        );
    }
}

/// A real zip of 1,000,000 entries (all named `f`, empty): `list` and `extract` finish
/// with bounded memory.
#[test]
fn n10d_zip_with_a_million_entries() {
    let mut z = Zip::new();
    let e = ZipEntry::stored("f", b"");
    for _ in 0..1_000_000 {
        z.add(&e);
    }
    let mut s = Scene::new();
    let a = s.archive("million.zip", &z.finish());
    drop(z);
    s.arm();
    let run = list_measured(&a);
    let case = "list of a million entries";
    check_run(case, &run.r, &[0]);
    assert_rss(case, &run);
    let run = extract_measured(&s, &a);
    let case = "extract of a million entries";
    check_run(case, &run.r, &[0, 3]);
    assert_rss(case, &run);
    s.check_outside(case, &run.r);
    s.check_dst(case, &run.r, &[("f", b"")]);
}

/// An end record claiming far more entries than the central directory holds.
#[test]
fn n10d_zip_lying_entry_count() {
    for count in [1_000_000u64, 1 << 62] {
        let case = format!("zip claiming {count} entries");
        let mut z = Zip::new();
        z.add(&ZipEntry::stored("ok", OK))
            .add(&ZipEntry::stored("ok2", OK));
        let mut s = Scene::new();
        let a = s.archive("count.zip", &z.finish_claiming(count, true));
        s.arm();
        let run = list_measured(&a);
        check_run(&format!("list {case}"), &run.r, &[0, 1]);
        assert_rss(&case, &run);
        let run = extract_measured(&s, &a);
        check_run(&case, &run.r, &[0, 1, 3]);
        assert_rss(&case, &run);
        s.check_outside(&case, &run.r);
        s.check_dst(&case, &run.r, &[("ok", OK), ("ok2", OK)]);
        if run.r.code == 1 {
            assert!(
                names(&run.r, "count.zip"),
                "{case}: archive not named:\n{}",
                run.r.describe()
            );
        }
    }
}

// ---- 11. parser differentials -----------------------------------------------------------

/// The tar of `a` whose PAX size is `pax` and ustar size `ustar` (data as long as the PAX
/// one), a decoy header inside its data, then `b`.
fn pax_size_tar(pax: usize, ustar: usize) -> Vec<u8> {
    let mut t = Tar::new();
    t.pax(&[("size", pax.to_string().as_bytes())]);
    let mut h = TarHeader::new("a", b'0');
    h.size = ustar as u64;
    t.header(&h);
    let mut data = vec![b'A'; 512];
    data.extend_from_slice(&TarHeader::new("decoy", b'0').encode());
    data.resize(pax.max(1024), b'Z');
    data.truncate(pax);
    t.data(&data);
    t.file("b", b"bee\n");
    t.finish()
}

#[test]
fn n11_pax_size_wins_as_in_gnu_tar() {
    for (pax, ustar) in [(1024, 512), (512, 1024), (1536, 0)] {
        let tar = pax_size_tar(pax, ustar);
        for fmt in TARS {
            let case = format!("{fmt:?} pax size {pax}, ustar size {ustar}");
            let mut s = Scene::new();
            let a = s.archive(fmt.file_name(), &fmt.wrap_tar(&tar));
            let plain = s.archive("ref.tar", &tar);
            let gnu = s.root().join("gnu");
            fixture::mkdir(&gnu);
            let out = std::process::Command::new("tar")
                .arg("-xf")
                .arg(&plain)
                .arg("-C")
                .arg(&gnu)
                .output()
                .unwrap();
            s.arm();
            let run = s.extract(&a, &[]);
            // GNU tar's result decides which names and contents are right.
            let mut want: Vec<(String, Vec<u8>)> = Vec::new();
            for e in walk_at(&gnu) {
                if let Some(c) = e.content {
                    want.push((e.rel.to_string_lossy().into_owned(), c));
                }
            }
            let want_ref: Vec<(&str, &[u8])> = want
                .iter()
                .map(|(n, c)| (n.as_str(), c.as_slice()))
                .collect();
            s.check(&case, &run, &[0], &want_ref);
            let opts = haul_tests::CompareOpts {
                root: false,
                ..Default::default()
            };
            haul_tests::assert_trees_equal(
                &walk(&gnu),
                &walk(&s.dst),
                &opts,
                &format!(
                    "{case}: haul's extraction differs from GNU tar's (tar said {})\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    run.r.describe()
                ),
            );
        }
    }
}

/// Local header and central directory disagree on the name (`../evil` locally) or the
/// sizes: refused with a message naming it, or the central directory wins.
#[test]
fn n11_zip_local_header_disagrees_with_central_directory() {
    let data = fixture::random_bytes("mismatch", 100);
    // Name: local `../evil`, central `good`.
    let local_name = {
        let mut e = ZipEntry::stored("../evil", &data);
        e.crc = crc32(&data);
        e
    };
    let mut central_name = local_name.clone();
    central_name.name = b"good-member".to_vec();
    // Sizes: local says 100, central says 5 (with the CRC of the first 5 bytes).
    let local_size = ZipEntry::stored("good-member", &data);
    let mut central_size = local_size.clone();
    central_size.csize = 5;
    central_size.usize = 5;
    central_size.crc = crc32(&data[..5]);
    for (what, local, central, cd_content) in [
        ("name", local_name, central_name, &data[..]),
        ("size", local_size, central_size, &data[..5]),
    ] {
        let case = format!("zip local/central {what} mismatch");
        let mut z = Zip::new();
        z.add(&ZipEntry::stored("ok", OK));
        let off = z.local(&local);
        z.central(&central, off);
        let mut s = Scene::new();
        let a = s.archive("mismatch.zip", &z.finish());
        s.arm();
        let run = s.extract(&a, &[]);
        s.check(
            &case,
            &run,
            &[0, 1, 3],
            &[("ok", OK), ("good-member", cd_content)],
        );
        assert!(s.kind("evil").is_none(), "{case}: local name used");
        match run.r.code {
            0 => assert_eq!(
                s.content("good-member").as_deref(),
                Some(cd_content),
                "{case}"
            ),
            _ => assert!(
                names(&run.r, "good-member") || names(&run.r, "mismatch.zip"),
                "{case}: message names neither member nor archive:\n{}",
                run.r.describe()
            ),
        }
        if run.r.code == 3 {
            assert_failed_member(&case, &run, "good-member");
        }
    }
}

/// Two members with the same name: the last wins (as tar) or the second is refused; the
/// same either way on a second run; never outside.
#[test]
fn n11_duplicate_names_are_deterministic() {
    for fmt in ALL {
        let case = format!("{fmt:?} duplicate names");
        let members = [
            file("dup-member", b"first\n"),
            file("dup-member", b"second\n"),
            file("ok", OK),
        ];
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let (s, a) = scene(fmt, &members, false);
            let run = s.extract(&a, &[]);
            // Exit 0: the last one won; exit 3: the second was refused, the first stays
            // (or neither is there).
            let kept: &[u8] = if run.r.code == 0 {
                b"second\n"
            } else {
                b"first\n"
            };
            s.check(&case, &run, &[0, 3], &[("ok", OK), ("dup-member", kept)]);
            let got = s.content("dup-member");
            match run.r.code {
                0 => assert_eq!(got.as_deref(), Some(kept), "{case}: the last must win"),
                _ => assert!(
                    names(&run.r, "dup-member"),
                    "{case}: not named:\n{}",
                    run.r.describe()
                ),
            }
            outcomes.push((run.r.code, got));
        }
        assert_eq!(outcomes[0], outcomes[1], "{case}: not deterministic");
    }
}

// ---- 12. truncated and corrupt archives -------------------------------------------------

fn abc() -> [(&'static str, Vec<u8>); 3] {
    [
        ("member-a", fixture::random_bytes("a", 600)),
        ("member-b", fixture::random_bytes("b", 3000)),
        ("member-c", fixture::random_bytes("c", 700)),
    ]
}

fn abc_allowed<'a>(m: &'a [(&'static str, Vec<u8>); 3]) -> Vec<(&'static str, &'a [u8])> {
    m.iter().map(|(n, d)| (*n, d.as_slice())).collect()
}

#[test]
fn n12_truncated_tar() {
    let m = abc();
    let mut t = Tar::new();
    t.file(m[0].0, &m[0].1);
    let hdr_b = t.offset();
    t.file(m[1].0, &m[1].1).file(m[2].0, &m[2].1);
    let full = t.finish();
    let mut cases = Vec::new();
    for (what, cut) in [
        ("mid-data", hdr_b + 512 + 1000),
        ("mid-header", hdr_b + 100),
    ] {
        cases.push((what, Fmt::Tar, full[..cut].to_vec()));
        cases.push((what, Fmt::TarZst, zstd(&full[..cut])));
    }
    let z = zstd(&full);
    cases.push((
        "zstd stream cut in half",
        Fmt::TarZst,
        z[..z.len() / 2].to_vec(),
    ));
    {
        for (what, fmt, bytes) in cases {
            let case = format!("{fmt:?} tar cut {what} ({} bytes)", bytes.len());
            let mut s = Scene::new();
            let a = s.archive(fmt.file_name(), &bytes);
            s.arm();
            let run = s.extract(&a, &[]);
            s.check(&case, &run, &[1, 3], &abc_allowed(&m));
            assert!(
                names(&run.r, fmt.file_name()) || names(&run.r, "member-b"),
                "{case}: error names neither the archive nor the member:\n{}",
                run.r.describe()
            );
        }
    }
}

#[test]
fn n12_truncated_zip() {
    let m = abc();
    let mut z = Zip::new();
    for (n, d) in &m {
        z.add(&ZipEntry::stored(n, d));
    }
    let full = z.finish();
    let n = full.len();
    for cut in [10, 40, 700, 1500, 3000, n - 100, n - 30, n - 22, n - 1] {
        let case = format!("zip cut at {cut} of {n}");
        let mut s = Scene::new();
        let a = s.archive("cut.zip", &full[..cut]);
        s.arm();
        let run = s.extract(&a, &[]);
        s.check(&case, &run, &[1, 3], &abc_allowed(&m));
        assert!(
            names(&run.r, "cut.zip"),
            "{case}: error does not name the archive:\n{}",
            run.r.describe()
        );
        let list = s.list(&a);
        check_run(&format!("list {case}"), &list.r, &[1, 3]);
    }
}

#[test]
fn n12_zip_bad_crc_fails_that_member() {
    let m = abc();
    for method in [0u16, DEFLATE] {
        let case = format!("zip bad CRC in b (method {method})");
        let mut z = Zip::new();
        for (n, d) in &m {
            let mut e = if method == 0 {
                ZipEntry::stored(n, d)
            } else {
                ZipEntry::deflated(n, d)
            };
            if *n == "member-b" {
                // Data damaged after the CRC was taken.
                let i = e.payload.len() / 2;
                e.payload[i] ^= 0x5a;
            }
            z.add(&e);
        }
        let mut s = Scene::new();
        let a = s.archive("crc.zip", &z.finish());
        s.arm();
        let run = s.extract(&a, &[]);
        s.check(&case, &run, &[3], &abc_allowed(&m));
        assert!(
            names(&run.r, "member-b"),
            "{case}: not named:\n{}",
            run.r.describe()
        );
        assert!(s.kind("member-b").is_none(), "{case}: member-b left in DST");
        assert_eq!(
            s.content("member-a").as_deref(),
            Some(&m[0].1[..]),
            "{case}: a"
        );
        assert_eq!(
            s.content("member-c").as_deref(),
            Some(&m[2].1[..]),
            "{case}: c"
        );
    }
}

/// A damaged zstd frame: a block header made invalid (detected at once), and a byte
/// flipped in the middle of the data (detected, at the latest, by the frame checksum at the
/// end, which a reader must therefore reach even after the tar end marker).
#[test]
fn n12_corrupt_zstd_frame() {
    let text: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("line {i} of a compressible member\n").into_bytes())
        .collect();
    let mut t = Tar::new();
    t.file("member-a", OK)
        .file("member-b", &text)
        .file("member-c", OK);
    let z = zstd(&t.finish());

    let mut bad_block = z.clone();
    let bh = zstd_first_block(&z);
    bad_block[bh] |= 0b110; // block type 3: reserved
    let case = "zstd reserved block type";
    let mut s = Scene::new();
    let a = s.archive("bad.tar.zst", &bad_block);
    s.arm();
    let run = s.extract(&a, &[]);
    s.check(case, &run, &[1], &[]);
    assert!(
        names(&run.r, "bad.tar.zst"),
        "{case}: archive not named:\n{}",
        run.r.describe()
    );

    // Wherever the byte is, the damage is found: by the decoder, or at the latest by the
    // frame's content checksum, which the reader must reach (and check) even though the
    // tar end marker comes before it.
    for pct in [10, 30, 60, 90] {
        let mut flipped = z.clone();
        let i = z.len() * pct / 100;
        flipped[i] ^= 0x5a;
        let case = format!("zstd byte flipped at {pct}% of the frame");
        let mut s = Scene::new();
        let a = s.archive("flip.tar.zst", &flipped);
        s.arm();
        let run = s.extract(&a, &[]);
        check_run(&case, &run.r, &[1, 3]);
        s.check_outside(&case, &run.r);
        assert!(
            names(&run.r, "flip.tar.zst"),
            "{case}: archive not named:\n{}",
            run.r.describe()
        );
        // Members decoded before the damage was detected may be on disk (a streaming
        // reader cannot know earlier); none may be a temporary.
        for e in walk_at(&s.dst) {
            assert!(
                !e.rel.to_string_lossy().contains(".haul-tmp"),
                "{case}: leftover {:?}",
                e.rel
            );
        }
    }
}

// ---- list and snapshot upload on the same hostile input ---------------------------------

#[test]
fn list_shows_hostile_names_without_following_them() {
    for fmt in ALL {
        let case = format!("{fmt:?} list");
        let (s, a) = scene_with(fmt, false, |s| {
            vec![
                file("../escape", PWN),
                file(&s.outside_abs("abs"), PWN),
                link("l", &s.outside_abs("")),
                file("l/x", PWN),
            ]
        });
        let run = s.list(&a);
        check_run(&case, &run.r, &[0]);
        s.check_outside(&case, &run.r);
        s.check_dst(&case, &run.r, &[]);
        let v: serde_json::Value = serde_json::from_str(run.r.stdout.trim())
            .unwrap_or_else(|e| panic!("{case}: not JSON ({e}):\n{}", run.r.describe()));
        let paths: Vec<&str> = v
            .as_array()
            .unwrap_or_else(|| panic!("{case}: not an array"))
            .iter()
            .filter_map(|e| e["path"].as_str())
            .collect();
        for want in ["escape", "abs", "l/x"] {
            assert!(
                paths.iter().any(|p| p.contains(want)),
                "{case}: {want} not in {paths:?}"
            );
        }
    }
}

/// `snapshot upload` of a hostile archive, then a restore: the restore stays inside DST.
#[test]
fn upload_of_hostile_archive_restores_inside() {
    for fmt in ALL {
        let case = format!("{fmt:?} snapshot upload of a hostile archive");
        let mut s = Scene::new();
        let repo = Repo::new(s.root().join("repo"));
        repo.init().expect_code(0);
        let mut members = vec![
            file("ok", OK),
            file("../escape", PWN),
            link("l", &s.outside_abs("")),
            file("l/x", PWN),
        ];
        if fmt != Fmt::Zip {
            members.push(hard("h", &s.outside_abs("f")));
        }
        let a = s.archive(fmt.file_name(), &build(fmt, &members));
        s.arm();
        let up = repo.snap("upload", &[a.clone().into(), "--json".into()]);
        eprintln!("{case}: exit {}, {}", up.code, up.stdout.trim());
        check_run(&case, &up, &[0, 3]);
        s.check_outside(&case, &up);
        let id = report(&up)
            .and_then(|v| v["id"].as_str().map(String::from))
            .unwrap_or_else(|| panic!("{case}: no id:\n{}", up.describe()));
        assert!(
            names(&up, "escape"),
            "{case}: ../escape not named:\n{}",
            up.describe()
        );
        let r = repo.restore(&id, &s.dst, &[]);
        let case = format!("{fmt:?} restore of the uploaded hostile archive");
        eprintln!("{case}: exit {}, failed {:?}", r.code, failed(&r));
        check_run(&case, &r, &[0, 3]);
        s.check_outside(&case, &r);
        s.check_dst(&case, &r, &[("ok", OK), ("l/x", PWN)]);
    }
}

/// `snapshot upload` of a truncated or corrupt archive: an error naming it, never a
/// clean exit; a fatal one records no snapshot.
#[test]
fn upload_of_broken_archive_fails() {
    let m = abc();
    let mut t = Tar::new();
    for (n, d) in &m {
        t.file(n, d);
    }
    let tar = t.finish();
    let mut z = Zip::new();
    for (n, d) in &m {
        z.add(&ZipEntry::stored(n, d));
    }
    let zip = z.finish();
    let mut bad_zst = zstd(&tar);
    let bh = zstd_first_block(&bad_zst);
    bad_zst[bh] |= 0b110;
    let mut flipped_zst = zstd(&tar);
    let i = flipped_zst.len() / 10;
    flipped_zst[i] ^= 0x5a;
    let mut bad_crc = Zip::new();
    for (n, d) in &m {
        let mut e = ZipEntry::stored(n, d);
        if *n == "member-b" {
            e.payload[10] ^= 0x5a;
        }
        bad_crc.add(&e);
    }
    for (what, name, bytes) in [
        (
            "tar cut mid-data",
            "in.tar",
            tar[..512 + 600 + 512 + 1000].to_vec(),
        ),
        ("zip cut", "in.zip", zip[..zip.len() - 30].to_vec()),
        ("zstd bad block", "in.tar.zst", bad_zst),
        ("zip bad CRC", "crc.zip", bad_crc.finish()),
        // Found only by the frame's content checksum, after the tar end marker.
        ("zstd byte flipped", "flip.tar.zst", flipped_zst),
    ] {
        let case = format!("snapshot upload of {what}");
        let mut s = Scene::new();
        let repo = Repo::new(s.root().join("repo"));
        repo.init().expect_code(0);
        let a = s.archive(name, &bytes);
        s.arm();
        let up = repo.snap("upload", &[a.into(), "--json".into()]);
        eprintln!("{case}: exit {}, {}", up.code, up.stdout.trim());
        check_run(&case, &up, &[1, 3]);
        s.check_outside(&case, &up);
        assert!(
            names(&up, name) || names(&up, "member-b"),
            "{case}: names neither the archive nor the member:\n{}",
            up.describe()
        );
        if up.code == 1 {
            assert!(repo.list().is_empty(), "{case}: a snapshot was recorded");
        }
    }
}

// ---- the same from stdin (`IN` = `-`): the streaming path ------------------------------

#[test]
fn stdin_hostile_members_stay_inside() {
    for fmt in TARS {
        let case = format!("{fmt:?} on stdin: ../escape, l -> ../outside, l/x");
        let mut s = Scene::new();
        let bytes = build(
            fmt,
            &[
                file("ok", OK),
                file("../escape", PWN),
                link("l", "../outside"),
                file("l/x", PWN),
                hard("h", "../outside/f"),
            ],
        );
        s.arm();
        let run = s.extract_stdin(&bytes, &[]);
        s.check(&case, &run, &[3], &[("ok", OK), ("l/x", PWN)]);
        for m in ["../escape", "h"] {
            assert!(
                names(&run.r, m),
                "{case}: {m} not named:\n{}",
                run.r.describe()
            );
        }
        written_or_refused(&case, &s, &run, "l/x", PWN);
    }
}

#[test]
fn stdin_truncated_tar_fails_cleanly() {
    let m = abc();
    let mut t = Tar::new();
    t.file(m[0].0, &m[0].1);
    let hdr_b = t.offset();
    t.file(m[1].0, &m[1].1).file(m[2].0, &m[2].1);
    let full = t.finish();
    for fmt in TARS {
        let case = format!("{fmt:?} on stdin, cut mid-data");
        let mut s = Scene::new();
        s.arm();
        let run = s.extract_stdin(&fmt.wrap_tar(&full[..hdr_b + 512 + 1000]), &[]);
        s.check(&case, &run, &[1, 3], &abc_allowed(&m));
        assert!(
            names(&run.r, "member-b") || ci_contains(&run.r.stderr, "stdin"),
            "{case}: error names neither stdin nor the member:\n{}",
            run.r.describe()
        );
    }
}

/// A zip needs seeking: from stdin it is a usage error that says why.
#[test]
fn stdin_zip_is_a_usage_error() {
    let mut s = Scene::new();
    let bytes = build(Fmt::Zip, &[file("ok", OK)]);
    s.arm();
    let run = s.extract_stdin(&bytes, &[]);
    s.check("zip on stdin", &run, &[2], &[]);
    assert!(
        ci_contains(&run.r.stderr, "zip"),
        "the reason is not given:\n{}",
        run.r.describe()
    );
}

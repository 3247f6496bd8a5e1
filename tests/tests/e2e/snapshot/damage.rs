//! End-to-end tests of a damaged repository: a pack deleted, truncated, flipped or
//! unreadable; an index file flipped or truncated; a snapshot record flipped. Every
//! command runs on the damaged repository, then `snapshot repair`, then a create, then
//! `check --read-data`; at the end every snapshot restores exactly what it recorded, less
//! the files repair names as lost.
//!
//! haul runs as nobody throughout (the tests run as root), so that a pack made unreadable
//! with chmod 000 really is unreadable to it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use haul_tests::fixture;
use haul_tests::repo::{
    file_name, index_records, jarr, jstr, jstrs, os, pack_blobs, stdout_json, PackBlob, Repo,
};
use haul_tests::util::{all, flip_byte, short, tmp_for_nobody, NOBODY};
use haul_tests::{assert_trees_equal, read, require_root, walk, without, RunResult};

/// Root files of the first snapshot: random, so stored raw, and each one blob (no larger
/// than the 256 KiB minimum chunk) whose id is blake3 of its content. With one worker
/// they are bundled in name order, and the first eleven (2.2 MB, past the 2 MiB bundle
/// target) make the first bundle, which alone fills the first 1 MiB pack: a pack of data
/// blobs of known files and no tree.
const ROOT_FILES: usize = 12;
const FILE_LEN: usize = 200_000;
const VICTIM: &str = "v03.bin";

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// A run of haul that may fail, but only with a message.
fn assert_reported(r: &RunResult, what: &str) {
    assert!(
        matches!(r.code, 0 | 1 | 3 | 5),
        "{what}: unexpected exit code:\n{}",
        r.describe()
    );
    if r.code != 0 {
        // A message on stderr, or (with --json) the failures in the report.
        assert!(
            r.stderr.contains("haul:") || r.stdout.contains("\"error\""),
            "{what} failed without a message:\n{}",
            r.describe()
        );
    }
}

/// A repository with two snapshots, A (of `src_a`, taken with one worker, see
/// [`ROOT_FILES`]) and B (of `src_b`, other data), every file owned by nobody.
struct Case {
    _t: tempfile::TempDir,
    dir: PathBuf,
    repo: Repo,
    src_a: PathBuf,
    src_b: PathBuf,
    id_a: String,
    id_b: String,
}

fn case() -> Case {
    let t = tmp_for_nobody();
    let dir = t.path().to_path_buf();
    let src_a = dir.join("src_a");
    for i in 0..ROOT_FILES {
        let name = format!("v{i:02}.bin");
        fixture::write_file(
            &src_a.join(&name),
            &fixture::random_bytes(&format!("damage-{name}"), FILE_LEN),
        );
    }
    fixture::write_file(
        &src_a.join("keep/k.bin"),
        &fixture::random_bytes("damage-k", FILE_LEN),
    );
    fixture::write_file(&src_a.join("keep/small.txt"), b"small\n");
    fixture::write_file(&src_a.join("deep/x/y.txt"), b"deep\n");
    let src_b = dir.join("src_b");
    fixture::write_file(
        &src_b.join("b1.bin"),
        &fixture::random_bytes("damage-b1", FILE_LEN),
    );
    fixture::write_file(&src_b.join("b2.txt"), b"b two\n");
    fixture::chown_tree(&src_a, NOBODY.0, NOBODY.1);
    fixture::chown_tree(&src_b, NOBODY.0, NOBODY.1);
    let repo = Repo::new_as(dir.join("repo"), NOBODY.0, NOBODY.1);
    repo.run(vec![os("repo"), os("init"), os("--pack-size"), os("1")])
        .expect_code(0);
    let id_a = repo.create_id(&[&src_a], &["-j", "1"]);
    let id_b = repo.create_id(&[&src_b], &["-j", "1"]);
    repo.check(true, &[]).expect_code(0);
    Case {
        _t: t,
        dir,
        repo,
        src_a,
        src_b,
        id_a,
        id_b,
    }
}

fn blob_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

impl Case {
    /// The pack holding the victim's blob, with its trailer entries.
    fn victim_pack(&self) -> (PathBuf, Vec<PackBlob>, PackBlob) {
        let victim = blob_hex(&read(&self.src_a.join(VICTIM)));
        let mut found = Vec::new();
        for p in self.repo.packs() {
            let blobs = pack_blobs(&read(&p));
            if let Some(b) = blobs.iter().find(|b| b.id == victim) {
                found.push((p.clone(), blobs.clone(), b.clone()));
            }
        }
        assert_eq!(found.len(), 1, "the victim is not in exactly one pack");
        let (pack, blobs, b) = found.pop().unwrap();
        assert!(
            blobs.iter().all(|b| b.kind == 0),
            "the victim's pack holds a tree: {blobs:?}"
        );
        (pack, blobs, b)
    }

    /// The files of A (as `ls` names them) whose one blob is among `ids`.
    fn files_of_a_in(&self, ids: &BTreeSet<String>) -> BTreeSet<String> {
        walk(&self.src_a)
            .keys()
            .filter(|p| self.src_a.join(p).is_file())
            .filter(|p| ids.contains(&blob_hex(&read(&self.src_a.join(p)))))
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    /// The index file holding A's entries.
    fn index_of_a(&self) -> PathBuf {
        let victim = blob_hex(&read(&self.src_a.join(VICTIM)));
        let hits: Vec<PathBuf> = self
            .repo
            .id_files("index")
            .into_iter()
            .filter(|f| index_records(&read(f)).contains_key(&victim))
            .collect();
        assert_eq!(hits.len(), 1, "the victim is not in exactly one index file");
        hits[0].clone()
    }

    fn snap(&self, sub: &str, args: &[&str]) -> RunResult {
        let args: Vec<_> = args.iter().map(os).collect();
        self.repo.snap(sub, &args)
    }

    fn restore_exact(&self, id: &str, src: &Path, lost: &BTreeSet<String>, what: &str) {
        let dst = self.dir.join(format!("dst-{}", fastrand_name(id, what)));
        self.repo.restore(id, &dst, &[]).expect_clean();
        let lost: Vec<&str> = lost.iter().map(String::as_str).collect();
        assert_trees_equal(&without(&walk(src), &lost), &walk(&dst), &all(), what);
        fs::remove_dir_all(&dst).unwrap();
    }
}

/// A destination name of its own for each restore.
fn fastrand_name(id: &str, what: &str) -> String {
    let tag: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{}-{tag}", short(id))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    PackDeleted,
    PackTruncated,
    PackFlipped,
    PackUnreadable,
    IndexFlipped,
    IndexTruncated,
    RecordFlipped,
}

impl Damage {
    fn of_a_pack(self) -> bool {
        matches!(
            self,
            Damage::PackDeleted
                | Damage::PackTruncated
                | Damage::PackFlipped
                | Damage::PackUnreadable
        )
    }
}

/// Damages `c` as `d` says; returns the files of A whose data is lost, and the file
/// damaged.
fn damage(c: &Case, d: Damage) -> (BTreeSet<String>, PathBuf) {
    match d {
        Damage::PackDeleted
        | Damage::PackTruncated
        | Damage::PackFlipped
        | Damage::PackUnreadable => {
            let (pack, blobs, victim) = c.victim_pack();
            let all_ids: BTreeSet<String> = blobs.iter().map(|b| b.id.clone()).collect();
            match d {
                Damage::PackDeleted => fs::remove_file(&pack).unwrap(),
                Damage::PackUnreadable => {
                    fs::set_permissions(&pack, fs::Permissions::from_mode(0o000)).unwrap()
                }
                Damage::PackTruncated => {
                    // Into the victim's bytes: the bundle holding it and the trailer are lost.
                    truncate(&pack, victim.offset + victim.stored_len / 2)
                }
                _ => {
                    // Random bytes do not compress: the bundle is stored raw (encoding byte
                    // 0), so the flip lands in the victim's own bytes and only it is lost.
                    assert_eq!(read(&pack)[victim.offset as usize], 0, "{victim:?}");
                    flip_byte(&pack, victim.offset + 2 + victim.inner + victim.raw_len / 2);
                    return (BTreeSet::from([VICTIM.to_string()]), pack);
                }
            }
            let lost = c.files_of_a_in(&all_ids);
            assert!(lost.contains(VICTIM) && lost.len() > 1, "{lost:?}");
            (lost, pack)
        }
        Damage::IndexFlipped => {
            let f = c.index_of_a();
            let len = fs::metadata(&f).unwrap().len();
            flip_byte(&f, len / 2);
            (BTreeSet::new(), f)
        }
        Damage::IndexTruncated => {
            let f = c.index_of_a();
            let len = fs::metadata(&f).unwrap().len();
            truncate(&f, len / 2);
            (BTreeSet::new(), f)
        }
        Damage::RecordFlipped => {
            let rec = c.repo.root.join("snapshots").join(&c.id_a);
            let len = fs::metadata(&rec).unwrap().len();
            flip_byte(&rec, len / 2);
            (BTreeSet::new(), rec)
        }
    }
}

/// The whole sequence for one kind of damage; `every_command`: run every command on the
/// damaged repository before the repair (else repair it at once).
fn survive(d: Damage, every_command: bool) {
    let c = case();
    let (lost, damaged) = damage(&c, d);
    if every_command {
        every_command_on(&c, d, &lost, &damaged);
    }
    repair_and_heal(&c, d, &lost, &damaged, every_command);
}

/// Runs every command on the damaged repository: a result or a message, never a panic.
fn every_command_on(c: &Case, d: Damage, lost: &BTreeSet<String>, damaged: &Path) {
    let what = |cmd: &str| format!("{cmd} after {d:?}");
    let list = c.snap("list", &[]);
    assert_reported(&list, &what("list"));
    let list_json = c.snap("list", &["--json"]);
    assert_reported(&list_json, &what("list --json"));
    for id in [&c.id_a, &c.id_b] {
        assert_reported(&c.snap("show", &[id]), &what("show"));
        assert_reported(&c.snap("ls", &[id, "--json"]), &what("ls"));
    }
    let diff = c.snap("diff", &[&c.id_a, &c.id_b]);
    assert_reported(&diff, &what("diff"));
    let ls_a = c.snap("ls", &[&c.id_a, "--json"]);
    let restore_a = c.repo.restore(&c.id_a, &c.dir.join("dst-a-damaged"), &[]);
    assert_reported(&restore_a, &what("restore A"));
    // B shares nothing with the damage.
    c.restore_exact(&c.id_b, &c.src_b, &BTreeSet::new(), &what("restore B"));
    let check = c.repo.check(false, &[]);
    assert_reported(&check, &what("check"));
    let check_all = c.repo.check(true, &[]);
    check_all.expect_code(5);
    if d != Damage::PackFlipped {
        // A flip inside a blob leaves the pack's structure intact.
        check.expect_code(5);
    }
    let early = c.repo.create_raw(&[&c.src_a], &[]);
    assert_reported(&early, &what("create"));
    assert_reported(
        &c.snap("forget", &["--keep-last", "100", "--dry-run"]),
        &what("forget --dry-run"),
    );
    let prune = c.snap("prune", &["--no-progress"]);
    assert_reported(&prune, &what("prune"));

    match d {
        Damage::IndexFlipped | Damage::IndexTruncated => {
            // The damaged index file is passed over and its packs read from their trailers:
            // nothing is lost, everything works.
            let name = file_name(damaged);
            for r in [&restore_a, &early, &prune, &list, &ls_a, &diff] {
                r.expect_code(0);
            }
            assert!(
                restore_a.stderr.contains(&name[..8]),
                "restore does not name the damaged index:\n{}",
                restore_a.describe()
            );
            assert!(
                check.stderr.contains("snapshot repair"),
                "{}",
                check.describe()
            );
            c.restore_exact(&c.id_a, &c.src_a, lost, &what("restore A"));
            // The create wrote the recovered entries to an index file, which holds
            // exactly what the damaged one held and so took its name and place: damaged
            // again, for the repair to find.
            damage(c, d);
        }
        Damage::RecordFlipped => {
            list.expect_code(0);
            assert!(
                list.stdout
                    .lines()
                    .any(|l| l.starts_with(short(&c.id_a)) && l.contains("DAMAGED")),
                "list does not show the damaged record:\n{}",
                list.describe()
            );
            let v = stdout_json(&list_json);
            let damaged: Vec<&str> = jarr(&v)
                .iter()
                .filter(|s| s["damaged"] == true)
                .map(|s| jstr(s, "id"))
                .collect();
            assert_eq!(damaged, [c.id_a.as_str()], "{}", list_json.describe());
            assert!(
                check.stderr.contains(short(&c.id_a)),
                "{}",
                check.describe()
            );
            for r in [&early, &prune] {
                r.expect_code(0);
                assert!(
                    r.stderr.contains("warning") && r.stderr.contains(&c.id_a),
                    "no warning naming the damaged record:\n{}",
                    r.describe()
                );
            }
        }
        Damage::PackDeleted => {
            // Create knows the pack is gone and stores its data again.
            early.expect_code(0);
            assert!(
                early.stderr.contains("snapshot repair"),
                "{}",
                early.describe()
            );
            let id = jstr(&stdout_json(&early), "id").to_string();
            c.restore_exact(&id, &c.src_a, &BTreeSet::new(), &what("create"));
            if damaged.exists() {
                // The create bundled the lost blobs as the first did, into a pack of the
                // same bytes, so of the same name: nothing is missing any more.
                prune.expect_code(0);
            } else {
                // Prune would take the lost data for unused: it refuses, naming repair.
                prune.expect_code(1);
                assert!(
                    prune.stderr.contains("snapshot repair"),
                    "{}",
                    prune.describe()
                );
            }
        }
        _ => {}
    }
}

/// Repairs the damaged repository, rewriting damaged snapshots; a create heals every
/// lost file; then all data reads back, and every snapshot restores what it recorded,
/// less what repair named as lost. `after_commands`: every command ran on the damaged
/// repository first (among them a create).
fn repair_and_heal(
    c: &Case,
    d: Damage,
    lost: &BTreeSet<String>,
    damaged: &Path,
    after_commands: bool,
) {
    let what = |cmd: &str| format!("{cmd} after {d:?}");
    let r = c.snap("repair", &["--snapshots", "--json", "--no-progress"]);
    r.expect_code(0);
    let rep = stdout_json(&r);
    let repaired = jarr(&rep["snapshots"]).clone();
    match d {
        Damage::PackDeleted => assert_eq!(
            jstrs(&rep, "packs_missing").len(),
            usize::from(!damaged.exists()),
            "{rep}"
        ),
        Damage::PackUnreadable => assert_eq!(jstrs(&rep, "packs_unreadable").len(), 1, "{rep}"),
        Damage::PackTruncated | Damage::PackFlipped => {
            assert_eq!(jstrs(&rep, "packs_damaged").len(), 1, "{rep}")
        }
        Damage::IndexFlipped | Damage::IndexTruncated => {
            assert_eq!(jstrs(&rep, "index_files_damaged").len(), 1, "{rep}");
            assert_eq!(rep["blobs_dropped"], 0, "{rep}");
            assert!(repaired.is_empty(), "{rep}");
        }
        Damage::RecordFlipped => {
            assert_eq!(repaired.len(), 1, "{rep}");
            assert!(jstr(&repaired[0], "removed").contains("damaged"), "{rep}");
            assert_eq!(jstr(&repaired[0], "original"), c.id_a, "{rep}");
            assert!(repaired[0]["id"].is_null(), "{rep}");
        }
    }
    if d == Damage::PackFlipped {
        // The victim's neighbours in its bundle were copied out of the damaged pack.
        assert_eq!(rep["blobs_salvaged"], 10, "{rep}");
    }
    if d == Damage::PackDeleted && after_commands {
        // The create before the repair stored the lost data again: nothing is lost now.
        assert_eq!(rep["blobs_dropped"], 0, "{rep}");
        assert!(repaired.is_empty(), "{rep}");
    } else if d.of_a_pack() {
        assert_eq!(rep["blobs_dropped"], lost.len(), "{rep}");
        // A, and the create that reused A's nodes, lose exactly the lost files, each named.
        assert!(!repaired.is_empty(), "{rep}");
        for s in &repaired {
            let dropped: BTreeSet<String> = jstrs(s, "dropped").into_iter().collect();
            assert_eq!(&dropped, lost, "{rep}");
        }
        assert!(
            repaired.iter().any(|s| jstr(s, "original") == c.id_a),
            "{rep}"
        );
    }
    // What each repaired snapshot lost, by its new id.
    let mut dropped_by_id: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &repaired {
        if let Some(id) = s["id"].as_str() {
            dropped_by_id.insert(id.to_string(), jstrs(s, "dropped").into_iter().collect());
        }
    }

    // 3. A create after the repair heals every lost file, then all data reads back.
    let healed = c.repo.create_id(&[&c.src_a], &[]);
    c.repo.check(true, &[]).expect_code(0);
    c.restore_exact(
        &healed,
        &c.src_a,
        &BTreeSet::new(),
        &what("create after repair"),
    );

    // 4. Every snapshot restores what it recorded, less what repair named as lost.
    let listed = c.repo.list();
    assert!(listed.iter().all(|s| s["damaged"] == false), "{listed:?}");
    for s in &listed {
        let id = jstr(s, "id");
        let paths = jstrs(s, "paths");
        let src = if paths[0].ends_with("src_a") {
            &c.src_a
        } else {
            &c.src_b
        };
        let tags = jstrs(s, "tags");
        let none = BTreeSet::new();
        let dropped = match dropped_by_id.get(id) {
            Some(dropped) => {
                assert!(tags.contains(&"repaired".to_string()), "{s}");
                dropped
            }
            None => {
                assert!(!tags.contains(&"repaired".to_string()), "{s}");
                &none
            }
        };
        c.restore_exact(id, src, dropped, &what("final restore"));
    }
    // The repaired records name the one they replace.
    for s in &repaired {
        if let Some(id) = s["id"].as_str() {
            let show = stdout_json(&c.snap("show", &[id, "--json"]));
            assert_eq!(show["original"], s["original"], "{show}");
        }
    }
}

#[test]
fn a_deleted_pack_is_survived_and_repaired() {
    require_root("a_deleted_pack_is_survived_and_repaired (to run haul as nobody)");
    survive(Damage::PackDeleted, true);
    survive(Damage::PackDeleted, false);
}

#[test]
fn a_truncated_pack_is_survived_and_repaired() {
    require_root("a_truncated_pack_is_survived_and_repaired (to run haul as nobody)");
    survive(Damage::PackTruncated, true);
    survive(Damage::PackTruncated, false);
}

#[test]
fn a_flipped_byte_in_a_pack_is_survived_and_repaired() {
    require_root("a_flipped_byte_in_a_pack_is_survived_and_repaired (to run haul as nobody)");
    survive(Damage::PackFlipped, true);
    survive(Damage::PackFlipped, false);
}

#[test]
fn an_unreadable_pack_is_survived_and_repaired() {
    require_root("an_unreadable_pack_is_survived_and_repaired (to run haul as nobody)");
    survive(Damage::PackUnreadable, true);
    survive(Damage::PackUnreadable, false);
}

#[test]
fn a_flipped_byte_in_an_index_file_is_survived_and_repaired() {
    require_root("a_flipped_byte_in_an_index_file_is_survived_and_repaired (as nobody)");
    survive(Damage::IndexFlipped, true);
    survive(Damage::IndexFlipped, false);
}

#[test]
fn a_truncated_index_file_is_survived_and_repaired() {
    require_root("a_truncated_index_file_is_survived_and_repaired (to run haul as nobody)");
    survive(Damage::IndexTruncated, true);
    survive(Damage::IndexTruncated, false);
}

#[test]
fn a_flipped_byte_in_a_snapshot_record_is_survived_and_repaired() {
    require_root("a_flipped_byte_in_a_snapshot_record_is_survived_and_repaired (as nobody)");
    survive(Damage::RecordFlipped, true);
    survive(Damage::RecordFlipped, false);
}

/// After a plain repair (snapshots left as they are), the next create reads again the
/// one file whose data was lost, though it did not change and its parent's node would
/// otherwise be reused unread, and stores it again: that heals the old snapshot too.
#[test]
fn repair_then_create_reads_again_exactly_the_lost_file() {
    require_root("repair_then_create_reads_again_exactly_the_lost_file (as nobody)");
    let c = case();
    damage(&c, Damage::PackFlipped);
    let r = c.snap("repair", &["--json", "--no-progress"]);
    r.expect_code(0);
    let rep = stdout_json(&r);
    assert_eq!(rep["blobs_dropped"], 1, "{rep}");
    assert!(jarr(&rep["snapshots"]).is_empty(), "{rep}");
    let left = jstrs(&rep, "snapshots_damaged");
    assert!(left.len() == 1 && left[0].starts_with(&c.id_a), "{rep}");
    let check = c.repo.check(false, &[]);
    check.expect_code(5);
    assert!(
        check.stderr.contains(short(&c.id_a)) && check.stderr.contains("snapshot repair"),
        "{}",
        check.describe()
    );

    let v = c.repo.create(&[&c.src_a], &[]);
    assert_eq!(v["parent"], c.id_a.as_str(), "{v}");
    assert_eq!(
        v["bytes_read"], FILE_LEN,
        "only the victim is read again: {v}"
    );
    let id = jstr(&v, "id").to_string();
    c.repo.check(true, &[]).expect_code(0);
    for id in [&id, &c.id_a] {
        c.restore_exact(
            id,
            &c.src_a,
            &BTreeSet::new(),
            "create after a plain repair",
        );
    }
}

/// A damaged snapshot record is reported by check and removed by `forget` given a prefix
/// of its id; afterwards the repository is sound.
#[test]
fn a_damaged_snapshot_record_is_forgotten_by_prefix() {
    require_root("a_damaged_snapshot_record_is_forgotten_by_prefix (as nobody)");
    let c = case();
    damage(&c, Damage::RecordFlipped);
    let r = c.repo.check(false, &["--json"]);
    r.expect_code(5);
    let v = stdout_json(&r);
    assert_eq!(
        jstrs(&v, "affected_snapshots"),
        std::slice::from_ref(&c.id_a),
        "{v}"
    );
    let r = c.snap("forget", &[short(&c.id_a)]);
    r.expect_code(0);
    assert!(
        r.stdout.contains(&format!("removed {}", c.id_a)),
        "{}",
        r.describe()
    );
    let listed = c.repo.list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(jstr(&listed[0], "id"), c.id_b);
    c.repo.check(false, &[]).expect_code(0);
}

/// Where the repository holds a blob twice, in two packs each named by its own index
/// file, losing either copy (the pack deleted, or a byte of the blob flipped) loses
/// nothing: restore and check use the sound copy, whichever index names it.
#[test]
fn restore_and_check_use_the_sound_copy_of_a_blob_held_twice() {
    require_root("restore_and_check_use_the_sound_copy_of_a_blob_held_twice (as nobody)");
    for (which, delete) in [(0, true), (1, true), (0, false), (1, false)] {
        let c = case();
        let what = format!(
            "copy {which} {}",
            if delete { "deleted" } else { "flipped" }
        );
        // A second copy of the first pack's blobs: with that pack and A's index put
        // aside, a create of a tree holding the same root files under names in the
        // opposite order (so that they are bundled into a pack of other bytes, not the
        // same pack again) stores them again; then both come back.
        let (first, _, victim) = c.victim_pack();
        let index = c.index_of_a();
        let aside = c.dir.join("aside");
        fs::create_dir(&aside).unwrap();
        fs::rename(&first, aside.join("pack")).unwrap();
        fs::rename(&index, aside.join("index")).unwrap();
        let src_c = c.dir.join("src_c");
        fs::create_dir_all(&src_c).unwrap();
        for i in 0..ROOT_FILES {
            let from = c.src_a.join(format!("v{:02}.bin", ROOT_FILES - 1 - i));
            fs::copy(from, src_c.join(format!("w{i:02}.bin"))).unwrap();
        }
        fixture::chown_tree(&src_c, NOBODY.0, NOBODY.1);
        let id_c = c.repo.create_id(&[&src_c], &["-j", "1"]);
        fs::rename(aside.join("pack"), &first).unwrap();
        fs::rename(aside.join("index"), &index).unwrap();
        let copies: Vec<(PathBuf, PackBlob)> = c
            .repo
            .packs()
            .into_iter()
            .filter_map(|p| {
                let b = pack_blobs(&read(&p))
                    .into_iter()
                    .find(|b| b.id == victim.id)?;
                Some((p, b))
            })
            .collect();
        assert_eq!(copies.len(), 2, "{what}: the victim is not held twice");
        c.repo.check(true, &[]).expect_code(0);

        let (pack, blob) = &copies[which];
        if delete {
            fs::remove_file(pack).unwrap();
        } else {
            assert_eq!(read(pack)[blob.offset as usize], 0, "{what}: {blob:?}");
            flip_byte(pack, blob.offset + 2 + blob.inner + blob.raw_len / 2);
        }
        c.restore_exact(&c.id_a, &c.src_a, &BTreeSet::new(), &what);
        c.restore_exact(&id_c, &src_c, &BTreeSet::new(), &what);
        for read_data in [false, true] {
            let r = c.repo.check(read_data, &["--json"]);
            let v = stdout_json(&r);
            assert!(
                jarr(&v["affected_snapshots"]).is_empty() && jarr(&v["affected_files"]).is_empty(),
                "{what}: check names damage a sound copy makes good:\n{}",
                r.describe()
            );
        }
        // Nothing is lost, so repair drops nothing and leaves every snapshot whole.
        let r = c.snap("repair", &["--snapshots", "--json", "--no-progress"]);
        r.expect_code(0);
        let rep = stdout_json(&r);
        assert_eq!(rep["blobs_dropped"], 0, "{what}: {rep}");
        assert!(jarr(&rep["snapshots"]).is_empty(), "{what}: {rep}");
        c.repo.check(true, &[]).expect_code(0);
        c.restore_exact(&c.id_a, &c.src_a, &BTreeSet::new(), &what);
    }
}

//! Helpers for the snapshot-repository tests: running `haul snapshot ...` against a
//! repository, reading its JSON output, looking at the repository's files, an independent
//! parser of pack trailers, RFC 3339 text and an independent model of retention policies.
//!
//! Like the rest of this crate, nothing here uses haul's own code.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

pub use crate::tree_bytes;
use crate::{command_as, haul_bin, run_to_end, RunResult};

/// A repository the tests run haul against, optionally as another user.
#[derive(Clone, Debug)]
pub struct Repo {
    pub root: PathBuf,
    pub as_user: Option<(u32, u32)>,
}

/// `s` as an `OsString` (to build argument vectors).
pub fn os<S: AsRef<OsStr>>(s: S) -> OsString {
    s.as_ref().to_os_string()
}

/// Run haul with `args` (optionally as `uid:gid`), with `TZ=UTC` so that calendar
/// buckets are unambiguous; killed after [`RUN_TIMEOUT`](crate::RUN_TIMEOUT).
pub fn run_haul_utc(args: Vec<OsString>, as_user: Option<(u32, u32)>) -> RunResult {
    let mut cmd = command_as(&haul_bin(), as_user);
    cmd.args(&args).env("TZ", "UTC").env_remove("HAUL_REPO");
    run_to_end(cmd, args)
}

/// Parse stdout as one JSON value (any shape), with the whole run in the panic message.
pub fn stdout_json(r: &RunResult) -> serde_json::Value {
    serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{}", r.describe()))
}

/// Panic if haul panicked (a Rust panic message on stderr).
pub fn assert_no_panic(r: &RunResult) {
    assert!(
        !r.stderr.contains("panicked") && r.code != 101,
        "haul panicked:\n{}",
        r.describe()
    );
}

/// A string field of a JSON object.
pub fn jstr<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("JSON has no string {key:?}: {v}"))
}

/// An unsigned integer field of a JSON object.
pub fn ju64(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("JSON has no unsigned integer {key:?}: {v}"))
}

/// An array-of-strings field of a JSON object.
pub fn jstrs(v: &serde_json::Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(|x| x.as_array())
        .unwrap_or_else(|| panic!("JSON has no array {key:?}: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("{key:?} holds a non-string: {v}"))
                .to_string()
        })
        .collect()
}

/// A JSON array value's elements.
pub fn jarr(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("JSON is not an array: {v}"))
}

/// `true` for a 64-character lowercase hex id.
pub fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Repo {
    pub fn new(root: impl Into<PathBuf>) -> Repo {
        Repo {
            root: root.into(),
            as_user: None,
        }
    }

    pub fn new_as(root: impl Into<PathBuf>, uid: u32, gid: u32) -> Repo {
        Repo {
            root: root.into(),
            as_user: Some((uid, gid)),
        }
    }

    /// `haul ARGS... --repo R`.
    pub fn run(&self, args: Vec<OsString>) -> RunResult {
        let mut args = args;
        args.push("--repo".into());
        args.push(self.root.clone().into());
        let r = run_haul_utc(args, self.as_user);
        assert_no_panic(&r);
        r
    }

    /// `haul snapshot SUB ARGS... --repo R`.
    pub fn snap(&self, sub: &str, args: &[OsString]) -> RunResult {
        let mut v = vec![os("snapshot"), os(sub)];
        v.extend(args.iter().cloned());
        self.run(v)
    }

    /// `haul repo init --repo R`.
    pub fn init(&self) -> RunResult {
        self.run(vec![os("repo"), os("init")])
    }

    /// `haul snapshot create --json --no-progress PATHS... EXTRA...` (not checked).
    pub fn create_raw(&self, paths: &[&Path], extra: &[&str]) -> RunResult {
        let mut v: Vec<OsString> = vec![os("--json"), os("--no-progress")];
        v.extend(paths.iter().map(os));
        v.extend(extra.iter().map(os));
        self.snap("create", &v)
    }

    /// A create that must succeed (exit 0, no failed entries); returns its JSON summary.
    pub fn create(&self, paths: &[&Path], extra: &[&str]) -> serde_json::Value {
        let r = self.create_raw(paths, extra);
        r.expect_code(0);
        let v = stdout_json(&r);
        assert!(
            is_id(jstr(&v, "id")),
            "create --json has no 64-hex id:\n{}",
            r.describe()
        );
        match v.get("failed").and_then(|f| f.as_array()) {
            Some(f) => assert!(f.is_empty(), "create reported failures:\n{}", r.describe()),
            None => panic!("create --json has no failed array:\n{}", r.describe()),
        }
        v
    }

    /// The id from a create that must succeed.
    pub fn create_id(&self, paths: &[&Path], extra: &[&str]) -> String {
        jstr(&self.create(paths, extra), "id").to_string()
    }

    /// `snapshot list --json`, which must succeed.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let r = self.snap("list", &[os("--json")]);
        r.expect_code(0);
        jarr(&stdout_json(&r)).clone()
    }

    /// Ids from `snapshot list --json`, in the order listed.
    pub fn list_ids(&self) -> Vec<String> {
        self.list()
            .iter()
            .map(|s| jstr(s, "id").to_string())
            .collect()
    }

    /// `snapshot show ID --json`, which must succeed.
    pub fn show(&self, id: &str) -> serde_json::Value {
        let r = self.snap("show", &[os(id), os("--json")]);
        r.expect_code(0);
        stdout_json(&r)
    }

    /// `snapshot ls ID [PATH] --json`, which must succeed.
    pub fn ls(&self, id: &str, path: Option<&str>) -> Vec<serde_json::Value> {
        let mut v = vec![os(id)];
        if let Some(p) = path {
            v.push(os(p));
        }
        v.push(os("--json"));
        let r = self.snap("ls", &v);
        r.expect_code(0);
        jarr(&stdout_json(&r)).clone()
    }

    /// `snapshot diff A B --json` as (path, change) pairs, sorted.
    pub fn diff(&self, a: &str, b: &str) -> BTreeSet<(String, String)> {
        let r = self.snap("diff", &[os(a), os(b), os("--json")]);
        r.expect_code(0);
        jarr(&stdout_json(&r))
            .iter()
            .map(|e| (jstr(e, "path").to_string(), jstr(e, "change").to_string()))
            .collect()
    }

    /// `snapshot restore ID DST --json --no-progress EXTRA...` (not checked).
    pub fn restore(&self, id: &str, dst: &Path, extra: &[&str]) -> RunResult {
        let mut v = vec![os(id), os(dst), os("--json"), os("--no-progress")];
        v.extend(extra.iter().map(os));
        self.snap("restore", &v)
    }

    /// `snapshot check [--read-data] EXTRA...` (not checked).
    pub fn check(&self, read_data: bool, extra: &[&str]) -> RunResult {
        let mut v = Vec::new();
        if read_data {
            v.push(os("--read-data"));
        }
        v.extend(extra.iter().map(os));
        self.snap("check", &v)
    }

    /// `snapshot forget ARGS... --json`: (keep, remove), which must succeed.
    pub fn forget(&self, args: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut v: Vec<OsString> = args.iter().map(os).collect();
        v.push(os("--json"));
        let r = self.snap("forget", &v);
        r.expect_code(0);
        let j = stdout_json(&r);
        (
            jstrs(&j, "keep").into_iter().collect(),
            jstrs(&j, "remove").into_iter().collect(),
        )
    }

    /// Files named by a 64-hex id directly under `R/<dir>` (index, snapshots, locks).
    pub fn id_files(&self, dir: &str) -> Vec<PathBuf> {
        id_files_in(&self.root.join(dir))
    }

    /// Complete pack files `R/data/<2 hex>/<64 hex>` (temporary files are not listed).
    pub fn packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.root.join("data")) else {
            return out;
        };
        for fan in rd.flatten() {
            out.extend(id_files_in(&fan.path()));
        }
        out.sort();
        out
    }

    /// Bytes in complete pack files.
    pub fn pack_bytes(&self) -> u64 {
        self.packs()
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Bytes of every regular file under R (packs, temporaries, indexes, records...).
    pub fn total_bytes(&self) -> u64 {
        tree_bytes(&self.root)
    }
}

fn id_files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        if e.file_name().to_str().is_some_and(is_id) && e.path().is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// The file name of `p` as a string (ids are ASCII).
pub fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------
// Pack trailers, parsed independently from the documented layout:
//   ... blobs ... | entries 52 B × n | footer 56 B
//   entry:  id [32] | offset u32 | stored_len u32 | raw_len u32 | inner u32 | kind u8 |
//           3 zero bytes
//   The members of a bundle share offset and stored_len; inner is the member's offset
//   within the bundle's plaintext.
//   footer: entry_count u32 | index_offset u32 | flags u32 | reserved u32 | checksum [32] |
//           "HAULPEND"
// ---------------------------------------------------------------------------------------

/// One blob as listed in a pack's trailer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackBlob {
    /// Hex of blake3 of the plaintext.
    pub id: String,
    pub offset: u64,
    pub stored_len: u64,
    pub raw_len: u64,
    /// Offset within the stored blob's plaintext (bundle members).
    pub inner: u64,
    /// 0 data, 1 tree.
    pub kind: u8,
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}

/// The blobs listed in a pack file's trailer.
pub fn pack_blobs(pack: &[u8]) -> Vec<PackBlob> {
    const FOOTER: usize = 56;
    const ENTRY: usize = 52;
    assert!(
        pack.len() >= FOOTER && &pack[pack.len() - 8..] == b"HAULPEND",
        "not a pack (no HAULPEND at the end)"
    );
    let footer = &pack[pack.len() - FOOTER..];
    let count = le32(footer, 0) as usize;
    let start = pack.len() - FOOTER - count * ENTRY;
    (0..count)
        .map(|i| {
            let e = &pack[start + i * ENTRY..start + (i + 1) * ENTRY];
            PackBlob {
                id: e[..32].iter().map(|b| format!("{b:02x}")).collect(),
                offset: le32(e, 32),
                stored_len: le32(e, 36),
                raw_len: le32(e, 40),
                inner: le32(e, 44),
                kind: e[48],
            }
        })
        .collect()
}

/// Byte offsets of the records of an index file, by blob id (hex). Layout:
///   header 32 B: "HAULINDX" | version u32 | flags u32 | pack_count u32 | reserved u32 |
///                record_count u64
///   packs 32 B × pack_count, records 56 B × record_count (id \[32\] first), footer 32 B.
pub fn index_records(index: &[u8]) -> BTreeMap<String, usize> {
    assert!(
        index.len() >= 64 && &index[..8] == b"HAULINDX",
        "not an index file"
    );
    let packs = le32(index, 16) as usize;
    let count = u64::from_le_bytes(index[24..32].try_into().unwrap()) as usize;
    let start = 32 + 32 * packs;
    assert_eq!(
        start + 56 * count + 32,
        index.len(),
        "index length does not match its header"
    );
    (0..count)
        .map(|i| {
            let at = start + 56 * i;
            (
                index[at..at + 32]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
                at,
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// RFC 3339 (UTC) and other small utilities.
// ---------------------------------------------------------------------------------------

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for whole seconds since the epoch.
pub fn rfc3339(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Parse RFC 3339 text (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) to (secs, nanos) UTC.
pub fn parse_rfc3339(s: &str) -> (i64, i64) {
    let bad = || panic!("not RFC 3339: {s:?}");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        bad();
    }
    let num = |r: std::ops::Range<usize>| -> i64 {
        s.get(r).and_then(|x| x.parse().ok()).unwrap_or_else(bad)
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    );
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        let mut digits: String = frac.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        nanos = digits.parse().unwrap_or_else(|_| bad());
    }
    let offset = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let hh: i64 = tz[1..3].parse().unwrap_or_else(|_| bad());
            let mm: i64 = tz[4..6].parse().unwrap_or_else(|_| bad());
            let o = hh * 3600 + mm * 60;
            if tz.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => bad(),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset;
    (secs, nanos)
}

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .expect("gethostname")
        .to_string_lossy()
        .into_owned()
}

/// The pid of a process that has exited and been reaped.
pub fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true")
        .spawn()
        .expect("run `true` (Debian package coreutils)");
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Write a lock record `R/locks/<blake3 of its bytes>` and return its path.
pub fn write_lock(
    repo: &Path,
    host: &str,
    user: &str,
    pid: u32,
    time: &str,
    exclusive: bool,
) -> PathBuf {
    let v = serde_json::json!({
        "hostname": host,
        "username": user,
        "pid": pid,
        "time": time,
        "exclusive": exclusive,
    });
    let mut bytes = serde_json::to_vec(&v).unwrap();
    bytes.push(b'\n');
    write_named_by_hash(&repo.join("locks"), &bytes)
}

/// Write `bytes` into `dir/<blake3 hex of bytes>` and return the path.
pub fn write_named_by_hash(dir: &Path, bytes: &[u8]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let p = dir.join(blake3::hash(bytes).to_hex().as_str());
    fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

// ---------------------------------------------------------------------------------------
// Retention: an independent model of `forget --keep-*`.
// ---------------------------------------------------------------------------------------

/// A retention policy: the union of its rules.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Keep the N newest.
    pub last: Option<usize>,
    /// Keep everything newer than (newest time − this many seconds).
    pub within: Option<i64>,
    /// (bucket length in seconds, N): the newest snapshot in each of the N most recent
    /// epoch-aligned buckets that hold a snapshot.
    pub intervals: Vec<(i64, usize)>,
    /// (calendar unit, N): like `intervals`, with calendar buckets in UTC (restic's
    /// --keep-weekly/monthly/yearly; weeks are ISO weeks, starting on Monday).
    pub calendar: Vec<(Calendar, usize)>,
}

/// Calendar buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calendar {
    Week,
    Month,
    Year,
}

impl Calendar {
    /// A number identifying the bucket holding time `t` (UTC).
    pub fn bucket(self, t: i64) -> i64 {
        let days = t.div_euclid(86_400);
        match self {
            // 1970-01-01 was a Thursday: shift so that weeks start on Monday.
            Calendar::Week => (days + 3).div_euclid(7),
            Calendar::Month => {
                let (y, m, _) = civil_from_days(days);
                y * 12 + m
            }
            Calendar::Year => civil_from_days(days).0,
        }
    }
}

/// The ids `policy` keeps out of `snaps` (id, time in seconds).
pub fn expected_keep(snaps: &[(String, i64)], policy: &Policy) -> BTreeSet<String> {
    let mut newest_first: Vec<&(String, i64)> = snaps.iter().collect();
    newest_first.sort_by_key(|s| std::cmp::Reverse(s.1));
    let mut keep = BTreeSet::new();
    if let Some(n) = policy.last {
        keep.extend(newest_first.iter().take(n).map(|s| s.0.clone()));
    }
    if let (Some(w), Some(latest)) = (policy.within, newest_first.first()) {
        let cutoff = latest.1 - w;
        keep.extend(
            newest_first
                .iter()
                .filter(|s| s.1 > cutoff)
                .map(|s| s.0.clone()),
        );
    }
    type Rule = (Box<dyn Fn(i64) -> i64>, usize);
    let rules: Vec<Rule> = policy
        .intervals
        .iter()
        .map(|&(len, n)| {
            (
                Box::new(move |t: i64| t.div_euclid(len)) as Box<dyn Fn(i64) -> i64>,
                n,
            )
        })
        .chain(policy.calendar.iter().map(|&(c, n)| {
            (
                Box::new(move |t: i64| c.bucket(t)) as Box<dyn Fn(i64) -> i64>,
                n,
            )
        }))
        .collect();
    for (bucket_of, n) in &rules {
        let n = *n;
        // bucket -> newest snapshot in it
        let mut buckets: BTreeMap<i64, (i64, &String)> = BTreeMap::new();
        for (id, t) in snaps {
            let b = bucket_of(*t);
            let e = buckets.entry(b).or_insert((*t, id));
            if *t > e.0 {
                *e = (*t, id);
            }
        }
        keep.extend(buckets.values().rev().take(n).map(|(_, id)| (*id).clone()));
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        for t in [0i64, 1, 86_399, 951_782_400, 1_709_251_200, -1, -86_401] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), (t, 0), "{}", rfc3339(t));
        }
        assert_eq!(rfc3339(1_709_251_200), "2024-03-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2024-03-01T01:00:00.5+01:00"),
            (1_709_251_200, 500_000_000)
        );
    }

    #[test]
    fn retention_model() {
        let s = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
            v.iter().map(|(a, b)| (a.to_string(), *b)).collect()
        };
        let snaps = s(&[("a", 0), ("b", 10), ("c", 70), ("d", 130), ("e", 135)]);
        let k = |p: Policy| expected_keep(&snaps, &p).into_iter().collect::<Vec<_>>();
        assert_eq!(
            k(Policy {
                last: Some(2),
                ..Default::default()
            }),
            ["d", "e"]
        );
        assert_eq!(
            k(Policy {
                within: Some(70),
                ..Default::default()
            }),
            ["c", "d", "e"]
        );
        assert_eq!(
            k(Policy {
                intervals: vec![(60, 2)],
                ..Default::default()
            }),
            ["c", "e"]
        );
        assert_eq!(
            k(Policy {
                intervals: vec![(60, 10)],
                ..Default::default()
            }),
            ["b", "c", "e"]
        );
        // 2024-03-04 is a Monday, 2024-03-03 a Sunday.
        assert_eq!(
            Calendar::Week.bucket(1_709_510_400),
            Calendar::Week.bucket(1_709_510_400 + 6 * 86_400 + 86_399)
        );
        assert_eq!(
            Calendar::Week.bucket(1_709_510_400 - 1) + 1,
            Calendar::Week.bucket(1_709_510_400)
        );
        assert_eq!(Calendar::Month.bucket(1_709_251_200), 2024 * 12 + 3);
        assert_eq!(Calendar::Month.bucket(1_709_251_199), 2024 * 12 + 2);
        assert_eq!(Calendar::Year.bucket(1_709_251_200), 2024);
    }
}

//! End-to-end tests of snapshot edge cases: snapshots of single files, read-only
//! repositories (`--no-lock`), locks from other hosts, a repository inside the source,
//! and retention policies that keep nothing.
//!
//! Run as root (CI does): some tests run haul as nobody.

use haul_tests::fixture;
use haul_tests::repo::{os, rfc3339, Repo};

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("haul-edge-")
        .tempdir_in("/tmp")
        .expect("tempdir in /tmp")
}

fn ci_contains(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(&needle.to_lowercase())
}

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

//! Which snapshots a retention policy keeps. Pure logic over (id, time)
//! pairs, so it is tested without a repository.
//!
//! Rules are unions: a snapshot kept by any rule is kept. Bucket rules keep
//! the newest snapshot in each of the N most recent buckets that hold one:
//! `--keep-interval DUR:N` (and hourly, daily) use fixed-length buckets
//! aligned to the Unix epoch; weekly, monthly and yearly use ISO weeks and
//! calendar months and years, as restic does. All in UTC.
use std::collections::BTreeSet;

use haul_formats::{Id, Timestamp};

/// A duration or interval that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what} {input:?}: {why}")]
pub struct RetentionError {
    what: &'static str,
    input: String,
    why: &'static str,
}

/// How a bucket rule groups snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    /// Fixed-length buckets of this many seconds, aligned to the Unix epoch
    /// (`--keep-interval`, and hourly and daily, which are the same in UTC).
    Every(i64),
    /// ISO weeks (Monday to Sunday, UTC), as restic's `--keep-weekly`.
    Week,
    /// Calendar months (UTC).
    Month,
    /// Calendar years (UTC).
    Year,
}

impl Bucket {
    fn key(self, secs: i64) -> i64 {
        let day = secs.div_euclid(DAY);
        match self {
            Bucket::Every(len) => secs.div_euclid(len),
            // 1970-01-01 was a Thursday; a week is named by its Monday.
            Bucket::Week => day - (day + 3).rem_euclid(7),
            Bucket::Month => {
                let (y, m, _) = civil_from_days(day);
                y * 12 + i64::from(m) - 1
            }
            Bucket::Year => civil_from_days(day).0,
        }
    }
}

/// (year, month 1-12, day 1-31) of a day number counted from 1970-01-01, in
/// the proleptic Gregorian calendar (H. Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A retention policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// Keep the N newest snapshots.
    pub last: Option<u64>,
    /// Keep everything within this many seconds of the newest snapshot.
    pub within_secs: Option<i64>,
    /// Bucket rules: keep the newest snapshot of each of the N most recent
    /// buckets that hold one.
    pub buckets: Vec<(Bucket, u64)>,
}

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

impl KeepPolicy {
    /// Whether the policy keeps anything at all (an empty policy is refused
    /// rather than taken to mean "remove everything").
    pub fn is_empty(&self) -> bool {
        self.last.is_none() && self.within_secs.is_none() && self.buckets.is_empty()
    }

    /// Whether the policy has rules but every one of them keeps 0 snapshots
    /// (`--keep-daily 0`), so that applying it would remove every snapshot.
    /// restic treats such a policy as none; haul refuses it.
    pub fn keeps_nothing(&self) -> bool {
        !self.is_empty()
            && self.last.unwrap_or(0) == 0
            && self.within_secs.is_none()
            && self.buckets.iter().all(|&(_, n)| n == 0)
    }

    /// `--keep-hourly N` and friends as bucket rules.
    pub fn hourly(mut self, n: u64) -> Self {
        self.buckets.push((Bucket::Every(HOUR), n));
        self
    }
    /// `--keep-daily N`.
    pub fn daily(mut self, n: u64) -> Self {
        self.buckets.push((Bucket::Every(DAY), n));
        self
    }
    /// `--keep-weekly N` (ISO weeks).
    pub fn weekly(mut self, n: u64) -> Self {
        self.buckets.push((Bucket::Week, n));
        self
    }
    /// `--keep-monthly N` (calendar months).
    pub fn monthly(mut self, n: u64) -> Self {
        self.buckets.push((Bucket::Month, n));
        self
    }
    /// `--keep-yearly N` (calendar years).
    pub fn yearly(mut self, n: u64) -> Self {
        self.buckets.push((Bucket::Year, n));
        self
    }

    /// Splits snapshots into (keep, remove), each newest first.
    pub fn apply(&self, snaps: &[(Id, Timestamp)]) -> (Vec<Id>, Vec<Id>) {
        let mut sorted: Vec<(Id, Timestamp)> = snaps.to_vec();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        let mut keep = BTreeSet::new();
        if let Some(n) = self.last {
            keep.extend(sorted.iter().take(n as usize).map(|s| s.0));
        }
        if let (Some(w), Some(newest)) = (self.within_secs, sorted.first()) {
            let cutoff = newest.1.secs().saturating_sub(w);
            keep.extend(sorted.iter().filter(|s| s.1.secs() >= cutoff).map(|s| s.0));
        }
        for &(bucket, n) in &self.buckets {
            let mut seen = 0u64;
            let mut last_bucket = None;
            for s in &sorted {
                if seen >= n {
                    break;
                }
                let b = bucket.key(s.1.secs());
                if last_bucket != Some(b) {
                    last_bucket = Some(b);
                    keep.insert(s.0);
                    seen += 1;
                }
            }
        }
        let (k, r): (Vec<_>, Vec<_>) = sorted.iter().map(|s| s.0).partition(|id| keep.contains(id));
        (k, r)
    }
}

/// Parses a duration such as `30s`, `5m`, `1h30m`, `2d`, `1w` into seconds.
pub fn parse_duration(s: &str) -> Result<i64, RetentionError> {
    let err = |why| RetentionError {
        what: "duration",
        input: s.to_string(),
        why,
    };
    let mut total: i64 = 0;
    let mut num = String::new();
    if s.is_empty() {
        return Err(err("empty"));
    }
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => MINUTE,
            'h' => HOUR,
            'd' => DAY,
            'w' => 7 * DAY,
            'y' => 365 * DAY,
            _ => return Err(err("units are s, m, h, d, w, y")),
        };
        let n: i64 = num
            .parse()
            .map_err(|_| err("a number must come before each unit"))?;
        total = total
            .checked_add(n.checked_mul(unit).ok_or_else(|| err("too large"))?)
            .ok_or_else(|| err("too large"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(err("a unit must follow the last number"));
    }
    if total <= 0 {
        return Err(err("must be positive"));
    }
    Ok(total)
}

/// Parses `DUR:N` for `--keep-interval`.
pub fn parse_interval(s: &str) -> Result<(i64, u64), RetentionError> {
    let (d, n) = s.split_once(':').ok_or(RetentionError {
        what: "interval",
        input: s.to_string(),
        why: "expected DURATION:COUNT, e.g. 5m:12",
    })?;
    let n = n.parse().map_err(|_| RetentionError {
        what: "interval",
        input: s.to_string(),
        why: "COUNT must be a whole number",
    })?;
    Ok((parse_duration(d)?, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snaps(times: &[i64]) -> Vec<(Id, Timestamp)> {
        times
            .iter()
            .map(|&t| (Id::hash(&t.to_le_bytes()), Timestamp::new(t, 0).unwrap()))
            .collect()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("2d").unwrap(), 172_800);
        assert_eq!(parse_duration("1w").unwrap(), 604_800);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_interval("5m:12").unwrap(), (300, 12));
    }

    #[test]
    fn last_and_within() {
        let s = snaps(&[100, 200, 300, 400]);
        let p = KeepPolicy {
            last: Some(2),
            ..Default::default()
        };
        let (k, r) = p.apply(&s);
        assert_eq!(k, vec![s[3].0, s[2].0]);
        assert_eq!(r, vec![s[1].0, s[0].0]);
        let p = KeepPolicy {
            within_secs: Some(150),
            ..Default::default()
        };
        assert_eq!(p.apply(&s).0, vec![s[3].0, s[2].0]);
    }

    #[test]
    fn all_zero_policies_keep_nothing() {
        assert!(!KeepPolicy::default().keeps_nothing());
        assert!(KeepPolicy::default().daily(0).keeps_nothing());
        let zero_last = KeepPolicy {
            last: Some(0),
            ..Default::default()
        };
        assert!(zero_last.clone().monthly(0).keeps_nothing());
        assert!(!zero_last.clone().daily(1).keeps_nothing());
        assert!(!KeepPolicy {
            within_secs: Some(60),
            ..zero_last
        }
        .keeps_nothing());
    }

    #[test]
    fn buckets_keep_newest_per_bucket() {
        // Two per hour over three hours.
        let s = snaps(&[0, 1800, 3600, 5400, 7200, 9000]);
        let (k, _) = KeepPolicy::default().hourly(2).apply(&s);
        assert_eq!(k, vec![s[5].0, s[3].0]);
        // A CycleCloud-style schedule is a union of interval rules.
        let p = KeepPolicy {
            buckets: vec![(Bucket::Every(300), 1), (Bucket::Every(3600), 3)],
            ..Default::default()
        };
        let (k, r) = p.apply(&s);
        assert_eq!(k, vec![s[5].0, s[3].0, s[1].0]);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn calendar_buckets() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 2024-03-03 (Sun) and 2024-02-26 (Mon) share an ISO week; 03-04 (Mon) starts one.
        let d = |y: i64, m: u32, dd: u32| {
            (0..40_000i64)
                .find(|&z| civil_from_days(z) == (y, m, dd))
                .unwrap()
                * DAY
        };
        assert_eq!(
            Bucket::Week.key(d(2024, 3, 3)),
            Bucket::Week.key(d(2024, 2, 26))
        );
        assert_ne!(
            Bucket::Week.key(d(2024, 3, 4)),
            Bucket::Week.key(d(2024, 3, 3))
        );
        assert_eq!(
            Bucket::Month.key(d(2024, 2, 1)),
            Bucket::Month.key(d(2024, 2, 29))
        );
        assert_ne!(
            Bucket::Month.key(d(2024, 3, 1)),
            Bucket::Month.key(d(2024, 2, 29))
        );
        assert_eq!(Bucket::Year.key(d(2024, 12, 31) + 86_399), 2024);
    }
}

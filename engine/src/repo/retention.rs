//! Which snapshots a retention policy keeps. Pure logic over (id, time)
//! pairs, so it is tested without a repository.
//!
//! Rules are unions: a snapshot kept by any rule is kept. Bucket rules
//! (`--keep-hourly`, `--keep-interval 5m:12`, ...) keep the newest snapshot
//! in each of the N most recent buckets that hold one; buckets are aligned
//! to the Unix epoch in UTC, so "daily" means UTC days.
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

/// A retention policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// Keep the N newest snapshots.
    pub last: Option<u64>,
    /// Keep everything within this many seconds of the newest snapshot.
    pub within_secs: Option<i64>,
    /// (bucket length in seconds, how many buckets) pairs.
    pub intervals: Vec<(i64, u64)>,
}

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

impl KeepPolicy {
    /// Whether the policy keeps anything at all (an empty policy is refused
    /// rather than taken to mean "remove everything").
    pub fn is_empty(&self) -> bool {
        self.last.is_none() && self.within_secs.is_none() && self.intervals.is_empty()
    }

    /// `--keep-hourly N` and friends as bucket rules.
    pub fn hourly(mut self, n: u64) -> Self {
        self.intervals.push((HOUR, n));
        self
    }
    /// `--keep-daily N`.
    pub fn daily(mut self, n: u64) -> Self {
        self.intervals.push((DAY, n));
        self
    }
    /// `--keep-weekly N` (7-day buckets).
    pub fn weekly(mut self, n: u64) -> Self {
        self.intervals.push((7 * DAY, n));
        self
    }
    /// `--keep-monthly N` (30-day buckets).
    pub fn monthly(mut self, n: u64) -> Self {
        self.intervals.push((30 * DAY, n));
        self
    }
    /// `--keep-yearly N` (365-day buckets).
    pub fn yearly(mut self, n: u64) -> Self {
        self.intervals.push((365 * DAY, n));
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
        for &(len, n) in &self.intervals {
            let mut seen = 0u64;
            let mut last_bucket = None;
            for s in &sorted {
                if seen >= n {
                    break;
                }
                let b = s.1.secs().div_euclid(len);
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
    fn buckets_keep_newest_per_bucket() {
        // Two per hour over three hours.
        let s = snaps(&[0, 1800, 3600, 5400, 7200, 9000]);
        let (k, _) = KeepPolicy::default().hourly(2).apply(&s);
        assert_eq!(k, vec![s[5].0, s[3].0]);
        // A CycleCloud-style schedule is a union of interval rules.
        let p = KeepPolicy {
            intervals: vec![(300, 1), (3600, 3)],
            ..Default::default()
        };
        let (k, r) = p.apply(&s);
        assert_eq!(k, vec![s[5].0, s[3].0, s[1].0]);
        assert_eq!(r.len(), 3);
    }
}

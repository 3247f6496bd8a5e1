//! Timestamps that survive every filesystem's range, including before 1970.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::FormatError;

/// A point in time: whole seconds since the Unix epoch (negative before
/// 1970) plus nanoseconds into that second (always `0..1_000_000_000`).
///
/// Binary forms (tree blobs) store the pair as-is, so any `i64` second is
/// kept. Text forms (JSON records) use RFC 3339 in UTC with nanoseconds, e.g.
/// `2024-05-01T12:00:00.5Z`, which covers years 0000 to 9999; encoding a time
/// outside that range as text fails instead of writing something unreadable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Timestamp {
    secs: i64,
    nanos: u32,
}

const NANOS_PER_SEC: u32 = 1_000_000_000;
// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
const MIN_RFC3339_SECS: i64 = -62_167_219_200;
const MAX_RFC3339_SECS: i64 = 253_402_300_799;

impl Timestamp {
    /// The Unix epoch, 1970-01-01T00:00:00Z.
    pub const EPOCH: Timestamp = Timestamp { secs: 0, nanos: 0 };

    /// Builds a timestamp; fails if `nanos` is a whole second or more.
    pub fn new(secs: i64, nanos: u32) -> Result<Self, FormatError> {
        if nanos >= NANOS_PER_SEC {
            return Err(FormatError::invalid(
                "timestamp",
                format!("nanoseconds {nanos} are not below 1000000000"),
            ));
        }
        Ok(Timestamp { secs, nanos })
    }

    /// Seconds since the epoch (negative before 1970).
    pub const fn secs(&self) -> i64 {
        self.secs
    }

    /// Nanoseconds into the second, `0..1_000_000_000`.
    pub const fn nanos(&self) -> u32 {
        self.nanos
    }

    /// Converts from a [`SystemTime`], saturating at the ends of the `i64` range.
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                // Before the epoch: -1.25 s is secs -2, nanos 750_000_000.
                let d = e.duration();
                let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                if d.subsec_nanos() == 0 {
                    Timestamp {
                        secs: whole.saturating_neg(),
                        nanos: 0,
                    }
                } else {
                    Timestamp {
                        secs: whole.saturating_neg().saturating_sub(1),
                        nanos: NANOS_PER_SEC - d.subsec_nanos(),
                    }
                }
            }
        }
    }

    /// Converts to a [`SystemTime`], or `None` if the platform cannot hold it.
    pub fn to_system_time(&self) -> Option<SystemTime> {
        if self.secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(self.secs as u64, self.nanos))
        } else {
            let back = Duration::new(self.secs.unsigned_abs(), 0);
            UNIX_EPOCH
                .checked_sub(back)?
                .checked_add(Duration::new(0, self.nanos))
        }
    }

    /// The current time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Nanoseconds since the epoch, if that fits in an `i128` (it always does).
    pub fn as_unix_nanos(&self) -> i128 {
        i128::from(self.secs) * i128::from(NANOS_PER_SEC) + i128::from(self.nanos)
    }

    /// RFC 3339 text in UTC, with the fraction trimmed of trailing zeros.
    pub fn to_rfc3339(&self) -> Result<String, FormatError> {
        if !(MIN_RFC3339_SECS..=MAX_RFC3339_SECS).contains(&self.secs) {
            return Err(FormatError::Unencodable {
                what: "timestamp",
                reason: format!("{} s is outside years 0000-9999 of RFC 3339", self.secs),
            });
        }
        let days = self.secs.div_euclid(86_400);
        let sod = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let mut s = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        if self.nanos != 0 {
            let frac = format!("{:09}", self.nanos);
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        s.push('Z');
        Ok(s)
    }

    /// Parses RFC 3339 text: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
    ///
    /// Fractions beyond nanoseconds are truncated; leap seconds (`:60`) are
    /// rejected.
    pub fn parse_rfc3339(s: &str) -> Result<Self, FormatError> {
        let bad = |reason: &str| {
            FormatError::invalid(
                "timestamp",
                format!(
                    "{:?} is not RFC 3339: {reason}",
                    s.chars().take(64).collect::<String>()
                ),
            )
        };
        let b = s.as_bytes();
        if b.len() < 20 {
            return Err(bad("too short"));
        }
        let num = |range: std::ops::Range<usize>| -> Result<i64, FormatError> {
            let part = &b[range];
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(bad("expected digits"));
            }
            Ok(part
                .iter()
                .fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0')))
        };
        if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
        }
        if b[13] != b':' || b[16] != b':' {
            return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return Err(bad("no such date"));
        }
        if hour > 23 || min > 59 || sec > 59 {
            return Err(bad("no such time of day"));
        }
        let mut i = 19;
        let mut nanos: u32 = 0;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 9 {
                    nanos = nanos * 10 + u32::from(b[i] - b'0');
                }
                i += 1;
            }
            let digits = i - start;
            if digits == 0 {
                return Err(bad("empty fraction"));
            }
            for _ in digits..9 {
                nanos *= 10;
            }
        }
        let offset_secs = match &b[i..] {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let digits = [*h1, *h2, *m1, *m2];
                if !digits.iter().all(u8::is_ascii_digit) {
                    return Err(bad("bad offset"));
                }
                let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
                let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
                if h > 23 || m > 59 {
                    return Err(bad("bad offset"));
                }
                let off = h * 3600 + m * 60;
                if *sign == b'-' {
                    -off
                } else {
                    off
                }
            }
            _ => return Err(bad("expected Z or an offset like +02:00 at the end")),
        };
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
        Ok(Timestamp { secs, nanos })
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

// Howard Hinnant's algorithms (http://howardhinnant.github.io/date_algorithms.html),
// exact for the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
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

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_rfc3339() {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}.{:09}s", self.secs, self.nanos),
        }
    }
}

impl FromStr for Timestamp {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse_rfc3339(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let text = self.to_rfc3339().map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        } else {
            (self.secs, self.nanos).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
        } else {
            let (secs, nanos) = <(i64, u32)>::deserialize(d)?;
            Timestamp::new(secs, nanos).map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        let t = Timestamp::new(0, 0).unwrap();
        assert_eq!(t.to_rfc3339().unwrap(), "1970-01-01T00:00:00Z");
        let t = Timestamp::new(1_700_000_000, 500_000_000).unwrap();
        assert_eq!(t.to_rfc3339().unwrap(), "2023-11-14T22:13:20.5Z");
        let t = Timestamp::new(-1, 999_999_999).unwrap();
        assert_eq!(t.to_rfc3339().unwrap(), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2023-11-15T00:13:20.5+02:00").unwrap(),
            Timestamp::new(1_700_000_000, 500_000_000).unwrap()
        );
        assert_eq!(
            Timestamp::parse_rfc3339("0000-01-01T00:00:00Z")
                .unwrap()
                .secs(),
            MIN_RFC3339_SECS
        );
        assert_eq!(
            Timestamp::parse_rfc3339("9999-12-31T23:59:59Z")
                .unwrap()
                .secs(),
            MAX_RFC3339_SECS
        );
        assert!(Timestamp::new(0, 1_000_000_000).is_err());
        assert!(Timestamp::new(i64::MIN, 0).unwrap().to_rfc3339().is_err());
        for bad in [
            "",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-01-01T24:00:00Z",
            "2023-01-01T00:00:60Z",
            "2023-01-01T00:00:00",
            "2023-01-01T00:00:00.Z",
            "2023-01-01T00:00:00+2:00",
            "2023-01-01T00:00:00Zjunk",
            "2023-01-01T00:00:00é",
            "éééééééééééééééééééééé",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn system_time() {
        let before = UNIX_EPOCH - Duration::new(1, 250_000_000);
        let t = Timestamp::from_system_time(before);
        assert_eq!((t.secs(), t.nanos()), (-2, 750_000_000));
        assert_eq!(t.to_system_time().unwrap(), before);
    }

    proptest! {
        #[test]
        fn rfc3339_round_trip(secs in MIN_RFC3339_SECS..=MAX_RFC3339_SECS, nanos in 0u32..1_000_000_000) {
            let t = Timestamp::new(secs, nanos).unwrap();
            let s = t.to_rfc3339().unwrap();
            prop_assert_eq!(Timestamp::parse_rfc3339(&s).unwrap(), t);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Timestamp::parse_rfc3339(&s);
        }

        #[test]
        fn binary_round_trip(secs in any::<i64>(), nanos in 0u32..1_000_000_000) {
            let t = Timestamp::new(secs, nanos).unwrap();
            let bin = postcard::to_allocvec(&t).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Timestamp>(&bin).unwrap(), t);
        }
    }
}

//! Content ids: the blake3 hash of some bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::FormatError;

/// A 32-byte blake3 hash naming a blob, pack, index file or snapshot.
///
/// Text forms (display, JSON) are 64 lowercase hex digits; binary forms
/// (tree blobs, pack and index files) store the 32 raw bytes.
///
/// Ids order as their bytes do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Id([u8; 32]);

impl Ord for Id {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // The bytes' order, faster: ids are hashes, so the first 8 bytes,
        // compared as one big-endian integer, almost always decide (sorts
        // and merges of millions of ids spent a third of their time in
        // memcmp).
        let head = |id: &Id| u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"));
        head(self)
            .cmp(&head(other))
            .then_with(|| self.0[8..].cmp(&other.0[8..]))
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Id {
    /// Length of an id in bytes.
    pub const LEN: usize = 32;
    /// Length of an id in hex digits.
    pub const HEX_LEN: usize = 64;

    /// Wraps 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Id(bytes)
    }

    /// Copies an id out of a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, FormatError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| FormatError::InvalidId {
            input: format!("<{} bytes>", bytes.len()),
            reason: "an id is exactly 32 bytes",
        })?;
        Ok(Id(arr))
    }

    /// The blake3 hash of `data`.
    pub fn hash(data: &[u8]) -> Self {
        Id(*blake3::hash(data).as_bytes())
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-digit lowercase hex form.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(Self::HEX_LEN);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, FormatError> {
        if s.len() != Self::HEX_LEN {
            return Err(FormatError::InvalidId {
                input: shorten(s),
                reason: "an id is exactly 64 hex digits",
            });
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]);
            let lo = hex_val(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = (h << 4) | l,
                _ => {
                    return Err(FormatError::InvalidId {
                        input: shorten(s),
                        reason: "not a hex digit",
                    })
                }
            }
        }
        Ok(Id(out))
    }

    /// Whether the hex form of this id starts with `prefix` (either case).
    ///
    /// An empty prefix matches every id; a prefix with non-hex characters or
    /// longer than 64 digits matches none.
    pub fn has_hex_prefix(&self, prefix: &str) -> bool {
        if prefix.len() > Self::HEX_LEN {
            return false;
        }
        prefix.bytes().enumerate().all(|(i, c)| {
            let nibble = if i % 2 == 0 {
                self.0[i / 2] >> 4
            } else {
                self.0[i / 2] & 15
            };
            hex_val(c) == Some(nibble)
        })
    }

    /// The short form used in messages and listings: the first 8 hex digits.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(8);
        s
    }
}

/// Finds the one id among `candidates` whose hex form starts with `prefix`.
///
/// This is how a user-typed abbreviation (`haul restore 3fa9c1`) is resolved
/// against a listing of `snapshots/`. The same id listed twice counts once.
/// Fails with [`FormatError::PrefixNotFound`] or
/// [`FormatError::AmbiguousPrefix`]; a prefix with non-hex characters is an
/// [`FormatError::InvalidId`].
pub fn find_by_prefix<'a, I>(prefix: &str, candidates: I) -> Result<Id, FormatError>
where
    I: IntoIterator<Item = &'a Id>,
{
    if prefix.len() > Id::HEX_LEN || !prefix.bytes().all(|c| hex_val(c).is_some()) {
        return Err(FormatError::InvalidId {
            input: shorten(prefix),
            reason: "an id prefix is at most 64 hex digits",
        });
    }
    let mut found: Option<Id> = None;
    for id in candidates {
        if id.has_hex_prefix(prefix) {
            match found {
                None => found = Some(*id),
                Some(first) if first == *id => {}
                Some(first) => {
                    return Err(FormatError::AmbiguousPrefix {
                        prefix: prefix.to_owned(),
                        first,
                        second: *id,
                    })
                }
            }
        }
    }
    found.ok_or_else(|| FormatError::PrefixNotFound(prefix.to_owned()))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.to_hex())
    }
}

impl FromStr for Id {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Id::from_hex(s)
    }
}

impl From<blake3::Hash> for Id {
    fn from(h: blake3::Hash) -> Self {
        Id(*h.as_bytes())
    }
}

impl AsRef<[u8]> for Id {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

// Human-readable formats (JSON) get hex; binary ones (postcard) get the 32
// raw bytes as a fixed-size tuple, with no length prefix.
impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Id::from_hex(&s).map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(Id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_as_their_bytes() {
        let mut ids: Vec<[u8; 32]> = (0..2000u32)
            .map(|i| *Id::hash(&i.to_le_bytes()).as_bytes())
            .collect();
        // Ties in the first 8 bytes, and bytes at both extremes.
        for k in 0..200 {
            let mut b = ids[k];
            b[..8].copy_from_slice(&ids[k + 1][..8]);
            ids.push(b);
            let mut c = b;
            c[7] = 0xff;
            c[8] = 0;
            ids.push(c);
        }
        ids.extend([[0; 32], [0xff; 32]]);
        for a in &ids {
            for b in &ids {
                assert_eq!(Id(*a).cmp(&Id(*b)), a.cmp(b));
                assert_eq!(Id(*a).partial_cmp(&Id(*b)), Some(a.cmp(b)));
            }
        }
    }

    #[test]
    fn hex_round_trip() {
        let id = Id::hash(b"hello");
        let hex = id.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(Id::from_hex(&hex).unwrap(), id);
        assert_eq!(Id::from_hex(&hex.to_uppercase()).unwrap(), id);
        assert_eq!(hex.parse::<Id>().unwrap(), id);
        assert!(Id::from_hex(&hex[1..]).is_err());
        assert!(Id::from_hex(&format!("g{}", &hex[1..])).is_err());
        // Multi-byte UTF-8 of the right byte length must not panic.
        assert!(Id::from_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn prefix() {
        let a = Id::from_bytes([0xab; 32]);
        let b = Id::from_bytes([0xac; 32]);
        assert!(a.has_hex_prefix(""));
        assert!(a.has_hex_prefix("a"));
        assert!(a.has_hex_prefix("AB"));
        assert!(a.has_hex_prefix("aba"));
        assert!(!a.has_hex_prefix("abb"));
        assert!(!a.has_hex_prefix("zz"));
        assert!(a.has_hex_prefix(&a.to_hex()));
        assert!(!a.has_hex_prefix(&format!("{}0", a.to_hex())));
        let all = [a, b, a];
        assert_eq!(find_by_prefix("ab", &all).unwrap(), a);
        assert!(matches!(
            find_by_prefix("a", &all),
            Err(FormatError::AmbiguousPrefix { .. })
        ));
        assert!(matches!(
            find_by_prefix("ff", &all),
            Err(FormatError::PrefixNotFound(_))
        ));
        assert!(matches!(
            find_by_prefix("x", &all),
            Err(FormatError::InvalidId { .. })
        ));
    }

    #[test]
    fn serde_forms() {
        let id = Id::hash(b"x");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
        let bin = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bin, id.as_bytes());
        assert_eq!(postcard::from_bytes::<Id>(&bin).unwrap(), id);
    }
}

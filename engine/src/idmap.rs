//! Owner remapping with rsync's syntax: `--usermap`, `--groupmap`, `--chown`
//! and `--map-by-name`.
use std::collections::HashMap;
use std::sync::RwLock;

use nix::unistd::{Gid, Group, Uid, User};

/// A bad map specification, with the part that could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    /// A `FROM:TO` item without a colon or with an empty side.
    #[error("invalid map item {0:?}: expected FROM:TO")]
    Syntax(String),
    /// A name that is not known on this host.
    #[error("unknown {kind} name {name:?}")]
    UnknownName {
        /// "user" or "group".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A range whose low end is above its high end.
    #[error("invalid id range {0:?}")]
    Range(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum From {
    Any,
    Id(u32),
    Range(u32, u32),
    Name(String),
}

/// Which id space a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Space {
    User,
    Group,
}

/// Name lookups for the source side: this host's databases (a remote
/// peer supplies its own names, [`IdMap::add_source_name`]).
fn source_name(space: Space, id: u32) -> Option<String> {
    match space {
        Space::User => User::from_uid(Uid::from_raw(id))
            .ok()
            .flatten()
            .map(|u| u.name),
        Space::Group => Group::from_gid(Gid::from_raw(id))
            .ok()
            .flatten()
            .map(|g| g.name),
    }
}

/// This host's name of a uid (`user`) or gid, as a sender tells its peer.
pub(crate) fn local_name(user: bool, id: u32) -> Option<String> {
    source_name(if user { Space::User } else { Space::Group }, id)
}

fn dest_id(space: Space, name: &str) -> Option<u32> {
    match space {
        Space::User => User::from_name(name).ok().flatten().map(|u| u.uid.as_raw()),
        Space::Group => Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw()),
    }
}

fn parse_to(space: Space, s: &str) -> Result<u32, IdMapError> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    dest_id(space, s).ok_or_else(|| IdMapError::UnknownName {
        kind: if space == Space::User {
            "user"
        } else {
            "group"
        },
        name: s.to_string(),
    })
}

fn parse_from(s: &str) -> Result<From, IdMapError> {
    if s == "*" {
        return Ok(From::Any);
    }
    if let Ok(n) = s.parse::<u32>() {
        return Ok(From::Id(n));
    }
    if let Some((a, b)) = s.split_once('-') {
        if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
            if a > b {
                return Err(IdMapError::Range(s.to_string()));
            }
            return Ok(From::Range(a, b));
        }
    }
    Ok(From::Name(s.to_string()))
}

#[derive(Clone, Debug, Default)]
struct Rules {
    rules: Vec<(From, u32)>,
    fixed: Option<u32>,
}

impl Rules {
    fn parse(space: Space, spec: &str) -> Result<Rules, IdMapError> {
        let mut rules = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (from, to) = item
                .rsplit_once(':')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .ok_or_else(|| IdMapError::Syntax(item.to_string()))?;
            rules.push((parse_from(from)?, parse_to(space, to)?));
        }
        Ok(Rules { rules, fixed: None })
    }

    fn is_identity(&self) -> bool {
        self.rules.is_empty() && self.fixed.is_none()
    }
}

/// Maps source owners to destination owners. Cheap to query per entry:
/// results are cached per id.
#[derive(Debug, Default)]
pub struct IdMap {
    users: Rules,
    groups: Rules,
    by_name: bool,
    cache: RwLock<HashMap<(bool, u32), u32>>,
    /// The source's names, when the source is another host (it sends the
    /// name of each id it uses before the first entry that uses it);
    /// `None`: this host's databases.
    names: Option<RwLock<HashMap<(bool, u32), String>>>,
}

impl Clone for IdMap {
    /// The same rules, with an empty cache.
    fn clone(&self) -> IdMap {
        IdMap {
            users: self.users.clone(),
            groups: self.groups.clone(),
            by_name: self.by_name,
            cache: RwLock::default(),
            names: self.names.as_ref().map(|_| RwLock::default()),
        }
    }
}

impl IdMap {
    /// The identity map.
    pub fn new() -> IdMap {
        IdMap::default()
    }

    /// Adds `--usermap` rules (`FROM:TO[,...]`; first match wins).
    pub fn usermap(mut self, spec: &str) -> Result<IdMap, IdMapError> {
        self.users
            .rules
            .extend(Rules::parse(Space::User, spec)?.rules);
        Ok(self)
    }

    /// Adds `--groupmap` rules.
    pub fn groupmap(mut self, spec: &str) -> Result<IdMap, IdMapError> {
        self.groups
            .rules
            .extend(Rules::parse(Space::Group, spec)?.rules);
        Ok(self)
    }

    /// `--chown USER:GROUP` (either side may be empty): every entry gets this owner.
    pub fn chown(mut self, spec: &str) -> Result<IdMap, IdMapError> {
        let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
        if !u.is_empty() {
            self.users.fixed = Some(parse_to(Space::User, u)?);
        }
        if !g.is_empty() {
            self.groups.fixed = Some(parse_to(Space::Group, g)?);
        }
        Ok(self)
    }

    /// `--map-by-name`: ids the rules do not cover are mapped through their
    /// names; an id without a name on the source keeps its number.
    pub fn map_by_name(mut self, on: bool) -> IdMap {
        self.by_name = on;
        self
    }

    /// Source names come from the peer ([`IdMap::add_source_name`]), not
    /// from this host's databases.
    pub(crate) fn remote_source(mut self) -> IdMap {
        self.names = Some(RwLock::default());
        self
    }

    /// Whether names of source ids are needed at all: rules that name
    /// users or groups, or `--map-by-name`.
    pub(crate) fn needs_names(&self) -> bool {
        let named = |r: &Rules| r.rules.iter().any(|(f, _)| matches!(f, From::Name(_)));
        self.by_name || named(&self.users) || named(&self.groups)
    }

    /// Records the source's name of a uid (`user`) or gid.
    pub(crate) fn add_source_name(&self, user: bool, id: u32, name: String) {
        if let Some(n) = &self.names {
            n.write()
                .unwrap_or_else(|e| e.into_inner())
                .insert((user, id), name);
        }
    }

    fn source_name(&self, space: Space, id: u32) -> Option<String> {
        match &self.names {
            None => source_name(space, id),
            Some(n) => n
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(space == Space::User, id))
                .cloned(),
        }
    }

    /// Whether every id maps to itself.
    pub fn is_identity(&self) -> bool {
        self.users.is_identity() && self.groups.is_identity() && !self.by_name
    }

    /// The destination uid for a source uid.
    pub fn uid(&self, uid: u32) -> u32 {
        self.map(Space::User, uid)
    }

    /// The destination gid for a source gid.
    pub fn gid(&self, gid: u32) -> u32 {
        self.map(Space::Group, gid)
    }

    fn map(&self, space: Space, id: u32) -> u32 {
        let rules = if space == Space::User {
            &self.users
        } else {
            &self.groups
        };
        if rules.is_identity() && !self.by_name {
            return id;
        }
        if let Some(f) = rules.fixed {
            return f;
        }
        let key = (space == Space::User, id);
        if let Some(v) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return *v;
        }
        let v = self.resolve(space, rules, id);
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, v);
        v
    }

    fn resolve(&self, space: Space, rules: &Rules, id: u32) -> u32 {
        let mut name: Option<Option<String>> = None;
        for (from, to) in &rules.rules {
            let hit = match from {
                From::Any => true,
                From::Id(n) => *n == id,
                From::Range(a, b) => (*a..=*b).contains(&id),
                From::Name(n) => {
                    name.get_or_insert_with(|| self.source_name(space, id))
                        .as_deref()
                        == Some(n)
                }
            };
            if hit {
                return *to;
            }
        }
        if self.by_name {
            if let Some(n) = name.get_or_insert_with(|| self.source_name(space, id)) {
                if let Some(d) = dest_id(space, n) {
                    return d;
                }
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_first_match_wins() {
        let m = IdMap::new()
            .usermap("1000:2000,1000-1999:3000,*:4000")
            .unwrap();
        assert_eq!(m.uid(1000), 2000);
        assert_eq!(m.uid(1500), 3000);
        assert_eq!(m.uid(7), 4000);
        assert_eq!(m.gid(7), 7);
    }

    #[test]
    fn names_resolve() {
        let m = IdMap::new()
            .usermap("root:55")
            .unwrap()
            .groupmap("0:root")
            .unwrap();
        assert_eq!(m.uid(0), 55);
        assert_eq!(m.gid(0), 0);
        assert_eq!(m.uid(12345), 12345);
    }

    #[test]
    fn chown_overrides() {
        let m = IdMap::new().usermap("*:1").unwrap().chown("10:20").unwrap();
        assert_eq!((m.uid(0), m.gid(0)), (10, 20));
        let m = IdMap::new().chown(":30").unwrap();
        assert_eq!((m.uid(5), m.gid(5)), (5, 30));
    }

    #[test]
    fn bad_specs() {
        assert!(IdMap::new().usermap("1000").is_err());
        assert!(IdMap::new().usermap("5-2:1").is_err());
        assert!(IdMap::new().usermap("1:no-such-user-xyz").is_err());
    }

    #[test]
    fn by_name_keeps_unnamed_numbers() {
        let m = IdMap::new().map_by_name(true);
        assert_eq!(m.uid(0), 0);
        assert_eq!(m.uid(3_999_999), 3_999_999);
    }
}

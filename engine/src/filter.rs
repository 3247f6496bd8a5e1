//! `--exclude` patterns with rsync's matching rules.
//!
//! - A pattern without a `/` matches an entry's name at any depth.
//! - A pattern with a leading `/` is anchored at the root of the tree; one
//!   with a `/` elsewhere may match at any directory boundary.
//! - A trailing `/` restricts the pattern to directories.
//! - `*` stops at `/`; `**` crosses it.
//! - A trailing `/***` matches the directory itself and everything below it
//!   (`dir/***` is `dir` and `dir/**`).
use std::ffi::OsStr;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// An invalid `--exclude` pattern.
#[derive(Debug, thiserror::Error)]
#[error("invalid exclude pattern {pattern:?}: {source}")]
pub struct FilterError {
    pattern: String,
    #[source]
    source: globset::Error,
}

/// A compiled set of exclude patterns.
#[derive(Clone, Debug)]
pub struct Filter {
    names: GlobSet,
    names_dir: GlobSet,
    paths: GlobSet,
    paths_dir: GlobSet,
    empty: bool,
}

impl Default for Filter {
    fn default() -> Self {
        Filter::new(&[] as &[&str]).expect("empty filter")
    }
}

impl Filter {
    /// Compiles the patterns.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Filter, FilterError> {
        let mut sets = [
            GlobSetBuilder::new(),
            GlobSetBuilder::new(),
            GlobSetBuilder::new(),
            GlobSetBuilder::new(),
        ];
        for p in patterns {
            let orig = p.as_ref();
            // rsync's `dir/***`: the entry itself and everything below it.
            // The '/' before `***` counts as a slash in the pattern, so
            // `dir/***` matches at any depth, as `a/b` does.
            let (orig_pat, tree) = match orig.strip_suffix("/***") {
                Some(s) if !s.is_empty() && s != "/" => (s, true),
                _ => (orig, false),
            };
            let (pat, dir_only) = match orig_pat.strip_suffix('/') {
                Some(s) if !s.is_empty() && !tree => (s, true),
                _ => (orig_pat, false),
            };
            let (glob, by_path) = if let Some(rest) = pat.strip_prefix('/') {
                (rest.to_string(), true)
            } else if tree || pat.contains('/') || pat.contains("**") {
                (format!("**/{pat}"), true)
            } else {
                (pat.to_string(), false)
            };
            let globs = if tree {
                vec![format!("{glob}/**"), glob]
            } else {
                vec![glob]
            };
            let i = usize::from(by_path) * 2 + usize::from(dir_only);
            for glob in globs {
                let g = GlobBuilder::new(&glob)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|source| FilterError {
                        pattern: orig.to_string(),
                        source,
                    })?;
                sets[i].add(g);
            }
        }
        let [a, b, c, d] = sets;
        let build = |s: GlobSetBuilder| s.build().expect("globs already validated");
        Ok(Filter {
            names: build(a),
            names_dir: build(b),
            paths: build(c),
            paths_dir: build(d),
            empty: patterns.is_empty(),
        })
    }

    /// Whether the entry at `rel` (relative to the tree root) is excluded.
    pub fn excluded(&self, rel: &Path, is_dir: bool) -> bool {
        if self.empty {
            return false;
        }
        let name = rel.file_name().unwrap_or(OsStr::new(""));
        self.names.is_match(name)
            || self.paths.is_match(rel)
            || (is_dir && (self.names_dir.is_match(name) || self.paths_dir.is_match(rel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_rules() {
        let f = Filter::new(&["*.log", "/top", "cache/", "a/b", "deep/**/x"]).unwrap();
        assert!(f.excluded(Path::new("x/y/z.log"), false));
        assert!(f.excluded(Path::new("top"), false));
        assert!(!f.excluded(Path::new("sub/top"), false));
        assert!(f.excluded(Path::new("sub/cache"), true));
        assert!(!f.excluded(Path::new("sub/cache"), false));
        assert!(f.excluded(Path::new("a/b"), false));
        assert!(f.excluded(Path::new("q/a/b"), false));
        assert!(!f.excluded(Path::new("qa/b"), false));
        assert!(f.excluded(Path::new("deep/1/2/x"), false));
        assert!(!f.excluded(Path::new("keep.txt"), false));
    }

    #[test]
    fn triple_star_is_the_dir_and_everything_below() {
        let f = Filter::new(&["cache/***", "/top/sub/***"]).unwrap();
        assert!(f.excluded(Path::new("cache"), true));
        assert!(f.excluded(Path::new("cache"), false));
        assert!(f.excluded(Path::new("cache/x"), false));
        assert!(f.excluded(Path::new("cache/x/y/z"), true));
        assert!(f.excluded(Path::new("deep/er/cache"), true));
        assert!(f.excluded(Path::new("deep/er/cache/f"), false));
        assert!(!f.excluded(Path::new("cachex"), true));
        assert!(!f.excluded(Path::new("cachex/f"), false));
        assert!(!f.excluded(Path::new("x/cache.d/f"), false));
        assert!(f.excluded(Path::new("top/sub"), true));
        assert!(f.excluded(Path::new("top/sub/a/b"), false));
        assert!(!f.excluded(Path::new("top"), true));
        assert!(!f.excluded(Path::new("x/top/sub"), true));
        assert!(!f.excluded(Path::new("top/subway"), true));
    }

    #[test]
    fn bad_pattern_is_an_error() {
        assert!(Filter::new(&["["]).is_err());
        assert!(Filter::new(&["a/[/***"]).is_err());
    }
}

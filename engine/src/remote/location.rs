//! Locations on other hosts: `[user@]host:path` and
//! `ssh://[user@]host[:port]/path`, as rsync reads them.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// A path on another host, as `[user@]host:path` or
/// `ssh://[user@]host[:port]/path` name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePath {
    /// The login name, if given.
    pub user: Option<String>,
    /// The host.
    pub host: String,
    /// The ssh port, if given (`ssh://` form only).
    pub port: Option<u16>,
    /// The path on that host, raw (empty: the login's home directory).
    pub path: Vec<u8>,
}

impl std::fmt::Display for RemotePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        write!(f, "{}:{}", self.host, String::from_utf8_lossy(&self.path))
    }
}

impl RemotePath {
    /// Parses a command-line location: `None` for a local path (no colon,
    /// or a slash before the first colon, as rsync decides), else the
    /// remote path or why it is not one.
    pub fn parse(s: &OsStr) -> Option<Result<RemotePath, String>> {
        let b = s.as_bytes();
        if let Some(rest) = b.strip_prefix(b"ssh://") {
            return Some(parse_url(rest));
        }
        let colon = b.iter().position(|&c| c == b':')?;
        if colon == 0 || b[..colon].contains(&b'/') {
            return None;
        }
        let (login, path) = (&b[..colon], &b[colon + 1..]);
        if path.first() == Some(&b':') {
            return Some(Err(format!(
                "{}: rsync daemon paths (host::module) are not supported; use host:path",
                s.to_string_lossy()
            )));
        }
        Some(split_login(login).map(|(user, host)| RemotePath {
            user,
            host,
            port: None,
            path: path.to_vec(),
        }))
    }
}

fn split_login(login: &[u8]) -> Result<(Option<String>, String), String> {
    let login =
        std::str::from_utf8(login).map_err(|_| "the user and host are not UTF-8".to_string())?;
    let (user, host) = match login.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, login),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '/';
    if host.is_empty() || host.starts_with('-') || host.contains(bad) {
        return Err(format!("{login:?} is not a host name"));
    }
    if let Some(u) = &user {
        if u.is_empty() || u.starts_with('-') || u.contains(bad) {
            return Err(format!("{u:?} is not a user name"));
        }
    }
    Ok((user, host.to_string()))
}

fn parse_url(rest: &[u8]) -> Result<RemotePath, String> {
    let slash = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
    let (auth, path) = rest.split_at(slash);
    // The port follows the last colon outside brackets.
    let (login, port) = match auth.iter().rposition(|&c| c == b':') {
        Some(i) if !auth[i..].contains(&b']') => {
            let p = std::str::from_utf8(&auth[i + 1..])
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| {
                    format!(
                        "ssh://{}: the port is not a number",
                        String::from_utf8_lossy(rest)
                    )
                })?;
            (&auth[..i], Some(p))
        }
        _ => (auth, None),
    };
    let (user, host) = split_login(login)?;
    Ok(RemotePath {
        user,
        host,
        port,
        path: if path.is_empty() {
            b"/".to_vec()
        } else {
            path.to_vec()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Result<RemotePath, String>> {
        RemotePath::parse(OsStr::new(s))
    }

    #[test]
    fn locations_parse_as_rsync_does() {
        assert_eq!(p("/a/b"), None);
        assert_eq!(p("./a:b"), None);
        assert_eq!(p("a/b:c"), None);
        assert_eq!(p(":x"), None);
        let r = p("root@h:/opt/x").unwrap().unwrap();
        assert_eq!(
            r,
            RemotePath {
                user: Some("root".into()),
                host: "h".into(),
                port: None,
                path: b"/opt/x".to_vec()
            }
        );
        let r = p("h:").unwrap().unwrap();
        assert_eq!((r.user, r.path), (None, Vec::new()));
        let r = p("ssh://u@127.0.0.1:2222/srv/d").unwrap().unwrap();
        assert_eq!(r.port, Some(2222));
        assert_eq!(r.host, "127.0.0.1");
        assert_eq!(r.path, b"/srv/d");
        let r = p("ssh://[::1]:22/x").unwrap().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", Some(22)));
        assert!(p("h::mod").unwrap().is_err());
        assert!(p("-oProxyCommand=x:y").unwrap().is_err());
        assert!(p("ssh://h:notaport/x").unwrap().is_err());
    }
}

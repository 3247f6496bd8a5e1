//! Real outcomes on this host: children that use a temporary directory in
//! each way the path-in-use answer reports, and the databases against an
//! independent reading of `/etc/passwd` and `/etc/group`.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use haul_formats::wire::QueryKind;
use serde_json::Value;

use super::{answer, query_local};

/// A child process, killed and reaped when dropped (also when an assertion
/// fails first).
struct Kid(Child);

impl Kid {
    fn pid(&self) -> u64 {
        u64::from(self.0.id())
    }

    /// Waits for the child's first line on stdout: it has done its setup.
    fn ready(mut self) -> (Kid, String) {
        let out = self.0.stdout.take().expect("child stdout piped");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("reading child stdout");
        assert!(!line.is_empty(), "child exited before it was ready");
        (self, line.trim().to_string())
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cwd: &Path, program: &str, args: &[&str]) -> Kid {
    let child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    Kid(child)
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let real = d.path().canonicalize().expect("canonicalize tempdir");
    (d, real)
}

fn in_use(path: &Path) -> Value {
    let kind = QueryKind::PathInUse(path.as_os_str().as_encoded_bytes().to_vec());
    // Through the bytes the peer receives, so that they are checked too.
    serde_json::from_slice(&answer(&kind)).expect("answer is JSON")
}

fn uses_of(v: &Value, pid: u64) -> Vec<(String, String)> {
    v["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| p["pid"] == pid)
        .map(|p| {
            (
                p["why"].as_str().unwrap().to_string(),
                p["file"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn query_users_include_root() {
    let v = query_local(&QueryKind::Users);
    let users = v["users"].as_array().expect("users");
    let root = users.iter().find(|u| u["uid"] == 0).expect("uid 0 listed");
    assert_eq!(root["name"], "root");
    assert_eq!(root["gid"], 0);
    assert!(
        root["home"].as_str().is_some_and(|h| h.starts_with('/')),
        "{root}"
    );
    assert!(root["shell"].is_string(), "{root}");
    assert_eq!(v["truncated"], false);
}

#[test]
fn query_groups_have_their_members() {
    let v = query_local(&QueryKind::Groups);
    let groups = v["groups"].as_array().expect("groups");
    let root = groups.iter().find(|g| g["gid"] == 0).expect("gid 0 listed");
    assert_eq!(root["name"], "root");
    // Every group of /etc/group that names members is answered with them
    // (the C library reads `files` first).
    let etc = std::fs::read_to_string("/etc/group").expect("/etc/group");
    let mut checked = 0;
    for line in etc.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || f[3].is_empty() {
            continue;
        }
        let g = groups
            .iter()
            .find(|g| g["name"] == f[0])
            .unwrap_or_else(|| panic!("{} listed", f[0]));
        assert_eq!(g["gid"], f[2].parse::<u64>().unwrap(), "{g}");
        for m in f[3].split(',') {
            assert!(
                g["members"].as_array().unwrap().iter().any(|x| x == m),
                "{m} in {g}"
            );
        }
        checked += 1;
    }
    assert!(
        checked > 0,
        "no group in /etc/group names a member; nothing was checked"
    );
}

#[test]
fn query_path_unused_is_not_in_use() {
    // Empty: a file written here would be open for a moment, and a child
    // forked by another test in that moment holds it until its exec.
    let (_d, dir) = tmp();
    let v = in_use(&dir);
    assert_eq!(v["path"], dir.to_str().unwrap());
    assert_eq!(v["in_use"], false, "{v}");
    assert_eq!(v["processes"].as_array().unwrap().len(), 0);
    assert_eq!(v["pid_files"].as_array().unwrap().len(), 0);
    assert_eq!(v["listening"].as_array().unwrap().len(), 0);
    assert_eq!(v["truncated"], false);
}

#[test]
fn query_path_missing_is_an_error() {
    let (_d, dir) = tmp();
    let v = in_use(&dir.join("nope"));
    let e = v["error"].as_str().expect("an error");
    assert!(e.contains("nope") && e.contains("No such file"), "{e}");
}

#[test]
fn query_path_cwd_of_a_process() {
    let (_d, dir) = tmp();
    std::fs::create_dir(dir.join("sub")).unwrap();
    // The cwd is set before exec, and spawn returns after exec succeeded.
    let kid = spawn(&dir.join("sub"), "sleep", &["30"]);
    // Asked through a symlink: the answer resolves the path first.
    let link = dir.join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let v = in_use(&link);
    assert_eq!(v["in_use"], true, "{v}");
    assert_eq!(v["path"], dir.to_str().unwrap());
    let sub = dir.join("sub").to_str().unwrap().to_string();
    assert_eq!(
        uses_of(&v, kid.pid()),
        vec![("cwd".to_string(), sub)],
        "{v}"
    );
    let p = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == kid.pid())
        .unwrap();
    assert_eq!(p["command"], "sleep 30");
}

#[test]
fn query_path_open_file_of_a_process() {
    let (_d, dir) = tmp();
    let file = dir.join("held");
    std::fs::write(&file, b"x").unwrap();
    let script = format!("exec 3<'{}'; echo ready; exec sleep 30", file.display());
    let (kid, _) = spawn(Path::new("/"), "sh", &["-c", &script]).ready();
    let v = in_use(&dir);
    assert_eq!(v["in_use"], true, "{v}");
    let want = ("open file".to_string(), file.to_str().unwrap().to_string());
    assert_eq!(uses_of(&v, kid.pid()), vec![want], "{v}");
    // Only that file: not in use by anything else, and not its sibling.
    let other = dir.join("other");
    std::fs::create_dir(&other).unwrap();
    assert_eq!(in_use(&other)["in_use"], false);
}

#[test]
fn query_path_live_pid_files_only() {
    let (_d, dir) = tmp();
    let kid = spawn(Path::new("/"), "sleep", &["30"]);
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::create_dir_all(dir.join("run/deep")).unwrap();
    let live_file = dir.join("run/deep/app.pid");
    std::fs::write(&live_file, format!("{}\n", kid.pid())).unwrap();
    std::fs::write(dir.join("run/old.pid"), format!("{dead_pid}\n")).unwrap();
    std::fs::write(dir.join("run/junk.pid"), b"not a pid\n").unwrap();
    // A live pid in a file not named *.pid is not a pid file.
    std::fs::write(dir.join("run/app.txt"), format!("{}\n", kid.pid())).unwrap();
    let v = in_use(&dir);
    assert_eq!(v["in_use"], true, "{v}");
    let files = v["pid_files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{v}");
    assert_eq!(files[0]["file"], live_file.to_str().unwrap());
    assert_eq!(files[0]["pid"], kid.pid());
    assert_eq!(uses_of(&v, kid.pid()), vec![], "{v}");
    // Asked of the pid file itself.
    let v = in_use(&live_file);
    assert_eq!(v["pid_files"].as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn query_path_listening_port_of_a_process() {
    let (_d, dir) = tmp();
    let py = "import socket, time\n\
              s = socket.socket()\n\
              s.bind(('127.0.0.1', 0))\n\
              s.listen()\n\
              print(s.getsockname()[1], flush=True)\n\
              time.sleep(30)\n";
    let (kid, port) = spawn(&dir, "python3", &["-c", py]).ready();
    let port: u64 = port.parse().expect("the port python printed");
    let v = in_use(&dir);
    assert_eq!(v["in_use"], true, "{v}");
    assert!(
        uses_of(&v, kid.pid()).iter().any(|(why, _)| why == "cwd"),
        "{v}"
    );
    let listening = v["listening"].as_array().unwrap();
    assert!(
        listening
            .iter()
            .any(|l| l["port"] == port && l["pid"] == kid.pid() && l["proto"] == "tcp"),
        "port {port} of {} in {v}",
        kid.pid()
    );
}

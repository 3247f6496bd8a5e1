//! A real `sshd` on 127.0.0.1, for the transfer-over-ssh tests: its own host key, a client
//! key made for the test, a free port, and a log to show when something goes wrong.
//!
//! [`Sshd::start`] returns an error rather than skipping: a test that cannot get its sshd
//! must fail and say why (what to install, or the sshd log). Run as root: sshd needs it to
//! switch to the logged-in user, and the tests log in as root.
//!
//! ```no_run
//! let sshd = haul_tests::sshd::Sshd::start().unwrap_or_else(|e| panic!("{e}"));
//! // haul copy -e "$(sshd.ssh_command())" SRC root@127.0.0.1:DST
//! let dst = format!("{}:/tmp/dst", sshd.user_at_host());
//! # let _ = dst;
//! ```

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's openssh-server puts the daemon. sshd must be started by an absolute
/// path (it re-executes itself for each connection).
pub const SSHD: &str = "/usr/sbin/sshd";

/// How long sshd may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Attempts at a port: another process may take the free port found between our probe
/// and sshd's bind.
const PORT_ATTEMPTS: usize = 5;

/// A running sshd, killed on drop.
pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

fn run(cmd: &mut Command, install: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e} (install {install})"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot bind a port on 127.0.0.1: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot read the bound port: {e}"))
}

/// `true` once `port` answers with an SSH identification string (so it is sshd that
/// listens, not some other process that took the port).
fn answers_ssh(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = [0u8; 8];
    s.read_exact(&mut b).is_ok() && &b == b"SSH-2.0-"
}

impl Sshd {
    /// Generates the keys, writes the config and starts sshd on a free port of
    /// 127.0.0.1; returns once it answers. The error says what to install, or shows
    /// sshd's log.
    pub fn start() -> Result<Sshd, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("the sshd harness needs root (sshd logs the tests in as root)".into());
        }
        if !Path::new(SSHD).is_file() {
            return Err(format!(
                "{SSHD} not found: install openssh-server (apt-get install openssh-server; \
                 scripts/test does this)"
            ));
        }
        // Debian's sshd refuses to start without its privilege separation directory,
        // which the package's service unit would create.
        fs::create_dir_all("/run/sshd")
            .and_then(|()| fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)))
            .map_err(|e| format!("cannot create /run/sshd: {e}"))?;

        let dir = tempfile::Builder::new()
            .prefix("haul-sshd-")
            .tempdir_in("/tmp")
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            run(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "haul-test", "-f"])
                    .arg(d.join(key)),
                "openssh-client",
            )?;
        }
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .map_err(|e| format!("cannot write authorized_keys: {e}"))?;

        // A port found free may be taken by another process before sshd binds it: try
        // another then, and report any other failure at once.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let config = d.join("sshd_config");
            fs::write(&config, sshd_config(d, port))
                .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
            let log = d.join("sshd.log");
            let _ = fs::remove_file(&log);
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-f")
                .arg(&config)
                .arg("-E")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {SSHD}: {e} (install openssh-server)"))?;
            match wait_ready(&mut child, port, &log) {
                Ok(()) => return Ok(Sshd { dir, port, child }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if !e.contains("Address already in use") || attempt == PORT_ATTEMPTS {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// The port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client's private key, which sshd accepts for root.
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// The ssh command line for `-e`/`--rsh`: this port and key, no host key checks, no
    /// prompts, and no user configuration (`-F /dev/null`) so the tests do not depend on
    /// the machine's. No word contains a space, so it splits on whitespace.
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -p {} -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
            self.port,
            self.key().display()
        )
    }

    /// `root@127.0.0.1`, the login for remote paths (`root@127.0.0.1:/path`).
    pub fn user_at_host(&self) -> String {
        "root@127.0.0.1".into()
    }

    /// A command that runs `remote` on this sshd's host through [`Sshd::ssh_command`].
    pub fn ssh(&self, remote: &str) -> Command {
        let cmd = self.ssh_command();
        let mut words = cmd.split_whitespace();
        let mut c = Command::new(words.next().expect("ssh"));
        c.args(words).arg(self.user_at_host()).arg(remote);
        c
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The listener only: a session still running has its own process, which ends
        // with its client.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd_config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    // No Subsystem line: no sftp. MaxStartups is raised because tests run in parallel
    // and fan out, and sshd's default drops unauthenticated connections past 10.
    format!(
        "Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
MaxStartups 100
MaxSessions 100
LogLevel VERBOSE
"
    )
}

/// Waits until sshd answers on `port`; if it exits or does not answer in time, the
/// error holds its log.
fn wait_ready(child: &mut Child, port: u16, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let log_text = || fs::read_to_string(log).unwrap_or_else(|e| format!("(no log: {e})"));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{SSHD} exited ({status}) before listening on 127.0.0.1:{port}; its log:\n{}",
                log_text()
            ));
        }
        if answers_ssh(port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{SSHD} did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}; its log:\n{}",
                log_text()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An sshd that cannot start is reported with its log, not waited on.
    #[test]
    fn a_failing_sshd_shows_its_log() {
        let d = tempfile::tempdir().unwrap();
        let config = d.path().join("sshd_config");
        fs::write(&config, "NoSuchOption yes\n").unwrap();
        let log = d.path().join("log");
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .spawn()
            .unwrap();
        let e = wait_ready(&mut child, free_port().unwrap(), &log).unwrap_err();
        assert!(e.contains("exited") && e.contains("NoSuchOption"), "{e}");
    }
}

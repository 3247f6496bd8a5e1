//! The sshd harness (`haul_tests::sshd`) that the transfer-over-ssh tests stand on: a real
//! sshd on 127.0.0.1 that lets the test's key, and only it, in as root.

use haul_tests::sshd::Sshd;

fn start() -> Sshd {
    Sshd::start().unwrap_or_else(|e| panic!("cannot start the test sshd: {e}"))
}

fn echo(sshd: &Sshd, word: &str) -> String {
    let out = sshd.ssh(&format!("echo {word}")).output().expect("run ssh");
    assert!(
        out.status.success(),
        "ssh failed ({}): {}\nsshd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn runs_a_command_as_root() {
    let sshd = start();
    assert_eq!(echo(&sshd, "ok"), "ok\n");
    // The same through a shell, as `-e` is given to haul: one string.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} {} id -u",
            sshd.ssh_command(),
            sshd.user_at_host()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
}

#[test]
fn only_the_test_key_gets_in() {
    let sshd = start();
    let other = haul_tests::util::tmp();
    let key = other.path().join("k");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let cmd = sshd.ssh_command().replace(
        &sshd.key().display().to_string(),
        &key.display().to_string(),
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{cmd} {} echo in", sshd.user_at_host()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(out.stdout, b"");
}

#[test]
fn two_run_at_once() {
    let a = start();
    let b = start();
    assert_ne!(a.port(), b.port());
    assert_eq!(echo(&a, "a"), "a\n");
    assert_eq!(echo(&b, "b"), "b\n");
    // Dropping one stops it and leaves the other running.
    let port = a.port();
    drop(a);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert_eq!(echo(&b, "still"), "still\n");
}

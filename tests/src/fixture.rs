//! Fixture builders: trees holding every kind of entry and metadata haul must preserve.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::{list_entries, require_root, ROOT};

/// Deterministic pseudo-random bytes (blake3 in XOF mode, seeded by `seed`).
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(b"haul-fixture:");
    h.update(seed.as_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Create (or truncate) a file with `data`, creating missing parent directories.
pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Overwrite a file's content in place (same inode).
pub fn overwrite_in_place(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(data)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

pub fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target.as_ref(), link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

pub fn hardlink(existing: &Path, link: &Path) {
    fs::hard_link(existing, link)
        .unwrap_or_else(|e| panic!("link {} -> {}: {e}", link.display(), existing.display()));
}

pub fn mkfifo(path: &Path, mode: u32) {
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(mode))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
    chmod(path, mode);
}

/// Bind a unix socket at `path` and close it: the socket file stays.
pub fn mksock(path: &Path) {
    let l = std::os::unix::net::UnixListener::bind(path)
        .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    drop(l);
}

/// mknod a character (`block == false`) or block device (root only).
pub fn mkdev(path: &Path, block: bool, major: u64, minor: u64, mode: u32) {
    require_root("mknod");
    let kind = if block {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFCHR
    };
    mknod(
        path,
        kind,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
    chmod(path, mode);
}

/// chmod (follows symlinks; never call it on one).
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

/// lchown (does not follow symlinks).
pub fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {uid}:{gid} {}: {e}", path.display()));
}

/// Set atime and mtime (not following symlinks).
pub fn set_mtime(path: &Path, secs: i64, nsecs: i64) {
    let t = TimeSpec::new(secs, nsecs);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .unwrap_or_else(|e| panic!("utimensat {secs}.{nsecs} {}: {e}", path.display()));
}

/// Set an extended attribute (not following symlinks).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value)
        .unwrap_or_else(|e| panic!("setxattr {name} {}: {e}", path.display()));
}

/// Run `setfacl ARGS PATH`; panics naming the Debian package if setfacl is missing.
pub fn setfacl(args: &[&str], path: &Path) {
    let out = Command::new("setfacl").args(args).arg(path).output();
    match out {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            panic!("setfacl not found: install Debian package acl (apt-get install acl)")
        }
        Err(e) => panic!("cannot run setfacl: {e}"),
        Ok(o) => assert!(
            o.status.success(),
            "setfacl {args:?} {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// A VFS_CAP_REVISION_2 `security.capability` value.
pub fn cap_v2_blob(permitted: u64, effective: bool) -> Vec<u8> {
    let magic: u32 = 0x0200_0000 | u32::from(effective);
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&magic.to_le_bytes());
    v.extend_from_slice(&(permitted as u32).to_le_bytes()); // permitted[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[0]
    v.extend_from_slice(&((permitted >> 32) as u32).to_le_bytes()); // permitted[1]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[1]
    v
}

pub const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
pub const CAP_NET_RAW: u64 = 1 << 13;

/// Create a sparse file of apparent size `size` with data only at the given pieces.
pub fn make_sparse(path: &Path, size: u64, pieces: &[(u64, Vec<u8>)]) {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(size).unwrap();
    for (off, data) in pieces {
        f.write_all_at(data, *off).unwrap();
    }
    f.sync_all().unwrap();
}

/// lchown every entry under (and including) `root`.
pub fn chown_tree(root: &Path, uid: u32, gid: u32) {
    for (rel, _) in list_entries(root) {
        let p = if rel.as_os_str() == ROOT {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        lchown(&p, uid, gid);
    }
}

/// What the full fixture may contain.
#[derive(Clone, Debug, Default)]
pub struct FixtureOpts {
    /// Root-only content: devices, foreign owners, trusted.* xattrs, file capabilities,
    /// and files the owner cannot read (mode 000 and friends).
    pub privileged: bool,
    /// lchown the whole tree to this uid:gid before modes/xattrs/times are applied
    /// (so that setuid bits and capabilities survive).
    pub owner: Option<(u32, u32)>,
}

/// Relative paths of notable fixture entries.
pub mod paths {
    pub const SPARSE: &str = "sparse.img";
    pub const SPARSE_TAIL: &str = "sparse_tail.img";
    pub const BIG: &str = "big.bin";
    pub const ACL_FILE: &str = "acl/file";
    pub const ACL_DEFDIR: &str = "acl/defdir";
    pub const USER_XATTR_FILE: &str = "xattrs/file";
    pub const USER_XATTR_DIR: &str = "xattrs/dir";
    pub const CAP_FILE: &str = "xattrs/capfile";
    pub const TRUSTED_FILE: &str = "xattrs/trusted_file";
    pub const STICK_DIR: &str = "stick";
}

/// Apparent size of the fixture's big sparse file.
pub const SPARSE_SIZE: u64 = 1 << 30;

/// year 2400-01-01T00:00:00Z
pub const YEAR_2400: i64 = 13_569_465_600;

/// Build a tree with every kind of entry and metadata under `root` (created if missing).
///
/// Entries (relative to `root`):
/// - regular files: `empty`, `small.txt`, `big.bin` (4 MiB + 123 random bytes),
///   `a/medium.bin`, `a/b/c/deep.txt`, `zeros.bin` (256 KiB of written zeros), odd names
///   (spaces, unicode, a leading dash, a newline, a non-UTF-8 byte);
/// - `sparse.img`: 1 GiB apparent, three 4 KiB pieces (at 1 MiB, 512 MiB and the very end);
///   `sparse_tail.img`: 16 MiB with 4 KiB of data at 0 and a trailing hole;
/// - `links/`: relative, absolute, dangling, to-a-directory, long-target and chained symlinks;
/// - hardlinks: `hl/one`+`hl/two`; `hl/g3_a`+`a/g3_b`+`a/b/c/g3_c`;
/// - `special/`: fifo, unix socket, and (privileged) char and block devices;
/// - `modes/`: setuid, setgid, setuid+setgid, 0o641 files; sticky and setgid dirs (with a
///   non-setgid subdir created before the parent got setgid); a 0o555 dir with content;
///   (privileged) 0o000, 0o200 and 0o111 files;
/// - `owners/` (privileged): entries owned by 1234:5678, 4242:4343, 4242:20, incl. a symlink,
///   a fifo and a setuid+setgid file owned by 1234:5678;
/// - `times/`: pre-1970 and year-2400 mtimes on files, dirs and symlinks, nanoseconds;
/// - `xattrs/`: user.* on a file (binary, empty and 3000-byte values), on a dir, on a
///   hardlinked inode; (privileged) trusted.* on a file and a symlink, security.capability
///   on a file owned by 1234 (chowned before the capability was set);
/// - `acl/`: an access ACL on a file, access+default ACLs on a dir with one child created
///   before the default ACL (no ACL) and two after (inherited);
/// - `stick/`: a directory whose mtime is set after its content was written.
pub fn build_full(root: &Path, opts: &FixtureOpts) {
    if opts.privileged {
        require_root("the privileged fixture");
    }
    let p = |rel: &str| -> PathBuf { root.join(rel) };
    mkdir(root);

    // ---- content -------------------------------------------------------------------
    write_file(&p("empty"), b"");
    write_file(&p("small.txt"), b"hello, haul\n");
    write_file(&p(paths::BIG), &random_bytes("big", 4 * 1024 * 1024 + 123));
    write_file(&p("a/medium.bin"), &random_bytes("medium", 300_000));
    write_file(&p("a/b/c/deep.txt"), b"deep\n");
    write_file(&p("zeros.bin"), &vec![0u8; 256 * 1024]);
    write_file(&p("weird name with spaces"), b"spaces\n");
    write_file(&p("ünïcødé-名前.txt"), "unicode\n".as_bytes());
    write_file(&p("-dash"), b"dash\n");
    write_file(&p("new\nline"), b"newline\n");
    write_file(
        &root.join(OsStr::from_bytes(b"bad\xffname")),
        b"not utf-8\n",
    );

    make_sparse(
        &p(paths::SPARSE),
        SPARSE_SIZE,
        &[
            (1 << 20, random_bytes("sparse1", 4096)),
            (512 << 20, random_bytes("sparse2", 4096)),
            (SPARSE_SIZE - 4096, random_bytes("sparse3", 4096)),
        ],
    );
    make_sparse(
        &p(paths::SPARSE_TAIL),
        16 << 20,
        &[(0, random_bytes("tail", 4096))],
    );

    mkdir(&p("links"));
    symlink("../small.txt", &p("links/rel"));
    symlink(p("small.txt"), &p("links/abs"));
    symlink("does/not/exist", &p("links/dangling"));
    symlink("../a/b", &p("links/todir"));
    symlink("x".repeat(250), &p("links/long"));
    symlink("rel", &p("links/chain"));

    write_file(&p("hl/one"), b"hardlink pair\n");
    hardlink(&p("hl/one"), &p("hl/two"));
    write_file(&p("hl/g3_a"), &random_bytes("g3", 10_000));
    hardlink(&p("hl/g3_a"), &p("a/g3_b"));
    hardlink(&p("hl/g3_a"), &p("a/b/c/g3_c"));

    mkdir(&p("special"));
    mkfifo(&p("special/fifo"), 0o640);
    mksock(&p("special/sock"));
    if opts.privileged {
        mkdev(&p("special/chr"), false, 1, 3, 0o620);
        mkdev(&p("special/blk"), true, 259, 65537, 0o660);
    }

    for f in ["setuid", "setgid", "setuidgid", "odd"] {
        write_file(&p(&format!("modes/{f}")), f.as_bytes());
    }
    mkdir(&p("modes/sticky_dir"));
    write_file(&p("modes/sticky_dir/f"), b"sticky\n");
    mkdir(&p("modes/setgid_dir/inner"));
    write_file(&p("modes/setgid_dir/f"), b"setgid dir\n");
    write_file(&p("modes/ro_dir/inside.txt"), b"read-only dir content\n");
    mkdir(&p("modes/ro_dir/sub"));
    write_file(&p("modes/ro_dir/sub/deeper.txt"), b"deeper\n");
    if opts.privileged {
        write_file(&p("modes/zero"), b"mode 000 but root reads it\n");
        write_file(&p("modes/writeonly"), b"mode 200\n");
        write_file(&p("modes/execonly"), b"#!/bin/sh\n");
    }

    if opts.privileged {
        write_file(&p("owners/u1234"), b"owned by 1234\n");
        write_file(&p("owners/d4242/f"), b"in a dir owned by 4242\n");
        symlink("u1234", &p("owners/link"));
        mkfifo(&p("owners/fifo"), 0o600);
        write_file(&p("owners/suid1234"), b"setuid 1234\n");
    }

    write_file(&p("times/old_file"), b"old\n");
    write_file(&p("times/future_file"), b"future\n");
    write_file(&p("times/epoch_file"), b"epoch\n");
    write_file(&p("times/nano_file"), b"nano\n");
    write_file(&p("times/old_dir/child"), b"child of old dir\n");
    write_file(&p("times/future_dir/child"), b"child of future dir\n");
    symlink("old_file", &p("times/old_link"));
    symlink("future_file", &p("times/future_link"));

    write_file(&p(paths::USER_XATTR_FILE), b"xattrs\n");
    write_file(&p("xattrs/dir/f"), b"in xattr dir\n");
    if opts.privileged {
        write_file(&p(paths::CAP_FILE), b"#!/bin/true\n");
        write_file(&p(paths::TRUSTED_FILE), b"trusted\n");
    }

    write_file(&p(paths::ACL_FILE), b"acl\n");
    write_file(
        &p("acl/defdir/before.txt"),
        b"created before the default ACL\n",
    );
    setfacl(
        &["-d", "-m", "u:1234:rwx,g:5678:r-x,o::---"],
        &p(paths::ACL_DEFDIR),
    );
    write_file(&p("acl/defdir/after.txt"), b"inherits the default ACL\n");
    mkdir(&p("acl/defdir/after_dir"));

    for i in 0..5 {
        write_file(
            &p(&format!("{}/f{i}", paths::STICK_DIR)),
            format!("{i}\n").as_bytes(),
        );
    }

    // ---- owners (before modes: chown clears setuid/setgid and capabilities) ---------
    if let Some((u, g)) = opts.owner {
        chown_tree(root, u, g);
    }
    if opts.privileged {
        lchown(&p("owners"), 0, 5678);
        lchown(&p("owners/u1234"), 1234, 5678);
        lchown(&p("owners/d4242"), 4242, 4343);
        lchown(&p("owners/d4242/f"), 4242, 20);
        lchown(&p("owners/link"), 1234, 5678);
        lchown(&p("owners/fifo"), 1234, 5678);
        lchown(&p("owners/suid1234"), 1234, 5678);
        lchown(&p("modes/setgid_dir"), 0, 5678);
        lchown(&p(paths::CAP_FILE), 1234, 5678);
        lchown(&p("special/chr"), 0, 5);
    }

    // ---- modes ----------------------------------------------------------------------
    chmod(root, 0o755);
    chmod(&p("modes/setuid"), 0o4755);
    chmod(&p("modes/setgid"), 0o2755);
    chmod(&p("modes/setuidgid"), 0o6711);
    chmod(&p("modes/odd"), 0o641);
    chmod(&p("modes/sticky_dir"), 0o1777);
    chmod(&p("modes/setgid_dir/inner"), 0o755);
    chmod(&p("modes/setgid_dir"), 0o2775);
    chmod(&p("modes/ro_dir/inside.txt"), 0o444);
    chmod(&p("modes/ro_dir/sub"), 0o555);
    chmod(&p("modes/ro_dir"), 0o555);
    chmod(&p("a/medium.bin"), 0o600);
    chmod(&p("times/old_dir"), 0o700);
    if opts.privileged {
        chmod(&p("modes/zero"), 0o000);
        chmod(&p("modes/writeonly"), 0o200);
        chmod(&p("modes/execonly"), 0o111);
        chmod(&p("owners/suid1234"), 0o6755);
        chmod(&p("owners/d4242"), 0o750);
        chmod(&p(paths::CAP_FILE), 0o755);
    }

    // ---- xattrs, capabilities, ACLs -------------------------------------------------
    set_xattr(&p(paths::USER_XATTR_FILE), "user.comment", b"hello xattr");
    set_xattr(
        &p(paths::USER_XATTR_FILE),
        "user.binary",
        b"\x00\x01\xff\xfe\x00end",
    );
    set_xattr(&p(paths::USER_XATTR_FILE), "user.empty", b"");
    set_xattr(
        &p(paths::USER_XATTR_FILE),
        "user.big",
        &random_bytes("bigxattr", 3000),
    );
    set_xattr(&p(paths::USER_XATTR_DIR), "user.dirattr", b"on a directory");
    set_xattr(&p("hl/one"), "user.on_hardlink", b"shared by the inode");
    set_xattr(&p("a/b/c/deep.txt"), "user.deep", b"1");
    if opts.privileged {
        set_xattr(
            &p(paths::TRUSTED_FILE),
            "trusted.secret",
            b"only root sees this",
        );
        set_xattr(&p("links/rel"), "trusted.onlink", b"xattr on a symlink");
        set_xattr(
            &p(paths::USER_XATTR_DIR),
            "trusted.dir",
            b"trusted on a dir",
        );
        set_xattr(
            &p(paths::CAP_FILE),
            "security.capability",
            &cap_v2_blob(CAP_NET_RAW, true),
        );
    }
    setfacl(&["-m", "u:1234:rw-,g:5678:r--"], &p(paths::ACL_FILE));
    setfacl(&["-m", "u:1234:r-x"], &p(paths::ACL_DEFDIR));

    // ---- times: non-directories first, then directories deepest first ---------------
    set_mtime(&p("times/old_file"), -1_234_567_890, 123_456_789);
    set_mtime(&p("times/future_file"), YEAR_2400, 999_999_999);
    set_mtime(&p("times/epoch_file"), 0, 0);
    set_mtime(&p("times/nano_file"), 1_700_000_000, 1);
    set_mtime(&p("times/old_link"), -1, 5);
    set_mtime(&p("times/future_link"), YEAR_2400 + 1, 7);
    set_mtime(&p("links/abs"), 1_000_000_001, 42);
    set_mtime(&p("special/fifo"), 1_300_000_000, 300);
    set_mtime(&p("special/sock"), 1_300_000_001, 301);
    set_mtime(&p(paths::SPARSE), 1_600_000_000, 600);
    set_mtime(&p("hl/one"), 1_400_000_000, 400);
    set_mtime(&p("modes/ro_dir/inside.txt"), 1_410_000_000, 410);
    if opts.privileged {
        set_mtime(&p("special/chr"), 1_300_000_002, 302);
        set_mtime(&p("owners/link"), 1_300_000_003, 303);
        set_mtime(&p("modes/zero"), 1_300_000_004, 304);
    }
    set_mtime(&p("times/old_dir"), -987_654_321, 987_654_321);
    set_mtime(&p("times/future_dir"), YEAR_2400 + 86_400, 1);
    set_mtime(&p("a/b/c"), 1_111_111_111, 111_111_111);
    set_mtime(&p("a/b"), 1_111_111_112, 222_222_222);
    set_mtime(&p("modes/ro_dir/sub"), 1_234_567_889, 9);
    set_mtime(&p("modes/ro_dir"), 1_234_567_890, 1);
    set_mtime(&p(paths::STICK_DIR), 1_000_000_000, 500_000_000);
    set_mtime(&p("acl/defdir"), 1_200_000_000, 12);
    set_mtime(&p("times"), 1_200_000_001, 13);
    set_mtime(root, 1_500_000_000, 5);
}

/// A small tree for tests that do not need every kind of entry:
/// `top.txt`, `dir/inner.txt`, `dir/sub/deep.bin` (100 KiB random), `dir/link -> inner.txt`,
/// `dir/hard` (hardlink of `top.txt`), `empty_dir/`, with fixed nanosecond mtimes.
pub fn build_small(root: &Path) {
    let p = |rel: &str| -> PathBuf { root.join(rel) };
    mkdir(root);
    write_file(&p("top.txt"), b"top level\n");
    write_file(&p("dir/inner.txt"), b"inner\n");
    write_file(
        &p("dir/sub/deep.bin"),
        &random_bytes("small-deep", 100 * 1024),
    );
    symlink("inner.txt", &p("dir/link"));
    hardlink(&p("top.txt"), &p("dir/hard"));
    mkdir(&p("empty_dir"));
    set_xattr(&p("dir/inner.txt"), "user.small", b"yes");
    chmod(&p("dir/sub/deep.bin"), 0o640);
    set_mtime(&p("top.txt"), 1_650_000_000, 123);
    set_mtime(&p("dir/inner.txt"), 1_650_000_001, 456);
    set_mtime(&p("dir/sub/deep.bin"), 1_650_000_002, 789);
    set_mtime(&p("dir/link"), 1_650_000_003, 1);
    set_mtime(&p("dir/sub"), 1_650_000_004, 2);
    set_mtime(&p("dir"), 1_650_000_005, 3);
    set_mtime(&p("empty_dir"), 1_650_000_006, 4);
    set_mtime(root, 1_650_000_007, 5);
}

/// [`build_full`] with everything only root can create.
pub fn build_full_as_root(root: &Path) {
    build_full(
        root,
        &FixtureOpts {
            privileged: true,
            owner: None,
        },
    );
}

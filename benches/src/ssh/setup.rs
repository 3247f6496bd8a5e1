//! What the `ssh` bench prepares before it times anything: the exact
//! command lines, the wrapper that records each `haul serve`'s peak RSS, the
//! files the append measure grows, and the checks of room, peers and haul.
use super::*;

/// The exact command lines being compared.
pub(super) struct Commands {
    /// Absolute: it is also what the wrapper runs on the remote side.
    pub(super) haul: PathBuf,
    /// `--remote-haul`: a script that runs `haul` under `/usr/bin/time`.
    pub(super) wrapper: PathBuf,
    /// The ssh command line for `-e` (rsync's and haul's) and the pipeline.
    pub(super) ssh: String,
    /// `root@127.0.0.1`.
    pub(super) login: String,
    pub(super) haul_args: Vec<String>,
}

impl Commands {
    /// `tool`'s command from `src` to `dsts` (two for the fan-out; the
    /// haul-twice peer is two of these, see [`Bench::run_tool`]).
    pub(super) fn command(&self, tool: Tool, src: &Path, dsts: &[&Path]) -> Command {
        let remote = |dst: &Path, suffix: &str| {
            let mut s = OsString::from(format!("{}:", self.login));
            s.push(dst);
            s.push(suffix);
            s
        };
        match tool {
            Tool::Haul | Tool::HaulTwice => {
                let mut c = Command::new(&self.haul);
                c.args(["copy", "--no-progress", "--json", "-e", &self.ssh])
                    .arg("--remote-haul")
                    .arg(&self.wrapper)
                    .args(&self.haul_args)
                    .arg(src)
                    .args(dsts.iter().map(|d| remote(d, "")));
                c
            }
            Tool::Rsync => {
                let mut src = OsString::from(src);
                src.push("/");
                let mut c = Command::new("rsync");
                c.args(["-aHAXS", "--numeric-ids", "-e", &self.ssh])
                    .arg(src)
                    .arg(remote(dsts[0], "/"));
                c
            }
            Tool::Tar => {
                // bash for pipefail: a failing local tar or zstd must fail
                // the run, not only the last command of the pipe.
                let tar_flags = "--xattrs --acls --numeric-owner";
                let remote_cmd = format!(
                    "zstd -d | tar -C {} {tar_flags} -xpf -",
                    shell_quote(&dsts[0].to_string_lossy())
                );
                let script = format!(
                    "set -o pipefail; tar -C {} {tar_flags} -cf - . | zstd -1 -T0 | {} {} {}",
                    shell_quote(&src.to_string_lossy()),
                    self.ssh,
                    self.login,
                    shell_quote(&remote_cmd)
                );
                let mut c = Command::new("bash");
                c.arg("-c").arg(script);
                c
            }
        }
    }

    /// `tool`'s command in `measure` with placeholders for the paths and
    /// the ssh command line.
    pub(super) fn describe(&self, measure: Measure, tool: Tool) -> String {
        let shown = Commands {
            haul: PathBuf::from("haul"),
            wrapper: PathBuf::from("WRAPPER"),
            ssh: "SSH".into(),
            login: self.login.clone(),
            haul_args: self.haul_args.clone(),
        };
        let (d1, d2) = (Path::new("DST"), Path::new("DST2"));
        let dsts: &[&Path] = if measure == Measure::FanOut && tool == Tool::Haul {
            &[d1, d2]
        } else {
            &[d1]
        };
        let c = shown.command(tool, Path::new("SRC"), dsts);
        if tool == Tool::Tar {
            let script = c.get_args().nth(1).unwrap_or_default();
            return script.to_string_lossy().replace("set -o pipefail; ", "");
        }
        let mut parts = vec![c.get_program().to_string_lossy().into_owned()];
        parts.extend(c.get_args().map(|a| shell_quote(&a.to_string_lossy())));
        let line = parts.join(" ");
        if tool == Tool::HaulTwice {
            let second = line.replace("DST", "DST2");
            return format!("{line} && {second}");
        }
        line
    }
}

/// The reports of the `/usr/bin/time` wrapper around each remote `haul
/// serve`: one file per process, its last line the peak RSS in KiB.
pub(super) struct ServeRss {
    pub(super) dir: PathBuf,
}

impl ServeRss {
    /// Writes the `--remote-haul` wrapper for `haul` at `wrapper`.
    pub(super) fn install(dir: PathBuf, wrapper: &Path, haul: &Path) -> Result<ServeRss> {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // `exec` keeps the pid, so `$$` names the report of this serve alone;
        // time's address space is small, so the figure is haul's own.
        let script = format!(
            "#!/bin/sh\n\
             # haul-benches ssh: records the peak RSS of this remote haul (KiB) in {dir}\n\
             exec /usr/bin/time -f %M -o {dir}/serve.$$ {haul} \"$@\"\n",
            dir = shell_quote(&dir.to_string_lossy()),
            haul = shell_quote(&haul.to_string_lossy())
        );
        fs::write(wrapper, script).with_context(|| format!("writing {}", wrapper.display()))?;
        fs::set_permissions(wrapper, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", wrapper.display()))?;
        Ok(ServeRss { dir })
    }

    /// The complete reports so far (a report is complete once its last
    /// line is a number: time opens the file before the command runs) and
    /// how many files there are.
    pub(super) fn read(&self) -> Result<(Vec<u64>, usize)> {
        let mut done = Vec::new();
        let mut files = 0;
        for e in
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?
        {
            let path = e?.path();
            files += 1;
            // With a failing haul, time writes "Command exited with
            // non-zero status N" before the figure.
            let text = fs::read_to_string(&path).unwrap_or_default();
            if !text.ends_with('\n') {
                continue;
            }
            if let Some(kib) = text.lines().last().and_then(|l| l.trim().parse().ok()) {
                done.push(kib);
            }
        }
        Ok((done, files))
    }

    /// Waits until `expected` serves have reported, and every report that
    /// was started is complete (at most `patience`: a run that failed may
    /// never have reached the remote side); returns the largest figure and
    /// removes the reports.
    pub(super) fn collect(&self, expected: usize, patience: Duration) -> Result<Option<u64>> {
        let deadline = Instant::now() + patience;
        let found = loop {
            let (done, files) = self.read()?;
            if (done.len() >= expected && done.len() == files) || Instant::now() > deadline {
                break done;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.clear()?;
        Ok(found.into_iter().max())
    }

    pub(super) fn clear(&self) -> Result<()> {
        for e in
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?
        {
            corpus::remove_if_exists(&e?.path())?;
        }
        Ok(())
    }
}

/// The files the `append` measure grows: every 100th regular file with a
/// single link, in sorted order, with their original size and mtime so the
/// working copy can be put back between tools.
pub(super) struct Appended {
    pub(super) files: Vec<(PathBuf, u64, SystemTime)>,
}

/// What every tool appends in the `append` measure.
pub(super) const APPENDED_LINE: &[u8] = b"/* haul-bench: appended line */\n";

impl Appended {
    pub(super) fn pick(root: &Path) -> Result<Appended> {
        let mut regular = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = root.join(&rel);
            let mut names: Vec<OsString> = fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()?;
            names.sort();
            // Reversed onto the stack, so the walk goes in sorted order.
            for name in names.into_iter().rev() {
                let rel = rel.join(name);
                let md = fs::symlink_metadata(root.join(&rel))?;
                if md.is_dir() {
                    stack.push(rel);
                } else if md.is_file() && md.nlink() == 1 {
                    regular.push((rel, md.len(), md.modified()?));
                }
            }
        }
        let files = regular.into_iter().skip(50).step_by(100).collect();
        Ok(Appended { files })
    }

    pub(super) fn append(&self, root: &Path) -> Result<()> {
        for (rel, _, _) in &self.files {
            let path = root.join(rel);
            fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(APPENDED_LINE))
                .with_context(|| format!("appending to {}", path.display()))?;
        }
        Ok(())
    }

    /// Cuts the appended line off again and puts the mtime back: the
    /// working copy is then the corpus again, byte for byte.
    pub(super) fn restore(&self, root: &Path) -> Result<()> {
        for (rel, len, mtime) in &self.files {
            let path = root.join(rel);
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.set_len(*len)?;
                    f.set_times(fs::FileTimes::new().set_modified(*mtime))
                })
                .with_context(|| format!("restoring {}", path.display()))?;
        }
        Ok(())
    }
}

/// Fails early, before anything is timed, if `dir` lacks room for two more
/// copies of the tree (the fan-out's destinations, or the append measure's
/// working copy and destination).
pub(super) fn check_room(dir: &Path, summary: &Summary) -> Result<()> {
    let (bytes, inodes) =
        crate::sys::free_space(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let one = summary.dirs + summary.files + summary.symlinks + summary.other;
    let need_inodes = 2 * one + 1_000;
    let need_bytes = 2 * (summary.bytes + summary.bytes / 20) + (128 << 20);
    if inodes < need_inodes || bytes < need_bytes {
        bail!(
            "{} has room for {inodes} inodes and {} MiB, but two copies need about {need_inodes} \
             inodes and {} MiB: free some space or use a smaller --scale",
            dir.display(),
            bytes >> 20,
            need_bytes >> 20
        );
    }
    Ok(())
}

/// Checks the peers, the sshd and haul's remote flags; writes the wrapper.
pub(super) fn preflight(common: &Common, sshd: &Sshd, root: &Path) -> Result<(Commands, ServeRss)> {
    session::require_program("rsync", "rsync")?;
    session::require_program("tar", "tar")?;
    session::require_program("zstd", "zstd")?;
    session::require_program("bash", "bash")?;
    session::require_program("/usr/bin/time", "time")?;
    let haul = session::haul_binary(common, true)?;
    let haul = std::path::absolute(&haul).context("making the haul path absolute")?;
    let login = sshd.user_at_host();
    // The sshd answers: a failure here is the harness's, not a tool's.
    let out = sshd
        .ssh("rsync --version && zstd --version && tar --version")
        .stdin(Stdio::null())
        .output()
        .context("running ssh")?;
    if !out.status.success() {
        bail!(
            "ssh to the test sshd failed ({}): {}\nsshd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            sshd.log()
        );
    }
    let wrapper = root.join("remote-haul");
    let serve = ServeRss::install(root.join("serve-rss"), &wrapper, &haul)?;
    Ok((
        Commands {
            haul,
            wrapper,
            ssh: sshd.ssh_command(),
            login,
            haul_args: common.haul_args.clone(),
        },
        serve,
    ))
}

/// Whether `haul copy --help` lists the remote flags (the transport is
/// being written while this harness is); without them every haul run fails.
pub(super) fn haul_has_remote(haul: &Path) -> bool {
    Command::new(haul)
        .args(["copy", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--remote-haul"))
}

pub(super) fn versions(commands: &Commands, opts: &SshOpts) -> Vec<(String, String, String)> {
    let ssh_version = Command::new("ssh").arg("-V").output().map_or_else(
        |e| format!("unavailable ({e})"),
        |o| String::from_utf8_lossy(&o.stderr).trim().to_owned(),
    );
    let mut tools = Vec::new();
    for (tool, version) in [
        (
            Tool::Haul,
            crate::machine::first_line(&commands.haul.to_string_lossy(), &["--version"]),
        ),
        (Tool::HaulTwice, "the same haul".into()),
        (
            Tool::Rsync,
            crate::machine::first_line("rsync", &["--version"]),
        ),
        (
            Tool::Tar,
            format!(
                "{}, {}, {ssh_version}",
                crate::machine::first_line("tar", &["--version"]),
                crate::machine::first_line("zstd", &["--version"])
                    .trim_matches('*')
                    .trim()
            ),
        ),
    ] {
        let mut lines: Vec<(Vec<&str>, String)> = Vec::new();
        for &m in &opts.measures {
            if !m.tools().contains(&tool) {
                continue;
            }
            let line = commands.describe(m, tool);
            match lines.iter_mut().find(|(_, l)| *l == line) {
                Some((names, _)) => names.push(m.name()),
                None => lines.push((vec![m.name()], line)),
            }
        }
        if lines.is_empty() {
            continue;
        }
        let lines: Vec<String> = lines
            .into_iter()
            .map(|(names, line)| format!("{}: {line}", names.join(", ")))
            .collect();
        let version = if tool == Tool::Rsync {
            format!("{version}, {ssh_version}")
        } else {
            version
        };
        tools.push((tool.name().to_owned(), version, lines.join("; ")));
    }
    tools
}

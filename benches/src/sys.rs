//! OS queries the harness needs beyond std, through nix's safe wrappers (the
//! workspace keeps `unsafe` to `engine/src/sys/` alone).
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;

use nix::sys::resource::{getrusage, UsageWho};

pub fn clock_ticks_per_sec() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

pub struct Usage {
    pub cpu_secs: f64,
    pub max_rss_kib: u64,
}

/// Reaps `child`, which must be this process's only child (the runner starts
/// exactly one), and returns its raw wait status and its resource usage. With
/// one child, `RUSAGE_CHILDREN` is that child plus the descendants it reaped,
/// as `wait4` would report.
pub fn wait_usage(child: &mut Child) -> io::Result<(i32, Usage)> {
    let status = child.wait()?;
    let ru = getrusage(UsageWho::RUSAGE_CHILDREN).map_err(io::Error::from)?;
    let secs = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    let usage = Usage {
        cpu_secs: secs(ru.user_time()) + secs(ru.system_time()),
        max_rss_kib: u64::try_from(ru.max_rss()).unwrap_or(0),
    };
    Ok((status.into_raw(), usage))
}

/// Free bytes and free inodes of the filesystem holding `path`.
pub fn free_space(path: &std::path::Path) -> io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Ok((
        u64::from(st.blocks_available()) * u64::from(st.fragment_size()),
        u64::from(st.files_available()),
    ))
}

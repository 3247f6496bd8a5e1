//! The one place in this crate that needs `unsafe`: `std` has no way to get a
//! single child's rusage, the clock tick rate, or a filesystem's free inodes.
#![allow(unsafe_code)]

use std::io;

pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub struct Usage {
    pub cpu_secs: f64,
    pub max_rss_kib: u64,
}

/// Reaps `pid`; returns its raw wait status and rusage (which the kernel
/// fills as for `RUSAGE_BOTH`: the child plus the descendants it reaped).
pub fn wait4(pid: u32) -> io::Result<(libc::c_int, Usage)> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, so all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live, writable locals of the right types.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    let usage = Usage {
        cpu_secs: secs(ru.ru_utime) + secs(ru.ru_stime),
        max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    };
    Ok((status, usage))
}

/// Free bytes and free inodes of the filesystem holding `path`.
pub fn free_space(path: &std::path::Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs is plain old data, so all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a live, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Ok((
        u64::from(st.f_bavail) * u64::from(st.f_frsize),
        u64::from(st.f_favail),
    ))
}

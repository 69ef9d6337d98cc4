//! The process's open-file limit: raised once at start so that the configured connection caps
//! can fit (each proxied connection costs two sockets and, while it moves data, up to four
//! pipe ends).

use std::io;

/// The soft and hard `RLIMIT_NOFILE` after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

fn get() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` that outlives the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

/// The soft limit [`raise_nofile_limit`] reaches: the hard limit, or `fs.nr_open` when the
/// hard limit is "unlimited" (Linux refuses a soft limit above `nr_open` even then).
fn reachable(lim: &libc::rlimit) -> u64 {
    if lim.rlim_max != libc::RLIM_INFINITY {
        return lim.rlim_max;
    }
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1_048_576)
}

/// The open-file limit this process runs with once [`raise_nofile_limit`] has run, known
/// before it runs (so `check` and a reload size defaults as `run` does); 1024, the usual
/// default, when the limit cannot be read.
pub fn reachable_nofile() -> u64 {
    get().map_or(1024, |lim| reachable(&lim))
}

/// Raises the soft open-file limit to the hard limit and returns both.
pub fn raise_nofile_limit() -> io::Result<FdLimit> {
    let mut lim = get()?;
    let target = reachable(&lim);
    if lim.rlim_cur < target {
        lim.rlim_cur = target;
        // SAFETY: `lim` is a valid, initialised `rlimit` that outlives the call.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let now = get()?;
    Ok(FdLimit {
        soft: now.rlim_cur,
        hard: now.rlim_max,
    })
}

/// The current soft open-file limit.
pub fn soft_nofile() -> io::Result<u64> {
    get().map(|lim| lim.rlim_cur)
}

/// The descriptors this process has open, counted in `/proc/self/fd` (the directory's own
/// descriptor, open while it is read, is not counted). Costs a directory read per
/// descriptor page: for occasional checks, not per connection.
pub fn open_descriptors() -> io::Result<u64> {
    let entries = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    Ok(entries.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_soft_equal_to_hard_or_nr_open() {
        let lim = raise_nofile_limit().unwrap();
        assert!(lim.soft <= lim.hard);
        assert!(lim.soft >= 64, "soft limit {} is implausibly low", lim.soft);
    }

    #[test]
    fn open_descriptors_counts_one_more_for_each_one_opened() {
        let before = open_descriptors().unwrap();
        let files: Vec<std::fs::File> = (0..5)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        // Other test threads may open files meanwhile: at least five more.
        assert!(open_descriptors().unwrap() >= before + 5);
        drop(files);
    }
}

//! Holding (blocking) the signals tollgate acts on — SIGHUP, SIGTERM, SIGINT, SIGUSR2 —
//! until their handlers are in place. Their default action is to terminate the process: one
//! that arrived during start-up, before tokio's handlers were installed, would kill it (and
//! under systemd a SIGHUP-killed service counts as a clean stop, so it is not restarted).
//! Held, it stays pending and is delivered the moment [`release`] unblocks it, to the
//! handler. The binary holds them from before `main` (`early.rs`); every thread started
//! meanwhile inherits the mask, so once the signal thread releases them it is the one that
//! receives them.
//!
//! Also the two process calls the benchmarks need ([`kill`], [`clock_ticks_per_second`]),
//! so that no code outside this module is `unsafe`.

use std::io;

/// The signals tollgate handles.
pub const HELD: [libc::c_int; 4] = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGUSR2];

/// Blocks [`HELD`] in the calling thread (and every thread it starts from now on).
pub fn hold() -> io::Result<()> {
    change(libc::SIG_BLOCK)
}

/// Unblocks [`HELD`] in the calling thread; any that are pending are delivered now.
pub fn release() -> io::Result<()> {
    change(libc::SIG_UNBLOCK)
}

/// Whether every one of [`HELD`] is blocked in the calling thread.
pub fn held() -> io::Result<bool> {
    let mut current = empty_set();
    // SAFETY: a null new set only reads the mask into `current`, a valid sigset_t.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `current` is an initialised set; sigismember only reads it.
    Ok(HELD
        .iter()
        .all(|s| unsafe { libc::sigismember(&current, *s) } == 1))
}

fn empty_set() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set it is given; it cannot fail for a valid
    // pointer, after which the set is initialised.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        set.assume_init()
    }
}

fn change(how: libc::c_int) -> io::Result<()> {
    let mut set = empty_set();
    for s in HELD {
        // SAFETY: `set` is an initialised sigset_t and `s` a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    // SAFETY: `set` is initialised; a null old set asks for nothing back.
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Sends `signal` to process `pid` (the benchmarks stop their own children this way).
pub fn kill(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Clock ticks per second, the unit of CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_second() -> io::Result<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(io::Error::last_os_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a thread of its own, so the test harness's threads are untouched.
    #[test]
    fn hold_and_release_change_only_this_threads_mask() {
        std::thread::spawn(|| {
            assert!(!held().unwrap(), "a fresh thread holds nothing");
            hold().unwrap();
            assert!(held().unwrap());
            let inherited = std::thread::spawn(|| held().unwrap()).join().unwrap();
            assert!(inherited, "threads started while held inherit the mask");
            release().unwrap();
            assert!(!held().unwrap());
        })
        .join()
        .unwrap();
    }
}

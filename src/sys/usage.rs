//! CPU time the whole process has used: every thread, live or ended, user and system time
//! together (`getrusage(RUSAGE_SELF)`, to the microsecond).

use std::io;
use std::time::Duration;

/// User plus system CPU time of the process so far.
pub fn process_cpu_time() -> io::Result<Duration> {
    // SAFETY: `rusage` is a C struct of integers, for which all zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` that outlives the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timeval(usage.ru_utime) + timeval(usage.ru_stime))
}

fn timeval(t: libc::timeval) -> Duration {
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let micros = u32::try_from(t.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_work_done_on_another_thread() {
        let before = process_cpu_time().unwrap();
        let spun = std::thread::spawn(|| {
            let start = std::time::Instant::now();
            let mut x = 1u64;
            while start.elapsed() < Duration::from_millis(200) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            x
        });
        spun.join().unwrap();
        let after = process_cpu_time().unwrap();
        // The thread spun for 200 ms of wall time; on a loaded machine it may have had less
        // CPU, but some, and it has ended: its time must still count.
        assert!(
            after > before + Duration::from_millis(20),
            "{before:?} -> {after:?}"
        );
    }
}

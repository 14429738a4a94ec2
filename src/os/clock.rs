//! The calling thread's CPU time: what a job that computes (rather than waits)
//! measures its work by, so that it computes as long on a busy machine as on
//! an idle one, where a wall clock would count the time it was not running.

use std::time::Duration;

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the clock is the calling thread's, which
    // every Linux has (the call cannot fail with these arguments).
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Computing counts, sleeping does not.
    #[test]
    fn counts_computing_not_sleeping() {
        let start = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time() - start;
        assert!(slept < Duration::from_millis(25), "{slept:?}");
        let start = thread_cpu_time();
        let wall = Instant::now();
        let mut x = 1u64;
        // Bounded: a clock that never advanced must fail, not hang.
        while thread_cpu_time() - start < Duration::from_millis(20)
            && wall.elapsed() < Duration::from_secs(5)
        {
            x = std::hint::black_box(x.wrapping_mul(3));
        }
        let computed = thread_cpu_time() - start;
        assert!(computed >= Duration::from_millis(20), "{computed:?}");
    }
}

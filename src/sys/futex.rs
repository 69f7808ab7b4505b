//! Futex wait and wake on an `AtomicU32`: how stopped threads wait for the
//! world to restart and how the collector waits for acknowledgements, without
//! locks or allocation (async-signal-safe).

use core::sync::atomic::AtomicU32;

/// Sleeps while `*word == expected`, at most `timeout_ns` if given. Returns on
/// wake-up, timeout, signal or a changed value; callers re-check.
pub fn wait(word: &AtomicU32, expected: u32, timeout_ns: Option<u64>) {
    let ts = timeout_ns.map(|ns| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: word is a valid aligned u32 for the call's duration; FUTEX_WAIT
    // only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            tsp,
        );
    }
}

/// Sleeps on `word` (woken when it changes, checking again every
/// `recheck_ns`) until `done` holds for its value or `max_ns` of that value
/// have passed since the call.
pub fn wait_until(
    word: &AtomicU32,
    recheck_ns: u64,
    max_ns: impl Fn(u32) -> u64,
    done: impl Fn(u32) -> bool,
) {
    let t0 = crate::sys::os::now_ns();
    loop {
        let v = word.load(core::sync::atomic::Ordering::Acquire);
        let waited = crate::sys::os::now_ns() - t0;
        let max = max_ns(v);
        if done(v) || waited >= max {
            return;
        }
        wait(word, v, Some((max - waited).min(recheck_ns)));
    }
}

/// Wakes up to `n` waiters on `word`.
pub fn wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE on a valid address has no other effect.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}

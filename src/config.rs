//! Run-time configuration, read once from the environment at initialisation
//! (see `sys::env`: no allocation; bad values are reported by name and ignored).

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::sys::env;

/// `MAGPIE_STATS=1`: print a summary to stderr at exit.
pub static STATS_AT_EXIT: AtomicBool = AtomicBool::new(false);
/// `MAGPIE_STATS=json`: the exit summary as one JSON object instead.
pub static STATS_JSON: AtomicBool = AtomicBool::new(false);
/// `MAGPIE_SCAN_ALL=1`: no pointer-free (noscan) spans for Rust layouts.
pub static SCAN_ALL: AtomicBool = AtomicBool::new(false);
/// `MAGPIE_RSEQ=0`: never use rseq (forces the locked per-CPU caches).
pub static USE_RSEQ: AtomicBool = AtomicBool::new(true);
/// `MAGPIE_DECAY_MS`: how long freed pages stay resident before they are returned.
pub static DECAY_MS: AtomicU64 = AtomicU64::new(1000);
/// `MAGPIE_RETAIN`: free resident bytes kept at most before returning at once
/// (the page heap keeps up to twice the bytes in use when that is more).
pub static RETAIN: AtomicUsize = AtomicUsize::new(64 << 20);
/// `MAGPIE_DEBUG_SLOW_GROWTH=1` (test hook): every new small span takes
/// 300 µs longer to make, which widens any window in which a fresh span is
/// on no list (the fork tests use it).
pub static DEBUG_SLOW_GROWTH: AtomicBool = AtomicBool::new(false);
/// `MAGPIE_DEBUG_SLOW_SWEEP=N` (test hook, microseconds, 0 = off): a program
/// thread that claims a span to sweep waits N µs before sweeping it, which
/// widens the window in which a sweep of the last pass is still running when
/// the next concurrent mark starts (`gc::wait_for_sweeps` must wait for it).
pub static DEBUG_SLOW_SWEEP_US: AtomicU64 = AtomicU64::new(0);
/// `MAGPIE_RESERVE`: address space reserved for the heap (tried first, halved on refusal).
pub static RESERVE: AtomicUsize = AtomicUsize::new(1 << 40);

pub fn load() {
    if env::get("MAGPIE_STATS") == Some(b"json".as_slice()) {
        STATS_AT_EXIT.store(true, Relaxed);
        STATS_JSON.store(true, Relaxed);
    } else {
        STATS_AT_EXIT.store(env::get_bool("MAGPIE_STATS", false), Relaxed);
    }
    SCAN_ALL.store(env::get_bool("MAGPIE_SCAN_ALL", false), Relaxed);
    USE_RSEQ.store(env::get_bool("MAGPIE_RSEQ", true), Relaxed);
    DECAY_MS.store(env::get_u64("MAGPIE_DECAY_MS", 1000, 0, 3_600_000), Relaxed);
    RETAIN.store(
        env::get_u64("MAGPIE_RETAIN", 64 << 20, 0, 1 << 40) as usize,
        Relaxed,
    );
    RESERVE.store(
        env::get_u64("MAGPIE_RESERVE", 1 << 40, 1 << 30, 1 << 46) as usize,
        Relaxed,
    );
    DEBUG_SLOW_GROWTH.store(env::get_bool("MAGPIE_DEBUG_SLOW_GROWTH", false), Relaxed);
    DEBUG_SLOW_SWEEP_US.store(
        env::get_u64("MAGPIE_DEBUG_SLOW_SWEEP", 0, 0, 10_000_000),
        Relaxed,
    );
    if env::get_bool("MAGPIE_DEBUG_REMOTE_ALL", false) {
        crate::alloc::central::REMOTE_HDR_LIMIT.store(usize::MAX, Relaxed);
    }
}

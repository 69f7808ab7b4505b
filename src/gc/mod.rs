//! The conservative mark-sweep collector.
//!
//! Modes (`MAGPIE_GC`): `off` — never runs (no thread, no signal handler, no
//! /proc read); `leakcheck` — runs, frees only GC-managed memory, counts the
//! rest of what is unreachable as leaks; `collect` — frees everything
//! unreachable that was never freed.
//!
//! A cycle, as the Go runtime's, in phases:
//!
//! ```text
//! Off ─ sweep termination ─▶ Mark ─ mark termination ─▶ Off + sweep
//! ```
//! 1. Sweep termination: finish sweeping the previous cycle, with the world running.
//! 2. Stop the world (`stop`): every thread parks in a signal handler, or on
//!    its way out of the allocator. Phase = Mark. With a dirty-page source
//!    (`dirty`), marking runs concurrently instead and this step is no stop
//!    (phase = Mark with the world running); see `cycle` for that variant and
//!    its invariants.
//! 3. Roots (`roots`): every writable private mapping except magpie's own,
//!    stacks from each thread's stack pointer up (registers included);
//!    conservative marking of the heap (`mark`).
//! 4. Mark termination: phase = MarkTermination; every per-CPU cache is emptied
//!    — slots back to their spans, tiny blocks retired — because the caches live
//!    in memory the collector does not scan; any allocation now aborts with
//!    "magpie: allocation during mark termination" (the check sits on the slow
//!    path, which emptied caches force every allocation onto). The sweep
//!    generation advances: every span now needs sweeping. Phase = Off; the
//!    world restarts.
//! 5. Sweep: the collector walks every span; an allocation that needs slots
//!    from a span sweeps it first (`central::refill`), so an object allocated
//!    after the cycle is never swept by it. Unmarked, allocated objects are
//!    unreachable: freed in `collect` (and always when GC-managed), counted as
//!    leaks in `leakcheck`.
//!
//! Pacing: a cycle starts when the bytes in in-use spans exceed the live heap
//! the last cycle found by `MAGPIE_GOGC` percent (default 100), and at least
//! 4 MiB: net growth, so a program that frees what it allocates rarely pays.
//! In `leakcheck`, where a cycle can free only GC-managed memory, only the
//! managed bytes allocated since the last cycle count (`note_managed_alloc`).
//! `MAGPIE_GC_STRESS=N` runs a cycle every N allocations (torture tests; it
//! routes every allocation through the slow path to count them).

pub mod backed;
pub mod cycle;
pub mod dirty;
pub mod managed;
pub mod mark;
pub mod parallel;
pub mod roots;
pub mod stop;

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use spin::Mutex;

use crate::alloc::{cache, central, heap, span};
use crate::sys::{env, fatal, futex};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Mode {
    Off,
    LeakCheck,
    Collect,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Phase {
    Off = 0,
    Mark = 1,
    MarkTermination = 2,
}

static MODE: AtomicU8 = AtomicU8::new(0);
static PHASE: AtomicU8 = AtomicU8::new(0);
/// The sweep generation: a span whose `sweepgen` differs needs sweeping.
static SWEEPGEN: AtomicU32 = AtomicU32::new(1);
/// The slot-state byte allocations store now: `span::alloc_byte(SWEEPGEN)`.
/// The rseq pop reads it inside its critical section.
pub static ALLOC_TAG: AtomicU8 = AtomicU8::new(span::alloc_byte(1));
static GOGC: AtomicU64 = AtomicU64::new(100);
static STRESS: AtomicU64 = AtomicU64::new(0);
static STRESS_COUNT: AtomicU64 = AtomicU64::new(0);
static NEXT_GC: AtomicU64 = AtomicU64::new(MIN_HEAP);
/// log2 of the growth multiplier after unproductive cycles (see set_next_goal).
static GROWTH_SHIFT: AtomicU32 = AtomicU32::new(0);
const MAX_GROWTH_SHIFT: u32 = 2;
static STOP_TIMEOUT_NS: AtomicU64 = AtomicU64::new(1_000_000_000);
/// `MAGPIE_CONCURRENT`: mark while the program runs (where a dirty-page
/// source exists).
static CONCURRENT: AtomicBool = AtomicBool::new(false);
/// `MAGPIE_DEBUG_PAUSES=1`: print each termination's parts to stderr.
static DEBUG_PAUSES: AtomicBool = AtomicBool::new(false);
/// `MAGPIE_PAUSE_TARGET_US`: the mark-termination pause budget.
static PAUSE_TARGET_NS: AtomicU64 = AtomicU64::new(500_000);
/// Test hook (`MAGPIE_DEBUG_HARD_THROTTLE=1`): a throttle is hard from its
/// first pass, not only after a stall, so tests run the hard waits often.
static DEBUG_HARD_THROTTLE: AtomicBool = AtomicBool::new(false);
/// Test hook: allocate during mark termination (must abort).
static DEBUG_ALLOC_IN_TERMINATION: AtomicBool = AtomicBool::new(false);
const MIN_HEAP: u64 = 4 << 20;

static CYCLE: Mutex<()> = Mutex::new(());

/// The mode `MAGPIE_GC` asks for (default `collect`).
pub fn mode_from_env() -> Mode {
    match env::get_choice("MAGPIE_GC", &["off", "leakcheck", "collect"], 2) {
        0 => Mode::Off,
        1 => Mode::LeakCheck,
        _ => Mode::Collect,
    }
}

pub fn mode() -> Mode {
    match MODE.load(Relaxed) {
        1 => Mode::LeakCheck,
        2 => Mode::Collect,
        _ => Mode::Off,
    }
}

#[inline(always)]
pub fn phase() -> Phase {
    match PHASE.load(Relaxed) {
        1 => Phase::Mark,
        2 => Phase::MarkTermination,
        _ => Phase::Off,
    }
}

#[inline(always)]
pub fn sweepgen() -> u32 {
    SWEEPGEN.load(Relaxed)
}

/// The state byte of an object allocated now.
#[inline(always)]
pub fn alloc_tag() -> u8 {
    ALLOC_TAG.load(Relaxed)
}

/// Reads the collector's configuration; called once at allocator init.
/// Returns true if the collector is on (the caller then keeps allocations on
/// the slow path when GC stress is requested).
pub fn init() -> bool {
    let m = mode_from_env() as u8;
    GOGC.store(env::get_u64("MAGPIE_GOGC", 100, 1, 100_000), Relaxed);
    STRESS.store(env::get_u64("MAGPIE_GC_STRESS", 0, 0, u64::MAX), Relaxed);
    STOP_TIMEOUT_NS.store(
        env::get_u64("MAGPIE_STOP_TIMEOUT_MS", 1000, 1, 600_000) * 1_000_000,
        Relaxed,
    );
    DEBUG_HARD_THROTTLE.store(env::get_bool("MAGPIE_DEBUG_HARD_THROTTLE", false), Relaxed);
    DEBUG_ALLOC_IN_TERMINATION.store(
        env::get_bool("MAGPIE_DEBUG_ALLOC_IN_TERMINATION", false),
        Relaxed,
    );
    if m == 0 {
        MODE.store(0, Relaxed);
        return false;
    }
    DEBUG_PAUSES.store(env::get_bool("MAGPIE_DEBUG_PAUSES", false), Relaxed);
    mark::PIPELINE.store(
        env::get_choice("MAGPIE_MARK_PIPELINE", &["auto", "never", "always"], 0) as u8,
        Relaxed,
    );
    parallel::configure();
    mark::STACK_CAP.store(
        env::get_u64("MAGPIE_DEBUG_MARK_STACK", 16 << 20, 4, 16 << 20) as usize,
        Relaxed,
    );
    PAUSE_TARGET_NS.store(
        env::get_u64("MAGPIE_PAUSE_TARGET_US", 500, 10, 10_000_000) * 1000,
        Relaxed,
    );
    if env::get_bool("MAGPIE_CONCURRENT", true) {
        let (base, size) = heap::range();
        CONCURRENT.store(dirty::init(base, size) != dirty::Source::None, Relaxed);
    }
    if !stop::install_handler() {
        fatal::warn(format_args!(
            "cannot install the stop signal handler; the collector is off"
        ));
        return false;
    }
    // Statics that hold no program pointer are not roots (once: a forked
    // child inherits the registry).
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if !REGISTERED.swap(true, Relaxed) {
        crate::sys::owned::register_registry();
        for log in [&ALL_PAUSES, &SWEEP_TERM_PAUSES, &MARK_TERM_PAUSES] {
            crate::sys::owned::register_static(log);
        }
    }
    MODE.store(m as u8, Relaxed);
    true
}

/// True while a cycle marks (phases Mark and MarkTermination): spans are not
/// released then (see `cycle`).
#[inline]
pub fn marking() -> bool {
    PHASE.load(Relaxed) != Phase::Off as u8
}

/// True if cycles mark concurrently (MAGPIE_CONCURRENT and a dirty-page source).
pub fn concurrent_enabled() -> bool {
    CONCURRENT.load(Relaxed)
}

/// True when every allocation must take the slow path (GC stress counting).
pub fn stress_enabled() -> bool {
    mode() != Mode::Off && STRESS.load(Relaxed) > 0
}

/// The slow-path check of mark termination: nothing may allocate then.
#[inline(always)]
pub fn check_allocation_allowed() {
    if PHASE.load(Relaxed) == Phase::MarkTermination as u8 {
        fatal::fatal("allocation during mark termination", None);
    }
}

/// Called after an allocation slow path (no lock held, guard dropped) with the
/// new object: counts for GC stress, triggers the pacer.
#[inline]
pub fn after_slow_alloc(p: *mut u8) {
    let m = MODE.load(Relaxed);
    if m == 0 || p.is_null() {
        return;
    }
    let stress = STRESS.load(Relaxed);
    if stress > 0 {
        let n = STRESS_COUNT.fetch_add(1, Relaxed) + 1;
        if n % stress == 0 {
            // Keep the new object visible to the scan of this thread's stack.
            let keep = core::hint::black_box(p);
            collect_now();
            core::hint::black_box(keep);
        }
        return;
    }
    if cycle_due() {
        wake_collector();
        if !marking() && far_over_goal() {
            wait_for_cycle();
        }
    }
    if THROTTLE.load(Relaxed) != 0 || (marking() && over_goal()) {
        throttle_wait();
    }
}

/// Bumped when a cycle's mark ends (world stopped); threads waiting for the
/// cycle sleep on it.
static MARKS_ENDED: AtomicU32 = AtomicU32::new(0);

/// Past its goal by a quarter while the cycle it calls for has not started:
/// the collector thread was slow to wake (the first cycle also starts it).
fn far_over_goal() -> bool {
    let goal = NEXT_GC.load(Relaxed);
    heap::in_use_bytes() as u64 > goal + goal / 4
}

/// Waits (at most `THROTTLE_MAX_NS`) until the cycle that is due has
/// marked, or its concurrent mark has begun (then `throttle_wait` paces the
/// thread): a program allocating fast would otherwise grow its heap for as
/// long as the collector takes to get going, and the pages it touched stay
/// resident. Boehm collects in the allocating thread for the same reason.
#[cold]
#[inline(never)]
fn wait_for_cycle() {
    if IS_COLLECTOR.with(|c| c.get()) {
        return;
    }
    let seen = MARKS_ENDED.load(Acquire);
    bounded_wait(
        &MARKS_ENDED,
        100_000,
        |_| THROTTLE_MAX_NS,
        |v| v != seen || marking(),
    );
}

/// [`futex::wait_until`], the time counted as throttled.
fn bounded_wait(
    word: &AtomicU32,
    recheck_ns: u64,
    max_ns: impl Fn(u32) -> u64,
    done: impl Fn(u32) -> bool,
) {
    let t0 = crate::sys::os::now_ns();
    futex::wait_until(word, recheck_ns, max_ns, done);
    C.throttled_ns
        .fetch_add(crate::sys::os::now_ns() - t0, Relaxed);
}

/// A cycle's mark ended: wakes the threads waiting for it.
pub(super) fn note_mark_ended() {
    MARKS_ENDED.fetch_add(1, Release);
    futex::wake(&MARKS_ENDED, i32::MAX);
}

/// While a concurrent mark runs, allocation past the goal the cycle was
/// started for (by an eighth) is floating garbage the cycle cannot free: the
/// allocating threads wait too (Go's assists grow as the heap nears its goal),
/// which bounds the heap a concurrent cycle leaves behind.
fn over_goal() -> bool {
    let goal = NEXT_GC.load(Relaxed);
    heap::in_use_bytes() as u64 > goal + goal / 8
}

/// Nonzero while a concurrent mark is running termination rounds because the
/// program writes pages faster than the marker rescans them. Threads that
/// allocate then wait (`throttle_wait`) after each allocation slow path, so
/// the marker catches up and the final pause stays short: Go parks
/// goroutines that owe mark assists for the same reason. Cleared (and the
/// waiters woken) when the cycle's rounds end.
pub(crate) static THROTTLE: AtomicU32 = AtomicU32::new(0);
/// Longest single wait: an allocating thread is slowed, never stalled for long.
const THROTTLE_MAX_NS: u64 = 2_000_000;
/// `THROTTLE` while precleaning has stalled under the normal throttle: the
/// program writes pages as fast as they are rescanned even with each
/// allocating thread held 2 ms per allocation slow path, so a thread is held
/// until the pass ends (at most `THROTTLE_HARD_MAX_NS`), as Go holds a
/// goroutine that owes more assist work than it can do. Threads that do not
/// allocate run on; the pause the termination would otherwise take (a
/// rescan of everything written meanwhile, with every thread stopped) is
/// what this buys down.
const THROTTLE_HARD: u32 = 2;
const THROTTLE_HARD_MAX_NS: u64 = 20_000_000;

#[cold]
#[inline(never)]
fn throttle_wait() {
    if IS_COLLECTOR.with(|c| c.get()) {
        return;
    }
    parallel::lend_cpu();
    // Woken when the throttle ends; re-checks the heap every 200 us. A
    // hard throttle (see `Throttle::harden`) holds the thread longer.
    bounded_wait(
        &THROTTLE,
        200_000,
        |v| {
            if v == THROTTLE_HARD {
                THROTTLE_HARD_MAX_NS
            } else {
                THROTTLE_MAX_NS
            }
        },
        |v| v == 0 && !(marking() && over_goal()),
    );
}

/// Turns the throttle on for the life of the guard (see `THROTTLE`).
pub(crate) struct Throttle;

impl Throttle {
    pub(crate) fn on() -> Throttle {
        THROTTLE.store(1, Release);
        C.throttled_rounds.fetch_add(1, Relaxed);
        let t = Throttle;
        if DEBUG_HARD_THROTTLE.load(Relaxed) {
            t.harden();
        }
        t
    }

    /// Makes the throttle hard (see `THROTTLE_HARD`); false if it was already.
    pub(crate) fn harden(&self) -> bool {
        let first = THROTTLE.swap(THROTTLE_HARD, AcqRel) != THROTTLE_HARD;
        if first {
            C.hard_throttles.fetch_add(1, Relaxed);
        }
        first
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        THROTTLE.store(0, Release);
        futex::wake(&THROTTLE, i32::MAX);
    }
}

/// True when the pacer wants a cycle: the heap in use reached the goal, or
/// in leakcheck (where a cycle frees only GC-managed memory, so growth of
/// the rest is no reason to run one) enough managed bytes were allocated.
///
/// While the heap is small (under `SMALL_HEAP_DEFER`), a program that freed
/// at least half of what it allocated since the last cycle has its cycle put
/// off until the heap reaches that size, once per period: it manages its
/// memory itself and needs the collector for its leaks, which a cycle of a
/// few MiB would hardly find (bigger heaps get the usual pacing, backed off
/// by cycles that find little; see `set_next_goal`). On the LD_PRELOAD
/// suite, cycles at 4-6 MiB cost short programs up to a sixth of their time.
fn cycle_due() -> bool {
    if MODE.load(Relaxed) == Mode::LeakCheck as u8 {
        return MANAGED_SINCE_GC.load(Relaxed) >= MANAGED_ALLOWANCE.load(Relaxed);
    }
    let in_use = heap::in_use_bytes() as u64;
    let goal = NEXT_GC.load(Relaxed);
    if in_use < goal {
        return false;
    }
    // Asked once per period: the answer sums every CPU's counters, and an
    // allocating thread comes here on each slow path until the cycle starts.
    if goal < SMALL_HEAP_DEFER && !DEFER_ASKED.swap(true, Relaxed) && frees_own_memory(false) {
        NEXT_GC.store(SMALL_HEAP_DEFER, Relaxed);
        return in_use >= SMALL_HEAP_DEFER;
    }
    true
}

/// Below this heap, cycles of programs that free their memory are put off.
const SMALL_HEAP_DEFER: u64 = 8 * MIN_HEAP;
/// Whether `cycle_due` asked `frees_own_memory` since the last cycle.
static DEFER_ASKED: AtomicBool = AtomicBool::new(false);

/// Whether the program freed at least half of the objects it allocated
/// since the last cycle ended (`reset`: the caller is that end, and the
/// count starts again).
pub(super) fn frees_own_memory(reset: bool) -> bool {
    static AT_CYCLE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    let mut allocs = crate::alloc::LARGE_ALLOCS.load(Relaxed);
    let mut frees = crate::alloc::LARGE_FREES.load(Relaxed);
    cache::for_each_op_count(|_, a, f| {
        allocs += a;
        frees += f;
    });
    let da = allocs.saturating_sub(AT_CYCLE[0].load(Relaxed));
    let df = frees.saturating_sub(AT_CYCLE[1].load(Relaxed));
    if reset {
        AT_CYCLE[0].store(allocs, Relaxed);
        AT_CYCLE[1].store(frees, Relaxed);
    }
    df * 2 >= da
}

/// GC-managed bytes allocated since the last cycle, and how many make one
/// worth running in leakcheck: there a cycle can reclaim nothing else (leaks
/// stay allocated, reported at exit or on demand, as LeakSanitizer and
/// valgrind do), so it is paced on managed allocation alone — and a program
/// that never calls the managed API runs no cycle until it asks for a report.
static MANAGED_SINCE_GC: AtomicU64 = AtomicU64::new(0);
static MANAGED_ALLOWANCE: AtomicU64 = AtomicU64::new(MIN_HEAP);

/// Counts a GC-managed allocation of `size` bytes for the leakcheck pacer.
pub(crate) fn note_managed_alloc(size: usize) {
    if MODE.load(Relaxed) != Mode::LeakCheck as u8 || STRESS.load(Relaxed) > 0 {
        return;
    }
    MANAGED_SINCE_GC.fetch_add(size as u64, Relaxed);
    if cycle_due() {
        wake_collector();
    }
}

// ---------------------------------------------------------------------------
// The collector thread.

static WAKE: AtomicU32 = AtomicU32::new(0);
static THREAD: AtomicU8 = AtomicU8::new(0); // 0 none, 1 starting, 2 running

/// Cycles asked for by other threads (`collect_now`), and the last request
/// the collector thread has served, with the outcome of the cycle that
/// served it. Cycles run on the collector's own stack: the marker's frames
/// then never leave heap addresses in a program thread's stack, where a
/// later, deeper call could bring them back into the scanned region.
static REQUESTS: AtomicU32 = AtomicU32::new(0);
static SERVED: AtomicU32 = AtomicU32::new(0);
static SERVED_OK: AtomicBool = AtomicBool::new(false);

thread_local! {
    static IS_COLLECTOR: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    /// This thread is creating the collector thread (pthread_create
    /// allocates, and that allocation may come back here).
    static STARTING: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Starts the collector thread if there is none. True once it runs.
fn ensure_collector() -> bool {
    if STARTING.with(|s| s.get()) {
        return false;
    }
    if THREAD.load(Acquire) == 0 && THREAD.compare_exchange(0, 1, AcqRel, Relaxed).is_ok() {
        STARTING.with(|s| s.set(true));
        // SAFETY: creates a detached thread running collector_main; pthread_create
        // may allocate (we hold no allocator lock here).
        unsafe {
            let mut t: libc::pthread_t = 0;
            let mut attr: libc::pthread_attr_t = core::mem::zeroed();
            libc::pthread_attr_init(&mut attr);
            libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
            let r = libc::pthread_create(&mut t, &attr, collector_main, core::ptr::null_mut());
            libc::pthread_attr_destroy(&mut attr);
            STARTING.with(|s| s.set(false));
            if r != 0 {
                THREAD.store(0, Release);
                return false;
            }
        }
        THREAD.store(2, Release);
    }
    while THREAD.load(Acquire) == 1 {
        core::hint::spin_loop();
    }
    THREAD.load(Acquire) == 2
}

fn wake_collector() {
    if ensure_collector() {
        WAKE.fetch_add(1, Release);
        futex::wake(&WAKE, 1);
    }
}

extern "C" fn collector_main(_: *mut libc::c_void) -> *mut libc::c_void {
    IS_COLLECTOR.with(|c| c.set(true));
    parallel::start_helpers();
    loop {
        let w = WAKE.load(Acquire);
        // Requests first: the cycle starts after every request counted here.
        let req = REQUESTS.load(Acquire);
        if req != SERVED.load(Relaxed) {
            let ok = collect_here();
            SERVED_OK.store(ok, Relaxed);
            SERVED.store(req, Release);
            futex::wake(&SERVED, i32::MAX);
            continue;
        }
        if !cycle_due() {
            futex::wait(&WAKE, w, None);
            continue;
        }
        if !collect_here() {
            // Abandoned (a thread did not stop): back off before trying again.
            // SAFETY: plain sleep.
            unsafe { libc::usleep(100_000) };
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics.

const PAUSE_RING: usize = 4096;

/// Stop-the-world pauses of one kind: the last `PAUSE_RING` (in µs) for
/// percentiles, and the count, total and maximum of all.
pub(crate) struct PauseLog {
    ring: [AtomicU32; PAUSE_RING],
    count: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
}

/// Percentiles and totals of a [`PauseLog`], in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PauseSummary {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
}

impl PauseLog {
    const fn new() -> PauseLog {
        PauseLog {
            ring: [const { AtomicU32::new(0) }; PAUSE_RING],
            count: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    fn push(&self, ns: u64) {
        let i = self.count.fetch_add(1, Relaxed) as usize % PAUSE_RING;
        self.ring[i].store((ns / 1000).min(u32::MAX as u64) as u32, Relaxed);
        self.total_ns.fetch_add(ns, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
    }

    /// Records a pause of this kind (and in the log of all pauses).
    pub(crate) fn record(&'static self, ns: u64) {
        self.push(ns);
        if !core::ptr::eq(self, &ALL_PAUSES) {
            ALL_PAUSES.push(ns);
        }
    }

    fn summary(&self) -> PauseSummary {
        let count = self.count.load(Relaxed);
        let n = (count as usize).min(PAUSE_RING);
        let mut p = [0u32; PAUSE_RING];
        for (i, slot) in p[..n].iter_mut().enumerate() {
            *slot = self.ring[i].load(Relaxed);
        }
        p[..n].sort_unstable();
        let pct = |q: usize| {
            if n == 0 {
                0
            } else {
                p[((n - 1) * q) / 100] as u64 * 1000
            }
        };
        PauseSummary {
            count,
            total_ns: self.total_ns.load(Relaxed),
            max_ns: self.max_ns.load(Relaxed),
            p50_ns: pct(50),
            p99_ns: pct(99),
        }
    }
}

/// Every pause; sweep terminations (only a process's first concurrent cycle
/// stops the world there, see `cycle`); mark terminations (in stop-the-world
/// cycles, the whole mark).
static ALL_PAUSES: PauseLog = PauseLog::new();
pub(crate) static SWEEP_TERM_PAUSES: PauseLog = PauseLog::new();
pub(crate) static MARK_TERM_PAUSES: PauseLog = PauseLog::new();

/// The next cycle's trigger: the live heap the cycle found grown by GOGC %,
/// at least MIN_HEAP and 1.125x what is in use after sweeping (the spans that
/// keep a live object: a floor, so that a fragmented heap does not start the
/// next cycle at once; with 1.25x, leak-list's heap, whose 4-page spans hold
/// nodes of several lists, ratcheted up cycle after cycle: peak RSS 15-39
/// MiB over 8 runs, against 13.4-15.1 MiB with 1.125x at the same speed). In a program
/// that `frees_own` memory (at least half of what it allocated since the last
/// cycle), a cycle that was not `productive` (it freed less than 1/8 of the
/// heap: the growth was live data) doubles the allowed growth, up to 4x;
/// anything else resets it. Cycles that find nothing there are pure cost
/// (Boehm GC grows the heap instead of collecting for the same reason); a
/// program that relies on the collector keeps the plain pacing, as its
/// all-live start-up (building a data structure) says nothing of later.
fn set_next_goal(marked: u64, after: u64, productive: bool, frees_own: bool) {
    DEFER_ASKED.store(false, Relaxed);
    let shift = if productive || !frees_own {
        0
    } else {
        (GROWTH_SHIFT.load(Relaxed) + 1).min(MAX_GROWTH_SHIFT)
    };
    GROWTH_SHIFT.store(shift, Relaxed);
    let growth = (marked.max(1) * GOGC.load(Relaxed) / 100) << shift;
    let goal = marked.max(1) + growth;
    NEXT_GC.store(goal.max(MIN_HEAP).max(after + after / 8), Relaxed);
    MANAGED_SINCE_GC.store(0, Relaxed);
    MANAGED_ALLOWANCE.store(growth.max(MIN_HEAP), Relaxed);
}

#[derive(Default)]
struct Counters {
    cycles: AtomicU64,
    abandoned: AtomicU64,
    last_concurrent: AtomicBool,
    concurrent_mark_ns: AtomicU64,
    rounds: AtomicU64,
    rounds_max: AtomicU64,
    dirty_pages: AtomicU64,
    dirty_pages_last: AtomicU64,
    dirty_failures: AtomicU64,
    mark_stack_peak: AtomicU64,
    marked_objects: AtomicU64,
    helper_marked_objects: AtomicU64,
    throttled_ns: AtomicU64,
    throttled_rounds: AtomicU64,
    hard_throttles: AtomicU64,
    precleaned_pages: AtomicU64,
    protect_ns: AtomicU64,
    root_scan_ns: AtomicU64,
    heap_mark_ns: AtomicU64,
    termination_ns: AtomicU64,
    sweep_ns: AtomicU64,
    marked_bytes_last: AtomicU64,
    heap_before_last: AtomicU64,
    heap_after_last: AtomicU64,
    reclaimed_objects: AtomicU64,
    reclaimed_bytes: AtomicU64,
    unreachable_objects: AtomicU64,
    unreachable_bytes: AtomicU64,
}

static C: Counters = Counters {
    cycles: AtomicU64::new(0),
    abandoned: AtomicU64::new(0),
    last_concurrent: AtomicBool::new(false),
    concurrent_mark_ns: AtomicU64::new(0),
    rounds: AtomicU64::new(0),
    rounds_max: AtomicU64::new(0),
    dirty_pages: AtomicU64::new(0),
    dirty_pages_last: AtomicU64::new(0),
    dirty_failures: AtomicU64::new(0),
    mark_stack_peak: AtomicU64::new(0),
    marked_objects: AtomicU64::new(0),
    helper_marked_objects: AtomicU64::new(0),
    throttled_ns: AtomicU64::new(0),
    throttled_rounds: AtomicU64::new(0),
    hard_throttles: AtomicU64::new(0),
    precleaned_pages: AtomicU64::new(0),
    protect_ns: AtomicU64::new(0),
    root_scan_ns: AtomicU64::new(0),
    heap_mark_ns: AtomicU64::new(0),
    termination_ns: AtomicU64::new(0),
    sweep_ns: AtomicU64::new(0),
    marked_bytes_last: AtomicU64::new(0),
    heap_before_last: AtomicU64::new(0),
    heap_after_last: AtomicU64::new(0),
    reclaimed_objects: AtomicU64::new(0),
    reclaimed_bytes: AtomicU64::new(0),
    unreachable_objects: AtomicU64::new(0),
    unreachable_bytes: AtomicU64::new(0),
};

/// The collector's figures (`magpie::stats().gc`).
#[derive(Clone, Copy, Debug, Default)]
pub struct GcStats {
    pub mode: &'static str,
    pub cycles: u64,
    /// Cycles given up because a thread did not stop in time.
    pub abandoned: u64,
    /// Stop-the-world pauses, in nanoseconds.
    pub pause_total_ns: u64,
    pub pause_max_ns: u64,
    pub pause_p50_ns: u64,
    pub pause_p99_ns: u64,
    /// Time marking roots (mappings and stacks) and the heap, and in mark
    /// termination and sweeping, summed over cycles.
    pub root_scan_ns: u64,
    pub heap_mark_ns: u64,
    pub termination_ns: u64,
    pub sweep_ns: u64,
    /// Bytes marked live by the last cycle; heap in use before and after it.
    pub marked_bytes_last: u64,
    pub heap_before_last: u64,
    pub heap_after_last: u64,
    /// Objects and bytes freed by the collector since start.
    pub reclaimed_objects: u64,
    pub reclaimed_bytes: u64,
    /// Unreachable objects found and not freed (leakcheck), summed over cycles.
    pub unreachable_objects: u64,
    pub unreachable_bytes: u64,
    /// The next cycle starts when the heap in use reaches this.
    pub next_gc_bytes: u64,
    /// Concurrent marking: on (MAGPIE_CONCURRENT and a dirty-page source),
    /// and whether the last cycle used it.
    pub concurrent: bool,
    pub last_cycle_concurrent: bool,
    /// The dirty-page source: "uffd-wp-async", "soft-dirty" or "none".
    pub dirty_source: &'static str,
    /// Pauses by kind: sweep termination (the start of a concurrent mark,
    /// which stops the world only in the process's first concurrent cycle)
    /// and mark termination (a stop-the-world cycle's whole mark).
    pub sweep_termination: PauseSummary,
    pub mark_termination: PauseSummary,
    /// Time marking with the world running, summed over cycles.
    pub concurrent_mark_ns: u64,
    /// Termination attempts (rounds), summed and the most in one cycle.
    pub rounds: u64,
    pub rounds_max: u64,
    /// Written heap pages rescanned at termination, summed and last cycle's.
    pub dirty_pages: u64,
    pub dirty_pages_last: u64,
    /// Terminations where the dirty-page source failed (the heap was rescanned).
    pub dirty_failures: u64,
    /// The most entries the mark stack held (16 bytes each).
    pub mark_stack_peak: u64,
    /// Cycles whose precleaning or termination rounds throttled allocation,
    /// and the time allocating threads spent waiting (summed over threads:
    /// throttled, past the goal during a mark, or far past it before the
    /// cycle started).
    pub throttled_rounds: u64,
    pub throttled_ns: u64,
    /// Cycles in which the throttle became hard (a throttled precleaning
    /// pass did not shrink the written pages; see `Throttle::harden`).
    pub hard_throttles: u64,
    /// Written pages rescanned with the world running before termination
    /// attempts (precleaning; included in `dirty_pages`).
    pub precleaned_pages: u64,
    /// Time the collector thread spent write-protecting the heap when marking
    /// began and unprotecting it when marking ended (world running).
    pub protect_ns: u64,
    /// Markers of a stopped-world mark (the collector and its helpers,
    /// `MAGPIE_MARKERS`), objects marked in all, and of those, marked by
    /// helpers.
    pub markers: u64,
    pub marked_objects: u64,
    pub helper_marked_objects: u64,
    /// Pages of big objects the marker did not read because the kernel had
    /// no data for them (never written, or dropped; see `backed`), and the
    /// queries that found them.
    pub absent_pages_skipped: u64,
    pub residency_queries: u64,
}

/// Cycles completed (without computing the rest of [`stats`]).
pub fn cycles() -> u64 {
    C.cycles.load(Relaxed)
}

pub fn stats() -> GcStats {
    let all = ALL_PAUSES.summary();
    GcStats {
        mode: match mode() {
            Mode::Off => "off",
            Mode::LeakCheck => "leakcheck",
            Mode::Collect => "collect",
        },
        cycles: cycles(),
        abandoned: C.abandoned.load(Relaxed),
        pause_total_ns: all.total_ns,
        pause_max_ns: all.max_ns,
        pause_p50_ns: all.p50_ns,
        pause_p99_ns: all.p99_ns,
        concurrent: concurrent_enabled(),
        last_cycle_concurrent: C.last_concurrent.load(Relaxed),
        dirty_source: dirty::source_name(),
        sweep_termination: SWEEP_TERM_PAUSES.summary(),
        mark_termination: MARK_TERM_PAUSES.summary(),
        concurrent_mark_ns: C.concurrent_mark_ns.load(Relaxed),
        rounds: C.rounds.load(Relaxed),
        rounds_max: C.rounds_max.load(Relaxed),
        dirty_pages: C.dirty_pages.load(Relaxed),
        dirty_pages_last: C.dirty_pages_last.load(Relaxed),
        dirty_failures: C.dirty_failures.load(Relaxed),
        mark_stack_peak: C.mark_stack_peak.load(Relaxed),
        markers: parallel::markers() as u64,
        marked_objects: C.marked_objects.load(Relaxed),
        helper_marked_objects: C.helper_marked_objects.load(Relaxed),
        absent_pages_skipped: backed::SKIPPED_PAGES.load(Relaxed),
        residency_queries: backed::QUERIES.load(Relaxed),
        throttled_rounds: C.throttled_rounds.load(Relaxed),
        hard_throttles: C.hard_throttles.load(Relaxed),
        throttled_ns: C.throttled_ns.load(Relaxed),
        precleaned_pages: C.precleaned_pages.load(Relaxed),
        protect_ns: C.protect_ns.load(Relaxed),
        root_scan_ns: C.root_scan_ns.load(Relaxed),
        heap_mark_ns: C.heap_mark_ns.load(Relaxed),
        termination_ns: C.termination_ns.load(Relaxed),
        sweep_ns: C.sweep_ns.load(Relaxed),
        marked_bytes_last: C.marked_bytes_last.load(Relaxed),
        heap_before_last: C.heap_before_last.load(Relaxed),
        heap_after_last: C.heap_after_last.load(Relaxed),
        reclaimed_objects: C.reclaimed_objects.load(Relaxed),
        reclaimed_bytes: C.reclaimed_bytes.load(Relaxed),
        unreachable_objects: C.unreachable_objects.load(Relaxed),
        unreachable_bytes: C.unreachable_bytes.load(Relaxed),
        next_gc_bytes: NEXT_GC.load(Relaxed),
    }
}

/// Counts what a sweep of a span found (lazy, by an allocation, or by the collector).
pub fn note_swept(r: central::Swept) {
    C.reclaimed_objects.fetch_add(r.freed_objects, Relaxed);
    C.reclaimed_bytes.fetch_add(r.freed_bytes, Relaxed);
    C.unreachable_objects
        .fetch_add(r.objects - r.freed_objects, Relaxed);
    C.unreachable_bytes
        .fetch_add(r.bytes - r.freed_bytes, Relaxed);
}

// ---------------------------------------------------------------------------
// The cycle.

/// Where the next sweeper claims a span. After each cycle the heap is swept
/// in one pass, shared by the collector thread ([`sweep_all`]) and threads
/// that would otherwise take fresh pages ([`reclaim`]): each span is claimed
/// by moving the cursor past it with one CAS (Go's `sweepone`). Past the
/// committed end (`usize::MAX` between passes) there is nothing to sweep.
/// Every span in use when the cycle ended lies below the committed end, and
/// one created later is born swept; a span claimed twice (its record
/// recycled meanwhile) is swept once, the generation check under its lock
/// decides.
static SWEEP_CURSOR: core::sync::atomic::AtomicUsize =
    core::sync::atomic::AtomicUsize::new(usize::MAX);

/// Starts the sweep pass of the generation that mark termination just began
/// (world stopped).
fn begin_sweep_pass() {
    SWEEP_CURSOR.store(heap::range().0, Release);
}

/// Claims and sweeps the next span of the pass. Returns its span class and
/// whether it has free slots now (for a small span), or None when the pass
/// is over.
fn sweep_one() -> Option<(usize, bool)> {
    SWEEPS_IN_FLIGHT.fetch_add(1, SeqCst);
    let r = sweep_one_counted();
    SWEEPS_IN_FLIGHT.fetch_sub(1, Release);
    r
}

/// Threads inside [`sweep_one`]: a span it claimed is swept in chunks with
/// the class lock dropped between them, so neither the sweep cursor nor the
/// class locks say when the last sweep of a pass is over.
static SWEEPS_IN_FLIGHT: AtomicU32 = AtomicU32::new(0);

/// After [`sweep_all`]: waits until no sweep of the pass is still running
/// (a thread may have claimed a span just before the pass ran out, and a
/// sweep finishing during the next mark would clear that mark's bits). No
/// new one starts: the cursor is at the end until mark termination begins
/// the next pass. Only the collector waits; the program runs. False if a
/// sweep is still running after the stop timeout (its thread cannot get
/// on, as a thread that does not stop): the caller gives the cycle up.
pub(super) fn wait_for_sweeps() -> bool {
    // Sweepers do not wake the collector: it looks again every 50 µs.
    let timeout = STOP_TIMEOUT_NS.load(Relaxed);
    futex::wait_until(&SWEEPS_IN_FLIGHT, 50_000, |_| timeout, |v| v == 0);
    if SWEEPS_IN_FLIGHT.load(SeqCst) != 0 {
        C.abandoned.fetch_add(1, Relaxed);
        return false;
    }
    true
}

fn sweep_one_counted() -> Option<(usize, bool)> {
    loop {
        let c = SWEEP_CURSOR.load(Acquire);
        let (s, next) = heap::next_span_from(c)?;
        if SWEEP_CURSOR
            .compare_exchange(c, next, AcqRel, Relaxed)
            .is_err()
        {
            continue;
        }
        let Some(s) = s else { continue };
        // A mark never starts while a claimed span waits to be swept
        // (`wait_for_sweeps`), nor while this thread is inside the allocator.
        debug_assert!(!marking(), "span claimed for sweeping during a mark");
        let slow = crate::config::DEBUG_SLOW_SWEEP_US.load(Relaxed);
        if slow > 0 && !on_collector_thread() {
            // SAFETY: a plain sleep (test hook).
            unsafe { libc::usleep(slow as u32) };
        }
        let collect = mode() == Mode::Collect;
        let gen = sweepgen();
        // SAFETY: records are type-stable; sweep re-checks under its lock.
        let (st, sg) = unsafe { ((*s).state.load(Relaxed), (*s).sweepgen.load(Relaxed)) };
        if sg == gen {
            continue;
        }
        if st == span::LARGE {
            // SAFETY: s came from the page map.
            note_swept(unsafe { heap::sweep_large(s, gen, collect) });
            return Some((0, false));
        }
        note_swept(central::sweep(s, collect));
        // SAFETY: as above; a hint only (the span may have been released).
        let (sc, free) = unsafe { ((*s).spanclass as usize, (*s).nfree > 0) };
        return Some((sc, free));
    }
}

/// Whether the last cycle's sweep pass has spans left to claim.
pub fn sweep_pending() -> bool {
    SWEEP_CURSOR.load(Relaxed) < heap::committed_end()
}

/// Sweeps every span not yet swept for the current generation.
fn sweep_all() {
    while sweep_one().is_some() {}
}

/// Spans an allocating thread sweeps at most before taking fresh pages (it
/// is inside the allocator meanwhile, where a stop waits for it).
const RECLAIM_SPANS: usize = 32;

/// Whether the calling thread is the collector's (or a helper marker).
pub fn on_collector_thread() -> bool {
    IS_COLLECTOR.with(|c| c.get())
}

/// Before the page heap hands out `npages` pages for span class `sc` (0 for
/// a large object): while the last cycle's sweep is unfinished, sweep spans
/// until `npages` pages are freed or a span of class `sc` has free slots
/// (Go's `mheap.reclaim`). Pages the sweep is about to free are then reused
/// instead of fresh ones, which would grow the heap's footprint.
pub fn reclaim(npages: usize, sc: usize) {
    if !sweep_pending() {
        return;
    }
    let target = heap::in_use_bytes().saturating_sub(npages * crate::alloc::sizeclass::PAGE_SIZE);
    for _ in 0..RECLAIM_SPANS {
        match sweep_one() {
            None => return,
            Some((c, free)) if sc != 0 && c == sc && free => return,
            _ => {}
        }
        if heap::in_use_bytes() <= target {
            return;
        }
    }
}

/// Runs a whole cycle now and waits for it: on the collector thread (see
/// `REQUESTS`), or in the calling thread if that cannot be started. Returns
/// false if the collector is off or the cycle was abandoned (a thread did
/// not stop).
pub fn collect_now() -> bool {
    if mode() == Mode::Off || !crate::alloc::is_ready() {
        return false;
    }
    if IS_COLLECTOR.with(|c| c.get()) || !ensure_collector() {
        return collect_here();
    }
    let ticket = REQUESTS.fetch_add(1, AcqRel).wrapping_add(1);
    WAKE.fetch_add(1, Release);
    futex::wake(&WAKE, 1);
    loop {
        let s = SERVED.load(Acquire);
        if s.wrapping_sub(ticket) as i32 >= 0 {
            return SERVED_OK.load(Relaxed);
        }
        futex::wait(&SERVED, s, None);
    }
}

/// Runs a whole cycle in the calling thread.
#[inline(never)]
fn collect_here() -> bool {
    // This thread's stack is scanned from here up: its registers spilled into
    // this small frame, and its callers' frames. The cycle's own (large) frames
    // lie below and are not scanned, so stale words left there by the
    // program's dead frames do not keep garbage alive.
    let mut regs = [0usize; 6];
    stop::spill_registers(&mut regs);
    let sp = core::hint::black_box(&regs).as_ptr() as usize;
    let r = cycle::run(sp);
    core::hint::black_box(&regs);
    r
}

/// Runs `f` while no collection cycle (and no collector sweep) is in progress.
pub fn without_cycles<R>(f: impl FnOnce() -> R) -> R {
    let _cycle = CYCLE.lock();
    f()
}

/// [`without_cycles`], waiting at most `max_ns` for a cycle in progress to
/// end (asleep, not spinning: a concurrent mark can last seconds); None,
/// and `f` not run, if it did not.
pub fn when_no_cycle<R>(max_ns: u64, f: impl FnOnce() -> R) -> Option<R> {
    let cycle = core::cell::Cell::new(None);
    futex::wait_until(
        &MARKS_ENDED,
        1_000_000,
        |_| max_ns,
        |_| {
            let guard = CYCLE.try_lock();
            let held = guard.is_some();
            cycle.set(guard);
            held
        },
    );
    let _cycle = cycle.into_inner()?;
    Some(f())
}

/// Fork does not wait for a cycle in progress: a concurrent mark can last
/// long, and programs fork with every signal blocked (git does), which a
/// stop would wait for in vain. Only the dirty-page tracker's lock is taken;
/// the child, which has no collector thread, drops whatever cycle its parent
/// was in (see [`unlock_after_fork`]).
pub fn lock_for_fork() {
    dirty::lock_for_fork();
}

/// # Safety
/// Only after [`lock_for_fork`], in the thread that called it.
pub unsafe fn unlock_after_fork(child: bool) {
    // SAFETY: forwarded contract.
    unsafe { dirty::unlock_after_fork() };
    if !child {
        return;
    }
    THREAD.store(0, Relaxed);
    // Requests the parent's collector had not served are not the child's.
    SERVED.store(REQUESTS.load(Relaxed), Relaxed);
    // The parent's collector may have held the cycle lock mid-cycle.
    if CYCLE.is_locked() {
        // SAFETY: its holder does not exist in the child.
        unsafe { CYCLE.force_unlock() };
    }
    stop::reset_after_fork();
    parallel::reset_after_fork();
    // The parent's rounds may have been throttling allocation.
    THROTTLE.store(0, Relaxed);
    if PHASE.load(Relaxed) != Phase::Off as u8 {
        // A mark was under way: forget it (no thread of the child marks).
        PHASE.store(Phase::Off as u8, Relaxed);
        ALLOC_TAG.store(span::alloc_byte(SWEEPGEN.load(Relaxed)), Relaxed);
        cycle::clear_all_marks();
        heap::release_deferred();
    }
}

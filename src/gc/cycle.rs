//! One collection cycle, stop-the-world or concurrent.
//!
//! ```text
//! stop-the-world:  sweep ─ [stop: roots, mark, terminate] ─ sweep
//! concurrent:      sweep, protect heap, Mark, black, grey tiny (no stop) ─
//!                  mark roots + heap while the program runs ─
//!                  [stop: stacks, roots, written pages, drain, terminate]
//!                  (or, if the written pages would blow the pause budget:
//!                  restart, scan them concurrently, stop again) ─
//!                  unprotect heap ─ sweep
//! ```
//!
//! Concurrent marking (`MAGPIE_CONCURRENT=1`, the default where a dirty-page
//! source exists, see `dirty`) keeps these invariants:
//!
//! 1. **Protect before marking.** `dirty::start` write-protects the heap
//!    before the marker reads any of it: a write that lands before a page's
//!    protection is visible to the marker's later read; one after is reported
//!    by `dirty::collect_written` and rescanned. Writes by the kernel too.
//! 2. **Allocate black.** At sweep termination (world stopped) the allocation
//!    tag moves to the next sweep generation: objects allocated while marking
//!    are never swept by this cycle, and the marker neither marks nor scans
//!    them (their contents may not be initialised; Go's freeIndexForScan).
//!    What they hold was written after the heap was protected, so it is on a
//!    written page, rescanned at termination.
//! 3. **Everything else is rescanned at termination, with the world
//!    stopped:** every stack from its stack pointer and the saved registers,
//!    every root mapping (they are not tracked: magpie write-protects only
//!    memory it owns), and the heap pages written since they were protected.
//!    So a reference moved from an unscanned place into a scanned one (heap,
//!    stack, register, root, a fresh object, a `read(2)` buffer) is found.
//! 4. **Stable records.** While the phase is not Off, no span is released:
//!    emptied small spans stay on their lists and freed large spans are
//!    deferred (`heap::release_deferred`), so the concurrent marker never reads
//!    a recycled record or bitmap. Spans created while marking are published
//!    in the page map with Release after their record is initialised.
//! 5. **Concurrent root reads cannot fault.** Root mappings may be unmapped by
//!    the program while the marker reads them: they are copied with
//!    `process_vm_readv`. Heap memory is never unmapped.
//!
//! **Sweep termination does not stop the world** (Go's and, before session
//! 11, magpie's did), except in a process's first concurrent cycle, which
//! stops once to take the threads' stack pointers for the head start below.
//! The invariants do not need that stop, and it was the pause that went
//! long: it came after the collector's CPU-bound sweep and protection, when
//! some program thread was runnable but not running, and every
//! multi-millisecond stop traced at 1 GiB (2.4–5.6 ms, against 0.1–0.3 ms
//! usually) waited for such a thread. Instead:
//! - A thread that allocates with the old tag after the switch makes an
//!    ordinary white object: reachable, it is found by termination's rescans
//!    like any other (invariant 3); allocating black is an economy, not a
//!    condition of correctness.
//! - Invariant 4 holds from the first record the marker reads: spans are
//!    released only after a check of the phase under their class lock
//!    (small) or the heap lock (large), and the switch takes and drops every
//!    one of those locks after storing the phase (`central::lock_barrier`,
//!    `heap::lock_barrier`), so a release decided under the old phase is
//!    over before marking starts.
//! - No sweep of the finished pass is running (`gc::wait_for_sweeps`): one
//!    that finished during the mark would clear its marks.
//! - The tiny blocks are greyed from a racy read of each CPU's tiny word (a
//!    block replaced meanwhile is retained for a cycle at most), and the
//!    concurrent pass scans each stack from where its thread stood at the
//!    last stop (a head start; termination rescans from where it stands).
//!
//! The pause budget (`MAGPIE_PAUSE_TARGET_US`, default 500): when the written
//! pages found at a termination attempt would take the pause past it, the
//! world restarts, those pages (already protected again) are scanned
//! concurrently, and termination is tried again — at most `MAX_ROUNDS` times,
//! as Go's gcMarkDone loop and Boehm's abandoned attempts do; but when the
//! written pages stop falling by a quarter from one attempt to the next and
//! finishing now costs at most `STALL_OVERRUN` times the budget, it finishes
//! (more rounds would rescan as much for nothing).

use core::sync::atomic::Ordering::*;

use super::{dirty, mark, parallel, roots, stop, Phase, ALLOC_TAG, C, CYCLE, PHASE, SWEEPGEN};
use crate::alloc::{cache, central, heap, span};
use crate::sys::{fatal, os};

/// Termination attempts before the last one, which finishes whatever it finds.
const MAX_ROUNDS: u32 = 4;
/// Least cost assumed for rescanning one written 4 KiB page (of an in-use
/// span that may hold pointers), for the pause budget. The cost used is what
/// the cycle measured on its own concurrent rescans, at least this: a page of
/// pointers into a large heap misses the cache on every word (12 µs a page
/// measured at 1 GiB, against 0.6 µs for pages of pointers into a small one).
const NS_PER_PAGE: u64 = 600;
/// How far past the pause budget a termination may go rather than run another
/// round when rounds have stopped shrinking the written pages.
const STALL_OVERRUN: u64 = 8;
/// Precleaning passes at most (see `concurrent`).
const MAX_PRECLEAN: u32 = 8;

/// Runs a cycle; `my_sp` is where this thread's stack is scanned from.
pub(super) fn run(my_sp: usize) -> bool {
    let _cycle = CYCLE.lock();
    let t_sweep = os::now_ns();
    super::sweep_all();
    C.sweep_ns.fetch_add(os::now_ns() - t_sweep, Relaxed);
    let heap_before = heap::in_use_bytes() as u64;
    let reclaimed_before = C.reclaimed_bytes.load(Relaxed);
    dirty::set_scan_end(heap::used_end());
    let t_protect = os::now_ns();
    let marked = if super::concurrent_enabled() && dirty::start() {
        C.protect_ns.fetch_add(os::now_ns() - t_protect, Relaxed);
        let marked = concurrent(my_sp);
        // Unprotect the heap until the next cycle: between cycles a write
        // must not fault.
        let t = os::now_ns();
        dirty::end();
        C.protect_ns.fetch_add(os::now_ns() - t, Relaxed);
        marked
    } else {
        stop_the_world(my_sp)
    };
    trim_scratch();
    let Some(marked) = marked else {
        return false;
    };
    finish(heap_before, marked, reclaimed_before);
    true
}

/// Returns the collector's scratch memory (mark stacks, the team's pool, the
/// written-run buffer) to the OS after a cycle, so that a program's RSS
/// between cycles carries only its own high-water mark. Cycle lock held.
fn trim_scratch() {
    // SAFETY: the cycle lock is held and the cycle is over: no marker runs,
    // the run buffer is unused until the next termination.
    unsafe {
        mark::trim_stacks();
        os::trim(RUN_MEM.load(Relaxed) as *mut u8, RUNS * 16, 0);
    }
    parallel::trim_pool();
}

/// The whole mark with the world stopped. Returns the bytes marked, or None
/// if the cycle was abandoned.
fn stop_the_world(my_sp: usize) -> Option<u64> {
    let t0 = os::now_ns();
    if !stop_or_abandon() {
        return None;
    }
    let t_stopped = os::now_ns();
    PHASE.store(Phase::Mark as u8, Release);
    let Some(mut m) = mark::Marker::new() else {
        PHASE.store(Phase::Off as u8, Release);
        stop::restart_world();
        C.abandoned.fetch_add(1, Relaxed);
        return None;
    };
    let team = parallel::Team::begin(&mut m);
    let maps_ok = scan_roots_stopped(&mut m, my_sp);
    let t_roots = os::now_ns();
    team.drain(&mut m);
    let t_mark = os::now_ns();
    terminate(maps_ok);
    // A pause ends when the world restarts: what the collector's thread
    // waits for a CPU after waking the others is not part of it.
    let t_end = os::now_ns();
    stop::restart_world();
    if super::DEBUG_PAUSES.load(Relaxed) {
        let (tid, ns, deferred) = stop::slowest_of_last_stop();
        fatal::warn(format_args!(
            "stop-the-world pause {} µs: stop {} µs (slowest thread {tid} after {} µs{}), roots {} µs, mark {} µs, termination {} µs",
            (t_end - t0) / 1000,
            (t_stopped - t0) / 1000,
            ns / 1000,
            if deferred { ", deferred" } else { "" },
            (t_roots - t_stopped) / 1000,
            (t_mark - t_roots) / 1000,
            (t_end - t_mark) / 1000
        ));
    }
    C.root_scan_ns.fetch_add(t_roots - t0, Relaxed);
    C.heap_mark_ns.fetch_add(t_mark - t_roots, Relaxed);
    C.termination_ns.fetch_add(t_end - t_mark, Relaxed);
    super::MARK_TERM_PAUSES.record(t_end - t0);
    C.last_concurrent.store(false, Relaxed);
    C.marked_objects.fetch_add(m.marked_objects, Relaxed);
    if !maps_ok {
        return roots_unreadable();
    }
    C.mark_stack_peak.fetch_max(m.peak as u64, Relaxed);
    Some(m.marked_bytes)
}

/// The concurrent mark (the heap was just protected). Returns the bytes
/// marked, or None if the cycle was abandoned.
fn concurrent(my_sp: usize) -> Option<u64> {
    // Sweep termination, with the world running (see the module docs) but
    // in the process's first concurrent cycle, which has no stack pointers
    // from an earlier stop for its head start and stops the world to take
    // them: at the start of binary-trees, marking the tree and the array
    // that only the main thread's stack holds took the final pause to 3 ms.
    let t0 = os::now_ns();
    if !super::wait_for_sweeps() {
        return None;
    }
    let stopped = !stop::have_stack_pointers();
    if stopped && !stop_or_abandon() {
        return None;
    }
    let gen = SWEEPGEN.load(Relaxed);
    PHASE.store(Phase::Mark as u8, SeqCst);
    ALLOC_TAG.store(span::alloc_byte(gen + 1), SeqCst);
    // Every span release decided under the old phase is over once each lock
    // it is decided under has been taken after the store; later ones see Mark.
    central::lock_barrier();
    heap::lock_barrier();
    let t_flip = os::now_ns();
    let Some(mut m) = mark::Marker::new() else {
        abandon(gen, stopped);
        return None;
    };
    m.set_black_gen(gen + 1);
    // SAFETY: reads each CPU's tiny word (an atomic); a block retired or
    // replaced meanwhile is greyed for nothing (conservatively retained).
    unsafe { cache::for_each_tiny_block(|b| m.mark_word(b)) };
    // No thread is stopped now: each stack is scanned from where its thread
    // stood at the last stop (the last cycle's termination), a head start
    // only: termination rescans every stack from its current stack pointer.
    // Frames popped since are retained from conservatively for one cycle;
    // threads started since wait for termination.
    let sps = StackPointers::new(my_sp);
    if stopped {
        super::SWEEP_TERM_PAUSES.record(os::now_ns() - t0);
        stop::restart_world();
    }
    if super::DEBUG_PAUSES.load(Relaxed) {
        fatal::warn(format_args!(
            "sweep termination ({}): {} µs (phase switched after {} µs)",
            if stopped {
                "world stopped"
            } else {
                "world running"
            },
            (os::now_ns() - t0) / 1000,
            (t_flip - t0) / 1000
        ));
    }

    // Mark with the world running: root mappings (copied: the program may
    // unmap them), then the heap. Stacks wait for termination.
    let t_conc = os::now_ns();
    let mut own = [(0usize, 0usize); 1024];
    let nown = crate::sys::owned::snapshot(&mut own);
    let own = &own[..nown];
    roots::for_each_writable_mapping(|r| {
        roots::minus_own(r.lo, r.hi, own, |lo, hi| {
            let from = if r.stack_like {
                sps.lowest_in(lo, hi)
            } else {
                Some(lo)
            };
            if let Some(from) = from {
                m.scan_range_copied(from, hi);
            }
        });
    });
    // A thread made to wait for this mark lends its CPU to a helper.
    parallel::Team::begin_quiet(&mut m).drain(&mut m);

    // Mark termination, retried while the written pages would blow the budget.
    let budget = super::PAUSE_TARGET_NS.load(Relaxed);
    let mut runs = RunBuffer::new();
    let mut rounds = 0;
    let mut dirty_pages = 0u64;
    // Allocation is throttled from the first over-budget precleaning pass
    // or termination round to the end of the cycle (dropped on every way
    // out; see `preclean`).
    let mut throttle: Option<super::Throttle> = None;

    let mut ns_per_page = NS_PER_PAGE;
    dirty_pages += preclean(&mut m, &mut runs, &mut ns_per_page, budget, &mut throttle);
    let mut conc_ns = os::now_ns() - t_conc;
    let mut prev_pages: Option<usize> = None;
    loop {
        rounds += 1;
        let t = os::now_ns();
        if let stop::Stopped::GaveUp = stop::stop_world(super::STOP_TIMEOUT_NS.load(Relaxed)) {
            abandon(gen, false);
            return None;
        }
        let t_stopped = os::now_ns();
        let maps_ok = scan_roots_stopped(&mut m, my_sp);
        let t_roots = os::now_ns();
        m.drain();
        let t_drain = os::now_ns();
        runs.clear();
        dirty::set_scan_end(heap::used_end());
        let pages = dirty::collect_written(&mut |a, n| runs.push(&mut m, a, n * 4096));
        if super::DEBUG_PAUSES.load(Relaxed) {
            let (tid, ns, deferred) = stop::slowest_of_last_stop();
            fatal::warn(format_args!(
                "slowest thread {tid} stopped after {} µs{}",
                ns / 1000,
                if deferred {
                    " (was inside the allocator)"
                } else {
                    ""
                }
            ));
            fatal::warn(format_args!(
                "termination round {rounds}: stop {} µs, roots {} µs, drain {} µs, collect written pages {} µs ({:?} pages, {} to scan)",
                (t_stopped - t) / 1000,
                (t_roots - t_stopped) / 1000,
                (t_drain - t_roots) / 1000,
                (os::now_ns() - t_drain) / 1000,
                pages,
                runs.scannable
            ));
        }
        if pages.is_none() {
            // The tracker failed: rescan every object, world stopped.
            m.scan_written(heap::range().0, heap::committed_end());
            m.drain();
            finish_termination(maps_ok, t);
            C.dirty_failures.fetch_add(1, Relaxed);
            if !maps_ok {
                return roots_unreadable();
            }
            break;
        }
        let pages = runs.scannable;
        dirty_pages += pages as u64;
        let spent = os::now_ns() - t;
        // Another round is skipped when it would buy little: the written
        // pages did not fall by a quarter since the last round (the program
        // writes as fast as rounds rescan) and finishing now overruns the
        // budget by at most STALL_OVERRUN times (mstress ran 4 rounds a cycle,
        // each rescanning its whole heap, for a pause of a few ms either
        // way). A long pause is always worth more rounds (at 1 GiB, stopping
        // at the first stalled round made a 2 s pause out of 120 ms). Nor is
        // a round run when the rescan is the lesser part of the overrun: what
        // was spent so far (stopping the threads, the roots, the walk of the
        // page tables) the next round spends again (at 1 GiB a round found 3
        // pages after 820 us; the next found 2,994, the world having run).
        let rescan = pages as u64 * ns_per_page;
        let estimate = spent + rescan;
        let stalled = prev_pages.is_some_and(|p| pages >= p - p / 4);
        prev_pages = Some(pages);
        if rounds < MAX_ROUNDS
            && estimate > budget
            && rescan > budget / 2
            && !(stalled && estimate <= STALL_OVERRUN * budget)
        {
            // Over budget: scan these pages (protected again) with the world
            // running, and try again.
            if throttle.is_none() {
                throttle = Some(super::Throttle::on());
            }
            super::MARK_TERM_PAUSES.record(os::now_ns() - t);
            stop::restart_world();
            let tc = os::now_ns();
            runs.scan_timed(&mut m, &mut ns_per_page);
            // Catch up with the world running before stopping again: the
            // next stop then finds only what was written since the last
            // pass, not everything written during this scan (at 8 GiB a
            // stopped collect of 290,000 written pages took 20 ms).
            dirty_pages += preclean(&mut m, &mut runs, &mut ns_per_page, budget, &mut throttle);
            conc_ns += os::now_ns() - tc;
            continue;
        }
        let t_scan = os::now_ns();
        // The world is stopped: the helpers share the rescan.
        let team = parallel::Team::begin(&mut m);
        runs.push_to(&mut m);
        team.drain(&mut m);
        if super::DEBUG_PAUSES.load(Relaxed) {
            fatal::warn(format_args!(
                "final rescan: {pages} pages in {} µs (estimated {} ns a page)",
                (os::now_ns() - t_scan) / 1000,
                ns_per_page
            ));
        }
        finish_termination(maps_ok, t);
        if !maps_ok {
            return roots_unreadable();
        }
        break;
    }
    C.concurrent_mark_ns.fetch_add(conc_ns, Relaxed);
    C.rounds.fetch_add(rounds as u64, Relaxed);
    C.rounds_max.fetch_max(rounds as u64, Relaxed);
    C.dirty_pages.fetch_add(dirty_pages, Relaxed);
    C.dirty_pages_last.store(dirty_pages, Relaxed);
    C.last_concurrent.store(true, Relaxed);
    C.marked_objects.fetch_add(m.marked_objects, Relaxed);
    C.mark_stack_peak.fetch_max(m.peak as u64, Relaxed);
    Some(m.marked_bytes)
}

/// Precleaning (CMS's): rescans the pages written during the mark so far,
/// with the world running, pass after pass, so that a termination attempt
/// finds only the latest writes rather than everything written while the
/// heap (or the previous pass) was scanned. A pass that finds more than the
/// pause budget's worth of pages throttles allocation before it scans them
/// (so the next pass finds fewer), to the end of the cycle. The passes end
/// when one finds a budget's worth or less, or after `MAX_PRECLEAN`. A
/// throttled pass that fails to shrink the written pages by a quarter (the
/// program writes as fast as passes rescan) makes the throttle hard
/// (`Throttle::harden`); a second such pass ends the passes, and the
/// termination rounds take over. Returns the pages rescanned.
fn preclean(
    m: &mut mark::Marker,
    runs: &mut RunBuffer,
    ns_per_page: &mut u64,
    budget: u64,
    throttle: &mut Option<super::Throttle>,
) -> u64 {
    let mut total = 0u64;
    // Pages found by the last pass whose scan ran throttled.
    let mut prev_throttled: Option<usize> = None;
    for _ in 0..MAX_PRECLEAN {
        runs.clear();
        // Pages the heap grew into since the last collect were never
        // protected: all of them come back as written. Taking them now
        // keeps them out of the next stop (136,606 pages, a 6 ms collect,
        // in a cycle of the 8 GiB pause benchmark).
        dirty::set_scan_end(heap::used_end());
        if dirty::collect_written(&mut |a, n| runs.push(m, a, n * 4096)).is_none() {
            break;
        }
        let pages = runs.scannable;
        let over = pages as u64 * *ns_per_page > budget;
        let stalled = prev_throttled.is_some_and(|p| pages >= p - p / 4);
        if over && throttle.is_none() {
            *throttle = Some(super::Throttle::on());
        }
        runs.scan_timed(m, ns_per_page);
        total += pages as u64;
        C.precleaned_pages.fetch_add(pages as u64, Relaxed);
        if super::DEBUG_PAUSES.load(Relaxed) {
            fatal::warn(format_args!(
                "precleaning: {pages} pages to scan, {} ns a page{}",
                *ns_per_page,
                if stalled { ", stalled" } else { "" }
            ));
        }
        if !over {
            // Converged. A throttle stays on to the end of the cycle: the
            // termination attempt that follows should find only the writes
            // of the moments before it, not those of an unthrottled program.
            break;
        }
        if stalled {
            // Held harder, the program may let the passes catch up; if it
            // still writes as fast, the termination rounds take over.
            match throttle {
                Some(t) if t.harden() => {}
                _ => break,
            }
        }
        prev_throttled = Some(pages);
    }
    runs.clear();
    total
}

/// The end of a (successful) termination attempt: terminate, restart, count.
fn finish_termination(maps_ok: bool, t: u64) {
    let t1 = os::now_ns();
    terminate(maps_ok);
    if super::DEBUG_PAUSES.load(Relaxed) {
        fatal::warn(format_args!(
            "termination: {} µs before terminating, {} µs terminating",
            (t1 - t) / 1000,
            (os::now_ns() - t1) / 1000
        ));
    }
    let pause = os::now_ns() - t;
    stop::restart_world();
    super::MARK_TERM_PAUSES.record(pause);
    C.termination_ns.fetch_add(pause, Relaxed);
}

/// A cycle whose roots could not be read frees nothing (its marks were
/// cleared at termination).
fn roots_unreadable() -> Option<u64> {
    heap::release_deferred();
    C.abandoned.fetch_add(1, Relaxed);
    None
}

/// Stops the world, or counts the cycle abandoned.
fn stop_or_abandon() -> bool {
    match stop::stop_world(super::STOP_TIMEOUT_NS.load(Relaxed)) {
        stop::Stopped::All(_) => true,
        stop::Stopped::GaveUp => {
            C.abandoned.fetch_add(1, Relaxed);
            false
        }
    }
}

/// Gives a concurrent cycle up (a thread did not stop, or no mark stack):
/// nothing is freed; marks are cleared; allocation goes back to the current
/// generation. `stopped`: the world is stopped now (restart it).
fn abandon(gen: u32, stopped: bool) {
    PHASE.store(Phase::Off as u8, Release);
    ALLOC_TAG.store(span::alloc_byte(gen), Release);
    if stopped {
        stop::restart_world();
    }
    clear_all_marks();
    heap::release_deferred();
    C.abandoned.fetch_add(1, Relaxed);
}

pub(super) fn clear_all_marks() {
    heap::for_each_span(|s| {
        // SAFETY: records are type-stable; marks are only read by a marker.
        unsafe {
            if span::is_slotted((*s).state.load(Relaxed)) {
                (*s).clear_marks();
            } else {
                (*s).large_mark.store(0, Relaxed);
            }
        }
    });
}

/// With the world stopped: this thread's stack (from `my_sp`), the stopped
/// threads' stacks from their stack pointers, and every other writable
/// mapping not magpie's own. Returns false if /proc/self/maps was unreadable.
fn scan_roots_stopped(m: &mut mark::Marker, my_sp: usize) -> bool {
    let sps = StackPointers::new(my_sp);
    let mut own = [(0usize, 0usize); 1024];
    let nown = crate::sys::owned::snapshot(&mut own);
    let own = &own[..nown];
    let maps_ok = roots::for_each_writable_mapping(|r| {
        roots::minus_own(r.lo, r.hi, own, |lo, hi| {
            // A stack: scan from the lowest stack pointer inside it up.
            let sp = if r.stack_like {
                sps.lowest_in(lo, hi)
            } else {
                None
            };
            m.scan_range(sp.unwrap_or(lo), hi);
        });
    });
    if !maps_ok {
        // Without the mappings there are no roots to trust: free nothing.
        fatal::warn(format_args!(
            "cannot read /proc/self/maps; collection abandoned"
        ));
    }
    maps_ok
}

/// Mark termination, world stopped: empty every per-CPU cache (they live in
/// memory the collector does not scan) and the transfer caches; advance the
/// sweep generation (or, if the roots could not be read, clear the marks so
/// nothing is freed).
fn terminate(maps_ok: bool) {
    PHASE.store(Phase::MarkTermination as u8, Release);
    // SAFETY: the world is stopped; no stopped thread is inside the allocator.
    unsafe { cache::flush_all() };
    central::flush_transfer();
    if super::DEBUG_ALLOC_IN_TERMINATION.load(Relaxed) {
        // The caches are empty: this must reach the slow path's check and abort.
        let _ = crate::alloc::alloc_c(32);
    }
    if maps_ok {
        let g = SWEEPGEN.fetch_add(1, Release) + 1;
        ALLOC_TAG.store(span::alloc_byte(g), Release);
        super::begin_sweep_pass();
    } else {
        clear_all_marks();
        ALLOC_TAG.store(span::alloc_byte(SWEEPGEN.load(Relaxed)), Release);
    }
    PHASE.store(Phase::Off as u8, Release);
}

/// After a cycle that marked: release what was deferred, sweep with the world
/// running (objects allocated from now on carry the new generation and are
/// never swept by it), then statistics and pacing.
fn finish(heap_before: u64, marked: u64, reclaimed_before: u64) {
    super::note_mark_ended();
    heap::release_deferred();
    let t_s = os::now_ns();
    super::sweep_all();
    C.sweep_ns.fetch_add(os::now_ns() - t_s, Relaxed);
    C.cycles.fetch_add(1, Relaxed);
    C.marked_bytes_last.store(marked, Relaxed);
    C.heap_before_last.store(heap_before, Relaxed);
    let after = heap::in_use_bytes() as u64;
    C.heap_after_last.store(after, Relaxed);
    let reclaimed = C.reclaimed_bytes.load(Relaxed) - reclaimed_before;
    super::set_next_goal(
        marked,
        after,
        reclaimed * 8 >= heap_before,
        super::frees_own_memory(true),
    );
}

/// The written runs of one termination attempt, kept so that they can be
/// scanned either now (world stopped) or after a restart. When full, runs
/// are scanned on the spot.
struct RunBuffer {
    runs: *mut (usize, usize),
    len: usize,
    /// Pages of the runs pushed since `clear` that hold objects to scan.
    scannable: usize,
}

const RUNS: usize = 1 << 20;
static RUN_MEM: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

impl RunBuffer {
    fn new() -> RunBuffer {
        let mut p = RUN_MEM.load(Relaxed) as *mut (usize, usize);
        if p.is_null() {
            p = os::map_owned(RUNS * 16) as *mut (usize, usize);
            RUN_MEM.store(p as usize, Relaxed);
        }
        RunBuffer {
            runs: p,
            len: 0,
            scannable: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.scannable = 0;
    }

    fn push(&mut self, m: &mut mark::Marker, addr: usize, bytes: usize) {
        self.scannable += mark::Marker::scannable_pages(addr, addr + bytes);
        if self.runs.is_null() || self.len == RUNS {
            m.scan_written(addr, addr + bytes);
            return;
        }
        // SAFETY: len < RUNS, inside the mapping.
        unsafe { *self.runs.add(self.len) = (addr, bytes) };
        self.len += 1;
    }

    /// Pushes the runs on `m`'s stack (see `mark::WRITTEN`), in pieces a
    /// team can share.
    fn push_to(&mut self, m: &mut mark::Marker) {
        const PIECE: usize = 16 * 4096;
        for k in 0..self.len {
            // SAFETY: k < len, written by push.
            let (a, n) = unsafe { *self.runs.add(k) };
            let mut lo = a;
            while lo < a + n {
                let len = PIECE.min(a + n - lo);
                m.push_written(lo, len);
                lo += len;
            }
        }
        self.len = 0;
    }

    fn scan(&mut self, m: &mut mark::Marker) {
        for k in 0..self.len {
            // SAFETY: k < len, written by push.
            let (a, n) = unsafe { *self.runs.add(k) };
            m.scan_written(a, a + n);
        }
        self.len = 0;
    }

    /// [`RunBuffer::scan`] and drain, updating `ns_per_page` from the time
    /// it took when there were enough pages to say.
    fn scan_timed(&mut self, m: &mut mark::Marker, ns_per_page: &mut u64) {
        let t = os::now_ns();
        self.scan(m);
        m.drain();
        if self.scannable >= 64 {
            *ns_per_page = ((os::now_ns() - t) / self.scannable as u64).max(NS_PER_PAGE);
        }
    }
}

/// The stack pointers of this thread and of the stopped threads (world
/// stopped when taken), sorted.
struct StackPointers {
    sps: [usize; 256],
    n: usize,
    /// More threads than the table holds: whole stacks are scanned.
    overflow: bool,
}

impl StackPointers {
    /// The caller's stack pointer, the helpers' and those the threads
    /// recorded at the last stop of the world (the current one, if stopped).
    fn new(my_sp: usize) -> StackPointers {
        let mut t = StackPointers {
            sps: [0; 256],
            n: 1,
            overflow: false,
        };
        t.sps[0] = my_sp;
        let mut add = |sp: usize| {
            if sp != 0 {
                if t.n < t.sps.len() {
                    t.sps[t.n] = sp;
                    t.n += 1;
                } else {
                    t.overflow = true;
                }
            }
        };
        stop::for_each_stopped(|_, sp| add(sp));
        parallel::for_each_helper_sp(&mut add);
        t.sps[..t.n].sort_unstable();
        t
    }

    /// Where to scan a stack-like mapping `[lo, hi)` from: the lowest stack
    /// pointer inside it, or `lo` if the table overflowed. None if no
    /// thread's stack pointer is inside (a stack glibc keeps cached for
    /// reuse, or a mapping that only looks like a stack): scanned whole by
    /// the stopped-world pass, skipped by the concurrent one.
    fn lowest_in(&self, lo: usize, hi: usize) -> Option<usize> {
        if self.overflow {
            return Some(lo);
        }
        self.sps[..self.n]
            .iter()
            .copied()
            .find(|&sp| sp >= lo && sp < hi)
    }
}

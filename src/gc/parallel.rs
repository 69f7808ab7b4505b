//! Parallel marking: helper threads share the mark work of a stopped world.
//!
//! While the world is stopped the program's CPUs are idle, so the collector
//! (the *leader*) is joined by helper marker threads, one per further CPU
//! (`MAGPIE_MARKERS`, default: the CPUs the process may run on, at most
//! `MAX_MARKERS`). Boehm GC marks in parallel the same way.
//!
//! Work moves through one shared *pool* of mark-stack entries, under a spin
//! lock: a marker whose own stack has entries gives the bottom half of it to
//! the pool whenever some marker is idle (the bottom holds the oldest
//! entries, the roots of the biggest unexplored subgraphs); an idle marker
//! takes half the pool. Mark bits are set with an atomic `fetch_or` while a
//! team runs, so two markers never both scan one object (in a quiet round,
//! below, from the leader's first donation on: until a helper has work the
//! leader marks alone, with plain stores).
//!
//! Termination: the pool counts the markers holding work (`active`). A
//! marker whose stack runs dry takes from the pool or, if it is empty,
//! counts itself out and waits; the round is over when, under the lock, the
//! pool is empty and no marker is active: nobody holds work that could
//! produce more. Every decision is taken under the lock and checks the
//! round number, so a helper late for a round (or still leaving the last
//! one) never touches the next round's work.
//!
//! A concurrent mark (the world running) is a *quiet* round: the helpers
//! are not woken, since the program's threads need the CPUs. But a thread
//! that the collector makes wait (allocation throttled while the mark
//! catches up) lends its CPU: [`lend_cpu`] invites one helper into the
//! round, so the mark the thread waits for ends sooner (Go's mark assists,
//! done by a helper so that the program's thread, which may be stopped by
//! a signal at any point, never holds the pool's lock).
//!
//! A helper's mark stack can overflow like the leader's; it says so when it
//! goes idle and the leader, after the round, rescans the marked objects
//! (`Marker::drain`'s recovery), alone.
//!
//! Helpers never allocate, never take an allocator lock and hold no program
//! pointer between rounds. The stop signal skips them ([`is_helper`]). Their
//! stacks are ordinary thread stacks, scanned like a stopped thread's from
//! the stack pointer each recorded when it started ([`for_each_helper_sp`]):
//! what glibc keeps above it (the thread's TLS and the DTV it allocated with
//! malloc) stays alive, and a round's frames, below it, are not roots. A
//! helper that has joined a round and is descheduled delays its end: the
//! leader waits for the work it holds.

use core::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering::*};

use super::mark::{Entry, Marker, MarkerConfig};
use crate::sys::{futex, os};

/// Most markers of a team (the leader and its helpers).
pub const MAX_MARKERS: usize = 8;
/// Pool capacity in entries.
const POOL_CAP: usize = 1 << 16;
/// Most entries an idle marker takes from the pool at once.
const TAKE_MAX: usize = 512;
/// Stack size of a helper thread.
const HELPER_STACK: usize = 256 << 10;

/// `MAGPIE_DEBUG_MARK_CONCURRENTLY=1`: quiet rounds wake every helper, so
/// tests run helpers beside the program's threads on every concurrent mark.
static WAKE_IN_QUIET: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// `MAGPIE_MARKERS`: markers per team (1: the leader alone).
pub(super) static MARKERS: AtomicUsize = AtomicUsize::new(1);
/// Helper threads started (they never exit).
static HELPERS: AtomicUsize = AtomicUsize::new(0);
static HELPER_TIDS: [AtomicI32; MAX_MARKERS] = [const { AtomicI32::new(0) }; MAX_MARKERS];
/// Where each helper's stack is scanned from (see the module docs).
static HELPER_SPS: [AtomicUsize; MAX_MARKERS] = [const { AtomicUsize::new(0) }; MAX_MARKERS];

/// Futex word: the current round; helpers sleep on it between rounds.
static ROUND: AtomicU32 = AtomicU32::new(0);
/// Hints read without the lock (the lock's fields decide).
static POOL_LEN: AtomicUsize = AtomicUsize::new(0);
static IDLE: AtomicUsize = AtomicUsize::new(0);
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Futex word idle markers sleep on once they have spun for a while: bumped
/// when work is donated or the round's last active marker runs dry.
static SIGNAL: AtomicU32 = AtomicU32::new(0);
static SLEEPERS: AtomicU32 = AtomicU32::new(0);
/// Spins (`spin_loop` hints, some tens of µs) before an idle marker sleeps:
/// spinning on a CPU the marker with work needs would only delay it.
const IDLE_SPINS: u32 = 2000;
/// The open quiet round (0: none), and whether a helper was invited to it.
static QUIET_ROUND: AtomicU32 = AtomicU32::new(0);
static INVITED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// The round's marker settings, published before `ROUND` is bumped.
static CONFIG: spin::Mutex<Option<MarkerConfig>> = spin::Mutex::new(None);

struct Pool {
    buf: *mut Entry,
    len: usize,
    round: u32,
    /// The leader has ended the round.
    closed: bool,
    /// Markers holding work (the leader counts from the start).
    active: usize,
    /// Markers (the leader too) that ran dry and wait for work.
    idle: usize,
    overflowed: bool,
    marked_bytes: u64,
    marked_objects: u64,
    scanned_bytes: u64,
}

// SAFETY: buf points into magpie's own mapping; it is only used under the lock.
unsafe impl Send for Pool {}

static POOL: spin::Mutex<Pool> = spin::Mutex::new(Pool {
    buf: core::ptr::null_mut(),
    len: 0,
    round: 0,
    closed: true,
    active: 0,
    idle: 0,
    overflowed: false,
    marked_bytes: 0,
    marked_objects: 0,
    scanned_bytes: 0,
});

/// Reads `MAGPIE_MARKERS` (default: the CPUs this process may use).
pub(super) fn configure() {
    let cpus = allowed_cpus();
    let n = crate::sys::env::get_u64("MAGPIE_MARKERS", cpus as u64, 1, MAX_MARKERS as u64);
    MARKERS.store(n as usize, Relaxed);
    WAKE_IN_QUIET.store(
        crate::sys::env::get_bool("MAGPIE_DEBUG_MARK_CONCURRENTLY", false),
        Relaxed,
    );
}

fn allowed_cpus() -> usize {
    // SAFETY: sched_getaffinity fills the zeroed set it is given.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        (libc::CPU_COUNT(&set) as usize).clamp(1, MAX_MARKERS)
    }
}

/// Markers of a team: the collector and the helpers running.
pub fn markers() -> usize {
    1 + HELPERS.load(Relaxed)
}

/// Whether `tid` is a helper marker thread (the stop signal skips them).
pub fn is_helper(tid: i32) -> bool {
    let n = HELPERS.load(Acquire);
    HELPER_TIDS[..n].iter().any(|t| t.load(Relaxed) == tid)
}

/// Calls `f` with the stack pointer each helper's stack is scanned from.
pub fn for_each_helper_sp(mut f: impl FnMut(usize)) {
    let n = HELPERS.load(Acquire);
    for sp in &HELPER_SPS[..n] {
        f(sp.load(Relaxed));
    }
}

/// Starts the helper threads (from the collector thread, once; again in a
/// forked child, which has none).
pub(super) fn start_helpers() {
    let want = MARKERS.load(Relaxed).saturating_sub(1);
    if HELPERS.load(Relaxed) >= want {
        return;
    }
    {
        let mut p = POOL.lock();
        if p.buf.is_null() {
            p.buf = os::map_owned(POOL_CAP * core::mem::size_of::<Entry>()).cast();
            if p.buf.is_null() {
                return;
            }
        }
    }
    while HELPERS.load(Relaxed) < want {
        let i = HELPERS.load(Relaxed);
        if super::mark::mark_stack(i + 1).is_null() {
            return;
        }
        // SAFETY: a detached thread; pthread_create may allocate (no
        // allocator lock held).
        let ok = unsafe {
            let mut t: libc::pthread_t = 0;
            let mut attr: libc::pthread_attr_t = core::mem::zeroed();
            libc::pthread_attr_init(&mut attr);
            libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
            libc::pthread_attr_setstacksize(&mut attr, HELPER_STACK);
            HELPER_TIDS[i].store(-1, Relaxed);
            let r = libc::pthread_create(&mut t, &attr, helper_main, i as *mut libc::c_void);
            libc::pthread_attr_destroy(&mut attr);
            r == 0
        };
        if !ok {
            return;
        }
        // Counted once its tid is known, so is_helper never misses it.
        while HELPER_TIDS[i].load(Acquire) == -1 {
            core::hint::spin_loop();
        }
        HELPERS.store(i + 1, Release);
    }
}

/// In a forked child: no helper exists; the parent's may have held the lock.
pub(super) fn reset_after_fork() {
    // A helper of the parent may have held either lock at the fork.
    if POOL.is_locked() {
        // SAFETY: its holder does not exist in the child.
        unsafe { POOL.force_unlock() };
    }
    if CONFIG.is_locked() {
        // SAFETY: as above.
        unsafe { CONFIG.force_unlock() };
    }
    POOL.lock().closed = true;
    QUIET_ROUND.store(0, Relaxed);
    HELPERS.store(0, Relaxed);
}

extern "C" fn helper_main(arg: *mut libc::c_void) -> *mut libc::c_void {
    let idx = arg as usize;
    super::IS_COLLECTOR.with(|c| c.set(true));
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) as i32 };
    let here = 0usize;
    HELPER_SPS[idx].store(
        core::hint::black_box(&here) as *const usize as usize,
        Relaxed,
    );
    HELPER_TIDS[idx].store(tid, Release);
    let mut seen = ROUND.load(Acquire);
    loop {
        let r = ROUND.load(Acquire);
        if r == seen {
            futex::wait(&ROUND, r, None);
            continue;
        }
        seen = r;
        join(idx, r);
    }
}

/// Helper `idx`'s part in round `r`, if it is still open. Not inlined: its
/// frame, which holds heap addresses, lies below the helper's recorded
/// stack pointer and is never scanned.
#[inline(never)]
fn join(idx: usize, r: u32) {
    let Some(cfg) = *CONFIG.lock() else { return };
    let Some(mut m) = Marker::helper(idx, cfg) else {
        return;
    };
    {
        let mut p = POOL.lock();
        if p.closed || p.round != r {
            return;
        }
        // Joins as active with an empty stack: `work` counts it out.
        p.active += 1;
        ACTIVE.store(p.active, Relaxed);
    }
    work(&mut m, r, false);
}

/// A round of parallel marking, begun with the world stopped.
pub struct Team {
    round: Option<u32>,
}

impl Team {
    /// Wakes the helpers to mark with `m` (when there are any): from now on
    /// `m` marks atomically and gives work away. Call before scanning roots,
    /// so the helpers' wake-up overlaps it.
    pub fn begin(m: &mut Marker) -> Team {
        let t = Self::open(m);
        if let Some(round) = t.round {
            ROUND.store(round, Release);
            futex::wake(&ROUND, i32::MAX);
        }
        t
    }

    /// A round for a concurrent mark: helpers join only when a waiting
    /// thread lends its CPU ([`lend_cpu`]).
    pub fn begin_quiet(m: &mut Marker) -> Team {
        let t = Self::open(m);
        if let Some(round) = t.round {
            // Alone until an invited helper asks for work.
            m.set_may_share();
            INVITED.store(false, Relaxed);
            QUIET_ROUND.store(round, Release);
            if WAKE_IN_QUIET.load(Relaxed) {
                // Every helper at once, as if invited.
                ROUND.store(round, Release);
                futex::wake(&ROUND, i32::MAX);
            }
        }
        t
    }

    fn open(m: &mut Marker) -> Team {
        if HELPERS.load(Acquire) == 0 {
            return Team { round: None };
        }
        *CONFIG.lock() = Some(m.config());
        let round = {
            let mut p = POOL.lock();
            p.round = p.round.wrapping_add(1);
            p.closed = false;
            p.len = 0;
            p.active = 1;
            p.idle = 0;
            p.overflowed = false;
            p.marked_bytes = 0;
            p.marked_objects = 0;
            p.scanned_bytes = 0;
            POOL_LEN.store(0, Relaxed);
            IDLE.store(0, Relaxed);
            ACTIVE.store(1, Relaxed);
            p.round
        };
        m.set_shared(true);
        Team { round: Some(round) }
    }

    /// Marks until no marker of the team has work, then ends the round and
    /// adds the helpers' figures to `m`'s.
    pub fn drain(self, m: &mut Marker) {
        let Some(round) = self.round else {
            m.drain();
            return;
        };
        work(m, round, true);
        QUIET_ROUND.store(0, Relaxed);
        m.set_shared(false);
        let overflowed = {
            let mut p = POOL.lock();
            p.closed = true;
            m.marked_bytes += p.marked_bytes;
            m.marked_objects += p.marked_objects;
            m.scanned_bytes += p.scanned_bytes;
            super::C
                .helper_marked_objects
                .fetch_add(p.marked_objects, Relaxed);
            p.overflowed
        };
        if overflowed {
            m.note_overflow();
        }
        // The leader's own overflow, or a helper's: rescan marked objects.
        m.drain();
    }
}

/// Called by a program thread about to wait for the collector: invites one
/// helper into the open quiet round, if any (once per round). Takes no lock
/// (the thread may be stopped by a signal anywhere here). A store of a round
/// that closed meanwhile only makes a helper look at it and leave.
pub fn lend_cpu() {
    let r = QUIET_ROUND.load(Acquire);
    if r == 0 || HELPERS.load(Relaxed) == 0 || INVITED.swap(true, Relaxed) {
        return;
    }
    ROUND.store(r, Release);
    futex::wake(&ROUND, 1);
}

/// Whether some marker of the running team is waiting for work that the
/// pool does not have (a hint): only then is work given away, so a marker
/// slow to wake is not sent a donation (and a futex wake) per check.
#[inline]
pub fn wants_work() -> bool {
    IDLE.load(Relaxed) > 0 && POOL_LEN.load(Relaxed) == 0
}

/// Moves the bottom half of `m`'s stack to the pool (when it has room).
pub fn donate(m: &mut Marker) {
    let mut p = POOL.lock();
    let room = POOL_CAP - p.len;
    let len = p.len;
    // SAFETY: the pool buffer holds POOL_CAP entries; len + room <= POOL_CAP.
    let dst = unsafe { core::slice::from_raw_parts_mut(p.buf.add(len), room) };
    let n = m.give_bottom(dst);
    p.len += n;
    POOL_LEN.store(p.len, Relaxed);
    drop(p);
    if n > 0 {
        notify();
    }
}

/// Returns the pool's pages to the OS between cycles (see
/// `mark::trim_stacks`): it is empty then.
pub(super) fn trim_pool() {
    let p = POOL.lock();
    debug_assert_eq!(p.len, 0);
    // SAFETY: the pool is empty and only used under its lock, held here.
    unsafe { os::trim(p.buf.cast(), POOL_CAP * core::mem::size_of::<Entry>(), 0) };
}

/// Wakes idle markers that went to sleep (the pool or `active` changed).
fn notify() {
    SIGNAL.fetch_add(1, SeqCst);
    if SLEEPERS.load(SeqCst) > 0 {
        futex::wake(&SIGNAL, i32::MAX);
    }
}

/// Whether an idle marker of round `round` has nothing to do but wait.
fn nothing_to_take(round: u32) -> bool {
    POOL_LEN.load(Relaxed) == 0 && ACTIVE.load(Relaxed) != 0 && ROUND.load(Relaxed) == round
}

/// Takes up to half the pool (at least one entry) into `m`. Lock held.
fn take(p: &mut Pool, m: &mut Marker) {
    let n = p.len.div_ceil(2).min(TAKE_MAX);
    p.len -= n;
    // SAFETY: entries [len, len + n) of the pool were donated.
    let src = unsafe { core::slice::from_raw_parts(p.buf.add(p.len), n) };
    m.push_entries(src);
    POOL_LEN.store(p.len, Relaxed);
}

/// One marker's part of round `round`: drain, refill from the pool, wait
/// for work while others have it; returns when nobody has any.
fn work(m: &mut Marker, round: u32, leader: bool) {
    loop {
        m.drain_local();
        {
            let mut p = POOL.lock();
            if p.round != round {
                return;
            }
            if p.len > 0 {
                take(&mut p, m);
                continue;
            }
            if !leader {
                let (b, o, s, ovf) = m.take_figures();
                p.marked_bytes += b;
                p.marked_objects += o;
                p.scanned_bytes += s;
                p.overflowed |= ovf;
            }
            p.active -= 1;
            p.idle += 1;
            ACTIVE.store(p.active, Relaxed);
            IDLE.store(p.idle, Relaxed);
            if p.active == 0 {
                drop(p);
                notify();
            }
        }
        let mut spins = 0u32;
        loop {
            let sig = SIGNAL.load(SeqCst);
            if nothing_to_take(round) {
                spins += 1;
                if spins < IDLE_SPINS {
                    core::hint::spin_loop();
                    continue;
                }
                SLEEPERS.fetch_add(1, SeqCst);
                if nothing_to_take(round) {
                    futex::wait(&SIGNAL, sig, Some(1_000_000));
                }
                SLEEPERS.fetch_sub(1, SeqCst);
                continue;
            }
            let mut p = POOL.lock();
            if p.round != round {
                return;
            }
            p.idle -= 1;
            IDLE.store(p.idle, Relaxed);
            if p.len > 0 {
                p.active += 1;
                ACTIVE.store(p.active, Relaxed);
                take(&mut p, m);
                break;
            }
            if p.active == 0 {
                return;
            }
            p.idle += 1;
            IDLE.store(p.idle, Relaxed);
        }
    }
}

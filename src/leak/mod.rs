//! Leak detection for unmodified programs: `MAGPIE_GC=leakcheck`.
//!
//! The collector runs as in `collect`, but what it finds unreachable and never
//! freed is reported instead of freed: a leak. Each allocation records where
//! it was made, so the report can group leaks by site.
//!
//! ```text
//! allocation ─▶ capture the call stack (unwind: DWARF CFI, no frame pointers
//!               needed) ─▶ intern it (stacks: id per distinct stack)
//!            ─▶ site record of the slot: id | requested size
//! sweep      ─▶ unreachable, allocated, not GC-managed: if the record is not
//!               yet flagged, flag it and add its size to its site (counted
//!               once; the object stays allocated)
//! exit       ─▶ one last collection, then the report (report.rs), grouped by
//!               site, largest first, symbolized (symbolize.rs)
//! ```
//!
//! Site records live beside the slot-state bytes (`Span::site`): one `u64`
//! per slot, written by the allocating thread right after the allocation
//! returns, read and flagged by the sweeper. An object whose record is not yet
//! written is still in its allocating thread's registers or stack when a
//! collection stops the world, so it is marked and never seen unrecorded by the
//! sweep (allocations that bypass recording, e.g. the C API called directly,
//! are reported under an unknown site with their slot size).
//!
//! The tiny allocator is bypassed while tracking (every object its own slot
//! and its own record), so sizes and counts are exact.
//!
//! Where stacks come from: the preload shim passes its caller's registers
//! (return address, CFA, rbp: `magpie_leak_record`), so the first frame is the
//! program's call site; the Rust global allocator unwinds from inside magpie
//! (`record_here`) and the report drops magpie's own frames.

pub mod report;
pub mod stacks;
pub mod symbolize;
pub mod unwind;

use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};

use crate::alloc::{heap, sizeclass::PAGE_SIZE, span};
use crate::sys::env;

/// Nonzero while allocations record their sites; read by the preload shim
/// (one relaxed byte load on every allocation).
#[no_mangle]
pub static magpie_leak_tracking: AtomicU8 = AtomicU8::new(0);

/// Nonzero once the allocator knows allocations record no sites: the preload
/// shim's allocation functions then tail-call the engine (no frame of their
/// own, no check after the call). Zero until then, so the first allocation,
/// which initialises magpie and with it this flag, takes the checked path.
#[no_mangle]
pub static magpie_shim_direct: AtomicU8 = AtomicU8::new(0);

/// Frames kept per allocation (`MAGPIE_LEAK_STACKS`, default 8; 0 = sizes only).
static DEPTH: AtomicUsize = AtomicUsize::new(8);
/// Frames the Rust face captures beyond `DEPTH`: magpie's own, dropped in the report.
const OWN_FRAMES: usize = 4;

static LEAKED_OBJECTS: AtomicU64 = AtomicU64::new(0);
static LEAKED_BYTES: AtomicU64 = AtomicU64::new(0);
static EXIT_REPORT_DONE: AtomicBool = AtomicBool::new(false);

/// Reads the leakcheck configuration; called once at allocator init, before
/// the first span exists (spans size their site records by it).
pub fn init() {
    if crate::gc::mode_from_env() != crate::gc::Mode::LeakCheck {
        magpie_shim_direct.store(1, Relaxed);
        return;
    }
    DEPTH.store(
        env::get_u64(
            "MAGPIE_LEAK_STACKS",
            8,
            0,
            (stacks::MAX_DEPTH - OWN_FRAMES) as u64,
        ) as usize,
        Relaxed,
    );
    report::init();
    // The rule cache now, so that no walk maps memory (and takes the owned
    // registry's lock) later.
    unwind::init();
    magpie_leak_tracking.store(1, Relaxed);
}

/// True while allocations record their sites (leakcheck mode).
#[inline(always)]
pub fn tracking() -> bool {
    magpie_leak_tracking.load(Relaxed) != 0
}

/// Frames kept per allocation site.
pub fn depth() -> usize {
    DEPTH.load(Relaxed)
}

// ---------------------------------------------------------------------------
// Site records: `size << 32 | leaked << 31 | stack id`.

const LEAKED: u64 = 1 << 31;
const ID_MASK: u64 = LEAKED - 1;

#[inline]
fn pack(id: u32, size: usize) -> u64 {
    (size.min(u32::MAX as usize) as u64) << 32 | (id as u64 & ID_MASK)
}

/// Records that the object at `p` (just allocated, `size` bytes asked) was
/// made at stack `id`.
pub fn record(p: *mut u8, size: usize, id: u32) {
    let s = heap::span_of(p as usize);
    if s.is_null() {
        return;
    }
    // SAFETY: the page map returns live span records; p is the caller's
    // fresh object in it.
    let sp = unsafe { &*s };
    if let Some(rec) = sp.site(sp.slot_of(p as usize)) {
        rec.store(pack(id, size), Relaxed);
    }
}

/// Records the site of a C allocation made through the preload shim. `ip` is
/// the return address into the program, `sp` the caller's stack pointer after
/// the return (the shim function's CFA), `bp` the caller's rbp.
///
/// # Safety
/// `p` is null or an object magpie just returned to this caller; the
/// registers describe this thread's live stack.
#[no_mangle]
pub unsafe extern "C" fn magpie_leak_record(
    p: *mut u8,
    size: usize,
    ip: usize,
    sp: usize,
    bp: usize,
) {
    if p.is_null() || !tracking() {
        return;
    }
    let regs = unwind::Regs { ip, sp, bp };
    let id = LAST_WALK.with(|m| {
        if m.busy.replace(true) {
            // Re-entered (a signal handler allocating while this thread
            // records): walk without the memo.
            return with_frame_buffer(depth(), |frames| {
                let n = unwind::backtrace_from(regs, frames);
                stacks::intern(&frames[..n])
            });
        }
        // SAFETY: `busy` makes this the only reference to the memo.
        let w = unsafe { &mut *m.walk.get() };
        let d = depth();
        if !(w.reads.same_start(w.regs, regs) && w.depth == d && w.reads.unchanged()) {
            w.id = with_frame_buffer(d, |frames| {
                let n = unwind::backtrace_from_noting(regs, frames, &mut w.reads);
                intern_cached(&frames[..n])
            });
            w.regs = regs;
            w.depth = d;
        }
        m.busy.set(false);
        w.id
    });
    record(p, size, id);
}

/// This thread's last walk from the preload shim, and the stack id it gave:
/// when the next allocation comes from the same registers and the stack words
/// that walk read are unchanged (`StackReads`), the id is reused without
/// walking. An allocation loop pays a few loads and compares per frame.
struct LastWalk {
    busy: Cell<bool>,
    walk: UnsafeCell<Walk>,
}

struct Walk {
    regs: unwind::Regs,
    depth: usize,
    reads: unwind::StackReads,
    id: u32,
}

thread_local! {
    // Const-initialised, no destructor: touching it never allocates. The
    // zero registers never match a real call (ip 0 is never walked).
    static LAST_WALK: LastWalk = const {
        LastWalk {
            busy: Cell::new(false),
            walk: UnsafeCell::new(Walk {
                regs: unwind::Regs { ip: 0, sp: 0, bp: 0 },
                depth: 0,
                reads: unwind::StackReads::new(),
                id: 0,
            }),
        }
    };
}

/// The last stack this thread interned, and its id: allocation loops repeat
/// the same stack, and comparing a few words beats hashing and probing.
struct LastStack {
    len: Cell<usize>,
    frames: [Cell<usize>; LAST_WORDS],
    id: Cell<u32>,
}
const LAST_WORDS: usize = 16;

thread_local! {
    // Const-initialised, no destructor: touching it never allocates.
    static LAST: LastStack = const {
        LastStack {
            len: Cell::new(usize::MAX),
            frames: [const { Cell::new(0) }; LAST_WORDS],
            id: Cell::new(0),
        }
    };
}

/// `stacks::intern`, short-cut when the stack is this thread's last one.
#[inline]
fn intern_cached(frames: &[usize]) -> u32 {
    LAST.with(|l| {
        if l.len.get() == frames.len() && frames.iter().zip(&l.frames).all(|(a, b)| *a == b.get()) {
            return l.id.get();
        }
        let id = stacks::intern(frames);
        if frames.len() <= LAST_WORDS {
            for (c, &f) in l.frames.iter().zip(frames) {
                c.set(f);
            }
            l.len.set(frames.len());
            l.id.set(id);
        }
        id
    })
}

/// Runs `f` with a zeroed buffer of `n` frames (n ≤ MAX_DEPTH): a small one
/// for the usual depths, so that each allocation does not clear 512 bytes.
#[inline(always)]
fn with_frame_buffer<R>(n: usize, f: impl FnOnce(&mut [usize]) -> R) -> R {
    if n <= 16 {
        let mut small = [0usize; 16];
        f(&mut small[..n])
    } else {
        let mut big = [0usize; stacks::MAX_DEPTH];
        f(&mut big[..n.min(stacks::MAX_DEPTH)])
    }
}

/// Records the site of an allocation by the Rust global allocator: the stack
/// is unwound from here (magpie's own frames are dropped by the report).
#[cold]
#[inline(never)]
pub fn record_here(p: *mut u8, size: usize) {
    if p.is_null() {
        return;
    }
    let d = depth();
    with_frame_buffer(if d == 0 { 0 } else { d + OWN_FRAMES }, |frames| {
        let n = if frames.is_empty() {
            0
        } else {
            unwind::backtrace_here(frames)
        };
        record(p, size, intern_cached(&frames[..n]));
    });
}

// ---------------------------------------------------------------------------
// The sweeper's side.

/// The sweeper found an unreachable, never-freed object whose record is `rec`
/// and whose slot holds `slot_bytes`. Counts it as a leak at its site unless
/// an earlier cycle did. Returns the bytes newly counted (0 if not new).
pub fn note_unreachable(rec: &AtomicU64, slot_bytes: usize) -> usize {
    let old = rec.fetch_or(LEAKED, Relaxed);
    if old & LEAKED != 0 {
        return 0;
    }
    let bytes = leak_bytes(old, slot_bytes);
    if let Some(e) = site_entry(old) {
        e.leaked_objects.fetch_add(1, Relaxed);
        e.leaked_bytes.fetch_add(bytes as u64, Relaxed);
    }
    LEAKED_OBJECTS.fetch_add(1, Relaxed);
    LEAKED_BYTES.fetch_add(bytes as u64, Relaxed);
    bytes
}

/// The stack id in a site record (0: not recorded).
#[inline]
pub fn stack_id(rec: u64) -> u32 {
    (rec & ID_MASK) as u32
}

/// The table entry whose leak counters a record's leaks go to: its stack's,
/// or the empty stack's when the object was never recorded.
fn site_entry(rec: u64) -> Option<&'static stacks::Entry> {
    let id = match stack_id(rec) {
        0 => stacks::NO_STACK,
        id => id,
    };
    stacks::get(id).map(|(_, e)| e)
}

/// The size a record stands for: the size asked, or the slot's when the
/// object was never recorded (or asked for 4 GiB or more).
fn leak_bytes(rec: u64, slot_bytes: usize) -> usize {
    asked_size(rec).unwrap_or(slot_bytes)
}

/// The size the program asked for, from a site record (None if unrecorded).
#[inline]
pub fn asked_size(rec: u64) -> Option<usize> {
    let size = (rec >> 32) as usize;
    (rec & ID_MASK != 0 && size != u32::MAX as usize).then_some(size)
}

/// An object reported as leaked is being freed after all (its pointer was
/// hidden from the collector, e.g. in a shared mapping): take it back out of
/// the counts.
#[inline(never)]
pub fn on_free(s: &span::Span, i: usize) {
    let Some(rec) = s.site(i) else { return };
    // A plain load first: the common case (not a reported leak) must not pay
    // for a locked instruction on every free.
    if rec.load(Relaxed) & LEAKED == 0 {
        return;
    }
    let old = rec.swap(0, Relaxed);
    if old & LEAKED == 0 {
        return;
    }
    let slot = if s.state.load(Relaxed) == span::LARGE {
        s.npages * PAGE_SIZE
    } else {
        s.elemsize as usize
    };
    let bytes = leak_bytes(old, slot) as u64;
    if let Some(e) = site_entry(old) {
        e.leaked_objects.fetch_sub(1, Relaxed);
        e.leaked_bytes.fetch_sub(bytes, Relaxed);
    }
    LEAKED_OBJECTS.fetch_sub(1, Relaxed);
    LEAKED_BYTES.fetch_sub(bytes, Relaxed);
}

// ---------------------------------------------------------------------------
// Results.

/// What leakcheck has found so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeakTotals {
    pub bytes: u64,
    pub objects: u64,
}

/// Leaks found by the cycles run so far (without running one).
pub fn totals() -> LeakTotals {
    LeakTotals {
        bytes: LEAKED_BYTES.load(Relaxed),
        objects: LEAKED_OBJECTS.load(Relaxed),
    }
}

/// Runs a collection, then writes the leak report (stderr, or
/// `MAGPIE_LEAK_REPORT`) and returns the totals. Outside leakcheck mode it
/// reports nothing and returns zeros.
pub fn leak_report() -> LeakTotals {
    if !tracking() {
        return LeakTotals::default();
    }
    crate::gc::collect_now();
    report::write(false);
    totals()
}

/// The exit handler: a last collection, the report, and the exit code.
pub extern "C" fn at_exit() {
    if !tracking() || EXIT_REPORT_DONE.swap(true, Relaxed) {
        return;
    }
    crate::gc::collect_now();
    report::write(true);
    report::exit_code_if_leaks(totals());
}

//! The allocation engine shared by every front end (Rust `GlobalAlloc`, the C
//! API, the preload shim):
//!
//! ```text
//! front end: size + alignment -> span class (or large), scan/noscan, tiny
//!   cache:   pop a free slot from this CPU's cache (rseq), or carve the tiny block
//!     central: refill/drain a batch (transfer cache, partial spans)
//!       heap:  pages -> spans, page map, growth, return to the OS
//! ```
//! `free` finds the span through the page map, checks the slot's state byte
//! (catching double and invalid frees), clears it and pushes the slot onto the
//! current CPU's cache.

pub mod cache;
pub mod central;
pub mod guard;
pub mod heap;
pub mod meta;
pub mod rseq_ops;
pub mod sizeclass;
pub mod span;

use core::ptr;
use core::sync::atomic::{
    AtomicU64, AtomicU8, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

use crate::config;
use crate::sys::{fatal::fatal, os, rseq};
use central::spanclass;
use sizeclass::{MAX_SMALL, PAGE_SIZE};
use span::Entry;

// ---------------------------------------------------------------------------
// Initialisation.

const UNINIT: u8 = 0;
const RUNNING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;
static INIT: AtomicU8 = AtomicU8::new(UNINIT);

/// Initialises the engine on first use. Returns false if it cannot work (no
/// address space), in which case every allocation returns null.
#[cold]
pub fn ensure_init() -> bool {
    match INIT.load(Acquire) {
        READY => return true,
        FAILED => return false,
        _ => {}
    }
    if INIT
        .compare_exchange(UNINIT, RUNNING, Acquire, Relaxed)
        .is_ok()
    {
        let ok = init_once();
        INIT.store(if ok { READY } else { FAILED }, Release);
        if ok {
            after_init();
        }
        return ok;
    }
    while INIT.load(Acquire) == RUNNING {
        core::hint::spin_loop();
    }
    INIT.load(Acquire) == READY
}

pub fn is_ready() -> bool {
    INIT.load(Relaxed) == READY
}

fn init_once() -> bool {
    config::load();
    crate::leak::init();
    let ncpu = os::possible_cpus();
    heap::init(
        config::RESERVE.load(Relaxed),
        config::DECAY_MS.load(Relaxed),
        config::RETAIN.load(Relaxed),
    ) && central::init()
        && cache::init(ncpu, rseq::init(config::USE_RSEQ.load(Relaxed)))
}

/// Registrations that may allocate (glibc's atfork and atexit lists grow with
/// malloc): done once the engine is ready, so the nested allocation just works.
fn after_init() {
    if crate::gc::init() && crate::gc::stress_enabled() {
        // GC stress counts allocations on the slow path: route every one there.
        cache::FAST.rseq_off.store(0, Relaxed);
    }
    // SAFETY: the handlers are plain functions valid for the process's life.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        if config::STATS_AT_EXIT.load(Relaxed) {
            crate::stats::keep_stderr_for_exit();
            libc::atexit(crate::stats::print_at_exit);
        }
        // Registered after (so run before) the statistics: the report's last
        // collection then shows in them.
        if crate::leak::tracking() {
            libc::atexit(crate::leak::at_exit);
        }
    }
}

/// Before fork: take every allocator lock, in lock order, so the child inherits
/// them free and consistent.
extern "C" fn fork_prepare() {
    guard::enter_for_fork();
    crate::gc::lock_for_fork();
    crate::leak::stacks::lock_for_fork();
    cache::lock_for_fork();
    central::lock_for_fork();
    heap::lock_for_fork();
    meta::lock_for_fork();
    crate::sys::owned::lock_for_fork();
}

extern "C" fn fork_parent() {
    // SAFETY: fork_prepare took these locks in this thread.
    unsafe {
        release_fork_locks();
        crate::gc::unlock_after_fork(false);
    }
    guard::leave_after_fork();
}

extern "C" fn fork_child() {
    // SAFETY: the child's only thread inherited the locks fork_prepare took.
    unsafe {
        release_fork_locks();
        crate::gc::unlock_after_fork(true);
    }
    cache::release_freed_tiny_blocks_after_fork();
    central::repair_remote_after_fork();
    central::forget_waiters_after_fork();
    guard::leave_after_fork();
}

unsafe fn release_fork_locks() {
    // SAFETY: forwarded from the callers.
    unsafe {
        crate::sys::owned::unlock_after_fork();
        meta::unlock_after_fork();
        heap::unlock_after_fork();
        central::unlock_after_fork();
        cache::unlock_after_fork();
        crate::leak::stacks::unlock_after_fork();
    }
}

// ---------------------------------------------------------------------------
// Allocation.

/// Allocates a slot of span class `sc` (state byte set). Null when out of memory.
#[inline(always)]
pub fn alloc_sc(sc: usize) -> *mut u8 {
    let p = cache::pop(sc);
    if p != 0 {
        return p as *mut u8;
    }
    alloc_sc_slow(sc)
}

#[cold]
#[inline(never)]
fn alloc_sc_slow(sc: usize) -> *mut u8 {
    if !ensure_init() {
        return ptr::null_mut();
    }
    crate::gc::check_allocation_allowed();
    let p = {
        let _g = guard::enter();
        cache::pop_slow(sc) as *mut u8
    };
    crate::gc::after_slow_alloc(p);
    p
}

/// Allocates a pointer-free object of `size` < 16 bytes from the CPU's tiny block.
#[inline(always)]
pub fn alloc_tiny(size: usize, align: usize) -> *mut u8 {
    let p = cache::tiny_alloc(size, align);
    if p != 0 {
        return p as *mut u8;
    }
    alloc_tiny_slow(size, align)
}

#[cold]
#[inline(never)]
fn alloc_tiny_slow(size: usize, align: usize) -> *mut u8 {
    if !ensure_init() {
        return ptr::null_mut();
    }
    crate::gc::check_allocation_allowed();
    let p = {
        let _g = guard::enter();
        cache::tiny_alloc_slow(size, align) as *mut u8
    };
    crate::gc::after_slow_alloc(p);
    p
}

/// Large-object statistics (the slow path keeps exact counts).
pub static LARGE_ALLOCS: AtomicU64 = AtomicU64::new(0);
pub static LARGE_ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);
pub static LARGE_FREES: AtomicU64 = AtomicU64::new(0);
pub static LARGE_FREE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Allocates an object in a span of its own, aligned to `align`, zeroed if
/// `zero`. Null when the size cannot be served.
#[cold]
pub fn alloc_large(size: usize, align: usize, noscan: bool, zero: bool) -> *mut u8 {
    if !ensure_init() {
        return ptr::null_mut();
    }
    crate::gc::check_allocation_allowed();
    let p = alloc_large_inner(size, align, noscan, zero);
    crate::gc::after_slow_alloc(p);
    p
}

fn alloc_large_inner(size: usize, align: usize, noscan: bool, zero: bool) -> *mut u8 {
    let Some(rounded) = size.max(1).checked_add(PAGE_SIZE - 1) else {
        return ptr::null_mut();
    };
    let npages = rounded / PAGE_SIZE;
    if npages == 0 || npages > heap::range().1 / PAGE_SIZE {
        return ptr::null_mut();
    }
    let _g = guard::enter();
    crate::gc::reclaim(npages, 0);
    let (s, needs_zero) = heap::alloc_span(npages, align.max(PAGE_SIZE), |s| {
        s.init_large(noscan);
        true
    });
    if s.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: s is a fresh span only this thread knows.
    let base = unsafe { (*s).base };
    if zero && needs_zero {
        // SAFETY: the span's pages are committed and ours.
        unsafe { ptr::write_bytes(base as *mut u8, 0, size) };
    }
    LARGE_ALLOCS.fetch_add(1, Relaxed);
    LARGE_ALLOC_BYTES.fetch_add((npages * PAGE_SIZE) as u64, Relaxed);
    base as *mut u8
}

/// The span class for a Rust layout, or None for a large object. Rust layouts
/// with alignment below 8 hold no pointers (a pointer needs alignment 8), so
/// they go to noscan spans unless MAGPIE_SCAN_ALL is set.
#[inline(always)]
fn rust_noscan(align: usize) -> bool {
    align < 8 && !config::SCAN_ALL.load(Relaxed)
}

/// Allocation for a Rust `Layout`: tiny for size < 16 and align < 8, then size
/// classes, then large spans.
#[inline(always)]
pub fn alloc_rust(size: usize, align: usize, zero: bool) -> *mut u8 {
    let size = size.max(1);
    let noscan = rust_noscan(align);
    // Leakcheck gives every object a slot (and a site record) of its own.
    let p = if noscan && size < 16 && !crate::leak::tracking() {
        alloc_tiny(size, align)
    } else {
        match sizeclass::class_for(size, align) {
            Some(c) => alloc_sc(spanclass(c, noscan)),
            None => return alloc_large(size, align, noscan, zero),
        }
    };
    if zero && !p.is_null() {
        // SAFETY: p holds at least `size` bytes.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    p
}

/// The size class for a C request: glibc's alignment promise is 16 bytes for
/// requests of 16 bytes or more (max_align_t), 8 below.
#[inline(always)]
pub fn c_class(size: usize) -> Option<usize> {
    if size <= 8 {
        Some(1)
    } else if size <= MAX_SMALL {
        Some(sizeclass::class_of((size + 15) & !15))
    } else {
        None
    }
}

/// C `malloc` semantics (errno is the caller's business).
#[inline(always)]
pub fn alloc_c(size: usize) -> *mut u8 {
    match c_class(size) {
        Some(c) => alloc_sc(spanclass(c, false)),
        None => alloc_large(size, 16, false, false),
    }
}

/// [`alloc_c`]'s fast path only: a slot from this CPU's cache, or null (a
/// large size, an empty cache, no rseq); then call [`alloc_c`].
#[inline(always)]
pub fn alloc_c_cached(size: usize) -> *mut u8 {
    match c_class(size) {
        Some(c) => cache::pop(spanclass(c, false)) as *mut u8,
        None => ptr::null_mut(),
    }
}

/// C allocation with alignment (posix_memalign and friends): `align` is a power of two.
pub fn alloc_c_aligned(size: usize, align: usize) -> *mut u8 {
    if align <= 8 {
        return alloc_c(size);
    }
    match sizeclass::class_for(size, align) {
        Some(c) => alloc_sc(spanclass(c, false)),
        None => alloc_large(size, align, false, false),
    }
}

// ---------------------------------------------------------------------------
// Free.

/// What a pointer is, as far as the heap is concerned.
pub enum Owner {
    /// A slot of a small span, at its start.
    Small(&'static span::Span, usize),
    /// A sub-object of a tiny block.
    Tiny(&'static span::Span, usize),
    /// A large object's start.
    Large(&'static span::Span),
}

/// Finds what `p` is, aborting with a message naming `p` on a pointer that is
/// not the start of an object magpie handed out (`what` names the operation).
#[inline(always)]
pub fn owner_of(p: usize, what: Op) -> Owner {
    let s = heap::span_of(p);
    if s.is_null() {
        if heap::is_committed(p) {
            bad_pointer(p, what, "memory that is not allocated (a double free?)");
        }
        bad_pointer(p, what, "a pointer magpie never returned");
    }
    // SAFETY: the page map is exact: span_of returns live, in-use span records.
    let sp: &'static span::Span = unsafe { &*s };
    let i = sp.slot_of(p);
    match sp.state.load(Relaxed) {
        span::SMALL => {
            if sp.slot_addr(i) != p || i >= sp.nelems as usize {
                bad_pointer(p, what, "an interior pointer");
            }
            Owner::Small(sp, i)
        }
        span::TINY => {
            if i >= sp.nelems as usize {
                bad_pointer(p, what, "a pointer magpie never returned");
            }
            Owner::Tiny(sp, i)
        }
        _ => {
            if p != sp.base {
                bad_pointer(p, what, "an interior pointer");
            }
            Owner::Large(sp)
        }
    }
}

#[derive(Clone, Copy)]
pub enum Op {
    Free,
    Realloc,
    UsableSize,
}

#[cold]
#[inline(never)]
fn bad_pointer(p: usize, what: Op, kind: &str) -> ! {
    let mut b = crate::sys::fatal::StackBuf::<128>::new();
    let op = match what {
        Op::Free => "free",
        Op::Realloc => "realloc",
        Op::UsableSize => "malloc_usable_size",
    };
    let _ = core::fmt::Write::write_fmt(&mut b, format_args!("{op}() of {kind}:"));
    fatal(
        core::str::from_utf8(b.as_bytes()).unwrap_or("invalid pointer:"),
        Some(p),
    )
}

/// Frees `p` (not null). Aborts on a double free, a foreign pointer or an
/// interior pointer, naming the address.
///
/// The fast path is the common case only, a valid free of a small slot with
/// leakcheck off, and calls nothing but the tail call of a cache miss, so it
/// needs no stack frame; everything else (tiny and large objects, bad
/// pointers, leakcheck) starts over in [`free_other`].
#[inline(always)]
pub fn free(p: *mut u8) {
    let p = p as usize;
    let s = heap::span_of(p);
    if !s.is_null() {
        // SAFETY: the page map is exact: span_of returns live, in-use span records.
        let sp: &'static span::Span = unsafe { &*s };
        if sp.state.load(Relaxed) == span::SMALL {
            let i = sp.slot_of(p);
            if sp.slot_addr(i) == p && i < sp.nelems as usize {
                let st = sp.slot_state(i);
                if span::is_allocated(st.load(Relaxed)) && !crate::leak::tracking() {
                    st.store(span::SLOT_FREE, Relaxed);
                    let e = Entry {
                        ptr: p,
                        state: st as *const AtomicU8 as usize,
                    };
                    if !cache::push(sp.spanclass as usize, e, sp.owner.load(Relaxed)) {
                        // Only p is kept across the push: with the span and
                        // slot recomputed on the slow path, the fast path
                        // needs no callee-saved register (no stack frame).
                        free_slow_at(p);
                    }
                    return;
                }
            }
        }
    }
    free_other(p)
}

/// Every free but the fast path's: tiny and large objects, leakcheck's
/// bookkeeping, and the faults (which abort naming `p`). `extern "C"` (it
/// cannot unwind), so the fast path reaches it with a jump, not a call.
#[cold]
#[inline(never)]
extern "C" fn free_other(p: usize) {
    match owner_of(p, Op::Free) {
        Owner::Small(s, i) => {
            let st = s.slot_state(i);
            if !span::is_allocated(st.load(Relaxed)) {
                double_free(p);
            }
            if crate::leak::tracking() {
                crate::leak::on_free(s, i);
            }
            st.store(span::SLOT_FREE, Relaxed);
            let e = Entry {
                ptr: p,
                state: st as *const AtomicU8 as usize,
            };
            let sc = s.spanclass as usize;
            if !cache::push(sc, e, s.owner.load(Relaxed)) {
                free_slow(s, i, e);
            }
        }
        Owner::Tiny(s, i) => {
            let _g = guard::enter();
            cache::tiny_free(s, i, p);
        }
        Owner::Large(s) => {
            if crate::leak::tracking() {
                crate::leak::on_free(s, 0);
            }
            free_large(s)
        }
    }
}

#[cold]
#[inline(never)]
fn double_free(p: usize) -> ! {
    fatal("double free (or free of memory not allocated) at", Some(p))
}

/// [`free_slow`] for the fast path's slot `p`, whose state byte it already
/// cleared (the span cannot be released meanwhile: the slot is on no list,
/// so the span is not all free). `extern "C"` as [`free_other`] is.
#[cold]
#[inline(never)]
extern "C" fn free_slow_at(p: usize) {
    // SAFETY: p is the start of a slot of an in-use small span (checked by
    // the fast path, and the span stays in use, see above).
    let sp = unsafe { &*heap::span_of(p) };
    let i = sp.slot_of(p);
    let e = Entry {
        ptr: p,
        state: sp.slot_state(i) as *const AtomicU8 as usize,
    };
    free_slow(sp, i, e)
}

#[cold]
#[inline(never)]
fn free_slow(s: &span::Span, i: usize, e: Entry) {
    let _g = guard::enter();
    cache::push_slow(s, i, e);
}

#[cold]
fn free_large(s: &'static span::Span) {
    let _g = guard::enter();
    // The state is checked and cleared under the heap lock, so a fork never
    // sees the object freed but its span still in use.
    let bytes = s.npages * PAGE_SIZE;
    // SAFETY: s is a large span; free_large_span frees it only if allocated.
    if !unsafe { heap::free_large_span(s as *const span::Span as *mut span::Span) } {
        double_free(s.base);
    }
    LARGE_FREES.fetch_add(1, Relaxed);
    LARGE_FREE_BYTES.fetch_add(bytes as u64, Relaxed);
}

/// Bytes usable at `p` (not null).
pub fn usable_size(p: *mut u8) -> usize {
    let p = p as usize;
    match owner_of(p, Op::UsableSize) {
        Owner::Small(s, _) => s.elemsize as usize,
        // A tiny object's own size is not recorded; what is certain is that it
        // does not extend past its 16-byte block.
        Owner::Tiny(_, _) => 16 - (p & 15),
        Owner::Large(s) => s.npages * PAGE_SIZE,
    }
}

/// Reallocation shared by the C and Rust faces: stays in place when the new
/// size fits the same class (small) or the same span (large, without wasting
/// more than half of it); else allocates with `alloc_new`, copies, frees.
/// `old_size` is the object's size when the caller knows it (Rust layouts).
pub fn realloc_with(
    p: *mut u8,
    new_size: usize,
    old_size: Option<usize>,
    same_class: impl Fn(usize) -> bool,
    alloc_new: impl Fn() -> *mut u8,
) -> *mut u8 {
    let addr = p as usize;
    let old = match owner_of(addr, Op::Realloc) {
        Owner::Small(s, i) => {
            if !span::is_allocated(s.slot_state(i).load(Relaxed)) {
                fatal("realloc() of freed memory at", Some(addr));
            }
            if same_class(s.class as usize) {
                return p;
            }
            s.elemsize as usize
        }
        Owner::Tiny(s, i) => {
            if !span::is_allocated(s.slot_state(i).load(Relaxed)) {
                fatal("realloc() of freed memory at", Some(addr));
            }
            // A tiny object can shrink in place; its own size is known only
            // to the caller, and never exceeds the rest of its block.
            let old = old_size.unwrap_or(16 - (addr & 15)).min(16 - (addr & 15));
            if new_size <= old {
                return p;
            }
            old
        }
        Owner::Large(s) => {
            if !span::is_allocated(s.large_alloc.load(Relaxed)) {
                fatal("realloc() of freed memory at", Some(addr));
            }
            let cap = s.npages * PAGE_SIZE;
            if new_size > MAX_SMALL
                && new_size <= cap
                && new_size.div_ceil(PAGE_SIZE) * 2 > s.npages
            {
                return p;
            }
            if new_size > cap {
                // Grow into the free pages after the object, if there are enough.
                let _g = guard::enter();
                let want = new_size.div_ceil(PAGE_SIZE);
                // SAFETY: s is the caller's live large object.
                if unsafe { heap::grow_in_place(s as *const span::Span as *mut span::Span, want) } {
                    LARGE_ALLOC_BYTES.fetch_add(((want * PAGE_SIZE) - cap) as u64, Relaxed);
                    return p;
                }
            }
            cap
        }
    };
    let old = old_size.map_or(old, |o| o.min(old));
    let q = alloc_new();
    if q.is_null() {
        return q;
    }
    // SAFETY: both blocks hold at least min(old, new_size) bytes and are distinct.
    unsafe { ptr::copy_nonoverlapping(p, q, old.min(new_size)) };
    free(p);
    q
}

/// Returns cached and free memory to the OS where possible: per-CPU caches
/// and transfer batches go back to their spans; every free span of the page
/// heap and the free pages of partly used spans (unless a collection cycle
/// runs on for a second) go to the OS (glibc's malloc_trim likewise releases
/// the free pages inside its arenas). Returns bytes released.
pub fn trim() -> usize {
    if !is_ready() {
        return 0;
    }
    let released = {
        let _g = guard::enter();
        cache::drain_all_cpus();
        central::flush_transfer();
        heap::release_all()
    };
    // No mark may run while pages of partly used spans are dropped (see
    // release_free_pages): wait (a second at most) for a cycle in progress.
    // The cycle lock is taken outside the allocator: the collector stops the
    // world while holding it, and a thread inside the allocator would make
    // it wait.
    let partial = crate::gc::when_no_cycle(1_000_000_000, || {
        let _g = guard::enter();
        // SAFETY: no cycle runs inside when_no_cycle.
        unsafe { central::release_free_pages() }
    });
    released + partial.unwrap_or(0)
}

//! Per-CPU caches: per span class, a stack of free slots (address and state
//! byte) that the owning CPU pops on allocation and pushes on free, plus the
//! CPU's current tiny block.
//!
//! Fast path: an rseq critical section on the cache of the CPU the thread runs
//! on ([`super::rseq_ops`]), no lock and no atomic read-modify-write. Where
//! rseq is unavailable (valgrind, seccomp, an unregistered thread) a second set
//! of caches is used, one per CPU, each behind a `spin` lock: the two sets are
//! never mixed, because a locked operation cannot exclude an rseq section.
//!
//! Slow paths move a batch at a time between the cache and the central list:
//! refill when a pop finds the stack empty, drain when a push finds it full.
//! They run with the thread's "inside the allocator" marker set (see
//! `front::guard`), so a collector stopping the world never finds a cache half-changed.

use core::mem::offset_of;
use core::ptr;
use core::sync::atomic::{AtomicIsize, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use spin::Mutex;

use super::central::{self, MAX_BATCH, NUM_SPANCLASSES, TINY_SC};
use super::heap;
use super::rseq_ops::{self, BatchArgs};
use super::span::{self, Entry};
use crate::sys::{fatal::fatal, os, rseq};

const fn begin_of(sc: usize) -> usize {
    let mut i = 0;
    let mut sum = 0;
    while i < sc {
        sum += central::cache_cap(i);
        i += 1;
    }
    sum
}

/// Slots of all span classes in one CPU's cache.
pub const TOTAL_ENTRIES: usize = begin_of(NUM_SPANCLASSES);
static_assertions::const_assert!(TOTAL_ENTRIES < 65536);

/// Per-CPU statistics, updated with relaxed loads and stores (not
/// read-modify-write): an update can rarely be lost when a thread is preempted
/// between the two, which statistics tolerate.
#[repr(C)]
pub struct CpuStats {
    pub allocs: [AtomicU64; NUM_SPANCLASSES],
    pub frees: [AtomicU64; NUM_SPANCLASSES],
    pub tiny_bytes: AtomicU64,
    /// Frees of slots owned by another CPU (see `central::free_remote`).
    pub remote_frees: AtomicU64,
}

#[repr(C, align(64))]
pub struct CpuCache {
    pub hdr: [AtomicU64; NUM_SPANCLASSES],
    pub tiny: AtomicU64,
    pub lock: Mutex<()>,
    pub stats: CpuStats,
    pub entries: [Entry; TOTAL_ENTRIES],
}

pub const ENTRIES_OFF: usize = offset_of!(CpuCache, entries);
/// Where the fast paths count, indexed by the header offset (`sc * 8`).
pub const ALLOCS_OFF: usize = offset_of!(CpuCache, stats) + offset_of!(CpuStats, allocs);
pub const FREES_OFF: usize = offset_of!(CpuCache, stats) + offset_of!(CpuStats, frees);
pub const TINY_OFF: usize = offset_of!(CpuCache, tiny);
pub const SHIFT: usize = core::mem::size_of::<CpuCache>()
    .next_power_of_two()
    .trailing_zeros() as usize;
const STRIDE: usize = 1 << SHIFT;

/// What the fast paths read: kept together on one cache line.
#[repr(C, align(64))]
pub struct Fast {
    /// Offset of the rseq area from the thread pointer; 0 when rseq is unused.
    pub rseq_off: AtomicIsize,
    /// Base of the rseq caches (`ncpu` of them), then the locked ones.
    pub caches: AtomicUsize,
    pub ncpu: AtomicUsize,
}

pub static FAST: Fast = Fast {
    rseq_off: AtomicIsize::new(0),
    caches: AtomicUsize::new(0),
    ncpu: AtomicUsize::new(0),
};

const fn hdr_word(current: usize, begin: usize, end: usize) -> u64 {
    (current | begin << 16 | end << 32) as u64
}

#[inline(always)]
fn hdr_current(h: u64) -> usize {
    (h & 0xffff) as usize
}
#[inline(always)]
fn hdr_begin(h: u64) -> usize {
    ((h >> 16) & 0xffff) as usize
}
#[inline(always)]
fn hdr_end(h: u64) -> usize {
    ((h >> 32) & 0xffff) as usize
}

/// Maps and initialises `2 * ncpu` caches (rseq set, then locked set).
pub fn init(ncpu: usize, rseq_off: Option<isize>) -> bool {
    let base = os::map_owned(STRIDE * 2 * ncpu);
    if base.is_null() {
        return false;
    }
    for i in 0..2 * ncpu {
        // SAFETY: each cache is a zeroed STRIDE-sized slot of the mapping; an
        // all-zero CpuCache is valid except the lock, written here first.
        unsafe {
            let c = base.add(i * STRIDE) as *mut CpuCache;
            ptr::write(ptr::addr_of_mut!((*c).lock), Mutex::new(()));
            for sc in 0..NUM_SPANCLASSES {
                let b = begin_of(sc);
                (*c).hdr[sc].store(hdr_word(b, b, b + central::cache_cap(sc)), Relaxed);
            }
        }
    }
    FAST.caches.store(base as usize, Relaxed);
    FAST.ncpu.store(ncpu, Relaxed);
    FAST.rseq_off.store(rseq_off.unwrap_or(0), Relaxed);
    true
}

/// The `i`-th cache (0..2*ncpu).
pub fn cache_at(i: usize) -> &'static CpuCache {
    // SAFETY: i < 2 * ncpu (callers iterate that range); the caches live forever.
    unsafe { &*((FAST.caches.load(Relaxed) + i * STRIDE) as *const CpuCache) }
}

pub fn ncaches() -> usize {
    2 * FAST.ncpu.load(Relaxed)
}

/// Calls `f(span class, allocations, frees)` with every CPU's counters of
/// small objects, one call per cache and span class (relaxed: approximate
/// while threads run).
pub fn for_each_op_count(mut f: impl FnMut(usize, u64, u64)) {
    for i in 0..ncaches() {
        let st = &cache_at(i).stats;
        for sc in 2..central::NUM_SPANCLASSES {
            f(sc, st.allocs[sc].load(Relaxed), st.frees[sc].load(Relaxed));
        }
    }
}

/// Frees that went to their span's owner as remote frees, over all CPUs.
pub fn remote_frees() -> u64 {
    (0..ncaches())
        .map(|i| cache_at(i).stats.remote_frees.load(Relaxed))
        .sum()
}

/// The rseq cache of the CPU the thread runs on now (statistics only: the
/// thread may migrate at any moment).
fn this_cpu_cache(off: isize) -> &'static CpuCache {
    let n = FAST.ncpu.load(Relaxed);
    cache_at(rseq::cpu_id_at(off).max(0) as usize % n)
}

/// The locked cache the calling thread should use.
fn locked_cache() -> &'static CpuCache {
    let n = FAST.ncpu.load(Relaxed);
    // SAFETY: sched_getcpu has no preconditions (vDSO or syscall).
    let cpu = unsafe { libc::sched_getcpu() }.max(0) as usize % n;
    cache_at(n + cpu)
}

// ---------------------------------------------------------------------------
// Fast paths.

/// Pops a free slot of span class `sc` and marks it allocated. 0 on a miss.
#[inline(always)]
pub fn pop(sc: usize) -> usize {
    let off = FAST.rseq_off.load(Relaxed);
    if off == 0 {
        return 0;
    }
    // SAFETY: off is the registered rseq offset; caches and ncpu were set
    // with it; sc < NUM_SPANCLASSES (span classes come from the class table),
    // the length of the header and statistics arrays.
    unsafe { rseq_ops::pop(off, sc * 8) }
}

/// Pushes a freed slot of a span owned by `owner` (see `span::Span::owner`).
/// False on a miss (another CPU's slot, cache full, or no rseq).
#[inline(always)]
pub fn push(sc: usize, e: Entry, owner: u8) -> bool {
    let off = FAST.rseq_off.load(Relaxed);
    if off == 0 {
        return false;
    }
    // SAFETY: as in pop.
    unsafe { rseq_ops::push(off, sc * 8, e.ptr, e.state, owner) }
}

/// Carves a tiny object. 0 on a miss.
#[inline(always)]
pub fn tiny_alloc(size: usize, align: usize) -> usize {
    let off = FAST.rseq_off.load(Relaxed);
    if off == 0 {
        return 0;
    }
    // SAFETY: as in pop; size < 16 and align <= 8 by the caller's routing.
    unsafe { rseq_ops::tiny_alloc(off, size, tiny_amask(size, align)) }
}

/// Go's tiny alignment: 8 if the size is a multiple of 8, else 4, 2, 1, and
/// never less than the requested alignment.
#[inline(always)]
pub fn tiny_amask(size: usize, align: usize) -> usize {
    let a = if size & 7 == 0 {
        8
    } else if size & 3 == 0 {
        4
    } else if size & 1 == 0 {
        2
    } else {
        1
    };
    a.max(align) - 1
}

#[inline(always)]
fn bump(c: &AtomicU64) {
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

// ---------------------------------------------------------------------------
// Where the calling thread's cache operations go when the fast path missed.

enum Route {
    /// rseq works for this thread: use the rseq cache of its CPU.
    Rseq(isize),
    /// Use the locked cache of its CPU.
    Locked,
}

fn route() -> Route {
    let off = FAST.rseq_off.load(Relaxed);
    if off != 0 && rseq::ensure_registered(off) {
        Route::Rseq(off)
    } else {
        Route::Locked
    }
}

fn args(sc: usize, buf: &mut [Entry]) -> BatchArgs {
    BatchArgs {
        hdr_off: sc * 8,
        n: buf.len(),
        buf: buf.as_mut_ptr() as *mut u8,
    }
}

/// Locked operations on one cache (also used with the world stopped).
impl CpuCache {
    fn pop_locked(&self, sc: usize) -> Option<Entry> {
        let h = self.hdr[sc].load(Relaxed);
        let cur = hdr_current(h);
        if cur == hdr_begin(h) {
            return None;
        }
        let e = self.entries[cur - 1];
        self.hdr[sc].store(h - 1, Relaxed);
        Some(e)
    }

    fn push_locked(&self, sc: usize, e: Entry) -> bool {
        let h = self.hdr[sc].load(Relaxed);
        let cur = hdr_current(h);
        if cur == hdr_end(h) {
            return false;
        }
        // SAFETY: entries is only written under the cache lock (or with the
        // world stopped); cur < end <= TOTAL_ENTRIES.
        unsafe { ptr::write(ptr::addr_of!(self.entries[cur]) as *mut Entry, e) };
        self.hdr[sc].store(h + 1, Relaxed);
        true
    }

    /// Moves up to `out.len()` entries from the top of the stack into `out`.
    fn pop_many_locked(&self, sc: usize, out: &mut [Entry]) -> usize {
        let h = self.hdr[sc].load(Relaxed);
        let cur = hdr_current(h);
        let k = (cur - hdr_begin(h)).min(out.len());
        out[..k].copy_from_slice(&self.entries[cur - k..cur]);
        self.hdr[sc].store(h - k as u64, Relaxed);
        k
    }

    fn push_many_locked(&self, sc: usize, src: &[Entry]) -> usize {
        let h = self.hdr[sc].load(Relaxed);
        let cur = hdr_current(h);
        let k = (hdr_end(h) - cur).min(src.len());
        for (i, e) in src[..k].iter().enumerate() {
            // SAFETY: as in push_locked.
            unsafe { ptr::write(ptr::addr_of!(self.entries[cur + i]) as *mut Entry, *e) };
        }
        self.hdr[sc].store(h + k as u64, Relaxed);
        k
    }

    /// The cached slots of span class `sc` (quiescent callers only).
    pub fn cached(&self, sc: usize) -> &[Entry] {
        let h = self.hdr[sc].load(Relaxed);
        &self.entries[hdr_begin(h)..hdr_current(h)]
    }

    /// Returns every cached slot to the central lists and retires the tiny
    /// block. Used by trim and by the collector's mark termination, with no
    /// thread able to run a section on this cache (world stopped, or lock held
    /// for the locked set).
    pub fn flush(&self) {
        let mut buf = [Entry::default(); MAX_BATCH];
        for sc in 2..NUM_SPANCLASSES {
            loop {
                let k = self.pop_many_locked(sc, &mut buf);
                if k == 0 {
                    break;
                }
                central::drain(sc, &buf[..k]);
            }
        }
        let w = self.tiny.swap(0, Relaxed);
        if w != 0 {
            retire_tiny(w as usize);
        }
    }
}

/// Refill: the cache of span class `sc` was empty. Returns an allocated slot
/// (state byte set), or 0 when memory is exhausted.
#[cold]
pub fn pop_slow(sc: usize) -> usize {
    let want = central::refill_batch(sc);
    let mut buf = [Entry::default(); central::MAX_REFILL];
    match route() {
        Route::Rseq(off) => {
            // Another thread may have refilled this CPU meanwhile.
            let p = pop(sc);
            if p != 0 {
                return p;
            }
            let n = central::refill(sc, &mut buf[..want], rseq::cpu_id_at(off) as u8);
            if n == 0 {
                return 0;
            }
            let first = buf[n - 1];
            let rest = &mut buf[..n - 1];
            if !rest.is_empty() {
                let a = args(sc, rest);
                // SAFETY: off is registered for this thread; a describes `rest`.
                let k = unsafe { rseq_ops::push_batch(off, &a) };
                central::drain(sc, &rest[k..]);
            }
            bump(&this_cpu_cache(off).stats.allocs[sc]);
            mark_allocated(first)
        }
        Route::Locked => {
            let c = locked_cache();
            {
                let _g = c.lock.lock();
                if let Some(e) = c.pop_locked(sc) {
                    bump(&c.stats.allocs[sc]);
                    return mark_allocated(e);
                }
            }
            // SAFETY: sched_getcpu has no preconditions.
            let cpu = unsafe { libc::sched_getcpu() };
            let n = central::refill(sc, &mut buf[..want], cpu as u8);
            if n == 0 {
                return 0;
            }
            let first = buf[n - 1];
            let k = {
                let _g = c.lock.lock();
                bump(&c.stats.allocs[sc]);
                c.push_many_locked(sc, &buf[..n - 1])
            };
            central::drain(sc, &buf[k..n - 1]);
            mark_allocated(first)
        }
    }
}

fn mark_allocated(e: Entry) -> usize {
    // SAFETY: an entry's state field is its slot's state byte.
    unsafe { (*(e.state as *const AtomicU8)).store(crate::gc::alloc_tag(), Relaxed) };
    e.ptr
}

/// The free fast path missed on `e`, slot `i` of small span `s` (its state
/// byte already clear): the slot is another CPU's (a remote free), or the
/// cache is full (drain a batch), or the thread has no rseq.
#[cold]
pub fn push_slow(s: &span::Span, i: usize, e: Entry) {
    let sc = s.spanclass as usize;
    let mut buf = [Entry::default(); MAX_BATCH];
    let want = central::batch(sc);
    match route() {
        Route::Rseq(off) => {
            let cpu = rseq::cpu_id_at(off);
            if central::routes_remote(sc) && cpu >= 0 && cpu as u8 != s.owner.load(Relaxed) {
                let st = &this_cpu_cache(off).stats;
                bump(&st.frees[sc]);
                bump(&st.remote_frees);
                central::free_remote(s, i);
                return;
            }
            if push(sc, e, cpu as u8) {
                return;
            }
            let a = args(sc, &mut buf[..want]);
            // SAFETY: off is registered for this thread; a describes buf.
            let k = unsafe { rseq_ops::pop_batch(off, &a) };
            central::drain(sc, &buf[..k]);
            if !push(sc, e, cpu as u8) {
                bump(&this_cpu_cache(off).stats.frees[sc]);
                central::drain(sc, &[e]);
            }
        }
        Route::Locked => {
            let c = locked_cache();
            let k = {
                let _g = c.lock.lock();
                bump(&c.stats.frees[sc]);
                if c.push_locked(sc, e) {
                    return;
                }
                let k = c.pop_many_locked(sc, &mut buf[..want]);
                if !c.push_locked(sc, e) {
                    buf[k] = e;
                    k + 1
                } else {
                    k
                }
            };
            central::drain(sc, &buf[..k]);
        }
    }
}

// ---------------------------------------------------------------------------
// Tiny blocks.

// A CPU's tiny word packs its current block, the offsets it carved objects at,
// and the next free offset: `block >> 4 << 21 | carved << 5 | offset`
// (block addresses are below 2^47 and 16-byte aligned; offset is 0..=16).

/// The tiny word of `block` with one object of `size` bytes carved at offset 0.
fn tiny_word(block: usize, size: usize) -> usize {
    (block >> 4) << 21 | 1 << 5 | size
}

fn tiny_word_block(w: usize) -> usize {
    (w >> 21) << 4
}

fn tiny_word_carved(w: usize) -> u32 {
    ((w >> 5) & 0xffff) as u32
}

/// Allocates a new tiny block, carves the first object of `size` bytes from it
/// and, when it leaves more room than the current block (Go's rule), makes it
/// the CPU's current block, retiring the previous one.
#[cold]
pub fn tiny_alloc_slow(size: usize, align: usize) -> usize {
    match route() {
        Route::Rseq(off) => {
            let p = tiny_alloc(size, align);
            if p != 0 {
                return p;
            }
            // The new block replaces the current one only if it leaves more
            // room; else it holds just this object.
            let cur = this_cpu_cache(off).tiny.load(Relaxed) as usize;
            let replace = cur == 0 || size < (cur & 31);
            let blk = new_tiny_block(replace);
            if blk == 0 || !replace {
                return blk;
            }
            let w = tiny_word(blk, size);
            // SAFETY: off is registered for this thread.
            let (done, old) = unsafe { rseq_ops::tiny_swap(off, w) };
            if !done {
                // The thread lost its CPU number: the block holds this object alone.
                retire_tiny(w);
                return blk;
            }
            if old != 0 {
                retire_tiny(old);
            }
            blk
        }
        Route::Locked => {
            let c = locked_cache();
            let amask = tiny_amask(size, align);
            {
                let _g = c.lock.lock();
                let w = c.tiny.load(Relaxed) as usize;
                if w != 0 {
                    let off = ((w & 31) + amask) & !amask;
                    if off + size <= 16 {
                        c.tiny
                            .store(((w & !31) | (off + size) | 1 << (off + 5)) as u64, Relaxed);
                        return tiny_word_block(w) + off;
                    }
                }
            }
            let cur = c.tiny.load(Relaxed) as usize;
            let replace = cur == 0 || size < (cur & 31);
            let blk = new_tiny_block(replace);
            if blk == 0 || !replace {
                return blk;
            }
            let old = {
                let _g = c.lock.lock();
                c.tiny.swap(tiny_word(blk, size) as u64, Relaxed) as usize
            };
            if old != 0 {
                retire_tiny(old);
            }
            blk
        }
    }
}

/// A fresh 16-byte block from the tiny span class, allocated. A block that
/// becomes a CPU's current block (`current`) publishes its carved offsets only
/// when retired; one that holds a single object publishes it at once.
fn new_tiny_block(current: bool) -> usize {
    let mut b = pop(TINY_SC);
    if b == 0 {
        b = pop_slow(TINY_SC);
        if b == 0 {
            return 0;
        }
    }
    let s = heap::span_of(b);
    // SAFETY: b was just allocated from a tiny span.
    unsafe {
        let i = (*s).slot_of(b);
        (*s).tiny_state(i)
            .store(if current { 0 } else { 1 }, Relaxed);
    }
    b
}

/// A CPU lets go of its tiny block (word `w`): publish the offsets it carved;
/// free the block if every object was already freed.
pub fn retire_tiny(w: usize) {
    let blk = tiny_word_block(w);
    let carved = tiny_word_carved(w);
    let s = heap::span_of(blk);
    if s.is_null() {
        fatal("internal error: tiny block outside the heap", Some(blk));
    }
    // SAFETY: blk is an allocated block of tiny span s.
    let sp = unsafe { &*s };
    let i = sp.slot_of(blk);
    let v = sp.tiny_state(i).fetch_or(carved, Relaxed);
    let freed = v >> 16;
    if v & 0xffff != 0 {
        fatal("internal error: tiny block retired twice", Some(blk));
    }
    if freed & !carved != 0 {
        // A free of an offset that no object starts at, made while the block
        // was still being carved: report the first such address.
        let b = (freed & !carved).trailing_zeros() as usize;
        fatal("free() of an interior pointer:", Some(blk + b));
    }
    if carved & !freed == 0 {
        free_tiny_block(sp, i);
    }
}

/// Frees the tiny object at `p` in block `i` of tiny span `s`: marks its
/// offset freed (a second free of it is caught here) and frees the block once
/// every carved object is freed. Whichever of the last free and the retire
/// comes second sees the complete picture and frees the block, exactly once.
pub fn tiny_free(s: &span::Span, i: usize, p: usize) {
    if !span::is_allocated(s.slot_state(i).load(Relaxed)) {
        fatal("double free (or free of memory not allocated) at", Some(p));
    }
    let b = p & 15;
    let bit = 1u32 << (16 + b);
    let v = s.tiny_state(i).fetch_or(bit, Relaxed);
    if v & bit != 0 {
        fatal("double free (or free of memory not allocated) at", Some(p));
    }
    let carved = v & 0xffff;
    if carved != 0 {
        if carved & (1 << b) == 0 {
            fatal("free() of an interior pointer:", Some(p));
        }
        if carved & !((v >> 16) | 1 << b) == 0 {
            free_tiny_block(s, i);
        }
    }
}

fn free_tiny_block(s: &span::Span, i: usize) {
    let st = s.slot_state(i);
    st.store(span::SLOT_FREE, Relaxed);
    let e = Entry {
        ptr: s.slot_addr(i),
        state: st as *const AtomicU8 as usize,
    };
    if crate::gc::phase() == crate::gc::Phase::MarkTermination {
        // The caches are being emptied: a block retired now goes straight
        // back to its span, never into a cache already flushed.
        central::drain(TINY_SC, &[e]);
        return;
    }
    if !push(TINY_SC, e, s.owner.load(Relaxed)) {
        push_slow(s, i, e);
    }
}

/// In a fork child: a parent thread may have been between marking the last
/// object of a tiny block freed and releasing the block; release such blocks
/// so the child's heap is consistent (the child runs alone).
pub fn release_freed_tiny_blocks_after_fork() {
    heap::for_each_span(|s| {
        // SAFETY: the child is single-threaded; records are live.
        let sp = unsafe { &*s };
        if sp.state.load(Relaxed) != span::TINY {
            return;
        }
        for i in 0..sp.nelems as usize {
            if !span::is_allocated(sp.slot_state(i).load(Relaxed)) {
                continue;
            }
            let v = sp.tiny_state(i).load(Relaxed);
            let carved = v & 0xffff;
            if carved != 0 && carved & !(v >> 16) == 0 {
                free_tiny_block(sp, i);
            }
        }
    });
}

/// Flushes every cache with the world stopped (the collector).
///
/// # Safety
/// No other thread may run an rseq section or hold a cache lock.
pub unsafe fn flush_all() {
    for i in 0..ncaches() {
        cache_at(i).flush();
    }
}

/// Returns the slots cached by every CPU to the central lists while other
/// threads keep running (malloc_trim): the locked caches under their locks;
/// each rseq cache by pinning the calling thread to its CPU and popping it
/// empty with the same critical sections other threads use there.
pub fn drain_all_cpus() {
    let mut buf = [Entry::default(); MAX_BATCH];
    let n = FAST.ncpu.load(Relaxed);
    for i in 0..n {
        let c = cache_at(n + i);
        for sc in 2..NUM_SPANCLASSES {
            loop {
                let k = {
                    let _g = c.lock.lock();
                    c.pop_many_locked(sc, &mut buf)
                };
                if k == 0 {
                    break;
                }
                central::drain(sc, &buf[..k]);
            }
        }
        let w = {
            let _g = c.lock.lock();
            c.tiny.swap(0, Relaxed) as usize
        };
        if w != 0 {
            retire_tiny(w);
        }
    }
    let off = FAST.rseq_off.load(Relaxed);
    if off == 0 || !rseq::ensure_registered(off) {
        return;
    }
    // SAFETY: plain syscalls on the calling thread's affinity mask, which is
    // restored before returning.
    unsafe {
        let mut saved: libc::cpu_set_t = core::mem::zeroed();
        if libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut saved) != 0 {
            return;
        }
        for cpu in 0..n.min(libc::CPU_SETSIZE as usize) {
            if !libc::CPU_ISSET(cpu, &saved) {
                continue;
            }
            let mut one: libc::cpu_set_t = core::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
                continue;
            }
            for sc in 2..NUM_SPANCLASSES {
                loop {
                    let a = args(sc, &mut buf);
                    let k = rseq_ops::pop_batch(off, &a);
                    if k == 0 {
                        break;
                    }
                    central::drain(sc, &buf[..k]);
                }
            }
            let (done, old) = rseq_ops::tiny_swap(off, 0);
            if done && old != 0 {
                retire_tiny(old);
            }
        }
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &saved);
    }
}

pub fn lock_for_fork() {
    for i in 0..ncaches() {
        core::mem::forget(cache_at(i).lock.lock());
    }
}

/// # Safety
/// Only after [`lock_for_fork`].
pub unsafe fn unlock_after_fork() {
    for i in 0..ncaches() {
        // SAFETY: the caller holds the locks leaked by lock_for_fork.
        unsafe { cache_at(i).lock.force_unlock() };
    }
}

/// Calls `f` with the address of every CPU's current tiny block (the
/// collector greys them when marking starts, as Go's gcMarkTinyAllocs does).
///
/// # Safety
/// The world must be stopped (no thread inside the allocator).
pub unsafe fn for_each_tiny_block(mut f: impl FnMut(usize)) {
    for i in 0..ncaches() {
        let w = cache_at(i).tiny.load(Relaxed) as usize;
        if w != 0 {
            f(tiny_word_block(w));
        }
    }
}

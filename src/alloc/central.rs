//! Central lists: per span class, the spans with free slots, and a transfer
//! cache of whole batches.
//!
//! Per-CPU caches refill from here and drain to here a batch at a time, so the
//! class lock is taken once per batch, never per object. A batch drained by one
//! CPU (a consumer freeing what a producer allocated) is parked whole in the
//! transfer cache and handed whole to the next CPU that refills: producer and
//! consumer exchange memory in O(1) per batch without touching span bitmaps.
//! Only when the transfer cache is empty or full do slots go back to, or come
//! out of, span bitmaps. A span whose slots are all back goes to the page heap.
//!
//! Lock order: per-CPU fallback lock, then a central lock, then the heap lock,
//! then the metadata lock. No path holds two central locks.

use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{
    AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};
use spin::Mutex;

use super::heap;
use super::sizeclass::{self, NUM_CLASSES, PAGE_SIZE};
use super::span::{self, Entry, Span, SpanList};

/// Span classes: `class << 1 | noscan` for the 68 classes, plus the tiny class.
pub const NUM_SPANCLASSES: usize = NUM_CLASSES * 2 + 1;
/// The span class of 16-byte tiny blocks (noscan, with live counts).
pub const TINY_SC: usize = NUM_CLASSES * 2;
/// The size class of tiny blocks.
pub const TINY_CLASS: usize = 2;
/// Most objects in one batch.
pub const MAX_BATCH: usize = 32;
/// Batches the transfer cache of a class holds.
const TRANSFER_SLOTS: usize = 16;

#[inline(always)]
pub const fn spanclass(class: usize, noscan: bool) -> usize {
    class << 1 | noscan as usize
}

#[inline(always)]
pub const fn class_of_sc(sc: usize) -> usize {
    if sc == TINY_SC {
        TINY_CLASS
    } else {
        sc >> 1
    }
}

#[inline(always)]
pub const fn noscan_of_sc(sc: usize) -> bool {
    sc == TINY_SC || sc & 1 == 1
}

/// Span classes below this one (objects smaller than a cache line, which
/// neighbours share) route frees on a CPU other than the span's owner to the
/// owner ([`free_remote`]). Larger objects share at most the lines at their
/// ends, which does not pay for a remote free's three atomic operations: a
/// producer/consumer pair (xmalloc) frees every object remotely.
pub const REMOTE_SC_LIMIT: usize = spanclass(sizeclass::first_class_at_least(64) as usize, false);
static_assertions::const_assert!(REMOTE_SC_LIMIT == 12);

/// `REMOTE_SC_LIMIT` as the offset of the first class header not routed,
/// which the push section compares with. `MAGPIE_DEBUG_REMOTE_ALL=1` routes
/// every class (tests: large classes' spans empty often, which exercises the
/// races between remote frees and merges).
pub static REMOTE_HDR_LIMIT: AtomicUsize = AtomicUsize::new(REMOTE_SC_LIMIT * 8);

/// True if frees of span class `sc` on a CPU other than the span's owner go
/// to the owner.
#[inline(always)]
pub fn routes_remote(sc: usize) -> bool {
    sc * 8 < REMOTE_HDR_LIMIT.load(Relaxed)
}

/// Per-CPU cache capacity of span class `sc`: about 64 KiB of objects, 2 to 512.
pub const fn cache_cap(sc: usize) -> usize {
    let size = sizeclass::TABLE.size[class_of_sc(sc)] as usize;
    if sc < 2 {
        return 0; // class 0 is unused
    }
    let n = (64 << 10) / size;
    if n < 2 {
        2
    } else if n > 512 {
        512
    } else {
        n
    }
}

/// Most entries one refill hands a per-CPU cache ([`refill_batch`]).
pub const MAX_REFILL: usize = 128;

/// Entries a per-CPU cache asks for when it runs dry: a transfer batch when
/// one is waiting, else up to four batches' worth taken from spans (at most
/// half the cache), so a thread allocating fast takes the class lock once per
/// 128 small objects rather than once per 32.
pub const fn refill_batch(sc: usize) -> usize {
    let b = batch(sc) * 4;
    let half = cache_cap(sc) / 2;
    let b = if b < half { b } else { half };
    let b = if b < MAX_REFILL { b } else { MAX_REFILL };
    if b < batch(sc) {
        batch(sc)
    } else {
        b
    }
}

/// Objects moved per drain of span class `sc`, and per transfer batch.
pub const fn batch(sc: usize) -> usize {
    let b = sizeclass::batch_of_class(class_of_sc(sc));
    let half = cache_cap(sc) / 2;
    let b = if b < half { b } else { half };
    if b < 1 {
        1
    } else {
        b
    }
}

struct Inner {
    partial: SpanList,
    /// Full batches parked between CPUs.
    nbatches: usize,
    batches: [[Entry; MAX_BATCH]; TRANSFER_SLOTS],
    /// Spans of this class in use, for statistics.
    nspans: usize,
    /// Refills by a CPU that left other CPUs' remote frees queued, since the
    /// last merge of the whole list ([`merge_remote`]).
    remote_skips: u32,
}

#[repr(align(64))]
struct Central {
    lock: Mutex<()>,
    /// Threads spinning for `lock` (see [`yield_to_waiters`]).
    waiters: AtomicU32,
    /// Spans with remotely freed slots ([`free_remote`]), linked through
    /// their `RemoteHeader`s: pushed without the lock, taken whole under it.
    remote: AtomicPtr<Span>,
    inner: UnsafeCell<*mut Inner>,
}

// SAFETY: `inner` is only dereferenced with `lock` held (or during
// single-threaded init).
unsafe impl Sync for Central {}

static CENTRAL: [Central; NUM_SPANCLASSES] = [const {
    Central {
        lock: Mutex::new(()),
        waiters: AtomicU32::new(0),
        remote: AtomicPtr::new(ptr::null_mut()),
        inner: UnsafeCell::new(ptr::null_mut()),
    }
}; NUM_SPANCLASSES];

/// Spans obtained from and returned to the page heap, for statistics.
pub static SPANS_CREATED: AtomicU64 = AtomicU64::new(0);
pub static SPANS_RELEASED: AtomicU64 = AtomicU64::new(0);

/// Maps the central lists' state (in metadata memory, never the heap). Called
/// once, single-threaded, during init.
pub fn init() -> bool {
    let size = core::mem::size_of::<Inner>();
    let block = super::meta::alloc(size * NUM_SPANCLASSES);
    if block.is_null() {
        return false;
    }
    for (i, c) in CENTRAL.iter().enumerate() {
        // SAFETY: init runs before any other thread can use the allocator;
        // each Inner gets its own zeroed slice of the block (all-zero is a valid
        // empty Inner: null list, no batches).
        unsafe { *c.inner.get() = block.add(i * size) as *mut Inner };
    }
    true
}

struct Guard<'a> {
    _g: spin::MutexGuard<'a, ()>,
    inner: &'a mut Inner,
}

fn lock(sc: usize) -> Guard<'static> {
    let c = &CENTRAL[sc];
    let g = match c.lock.try_lock() {
        Some(g) => g,
        None => {
            c.waiters.fetch_add(1, Relaxed);
            let g = c.lock.lock();
            c.waiters.fetch_sub(1, Relaxed);
            g
        }
    };
    // SAFETY: the lock is held; inner was set by init and lives forever.
    let inner = unsafe { &mut **c.inner.get() };
    Guard { _g: g, inner }
}

/// A new span of class `sc` from the page heap, or null.
fn new_span(sc: usize) -> *mut Span {
    let class = class_of_sc(sc);
    let (s, _) = heap::alloc_span(sizeclass::pages_of_class(class), PAGE_SIZE, |s| {
        s.init_small(class, noscan_of_sc(sc), sc == TINY_SC, sc as u8)
    });
    if !s.is_null() {
        if crate::config::DEBUG_SLOW_GROWTH.load(Relaxed) {
            // SAFETY: a plain sleep (test hook).
            unsafe { libc::usleep(300) };
        }
        SPANS_CREATED.fetch_add(1, Relaxed);
    }
    s
}

/// Frees slot `i` of small span `s` on a CPU that is not the span's owner
/// (its state byte already cleared): marks the slot `SLOT_REMOTE` and, if the
/// span was not queued yet, pushes it on its class's remote list. No lock: a producer
/// and a consumer thread never meet on a central lock per object.
pub fn free_remote(s: &Span, i: usize) {
    if s.begin_remote_free(i) {
        let c = &CENTRAL[s.spanclass as usize];
        let sp = s as *const Span as *mut Span;
        let mut head = c.remote.load(Relaxed);
        loop {
            s.remote_header().next.store(head, Relaxed);
            // Release: the merger that takes the list sees the link.
            match c.remote.compare_exchange_weak(head, sp, Release, Relaxed) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
    }
    s.end_remote_free();
}

/// Refills by non-owners after which every queued span is merged, whoever
/// owns it: an owner CPU that stopped allocating this class must not strand
/// its remote frees.
const REMOTE_PATIENCE: u32 = 16;

/// Moves the remotely freed slots of class `sc` back into their spans (class
/// lock held): those of spans `me` owns, or of all spans when `me` is None
/// (trim, mark termination) or after [`REMOTE_PATIENCE`] refills that left
/// others queued. A non-owner that took a span's remote frees would hand them
/// out at once, next to the objects the owner's threads are using. The list
/// is taken whole (no ABA: nobody pops single spans); spans left queued are
/// pushed back. A span stays alive while queued or while a remote free of
/// it is in flight: nothing releases it then (see `Span::remote_busy`).
fn merge_remote(g: &mut Guard<'_>, sc: usize, me: Option<u8>) {
    let c = &CENTRAL[sc];
    if c.remote.load(Relaxed).is_null() {
        return;
    }
    let all = me.is_none() || g.inner.remote_skips >= REMOTE_PATIENCE;
    let mut s = c.remote.swap(ptr::null_mut(), Acquire);
    let (mut kept, mut kept_tail): (*mut Span, *mut Span) = (ptr::null_mut(), ptr::null_mut());
    while !s.is_null() {
        // SAFETY: a queued span is a live small span of this class (it is
        // released only once off the list, in settle, under this lock).
        unsafe {
            // The link first: once the span is unqueued, a new remote free
            // may push it again and overwrite it.
            let next = (*s).remote_header().next.load(Relaxed);
            if all || Some((*s).owner.load(Relaxed)) == me {
                (*s).take_remote();
                settle(g, s);
            } else {
                // Still queued: no remote free pushes it meanwhile.
                (*s).remote_header().next.store(kept, Relaxed);
                if kept.is_null() {
                    kept_tail = s;
                }
                kept = s;
            }
            s = next;
        }
    }
    if kept.is_null() {
        g.inner.remote_skips = 0;
        return;
    }
    g.inner.remote_skips += 1;
    let mut head = c.remote.load(Relaxed);
    loop {
        // SAFETY: kept_tail is a queued span only this thread links.
        unsafe { (*kept_tail).remote_header().next.store(head, Relaxed) };
        match c.remote.compare_exchange_weak(head, kept, Release, Relaxed) {
            Ok(_) => return,
            Err(h) => head = h,
        }
    }
}

/// In a forked child: a parent thread may have been inside a remote free when
/// the parent forked (remote frees take no lock, so the fork handlers did not
/// wait for it). Its span then counts a free in flight forever, and may hold a
/// `SLOT_REMOTE` slot without being queued, or be flagged queued without
/// being on the list. Merges every list, then repairs the spans still
/// flagged: a walk over span records, no slot scan unless a span needs it.
pub fn repair_remote_after_fork() {
    for sc in 2..NUM_SPANCLASSES {
        let mut g = lock(sc);
        merge_remote(&mut g, sc, None);
    }
    heap::for_each_span(|s| {
        // SAFETY: the child runs alone; the page map holds live records.
        let sp = unsafe { &*s };
        if !span::is_slotted(sp.state.load(Relaxed)) || !sp.remote_busy() {
            return;
        }
        let mut g = lock(sp.spanclass as usize);
        sp.remote_header().flags.store(0, Relaxed);
        // SAFETY: a live small span of the locked class.
        unsafe {
            (*s).take_remote();
            settle(&mut g, s);
        }
    });
}

/// After slots came back to small span `s` (class lock held): releases it
/// when all its slots are back (unless a concurrent mark may be reading it,
/// or it is queued for a remote merge or has a remote free in flight), else
/// makes sure it is on the partial list. A span kept all free for a remote
/// free in flight stays on the partial list, where the next refill uses it.
///
/// # Safety
/// `s` is a live small span of the locked class.
unsafe fn settle(g: &mut Guard<'_>, s: *mut Span) {
    // SAFETY: the caller's contract.
    let sp = unsafe { &mut *s };
    if sp.nfree == 0 {
        return;
    }
    if sp.nfree == sp.nelems && !crate::gc::marking() && !sp.remote_busy() {
        if sp.in_partial {
            // SAFETY: on this class's list.
            unsafe { g.inner.partial.remove(s) };
            sp.in_partial = false;
        }
        g.inner.nspans -= 1;
        SPANS_RELEASED.fetch_add(1, Relaxed);
        // SAFETY: no slot of the span is out any more, and it is on no list.
        unsafe { heap::free_span(s) };
    } else if !sp.in_partial {
        sp.in_partial = true;
        // SAFETY: not on any list.
        unsafe { g.inner.partial.push(s) };
    }
}

/// Fills `out` with free slots of span class `sc`: a whole transfer batch when
/// one fits, else slots from partial spans (remotely freed slots merged back
/// first), growing the class from the page heap as needed. Slots taken from a
/// span make `owner` (the calling CPU) its owner. Returns how many (0: out
/// of memory).
pub fn refill(sc: usize, out: &mut [Entry], owner: u8) -> usize {
    let mut g = lock(sc);
    merge_remote(&mut g, sc, Some(owner));
    if g.inner.nbatches > 0 && out.len() >= batch(sc) {
        g.inner.nbatches -= 1;
        let b = batch(sc);
        out[..b].copy_from_slice(&g.inner.batches[g.inner.nbatches][..b]);
        return b;
    }
    let mut n = 0;
    while n < out.len() {
        let s = g.inner.partial.head;
        if s.is_null() {
            if crate::gc::sweep_pending() {
                drop(g);
                // Sweeping may free a span of this class or pages for a new one.
                crate::gc::reclaim(sizeclass::pages_of_class(class_of_sc(sc)), sc);
                g = lock(sc);
                if !g.inner.partial.head.is_null() {
                    continue;
                }
            }
            // Grown under the class lock (the heap lock comes after it in
            // lock order): the fresh span is on the partial list before the
            // fork handlers can take this lock, so a forked child never
            // inherits a span on no list, lost with the thread that made it.
            let s = new_span(sc);
            if s.is_null() {
                break;
            }
            // SAFETY: s is a fresh span; the lock is held.
            unsafe {
                (*s).in_partial = true;
                g.inner.partial.push(s);
            }
            g.inner.nspans += 1;
            continue;
        }
        // SAFETY: spans on the partial list are live and guarded by the lock.
        unsafe {
            // Sweep before handing out slots (Go's rule): an object allocated
            // from this span must never be swept by the cycle that is ending.
            if (*s).sweepgen.load(Relaxed) != crate::gc::sweepgen() {
                sweep_locked(&mut g, s);
                continue;
            }
            (*s).owner.store(owner, Relaxed);
            n += (*s).take_slots(&mut out[n..]);
            if (*s).nfree == 0 {
                g.inner.partial.remove(s);
                (*s).in_partial = false;
            }
        }
    }
    n
}

/// Takes back slots of span class `sc` from a per-CPU cache. Their state bytes
/// are reset (a cached slot is free).
pub fn drain(sc: usize, entries: &[Entry]) {
    if entries.is_empty() {
        return;
    }
    for e in entries {
        // SAFETY: entries carry the state byte of their slot.
        unsafe {
            (*(e.state as *const core::sync::atomic::AtomicU8)).store(span::SLOT_FREE, Relaxed)
        };
    }
    let mut g = lock(sc);
    if entries.len() == batch(sc) && g.inner.nbatches < TRANSFER_SLOTS {
        let i = g.inner.nbatches;
        g.inner.batches[i][..entries.len()].copy_from_slice(entries);
        g.inner.nbatches += 1;
        return;
    }
    for e in entries {
        return_slot(&mut g, e.ptr);
    }
}

/// Puts one slot back into its span; releases the span when it is all free.
fn return_slot(g: &mut Guard<'_>, p: usize) {
    let s = heap::span_of(p);
    if s.is_null() {
        crate::sys::fatal::fatal("internal error: cached slot outside the heap", Some(p));
    }
    // SAFETY: s is an in-use span of this class; its bitmap is guarded by the lock.
    // While the collector marks, spans stay (a concurrent marker may be
    // reading their bitmaps); the sweep after the cycle releases them.
    unsafe {
        let i = (*s).slot_of(p);
        (*s).put_slot(i);
        settle(g, s);
    }
}

/// Objects the collector freed, per span class (for per-class live counts).
pub static RECLAIMED: [AtomicU64; NUM_SPANCLASSES] = [const { AtomicU64::new(0) }; NUM_SPANCLASSES];

/// What sweeping a span did.
#[derive(Clone, Copy, Default, Debug)]
pub struct Swept {
    /// Objects (and bytes) found unreachable (leaks: only when first found).
    pub objects: u64,
    pub bytes: u64,
    /// Of those, freed (collect mode, or GC-managed).
    pub freed_objects: u64,
    pub freed_bytes: u64,
}

/// Sweeps small span `s` if it still needs it: unmarked allocated objects are
/// unreachable; they are freed if GC-managed or in collect mode, else left
/// allocated and counted as leaks (once each, see `leak::note_unreachable`).
/// Clears the marks; stamps the span swept.
pub fn sweep(s: *mut Span, collect: bool) -> Swept {
    // SAFETY: s is a span record found through the page map (type-stable);
    // its class and state are re-checked under the class lock.
    let sc = unsafe { (*s).spanclass as usize };
    let mut r = Swept::default();
    if sc < 2 || sc >= NUM_SPANCLASSES {
        return r;
    }
    // A chunk of slots at a time, the lock released in between: an
    // allocating thread's refill of this class waits for one chunk, not a
    // whole span. Between chunks the span is half swept, which is safe:
    // nobody takes slots from an unswept span (refill sweeps it first), and
    // sweeping a slot twice is a no-op (a freed slot is free, a marked one
    // stays marked until the sweep that finishes the span clears the marks).
    let mut from = 0;
    loop {
        let mut g = lock(sc);
        // SAFETY: under the class lock the span cannot change class or state;
        // a span finished (or recycled, born swept) meanwhile is left alone.
        unsafe {
            let sp = &mut *s;
            let gen = crate::gc::sweepgen();
            if !span::is_slotted(sp.state.load(Relaxed))
                || sp.spanclass as usize != sc
                || sp.sweepgen.load(Relaxed) == gen
            {
                return r;
            }
            let n = sp.nelems as usize;
            let to = (from + SWEEP_CHUNK).min(n);
            sweep_slots(sp, from, to, gen, collect, &mut r);
            if to == n {
                finish_sweep(&mut g, s, gen);
                return r;
            }
            from = to;
        }
        drop(g);
        // Only the collector's background sweep defers to waiters: an
        // allocating thread sweeping (reclaim) is inside the allocator, where
        // a stop of the world waits for it.
        if crate::gc::on_collector_thread() {
            yield_to_waiters(sc);
        }
    }
}

/// Between two holds of class `sc`'s lock by a long job (a sweep): lets a
/// thread spinning for it take it first. The lock is not fair, and the
/// holder, whose cache has the lock's line, would otherwise win it back at
/// once, chunk after chunk, while an allocating thread spins.
fn yield_to_waiters(sc: usize) {
    let c = &CENTRAL[sc];
    let mut spins = 0;
    while c.waiters.load(Relaxed) > 0 && spins < 2000 {
        core::hint::spin_loop();
        spins += 1;
    }
}

/// Slots swept per hold of the class lock by [`sweep`]: a fraction of a
/// microsecond of sweeping (the binary-trees benchmark's collector spent
/// most of its sweep time retaking the lock with chunks of 32), and a
/// multiple of eight ([`sweep_slots`] takes slots eight at a time).
const SWEEP_CHUNK: usize = 256;
static_assertions::const_assert!(SWEEP_CHUNK % 8 == 0);

fn sweep_locked(g: &mut Guard<'_>, s: *mut Span) {
    let collect = crate::gc::mode() == crate::gc::Mode::Collect;
    // SAFETY: s is on this class's partial list, under the lock.
    let r = unsafe { sweep_span_locked(g, s, collect) };
    crate::gc::note_swept(r);
}

/// # Safety
/// `s` is a live small span of the locked class.
unsafe fn sweep_span_locked(g: &mut Guard<'_>, s: *mut Span, collect: bool) -> Swept {
    let mut r = Swept::default();
    // SAFETY: the caller's contract.
    let sp = unsafe { &mut *s };
    let gen = crate::gc::sweepgen();
    if sp.sweepgen.load(Relaxed) == gen {
        return r;
    }
    sweep_slots(sp, 0, sp.nelems as usize, gen, collect, &mut r);
    // SAFETY: the caller's contract.
    unsafe { finish_sweep(g, s, gen) };
    r
}

/// Sweeps slots `[from, to)` of `sp` for generation `gen` (class lock held),
/// adding what it found to `r`.
///
/// Eight slots at a time: their state bytes are read into one word and
/// tested together (allocated, born this generation, GC-managed), against
/// the eight mark bits, so a run of free or surviving slots costs a few
/// instructions per eight, and the slots found dead are given back with one
/// OR into the free bits and one add to the free count per word. Whatever
/// needs more than that (a leak to count, a survivor to retag) and the last
/// slots of a span (fewer than eight) go one by one.
fn sweep_slots(sp: &mut Span, from: usize, to: usize, gen: u32, collect: bool, r: &mut Swept) {
    debug_assert!(from % 8 == 0, "sweep chunks start at a group of eight");
    let size = sp.elemsize as usize;
    let mut freed = 0u64;
    let mut i = from;
    // The grouped part: whole groups of eight, never past `to`.
    let grouped_end = from + (to - from) / 8 * 8;
    while i < grouped_end {
        // One mark word and one free-bits word cover up to eight groups.
        let word = i / 64;
        let word_end = ((word + 1) * 64).min(grouped_end);
        // SAFETY: word < words of the span's bitmaps.
        let marks = unsafe { (*sp.marks.add(word)).load(Relaxed) };
        let mut give_back = 0u64;
        while i < word_end {
            let w = state_group(sp, i);
            let bit = i % 64;
            let dead = dead_in_group(w, (marks >> bit) as u8, gen, collect);
            if dead.odd != 0 {
                sweep_odd_slots(sp, i, dead.odd, gen, collect, r);
            }
            let mut d = dead.free;
            while d != 0 {
                let k = d.trailing_zeros() as usize;
                sp.slot_state(i + k).store(span::SLOT_FREE, Relaxed);
                d &= d - 1;
            }
            give_back |= (dead.free as u64) << bit;
            i += 8;
        }
        if give_back != 0 {
            let n = give_back.count_ones();
            // SAFETY: word < words; the class lock guards the free bits.
            unsafe {
                debug_assert_eq!(
                    *sp.free_bits.add(word) & give_back,
                    0,
                    "slot returned twice"
                );
                *sp.free_bits.add(word) |= give_back;
            }
            sp.nfree += n;
            freed += n as u64;
        }
    }
    // The rest one by one.
    for i in grouped_end..to {
        let st = sp.slot_state(i).load(Relaxed);
        if !span::is_allocated(st) || sp.is_marked(i) || span::born_in(st, gen) {
            if span::is_allocated(st) && span::needs_aging(st, gen) {
                span::age(sp.slot_state(i), st, gen);
            }
            continue;
        }
        if collect || span::is_managed(st) {
            sp.slot_state(i).store(span::SLOT_FREE, Relaxed);
            sp.put_slot(i);
            freed += 1;
        } else {
            note_leak(sp, i, size, r);
        }
    }
    if freed > 0 {
        r.objects += freed;
        r.bytes += freed * size as u64;
        r.freed_objects += freed;
        r.freed_bytes += freed * size as u64;
        RECLAIMED[sp.spanclass as usize].fetch_add(freed, Relaxed);
    }
}

/// The state bytes of slots `i..i + 8`, slot `i` in the low byte. Read byte
/// by byte: they are atomics a concurrent free may store to one at a time.
#[inline(always)]
fn state_group(sp: &Span, i: usize) -> u64 {
    let mut w = 0u64;
    for k in 0..8 {
        w |= (sp.slot_state(i + k).load(Relaxed) as u64) << (8 * k);
    }
    w
}

/// Slots of a group of eight, one bit each (bit k: slot i + k).
struct DeadSlots {
    /// Dead, and to be freed now.
    free: u8,
    /// Needing the one-by-one path: dead but kept as leaks (not collect
    /// mode, not GC-managed), or alive and due to be retagged (`age`).
    odd: u8,
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;

/// Bit 0 of each byte of `x` (which has no other bits set), gathered into
/// bits 0..8.
#[inline(always)]
fn gather_low_bits(x: u64) -> u8 {
    (x.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// 1 in bit 0 of each byte of `x` that is zero, 0 elsewhere (exact: no
/// borrow crosses bytes).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    let hi = 0x7f7f_7f7f_7f7f_7f7fu64;
    (!(((x & hi).wrapping_add(hi)) | x | hi)) >> 7
}

/// Which of eight slots (state bytes `w`, mark bits `marks`) the sweep of
/// generation `gen` frees, and which need the one-by-one path: the rules of
/// the per-slot loop, on eight at once.
#[inline(always)]
fn dead_in_group(w: u64, marks: u8, gen: u32, collect: bool) -> DeadSlots {
    let allocated = gather_low_bits(w & LOW_BITS);
    if allocated == 0 {
        return DeadSlots { free: 0, odd: 0 };
    }
    let tags = w & !(LOW_BITS * 3);
    let tag_of = |g: u32| LOW_BITS * (((g & 63) as u64) << 2);
    let born = gather_low_bits(zero_bytes(tags ^ tag_of(gen)));
    let alive = allocated & (marks | born);
    let dead = allocated & !alive;
    let aging = alive & gather_low_bits(zero_bytes(tags ^ tag_of(gen.wrapping_add(1))));
    let (free, kept) = if collect {
        (dead, 0)
    } else {
        let managed = gather_low_bits((w >> 1) & LOW_BITS);
        (dead & managed, dead & !managed)
    };
    DeadSlots {
        free,
        odd: kept | aging,
    }
}

/// The slots of group `i..i + 8` in `odd` (see [`DeadSlots`]): leaks are
/// counted, survivors retagged.
#[cold]
fn sweep_odd_slots(sp: &Span, i: usize, odd: u8, gen: u32, collect: bool, r: &mut Swept) {
    let mut m = odd;
    while m != 0 {
        let k = i + m.trailing_zeros() as usize;
        m &= m - 1;
        let st = sp.slot_state(k).load(Relaxed);
        if sp.is_marked(k) || span::born_in(st, gen) {
            if span::needs_aging(st, gen) {
                span::age(sp.slot_state(k), st, gen);
            }
        } else if !collect && !span::is_managed(st) {
            note_leak(sp, k, sp.elemsize as usize, r);
        }
    }
}

/// Slot `i` holds an unreachable object that is kept (a leak): counted the
/// first time a cycle finds it.
fn note_leak(sp: &Span, i: usize, size: usize, r: &mut Swept) {
    let bytes = match sp.site(i) {
        Some(rec) => crate::leak::note_unreachable(rec, size),
        None => size,
    };
    if bytes > 0 {
        r.objects += 1;
        r.bytes += bytes as u64;
    }
}

/// Ends the sweep of `s` (all its slots swept, class lock held): clears the
/// marks, stamps the generation, and releases the span if it is all free or
/// puts it on the partial list if it has free slots.
///
/// # Safety
/// `s` is a live small span of the locked class.
unsafe fn finish_sweep(g: &mut Guard<'_>, s: *mut Span, gen: u32) {
    // SAFETY: the caller's contract.
    let sp = unsafe { &mut *s };
    sp.clear_marks();
    sp.sweepgen.store(gen, Relaxed);
    // All free: also spans emptied by frees during a concurrent mark, which
    // were kept then.
    // SAFETY: the caller's contract.
    unsafe { settle(g, s) };
}

/// Empties the transfer caches into the spans (trim, and the collector's mark
/// termination).
pub fn flush_transfer() {
    for sc in 2..NUM_SPANCLASSES {
        let mut g = lock(sc);
        merge_remote(&mut g, sc, None);
        while g.inner.nbatches > 0 {
            g.inner.nbatches -= 1;
            let i = g.inner.nbatches;
            let b = batch(sc);
            for k in 0..b {
                let p = g.inner.batches[i][k].ptr;
                return_slot(&mut g, p);
            }
        }
    }
}

/// Calls `f` with every entry parked in the transfer caches (verifier).
pub fn for_each_transfer_entry(
    mut f: impl FnMut(usize, &Entry) -> Result<(), crate::debug::VerifyError>,
) -> Result<(), crate::debug::VerifyError> {
    for sc in 2..NUM_SPANCLASSES {
        let g = lock(sc);
        for i in 0..g.inner.nbatches {
            for e in &g.inner.batches[i][..batch(sc)] {
                f(sc, e)?;
            }
        }
    }
    Ok(())
}

/// Checks a small span against its central list (verifier): the partial list
/// holds it iff it has free slots.
pub fn verify_span(s: &Span) -> Result<(), crate::debug::VerifyError> {
    use crate::debug::VerifyError as E;
    let sc = s.spanclass as usize;
    let g = lock(sc);
    // A span the sweeper is working through (its sweep generation not yet
    // the current one) holds the slots it freed so far off the partial list:
    // the sweep's last chunk puts it there (see `sweep`).
    let mid_sweep = !s.in_partial && s.sweepgen.load(Relaxed) != crate::gc::sweepgen();
    if s.in_partial != (s.nfree > 0) && !mid_sweep {
        return Err(E::new(
            "span's partial-list membership disagrees with its free count",
            s.base,
        ));
    }
    // An all-free span is normally released at once; it stays (on the
    // partial list, checked above) only while queued for a remote merge, or
    // when a remote free was in flight as it emptied (see `settle`).
    if s.in_partial {
        let mut p = g.inner.partial.head;
        while !p.is_null() && p != s as *const Span as *mut Span {
            // SAFETY: list links are valid under the lock.
            p = unsafe { (*p).next };
        }
        if p.is_null() {
            return Err(E::new(
                "span marked partial is not on its class's list",
                s.base,
            ));
        }
    }
    Ok(())
}

/// Returns to the OS the pages of partly used spans whose slots are all
/// free (see `Span::release_free_pages`). Returns the bytes released.
///
/// # Safety
/// No mark may be running or start meanwhile (the caller holds the cycle
/// lock: `gc::when_no_cycle`).
pub unsafe fn release_free_pages() -> usize {
    let mut released = 0;
    for sc in 0..NUM_SPANCLASSES {
        let g = lock(sc);
        let mut s = g.inner.partial.head;
        while !s.is_null() {
            // SAFETY: list links and records are valid under the lock, which
            // the release needs; the caller excludes marking.
            unsafe {
                released += (*s).release_free_pages();
                s = (*s).next;
            }
        }
    }
    super::heap::SCAVENGED_BYTES.fetch_add(released as u64, Relaxed);
    released
}

/// Spans in use per span class (statistics).
pub fn spans_in_use(sc: usize) -> usize {
    lock(sc).inner.nspans
}

/// Takes and drops every class lock in turn: whatever a thread decided
/// under one of them before the call (to release an all-free span, say) is
/// done when it returns, and anything decided under them later sees what
/// the caller stored before it (the collector's phase, see `gc::cycle`).
pub fn lock_barrier() {
    for sc in 0..NUM_SPANCLASSES {
        drop(lock(sc));
    }
}

pub fn lock_for_fork() {
    for c in CENTRAL.iter() {
        core::mem::forget(c.lock.lock());
    }
}

/// In a forked child: threads of the parent that were waiting for a class
/// lock do not exist here (their count would keep the sweep yielding).
pub fn forget_waiters_after_fork() {
    for c in CENTRAL.iter() {
        c.waiters.store(0, Relaxed);
    }
}

/// # Safety
/// Only after [`lock_for_fork`].
pub unsafe fn unlock_after_fork() {
    for c in CENTRAL.iter() {
        // SAFETY: the caller holds every lock leaked by lock_for_fork.
        unsafe { c.lock.force_unlock() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-slot rule `dead_in_group` applies to eight slots at once:
    /// (freed now, needs the one-by-one path).
    fn reference(st: u8, marked: bool, gen: u32, collect: bool) -> (bool, bool) {
        if !span::is_allocated(st) {
            return (false, false);
        }
        if marked || span::born_in(st, gen) {
            return (false, span::needs_aging(st, gen));
        }
        if collect || span::is_managed(st) {
            (true, false)
        } else {
            (false, true)
        }
    }

    #[test]
    fn grouped_sweep_rule_matches_the_per_slot_rule() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200_000 {
            let gen = (next() % 200) as u32;
            let collect = round % 3 != 0;
            let marks = next() as u8;
            // State bytes biased toward the interesting tags (this, next and
            // last generation), with free, remote and managed slots mixed in.
            let mut w = 0u64;
            for k in 0..8 {
                let r = next();
                let g = match r % 5 {
                    0 => gen,
                    1 => gen.wrapping_add(1),
                    2 => gen.wrapping_sub(1),
                    _ => (r >> 8) as u32,
                };
                let st = match (r >> 16) % 6 {
                    0 => span::SLOT_FREE,
                    1 => span::SLOT_REMOTE,
                    2 => span::alloc_byte(g) | span::SLOT_MANAGED_BIT,
                    _ => span::alloc_byte(g),
                };
                w |= (st as u64) << (8 * k);
            }
            let got = dead_in_group(w, marks, gen, collect);
            for k in 0..8 {
                let st = (w >> (8 * k)) as u8;
                let (free, odd) = reference(st, marks & (1 << k) != 0, gen, collect);
                assert_eq!(
                    (got.free >> k & 1 != 0, got.odd >> k & 1 != 0),
                    (free, odd),
                    "slot {k} state {st:#04x} marked {} gen {gen} collect {collect}",
                    marks >> k & 1
                );
            }
        }
    }

    #[test]
    fn gather_and_zero_byte_helpers() {
        for m in 0..=255u8 {
            let spread: u64 = (0..8).map(|k| ((m as u64 >> k) & 1) << (8 * k)).sum();
            assert_eq!(gather_low_bits(spread), m);
            let x = spread * 0x5a; // zero exactly where m has a 0 bit
            assert_eq!(zero_bytes(x), LOW_BITS & !spread, "{m:#x}");
        }
        assert_eq!(zero_bytes(0x0100_0000_0000_0080), 0x0001_0101_0101_0100);
    }
}

//! The page heap: magpie's address space, the page map, and runs of free pages.
//!
//! The heap is one reserved virtual range (PROT_NONE, 1 TiB, or less where the
//! kernel or valgrind refuses), committed in 64 MiB steps as it grows. Every
//! page of it has a page-map entry, so "is this word a heap pointer, and into
//! which span?" is one range check and one load ([`span_of`]); the collector asks
//! it for every word it scans and `free` for every pointer.
//!
//! Page-map invariant (exact, checked by the verifier): every page of an in-use
//! span maps to that span; the first and last page of a free span map to it
//! with the low bit set (the coalescing code finds free neighbours there);
//! every other entry is zero. So [`span_of`] is one load and a tag test.
//!
//! Free runs are kept on lists by length (1..127 pages, then one list for longer
//! runs, searched best-fit, lowest address on ties) and coalesce with free
//! neighbours when freed. Freed pages go back to the OS with MADV_DONTNEED when
//! they have been free longer than the decay time, or at once beyond a
//! threshold of free resident memory, so a program that frees memory sees its
//! RSS fall.

use core::ptr;
use core::sync::atomic::{
    AtomicPtr, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use spin::Mutex;

use super::sizeclass::{PAGE_SHIFT, PAGE_SIZE};
use super::span::{self, Span, SpanList};
use crate::sys::os;

/// The heap's reserved range and its page map, fixed after init, on one cache
/// line: every `free` reads them.
#[repr(C, align(64))]
struct Map {
    base: AtomicUsize,
    size: AtomicUsize,
    /// One word per page: a span pointer, a free span's pointer with bit 0 set, or 0.
    pagemap: AtomicPtr<AtomicUsize>,
}

static MAP: Map = Map {
    base: AtomicUsize::new(0),
    size: AtomicUsize::new(0),
    pagemap: AtomicPtr::new(ptr::null_mut()),
};

/// The end of the committed part of the heap (mirrors `Inner::committed_end`
/// for lock-free readers).
static COMMITTED_END: AtomicUsize = AtomicUsize::new(0);
/// The end of the highest span ever handed out: pages beyond were never
/// used (the heap grows upward in COMMIT_STEP chunks, used from the bottom).
static USED_END: AtomicUsize = AtomicUsize::new(0);

/// Pages held by in-use spans (mirrors `Inner::inuse_pages` for lock-free
/// readers: the collector's pacer).
static INUSE_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Bytes held by in-use spans.
pub fn in_use_bytes() -> usize {
    INUSE_PAGES.load(Relaxed) * PAGE_SIZE
}

/// The end of the committed part of the heap reservation.
pub fn committed_end() -> usize {
    COMMITTED_END.load(Relaxed)
}

/// The end of the part of the heap that ever held a span in use (at most
/// [`committed_end`]): what the collector's dirty-page scans cover.
pub fn used_end() -> usize {
    USED_END.load(Relaxed)
}

/// True if `addr` lies in memory the heap has committed (used or free).
pub fn is_committed(addr: usize) -> bool {
    addr >= MAP.base.load(Relaxed) && addr < COMMITTED_END.load(Relaxed)
}

/// The tag of a free span's page-map entries.
const FREE_TAG: usize = 1;

/// Growth step of the committed part of the heap.
const COMMIT_STEP: usize = 64 << 20;
const NLISTS: usize = 128;

struct Inner {
    /// free[n]: free runs of exactly n pages (n < 128); free[0]: longer runs.
    free: [SpanList; NLISTS],
    committed_end: usize,
    inuse_pages: usize,
    free_pages: usize,
    /// Free pages not returned to the OS.
    free_dirty_pages: usize,
    last_decay_ms: u64,
    /// Large spans freed while the collector marks, chained through `next`:
    /// their records and pages stay as they are until the cycle ends, since a
    /// concurrent marker may be reading them (see `release_deferred`).
    deferred: *mut Span,
    /// Records of large spans freed while the collector marks whose pages
    /// were handed back under fresh records: kept unchanged (a marker may
    /// hold them) until the cycle ends, then freed.
    retired: *mut Span,
}

// SAFETY: the span pointers are only used under the heap mutex.
unsafe impl Send for Inner {}

static HEAP: Mutex<Inner> = Mutex::new(Inner {
    free: [const { SpanList::new() }; NLISTS],
    committed_end: 0,
    inuse_pages: 0,
    free_pages: 0,
    free_dirty_pages: 0,
    last_decay_ms: 0,
    deferred: ptr::null_mut(),
    retired: ptr::null_mut(),
});

/// Returned-to-OS counters, readable without the lock.
pub static SCAVENGED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Decay time in ms (MAGPIE_DECAY_MS) and the free-resident threshold in bytes.
static DECAY_MS: AtomicU64 = AtomicU64::new(1000);
static RETAIN_BYTES: AtomicUsize = AtomicUsize::new(64 << 20);

/// Reserves the heap range and maps the page map. `max_reserve` is the first
/// size tried; smaller ones are tried down to 1 GiB.
pub fn init(max_reserve: usize, decay_ms: u64, retain: usize) -> bool {
    DECAY_MS.store(decay_ms, Relaxed);
    RETAIN_BYTES.store(retain, Relaxed);
    let mut size = max_reserve.next_power_of_two();
    while size >= 1 << 30 {
        // Over-reserve one page so the base can be aligned to PAGE_SIZE.
        let p = os::reserve(size + PAGE_SIZE);
        if !p.is_null() {
            let base = (p as usize + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
            let entries = size >> PAGE_SHIFT;
            let pm = os::map_owned(entries * core::mem::size_of::<AtomicUsize>());
            if pm.is_null() {
                // SAFETY: unmapping the reservation we just made.
                unsafe { libc::munmap(p.cast(), size + PAGE_SIZE) };
                return false;
            }
            crate::sys::owned::register(base as *mut u8, size);
            MAP.pagemap.store(pm.cast(), Relaxed);
            MAP.size.store(size, Relaxed);
            MAP.base.store(base, Relaxed);
            HEAP.lock().committed_end = base;
            return true;
        }
        size /= 2;
    }
    false
}

/// The reserved heap range `(base, size)`.
pub fn range() -> (usize, usize) {
    (MAP.base.load(Relaxed), MAP.size.load(Relaxed))
}

#[inline(always)]
fn entry(addr: usize) -> Option<&'static AtomicUsize> {
    let off = addr.wrapping_sub(MAP.base.load(Relaxed));
    if off >= MAP.size.load(Relaxed) {
        return None;
    }
    // SAFETY: off < size, so the index is inside the page map.
    Some(unsafe { &*MAP.pagemap.load(Relaxed).add(off >> PAGE_SHIFT) })
}

/// The address of the page-map entry of `addr` (0 outside the heap), for
/// the marker to prefetch.
#[inline(always)]
pub fn page_map_entry_addr(addr: usize) -> usize {
    entry(addr).map_or(0, |e| e as *const AtomicUsize as usize)
}

/// The in-use span containing `addr`, or null. O(1): the question the collector
/// asks of every scanned word and `free` of every pointer.
#[inline(always)]
pub fn span_of(addr: usize) -> *mut Span {
    match entry(addr) {
        Some(e) => {
            // Acquire: pairs with set_pages' Release, so a span published
            // while a concurrent marker runs is seen initialised.
            let v = e.load(Acquire);
            if v & FREE_TAG != 0 {
                ptr::null_mut()
            } else {
                v as *mut Span
            }
        }
        None => ptr::null_mut(),
    }
}

/// The free span whose first or last page is at `addr`, or null.
fn free_span_at(addr: usize) -> *mut Span {
    match entry(addr) {
        Some(e) => {
            let v = e.load(Relaxed);
            if v & FREE_TAG != 0 {
                (v & !FREE_TAG) as *mut Span
            } else {
                ptr::null_mut()
            }
        }
        None => ptr::null_mut(),
    }
}

fn set_pages(value: usize, first: usize, n: usize) {
    for i in 0..n {
        if let Some(e) = entry(first + i * PAGE_SIZE) {
            e.store(value, Release);
        }
    }
}

/// Tags the first and last page of free span `s` (its other entries are zero).
fn set_free_ends(s: *mut Span) {
    // SAFETY: s is a live record under the heap lock.
    let (b, n) = unsafe { ((*s).base, (*s).npages) };
    set_pages(s as usize | FREE_TAG, b, 1);
    set_pages(s as usize | FREE_TAG, b + (n - 1) * PAGE_SIZE, 1);
}

fn list_index(npages: usize) -> usize {
    if npages < NLISTS {
        npages
    } else {
        0
    }
}

impl Inner {
    fn insert_free(&mut self, s: *mut Span) {
        // SAFETY: s is a free record not on any list.
        unsafe {
            let n = (*s).npages;
            self.free[list_index(n)].push(s);
        }
    }

    fn remove_free(&mut self, s: *mut Span) {
        // SAFETY: s is on the list of its length.
        unsafe {
            let n = (*s).npages;
            self.free[list_index(n)].remove(s);
        }
    }

    /// A free span that can hold `npages` pages starting at a multiple of
    /// `align` bytes, or null.
    fn find(&self, npages: usize, align: usize) -> *mut Span {
        let fits = |s: *mut Span| -> bool {
            // SAFETY: s is on a free list.
            let (b, n) = unsafe { ((*s).base, (*s).npages) };
            let start = (b + align - 1) & !(align - 1);
            start + npages * PAGE_SIZE <= b + n * PAGE_SIZE
        };
        if npages < NLISTS {
            for n in npages..NLISTS {
                let mut s = self.free[n].head;
                while !s.is_null() {
                    if fits(s) {
                        return s;
                    }
                    // SAFETY: list links are valid under the lock.
                    s = unsafe { (*s).next };
                }
            }
        }
        // Best fit among long runs, lowest address on ties.
        let mut best: *mut Span = ptr::null_mut();
        let mut s = self.free[0].head;
        while !s.is_null() {
            // SAFETY: list links are valid under the lock.
            unsafe {
                if fits(s)
                    && (best.is_null()
                        || (*s).npages < (*best).npages
                        || ((*s).npages == (*best).npages && (*s).base < (*best).base))
                {
                    best = s;
                }
                s = (*s).next;
            }
        }
        best
    }

    /// Commits at least `npages` more pages at the end of the heap and adds them
    /// as a free span. Returns false when the reservation or the OS is exhausted.
    fn grow(&mut self, npages: usize) -> bool {
        let (base, reserved) = range();
        let end = base + reserved;
        let need = npages * PAGE_SIZE;
        let mut step = need.max(COMMIT_STEP).next_multiple_of(COMMIT_STEP);
        if self.committed_end + step > end {
            step = end - self.committed_end;
        }
        if step < need {
            return false;
        }
        let start = self.committed_end;
        // SAFETY: [start, start+step) lies in our reservation.
        let mut ok = unsafe { os::commit(start as *mut u8, step) };
        if !ok && step > need {
            step = need;
            // SAFETY: as above, a smaller part of it.
            ok = unsafe { os::commit(start as *mut u8, step) };
        }
        if !ok {
            return false;
        }
        self.committed_end += step;
        COMMITTED_END.store(self.committed_end, Relaxed);
        let s = Span::new_record(start, step / PAGE_SIZE);
        if s.is_null() {
            return false;
        }
        // SAFETY: s is a fresh record (dirty_pages 0: fresh memory is zero).
        unsafe { (*s).free_since_ms = now_ms32() };
        self.free_pages += step / PAGE_SIZE;
        self.add_free(s);
        true
    }

    /// Coalesces free span `s` (whose page-map entries are zero) with free
    /// neighbours and puts it on a list.
    fn add_free(&mut self, mut s: *mut Span) {
        // SAFETY: s and the neighbours found through the page map are records
        // under the heap lock; tagged entries exist only at free spans' ends, so
        // a neighbour found there is free and exactly adjacent.
        unsafe {
            let l = free_span_at((*s).base.wrapping_sub(PAGE_SIZE));
            if !l.is_null() {
                debug_assert!((*l).end() == (*s).base);
                self.remove_free(l);
                set_pages(0, (*l).end() - PAGE_SIZE, 1);
                self.merge_into(l, s);
                s = l;
            }
            let r = free_span_at((*s).end());
            if !r.is_null() {
                debug_assert!((*r).base == (*s).end());
                self.remove_free(r);
                set_pages(0, (*r).base, 1);
                self.merge_into(s, r);
            }
            set_free_ends(s);
        }
        self.insert_free(s);
    }

    /// Appends free span `b` (right after `a`) to `a`, and frees b's record.
    ///
    /// # Safety
    /// Both are free records, off every list, and adjacent.
    unsafe fn merge_into(&mut self, a: *mut Span, b: *mut Span) {
        // SAFETY: the caller's contract.
        unsafe {
            (*a).dirty_pages += (*b).dirty_pages;
            // The merged run is as young as its younger part.
            let now = now_ms32();
            if now.wrapping_sub((*b).free_since_ms) < now.wrapping_sub((*a).free_since_ms) {
                (*a).free_since_ms = (*b).free_since_ms;
            }
            (*a).npages += (*b).npages;
            Span::free_record(b);
        }
    }

    /// Returns free spans to the OS, longest first, until `target` bytes were
    /// released; with `older_than` set only spans free at least that long.
    fn scavenge(&mut self, target: usize, older_than: Option<u64>) -> usize {
        let now = now_ms();
        let mut released = 0;
        for li in (0..NLISTS).map(|i| (NLISTS - i) % NLISTS) {
            let mut s = self.free[li].head;
            while !s.is_null() && released < target {
                // SAFETY: list records are valid under the lock; releasing the
                // pages of a free span touches no live object.
                unsafe {
                    let next = (*s).next;
                    let old_enough = older_than
                        .is_none_or(|d| (now as u32).wrapping_sub((*s).free_since_ms) as u64 >= d);
                    if (*s).dirty_pages > 0 && old_enough {
                        let bytes = (*s).npages * PAGE_SIZE;
                        os::decommit((*s).base as *mut u8, bytes);
                        self.free_dirty_pages -= (*s).dirty_pages;
                        released += (*s).dirty_pages * PAGE_SIZE;
                        (*s).dirty_pages = 0;
                    }
                    s = next;
                }
            }
        }
        SCAVENGED_BYTES.fetch_add(released as u64, Relaxed);
        released
    }

    /// The scavenger's policy, run on page-heap operations: keep free resident
    /// memory under the threshold, and release what has been free past the decay time.
    fn maybe_scavenge(&mut self) {
        // Free resident memory is kept up to twice the heap in use (and at
        // least MAGPIE_RETAIN) until the decay rule below returns it: a
        // program that frees and reallocates its working set then reuses
        // warm pages instead of faulting them in again. The bound is checked
        // right after frees, when the heap in use is at its lowest, hence
        // twice: malloc_large, which cycles 5-25 MiB blocks, ran 2.5x slower
        // than glibc (1.1 million page faults against 0.44) with a bound of
        // 1/8, and still 2.2x with 1x.
        let retain = RETAIN_BYTES
            .load(Relaxed)
            .max(2 * self.inuse_pages * PAGE_SIZE);
        let dirty = self.free_dirty_pages * PAGE_SIZE;
        if dirty > retain {
            // Down to 3/4 of the bound, least recently freed first: what was
            // just freed is what the program is about to reuse.
            let target = dirty - retain / 4 * 3;
            let decay = DECAY_MS.load(Relaxed);
            let mut released = 0;
            for age in [decay / 2, decay / 8, decay / 32, 0] {
                released += self.scavenge(target - released, Some(age));
                if released >= target {
                    break;
                }
            }
        }
        let now = now_ms();
        let decay = DECAY_MS.load(Relaxed);
        if self.free_dirty_pages > 0
            && now.saturating_sub(self.last_decay_ms) >= (decay / 4).max(10)
        {
            self.last_decay_ms = now;
            self.scavenge(usize::MAX, Some(decay));
        }
    }
}

fn now_ms() -> u64 {
    os::now_ns() / 1_000_000
}

/// `now_ms` modulo 2^32, as span records keep it: ages computed with
/// wrapping subtraction are right up to 49 days (an older free span then
/// looks young and waits one more decay period).
fn now_ms32() -> u32 {
    now_ms() as u32
}

/// A fresh span of `npages` pages whose base is a multiple of `align` bytes
/// (a power of two, at least PAGE_SIZE), with every page mapped to it,
/// initialised by `init` under the heap lock (so that a fork never sees a span
/// half made; `init` may take the metadata lock, nothing else). Returns the
/// span and whether its memory must be zeroed before it is handed out as
/// zeroed; null when the heap cannot grow or `init` fails.
pub fn alloc_span(
    npages: usize,
    align: usize,
    init: impl FnOnce(&mut Span) -> bool,
) -> (*mut Span, bool) {
    debug_assert!(npages > 0 && align.is_power_of_two() && align >= PAGE_SIZE);
    let mut h = HEAP.lock();
    h.maybe_scavenge();
    let mut s = h.find(npages, align);
    if s.is_null() {
        let extra = if align > PAGE_SIZE {
            align / PAGE_SIZE
        } else {
            0
        };
        if !h.grow(npages + extra) {
            return (ptr::null_mut(), false);
        }
        s = h.find(npages, align);
        if s.is_null() {
            return (ptr::null_mut(), false);
        }
    }
    h.remove_free(s);
    // SAFETY: s is a free record now off every list, under the lock; the pieces
    // split off are fresh records covering the rest of its pages.
    unsafe {
        let start = ((*s).base + align - 1) & !(align - 1);
        let head = (start - (*s).base) / PAGE_SIZE;
        if head > 0 {
            let rest = Span::new_record(start, (*s).npages - head);
            if rest.is_null() {
                h.insert_free(s);
                return (ptr::null_mut(), false);
            }
            split_dirty(&mut h, s, rest, head);
            (*s).npages = head;
            set_free_ends(s);
            h.insert_free(s);
            s = rest;
            // The original last page now ends `rest`.
            set_pages(0, (*s).end() - PAGE_SIZE, 1);
        }
        let tail = (*s).npages - npages;
        if tail > 0 {
            let t = Span::new_record((*s).base + npages * PAGE_SIZE, tail);
            if t.is_null() {
                set_pages(0, (*s).base, 1);
                set_pages(0, (*s).end() - PAGE_SIZE, 1);
                h.add_free(s);
                return (ptr::null_mut(), false);
            }
            split_dirty(&mut h, s, t, npages);
            (*s).npages = npages;
            set_free_ends(t);
            h.insert_free(t);
            (*t).state.store(span::FREE, Relaxed);
        }
        h.free_pages -= npages;
        h.free_dirty_pages -= (*s).dirty_pages;
        h.inuse_pages += npages;
        INUSE_PAGES.store(h.inuse_pages, Relaxed);
        let needs_zero = (*s).dirty_pages != 0;
        (*s).dirty_pages = 0;
        if !init(&mut *s) {
            (*s).dirty_pages = npages;
            h.free_pages += npages;
            h.free_dirty_pages += npages;
            h.inuse_pages -= npages;
            INUSE_PAGES.store(h.inuse_pages, Relaxed);
            h.add_free(s);
            return (ptr::null_mut(), false);
        }
        set_pages(s as usize, (*s).base, npages);
        USED_END.fetch_max((*s).end(), Relaxed);
        (s, needs_zero)
    }
}

/// Splits the dirty bound of free span `s` (off the lists, whose own
/// dirty pages are still counted in the total) between its first `keep` pages
/// and the piece `rest` cut from it. Where the dirty pages lie is unknown, so
/// each piece gets an upper bound: a piece is never taken for zeroed when it is
/// not (the total may overestimate until the scavenger clears it).
///
/// # Safety
/// Both records are valid; `rest` covers the pages of `s` after `keep`.
unsafe fn split_dirty(h: &mut Inner, s: *mut Span, rest: *mut Span, keep: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        let d = (*s).dirty_pages;
        let rest_pages = (*s).npages - keep;
        h.free_dirty_pages -= d;
        (*s).dirty_pages = d.min(keep);
        (*rest).dirty_pages = d.min(rest_pages);
        h.free_dirty_pages += (*s).dirty_pages + (*rest).dirty_pages;
        (*rest).free_since_ms = (*s).free_since_ms;
    }
}

/// Frees large span `s` if its object is allocated (checked and cleared under
/// the heap lock). Returns false, changing nothing, if it was not.
///
/// # Safety
/// `s` must be a large span found through the page map.
pub unsafe fn free_large_span(s: *mut Span) -> bool {
    let mut h = HEAP.lock();
    // SAFETY: under the heap lock the span cannot change state under us.
    unsafe {
        if (*s).state.load(Relaxed) != span::LARGE
            || !span::is_allocated((*s).large_alloc.swap(span::SLOT_FREE, Relaxed))
        {
            return false;
        }
        if crate::gc::marking() {
            // The object is free (its state byte says so, so markers skip it
            // and a second free is caught), but a concurrent marker may hold
            // the record `s` (read from the page map before this free): it
            // must not change until marking ends. The pages go back now under
            // a fresh record, so a program that frees and reallocates big
            // blocks during a long mark reuses them instead of growing the
            // heap (malloc_large under a collector ran 2x slower). A marker
            // that already pushed the object scans memory that stays
            // committed: at worst it retains something conservatively.
            let r = Span::new_record((*s).base, (*s).npages);
            if r.is_null() {
                (*s).next = h.deferred;
                h.deferred = s;
            } else {
                (*s).next = h.retired;
                h.retired = s;
                h.release(r);
            }
            return true;
        }
        h.release(s);
    }
    h.maybe_scavenge();
    true
}

/// Releases the large spans freed while the collector was marking, and the
/// records retired then (called when marking is over).
pub fn release_deferred() {
    let mut h = HEAP.lock();
    while !h.retired.is_null() {
        let s = h.retired;
        // SAFETY: retired records are off the page map and every list; the
        // marker that might have read them has finished.
        unsafe {
            h.retired = (*s).next;
            Span::free_record(s);
        }
    }
    while !h.deferred.is_null() {
        let s = h.deferred;
        // SAFETY: deferred spans are in-use LARGE records whose object was
        // freed; nothing refers to them but this list.
        unsafe {
            h.deferred = (*s).next;
            (*s).next = ptr::null_mut();
            h.release(s);
        }
    }
}

/// Returns an in-use span's pages to the page heap.
///
/// # Safety
/// `s` must be an in-use span no cache, list or object refers to any more.
pub unsafe fn free_span(s: *mut Span) {
    let mut h = HEAP.lock();
    // SAFETY: the caller's contract; under the heap lock.
    unsafe { h.release(s) };
    h.maybe_scavenge();
}

impl Inner {
    /// Turns in-use span `s` into a free one and coalesces it.
    ///
    /// # Safety
    /// `s` is in use and nothing refers to its memory any more.
    unsafe fn release(&mut self, s: *mut Span) {
        // SAFETY: the caller's contract.
        unsafe {
            (*s).release_bits();
            (*s).state.store(span::FREE, Relaxed);
            (*s).dirty_pages = (*s).npages;
            (*s).free_since_ms = now_ms32();
            let n = (*s).npages;
            self.inuse_pages -= n;
            INUSE_PAGES.store(self.inuse_pages, Relaxed);
            self.free_pages += n;
            self.free_dirty_pages += n;
            set_pages(0, (*s).base, n);
            self.add_free(s);
        }
    }
}

/// Grows in-use span `s` in place to `npages` pages by taking the free pages
/// right after it. Returns false (changing nothing) if they are not free.
///
/// # Safety
/// `s` must be an in-use large span owned by the caller.
pub unsafe fn grow_in_place(s: *mut Span, npages: usize) -> bool {
    let mut h = HEAP.lock();
    // SAFETY: s is in use and ours; r is a free record found at s's end.
    unsafe {
        let extra = npages.saturating_sub((*s).npages);
        if extra == 0 {
            return true;
        }
        let r = free_span_at((*s).end());
        if r.is_null() || (*r).npages < extra {
            return false;
        }
        h.remove_free(r);
        let d = (*r).dirty_pages;
        h.free_dirty_pages -= d;
        h.free_pages -= extra;
        h.inuse_pages += extra;
        INUSE_PAGES.store(h.inuse_pages, Relaxed);
        let old_end = (*s).end();
        if (*r).npages == extra {
            Span::free_record(r);
        } else {
            (*r).base += extra * PAGE_SIZE;
            (*r).npages -= extra;
            (*r).dirty_pages = d.min((*r).npages);
            h.free_dirty_pages += (*r).dirty_pages;
            set_free_ends(r);
            h.insert_free(r);
        }
        (*s).npages = npages;
        set_pages(s as usize, old_end, extra);
        USED_END.fetch_max((*s).end(), Relaxed);
    }
    true
}

/// Calls `f` with every in-use span, walking the page map without the heap
/// lock: spans may come and go meanwhile, so `f` must re-check what it is given
/// under the lock that guards it (records are type-stable).
pub fn for_each_span(mut f: impl FnMut(*mut Span)) {
    let mut addr = range().0;
    while let Some((s, next)) = next_span_from(addr) {
        if let Some(s) = s {
            f(s);
        }
        addr = next;
    }
}

/// One step of a walk over the in-use spans from page-aligned `addr` (the
/// page map read without the heap lock, as in [`for_each_span`]): the span
/// starting at `addr`, if an in-use one does, and where the walk goes on.
/// None at the end of the committed heap.
pub fn next_span_from(addr: usize) -> Option<(Option<*mut Span>, usize)> {
    if addr >= COMMITTED_END.load(Relaxed) {
        return None;
    }
    let e = entry(addr).map(|e| e.load(Relaxed)).unwrap_or(0);
    let s = (e & !FREE_TAG) as *mut Span;
    if s.is_null() {
        return Some((None, addr + PAGE_SIZE));
    }
    // SAFETY: page-map entries point at span records (type-stable).
    let (b, end, st) = unsafe { ((*s).base, (*s).end(), (*s).state.load(Relaxed)) };
    if b != addr || end <= addr {
        return Some((None, addr + PAGE_SIZE));
    }
    let in_use = e & FREE_TAG == 0 && (span::is_slotted(st) || st == span::LARGE);
    Some((in_use.then_some(s), end))
}

/// Sweeps large span `s` for the cycle that just ended: an unmarked object is
/// unreachable; it is freed in collect mode or when GC-managed, else counted
/// as a leak (once).
///
/// # Safety
/// `s` is a span record found through the page map.
pub unsafe fn sweep_large(s: *mut Span, gen: u32, collect: bool) -> crate::alloc::central::Swept {
    let mut r = crate::alloc::central::Swept::default();
    let mut h = HEAP.lock();
    // SAFETY: under the heap lock the span cannot change state.
    unsafe {
        if (*s).state.load(Relaxed) != span::LARGE || (*s).sweepgen.load(Relaxed) == gen {
            return r;
        }
        (*s).sweepgen.store(gen, Relaxed);
        let st = (*s).large_alloc.load(Relaxed);
        let marked = (*s).large_mark.swap(0, Relaxed) != 0;
        if !span::is_allocated(st) {
            return r;
        }
        if marked || span::born_in(st, gen) {
            if span::needs_aging(st, gen) {
                span::age(&(*s).large_alloc, st, gen);
            }
            return r;
        }
        let bytes = (*s).npages * PAGE_SIZE;
        if collect || span::is_managed(st) {
            (*s).large_alloc.store(span::SLOT_FREE, Relaxed);
            h.release(s);
            r.freed_objects = 1;
            r.freed_bytes = bytes as u64;
            r.objects = 1;
            r.bytes = bytes as u64;
        } else {
            // A leak: counted the first time a cycle finds it.
            let b = crate::leak::note_unreachable(&(*s).large_site, bytes);
            r.objects = (b > 0) as u64;
            r.bytes = b as u64;
        }
        r
    }
}

/// Returns every free page to the OS (malloc_trim, magpie::trim). Returns bytes released.
pub fn release_all() -> usize {
    HEAP.lock().scavenge(usize::MAX, None)
}

/// Page-heap figures, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapStats {
    pub reserved: usize,
    pub committed: usize,
    pub in_use: usize,
    pub free: usize,
    pub free_resident: usize,
    pub released_total: u64,
}

pub fn stats() -> HeapStats {
    let h = HEAP.lock();
    let (base, reserved) = range();
    HeapStats {
        reserved,
        committed: h.committed_end.saturating_sub(base),
        in_use: h.inuse_pages * PAGE_SIZE,
        free: h.free_pages * PAGE_SIZE,
        free_resident: h.free_dirty_pages * PAGE_SIZE,
        released_total: SCAVENGED_BYTES.load(Relaxed),
    }
}

/// Checks the page heap's invariants: free lists hold free spans of the right
/// length inside the committed range, no two free spans are adjacent (they
/// would have coalesced), page counts add up, and every page map entry of an
/// in-use span points back to it. Calls `visit` for every in-use span.
pub fn verify(
    mut visit: impl FnMut(*mut Span) -> Result<(), crate::debug::VerifyError>,
) -> Result<(), crate::debug::VerifyError> {
    use crate::debug::VerifyError as E;
    let h = HEAP.lock();
    let (base, _) = range();
    let mut free_pages = 0;
    for (li, l) in h.free.iter().enumerate() {
        let mut s = l.head;
        let mut count = 0;
        while !s.is_null() {
            // SAFETY: list records are valid under the lock.
            let sp = unsafe { &*s };
            if sp.state.load(Relaxed) != span::FREE {
                return Err(E::new("span on a free list is not free", sp.base));
            }
            if list_index(sp.npages) != li {
                return Err(E::new("free span on the wrong list", sp.base));
            }
            if sp.base < base || sp.end() > h.committed_end {
                return Err(E::new("free span outside the committed heap", sp.base));
            }
            free_pages += sp.npages;
            count += 1;
            s = sp.next;
        }
        if count != l.len {
            return Err(E::new("free list length is wrong", li));
        }
    }
    if free_pages != h.free_pages {
        return Err(E::new("free page count is wrong", free_pages));
    }
    // Walk the committed range span by span through the page map, checking
    // that it is exact: in-use spans on every page, free spans tagged at their
    // ends and zero inside.
    let load = |a: usize| entry(a).map(|e| e.load(Relaxed)).unwrap_or(0);
    let mut addr = base;
    let mut inuse = 0;
    let mut prev_free = false;
    while addr < h.committed_end {
        let v = load(addr);
        let s = (v & !FREE_TAG) as *mut Span;
        if s.is_null() {
            return Err(E::new("page map has no span for a committed page", addr));
        }
        // SAFETY: page-map entries point at span records.
        let sp = unsafe { &*s };
        if sp.base != addr {
            return Err(E::new("page map entry does not start a span", addr));
        }
        let st = sp.state.load(Relaxed);
        if st == span::FREE {
            if v & FREE_TAG == 0 || load(sp.end() - PAGE_SIZE) != v {
                return Err(E::new(
                    "free span's ends are not tagged in the page map",
                    addr,
                ));
            }
            for i in 1..sp.npages.saturating_sub(1) {
                if load(addr + i * PAGE_SIZE) != 0 {
                    return Err(E::new(
                        "stale page-map entry inside a free span",
                        addr + i * PAGE_SIZE,
                    ));
                }
            }
            if prev_free {
                return Err(E::new("two adjacent free spans did not coalesce", addr));
            }
            prev_free = true;
        } else if span::is_slotted(st) || st == span::LARGE {
            prev_free = false;
            inuse += sp.npages;
            for i in 0..sp.npages {
                if load(addr + i * PAGE_SIZE) != s as usize {
                    return Err(E::new(
                        "page map entry does not point to its span",
                        addr + i * PAGE_SIZE,
                    ));
                }
            }
            if span_of(addr) != s || span_of(sp.end() - 1) != s {
                return Err(E::new("span_of does not find its span", addr));
            }
        } else {
            return Err(E::new("page map points at a dead span record", addr));
        }
        addr = sp.end();
    }
    if inuse != h.inuse_pages {
        return Err(E::new("in-use page count is wrong", inuse));
    }
    // Visit in-use spans without the heap lock (visitors take central locks,
    // which come before the heap lock in the lock order); the walk is
    // for_each_span's, and stops visiting at the first broken invariant.
    drop(h);
    let mut result = Ok(());
    for_each_span(|s| {
        if result.is_ok() {
            result = visit(s);
        }
    });
    result
}

/// Takes and drops the heap lock: as `central::lock_barrier`, for what is
/// decided under it (large spans freed while the collector marks).
pub fn lock_barrier() {
    drop(HEAP.lock());
}

pub fn lock_for_fork() {
    core::mem::forget(HEAP.lock());
}

/// # Safety
/// Only after [`lock_for_fork`].
pub unsafe fn unlock_after_fork() {
    // SAFETY: the caller holds the lock leaked by lock_for_fork.
    unsafe { HEAP.force_unlock() };
}

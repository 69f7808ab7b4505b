//! Conservative marking.
//!
//! A word marks the object it points into (interior pointers included) if the
//! span is in use and the slot is allocated (Go's and MMTk's lesson: check
//! both). A newly marked object that may hold pointers is pushed on the mark
//! stack, which lives in magpie's own mapping; draining it scans objects word
//! by word, without recursion. When the stack is full, pushes are dropped and
//! an overflow flag set; the drain then rescans the heap for marked objects
//! and scans them again until no push was dropped, so a deep or wide graph
//! never crashes the collector.
//!
//! Each candidate word goes through a short software pipeline before it is
//! marked ([`Marker::mark_word`]): its page-map entry is prefetched, then,
//! PIPE words later, its span record, then its slot-state byte and mark
//! word, and only then is it marked. A word pointing at a random object of a
//! large heap misses the cache three times in a row (page map, record, slot
//! metadata); without the pipeline those misses were serial, and rescanning
//! a 4 KiB page of such pointers took 12–20 µs at 1 GiB. The pipeline is
//! flushed by [`Marker::drain`], so a mark is late by a few words, never lost.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::alloc::{heap, sizeclass::PAGE_SIZE, span};
use crate::sys::os;

/// Mark-stack capacity in entries (16 bytes each), reserved not committed.
const STACK_ENTRIES: usize = 16 << 20;
/// The capacity markers use: `STACK_ENTRIES`, or less with
/// `MAGPIE_DEBUG_MARK_STACK` (tests of the overflow recovery).
pub(super) static STACK_CAP: core::sync::atomic::AtomicUsize =
    core::sync::atomic::AtomicUsize::new(STACK_ENTRIES);
/// Bytes of one object scanned before its children (see `drain_prefetching`).
const SCAN_CHUNK: usize = 4096;

/// The buffer `scan_range_copied` reads through (one marker runs at a time:
/// the cycle lock).
const COPY_BYTES: usize = 64 << 10;
static COPY_BUF: AtomicU64 = AtomicU64::new(0);

fn copy_buffer() -> *mut u8 {
    let mut b = COPY_BUF.load(Relaxed) as *mut u8;
    if b.is_null() {
        b = os::map_owned(COPY_BYTES);
        COPY_BUF.store(b as u64, Relaxed);
    }
    b
}

/// A mark-stack entry: an object (or a chunk of one) to scan, as (start,
/// length); with [`WRITTEN`] in the length, a run of written heap pages.
pub type Entry = (usize, usize);

/// Length tag of an entry that is a run of written heap pages (concurrent
/// mark termination): scanned with [`Marker::scan_written`], so markers of a
/// team share the rescan. Never dropped when the stack is full (a dropped
/// run would be lost: the overflow recovery rescans marked objects, and the
/// objects allocated black during the mark are not marked), scanned at once
/// instead.
const WRITTEN: usize = 1 << 63;

/// What a helper marker copies from the leader for a round of parallel marking.
#[derive(Clone, Copy)]
pub struct MarkerConfig {
    heap_lo: usize,
    heap_hi: usize,
    black_gen: Option<u32>,
    pipelined: bool,
    explain: (usize, usize),
}

pub struct Marker {
    stack: *mut Entry,
    /// The stack holds entries `[bottom, len)`: pops take from the top,
    /// a team's donations from the bottom (no entries move).
    bottom: usize,
    len: usize,
    cap: usize,
    overflowed: bool,
    heap_lo: usize,
    heap_hi: usize,
    /// Bytes of objects marked.
    pub marked_bytes: u64,
    pub marked_objects: u64,
    /// Bytes scanned (roots and heap objects).
    pub scanned_bytes: u64,
    /// The most entries the stack held.
    pub peak: usize,
    /// `debug::explain_retention`: the object to explain, as [start, end).
    explain: (usize, usize),
    /// Concurrent marking: objects born in this sweep generation were
    /// allocated black during the mark; they are neither marked nor scanned
    /// (their contents may not be initialised yet; what they hold is found
    /// on the written pages at mark termination).
    black_gen: Option<u32>,
    /// Whether words go through the pipeline: only when the heap is larger
    /// than the caches, where its lookups miss (on a heap of a few MiB the
    /// pipeline only adds instructions).
    pipelined: bool,
    /// The lookup pipeline: words whose page-map entry was prefetched (a),
    /// then whose span record was (b), then whose slot metadata was (c).
    pipe_a: Ring<usize>,
    pipe_b: Ring<(usize, *const span::Span)>,
    pipe_c: Ring<(usize, *const span::Span)>,
    /// Marking in a team (`parallel`): mark bits are set atomically and work
    /// is given to idle markers.
    shared: bool,
    /// Leading a quiet round (a concurrent mark), where helpers join only
    /// when invited: the marker sets mark bits plainly until a helper asks
    /// for work, and becomes `shared` before it gives any away (a helper
    /// marks nothing without work from the pool, so no plain
    /// read-modify-write of a mark word can race with its atomic one).
    may_share: bool,
    /// Objects scanned since the last check for idle markers.
    since_share_check: u32,
}

/// Depth of each stage of the lookup pipeline (a power of two).
const PIPE: usize = 8;
/// Heap in use from which the marker pipelines its lookups.
const PIPELINE_MIN_HEAP: usize = 64 << 20;
/// `MAGPIE_MARK_PIPELINE`: 0 auto (by heap size), 1 never, 2 always (tests).
pub(super) static PIPELINE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// A tiny FIFO of pipeline entries.
struct Ring<T: Copy> {
    buf: [T; PIPE],
    head: usize,
    len: usize,
}

impl<T: Copy> Ring<T> {
    const fn new(fill: T) -> Ring<T> {
        Ring {
            buf: [fill; PIPE],
            head: 0,
            len: 0,
        }
    }

    /// Appends `v`; if the ring was full, first takes out and returns the oldest.
    #[inline(always)]
    fn push_evict(&mut self, v: T) -> Option<T> {
        let out = if self.len == PIPE {
            let o = self.buf[self.head];
            self.head = (self.head + 1) % PIPE;
            self.len -= 1;
            Some(o)
        } else {
            None
        };
        self.buf[(self.head + self.len) % PIPE] = v;
        self.len += 1;
        out
    }

    #[inline(always)]
    fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let o = self.buf[self.head];
        self.head = (self.head + 1) % PIPE;
        self.len -= 1;
        Some(o)
    }
}

/// The mark stacks (lazily mapped, reused): the leader's, then one per helper.
static STACKS: [AtomicU64; super::parallel::MAX_MARKERS] =
    [const { AtomicU64::new(0) }; super::parallel::MAX_MARKERS];

/// Mark stack `i` (0 the leader's, then the helpers'), mapped on first use.
/// Helpers map theirs when they start: a mapping made while the leader
/// scans roots could be taken for a root.
pub(super) fn mark_stack(i: usize) -> *mut Entry {
    let mut base = STACKS[i].load(Relaxed) as *mut Entry;
    if base.is_null() {
        base = os::map_owned(STACK_ENTRIES * core::mem::size_of::<Entry>()).cast();
        if !base.is_null() {
            STACKS[i].store(base as u64, Relaxed);
        }
    }
    base
}

/// What a mark stack keeps resident between cycles; pages above are returned.
const STACK_KEEP: usize = 64 << 10;

/// Returns the mark stacks' pages above [`STACK_KEEP`] to the OS, after a
/// cycle: a mark that went deep (a wide graph, each object pointing to
/// several not yet marked, pushes more than it pops: a million nodes of four
/// random edges took 6 MiB) would otherwise hold its high-water mark resident
/// for good. A
/// deep mark pays the page faults again next cycle, on the collector's side.
///
/// # Safety
/// No marker may run: between cycles, the cycle lock held.
pub(super) unsafe fn trim_stacks() {
    for s in &STACKS {
        let base = s.load(Relaxed) as *mut u8;
        // SAFETY: between cycles no marker holds entries (a helper touches
        // its stack only with work taken from a round's pool).
        unsafe {
            os::trim(
                base,
                STACK_ENTRIES * core::mem::size_of::<Entry>(),
                STACK_KEEP,
            )
        };
    }
}

impl Marker {
    /// The collector's marker. None if its stack cannot be mapped.
    pub fn new() -> Option<Marker> {
        // Only the committed part of the reservation can hold objects (it
        // grows while a concurrent mark runs, so take it with a margin).
        let (lo, size) = heap::range();
        let size = (heap::committed_end() - lo + (1 << 30)).min(size);
        Self::with(
            0,
            MarkerConfig {
                heap_lo: lo,
                heap_hi: lo + size,
                black_gen: None,
                pipelined: match PIPELINE.load(Relaxed) {
                    1 => false,
                    2 => true,
                    _ => heap::in_use_bytes() >= PIPELINE_MIN_HEAP,
                },
                explain: crate::debug::explained().map_or((0, 0), object_bounds),
            },
        )
    }

    /// Helper `i`'s marker for a round led by a marker with `cfg`.
    pub fn helper(i: usize, cfg: MarkerConfig) -> Option<Marker> {
        let mut m = Self::with(i + 1, cfg)?;
        m.shared = true;
        Some(m)
    }

    fn with(stack: usize, cfg: MarkerConfig) -> Option<Marker> {
        let base = mark_stack(stack);
        if base.is_null() {
            return None;
        }
        Some(Marker {
            stack: base,
            bottom: 0,
            len: 0,
            cap: STACK_CAP.load(Relaxed).clamp(4, STACK_ENTRIES),
            overflowed: false,
            heap_lo: cfg.heap_lo,
            heap_hi: cfg.heap_hi,
            marked_bytes: 0,
            marked_objects: 0,
            scanned_bytes: 0,
            peak: 0,
            explain: cfg.explain,
            black_gen: cfg.black_gen,
            pipelined: cfg.pipelined,
            pipe_a: Ring::new(0),
            pipe_b: Ring::new((0, core::ptr::null())),
            pipe_c: Ring::new((0, core::ptr::null())),
            shared: false,
            may_share: false,
            since_share_check: 0,
        })
    }

    /// This marker's settings, for helpers joining it.
    pub fn config(&self) -> MarkerConfig {
        MarkerConfig {
            heap_lo: self.heap_lo,
            heap_hi: self.heap_hi,
            black_gen: self.black_gen,
            pipelined: self.pipelined,
            explain: self.explain,
        }
    }

    /// Marks as one of a team (atomic mark bits, work given away) or alone.
    pub fn set_shared(&mut self, shared: bool) {
        self.shared = shared;
        self.may_share = false;
    }

    /// Leads a quiet round: alone until a helper asks for work (see
    /// `may_share`).
    pub fn set_may_share(&mut self) {
        self.shared = false;
        self.may_share = true;
    }

    /// Drains the stack and the pipeline (no overflow recovery: a team's
    /// leader recovers after the round).
    pub(super) fn drain_local(&mut self) {
        loop {
            self.drain_prefetching();
            self.flush_pipe();
            if self.len == self.bottom {
                self.len = 0;
                self.bottom = 0;
                return;
            }
        }
    }

    /// Moves the bottom half of the stack (its oldest entries) into `out`,
    /// as many as fit; returns how many.
    pub(super) fn give_bottom(&mut self, out: &mut [Entry]) -> usize {
        let n = (self.depth() / 2).min(out.len());
        if n == 0 {
            return 0;
        }
        // SAFETY: entries [bottom, len) were pushed; n <= their number.
        unsafe { core::ptr::copy_nonoverlapping(self.stack.add(self.bottom), out.as_mut_ptr(), n) };
        self.bottom += n;
        n
    }

    /// Entries on the stack.
    #[inline]
    fn depth(&self) -> usize {
        self.len - self.bottom
    }

    /// Pushes entries taken from a team's pool.
    pub(super) fn push_entries(&mut self, entries: &[Entry]) {
        for &(lo, len) in entries {
            self.push(lo, len);
        }
    }

    /// The figures gathered since the last call, reset: (marked bytes,
    /// marked objects, scanned bytes, whether a push was dropped).
    pub(super) fn take_figures(&mut self) -> (u64, u64, u64, bool) {
        let f = (
            self.marked_bytes,
            self.marked_objects,
            self.scanned_bytes,
            self.overflowed,
        );
        self.marked_bytes = 0;
        self.marked_objects = 0;
        self.scanned_bytes = 0;
        self.overflowed = false;
        f
    }

    /// A team member dropped pushes: the next drain rescans marked objects.
    pub(super) fn note_overflow(&mut self) {
        self.overflowed = true;
    }

    /// Objects allocated in sweep generation `gen` are black (see `black_gen`).
    pub fn set_black_gen(&mut self, gen: u32) {
        self.black_gen = Some(gen);
    }

    #[inline]
    fn born_black(&self, state: u8) -> bool {
        self.black_gen.is_some_and(|g| span::born_in(state, g))
    }

    /// Whether the object holding `addr` (pushed for scanning) still needs
    /// it: allocated, and not since freed and reallocated black. Objects are
    /// freed under a concurrent mark; the rest of a freed object is garbage.
    fn still_to_scan(&self, addr: usize) -> bool {
        let s = heap::span_of(addr);
        if s.is_null() {
            return false;
        }
        // SAFETY: span_of returns live span records.
        let sp = unsafe { &*s };
        let st = match sp.state.load(Relaxed) {
            span::SMALL => sp.slot_state(sp.slot_of(addr)).load(Relaxed),
            span::LARGE => sp.large_alloc.load(Relaxed),
            _ => return false,
        };
        span::is_allocated(st) && !self.born_black(st)
    }

    #[inline]
    fn push(&mut self, lo: usize, len: usize) {
        if self.len == self.cap && self.bottom > 0 {
            // Donations emptied the bottom: move the entries down (once per
            // stackful, so amortized constant).
            let n = self.depth();
            // SAFETY: both ranges lie inside the stack; copy handles overlap.
            unsafe { core::ptr::copy(self.stack.add(self.bottom), self.stack, n) };
            self.bottom = 0;
            self.len = n;
        }
        if self.len == self.cap {
            if len & WRITTEN != 0 {
                self.scan_written(lo, lo + (len & !WRITTEN));
            } else {
                self.overflowed = true;
            }
            return;
        }
        // SAFETY: len < cap, inside the mark-stack mapping.
        unsafe { *self.stack.add(self.len) = (lo, len) };
        self.len += 1;
        self.peak = self.peak.max(self.depth());
    }

    /// Pushes the written pages `[lo, lo + len)` for [`Marker::scan_written`]
    /// by whichever marker of the team pops them.
    pub fn push_written(&mut self, lo: usize, len: usize) {
        self.push(lo, len | WRITTEN);
    }

    /// Scans a popped entry.
    #[inline]
    fn scan_entry(&mut self, lo: usize, len: usize) {
        if len & WRITTEN != 0 {
            self.scan_written(lo, lo + (len & !WRITTEN));
        } else {
            self.scan_range(lo, lo + len);
        }
    }

    /// Marks the object `v` points into, if any: sends `v` down the lookup
    /// pipeline (see the module docs); it is marked a few words later, or at
    /// the latest by the next [`Marker::drain`].
    #[inline]
    pub fn mark_word(&mut self, v: usize) {
        if v.wrapping_sub(self.heap_lo) >= self.heap_hi - self.heap_lo {
            return;
        }
        if !self.pipelined {
            let s = heap::span_of(v);
            if !s.is_null() {
                self.mark_now(v, s);
            }
            return;
        }
        prefetch(heap::page_map_entry_addr(v));
        if let Some(a) = self.pipe_a.push_evict(v) {
            self.stage_b(a);
        }
    }

    /// Second stage: the page-map entry is (probably) cached; look the span
    /// up and prefetch its record.
    #[inline(always)]
    fn stage_b(&mut self, v: usize) {
        let s = heap::span_of(v);
        if s.is_null() {
            return;
        }
        prefetch(s as usize);
        prefetch(s as usize + 64);
        if let Some((w, t)) = self.pipe_b.push_evict((v, s)) {
            self.stage_c(w, t);
        }
    }

    /// Third stage: the record is (probably) cached; prefetch the slot's
    /// state byte and mark word.
    #[inline(always)]
    fn stage_c(&mut self, v: usize, s: *const span::Span) {
        // SAFETY: records are type-stable; a stale one only misdirects a prefetch.
        let sp = unsafe { &*s };
        if matches!(sp.state.load(Relaxed), span::SMALL | span::TINY) {
            let i = sp.slot_of(v);
            prefetch(sp.alloc as usize + i);
            prefetch(sp.marks as usize + i / 64 * 8);
        }
        if let Some((w, t)) = self.pipe_c.push_evict((v, s)) {
            self.mark_now(w, t);
        }
    }

    /// Sends every word still in the pipeline through to its mark.
    fn flush_pipe(&mut self) {
        while let Some(v) = self.pipe_a.pop() {
            self.stage_b(v);
        }
        while let Some((v, s)) = self.pipe_b.pop() {
            self.stage_c(v, s);
        }
        while let Some((v, s)) = self.pipe_c.pop() {
            self.mark_now(v, s);
        }
    }

    /// Marks the object `v` points into in span `s` (in use when looked up),
    /// if it is an allocated slot.
    #[inline(always)]
    fn mark_now(&mut self, v: usize, s: *const span::Span) {
        // SAFETY: span records are type-stable and, while marking, never
        // released (the state is checked again here).
        let sp = unsafe { &*s };
        match sp.state.load(Relaxed) {
            span::SMALL | span::TINY => {
                let i = sp.slot_of(v);
                if i >= sp.nelems as usize {
                    return;
                }
                let st = sp.slot_state(i).load(Relaxed);
                if !span::is_allocated(st) || self.born_black(st) {
                    return;
                }
                let newly = if self.shared {
                    sp.mark_slot_atomic(i)
                } else {
                    sp.mark_slot(i)
                };
                if newly {
                    let size = sp.elemsize as usize;
                    self.marked_bytes += size as u64;
                    self.marked_objects += 1;
                    if !sp.noscan {
                        self.push(sp.slot_addr(i), scanned_size(sp, i, size));
                    }
                }
            }
            span::LARGE => {
                let st = sp.large_alloc.load(Relaxed);
                if !span::is_allocated(st) || self.born_black(st) {
                    return;
                }
                if sp.large_mark.swap(1, Relaxed) == 0 {
                    let size = sp.npages * PAGE_SIZE;
                    self.marked_bytes += size as u64;
                    self.marked_objects += 1;
                    if sp.noscan {
                    } else if sp.npages >= super::backed::MIN_PAGES {
                        // Only the pages that hold data (see `backed`).
                        super::backed::for_each_backed_run(sp.base, sp.base + size, &mut |a, b| {
                            self.push(a, b - a)
                        });
                    } else {
                        self.push(sp.base, size);
                    }
                }
            }
            _ => {}
        }
    }

    /// Marks from every aligned word of `[lo, hi)`.
    pub fn scan_range(&mut self, lo: usize, hi: usize) {
        let mut p = (lo + 7) & !7;
        self.scanned_bytes += hi.saturating_sub(p) as u64;
        if self.explain.1 != 0 {
            self.explain_in(p, hi);
        }
        // The range test inlined with the bounds in registers: most words of
        // roots are not heap addresses.
        let (heap_lo, heap_size) = (self.heap_lo, self.heap_hi - self.heap_lo);
        while p + 8 <= hi {
            // SAFETY: the caller passes readable memory; volatile because
            // other threads may write it (concurrent marking).
            let v = unsafe { core::ptr::read_volatile(p as *const usize) };
            if v.wrapping_sub(heap_lo) < heap_size {
                self.mark_word(v);
            }
            p += 8;
        }
    }

    /// Like [`scan_range`](Self::scan_range) for memory that other threads
    /// may unmap while we read it (root mappings during concurrent marking):
    /// it is copied with `process_vm_readv`, which fails cleanly where a
    /// plain read would fault. Returns false if part could not be read.
    pub fn scan_range_copied(&mut self, lo: usize, hi: usize) -> bool {
        let buf = copy_buffer();
        if buf.is_null() {
            return false;
        }
        let mut ok = true;
        let mut p = (lo + 7) & !7;
        while p < hi {
            let n = (hi - p).min(COPY_BYTES) & !7;
            if n == 0 {
                break;
            }
            let local = libc::iovec {
                iov_base: buf.cast(),
                iov_len: n,
            };
            let remote = libc::iovec {
                iov_base: p as *mut libc::c_void,
                iov_len: n,
            };
            // SAFETY: reads our own address space into our own buffer of
            // COPY_BYTES; the kernel checks the remote range.
            let got = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
            if got <= 0 {
                ok = false;
                p += n;
                continue;
            }
            let got = got as usize & !7;
            self.scanned_bytes += got as u64;
            for k in 0..got / 8 {
                // SAFETY: the buffer holds `got` copied bytes.
                let v = unsafe { *(buf as *const usize).add(k) };
                self.mark_word(v);
            }
            p += got.max(8);
        }
        ok
    }

    /// The pages of `[lo, hi)` that [`Marker::scan_written`] would read:
    /// those of in-use spans that may hold pointers (a written page of a free
    /// or pointer-free span costs a span lookup, not a scan).
    pub fn scannable_pages(lo: usize, hi: usize) -> usize {
        let mut pages = 0;
        for_each_scannable_part(lo, hi, |sp, from, end| {
            let in_use = match sp.state.load(Relaxed) {
                span::SMALL => true,
                span::LARGE => span::is_allocated(sp.large_alloc.load(Relaxed)),
                _ => false,
            };
            if in_use {
                pages += (end - from).div_ceil(4096);
            }
        });
        pages
    }

    /// Mark termination of a concurrent cycle: rescans what the program may
    /// have written since its pages were protected, `[lo, hi)` of the heap:
    /// the marked and the born-black objects overlapping it, clipped to it
    /// (noscan spans, free slots and unmarked objects skipped).
    ///
    /// An unmarked object needs no rescan: if it is reachable it gets marked
    /// (from a root or another rescanned object) and then scanned whole, with
    /// whatever it holds by then; if it is not, what it holds does not count.
    /// Only objects scanned already (marked) or never to be scanned (born
    /// black) can hide a pointer written after their scan. On a page of a
    /// heap full of garbage (a program that relies on the collector) that is
    /// most of the objects.
    pub fn scan_written(&mut self, lo: usize, hi: usize) {
        for_each_scannable_part(lo, hi, |sp, addr, end| match sp.state.load(Relaxed) {
            span::SMALL => {
                let size = sp.elemsize as usize;
                let mut i = sp.slot_of(addr);
                while i < sp.nelems as usize && sp.slot_addr(i) < end {
                    let st = sp.slot_state(i).load(Relaxed);
                    if span::is_allocated(st) && (sp.is_marked(i) || self.born_black(st)) {
                        let a = sp.slot_addr(i);
                        self.scan_range(a.max(addr), (a + size).min(end));
                    }
                    i += 1;
                }
            }
            span::LARGE
                if span::is_allocated(sp.large_alloc.load(Relaxed))
                    && (sp.large_mark.load(Relaxed) != 0
                        || self.born_black(sp.large_alloc.load(Relaxed))) =>
            {
                // A page the kernel reports written may be one never touched
                // (a fresh object's dropped pages carry no protection): only
                // the pages that hold data (see `backed`).
                if end - addr >= super::backed::MIN_PAGES * PAGE_SIZE {
                    super::backed::for_each_backed_run(addr, end, &mut |a, b| {
                        self.scan_range(a, b)
                    });
                } else {
                    self.scan_range(addr, end);
                }
            }
            _ => {}
        });
    }

    #[cold]
    fn explain_in(&self, lo: usize, hi: usize) {
        let (a, b) = self.explain;
        let mut p = lo;
        while p + 8 <= hi {
            // SAFETY: as in scan_range.
            let v = unsafe { core::ptr::read_volatile(p as *const usize) };
            if v >= a && v < b {
                crate::sys::fatal::warn(format_args!(
                    "explain: object {a:#x} is referenced by the word at {p:#x} ({v:#x}), scanning {lo:#x}..{hi:#x}"
                ));
                explain_site(lo);
            }
            p += 8;
        }
    }

    /// Scans pushed objects until the mark stack is empty, recovering from
    /// overflow by rescanning marked objects.
    pub fn drain(&mut self) {
        loop {
            self.drain_local();
            if !self.overflowed {
                return;
            }
            self.overflowed = false;
            self.rescan_marked();
        }
    }

    /// Empties the mark stack through a small FIFO: an object popped from
    /// the stack has its first cache line prefetched and is scanned only
    /// after the PREFETCH_DEPTH - 1 objects popped before it, so its miss
    /// overlaps their scanning (buffered prefetching, as in Cher, Hosking
    /// and Vijaykumar, ASPLOS 2004; Boehm GC prefetches on push for the same
    /// reason). The order stays nearly depth-first.
    fn drain_prefetching(&mut self) {
        const PREFETCH_DEPTH: usize = 8;
        let mut fifo = [(0usize, 0usize); PREFETCH_DEPTH];
        let (mut head, mut count) = (0usize, 0usize);
        loop {
            while count < PREFETCH_DEPTH && self.len > self.bottom {
                self.len -= 1;
                // SAFETY: len < cap; the entry was pushed.
                let e = unsafe { *self.stack.add(self.len) };
                prefetch(e.0);
                fifo[(head + count) % PREFETCH_DEPTH] = e;
                count += 1;
            }
            if count == 0 {
                return;
            }
            let (lo, mut len) = fifo[head];
            head = (head + 1) % PREFETCH_DEPTH;
            count -= 1;
            if len > SCAN_CHUNK && len & WRITTEN == 0 {
                if !self.still_to_scan(lo) {
                    // Freed by the program since it was pushed (a concurrent
                    // mark), perhaps its pages dropped and reused: reading
                    // them would map the zero page and turn the program's
                    // next write into a copy-on-write fault with a TLB
                    // shootdown. What is left of it is garbage.
                    continue;
                }
                // A big object is scanned a chunk at a time, the rest pushed
                // back under the chunk's children: the stack then holds at
                // most a chunk's worth of pointers per level, not every
                // pointer of an array (Boehm's mark_from does the same).
                self.push(lo + SCAN_CHUNK, len - SCAN_CHUNK);
                len = SCAN_CHUNK;
            }
            self.scan_entry(lo, len);
            if self.shared || self.may_share {
                self.since_share_check += 1;
                if self.since_share_check >= 32 {
                    self.since_share_check = 0;
                    if self.depth() >= 2 && super::parallel::wants_work() {
                        // Atomic marks from now on; the donation (under the
                        // pool's lock) publishes the switch to the helper
                        // that takes it.
                        self.shared = true;
                        super::parallel::donate(self);
                    }
                }
            }
        }
    }

    /// After an overflow: pushes every marked object that may hold pointers
    /// again (a dropped push left some unscanned), draining as it goes.
    fn rescan_marked(&mut self) {
        let (lo, _) = heap::range();
        let mut addr = lo;
        while heap::is_committed(addr) {
            let s = heap::span_of(addr);
            if s.is_null() {
                addr += PAGE_SIZE;
                continue;
            }
            // SAFETY: live span record.
            let sp = unsafe { &*s };
            addr = sp.end();
            if sp.noscan {
                continue;
            }
            match sp.state.load(Relaxed) {
                span::SMALL => {
                    for i in 0..sp.nelems as usize {
                        if sp.is_marked(i) {
                            let a = sp.slot_addr(i);
                            self.scan_range(a, a + sp.elemsize as usize);
                            while self.len > self.bottom && !self.overflowed {
                                self.len -= 1;
                                // SAFETY: as in drain.
                                let (l, n) = unsafe { *self.stack.add(self.len) };
                                self.scan_entry(l, n);
                            }
                        }
                    }
                }
                span::LARGE if sp.large_mark.load(Relaxed) != 0 => {
                    self.scan_range(sp.base, sp.end())
                }
                _ => {}
            }
        }
    }
}

/// Calls `f(span, from, end)` for each part `[from, end)` of `[lo, hi)` that
/// lies in a span that may hold pointers (its state is `f`'s to check).
fn for_each_scannable_part(lo: usize, hi: usize, mut f: impl FnMut(&span::Span, usize, usize)) {
    let mut addr = lo;
    while addr < hi {
        let s = heap::span_of(addr);
        if s.is_null() {
            addr = (addr & !(PAGE_SIZE - 1)) + PAGE_SIZE;
            continue;
        }
        // SAFETY: live span record (spans are not released while marking).
        let sp = unsafe { &*s };
        let end = sp.end().min(hi);
        if !sp.noscan {
            f(sp, addr, end);
        }
        addr = end;
    }
}

/// Hints the CPU to load the cache line holding `addr` (never faults).
#[inline(always)]
fn prefetch(addr: usize) {
    // SAFETY: prefetch is a hint; it does not fault on any address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
}

/// The object containing `addr`, as [start, end); (0, 0) if none.
fn object_bounds(addr: usize) -> (usize, usize) {
    let s = heap::span_of(addr);
    if s.is_null() {
        return (0, 0);
    }
    // SAFETY: span_of returns live span records.
    let sp = unsafe { &*s };
    match sp.state.load(Relaxed) {
        span::SMALL | span::TINY => {
            let a = sp.slot_addr(sp.slot_of(addr));
            (a, a + sp.elemsize as usize)
        }
        span::LARGE => (sp.base, sp.end()),
        _ => (0, 0),
    }
}

/// With leakcheck on: prints where the heap object at `addr` was allocated
/// (raw return addresses), for `explain_in`.
#[cold]
fn explain_site(addr: usize) {
    let s = heap::span_of(addr);
    if s.is_null() {
        return;
    }
    // SAFETY: span_of returns live span records.
    let sp = unsafe { &*s };
    let Some(rec) = sp.site(sp.slot_of(addr)) else {
        return;
    };
    let r = rec.load(Relaxed);
    if let Some((frames, _)) = crate::leak::stacks::get(crate::leak::stack_id(r)) {
        // Debug output: symbolized on the spot (the symbolizer neither
        // allocates nor takes allocator locks).
        let sym = crate::leak::symbolize::Symbolizer::new(frames);
        let mut b = crate::sys::fatal::StackBuf::<4096>::new();
        for &f in frames {
            let _ = core::fmt::Write::write_str(&mut b, "\n    ");
            let _ = sym.write_frame(f, &mut b);
        }
        crate::sys::fatal::warn(format_args!(
            "explain: that object ({} bytes asked) was allocated at{}",
            r >> 32,
            core::str::from_utf8(b.as_bytes()).unwrap_or("?")
        ));
    }
}

/// The bytes of slot `i` worth scanning: with leakcheck's site records, only
/// the size the program asked for. The slack after it holds whatever the
/// slot's previous object left there, and a stale pointer in it would hide a
/// leak.
#[inline]
fn scanned_size(sp: &span::Span, i: usize, slot: usize) -> usize {
    match sp.site(i) {
        Some(rec) => crate::leak::asked_size(rec.load(Relaxed)).map_or(slot, |n| n.min(slot)),
        None => slot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `p`'s slot is marked, and clears the mark (leaving the span's
    /// other marks, which a pending sweep may need, alone).
    fn take_mark(p: usize) -> bool {
        let sp = heap::span_of(p);
        assert!(!sp.is_null());
        // SAFETY: a live small span (we hold the object).
        let sp = unsafe { &*sp };
        let i = sp.slot_of(p);
        let marked = sp.is_marked(i);
        // SAFETY: i < nelems; no cycle runs (without_cycles).
        let w = unsafe { &*sp.marks.add(i / 64) };
        w.fetch_and(!(1u64 << (i % 64)), Relaxed);
        marked
    }

    /// Runs of written pages pushed on a full stack are scanned on the spot,
    /// never dropped like an object's push (the overflow recovery rescans
    /// marked objects only, and objects allocated black are not marked).
    #[test]
    fn written_runs_are_scanned_when_the_stack_is_full() {
        crate::gc::without_cycles(|| {
            const N: usize = 24;
            let targets: Vec<usize> = (0..N).map(|_| crate::alloc::alloc_c(64) as usize).collect();
            let holders: Vec<usize> = (0..N)
                .map(|_| crate::alloc::alloc_c(4096) as usize)
                .collect();
            for (&h, &t) in holders.iter().zip(&targets) {
                // SAFETY: h is a fresh 4096-byte block.
                unsafe {
                    core::ptr::write_bytes(h as *mut u8, 0, 4096);
                    *(h as *mut usize).add(100) = t;
                }
            }
            // The holders were marked (and scanned) before the writes: a
            // rescan reads only marked or born-black objects.
            for &h in &holders {
                // SAFETY: a live small span (we hold the object).
                let sp = unsafe { &*heap::span_of(h) };
                sp.mark_slot(sp.slot_of(h));
            }
            let mut m = Marker::new().expect("marker");
            m.cap = 4;
            for &h in &holders {
                m.push_written(h, 4096);
            }
            m.drain();
            for &h in &holders {
                take_mark(h);
            }
            let lost = targets.iter().filter(|&&t| !take_mark(t)).count();
            for p in targets.into_iter().chain(holders) {
                crate::alloc::free(p as *mut u8);
            }
            assert_eq!(lost, 0, "targets left unmarked");
        });
    }
}

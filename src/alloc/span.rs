//! Spans: runs of pages, each either free (owned by the page heap), carved into
//! slots of one size class (small), or holding one object (large).
//!
//! Per-slot state lives out of band, in metadata, never in the slots:
//! - `free_bits` (1 bit per slot, guarded by the class's central lock): the slot is
//!   in the span, available to hand to a per-CPU cache. A slot whose bit is clear
//!   is "out": held by a cache, a transfer batch, or the user.
//! - `alloc` (1 byte per slot, written with plain atomic stores): 1 while the user
//!   holds the slot. `free` checks and clears it (so a double free or a foreign
//!   pointer is caught), and the collector asks it whether a slot is allocated.
//!   A byte rather than a bit, so that threads on different CPUs update
//!   neighbouring slots without read-modify-write.
//!   A slot freed on a CPU other than the span's `owner` (the CPU whose cache
//!   last took slots from it) does not go into the freeing CPU's cache, where
//!   that CPU would hand it out again at once and its threads would write to
//!   a cache line the owner's threads are using (passive false sharing): its
//!   byte becomes `SLOT_REMOTE`, and the first such free queues the span on
//!   its class's remote list (a lock-free stack), which a refill of the class
//!   merges back into the free bits (see `central::free_remote`).
//! - `tiny_state` (tiny spans only, 32 bits per 16-byte block): which offsets
//!   of the block start objects (low 16 bits, published when the carving CPU
//!   lets the block go) and which of those were freed (high 16 bits); see
//!   `cache::tiny_free`.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use super::meta;
use super::sizeclass::{self, PAGE_SIZE};

/// Span states.
pub const FREE: u8 = 0;
/// Slots of one size class.
pub const SMALL: u8 = 1;
/// One large object.
pub const LARGE: u8 = 2;
/// A record not describing any pages (merged away or never used).
pub const DEAD: u8 = 3;
/// Slots of the tiny class: 16-byte blocks carved into tiny objects.
pub const TINY: u8 = 4;

/// True for the states of spans carved into slots.
#[inline(always)]
pub fn is_slotted(state: u8) -> bool {
    state == SMALL || state == TINY
}

/// A slot's `alloc` byte: 0 while free; else bit 0 is set, bit 1 marks a
/// GC-managed object (`Gc`, `magpie_gc_malloc`: reclaimed when unreachable in
/// every mode but `off`), and bits 2..8 hold the sweep generation the object
/// was allocated in (mod 64). The sweeper never frees an object born in the
/// current generation: it was allocated after the mark (allocate-black), e.g.
/// in a slot a stopped thread was freeing during the mark.
pub const SLOT_FREE: u8 = 0;
pub const SLOT_ALLOCATED: u8 = 1;
pub const SLOT_MANAGED_BIT: u8 = 2;
/// Freed remotely, not yet back in the span's free bits (not allocated: the
/// managed bit without the allocated bit, a combination no object has).
pub const SLOT_REMOTE: u8 = SLOT_MANAGED_BIT;
const GEN_SHIFT: u32 = 2;

/// True if a slot-state byte says the slot holds an object.
#[inline(always)]
pub fn is_allocated(state: u8) -> bool {
    state & SLOT_ALLOCATED != 0
}

/// True if the object is GC-managed.
#[inline(always)]
pub fn is_managed(state: u8) -> bool {
    state & SLOT_MANAGED_BIT != 0
}

/// The state byte of an object allocated in sweep generation `gen`.
#[inline(always)]
pub const fn alloc_byte(gen: u32) -> u8 {
    SLOT_ALLOCATED | (((gen & 63) as u8) << GEN_SHIFT)
}

/// True if the object was allocated in sweep generation `gen`.
#[inline(always)]
pub fn born_in(state: u8, gen: u32) -> bool {
    state >> GEN_SHIFT == (gen & 63) as u8
}

/// Generations are kept mod 64, so an object that lives 63 cycles would
/// carry the tag of the next cycle's newborns (which concurrent marking
/// treats as black: not scanned). The sweep of generation `gen` moves each
/// survivor tagged `gen + 1` back to `gen - 1` ([`age`]): every object is
/// retagged about once per 63 cycles, and a tag of the current or next
/// generation always means what it says.
#[inline]
pub fn needs_aging(state: u8, gen: u32) -> bool {
    born_in(state, gen.wrapping_add(1))
}

/// Moves a survivor's state byte to generation `gen - 1` (see
/// [`needs_aging`]); a compare-exchange, so a racing free wins.
#[inline]
pub fn age(slot: &AtomicU8, state: u8, gen: u32) {
    let aged = (state & ((1 << GEN_SHIFT) - 1)) | (((gen.wrapping_sub(1) & 63) as u8) << GEN_SHIFT);
    let _ = slot.compare_exchange(state, aged, Relaxed, Relaxed);
}

/// A span record. The fields `free` reads come first, so the fast path touches
/// one cache line of it; the whole record is two lines (128 bytes: the
/// fragmentation benchmark keeps 14,000 spans, so each byte here is 14 KB of
/// resident memory there).
#[repr(C)]
pub struct Span {
    pub base: usize,
    /// Small spans: the slot-state bytes; large spans: `&large_alloc`.
    pub alloc: *const AtomicU8,
    /// `sizeclass::div_magic` of the slot size (small spans).
    pub div_magic: u32,
    pub elemsize: u32,
    pub nelems: u32,
    /// Size of the metadata block at `free_bits` (small spans).
    bits_size: u32,
    pub state: AtomicU8,
    /// Span class: `class << 1 | noscan`, or the tiny span class.
    pub spanclass: u8,
    pub class: u8,
    pub noscan: bool,
    /// Small spans: the CPU (mod 256) whose cache last took slots from the
    /// span; a free on another CPU is a remote free. Only a routing hint: a
    /// stale or aliased value costs speed, never correctness.
    pub owner: AtomicU8,
    /// The slot-state byte of a large span's single object.
    pub large_alloc: AtomicU8,
    /// Large spans: the mark bit of the object.
    pub large_mark: AtomicU8,
    /// Small spans: on the central partial list.
    pub in_partial: bool,
    pub npages: usize,
    /// Free spans: an upper bound of the pages that may be resident and dirty
    /// (not fresh from the OS, not returned to it). 0 means the span reads as zeros.
    pub dirty_pages: usize,
    /// Links for the list the span is on (page heap free list or central partial list).
    pub next: *mut Span,
    pub prev: *mut Span,
    /// Small spans: slots with their free bit set (central lock).
    pub nfree: u32,
    /// Small spans: word index where the search for free bits resumes.
    pub cursor: u32,
    /// The collector's sweep generation (Go's sweepgen); set on creation.
    pub sweepgen: AtomicU32,
    /// Free spans: when they became free, in ms modulo 2^32 (see
    /// `heap::now_ms32`), for the scavenger's delay.
    pub free_since_ms: u32,
    /// Small spans: the free bits, in the metadata block just after its
    /// [`RemoteHeader`].
    pub free_bits: *mut u64,
    pub tiny_state: *const AtomicU32,
    /// Small spans: the collector's mark bits, one per slot.
    pub marks: *const AtomicU64,
    /// Leakcheck: one site record per slot (see `leak::record`), or null.
    pub sites: *const AtomicU64,
    /// Leakcheck: the site record of a large span's object.
    pub large_site: AtomicU64,
}

static_assertions::const_assert!(core::mem::size_of::<Span>() == 128);
static_assertions::const_assert!(core::mem::offset_of!(Span, large_alloc) < 64);

impl Span {
    /// A new record for `npages` pages at `base`, in state FREE.
    pub fn new_record(base: usize, npages: usize) -> *mut Span {
        let s = meta::alloc_record(core::mem::size_of::<Span>()) as *mut Span;
        if s.is_null() {
            return s;
        }
        // SAFETY: meta::alloc returned zeroed memory of the right size, and an
        // all-zero Span is valid (null pointers, FREE state); we set the fields.
        unsafe {
            (*s).base = base;
            (*s).npages = npages;
        }
        s
    }

    /// Returns a dead record to metadata.
    ///
    /// # Safety
    /// `s` must be unlinked and no longer reachable from the page map.
    pub unsafe fn free_record(s: *mut Span) {
        // SAFETY: forwarded contract.
        unsafe {
            (*s).release_bits();
            (*s).state.store(DEAD, Relaxed);
            meta::free_record(s as *mut u8);
        }
    }

    #[inline(always)]
    pub fn end(&self) -> usize {
        self.base + self.npages * PAGE_SIZE
    }

    /// Turns a freshly allocated span into a small span of `class`. Returns false
    /// when metadata memory is exhausted.
    pub fn init_small(&mut self, class: usize, noscan: bool, tiny: bool, spanclass: u8) -> bool {
        let size = sizeclass::size_of_class(class);
        let n = self.npages * PAGE_SIZE / size;
        let words = n.div_ceil(64);
        let tiny_bytes = if tiny { n * 4 } else { 0 };
        // Leakcheck keeps a site record per slot (tiny blocks hold only
        // GC-managed objects then, which need none).
        let site_bytes = if crate::leak::tracking() && !tiny {
            n * 8
        } else {
            0
        };
        let bytes = HEADER + words * 16 + site_bytes + tiny_bytes + n;
        let block = meta::alloc(bytes);
        if block.is_null() {
            return false;
        }
        self.bits_size = bytes as u32;
        // SAFETY: the block holds the remote header, then words*8 bytes of
        // free bits, words*8 of mark bits, then (leakcheck) n 8-byte site
        // records, then (tiny) n 4-byte block states, then n slot-state
        // bytes, all zeroed.
        unsafe {
            let block = block.add(HEADER);
            self.free_bits = block as *mut u64;
            self.marks = block.add(words * 8) as *const AtomicU64;
            self.sites = if site_bytes > 0 {
                block.add(words * 16) as *const AtomicU64
            } else {
                ptr::null()
            };
            self.tiny_state = if tiny {
                block.add(words * 16 + site_bytes) as *const AtomicU32
            } else {
                ptr::null()
            };
            self.alloc = block.add(words * 16 + site_bytes + tiny_bytes) as *const AtomicU8;
            for w in 0..words {
                let bits = if (w + 1) * 64 <= n {
                    !0u64
                } else {
                    (1u64 << (n - w * 64)) - 1
                };
                *self.free_bits.add(w) = bits;
            }
        }
        self.class = class as u8;
        self.spanclass = spanclass;
        self.noscan = noscan;
        self.owner.store(0, Relaxed);
        self.elemsize = size as u32;
        self.nelems = n as u32;
        self.nfree = n as u32;
        self.cursor = 0;
        self.in_partial = false;
        self.div_magic = sizeclass::div_magic(size);
        self.sweepgen.store(crate::gc::sweepgen(), Relaxed);
        self.state.store(if tiny { TINY } else { SMALL }, Relaxed);
        true
    }

    /// Turns a freshly allocated span into a large span of one object.
    pub fn init_large(&mut self, noscan: bool) {
        self.class = 0;
        self.spanclass = 0;
        self.noscan = noscan;
        self.elemsize = 0;
        self.nelems = 1;
        self.nfree = 0;
        self.large_alloc.store(crate::gc::alloc_tag(), Relaxed);
        self.large_mark.store(0, Relaxed);
        self.large_site.store(0, Relaxed);
        self.alloc = &self.large_alloc;
        self.sweepgen.store(crate::gc::sweepgen(), Relaxed);
        self.state.store(LARGE, Relaxed);
    }

    /// Releases a small span's bitmaps (when the span goes back to the page heap).
    pub fn release_bits(&mut self) {
        if !self.free_bits.is_null() {
            debug_assert!(
                !self.remote_busy(),
                "span released while queued or with a remote free in flight"
            );
            // SAFETY: the block came from meta::alloc(bits_size), HEADER
            // bytes before the free bits.
            unsafe {
                meta::free(
                    self.free_bits.cast::<u8>().sub(HEADER),
                    self.bits_size as usize,
                )
            };
            self.free_bits = ptr::null_mut();
            self.alloc = ptr::null();
            self.tiny_state = ptr::null();
            self.marks = ptr::null();
            self.sites = ptr::null();
        }
    }

    /// The slot index of address `p` (interior addresses included).
    #[inline(always)]
    pub fn slot_of(&self, p: usize) -> usize {
        (((p - self.base) as u64 * self.div_magic as u64) >> 32) as usize
    }

    /// Start address of slot `i`.
    #[inline(always)]
    pub fn slot_addr(&self, i: usize) -> usize {
        self.base + i * self.elemsize as usize
    }

    /// The state byte of slot `i`.
    #[inline(always)]
    pub fn slot_state(&self, i: usize) -> &AtomicU8 {
        debug_assert!(i < self.nelems as usize);
        // SAFETY: i < nelems and alloc points at nelems bytes.
        unsafe { &*self.alloc.add(i) }
    }

    /// The leakcheck site record of the object at slot `i` (for a large span,
    /// of its object), or None when the span keeps none.
    #[inline]
    pub fn site(&self, i: usize) -> Option<&AtomicU64> {
        match self.state.load(Relaxed) {
            LARGE => Some(&self.large_site),
            SMALL if !self.sites.is_null() && i < self.nelems as usize => {
                // SAFETY: small spans with sites have nelems records.
                Some(unsafe { &*self.sites.add(i) })
            }
            _ => None,
        }
    }

    /// The carved/freed state of tiny block `i`.
    #[inline(always)]
    pub fn tiny_state(&self, i: usize) -> &AtomicU32 {
        debug_assert!(self.is_tiny() && i < self.nelems as usize);
        // SAFETY: tiny spans have nelems block states.
        unsafe { &*self.tiny_state.add(i) }
    }

    /// Sets the mark bit of slot `i`; true if it was clear (first to mark).
    ///
    /// A plain load and store, not an atomic read-modify-write: one marker
    /// runs at a time (the cycle lock), and no one else writes mark bits
    /// while it does (spans are neither swept nor reinitialised during a
    /// mark). The `lock bts` this replaces was a quarter of `mark_word`.
    #[inline(always)]
    pub fn mark_slot(&self, i: usize) -> bool {
        let bit = 1u64 << (i % 64);
        // SAFETY: i < nelems, within the mark bitmap.
        let w = unsafe { &*self.marks.add(i / 64) };
        let old = w.load(Relaxed);
        if old & bit != 0 {
            return false;
        }
        w.store(old | bit, Relaxed);
        true
    }

    /// [`mark_slot`](Self::mark_slot) for markers working in parallel:
    /// true for exactly one of them.
    #[inline(always)]
    pub fn mark_slot_atomic(&self, i: usize) -> bool {
        let bit = 1u64 << (i % 64);
        // SAFETY: i < nelems, within the mark bitmap.
        let w = unsafe { &*self.marks.add(i / 64) };
        if w.load(Relaxed) & bit != 0 {
            return false;
        }
        w.fetch_or(bit, Relaxed) & bit == 0
    }

    #[inline(always)]
    pub fn is_marked(&self, i: usize) -> bool {
        // SAFETY: i < nelems, within the mark bitmap.
        unsafe { (*self.marks.add(i / 64)).load(Relaxed) & (1 << (i % 64)) != 0 }
    }

    /// Clears every mark bit of a small span.
    pub fn clear_marks(&self) {
        for w in 0..(self.nelems as usize).div_ceil(64) {
            // SAFETY: w < words.
            unsafe { (*self.marks.add(w)).store(0, Relaxed) };
        }
    }

    /// Returns to the OS the 4 KiB pages of the span whose slots are all
    /// free in its free bits (slots in per-CPU caches, queued remote frees
    /// and unswept dead slots count as in use, so this errs on keeping). A
    /// released page reads as zeros when its slots are handed out again
    /// (calloc zeroes anyway; free slots hold nothing magpie reads). Returns
    /// the bytes released.
    ///
    /// # Safety
    /// Central lock of the span's class held, and no mark running (a page
    /// dropped while the heap is write-protected for dirty tracking would come
    /// back unprotected: writes to it would go unseen).
    pub unsafe fn release_free_pages(&self) -> usize {
        const OS_PAGE: usize = 4096;
        let size = self.elemsize as usize;
        let end = self.base + self.nelems as usize * size;
        let mut released = 0;
        let mut release = |from: usize, to: usize| {
            // SAFETY: every slot overlapping [from, to) is free: nothing live
            // is there, and no slot can be handed out while the caller holds
            // the class lock. `to` is at most the span's end (pages are 4 KiB
            // steps from its 8 KiB-aligned base).
            unsafe { crate::sys::os::decommit(from as *mut u8, to - from) };
            released += to - from;
        };
        // The start of the current run of all-free pages.
        let mut run = None;
        let mut page = self.base;
        while page < end {
            let first = (page - self.base) / size;
            let last = ((page + OS_PAGE).min(end) - 1 - self.base) / size;
            let free = (first..=last).all(|i| self.is_slot_free_in_span(i));
            match (free, run) {
                (true, None) => run = Some(page),
                (false, Some(from)) => {
                    release(from, page);
                    run = None;
                }
                _ => {}
            }
            page += OS_PAGE;
        }
        if let Some(from) = run {
            release(from, page);
        }
        released
    }

    #[inline]
    pub fn is_slot_free_in_span(&self, i: usize) -> bool {
        // SAFETY: i < nelems, within the bitmap.
        unsafe { *self.free_bits.add(i / 64) & (1 << (i % 64)) != 0 }
    }

    /// Takes up to `out.len()` free slots out of the span (central lock held),
    /// writing (address, state byte) pairs. Returns how many.
    pub fn take_slots(&mut self, out: &mut [Entry]) -> usize {
        let words = (self.nelems as usize).div_ceil(64);
        let mut n = 0;
        let mut w = self.cursor as usize;
        while n < out.len() && self.nfree > 0 {
            if w >= words {
                w = 0;
            }
            // SAFETY: w < words.
            let word = unsafe { &mut *self.free_bits.add(w) };
            while *word != 0 && n < out.len() {
                let b = word.trailing_zeros() as usize;
                *word &= *word - 1;
                let i = w * 64 + b;
                out[n] = Entry {
                    ptr: self.slot_addr(i),
                    state: self.slot_state(i) as *const _ as usize,
                };
                n += 1;
                self.nfree -= 1;
            }
            if *word == 0 {
                w += 1;
            }
        }
        self.cursor = w.min(words.saturating_sub(1)) as u32;
        n
    }

    /// True for spans of tiny blocks.
    #[inline(always)]
    pub fn is_tiny(&self) -> bool {
        !self.tiny_state.is_null()
    }

    /// The remote-free header of a small span's metadata block.
    #[inline(always)]
    pub fn remote_header(&self) -> &RemoteHeader {
        // SAFETY: small spans' free bits follow the header in their block.
        unsafe { &*(self.free_bits.cast::<u8>().sub(HEADER) as *const RemoteHeader) }
    }

    /// True if slot `i` was freed remotely and not merged back yet.
    pub fn is_remote_free(&self, i: usize) -> bool {
        self.slot_state(i).load(Relaxed) == SLOT_REMOTE
    }

    /// Starts a remote free of slot `i` (its state byte already cleared):
    /// counts the free in flight, marks the slot `SLOT_REMOTE` and returns
    /// true if the caller must queue the span on its class's remote list (it
    /// was not queued). The caller queues it if asked and then calls
    /// [`end_remote_free`](Self::end_remote_free).
    ///
    /// Why the count: as soon as the slot is marked, a merger may take it
    /// back, find the span all free and release it, while this thread still
    /// has to queue it; a span is never released with a free in flight
    /// ([`remote_busy`](Self::remote_busy)).
    ///
    /// SeqCst, paired with [`take_remote`](Self::take_remote): a slot marked
    /// after the merger unqueued the span sees the flag clear (the swap also
    /// keeps the byte's store from passing the flag's load).
    pub fn begin_remote_free(&self, i: usize) -> bool {
        use core::sync::atomic::Ordering::SeqCst;
        let f = &self.remote_header().flags;
        f.fetch_add(REMOTE_IN_FLIGHT, SeqCst);
        let old = self.slot_state(i).swap(SLOT_REMOTE, SeqCst);
        debug_assert!(old == SLOT_FREE, "remote free of a slot in state {old}");
        // Queued already (the common case of a stream of remote frees): a
        // load, no further locked instruction. Seeing the flag set means the
        // merger's unqueue comes later, and so does its scan of the slots.
        f.load(SeqCst) & REMOTE_QUEUED == 0
            && f.fetch_or(REMOTE_QUEUED, SeqCst) & REMOTE_QUEUED == 0
    }

    /// Ends a remote free begun by [`begin_remote_free`](Self::begin_remote_free):
    /// the thread's last access to the span.
    pub fn end_remote_free(&self) {
        self.remote_header()
            .flags
            .fetch_sub(REMOTE_IN_FLIGHT, core::sync::atomic::Ordering::Release);
    }

    /// True while the span is queued for a merge or a remote free of one of
    /// its slots is in flight: it must not be released then.
    pub fn remote_busy(&self) -> bool {
        self.remote_header()
            .flags
            .load(core::sync::atomic::Ordering::Acquire)
            != 0
    }

    /// True while the span is on its class's remote list.
    pub fn remote_queued(&self) -> bool {
        self.remote_header().flags.load(Relaxed) & REMOTE_QUEUED != 0
    }

    /// Takes the span off its remote list (the caller popped it) and moves
    /// every remotely freed slot back into the free bits (central lock held).
    /// Returns how many.
    pub fn take_remote(&mut self) -> usize {
        use core::sync::atomic::Ordering::SeqCst;
        self.remote_header().flags.fetch_and(!REMOTE_QUEUED, SeqCst);
        let mut n = 0;
        for i in 0..self.nelems as usize {
            let st = self.slot_state(i);
            // Only a remote free writes SLOT_REMOTE, and only the merger
            // (under the class lock) clears it.
            if st.load(Relaxed) == SLOT_REMOTE {
                st.store(SLOT_FREE, Relaxed);
                self.put_slot(i);
                n += 1;
            }
        }
        n
    }

    /// Puts slot `i` back into the span (central lock held).
    #[inline]
    pub fn put_slot(&mut self, i: usize) {
        debug_assert!(!self.is_slot_free_in_span(i), "slot returned twice");
        // SAFETY: i < nelems.
        unsafe { *self.free_bits.add(i / 64) |= 1 << (i % 64) };
        self.nfree += 1;
    }
}

/// Bytes before the free bits in a small span's metadata block.
const HEADER: usize = core::mem::size_of::<RemoteHeader>();

/// The start of a small span's metadata block: the span's link on its class's
/// remote list and whether it is on it (kept out of the 128-byte record).
#[repr(C)]
pub struct RemoteHeader {
    pub next: AtomicPtr<Span>,
    /// [`REMOTE_QUEUED`], plus [`REMOTE_IN_FLIGHT`] per remote free between
    /// marking its slot and its last access to the span.
    pub flags: AtomicU32,
}

/// `RemoteHeader::flags`: the span is on its class's remote list.
pub const REMOTE_QUEUED: u32 = 1;
/// `RemoteHeader::flags`: one remote free in flight.
pub const REMOTE_IN_FLIGHT: u32 = 2;

/// A cached free slot: its address and the address of its state byte, so that
/// the allocation fast path marks the slot allocated without a page-map lookup.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ptr: usize,
    pub state: usize,
}

/// An intrusive doubly-linked list of spans (the links live in the records).
pub struct SpanList {
    pub head: *mut Span,
    pub len: usize,
}

impl SpanList {
    pub const fn new() -> Self {
        SpanList {
            head: ptr::null_mut(),
            len: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// # Safety
    /// `s` must be a live record not on any list.
    pub unsafe fn push(&mut self, s: *mut Span) {
        // SAFETY: s is live and unlinked; head, if any, is on this list.
        unsafe {
            (*s).prev = ptr::null_mut();
            (*s).next = self.head;
            if !self.head.is_null() {
                (*self.head).prev = s;
            }
        }
        self.head = s;
        self.len += 1;
    }

    /// # Safety
    /// `s` must be on this list.
    pub unsafe fn remove(&mut self, s: *mut Span) {
        // SAFETY: s and its neighbours are on this list.
        unsafe {
            if (*s).prev.is_null() {
                self.head = (*s).next;
            } else {
                (*(*s).prev).next = (*s).next;
            }
            if !(*s).next.is_null() {
                (*(*s).next).prev = (*s).prev;
            }
            (*s).next = ptr::null_mut();
            (*s).prev = ptr::null_mut();
        }
        self.len -= 1;
    }
}

impl Default for SpanList {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_span_bitmaps() {
        let s = Span::new_record(0x10_0000, 1);
        // SAFETY: s is a fresh record owned by this test.
        let span = unsafe { &mut *s };
        assert!(span.init_small(3, false, false, 6)); // 24-byte class
        let n = span.nelems as usize;
        assert_eq!(n, 8192 / 24);
        assert_eq!(span.nfree as usize, n);
        for i in 0..n {
            assert!(span.is_slot_free_in_span(i));
            assert_eq!(span.slot_of(span.slot_addr(i)), i);
            assert_eq!(span.slot_of(span.slot_addr(i) + 23), i);
        }
        let mut out = [Entry::default(); 100];
        assert_eq!(span.take_slots(&mut out), 100);
        assert_eq!(span.nfree as usize, n - 100);
        for (k, e) in out.iter().enumerate() {
            assert_eq!(e.ptr, span.slot_addr(k));
            assert_eq!(e.state, span.slot_state(k) as *const _ as usize);
            assert!(!span.is_slot_free_in_span(k));
        }
        span.put_slot(5);
        assert!(span.is_slot_free_in_span(5));
        let mut rest = [Entry::default(); 400];
        assert_eq!(span.take_slots(&mut rest), n - 99);
        assert_eq!(span.nfree, 0);
        assert!(rest[..n - 99].iter().any(|e| e.ptr == span.slot_addr(5)));
        // SAFETY: the record is ours and on no list.
        unsafe { Span::free_record(s) };
    }

    #[test]
    fn remote_frees_queue_once_and_merge_back() {
        let s = Span::new_record(0x20_0000, 1);
        // SAFETY: s is a fresh record owned by this test.
        let span = unsafe { &mut *s };
        assert!(span.init_small(5, false, false, 10)); // 48-byte class
        let n = span.nelems as usize;
        let mut out = [Entry::default(); 170];
        assert_eq!(span.take_slots(&mut out[..n]), n);
        // The first remote free asks for the span to be queued, later ones
        // not; while one is in flight the span is busy.
        assert!(span.begin_remote_free(3));
        assert!(span.remote_busy() && span.remote_queued());
        span.end_remote_free();
        for i in [70, n - 1] {
            assert!(!span.begin_remote_free(i));
            span.end_remote_free();
        }
        assert!(span.is_remote_free(70) && !span.is_slot_free_in_span(70));
        assert_eq!(span.nfree, 0);
        // The merge unqueues the span and moves the bits into the free bits.
        assert_eq!(span.take_remote(), 3);
        assert_eq!(span.nfree, 3);
        for i in [3, 70, n - 1] {
            assert!(span.is_slot_free_in_span(i) && !span.is_remote_free(i));
        }
        assert!(!span.remote_busy());
        // Unqueued: the next remote free queues it again.
        assert!(span.begin_remote_free(4));
        span.end_remote_free();
        assert_eq!(span.take_remote(), 1);
        assert!(!span.remote_busy());
        let mut back = [Entry::default(); 8];
        assert_eq!(span.take_slots(&mut back), 4);
        // SAFETY: the record is ours and on no list.
        unsafe { Span::free_record(s) };
    }
}

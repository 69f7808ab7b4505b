//! The heap verifier: walks every span, cache and transfer batch and checks the
//! allocator's invariants. Tests call it after stress runs.
//!
//! It reads shared state without stopping other threads, so it must be called
//! when no other thread is allocating or freeing (after joining them).

use core::fmt;
use core::sync::atomic::Ordering::Relaxed;

use crate::alloc::{self as engine, cache, central, heap, meta, span};

/// A broken invariant, with the address (or number) it concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyError {
    pub what: &'static str,
    pub addr: usize,
}

impl VerifyError {
    pub fn new(what: &'static str, addr: usize) -> Self {
        VerifyError { what, addr }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "heap verification failed: {} at {:#x}",
            self.what, self.addr
        )
    }
}

/// What the verifier saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapReport {
    pub small_spans: usize,
    pub large_spans: usize,
    /// Objects (small slots and large objects) allocated to the program.
    pub live_objects: usize,
    pub live_bytes: usize,
    /// Free slots held by per-CPU caches and transfer batches.
    pub cached_slots: usize,
    /// Slots freed on a CPU other than their span's owner and not yet merged
    /// back into their span (see `central::free_remote`).
    pub remote_slots: usize,
}

/// Checks every invariant of the heap. Call only when no other thread is
/// allocating or freeing.
pub fn verify_heap() -> Result<HeapReport, VerifyError> {
    if !engine::is_ready() {
        return Ok(HeapReport::default());
    }
    // The collector thread may be sweeping: check between cycles.
    crate::gc::without_cycles(verify_quiescent)
}

fn verify_quiescent() -> Result<HeapReport, VerifyError> {
    let mut r = HeapReport::default();
    heap::verify(|s| {
        // SAFETY: verify passes live in-use span records.
        let sp = unsafe { &*s };
        match sp.state.load(Relaxed) {
            span::LARGE => {
                r.large_spans += 1;
                match sp.large_alloc.load(Relaxed) {
                    st if span::is_allocated(st) => {
                        r.live_objects += 1;
                        r.live_bytes += sp.npages * crate::alloc::sizeclass::PAGE_SIZE;
                    }
                    _ => {
                        return Err(VerifyError::new(
                            "large span in use holds no object",
                            sp.base,
                        ))
                    }
                }
            }
            _ => {
                r.small_spans += 1;
                check_small(sp, &mut r)?;
                central::verify_span(sp)?;
            }
        }
        Ok(())
    })?;
    // Every cached slot: a free, out-of-span slot of the right class, held once.
    let mut n = 0;
    for i in 0..cache::ncaches() {
        let c = cache::cache_at(i);
        for sc in 2..central::NUM_SPANCLASSES {
            n += c.cached(sc).len();
        }
    }
    let words = n + central::NUM_SPANCLASSES * 16 * central::MAX_BATCH;
    let scratch = meta::alloc(words * 8) as *mut usize;
    if scratch.is_null() {
        return Err(VerifyError::new(
            "no memory for the verifier's scratch array",
            0,
        ));
    }
    // SAFETY: scratch holds `words` usizes, ours until freed below.
    let seen = unsafe { core::slice::from_raw_parts_mut(scratch, words) };
    let mut k = 0;
    let mut check_entry = |sc: usize, e: &span::Entry| -> Result<(), VerifyError> {
        let s = heap::span_of(e.ptr);
        if s.is_null() {
            return Err(VerifyError::new("cached slot outside any span", e.ptr));
        }
        // SAFETY: span_of returns live records.
        let sp = unsafe { &*s };
        if !span::is_slotted(sp.state.load(Relaxed)) || sp.spanclass as usize != sc {
            return Err(VerifyError::new(
                "cached slot in a span of another class",
                e.ptr,
            ));
        }
        let i = sp.slot_of(e.ptr);
        if sp.slot_addr(i) != e.ptr || e.state != sp.slot_state(i) as *const _ as usize {
            return Err(VerifyError::new(
                "cached entry does not describe a slot",
                e.ptr,
            ));
        }
        if sp.is_slot_free_in_span(i) {
            return Err(VerifyError::new(
                "cached slot is also free in its span",
                e.ptr,
            ));
        }
        if sp.is_remote_free(i) {
            return Err(VerifyError::new(
                "cached slot is also a pending remote free",
                e.ptr,
            ));
        }
        if sp.slot_state(i).load(Relaxed) != span::SLOT_FREE {
            return Err(VerifyError::new("cached slot is marked allocated", e.ptr));
        }
        if k < seen.len() {
            seen[k] = e.ptr;
            k += 1;
        }
        Ok(())
    };
    let mut result = Ok(());
    'outer: for i in 0..cache::ncaches() {
        let c = cache::cache_at(i);
        for sc in 2..central::NUM_SPANCLASSES {
            for e in c.cached(sc) {
                if let Err(err) = check_entry(sc, e) {
                    result = Err(err);
                    break 'outer;
                }
            }
        }
    }
    if result.is_ok() {
        result = central::for_each_transfer_entry(&mut check_entry);
    }
    if result.is_ok() {
        seen[..k].sort_unstable();
        if let Some(w) = seen[..k].windows(2).find(|w| w[0] == w[1]) {
            result = Err(VerifyError::new("slot cached twice", w[0]));
        }
        r.cached_slots = k;
    }
    // SAFETY: returning the scratch array.
    unsafe { meta::free(scratch as *mut u8, words * 8) };
    result.map(|_| r)
}

fn check_small(sp: &span::Span, r: &mut HeapReport) -> Result<(), VerifyError> {
    let n = sp.nelems as usize;
    if n == 0 || sp.free_bits.is_null() {
        return Err(VerifyError::new("small span without bitmaps", sp.base));
    }
    let mut free = 0;
    for i in 0..n {
        let st = sp.slot_state(i).load(Relaxed);
        let in_span = sp.is_slot_free_in_span(i);
        if sp.is_remote_free(i) {
            r.remote_slots += 1;
            if in_span {
                return Err(VerifyError::new(
                    "remotely freed slot is also free in its span",
                    sp.slot_addr(i),
                ));
            }
            if !sp.remote_queued() {
                return Err(VerifyError::new(
                    "span with remote frees is not queued for a merge",
                    sp.slot_addr(i),
                ));
            }
        }
        if in_span {
            free += 1;
            if st != span::SLOT_FREE {
                return Err(VerifyError::new(
                    "slot free in its span is marked allocated",
                    sp.slot_addr(i),
                ));
            }
        }
        match st {
            span::SLOT_FREE | span::SLOT_REMOTE => {}
            st if span::is_allocated(st) => {
                r.live_objects += 1;
                r.live_bytes += sp.elemsize as usize;
                if sp.is_tiny() {
                    // A published block: freed offsets are carved ones, and
                    // some object is still live (else the block was freed).
                    // An unpublished one (carved == 0) is a CPU's current block.
                    let v = sp.tiny_state(i).load(Relaxed);
                    let (carved, freed) = (v & 0xffff, v >> 16);
                    if carved != 0 && freed & !carved != 0 {
                        return Err(VerifyError::new(
                            "tiny block has frees of offsets never carved",
                            sp.slot_addr(i),
                        ));
                    }
                    if carved != 0 && carved & !freed == 0 {
                        return Err(VerifyError::new(
                            "tiny block with every object freed is still allocated",
                            sp.slot_addr(i),
                        ));
                    }
                }
            }
            _ => {
                return Err(VerifyError::new(
                    "slot state byte holds an unknown value",
                    sp.slot_addr(i),
                ))
            }
        }
    }
    // Bits beyond the last slot must be clear.
    let words = n.div_ceil(64);
    if n % 64 != 0 {
        // SAFETY: the last word is inside the bitmap.
        let last = unsafe { *sp.free_bits.add(words - 1) };
        if last >> (n % 64) != 0 {
            return Err(VerifyError::new(
                "free bits set beyond the last slot",
                sp.base,
            ));
        }
    }
    if free != sp.nfree as usize {
        return Err(VerifyError::new(
            "span free count disagrees with its bitmap",
            sp.base,
        ));
    }
    Ok(())
}

/// The object whose retention the collector explains, XOR-masked so that
/// this static does not itself keep the object alive (0: none).
static EXPLAIN: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
const EXPLAIN_MASK: usize = 0xA5A5_5A5A_A5A5_5A5A;

/// Asks the collector to say, in each following cycle, which words keep the
/// object containing `addr` alive: it prints the address of every scanned
/// word pointing into it, with the range being scanned (a root mapping, a
/// stack, or the parent object). For "why is this not collected / not
/// reported as a leak?". `None` stops it.
pub fn explain_retention(addr: Option<usize>) {
    EXPLAIN.store(
        addr.map_or(0, |a| a ^ EXPLAIN_MASK),
        core::sync::atomic::Ordering::Relaxed,
    );
}

/// The address to explain, if any.
pub(crate) fn explained() -> Option<usize> {
    match EXPLAIN.load(core::sync::atomic::Ordering::Relaxed) {
        0 => None,
        v => Some(v ^ EXPLAIN_MASK),
    }
}

/// True if `addr` is the start of an object the heap holds as allocated
/// (for tests that must notice an object the collector freed before its
/// memory is reused).
pub fn is_allocated(addr: usize) -> bool {
    let s = crate::alloc::heap::span_of(addr);
    if s.is_null() {
        return false;
    }
    // SAFETY: span_of returns live span records.
    let sp = unsafe { &*s };
    match sp.state.load(core::sync::atomic::Ordering::Relaxed) {
        crate::alloc::span::SMALL | crate::alloc::span::TINY => {
            let i = sp.slot_of(addr);
            i < sp.nelems as usize
                && sp.slot_addr(i) == addr
                && crate::alloc::span::is_allocated(
                    sp.slot_state(i).load(core::sync::atomic::Ordering::Relaxed),
                )
        }
        crate::alloc::span::LARGE => {
            addr == sp.base
                && crate::alloc::span::is_allocated(
                    sp.large_alloc.load(core::sync::atomic::Ordering::Relaxed),
                )
        }
        _ => false,
    }
}

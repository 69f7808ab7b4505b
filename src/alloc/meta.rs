//! Memory for magpie's own metadata: spans, bitmaps, slot-state bytes, tiny
//! counts. It comes from anonymous mappings made for it, never from the managed
//! heap, so the allocator and the collector never allocate from themselves and
//! the collector never mistakes metadata for roots.
//!
//! Blocks up to 16 KiB are sized in steps of 64 bytes (a cache line), larger
//! ones in powers of two up to 64 KiB, each size with its own free list;
//! memory is carved from 1 MiB chunks and never unmapped. Span records have
//! a free list of their own ([`alloc_record`]), so metadata is type-stable: a
//! stale pointer to a freed span record still points at a span record
//! (lookups validate what they find), never at a bitmap that reused it.
//! Larger requests map directly.
//!
//! (Power-of-two sizes for everything wasted a third of this memory: the
//! 160-byte span record took 256, a 16-byte class's 640-byte bitmaps 1024.
//! With 4-page spans the 8-byte class's block is 5,136 bytes and the tiny
//! class's 10,768: rounded to 8 and 16 KiB, and carved page-aligned, they
//! doubled the metadata of a heap of 8-byte objects, hence 64-byte steps to
//! 16 KiB and cache-line alignment throughout.)

use core::ptr;
use spin::Mutex;

use crate::sys::os;

/// Sizes up to FINE_MAX go in steps of FINE_STEP; above, powers of two up
/// to 1 << MAX_SHIFT.
const FINE_STEP: usize = 64;
const FINE_MAX: usize = 16 << 10;
const FINE_BUCKETS: usize = FINE_MAX / FINE_STEP;
const MAX_SHIFT: usize = 16;
const NBUCKETS: usize = FINE_BUCKETS + (MAX_SHIFT - FINE_MAX.trailing_zeros() as usize);
/// The free list of span records (after the sized ones).
const RECORDS: usize = NBUCKETS;
const CHUNK: usize = 1 << 20;

struct Meta {
    free: [*mut u8; NBUCKETS + 1],
    chunk_cur: *mut u8,
    chunk_end: *mut u8,
    mapped: usize,
}

// SAFETY: the raw pointers are only touched under the mutex.
unsafe impl Send for Meta {}

static META: Mutex<Meta> = Mutex::new(Meta {
    free: [ptr::null_mut(); NBUCKETS + 1],
    chunk_cur: ptr::null_mut(),
    chunk_end: ptr::null_mut(),
    mapped: 0,
});

/// The free list and block size for `size` bytes (size <= 1 << MAX_SHIFT).
fn bucket(size: usize) -> (usize, usize) {
    if size <= FINE_MAX {
        let n = size.max(1).div_ceil(FINE_STEP);
        (n - 1, n * FINE_STEP)
    } else {
        let b = size.next_power_of_two();
        (
            FINE_BUCKETS + (b.trailing_zeros() - FINE_MAX.trailing_zeros()) as usize - 1,
            b,
        )
    }
}

/// Allocates `size` bytes of zeroed metadata, 64-byte aligned. Returns null
/// when the OS has no memory.
pub fn alloc(size: usize) -> *mut u8 {
    if size > 1 << MAX_SHIFT {
        let p = os::map_owned(size);
        if !p.is_null() {
            META.lock().mapped += size;
        }
        return p;
    }
    let (b, bsize) = bucket(size);
    take(b, bsize)
}

/// Allocates a zeroed span record of `size` bytes (always the same size)
/// from the records' own free list, 64-byte aligned.
pub fn alloc_record(size: usize) -> *mut u8 {
    take(RECORDS, size.next_multiple_of(FINE_STEP))
}

/// Returns a record from [`alloc_record`].
///
/// # Safety
/// `p` must come from `alloc_record`; it stays a span record's memory
/// (stale readers may still look at it).
pub unsafe fn free_record(p: *mut u8) {
    // SAFETY: forwarded contract; records are at least 64 bytes.
    unsafe { put(RECORDS, p) };
}

fn take(list: usize, bsize: usize) -> *mut u8 {
    let mut m = META.lock();
    let head = m.free[list];
    if !head.is_null() {
        // SAFETY: free blocks hold the next link in their first word, and are
        // bsize bytes (each list holds one size).
        unsafe {
            m.free[list] = *(head as *mut *mut u8);
            ptr::write_bytes(head, 0, bsize);
        }
        return head;
    }
    // Blocks are carved in increasing addresses, aligned to a cache line, so
    // none straddles more lines than it must.
    let mut cur = (m.chunk_cur as usize).next_multiple_of(FINE_STEP);
    if m.chunk_cur.is_null() || cur + bsize > m.chunk_end as usize {
        let c = os::map_owned(CHUNK);
        if c.is_null() {
            return ptr::null_mut();
        }
        m.mapped += CHUNK;
        m.chunk_cur = c;
        // SAFETY: c..c+CHUNK is the mapping just made.
        m.chunk_end = unsafe { c.add(CHUNK) };
        cur = c as usize; // page-aligned
    }
    m.chunk_cur = (cur + bsize) as *mut u8;
    cur as *mut u8 // fresh mmap memory is zero
}

/// # Safety
/// `p` is a block of list `list`'s size, at least 8 bytes, ours again.
unsafe fn put(list: usize, p: *mut u8) {
    let mut m = META.lock();
    // SAFETY: the caller's contract.
    unsafe { *(p as *mut *mut u8) = m.free[list] };
    m.free[list] = p;
}

/// Returns a block from [`alloc`] of the same `size`.
///
/// # Safety
/// `p` must come from `alloc(size)` and not be used afterwards.
pub unsafe fn free(p: *mut u8, size: usize) {
    if p.is_null() {
        return;
    }
    if size > 1 << MAX_SHIFT {
        // SAFETY: large blocks are whole mappings of exactly `size` bytes.
        unsafe { os::unmap_owned(p, size) };
        META.lock().mapped -= size;
        return;
    }
    // SAFETY: forwarded contract; blocks are at least 64 bytes.
    unsafe { put(bucket(size).0, p) };
}

/// Bytes mapped for metadata.
pub fn mapped() -> usize {
    META.lock().mapped
}

/// Fork support: take the lock before fork, release it after (parent and child).
pub fn lock_for_fork() {
    core::mem::forget(META.lock());
}

/// # Safety
/// Only after [`lock_for_fork`], in the parent or the child of the fork.
pub unsafe fn unlock_after_fork() {
    // SAFETY: the caller holds the lock leaked by lock_for_fork.
    unsafe { META.force_unlock() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_zeroed_aligned_and_reused() {
        let a = alloc(100);
        assert!(!a.is_null());
        assert_eq!(a as usize % 64, 0);
        // SAFETY: a is a fresh 128-byte block.
        unsafe {
            assert!((0..128).all(|i| *a.add(i) == 0));
            ptr::write_bytes(a, 0xAB, 128);
            free(a, 100);
        }
        let b = alloc(128);
        // SAFETY: b is a 128-byte block.
        unsafe { assert!((0..128).all(|i| *b.add(i) == 0)) };
        // SAFETY: returning what we took.
        unsafe { free(b, 128) };
        let big = alloc(1 << 20);
        assert!(!big.is_null());
        // SAFETY: returning the direct mapping.
        unsafe { free(big, 1 << 20) };
    }

    #[test]
    fn span_blocks_round_up_by_less_than_a_line() {
        // The metadata blocks of 4-page spans: the 8-byte class (16-byte
        // header, 64 words of free and mark bits, 4,096 state bytes) and the
        // tiny class (2,048 slots, with 4-byte block states). A power-of-two
        // bucket would take 8 and 16 KiB for them.
        for size in [
            16 + 64 * 16 + 4096,
            16 + 32 * 16 + 2048 * 4 + 2048,
            FINE_MAX,
        ] {
            let (_, b) = bucket(size);
            assert!(b >= size && b - size < FINE_STEP, "{size} -> {b}");
            let p = alloc(size);
            assert_eq!(p as usize % FINE_STEP, 0);
            // SAFETY: returning what we took.
            unsafe { free(p, size) };
        }
    }
}

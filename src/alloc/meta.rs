//! Memory for magpie's own metadata: spans, bitmaps, slot-state bytes, tiny
//! counts. It comes from anonymous mappings made for it, never from the managed
//! heap, so the allocator and the collector never allocate from themselves and
//! the collector never mistakes metadata for roots.
//!
//! Blocks are power-of-two sized (32 B to 64 KiB) and kept on per-size free lists;
//! memory is carved from 1 MiB chunks and never unmapped, so metadata is
//! type-stable: a stale pointer to a freed span record still points at a span
//! record (lookups validate what they find). Larger requests map directly.

use core::ptr;
use spin::Mutex;

use crate::sys::os;

const MIN_SHIFT: usize = 5;
const MAX_SHIFT: usize = 16;
const NBUCKETS: usize = MAX_SHIFT - MIN_SHIFT + 1;
const CHUNK: usize = 1 << 20;

struct Meta {
    free: [*mut u8; NBUCKETS],
    chunk_cur: *mut u8,
    chunk_end: *mut u8,
    mapped: usize,
}

// SAFETY: the raw pointers are only touched under the mutex.
unsafe impl Send for Meta {}

static META: Mutex<Meta> = Mutex::new(Meta {
    free: [ptr::null_mut(); NBUCKETS],
    chunk_cur: ptr::null_mut(),
    chunk_end: ptr::null_mut(),
    mapped: 0,
});

fn bucket(size: usize) -> usize {
    let s = size.max(1 << MIN_SHIFT).next_power_of_two();
    s.trailing_zeros() as usize - MIN_SHIFT
}

/// Allocates `size` bytes of zeroed metadata, 32-byte aligned (page-aligned
/// above 64 KiB). Returns null when the OS has no memory.
pub fn alloc(size: usize) -> *mut u8 {
    if size > 1 << MAX_SHIFT {
        let p = os::map_owned(size);
        if !p.is_null() {
            META.lock().mapped += size;
        }
        return p;
    }
    let b = bucket(size);
    let bsize = 1usize << (b + MIN_SHIFT);
    let mut m = META.lock();
    let head = m.free[b];
    if !head.is_null() {
        // SAFETY: free blocks hold the next link in their first word.
        unsafe {
            m.free[b] = *(head as *mut *mut u8);
            ptr::write_bytes(head, 0, bsize);
        }
        return head;
    }
    if (m.chunk_end as usize) - (m.chunk_cur as usize) < bsize {
        let c = os::map_owned(CHUNK);
        if c.is_null() {
            return ptr::null_mut();
        }
        m.mapped += CHUNK;
        m.chunk_cur = c;
        // SAFETY: c..c+CHUNK is the mapping just made.
        m.chunk_end = unsafe { c.add(CHUNK) };
    }
    // Blocks are carved in increasing addresses; align each to its size (up to
    // 4 KiB) so bitmaps and records never straddle more cache lines than needed.
    let align = bsize.min(4096);
    let cur = ((m.chunk_cur as usize + align - 1) & !(align - 1)) as *mut u8;
    if (m.chunk_end as usize) - (cur as usize) < bsize {
        m.chunk_cur = m.chunk_end;
        drop(m);
        return alloc(size);
    }
    // SAFETY: cur + bsize <= chunk_end, checked above.
    m.chunk_cur = unsafe { cur.add(bsize) };
    cur // fresh mmap memory is zero
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
    let b = bucket(size);
    let mut m = META.lock();
    // SAFETY: the block is at least 32 bytes and ours again.
    unsafe { *(p as *mut *mut u8) = m.free[b] };
    m.free[b] = p;
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
        assert_eq!(a as usize % 32, 0);
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
}

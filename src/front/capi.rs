//! The C API with the C standard's (and glibc's) semantics. These are the
//! functions the preload shim forwards the malloc family to; they are also
//! usable directly from C or Rust under their `magpie_` names.
//!
//! Errors: a request that cannot be served returns NULL with errno ENOMEM; an
//! invalid alignment gives EINVAL; sizes that overflow give ENOMEM. Invalid
//! pointers (double free, foreign, interior) abort with a message naming them.

use core::ffi::c_void;
use core::ptr;

use crate::alloc as engine;
use crate::sys::os::set_errno;

#[inline(always)]
fn nomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// `malloc`: at least `size` bytes, 16-byte aligned from 16 bytes up (8 below).
/// `malloc(0)` returns a unique pointer that can be freed.
#[no_mangle]
pub extern "C" fn magpie_malloc(size: usize) -> *mut c_void {
    // The fast path alone, its miss a tail call (which tries the cache once
    // more): nothing lives across a call, so it needs no stack frame.
    let p = engine::alloc_c_cached(size);
    if !p.is_null() {
        return p.cast();
    }
    malloc_slow(size)
}

/// `extern "C"`, so that it cannot unwind and the call to it can be a jump.
#[cold]
#[inline(never)]
extern "C" fn malloc_slow(size: usize) -> *mut c_void {
    nomem(engine::alloc_c(size))
}

/// `free`: NULL is ignored.
///
/// # Safety
/// `p` must be NULL or a live pointer from this allocator (anything else is
/// detected where possible and aborts).
#[no_mangle]
pub unsafe extern "C" fn magpie_free(p: *mut c_void) {
    if !p.is_null() {
        engine::free(p.cast());
    }
}

/// `calloc`: zeroed `n * size` bytes; NULL + ENOMEM if the product overflows.
#[no_mangle]
pub extern "C" fn magpie_calloc(n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    let p = match engine::c_class(total) {
        Some(c) => {
            let p = engine::alloc_sc(engine::central::spanclass(c, false));
            if !p.is_null() {
                // SAFETY: p holds at least `total` bytes.
                unsafe { ptr::write_bytes(p, 0, total) };
            }
            p
        }
        None => engine::alloc_large(total, 16, false, true),
    };
    nomem(p)
}

/// `realloc`: NULL `p` allocates; size 0 frees and returns NULL (glibc's
/// behaviour); on failure the old block is untouched and NULL + ENOMEM returned.
///
/// # Safety
/// As for [`magpie_free`].
#[no_mangle]
pub unsafe extern "C" fn magpie_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return magpie_malloc(size);
    }
    if size == 0 {
        engine::free(p.cast());
        return ptr::null_mut();
    }
    let new_class = engine::c_class(size);
    let q = engine::realloc_with(
        p.cast(),
        size,
        None,
        |class| new_class == Some(class),
        || engine::alloc_c(size),
    );
    nomem(q)
}

/// `reallocarray`: `realloc(p, n * size)` with overflow checking (NULL +
/// ENOMEM, `p` untouched).
///
/// # Safety
/// As for [`magpie_free`].
#[no_mangle]
pub unsafe extern "C" fn magpie_reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(total) => unsafe { magpie_realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `posix_memalign`: `align` must be a power of two multiple of
/// `sizeof(void *)`, else EINVAL is returned and `*out` is left untouched.
///
/// # Safety
/// `out` must be valid for a pointer-sized write.
#[no_mangle]
pub unsafe extern "C" fn magpie_posix_memalign(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
) -> i32 {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let p = engine::alloc_c_aligned(size, align);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller guarantees out is writable.
    unsafe { *out = p.cast() };
    0
}

/// `aligned_alloc`: `align` must be a power of two (glibc accepts any size).
#[no_mangle]
pub extern "C" fn magpie_aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    nomem(engine::alloc_c_aligned(size, align))
}

/// `memalign`: like glibc, a non-power-of-two alignment is rounded up to the
/// next power of two; an alignment too large to represent gives EINVAL.
#[no_mangle]
pub extern "C" fn magpie_memalign(align: usize, size: usize) -> *mut c_void {
    let Some(a) = align.max(1).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    if a > isize::MAX as usize / 2 {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    nomem(engine::alloc_c_aligned(size, a))
}

const OS_PAGE: usize = 4096;

/// `valloc`: page-aligned (4 KiB, the system page size).
#[no_mangle]
pub extern "C" fn magpie_valloc(size: usize) -> *mut c_void {
    nomem(engine::alloc_c_aligned(size, OS_PAGE))
}

/// `pvalloc`: page-aligned, size rounded up to whole pages.
#[no_mangle]
pub extern "C" fn magpie_pvalloc(size: usize) -> *mut c_void {
    let Some(s) = size.checked_add(OS_PAGE - 1) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    nomem(engine::alloc_c_aligned(
        (s & !(OS_PAGE - 1)).max(OS_PAGE),
        OS_PAGE,
    ))
}

/// `malloc_usable_size`: bytes usable at `p` (0 for NULL), at least what was asked.
///
/// # Safety
/// As for [`magpie_free`].
#[no_mangle]
pub unsafe extern "C" fn magpie_malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        0
    } else {
        engine::usable_size(p.cast())
    }
}

/// `malloc_trim`: returns free memory to the OS; 1 if any was released.
#[no_mangle]
pub extern "C" fn magpie_malloc_trim(_pad: usize) -> i32 {
    (engine::trim() > 0) as i32
}

/// Fills glibc's `struct mallinfo2` (ten `size_t` fields, in order: arena,
/// ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks,
/// keepcost) from magpie's statistics, for `mallinfo`/`mallinfo2`.
///
/// # Safety
/// `mi` must point to a writable `struct mallinfo2`.
#[no_mangle]
pub unsafe extern "C" fn magpie_fill_mallinfo2(mi: *mut [usize; 10]) {
    let s = crate::stats::stats();
    let small_live = s.live_bytes.saturating_sub(s.large_live_bytes) as usize;
    let v = [
        s.heap_committed as usize,   // arena: bytes obtained from the OS
        0,                           // ordblks: free chunks (not tracked)
        0,                           // smblks
        0,                           // hblks
        s.large_live_bytes as usize, // hblkhd: bytes in large objects
        0,                           // usmblks
        0,                           // fsmblks
        small_live + s.large_live_bytes as usize, // uordblks: bytes in use
        s.heap_free as usize,        // fordblks: free bytes
        s.heap_free_resident as usize, // keepcost: releasable bytes
    ];
    // SAFETY: the caller guarantees mi is writable.
    unsafe { *mi = v };
}

/// A debugging query for tests and tools: 1 if `p` is the start of an object
/// the heap holds as allocated now, 0 otherwise (NULL, a foreign or interior
/// pointer, a freed slot). Allocation-free and lock-free; the answer may be
/// stale as soon as another thread allocates or frees. A slot freed by the
/// collector reads as allocated again once a later allocation reuses it.
#[no_mangle]
pub extern "C" fn magpie_is_allocated(p: *const c_void) -> i32 {
    crate::debug::is_allocated(p as usize) as i32
}

/// Leakcheck: runs a collection and writes the leak report (stderr, or the
/// file `MAGPIE_LEAK_REPORT` names). Returns the bytes leaked so far (0
/// outside `MAGPIE_GC=leakcheck`).
#[no_mangle]
pub extern "C" fn magpie_leak_report() -> usize {
    crate::leak::leak_report().bytes as usize
}

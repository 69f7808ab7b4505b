//! The C API's semantics (glibc's where the C standard leaves a choice),
//! called from Rust.

mod common;

use common::{errno, set_errno, MIB};
use core::ffi::c_void;
use magpie::*;
use std::ptr;

const SENTINEL: *mut c_void = 0xDEAD_BEE0 as *mut c_void;

unsafe fn fill(p: *mut c_void, n: usize, v: u8) {
    unsafe { ptr::write_bytes(p as *mut u8, v, n) }
}

unsafe fn all(p: *const c_void, n: usize, v: u8) -> Option<usize> {
    let s = unsafe { std::slice::from_raw_parts(p as *const u8, n) };
    s.iter().position(|&b| b != v)
}

/// Sizes around every interesting boundary up to a few MiB.
fn sizes() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=1100).collect();
    let mut s = 1024;
    while s <= 4 * MIB {
        for d in [-17isize, -16, -9, -8, -1, 0, 1, 7, 8, 9, 15, 16, 17] {
            v.push((s as isize + d) as usize);
        }
        s = s * 5 / 4;
    }
    for k in 1..=40 {
        v.push(k * 1000 + 1);
    }
    v.push(32 << 10);
    v.push((32 << 10) + 1);
    v.push(64 << 10);
    v
}

#[test]
fn malloc_zero_and_free_null() {
    let mut ps = Vec::new();
    for _ in 0..100 {
        let p = magpie_malloc(0);
        assert!(!p.is_null(), "malloc(0) returned NULL");
        ps.push(p as usize);
    }
    let mut sorted = ps.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        ps.len(),
        "malloc(0) returned the same pointer twice while live"
    );
    for p in ps {
        unsafe { magpie_free(p as *mut c_void) };
    }
    unsafe { magpie_free(ptr::null_mut()) };
    assert_eq!(unsafe { magpie_malloc_usable_size(ptr::null_mut()) }, 0);
}

#[test]
fn malloc_alignment_and_usable_size() {
    for size in sizes() {
        let mut ps = Vec::new();
        for _ in 0..8 {
            let p = magpie_malloc(size);
            assert!(!p.is_null(), "malloc({size}) returned NULL");
            let want = if size >= 16 { 16 } else { 8 };
            assert_eq!(
                p as usize % want,
                0,
                "malloc({size}) = {p:p} is not {want}-byte aligned"
            );
            let u = unsafe { magpie_malloc_usable_size(p) };
            assert!(u >= size, "malloc_usable_size(malloc({size})) = {u}");
            // The whole usable size is ours to write.
            unsafe { fill(p, u, 0x3C) };
            ps.push((p, u));
        }
        for (p, u) in ps {
            assert_eq!(
                unsafe { all(p, u, 0x3C) },
                None,
                "malloc({size}) blocks overlap"
            );
            unsafe { magpie_free(p) };
        }
    }
}

#[test]
fn calloc_zeroes_and_overflow() {
    // Overflow.
    for (n, s) in [
        (usize::MAX, 2),
        (2, usize::MAX),
        (1 << 33, 1 << 33),
        (usize::MAX / 3, 4),
    ] {
        set_errno(0);
        let p = magpie_calloc(n, s);
        assert!(p.is_null(), "calloc({n}, {s}) should fail");
        assert_eq!(errno(), libc::ENOMEM, "calloc({n}, {s}) errno");
    }
    // calloc(0, x) and calloc(x, 0) give a freeable pointer.
    for (n, s) in [(0, 0), (0, 8), (8, 0)] {
        let p = magpie_calloc(n, s);
        assert!(!p.is_null(), "calloc({n}, {s}) returned NULL");
        unsafe { magpie_free(p) };
    }
    // Zeroed, including on memory just dirtied and freed.
    for size in [
        1usize,
        8,
        16,
        24,
        100,
        1000,
        4096,
        8000,
        32 << 10,
        (32 << 10) + 1,
        100_000,
        MIB,
        5 * MIB + 3,
    ] {
        let n = ((16 * MIB) / size).clamp(2, 500);
        let dirty: Vec<_> = (0..n)
            .map(|_| {
                let p = magpie_malloc(size);
                assert!(!p.is_null());
                unsafe { fill(p, size, 0xEE) };
                p as usize
            })
            .collect();
        let mut sorted = dirty.clone();
        sorted.sort_unstable();
        for &p in &dirty {
            unsafe { magpie_free(p as *mut c_void) };
        }
        let mut reused = 0;
        let zs: Vec<_> = (0..n)
            .map(|k| {
                let (a, b) = if k % 2 == 0 { (1, size) } else { (size, 1) };
                let p = magpie_calloc(a, b);
                assert!(!p.is_null(), "calloc({a}, {b}) returned NULL");
                assert_eq!(p as usize % if size >= 16 { 16 } else { 8 }, 0);
                if let Some(i) = unsafe { all(p, size, 0) } {
                    panic!(
                        "calloc({a}, {b}) = {p:p} (reused freed block: {}): byte {i} not zero",
                        sorted.binary_search(&(p as usize)).is_ok()
                    );
                }
                reused += sorted.binary_search(&(p as usize)).is_ok() as usize;
                unsafe { fill(p, size, 0xEE) };
                p as usize
            })
            .collect();
        eprintln!("calloc({size}): {reused}/{n} reused dirty blocks");
        for p in zs {
            unsafe { magpie_free(p as *mut c_void) };
        }
    }
    // calloc(n, size) with n > 1.
    let p = magpie_calloc(1000, 24) as *mut u8;
    assert!(!p.is_null());
    assert_eq!(unsafe { all(p.cast(), 24_000, 0) }, None);
    unsafe { magpie_free(p.cast()) };
}

#[test]
fn posix_memalign_bad_alignment() {
    for align in [
        0usize,
        1,
        2,
        3,
        4,
        12,
        24,
        48,
        100,
        4097,
        usize::MAX,
        (1 << 63) + 8,
    ] {
        let mut out = SENTINEL;
        set_errno(0);
        let r = unsafe { magpie_posix_memalign(&mut out, align, 64) };
        assert_eq!(
            r,
            libc::EINVAL,
            "posix_memalign(align {align}) returned {r}"
        );
        assert_eq!(
            out, SENTINEL,
            "posix_memalign(align {align}) wrote the output pointer"
        );
    }
}

#[test]
fn posix_memalign_good_alignments() {
    let mut align = 8;
    while align <= MIB {
        for size in [
            0usize,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            24,
            100,
            1000,
            4096,
            10_000,
            32 << 10,
            100_000,
            2 * MIB + 1,
        ] {
            if (align == 16 && size <= 8) || (align > 8192 && size == 0) {
                continue; // see small_sizes_with_16_byte_alignment, zero_size_with_page_plus_alignment
            }
            let mut ps = Vec::new();
            for _ in 0..4 {
                let mut out = SENTINEL;
                let r = unsafe { magpie_posix_memalign(&mut out, align, size) };
                assert_eq!(r, 0, "posix_memalign({align}, {size}) returned {r}");
                assert!(!out.is_null() && out != SENTINEL);
                assert_eq!(
                    out as usize % align,
                    0,
                    "posix_memalign({align}, {size}) = {out:p} misaligned"
                );
                let u = unsafe { magpie_malloc_usable_size(out) };
                assert!(u >= size, "usable size {u} < {size}");
                unsafe { fill(out, size, 0x11) };
                ps.push(out);
            }
            for p in ps {
                assert_eq!(unsafe { all(p, size, 0x11) }, None);
                unsafe { magpie_free(p) };
            }
        }
        align *= 2;
    }
}

#[test]
fn posix_memalign_huge() {
    for (align, size) in [
        (16, usize::MAX),
        (64, usize::MAX / 2),
        (1 << 62, 1),
        (1 << 63, 1),
        (4096, 1 << 62),
    ] {
        let mut out = SENTINEL;
        let r = unsafe { magpie_posix_memalign(&mut out, align, size) };
        assert_eq!(r, libc::ENOMEM, "posix_memalign({align:#x}, {size:#x})");
        assert_eq!(out, SENTINEL, "output written on failure");
    }
}

#[test]
fn aligned_alloc_and_memalign() {
    let mut align = 1;
    while align <= MIB {
        for size in [1usize, 8, 16, 24, 100, 4096, 5000, 40_000, MIB + 1] {
            if align == 16 && size <= 8 {
                continue; // see small_sizes_with_16_byte_alignment
            }
            let p = magpie_aligned_alloc(align, size);
            assert!(!p.is_null(), "aligned_alloc({align}, {size})");
            assert_eq!(
                p as usize % align,
                0,
                "aligned_alloc({align}, {size}) = {p:p}"
            );
            assert!(unsafe { magpie_malloc_usable_size(p) } >= size);
            unsafe { fill(p, size, 1) };
            let q = magpie_memalign(align, size);
            assert!(!q.is_null(), "memalign({align}, {size})");
            assert_eq!(q as usize % align, 0, "memalign({align}, {size}) = {q:p}");
            assert!(unsafe { magpie_malloc_usable_size(q) } >= size);
            unsafe { fill(q, size, 2) };
            assert_eq!(unsafe { all(p, size, 1) }, None);
            unsafe {
                magpie_free(p);
                magpie_free(q);
            }
        }
        align *= 2;
    }
    // aligned_alloc with a non-power-of-two alignment: NULL + EINVAL.
    for align in [0usize, 3, 24, 100] {
        set_errno(0);
        let p = magpie_aligned_alloc(align, 64);
        assert!(p.is_null(), "aligned_alloc({align}, 64) should fail");
        assert_eq!(errno(), libc::EINVAL, "aligned_alloc({align}, 64) errno");
    }
    // memalign rounds a non-power-of-two alignment up (glibc).
    for (align, want) in [
        (0usize, 1usize),
        (3, 4),
        (5, 8),
        (24, 32),
        (48, 64),
        (100, 128),
        (1000, 1024),
        (5000, 8192),
        (40_000, 65536),
        (300_000, 1 << 19),
    ] {
        for size in [1usize, 64, 10_000] {
            let p = magpie_memalign(align, size);
            assert!(!p.is_null(), "memalign({align}, {size})");
            assert_eq!(
                p as usize % want,
                0,
                "memalign({align}, {size}) = {p:p}, want {want}-aligned"
            );
            unsafe { magpie_free(p) };
        }
    }
    // Impossible alignment: NULL + EINVAL (glibc) or ENOMEM, never a pointer.
    set_errno(0);
    let p = magpie_memalign(usize::MAX, 1);
    assert!(p.is_null());
    assert!(
        errno() == libc::EINVAL || errno() == libc::ENOMEM,
        "errno {}",
        errno()
    );
}

#[test]
fn small_sizes_with_16_byte_alignment() {
    // posix_memalign/aligned_alloc/memalign with align 16 and sizes below 16
    // must still be 16-byte aligned (allocate many: a slot of an 8-byte class
    // is 16-aligned only every other time).
    let mut bad = Vec::new();
    for size in [0usize, 1, 4, 8, 9, 15] {
        let mut ps = Vec::new();
        let mut miss = [0; 3];
        for _ in 0..64 {
            let mut out = SENTINEL;
            assert_eq!(unsafe { magpie_posix_memalign(&mut out, 16, size) }, 0);
            miss[0] += (out as usize % 16 != 0) as usize;
            ps.push(out);
            let p = magpie_aligned_alloc(16, size);
            assert!(!p.is_null());
            miss[1] += (p as usize % 16 != 0) as usize;
            ps.push(p);
            let p = magpie_memalign(16, size);
            assert!(!p.is_null());
            miss[2] += (p as usize % 16 != 0) as usize;
            ps.push(p);
        }
        for (f, m) in ["posix_memalign", "aligned_alloc", "memalign"]
            .iter()
            .zip(miss)
        {
            if m > 0 {
                bad.push(format!(
                    "{f}(16, {size}): {m}/64 pointers only 8-byte aligned"
                ));
            }
        }
        for p in ps {
            unsafe { magpie_free(p) };
        }
    }
    assert!(
        bad.is_empty(),
        "alignment 16 not honoured:\n  {}",
        bad.join("\n  ")
    );
}

/// Size 0 with an alignment above magpie's 8 KiB page: a freeable pointer, as
/// for every other alignment.
#[test]
fn zero_size_with_page_plus_alignment() {
    let mut bad = Vec::new();
    for align in [8192usize, 16384, 65536, MIB] {
        let mut out = SENTINEL;
        let r = unsafe { magpie_posix_memalign(&mut out, align, 0) };
        if r != 0 || out as usize % align != 0 {
            bad.push(format!("posix_memalign({align}, 0) = {r}, out {out:p}"));
        } else {
            unsafe { magpie_free(out) };
        }
        let p = magpie_aligned_alloc(align, 0);
        if p.is_null() || p as usize % align != 0 {
            bad.push(format!("aligned_alloc({align}, 0) = {p:p}"));
        } else {
            unsafe { magpie_free(p) };
        }
        let p = magpie_memalign(align, 0);
        if p.is_null() || p as usize % align != 0 {
            bad.push(format!("memalign({align}, 0) = {p:p}"));
        } else {
            unsafe { magpie_free(p) };
        }
    }
    assert!(
        bad.is_empty(),
        "size-0 aligned requests failed:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn valloc_pvalloc() {
    for size in [0usize, 1, 100, 4095, 4096, 4097, 10_000, 100_000, MIB + 1] {
        let p = magpie_valloc(size);
        assert!(!p.is_null(), "valloc({size})");
        assert_eq!(p as usize % 4096, 0, "valloc({size}) = {p:p}");
        assert!(unsafe { magpie_malloc_usable_size(p) } >= size);
        unsafe { fill(p, size, 7) };
        let q = magpie_pvalloc(size);
        assert!(!q.is_null(), "pvalloc({size})");
        assert_eq!(q as usize % 4096, 0, "pvalloc({size}) = {q:p}");
        let rounded = (size.max(1) + 4095) & !4095;
        let u = unsafe { magpie_malloc_usable_size(q) };
        assert!(u >= rounded, "pvalloc({size}) usable {u} < {rounded}");
        unsafe { fill(q, rounded, 8) };
        unsafe {
            magpie_free(p);
            magpie_free(q);
        }
    }
    // (valloc/pvalloc of huge sizes: see the *huge_sizes* tests.)
}

#[test]
fn realloc_semantics() {
    // realloc(NULL, n) is malloc(n).
    let p = unsafe { magpie_realloc(ptr::null_mut(), 100) };
    assert!(!p.is_null());
    assert_eq!(p as usize % 16, 0);
    assert!(unsafe { magpie_malloc_usable_size(p) } >= 100);
    // realloc(p, 0) frees and returns NULL (glibc). (That p is really freed
    // is checked in bad_input.rs: freeing it again aborts.)
    let q = unsafe { magpie_realloc(p, 0) };
    assert!(q.is_null(), "realloc(p, 0) returned {q:p}");
    // realloc(NULL, 0) is malloc(0): a freeable pointer.
    let z = unsafe { magpie_realloc(ptr::null_mut(), 0) };
    assert!(!z.is_null());
    unsafe { magpie_free(z) };

    // Growing and shrinking keeps the contents, across classes and into large.
    let mut p = magpie_malloc(1) as *mut u8;
    let mut size = 1usize;
    unsafe { *p = 0 };
    let steps: Vec<usize> = [
        2,
        9,
        16,
        17,
        100,
        1000,
        4096,
        8193,
        32 << 10,
        (32 << 10) + 1,
        100_000,
        MIB,
        3 * MIB,
        8 * MIB,
    ]
    .into_iter()
    .chain([
        5 * MIB,
        4 * MIB + 1,
        MIB,
        70_000,
        32 << 10,
        1000,
        17,
        16,
        8,
        1,
    ])
    .collect();
    for n in steps {
        let q = unsafe { magpie_realloc(p.cast(), n) } as *mut u8;
        assert!(!q.is_null(), "realloc({size} -> {n})");
        assert_eq!(
            q as usize % if n >= 16 { 16 } else { 8 },
            0,
            "realloc -> {n} misaligned"
        );
        let kept = size.min(n);
        for i in 0..kept {
            let want = (i % 251) as u8;
            let got = unsafe { *q.add(i) };
            assert_eq!(got, want, "realloc {size} -> {n}: byte {i} lost");
        }
        for i in kept..n {
            unsafe { *q.add(i) = (i % 251) as u8 };
        }
        assert!(unsafe { magpie_malloc_usable_size(q.cast()) } >= n);
        p = q;
        size = n;
    }
    unsafe { magpie_free(p.cast()) };
}

#[test]
fn realloc_failure_keeps_block() {
    for size in [24usize, 5000, MIB] {
        let p = magpie_malloc(size);
        assert!(!p.is_null());
        unsafe { fill(p, size, 0x77) };
        for n in [usize::MAX, usize::MAX / 2, usize::MAX - 4095] {
            set_errno(0);
            let q = unsafe { magpie_realloc(p, n) };
            assert!(q.is_null(), "realloc(p, {n:#x}) should fail");
            assert_eq!(errno(), libc::ENOMEM, "realloc(p, {n:#x}) errno");
            assert_eq!(
                unsafe { all(p, size, 0x77) },
                None,
                "realloc failure changed the block"
            );
        }
        // reallocarray overflow: NULL + ENOMEM, block intact and still ours.
        for (n, s) in [(usize::MAX, 2), (1 << 33, 1 << 33), (2, usize::MAX / 2 + 1)] {
            set_errno(0);
            let q = unsafe { magpie_reallocarray(p, n, s) };
            assert!(q.is_null(), "reallocarray(p, {n}, {s}) should fail");
            assert_eq!(errno(), libc::ENOMEM, "reallocarray errno");
            assert_eq!(
                unsafe { all(p, size, 0x77) },
                None,
                "reallocarray failure changed the block"
            );
        }
        // reallocarray that fits works like realloc.
        let q = unsafe { magpie_reallocarray(p, 3, size) };
        assert!(!q.is_null());
        assert_eq!(unsafe { all(q, size, 0x77) }, None);
        unsafe { magpie_free(q) };
    }
    // reallocarray(NULL, n, s) allocates.
    let p = unsafe { magpie_reallocarray(ptr::null_mut(), 10, 10) };
    assert!(!p.is_null());
    assert!(unsafe { magpie_malloc_usable_size(p) } >= 100);
    unsafe { magpie_free(p) };
}

#[test]
fn huge_sizes_fail_with_enomem() {
    for size in [
        usize::MAX,
        usize::MAX / 2,
        usize::MAX - 8191,
        usize::MAX - 15,
        1 << 62,
        (isize::MAX as usize) + 1,
    ] {
        set_errno(0);
        let p = magpie_malloc(size);
        assert!(p.is_null(), "malloc({size:#x}) returned {p:p}");
        assert_eq!(errno(), libc::ENOMEM, "malloc({size:#x}) errno");
        set_errno(0);
        let p = magpie_calloc(1, size);
        assert!(p.is_null(), "calloc(1, {size:#x})");
        assert_eq!(errno(), libc::ENOMEM);
        set_errno(0);
        let p = magpie_pvalloc(size);
        assert!(p.is_null(), "pvalloc({size:#x})");
        assert_eq!(errno(), libc::ENOMEM);
        // Alignments up to 16 take malloc's path.
        set_errno(0);
        let p = magpie_aligned_alloc(16, size);
        assert!(p.is_null(), "aligned_alloc(16, {size:#x})");
        assert_eq!(errno(), libc::ENOMEM);
    }
    // The allocator still works afterwards.
    let p = magpie_malloc(100);
    assert!(!p.is_null());
    unsafe { magpie_free(p) };
}

/// Sizes near SIZE_MAX with an alignment above 16 (the aligned path): every
/// aligned entry point must fail with ENOMEM, never return a small block.
#[test]
fn aligned_huge_sizes_fail_with_enomem() {
    let mut bad = Vec::new();
    for size in [
        usize::MAX,
        usize::MAX - 15,
        usize::MAX - 4095,
        usize::MAX / 2,
        1 << 62,
    ] {
        for align in [32usize, 64, 4096, 65536] {
            set_errno(0);
            let p = magpie_aligned_alloc(align, size);
            if !p.is_null() || errno() != libc::ENOMEM {
                bad.push(format!(
                    "aligned_alloc({align}, {size:#x}) = {p:p} errno {} (usable {})",
                    errno(),
                    if p.is_null() {
                        0
                    } else {
                        unsafe { magpie_malloc_usable_size(p) }
                    }
                ));
            }
            set_errno(0);
            let p = magpie_memalign(align, size);
            if !p.is_null() || errno() != libc::ENOMEM {
                bad.push(format!(
                    "memalign({align}, {size:#x}) = {p:p} errno {}",
                    errno()
                ));
            }
            let mut out = SENTINEL;
            let r = unsafe { magpie_posix_memalign(&mut out, align, size) };
            if r != libc::ENOMEM || out != SENTINEL {
                bad.push(format!(
                    "posix_memalign({align}, {size:#x}) = {r}, out {out:p}"
                ));
            }
        }
        set_errno(0);
        let p = magpie_valloc(size);
        if !p.is_null() || errno() != libc::ENOMEM {
            bad.push(format!("valloc({size:#x}) = {p:p} errno {}", errno()));
        }
    }
    assert!(
        bad.is_empty(),
        "huge aligned requests succeeded:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn malloc_trim_works() {
    let ps: Vec<_> = (0..64).map(|_| magpie_malloc(MIB)).collect();
    for p in ps {
        unsafe {
            fill(p, MIB, 1);
            magpie_free(p)
        };
    }
    let r = magpie_malloc_trim(0);
    assert!(r == 0 || r == 1);
}

/// magpie_is_allocated: 1 only for the start of a live object. (Freed slots
/// are checked by tests/gc_preload.rs's control; here other tests, running in
/// parallel, could reuse a freed slot at once.)
#[test]
fn is_allocated_query() {
    let local = 0u64;
    assert_eq!(magpie_is_allocated(ptr::null()), 0);
    assert_eq!(
        magpie_is_allocated(&local as *const u64 as *const c_void),
        0
    );
    for size in [1usize, 64, 1000, 40_000, 3 * MIB] {
        let p = magpie_malloc(size);
        assert!(!p.is_null());
        assert_eq!(magpie_is_allocated(p), 1, "malloc({size})");
        let inner = (p as usize + size / 2 + 1) as *const c_void;
        assert_eq!(magpie_is_allocated(inner), 0, "interior of malloc({size})");
        unsafe { magpie_free(p) };
    }
}

/// The Rust face (GlobalAlloc, called directly — this binary's global
/// allocator is the system's): impossible layouts give null, a failed realloc
/// keeps the block.
#[test]
fn rust_face_huge_layouts() {
    use std::alloc::{GlobalAlloc, Layout};
    let a = magpie::Magpie;
    for align in [1usize, 8, 16, 64, 4096, 65536, 1 << 20] {
        let size = isize::MAX as usize - (align - 1);
        let l = Layout::from_size_align(size, align).unwrap();
        assert!(unsafe { a.alloc(l) }.is_null(), "alloc({size:#x}, {align})");
        assert!(
            unsafe { a.alloc_zeroed(l) }.is_null(),
            "alloc_zeroed({size:#x}, {align})"
        );
        let l = Layout::from_size_align(1 << 45, align).unwrap();
        assert!(unsafe { a.alloc(l) }.is_null(), "alloc(32 TiB, {align})");
        for old in [8usize, 5000, 100_000] {
            let l = Layout::from_size_align(old, align).unwrap();
            let p = unsafe { a.alloc(l) };
            assert!(!p.is_null());
            unsafe { ptr::write_bytes(p, 0x66, old) };
            let q = unsafe { a.realloc(p, l, isize::MAX as usize - (align - 1)) };
            assert!(q.is_null(), "realloc to a huge size");
            assert_eq!(
                unsafe { all(p.cast(), old, 0x66) },
                None,
                "failed realloc changed the block"
            );
            unsafe { a.dealloc(p, l) };
        }
    }
}

/// The whole binary again, with the locked (non-rseq) caches.
#[test]
fn zz_all_with_rseq_off() {
    if std::env::var_os("MAGPIE_CAPI_CHILD").is_some() {
        return;
    }
    let out = common::reexec(
        &[("MAGPIE_RSEQ", "0"), ("MAGPIE_CAPI_CHILD", "1")],
        &["--skip", "zz_all_with_rseq_off", "--test-threads=2"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok."),
        "MAGPIE_RSEQ=0 run failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rseq_off_selects_locked_caches() {
    let p = magpie_malloc(8);
    unsafe { magpie_free(p) };
    let mode = magpie::stats().cache_mode;
    if std::env::var_os("MAGPIE_CAPI_CHILD").is_some() {
        assert_eq!(mode, "locked");
    } else {
        eprintln!("cache mode: {mode}");
    }
}

//! `magpie::Magpie`, the Rust global allocator.

use core::alloc::{GlobalAlloc, Layout};

use crate::alloc::{self as engine, sizeclass};

/// magpie as Rust's global allocator:
///
/// ```no_run
/// #[global_allocator]
/// static A: magpie::Magpie = magpie::Magpie;
/// ```
///
/// Every `Layout` is honoured (any power-of-two alignment; 64 KiB and beyond
/// get aligned spans). Layouts with alignment below 8 cannot hold pointers and
/// are placed in pointer-free (noscan) spans; those smaller than 16 bytes are
/// packed into 16-byte tiny blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Magpie;

// SAFETY: the engine returns blocks of at least `size` bytes aligned to
// `align`, distinct while live, and accepts them back in dealloc/realloc.
unsafe impl GlobalAlloc for Magpie {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = engine::alloc_rust(layout.size(), layout.align(), false);
        if crate::leak::tracking() {
            crate::leak::record_here(p, layout.size());
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        engine::free(ptr)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = engine::alloc_rust(layout.size(), layout.align(), true);
        if crate::leak::tracking() {
            crate::leak::record_here(p, layout.size());
        }
        p
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let noscan =
            align < 8 && !crate::config::SCAN_ALL.load(core::sync::atomic::Ordering::Relaxed);
        let q = engine::realloc_with(
            ptr,
            new_size,
            Some(layout.size()),
            |class| {
                !(noscan && new_size < 16) && sizeclass::class_for(new_size, align) == Some(class)
            },
            || engine::alloc_rust(new_size, align, false),
        );
        if crate::leak::tracking() {
            crate::leak::record_here(q, new_size);
        }
        q
    }
}

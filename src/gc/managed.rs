//! GC-managed memory: never freed by the user, reclaimed when unreachable in
//! every mode but `off` (where it is simply never freed).
//!
//! - Rust: [`Gc<T>`], a `Copy` pointer to a value on the managed heap.
//! - C: `magpie_gc_malloc` (zeroed, scanned for pointers) and
//!   `magpie_gc_malloc_atomic` (pointer-free: never scanned, not zeroed;
//!   small ones are packed into tiny blocks), and `magpie_gc_collect`.

use core::ffi::c_void;
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::Relaxed;

use crate::alloc::{self as engine, central, heap, sizeclass, span};

/// Marks the object at `p` as GC-managed (its slot-state byte, or its tiny
/// block's).
fn mark_managed(p: *mut u8) {
    if p.is_null() {
        return;
    }
    let s = heap::span_of(p as usize);
    if s.is_null() {
        return;
    }
    // SAFETY: p was just allocated; its span is live.
    let sp = unsafe { &*s };
    match sp.state.load(Relaxed) {
        span::LARGE => {
            sp.large_alloc.fetch_or(span::SLOT_MANAGED_BIT, Relaxed);
        }
        _ => {
            let i = sp.slot_of(p as usize);
            sp.slot_state(i).fetch_or(span::SLOT_MANAGED_BIT, Relaxed);
        }
    }
}

/// Allocates `size` bytes of GC-managed memory aligned to `align`; zeroed
/// unless `atomic` (pointer-free). Null when out of memory.
pub fn gc_alloc(size: usize, align: usize, atomic: bool) -> *mut u8 {
    let size = size.max(1);
    let p = if atomic && size < 16 && align <= 8 {
        engine::alloc_tiny(size, align)
    } else {
        match sizeclass::class_for(
            if align <= 8 && !atomic {
                (size + 15) & !15
            } else {
                size
            },
            align.max(if atomic { 1 } else { 16 }),
        ) {
            Some(c) => engine::alloc_sc(central::spanclass(c, atomic)),
            None => return managed_large(size, align, atomic),
        }
    };
    if !p.is_null() {
        if !atomic {
            // SAFETY: p holds at least size bytes.
            unsafe { ptr::write_bytes(p, 0, size) };
        }
        mark_managed(p);
        super::note_managed_alloc(size);
    }
    p
}

fn managed_large(size: usize, align: usize, atomic: bool) -> *mut u8 {
    let p = engine::alloc_large(size, align, atomic, !atomic);
    mark_managed(p);
    if !p.is_null() {
        super::note_managed_alloc(size);
    }
    p
}

/// `magpie_gc_malloc`: `size` bytes of zeroed, GC-managed memory that may hold
/// pointers (16-byte aligned). Never pass it to `free`.
#[no_mangle]
pub extern "C" fn magpie_gc_malloc(size: usize) -> *mut c_void {
    gc_alloc(size, 16, false).cast()
}

/// `magpie_gc_malloc_atomic`: `size` bytes of GC-managed memory that hold no
/// pointers: never scanned, not zeroed.
#[no_mangle]
pub extern "C" fn magpie_gc_malloc_atomic(size: usize) -> *mut c_void {
    gc_alloc(size, 8, true).cast()
}

/// `magpie_gc_collect`: runs a full collection now. Returns 1 if it ran.
#[no_mangle]
pub extern "C" fn magpie_gc_collect() -> i32 {
    super::collect_now() as i32
}

/// `magpie_gc_phase`: what the collector is doing now: 0 not marking, 1
/// marking (concurrently, or with the world stopped), 2 mark termination.
/// For tools and benchmarks that relate their own figures to the cycle.
#[no_mangle]
pub extern "C" fn magpie_gc_phase() -> i32 {
    super::phase() as i32
}

/// `magpie_gc_cycles`: collection cycles completed so far.
#[no_mangle]
pub extern "C" fn magpie_gc_cycles() -> u64 {
    super::cycles()
}

/// A pointer to a value on the GC-managed heap: `Copy`, dereferences to the
/// value, never freed by the program; the collector reclaims the value's
/// memory once no pointer to it remains (in `MAGPIE_GC=collect` and
/// `leakcheck`; with `off` it is never reclaimed).
///
/// There are no finalizers yet: the value's `Drop` never runs, so a `Gc` of
/// a type that owns other resources (files, `Box`es) leaks those. Values are
/// found conservatively: a pointer to the value anywhere in a scanned place
/// (stack, registers, globals, the heap) keeps it alive; a pointer hidden by
/// arithmetic does not.
pub struct Gc<T: 'static> {
    ptr: NonNull<T>,
    _own: PhantomData<T>,
}

impl<T: 'static> Clone for Gc<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: 'static> Copy for Gc<T> {}

// SAFETY: a Gc only hands out shared references; sharing it across threads
// is sound when the value may be shared and sent.
unsafe impl<T: Send + Sync + 'static> Send for Gc<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync + 'static> Sync for Gc<T> {}

impl<T: 'static> Gc<T> {
    /// Moves `value` to the managed heap. Aborts if memory is exhausted.
    pub fn new(value: T) -> Gc<T> {
        let size = core::mem::size_of::<T>().max(1);
        let align = core::mem::align_of::<T>();
        // A type with alignment below 8 cannot hold a pointer: never scanned.
        let p = gc_alloc(
            size,
            align,
            align < 8 && !crate::config::SCAN_ALL.load(Relaxed),
        ) as *mut T;
        let Some(ptr) = NonNull::new(p) else {
            crate::sys::fatal::fatal("out of memory in Gc::new", None);
        };
        // SAFETY: p is fresh, aligned and big enough for T.
        unsafe { ptr.as_ptr().write(value) };
        Gc {
            ptr,
            _own: PhantomData,
        }
    }

    /// The address of the value.
    pub fn as_ptr(this: Gc<T>) -> *const T {
        this.ptr.as_ptr()
    }

    /// True if both point to the same value.
    pub fn ptr_eq(a: Gc<T>, b: Gc<T>) -> bool {
        a.ptr == b.ptr
    }
}

impl<T: 'static> Deref for Gc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the value lives as long as a pointer to it exists, and this
        // Gc (on the stack, in a register or in scanned memory) is one.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: core::fmt::Debug + 'static> core::fmt::Debug for Gc<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}

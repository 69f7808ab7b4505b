//! # magpie
//!
//! A memory allocator for Linux/x86-64 with Go's layering — size classes,
//! per-CPU caches on restartable sequences, central lists, a page heap — usable
//! as Rust's global allocator, as a C API (`magpie_malloc` and friends) and, in
//! `libmagpie.so`, as an LD_PRELOAD replacement for the malloc family.
//!
//! ```no_run
//! #[global_allocator]
//! static A: magpie::Magpie = magpie::Magpie;
//! ```
//!
//! Nothing inside the allocator allocates from the heap it manages, panics, or
//! takes a lock a signal handler might need; metadata lives in mappings of its
//! own and free slots are tracked out of band (bitmaps, per-slot state bytes,
//! per-CPU arrays), so an overflow or a write after free cannot corrupt it.
//! See `DESIGN.md` in the project for the architecture.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod alloc;
pub mod config;
pub mod debug;
pub mod front;
pub mod gc;
pub mod leak;
pub mod stats;
pub mod sys;

pub use front::capi::*;
pub use front::global::Magpie;
pub use gc::managed::{magpie_gc_collect, magpie_gc_malloc, magpie_gc_malloc_atomic, Gc};
pub use gc::{GcStats, Mode};
pub use leak::{leak_report, LeakTotals};
pub use stats::{stats, ClassStats, Stats};

/// Runs a full garbage collection now. Returns false if the collector is off
/// (`MAGPIE_GC=off`) or the cycle was abandoned because a thread did not stop.
pub fn collect() -> bool {
    gc::collect_now()
}

/// Returns free memory to the OS: the per-CPU caches' slots go back to their
/// spans, then empty spans and the all-free pages of partly used spans are
/// released (the latter after waiting up to a second for a collection cycle
/// in progress; skipped if it runs longer). Returns bytes released.
pub fn trim() -> usize {
    alloc::trim()
}

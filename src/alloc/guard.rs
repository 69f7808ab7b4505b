//! The per-thread "inside the allocator" marker.
//!
//! Slow paths (refill, drain, page heap, large objects, the locked fallback) set
//! it while they change shared state. A collector that stops the world with
//! signals checks it in its handler: a thread caught inside the allocator is
//! let run on and stops on its way out ([`Guard`]'s drop), so a stopped world
//! never holds a half-changed cache, central list or span. The rseq fast paths
//! need no marker: a signal aborts an uncommitted section, and the one store
//! after a committed pop lies in the `magpie_alloc_windows` ranges.

use core::cell::Cell;

thread_local! {
    /// Nesting depth of allocator slow paths on this thread. Const-initialised
    /// and without destructor, so touching it never allocates.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Marks the thread as inside the allocator until dropped.
pub struct Guard(());

#[inline]
pub fn enter() -> Guard {
    DEPTH.with(|d| d.set(d.get() + 1));
    Guard(())
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        let depth = DEPTH.with(|d| {
            let v = d.get() - 1;
            d.set(v);
            v
        });
        if depth == 0 {
            // A stop signal found this thread inside the allocator: stop now.
            crate::gc::stop::stop_if_pending();
        }
    }
}

/// True while the calling thread is inside an allocator slow path.
pub fn inside() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Marks the thread as inside the allocator from `pthread_atfork`'s prepare
/// handler (which takes every allocator lock) until the parent or child
/// handler calls [`leave_after_fork`]: a stop signal arriving meanwhile parks
/// the thread only once it has released them.
pub fn enter_for_fork() {
    core::mem::forget(enter());
}

/// Ends [`enter_for_fork`] (parking now if a stop is pending).
pub fn leave_after_fork() {
    drop(Guard(()));
}

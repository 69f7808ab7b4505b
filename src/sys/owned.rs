//! The registry of magpie's own mappings (heap reservation, page map, per-CPU
//! caches, metadata chunks, the collector's mark stack). The collector scans
//! every writable mapping of the process for roots except these: metadata
//! holds heap addresses (span bases, cached free slots) that must not keep
//! objects alive.

use spin::Mutex;

const MAX: usize = 4096;

struct Registry {
    ranges: [(usize, usize); MAX],
    len: usize,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    ranges: [(0, 0); MAX],
    len: 0,
});

/// Records `[addr, addr+len)` as magpie's own. Returns false when the table is full.
pub fn register(addr: *mut u8, len: usize) -> bool {
    let mut r = REGISTRY.lock();
    if r.len == MAX {
        return false;
    }
    let i = r.len;
    r.ranges[i] = (addr as usize, len);
    r.len += 1;
    true
}

/// Records a static of magpie's that holds no program pointer as its own,
/// so that the collector does not read it for roots at every termination
/// (this registry and the pause logs: 112 KiB of the 300 KiB of roots of a
/// small C program).
pub fn register_static<T>(s: &'static T) {
    register(s as *const T as *mut u8, core::mem::size_of::<T>());
}

/// Records the registry itself ([`register_static`]).
pub fn register_registry() {
    register_static(&REGISTRY);
}

/// Forgets the range starting at `addr`.
pub fn unregister(addr: *mut u8) {
    let mut r = REGISTRY.lock();
    let n = r.len;
    if let Some(i) = r.ranges[..n].iter().position(|&(a, _)| a == addr as usize) {
        r.ranges[i] = r.ranges[n - 1];
        r.len -= 1;
    }
}

/// Copies the registered ranges into `out`, sorted by address; returns how many.
pub fn snapshot(out: &mut [(usize, usize)]) -> usize {
    let r = REGISTRY.lock();
    let n = r.len.min(out.len());
    out[..n].copy_from_slice(&r.ranges[..n]);
    out[..n].sort_unstable();
    n
}

pub fn lock_for_fork() {
    core::mem::forget(REGISTRY.lock());
}

/// # Safety
/// Only after [`lock_for_fork`].
pub unsafe fn unlock_after_fork() {
    // SAFETY: the caller holds the lock leaked by lock_for_fork.
    unsafe { REGISTRY.force_unlock() };
}

//! The table of allocation sites: call stacks, deduplicated, each with the
//! leaks found at it.
//!
//! Every allocation in leakcheck mode interns its call stack here and keeps
//! the returned 31-bit id in its site record (see `leak::record`). The table
//! lives in magpie's own mappings (never the managed heap, skipped by the
//! root scan) and is sized virtually: pages are touched as stacks arrive.
//!
//! - `index`: open addressing over the stack's hash, `AtomicU32` slots holding
//!   an entry id (0 = empty). Lookups are lock-free: an id is published with a
//!   Release store after its entry and frames are written, and read with
//!   Acquire, so a reader that sees an id sees the whole entry.
//! - `entries[id]`: hash, where the frames are, and the leak counters the
//!   sweeper adds to (atomics: sweeps run on several threads).
//! - `frames`: the return addresses of every stack, back to back.
//!
//! Inserting takes a spin lock (one inserter at a time) and re-probes under
//! it, so a stack is never entered twice. The lock is never held across
//! anything that can block or allocate; fork takes it (`lock_for_fork`).
//!
//! Ids: 0 means "no record" (an object allocated by a path that does not
//! record), [`NO_STACK`] is the entry of the empty stack (stacks off, or the
//! table full).

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering::*};

use crate::sys::os;

/// Most frames a stack may have.
pub const MAX_DEPTH: usize = 64;
/// The id of the empty stack.
pub const NO_STACK: u32 = 1;

const MAX_ENTRIES: usize = 1 << 20;
const INDEX_SLOTS: usize = 1 << 21;
const MAX_FRAMES: usize = 1 << 25;

#[repr(C)]
pub struct Entry {
    hash: u64,
    first: u32,
    len: u32,
    /// Leaks found at this site (each object counted once).
    pub leaked_objects: AtomicU64,
    pub leaked_bytes: AtomicU64,
}

struct Table {
    index: *const AtomicU32,
    entries: *mut Entry,
    frames: *mut usize,
    /// Entries in use (ids 1..=count); Release-published.
    count: AtomicU32,
    nframes: usize,
}

static TABLE: AtomicPtr<Table> = AtomicPtr::new(ptr::null_mut());
static INSERT: spin::Mutex<()> = spin::Mutex::new(());

const TABLE_BYTES: usize = core::mem::size_of::<Table>().next_multiple_of(64);
const INDEX_BYTES: usize = INDEX_SLOTS * 4;
const ENTRY_BYTES: usize = MAX_ENTRIES * core::mem::size_of::<Entry>();
const FRAME_BYTES: usize = MAX_FRAMES * 8;
const TOTAL_BYTES: usize = TABLE_BYTES + INDEX_BYTES + ENTRY_BYTES + FRAME_BYTES;

/// The table, mapped on first use. Null if the mapping failed.
#[cold]
fn create() -> *mut Table {
    let _g = INSERT.lock();
    let t = TABLE.load(Acquire);
    if !t.is_null() {
        return t;
    }
    let base = os::map_owned(TOTAL_BYTES);
    if base.is_null() {
        return ptr::null_mut();
    }
    let t = base as *mut Table;
    // SAFETY: the mapping is fresh, zeroed, and large enough for the header
    // and the three arrays laid out after it.
    unsafe {
        t.write(Table {
            index: base.add(TABLE_BYTES) as *const AtomicU32,
            entries: base.add(TABLE_BYTES + INDEX_BYTES) as *mut Entry,
            frames: base.add(TABLE_BYTES + INDEX_BYTES + ENTRY_BYTES) as *mut usize,
            // Id 1 is the empty stack, with hash 0 and no frames.
            count: AtomicU32::new(NO_STACK),
            nframes: 0,
        });
    }
    TABLE.store(t, Release);
    t
}

#[inline]
fn table() -> Option<&'static Table> {
    let mut t = TABLE.load(Acquire);
    if t.is_null() {
        t = create();
    }
    // SAFETY: once published the table lives for the process's life.
    unsafe { t.as_ref() }
}

/// Each word multiplied on its own (the multiplies run in parallel; only the
/// rotate-xor chain is serial), then one finishing multiply so the low bits,
/// which pick the index slot, depend on every word.
#[inline]
fn hash(frames: &[usize]) -> u64 {
    let mut h: u64 = frames.len() as u64;
    for &f in frames {
        h = h.rotate_left(23) ^ (f as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1
}

impl Table {
    fn entry(&self, id: u32) -> &Entry {
        debug_assert!(id >= 1 && id <= self.count.load(Relaxed));
        // SAFETY: ids handed out are < MAX_ENTRIES and their entries written.
        unsafe { &*self.entries.add(id as usize) }
    }

    fn frames_of(&self, e: &Entry) -> &[usize] {
        // SAFETY: [first, first+len) was written before the entry was published.
        unsafe { core::slice::from_raw_parts(self.frames.add(e.first as usize), e.len as usize) }
    }

    /// Probes from `i` for `frames`: Ok(id) if present, Err(empty slot).
    fn probe(&self, mut i: usize, h: u64, frames: &[usize]) -> Result<u32, usize> {
        loop {
            // SAFETY: i < INDEX_SLOTS.
            let id = unsafe { (*self.index.add(i)).load(Acquire) };
            if id == 0 {
                return Err(i);
            }
            let e = self.entry(id);
            if e.hash == h && same_frames(self.frames_of(e), frames) {
                return Ok(id);
            }
            i = (i + 1) & (INDEX_SLOTS - 1);
        }
    }
}

/// Word-by-word equality: stacks are a few words, shorter than a call to
/// memcmp (which slice equality becomes).
#[inline]
fn same_frames(a: &[usize], b: &[usize]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The id of the stack `frames` (entered if new). [`NO_STACK`] for an empty
/// stack, or when the table is full or cannot be mapped.
pub fn intern(frames: &[usize]) -> u32 {
    let frames = &frames[..frames.len().min(MAX_DEPTH)];
    if frames.is_empty() {
        return NO_STACK;
    }
    let Some(t) = table() else {
        return NO_STACK;
    };
    let h = hash(frames);
    let start = h as usize & (INDEX_SLOTS - 1);
    let mut slot = match t.probe(start, h, frames) {
        Ok(id) => return id,
        Err(slot) => slot,
    };
    let _g = INSERT.lock();
    // Another thread may have entered it (or others) since the probe.
    slot = match t.probe(slot, h, frames) {
        Ok(id) => return id,
        Err(s) => s,
    };
    let id = t.count.load(Relaxed) + 1;
    // Keep the index at most half full so probes stay short.
    if id as usize >= MAX_ENTRIES.min(INDEX_SLOTS / 2) || t.nframes + frames.len() > MAX_FRAMES {
        return NO_STACK;
    }
    let first = t.nframes;
    // SAFETY: under the insert lock we own the unpublished tail of the frame
    // array and entry `id`; both are within their mappings (checked above).
    // `nframes` is only written under this lock.
    unsafe {
        ptr::copy_nonoverlapping(frames.as_ptr(), t.frames.add(first), frames.len());
        t.entries.add(id as usize).write(Entry {
            hash: h,
            first: first as u32,
            len: frames.len() as u32,
            leaked_objects: AtomicU64::new(0),
            leaked_bytes: AtomicU64::new(0),
        });
        (*(t as *const Table as *mut Table)).nframes = first + frames.len();
        t.count.store(id, Release);
        (*t.index.add(slot)).store(id, Release);
    }
    id
}

/// The site `id` (1..=count): its frames and counters. None for unknown ids.
pub fn get(id: u32) -> Option<(&'static [usize], &'static Entry)> {
    let t = table()?;
    if id == 0 || id > t.count.load(Acquire) {
        return None;
    }
    let e = t.entry(id);
    Some((t.frames_of(e), e))
}

/// Number of sites entered (ids run from 1 to this).
pub fn count() -> u32 {
    let t = TABLE.load(Acquire);
    // SAFETY: a published table lives for the process's life.
    unsafe { t.as_ref() }.map_or(0, |t| t.count.load(Acquire))
}

pub fn lock_for_fork() {
    core::mem::forget(INSERT.lock());
}

/// # Safety
/// The caller holds the lock leaked by [`lock_for_fork`].
pub unsafe fn unlock_after_fork() {
    // SAFETY: forwarded contract.
    unsafe { INSERT.force_unlock() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_stack_same_id_and_frames_kept() {
        let a = [0x1000usize, 0x2000, 0x3000];
        let b = [0x1000usize, 0x2000, 0x3001];
        let ia = intern(&a);
        let ib = intern(&b);
        assert!(ia > NO_STACK && ib > NO_STACK && ia != ib);
        assert_eq!(intern(&a), ia);
        assert_eq!(get(ia).unwrap().0, &a);
        assert_eq!(get(ib).unwrap().0, &b);
        assert_eq!(intern(&[]), NO_STACK);
        assert_eq!(get(NO_STACK).unwrap().0.len(), 0);
        assert!(get(0).is_none());
    }

    #[test]
    fn concurrent_interning_gives_one_id_per_stack() {
        let ids: Vec<Vec<u32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..2000usize)
                            .map(|k| intern(&[0xdead_0000 + k, 0xbeef, k * 3]))
                            .collect::<Vec<u32>>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for t in &ids[1..] {
            assert_eq!(t, &ids[0]);
        }
        let mut sorted = ids[0].clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 2000);
    }
}

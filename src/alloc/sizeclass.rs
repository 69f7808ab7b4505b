//! Size classes, computed at compile time with the Go runtime's algorithm
//! (`mksizeclasses.go`): objects up to 32 KiB on 8 KiB pages, each class's span
//! big enough that the tail it cannot use is at most 1/8 of it, neighbouring
//! sizes that fit the same count in the same pages merged, then each size raised
//! to the largest that still fits the same count. This yields Go's 67 classes
//! (plus the unused class 0).
//!
//! Alignment: every class size is a multiple of 8, and every size from 32 up is a
//! multiple of 16. A slot at `span_base + i * size` is aligned to the largest
//! power of two dividing `size` (spans start on 8 KiB boundaries), which is how
//! the C face gets glibc's 16-byte promise and Rust layouts get their alignment.

use static_assertions::const_assert;

pub const PAGE_SHIFT: usize = 13;
/// magpie's page: the unit of the page heap and the page map.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// The largest size served from size classes; larger objects get spans of their own.
pub const MAX_SMALL: usize = 32 << 10;
/// Number of size classes including the unused class 0.
pub const NUM_CLASSES: usize = 68;
/// Rounding of sizes above 1 KiB for the class lookup table (Go's largeSizeDiv).
const LARGE_DIV: usize = 128;
const SMALL_DIV: usize = 8;
const SMALL_MAX: usize = 1024;

/// The class table: object size and span pages per class.
pub struct Table {
    pub size: [u32; NUM_CLASSES],
    pub npages: [u8; NUM_CLASSES],
}

const fn is_pow2(x: usize) -> bool {
    x != 0 && x & (x - 1) == 0
}

const fn make_table() -> Table {
    let mut size = [0u32; NUM_CLASSES];
    let mut npages = [0u8; NUM_CLASSES];
    let mut n = 1; // class 0 is a dummy
    let mut align = 8;
    let mut s = align;
    while s <= MAX_SMALL {
        if is_pow2(s) {
            if s >= 2048 {
                align = 256;
            } else if s >= 128 {
                align = s / 8;
            } else if s >= 32 {
                align = 16;
            }
        }
        assert!(is_pow2(align));
        let mut alloc = PAGE_SIZE;
        while alloc % s > alloc / 8 {
            alloc += PAGE_SIZE;
        }
        let np = alloc / PAGE_SIZE;
        if n > 1 && np == npages[n - 1] as usize && alloc / s == alloc / (size[n - 1] as usize) {
            size[n - 1] = s as u32;
        } else {
            assert!(n < NUM_CLASSES, "more size classes than Go's");
            size[n] = s as u32;
            npages[n] = np as u8;
            n += 1;
        }
        s += align;
    }
    assert!(n == NUM_CLASSES, "fewer size classes than Go's");
    let mut i = 1;
    while i < NUM_CLASSES {
        let psize = npages[i] as usize * PAGE_SIZE;
        let bigger = (psize / (psize / size[i] as usize)) & !(LARGE_DIV - 1);
        if bigger > size[i] as usize {
            size[i] = bigger as u32;
        }
        i += 1;
    }
    // Spans of the classes up to 1 KiB (one page each in Go's table) take
    // SMALL_SPAN_PAGES pages: a span costs a 128-byte record and a metadata
    // block rounded to 64 bytes whatever its size, which on one page was 3-4 %
    // of the memory of a heap of small objects; on four it is about 1 %. The
    // sizes stay Go's (computed with one page above, so the merging is Go's),
    // and the tail waste only shrinks. Untouched pages of a span cost no RSS.
    let mut i = 1;
    while i < NUM_CLASSES {
        if size[i] as usize <= SMALL_MAX && npages[i] == 1 {
            npages[i] = SMALL_SPAN_PAGES as u8;
        }
        i += 1;
    }
    Table { size, npages }
}

/// Pages of a span of a class up to 1 KiB (see `make_table`).
pub const SMALL_SPAN_PAGES: usize = 4;

pub static TABLE: Table = make_table();
const T: Table = make_table();

/// Class for sizes 0..=1024, indexed by (size + 7) / 8.
static SMALL_LOOKUP: [u8; SMALL_MAX / SMALL_DIV + 1] = make_lookup_small();
/// Class for sizes 1025..=32768, indexed by (size - 1024 + 127) / 128.
static LARGE_LOOKUP: [u8; (MAX_SMALL - SMALL_MAX) / LARGE_DIV + 1] = make_lookup_large();

pub const fn first_class_at_least(s: usize) -> u8 {
    let mut c = 1;
    while c < NUM_CLASSES {
        if T.size[c] as usize >= s {
            return c as u8;
        }
        c += 1;
    }
    panic!("no class")
}

const fn make_lookup_small() -> [u8; SMALL_MAX / SMALL_DIV + 1] {
    let mut t = [0u8; SMALL_MAX / SMALL_DIV + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = first_class_at_least(if i == 0 { 1 } else { i * SMALL_DIV });
        i += 1;
    }
    t
}

const fn make_lookup_large() -> [u8; (MAX_SMALL - SMALL_MAX) / LARGE_DIV + 1] {
    let mut t = [0u8; (MAX_SMALL - SMALL_MAX) / LARGE_DIV + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = first_class_at_least(SMALL_MAX + i * LARGE_DIV);
        i += 1;
    }
    t
}

/// The smallest class whose objects hold `size` bytes (1 <= size <= MAX_SMALL).
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    debug_assert!(size <= MAX_SMALL);
    if size <= SMALL_MAX {
        SMALL_LOOKUP[(size + SMALL_DIV - 1) / SMALL_DIV] as usize
    } else {
        // Clamped rather than checked: the allocation fast path then has no
        // panic branch, and so no stack frame (size <= MAX_SMALL anyway).
        let i = (size - SMALL_MAX + LARGE_DIV - 1) / LARGE_DIV;
        LARGE_LOOKUP[i.min(LARGE_LOOKUP.len() - 1)] as usize
    }
}

/// The class for `size` bytes aligned to `align` (a power of two <= PAGE_SIZE):
/// the first class at least as big whose size is a multiple of `align`, or None
/// when the request must go to a span of its own.
#[inline]
pub fn class_for(size: usize, align: usize) -> Option<usize> {
    if align <= 8 {
        return if size <= MAX_SMALL {
            Some(class_of(size.max(1)))
        } else {
            None
        };
    }
    if align > PAGE_SIZE || size > MAX_SMALL {
        return None;
    }
    let s = (size.max(1) + align - 1) & !(align - 1);
    if s > MAX_SMALL {
        return None;
    }
    let mut c = class_of(s);
    while c < NUM_CLASSES {
        if (T.size[c] as usize) % align == 0 {
            return Some(c);
        }
        c += 1;
    }
    None
}

/// Object size of class `c`.
#[inline(always)]
pub fn size_of_class(c: usize) -> usize {
    TABLE.size[c] as usize
}

/// Span pages of class `c`.
#[inline(always)]
pub fn pages_of_class(c: usize) -> usize {
    TABLE.npages[c] as usize
}

/// Objects per span of class `c`.
#[inline(always)]
pub fn objects_of_class(c: usize) -> usize {
    pages_of_class(c) * PAGE_SIZE / size_of_class(c)
}

/// Objects moved at once between a per-CPU cache and the central list (about
/// 64 KiB worth, between 2 and 32 objects; tcmalloc's num_objects_to_move).
pub const fn batch_of_class(c: usize) -> usize {
    let n = (64 << 10) / T.size[c] as usize;
    if n < 2 {
        2
    } else if n > 32 {
        32
    } else {
        n
    }
}

/// The 32-bit reciprocal of class `c`'s size: `(offset * magic) >> 32` is
/// `offset / size` for every offset inside a span of the class (Go's divMagic).
pub const fn div_magic(size: usize) -> u32 {
    u32::MAX / size as u32 + 1
}

// The table's invariants.
const_assert!(T.size[1] == 8);
const_assert!(T.size[NUM_CLASSES - 1] as usize == MAX_SMALL);
const fn check_table() -> bool {
    let mut c = 1;
    while c < NUM_CLASSES {
        let size = T.size[c] as usize;
        let span = T.npages[c] as usize * PAGE_SIZE;
        // Increasing sizes.
        if c > 1 && size <= T.size[c - 1] as usize {
            return false;
        }
        // Alignment: multiples of 8; 16 from 32 bytes on (C's max_align_t).
        if size % 8 != 0 || (size >= 32 && size % 16 != 0) {
            return false;
        }
        // Tail waste at most 12.5 %.
        if span % size > span / 8 {
            return false;
        }
        // At least one object per span, at most MAX_OBJECTS.
        let n = span / size;
        if n < 1 || n > MAX_OBJECTS {
            return false;
        }
        // The division by magic multiplication is exact for every slot offset.
        let m = div_magic(size);
        let mut i = 0;
        while i <= n {
            if ((i * size) as u64 * m as u64) >> 32 != i as u64 {
                return false;
            }
            i += 1;
        }
        c += 1;
    }
    true
}
const_assert!(check_table());
/// The most objects a span of any class holds (8-byte objects).
pub const MAX_OBJECTS: usize = SMALL_SPAN_PAGES * PAGE_SIZE / 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_go_table() {
        let go: [u32; 68] = [
            0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256,
            288, 320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280,
            1408, 1536, 1792, 2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528,
            6784, 6912, 8192, 9472, 9728, 10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072,
            20480, 21760, 24576, 27264, 28672, 32768,
        ];
        assert_eq!(TABLE.size, go);
    }

    #[test]
    fn classes_up_to_1k_take_wider_spans() {
        for c in 1..NUM_CLASSES {
            let (size, pages) = (size_of_class(c), pages_of_class(c));
            if size > 1024 {
                continue;
            }
            assert_eq!(pages, SMALL_SPAN_PAGES, "class {c} ({size} B)");
            // What a span costs whatever its slots (the 128-byte record, the
            // block's 16-byte remote header and up to 64 bytes of rounding)
            // is under 1 % of it (2.5 % on one page).
            assert!((128 + 16 + 64) * 100 <= pages * PAGE_SIZE, "class {c}");
        }
        assert_eq!(objects_of_class(1), MAX_OBJECTS);
    }

    #[test]
    fn lookup_is_smallest_fit() {
        for s in 1..=MAX_SMALL {
            let c = class_of(s);
            assert!(size_of_class(c) >= s, "size {s} class {c}");
            assert!(c == 1 || size_of_class(c - 1) < s, "size {s} not smallest");
        }
    }

    #[test]
    fn aligned_lookup_gives_aligned_slots() {
        let mut align = 1;
        while align <= PAGE_SIZE {
            for s in [
                1, 7, 8, 15, 16, 17, 24, 33, 100, 1000, 4095, 4096, 5000, 20000, MAX_SMALL,
            ] {
                if let Some(c) = class_for(s, align) {
                    let size = size_of_class(c);
                    assert!(size >= s);
                    assert_eq!(size % align.max(8).min(size), 0, "size {s} align {align}");
                    assert!(size % align == 0 || align <= 8);
                }
            }
            align *= 2;
        }
        assert_eq!(class_for(MAX_SMALL + 1, 8), None);
        assert_eq!(class_for(16, 2 * PAGE_SIZE), None);
    }

    #[test]
    fn batches_are_bounded() {
        for c in 1..NUM_CLASSES {
            let b = batch_of_class(c);
            assert!((2..=32).contains(&b));
        }
    }
}

//! Which pages of a big object hold data, so that the marker reads only those.
//!
//! A page of anonymous memory the program never wrote (or whose page was
//! dropped) reads as zeros: it holds no pointer. Reading it anyway costs
//! twice: the read faults the shared zero page in, and the program's first
//! write to it later is a copy-on-write fault that flushes the TLB of every
//! CPU the process runs on (an IPI each). That was a large part of
//! `malloc_large`'s time in `collect` mode: the marker raced the program's
//! fill of fresh 5–25 MiB blocks.
//!
//! The question is put to `mincore(2)`, which says, page by page, whether a
//! page table maps a page there: yes for a written page, for one mapping the
//! zero page, and for one being migrated; no for a page never touched, one
//! dropped by `MADV_DONTNEED`, one carrying only a userfaultfd write-protect
//! marker (`dirty`), and for a page swapped out. The last one holds data, so
//! the answer is used only when the system has no swap (checked after the
//! query, so a `swapon` racing with it is seen); with swap, the whole range
//! is reported. /proc/self/pagemap is no better: it shows a write-protect
//! marker as a swap entry, and `dirty` puts a marker on every untouched heap
//! page at the start of a concurrent mark.
//!
//! Soundness: with the world stopped nothing changes between the query and
//! the scan. During a concurrent mark, a page absent at the query and written
//! later is reported written at mark termination and rescanned there (see
//! `dirty`: in async mode "written" means "not protected", and a page
//! populated after `start` is either born unprotected or loses its marker on
//! the write), so skipping it now loses nothing.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

const PAGE: usize = 4096;
/// Pages asked about per `mincore` call (a 4 KiB vector on the marker's stack).
const BUF_PAGES: usize = 4096;

/// Objects (and written runs) of fewer heap pages are scanned whole: a query
/// costs about what scanning a page does.
pub const MIN_PAGES: usize = 8;

/// Queries answered and pages they found absent (statistics; tests).
pub static QUERIES: AtomicU64 = AtomicU64::new(0);
pub static SKIPPED_PAGES: AtomicU64 = AtomicU64::new(0);
/// Set once a query found swap configured: from then on every range is
/// reported whole, without asking.
static SWAP_SEEN: AtomicBool = AtomicBool::new(false);

/// Calls `f(start, end)` for each run of pages of `[lo, hi)` (page aligned)
/// that may hold data, in address order: all of it when the answer cannot
/// be had (swap in use, or the kernel refused the query).
pub fn for_each_backed_run(lo: usize, hi: usize, f: &mut dyn FnMut(usize, usize)) {
    debug_assert!(lo % PAGE == 0 && hi % PAGE == 0 && lo <= hi);
    if SWAP_SEEN.load(Relaxed) || !query(lo, hi, f) {
        f(lo, hi)
    }
}

fn swap_configured() -> bool {
    // SAFETY: an all-zero sysinfo is a valid out-buffer.
    let mut si: libc::sysinfo = unsafe { core::mem::zeroed() };
    // SAFETY: si is a valid, writable sysinfo buffer.
    unsafe { libc::sysinfo(&mut si) != 0 || si.totalswap != 0 }
}

/// The query; false (nothing reported) when its answer cannot be trusted.
fn query(lo: usize, hi: usize, f: &mut dyn FnMut(usize, usize)) -> bool {
    let mut vec = [0u8; BUF_PAGES];
    let (mut run_lo, mut run_hi) = (0usize, 0usize);
    let mut skipped = 0u64;
    let mut addr = lo;
    while addr < hi {
        let n = ((hi - addr) / PAGE).min(BUF_PAGES);
        // SAFETY: the range lies in the heap's mapping; vec holds n >= bytes.
        let ok =
            unsafe { libc::mincore(addr as *mut libc::c_void, n * PAGE, vec.as_mut_ptr()) } == 0;
        let swap = ok && swap_configured();
        if swap {
            SWAP_SEEN.store(true, Relaxed);
        }
        if !ok || swap {
            if addr == lo {
                return false;
            }
            // The earlier calls' answers stand (they were given with no swap
            // configured); the rest of the range is reported whole.
            if run_hi > run_lo {
                f(run_lo, run_hi);
            }
            f(addr, hi);
            return true;
        }
        for (i, &v) in vec[..n].iter().enumerate() {
            let page = addr + i * PAGE;
            if v & 1 == 0 {
                skipped += 1;
                continue;
            }
            if page == run_hi {
                run_hi += PAGE;
            } else {
                if run_hi > run_lo {
                    f(run_lo, run_hi);
                }
                (run_lo, run_hi) = (page, page + PAGE);
            }
        }
        addr += n * PAGE;
    }
    if run_hi > run_lo {
        f(run_lo, run_hi);
    }
    QUERIES.fetch_add(1, Relaxed);
    SKIPPED_PAGES.fetch_add(skipped, Relaxed);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh private anonymous mapping of `n` pages, without huge pages
    /// (so pages are asked about one by one); the caller unmaps it.
    fn map_pages(n: usize) -> usize {
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                n * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(base, n * PAGE, libc::MADV_NOHUGEPAGE) };
        base as usize
    }

    fn runs(lo: usize, hi: usize) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        assert!(query(lo, hi, &mut |a, b| v.push((a, b))) || swap_configured());
        v
    }

    #[test]
    fn reports_mapped_pages_and_skips_untouched_ones() {
        if swap_configured() {
            eprintln!("swap is configured: the query is not used; nothing to test");
            return;
        }
        const N: usize = 64;
        let base = map_pages(N);
        assert_eq!(runs(base, base + N * PAGE), vec![]);
        // Pages 3, 4, 5 and 40 written; page 50 only read (the zero page:
        // mapped, reported, harmless).
        for p in [3, 4, 5, 40] {
            // SAFETY: inside the mapping.
            unsafe { ((base + p * PAGE) as *mut u64).write_volatile(7) };
        }
        // SAFETY: inside the mapping.
        assert_eq!(
            unsafe { ((base + 50 * PAGE) as *const u64).read_volatile() },
            0
        );
        let pg = |p: usize| base + p * PAGE;
        assert_eq!(
            runs(base, base + N * PAGE),
            vec![(pg(3), pg(6)), (pg(40), pg(41)), (pg(50), pg(51))]
        );
        // A sub-range that starts inside a run.
        assert_eq!(runs(pg(4), pg(41)), vec![(pg(4), pg(6)), (pg(40), pg(41))]);
        // Dropped pages are absent again.
        // SAFETY: inside the mapping.
        unsafe { libc::madvise(pg(40) as *mut libc::c_void, PAGE, libc::MADV_DONTNEED) };
        assert_eq!(runs(pg(0), pg(45)), vec![(pg(3), pg(6))]);
        // SAFETY: unmapping what was mapped above.
        unsafe { libc::munmap(base as *mut libc::c_void, N * PAGE) };
    }

    #[test]
    fn runs_join_across_calls() {
        if swap_configured() {
            return;
        }
        let n = BUF_PAGES + 64;
        let base = map_pages(n);
        let pg = |p: usize| base + p * PAGE;
        for p in BUF_PAGES - 2..BUF_PAGES + 3 {
            // SAFETY: inside the mapping.
            unsafe { (pg(p) as *mut u64).write_volatile(1) };
        }
        assert_eq!(
            runs(base, pg(n)),
            vec![(pg(BUF_PAGES - 2), pg(BUF_PAGES + 3))]
        );
        // SAFETY: unmapping what was mapped above.
        unsafe { libc::munmap(base as *mut libc::c_void, n * PAGE) };
    }
}

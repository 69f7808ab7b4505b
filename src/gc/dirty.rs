//! Dirty-page tracking for concurrent marking: which heap pages did the
//! program write since a point in time?
//!
//! A concurrent marker calls [`start`] at sweep termination, marks while the
//! program runs, and at mark termination rescans the pages that
//! [`collect_written`] reports (possibly collecting several times to shrink
//! the final, stopped-world one). Three sources, chosen once by [`init`]
//! (`MAGPIE_DIRTY=uffd|softdirty|none` restricts the choice):
//!
//! # userfaultfd write-protect, asynchronous mode (`uffd-wp-async`, Linux 6.7+)
//!
//! 1. `userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)`. USER_MODE_ONLY
//!    (5.11+) makes the fd available without privilege whatever
//!    `vm.unprivileged_userfaultfd` says. A seccomp filter may still forbid
//!    the syscall (ENOSYS/EPERM): then the next source is tried.
//! 2. `UFFDIO_API` with `UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED`.
//!    In async mode a write to a protected page is resolved inside the kernel:
//!    it drops the pte's uffd-wp bit and lets the write through. No message,
//!    no handler thread, so USER_MODE_ONLY costs nothing: writes by the kernel
//!    (`read(2)` into a heap buffer, any get_user_pages with FOLL_WRITE) are
//!    resolved and tracked the same way. WP_UNPOPULATED (6.4+; implied by
//!    WP_ASYNC) is what makes PAGEMAP_SCAN accept an anonymous VMA at all.
//! 3. `UFFDIO_REGISTER(UFFDIO_REGISTER_MODE_WP)` of the range: sets a flag on
//!    its VMAs, touches no page table, works on a PROT_NONE reservation, and
//!    survives the `mprotect` splits and merges of later commits (tested both
//!    ways on 1 TiB). Done by [`start`], held until [`stop`].
//! 4. [`start`]: `PAGEMAP_SCAN` (an ioctl on /proc/self/pagemap) with
//!    `PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC` over the used part of the
//!    range ([`set_scan_end`]) protects every page: present ones get the
//!    uffd-wp bit, none ptes and never-touched stretches get uffd-wp markers
//!    (WP_UNPOPULATED; a page table per 2 MiB that had none, 0.2% of the
//!    scanned range at most).
//! 5. [`collect_written`]: the same ioctl with an output vector returns the
//!    pages without the bit ("written") and sets it again, page by page under
//!    the page-table lock, in one call per 4096 output regions (resuming at
//!    `walk_end`), one GiB of range at a time.
//!
//! The invariant: in async mode "written" means "not protected". The masks
//! are `category_mask = return_mask = PAGE_IS_WRITTEN` and nothing else,
//! which takes the kernel's fast path: one test of the pte's uffd-wp bit per
//! page. With `category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED` (used
//! until session 4) the kernel computes every page's categories, looking at
//! its struct page: 750–840 µs per GiB instead of 240–310 µs (test
//! `experiment_scan_cost_by_masks`), and that walk is most of the final
//! pause. The price of the fast path: a none pte counts as written (it is
//! not protected), so a page dropped by MADV_DONTNEED, which removes its
//! marker, is reported once, then protected by a marker. Such a page holds
//! zeros, and the marker skips free spans anyway. Holes are protected too,
//! which is why scans must stop at the end of the heap's used part: over a whole
//! 1 TiB reservation they would make 2 GiB of page tables (measured).
//! `UFFDIO_WRITEPROTECT` is not used to protect, for the same reason.
//!
//! Races: a write racing with a collect lands before the kernel examines its
//! pte (the page is reported by this collect, and the TLB flush that ends the
//! walk makes the write visible before the ioctl returns) or after (it faults,
//! drops the bit, and the next collect reports it). So scan a reported run
//! inside `f` or later, never from a list made before. `PM_SCAN_CHECK_WPASYNC`
//! makes a scan fail (EPERM) on a VMA in the range that is not registered
//! (memory mapped into the range by someone else, or our userfaultfd closed
//! by the program) instead of skipping it: collect returns None and the
//! caller rescans everything. Only `[base, base+len)` is registered or
//! scanned, and the caller promises it is wholly magpie's: every VMA in it
//! gets registered (6.18 registers across holes too).
//!
//! Costs (kernel 6.18 in a 2-CPU VM; noisy, ranges over runs), 1 GiB populated:
//! start() 5–14 ms when every page needs protecting, 1–1.6 ms when all were
//! still protected; collect 1–1.5 ms with nothing written, 1.7–4 ms with 1%
//! (2622 pages) written; a write fault on a protected page 1.2–3.4 µs (the
//! mutator's price; a plain write 20–50 ns); first touch of a fresh page:
//! no measurable extra. On a 1 TiB reservation with 64 MiB populated: start
//! 0.4–0.5 ms, collect 0.1 ms, stop 0.7 ms; [`init`] (probe included) 0.9 ms.
//! [`stop`] on 1 GiB: 22–30 ms, and the kernel holds the mmap lock for
//! writing throughout (page faults wait): stop is for abandoning concurrent
//! mode, not for every cycle. [`end`] instead unprotects the range when a
//! cycle's marking is over (`UFFDIO_WRITEPROTECT` without the WP mode; it
//! populates nothing), so the program's writes between cycles do not fault:
//! kept protected, every page the program wrote after a cycle cost it one
//! fault, which put the collector's price on the LD_PRELOAD suite at about 7%
//! over `MAGPIE_GC=off`. The next start() protects every page again.
//!
//! # Soft-dirty bits (`soft-dirty`, fallback)
//!
//! [`start`] writes "4" to /proc/self/clear_refs: that clears the bits and
//! write-protects every pte of the whole process, not only the heap (every
//! thread's first write to any page then faults once), and disturbs anything
//! else in the process that uses soft-dirty (CRIU). [`collect_written`] reads
//! /proc/self/pagemap (bit 55) for the accessible (not PROT_NONE) VMAs of the
//! range, found in /proc/self/maps: 8 bytes per committed page. It does not
//! clear: no call reads and clears atomically, and a write between the read
//! and the clear would be lost. So each collect reports every page written
//! since start() (a superset), and stays correct with the world running.
//! Needs CONFIG_MEM_SOFT_DIRTY (the kernel here, 6.18, is built without it:
//! detected by the bit being clear on a freshly written page) and a writable
//! clear_refs (a non-dumpable process cannot open it).
//!
//! # None
//!
//! [`start`] returns false and [`collect_written`] None: the collector marks
//! with the world stopped. [`describe`] says why each source failed.
//!
//! # Gotchas for the marker
//!
//! - Pages committed below the scan end before start() carry markers;
//!   those beyond it, or committed after the last scan that covered them,
//!   are born unprotected: reported as written once touched (or once, if
//!   only read), never silently missed.
//! - THP: start() protects a huge page as one pmd; the first write splits it
//!   (async WP on a pmd splits), costing the THP; a THP faulted in during the
//!   period is reported as 512 pages. khugepaged does not collapse ranges
//!   with protected ptes.
//! - fork: the fds name the parent's mm (its uffd context, its pagemap):
//!   used from the child they would protect the parent's pages and steal its
//!   written bits. The child's first call here therefore reopens everything
//!   for itself; a period started in the parent cannot be collected in the
//!   child (None). The child's copy of the heap carries no protection (no
//!   UFFD_FEATURE_EVENT_FORK): the kernel clears the bits in the copy.
//! - A program that closes fds it does not own (closefrom) breaks tracking:
//!   noticed (fstat identity of each fd; each userfaultfd has its own inode
//!   since 5.12), start() then returns false and collect None.
//! - While the range is registered a program cannot register heap memory
//!   with a userfaultfd of its own (EBUSY); its own mappings are unaffected.
//! - Pages pinned for DMA (O_DIRECT in flight, io_uring fixed buffers, RDMA)
//!   are written by devices without a fault: such writes after a page was
//!   re-protected are not seen (soft-dirty has the same hole).
//! - PAGEMAP_SCAN holds the mmap lock for reading while it walks (hence the
//!   1 GiB steps): mmap/munmap/mprotect in other threads wait for each step.
//! - Nothing here allocates from the heap: the output vector is a
//!   `map_owned` mapping made once, /proc/self/maps is read through a stack
//!   buffer. The callback runs with the tracker locked and must not call
//!   this module.

use core::fmt;
use core::mem::size_of;
use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

use crate::sys::{env, fatal, os};

const PAGE: usize = 4096;

/// The kernel ABI this module speaks. Defined here because the installed
/// headers (/usr/include) predate it; every value was checked against the
/// kernel's `include/uapi/linux/userfaultfd.h` and `include/uapi/linux/fs.h`
/// (6.7 and later) and `Documentation/admin-guide/mm/{userfaultfd,pagemap}.rst`,
/// and the encoded ioctl numbers are pinned by the assertions below.
mod abi {
    use core::mem::size_of;

    // _IOC layout on x86-64 (asm-generic/ioctl.h): nr in bits 0..8, type in
    // 8..16, size in 16..30, direction in 30..32; _IOC_WRITE = 1, _IOC_READ = 2.
    const IOC_WRITE: u64 = 1;
    const IOC_READ: u64 = 2;
    const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
    }
    const fn iowr(ty: u64, nr: u64, size: usize) -> u64 {
        ioc(IOC_READ | IOC_WRITE, ty, nr, size)
    }
    const fn ior(ty: u64, nr: u64, size: usize) -> u64 {
        ioc(IOC_READ, ty, nr, size)
    }

    /// `__NR_userfaultfd` on x86-64 (arch/x86/entry/syscalls/syscall_64.tbl).
    pub const NR_USERFAULTFD: libc::c_long = 323;
    /// userfaultfd(2) flag: handle faults from user mode only (5.11+); lets an
    /// unprivileged process create the fd whatever vm.unprivileged_userfaultfd says.
    pub const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    pub const UFFD_API: u64 = 0xAA;
    const UFFDIO: u64 = 0xAA;
    pub const _UFFDIO_REGISTER: u64 = 0x00;
    pub const _UFFDIO_UNREGISTER: u64 = 0x01;
    pub const _UFFDIO_WRITEPROTECT: u64 = 0x06;
    pub const _UFFDIO_API: u64 = 0x3F;

    /// Write faults are resolved by the kernel itself (no message, no
    /// handler thread): the uffd-wp bit is dropped and the write proceeds (6.7+).
    pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
    /// WP applies to none ptes of anonymous memory too, through pte markers
    /// (6.4+). WP_ASYNC implies it, and PAGEMAP_SCAN refuses to write-protect
    /// an anonymous VMA without it.
    pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
    pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
    #[cfg(test)]
    pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
    /// Do not wake threads waiting on the range (none do in async mode).
    pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

    #[repr(C)]
    pub struct UffdioApi {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }
    #[repr(C)]
    pub struct UffdioRange {
        pub start: u64,
        pub len: u64,
    }
    #[repr(C)]
    pub struct UffdioRegister {
        pub range: UffdioRange,
        pub mode: u64,
        pub ioctls: u64,
    }
    #[repr(C)]
    pub struct UffdioWriteprotect {
        pub range: UffdioRange,
        pub mode: u64,
    }

    pub const UFFDIO_API: u64 = iowr(UFFDIO, _UFFDIO_API, size_of::<UffdioApi>());
    pub const UFFDIO_REGISTER: u64 = iowr(UFFDIO, _UFFDIO_REGISTER, size_of::<UffdioRegister>());
    /// `_IOR`, not `_IOW`: a historical quirk the header comments on.
    pub const UFFDIO_UNREGISTER: u64 = ior(UFFDIO, _UFFDIO_UNREGISTER, size_of::<UffdioRange>());
    /// Used to unprotect only (mode without `_MODE_WP`; [`super::end`]). To
    /// protect, over a range with WP_UNPOPULATED, it allocates page tables for
    /// the whole range (to hold markers), which for a 1 TiB reservation would
    /// be 2 GiB of them; PAGEMAP_SCAN protects only what exists. Unprotecting
    /// (MM_CP_UFFD_WP_RESOLVE) populates nothing.
    pub const UFFDIO_WRITEPROTECT: u64 = iowr(
        UFFDIO,
        _UFFDIO_WRITEPROTECT,
        size_of::<UffdioWriteprotect>(),
    );

    /// `struct pm_scan_arg` (fs.h, 6.7+).
    #[repr(C)]
    pub struct PmScanArg {
        pub size: u64,
        pub flags: u64,
        pub start: u64,
        pub end: u64,
        pub walk_end: u64,
        pub vec: u64,
        pub vec_len: u64,
        pub max_pages: u64,
        pub category_inverted: u64,
        pub category_mask: u64,
        pub category_anyof_mask: u64,
        pub return_mask: u64,
    }
    /// `struct page_region`: `[start, end)` and the categories of its pages.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct PageRegion {
        pub start: u64,
        pub end: u64,
        pub categories: u64,
    }

    /// `PAGEMAP_SCAN = _IOWR(PROCFS_IOCTL_MAGIC 'f', 16, struct pm_scan_arg)`,
    /// issued on an fd of /proc/<pid>/pagemap.
    pub const PAGEMAP_SCAN: u64 = iowr(b'f' as u64, 16, size_of::<PmScanArg>());
    pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
    pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

    // Page categories (PAGE_IS_GUARD = 1 << 8 came in 6.14; not used).
    #[allow(dead_code)]
    pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
    pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
    #[allow(dead_code)]
    pub const PAGE_IS_FILE: u64 = 1 << 2;
    #[cfg_attr(not(test), allow(dead_code))]
    pub const PAGE_IS_PRESENT: u64 = 1 << 3;
    #[cfg_attr(not(test), allow(dead_code))]
    pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
    #[allow(dead_code)]
    pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
    #[cfg_attr(not(test), allow(dead_code))]
    pub const PAGE_IS_HUGE: u64 = 1 << 6;
    #[allow(dead_code)]
    pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;

    /// /proc/<pid>/pagemap entry bits (pagemap.rst).
    pub const PM_SOFT_DIRTY: u64 = 1 << 55;
    #[cfg(test)]
    pub const PM_UFFD_WP: u64 = 1 << 57;
    #[cfg(test)]
    pub const PM_PRESENT: u64 = 1 << 63;

    // The encodings, worked by hand from the _IOC layout, and the sizes the
    // kernel checks (PAGEMAP_SCAN rejects a pm_scan_arg.size other than 96).
    static_assertions::const_assert_eq!(NR_USERFAULTFD, libc::SYS_userfaultfd);
    static_assertions::const_assert_eq!(size_of::<UffdioApi>(), 24);
    static_assertions::const_assert_eq!(size_of::<UffdioRange>(), 16);
    static_assertions::const_assert_eq!(size_of::<UffdioRegister>(), 32);
    static_assertions::const_assert_eq!(size_of::<UffdioWriteprotect>(), 24);
    static_assertions::const_assert_eq!(size_of::<PmScanArg>(), 96);
    static_assertions::const_assert_eq!(size_of::<PageRegion>(), 24);
    static_assertions::const_assert_eq!(UFFDIO_API, 0xC018_AA3F);
    static_assertions::const_assert_eq!(UFFDIO_REGISTER, 0xC020_AA00);
    static_assertions::const_assert_eq!(UFFDIO_UNREGISTER, 0x8010_AA01);
    static_assertions::const_assert_eq!(UFFDIO_WRITEPROTECT, 0xC018_AA06);
    static_assertions::const_assert_eq!(PAGEMAP_SCAN, 0xC060_6610);
}

use abi::PageRegion;

/// Where the written-pages information comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Source {
    /// userfaultfd write-protection in asynchronous mode, read and re-armed
    /// with PAGEMAP_SCAN (Linux 6.7+).
    UffdWpAsync,
    /// Soft-dirty bits: /proc/self/clear_refs and /proc/self/pagemap bit 55.
    SoftDirty,
    /// No tracking: the collector marks with the world stopped.
    None,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::UffdWpAsync => "uffd-wp-async",
            Source::SoftDirty => "soft-dirty",
            Source::None => "none",
        }
    }
}

/// What to try (`MAGPIE_DIRTY`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    Auto,
    Uffd,
    SoftDirty,
    None,
}

fn want_from_env() -> Want {
    match env::get_choice("MAGPIE_DIRTY", &["auto", "uffd", "softdirty", "none"], 0) {
        1 => Want::Uffd,
        2 => Want::SoftDirty,
        3 => Want::None,
        _ => Want::Auto,
    }
}

/// Regions per PAGEMAP_SCAN call (96 KiB of output vector).
const VEC_LEN: usize = 4096;
const VEC_BYTES: usize = VEC_LEN * size_of::<PageRegion>();

/// Why a source is unavailable: the step that failed and its errno (0 if the
/// step did not fail with one).
#[derive(Clone, Copy, Debug)]
struct Fail(&'static str, i32);

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// (st_dev, st_ino) of an open fd, to notice that a program closed one of our
/// fds and the number now names another file.
fn fd_identity(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: an all-zero stat is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: st is a valid, writable stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

/// Coalesces the runs the kernel reports (in address order, possibly split
/// across output entries and calls) before handing them to the caller.
struct Runs<'a> {
    f: &'a mut dyn FnMut(usize, usize),
    start: usize,
    end: usize,
    pages: usize,
}

impl<'a> Runs<'a> {
    fn new(f: &'a mut dyn FnMut(usize, usize)) -> Self {
        Runs {
            f,
            start: 0,
            end: 0,
            pages: 0,
        }
    }

    fn add(&mut self, start: usize, end: usize) {
        if end <= start {
            return;
        }
        self.pages += (end - start) / PAGE;
        if start == self.end && self.end != 0 {
            self.end = end;
            return;
        }
        self.flush();
        self.start = start;
        self.end = end;
    }

    fn flush(&mut self) {
        if self.end > self.start {
            (self.f)(self.start, (self.end - self.start) / PAGE);
        }
        self.start = 0;
        self.end = 0;
    }
}

/// One tracker over one address range. The module keeps one for the heap
/// (behind [`init`] and friends); tests make their own.
struct Tracker {
    source: Source,
    want: Want,
    base: usize,
    end: usize,
    /// Scans stop here (0: at `end`); see [`set_scan_end`].
    scan_end: usize,
    /// The process that opened the fds: they name that process's mm.
    pid: i32,
    uffd: i32,
    uffd_id: (u64, u64),
    pagemap: i32,
    pagemap_id: (u64, u64),
    clear_refs: i32,
    clear_refs_id: (u64, u64),
    /// Output vector for PAGEMAP_SCAN (VEC_LEN regions), or pagemap entries
    /// for soft-dirty; `map_owned` memory, so never scanned as roots.
    vec: *mut PageRegion,
    registered: bool,
    started: bool,
    why_uffd: Fail,
    why_softdirty: Fail,
}

// SAFETY: the raw pointer is to a private mapping that only the tracker's
// owner (behind a lock, for the global one) touches.
unsafe impl Send for Tracker {}

impl Tracker {
    const EMPTY: Tracker = Tracker {
        source: Source::None,
        want: Want::Auto,
        base: 0,
        end: 0,
        scan_end: 0,
        pid: 0,
        uffd: -1,
        uffd_id: (0, 0),
        pagemap: -1,
        pagemap_id: (0, 0),
        clear_refs: -1,
        clear_refs_id: (0, 0),
        vec: core::ptr::null_mut(),
        registered: false,
        started: false,
        why_uffd: Fail("not tried", 0),
        why_softdirty: Fail("not tried", 0),
    };

    /// Opens a tracker over `[base, base+len)` with the best source `want` allows.
    fn open(base: usize, len: usize, want: Want) -> Tracker {
        let mut t = Tracker::EMPTY;
        t.base = base;
        t.end = base.wrapping_add(len);
        t.want = want;
        t.connect();
        t
    }

    /// Chooses and opens a source for this process (fds closed on entry).
    fn connect(&mut self) {
        self.pid = getpid();
        self.source = Source::None;
        self.registered = false;
        self.started = false;
        if self.base % PAGE != 0 || self.end % PAGE != 0 || self.end <= self.base {
            self.why_uffd = Fail("range not page-aligned or empty", libc::EINVAL);
            self.why_softdirty = self.why_uffd;
            return;
        }
        if self.vec.is_null() {
            self.vec = os::map_owned(VEC_BYTES).cast();
            if self.vec.is_null() {
                self.why_uffd = Fail("mapping the output vector", libc::ENOMEM);
                self.why_softdirty = self.why_uffd;
                return;
            }
        }
        if matches!(self.want, Want::Auto | Want::Uffd) {
            match self.open_uffd() {
                Ok(()) => {
                    self.source = Source::UffdWpAsync;
                    return;
                }
                Err(e) => {
                    self.why_uffd = e;
                    self.close_fds();
                }
            }
        }
        if matches!(self.want, Want::Auto | Want::SoftDirty) {
            match self.open_softdirty() {
                Ok(()) => self.source = Source::SoftDirty,
                Err(e) => {
                    self.why_softdirty = e;
                    self.close_fds();
                }
            }
        }
    }

    fn close_fds(&mut self) {
        for fd in [&mut self.uffd, &mut self.pagemap, &mut self.clear_refs] {
            if *fd >= 0 {
                // SAFETY: the fd is ours (opened by this tracker, or inherited
                // by a fork child, where closing drops only the child's reference).
                unsafe { libc::close(*fd) };
                *fd = -1;
            }
        }
        self.registered = false;
        self.started = false;
    }

    /// In a fork child the fds still name the parent's mm (its uffd context,
    /// its pagemap and clear_refs): using them would write-protect the
    /// parent's pages and steal its written bits. Drop them and open anew.
    fn adopt_after_fork(&mut self) {
        if self.source == Source::None || self.pid == getpid() {
            return;
        }
        let was = self.source;
        self.close_fds();
        self.want = match was {
            Source::UffdWpAsync => Want::Uffd,
            Source::SoftDirty => Want::SoftDirty,
            Source::None => Want::None,
        };
        self.connect();
    }

    fn open_pagemap(&mut self) -> Result<(), Fail> {
        // SAFETY: a NUL-terminated path; the fd is recorded and closed by close_fds.
        let fd = unsafe {
            libc::open(
                c"/proc/self/pagemap".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Fail("open /proc/self/pagemap", errno()));
        }
        self.pagemap = fd;
        self.pagemap_id = fd_identity(fd).ok_or(Fail("fstat pagemap", errno()))?;
        Ok(())
    }

    /// True if our fds still name what we opened (a program may close fds it
    /// does not know; the number could then name another file, even another
    /// userfaultfd, which must never get our range registered).
    fn fds_intact(&self) -> bool {
        if fd_identity(self.pagemap) != Some(self.pagemap_id) {
            return false;
        }
        if self.source == Source::UffdWpAsync && fd_identity(self.uffd) != Some(self.uffd_id) {
            return false;
        }
        if self.source == Source::SoftDirty
            && fd_identity(self.clear_refs) != Some(self.clear_refs_id)
        {
            return false;
        }
        true
    }

    // ---- userfaultfd WP-async ----

    fn open_uffd(&mut self) -> Result<(), Fail> {
        // SAFETY: userfaultfd(2) takes only flags; a new fd is returned or -1.
        let fd = unsafe {
            libc::syscall(
                abi::NR_USERFAULTFD,
                libc::O_CLOEXEC | libc::O_NONBLOCK | abi::UFFD_USER_MODE_ONLY,
            )
        };
        if fd < 0 {
            return Err(Fail("userfaultfd(UFFD_USER_MODE_ONLY)", errno()));
        }
        self.uffd = fd as i32;
        // Since 5.12 each userfaultfd has an inode of its own.
        self.uffd_id = fd_identity(self.uffd).ok_or(Fail("fstat userfaultfd", errno()))?;
        let need = abi::UFFD_FEATURE_WP_ASYNC | abi::UFFD_FEATURE_WP_UNPOPULATED;
        let mut api = abi::UffdioApi {
            api: abi::UFFD_API,
            features: need,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one struct uffdio_api, which `api` is.
        if unsafe { libc::ioctl(self.uffd, abi::UFFDIO_API as _, &mut api) } != 0 {
            return Err(Fail("UFFDIO_API(WP_ASYNC|WP_UNPOPULATED)", errno()));
        }
        let ioctls = (1 << abi::_UFFDIO_REGISTER) | (1 << abi::_UFFDIO_UNREGISTER);
        if api.features & need != need || api.ioctls & ioctls != ioctls {
            return Err(Fail("UFFDIO_API: features missing", 0));
        }
        self.open_pagemap()?;
        self.probe_uffd()?;
        // The range itself must register: EBUSY if a userfaultfd of the
        // program already owns part of it.
        self.register()?;
        self.unregister();
        Ok(())
    }

    fn register(&mut self) -> Result<(), Fail> {
        // SAFETY: registers only [base, end), which the caller owns.
        match unsafe { register_range(self.uffd, self.base, self.end - self.base) } {
            Ok(()) => {
                self.registered = true;
                Ok(())
            }
            Err(e) => Err(Fail("UFFDIO_REGISTER(MODE_WP) of the range", e)),
        }
    }

    fn unregister(&mut self) {
        if self.registered {
            // SAFETY: the range is ours and registered with our uffd.
            unsafe { unregister_range(self.uffd, self.base, self.end - self.base) };
            self.registered = false;
        }
    }

    /// Checks the whole mechanism on a scratch mapping of our own: protect,
    /// write one page, scan: exactly that page must come back.
    fn probe_uffd(&mut self) -> Result<(), Fail> {
        const N: usize = 8;
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                N * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Fail("probe: mmap", errno()));
        }
        let p = p as usize;
        let result = (|| {
            // SAFETY: the scratch mapping is ours.
            unsafe { register_range(self.uffd, p, N * PAGE) }
                .map_err(|e| Fail("probe: UFFDIO_REGISTER(MODE_WP)", e))?;
            // SAFETY: page 1 of the scratch mapping is writable and ours.
            unsafe { core::ptr::write_volatile((p + PAGE) as *mut u8, 1) };
            // SAFETY: the range is ours and registered; vec has VEC_LEN entries.
            unsafe { scan(self.pagemap, p, p + N * PAGE, self.vec, VEC_LEN, None) }
                .map_err(|e| Fail("probe: PAGEMAP_SCAN(WP_MATCHING|CHECK_WPASYNC)", e))?;
            // SAFETY: as above, page 5.
            unsafe { core::ptr::write_volatile((p + 5 * PAGE) as *mut u8, 1) };
            let (mut lo, mut hi, mut runs) = (0, 0, 0);
            let mut f = |a: usize, n: usize| {
                lo = a;
                hi = a + n * PAGE;
                runs += 1;
            };
            let mut out = Runs::new(&mut f);
            // SAFETY: as above.
            unsafe {
                scan(
                    self.pagemap,
                    p,
                    p + N * PAGE,
                    self.vec,
                    VEC_LEN,
                    Some(&mut out),
                )
            }
            .map_err(|e| Fail("probe: PAGEMAP_SCAN", e))?;
            out.flush();
            if runs != 1 || lo != p + 5 * PAGE || hi != p + 6 * PAGE {
                return Err(Fail("probe: written pages misreported", 0));
            }
            Ok(())
        })();
        // SAFETY: unmapping the scratch mapping (a registered range may be
        // unmapped; without UFFD_FEATURE_EVENT_UNMAP nothing is reported).
        unsafe { libc::munmap(p as *mut libc::c_void, N * PAGE) };
        result
    }

    // ---- soft-dirty ----

    fn pagemap_entry(&self, addr: usize) -> Option<u64> {
        let mut e = 0u64;
        // SAFETY: reads 8 bytes into `e`.
        let n = unsafe {
            libc::pread(
                self.pagemap,
                (&mut e as *mut u64).cast(),
                8,
                ((addr / PAGE) * 8) as libc::off_t,
            )
        };
        (n == 8).then_some(e)
    }

    fn clear_soft_dirty(&self) -> bool {
        // SAFETY: writes one byte from a static string to our clear_refs fd.
        // "4" = CLEAR_REFS_SOFT_DIRTY: clears the bits of the whole process.
        unsafe { libc::write(self.clear_refs, b"4".as_ptr().cast(), 1) == 1 }
    }

    fn open_softdirty(&mut self) -> Result<(), Fail> {
        self.open_pagemap()?;
        // SAFETY: a fresh private anonymous page aliases nothing.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Fail("probe: mmap", errno()));
        }
        let p = p as usize;
        let result = (|| {
            // SAFETY: the probe page is ours and writable.
            unsafe { core::ptr::write_volatile(p as *mut u8, 1) };
            // A page just written in a new mapping is soft-dirty on every
            // kernel that has the bits: a side-effect-free first check.
            let e = self
                .pagemap_entry(p)
                .ok_or(Fail("probe: read pagemap", errno()))?;
            if e & abi::PM_SOFT_DIRTY == 0 {
                return Err(Fail(
                    "soft-dirty bits absent (kernel without CONFIG_MEM_SOFT_DIRTY)",
                    0,
                ));
            }
            // SAFETY: NUL-terminated path; the fd is recorded and closed by close_fds.
            let fd = unsafe {
                libc::open(
                    c"/proc/self/clear_refs".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(Fail("open /proc/self/clear_refs", errno()));
            }
            self.clear_refs = fd;
            self.clear_refs_id = fd_identity(fd).ok_or(Fail("fstat clear_refs", errno()))?;
            if !self.clear_soft_dirty() {
                return Err(Fail("write 4 to /proc/self/clear_refs", errno()));
            }
            let e = self
                .pagemap_entry(p)
                .ok_or(Fail("probe: read pagemap", errno()))?;
            if e & abi::PM_SOFT_DIRTY != 0 {
                return Err(Fail("probe: clear_refs left the soft-dirty bit set", 0));
            }
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(p as *mut u8, 2) };
            let e = self
                .pagemap_entry(p)
                .ok_or(Fail("probe: read pagemap", errno()))?;
            if e & abi::PM_SOFT_DIRTY == 0 {
                return Err(Fail("probe: a write did not set the soft-dirty bit", 0));
            }
            Ok(())
        })();
        // SAFETY: unmapping the probe page.
        unsafe { libc::munmap(p as *mut libc::c_void, PAGE) };
        result
    }

    fn collect_softdirty(&mut self, out: &mut Runs) -> bool {
        let (pagemap, buf, cap) = (self.pagemap, self.vec.cast::<u64>(), VEC_BYTES / 8);
        for_each_accessible_vma(self.base, self.scan_end(), &mut |lo, hi| {
            // SAFETY: buf holds `cap` u64s (the output vector).
            unsafe { pagemap_runs(pagemap, lo, hi, abi::PM_SOFT_DIRTY, buf, cap, out) }
        })
    }

    /// Where scans stop: the range's end, or the end of its used part as
    /// [`set_scan_end`] last said (pages beyond are never written: a huge
    /// reservation scanned whole costs ~0.7 ms per TiB per scan).
    fn scan_end(&self) -> usize {
        match self.scan_end {
            0 => self.end,
            e => e.next_multiple_of(PAGE).clamp(self.base + PAGE, self.end),
        }
    }

    // ---- the operations ----

    fn start(&mut self) -> bool {
        self.adopt_after_fork();
        match self.source {
            Source::UffdWpAsync => {
                if !self.fds_intact() {
                    return false;
                }
                if !self.registered && self.register().is_err() {
                    return false;
                }
                // SAFETY: the range is ours and registered; vec has VEC_LEN entries.
                let ok = unsafe {
                    scan(
                        self.pagemap,
                        self.base,
                        self.scan_end(),
                        self.vec,
                        VEC_LEN,
                        None,
                    )
                }
                .is_ok();
                self.started = ok;
                ok
            }
            Source::SoftDirty => {
                let ok = self.fds_intact() && self.clear_soft_dirty();
                self.started = ok;
                ok
            }
            Source::None => false,
        }
    }

    fn collect(&mut self, f: &mut dyn FnMut(usize, usize)) -> Option<usize> {
        self.adopt_after_fork();
        if !self.started || !self.fds_intact() {
            return None;
        }
        let mut out = Runs::new(f);
        let ok = match self.source {
            // SAFETY: the range is ours and registered; vec has VEC_LEN entries.
            Source::UffdWpAsync => unsafe {
                scan(
                    self.pagemap,
                    self.base,
                    self.scan_end(),
                    self.vec,
                    VEC_LEN,
                    Some(&mut out),
                )
                .is_ok()
            },
            Source::SoftDirty => self.collect_softdirty(&mut out),
            Source::None => false,
        };
        out.flush();
        if !ok {
            self.started = false;
            return None;
        }
        Some(out.pages)
    }

    fn end(&mut self) {
        self.adopt_after_fork();
        if self.source == Source::UffdWpAsync && self.started && self.fds_intact() {
            let mut wp = abi::UffdioWriteprotect {
                range: abi::UffdioRange {
                    start: self.base as u64,
                    len: (self.scan_end() - self.base) as u64,
                },
                mode: abi::UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
            };
            // SAFETY: UFFDIO_WRITEPROTECT reads one struct; the range is ours
            // and registered. A failure leaves pages protected: slower, not wrong.
            unsafe { libc::ioctl(self.uffd, abi::UFFDIO_WRITEPROTECT as _, &mut wp) };
        }
        self.started = false;
    }

    fn stop(&mut self) {
        self.adopt_after_fork();
        if self.source == Source::UffdWpAsync && self.fds_intact() {
            self.unregister();
        }
        self.started = false;
    }

    fn describe(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        w.write_str(self.source.name())?;
        if self.source == Source::None {
            let mut sep = " (";
            for (what, tried, fail) in [
                (
                    "userfaultfd",
                    matches!(self.want, Want::Auto | Want::Uffd),
                    self.why_uffd,
                ),
                (
                    "soft-dirty",
                    matches!(self.want, Want::Auto | Want::SoftDirty),
                    self.why_softdirty,
                ),
            ] {
                if tried {
                    write!(w, "{sep}{what}: {}", fail.0)?;
                    if fail.1 != 0 {
                        write!(w, ", errno {}", fail.1)?;
                    }
                    sep = "; ";
                }
            }
            if sep == " (" {
                w.write_str(" (MAGPIE_DIRTY=none)")?;
            } else {
                w.write_str(")")?;
            }
        }
        Ok(())
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if self.pid == getpid() {
            self.unregister();
        }
        self.close_fds();
        if !self.vec.is_null() {
            // SAFETY: the vector came from map_owned(VEC_BYTES) and is no longer used.
            unsafe { os::unmap_owned(self.vec.cast(), VEC_BYTES) };
        }
    }
}

/// Registers `[start, start+len)` with `uffd` in write-protect mode.
///
/// # Safety
/// The range must be memory the caller owns.
unsafe fn register_range(uffd: i32, start: usize, len: usize) -> Result<(), i32> {
    let mut r = abi::UffdioRegister {
        range: abi::UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode: abi::UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register.
    if unsafe { libc::ioctl(uffd, abi::UFFDIO_REGISTER as _, &mut r) } != 0 {
        return Err(errno());
    }
    if r.ioctls & (1 << abi::_UFFDIO_WRITEPROTECT) == 0 {
        // SAFETY: undoing the registration just made.
        unsafe { unregister_range(uffd, start, len) };
        return Err(libc::EOPNOTSUPP);
    }
    Ok(())
}

/// Unregisters `[start, start+len)`; the kernel drops every uffd-wp bit and
/// marker in it on the way (userfaultfd_clear_vma → uffd_wp_range(.., false)).
///
/// # Safety
/// The range must be memory the caller owns.
unsafe fn unregister_range(uffd: i32, start: usize, len: usize) {
    let mut r = abi::UffdioRange {
        start: start as u64,
        len: len as u64,
    };
    // SAFETY: UFFDIO_UNREGISTER reads one struct uffdio_range.
    unsafe { libc::ioctl(uffd, abi::UFFDIO_UNREGISTER as _, &mut r) };
}

/// PAGEMAP_SCAN over `[start, end)` with PM_SCAN_WP_MATCHING |
/// PM_SCAN_CHECK_WPASYNC: every written page (present or swapped and without
/// its uffd-wp bit) is write-protected again, atomically with the test (under
/// the page-table lock), and, with `out`, reported. Loops on `walk_end` when
/// the output vector fills. Errors: the errno of the failing call (EPERM: a
/// VMA in the range is not registered with a WP-async uffd), or EAGAIN if the
/// kernel stopped making progress.
///
/// `category_anyof_mask = PRESENT | SWAPPED` keeps the kernel off its
/// "written-only" fast path, which counts a none pte (never touched, or
/// dropped by MADV_DONTNEED) as written: such a page reads as zeros and holds
/// no pointer, and a later write makes it present and unprotected, so it is
/// reported then. It also keeps start() from planting markers in none ptes
/// (which would cost a second fault on the first write there).
///
/// The walk goes 1 GiB (aligned) at a time: the kernel holds the mmap lock
/// (read) through a walk until its output buffer fills, and mmap, munmap and
/// mprotect in other threads wait for it; a GiB of populated heap takes 1 to
/// 10 ms to walk.
///
/// # Safety
/// `[start, end)` must be ours; `vec` must hold `vec_len` regions.
unsafe fn scan(
    pagemap: i32,
    start: usize,
    end: usize,
    vec: *mut PageRegion,
    vec_len: usize,
    mut out: Option<&mut Runs>,
) -> Result<(), i32> {
    const CHUNK: usize = 1 << 30;
    let mut lo = start;
    while lo < end {
        let hi = end.min((lo & !(CHUNK - 1)) + CHUNK);
        // SAFETY: the caller's contract, for a part of its range.
        unsafe { scan_part(pagemap, lo, hi, vec, vec_len, out.as_deref_mut())? };
        lo = hi;
    }
    Ok(())
}

/// [`scan`] of one part, looping on `walk_end` as the output vector fills.
///
/// # Safety
/// As [`scan`].
unsafe fn scan_part(
    pagemap: i32,
    start: usize,
    end: usize,
    vec: *mut PageRegion,
    vec_len: usize,
    mut out: Option<&mut Runs>,
) -> Result<(), i32> {
    let mut arg = abi::PmScanArg {
        size: size_of::<abi::PmScanArg>() as u64,
        flags: abi::PM_SCAN_WP_MATCHING | abi::PM_SCAN_CHECK_WPASYNC,
        start: start as u64,
        end: end as u64,
        walk_end: 0,
        vec: vec as u64,
        vec_len: vec_len as u64,
        max_pages: 0,
        category_inverted: 0,
        category_mask: abi::PAGE_IS_WRITTEN,
        category_anyof_mask: 0,
        return_mask: abi::PAGE_IS_WRITTEN,
    };
    loop {
        // SAFETY: PAGEMAP_SCAN reads `arg`, writes arg.walk_end and up to
        // vec_len regions at vec.
        let n = unsafe { libc::ioctl(pagemap, abi::PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            return Err(errno());
        }
        if let Some(out) = out.as_deref_mut() {
            for i in 0..(n as usize).min(vec_len) {
                // SAFETY: the kernel filled the first n regions.
                let r = unsafe { *vec.add(i) };
                out.add(r.start as usize, r.end as usize);
            }
        }
        if arg.walk_end >= end as u64 {
            return Ok(());
        }
        if n == 0 && arg.walk_end <= arg.start {
            return Err(libc::EAGAIN);
        }
        arg.start = arg.walk_end;
    }
}

/// Reports the runs of pages in `[lo, hi)` whose /proc/self/pagemap entry has
/// a bit of `mask`, reading the entries through `buf` (`cap` entries).
///
/// # Safety
/// `buf` must hold `cap` u64s.
unsafe fn pagemap_runs(
    pagemap: i32,
    lo: usize,
    hi: usize,
    mask: u64,
    buf: *mut u64,
    cap: usize,
    out: &mut Runs,
) -> bool {
    let mut addr = lo;
    while addr < hi {
        let n = ((hi - addr) / PAGE).min(cap);
        // SAFETY: reads n*8 bytes into buf, which holds cap >= n entries.
        let got = unsafe {
            libc::pread(
                pagemap,
                buf.cast(),
                n * 8,
                ((addr / PAGE) * 8) as libc::off_t,
            )
        };
        if got <= 0 || got as usize % 8 != 0 {
            return false;
        }
        let got = got as usize / 8;
        let mut i = 0;
        while i < got {
            // SAFETY: i < got <= n entries were read.
            if unsafe { *buf.add(i) } & mask != 0 {
                let s = i;
                // SAFETY: as above.
                while i < got && unsafe { *buf.add(i) } & mask != 0 {
                    i += 1;
                }
                out.add(addr + s * PAGE, addr + i * PAGE);
            } else {
                i += 1;
            }
        }
        addr += got * PAGE;
    }
    true
}

fn parse_hex(s: &[u8]) -> Option<(usize, usize)> {
    let mut v: usize = 0;
    let mut i = 0;
    while i < s.len() {
        let d = match s[i] {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            _ => break,
        };
        v = v.checked_mul(16)?.checked_add(d as usize)?;
        i += 1;
    }
    (i > 0).then_some((v, i))
}

/// Parses the head of a /proc/self/maps line: `start-end perms ...`.
/// Returns (start, end, accessible).
fn parse_maps_line(l: &[u8]) -> Option<(usize, usize, bool)> {
    let (start, a) = parse_hex(l)?;
    if l.get(a) != Some(&b'-') {
        return None;
    }
    let (end, b) = parse_hex(&l[a + 1..])?;
    let p = a + 1 + b + 1;
    let perms = l.get(p..p + 3)?;
    Some((start, end, perms != b"---"))
}

/// Calls `f(lo, hi)` for the part inside `[lo, hi)` of every VMA that is not
/// PROT_NONE (the heap's committed parts), reading /proc/self/maps through a
/// stack buffer. Stops and returns false when `f` does.
fn for_each_accessible_vma(lo: usize, hi: usize, f: &mut dyn FnMut(usize, usize) -> bool) -> bool {
    // SAFETY: NUL-terminated path; the fd is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 4096];
    let mut len = 0;
    let mut skipping = false; // inside a line longer than the buffer
    let mut ok = true;
    'read: loop {
        // SAFETY: reads into the free tail of buf.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n < 0 {
            ok = false;
            break;
        }
        let eof = n == 0;
        len += n as usize;
        let mut pos = 0;
        loop {
            let nl = buf[pos..len].iter().position(|&c| c == b'\n');
            let line_end = match nl {
                Some(i) => pos + i,
                None if eof || (pos == 0 && len == buf.len()) => len,
                None => break,
            };
            if !skipping {
                if let Some((s, e, acc)) = parse_maps_line(&buf[pos..line_end]) {
                    let (s, e) = (s.max(lo), e.min(hi));
                    if acc && s < e && !f(s, e) {
                        ok = false;
                        break 'read;
                    }
                }
            }
            skipping = nl.is_none() && !eof;
            pos = if nl.is_some() { line_end + 1 } else { line_end };
            if pos >= len {
                break;
            }
        }
        buf.copy_within(pos..len, 0);
        len -= pos;
        if eof {
            break;
        }
    }
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    ok
}

// ---- The heap's tracker ----

static TRACKER: spin::Mutex<Tracker> = spin::Mutex::new(Tracker::EMPTY);

/// Fork: held across fork, so the child never inherits it locked by the
/// parent's collector.
pub fn lock_for_fork() {
    core::mem::forget(TRACKER.lock());
}

/// # Safety
/// The caller holds the lock leaked by [`lock_for_fork`].
pub unsafe fn unlock_after_fork() {
    // SAFETY: forwarded contract.
    unsafe { TRACKER.force_unlock() };
}
static INITED: AtomicU8 = AtomicU8::new(0);
/// The source init chose: 0 none, 1 uffd, 2 soft-dirty.
static SOURCE: AtomicU8 = AtomicU8::new(0);

fn source_code(s: Source) -> u8 {
    match s {
        Source::None => 0,
        Source::UffdWpAsync => 1,
        Source::SoftDirty => 2,
    }
}

/// Limits [`start`], [`collect_written`] and [`end`] to `[base, end)` of the
/// range: the part in use (the end of the heap's used part). Call it before each;
/// memory beyond must not have been written. Scans protect holes with
/// markers (page tables for them), so a scan of the whole reservation, which
/// is what happens while this was never called, is for small ranges only.
pub fn set_scan_end(end: usize) {
    // Never 0, which would mean the whole reservation.
    TRACKER.lock().scan_end = end.max(1);
}

/// What [`init`] chose ([`Source::None`] before it ran).
pub fn source() -> Source {
    match SOURCE.load(Relaxed) {
        1 => Source::UffdWpAsync,
        2 => Source::SoftDirty,
        _ => Source::None,
    }
}

/// "uffd-wp-async", "soft-dirty" or "none".
pub fn source_name() -> &'static str {
    source().name()
}

/// Writes the source, and for "none" why each source was unavailable, e.g.
/// `none (userfaultfd: UFFDIO_API(WP_ASYNC|WP_UNPOPULATED), errno 22;
/// soft-dirty: soft-dirty bits absent (...))`. For statistics.
pub fn describe(w: &mut dyn fmt::Write) -> fmt::Result {
    TRACKER.lock().describe(w)
}

/// Opens the tracker for the address range `[base, base+len)` (the heap
/// reservation, page aligned; may be huge and mostly PROT_NONE). Returns the
/// source in use. Idempotent: later calls return the first call's source,
/// whatever range they pass. `MAGPIE_DIRTY=uffd|softdirty|none` restricts the
/// choice (default `auto`: uffd, then soft-dirty, then none).
pub fn init(base: usize, len: usize) -> Source {
    let mut t = TRACKER.lock();
    if INITED.load(Relaxed) != 0 {
        t.adopt_after_fork();
        return t.source;
    }
    let want = want_from_env();
    *t = Tracker::open(base, len, want);
    if t.source == Source::None && want != Want::Auto && want != Want::None {
        let mut b = fatal::StackBuf::<384>::new();
        let _ = t.describe(&mut b);
        fatal::warn(format_args!(
            "MAGPIE_DIRTY: dirty-page tracking unavailable: {}",
            core::str::from_utf8(b.as_bytes()).unwrap_or("none")
        ));
    }
    SOURCE.store(source_code(t.source), Relaxed);
    INITED.store(1, Relaxed);
    t.source
}

/// Starts a tracking period (sweep termination): forgets what was written and
/// write-protects the whole range (registering it first if [`stop`] ran).
/// False if there is no tracking, or it failed (mark with the world stopped).
pub fn start() -> bool {
    let mut t = TRACKER.lock();
    let ok = t.start();
    SOURCE.store(source_code(t.source), Relaxed); // a fork child may have lost it
    ok
}

/// Calls `f(page_addr, npages)` for every run of pages written since
/// [`start`] (or, with uffd, since the previous collect) and write-protects
/// them again in the same step; runs come in address order, coalesced. Scan
/// a run's contents inside `f` or later, never before: a write racing with
/// this call is either in a reported run (and complete before `f` sees it)
/// or reported by the next collect. Returns the pages reported, or None on
/// failure (rescan everything). `f` runs with the tracker locked: it must not
/// call this module.
pub fn collect_written(f: &mut dyn FnMut(usize, usize)) -> Option<usize> {
    let mut t = TRACKER.lock();
    let n = t.collect(f);
    SOURCE.store(source_code(t.source), Relaxed);
    n
}

/// Ends a tracking period (the cycle's marking is over): drops the write
/// protection of the whole range, so that the program's writes between
/// cycles do not fault (1–3 µs each, once per page per cycle); the next
/// [`start`] protects every page again. Collect returns None until then.
pub fn end() {
    TRACKER.lock().end()
}

/// Ends tracking: unregisters the range, which drops every write protection
/// in it, so the program's writes stop faulting (and the program may register
/// heap memory with a userfaultfd of its own). A later [`start`] registers again.
pub fn stop() {
    TRACKER.lock().stop()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Instant;

    /// A private anonymous mapping of `pages` pages, unmapped on drop.
    struct Region {
        base: usize,
        len: usize,
    }

    impl Region {
        fn new(pages: usize, prot: i32) -> Region {
            // SAFETY: a fresh anonymous mapping.
            let p = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    pages * PAGE,
                    prot,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Region {
                base: p as usize,
                len: pages * PAGE,
            }
        }
        fn rw(pages: usize) -> Region {
            Region::new(pages, libc::PROT_READ | libc::PROT_WRITE)
        }
        fn touched(pages: usize) -> Region {
            let r = Region::rw(pages);
            for i in 0..pages {
                r.write(i, 0xAB);
            }
            r
        }
        fn page(&self, i: usize) -> usize {
            self.base + i * PAGE
        }
        fn write(&self, i: usize, v: u8) {
            // SAFETY: page i of our own writable mapping.
            unsafe { core::ptr::write_volatile((self.page(i) + 8) as *mut u8, v) };
        }
        fn commit(&self, first: usize, pages: usize) {
            // SAFETY: part of our own mapping.
            let ok = unsafe { os::commit(self.page(first) as *mut u8, pages * PAGE) };
            assert!(ok);
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            // SAFETY: our own mapping, no longer used.
            unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
        }
    }

    /// The kernel release as (major, minor).
    fn kernel() -> (u32, u32) {
        let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut it = s.trim().split(|c: char| !c.is_ascii_digit());
        let maj = it.next().unwrap().parse().unwrap();
        let min = it.next().unwrap().parse().unwrap();
        (maj, min)
    }

    /// A uffd tracker over `r`; None (test skipped) only on a kernel before
    /// 6.7, where WP_ASYNC and PAGEMAP_SCAN do not exist.
    fn uffd(base: usize, len: usize) -> Option<Tracker> {
        let t = Tracker::open(base, len, Want::Uffd);
        if t.source != Source::UffdWpAsync {
            let mut s = String::new();
            t.describe(&mut s).unwrap();
            assert!(
                kernel() < (6, 7),
                "uffd WP-async should work on this kernel: {s}"
            );
            eprintln!("skipped: {s}");
            return None;
        }
        Some(t)
    }

    /// The runs a collect reports, as (first page index, pages) relative to `base`.
    fn collect(t: &mut Tracker, base: usize) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        let n = t
            .collect(&mut |a, n| v.push(((a - base) / PAGE, n)))
            .expect("collect failed");
        assert_eq!(n, v.iter().map(|r| r.1).sum::<usize>());
        v
    }

    fn pagemap_entry(addr: usize) -> u64 {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open("/proc/self/pagemap").unwrap();
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, (addr / PAGE * 8) as u64).unwrap();
        u64::from_le_bytes(b)
    }

    fn status_kb(field: &str) -> usize {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with(field)).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn reports_exactly_the_written_runs() {
        let r = Region::touched(4096);
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        assert!(t.start());
        for i in [3, 70, 71, 1000] {
            r.write(i, 1);
        }
        assert_eq!(collect(&mut t, r.base), vec![(3, 1), (70, 2), (1000, 1)]);
        // Reported pages were protected again: nothing more to say.
        assert_eq!(collect(&mut t, r.base), vec![]);
        // A write after a collect shows in the next one.
        r.write(5, 2);
        r.write(70, 2);
        assert_eq!(collect(&mut t, r.base), vec![(5, 1), (70, 1)]);
        // start() forgets everything written before it.
        r.write(9, 3);
        assert!(t.start());
        assert_eq!(collect(&mut t, r.base), vec![]);
    }

    #[test]
    fn untouched_pages_are_not_reported() {
        // Never-touched pages: after the first write in a 2 MiB stretch the
        // others are none ptes in a page table; they must not count as written.
        let r = Region::rw(4096);
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        assert!(t.start());
        for i in [3, 70, 71, 1000] {
            r.write(i, 1);
        }
        assert_eq!(collect(&mut t, r.base), vec![(3, 1), (70, 2), (1000, 1)]);
        // Dropped pages (MADV_DONTNEED, as heap decommit does) lose their
        // protection with their pte: reported once (they read as zeros),
        // then protected by markers like the never-touched ones.
        // SAFETY: pages 60..80 of our own mapping.
        unsafe { os::decommit(r.page(60) as *mut u8, 20 * PAGE) };
        assert_eq!(collect(&mut t, r.base), vec![(60, 20)]);
        assert_eq!(collect(&mut t, r.base), vec![]);
        r.write(71, 1);
        assert_eq!(collect(&mut t, r.base), vec![(71, 1)]);
        // A page only read maps the zero page, protected as its marker was:
        // not written.
        // SAFETY: reading page 2000 of our mapping.
        let _ = unsafe { core::ptr::read_volatile(r.page(2000) as *const u8) };
        assert_eq!(collect(&mut t, r.base), vec![]);
        r.write(2000, 1);
        assert_eq!(collect(&mut t, r.base), vec![(2000, 1)]);
    }

    #[test]
    fn a_full_output_vector_continues_from_walk_end() {
        let r = Region::touched(4096);
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        t.register().unwrap();
        // SAFETY: our registered range; vec has VEC_LEN >= 2 entries.
        unsafe { scan(t.pagemap, r.base, r.base + r.len, t.vec, 2, None) }.unwrap();
        let pages = [1, 2, 5, 600, 601, 602, 2000, 4000, 4095];
        for &i in &pages {
            r.write(i, 1);
        }
        let mut v = Vec::new();
        let mut f = |a: usize, n: usize| v.push(((a - r.base) / PAGE, n));
        let mut out = Runs::new(&mut f);
        // Two regions per call: five calls, resumed from walk_end each time.
        // SAFETY: as above.
        unsafe { scan(t.pagemap, r.base, r.base + r.len, t.vec, 2, Some(&mut out)) }.unwrap();
        out.flush();
        assert_eq!(
            v,
            vec![(1, 2), (5, 1), (600, 3), (2000, 1), (4000, 1), (4095, 1)]
        );
    }

    #[test]
    fn foreign_memory_in_the_range_is_refused_not_protected() {
        // The kernel (6.18) registers a range with holes; memory someone else
        // maps into a hole later is not registered, and CHECK_WPASYNC makes
        // the scan fail on it instead of write-protecting it.
        let r = Region::touched(64);
        // SAFETY: unmapping pages 10..12 of our own mapping.
        unsafe { libc::munmap(r.page(10) as *mut libc::c_void, 2 * PAGE) };
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        assert!(t.start());
        r.write(3, 1);
        assert_eq!(collect(&mut t, r.base), vec![(3, 1)]);
        // SAFETY: mapping into the hole we made (NOREPLACE: fails rather than clobber).
        let p = unsafe {
            libc::mmap(
                r.page(10) as *mut libc::c_void,
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(p as usize, r.page(10));
        r.write(10, 1);
        r.write(11, 1);
        assert_eq!(t.collect(&mut |_, _| {}), None);
        assert!(!t.start());
        assert_eq!(pagemap_entry(r.page(10)) & abi::PM_UFFD_WP, 0);
        assert_eq!(pagemap_entry(r.page(11)) & abi::PM_UFFD_WP, 0);
    }

    #[test]
    fn a_second_userfaultfd_cannot_take_a_registered_range() {
        // What a program registering magpie heap memory with its own
        // userfaultfd meets while the range is registered: EBUSY.
        let r = Region::touched(64);
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        assert!(t.start());
        let other = Tracker::open(r.base, r.len, Want::Uffd);
        assert_eq!(other.source, Source::None);
        assert_eq!(other.why_uffd.1, libc::EBUSY);
        // After stop() the range is free for it.
        t.stop();
        let other = Tracker::open(r.base, r.len, Want::Uffd);
        assert_eq!(other.source, Source::UffdWpAsync);
    }

    #[test]
    fn a_closed_fd_is_noticed() {
        let r = Region::touched(64);
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        assert!(t.start());
        // The program closes our pagemap fd and the number is reused.
        // SAFETY: fds of this test; dup2 swaps the file behind t.pagemap atomically.
        unsafe {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            assert_eq!(libc::dup2(fd, t.pagemap), t.pagemap);
            libc::close(fd);
        }
        assert_eq!(t.collect(&mut |_, _| {}), None);
        assert!(!t.start());
        drop(t);
        // The program closes our userfaultfd: the kernel drops the registration.
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        assert!(t.start());
        // SAFETY: closing an fd of this test.
        unsafe { libc::close(t.uffd) };
        assert_eq!(pagemap_entry(r.page(3)) & abi::PM_UFFD_WP, 0);
        assert_eq!(t.collect(&mut |_, _| {}), None);
        t.uffd = -1;
    }

    #[test]
    fn kernel_writes_succeed_and_are_tracked() {
        let r = Region::touched(64);
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        let mut fds = [0i32; 2];
        // SAFETY: fds has room for two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let msg = [0x5Au8; 100];
        // SAFETY: writing our buffer to our pipe.
        assert_eq!(
            unsafe { libc::write(fds[1], msg.as_ptr().cast(), 100) },
            100
        );
        assert!(t.start());
        // SAFETY: read(2) into page 7 (+100) of our mapping: the kernel's
        // copy_to_user meets the write protection.
        let n = unsafe { libc::read(fds[0], (r.page(7) + 100) as *mut libc::c_void, 100) };
        assert_eq!(
            n,
            100,
            "read(2) into a protected page failed: errno {}",
            errno()
        );
        // SAFETY: reading back what the kernel wrote.
        let back = unsafe { core::slice::from_raw_parts((r.page(7) + 100) as *const u8, 100) };
        assert_eq!(back, &msg[..]);
        assert_eq!(collect(&mut t, r.base), vec![(7, 1)]);
        // SAFETY: closing our pipe.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn no_write_is_lost_while_collect_runs() {
        const PAGES: usize = 4096;
        const ROUNDS: usize = 150;
        let r = Region::touched(PAGES);
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        assert!(t.start());
        // epoch = number of collects started so far.
        let epoch = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let base = r.base;
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (epoch, done) = (epoch.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut log = Vec::new(); // (page, epoch before, epoch after)
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ w;
                    while !done.load(SeqCst) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let p = (x as usize) % PAGES;
                        let before = epoch.load(SeqCst);
                        // SAFETY: page p of the mapping, which outlives the threads.
                        unsafe { &*((base + p * PAGE) as *const AtomicU64) }.store(x, SeqCst);
                        let after = epoch.load(SeqCst);
                        log.push((p, before, after));
                    }
                    log
                })
            })
            .collect();
        let mut seen: Vec<Vec<bool>> = Vec::new(); // seen[j]: pages collect j reported
        for j in 0..=ROUNDS {
            if j == ROUNDS {
                done.store(true, SeqCst);
                // Let the writers finish: the last collect starts after every write.
                while writers.iter().any(|h| !h.is_finished()) {
                    std::thread::yield_now();
                }
            }
            let mut s = vec![false; PAGES];
            epoch.store(j + 1, SeqCst); // collect j+1 starts
            t.collect(&mut |a, n| {
                for i in 0..n {
                    s[(a - base) / PAGE + i] = true;
                }
            })
            .expect("collect failed");
            seen.push(s);
            std::thread::sleep(std::time::Duration::from_micros(300));
        }
        let (mut writes, mut racing) = (0, 0);
        for h in writers {
            for (p, before, after) in h.join().unwrap() {
                writes += 1;
                racing += (before != after) as usize;
                // Collect k (epoch k) may have been under way during the
                // write if k >= before; collect after+1 started after it.
                let lo = before.max(1);
                let hi = after + 1;
                assert!(
                    (lo..=hi).any(|k| seen[k - 1][p]),
                    "write to page {p} (epochs {before}..{after}) never reported"
                );
            }
        }
        let reported: usize = seen.iter().map(|s| s.iter().filter(|&&b| b).count()).sum();
        eprintln!("concurrent: {writes} writes ({racing} during a collect), {reported} page reports in {} collects", seen.len());
        assert!(writes > 1000, "only {writes} writes");
    }

    #[test]
    fn memory_outside_the_range_is_never_protected() {
        let a = Region::touched(256);
        let b = Region::touched(256);
        let Some(mut t) = uffd(a.base, a.len) else {
            return;
        };
        assert!(t.start());
        for i in 0..256 {
            assert_ne!(
                pagemap_entry(a.page(i)) & abi::PM_UFFD_WP,
                0,
                "tracked page {i} not protected"
            );
            assert_eq!(
                pagemap_entry(b.page(i)) & abi::PM_UFFD_WP,
                0,
                "foreign page {i} protected"
            );
        }
        for i in 0..256 {
            b.write(i, 9);
        }
        assert_eq!(collect(&mut t, a.base), vec![]);
        for i in 0..256 {
            assert_eq!(pagemap_entry(b.page(i)) & abi::PM_UFFD_WP, 0);
        }
        // stop() drops every protection in the range.
        t.stop();
        for i in 0..256 {
            assert_eq!(
                pagemap_entry(a.page(i)) & abi::PM_UFFD_WP,
                0,
                "page {i} still protected after stop"
            );
        }
        // ... and start() after stop() registers and protects again.
        assert!(t.start());
        a.write(17, 1);
        assert_eq!(collect(&mut t, a.base), vec![(17, 1)]);
    }

    #[test]
    fn end_unprotects_every_page_until_the_next_start() {
        const TIB_PAGES: usize = (1 << 40) / PAGE;
        let r = Region::new(TIB_PAGES, libc::PROT_NONE);
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        let chunk = (1 << 30) / PAGE;
        r.commit(chunk, 2048);
        for i in 0..2048 {
            r.write(chunk + i, 1);
        }
        t.scan_end = r.page(chunk + 2048);
        assert!(t.start());
        r.write(chunk + 9, 2);
        let wp = |i: usize| pagemap_entry(r.page(chunk + i)) & abi::PM_UFFD_WP != 0;
        assert!(wp(0) && wp(2047) && !wp(9));
        let pte_before = status_kb("VmPTE:");
        t.end();
        // Nothing is protected (a write between cycles does not fault), no
        // page table was made for the unpopulated rest of the TiB, and the
        // period is over: collect has nothing to say until the next start.
        let still: Vec<usize> = (0..2048).filter(|&i| wp(i)).collect();
        assert!(
            still.is_empty(),
            "pages still protected after end(): {still:?}"
        );
        let grown = status_kb("VmPTE:").saturating_sub(pte_before);
        assert!(grown < 1024, "page tables grew by {grown} KiB");
        assert_eq!(t.collect(&mut |_, _| {}), None);
        r.write(chunk + 100, 3);
        // The next period protects everything again and reports only what
        // is written after it began.
        assert!(t.start());
        assert!(wp(0) && wp(100) && wp(2047));
        r.write(chunk + 7, 4);
        assert_eq!(collect(&mut t, r.base), vec![(chunk + 7, 1)]);
    }

    #[test]
    fn huge_prot_none_reservation_registers_and_tracks_later_commits() {
        const TIB_PAGES: usize = (1 << 40) / PAGE;
        let pte_before = status_kb("VmPTE:");
        // Order 1: register the PROT_NONE reservation, commit afterwards.
        let r = Region::new(TIB_PAGES, libc::PROT_NONE);
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        let chunk = (1 << 30) / PAGE; // commit 16 MiB at 1 GiB into the range
        r.commit(chunk, 4096);
        for i in 0..4096 {
            r.write(chunk + i, 1);
        }
        let late = 3 * chunk;
        // The heap's committed end, as the collector sets it (here sparse,
        // so the scans also protect 3 GiB of PROT_NONE holes below it).
        t.scan_end = r.page(late + 512);
        let t0 = Instant::now();
        assert!(t.start());
        let start_us = t0.elapsed().as_micros();
        r.write(chunk + 5, 2);
        r.write(chunk + 4000, 2);
        // A span committed after start(): its pages are born unprotected,
        // hence reported as written when first touched.
        r.commit(late, 512);
        r.write(late + 1, 1);
        assert_eq!(
            collect(&mut t, r.base),
            vec![(chunk + 5, 1), (chunk + 4000, 1), (late + 1, 1)]
        );
        let grown = status_kb("VmPTE:").saturating_sub(pte_before);
        assert!(grown < 64 * 1024, "page tables grew by {grown} KiB");
        eprintln!(
            "1 TiB reservation, 16 MiB committed: start() {start_us} us, page tables +{grown} KiB"
        );
        drop(t);
        drop(r);

        // Order 2: commit and fill first, open the tracker afterwards.
        let r = Region::new(TIB_PAGES, libc::PROT_NONE);
        r.commit(chunk, 4096);
        for i in 0..4096 {
            r.write(chunk + i, 1);
        }
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        t.scan_end = r.page(chunk + 4096);
        assert!(t.start());
        r.write(chunk + 77, 2);
        assert_eq!(collect(&mut t, r.base), vec![(chunk + 77, 1)]);
    }

    #[test]
    fn fork_child_tracks_its_own_memory_and_leaves_the_parent_alone() {
        let r = Region::touched(64);
        let Some(mut t) = uffd(r.base, r.len) else {
            return;
        };
        assert!(t.start());
        // SAFETY: the child runs only syscalls and our tracker (no allocation,
        // no locks another thread could hold) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = (|| {
                // The child's copy carries no protection (no UFFD_FEATURE_EVENT_FORK).
                if pagemap_entry_raw(r.page(3)) & abi::PM_UFFD_WP != 0 {
                    return 1;
                }
                // A period the parent started cannot be collected here...
                if t.collect(&mut |_, _| {}).is_some() {
                    return 2;
                }
                // ... but the child can track its own.
                if !t.start() || t.source != Source::UffdWpAsync {
                    return 3;
                }
                r.write(9, 1);
                let (mut first, mut count, mut runs) = (0, 0, 0);
                let n = t.collect(&mut |a, n| {
                    first = a;
                    count = n;
                    runs += 1;
                });
                if n != Some(1) || runs != 1 || first != r.page(9) || count != 1 {
                    return 4;
                }
                0
            })();
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "child check failed");
        // The parent's protection and written state are untouched by the child.
        assert_ne!(pagemap_entry(r.page(9)) & abi::PM_UFFD_WP, 0);
        r.write(20, 1);
        assert_eq!(collect(&mut t, r.base), vec![(20, 1)]);
    }

    /// pagemap read without allocating (for the fork child).
    fn pagemap_entry_raw(addr: usize) -> u64 {
        // SAFETY: open/pread/close on a NUL-terminated path and a local buffer.
        unsafe {
            let fd = libc::open(c"/proc/self/pagemap".as_ptr(), libc::O_RDONLY);
            let mut e = 0u64;
            libc::pread(
                fd,
                (&mut e as *mut u64).cast(),
                8,
                (addr / PAGE * 8) as libc::off_t,
            );
            libc::close(fd);
            e
        }
    }

    #[test]
    fn soft_dirty_is_detected() {
        let r = Region::touched(64);
        let mut t = Tracker::open(r.base, r.len, Want::SoftDirty);
        let mut s = String::new();
        t.describe(&mut s).unwrap();
        let config = std::process::Command::new("sh")
            .args([
                "-c",
                "zcat /proc/config.gz 2>/dev/null | grep MEM_SOFT_DIRTY",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        eprintln!("soft-dirty: {s}; kernel config: {config:?}");
        if config == "# CONFIG_MEM_SOFT_DIRTY is not set" {
            assert_eq!(t.source, Source::None);
            assert!(s.contains("CONFIG_MEM_SOFT_DIRTY"), "{s}");
        }
        if t.source == Source::SoftDirty {
            assert!(t.start());
            r.write(3, 1);
            r.write(4, 1);
            let v = collect(&mut t, r.base);
            assert!(
                v.contains(&(3, 2)) || v.iter().any(|&(p, n)| p <= 3 && p + n >= 5),
                "{v:?}"
            );
        }
    }

    #[test]
    fn pagemap_reader_walks_only_accessible_vmas() {
        // The soft-dirty collector's machinery, exercised with the present bit
        // (which every kernel has): PROT_NONE parts are skipped, runs are exact.
        let r = Region::rw(64);
        // SAFETY: the upper half of our own mapping.
        assert_eq!(
            unsafe { libc::mprotect(r.page(32) as *mut libc::c_void, 32 * PAGE, libc::PROT_NONE) },
            0
        );
        for i in [3, 10, 11, 31] {
            r.write(i, 1);
        }
        let mut vmas = Vec::new();
        assert!(for_each_accessible_vma(
            r.base,
            r.base + r.len,
            &mut |lo, hi| {
                vmas.push(((lo - r.base) / PAGE, (hi - r.base) / PAGE));
                true
            }
        ));
        assert_eq!(vmas, vec![(0, 32)]);
        let mut t = Tracker::EMPTY;
        t.open_pagemap().unwrap();
        let mut buf = vec![0u64; 5]; // small, to cross buffer boundaries
        let mut v = Vec::new();
        let mut f = |a: usize, n: usize| v.push(((a - r.base) / PAGE, n));
        let mut out = Runs::new(&mut f);
        // SAFETY: buf holds 5 entries.
        assert!(unsafe {
            pagemap_runs(
                t.pagemap,
                r.base,
                r.page(32),
                abi::PM_PRESENT,
                buf.as_mut_ptr(),
                5,
                &mut out,
            )
        });
        out.flush();
        assert_eq!(v, vec![(3, 1), (10, 2), (31, 1)]);
    }

    #[test]
    fn parses_maps_lines() {
        assert_eq!(
            parse_maps_line(b"7f12a000-7f12c000 rw-p 00000000 00:00 0 "),
            Some((0x7f12a000, 0x7f12c000, true))
        );
        assert_eq!(
            parse_maps_line(b"7f12a000-7f12c000 ---p 00000000 00:00 0"),
            Some((0x7f12a000, 0x7f12c000, false))
        );
        assert_eq!(parse_maps_line(b"garbage"), None);
        assert_eq!(parse_maps_line(b"1000-"), None);
    }

    #[test]
    fn runs_coalesce_across_entries() {
        let mut v = Vec::new();
        let mut f = |a: usize, n: usize| v.push((a, n));
        let mut r = Runs::new(&mut f);
        r.add(0x1000, 0x3000);
        r.add(0x3000, 0x4000);
        r.add(0x6000, 0x7000);
        r.flush();
        let pages = r.pages;
        assert_eq!(pages, 4);
        assert_eq!(v, vec![(0x1000, 3), (0x6000, 1)]);
    }

    #[test]
    fn range_must_be_page_aligned() {
        let t = Tracker::open(4096 + 1, 4096, Want::Auto);
        assert_eq!(t.source, Source::None);
        let t = Tracker::open(4096, 0, Want::Auto);
        assert_eq!(t.source, Source::None);
    }

    #[test]
    fn global_interface() {
        // The one test that uses the module's own tracker.
        let r = Region::new((1 << 36) / PAGE, libc::PROT_NONE); // 64 GiB reservation
        r.commit(0, 1024);
        let s = init(r.base, r.len);
        assert_eq!(s, source());
        assert_eq!(source_name(), s.name());
        assert_eq!(init(r.base + PAGE, PAGE), s, "init is idempotent");
        let mut d = String::new();
        describe(&mut d).unwrap();
        eprintln!("dirty tracking: {d}");
        if s == Source::None {
            assert!(!start());
            assert_eq!(collect_written(&mut |_, _| {}), None);
            return;
        }
        for i in 0..1024 {
            r.write(i, 1);
        }
        set_scan_end(r.page(1024));
        assert!(start());
        r.write(500, 2);
        let mut v = Vec::new();
        assert_eq!(
            collect_written(&mut |a, n| v.push(((a - r.base) / PAGE, n))),
            Some(1)
        );
        assert_eq!(v, vec![(500, 1)]);
        stop();
        assert_eq!(pagemap_entry(r.page(10)) & abi::PM_UFFD_WP, 0);
        assert_eq!(
            collect_written(&mut |_, _| {}),
            None,
            "no period after stop"
        );
    }

    #[test]
    fn env_override() {
        for (val, want) in [
            ("none", "none"),
            ("uffd", "uffd-wp-async"),
            ("softdirty", "soft-dirty"),
        ] {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "gc::dirty::tests::env_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("MAGPIE_DIRTY", val)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            let got = text
                .lines()
                .find_map(|l| l.split("env_child: ").nth(1))
                .unwrap_or_else(|| panic!("no answer from the child: {text}"));
            // A forced source is either what was asked for or none (unavailable).
            assert!(
                got.starts_with(want) || got.starts_with("none"),
                "MAGPIE_DIRTY={val}: {got}"
            );
            if val == "none" {
                assert_eq!(got, "none (MAGPIE_DIRTY=none)");
            }
            if val == "uffd" && kernel() >= (6, 7) {
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    #[ignore = "run by env_override in a child process"]
    fn env_child() {
        let r = Region::touched(16);
        let t = Tracker::open(r.base, r.len, want_from_env());
        let mut s = String::new();
        t.describe(&mut s).unwrap();
        println!("env_child: {s}");
    }

    // ---- Measurements and kernel experiments (cargo test --release --lib
    // gc::dirty -- --ignored --nocapture --test-threads=1) ----

    fn pages_in_category(pagemap: i32, lo: usize, hi: usize, cat: u64) -> usize {
        let mut vec = vec![
            abi::PageRegion {
                start: 0,
                end: 0,
                categories: 0
            };
            4096
        ];
        let mut arg = abi::PmScanArg {
            size: 96,
            flags: 0,
            start: lo as u64,
            end: hi as u64,
            walk_end: 0,
            vec: vec.as_mut_ptr() as u64,
            vec_len: 4096,
            max_pages: 0,
            category_inverted: 0,
            category_mask: cat,
            category_anyof_mask: 0,
            return_mask: cat,
        };
        let mut total = 0;
        loop {
            // SAFETY: a read-only scan into our vector.
            let n = unsafe { libc::ioctl(pagemap, abi::PAGEMAP_SCAN as _, &mut arg) };
            assert!(n >= 0, "errno {}", errno());
            for r in &vec[..n as usize] {
                total += ((r.end - r.start) as usize) / PAGE;
            }
            if arg.walk_end >= hi as u64 {
                return total;
            }
            arg.start = arg.walk_end;
        }
    }

    #[test]
    #[ignore = "measurement"]
    fn measure_costs() {
        const PAGES: usize = (1 << 30) / PAGE;
        let r = Region::touched(PAGES);
        let mut t = uffd(r.base, r.len).unwrap();
        let t0 = Instant::now();
        assert!(t.start());
        let start_first = t0.elapsed();
        let t0 = Instant::now();
        assert!(t.start());
        let start_again = t0.elapsed();
        // The mutator's price: first write to a protected page.
        let idx: Vec<usize> = (0..PAGES).step_by(100).collect();
        let t0 = Instant::now();
        for &i in &idx {
            r.write(i, 3);
        }
        let fault = t0.elapsed();
        let t0 = Instant::now();
        for &i in &idx {
            r.write(i, 4);
        }
        let plain = t0.elapsed();
        let t0 = Instant::now();
        let n = t.collect(&mut |_, _| {}).unwrap();
        let collect_1pct = t0.elapsed();
        assert_eq!(n, idx.len());
        let t0 = Instant::now();
        let n0 = t.collect(&mut |_, _| {}).unwrap();
        let collect_none = t0.elapsed();
        assert_eq!(n0, 0);
        // Contiguous 1%: 2621 pages in one run.
        for i in 0..idx.len() {
            r.write(1000 + i, 5);
        }
        let t0 = Instant::now();
        let n1 = t.collect(&mut |_, _| {}).unwrap();
        let collect_run = t0.elapsed();
        // Unprotect without unregistering (UFFDIO_WRITEPROTECT, mode 0).
        let mut wp = abi::UffdioWriteprotect {
            range: abi::UffdioRange {
                start: r.base as u64,
                len: r.len as u64,
            },
            mode: 0,
        };
        let t0 = Instant::now();
        // SAFETY: our own registered range.
        assert_eq!(
            unsafe { libc::ioctl(t.uffd, abi::UFFDIO_WRITEPROTECT as _, &mut wp) },
            0
        );
        let unprotect = t0.elapsed();
        let t0 = Instant::now();
        t.unregister();
        let unreg_after = t0.elapsed();
        assert!(t.start());
        let t0 = Instant::now();
        t.stop();
        let stop = t0.elapsed();
        println!("  UFFDIO_WRITEPROTECT(mode 0) over 1 GiB {unprotect:?}, then UFFDIO_UNREGISTER {unreg_after:?}");
        let t0 = Instant::now();
        assert!(t.start());
        let restart = t0.elapsed();
        println!(
            "1 GiB populated ({PAGES} pages), {} written (1%):\n  start() first {:?}, again {:?}, after stop {:?}\n  write fault {:.0} ns/page (plain write {:.0} ns/page)\n  collect 1% scattered {:?} ({n} pages), nothing written {:?}, 1% contiguous {:?} ({n1} pages)\n  stop() {:?}",
            idx.len(),
            start_first,
            start_again,
            restart,
            fault.as_nanos() as f64 / idx.len() as f64,
            plain.as_nanos() as f64 / idx.len() as f64,
            collect_1pct,
            collect_none,
            collect_run,
            stop
        );
        // Fresh (never touched) pages in a tracked range vs an untracked one.
        let fresh = Region::rw(PAGES / 4);
        let mut tf = uffd(fresh.base, fresh.len).unwrap();
        assert!(tf.start());
        let t0 = Instant::now();
        for i in 0..PAGES / 4 {
            fresh.write(i, 1);
        }
        let tracked = t0.elapsed();
        let other = Region::rw(PAGES / 4);
        let t0 = Instant::now();
        for i in 0..PAGES / 4 {
            other.write(i, 1);
        }
        let untracked = t0.elapsed();
        let t0 = Instant::now();
        let nf = tf.collect(&mut |_, _| {}).unwrap();
        println!(
            "  first touch of fresh pages: tracked {:.0} ns/page, untracked {:.0} ns/page; collect of {nf} fresh pages {:?}",
            tracked.as_nanos() as f64 / (PAGES / 4) as f64,
            untracked.as_nanos() as f64 / (PAGES / 4) as f64,
            t0.elapsed()
        );
    }

    #[test]
    #[ignore = "kernel experiment"]
    fn experiment_fast_masks_page_tables() {
        const TIB_PAGES: usize = (1 << 40) / PAGE;
        let r = Region::new(TIB_PAGES, libc::PROT_NONE);
        let mut t = uffd(r.base, r.len).unwrap();
        let chunk = (1 << 30) / PAGE;
        r.commit(chunk, 2048);
        for i in 0..2048 {
            r.write(chunk + i, 1);
        }
        let p0 = status_kb("VmPTE:");
        assert!(t.start());
        let p1 = status_kb("VmPTE:");
        r.write(chunk + 3, 1);
        let _ = collect(&mut t, r.base);
        let p2 = status_kb("VmPTE:");
        t.end();
        let p3 = status_kb("VmPTE:");
        println!("VmPTE: before {p0} KiB, after start {p1}, after collect {p2}, after end {p3}");
    }

    #[test]
    #[ignore = "kernel experiment"]
    fn experiment_split_scan() {
        // Session 4: two threads walking the halves of a clean 2 GiB range
        // take 50-60% of a single walk each. A termination scan split with
        // a parked thread did not shrink with few written pages (505-575
        // us either way), and with many it was 5x slower (35,000-70,000
        // pages: 12-14 ms against 2.2-2.4 ms): re-protecting written pages
        // from both CPUs makes each flush the other's TLB, where an idle
        // CPU needs none. So the scan stays on the collector alone.
        let pages = (2usize << 30) / PAGE;
        let r = Region::touched(pages);
        let mut t = uffd(r.base, r.len).unwrap();
        assert!(t.start());
        let pm = t.pagemap;
        let one = move |lo: usize, hi: usize| raw_scan(pm, lo, hi, 0, Some(&mut region_vec()));
        for _ in 0..3 {
            let t0 = Instant::now();
            one(r.base, r.base + r.len);
            let single = t0.elapsed().as_micros();
            let mid = r.base + r.len / 2;
            let (b, e) = (r.base, r.base + r.len);
            let t0 = Instant::now();
            let h = std::thread::spawn(move || {
                let t = Instant::now();
                one(mid, e);
                t.elapsed().as_micros()
            });
            std::thread::sleep(std::time::Duration::from_micros(200));
            let t1 = Instant::now();
            one(b, mid);
            let mine = t1.elapsed().as_micros();
            let theirs = h.join().unwrap();
            let split = t0.elapsed().as_micros() - 200;
            println!("2 GiB: single {single} us; split halves {mine} and {theirs} us, about {split} us in all");
        }
    }

    #[test]
    #[ignore = "kernel experiment"]
    fn experiment_scan_cost_by_masks() {
        let pages = (1usize << 30) / PAGE;
        let r = Region::touched(pages);
        let mut t = uffd(r.base, r.len).unwrap();
        assert!(t.start());
        let mut vec = region_vec();
        let mut run = |anyof: u64, base: usize, len: usize| {
            let (d, p) = raw_scan_pages(t.pagemap, base, base + len, anyof, Some(&mut vec));
            (p, d.as_micros())
        };
        let slow = abi::PAGE_IS_PRESENT | abi::PAGE_IS_SWAPPED;
        for k in 0..3 {
            for i in 0..10 {
                r.write(i * 1000, k as u8);
            }
            let a = run(slow, r.base, r.len);
            for i in 0..10 {
                r.write(i * 1000 + 1, k as u8);
            }
            let b = run(0, r.base, r.len);
            println!(
                "1 GiB, 10 written: slow path {} pages {} us; fast path {} pages {} us",
                a.0, a.1, b.0, b.1
            );
        }
        drop(t);
        // None ptes inside existing page tables, fast path, twice.
        let r2 = Region::rw(4096);
        r2.write(0, 1);
        r2.write(4095, 1);
        let mut t2 = uffd(r2.base, r2.len).unwrap();
        assert!(t2.start());
        let mut vec = region_vec();
        for k in 0..3 {
            let (_, p) = raw_scan_pages(t2.pagemap, r2.base, r2.base + r2.len, 0, Some(&mut vec));
            println!("fast path over 4094 none ptes, collect {k}: {p} pages reported");
            // Read a none page (maps the zero page) and drop one with DONTNEED.
            if k == 0 {
                // SAFETY: our own mapping.
                unsafe {
                    core::ptr::read_volatile((r2.page(10) + 8) as *const u8);
                    libc::madvise(
                        r2.page(4095) as *mut libc::c_void,
                        PAGE,
                        libc::MADV_DONTNEED,
                    );
                }
            }
        }
    }

    #[test]
    #[ignore = "kernel experiment"]
    fn experiment_brief_masks_and_writeprotect_ioctl() {
        // (1) category_mask = return_mask = WRITTEN alone takes the kernel's
        // fast path, which reports none ptes as written.
        let r = Region::rw(4096);
        let t = uffd(r.base, r.len).unwrap();
        let mut t = t;
        assert!(t.start());
        r.write(3, 1);
        let mut vec = vec![
            abi::PageRegion {
                start: 0,
                end: 0,
                categories: 0
            };
            4096
        ];
        let mut arg = abi::PmScanArg {
            size: 96,
            flags: abi::PM_SCAN_WP_MATCHING | abi::PM_SCAN_CHECK_WPASYNC,
            start: r.base as u64,
            end: (r.base + r.len) as u64,
            walk_end: 0,
            vec: vec.as_mut_ptr() as u64,
            vec_len: 4096,
            max_pages: 0,
            category_inverted: 0,
            category_mask: abi::PAGE_IS_WRITTEN,
            category_anyof_mask: 0,
            return_mask: abi::PAGE_IS_WRITTEN,
        };
        // SAFETY: a scan of our own registered range into our vector.
        let n = unsafe { libc::ioctl(t.pagemap, abi::PAGEMAP_SCAN as _, &mut arg) };
        let pages: u64 = vec[..n.max(0) as usize]
            .iter()
            .map(|r| (r.end - r.start) / 4096)
            .sum();
        println!("mask WRITTEN only: 1 page written, {pages} reported in {n} runs");
        drop(t);
        // (2) UFFDIO_WRITEPROTECT over a 16 GiB PROT_NONE range with WP_UNPOPULATED.
        let big = Region::new((16usize << 30) / PAGE, libc::PROT_NONE);
        let t = uffd(big.base, big.len).unwrap();
        let mut tt = t;
        tt.register().unwrap();
        let before = status_kb("VmPTE:");
        let mut wp = abi::UffdioWriteprotect {
            range: abi::UffdioRange {
                start: big.base as u64,
                len: big.len as u64,
            },
            mode: abi::UFFDIO_WRITEPROTECT_MODE_WP,
        };
        let t0 = Instant::now();
        // SAFETY: our own registered range.
        let rc = unsafe { libc::ioctl(tt.uffd, abi::UFFDIO_WRITEPROTECT as _, &mut wp) };
        println!(
            "UFFDIO_WRITEPROTECT over 16 GiB PROT_NONE: rc {rc} (errno {}), {:?}, page tables +{} KiB",
            if rc < 0 { errno() } else { 0 },
            t0.elapsed(),
            status_kb("VmPTE:") - before
        );
        let before = status_kb("VmPTE:");
        let t0 = Instant::now();
        assert!(tt.start());
        println!(
            "PAGEMAP_SCAN start() over the same: {:?}, page tables +{} KiB",
            t0.elapsed(),
            status_kb("VmPTE:") - before
        );
    }

    /// One raw PAGEMAP_SCAN(WP_MATCHING) over [lo, hi), as the tracker's but
    /// with the given any-of mask and output (None: the kernel's exclusive-WP
    /// fast path). Returns the time taken.
    fn raw_scan(
        pagemap: i32,
        lo: usize,
        hi: usize,
        anyof: u64,
        vec: Option<&mut Vec<abi::PageRegion>>,
    ) -> std::time::Duration {
        raw_scan_pages(pagemap, lo, hi, anyof, vec).0
    }

    /// A protecting scan of `[lo, hi)` with the masks WRITTEN and `anyof`:
    /// its time and the pages it reported (0 without an output vector).
    fn raw_scan_pages(
        pagemap: i32,
        lo: usize,
        hi: usize,
        anyof: u64,
        mut vec: Option<&mut Vec<abi::PageRegion>>,
    ) -> (std::time::Duration, usize) {
        let (v, n) = match vec.as_deref_mut() {
            Some(v) => (v.as_mut_ptr() as u64, v.len() as u64),
            None => (0, 0),
        };
        let mut pages = 0;
        let mut arg = abi::PmScanArg {
            size: 96,
            flags: abi::PM_SCAN_WP_MATCHING | abi::PM_SCAN_CHECK_WPASYNC,
            start: lo as u64,
            end: hi as u64,
            walk_end: 0,
            vec: v,
            vec_len: n,
            max_pages: 0,
            category_inverted: 0,
            category_mask: abi::PAGE_IS_WRITTEN,
            category_anyof_mask: anyof,
            return_mask: abi::PAGE_IS_WRITTEN,
        };
        let t0 = Instant::now();
        loop {
            // SAFETY: our own registered range, our own vector.
            let r = unsafe { libc::ioctl(pagemap, abi::PAGEMAP_SCAN as _, &mut arg) };
            assert!(r >= 0, "errno {}", errno());
            if let Some(v) = vec.as_deref() {
                for g in &v[..r as usize] {
                    pages += ((g.end - g.start) as usize) / PAGE;
                }
            }
            if arg.walk_end >= hi as u64 {
                return (t0.elapsed(), pages);
            }
            arg.start = arg.walk_end;
        }
    }

    fn region_vec() -> Vec<abi::PageRegion> {
        vec![
            abi::PageRegion {
                start: 0,
                end: 0,
                categories: 0
            };
            4096
        ]
    }

    #[test]
    #[ignore = "measurement"]
    fn measure_kernel_paths() {
        const PAGES: usize = (1 << 30) / PAGE;
        let r = Region::touched(PAGES);
        let mut t = uffd(r.base, r.len).unwrap();
        assert!(t.register().is_ok());
        let mut vec = vec![
            abi::PageRegion {
                start: 0,
                end: 0,
                categories: 0
            };
            VEC_LEN
        ];
        let (lo, hi) = (r.base, r.base + r.len);
        let any = abi::PAGE_IS_PRESENT | abi::PAGE_IS_SWAPPED;
        println!("1 GiB populated:");
        println!(
            "  protect all, exclusive fast path (vec NULL): {:?}",
            raw_scan(t.pagemap, lo, hi, 0, None)
        );
        println!(
            "  again (nothing to do):                       {:?}",
            raw_scan(t.pagemap, lo, hi, 0, None)
        );
        t.unregister();
        t.register().unwrap();
        println!(
            "  protect all, exact (anyof PRESENT|SWAPPED):  {:?}",
            raw_scan(t.pagemap, lo, hi, any, Some(&mut vec))
        );
        println!(
            "  again (nothing to do):                       {:?}",
            raw_scan(t.pagemap, lo, hi, any, Some(&mut vec))
        );
        for i in (0..PAGES).step_by(100) {
            r.write(i, 1);
        }
        println!(
            "  collect 1%, WRITTEN-only fast path:          {:?}",
            raw_scan(t.pagemap, lo, hi, 0, Some(&mut vec))
        );
        for i in (0..PAGES).step_by(100) {
            r.write(i, 1);
        }
        println!(
            "  collect 1%, exact:                           {:?}",
            raw_scan(t.pagemap, lo, hi, any, Some(&mut vec))
        );
    }

    #[test]
    #[ignore = "measurement"]
    fn measure_huge_reservation() {
        let r = Region::new((1 << 40) / PAGE, libc::PROT_NONE);
        let mut t = uffd(r.base, r.len).unwrap();
        let chunk = (1 << 30) / PAGE;
        r.commit(chunk, 16384);
        for i in 0..16384 {
            r.write(chunk + i, 1);
        }
        for _ in 0..3 {
            let t0 = Instant::now();
            assert!(t.start());
            let s = t0.elapsed();
            let t0 = Instant::now();
            t.collect(&mut |_, _| {}).unwrap();
            let c = t0.elapsed();
            let t0 = Instant::now();
            t.stop();
            println!(
                "1 TiB reservation, 64 MiB populated: start {s:?}, collect {c:?}, stop {:?}",
                t0.elapsed()
            );
        }
        let t0 = Instant::now();
        let t2 = uffd(r.base, r.len).unwrap();
        println!("open (probe + trial registration) {:?}", t0.elapsed());
        drop(t2);
    }

    #[test]
    #[ignore = "kernel experiment"]
    fn experiment_thp() {
        const PAGES: usize = (64 << 20) / PAGE;
        let r = Region::rw(PAGES + 512);
        let base = (r.base + (2 << 20) - 1) & !((2 << 20) - 1);
        // SAFETY: advising our own mapping.
        unsafe { libc::madvise(base as *mut libc::c_void, PAGES * PAGE, libc::MADV_HUGEPAGE) };
        let mut t = uffd(base, PAGES * PAGE).unwrap();
        for i in 0..PAGES {
            // SAFETY: our own mapping.
            unsafe { core::ptr::write_volatile((base + i * PAGE) as *mut u8, 1) };
        }
        let huge = |t: &Tracker| {
            pages_in_category(t.pagemap, base, base + PAGES * PAGE, abi::PAGE_IS_HUGE)
        };
        println!("THP: {} of {PAGES} pages huge after touching", huge(&t));
        assert!(t.start());
        println!("THP: {} huge after start()", huge(&t));
        // SAFETY: our own mapping.
        unsafe { core::ptr::write_volatile((base + 3 * PAGE) as *mut u8, 2) };
        let n = t.collect(&mut |_, _| {}).unwrap();
        println!(
            "THP: one byte written: {n} pages reported; {} huge after",
            huge(&t)
        );
        t.stop();
        // Fresh 2 MiB areas faulted while registered and protected.
        let r2 = Region::rw(PAGES + 512);
        let b2 = (r2.base + (2 << 20) - 1) & !((2 << 20) - 1);
        // SAFETY: advising our own mapping.
        unsafe { libc::madvise(b2 as *mut libc::c_void, PAGES * PAGE, libc::MADV_HUGEPAGE) };
        let mut t2 = uffd(b2, PAGES * PAGE).unwrap();
        assert!(t2.start());
        for i in (0..PAGES).step_by(512) {
            // SAFETY: our own mapping.
            unsafe { core::ptr::write_volatile((b2 + i * PAGE) as *mut u8, 1) };
        }
        let n = t2.collect(&mut |_, _| {}).unwrap();
        println!(
            "THP: fresh region, one write per 2 MiB while tracked: {} huge; {n} pages reported",
            pages_in_category(t2.pagemap, b2, b2 + PAGES * PAGE, abi::PAGE_IS_HUGE)
        );
    }
}

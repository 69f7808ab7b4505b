//! Virtual memory and small OS queries, as thin wrappers over raw syscalls.

use core::ptr;

/// Reserves `size` bytes of address space, inaccessible and uncommitted.
/// Returns null when the kernel refuses.
pub fn reserve(size: usize) -> *mut u8 {
    // SAFETY: an anonymous PROT_NONE mapping at an address of the kernel's choice
    // cannot alias any existing object.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

/// Makes `[p, p+size)` of a reservation readable and writable. Pages are backed
/// on first touch. Returns false when the kernel refuses (commit limit).
///
/// # Safety
/// The range must lie inside a reservation made by [`reserve`].
pub unsafe fn commit(p: *mut u8, size: usize) -> bool {
    // SAFETY: the caller guarantees the range is ours.
    unsafe { libc::mprotect(p.cast(), size, libc::PROT_READ | libc::PROT_WRITE) == 0 }
}

/// Returns the physical pages behind `[p, p+size)` to the OS; the range stays
/// mapped and reads back as zeros. MADV_DONTNEED rather than MADV_FREE, so that
/// RSS falls at once and tools see it fall.
///
/// # Safety
/// The range must be committed heap memory that holds no live object.
pub unsafe fn decommit(p: *mut u8, size: usize) {
    // SAFETY: the caller guarantees nothing live is in the range.
    unsafe {
        libc::madvise(p.cast(), size, libc::MADV_DONTNEED);
    }
}

/// Returns the pages of `[p + keep, p + size)` to the OS (scratch memory
/// that grew for one task and holds nothing now): the mapping stays, and
/// reads zeros until written again.
///
/// # Safety
/// Nothing in the range may be live or written concurrently.
pub unsafe fn trim(p: *mut u8, size: usize, keep: usize) {
    if !p.is_null() && keep < size {
        // SAFETY: as the caller guarantees.
        unsafe { decommit(p.add(keep), size - keep) };
    }
}

/// Maps `size` bytes of zeroed, readable, writable memory for metadata.
/// Returns null on failure.
pub fn map_rw(size: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping aliases nothing.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

/// Maps `size` bytes like [`map_rw`] and records them as magpie's own
/// (skipped by the collector's root scan).
pub fn map_owned(size: usize) -> *mut u8 {
    let p = map_rw(size);
    if !p.is_null() && !super::owned::register(p, size) {
        // SAFETY: unmapping what we just mapped.
        unsafe { libc::munmap(p.cast(), size) };
        return core::ptr::null_mut();
    }
    p
}

/// Unmaps a range from [`map_owned`].
///
/// # Safety
/// `[p, p+size)` must be a whole mapping from `map_owned`, no longer used.
pub unsafe fn unmap_owned(p: *mut u8, size: usize) {
    super::owned::unregister(p);
    // SAFETY: the caller's contract.
    unsafe { libc::munmap(p.cast(), size) };
}

/// Reads a small file (a /proc or /sys entry) into `buf` with raw syscalls.
/// Returns the number of bytes read, or None.
pub fn read_file(path: &core::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: path is NUL-terminated; the fd is closed before returning.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let mut len = 0;
        while len < buf.len() {
            let n = libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len);
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        libc::close(fd);
        Some(len)
    }
}

/// Parses the leading decimal number of `s`, skipping leading spaces.
pub fn parse_leading_u64(s: &[u8]) -> Option<(u64, usize)> {
    let mut i = 0;
    while i < s.len() && s[i] == b' ' {
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add((s[i] - b'0') as u64)?;
        i += 1;
    }
    if i == start {
        None
    } else {
        Some((v, i))
    }
}

/// The process's resident set size in bytes (from /proc/self/statm).
pub fn resident_bytes() -> usize {
    let mut buf = [0u8; 128];
    let Some(n) = read_file(c"/proc/self/statm", &mut buf) else {
        return 0;
    };
    // statm: size resident shared text lib data dt (in pages).
    let s = &buf[..n];
    let Some((_, used)) = parse_leading_u64(s) else {
        return 0;
    };
    match parse_leading_u64(&s[used..]) {
        Some((pages, _)) => pages as usize * 4096,
        None => 0,
    }
}

/// The number of possible CPUs (from /sys/devices/system/cpu/possible, a list
/// like "0-63"), so per-CPU arrays cover every `cpu_id` the kernel can report.
pub fn possible_cpus() -> usize {
    let mut buf = [0u8; 256];
    let n = read_file(c"/sys/devices/system/cpu/possible", &mut buf).unwrap_or(0);
    let mut max = 0u64;
    let mut i = 0;
    while i < n {
        match parse_leading_u64(&buf[i..n]) {
            Some((v, used)) => {
                max = max.max(v);
                i += used;
            }
            None => i += 1,
        }
    }
    if n == 0 {
        // No sysfs (an odd container): cover a generous fixed number of CPUs;
        // the per-CPU arrays are reserved, not committed, so this costs little.
        return 256;
    }
    (max + 1).min(4096) as usize
}

/// Monotonic time in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; the vDSO call does not allocate.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The calling thread's errno.
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

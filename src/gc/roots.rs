//! Roots: the writable private mappings of the process, read from
//! `/proc/self/maps` without allocating, minus magpie's own mappings, with
//! thread stacks scanned only from their stack pointer up.

/// A readable, writable, private mapping.
#[derive(Clone, Copy, Default)]
pub struct Range {
    pub lo: usize,
    pub hi: usize,
    /// The mapping directly below is an inaccessible guard (a thread stack's
    /// layout), or this is the main thread's `[stack]`.
    pub stack_like: bool,
}

fn hex(s: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0usize;
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
    if i == 0 {
        None
    } else {
        Some((v, i))
    }
}

/// Reads `/proc/self/maps` and calls `f` for every readable, writable,
/// private mapping (not `[vvar]`/`[vsyscall]`). Returns false if the file
/// could not be read.
pub fn for_each_writable_mapping(mut f: impl FnMut(Range)) -> bool {
    // SAFETY: raw open/read/close into a stack buffer.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 16384];
    let mut have = 0;
    let mut prev_hi = 0usize;
    let mut prev_guard = false;
    loop {
        // SAFETY: reading into the free tail of buf.
        let n = unsafe { libc::read(fd, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
        if n <= 0 && have == 0 {
            break;
        }
        if n > 0 {
            have += n as usize;
        }
        let mut start = 0;
        while let Some(nl) = buf[start..have].iter().position(|&c| c == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            // "lo-hi perms offset dev inode   path"
            let Some((lo, a)) = hex(line) else { continue };
            let Some((hi, b)) = hex(&line[a + 1..]) else {
                continue;
            };
            let rest = &line[a + 1 + b + 1..];
            if rest.len() < 4 {
                continue;
            }
            let perms = &rest[..4];
            let path_start = rest
                .iter()
                .rposition(|&c| c == b' ')
                .map_or(rest.len(), |p| p + 1);
            let path = &rest[path_start..];
            let writable = perms[0] == b'r' && perms[1] == b'w' && perms[3] == b'p';
            let special = path == b"[vvar]" || path == b"[vsyscall]" || path == b"[vvar_vclock]";
            if writable && !special {
                let stack_like = path == b"[stack]" || (prev_guard && prev_hi == lo);
                f(Range { lo, hi, stack_like });
            }
            prev_guard = perms[0] == b'-' && perms[1] == b'-' && perms[2] == b'-';
            prev_hi = hi;
        }
        if n <= 0 {
            break;
        }
        // Keep the partial last line.
        buf.copy_within(start..have, 0);
        have -= start;
        if have == buf.len() {
            // A line longer than the buffer: drop it.
            have = 0;
        }
    }
    // SAFETY: closing our fd.
    unsafe { libc::close(fd) };
    true
}

/// Calls `f` with the parts of `[lo, hi)` that are not magpie's own mappings
/// (`own` is a sorted snapshot of them).
pub fn minus_own(lo: usize, hi: usize, own: &[(usize, usize)], mut f: impl FnMut(usize, usize)) {
    let mut cur = lo;
    for &(a, len) in own {
        let b = a + len;
        if b <= cur || a >= hi {
            continue;
        }
        if a > cur {
            f(cur, a);
        }
        cur = cur.max(b);
        if cur >= hi {
            return;
        }
    }
    if cur < hi {
        f(cur, hi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtracts_own_ranges() {
        let own = [(100, 10), (200, 50), (300, 100)];
        let mut got = [(0, 0); 8];
        let mut n = 0;
        minus_own(50, 350, &own, |a, b| {
            got[n] = (a, b);
            n += 1;
        });
        assert_eq!(&got[..n], &[(50, 100), (110, 200), (250, 300)]);
    }

    #[test]
    fn finds_the_data_segment_and_stack() {
        static mut DATA: [u8; 64] = [1; 64];
        // SAFETY: only the address is taken.
        let d = core::ptr::addr_of!(DATA) as usize;
        let local = 0u64;
        let l = &local as *const u64 as usize;
        let (mut saw_data, mut saw_stack) = (false, false);
        assert!(for_each_writable_mapping(|r| {
            saw_data |= r.lo <= d && d < r.hi;
            saw_stack |= r.lo <= l && l < r.hi;
        }));
        assert!(saw_data && saw_stack);
    }
}

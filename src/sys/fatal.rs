//! Reporting without allocating: messages are formatted into a stack buffer and
//! written with `write(2)`, and fatal errors end in `abort()`. The panic machinery
//! allocates, so nothing inside the allocator may panic; it calls [`fatal`].

use core::fmt::{self, Write};

/// A fixed-size, stack-allocated text buffer implementing `fmt::Write`.
/// Output beyond its capacity is silently truncated.
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the buffer to standard error (fd 2), ignoring errors: there is
    /// nowhere left to report them.
    pub fn write_stderr(&self) {
        write_fd(2, self.as_bytes());
    }
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes all of `bytes` to `fd`, retrying on short writes and EINTR.
pub fn write_fd(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            // SAFETY: reading errno of this thread.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return;
        }
        if n == 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Prints `magpie: <what>` (and the address at fault, if any) and aborts.
#[cold]
#[inline(never)]
pub fn fatal(what: &str, addr: Option<usize>) -> ! {
    let mut b = StackBuf::<256>::new();
    let _ = match addr {
        Some(a) => writeln!(b, "magpie: {what} {a:#x}"),
        None => writeln!(b, "magpie: {what}"),
    };
    b.write_stderr();
    // SAFETY: abort never returns and needs no preconditions.
    unsafe { libc::abort() }
}

/// Prints `magpie: <message>` to stderr, without allocating.
pub fn warn(args: fmt::Arguments<'_>) {
    let mut b = StackBuf::<512>::new();
    let _ = b.write_str("magpie: ");
    let _ = b.write_fmt(args);
    let _ = b.write_str("\n");
    b.write_stderr();
}

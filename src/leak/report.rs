//! The leak report: leaks grouped by allocation site, largest first, each
//! site's stack symbolized, then a totals line. Written without allocating
//! from the managed heap (scratch space is mapped for the occasion).
//!
//! ```text
//! magpie: leakcheck found 1700 bytes leaked in 17 objects at 2 sites
//!
//! 1600 bytes in 16 objects leaked at:
//!     #0 0x55d1c8a0a1a9 make_node+0x19 (/tmp/prog) prog.c:12
//!     #1 0x55d1c8a0a230 main+0x40 (/tmp/prog) prog.c:30
//! ...
//! magpie: total: 1700 bytes leaked in 17 objects (2 sites)
//! ```
//!
//! Configuration: `MAGPIE_LEAK_REPORT=path` sends it to a file (appended;
//! `%p` in the path becomes the process id) instead of stderr;
//! `MAGPIE_LEAK_EXITCODE=N` makes the process exit with N when leaks were
//! found at exit.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicI32, AtomicUsize, Ordering::Relaxed};

use super::{stacks, symbolize::Symbolizer, LeakTotals};
use crate::sys::{env, fatal::write_fd, os};

static EXIT_CODE: AtomicI32 = AtomicI32::new(0);
/// The report's path (from the environment, which outlives us), or null.
static PATH: AtomicUsize = AtomicUsize::new(0);
static PATH_LEN: AtomicUsize = AtomicUsize::new(0);
/// A copy of stderr taken at start-up: programs may close fd 2 before exit.
static STDERR: AtomicI32 = AtomicI32::new(2);

pub(super) fn init() {
    EXIT_CODE.store(
        env::get_u64("MAGPIE_LEAK_EXITCODE", 0, 0, 255) as i32,
        Relaxed,
    );
    if let Some(p) = env::get("MAGPIE_LEAK_REPORT").filter(|p| !p.is_empty()) {
        PATH.store(p.as_ptr() as usize, Relaxed);
        PATH_LEN.store(p.len(), Relaxed);
    }
    // SAFETY: duplicates fd 2 (if open) to a high, close-on-exec descriptor.
    let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 100) };
    if fd >= 0 {
        STDERR.store(fd, Relaxed);
    }
}

/// A buffered writer to a file descriptor.
struct FdWriter {
    fd: i32,
    buf: [u8; 8192],
    len: usize,
}

impl FdWriter {
    fn flush(&mut self) {
        write_fd(self.fd, &self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for FdWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

/// Opens the report's destination: the file named by MAGPIE_LEAK_REPORT
/// (`%p` = pid), else the saved stderr. Returns (fd, whether to close it).
fn open_destination() -> (i32, bool) {
    let p = PATH.load(Relaxed);
    if p == 0 {
        return (STDERR.load(Relaxed), false);
    }
    // SAFETY: PATH points into the environment block, which lives as long as
    // the process and which we never write.
    let path = unsafe { core::slice::from_raw_parts(p as *const u8, PATH_LEN.load(Relaxed)) };
    let mut name = crate::sys::fatal::StackBuf::<4096>::new();
    let mut rest = path;
    while let Some(i) = rest.windows(2).position(|w| w == b"%p") {
        let _ = name.write_str(core::str::from_utf8(&rest[..i]).unwrap_or("?"));
        // SAFETY: getpid has no preconditions.
        let _ = write!(name, "{}", unsafe { libc::getpid() });
        rest = &rest[i + 2..];
    }
    let _ = name.write_str(core::str::from_utf8(rest).unwrap_or("?"));
    let _ = name.write_str("\0");
    let bytes = name.as_bytes();
    if bytes.len() >= 4096 || bytes[..bytes.len() - 1].contains(&0) {
        return (STDERR.load(Relaxed), false);
    }
    // SAFETY: the name is NUL-terminated.
    let fd = unsafe {
        libc::open(
            bytes.as_ptr().cast(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        crate::sys::fatal::warn(format_args!(
            "MAGPIE_LEAK_REPORT: cannot open {}; the leak report goes to stderr",
            core::str::from_utf8(&bytes[..bytes.len() - 1]).unwrap_or("?")
        ));
        return (STDERR.load(Relaxed), false);
    }
    (fd, true)
}

/// Scratch memory mapped for one report and unmapped after it.
struct Scratch {
    p: *mut u8,
    size: usize,
}

impl Scratch {
    fn new(size: usize) -> Option<Scratch> {
        let size = size.max(1).next_multiple_of(4096);
        let p = os::map_owned(size);
        (!p.is_null()).then_some(Scratch { p, size })
    }
    /// The scratch memory as `n` values of `T` (zeroed; T is plain data).
    fn slice<T: Copy>(&mut self, n: usize) -> &mut [T] {
        assert!(n * core::mem::size_of::<T>() <= self.size);
        // SAFETY: the mapping is zeroed, large enough, page-aligned, and only
        // used for plain integer data.
        unsafe { core::slice::from_raw_parts_mut(self.p.cast(), n) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: p/size is a whole mapping from map_owned, no longer used.
        unsafe { os::unmap_owned(self.p, self.size) };
    }
}

/// True if a symbolized frame belongs to magpie or to the Rust allocator
/// shims in front of it: those open Rust-face stacks and are dropped.
fn is_allocator_frame(function: &str) -> bool {
    function.starts_with("magpie::")
        || function.starts_with("<magpie::")
        || function.starts_with("_ZN6magpie")
        || function.starts_with("_ZN71_$LT$magpie")
        || function.starts_with("__rust_alloc")
        || function.starts_with("__rust_realloc")
        || function.starts_with("__rg_")
        || function.starts_with("__rdl_")
}

/// Writes the report. `at_exit` only changes the heading.
pub(super) fn write(at_exit: bool) {
    let (fd, close) = open_destination();
    let mut w = FdWriter {
        fd,
        buf: [0; 8192],
        len: 0,
    };
    let _ = write_to(&mut w, at_exit);
    w.flush();
    if close {
        // SAFETY: closing the descriptor we opened.
        unsafe { libc::close(fd) };
    }
}

fn write_to(w: &mut FdWriter, at_exit: bool) -> fmt::Result {
    let totals = super::totals();
    let nsites = stacks::count() as usize;
    // (bytes, id) of every site with leaks, largest first.
    let Some(mut order_mem) = Scratch::new((nsites + 1) * 16) else {
        return writeln!(w, "magpie: leak report: out of memory");
    };
    let order: &mut [(u64, u64)] = order_mem.slice(nsites + 1);
    let mut n = 0;
    for id in 1..=nsites as u32 {
        if let Some((_, e)) = stacks::get(id) {
            let objects = e.leaked_objects.load(Relaxed);
            if objects > 0 {
                order[n] = (e.leaked_bytes.load(Relaxed), id as u64);
                n += 1;
            }
        }
    }
    let order = &mut order[..n];
    order.sort_unstable_by(|a, b| b.cmp(a));

    let when = if at_exit { " at exit" } else { "" };
    if n == 0 {
        writeln!(w, "magpie: leakcheck{when}: no leaks found")?;
    } else {
        writeln!(
            w,
            "magpie: leakcheck{when}: {} bytes leaked in {} {} at {n} {}",
            totals.bytes,
            totals.objects,
            plural(totals.objects, "object"),
            plural(n as u64, "site")
        )?;
        // Every address of the reported stacks, deduplicated, for one
        // symbolizer pass.
        let nframes: usize = order
            .iter()
            .map(|&(_, id)| stacks::get(id as u32).map_or(0, |s| s.0.len()))
            .sum();
        let Some(mut addr_mem) = Scratch::new(nframes * 8) else {
            return writeln!(w, "magpie: leak report: out of memory");
        };
        let addrs: &mut [usize] = addr_mem.slice(nframes);
        let mut k = 0;
        for &(_, id) in order.iter() {
            if let Some((frames, _)) = stacks::get(id as u32) {
                addrs[k..k + frames.len()].copy_from_slice(frames);
                k += frames.len();
            }
        }
        addrs.sort_unstable();
        let mut m = 0;
        for i in 0..addrs.len() {
            if i == 0 || addrs[i] != addrs[m - 1] {
                addrs[m] = addrs[i];
                m += 1;
            }
        }
        let sym = Symbolizer::new(&addrs[..m]);
        let depth = super::depth();
        for &(bytes, id) in order.iter() {
            let Some((frames, e)) = stacks::get(id as u32) else {
                continue;
            };
            writeln!(w)?;
            let objects = e.leaked_objects.load(Relaxed);
            writeln!(
                w,
                "{bytes} bytes in {objects} {} leaked at:",
                plural(objects, "object")
            )?;
            let skip = frames
                .iter()
                .take_while(|&&a| sym.frame(a).function.is_some_and(is_allocator_frame))
                .count();
            let shown = &frames[skip..];
            if shown.is_empty() {
                writeln!(w, "    (no stack recorded)")?;
            }
            for (i, &a) in shown.iter().take(depth.max(1)).enumerate() {
                write_frame(w, i, &sym.frame(a))?;
            }
        }
        writeln!(w)?;
    }
    writeln!(
        w,
        "magpie: total: {} bytes leaked in {} {} ({n} {})",
        totals.bytes,
        totals.objects,
        plural(totals.objects, "object"),
        plural(n as u64, "site")
    )
}

fn plural(n: u64, word: &str) -> PluralWord<'_> {
    PluralWord(word, n != 1)
}

struct PluralWord<'a>(&'a str, bool);

impl fmt::Display for PluralWord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)?;
        if self.1 {
            f.write_str("s")?;
        }
        Ok(())
    }
}

/// One stack line, in the style of LeakSanitizer:
/// `#1 0x55d1c8a0a230 in main+0x40 (/tmp/prog) prog.c:30`.
fn write_frame(w: &mut dyn Write, i: usize, f: &super::symbolize::Frame<'_>) -> fmt::Result {
    write!(w, "    #{i} {:#x}", f.addr)?;
    if let Some(func) = f.function {
        write!(w, " in {func}+{:#x}", f.offset)?;
    }
    write!(w, " ({})", f.object.unwrap_or("?"))?;
    if let Some(fl) = f.file_line {
        write!(w, " {fl}")?;
    }
    writeln!(w)
}

/// With MAGPIE_LEAK_EXITCODE=N and leaks found: flush stdio and exit with N
/// (exit handlers of the program already ran; ours is registered first, so
/// it runs last).
pub(super) fn exit_code_if_leaks(t: LeakTotals) {
    let code = EXIT_CODE.load(Relaxed);
    if code != 0 && t.objects > 0 {
        // SAFETY: fflush(NULL) flushes every stdio stream; _exit ends the
        // process without running the remaining handlers again.
        unsafe {
            libc::fflush(core::ptr::null_mut());
            libc::_exit(code);
        }
    }
}

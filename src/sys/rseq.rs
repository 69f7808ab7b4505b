//! Restartable sequences: finding the calling thread's rseq area.
//!
//! The area lives at a fixed offset from the thread pointer (`%fs:0`): glibc's
//! own (glibc >= 2.35 registers one per thread) or, when glibc did not register,
//! one magpie registers itself, per thread, on the thread's first allocation.
//! The critical sections that use it are in `alloc::cache::rseq_ops`.

use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

extern "C" {
    fn magpie_glibc_rseq(offset: *mut isize) -> i32;
    fn magpie_own_rseq_offset() -> isize;
    fn magpie_own_rseq_register() -> i32;
}

/// The signature the kernel checks before an abort handler; glibc's value on x86.
pub const RSEQ_SIG: u32 = 0x5305_3053;

/// Where rseq areas come from in this process.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Source {
    /// glibc registered an area for every thread.
    Glibc,
    /// magpie registers its own area per thread.
    Own,
    /// rseq is not available (valgrind, seccomp, old kernel, disabled).
    Unavailable,
}

static SOURCE: AtomicU8 = AtomicU8::new(2);

pub fn source() -> Source {
    match SOURCE.load(Relaxed) {
        0 => Source::Glibc,
        1 => Source::Own,
        _ => Source::Unavailable,
    }
}

/// Decides where the areas come from and returns their offset from the thread
/// pointer, or None when rseq cannot be used. `allow` = false forces the locked
/// fallback (MAGPIE_RSEQ=0).
pub fn init(allow: bool) -> Option<isize> {
    if !allow {
        SOURCE.store(2, Relaxed);
        return None;
    }
    let mut off = 0isize;
    // SAFETY: the C helper only reads weak symbols and writes `off`.
    if unsafe { magpie_glibc_rseq(&mut off) } == 1 {
        // glibc registered: check that this thread really has a CPU number.
        if cpu_id_at(off) >= 0 {
            SOURCE.store(0, Relaxed);
            return Some(off);
        }
        return None;
    }
    // SAFETY: registers the TLS area of the calling thread; no preconditions.
    if unsafe { magpie_own_rseq_register() } == 0 {
        SOURCE.store(1, Relaxed);
        // SAFETY: pure computation on the thread pointer.
        return Some(unsafe { magpie_own_rseq_offset() });
    }
    None
}

/// Reads `cpu_id` of the calling thread's area at `offset`: a CPU number, or -1
/// (not registered yet) or -2 (registration failed).
#[inline]
pub fn cpu_id_at(offset: isize) -> i32 {
    let v: i32;
    // SAFETY: offset locates the calling thread's rseq area inside its static
    // TLS block, which is mapped for the thread's whole life.
    unsafe {
        core::arch::asm!("mov {v:e}, dword ptr fs:[{off} + 4]", off = in(reg) offset, v = out(reg) v,
            options(nostack, readonly, preserves_flags));
    }
    v
}

/// Registers magpie's own area for the calling thread if that is the source in
/// use and the thread has none yet. Returns true when the thread can use rseq.
pub fn ensure_registered(offset: isize) -> bool {
    match cpu_id_at(offset) {
        c if c >= 0 => true,
        -1 if source() == Source::Own => {
            // SAFETY: registers the calling thread's own TLS area.
            unsafe { magpie_own_rseq_register() == 0 }
        }
        _ => false,
    }
}

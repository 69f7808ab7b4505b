//! Stopping the world with signals.
//!
//! The collector lists every thread in `/proc/self/task` and sends each a
//! signal (SIGPWR, as Boehm's collector does). The handler runs on the
//! thread's own stack, below the registers the kernel saved for it, so the
//! stack from the handler's frame up covers the thread's registers too. It
//! records that stack pointer, acknowledges, and sleeps on a futex until the
//! world restarts: no locks, no allocation.
//!
//! A thread caught inside an allocator slow path is not stopped there: the
//! handler sets its "stop pending" flag and returns, and the thread stops when
//! it leaves the allocator (`alloc::guard`). A thread caught between an rseq
//! pop's commit and the store marking the slot allocated (the
//! `magpie_alloc_windows` ranges) is let run on; the collector re-sends. So a
//! stopped world holds no half-changed cache, list or span, and no allocator lock.
//!
//! Threads created while the world stops are found by listing again until the
//! list is stable. A thread that does not acknowledge within the timeout (it
//! blocks the signal, say) makes the collector give the cycle up.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

use crate::sys::{futex, os};

/// The stop signal.
pub const SIGNAL: i32 = libc::SIGPWR;
/// Most threads a stop handles.
pub const MAX_THREADS: usize = 16384;

static STOPPING: AtomicBool = AtomicBool::new(false);
/// Odd while the world is stopped.
static EPOCH: AtomicU32 = AtomicU32::new(0);
static ACKS: AtomicU32 = AtomicU32::new(0);
/// Threads parked by a stop that have not yet left `park`: until they do,
/// they run the handler with every signal blocked, and a new stop must not
/// take them for threads that block its signal.
static PARKED: AtomicU32 = AtomicU32::new(0);

/// The threads of the current stop: tid and the stack pointer each recorded.
struct Table {
    tid: [AtomicI32; MAX_THREADS],
    sp: [AtomicUsize; MAX_THREADS],
    acked: [AtomicBool; MAX_THREADS],
    /// When each acknowledged, and whether the handler first found it inside
    /// the allocator (for `MAGPIE_DEBUG_PAUSES`).
    ack_ns: [AtomicU64; MAX_THREADS],
    deferred: [AtomicBool; MAX_THREADS],
    n: AtomicUsize,
}

/// The table lives in a mapping of magpie's own, made by [`install_handler`]:
/// as a static (360 KiB of libmagpie's bss) it was scanned as a root by
/// every cycle, inside the pauses too.
static TABLE_MEM: AtomicUsize = AtomicUsize::new(0);
static TABLE: TableRef = TableRef;

struct TableRef;

impl core::ops::Deref for TableRef {
    type Target = Table;
    #[inline]
    fn deref(&self) -> &Table {
        let p = TABLE_MEM.load(Acquire) as *const Table;
        if p.is_null() {
            crate::sys::fatal::fatal("stop table used before install_handler", None);
        }
        // SAFETY: a zeroed mapping of size_of::<Table>() (all atomics, for
        // which zero is valid), never unmapped.
        unsafe { &*p }
    }
}

thread_local! {
    /// Set by the handler when it finds the thread inside the allocator.
    static PENDING: Cell<bool> = const { Cell::new(false) };
}

extern "C" {
    fn magpie_in_alloc_window(ip: usize) -> i32;
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Installs the stop signal's handler (once, at collector start-up).
pub fn install_handler() -> bool {
    if TABLE_MEM.load(Acquire) == 0 {
        let p = os::map_owned(core::mem::size_of::<Table>());
        if p.is_null() {
            return false;
        }
        TABLE_MEM.store(p as usize, Release);
    }
    // SAFETY: a zeroed sigaction is valid; we fill handler, flags and mask.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        libc::sigaction(SIGNAL, &sa, core::ptr::null_mut()) == 0
    }
}

extern "C" fn handler(_sig: i32, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: reading and restoring errno of this thread.
    let saved = unsafe { *libc::__errno_location() };
    if STOPPING.load(Acquire) {
        // SAFETY: the kernel passes a valid ucontext to SA_SIGINFO handlers.
        let ip = unsafe {
            (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize]
        } as usize;
        // SAFETY: a plain table lookup.
        if unsafe { magpie_in_alloc_window(ip) } != 0 {
            // One store away from consistent: let it run; the collector re-sends.
        } else if crate::alloc::guard::inside() {
            PENDING.with(|p| p.set(true));
            mark_deferred();
        } else {
            let here = 0usize;
            park(&here as *const usize as usize);
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

fn mark_deferred() {
    let tid = gettid();
    let n = TABLE.n.load(Acquire);
    if let Some(i) = (0..n).find(|&i| TABLE.tid[i].load(Relaxed) == tid) {
        TABLE.deferred[i].store(true, Relaxed);
    }
}

/// The slowest thread of the last stop: (tid, ns after the stop began it
/// acknowledged, whether it was first found inside the allocator).
pub fn slowest_of_last_stop() -> (i32, u64, bool) {
    let start = STOP_START.load(Relaxed);
    let mut best = (0, 0, false);
    for i in 0..TABLE.n.load(Acquire) {
        let t = TABLE.ack_ns[i].load(Relaxed).saturating_sub(start);
        if t >= best.1 {
            best = (
                TABLE.tid[i].load(Relaxed),
                t,
                TABLE.deferred[i].load(Relaxed),
            );
        }
    }
    best
}

static STOP_START: AtomicU64 = AtomicU64::new(0);

/// Called by the allocator when it leaves a slow path with a stop pending.
pub fn stop_if_pending() {
    if PENDING.with(|p| p.replace(false)) && STOPPING.load(Acquire) {
        park_here();
    }
}

/// Parks the calling thread outside a signal handler: spills callee-saved
/// registers to the stack first so the scan from here sees them.
#[inline(never)]
fn park_here() {
    let mut regs = [0usize; 6];
    spill_registers(&mut regs);
    let regs = core::hint::black_box(&regs);
    park(regs.as_ptr() as usize);
}

fn park(sp: usize) {
    let tid = gettid();
    let epoch = EPOCH.load(Acquire);
    if epoch & 1 == 0 {
        return;
    }
    let n = TABLE.n.load(Acquire);
    if let Some(i) = (0..n).find(|&i| TABLE.tid[i].load(Relaxed) == tid) {
        if !TABLE.acked[i].load(Relaxed) {
            TABLE.sp[i].store(sp, Relaxed);
            TABLE.ack_ns[i].store(os::now_ns(), Relaxed);
            TABLE.acked[i].store(true, Release);
            ACKS.fetch_add(1, Release);
            futex::wake(&ACKS, 1);
        }
    } else {
        // Not signalled by this stop (an old signal arriving late): nothing to do.
        return;
    }
    PARKED.fetch_add(1, AcqRel);
    while EPOCH.load(Acquire) == epoch {
        futex::wait(&EPOCH, epoch, None);
    }
    // Wake the others too: the collector's wake-all can be preempted by the
    // first thread it wakes (which has slept, so the scheduler favours it)
    // before it wakes the rest, and on a busy machine they would stay
    // parked until it runs again (measured: 4–6 ms restarts on 2 CPUs).
    futex::wake(&EPOCH, i32::MAX);
    if PARKED.fetch_sub(1, AcqRel) == 1 {
        futex::wake(&PARKED, i32::MAX);
    }
}

/// Lists the thread ids of the process into `out`; returns how many.
fn list_threads(out: &mut [i32]) -> usize {
    let mut n = 0;
    // SAFETY: raw open/getdents64/close on a directory fd; the buffer is ours.
    unsafe {
        let fd = libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return 0;
        }
        let mut buf = [0u8; 4096];
        loop {
            let len = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
            if len <= 0 {
                break;
            }
            let mut off = 0;
            while off < len as usize {
                // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                let name = &buf[off + 19..off + reclen];
                let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                if let Some((tid, used)) = os::parse_leading_u64(&name[..end]) {
                    if used == end && n < out.len() {
                        out[n] = tid as i32;
                        n += 1;
                    }
                }
                off += reclen;
            }
        }
        libc::close(fd);
    }
    n
}

/// True if thread `tid` has the stop signal blocked now (from its
/// `/proc/self/task/<tid>/status`). Some helper threads block every signal for
/// good (jemalloc's background thread in redis), and a thread glibc is still
/// creating has every signal blocked and may wait for a lock its stopped
/// creator holds: neither can answer a stop.
fn stop_signal_blocked_now(tid: i32) -> bool {
    let mut path = [0u8; 48];
    let mut w = crate::sys::fatal::StackBuf::<48>::new();
    let _ = core::fmt::Write::write_fmt(&mut w, format_args!("/proc/self/task/{tid}/status"));
    let n = w.as_bytes().len();
    path[..n].copy_from_slice(w.as_bytes());
    let Ok(cpath) = core::ffi::CStr::from_bytes_until_nul(&path[..n + 1]) else {
        return false;
    };
    let mut buf = [0u8; 2048];
    let Some(len) = os::read_file(cpath, &mut buf) else {
        return false;
    };
    let text = &buf[..len];
    let field = |name: &[u8]| -> Option<&[u8]> {
        let i = text.windows(name.len()).position(|x| x == name)? + name.len();
        let rest = &text[i..];
        let rest = &rest[rest.iter().position(|&c| c != b'\t' && c != b' ')?..];
        let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
        Some(&rest[..end])
    };
    let blocked = field(b"SigBlk:").map_or(false, |hex| {
        let mut v: u64 = 0;
        for &c in hex {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => break,
            };
            v = (v << 4) | d as u64;
        }
        v & (1u64 << (SIGNAL - 1)) != 0
    });
    blocked
}

/// How a stop ended.
pub enum Stopped {
    /// Every other thread is parked; their count.
    All(usize),
    /// A thread did not answer in time: the world was restarted.
    GaveUp,
}

/// Stops every thread but the caller. `timeout_ns` bounds the wait for
/// acknowledgements.
pub fn stop_world(timeout_ns: u64) -> Stopped {
    // Let the threads of the previous stop leave their handler first (a
    // concurrent cycle stops twice in quick succession). Bounded: a thread
    // descheduled for long only delays this stop, it cannot block it.
    wait_unparked(timeout_ns / 2, 1_000_000);
    let me = gettid();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    TABLE.n.store(0, Relaxed);
    ACKS.store(0, Relaxed);
    EPOCH.fetch_add(1, AcqRel); // odd: stopping
    STOPPING.store(true, Release);
    let start = os::now_ns();
    STOP_START.store(start, Relaxed);
    let mut tids = [0i32; 1024];
    let mut last_send = 0u64;
    let mut listed_after_acks = false;
    let mut checked_blocked = false;
    loop {
        // Add threads not seen yet and signal them.
        let mut added = 0;
        let mut chunk = 0;
        loop {
            let k = list_threads(&mut tids);
            for &t in &tids[..k] {
                let n = TABLE.n.load(Relaxed);
                if t == me
                    || super::parallel::is_helper(t)
                    || (0..n).any(|i| TABLE.tid[i].load(Relaxed) == t)
                {
                    continue;
                }
                if n == MAX_THREADS {
                    restart_world();
                    return Stopped::GaveUp;
                }
                TABLE.tid[n].store(t, Relaxed);
                TABLE.sp[n].store(0, Relaxed);
                TABLE.acked[n].store(false, Relaxed);
                TABLE.ack_ns[n].store(0, Relaxed);
                TABLE.deferred[n].store(false, Relaxed);
                TABLE.n.store(n + 1, Release);
                // SAFETY: tgkill to a thread of this process.
                if unsafe { libc::syscall(libc::SYS_tgkill, pid, t, SIGNAL) } != 0 {
                    // Gone already: count it as stopped, with no stack.
                    TABLE.acked[n].store(true, Release);
                    ACKS.fetch_add(1, Release);
                }
                added += 1;
            }
            chunk += 1;
            if k < tids.len() || chunk > 64 {
                break;
            }
        }
        let n = TABLE.n.load(Acquire) as u32;
        let acks = ACKS.load(Acquire);
        // Done only when a listing made after every listed thread stopped
        // finds no new thread: a thread may clone() a child between our
        // listing and its own stop, and that child must be stopped too.
        if acks == n {
            if added == 0 && listed_after_acks {
                BLOCKED_TID.store(0, Relaxed);
                return Stopped::All(n as usize);
            }
            listed_after_acks = true;
            continue;
        }
        listed_after_acks = false;
        let now = os::now_ns();
        if now - start > timeout_ns {
            report_unstopped_once();
            restart_world();
            return Stopped::GaveUp;
        }
        // A thread still silent after 20 ms with the stop signal blocked will
        // not answer (a thread just leaving the previous stop's handler has
        // answered by then): give up now rather than after the full timeout.
        if now - start > 20_000_000 && !checked_blocked {
            checked_blocked = true;
            for i in 0..n as usize {
                let tid = TABLE.tid[i].load(Relaxed);
                if !TABLE.acked[i].load(Acquire) && stop_signal_blocked_now(tid) {
                    // Threads block signals for a moment (glibc while it
                    // creates a thread, git and dash around fork and vfork,
                    // slow under load): say so only when the same thread has
                    // been found blocking it at every attempt for a second:
                    // no stop succeeded meanwhile (that resets BLOCKED_TID)
                    // and no two attempts were further apart than
                    // BLOCKED_GAP_NS (else these are separate blocks).
                    let last = BLOCKED_LAST_NS.swap(now, Relaxed);
                    if BLOCKED_TID.swap(tid, Relaxed) != tid || now - last > BLOCKED_GAP_NS {
                        BLOCKED_SINCE_NS.store(now, Relaxed);
                    } else if now - BLOCKED_SINCE_NS.load(Relaxed) > 1_000_000_000 {
                        report_once(tid, "blocks the stop signal");
                    }
                    restart_world();
                    return Stopped::GaveUp;
                }
            }
        }
        // Re-send to threads that have not answered (lost signals, threads
        // let run out of an allocation window) every 200 µs.
        if now - last_send > 200_000 {
            last_send = now;
            for i in 0..n as usize {
                if !TABLE.acked[i].load(Acquire) {
                    // SAFETY: as above.
                    if unsafe {
                        libc::syscall(libc::SYS_tgkill, pid, TABLE.tid[i].load(Relaxed), SIGNAL)
                    } != 0
                    {
                        TABLE.acked[i].store(true, Release);
                        ACKS.fetch_add(1, Release);
                    }
                }
            }
        }
        // Acknowledgements usually come within tens of µs: spin that long
        // first (waking from a futex wait costs about as much again).
        let spin_until = os::now_ns() + ACK_SPIN_NS;
        while ACKS.load(Acquire) == acks && os::now_ns() < spin_until {
            core::hint::spin_loop();
        }
        if ACKS.load(Acquire) == acks {
            futex::wait(&ACKS, acks, Some(50_000));
        }
    }
}

/// How long `stop_world` polls for acknowledgements before it sleeps.
const ACK_SPIN_NS: u64 = 30_000;

/// The thread whose blocked stop signal made the stops since the last
/// successful one give up (0: none), when it first did, and when last.
static BLOCKED_TID: AtomicI32 = AtomicI32::new(0);
static BLOCKED_SINCE_NS: AtomicU64 = AtomicU64::new(0);
static BLOCKED_LAST_NS: AtomicU64 = AtomicU64::new(0);
/// Give-ups on the same thread further apart than this are separate blocks.
/// The collector retries a paced cycle 100 ms after giving one up.
const BLOCKED_GAP_NS: u64 = 500_000_000;

/// Says, once per process, why a cycle was given up.
fn report_once(tid: i32, why: &str) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if !REPORTED.swap(true, Relaxed) {
        let mut w = crate::sys::fatal::StackBuf::<48>::new();
        let _ = core::fmt::Write::write_fmt(&mut w, format_args!("/proc/self/task/{tid}/comm\0"));
        let mut name = [0u8; 32];
        let n = core::ffi::CStr::from_bytes_until_nul(w.as_bytes())
            .ok()
            .and_then(|p| os::read_file(p, &mut name))
            .unwrap_or(0);
        let name = core::str::from_utf8(&name[..n]).unwrap_or("?").trim_end();
        crate::sys::fatal::warn(format_args!(
            "collection given up: thread {tid} ({name}) {why} (signal {SIGNAL}); nothing is freed while that lasts (MAGPIE_STOP_TIMEOUT_MS, MAGPIE_GC=off)"
        ));
    }
}

fn report_unstopped_once() {
    for i in 0..TABLE.n.load(Acquire) {
        if !TABLE.acked[i].load(Acquire) {
            report_once(TABLE.tid[i].load(Relaxed), "did not stop in time");
            return;
        }
    }
}

/// In a fork child: no thread is parked or stopping (the parent's
/// collector may have been in the middle of a stop).
pub fn reset_after_fork() {
    STOPPING.store(false, Relaxed);
    PARKED.store(0, Relaxed);
    let e = EPOCH.load(Relaxed);
    if e & 1 == 1 {
        EPOCH.store(e + 1, Relaxed);
    }
    PENDING.with(|p| p.set(false));
}

/// Restarts every parked thread, then waits (at most `RESTART_LEND_NS`)
/// until they have all left their handler: the collector's CPU goes to the
/// program's threads first. Without the wait the collector ran on into its
/// next phase and, on two CPUs shared with two busy program threads, a
/// restarted thread waited a time slice or two for a CPU: the pause
/// benchmark's probe saw 5.4–8.0 ms stop gaps where magpie's own pauses
/// were under 0.9 ms; with it, 1.0–4.5 ms (three interleaved pairs at 1 GiB).
pub fn restart_world() {
    STOPPING.store(false, Release);
    EPOCH.fetch_add(1, AcqRel); // even: running
    futex::wake(&EPOCH, i32::MAX);
    wait_unparked(RESTART_LEND_NS, RESTART_LEND_NS / 4);
}

/// Longest wait of [`restart_world`] for the restarted threads to run.
const RESTART_LEND_NS: u64 = 2_000_000;

/// Waits until no thread is left in the stop handler (`PARKED` is 0) or
/// `max_ns` have passed, checking again every `recheck_ns`.
fn wait_unparked(max_ns: u64, recheck_ns: u64) {
    futex::wait_until(&PARKED, recheck_ns, |_| max_ns, |p| p == 0);
}

/// Whether a stop of the world has recorded stack pointers (see
/// [`for_each_stopped`]).
pub fn have_stack_pointers() -> bool {
    (0..TABLE.n.load(Acquire)).any(|i| TABLE.sp[i].load(Relaxed) != 0)
}

/// The stack pointers recorded by the stopped threads (0 for threads that
/// exited before answering): of the current stop, or between stops, of the
/// last one (a concurrent mark's head start, see `cycle`).
pub fn for_each_stopped(mut f: impl FnMut(i32, usize)) {
    for i in 0..TABLE.n.load(Acquire) {
        f(TABLE.tid[i].load(Relaxed), TABLE.sp[i].load(Relaxed));
    }
}

/// The calling thread's stack pointer after spilling its callee-saved
/// registers into the returned array (which the caller keeps alive while
/// scanning from its address).
#[inline(always)]
pub fn spill_registers(regs: &mut [usize; 6]) {
    // SAFETY: stores the six callee-saved registers into the array.
    unsafe {
        core::arch::asm!(
            "mov [{r}], rbx", "mov [{r} + 8], rbp", "mov [{r} + 16], r12",
            "mov [{r} + 24], r13", "mov [{r} + 32], r14", "mov [{r} + 40], r15",
            r = in(reg) regs.as_mut_ptr(), options(nostack, preserves_flags),
        );
    }
}

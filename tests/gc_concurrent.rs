//! Concurrent marking (MAGPIE_CONCURRENT=1, the default where userfaultfd
//! write-protection works): mutators move the only reference to an object
//! while cycles mark — between two heap objects, from the heap to a stack and
//! back, from one thread to another through a queue, into a freshly
//! allocated object, and through a pipe whose `read(2)` has the kernel write
//! it into a heap buffer. A churn thread allocates garbage so that
//! MAGPIE_GC_STRESS runs cycles all the time (hundreds per scenario). Every
//! object carries a tag and a payload derived from it: if the collector ever
//! freed a live object, its memory would be reused and the check would fail.
//!
//! Also: the same scenarios with stop-the-world marking (MAGPIE_CONCURRENT=0),
//! the fallback when no dirty-page source exists (MAGPIE_DIRTY=none, and a
//! seccomp filter that denies userfaultfd), and the statistics (MAGPIE_STATS).

#[global_allocator]
static A: magpie::Magpie = magpie::Magpie;

mod common;

use magpie::Gc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

struct Node {
    tag: u64,
    payload: [u64; 6],
}

fn node(tag: u64) -> Gc<Node> {
    Gc::new(Node {
        tag,
        payload: [tag.wrapping_mul(0x9E37_79B9_7F4A_7C15); 6],
    })
}

/// The node at address `p` must still be the one tagged `tag`.
fn check(p: usize, tag: u64) {
    assert!(
        magpie::debug::is_allocated(p),
        "object lost: freed by the collector"
    );
    // SAFETY: p is a Gc<Node> the scenario keeps reachable; if the collector
    // wrongly freed it, this reads reused memory (still mapped) and fails.
    let n = unsafe { &*(p as *const Node) };
    assert_eq!(n.tag, tag, "object lost: tag changed");
    assert!(
        n.payload
            .iter()
            .all(|&w| w == tag.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        "object lost: payload changed"
    );
}

/// A heap cell: a leaked Box (scanned: align 8), reached from a static.
fn heap_cell() -> &'static AtomicUsize {
    Box::leak(Box::new(AtomicUsize::new(0)))
}

/// A heap cell the marker reaches late: at the end of a chain of 20,000
/// heap links hanging from a static, while `heap_cell`s hang from statics
/// directly. A reference moved from a near cell into a far one after the
/// near one was scanned, and before the far one is, is found only because
/// the write to the far cell's page is tracked.
fn far_cell() -> &'static AtomicUsize {
    struct Link {
        _next: usize,
        cell: AtomicUsize,
    }
    let mut head = 0usize;
    let mut last = 0usize;
    for i in 0..20_000 {
        let l = Box::into_raw(Box::new(Link {
            _next: head,
            cell: AtomicUsize::new(0),
        }));
        if i == 0 {
            last = l as usize;
        }
        head = l as usize;
    }
    static CHAIN: AtomicUsize = AtomicUsize::new(0);
    CHAIN.store(head, SeqCst);
    // SAFETY: `last` is the first link made, now at the chain's end; links
    // are never freed.
    unsafe { &(*(last as *const Link)).cell }
}

/// The address of a far cell, masked: a static holding it plainly would be a
/// root pointing straight at it, and the marker would reach it early.
#[derive(Clone, Copy)]
struct Hidden(usize);

impl Hidden {
    const MASK: usize = 0x5A5A_A5A5_5A5A_A5A5;
    fn new(c: &'static AtomicUsize) -> Hidden {
        Hidden(c as *const AtomicUsize as usize ^ Self::MASK)
    }
    fn get(self) -> &'static AtomicUsize {
        // SAFETY: made from a &'static by `new`.
        unsafe { &*((self.0 ^ Self::MASK) as *const AtomicUsize) }
    }
}

/// Allocates the round's object straight into `cell`, in a frame of its own
/// (no copy of the pointer stays in the caller's frame, which the collector
/// would scan as part of the live stack).
#[inline(never)]
fn plant(cell: &AtomicUsize, tag: u64) {
    cell.store(Gc::as_ptr(node(tag)) as usize, SeqCst);
    if tag == 3 && std::env::var_os("XEXPLAIN").is_some() {
        magpie::debug::explain_retention(Some(cell.load(SeqCst)));
    }
}

/// Moves `from`'s reference into `to`, in a frame of its own (see `plant`).
#[inline(never)]
fn move_cell(from: &AtomicUsize, to: &AtomicUsize) {
    to.store(from.swap(0, SeqCst), SeqCst);
}

/// Checks the object in `cell`, in a frame of its own (see `plant`).
#[inline(never)]
fn check_cell(cell: &AtomicUsize, tag: u64) {
    check(cell.load(SeqCst), tag);
}

/// Overwrites the stack below the caller: frames that held the pointer
/// (allocation, checks) leave copies there, and a later deeper call that
/// does not overwrite them would make them live again for the scan.
#[inline(never)]
fn scrub() {
    std::hint::black_box([0u64; 4096]);
}

/// Work between moves, so the reference spends most of its time in the
/// cells rather than in this thread's registers.
fn work() {
    for _ in 0..10 {
        std::hint::black_box(vec![0u8; 40]);
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
static MOVES: AtomicUsize = AtomicUsize::new(0);

/// Allocates garbage until STOP, so GC stress keeps cycles running.
fn churn() {
    while !STOP.load(Relaxed) {
        let g: Vec<Gc<Node>> = (0..2000u64).map(node).collect();
        std::hint::black_box(&g);
        std::mem::forget(vec![7u8; 512]);
    }
}

/// Runs `mover` (given a fresh tag each round) beside a churn thread for
/// `secs` seconds, then checks enough cycles ran.
fn run_scenario(secs: u64, mover: impl Fn(u64) + Send + Sync) {
    let c = std::thread::spawn(churn);
    let start = Instant::now();
    let cycles0 = magpie::stats().gc.cycles;
    let mut round = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        round += 1;
        mover(round);
    }
    STOP.store(true, Relaxed);
    c.join().unwrap();
    let g = magpie::stats().gc;
    let cycles = g.cycles - cycles0;
    println!(
        "rounds {round}, moves {}, cycles {cycles}, concurrent {}, source {}, absent pages not read {}, throttled rounds {}, hard throttles {}, sweep-termination stops {}, helpers marked {}",
        MOVES.load(Relaxed),
        g.last_cycle_concurrent,
        g.dirty_source,
        g.absent_pages_skipped,
        g.throttled_rounds,
        g.hard_throttles,
        g.sweep_termination.count,
        g.helper_marked_objects
    );
    assert!(cycles >= 100, "only {cycles} cycles ran");
}

fn scenario_heap_to_heap(round: u64) {
    static CELLS: std::sync::OnceLock<(&'static AtomicUsize, Hidden)> = std::sync::OnceLock::new();
    let (a, b) = *CELLS.get_or_init(|| (heap_cell(), Hidden::new(far_cell())));
    let b = b.get();
    b.store(0, SeqCst);
    plant(a, round);
    scrub();
    for i in 0..20_000 {
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        move_cell(from, to);
        work();
        MOVES.fetch_add(1, Relaxed);
        if i % 64 == 63 {
            check_cell(to, round);
            scrub();
        }
    }
}

/// Pages of a big buffer the marker skips (`gc::backed`: it reads only the
/// pages the kernel has data for): the buffer hangs from a near cell, so it
/// is marked early, while its pages are dropped; the reference then moves
/// from a far cell (reached late) into one of those pages, whose first write
/// comes after the marker asked. Only the dirty-page rescan can find it.
fn scenario_into_untouched_pages(round: u64) {
    const PAGES: usize = 64;
    const WORDS: usize = PAGES * 512;
    static CELLS: std::sync::OnceLock<(&'static AtomicUsize, Hidden)> = std::sync::OnceLock::new();
    let (near, far) = *CELLS.get_or_init(|| (heap_cell(), Hidden::new(far_cell())));
    let far = far.get();
    if near.load(SeqCst) == 0 {
        // 256 KiB of words: a large object, scanned (align 8), page aligned.
        let buf: Box<[usize]> = vec![0usize; WORDS].into_boxed_slice();
        near.store(Box::into_raw(buf) as *mut usize as usize, SeqCst);
    }
    let buf = near.load(SeqCst) as *mut usize;
    let drop_page = |k: usize| {
        // SAFETY: page k of the buffer, ours; it holds no reference now
        // (dropped pages read back as zeros).
        let r = unsafe { libc::madvise(buf.add(k * 512).cast(), 4096, libc::MADV_DONTNEED) };
        assert_eq!(r, 0);
    };
    for k in 0..PAGES {
        drop_page(k);
    }
    far.store(0, SeqCst);
    plant(far, round);
    scrub();
    for i in 0..4_000 {
        let k = (i * 7) % PAGES;
        let slot = (k * 512 + i % 512) as isize;
        into_page(far, buf, slot);
        work();
        out_of_page(far, buf, slot);
        drop_page(k);
        work();
        MOVES.fetch_add(1, Relaxed);
        if i % 64 == 63 {
            check_cell(far, round);
            scrub();
        }
    }
    check(far.load(SeqCst), round);
}

/// Moves the cell's reference into word `slot` of `buf` (see `plant` for
/// why a frame of its own).
#[inline(never)]
fn into_page(cell: &AtomicUsize, buf: *mut usize, slot: isize) {
    // SAFETY: slot lies inside the live buffer.
    unsafe { core::ptr::write_volatile(buf.offset(slot), cell.swap(0, SeqCst)) };
}

/// Moves word `slot` of `buf` back into the cell.
#[inline(never)]
fn out_of_page(cell: &AtomicUsize, buf: *mut usize, slot: isize) {
    // SAFETY: slot lies inside the live buffer.
    unsafe {
        cell.store(core::ptr::read_volatile(buf.offset(slot)), SeqCst);
        core::ptr::write_volatile(buf.offset(slot), 0);
    }
}

fn scenario_heap_to_stack(round: u64) {
    static CELL: std::sync::OnceLock<&'static AtomicUsize> = std::sync::OnceLock::new();
    let a = *CELL.get_or_init(heap_cell);
    a.store(Gc::as_ptr(node(round)) as usize, SeqCst);
    for i in 0..2_000 {
        // Out of the heap onto this stack (an array the compiler must keep
        // in memory), some work, and back.
        let mut slot = [0usize; 4];
        slot[i % 4] = a.swap(0, SeqCst);
        let slot = std::hint::black_box(slot);
        for _ in 0..50 {
            std::hint::black_box(vec![0u8; 24]);
        }
        a.store(slot[i % 4], SeqCst);
        MOVES.fetch_add(1, Relaxed);
    }
    check(a.load(SeqCst), round);
}

fn scenario_queue_between_threads(round: u64) {
    let (to_b, from_a) = std::sync::mpsc::sync_channel::<usize>(4);
    let (to_a, from_b) = std::sync::mpsc::sync_channel::<usize>(4);
    let b = std::thread::spawn(move || {
        while let Ok(p) = from_a.recv() {
            for _ in 0..20 {
                std::hint::black_box(vec![0u8; 40]);
            }
            if to_a.send(p).is_err() {
                break;
            }
        }
    });
    let mut p = Gc::as_ptr(node(round)) as usize;
    for i in 0..2_000 {
        to_b.send(p).unwrap();
        p = 0;
        p = std::hint::black_box(p) | from_b.recv().unwrap();
        MOVES.fetch_add(1, Relaxed);
        if i % 100 == 0 {
            check(p, round);
        }
    }
    drop(to_b);
    b.join().unwrap();
    check(p, round);
}

fn scenario_into_fresh_object(round: u64) {
    static CELL: std::sync::OnceLock<&'static AtomicUsize> = std::sync::OnceLock::new();
    let holder = *CELL.get_or_init(heap_cell);
    let first: Box<[usize; 8]> = Box::new([Gc::as_ptr(node(round)) as usize; 8]);
    holder.store(Box::into_raw(first) as usize, SeqCst);
    for i in 0..5_000 {
        // SAFETY: holder always points to a live Box<[usize; 8]>.
        let old = unsafe { Box::from_raw(holder.load(SeqCst) as *mut [usize; 8]) };
        let mut fresh: Box<[usize; 8]> = Box::new([0; 8]);
        fresh[i % 8] = old[(i + 7) % 8];
        holder.store(Box::into_raw(fresh) as usize, SeqCst);
        drop(old);
        MOVES.fetch_add(1, Relaxed);
    }
    // SAFETY: as above.
    let last = unsafe { Box::from_raw(holder.load(SeqCst) as *mut [usize; 8]) };
    check(last[(5_000 - 1) % 8], round);
    holder.store(0, SeqCst);
}

fn scenario_through_a_pipe(round: u64) {
    static CELL: std::sync::OnceLock<&'static AtomicUsize> = std::sync::OnceLock::new();
    let cell = *CELL.get_or_init(heap_cell);
    let mut fds = [0i32; 2];
    // The buffer hangs at the end of a long chain (see far_cell).
    static BUF: std::sync::OnceLock<Hidden> = std::sync::OnceLock::new();
    let far = BUF.get_or_init(|| Hidden::new(far_cell())).get();
    // SAFETY: plain pipe creation.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // The heap buffer the kernel writes into: its only job is to hold the
    // pointer read(2) puts there.
    if far.load(SeqCst) == 0 {
        far.store(Box::into_raw(Box::new([0usize; 16])) as usize, SeqCst);
    }
    let buf_addr = far.load(SeqCst);
    plant(cell, round);
    scrub();
    for i in 0..2_000 {
        pipe_out_and_in(
            cell,
            fds,
            (buf_addr as *mut usize).wrapping_add(i % 16) as usize,
        );
        work();
        pipe_back(cell, (buf_addr as *mut usize).wrapping_add(i % 16) as usize);
        work();
        MOVES.fetch_add(1, Relaxed);
        if i % 100 == 99 {
            check_cell(cell, round);
            scrub();
        }
    }
    check(cell.load(SeqCst), round);
    // SAFETY: closing our pipe.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

/// The cell's reference goes through the pipe into the heap slot `dst`
/// (written by the kernel in read(2)), then the cell is cleared: the slot
/// holds the only reference.
#[inline(never)]
fn pipe_out_and_in(cell: &AtomicUsize, fds: [i32; 2], dst: usize) {
    let p = cell.load(SeqCst);
    // SAFETY: writes the 8 bytes of p into our pipe, then reads them into
    // the heap slot dst (inside a live 16-word buffer).
    unsafe {
        assert_eq!(libc::write(fds[1], (&p as *const usize).cast(), 8), 8);
        assert_eq!(libc::read(fds[0], dst as *mut libc::c_void, 8), 8);
    }
    cell.store(0, SeqCst);
}

/// Moves the reference from heap slot `src` back into the cell.
#[inline(never)]
fn pipe_back(cell: &AtomicUsize, src: usize) {
    // SAFETY: src is a slot of the live buffer.
    unsafe {
        cell.store(core::ptr::read_volatile(src as *const usize), SeqCst);
        core::ptr::write_volatile(src as *mut usize, 0);
    }
}

fn scenario_of(name: &str) -> fn(u64) {
    match name {
        "heap_to_heap" => scenario_heap_to_heap,
        "heap_to_stack" => scenario_heap_to_stack,
        "queue_between_threads" => scenario_queue_between_threads,
        "into_fresh_object" => scenario_into_fresh_object,
        "through_a_pipe" => scenario_through_a_pipe,
        "into_untouched_pages" => scenario_into_untouched_pages,
        _ => panic!("unknown scenario {name}"),
    }
}

/// In the child: runs the scenario named by GC_SCENARIO. In the parent:
/// runs this test again as that child with `env` and checks it passed.
fn run(test: &str, scenario: &str, env: &[(&str, &str)]) {
    if let Ok(s) = std::env::var("GC_SCENARIO") {
        run_scenario(3, scenario_of(&s));
        magpie::debug::verify_heap().expect("verify_heap");
        println!("SCENARIO OK");
        return;
    }
    let mut all = vec![
        ("GC_SCENARIO", scenario),
        ("MAGPIE_GC", "collect"),
        ("MAGPIE_GC_STRESS", "3000"),
    ];
    all.extend_from_slice(env);
    let (out, killed) = common::reexec_timeout(
        &all,
        &[test, "--exact", "--nocapture", "--test-threads=1"],
        120,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !killed && out.status.success() && stdout.contains("SCENARIO OK"),
        "{test}: child failed ({:?}, killed {killed})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    if env.iter().any(|&(k, _)| k == "MAGPIE_PAUSE_TARGET_US") {
        // A pause target no termination meets: rounds run with allocation
        // throttled, and the moves stay correct through them.
        assert!(
            !stdout.contains("throttled rounds 0\n"),
            "{test}: allocation was never throttled:\n{stdout}"
        );
    }
    if env.contains(&("MAGPIE_DEBUG_HARD_THROTTLE", "1")) {
        assert!(
            !stdout.contains("hard throttles 0,"),
            "{test}: the throttle was never hard:\n{stdout}"
        );
    }
    if env.contains(&("MAGPIE_DEBUG_MARK_CONCURRENTLY", "1")) {
        assert!(
            !stdout.contains("helpers marked 0\n"),
            "{test}: the helpers marked nothing:\n{stdout}"
        );
    }
    let concurrent = !env
        .iter()
        .any(|&(k, v)| (k == "MAGPIE_CONCURRENT" && v == "0") || k == "MAGPIE_DIRTY");
    if concurrent {
        assert!(
            stdout.contains("concurrent true"),
            "{test}: cycles were not concurrent:\n{stdout}"
        );
        // A concurrent mark starts without stopping the world (`gc::cycle`),
        // but for the process's first, which takes the stack pointers.
        assert!(
            stdout.contains("sweep-termination stops 0,")
                || stdout.contains("sweep-termination stops 1,"),
            "{test}: sweep terminations stopped the world:\n{stdout}"
        );
    } else {
        assert!(
            stdout.contains("concurrent false"),
            "{test}: cycles were concurrent:\n{stdout}"
        );
    }
}

macro_rules! scenarios {
    ($($name:ident: $scenario:literal, $env:expr;)*) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name), $scenario, $env);
            }
        )*
    };
}

scenarios! {
    move_between_heap_objects: "heap_to_heap", &[];
    move_heap_to_stack_and_back: "heap_to_stack", &[];
    move_between_threads_through_a_queue: "queue_between_threads", &[];
    move_into_fresh_objects: "into_fresh_object", &[];
    move_through_a_pipe_into_a_heap_buffer: "through_a_pipe", &[];
    move_into_pages_the_marker_skipped: "into_untouched_pages", &[];
    stop_the_world_move_into_untouched_pages: "into_untouched_pages", &[("MAGPIE_CONCURRENT", "0")];
    stop_the_world_move_between_heap_objects: "heap_to_heap", &[("MAGPIE_CONCURRENT", "0")];
    stop_the_world_move_through_a_pipe: "through_a_pipe", &[("MAGPIE_CONCURRENT", "0")];
    no_dirty_source_falls_back: "into_fresh_object", &[("MAGPIE_DIRTY", "none")];
    throttled_rounds_move_between_heap_objects: "heap_to_heap", &[("MAGPIE_PAUSE_TARGET_US", "10")];
    throttled_rounds_move_between_threads: "queue_between_threads", &[("MAGPIE_PAUSE_TARGET_US", "10")];
    // Allocating threads held until each precleaning pass ends (the hard
    // throttle, normally only after a stalled pass).
    hard_throttle_move_between_heap_objects: "heap_to_heap", &[("MAGPIE_PAUSE_TARGET_US", "10"), ("MAGPIE_DEBUG_HARD_THROTTLE", "1")];
    hard_throttle_move_between_threads: "queue_between_threads", &[("MAGPIE_PAUSE_TARGET_US", "10"), ("MAGPIE_DEBUG_HARD_THROTTLE", "1")];
    // Four markers share each final rescan of the written pages (as pieces
    // on their stacks); with an 8-entry mark stack the pieces that do not
    // fit are scanned at once (a dropped one would lose fresh objects).
    parallel_rescan_move_into_fresh_objects: "into_fresh_object", &[("MAGPIE_MARKERS", "4"), ("MAGPIE_DEBUG_MARK_STACK", "8")];
    parallel_rescan_move_between_heap_objects: "heap_to_heap", &[("MAGPIE_MARKERS", "4"), ("MAGPIE_DEBUG_MARK_STACK", "8")];
    parallel_rescan_move_through_a_pipe: "through_a_pipe", &[("MAGPIE_MARKERS", "4"), ("MAGPIE_DEBUG_MARK_STACK", "8")];
    parallel_stop_the_world_move_between_threads: "queue_between_threads", &[("MAGPIE_MARKERS", "4"), ("MAGPIE_CONCURRENT", "0")];
    // Program threads sweeping for the allocator pause 500 µs between
    // claiming a span and sweeping it, so a sweep of the last pass is often
    // still running when the next mark starts (without a stop since session
    // 11): the mark must wait for it, or the sweep clears its marks.
    late_sweeps_move_between_heap_objects: "heap_to_heap", &[("MAGPIE_DEBUG_SLOW_SWEEP", "500")];
    late_sweeps_move_into_fresh_objects: "into_fresh_object", &[("MAGPIE_DEBUG_SLOW_SWEEP", "500")];
    late_sweeps_move_between_threads: "queue_between_threads", &[("MAGPIE_DEBUG_SLOW_SWEEP", "500")];
    // Helpers mark beside the program's threads in every concurrent mark (as
    // they do when a throttled thread lends its CPU).
    helpers_marking_concurrently_move_between_heap_objects: "heap_to_heap", &[("MAGPIE_MARKERS", "3"), ("MAGPIE_DEBUG_MARK_CONCURRENTLY", "1")];
    helpers_marking_concurrently_move_into_fresh_objects: "into_fresh_object", &[("MAGPIE_MARKERS", "3"), ("MAGPIE_DEBUG_MARK_CONCURRENTLY", "1")];
    helpers_marking_concurrently_move_through_a_pipe: "through_a_pipe", &[("MAGPIE_MARKERS", "3"), ("MAGPIE_DEBUG_MARK_CONCURRENTLY", "1")];
    helpers_marking_concurrently_move_between_threads: "queue_between_threads", &[("MAGPIE_MARKERS", "3"), ("MAGPIE_DEBUG_MARK_CONCURRENTLY", "1")];
}

/// MAGPIE_STATS=json: one JSON object on the last line of stderr, with the
/// concurrent-marking figures.
#[test]
fn stats_as_json() {
    if std::env::var_os("JSON_CHILD").is_some() {
        for _ in 0..20 {
            let g: Vec<Gc<Node>> = (0..5000u64).map(node).collect();
            std::hint::black_box(&g);
            assert!(magpie::collect());
        }
        return;
    }
    let out = common::reexec(
        &[
            ("JSON_CHILD", "1"),
            ("MAGPIE_GC", "collect"),
            ("MAGPIE_STATS", "json"),
        ],
        &["stats_as_json", "--exact", "--test-threads=1"],
    );
    assert!(out.status.success(), "{:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().last().unwrap_or("");
    assert!(is_json_object(line), "not one JSON object: {line}");
    for key in [
        "\"gc\":{\"mode\":\"collect\"",
        "\"concurrent\":true",
        "\"dirty_source\":\"uffd-wp-async\"",
        "\"sweep_termination\":{\"count\":",
        "\"mark_termination\":{\"count\":",
        "\"rounds\":",
        "\"dirty_pages\":",
        "\"precleaned_pages\":",
        "\"throttled_rounds\":",
        "\"mark_stack_peak\":",
        "\"classes\":[{\"size\":",
    ] {
        assert!(line.contains(key), "{key} missing from {line}");
    }
}

/// A minimal check that `s` is one JSON object: balanced braces and
/// brackets outside strings, starting with `{` and ending with its `}`.
fn is_json_object(s: &str) -> bool {
    let s = s.trim();
    if !s.starts_with('{') {
        return false;
    }
    let mut depth = 0i32;
    let mut in_str = false;
    for (i, c) in s.char_indices() {
        match (in_str, c) {
            (true, '"') => in_str = false,
            (true, _) => {}
            (false, '"') => in_str = true,
            (false, '{' | '[') => depth += 1,
            (false, '}' | ']') => {
                depth -= 1;
                if depth == 0 && i + 1 != s.len() {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0 && !in_str
}

/// A seccomp filter that makes userfaultfd(2) fail with EPERM (as container
/// runtimes' default profiles do): magpie must fall back to marking with the
/// world stopped, say why in its statistics, and stay correct.
#[test]
fn userfaultfd_denied_by_seccomp_falls_back() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GC_SCENARIO").is_some() {
        run_scenario(3, scenario_of("into_fresh_object"));
        println!("SCENARIO OK");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut c = std::process::Command::new(exe);
    c.args([
        "userfaultfd_denied_by_seccomp_falls_back",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("GC_SCENARIO", "into_fresh_object")
    .env("MAGPIE_GC", "collect")
    .env("MAGPIE_GC_STRESS", "3000")
    .env("MAGPIE_STATS", "1");
    // SAFETY: only async-signal-safe calls (prctl) between fork and exec.
    unsafe {
        c.pre_exec(|| {
            const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
            const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
            const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
            let filter = [
                // arch == x86-64, else allow (the test runs on x86-64 only)
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 4,
                },
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 3,
                    k: AUDIT_ARCH_X86_64,
                },
                // nr == userfaultfd: EPERM
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_userfaultfd as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const _,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("SCENARIO OK"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("concurrent false"), "{stdout}");
    assert!(
        stderr.contains("marking     with the world stopped by ")
            && stderr.contains("dirty pages: none (userfaultfd:"),
        "the fallback is not reported:\n{stderr}"
    );
}

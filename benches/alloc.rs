//! In-process allocator benchmarks: magpie vs the system allocator (glibc).
//!
//! Both allocators are driven through `GlobalAlloc` by the same generic code
//! (monomorphised once per allocator); neither is installed as
//! `#[global_allocator]`, so the harness's own allocations (threads, output)
//! never touch the allocator under test. Each allocator call goes through one
//! non-inlined function, like `__rust_alloc` does for a real global allocator.
//!
//! Runs alternate magpie, system, magpie, system, ...; the table shows the
//! median of the runs. See `benches/README.md`.
//!
//!   cargo bench --bench alloc                    # full (~7 runs each, < 1 min)
//!   cargo bench --bench alloc -- --quick         # smoke (3 short runs each)
//!   cargo bench --bench alloc -- b c             # only benchmarks whose id starts with b or c
//!   BENCH_RUNS=11 cargo bench --bench alloc      # more runs
//!   cargo bench --bench alloc -- --verbose       # also print every run

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use magpie::Magpie;

// ---------------------------------------------------------------------------
// Allocator calls: one out-of-line call per operation, as through __rust_alloc.

#[inline(never)]
unsafe fn a_alloc<A: GlobalAlloc>(a: &A, l: Layout) -> *mut u8 {
    let p = unsafe { a.alloc(l) };
    if p.is_null() || (p as usize) & (l.align() - 1) != 0 {
        bad(&format!(
            "alloc({} B, align {}) returned {:p}",
            l.size(),
            l.align(),
            p
        ));
    }
    p
}

#[inline(never)]
unsafe fn a_dealloc<A: GlobalAlloc>(a: &A, p: *mut u8, l: Layout) {
    unsafe { a.dealloc(p, l) }
}

#[inline(never)]
unsafe fn a_realloc<A: GlobalAlloc>(a: &A, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
    let q = unsafe { a.realloc(p, l, new) };
    if q.is_null() || (q as usize) & (l.align() - 1) != 0 {
        bad(&format!(
            "realloc({:p}, {} -> {} B, align {}) returned {:p}",
            p,
            l.size(),
            new,
            l.align(),
            q
        ));
    }
    q
}

#[cold]
#[inline(never)]
fn bad(msg: &str) -> ! {
    eprintln!("BENCH CHECK FAILED: {msg}");
    std::process::exit(2)
}

// Every object gets a tag derived from its address in its first bytes, checked
// just before it is freed: two live objects that overlap, or an object whose
// contents were clobbered, fail the check. Cost is one store and one load per
// object, identical for both allocators.
const TAG: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline(always)]
unsafe fn put_tag(p: *mut u8, size: usize) {
    unsafe {
        if size >= 8 {
            (p as *mut u64).write_unaligned(p as u64 ^ TAG);
        } else {
            (p as *mut u32).write_unaligned(p as u32 ^ TAG as u32);
        }
    }
}

#[inline(always)]
unsafe fn check_tag(p: *mut u8, size: usize, what: &str) {
    let ok = unsafe {
        if size >= 8 {
            (p as *const u64).read_unaligned() == p as u64 ^ TAG
        } else {
            (p as *const u32).read_unaligned() == p as u32 ^ TAG as u32
        }
    };
    if !ok {
        bad(&format!(
            "{what}: object {p:p} ({size} B) lost its contents before free"
        ));
    }
}

#[inline(always)]
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Uniform in 0..n (multiply-high, no division).
#[inline(always)]
fn below(r: u64, n: usize) -> usize {
    (((r >> 32) * n as u64) >> 32) as usize
}

// ---------------------------------------------------------------------------
// The benchmarks. Each returns (elapsed, operations).

const SIZES_C: [usize; 4] = [16, 32, 48, 64];
const SIZES_TINY: [usize; 3] = [4, 8, 12];
const BATCH_A: usize = 100;

/// (a) `rounds` x { allocate 100 objects (sizes cycling), free them in order }.
/// One op = one alloc + free pair.
fn bench_pairs<A: GlobalAlloc>(
    a: &A,
    rounds: usize,
    sizes: &[usize],
    align: usize,
) -> (Duration, u64) {
    let mut ptrs = [std::ptr::null_mut::<u8>(); BATCH_A];
    let layouts: Vec<Layout> = (0..BATCH_A)
        .map(|i| Layout::from_size_align(sizes[i % sizes.len()], align).unwrap())
        .collect();
    let t = Instant::now();
    for _ in 0..rounds {
        for i in 0..BATCH_A {
            let l = layouts[i];
            unsafe {
                let p = a_alloc(a, l);
                put_tag(p, l.size());
                ptrs[i] = p;
            }
        }
        black_box(&mut ptrs);
        for i in 0..BATCH_A {
            let l = layouts[i];
            unsafe {
                check_tag(ptrs[i], l.size(), "pairs");
                a_dealloc(a, ptrs[i], l);
            }
        }
    }
    (t.elapsed(), (rounds * BATCH_A) as u64)
}

const LIVE_B: usize = 10_000;

/// (b) A live set of 10k objects of random sizes 8..=1024 (align 8); each step
/// frees a random one and allocates a new one of a random size in its place.
/// One op = one replacement (free + alloc). Filling and emptying are untimed.
fn bench_random<A: GlobalAlloc>(a: &A, steps: usize) -> (Duration, u64) {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut ptrs = vec![std::ptr::null_mut::<u8>(); LIVE_B];
    let mut sizes = vec![0u32; LIVE_B];
    let size = |r: u64| 8 + below(r, 1024 - 8 + 1);
    for i in 0..LIVE_B {
        let s = size(xorshift(&mut rng));
        unsafe {
            let p = a_alloc(a, Layout::from_size_align_unchecked(s, 8));
            put_tag(p, s);
            ptrs[i] = p;
        }
        sizes[i] = s as u32;
    }
    let t = Instant::now();
    for _ in 0..steps {
        let r = xorshift(&mut rng);
        let i = below(r, LIVE_B);
        let s = size(r << 32);
        unsafe {
            let old = sizes[i] as usize;
            check_tag(ptrs[i], old, "random");
            a_dealloc(a, ptrs[i], Layout::from_size_align_unchecked(old, 8));
            let p = a_alloc(a, Layout::from_size_align_unchecked(s, 8));
            put_tag(p, s);
            ptrs[i] = p;
        }
        sizes[i] = s as u32;
    }
    let el = t.elapsed();
    for i in 0..LIVE_B {
        unsafe {
            check_tag(ptrs[i], sizes[i] as usize, "random");
            a_dealloc(
                a,
                ptrs[i],
                Layout::from_size_align_unchecked(sizes[i] as usize, 8),
            );
        }
    }
    (el, steps as u64)
}

// (c) producer/consumer over a bounded single-producer single-consumer ring of
// batches of pointers. The ring lives on the stack; no allocation besides the
// objects themselves. Queue cost: two atomic index updates per 64 objects.
const BATCH_C: usize = 64;
const RING_C: usize = 256; // batches; 16384 objects in flight at most

#[repr(align(128))]
struct Padded(AtomicUsize);

struct Ring {
    head: Padded, // next batch to consume (written by the consumer)
    tail: Padded, // next batch to fill (written by the producer)
    slots: [UnsafeCell<[usize; BATCH_C]>; RING_C],
}
// SAFETY: slot i is written only by the producer before `tail` passes it and
// read only by the consumer before `head` passes it (acquire/release).
unsafe impl Sync for Ring {}

/// Waiting for the other side: spin briefly, then yield, then sleep in short
/// naps (the two threads may share one core on a busy machine).
#[cold]
fn wait(spins: &mut u32) {
    *spins += 1;
    if *spins < 100 {
        std::hint::spin_loop();
    } else if *spins < 120 {
        std::thread::yield_now();
    } else {
        std::thread::park_timeout(Duration::from_micros(50));
    }
}

/// One op = one object allocated by the producer and freed by the consumer;
/// time is wall time for the whole transfer.
fn bench_prodcons<A: GlobalAlloc + Sync>(a: &A, batches: usize) -> (Duration, u64) {
    let ring = Ring {
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
        slots: std::array::from_fn(|_| UnsafeCell::new([0; BATCH_C])),
    };
    let ready = AtomicBool::new(false);
    let layout =
        |k: usize| unsafe { Layout::from_size_align_unchecked(SIZES_C[k % SIZES_C.len()], 8) };
    let ring = &ring; // capture the whole ring (Sync), not its fields
    let mut el = Duration::ZERO;
    std::thread::scope(|sc| {
        let consumer = sc.spawn(|| {
            ready.store(true, Ordering::Release);
            for b in 0..batches {
                let mut spins = 0;
                while ring.tail.0.load(Ordering::Acquire) == b {
                    wait(&mut spins);
                }
                // SAFETY: the producer published slot b (tail > b) and will not
                // touch it again until head passes b.
                let slot = unsafe { &*ring.slots[b % RING_C].get() };
                for (k, &p) in slot.iter().enumerate() {
                    let l = layout(k);
                    unsafe {
                        check_tag(p as *mut u8, l.size(), "producer/consumer");
                        a_dealloc(a, p as *mut u8, l);
                    }
                }
                ring.head.0.store(b + 1, Ordering::Release);
            }
        });
        while !ready.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        for b in 0..batches {
            let mut spins = 0;
            while b - ring.head.0.load(Ordering::Acquire) >= RING_C {
                wait(&mut spins);
            }
            // SAFETY: the consumer is done with slot b (head > b - RING_C).
            let slot = unsafe { &mut *ring.slots[b % RING_C].get() };
            for (k, s) in slot.iter_mut().enumerate() {
                let l = layout(k);
                unsafe {
                    let p = a_alloc(a, l);
                    put_tag(p, l.size());
                    *s = p as usize;
                }
            }
            ring.tail.0.store(b + 1, Ordering::Release);
        }
        consumer.join().unwrap();
        el = t.elapsed();
    });
    (el, (batches * BATCH_C) as u64)
}

const D_MIN: usize = 16;
const D_MAX: usize = 1 << 20;

/// (d) `chains` x { allocate 16 B, realloc doubling to 1 MiB, free }. After each
/// step the new bytes are touched (one store per 4 KiB page and the last byte)
/// as a growing buffer would, and preserved contents are checked.
/// One op = one realloc (16 per chain).
fn bench_realloc<A: GlobalAlloc>(a: &A, chains: usize) -> (Duration, u64) {
    let mut n = 0u64;
    let t = Instant::now();
    for _ in 0..chains {
        unsafe {
            let mut l = Layout::from_size_align_unchecked(D_MIN, 8);
            let mut p = a_alloc(a, l);
            (p as *mut u64).write(TAG);
            *p.add(D_MIN - 1) = 0xA5;
            let mut size = D_MIN;
            while size < D_MAX {
                let new = size * 2;
                p = a_realloc(a, p, l, new);
                n += 1;
                if (p as *const u64).read() != TAG || *p.add(size - 1) != 0xA5 {
                    bad(&format!(
                        "realloc {} -> {} B to {:p} lost the contents",
                        size, new, p
                    ));
                }
                let mut off = size.next_multiple_of(4096);
                while off < new {
                    *p.add(off) = 1;
                    off += 4096;
                }
                *p.add(new - 1) = 0xA5;
                size = new;
                l = Layout::from_size_align_unchecked(size, 8);
            }
            black_box(p);
            a_dealloc(a, p, l);
        }
    }
    (t.elapsed(), n)
}

// ---------------------------------------------------------------------------
// Harness.

struct Bench {
    id: &'static str,
    name: &'static str,
    target: Option<f64>,
    /// Work per run (fixed, same for both allocators; 1/20 with --quick),
    /// sized for roughly 0.1-0.3 s per run on an idle machine.
    work: usize,
    /// Runs the benchmark with the given work amount; returns (time, ops).
    run_m: fn(usize) -> (Duration, u64),
    run_s: fn(usize) -> (Duration, u64),
}

type RunFn = fn(usize) -> (Duration, u64);

macro_rules! both {
    ($f:ident $(, $arg:expr)*) => {
        (
            (|n| $f(&Magpie, n $(, $arg)*)) as RunFn,
            (|n| $f(&System, n $(, $arg)*)) as RunFn,
        )
    };
}

fn benches() -> Vec<Bench> {
    let mk = |id, name, target, work, (run_m, run_s): (RunFn, RunFn)| Bench {
        id,
        name,
        target,
        work,
        run_m,
        run_s,
    };
    vec![
        mk(
            "a",
            "(a) malloc/free pairs, 16-64 B, align 8, batches of 100",
            Some(0.5),
            150_000,
            both!(bench_pairs, &SIZES_C, 8),
        ),
        mk(
            "a1",
            "(a') same, align 1 (magpie: noscan spans)",
            None,
            150_000,
            both!(bench_pairs, &SIZES_C, 1),
        ),
        mk(
            "a1t",
            "(a') pairs, 4-12 B, align 1 (magpie: tiny blocks)",
            None,
            150_000,
            both!(bench_pairs, &SIZES_TINY, 1),
        ),
        mk(
            "b",
            "(b) random 8-1024 B, 10k live, replace one per op",
            Some(0.5),
            6_000_000,
            both!(bench_random),
        ),
        mk(
            "c",
            "(c) producer/consumer threads, 16-64 B, per object",
            Some(0.7),
            150_000,
            both!(bench_prodcons),
        ),
        mk(
            "d",
            "(d) realloc doubling 16 B -> 1 MiB, per realloc",
            None,
            3_000,
            both!(bench_realloc),
        ),
    ]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; without it we are being run as a test
    // (`cargo test --benches`), where a smoke run is enough.
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let verbose = args.iter().any(|a| a == "--verbose" || a == "-v");
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(|s| s.as_str())
        .collect();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(if quick { 3 } else { 7 });

    println!(
        "magpie vs system allocator: {} run(s) each, interleaved M,S,M,S..., median ns/op{}\n",
        runs,
        if quick { " (quick)" } else { "" }
    );
    let mut rows = Vec::new();
    for b in benches() {
        if !filters.is_empty() && !filters.iter().any(|f| b.id.starts_with(f)) {
            continue;
        }
        let n = if quick { (b.work / 20).max(1) } else { b.work };
        let chunks = if quick { 2 } else { 8 };
        // Warm-up (first touch of both heaps, magpie's initialisation), untimed.
        (b.run_m)((n / 4).max(1));
        (b.run_s)((n / 4).max(1));
        let (mut m, mut s) = (Vec::new(), Vec::new());
        for r in 0..runs {
            // One run = `chunks` alternating slices M,S,M,S,... of n/chunks
            // each, so that both allocators see the same machine load.
            let (mut tm, mut om, mut ts, mut os) = (Duration::ZERO, 0, Duration::ZERO, 0);
            for _ in 0..chunks {
                let (t, o) = (b.run_m)((n / chunks).max(1));
                tm += t;
                om += o;
                let (t, o) = (b.run_s)((n / chunks).max(1));
                ts += t;
                os += o;
            }
            m.push(tm.as_nanos() as f64 / om as f64);
            s.push(ts.as_nanos() as f64 / os as f64);
            if verbose {
                eprintln!(
                    "{:>4} run {}: magpie {:8.2}  system {:8.2} ns/op  (n={})",
                    b.id, r, m[r], s[r], n
                );
            }
        }
        let (rm, rs) = (m.clone(), s.clone());
        let (mm, ms) = (median(&mut m), median(&mut s));
        let spread = |v: &[f64], med: f64| {
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(0.0, f64::max);
            100.0 * (hi - lo) / med
        };
        if verbose {
            eprintln!(
                "{:>4} spread (max-min)/median: magpie {:.0}%  system {:.0}%",
                b.id,
                spread(&rm, mm),
                spread(&rs, ms)
            );
        }
        rows.push((b, mm, ms));
    }

    println!("| benchmark | magpie ns/op | system ns/op | ratio (magpie/system) | target |");
    println!("|---|---:|---:|---:|---|");
    for (b, mm, ms) in &rows {
        let ratio = mm / ms;
        let target = match b.target {
            Some(t) => format!("≤{t} {}", if ratio <= t { "met" } else { "missed" }),
            None => "-".to_string(),
        };
        println!(
            "| {} | {:.2} | {:.2} | {:.3} | {} |",
            b.name, mm, ms, ratio, target
        );
    }
}

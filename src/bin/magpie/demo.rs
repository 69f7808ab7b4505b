//! The built-in demo: a mixed-size allocation workload run on magpie and on
//! the system allocator in one process, figures side by side.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc;
use std::time::Instant;

use magpie::Magpie;

/// A deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Sizes skewed toward small objects, as programs allocate them.
    fn size(&mut self) -> usize {
        let r = self.next();
        match r % 16 {
            0..=9 => 8 + (r >> 8) as usize % 56,     // 8..64
            10..=13 => 64 + (r >> 8) as usize % 448, // 64..512
            _ => 512 + (r >> 8) as usize % 3584,     // 512..4096
        }
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).expect("valid layout")
}

/// Replaces random members of a live set of `live` objects `ops` times; the
/// first word of each object is written and checked. Returns ns per operation.
fn churn<A: GlobalAlloc>(a: &A, live: usize, ops: usize, seed: u64) -> f64 {
    let mut rng = Rng(seed);
    let mut set: Vec<(*mut u8, usize)> = Vec::with_capacity(live);
    for _ in 0..live {
        let s = rng.size();
        // SAFETY: non-zero size; the block is written within its size.
        let p = unsafe { a.alloc(layout(s)) };
        assert!(!p.is_null());
        // SAFETY: p holds at least 8 bytes.
        unsafe { (p as *mut usize).write(s) };
        set.push((p, s));
    }
    let t = Instant::now();
    for _ in 0..ops {
        let i = rng.next() as usize % live;
        let (p, s) = set[i];
        // SAFETY: p is live with size s, from this allocator.
        unsafe {
            assert_eq!((p as *const usize).read(), s);
            a.dealloc(p, layout(s));
        }
        let s = rng.size();
        // SAFETY: as above.
        let q = unsafe { a.alloc(layout(s)) };
        assert!(!q.is_null());
        // SAFETY: q holds at least 8 bytes.
        unsafe { (q as *mut usize).write(s) };
        set[i] = (q, s);
    }
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    for (p, s) in set {
        // SAFETY: every member is live.
        unsafe { a.dealloc(p, layout(s)) };
    }
    black_box(ns)
}

struct Batch(Vec<(*mut u8, usize)>);
// SAFETY: the blocks are plain memory handed from one thread to another.
unsafe impl Send for Batch {}

/// One thread allocates, another frees; ns per object.
fn producer_consumer<A: GlobalAlloc + Sync>(a: &A, objects: usize, seed: u64) -> f64 {
    let (tx, rx) = mpsc::sync_channel::<Batch>(64);
    let t = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut rng = Rng(seed);
            let mut batch = Vec::with_capacity(256);
            for _ in 0..objects {
                let size = rng.size();
                // SAFETY: non-zero size.
                let p = unsafe { a.alloc(layout(size)) };
                assert!(!p.is_null());
                // SAFETY: p holds at least 8 bytes.
                unsafe { (p as *mut usize).write(size) };
                batch.push((p, size));
                if batch.len() == 256 {
                    tx.send(Batch(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(256),
                    )))
                    .unwrap();
                }
            }
            tx.send(Batch(batch)).unwrap();
        });
        s.spawn(move || {
            for b in rx {
                for (p, size) in b.0 {
                    // SAFETY: p is live with this size, from this allocator.
                    unsafe {
                        assert_eq!((p as *const usize).read(), size);
                        a.dealloc(p, layout(size));
                    }
                }
            }
        });
    });
    t.elapsed().as_nanos() as f64 / objects as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn demo(runs: usize) {
    println!("magpie demo: the same workload on magpie and on the system allocator (glibc),");
    println!("alternating, median of {runs} runs each. Lower is better.\n");
    println!("| workload | magpie ns/op | system ns/op | magpie / system |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, m: &mut dyn FnMut() -> f64, s: &mut dyn FnMut() -> f64| {
        let (mut mv, mut sv) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            mv.push(m());
            sv.push(s());
        }
        let (mm, sm) = (median(mv), median(sv));
        println!("| {name} | {mm:.1} | {sm:.1} | {:.2} |", mm / sm);
    };
    let live = 100_000;
    let ops = 2_000_000;
    row(
        "churn, 1 thread, 100k live",
        &mut || churn(&Magpie, live, ops, 1),
        &mut || churn(&System, live, ops, 1),
    );
    row(
        "producer → consumer, 2 threads",
        &mut || producer_consumer(&Magpie, ops, 2),
        &mut || producer_consumer(&System, ops, 2),
    );
    println!();
    let s = magpie::stats();
    let mut out = String::new();
    magpie::stats::write_summary(&mut out, &s).unwrap();
    print!("{out}");
}

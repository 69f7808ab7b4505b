//! Microbenchmark of the fast path: malloc/free pairs of 16-64 bytes.
use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Instant;

#[inline(never)]
fn run<A: GlobalAlloc>(a: &A, iters: usize) -> f64 {
    let mut ptrs = [std::ptr::null_mut::<u8>(); 100];
    let t = Instant::now();
    for _ in 0..iters {
        for (j, p) in ptrs.iter_mut().enumerate() {
            *p = unsafe { a.alloc(Layout::from_size_align_unchecked(16 + (j % 4) * 16, 8)) };
        }
        for (j, p) in ptrs.iter().enumerate() {
            unsafe { a.dealloc(*p, Layout::from_size_align_unchecked(16 + (j % 4) * 16, 8)) };
        }
    }
    t.elapsed().as_nanos() as f64 / (iters * 100) as f64
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let which = std::env::args().nth(2).unwrap_or_default();
    for _ in 0..3 {
        if which != "s" {
            print!("magpie {:.2} ns  ", run(&magpie::Magpie, n));
        }
        if which != "m" {
            print!("system {:.2} ns", run(&System, n));
        }
        println!();
    }
}

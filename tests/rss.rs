//! Memory goes back to the OS: allocate ~512 MiB, touch every page, free it
//! all, and check that the resident set falls by at least 400 MiB — first
//! through the scavenger's threshold policy alone (no trim), then with
//! `magpie::trim()`. harness = false: the phases run in order, alone.
//!
//! Findings (documented by the output): 64 KiB blocks are large objects (spans
//! of their own); their frees go straight to the page heap, whose threshold
//! (MAGPIE_RETAIN, 64 MiB, or twice the heap in use if larger) makes it release the
//! excess with MADV_DONTNEED at once, so RSS falls without trim. What stays
//! resident under the threshold is released by the decay rule (MAGPIE_DECAY_MS,
//! 1 s), which runs on the next page-heap operation, or by trim().

#[global_allocator]
static A: magpie::Magpie = magpie::Magpie;

mod common;

use common::{rss_bytes, MIB};
use std::time::{Duration, Instant};

const TOTAL: usize = 512 * MIB;
const MIN_DROP: usize = 400 * MIB;

fn mib(b: usize) -> f64 {
    b as f64 / MIB as f64
}

/// Allocates TOTAL bytes in `block`-byte boxes, touching every page.
fn fill_heap(block: usize) -> Vec<Box<[u8]>> {
    let n = TOTAL / block;
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let mut b: Box<[u8]> = unsafe { Box::new_uninit_slice(block).assume_init() };
        for off in (0..block).step_by(4096) {
            b[off] = i as u8;
        }
        b[block - 1] = i as u8;
        v.push(b);
    }
    v
}

fn report(tag: &str) -> magpie::Stats {
    let s = magpie::stats();
    println!(
        "    {tag:<28} RSS {:7.1} MiB (stats {:7.1}), heap in use {:7.1}, free {:7.1} (resident {:7.1}), released total {:8.1}",
        mib(rss_bytes()),
        mib(s.resident_bytes as usize),
        mib(s.heap_in_use as usize),
        mib(s.heap_free as usize),
        mib(s.heap_free_resident as usize),
        mib(s.released_to_os as usize),
    );
    s
}

/// Allocates, frees, and returns (RSS when full, RSS after the free).
fn cycle(block: usize, tag: &str) -> (usize, usize) {
    let rss0 = rss_bytes();
    let v = fill_heap(block);
    let full = rss_bytes();
    report(&format!("{tag}: full"));
    assert!(
        full >= rss0 + TOTAL - 16 * MIB,
        "{tag}: touching {} MiB raised RSS by only {:.1} MiB",
        TOTAL >> 20,
        mib(full.saturating_sub(rss0))
    );
    // Every block still holds its pattern.
    for (i, b) in v.iter().enumerate() {
        assert!(
            b[0] == i as u8 && b[block - 1] == i as u8,
            "{tag}: block {i} corrupted"
        );
    }
    drop(v);
    let after = rss_bytes();
    report(&format!("{tag}: freed"));
    (full, after)
}

fn large_blocks_no_trim() {
    let (full, after) = cycle(64 << 10, "64 KiB, no trim");
    let s = magpie::stats();
    assert!(
        full - after >= MIN_DROP,
        "64 KiB blocks, no trim: RSS fell by only {:.1} MiB (from {:.1} to {:.1}); free resident {:.1} MiB",
        mib(full - after),
        mib(full),
        mib(after),
        mib(s.heap_free_resident as usize)
    );
    // The stats' RSS agrees with /proc.
    let r = rss_bytes() as f64;
    assert!(
        ((s.resident_bytes as f64) - r).abs() < r * 0.1 + 4.0 * MIB as f64,
        "stats().resident_bytes {} vs statm {r}",
        s.resident_bytes
    );
    // What stayed resident (under the retain threshold) goes after the decay
    // time, on the next page-heap operation.
    assert!(
        s.heap_free_resident <= 64 * MIB as u64 + MIB as u64,
        "more than MAGPIE_RETAIN kept resident: {s:?}"
    );
    std::thread::sleep(Duration::from_millis(1300));
    drop(vec![1u8; 256 << 10]); // a large alloc + free: runs the scavenger
    let s = report("64 KiB, after decay");
    assert!(
        s.heap_free_resident <= 4 * MIB as u64,
        "free pages still resident {:.1} MiB after the decay time",
        mib(s.heap_free_resident as usize)
    );
}

fn large_blocks_trim() {
    let (full, _) = cycle(64 << 10, "64 KiB, trim");
    let released = magpie::trim();
    let after = rss_bytes();
    let s = report("64 KiB, after trim");
    println!("    trim() released {:.1} MiB", mib(released));
    assert!(
        full - after >= MIN_DROP,
        "64 KiB blocks + trim: RSS fell by only {:.1} MiB",
        mib(full - after)
    );
    assert_eq!(s.heap_free_resident, 0, "free pages resident after trim");
}

fn small_blocks_trim() {
    // 4 KiB objects live in small spans: freeing them returns the slots to
    // per-CPU caches and central lists, and empty spans to the page heap.
    let (full, after) = cycle(4 << 10, "4 KiB, no trim");
    println!(
        "    4 KiB, no trim: RSS fell by {:.1} MiB",
        mib(full - after)
    );
    magpie::trim();
    let after = rss_bytes();
    report("4 KiB, after trim");
    assert!(
        full - after >= MIN_DROP,
        "4 KiB blocks + trim: RSS fell by only {:.1} MiB (from {:.1} to {:.1})",
        mib(full - after),
        mib(full),
        mib(after)
    );
}

fn scattered_frees_trim() {
    // 64-byte objects, 99 % freed in random order: almost no span empties
    // (a 4-page span holds 512 slots), but about half the 4 KiB pages hold
    // only free slots, and trim returns those.
    const N: usize = 1 << 20;
    let rss0 = rss_bytes();
    let mut v: Vec<Option<Box<[u64; 8]>>> = (0..N).map(|i| Some(Box::new([i as u64; 8]))).collect();
    let full = rss_bytes();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 100 != 0 {
            *b = None;
        }
    }
    let after_free = rss_bytes();
    magpie::trim();
    let after = rss_bytes();
    report("64 B scattered, after trim");
    println!(
        "    64 B x {N}, 99 % freed: RSS {:.1} -> {:.1} (full) -> {:.1} (freed) -> {:.1} MiB (trim)",
        mib(rss0),
        mib(full),
        mib(after_free),
        mib(after)
    );
    assert!(
        after_free - after.min(after_free) >= 20 * MIB,
        "trim after scattered frees released only {:.1} MiB",
        mib(after_free.saturating_sub(after))
    );
    // The survivors are intact, and the released pages serve new objects.
    for (i, b) in v.iter().enumerate() {
        if let Some(b) = b {
            assert_eq!(**b, [i as u64; 8], "object {i} changed by trim");
        }
    }
    let again: Vec<Box<[u64; 8]>> = (0..N).map(|i| Box::new([!(i as u64); 8])).collect();
    for (i, b) in again.iter().enumerate() {
        assert_eq!(**b, [!(i as u64); 8]);
    }
    magpie::debug::verify_heap().expect("verify_heap after trim");
}

fn locked_fallback() {
    let (out, timed_out) =
        common::reexec_timeout(&[("MAGPIE_RSEQ", "0"), ("MAGPIE_RSS_CHILD", "1")], &[], 120);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for l in stdout.lines() {
        println!("    | {l}");
    }
    assert!(
        !timed_out && out.status.success() && stdout.contains("test result: ok."),
        "MAGPIE_RSEQ=0 run failed ({:?}, timed out {timed_out}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

type Scenario = (&'static str, fn());

fn main() {
    let start = Instant::now();
    let child = std::env::var_os("MAGPIE_RSS_CHILD").is_some();
    let all: &[Scenario] = &[
        ("large_blocks_no_trim", large_blocks_no_trim),
        ("large_blocks_trim", large_blocks_trim),
        ("small_blocks_trim", small_blocks_trim),
        ("scattered_frees_trim", scattered_frees_trim),
        ("locked_fallback", locked_fallback),
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (n, _) in all {
            println!("{n}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<&Scenario> = all
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .filter(|(n, _)| !(child && *n == "locked_fallback"))
        .collect();
    drop(Box::new(0u8));
    let mode = magpie::stats().cache_mode;
    println!("cache mode: {mode}");
    if child {
        assert_eq!(mode, "locked");
    }
    println!("\nrunning {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, f) in &selected {
        let t = Instant::now();
        let ok = std::panic::catch_unwind(f).is_ok();
        println!(
            "test {name} ... {} ({:.2}s)",
            if ok { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(*name);
        }
    }
    let filtered = all.len() - selected.len();
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    if !failed.is_empty() {
        println!("\nfailures:\n    {}", failed.join("\n    "));
    }
    println!(
        "\ntest result: {verdict}. {} passed; {} failed; 0 ignored; 0 measured; {filtered} filtered out; finished in {:.2}s\n",
        selected.len() - failed.len(),
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

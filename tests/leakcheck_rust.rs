//! Leak detection for Rust programs with magpie as the global allocator
//! (MAGPIE_GC=leakcheck): an `Rc` cycle, a `mem::forget`, and a `Box::leak`
//! whose reference is then lost are reported at their sites, with exact sizes;
//! what stays reachable is not. The leaking scenario runs in a child process
//! (the mode is read at start-up) that exits through `exit`, so the report
//! is written by magpie's exit handler.

#[global_allocator]
static A: magpie::Magpie = magpie::Magpie;

mod common;

use std::cell::RefCell;
use std::rc::Rc;

#[allow(dead_code)]
struct Node {
    other: RefCell<Option<Rc<Node>>>,
    payload: [u64; 5],
}

/// Two nodes pointing at each other; both handles dropped.
#[inline(never)]
fn make_rc_cycle() {
    let a = Rc::new(Node {
        other: RefCell::new(None),
        payload: [1; 5],
    });
    let b = Rc::new(Node {
        other: RefCell::new(Some(a.clone())),
        payload: [2; 5],
    });
    *a.other.borrow_mut() = Some(b.clone());
}

#[inline(never)]
fn forget_vec() {
    let v: Vec<u8> = Vec::with_capacity(4000);
    std::mem::forget(std::hint::black_box(v));
}

#[inline(never)]
fn leak_box() {
    let r: &'static mut [u64; 16] = Box::leak(Box::new([7u64; 16]));
    if std::env::var_os("EXPLAIN").is_some() {
        magpie::debug::explain_retention(Some(std::hint::black_box(r).as_ptr() as usize));
    }
}

static KEPT: std::sync::Mutex<Vec<Box<[u8; 300]>>> = std::sync::Mutex::new(Vec::new());

#[inline(never)]
fn keep_some() {
    KEPT.lock().unwrap().push(Box::new([3; 300]));
}

#[inline(never)]
fn scrub() {
    std::hint::black_box([0u64; 4096]);
}

/// Size of an `Rc`'s heap block: two counts and the value.
const RC_NODE: u64 = (2 * std::mem::size_of::<usize>() + std::mem::size_of::<Node>()) as u64;

#[test]
fn rust_leaks_are_reported_at_their_sites() {
    if std::env::var_os("LEAKCHECK_CHILD").is_some() {
        make_rc_cycle();
        forget_vec();
        leak_box();
        keep_some();
        scrub();
        std::process::exit(0);
    }
    let o = common::reexec(
        &[("LEAKCHECK_CHILD", "1"), ("MAGPIE_GC", "leakcheck")],
        &[
            "--exact",
            "rust_leaks_are_reported_at_their_sites",
            "--nocapture",
            "--test-threads=1",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}\n{err}", o.status);
    // Bytes and objects summed over the sites whose stack names `function`
    // (the two nodes of the cycle are allocated on different lines).
    let site = |function: &str| -> (u64, u64) {
        let mut cur: Option<(u64, u64)> = None;
        let mut counted = false;
        let mut sum = (0, 0);
        for line in err.lines() {
            if line.ends_with(" leaked at:") {
                let w: Vec<&str> = line.split_whitespace().collect();
                cur = Some((w[0].parse().unwrap(), w[3].parse().unwrap()));
                counted = false;
            } else if line.trim_start().starts_with('#') && line.contains(function) && !counted {
                let (b, o) = cur.unwrap();
                sum = (sum.0 + b, sum.1 + o);
                counted = true;
            }
        }
        assert!(sum.1 > 0, "no site in {function}:\n{err}");
        sum
    };
    assert_eq!(site("make_rc_cycle"), (2 * RC_NODE, 2), "{err}");
    assert_eq!(site("forget_vec"), (4000, 1), "{err}");
    assert_eq!(site("leak_box"), (128, 1), "{err}");
    assert!(
        !err.contains("keep_some"),
        "reachable memory reported:\n{err}"
    );
    // magpie's own frames are not shown: stacks start in the program (or in
    // the standard library code that called the allocator).
    for line in err.lines().filter(|l| l.trim_start().starts_with("#0 ")) {
        assert!(
            !line.contains("magpie::"),
            "allocator frame shown: {line}\n{err}"
        );
    }
    assert!(err.contains("magpie: total: "), "{err}");
}

/// In leakcheck a cycle can free only GC-managed memory, so the pacer counts
/// only managed allocation: 96 MiB of ordinary heap growth runs no cycle
/// (in collect it would run several), while 1 GiB of managed garbage runs
/// cycles that keep the resident set bounded.
#[test]
fn leakcheck_paces_on_managed_memory_only() {
    if std::env::var_os("PACING_CHILD").is_some() {
        let kept: Vec<Vec<u8>> = (0..96).map(|i| vec![i as u8; 1 << 20]).collect();
        let after_growth = magpie::stats().gc.cycles;
        for i in 0..(1u64 << 30) / 1024 {
            let g = magpie::Gc::new([i; 128]);
            std::hint::black_box(g);
        }
        let s = magpie::stats();
        println!(
            "cycles after growth {after_growth}, after managed garbage {}, rss {} MiB, kept {}",
            s.gc.cycles,
            common::rss_bytes() >> 20,
            kept.len()
        );
        std::process::exit(0);
    }
    let o = common::reexec(
        &[("PACING_CHILD", "1"), ("MAGPIE_GC", "leakcheck")],
        &[
            "--exact",
            "leakcheck_paces_on_managed_memory_only",
            "--nocapture",
            "--test-threads=1",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}\n{out}\n{err}", o.status);
    let line = out
        .lines()
        .find_map(|l| l.find("cycles after growth").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no result line:\n{out}\n{err}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    let (growth, managed, rss) = (n[0], n[1], n[2]);
    assert_eq!(growth, 0, "ordinary heap growth ran cycles: {line}");
    assert!(managed >= 5, "managed garbage ran too few cycles: {line}");
    assert!(rss < 400, "managed garbage not reclaimed: {line}");
}

//! Bad input: every invalid free must abort (SIGABRT) with a message naming
//! the address at fault; a heap overflow must not corrupt the allocator.
//!
//! Each scenario runs in a child: this test binary re-executed with
//! `MAGPIE_BAD=<scenario>` running only the `child` test. The child writes
//! `ADDR=<the pointer at fault>` to stdout before the bad call. Every scenario
//! runs twice, with the rseq caches and with `MAGPIE_RSEQ=0`.

#[global_allocator]
static A: magpie::Magpie = magpie::Magpie;

mod common;

use core::ffi::c_void;
use magpie::*;
use std::alloc::{alloc, dealloc, Layout};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;

fn announce(addr: usize) {
    let mut o = std::io::stdout();
    let _ = writeln!(o, "ADDR={addr:#x}");
    let _ = o.flush();
}

/// Runs in the child. Returns normally only for scenarios that must survive.
fn run_scenario(name: &str) {
    unsafe {
        match name {
            "double_free_small" => {
                let p = magpie_malloc(64);
                let q = magpie_malloc(64); // keep the span busy
                magpie_free(p);
                announce(p as usize);
                magpie_free(p);
                magpie_free(q);
            }
            "double_free_small_rust" => {
                let l = Layout::from_size_align(48, 8).unwrap();
                let p = alloc(l);
                let q = alloc(l);
                dealloc(p, l);
                announce(p as usize);
                dealloc(p, l);
                dealloc(q, l);
            }
            "double_free_large" => {
                let p = magpie_malloc(1 << 20);
                magpie_free(p);
                announce(p as usize);
                magpie_free(p);
            }
            "double_free_large_reused_neighbour" => {
                // The freed large span is coalesced with free neighbours.
                let a = magpie_malloc(1 << 20);
                let p = magpie_malloc(1 << 20);
                let b = magpie_malloc(1 << 20);
                magpie_free(a);
                magpie_free(b);
                magpie_free(p);
                announce(p as usize);
                magpie_free(p);
            }
            "free_stack_address" => {
                let x = [0u64; 4];
                let p = std::hint::black_box(x.as_ptr()) as *mut c_void;
                announce(p as usize);
                magpie_free(p);
            }
            "free_uncommitted_heap_address" => {
                // Inside magpie's reserved range, far beyond anything committed.
                let _ = magpie_malloc(8); // make sure the heap exists
                let (base, size) = magpie::alloc::heap::range();
                let p = base + size / 2 + 48;
                announce(p);
                magpie_free(p as *mut c_void);
            }
            "free_glibc_pointer" => {
                let p = libc::malloc(64);
                announce(p as usize);
                magpie_free(p);
            }
            "realloc_interior_pointer" => {
                let p = magpie_malloc(64) as *mut u8;
                let q = p.add(16);
                announce(q as usize);
                let _ = magpie_realloc(q.cast(), 200);
            }
            "free_interior_pointer" => {
                let p = magpie_malloc(64) as *mut u8;
                let q = p.add(8);
                announce(q as usize);
                magpie_free(q.cast());
            }
            "free_interior_pointer_large" => {
                let p = magpie_malloc(1 << 20) as *mut u8;
                let q = p.add(8192 * 3);
                announce(q as usize);
                magpie_free(q.cast());
            }
            "realloc_freed_pointer" => {
                let p = magpie_malloc(64);
                let q = magpie_malloc(64);
                magpie_free(p);
                announce(p as usize);
                let r = magpie_realloc(p, 128);
                magpie_free(r);
                magpie_free(q);
            }
            "realloc_freed_large" => {
                let p = magpie_malloc(1 << 20);
                magpie_free(p);
                announce(p as usize);
                let _ = magpie_realloc(p, 2 << 20);
            }
            "realloc_zero_frees" => {
                // realloc(p, 0) frees p: freeing it again is a double free.
                let p = magpie_malloc(64);
                let q = magpie_malloc(64);
                assert!(magpie_realloc(p, 0).is_null());
                announce(p as usize);
                magpie_free(p);
                magpie_free(q);
            }
            "double_free_tiny" => {
                // Two pointer-free objects below 16 bytes share a 16-byte tiny block.
                let l = Layout::from_size_align(4, 1).unwrap();
                // Find a block whose four 4-byte objects are all ours.
                let v: Vec<usize> = (0..64).map(|_| alloc(l) as usize).collect();
                let blk = *v
                    .iter()
                    .find(|&&a| a % 16 == 0 && (1..4).all(|k| v.contains(&(a + 4 * k))))
                    .expect("no tiny block holding four of our objects");
                let (p, q) = ((blk + 4) as *mut u8, (blk + 12) as *mut u8);
                *q = 0x42;
                dealloc(p, l);
                announce(p as usize);
                dealloc(p, l);
                // Not detected. The consequence: the block's live count is one
                // short, so freeing all but one of its other objects releases the
                // block while that last object is live, and it is handed out again.
                let others: Vec<usize> = v
                    .iter()
                    .copied()
                    .filter(|&a| a & !15 == blk && a != p as usize)
                    .collect();
                let (&last, rest) = others.split_last().unwrap();
                *(last as *mut u8) = 0x42;
                for &a in rest {
                    dealloc(a as *mut u8, l);
                }
                let mut overlaps = 0;
                for _ in 0..100_000 {
                    let r = alloc(l);
                    if (r as usize) < last + 4 && r as usize + 4 > last {
                        overlaps += 1;
                    }
                    std::ptr::write_bytes(r, 0xEE, 4);
                }
                println!(
                    "survived; live tiny object {last:#x} overwritten: {}, handed out again {overlaps} times",
                    *(last as *mut u8) != 0x42
                );
                let _ = q;
            }
            "overflow_small" => heap_overflow(),
            other => panic!("unknown scenario {other}"),
        }
    }
}

/// Writes `over` bytes past the end of blocks (into neighbours that are this
/// scenario's own blocks, live or just freed), then checks that the allocator
/// still works and that verify_heap passes.
unsafe fn heap_overflow() {
    use std::collections::HashSet;
    unsafe {
        for &(size, over) in &[(32usize, 64usize), (48, 64), (100, 200), (1024, 1024)] {
            let blocks: Vec<*mut u8> = (0..2048).map(|_| magpie_malloc(size) as *mut u8).collect();
            let usable = magpie_malloc_usable_size(blocks[0].cast());
            let mine: HashSet<usize> = blocks.iter().map(|&b| b as usize).collect();
            // Free every third block so the overflow also hits free slots; no
            // allocation happens between these frees and the overflow.
            let mut live = Vec::new();
            for (i, &b) in blocks.iter().enumerate() {
                if i % 3 == 1 {
                    magpie_free(b.cast());
                } else {
                    live.push(b);
                }
            }
            let mut victims = 0;
            for &b in &live {
                let n = over.div_ceil(usable);
                // Only if every slot the write reaches is one of ours.
                if (1..=n).all(|k| mine.contains(&(b as usize + k * usable))) {
                    std::ptr::write_bytes(b.add(usable), 0xFF, over);
                    victims += 1;
                }
            }
            assert!(victims > 10, "only {victims} blocks could overflow safely");
            for b in live {
                magpie_free(b.cast());
            }
            // Allocate and free a lot more; the clobbered slots come back as normal blocks.
            for round in 0..20 {
                let v: Vec<*mut c_void> = (0..2000).map(|_| magpie_malloc(size)).collect();
                for &p in &v {
                    assert!(!p.is_null());
                    assert!(magpie_malloc_usable_size(p) >= size);
                    std::ptr::write_bytes(p as *mut u8, round as u8, size);
                }
                for p in v {
                    magpie_free(p);
                }
            }
        }
        // The same with objects of the tiny allocator (8 bytes, align 1).
        let l = Layout::from_size_align(8, 1).unwrap();
        let v: Vec<*mut u8> = (0..4000).map(|_| alloc(l)).collect();
        let mine: HashSet<usize> = v.iter().map(|&b| b as usize).collect();
        let mut victims = 0;
        for &p in v.iter().step_by(7) {
            if (1..=8).all(|k| mine.contains(&(p as usize + 8 * k))) {
                std::ptr::write_bytes(p.add(8), 0xFF, 64);
                victims += 1;
            }
        }
        assert!(
            victims > 10,
            "only {victims} tiny objects could overflow safely"
        );
        for p in v {
            dealloc(p, l);
        }
        let boxes: Vec<Box<[u64; 4]>> = (0..10_000).map(|i| Box::new([i; 4])).collect();
        assert!(boxes.iter().enumerate().all(|(i, b)| **b == [i as u64; 4]));
        drop(boxes);
        match magpie::debug::verify_heap() {
            Ok(r) => println!("verify_heap ok: {} live objects", r.live_objects),
            Err(e) => panic!("verify_heap after a heap overflow: {e}"),
        }
    }
}

/// The child entry point: does nothing unless MAGPIE_BAD is set.
#[test]
fn child() {
    if let Ok(name) = std::env::var("MAGPIE_BAD") {
        run_scenario(&name);
        println!("SURVIVED");
    }
}

struct Outcome {
    signal: Option<i32>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    addr: Option<String>,
}

fn run_child(name: &str, rseq: bool) -> Outcome {
    let mut env = vec![("MAGPIE_BAD", name)];
    if !rseq {
        env.push(("MAGPIE_RSEQ", "0"));
    }
    let (out, timed_out) = common::reexec_timeout(
        &env,
        &["child", "--exact", "--nocapture", "--test-threads=1"],
        60,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !timed_out,
        "{name} (rseq {rseq}): child hung (killed after 60 s)\nstdout:\n{stdout}"
    );
    let addr = stdout
        .split("ADDR=")
        .nth(1)
        .map(|t| t.split_whitespace().next().unwrap_or("").to_owned());
    Outcome {
        signal: out.status.signal(),
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout,
        addr,
    }
}

/// The scenario must die by SIGABRT, with "magpie:", `what` and the announced
/// address on stderr.
fn expect_abort(name: &str, what: &str) {
    for rseq in [true, false] {
        let o = run_child(name, rseq);
        let mode = if rseq { "default" } else { "MAGPIE_RSEQ=0" };
        let addr = o.addr.clone().unwrap_or_else(|| {
            panic!(
                "{name} ({mode}): child announced no address:\n{}\n{}",
                o.stdout, o.stderr
            )
        });
        assert_eq!(
            o.signal,
            Some(libc::SIGABRT),
            "{name} ({mode}): expected SIGABRT, got signal {:?} exit code {:?}\nstdout:\n{}\nstderr:\n{}",
            o.signal,
            o.code,
            o.stdout,
            o.stderr
        );
        let line = o
            .stderr
            .lines()
            .find(|l| l.contains("magpie:"))
            .unwrap_or_else(|| {
                panic!(
                    "{name} ({mode}): no 'magpie:' message on stderr:\n{}",
                    o.stderr
                )
            });
        assert!(
            line.contains(&addr),
            "{name} ({mode}): message does not name the address {addr}: {line:?}"
        );
        assert!(
            line.contains(what),
            "{name} ({mode}): message {line:?} does not say {what:?}"
        );
    }
}

#[test]
fn double_free_small() {
    expect_abort("double_free_small", "double free");
}

#[test]
fn double_free_small_rust() {
    expect_abort("double_free_small_rust", "double free");
}

#[test]
fn double_free_large() {
    // (The message says "a pointer magpie never returned" rather than
    // "double free" for large objects: the freed span is no longer in use.)
    expect_abort("double_free_large", "");
}

#[test]
fn double_free_large_coalesced() {
    expect_abort("double_free_large_reused_neighbour", "");
}

#[test]
fn free_stack_address() {
    expect_abort("free_stack_address", "never returned");
}

#[test]
fn free_uncommitted_heap_address() {
    expect_abort("free_uncommitted_heap_address", "never returned");
}

#[test]
fn free_glibc_pointer() {
    expect_abort("free_glibc_pointer", "never returned");
}

#[test]
fn realloc_interior_pointer() {
    expect_abort("realloc_interior_pointer", "interior pointer");
}

#[test]
fn free_interior_pointer() {
    expect_abort("free_interior_pointer", "interior pointer");
}

#[test]
fn free_interior_pointer_large() {
    expect_abort("free_interior_pointer_large", "interior pointer");
}

#[test]
fn realloc_freed_pointer() {
    expect_abort("realloc_freed_pointer", "realloc");
}

#[test]
fn realloc_freed_large() {
    expect_abort("realloc_freed_large", "");
}

#[test]
fn realloc_zero_frees_the_block() {
    expect_abort("realloc_zero_frees", "double free");
}

/// Double free of a tiny sub-object while its block holds another live one.
#[test]
fn double_free_tiny() {
    expect_abort("double_free_tiny", "");
}

#[test]
fn heap_overflow_does_not_corrupt_allocator() {
    for rseq in [true, false] {
        let o = run_child("overflow_small", rseq);
        assert!(
            o.code == Some(0)
                && o.stdout.contains("verify_heap ok")
                && o.stdout.contains("SURVIVED"),
            "heap overflow (rseq {rseq}): signal {:?} code {:?}\nstdout:\n{}\nstderr:\n{}",
            o.signal,
            o.code,
            o.stdout,
            o.stderr
        );
    }
}

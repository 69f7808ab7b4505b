//! The collector (MAGPIE_GC=collect), with magpie as the global allocator.
//! Each scenario runs in a child process (the mode is read at start-up): the
//! parent re-executes this binary with the scenario's name and environment.
//!
//! Keep-alive scenarios: a Gc object whose only reference sits in one kind of
//! root (a static, a sleeping thread's thread-local, the stack of a thread
//! blocked in a system call, a register of a spinning thread, an anonymous
//! mmap, a pthread_setspecific slot, the end of a long chain, an interior
//! pointer) must keep its contents across many cycles while garbage is made
//! and reclaimed around it.

#[global_allocator]
static A: magpie::Magpie = magpie::Magpie;

mod common;

use magpie::Gc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const KEY: usize = 0x5A5A_5A5A_5A5A_5A5A;

/// A node with a checkable payload.
struct Node {
    next: Option<Gc<Node>>,
    tag: u64,
    payload: [u64; 6],
}

fn node(tag: u64, next: Option<Gc<Node>>) -> Gc<Node> {
    Gc::new(Node {
        next,
        tag,
        payload: [tag.wrapping_mul(0x9E37_79B9_7F4A_7C15); 6],
    })
}

fn check(n: &Node, tag: u64) {
    assert_eq!(n.tag, tag, "object lost: tag changed");
    assert!(
        n.payload
            .iter()
            .all(|&w| w == tag.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        "object lost: payload changed"
    );
}

/// Allocates garbage (Gc nodes and forgotten malloc memory) and collects.
fn churn(rounds: usize) {
    for r in 0..rounds {
        let mut g = None;
        for i in 0..5_000u64 {
            g = Some(node(i, g));
        }
        std::hint::black_box(&g);
        let v: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 64 + i * 16]).collect();
        std::mem::forget(v);
        // Overwrite the stack area the garbage pointers lived in.
        std::hint::black_box([0u64; 256]);
        assert!(magpie::collect(), "collect() did not run (round {r})");
    }
}

fn scenario_name() -> Option<String> {
    std::env::var("GC_SCENARIO").ok()
}

/// Runs `name` in a child with `env`; the child must exit 0 and print the
/// marker. Returns its stdout and stderr.
fn run_child(name: &str, env: &[(&str, &str)]) -> (String, String) {
    let mut all = vec![("GC_SCENARIO", name), ("MAGPIE_GC", "collect")];
    all.extend_from_slice(env);
    let (out, killed) = common::reexec_timeout(
        &all,
        &[name, "--exact", "--nocapture", "--test-threads=1"],
        120,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !killed,
        "{name}: timed out\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        out.status.success() && stdout.contains("SCENARIO OK"),
        "{name}: child failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// `scenario!(name, env, body)` runs `body` in a child process; with a
/// fourth argument, `|stderr| check`, the parent also checks the child's
/// stderr.
macro_rules! scenario {
    ($name:ident, $env:expr, $body:block) => {
        scenario!($name, $env, $body, |_stderr| {});
    };
    ($name:ident, $env:expr, $body:block, |$stderr:ident| $check:block) => {
        #[test]
        fn $name() {
            if scenario_name().as_deref() == Some(stringify!($name)) {
                $body
                magpie::debug::verify_heap().expect("verify_heap");
                println!("SCENARIO OK");
                return;
            }
            let (_, $stderr) = run_child(stringify!($name), $env);
            $check
        }
    };
}

static mut STATIC_ROOT: Option<Gc<Node>> = None;

scenario!(root_static, &[], {
    // SAFETY: single-threaded scenario.
    unsafe { STATIC_ROOT = Some(node(11, None)) };
    churn(30);
    // SAFETY: as above.
    check(&unsafe { STATIC_ROOT }.unwrap(), 11);
});

thread_local! {
    static TLS_ROOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

scenario!(root_thread_local_of_sleeping_thread, &[], {
    let ready = std::sync::Arc::new(AtomicBool::new(false));
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let (r, d) = (ready.clone(), done.clone());
    let t = std::thread::spawn(move || {
        TLS_ROOT.with(|c| c.set(Gc::as_ptr(node(22, None)) as usize));
        r.store(true, Ordering::SeqCst);
        while !d.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: the thread-local kept the node alive.
        check(unsafe { &*(TLS_ROOT.with(|c| c.get()) as *const Node) }, 22);
    });
    while !ready.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    churn(30);
    done.store(true, Ordering::SeqCst);
    t.join().unwrap();
});

scenario!(root_stack_of_thread_blocked_in_syscall, &[], {
    let mut fds = [0i32; 2];
    // SAFETY: plain pipe(2).
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let rfd = fds[0];
    let started = std::sync::Arc::new(AtomicBool::new(false));
    let s2 = started.clone();
    let t = std::thread::spawn(move || {
        let n = node(33, None);
        s2.store(true, Ordering::SeqCst);
        let mut b = [0u8; 1];
        // SAFETY: blocking read on our pipe; n stays on this stack meanwhile.
        unsafe { libc::read(rfd, b.as_mut_ptr().cast(), 1) };
        check(&n, 33);
    });
    while !started.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(20));
    churn(30);
    // SAFETY: wake the reader.
    unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
    t.join().unwrap();
});

scenario!(root_register_of_spinning_thread, &[], {
    static STOP: AtomicBool = AtomicBool::new(false);
    static HIDDEN: AtomicUsize = AtomicUsize::new(0);
    static READY: AtomicBool = AtomicBool::new(false);
    let t = std::thread::spawn(|| {
        // Only the XOR-ed pointer is stored anywhere; the real one lives in r15
        // while the thread spins.
        HIDDEN.store(Gc::as_ptr(node(44, None)) as usize ^ KEY, Ordering::SeqCst);
        std::hint::black_box([0u64; 64]);
        let out: usize;
        // SAFETY: the loop only reads two atomics' memory.
        unsafe {
            core::arch::asm!(
                "mov r15, qword ptr [{h}]",
                "xor r15, {k}",
                "mov byte ptr [{r}], 1",
                "2:",
                "pause",
                "cmp byte ptr [{s}], 0",
                "je 2b",
                h = in(reg) HIDDEN.as_ptr(),
                k = in(reg) KEY,
                r = in(reg) READY.as_ptr(),
                s = in(reg) STOP.as_ptr(),
                out("r15") out,
            );
        }
        // SAFETY: r15 kept the node alive.
        check(unsafe { &*(out as *const Node) }, 44);
    });
    while !READY.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    churn(30);
    STOP.store(true, Ordering::SeqCst);
    t.join().unwrap();
});

scenario!(root_anonymous_mmap, &[], {
    // SAFETY: a fresh private anonymous mapping.
    let m = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as *mut usize;
    assert_ne!(m as *mut libc::c_void, libc::MAP_FAILED);
    // SAFETY: m is our mapping.
    unsafe {
        m.add(100)
            .write_volatile(Gc::as_ptr(node(55, None)) as usize)
    };
    churn(30);
    // SAFETY: as above.
    check(unsafe { &*(m.add(100).read_volatile() as *const Node) }, 55);
});

scenario!(root_pthread_setspecific, &[], {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: plain pthread key API.
    unsafe {
        assert_eq!(libc::pthread_key_create(&mut key, None), 0);
        libc::pthread_setspecific(key, Gc::as_ptr(node(66, None)) as *const libc::c_void);
    }
    churn(30);
    // SAFETY: the slot kept it alive.
    check(
        unsafe { &*(libc::pthread_getspecific(key) as *const Node) },
        66,
    );
});

static mut CHAIN: Option<Gc<Node>> = None;

scenario!(root_long_chain_and_deep_list, &[], {
    // 1,000,000 nodes: reachable only through the chain from a static.
    let mut head = None;
    for i in 0..1_000_000u64 {
        head = Some(node(i, head));
    }
    // SAFETY: single-threaded scenario.
    unsafe { CHAIN = head };
    churn(5);
    // SAFETY: as above.
    let mut cur = unsafe { CHAIN };
    let mut expect = 999_999u64;
    let mut n = 0;
    while let Some(c) = cur {
        check(&c, expect);
        expect = expect.wrapping_sub(1);
        n += 1;
        cur = c.next;
    }
    assert_eq!(n, 1_000_000);
});

static INTERIOR: AtomicUsize = AtomicUsize::new(0);

scenario!(root_interior_pointer, &[], {
    let n = node(77, None);
    // Keep only a pointer to the payload's last word.
    INTERIOR.store(&n.payload[5] as *const u64 as usize, Ordering::SeqCst);
    churn(30);
    let p = INTERIOR.load(Ordering::SeqCst) - std::mem::offset_of!(Node, payload) - 5 * 8;
    // SAFETY: the interior pointer kept the object alive.
    check(unsafe { &*(p as *const Node) }, 77);
});

scenario!(leaked_memory_is_reclaimed_and_rss_bounded, &[], {
    // 2 GiB of garbage in small nodes and forgotten boxes; the pacer alone
    // (no explicit collect) must keep RSS bounded.
    let mut made = 0usize;
    while made < 2 << 30 {
        let mut g = None;
        for i in 0..10_000u64 {
            g = Some(node(i, g));
        }
        std::hint::black_box(&g);
        made += 10_000 * 64;
        let v: Vec<Box<[u64; 8]>> = (0..1000).map(|i| Box::new([i; 8])).collect();
        std::mem::forget(v);
        made += 1000 * 64 + 8000;
    }
    let s = magpie::stats();
    let rss = common::rss_bytes();
    println!(
        "cycles {} reclaimed {} MiB rss {} MiB",
        s.gc.cycles,
        s.gc.reclaimed_bytes >> 20,
        rss >> 20
    );
    assert!(s.gc.cycles > 10, "the pacer never ran the collector");
    assert!(
        s.gc.reclaimed_bytes > 1 << 30,
        "reclaimed only {} bytes",
        s.gc.reclaimed_bytes
    );
    assert!(rss < 256 << 20, "RSS grew to {} MiB", rss >> 20);
});

/// Keeps `live_mib` MiB of 8 KiB buffers live, replacing each 50 times,
/// with two freed temporaries per allocation (as programs that manage their
/// memory do); returns the cycles run.
fn churn_freeing(live_mib: usize) -> u64 {
    let n = live_mib * 128;
    let mut live: Vec<Vec<u8>> = Vec::with_capacity(n);
    for round in 0..50u8 {
        for i in 0..n {
            std::hint::black_box(vec![round; 4096]);
            std::hint::black_box(vec![round; 2048]);
            let v = vec![round; 8192];
            if round == 0 {
                live.push(v);
            } else {
                live[i] = v;
            }
        }
    }
    assert!(live.iter().all(|v| v[8191] == 49));
    magpie::stats().gc.cycles
}

scenario!(
    a_small_heap_that_frees_its_memory_runs_no_cycle,
    &[("MAGPIE_CONCURRENT", "0")],
    {
        // 8 MiB live, 700 MiB allocated and freed: the pacer's first cycle
        // would come at 4 MiB (1 cycle seen without the rule); a program
        // that frees at least half of what it allocates is left alone until
        // its heap reaches 32 MiB.
        let cycles = churn_freeing(8);
        println!("{cycles} cycles");
        assert_eq!(cycles, 0);
    }
);

scenario!(
    a_heap_past_32_mib_that_frees_its_memory_is_still_collected,
    &[("MAGPIE_CONCURRENT", "0")],
    {
        let cycles = churn_freeing(40);
        println!("{cycles} cycles");
        assert!(cycles >= 1);
    }
);

scenario!(
    growth_of_live_data_backs_the_pacer_off,
    &[("MAGPIE_CONCURRENT", "0")],
    {
        // A program that frees its own temporaries while 256 MiB of live data
        // grow: every cycle finds nothing to free, so the allowed growth
        // doubles after each (up to 4x). At a fixed 2x the pacer would run a
        // cycle at 4, 8, 16, 32, 64, 128 and 256 MiB (7 seen). Stop-the-world,
        // so that no growth during a concurrent mark skips any.
        let kept: Vec<Vec<u64>> = (0..256)
            .map(|i| {
                for _ in 0..2 {
                    std::hint::black_box(vec![i; 1 << 17]);
                }
                vec![i; 1 << 17]
            })
            .collect();
        let s = magpie::stats();
        println!("cycles {} while 256 MiB of live data grew", s.gc.cycles);
        assert!(kept
            .iter()
            .enumerate()
            .all(|(i, v)| v[v.len() - 1] == i as u64));
        assert!(
            (1..=5).contains(&s.gc.cycles),
            "{} cycles for live growth alone",
            s.gc.cycles
        );
    }
);

#[test]
fn allocation_during_mark_termination_aborts() {
    if scenario_name().as_deref() == Some("allocation_during_mark_termination_aborts") {
        magpie::collect();
        println!("collect returned");
        return;
    }
    let (out, _) = common::reexec_timeout(
        &[
            ("GC_SCENARIO", "allocation_during_mark_termination_aborts"),
            ("MAGPIE_GC", "collect"),
            ("MAGPIE_DEBUG_ALLOC_IN_TERMINATION", "1"),
        ],
        &[
            "allocation_during_mark_termination_aborts",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ],
        60,
    );
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "stderr: {stderr}");
    assert!(
        stderr.contains("magpie: allocation during mark termination"),
        "stderr: {stderr}"
    );
}

scenario!(tiny_block_held_only_by_a_cache_is_reclaimed, &[], {
    // Tiny objects (size < 16, align 1) carved from the CPU's current block
    // and then forgotten: the cache's reference is dropped at mark
    // termination, so the block is reclaimed, and the cache never carves it
    // again after that.
    let before = magpie::stats().gc.reclaimed_objects;
    for _ in 0..100 {
        let b: Box<[u8; 5]> = Box::new([7; 5]);
        std::mem::forget(b);
    }
    churn(3);
    assert!(magpie::stats().gc.reclaimed_objects > before);
    // Now allocate many tiny and 16-byte objects; none may overlap.
    let mut tiny: Vec<Box<[u8; 7]>> = Vec::new();
    let mut sixteen: Vec<Box<[u8; 16]>> = Vec::new();
    for i in 0..20_000usize {
        tiny.push(Box::new([(i % 251) as u8; 7]));
        sixteen.push(Box::new([(i % 241) as u8; 16]));
        if i % 5000 == 0 {
            magpie::collect();
        }
    }
    for (i, b) in tiny.iter().enumerate() {
        assert!(
            b.iter().all(|&x| x == (i % 251) as u8),
            "tiny object {i} overwritten"
        );
    }
    for (i, b) in sixteen.iter().enumerate() {
        assert!(
            b.iter().all(|&x| x == (i % 241) as u8),
            "16-byte object {i} overwritten"
        );
    }
});

// A sweep of the last pass still running after the stop timeout (here a
// thread that sleeps 300 ms after claiming a span, through the test hook)
// makes the next concurrent cycle give up rather than wait for it: a mark
// that started under it would have its bits cleared by it.
scenario!(
    sweep_running_past_the_stop_timeout_abandons_the_cycle,
    &[
        ("MAGPIE_STOP_TIMEOUT_MS", "50"),
        ("MAGPIE_DEBUG_SLOW_SWEEP", "300000"),
    ],
    {
        static DONE: AtomicBool = AtomicBool::new(false);
        let keep = Box::new([77u64; 8]);
        // An allocating thread that keeps nothing: with the garbage's spans
        // unswept its class has no partial span, so its refills sweep (and
        // sleep in the hook).
        let t = std::thread::spawn(|| {
            while !DONE.load(Ordering::SeqCst) {
                for _ in 0..1000 {
                    std::mem::forget(std::hint::black_box(Box::new([0u64; 8])));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        let mut abandoned = false;
        for _ in 0..50 {
            for _ in 0..200_000 {
                std::mem::forget(std::hint::black_box(Box::new([1u64; 8])));
            }
            let before = magpie::stats().gc.abandoned;
            let first = magpie::collect();
            let second = magpie::collect();
            if magpie::stats().gc.abandoned > before {
                assert!(
                    !(first && second),
                    "a cycle was counted abandoned but both ran"
                );
                abandoned = true;
                break;
            }
        }
        DONE.store(true, Ordering::SeqCst);
        t.join().unwrap();
        assert!(abandoned, "no cycle waited past the timeout for a sweep");
        assert!(keep.iter().all(|&w| w == 77));
        // Cycles run again once the sweep is over.
        assert!(magpie::collect(), "no cycle after the sweep ended");
    }
);

scenario!(
    thread_blocking_the_stop_signal_abandons_the_cycle,
    &[("MAGPIE_STOP_TIMEOUT_MS", "200")],
    {
        static READY: AtomicBool = AtomicBool::new(false);
        static DONE: AtomicBool = AtomicBool::new(false);
        let t = std::thread::spawn(|| {
            // SAFETY: blocks every signal in this thread.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            }
            READY.store(true, Ordering::SeqCst);
            while !DONE.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        while !READY.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let leaked = Box::into_raw(Box::new([1234u64; 8])) as usize ^ KEY;
        let before = magpie::stats().gc;
        assert!(
            !magpie::collect(),
            "a cycle completed although a thread could not stop"
        );
        let after = magpie::stats().gc;
        assert_eq!(after.abandoned, before.abandoned + 1);
        assert_eq!(
            after.reclaimed_objects, before.reclaimed_objects,
            "an abandoned cycle freed something"
        );
        // The unreachable box was not freed: its memory still holds its contents.
        // SAFETY: the block was never freed (nothing was reclaimed).
        assert!(unsafe { &*((leaked ^ KEY) as *const [u64; 8]) }
            .iter()
            .all(|&w| w == 1234));
        DONE.store(true, Ordering::SeqCst);
        t.join().unwrap();
    }
);

/// A helper thread that blocks every signal while `BLOCK` is set (and says
/// so in `BLOCKED`), until `STOP`.
static BLOCK: AtomicBool = AtomicBool::new(false);
static BLOCKED: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

fn signal_blocker() -> std::thread::JoinHandle<()> {
    std::thread::spawn(|| {
        while !STOP.load(Ordering::SeqCst) {
            if !BLOCK.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            // SAFETY: blocks every signal in this thread, then restores the
            // old mask.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                let mut old: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
                BLOCKED.store(true, Ordering::SeqCst);
                while BLOCK.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_micros(200));
                }
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                BLOCKED.store(false, Ordering::SeqCst);
            }
        }
    })
}

fn set_blocked(on: bool) {
    BLOCK.store(on, Ordering::SeqCst);
    while BLOCKED.load(Ordering::SeqCst) != on {
        std::thread::yield_now();
    }
}

// A thread that blocks signals for a moment now and then (as git and dash
// do around fork and vfork) makes the cycles that meet it give up, but it is
// not reported as a thread that blocks the stop signal: neither two brief
// blocks 1.2 s apart (with no cycle between them), nor brief blocks every
// 100 ms for 1.5 s with a completed cycle between each two.
scenario!(
    brief_signal_blocks_are_not_reported,
    &[],
    {
        let t = signal_blocker();
        let give_up = |what: &str| {
            set_blocked(true);
            assert!(
                !magpie::collect(),
                "{what}: a cycle completed although a thread blocked the stop signal"
            );
            set_blocked(false);
        };
        give_up("first of two blocks");
        std::thread::sleep(Duration::from_millis(1200));
        give_up("second of two blocks");
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            give_up("frequent blocks");
            assert!(magpie::collect(), "no cycle after the thread unblocked");
            std::thread::sleep(Duration::from_millis(100));
        }
        STOP.store(true, Ordering::SeqCst);
        t.join().unwrap();
    },
    |stderr| {
        assert!(
            !stderr.contains("blocks the stop signal"),
            "brief blocks reported as blocking the stop signal:\n{stderr}"
        );
    }
);

// The converse: a thread found blocking the stop signal at every attempt
// for over a second is reported, once.
scenario!(
    lasting_signal_block_is_reported,
    &[],
    {
        let t = signal_blocker();
        set_blocked(true);
        let start = std::time::Instant::now();
        let mut tries = 0;
        while start.elapsed() < Duration::from_millis(1300) {
            assert!(
                !magpie::collect(),
                "a cycle completed although a thread blocked the stop signal"
            );
            tries += 1;
        }
        set_blocked(false);
        assert!(magpie::collect(), "no cycle after the thread unblocked");
        STOP.store(true, Ordering::SeqCst);
        t.join().unwrap();
        println!("{tries} cycles given up");
    },
    |stderr| {
        assert_eq!(
            stderr.matches("blocks the stop signal").count(),
            1,
            "a lasting block not reported exactly once:\n{stderr}"
        );
    }
);

scenario!(
    threads_created_and_destroyed_during_cycles,
    &[("MAGPIE_GC_STRESS", "500")],
    {
        let keep = node(88, None);
        for round in 0..20u64 {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    std::thread::spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..2000u64 {
                            mine.push(node(round * 10_000 + t * 1000 + i, None));
                            let v = vec![i as u8; 100];
                            assert!(v.iter().all(|&x| x == i as u8));
                        }
                        for (i, n) in mine.iter().enumerate() {
                            check(n, round * 10_000 + t * 1000 + i as u64);
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        }
        check(&keep, 88);
    }
);

scenario!(fork_while_the_collector_thread_exists, &[], {
    // Grow the heap past the pacer's first goal so the collector thread starts.
    let mut keep = Vec::new();
    for i in 0..100_000u64 {
        keep.push(node(i, None));
    }
    for _ in 0..200 {
        std::mem::forget(vec![0u8; 64 << 10]);
    }
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: fork; the child only allocates, collects and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut v = Vec::new();
        for i in 0..50_000u64 {
            v.push(node(i, None));
        }
        magpie::collect();
        for (i, n) in v.iter().enumerate() {
            check(n, i as u64);
        }
        for (i, n) in keep.iter().enumerate() {
            check(n, i as u64);
        }
        // SAFETY: leave the child without running the parent's atexit work.
        unsafe { libc::_exit(0) };
    }
    let mut st = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "child status {st:#x}"
    );
    for (i, n) in keep.iter().enumerate() {
        check(n, i as u64);
    }
});

scenario!(
    collector_thread_starts_from_the_locked_path,
    &[("MAGPIE_RSEQ", "0")],
    {
        // With rseq off every allocation takes the path that triggers the pacer;
        // starting the collector thread allocates (pthread_create's TLS), and
        // that allocation reaches the pacer again: it must not wait for the
        // thread it is creating.
        let keep = node(5, None);
        for _ in 0..40 {
            std::mem::forget(vec![1u8; 256 << 10]);
        }
        churn(3);
        check(&keep, 5);
    }
);

scenario!(
    a_big_array_of_pointers_does_not_flood_the_mark_stack,
    &[],
    {
        // One heap object (a Vec's buffer, 8 MiB) holding a million pointers is
        // scanned a chunk at a time, each chunk's children before the rest: the
        // mark stack holds a few thousand entries, not a million.
        let v: Vec<Box<[u64; 2]>> = (0..1_000_000u64).map(|i| Box::new([i, !i])).collect();
        magpie::collect();
        let peak = magpie::stats().gc.mark_stack_peak;
        println!("mark stack peak {peak} entries");
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, b)| b[0] == i as u64 && b[1] == !(i as u64)));
        assert!(
            (1..20_000).contains(&peak),
            "mark stack peak {peak} entries"
        );
    }
);

/// A node of a random graph: four edges, so a depth-first mark keeps a
/// good part of the graph on its stack.
struct Fan {
    edges: [std::cell::Cell<Option<Gc<Fan>>>; 4],
}

// A mark of a wide random graph grows the mark stack to megabytes; those
// pages go back to the OS when the cycle ends (64 KiB stay), so a program's
// RSS between cycles does not carry the collector's high-water mark.
scenario!(
    deep_mark_stack_is_released_after_the_cycle,
    &[("MAGPIE_CONCURRENT", "0"), ("MAGPIE_MARKERS", "1")],
    {
        const N: usize = 1_000_000;
        // Edges are filled in once all nodes exist.
        let nodes: Vec<Gc<Fan>> = (0..N)
            .map(|_| {
                Gc::new(Fan {
                    edges: Default::default(),
                })
            })
            .collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for n in &nodes {
            for e in &n.edges {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                e.set(Some(nodes[(x % N as u64) as usize]));
            }
        }
        // Only node 0 is held from here on: the mark walks the graph from it.
        let root = nodes[0];
        drop(nodes);
        let before = common::rss_bytes();
        assert!(magpie::collect());
        let after = common::rss_bytes();
        let peak_entries = magpie::stats().gc.mark_stack_peak as usize;
        let peak_bytes = peak_entries * 16;
        println!(
            "mark stack peak {peak_entries} entries ({} KiB); RSS {} -> {} KiB",
            peak_bytes >> 10,
            before >> 10,
            after >> 10
        );
        assert!(
            peak_bytes >= 4 << 20,
            "the graph did not make a deep mark ({peak_entries} entries)"
        );
        // Without the release the stack's pages would count here.
        assert!(
            after < before + peak_bytes / 4,
            "mark stack stayed resident: RSS {before} -> {after}"
        );
        std::hint::black_box(root.edges[0].get());
    }
);

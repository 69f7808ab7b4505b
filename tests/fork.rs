//! fork() from a multi-threaded process whose threads are busy allocating:
//! the child (whose only thread is the forking one) must find the allocator
//! usable — no lock left held, no cache half-changed — allocate and free
//! heavily, start threads of its own, pass verify_heap and exit 0.

#[global_allocator]
static A: magpie::Magpie = magpie::Magpie;

mod common;

use common::{check, fill, skewed_size, Rng};
use std::alloc::{alloc, dealloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUNDS: usize = 25;
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Allocation-free diagnostics for the child (stdout/stderr locks may have
/// been held by a parent thread at fork time).
fn raw_err(msg: &str) {
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Random alloc/check/free of `ops` blocks, `slots` live at most.
fn churn(seed: u64, ops: usize, slots: usize) {
    let mut r = Rng::new(seed);
    let mut live: Vec<Option<(usize, Layout, u64)>> = vec![None; slots];
    for _ in 0..ops {
        let i = r.below(slots as u64) as usize;
        match live[i].take() {
            Some((p, l, s)) => unsafe {
                if let Some(off) = check(p as *const u8, l.size(), s) {
                    panic!("block {p:#x} ({l:?}) corrupted at {off}");
                }
                dealloc(p as *mut u8, l);
            },
            None => {
                let l = Layout::from_size_align(skewed_size(&mut r, 1 << 20, 2), 1 << r.below(7))
                    .unwrap();
                let p = unsafe { alloc(l) };
                assert!(!p.is_null());
                let s = r.next();
                unsafe { fill(p, l.size(), s, 0) };
                live[i] = Some((p as usize, l, s));
            }
        }
    }
    for (p, l, s) in live.into_iter().flatten() {
        unsafe {
            assert!(
                check(p as *const u8, l.size(), s).is_none(),
                "block {p:#x} corrupted"
            );
            dealloc(p as *mut u8, l);
        }
    }
}

/// What the child does; its exit status is the verdict.
fn child_body(round: usize) -> i32 {
    let r = std::panic::catch_unwind(|| {
        // Single-threaded first (the state inherited from the parent).
        churn(1000 + round as u64, 60_000, 512);
        let v: Vec<String> = (0..20_000).map(|i| format!("child {i}")).collect();
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, s)| *s == format!("child {i}")));
        drop(v);
        // The C API too, including large objects.
        for k in 0..200 {
            let p = magpie::magpie_malloc(1 + k * 5000);
            assert!(!p.is_null());
            unsafe { magpie::magpie_free(p) };
        }
        // Threads of its own, freeing each other's memory.
        let hs: Vec<_> = (0..3)
            .map(|t| {
                std::thread::spawn(move || {
                    churn(5000 + t + round as u64 * 10, 30_000, 256);
                    (0..1000)
                        .map(|i| Box::new([i as u64; 8]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in hs {
            let v = h.join().expect("child thread panicked");
            assert!(v.iter().enumerate().all(|(i, b)| **b == [i as u64; 8]));
        }
        // Large frees and span creation happen under the heap lock, which the
        // fork handler holds, so the child's heap is always consistent.
        match magpie::debug::verify_heap() {
            Ok(_) => 0,
            Err(e) => panic!("verify_heap in the child: {e}"),
        }
    });
    match r {
        Ok(code) => code,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("panic");
            raw_err("fork child failed: ");
            raw_err(msg);
            raw_err("\n");
            3
        }
    }
}

/// Waits for `pid` at most CHILD_TIMEOUT; kills it if it hangs. Returns the wait status.
fn wait_child(pid: libc::pid_t) -> Result<i32, String> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(status);
        }
        if r < 0 {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        if start.elapsed() > CHILD_TIMEOUT {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!(
                "child {pid} hung for {CHILD_TIMEOUT:?} (deadlock after fork?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn fork_while_threads_allocate() {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(0));
    let pool: Arc<Mutex<Vec<Box<[u8]>>>> = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (stop, ops, pool) = (stop.clone(), ops.clone(), pool.clone());
            std::thread::spawn(move || {
                let mut r = Rng::new(77 + t);
                let mut mine: Vec<Box<[u8]>> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1000 {
                        let n = skewed_size(&mut r, 256 << 10, 3);
                        let b = vec![t as u8; n].into_boxed_slice();
                        if r.chance(100) {
                            // Cross-thread: someone else frees it.
                            pool.lock().unwrap().push(b);
                        } else {
                            mine.push(b);
                        }
                        if !mine.is_empty() && (mine.len() > 500 || r.chance(300)) {
                            let j = r.below(mine.len() as u64) as usize;
                            let b = mine.swap_remove(j);
                            assert!(b.iter().all(|&x| x == t as u8));
                        }
                        if r.chance(100) {
                            let _ = pool.lock().unwrap().pop();
                        }
                    }
                    ops.fetch_add(1000, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Let the workers get going, then fork repeatedly while they run.
    while ops.load(Ordering::Relaxed) < 20_000 {
        std::thread::yield_now();
    }
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let before = ops.load(Ordering::Relaxed);
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = child_body(round);
            unsafe { libc::_exit(code) };
        }
        match wait_child(pid) {
            Ok(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {}
            Ok(st) if libc::WIFEXITED(st) => failures.push(format!(
                "round {round}: child exited {}",
                libc::WEXITSTATUS(st)
            )),
            Ok(st) if libc::WIFSIGNALED(st) => failures.push(format!(
                "round {round}: child killed by signal {}",
                libc::WTERMSIG(st)
            )),
            Ok(st) => failures.push(format!("round {round}: wait status {st:#x}")),
            Err(e) => failures.push(format!("round {round}: {e}")),
        }
        // Make sure the workers keep running between forks (the parent side
        // of the fork handlers released every lock).
        let t = Instant::now();
        while ops.load(Ordering::Relaxed) < before + 4000 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "workers stalled after fork (parent deadlock?)"
            );
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker panicked");
    }
    pool.lock().unwrap().clear();
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} forks failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Runs this binary again as a child (`MAGPIE_FORK_CHILD=1`) with `env` and
/// test arguments `args`, and checks that its tests passed (`expect` is in
/// its summary line).
fn rerun_passes(env: (&str, &str), args: &[&str], expect: &str) {
    let (out, timed_out) = common::reexec_timeout(&[env, ("MAGPIE_FORK_CHILD", "1")], args, 300);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !timed_out && out.status.success() && stdout.contains(expect),
        "{}={} run failed (timed out: {timed_out}, {:?}):\n{stdout}\n{}",
        env.0,
        env.1,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This binary again with the locked (non-rseq) caches.
#[test]
fn zz_fork_with_rseq_off() {
    if std::env::var_os("MAGPIE_FORK_CHILD").is_some() {
        let p = Box::new(1u64);
        drop(p);
        assert_eq!(magpie::stats().cache_mode, "locked");
        return;
    }
    rerun_passes(
        ("MAGPIE_RSEQ", "0"),
        &["--test-threads=1"],
        "test result: ok.",
    );
}

/// The fork test again with span growth slowed (`MAGPIE_DEBUG_SLOW_GROWTH`):
/// a worker growing a size class is then often inside the growth when the
/// parent forks. A fresh span that reached the class's partial list only
/// after the growing thread retook the class lock was lost in the child, on
/// no list (before the fix, 5 of 25 forks of one run failed verify_heap in
/// the child that way).
#[test]
fn zz_fork_while_spans_grow_slowly() {
    if std::env::var_os("MAGPIE_FORK_CHILD").is_some() {
        return;
    }
    rerun_passes(
        ("MAGPIE_DEBUG_SLOW_GROWTH", "1"),
        &["--test-threads=1", "--exact", "fork_while_threads_allocate"],
        "test result: ok. 1 passed",
    );
}

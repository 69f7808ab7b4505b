//! C and C++ programs (tests/c) compiled at test time and run with
//! LD_PRELOAD=target/<profile>/libmagpie.so: the semantics of every exported
//! function, every form of C++ new/delete, threads with cross-thread frees,
//! fork in a threaded program (with and without exec), dlopen/dlclose of a
//! library that allocates, atexit handlers that allocate, and bad input
//! (double free, foreign, interior and freed pointers) dying by SIGABRT with
//! a "magpie:" message naming the address.
//!
//! Each program checks itself (it prints "<name>: all checks passed" and
//! exits 0) and first makes sure magpie is the malloc it runs on.

mod preload_util;

use preload_util::*;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(180);

fn no_core_dumps(c: &mut Command) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        c.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &r);
            Ok(())
        });
    }
}

/// Runs a self-checking program under the preload (`env` added) and asserts
/// it passed.
fn run_checked(name: &str, prog: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(prog);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    no_core_dumps(&mut c);
    preload(&mut c);
    let t = std::time::Instant::now();
    let o = run(&mut c, None, LIMIT);
    eprintln!("{name} {env:?}: {:.2}s", t.elapsed().as_secs_f64());
    assert_preloaded(name, &o);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && out.contains(&format!("{name}: all checks passed")),
        "{name} {env:?}: {}\nstdout:\n{}\nstderr:\n{}",
        describe(&o.status),
        tail(&out, 3000),
        tail(&err, 5000)
    );
    o
}

const RSEQ_MODES: [&[(&str, &str)]; 2] = [&[], &[("MAGPIE_RSEQ", "0")]];

#[test]
fn library_is_built() {
    let so = magpie_so();
    let meta = std::fs::metadata(&so).unwrap();
    assert!(meta.len() > 0, "{} is empty", so.display());
    // The loader accepts it.
    let mut c = Command::new("/bin/sh");
    c.args(["-c", "exit 7"]);
    preload(&mut c);
    let o = run(&mut c, None, LIMIT);
    assert_preloaded("sh", &o);
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn c_api_semantics() {
    let p = build("api", &["api.c"], &[]);
    for env in RSEQ_MODES {
        run_checked("api", &p, &[], env);
    }
}

#[test]
fn cxx_new_delete_every_form() {
    let p = build("cxx_new", &["cxx_new.cpp"], &[]);
    for env in RSEQ_MODES {
        run_checked("cxx_new", &p, &[], env);
    }
}

/// [new.delete.single]: with no new_handler installed, a throwing operator
/// new that cannot allocate throws std::bad_alloc, which the program may
/// catch. (Found failing: the shim aborts with "magpie: out of memory in
/// operator new" instead.)
#[test]
fn cxx_new_without_handler_throws_bad_alloc() {
    let p = build("cxx_bad_alloc", &["cxx_bad_alloc.cpp"], &[]);
    let mut c = Command::new(&p);
    no_core_dumps(&mut c);
    preload(&mut c);
    let o = run(&mut c, None, LIMIT);
    assert_preloaded("cxx_bad_alloc", &o);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("caught 4 bad_alloc"),
        "operator new(SIZE_MAX / 4) with no new_handler must throw std::bad_alloc: {}\nstdout: {}\nstderr: {}",
        describe(&o.status),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn threads_with_cross_thread_frees() {
    let p = build("threads", &["threads.c"], &[]);
    for env in RSEQ_MODES {
        run_checked("threads", &p, &[], env);
    }
}

#[test]
fn fork_in_threaded_program() {
    let p = build("fork_threads", &["fork_threads.c"], &[]);
    for env in RSEQ_MODES {
        let o = run_checked("fork_threads", &p, &[], env);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(
                "forks without exec: 40, with exec: 20, system/popen: 6, from a thread: 10"
            ),
            "{out}"
        );
        assert_eq!(out.matches("exec-child ok").count(), 20, "{out}");
    }
}

#[test]
fn dlopen_dlclose_library_that_allocates() {
    let lib = build("libdl_lib.so", &["dl_lib.c"], &["-shared", "-fPIC"]);
    let p = build("dl_main", &["dl_main.c"], &[]);
    let lib = lib.to_str().unwrap().to_string();
    for env in RSEQ_MODES {
        run_checked("dl_main", &p, &[&lib], env);
    }
}

#[test]
fn atexit_handlers_that_allocate() {
    let p = build("atexit", &["atexit.c"], &[]);
    // The reference: the same program on glibc's malloc.
    let mut g = Command::new(&p);
    g.arg("--any-malloc");
    let g = run(&mut g, None, LIMIT);
    assert!(
        g.status.success(),
        "glibc run failed: {}",
        describe(&g.status)
    );
    let expected = String::from_utf8_lossy(&g.stdout).into_owned();
    assert_eq!(expected.lines().count(), 146, "{expected}");
    for env in RSEQ_MODES {
        for _ in 0..3 {
            let mut c = Command::new(&p);
            for (k, v) in env {
                c.env(k, v);
            }
            no_core_dumps(&mut c);
            preload(&mut c);
            let o = run(&mut c, None, LIMIT);
            assert_preloaded("atexit", &o);
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "atexit {env:?}: {}\nstderr:\n{}",
                describe(&o.status),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                out == expected,
                "atexit {env:?}: output differs from glibc's: {}",
                first_difference(&expected, &out)
            );
        }
    }
}

/// Runs `bad <scenario>` and asserts death by SIGABRT with a "magpie:"
/// message on stderr naming the address the program printed.
fn expect_abort(scenario: &str) {
    let p = build("bad", &["bad.c"], &[]);
    for env in RSEQ_MODES {
        let mut c = Command::new(&p);
        c.arg(scenario);
        for (k, v) in env {
            c.env(k, v);
        }
        no_core_dumps(&mut c);
        preload(&mut c);
        let o = run(&mut c, None, LIMIT);
        assert_preloaded(scenario, &o);
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        let addr = out
            .lines()
            .find_map(|l| l.strip_prefix("ADDR="))
            .unwrap_or_else(|| panic!("{scenario}: no ADDR= line; stdout: {out}\nstderr: {err}"))
            .trim()
            .to_string();
        assert!(addr.starts_with("0x"), "{scenario}: odd address {addr:?}");
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGABRT),
            "{scenario} {env:?}: expected death by SIGABRT, got {}\nstdout: {out}\nstderr: {err}",
            describe(&o.status)
        );
        assert!(
            err.lines()
                .any(|l| l.contains("magpie:") && l.contains(&addr)),
            "{scenario} {env:?}: stderr has no \"magpie:\" line naming {addr}:\n{err}"
        );
    }
}

macro_rules! bad_input {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                expect_abort(stringify!($name));
            }
        )*
    };
}

mod bad_input {
    use super::expect_abort;
    bad_input!(
        double_free,
        double_free_sizes,
        double_free_large,
        double_free_aligned,
        free_stack,
        free_global,
        free_interior,
        free_interior_large,
        realloc_freed,
        realloc_freed_large,
        realloc_stack,
        realloc_interior,
        cxx_delete_twice,
    );
}

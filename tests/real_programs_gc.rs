//! Real programs under LD_PRELOAD=libmagpie.so with the collector on
//! (MAGPIE_GC=collect) and forced frequent cycles (MAGPIE_GC_STRESS), each
//! compared with the same run on glibc's malloc: identical stdout, stderr and
//! exit status. The conservative collector must never free memory a program
//! still reaches. The inputs are those of tests/real_programs.rs (python3
//! objects.py, sqlite3 queries.sql, perl hashes.pl, lua5.4 tables.lua, the
//! git workload, redis-server driven by redis-cli and redis-benchmark); the
//! stress values give a few hundred cycles or more per program.
//!
//! A test whose tool is not installed prints "skipped: <tool> not installed"
//! and passes. Debian's copies in /usr/bin are preferred.

mod preload_util;

use preload_util::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(240);

// MAGPIE_GC_STRESS per program, and the fewest completed cycles accepted
// (about half of what the stress value gives: python3 makes ~67k mallocs
// (pymalloc serves small objects), sqlite3 ~1.4M, perl ~1.6M, lua ~2.4M).
// A cycle costs ~20 ms (perl) to ~95 ms (lua) here.
const PY_STRESS: u64 = 250;
const PY_MIN: u64 = 100;
const SQLITE_STRESS: u64 = 5000;
const SQLITE_MIN: u64 = 100;
const PERL_STRESS: u64 = 8000;
const PERL_MIN: u64 = 100;
const LUA_STRESS: u64 = 10000;
const LUA_MIN: u64 = 100;
// The git workload runs ~165 processes (sh, git, awk...) making ~46k
// allocations in all: stress 10 gives ~4,300 cycles, summed over the
// processes that print a summary (~3.5 s here).
const GIT_STRESS: u64 = 10;
const GIT_MIN: u64 = 2000;
// redis-server makes ~870k allocations for the commands (twice) and the
// benchmark: stress 1000 gives ~860 cycles (~12 s here).
const REDIS_STRESS: u64 = 1000;
const REDIS_MIN: u64 = 400;

/// `s` without magpie's `MAGPIE_STATS=1` summary (a "magpie: statistics"
/// line and the indented lines after it).
fn without_stats(s: &str) -> String {
    let mut out = String::new();
    let mut in_stats = false;
    for l in s.split_inclusive('\n') {
        if l.starts_with("magpie: statistics") {
            in_stats = true;
            continue;
        }
        if in_stats && l.starts_with(' ') {
            continue;
        }
        in_stats = false;
        out.push_str(l);
    }
    out
}

/// The collector's completed and abandoned cycles, summed over every
/// summary in `s` (a program that runs others prints one per process).
fn cycles(s: &str) -> (u64, u64) {
    let mut sum = (0, 0);
    let mut found = false;
    // "  collector   collect: N cycles (M abandoned), ..."
    for l in s
        .lines()
        .filter(|l| l.trim_start().starts_with("collector"))
    {
        let nums: Vec<u64> = l
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .take(2)
            .map(|w| w.parse().unwrap())
            .collect();
        sum.0 += nums[0];
        sum.1 += nums[1];
        found = true;
    }
    assert!(
        found,
        "no collector line in the summary:\n{}",
        tail(s, 3000)
    );
    sum
}

/// Asserts that magpie's run `m` (its stdout and stderr, less magpie's own
/// lines, are `mout` and `merr`) matches glibc's run `g`: status, stdout and
/// stderr.
fn assert_same_run(what: &str, g: &Output, m: &Output, mout: &[u8], merr: &str) {
    let raw = String::from_utf8_lossy(&m.stderr);
    assert!(
        g.status == m.status,
        "{what}: glibc run: {}, magpie run: {}\nmagpie stderr:\n{}",
        describe(&g.status),
        describe(&m.status),
        tail(&raw, 3000)
    );
    assert!(
        g.stdout == mout,
        "{what}: stdout differs: {}\nmagpie stderr:\n{}",
        first_difference(
            &String::from_utf8_lossy(&g.stdout),
            &String::from_utf8_lossy(mout)
        ),
        tail(&raw, 3000)
    );
    let ge = String::from_utf8_lossy(&g.stderr);
    assert!(
        ge == merr,
        "{what}: stderr differs: {}\nmagpie stderr:\n{}",
        first_difference(&ge, merr),
        tail(&raw, 3000)
    );
}

/// Where a run's MAGPIE_STATS=1 summaries may land.
#[derive(Clone, Copy, PartialEq)]
enum Summaries {
    /// On stderr.
    Stderr,
    /// On stderr and stdout: the program runs others, some of them with
    /// stderr sent to stdout (the git workload's `git fsck 2>&1`).
    StderrAndStdout,
}

/// Runs `make()` on glibc's malloc and under magpie with the collector on and
/// a cycle every `stress` allocations; asserts identical status, stdout and
/// stderr, and at least `min_cycles` completed cycles (summed over the
/// processes that print a summary).
fn compare_gc(
    what: &str,
    make: impl Fn() -> Command,
    input: Option<&[u8]>,
    stress: u64,
    min_cycles: u64,
    summaries: Summaries,
) -> (Output, Output) {
    let t0 = Instant::now();
    let g = run(&mut make(), input, LIMIT);
    let t1 = Instant::now();
    let mut mc = make();
    preload(&mut mc)
        .env("MAGPIE_GC", "collect")
        .env("MAGPIE_GC_STRESS", stress.to_string())
        .env("MAGPIE_STATS", "1");
    let m = run(&mut mc, input, LIMIT);
    let t2 = Instant::now();
    assert_preloaded(what, &m);
    let merr = String::from_utf8_lossy(&m.stderr).into_owned();
    let (mout, (done, abandoned)) = match summaries {
        Summaries::Stderr => (m.stdout.clone(), cycles(&merr)),
        Summaries::StderrAndStdout => {
            let out = String::from_utf8_lossy(&m.stdout);
            (
                without_stats(&out).into_bytes(),
                cycles(&format!("{merr}{out}")),
            )
        }
    };
    let pauses = merr
        .lines()
        .find(|l| l.trim_start().starts_with("pauses"))
        .unwrap_or("")
        .trim();
    eprintln!(
        "{what}: glibc {:.2}s, magpie (collect, stress {stress}) {:.2}s; {done} cycles ({abandoned} abandoned); first summary: {pauses}",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
    );
    assert_same_run(what, &g, &m, &mout, &without_stats(&merr));
    assert!(
        done >= min_cycles,
        "{what}: only {done} collector cycles ({abandoned} abandoned), expected at least {min_cycles}"
    );
    (g, m)
}

#[test]
fn python_object_heavy_script_collected() {
    let Some(py) = tool_or_skip("python3") else {
        return;
    };
    let dir = scratch("gc_python_objects");
    let script = program("objects.py");
    compare_gc(
        "python3 objects.py",
        || {
            let mut c = clean(&py, &dir);
            c.env("PYTHONHASHSEED", "0")
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .arg(&script);
            c
        },
        None,
        PY_STRESS,
        PY_MIN,
        Summaries::Stderr,
    );
}

#[test]
fn sqlite3_in_memory_database_collected() {
    let Some(sq) = tool_or_skip("sqlite3") else {
        return;
    };
    let dir = scratch("gc_sqlite3");
    let sql = std::fs::read(program("queries.sql")).unwrap();
    let (g, _) = compare_gc(
        "sqlite3 :memory:",
        || sqlite_workload(&sq, &dir),
        Some(&sql),
        SQLITE_STRESS,
        SQLITE_MIN,
        Summaries::Stderr,
    );
    let out = String::from_utf8_lossy(&g.stdout);
    assert!(out.starts_with("300000|"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
}

#[test]
fn perl_hashes_and_regexes_collected() {
    let Some(perl) = tool_or_skip("perl") else {
        return;
    };
    let dir = scratch("gc_perl");
    compare_gc(
        "perl hashes.pl",
        || perl_workload(&perl, &dir),
        None,
        PERL_STRESS,
        PERL_MIN,
        Summaries::Stderr,
    );
}

#[test]
fn lua_tables_collected() {
    let Some(lua) = tool_or_skip("lua5.4") else {
        return;
    };
    let dir = scratch("gc_lua");
    compare_gc(
        "lua5.4 tables.lua",
        || lua_workload(&lua, &dir),
        None,
        LUA_STRESS,
        LUA_MIN,
        Summaries::Stderr,
    );
}

#[test]
fn git_repository_workload_collected() {
    let Some(git) = tool_or_skip("git") else {
        return;
    };
    let dir = scratch("gc_git");
    let sh = find_tool("sh").expect("sh");
    let (g, _) = compare_gc(
        "git workload",
        git_workload(&sh, &git, &dir),
        None,
        GIT_STRESS,
        GIT_MIN,
        Summaries::StderrAndStdout,
    );
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
}

/// The bit of the collector's stop signal (SIGPWR) in a SigBlk mask.
const SIGPWR_BIT: u64 = 1 << (libc::SIGPWR - 1);

/// Debian's redis-server is linked with libjemalloc, which magpie's malloc
/// replaces but which redis still configures: by default (jemalloc-bg-thread
/// yes) jemalloc starts a background thread with every signal blocked, so no
/// cycle can stop the world once it runs (see the next test). Here the
/// thread is turned off, and every cycle must complete: the same replies as
/// redis without magpie, before and after a benchmark, at least REDIS_MIN
/// cycles, none abandoned, a clean shutdown and nothing but the summary on
/// stderr.
#[test]
fn redis_server_collected() {
    let Some(server) = tool_or_skip("redis-server") else {
        return;
    };
    let Some(cli) = tool_or_skip("redis-cli") else {
        return;
    };
    let Some(bench) = tool_or_skip("redis-benchmark") else {
        return;
    };
    let dir = scratch("gc_redis");
    let no_bg_thread = |c: &mut Command| {
        c.args(["--jemalloc-bg-thread", "no"]);
    };
    let reference = start_redis(&server, &cli, &dir, "reference", no_bg_thread);
    let t = Instant::now();
    let mut magpie = start_redis(&server, &cli, &dir, "magpie", |c| {
        no_bg_thread(c);
        preload(c)
            .env("MAGPIE_GC", "collect")
            .env("MAGPIE_GC_STRESS", REDIS_STRESS.to_string())
            .env("MAGPIE_STATS", "1");
    });
    let threads = magpie.threads_sigblk();
    assert!(
        threads.iter().all(|(_, blk)| blk & SIGPWR_BIT == 0),
        "a redis-server thread blocks SIGPWR although jemalloc's background thread is off: {threads:?}"
    );

    let want = reference.replies(&cli, &dir);
    assert!(want.len() > 300, "{}", String::from_utf8_lossy(&want));
    let check = |got: &[u8], when: &str| {
        assert!(
            want == got,
            "redis replies {when} differ: {}",
            first_difference(
                &String::from_utf8_lossy(&want),
                &String::from_utf8_lossy(got)
            )
        );
    };
    check(&magpie.replies(&cli, &dir), "before the benchmark");
    magpie.benchmark(&bench, &dir);
    check(&magpie.replies(&cli, &dir), "after the benchmark");
    let (status, err) = magpie.shutdown(&cli, &dir);
    let (done, abandoned) = cycles(&err);
    eprintln!(
        "redis-server (collect, stress {REDIS_STRESS}): {:.2}s, {done} cycles ({abandoned} abandoned)",
        t.elapsed().as_secs_f64()
    );
    assert!(
        matches!(status, Some(s) if s.success()),
        "redis-server (magpie) did not shut down cleanly: {:?}\nstderr:\n{}\nlog:\n{}",
        status.map(|s| describe(&s)),
        tail(&err, 3000),
        magpie.log_tail()
    );
    assert!(
        without_stats(&err).is_empty(),
        "redis-server (magpie) wrote to stderr:\n{}",
        tail(&err, 3000)
    );
    assert!(
        done >= REDIS_MIN && abandoned == 0,
        "redis-server: {done} collector cycles ({abandoned} abandoned), expected at least {REDIS_MIN} and none abandoned"
    );
    drop(reference);
}

/// redis-server as Debian configures it: jemalloc's background thread
/// (jemalloc_bg_thd) blocks every signal, SIGPWR included, for its whole
/// life. Every cycle that starts after it does must give up (nothing is
/// freed), magpie says so once on stderr, and redis answers as it does
/// without magpie. Only cycles before the thread starts complete: start-up
/// makes ~24,000 allocations, so at most 10 at this stress.
#[test]
fn redis_server_with_jemalloc_background_thread_abandons_cycles() {
    let Some(server) = tool_or_skip("redis-server") else {
        return;
    };
    let Some(cli) = tool_or_skip("redis-cli") else {
        return;
    };
    const STRESS: u64 = 5000;
    let dir = scratch("gc_redis_bg_thread");
    let reference = start_redis(&server, &cli, &dir, "reference", |_| {});
    let mut magpie = start_redis(&server, &cli, &dir, "magpie", |c| {
        preload(c)
            .env("MAGPIE_GC", "collect")
            .env("MAGPIE_GC_STRESS", STRESS.to_string())
            .env("MAGPIE_STATS", "1");
    });
    let threads = magpie.threads_sigblk();
    assert!(
        threads
            .iter()
            .any(|(name, blk)| name == "jemalloc_bg_thd" && blk & SIGPWR_BIT != 0),
        "no jemalloc background thread blocking SIGPWR: {threads:?}"
    );
    let want = reference.replies(&cli, &dir);
    let got = magpie.replies(&cli, &dir);
    assert!(
        want == got,
        "redis replies differ: {}",
        first_difference(
            &String::from_utf8_lossy(&want),
            &String::from_utf8_lossy(&got)
        )
    );
    let (status, err) = magpie.shutdown(&cli, &dir);
    let (done, abandoned) = cycles(&err);
    eprintln!("redis-server (jemalloc background thread, stress {STRESS}): {done} cycles, {abandoned} abandoned");
    assert!(
        matches!(status, Some(s) if s.success()),
        "redis-server (magpie) did not shut down cleanly: {:?}\nstderr:\n{}\nlog:\n{}",
        status.map(|s| describe(&s)),
        tail(&err, 3000),
        magpie.log_tail()
    );
    assert!(
        abandoned >= 20 && done <= 10,
        "redis-server: {done} cycles completed and {abandoned} abandoned; expected at least 20 abandoned and at most 10 completed (before jemalloc's thread)"
    );
    let rest = without_stats(&err);
    assert!(
        rest.lines().count() == 1 && rest.contains("(jemalloc_bg_thd) blocks the stop signal"),
        "expected one warning naming jemalloc_bg_thd on stderr, got:\n{}",
        tail(&rest, 3000)
    );
    drop(reference);
}

/// Runs `make()` on glibc's malloc and under magpie's leakcheck (report to a
/// file, so the program's own stderr can be compared): identical status,
/// stdout and stderr; the report exists and ends with its totals line.
/// Leakcheck runs cycles only for GC-managed memory and reports, so
/// MAGPIE_GC_STRESS=`stress` makes leak-counting cycles run during the
/// program too (a tenth as many as the collect tests).
fn compare_leakcheck(
    what: &str,
    dir: &std::path::Path,
    make: impl Fn() -> Command,
    input: Option<&[u8]>,
    stress: u64,
) {
    let g = run(&mut make(), input, LIMIT);
    let report = dir.join("leaks.%p.txt");
    for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if f.file_name().to_string_lossy().starts_with("leaks.") {
            let _ = std::fs::remove_file(f.path());
        }
    }
    let mut mc = make();
    preload(&mut mc)
        .env("MAGPIE_GC", "leakcheck")
        .env("MAGPIE_GC_STRESS", stress.to_string())
        .env("MAGPIE_LEAK_REPORT", &report);
    let m = run(&mut mc, input, LIMIT);
    assert_preloaded(what, &m);
    assert_same_run(what, &g, &m, &m.stdout, &String::from_utf8_lossy(&m.stderr));
    let reports: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with("leaks."))
        .map(|f| std::fs::read_to_string(f.path()).unwrap())
        .collect();
    assert!(!reports.is_empty(), "{what}: no leak report written");
    for r in &reports {
        let total = r.lines().rev().find(|l| l.starts_with("magpie: total: "));
        assert!(
            total.is_some(),
            "{what}: report without a totals line:\n{}",
            tail(r, 2000)
        );
        eprintln!("{what}: {}", total.unwrap());
    }
}

#[test]
fn leakcheck_sqlite3_lua_perl_python_run_unchanged() {
    if let Some(sq) = tool_or_skip("sqlite3") {
        let dir = scratch("leak_sqlite3");
        let sql = std::fs::read(program("queries.sql")).unwrap();
        compare_leakcheck(
            "sqlite3 :memory:",
            &dir,
            || sqlite_workload(&sq, &dir),
            Some(&sql),
            SQLITE_STRESS * 10,
        );
    }
    if let Some(lua) = tool_or_skip("lua5.4") {
        let dir = scratch("leak_lua");
        compare_leakcheck(
            "lua5.4 tables.lua",
            &dir,
            || lua_workload(&lua, &dir),
            None,
            LUA_STRESS * 10,
        );
    }
    if let Some(perl) = tool_or_skip("perl") {
        let dir = scratch("leak_perl");
        compare_leakcheck(
            "perl hashes.pl",
            &dir,
            || perl_workload(&perl, &dir),
            None,
            PERL_STRESS * 10,
        );
    }
    if let Some(py) = tool_or_skip("python3") {
        let dir = scratch("leak_python");
        let script = program("objects.py");
        compare_leakcheck(
            "python3 objects.py",
            &dir,
            || {
                let mut c = clean(&py, &dir);
                c.env("PYTHONHASHSEED", "0")
                    .env("PYTHONDONTWRITEBYTECODE", "1")
                    .arg(&script);
                c
            },
            None,
            PY_STRESS * 10,
        );
    }
}

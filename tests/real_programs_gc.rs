//! Real programs under LD_PRELOAD=libmagpie.so with the collector on
//! (MAGPIE_GC=collect) and forced frequent cycles (MAGPIE_GC_STRESS), each
//! compared with the same run on glibc's malloc: identical stdout, stderr and
//! exit status. The conservative collector must never free memory a program
//! still reaches. The inputs are those of tests/real_programs.rs (python3
//! objects.py, sqlite3 queries.sql, perl hashes.pl, lua5.4 tables.lua); the
//! stress values give a few hundred cycles per program.
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

/// The collector's completed and abandoned cycles from the summary.
fn cycles(stderr: &str) -> (u64, u64) {
    let l = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("collector"))
        .unwrap_or_else(|| panic!("no collector line in the summary:\n{}", tail(stderr, 3000)));
    // "collector   collect: N cycles (M abandoned), ..."
    let nums: Vec<u64> = l
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(2)
        .map(|w| w.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

/// Asserts that magpie's run `m` (its stderr, less magpie's own lines, is
/// `merr`) matches glibc's run `g`: status, stdout and stderr.
fn assert_same_run(what: &str, g: &Output, m: &Output, merr: &str) {
    let raw = String::from_utf8_lossy(&m.stderr);
    assert!(
        g.status == m.status,
        "{what}: glibc run: {}, magpie run: {}\nmagpie stderr:\n{}",
        describe(&g.status),
        describe(&m.status),
        tail(&raw, 3000)
    );
    let (gs, ms) = (
        String::from_utf8_lossy(&g.stdout),
        String::from_utf8_lossy(&m.stdout),
    );
    assert!(
        g.stdout == m.stdout,
        "{what}: stdout differs: {}\nmagpie stderr:\n{}",
        first_difference(&gs, &ms),
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

/// Runs `make()` on glibc's malloc and under magpie with the collector on and
/// a cycle every `stress` allocations; asserts identical status, stdout and
/// stderr, and at least `min_cycles` completed cycles.
fn compare_gc(
    what: &str,
    make: impl Fn() -> Command,
    input: Option<&[u8]>,
    stress: u64,
    min_cycles: u64,
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
    let summary = merr
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("collector") || t.starts_with("pauses")
        })
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!(
        "{what}: glibc {:.2}s, magpie (collect, stress {stress}) {:.2}s; {summary}",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
    );
    assert_same_run(what, &g, &m, &without_stats(&merr));
    let (done, abandoned) = cycles(&merr);
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
    );
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
    assert_same_run(what, &g, &m, &String::from_utf8_lossy(&m.stderr));
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

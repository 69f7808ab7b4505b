//! Real programs under LD_PRELOAD=libmagpie.so, each compared with the same
//! run on glibc's malloc: identical output and exit status. python3 (an
//! object-heavy script and modules of CPython's own test suite), sqlite3,
//! perl, lua5.4, git, gcc/g++, sort (50 MB), and redis-server driven by
//! redis-cli and redis-benchmark.
//!
//! A test whose tool is not installed prints "skipped: <tool> not installed"
//! and passes; CI (.ci/run) installs them all. Debian's copies in /usr/bin are
//! preferred over anything earlier in PATH (pyenv shims, /usr/local builds).

mod preload_util;

use preload_util::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn python_object_heavy_script() {
    let Some(py) = tool_or_skip("python3") else {
        return;
    };
    let dir = scratch("python_objects");
    let script = program("objects.py");
    compare_runs(
        "python3 objects.py",
        || {
            let mut c = clean(&py, &dir);
            c.env("PYTHONHASHSEED", "0")
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .arg(&script);
            c
        },
        None,
        LIMIT,
        true,
    );
    // The interpreter really ran on magpie: its own malloc symbol is magpie's.
    let mut c = clean(&py, &dir);
    c.args([
        "-c",
        "import ctypes; ctypes.CDLL(None).magpie_malloc; print('magpie is loaded')",
    ]);
    preload(&mut c);
    let o = run(&mut c, None, LIMIT);
    assert!(
        o.status.success(),
        "python3 under LD_PRELOAD does not see magpie_malloc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The outcome of every test case of a `python3 -m test -v` run:
/// "name (class) ... ok|FAIL|ERROR|skipped ..." lines, counted.
fn test_outcomes(out: &[u8]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    let text = String::from_utf8_lossy(out);
    for l in text.lines() {
        if let Some((case, result)) = l.rsplit_once(" ... ") {
            let ok = [
                "ok",
                "FAIL",
                "ERROR",
                "expected failure",
                "unexpected success",
            ]
            .contains(&result)
                || result.starts_with("skipped");
            if ok && case.starts_with("test") {
                *m.entry(format!("{case} ... {result}")).or_insert(0) += 1;
            }
        }
    }
    m
}

#[test]
fn python_test_suite_modules() {
    let Some(py) = tool_or_skip("python3") else {
        return;
    };
    let dir = scratch("python_suite");
    // Debian ships CPython's test suite separately (libpython3.X-testsuite).
    let mut probe = clean(&py, &dir);
    probe.args([
        "-c",
        "import test.libregrtest, test.test_dict, test.test_json",
    ]);
    if !run(&mut probe, None, LIMIT).status.success() {
        skip("python3 test suite (libpython3.11-testsuite) not installed");
        return;
    }
    let modules = [
        "test_dict",
        "test_list",
        "test_json",
        "test_deque",
        "test_heapq",
        "test_sort",
        "test_re",
        "test_collections",
        "test_unicode",
        "test_bytes",
        "test_array",
        "test_functools",
        "test_ordered_dict",
        "test_gc",
    ];
    let make = || {
        let mut c = clean(&py, &dir);
        c.env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(["-m", "test", "-v"])
            .args(modules);
        c
    };
    let t0 = Instant::now();
    let g = run(&mut make(), None, LIMIT);
    let t1 = Instant::now();
    let mut mc = make();
    preload(&mut mc);
    let m = run(&mut mc, None, LIMIT);
    eprintln!(
        "python3 -m test: glibc {:.2}s, magpie {:.2}s",
        (t1 - t0).as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    assert_preloaded("python3 -m test", &m);
    let (go, mo) = (test_outcomes(&g.stdout), test_outcomes(&m.stdout));
    let n: usize = go.values().sum();
    assert!(
        n > 1000,
        "only {n} test cases found in the glibc run:\n{}",
        tail(&String::from_utf8_lossy(&g.stdout), 3000)
    );
    let only_g: Vec<_> = go
        .iter()
        .filter(|(k, v)| mo.get(*k) != Some(v))
        .map(|(k, _)| k)
        .take(20)
        .collect();
    let only_m: Vec<_> = mo
        .iter()
        .filter(|(k, v)| go.get(*k) != Some(v))
        .map(|(k, _)| k)
        .take(20)
        .collect();
    assert!(
        only_g.is_empty() && only_m.is_empty() && g.status == m.status,
        "test outcomes differ ({} / {}):\nglibc only: {only_g:#?}\nmagpie only: {only_m:#?}\nmagpie tail:\n{}",
        describe(&g.status),
        describe(&m.status),
        tail(&String::from_utf8_lossy(&m.stdout), 3000)
    );
    eprintln!("python3 -m test: {n} test cases, same outcomes");
}

#[test]
fn sqlite3_in_memory_database() {
    let Some(sq) = tool_or_skip("sqlite3") else {
        return;
    };
    let dir = scratch("sqlite3");
    let sql = std::fs::read(program("queries.sql")).unwrap();
    let (g, _) = compare_runs(
        "sqlite3 :memory:",
        || sqlite_workload(&sq, &dir),
        Some(&sql),
        LIMIT,
        true,
    );
    let out = String::from_utf8_lossy(&g.stdout);
    assert!(out.starts_with("300000|"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
}

#[test]
fn perl_hashes_and_regexes() {
    let Some(perl) = tool_or_skip("perl") else {
        return;
    };
    let dir = scratch("perl");
    compare_runs(
        "perl hashes.pl",
        || perl_workload(&perl, &dir),
        None,
        LIMIT,
        true,
    );
}

#[test]
fn lua_tables() {
    let Some(lua) = tool_or_skip("lua5.4") else {
        return;
    };
    let dir = scratch("lua");
    compare_runs(
        "lua5.4 tables.lua",
        || lua_workload(&lua, &dir),
        None,
        LIMIT,
        true,
    );
}

#[test]
fn git_repository_workload() {
    let Some(git) = tool_or_skip("git") else {
        return;
    };
    let dir = scratch("git");
    let sh = find_tool("sh").expect("sh");
    let (g, _) = compare_runs(
        "git workload",
        git_workload(&sh, &git, &dir),
        None,
        LIMIT,
        true,
    );
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
}

#[test]
fn gcc_compiles_identical_objects() {
    let Some(gcc) = tool_or_skip("gcc") else {
        return;
    };
    let gxx = find_tool("g++");
    let dir = scratch("gcc");
    let tests = manifest_dir().join("tests");
    // Sources, relative to tests/ (the compiler runs there so paths match).
    let mut jobs: Vec<(PathBuf, Vec<&str>)> = vec![
        (gcc.clone(), vec!["programs/compute.c"]),
        (gcc.clone(), vec!["-Ic", "-w", "c/api.c"]),
        (gcc.clone(), vec!["-Ic", "-w", "c/threads.c"]),
    ];
    match &gxx {
        Some(gxx) => jobs.push((gxx.clone(), vec!["-std=c++17", "-Ic", "c/cxx_new.cpp"])),
        None => skip("g++ not installed (C++ part of the gcc test)"),
    }
    for (i, (cc, args)) in jobs.iter().enumerate() {
        let mut objs = Vec::new();
        for tag in ["glibc", "magpie"] {
            let obj = dir.join(format!("{tag}-{i}.o"));
            let mut c = clean(cc, &tests);
            c.env("TMPDIR", &dir)
                .args(["-O2", "-g", "-c"])
                .args(args)
                .arg("-o")
                .arg(&obj);
            if tag == "magpie" {
                preload(&mut c);
            }
            let t = Instant::now();
            let o = run(&mut c, None, LIMIT);
            eprintln!(
                "{tag}: {} {:?}: {:.2}s",
                cc.display(),
                args,
                t.elapsed().as_secs_f64()
            );
            assert_preloaded("gcc", &o);
            assert!(
                o.status.success(),
                "{tag}: {:?} failed: {}\n{}",
                c,
                describe(&o.status),
                String::from_utf8_lossy(&o.stderr)
            );
            objs.push(obj);
        }
        assert!(
            std::fs::read(&objs[0]).unwrap() == std::fs::read(&objs[1]).unwrap(),
            "{:?}: the object compiled with magpie preloaded differs from glibc's",
            args
        );
    }
    // Link compute.o (with the linker under magpie too) and compare the
    // programs' output.
    let mut outs = Vec::new();
    for tag in ["glibc", "magpie"] {
        let exe = dir.join(format!("compute-{tag}"));
        let mut c = clean(&gcc, &dir);
        c.arg(dir.join(format!("{tag}-0.o"))).arg("-o").arg(&exe);
        if tag == "magpie" {
            preload(&mut c);
        }
        let o = run(&mut c, None, LIMIT);
        assert!(
            o.status.success(),
            "link: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = run(&mut Command::new(&exe), None, LIMIT);
        assert!(o.status.success());
        outs.push(o.stdout);
    }
    assert_eq!(outs[0], outs[1], "compute's output differs");
    assert!(String::from_utf8_lossy(&outs[0]).starts_with("median "));
}

/// Writes about `bytes` of lines "<word> <number> <word>" (deterministic).
fn generate_sort_input(path: &Path, bytes: usize) {
    use std::io::Write;
    let f = std::fs::File::create(path).unwrap();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut r = Mix(2024);
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    let mut written = 0;
    let mut line = Vec::with_capacity(64);
    while written < bytes {
        line.clear();
        let x = r.next();
        for k in 0..(3 + (x % 10) as usize) {
            line.push(letters[((x >> (4 + k * 5)) % 26) as usize]);
        }
        let y = r.next();
        write!(line, " {} ", y % 1_000_000).unwrap();
        for k in 0..(2 + (y >> 40) as usize % 6) {
            line.push(letters[((y >> (k * 6)) % 26) as usize]);
        }
        line.push(b'\n');
        w.write_all(&line).unwrap();
        written += line.len();
    }
    w.flush().unwrap();
}

#[test]
fn sort_50_mb() {
    let Some(sort) = tool_or_skip("sort") else {
        return;
    };
    let dir = scratch("sort");
    let input = dir.join("input.txt");
    generate_sort_input(&input, 50 << 20);
    let variants: [&[&str]; 2] = [
        // Lexicographic, in memory.
        &[],
        // Numeric key then word, small buffer (temporary files and merges), 2 threads.
        &["-t", " ", "-k2,2n", "-k1,1", "-S", "8M", "--parallel=2"],
    ];
    for (i, args) in variants.iter().enumerate() {
        let mut sums = Vec::new();
        for tag in ["glibc", "magpie"] {
            let out = dir.join(format!("sorted-{i}-{tag}.txt"));
            let mut c = clean(&sort, &dir);
            c.args(*args).arg("-o").arg(&out).arg(&input);
            if tag == "magpie" {
                preload(&mut c);
            }
            let t = Instant::now();
            let o = run(&mut c, None, LIMIT);
            eprintln!("sort {args:?} ({tag}): {:.2}s", t.elapsed().as_secs_f64());
            assert_preloaded("sort", &o);
            assert!(
                o.status.success(),
                "sort {args:?} ({tag}): {}\n{}",
                describe(&o.status),
                String::from_utf8_lossy(&o.stderr)
            );
            sums.push(checksum(&out));
            let _ = std::fs::remove_file(&out);
        }
        assert_eq!(
            sums[0], sums[1],
            "sort {args:?}: (checksum, length) differ: glibc vs magpie"
        );
        assert_eq!(sums[0].1, std::fs::metadata(&input).unwrap().len());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn redis_server_commands_and_benchmark() {
    let Some(server) = tool_or_skip("redis-server") else {
        return;
    };
    let Some(cli) = tool_or_skip("redis-cli") else {
        return;
    };
    let Some(bench) = tool_or_skip("redis-benchmark") else {
        return;
    };
    let dir = scratch("redis");

    let glibc = start_redis(&server, &cli, &dir, "glibc", |_| {});
    let mut magpie = start_redis(&server, &cli, &dir, "magpie", |c| {
        preload(c);
    });
    // The magpie server really runs on magpie.
    let maps =
        std::fs::read_to_string(format!("/proc/{}/maps", magpie.child.id())).unwrap_or_default();
    assert!(
        maps.contains("libmagpie.so"),
        "redis-server did not load libmagpie.so"
    );

    let want = glibc.replies(&cli, &dir);
    let got = magpie.replies(&cli, &dir);
    assert!(
        want == got,
        "redis replies differ: {}",
        first_difference(
            &String::from_utf8_lossy(&want),
            &String::from_utf8_lossy(&got)
        )
    );
    assert!(want.len() > 300, "{}", String::from_utf8_lossy(&want));

    // A bounded benchmark against the magpie server.
    for l in magpie.benchmark(&bench, &dir) {
        eprintln!("  {l}");
    }

    // The server survived the benchmark and still answers the same.
    let again = magpie.replies(&cli, &dir);
    assert!(
        again == want,
        "redis replies after the benchmark differ: {}",
        first_difference(
            &String::from_utf8_lossy(&want),
            &String::from_utf8_lossy(&again)
        )
    );
    let (status, _) = magpie.shutdown(&cli, &dir);
    assert!(
        matches!(status, Some(s) if s.success()),
        "redis-server (magpie) did not shut down cleanly: {:?}\nlog:\n{}",
        status.map(|s| describe(&s)),
        magpie.log_tail()
    );
    drop(glibc);
}

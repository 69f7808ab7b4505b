//! Leak detection (MAGPIE_GC=leakcheck) of C programs under
//! LD_PRELOAD=libmagpie.so: tests/c/leaks.c leaks known sizes at known
//! functions, besides reachable and freed memory that must not appear. The
//! report (stderr, or MAGPIE_LEAK_REPORT) is parsed and checked site by site:
//! exact bytes and object counts, the leaking function first in the stack,
//! `main` below it, file:line from the debug info, and the totals line.

mod preload_util;

use preload_util::*;
use std::process::{Command, Output};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// One site of a report.
#[derive(Debug)]
struct Site {
    bytes: u64,
    objects: u64,
    frames: Vec<String>,
}

/// A parsed report: its sites in order, and the totals line (bytes, objects).
#[derive(Debug)]
struct Report {
    sites: Vec<Site>,
    totals: (u64, u64),
}

/// Parses every report in `text` (a program may write several).
fn parse_reports(text: &str) -> Vec<Report> {
    let mut out = Vec::new();
    let mut sites = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("magpie: total: ") {
            // "<bytes> bytes leaked in <objects> object(s) (<n> site(s))"
            let w: Vec<&str> = rest.split_whitespace().collect();
            let totals = (w[0].parse().unwrap(), w[4].parse().unwrap());
            out.push(Report {
                sites: std::mem::take(&mut sites),
                totals,
            });
        } else if line.ends_with(" leaked at:") {
            // "<bytes> bytes in <objects> object(s) leaked at:"
            let w: Vec<&str> = line.split_whitespace().collect();
            sites.push(Site {
                bytes: w[0].parse().unwrap(),
                objects: w[3].parse().unwrap(),
                frames: Vec::new(),
            });
        } else if let Some(f) = line.trim_start().strip_prefix('#') {
            if let Some(s) = sites.last_mut() {
                s.frames.push(f.to_string());
            }
        }
    }
    out
}

fn leaks_prog() -> std::path::PathBuf {
    build("leaks", &["leaks.c"], &["-g", "-O1", "-ldl", "-lpthread"])
}

/// Runs `leaks <scenario>` in leakcheck mode with `env`.
fn run_leaks(scenario: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(leaks_prog());
    c.arg(scenario).env("MAGPIE_GC", "leakcheck");
    for (k, v) in env {
        c.env(k, v);
    }
    run(preload(&mut c), None, LIMIT)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The single report of a run that exited 0 after printing "done".
fn one_report(o: &Output) -> Report {
    let (out, err) = text(o);
    assert!(
        o.status.success(),
        "{}\nstderr:\n{err}",
        describe(&o.status)
    );
    assert!(out.contains("done"), "stdout: {out}");
    let mut r = parse_reports(&err);
    assert_eq!(r.len(), 1, "expected one report:\n{err}");
    r.pop().unwrap()
}

/// Finds the site whose first frame is in `function`.
fn site<'a>(r: &'a Report, function: &str, err: &str) -> &'a Site {
    r.sites
        .iter()
        .find(|s| {
            s.frames
                .first()
                .is_some_and(|f| f.contains(&format!(" in {function}+")))
        })
        .unwrap_or_else(|| panic!("no site at {function} in:\n{err}"))
}

#[test]
fn sites_are_exact_and_sorted_and_symbolized() {
    let o = run_leaks("sites", &[]);
    let err = text(&o).1;
    let r = one_report(&o);
    let expect = [
        ("leak_large", 200_000, 1),
        ("leak_small", 1600, 16),
        ("make_node", 640, 10),
        ("leak_calloc", 600, 5),
    ];
    assert_eq!(r.sites.len(), expect.len(), "sites:\n{err}");
    for (i, &(f, bytes, objects)) in expect.iter().enumerate() {
        let s = site(&r, f, &err);
        assert_eq!((s.bytes, s.objects), (bytes, objects), "site {f}:\n{err}");
        // Largest first.
        assert!(r.sites[i].bytes == bytes, "order:\n{err}");
        // The program's own frames, with file:line from its debug info,
        // down to main.
        assert!(
            s.frames[0].contains("leaks.c:"),
            "no file:line at {f}:\n{err}"
        );
        assert!(
            s.frames[0].contains("/leaks)"),
            "no object path at {f}:\n{err}"
        );
        assert!(
            s.frames.iter().any(|fr| fr.contains(" in main+")),
            "no main under {f}:\n{err}"
        );
        assert!(
            s.frames.len() <= 8,
            "more frames than MAGPIE_LEAK_STACKS' default:\n{err}"
        );
    }
    // The list's nodes: make_node called from leak_list.
    let nodes = site(&r, "make_node", &err);
    assert!(nodes.frames[1].contains(" in leak_list+"), "{err}");
    assert_eq!(r.totals, (202_840, 32), "{err}");
    assert!(
        err.contains("magpie: leakcheck at exit: 202840 bytes leaked in 32 objects at 4 sites"),
        "{err}"
    );
}

/// The same malloc call (same return address and stack pointer) reached from
/// two callers, alternately: two sites, each with its own caller and exact
/// counts. Catches a reused stack that was not checked against the caller's
/// return address.
#[test]
fn same_call_from_two_callers_gives_two_sites() {
    let o = run_leaks("callers", &[]);
    let err = text(&o).1;
    let r = one_report(&o);
    assert_eq!(r.sites.len(), 2, "sites:\n{err}");
    assert_eq!(r.totals, (800, 20), "{err}");
    for (caller, bytes) in [("via_b", 480), ("via_a", 320)] {
        let s = r
            .sites
            .iter()
            .find(|s| {
                s.frames
                    .get(1)
                    .is_some_and(|f| f.contains(&format!(" in {caller}+")))
            })
            .unwrap_or_else(|| panic!("no site under {caller}:\n{err}"));
        assert!(s.frames[0].contains(" in leak_leaf+"), "{err}");
        assert_eq!(
            (s.bytes, s.objects),
            (bytes, 10),
            "site under {caller}:\n{err}"
        );
    }
}

#[test]
fn reachable_freed_and_libc_memory_is_not_reported() {
    let o = run_leaks("none", &[]);
    let err = text(&o).1;
    let r = one_report(&o);
    assert!(r.sites.is_empty(), "false leaks:\n{err}");
    assert_eq!(r.totals, (0, 0));
    assert!(err.contains("no leaks found"), "{err}");
}

#[test]
fn leaks_from_several_threads() {
    let o = run_leaks("threads", &[]);
    let err = text(&o).1;
    let r = one_report(&o);
    assert_eq!(r.sites.len(), 1, "{err}");
    let s = site(&r, "thread_leaker", &err);
    assert_eq!((s.bytes, s.objects), (2560, 40), "{err}");
    assert!(
        s.frames.iter().any(|f| f.contains(" in thread_main+")),
        "{err}"
    );
    assert_eq!(r.totals, (2560, 40));
}

#[test]
fn a_leak_is_counted_once_across_reports() {
    let o = run_leaks("twice", &[]);
    let (out, err) = text(&o);
    assert!(o.status.success() && out.contains("done"), "{err}");
    let reports = parse_reports(&err);
    assert_eq!(reports.len(), 3, "two on demand, one at exit:\n{err}");
    for r in &reports[..2] {
        assert_eq!(r.totals, (1000, 10), "{err}");
    }
    let last = &reports[2];
    assert_eq!(site(last, "leak_small", &err).objects, 10, "{err}");
    assert_eq!(site(last, "leak_calloc", &err).bytes, 240, "{err}");
    assert_eq!(last.totals, (1240, 12), "{err}");
}

/// The collector's helper marker threads allocate through glibc (their
/// thread descriptors' DTVs) and are not program threads: what they hold
/// must be neither reported nor freed.
#[test]
fn helper_marker_threads_leak_nothing() {
    let o = run_leaks(
        "none",
        &[("MAGPIE_LEAK_EXITCODE", "23"), ("MAGPIE_MARKERS", "4")],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
}

#[test]
fn exit_code_option() {
    let o = run_leaks("sites", &[("MAGPIE_LEAK_EXITCODE", "23")]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(23), "{err}");
    assert!(out.contains("done"), "stdout was not flushed: {out:?}");
    let o = run_leaks("none", &[("MAGPIE_LEAK_EXITCODE", "23")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

#[test]
fn report_to_a_file() {
    let dir = scratch("leak_report_file");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = dir.join("leaks.%p.txt");
    let o = run_leaks(
        "sites",
        &[("MAGPIE_LEAK_REPORT", pattern.to_str().unwrap())],
    );
    let err = text(&o).1;
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("leaked at"), "report went to stderr:\n{err}");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("leaks.") && name.ends_with(".txt") && !name.contains("%p"),
        "{name}"
    );
    let body = std::fs::read_to_string(&files[0]).unwrap();
    let r = parse_reports(&body);
    assert_eq!(r.len(), 1, "{body}");
    assert_eq!(r[0].totals, (202_840, 32), "{body}");
}

#[test]
fn stack_depth_option() {
    // No stacks: sizes and counts still exact, all under one unknown site.
    let o = run_leaks("sites", &[("MAGPIE_LEAK_STACKS", "0")]);
    let err = text(&o).1;
    let r = one_report(&o);
    assert_eq!(r.sites.len(), 1, "{err}");
    assert_eq!(
        (r.sites[0].bytes, r.sites[0].objects),
        (202_840, 32),
        "{err}"
    );
    assert!(err.contains("(no stack recorded)"), "{err}");
    // Two frames: the leaking function and its caller.
    let o = run_leaks("sites", &[("MAGPIE_LEAK_STACKS", "2")]);
    let err = text(&o).1;
    let r = one_report(&o);
    assert_eq!(r.sites.len(), 4, "{err}");
    for s in &r.sites {
        assert_eq!(s.frames.len(), 2, "{err}");
    }
    assert!(
        site(&r, "make_node", &err).frames[1].contains(" in leak_list+"),
        "{err}"
    );
}

#[test]
fn collect_mode_writes_no_report() {
    let mut c = Command::new(leaks_prog());
    c.arg("sites").env("MAGPIE_GC", "collect");
    let o = run(preload(&mut c), None, LIMIT);
    let (out, err) = text(&o);
    assert!(o.status.success() && out.contains("done"), "{err}");
    assert!(!err.contains("magpie:"), "{err}");
}

#[test]
fn launcher_runs_a_leak_hunt() {
    let mut c = Command::new(env!("CARGO_BIN_EXE_magpie"));
    c.args(["run", "--gc", "leakcheck", "--"])
        .arg(leaks_prog())
        .arg("sites");
    let o = run(&mut c, None, LIMIT);
    let r = one_report(&o);
    assert_eq!(r.totals, (202_840, 32), "{}", text(&o).1);
}

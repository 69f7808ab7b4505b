//! The `magpie` command: `magpie run` (preload and exec), usage errors, the
//! help text, and a small `magpie bench` that must produce its table and PNG.

use std::path::PathBuf;
use std::process::{Command, Output};

const MAGPIE: &str = env!("CARGO_BIN_EXE_magpie");

fn magpie(args: &[&str]) -> Output {
    Command::new(MAGPIE)
        .args(args)
        .env_remove("LD_PRELOAD")
        .env_remove("MAGPIE_STATS")
        .env_remove("MAGPIE_GC")
        .output()
        .expect("run magpie")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

#[test]
fn run_true_exits_zero() {
    let o = magpie(&["run", "--", "/bin/true"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
}

#[test]
fn run_passes_the_exit_status_through() {
    let o = magpie(&["run", "--", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    // Without `--`, options end at the program.
    let o = magpie(&["run", "sh", "-c", "exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", show(&o));
}

#[test]
fn run_stats_prints_the_summary_on_stderr() {
    let o = magpie(&["run", "--stats", "--", "/bin/echo", "hi"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(text(&o.stdout), "hi\n", "{}", show(&o));
    assert!(
        text(&o.stderr).contains("magpie: statistics"),
        "no statistics on stderr:\n{}",
        show(&o)
    );
}

#[test]
fn run_preloads_libmagpie_first() {
    let o = magpie(&["run", "--", "sh", "-c", "echo $LD_PRELOAD"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let preload = text(&o.stdout);
    let first = preload.trim().split(':').next().unwrap_or("");
    assert!(first.ends_with("/libmagpie.so"), "LD_PRELOAD = {preload:?}");
    assert!(PathBuf::from(first).is_file(), "{first} is not a file");

    // An existing LD_PRELOAD is kept, after magpie's library.
    let other = "/lib/x86_64-linux-gnu/libm.so.6";
    if PathBuf::from(other).exists() {
        let o = Command::new(MAGPIE)
            .args(["run", "--", "sh", "-c", "echo $LD_PRELOAD"])
            .env("LD_PRELOAD", other)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        let p = text(&o.stdout);
        let parts: Vec<&str> = p.trim().split(':').collect();
        assert_eq!(parts.len(), 2, "{p:?}");
        assert!(parts[0].ends_with("/libmagpie.so"), "{p:?}");
        assert_eq!(parts[1], other);
    }
}

#[test]
fn run_sets_the_magpie_variables() {
    let o = magpie(&[
        "run",
        "--gc",
        "leakcheck",
        "--stats",
        "--",
        "sh",
        "-c",
        "echo \"$MAGPIE_GC $MAGPIE_STATS\"",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(text(&o.stdout), "leakcheck 1\n", "{}", show(&o));
    let o = magpie(&["run", "--gc=off", "--", "sh", "-c", "echo \"$MAGPIE_GC\""]);
    assert_eq!(text(&o.stdout), "off\n", "{}", show(&o));
}

#[test]
fn run_names_a_program_it_cannot_execute() {
    let o = magpie(&["run", "--", "magpie-no-such-program"]);
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("magpie-no-such-program"),
        "{}",
        show(&o)
    );
    // A file that is not executable.
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let o = magpie(&["run", "--", file]);
    assert_eq!(o.status.code(), Some(126), "{}", show(&o));
    assert!(text(&o.stderr).contains(file), "{}", show(&o));
}

#[test]
fn run_names_a_missing_library() {
    let o = magpie(&[
        "run",
        "--lib",
        "/nonexistent/libmagpie.so",
        "--",
        "/bin/true",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("/nonexistent/libmagpie.so"),
        "{}",
        show(&o)
    );
}

#[test]
fn bad_usage_exits_2_with_a_message() {
    for args in [
        &["run"][..],
        &["run", "--"],
        &["run", "--gc", "sometimes", "--", "/bin/true"],
        &["run", "--gc"],
        &["run", "--frobnicate", "--", "/bin/true"],
        &["frobnicate"],
        &["demo", "--runs", "0"],
        &["bench", "--runs", "x"],
        &["bench", "--only", "nosuchbench"],
        &["bench", "--allocators", "nosuchalloc"],
        &["bench", "--threads", "0"],
        &["bench", "--quick=yes"],
    ] {
        let o = magpie(args);
        assert_eq!(o.status.code(), Some(2), "magpie {args:?}: {}", show(&o));
        let err = text(&o.stderr);
        assert!(err.starts_with("magpie"), "magpie {args:?}: {}", show(&o));
        assert!(err.contains("--help"), "magpie {args:?}: {}", show(&o));
    }
}

#[test]
fn help_is_complete() {
    for flag in ["--help", "-h", "help"] {
        let o = magpie(&[flag]);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        let h = text(&o.stdout);
        for word in [
            "magpie run",
            "magpie bench",
            "magpie demo",
            "--gc",
            "--stats",
            "--lib",
            "--quick",
            "--runs",
            "--threads",
            "--only",
            "--out",
            "--src",
            "--allocators",
            "--no-install",
            "--timeout",
            "MAGPIE_STATS",
            "MAGPIE_GC=",
            "MAGPIE_GOGC",
            "MAGPIE_RSEQ",
            "MAGPIE_DECAY_MS",
            "MAGPIE_RETAIN",
            "MAGPIE_RESERVE",
            "MAGPIE_SCAN_ALL",
            "MAGPIE_GC_STRESS",
            "MAGPIE_LEAK_STACKS",
            "LD_PRELOAD",
        ] {
            assert!(h.contains(word), "help lacks {word}");
        }
    }
}

#[test]
fn bench_quick_writes_the_table_and_the_chart() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("launcher-bench");
    let _ = std::fs::remove_dir_all(&out);
    let o = magpie(&[
        "bench",
        "--quick",
        "--only",
        "glibc_simple",
        "--runs",
        "1",
        "--allocators",
        "magpie,glibc",
        "--no-install",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let table = text(&o.stdout);
    assert!(
        table.contains("| benchmark | magpie s | magpie ratio | magpie MiB | glibc s |"),
        "{}",
        show(&o)
    );
    assert!(table.contains("| glibc_simple |"), "{}", show(&o));
    assert!(table.contains("geometric mean"), "{}", show(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("bench.md")).unwrap(),
        table,
        "bench.md differs from stdout"
    );
    let csv = std::fs::read_to_string(out.join("bench.csv")).unwrap();
    assert!(csv.starts_with("benchmark,"), "{csv}");
    assert_eq!(csv.lines().count(), 3, "{csv}");

    let png = std::fs::read(out.join("bench.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&png[8..16], b"\x00\x00\x00\x0dIHDR", "IHDR first, 13 bytes");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(w >= 200 && h >= 200, "{w}x{h}");
    assert_eq!(png[24], 8, "bit depth");
    assert!(png[25] == 2 || png[25] == 3, "colour type {}", png[25]);
    assert_eq!(&png[png.len() - 12..], b"\x00\x00\x00\x00IEND\xaeB`\x82");
}

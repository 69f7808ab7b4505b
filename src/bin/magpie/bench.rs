//! `magpie bench`: build the C benchmarks of benches/c, run each under
//! magpie, glibc, jemalloc, tcmalloc and mimalloc (LD_PRELOAD), check the
//! checksums against glibc's, and report medians as a markdown table, a CSV
//! file and a PNG bar chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chart::{self, BarChart, Rgb};
use crate::cli::{self, Args};

/// A benchmark program and its argument sets.
struct Program {
    name: &'static str,
    /// Takes a thread count as its first argument.
    threaded: bool,
    /// Quick arguments after the thread count.
    quick: &'static [&'static str],
}

const PROGRAMS: &[Program] = &[
    Program {
        name: "larson",
        threaded: true,
        quick: &["10", "100000"],
    },
    Program {
        name: "xmalloc",
        threaded: true,
        quick: &["2000000"],
    },
    Program {
        name: "cache_scratch",
        threaded: true,
        quick: &["200", "8", "200000"],
    },
    Program {
        name: "mstress",
        threaded: true,
        quick: &["4", "100000"],
    },
    Program {
        name: "alloc_test",
        threaded: true,
        quick: &["1000000", "16384"],
    },
    Program {
        name: "glibc_simple",
        threaded: false,
        quick: &["10000"],
    },
    Program {
        name: "malloc_large",
        threaded: false,
        quick: &["100"],
    },
    Program {
        name: "fragmentation",
        threaded: false,
        quick: &["10"],
    },
];

/// A known allocator: its preload library and the Debian package with it.
struct Known {
    name: &'static str,
    lib: &'static str,
    package: &'static str,
    color: Rgb,
}

const KNOWN: &[Known] = &[
    Known {
        name: "magpie",
        lib: "",
        package: "",
        color: [228, 87, 46],
    },
    // magpie in a fixed collector mode (MAGPIE_GC), e.g. to measure
    // leakcheck's overhead beside `off` and glibc.
    Known {
        name: "magpie-off",
        lib: "",
        package: "",
        color: [240, 150, 110],
    },
    Known {
        name: "magpie-leakcheck",
        lib: "",
        package: "",
        color: [150, 40, 20],
    },
    Known {
        name: "magpie-collect",
        lib: "",
        package: "",
        color: [250, 190, 160],
    },
    Known {
        name: "glibc",
        lib: "",
        package: "",
        color: [76, 114, 176],
    },
    Known {
        name: "jemalloc",
        lib: "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        package: "libjemalloc2",
        color: [85, 168, 104],
    },
    Known {
        name: "tcmalloc",
        lib: "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
        package: "libtcmalloc-minimal4",
        color: [129, 114, 178],
    },
    Known {
        name: "mimalloc",
        lib: "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
        package: "libmimalloc2.0",
        color: [204, 170, 60],
    },
];

const OTHER_COLORS: [Rgb; 4] = [
    [100, 181, 205],
    [140, 140, 140],
    [196, 78, 150],
    [120, 90, 40],
];

/// An allocator as run: name, library to preload (None: glibc), colour.
#[derive(Clone)]
struct Alloc {
    name: String,
    lib: Option<PathBuf>,
    color: Rgb,
    /// Extra environment (magpie's MAGPIE_GC).
    env: Vec<(String, String)>,
}

struct Options {
    quick: bool,
    runs: usize,
    threads: Vec<usize>,
    only: Option<Vec<String>>,
    out: Option<PathBuf>,
    src: Option<PathBuf>,
    lib: Option<String>,
    gc: Option<String>,
    allocators: Vec<String>,
    install: bool,
    timeout: Option<u64>,
}

fn parse(args: Vec<String>) -> Options {
    let mut a = Args::new("bench", args);
    let mut o = Options {
        quick: false,
        runs: 0,
        threads: vec![1, 2, 4],
        only: None,
        out: None,
        src: None,
        lib: None,
        gc: None,
        allocators: KNOWN
            .iter()
            .filter(|k| !k.name.starts_with("magpie-"))
            .map(|k| k.name.to_string())
            .collect(),
        install: true,
        timeout: None,
    };
    let list = |s: String| -> Vec<String> {
        s.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    };
    while let Some(arg) = a.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{}", crate::HELP);
                std::process::exit(0);
            }
            "--quick" => o.quick = true,
            "--runs" => o.runs = a.positive("--runs"),
            "--threads" => {
                let v = a.value("--threads");
                o.threads = list(v.clone())
                    .iter()
                    .map(|t| match t.parse::<usize>() {
                        Ok(n) if (1..=1024).contains(&n) => n,
                        _ => a.usage(format!(
                            "--threads takes thread counts like 1,2,4, not '{v}'"
                        )),
                    })
                    .collect();
                if o.threads.is_empty() {
                    a.usage("--threads needs at least one thread count");
                }
            }
            "--only" => {
                let names = list(a.value("--only"));
                for n in &names {
                    if !PROGRAMS.iter().any(|p| p.name == n) {
                        a.usage(format!(
                            "unknown benchmark '{n}' (known: {})",
                            PROGRAMS
                                .iter()
                                .map(|p| p.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
                if names.is_empty() {
                    a.usage("--only needs at least one benchmark name");
                }
                o.only = Some(names);
            }
            "--allocators" => {
                let names = list(a.value("--allocators"));
                for n in &names {
                    if !n.contains('=') && !KNOWN.iter().any(|k| k.name == n) {
                        a.usage(format!(
                            "unknown allocator '{n}' (known: {}; or NAME=PATH for another library)",
                            KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
                if names.is_empty() {
                    a.usage("--allocators needs at least one allocator");
                }
                let mut seen = Vec::new();
                for n in &names {
                    let key = n.split('=').next().unwrap().to_string();
                    if key.is_empty() || seen.contains(&key) {
                        a.usage(format!("allocator '{key}' is empty or given twice"));
                    }
                    seen.push(key);
                }
                o.allocators = names;
            }
            "--out" => o.out = Some(PathBuf::from(a.value("--out"))),
            "--src" => o.src = Some(PathBuf::from(a.value("--src"))),
            "--lib" => o.lib = Some(a.value("--lib")),
            "--gc" => {
                let v = a.value("--gc");
                o.gc = Some(cli::gc_mode(&a, v));
            }
            "--no-install" => o.install = false,
            "--timeout" => o.timeout = Some(a.positive("--timeout") as u64),
            other => a.usage(format!("unknown argument '{other}'")),
        }
    }
    if o.runs == 0 {
        o.runs = if o.quick { 3 } else { 5 };
    }
    o.threads.dedup();
    o
}

/// The source tree holding benches/c: --src, the tree this binary was built
/// from, or the tree above the binary's target directory.
fn source_tree(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let has = |d: &Path| d.join("benches/c").is_dir();
    if let Some(d) = explicit {
        return if has(d) {
            Ok(d.to_path_buf())
        } else {
            Err(format!(
                "--src {}: no benches/c directory there",
                d.display()
            ))
        };
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if has(&built) {
        return Ok(built);
    }
    if let Ok(dir) = cli::exe_dir() {
        for anc in dir.ancestors().skip(1).take(3) {
            if has(anc) {
                return Ok(anc.to_path_buf());
            }
        }
    }
    Err(format!(
        "cannot find benches/c (looked in {} and above the magpie binary); give the \
         source tree with --src DIR",
        built.display()
    ))
}

/// Cargo's target directory for `src`.
fn target_dir(src: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                src.join(d)
            }
        }
        _ => src.join("target"),
    }
}

/// Compiles the programs that are missing or older than their source, in
/// parallel, each to a temporary name renamed into place (so concurrent
/// benches never see half a binary).
fn build(src: &Path, dir: &Path, names: &[&str]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut jobs = Vec::new();
    for name in names {
        let c = src.join("benches/c").join(format!("{name}.c"));
        let bin = dir.join(name);
        // The binary is fresh if newer than its source and the shared header.
        let header = src.join("benches/c/common.h");
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified());
        let fresh = match (mtime(&c), mtime(&bin)) {
            (Ok(ct), Ok(bt)) => bt >= ct && mtime(&header).map_or(true, |ht| bt >= ht),
            (Err(e), _) => return Err(format!("cannot read {}: {e}", c.display())),
            _ => false,
        };
        if fresh {
            continue;
        }
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        eprintln!("building {} (cc -O2 -pthread)", bin.display());
        let child = Command::new("cc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&tmp)
            .arg(&c)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run the C compiler `cc`: {e} (install gcc)"))?;
        jobs.push((name, child, tmp, bin));
    }
    let mut errors = String::new();
    for (name, child, tmp, bin) in jobs {
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for cc: {e}"))?;
        if out.status.success() {
            std::fs::rename(&tmp, &bin)
                .map_err(|e| format!("cannot move {} into place: {e}", bin.display()))?;
        } else {
            let _ = std::fs::remove_file(&tmp);
            let _ = writeln!(
                errors,
                "cc failed on {name}.c ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Installs the packages of missing allocator libraries (when allowed) and
/// returns the allocators to run, with a note for each one skipped.
fn resolve_allocators(o: &Options, notes: &mut Vec<String>) -> Result<Vec<Alloc>, String> {
    let root = unsafe { libc::geteuid() } == 0;
    // Packages to install, at once.
    let missing: Vec<&Known> = o
        .allocators
        .iter()
        .filter_map(|n| KNOWN.iter().find(|k| k.name == n))
        .filter(|k| !k.lib.is_empty() && !Path::new(k.lib).exists())
        .collect();
    if !missing.is_empty() {
        let pkgs: Vec<&str> = missing.iter().map(|k| k.package).collect();
        if !o.install {
            eprintln!("not installing {} (--no-install)", pkgs.join(" "));
        } else if !root {
            eprintln!(
                "not installing {} (not root; run `apt-get install {}` as root)",
                pkgs.join(" "),
                pkgs.join(" ")
            );
        } else {
            apt_install(&pkgs);
        }
    }
    let mut out = Vec::new();
    let mut other = 0;
    for n in &o.allocators {
        if let Some((name, path)) = n.split_once('=') {
            let p = PathBuf::from(path);
            if !p.is_file() {
                return Err(format!("allocator {name}: library {path} does not exist"));
            }
            out.push(Alloc {
                name: name.to_string(),
                lib: Some(p.canonicalize().unwrap_or(p)),
                color: OTHER_COLORS[other % OTHER_COLORS.len()],
                env: vec![],
            });
            other += 1;
            continue;
        }
        let k = KNOWN.iter().find(|k| k.name == n).expect("validated");
        let lib = match k.name {
            "glibc" => None,
            n if n.starts_with("magpie") => Some(cli::magpie_lib(o.lib.as_deref())?),
            _ => {
                let p = PathBuf::from(k.lib);
                if !p.exists() {
                    let why = if !o.install {
                        "--no-install"
                    } else if !root {
                        "not root, cannot install"
                    } else {
                        "installing it failed"
                    };
                    notes.push(format!(
                        "{} skipped: {} missing (package {}; {why})",
                        k.name, k.lib, k.package
                    ));
                    eprintln!("magpie bench: {}", notes.last().unwrap());
                    continue;
                }
                Some(p)
            }
        };
        let mut env = vec![];
        if k.name == "magpie" {
            if let Some(g) = &o.gc {
                env.push(("MAGPIE_GC".to_string(), g.clone()));
            }
        } else if let Some(mode) = k.name.strip_prefix("magpie-") {
            env.push(("MAGPIE_GC".to_string(), mode.to_string()));
        }
        out.push(Alloc {
            name: k.name.to_string(),
            lib,
            color: k.color,
            env,
        });
    }
    Ok(out)
}

fn apt_install(pkgs: &[&str]) {
    let install = |pkgs: &[&str]| -> bool {
        eprintln!("installing {} (apt-get install -y)", pkgs.join(" "));
        match Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let tail: Vec<&str> = err.lines().rev().take(3).collect();
                eprintln!(
                    "apt-get install failed ({}): {}",
                    o.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
                false
            }
            Err(e) => {
                eprintln!("cannot run apt-get: {e}");
                false
            }
        }
    };
    if install(pkgs) {
        return;
    }
    // The package lists may be missing or stale: update, then retry each
    // package by itself so one that cannot be had does not block the others.
    eprintln!("apt-get update");
    let _ = Command::new("apt-get")
        .args(["update", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    for p in pkgs {
        install(&[p]);
    }
}

/// One benchmark: a program with one argument set.
struct Config {
    program: &'static str,
    threads: Option<usize>,
    args: Vec<String>,
}

impl Config {
    fn label(&self) -> String {
        match self.threads {
            Some(t) => format!("{}/{t}", self.program),
            None => self.program.to_string(),
        }
    }
}

fn configs(o: &Options) -> Vec<Config> {
    let mut v = Vec::new();
    for p in PROGRAMS {
        if let Some(only) = &o.only {
            if !only.iter().any(|n| n == p.name) {
                continue;
            }
        }
        let rest: Vec<String> = if o.quick {
            p.quick.iter().map(|s| s.to_string()).collect()
        } else {
            vec![]
        };
        if p.threaded {
            for &t in &o.threads {
                let mut args = vec![t.to_string()];
                args.extend(rest.iter().cloned());
                v.push(Config {
                    program: p.name,
                    threads: Some(t),
                    args,
                });
            }
        } else {
            v.push(Config {
                program: p.name,
                threads: None,
                args: rest,
            });
        }
    }
    v
}

/// What one run produced.
struct Run {
    secs: f64,
    checksum: Option<String>,
    /// The program's rss_peak_kb line, else wait4's ru_maxrss.
    peak_kb: u64,
    final_kb: Option<u64>,
    /// Why the run failed, if it did.
    error: Option<String>,
}

fn field(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// Runs `bin args` with `alloc` preloaded; waits with wait4 for rusage;
/// a watchdog kills it after `timeout`.
fn run_once(bin: &Path, args: &[String], alloc: &Alloc, timeout: Duration) -> Run {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match &alloc.lib {
        Some(l) => cmd.env("LD_PRELOAD", l),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    for (k, v) in &alloc.env {
        cmd.env(k, v);
    }
    let failed = |error: String| Run {
        secs: 0.0,
        checksum: None,
        peak_kb: 0,
        final_kb: None,
        error: Some(error),
    };
    let t0 = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start {}: {e}", bin.display())),
    };
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    // The watchdog kills the child only while it is not reaped (a zombie
    // keeps its pid), so it can never hit a recycled pid.
    let reaped = Arc::new(Mutex::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = {
        let reaped = reaped.clone();
        std::thread::spawn(move || {
            if rx.recv_timeout(timeout).is_err() {
                let r = reaped.lock().unwrap();
                if !*r {
                    // SAFETY: pid is our unreaped child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return true;
                }
            }
            false
        })
    };
    let mut out = Vec::new();
    let _ = stdout.read_to_end(&mut out);
    // Wait for the exit without reaping, to stop the clock.
    // SAFETY: plain syscalls on our own child with valid out-pointers.
    let secs = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        while libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        ) != 0
        {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
        t0.elapsed().as_secs_f64()
    };
    let (status, ru) = {
        let mut r = reaped.lock().unwrap();
        let mut status = 0;
        // SAFETY: as above.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: as above.
            let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            if rc == pid
                || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                break;
            }
        }
        *r = true;
        (status, ru)
    };
    let _ = tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let err = err_reader.join().unwrap_or_default();
    drop(child);
    let out = String::from_utf8_lossy(&out).into_owned();
    let err = String::from_utf8_lossy(&err).into_owned();
    let mut run = Run {
        secs,
        checksum: field(&out, "checksum:"),
        peak_kb: field(&out, "rss_peak_kb:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(ru.ru_maxrss.max(0) as u64),
        final_kb: field(&out, "rss_final_kb:").and_then(|v| v.parse().ok()),
        error: None,
    };
    let tail = || {
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let start = lines.len().saturating_sub(4);
        if lines.is_empty() {
            String::new()
        } else {
            format!("; stderr: {}", lines[start..].join(" | "))
        }
    };
    if timed_out {
        run.error = Some(format!("killed after {} s (--timeout)", timeout.as_secs()));
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        run.error = Some(format!("killed by signal {sig}{}", tail()));
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
        run.error = Some(format!(
            "exit status {}{}",
            libc::WEXITSTATUS(status),
            tail()
        ));
    } else if run.checksum.is_none() {
        run.error = Some(format!("no checksum line in its output{}", tail()));
    }
    run
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn median_u64(v: &[u64]) -> Option<u64> {
    median(&v.iter().map(|&x| x as f64).collect::<Vec<_>>()).map(|m| m.round() as u64)
}

/// The results of one benchmark under one allocator.
#[derive(Default)]
struct Cell {
    secs: Vec<f64>,
    peak_kb: Vec<u64>,
    final_kb: Vec<u64>,
    failures: usize,
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

pub fn main(args: Vec<String>) -> i32 {
    let o = parse(args);
    let started = Instant::now();
    let src = source_tree(o.src.as_deref()).unwrap_or_else(|e| cli::fail(1, e));
    let target = target_dir(&src);
    let bin_dir = target.join("cbench");
    let out_dir = o.out.clone().unwrap_or_else(|| target.join("bench"));
    let mut notes = Vec::new();
    let allocs = resolve_allocators(&o, &mut notes).unwrap_or_else(|e| cli::fail(1, e));
    if allocs.is_empty() {
        cli::fail(1, "no allocator left to run");
    }
    let configs = configs(&o);
    let mut names: Vec<&str> = configs.iter().map(|c| c.program).collect();
    names.dedup();
    if let Err(e) = build(&src, &bin_dir, &names) {
        cli::fail(1, e);
    }
    let timeout = Duration::from_secs(o.timeout.unwrap_or(if o.quick { 60 } else { 600 }));
    let glibc = Alloc {
        name: "glibc".into(),
        lib: None,
        color: [0, 0, 0],
        env: vec![],
    };
    let has_glibc = allocs.iter().any(|a| a.name == "glibc");
    let base = ["mimalloc", "glibc"]
        .into_iter()
        .find(|b| allocs.iter().any(|a| a.name == *b))
        .unwrap_or(&allocs[0].name)
        .to_string();

    eprintln!(
        "magpie bench: {} benchmarks × {} allocators ({}) × {} runs, {} arguments; \
         programs in {}",
        configs.len(),
        allocs.len(),
        allocs
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        o.runs,
        if o.quick { "quick" } else { "full" },
        bin_dir.display()
    );

    // The checksum every run of a benchmark must print: glibc's.
    let mut reference: Vec<Option<String>> = vec![None; configs.len()];
    let mut errors: Vec<String> = Vec::new();
    if !has_glibc {
        for (ci, c) in configs.iter().enumerate() {
            let r = run_once(&bin_dir.join(c.program), &c.args, &glibc, timeout);
            match r.error {
                None => reference[ci] = r.checksum,
                Some(e) => {
                    let msg = format!("{} on glibc (reference run): {e}", c.label());
                    eprintln!("FAILED: {msg}");
                    errors.push(msg);
                }
            }
        }
    }
    let mut cells: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
    for round in 0..o.runs {
        for (ci, c) in configs.iter().enumerate() {
            let bin = bin_dir.join(c.program);
            let n = allocs.len();
            let mut line = format!("[{}/{}] {:<16}", round + 1, o.runs, c.label());
            let mut got: Vec<(usize, Run)> = Vec::new();
            // Rotate the order each round and benchmark, so no allocator
            // always runs first (or right after the same one).
            for k in 0..n {
                let ai = (k + round + ci) % n;
                got.push((ai, run_once(&bin, &c.args, &allocs[ai], timeout)));
            }
            got.sort_by_key(|g| g.0);
            if reference[ci].is_none() {
                if let Some((_, r)) = got
                    .iter()
                    .find(|(ai, r)| allocs[*ai].name == "glibc" && r.error.is_none())
                {
                    reference[ci] = r.checksum.clone();
                }
            }
            for (ai, r) in got {
                let a = &allocs[ai];
                let cell = cells.entry((ci, ai)).or_default();
                let what = format!(
                    "{} on {} (`{} {}`, round {})",
                    c.label(),
                    a.name,
                    c.program,
                    c.args.join(" "),
                    round + 1
                );
                if let Some(e) = &r.error {
                    let msg = format!("{what}: {e}");
                    eprintln!("FAILED: {msg}");
                    errors.push(msg);
                    cell.failures += 1;
                    let _ = write!(line, " {}=FAIL", a.name);
                    continue;
                }
                if let (Some(want), Some(have)) = (&reference[ci], &r.checksum) {
                    if want != have {
                        let msg = format!("{what}: CHECKSUM MISMATCH: {have}, glibc gives {want}");
                        eprintln!("!!!!!!!! {msg}");
                        errors.push(msg);
                        cell.failures += 1;
                        let _ = write!(line, " {}=MISMATCH", a.name);
                        continue;
                    }
                }
                let _ = write!(line, " {}={:.3}s", a.name, r.secs);
                cell.secs.push(r.secs);
                cell.peak_kb.push(r.peak_kb);
                if let Some(f) = r.final_kb {
                    cell.final_kb.push(f);
                }
            }
            eprintln!("{line}");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    let report = Report {
        o: &o,
        configs: &configs,
        allocs: &allocs,
        cells: &cells,
        base: &base,
        notes: &notes,
        errors: &errors,
        elapsed,
    };
    let md = report.markdown();
    print!("{md}");
    let mut status = if errors.is_empty() { 0 } else { 1 };
    match report.write_files(&out_dir, &md) {
        Ok(files) => eprintln!("wrote {}", files.join(", ")),
        Err(e) => {
            eprintln!("magpie bench: {e}");
            status = 1;
        }
    }
    if !errors.is_empty() {
        eprintln!(
            "\nmagpie bench: {} FAILED RUN(S) OR CHECKSUM MISMATCH(ES):",
            errors.len()
        );
        for e in &errors {
            eprintln!("  {e}");
        }
    }
    status
}

struct Report<'a> {
    o: &'a Options,
    configs: &'a [Config],
    allocs: &'a [Alloc],
    cells: &'a BTreeMap<(usize, usize), Cell>,
    base: &'a str,
    notes: &'a [String],
    errors: &'a [String],
    elapsed: f64,
}

impl Report<'_> {
    fn base_index(&self) -> usize {
        self.allocs
            .iter()
            .position(|a| a.name == self.base)
            .unwrap_or(0)
    }

    fn med(&self, ci: usize, ai: usize) -> Option<f64> {
        self.cells.get(&(ci, ai)).and_then(|c| median(&c.secs))
    }

    fn ratio(&self, ci: usize, ai: usize) -> Option<f64> {
        let b = self.med(ci, self.base_index())?;
        let m = self.med(ci, ai)?;
        (b > 0.0).then(|| m / b)
    }

    /// Geometric mean of an allocator's ratios over the benchmarks where it
    /// and the baseline both have results.
    fn geomean(&self, ai: usize) -> Option<f64> {
        let logs: Vec<f64> = (0..self.configs.len())
            .filter_map(|ci| self.ratio(ci, ai))
            .filter(|r| *r > 0.0)
            .map(f64::ln)
            .collect();
        (!logs.is_empty()).then(|| (logs.iter().sum::<f64>() / logs.len() as f64).exp())
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## magpie bench ({} arguments, median of {} runs, {} CPUs)\n",
            if self.o.quick { "quick" } else { "full" },
            self.o.runs,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
        let _ = writeln!(
            s,
            "Time: median wall seconds. Ratio: time / {}'s time (lower is better). \
             RSS: peak resident MiB (VmHWM, median of runs). Benchmark: program/threads \
             (xmalloc: producer/consumer pairs).\n",
            self.base
        );
        let _ = write!(s, "| benchmark |");
        for a in self.allocs {
            let _ = write!(s, " {0} s | {0} ratio | {0} MiB |", a.name);
        }
        let _ = write!(s, "\n|---|");
        for _ in self.allocs {
            s.push_str("---:|---:|---:|");
        }
        s.push('\n');
        for (ci, c) in self.configs.iter().enumerate() {
            let _ = write!(s, "| {} |", c.label());
            for ai in 0..self.allocs.len() {
                let cell = self.cells.get(&(ci, ai));
                match (self.med(ci, ai), cell) {
                    (Some(m), Some(cell)) => {
                        let r = self
                            .ratio(ci, ai)
                            .map(|r| format!("{r:.2}"))
                            .unwrap_or_else(|| "–".into());
                        let fail = if cell.failures > 0 {
                            format!(" ({} failed)", cell.failures)
                        } else {
                            String::new()
                        };
                        let peak = median_u64(&cell.peak_kb).unwrap_or(0);
                        let _ = write!(s, " {m:.3}{fail} | {r} | {} |", mb(peak));
                    }
                    _ => s.push_str(" FAIL | – | – |"),
                }
            }
            s.push('\n');
        }
        let _ = write!(s, "| **geometric mean of ratios** |");
        for ai in 0..self.allocs.len() {
            match self.geomean(ai) {
                Some(g) => {
                    let _ = write!(s, " | **{g:.2}** | |");
                }
                None => s.push_str(" | – | |"),
            }
        }
        s.push('\n');
        for (ci, c) in self.configs.iter().enumerate() {
            if c.program != "fragmentation" {
                continue;
            }
            let _ = write!(s, "| {} final RSS (MiB) |", c.label());
            for ai in 0..self.allocs.len() {
                match self
                    .cells
                    .get(&(ci, ai))
                    .and_then(|c| median_u64(&c.final_kb))
                {
                    Some(f) => {
                        let _ = write!(s, " | | {} |", mb(f));
                    }
                    None => s.push_str(" | | – |"),
                }
            }
            s.push('\n');
        }
        s.push('\n');
        for n in self.notes {
            let _ = writeln!(s, "- {n}");
        }
        if !self.errors.is_empty() {
            let _ = writeln!(
                s,
                "- **{} failed run(s) or checksum mismatch(es)**; see stderr.",
                self.errors.len()
            );
        } else {
            let _ = writeln!(s, "- Every run's checksum matched glibc's.");
        }
        let _ = writeln!(s, "- Took {:.1} s.", self.elapsed);
        s
    }

    fn csv(&self) -> String {
        let mut s = format!(
            "benchmark,program,threads,args,allocator,runs_ok,runs_failed,median_s,min_s,\
             max_s,ratio_to_{},peak_rss_kb,rss_final_kb,times_s\n",
            self.base
        );
        for (ci, c) in self.configs.iter().enumerate() {
            for (ai, a) in self.allocs.iter().enumerate() {
                let empty = Cell::default();
                let cell = self.cells.get(&(ci, ai)).unwrap_or(&empty);
                let opt =
                    |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_default();
                let min = cell
                    .secs
                    .iter()
                    .copied()
                    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
                let max = cell
                    .secs
                    .iter()
                    .copied()
                    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    c.label(),
                    c.program,
                    c.threads.unwrap_or(1),
                    c.args.join(" "),
                    a.name,
                    cell.secs.len(),
                    cell.failures,
                    opt(self.med(ci, ai), 4),
                    opt(min, 4),
                    opt(max, 4),
                    opt(self.ratio(ci, ai), 4),
                    median_u64(&cell.peak_kb)
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    median_u64(&cell.final_kb)
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    cell.secs
                        .iter()
                        .map(|t| format!("{t:.4}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }
        s
    }

    fn chart(&self) -> chart::Canvas {
        let mut groups: Vec<(String, Vec<Option<f64>>)> = self
            .configs
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                (
                    c.label(),
                    (0..self.allocs.len())
                        .map(|ai| self.ratio(ci, ai))
                        .collect(),
                )
            })
            .collect();
        let n = groups.len();
        groups.push((
            "geomean".to_string(),
            (0..self.allocs.len()).map(|ai| self.geomean(ai)).collect(),
        ));
        chart::render(&BarChart {
            title: format!(
                "magpie bench ({}): median wall time relative to {} (lower is better)",
                if self.o.quick { "quick" } else { "full" },
                self.base
            ),
            y_label: format!("time / {} time", self.base),
            x_label: "benchmark (program/threads)".to_string(),
            series: self
                .allocs
                .iter()
                .map(|a| (a.name.clone(), a.color))
                .collect(),
            groups,
            reference: 1.0,
            separate_from: Some(n),
        })
    }

    fn write_files(&self, dir: &Path, md: &str) -> Result<Vec<String>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut files = Vec::new();
        for (name, data) in [
            ("bench.md", md.as_bytes().to_vec()),
            ("bench.csv", self.csv().into_bytes()),
            ("bench.png", self.chart().png()),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, data).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            files.push(p.display().to_string());
        }
        Ok(files)
    }
}

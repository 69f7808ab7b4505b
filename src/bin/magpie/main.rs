//! The `magpie` command: runs programs on magpie (`magpie run`), compares
//! allocators on the C benchmarks (`magpie bench`), and with no arguments
//! runs a built-in demo. See `magpie --help`.

mod bench;
mod chart;
mod cli;
mod demo;
mod font;
mod png;
mod run;

use cli::Args;

const HELP: &str = "\
magpie — a fast memory allocator with a conservative garbage collector

USAGE:
    magpie                                  run the built-in demo (= magpie demo)
    magpie demo [--runs N]                  the built-in demo
    magpie run [OPTIONS] [--] PROGRAM [ARGS...]
                                            run a program on magpie
    magpie bench [OPTIONS]                  compare allocators on the C benchmarks
    magpie help | --help | -h               this text
    magpie --version | -V                   the version

magpie demo [--runs N]
    Allocates and frees mixed sizes (8 B to 4 KiB, most of them small) with a
    live set of 100,000 objects, in one thread and then with two threads where
    one frees what the other allocated, on magpie and on the system allocator
    in one process. Prints the median time per operation over N runs (5) and
    magpie's ratio to the system allocator, then magpie's statistics.

magpie run [OPTIONS] [--] PROGRAM [ARGS...]
    Runs PROGRAM with libmagpie.so preloaded, so its malloc, free, calloc,
    realloc, posix_memalign, aligned_alloc, memalign, valloc, pvalloc,
    malloc_usable_size and C++ new/delete are magpie's. magpie puts the library
    first in LD_PRELOAD (keeping what was there), sets the variables below and
    then becomes PROGRAM (exec): the exit status, signals and process id are
    the program's own. PROGRAM is looked up in PATH. Options end at `--` or at
    the first argument that is not an option.

    --gc MODE      garbage collector mode: off, leakcheck or collect
                   (sets MAGPIE_GC=MODE; default: the library's)
    --stats        print magpie's heap summary on stderr when the program
                   exits (sets MAGPIE_STATS=1)
    --lib PATH     preload PATH instead of the libmagpie.so in the directory
                   of the magpie binary (in a cargo target directory, the
                   newer of that and deps/libmagpie.so, which `cargo test`
                   rebuilds without copying it up)

    Exit status: the program's; 127 if PROGRAM is not found, 126 if it cannot
    be executed, 2 for bad usage, 1 if the library is missing. Statically
    linked programs and set-user-ID programs ignore LD_PRELOAD, so they run on
    their own allocator.

magpie bench [OPTIONS]
    Builds the C programs in benches/c (`cc -O2 -pthread`, into
    target/cbench) and runs each under every allocator: magpie (the
    libmagpie.so beside this binary), glibc (nothing preloaded), jemalloc,
    tcmalloc and mimalloc (preloaded from their Debian packages libjemalloc2,
    libtcmalloc-minimal4 and libmimalloc2.0, installed with apt-get when
    missing if running as root). Each round runs every benchmark once per
    allocator, allocators interleaved (order rotated), so they share the
    machine's noise. Every run's checksum must equal the glibc run's for the
    same program and arguments; a mismatch, a crash or a nonzero exit is
    reported loudly and makes the exit status 1.

    --quick            the quick argument sets and 3 runs (under 3 minutes)
    --runs N           runs per benchmark and allocator (5; --quick: 3)
    --threads LIST     thread counts for the programs that take one (1,2,4);
                       for xmalloc it is the number of producer/consumer pairs
    --only NAMES       only these programs (comma-separated): larson, xmalloc,
                       cache_scratch, mstress, glibc_simple, alloc_test,
                       malloc_large, fragmentation
    --allocators LIST  allocators to compare, comma-separated, from magpie,
                       glibc, jemalloc, tcmalloc, mimalloc, or NAME=PATH for
                       another preload library (default: all five); also
                       magpie-off, magpie-leakcheck, magpie-collect: magpie
                       with that MAGPIE_GC mode (leakcheck's overhead)
    --out DIR          where to write bench.md, bench.csv and bench.png
                       (default: target/bench in the source tree)
    --src DIR          the magpie source tree holding benches/c (default: the
                       tree this binary was built from)
    --lib PATH         the magpie library to preload (default: beside binary)
    --gc MODE          run magpie with MAGPIE_GC=MODE (off, leakcheck, collect)
    --no-install       never install missing allocator packages; skip them
    --timeout SECS     kill a run after SECS seconds (60; full runs: 600)

    Output (stdout and bench.md): a table with, per benchmark (program and
    thread count) and allocator, the median wall time in seconds, its ratio to
    mimalloc's (to glibc's when mimalloc is not compared; lower is better) and
    the peak RSS in MiB (the program's VmHWM); then the geometric mean of the
    ratios and the fragmentation program's final RSS. bench.csv has one row
    per benchmark and allocator with every run's time; bench.png is a bar
    chart of the ratios. Progress goes to stderr.

ENVIRONMENT (read by libmagpie.so and by Rust programs using magpie):
    MAGPIE_GC=MODE         off: a plain allocator, no collector thread, no
                           signals; leakcheck: report unreachable, never-freed
                           memory as leaks and free nothing but GC-managed
                           memory; collect (the default): free it
    MAGPIE_GOGC=N          start a collection when the heap has grown by N%
                           net (allocated minus freed) over the live heap the
                           last collection found, and by at least 4 MiB
                           (default 100)
    MAGPIE_STATS=1         print a summary of the heap on stderr at exit
    MAGPIE_LEAK_STACKS=N   stack frames kept per allocation site in leakcheck
                           reports
    MAGPIE_GC_STRESS=N     collect every N allocations (torture testing; slow)
    MAGPIE_STOP_TIMEOUT_MS=N
                           give a collection up (freeing nothing) when a
                           thread does not stop within N ms (default 1000)
    MAGPIE_DEBUG_ALLOC_IN_TERMINATION=1
                           allocate during mark termination to prove the
                           check aborts (tests only: the process aborts)
    MAGPIE_SCAN_ALL=1      no pointer-free spans for Rust allocations whose
                           alignment is below 8 (scan every object)
    MAGPIE_RSEQ=0          use the locked per-CPU caches instead of rseq
    MAGPIE_DECAY_MS=N      keep freed pages resident N ms before returning them
                           to the OS (default 1000)
    MAGPIE_RETAIN=BYTES    free resident memory kept before returning it at
                           once, or twice the heap in use if that is more
                           (default 64M; suffixes k, M, G)
    MAGPIE_RESERVE=BYTES   address space reserved for the heap, halved until
                           the OS accepts (default 1024G, at least 1G)
    Booleans accept 0/1, false/true, no/yes, off/on. A bad value is reported
    once on stderr by name and the default is used.

EXIT STATUS:
    0 success; 1 failure (a benchmark failed or mismatched, a file could not
    be written); 2 bad usage; `magpie run`: the program's status.
";

fn main() {
    // Die quietly of SIGPIPE like other command-line tools (`magpie bench |
    // head`) rather than panic on a closed stdout; children start with it
    // at its default too.
    // SAFETY: setting a signal disposition to its default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let mut all: Vec<String> = std::env::args().skip(1).collect();
    let sub = if all.is_empty() {
        "demo".to_string()
    } else if all[0].starts_with("--runs") {
        // `magpie --runs N`: the demo, as before subcommands existed.
        "demo".to_string()
    } else {
        all.remove(0)
    };
    match sub.as_str() {
        "-h" | "--help" | "help" => print!("{HELP}"),
        "-V" | "--version" => println!("magpie {}", env!("CARGO_PKG_VERSION")),
        "demo" => {
            let mut a = Args::new("demo", all);
            let mut runs = 5;
            while let Some(arg) = a.next() {
                match arg.as_str() {
                    "-h" | "--help" => {
                        print!("{HELP}");
                        return;
                    }
                    "--runs" => runs = a.positive("--runs"),
                    other => a.usage(format!("unknown argument '{other}'")),
                }
            }
            demo::demo(runs);
        }
        "run" => run::main(all),
        "bench" => std::process::exit(bench::main(all)),
        other => cli::usage_error(
            "",
            format!("unknown command '{other}' (commands: run, bench, demo, help)"),
        ),
    }
}

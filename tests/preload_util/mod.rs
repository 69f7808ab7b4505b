//! Helpers for the LD_PRELOAD tests (tests/preload.rs, tests/real_programs.rs):
//! finding libmagpie.so, compiling the C/C++ programs of tests/c, running
//! commands with a time limit, and comparing a program's run on glibc's
//! malloc with its run on magpie's.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/libmagpie.so`, the cdylib cargo builds along with the
/// library for `cargo test` (the test binary lives in `target/<profile>/deps`).
/// `MAGPIE_SO` overrides it. Panics with a clear message when it is missing.
pub fn magpie_so() -> PathBuf {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        if let Some(p) = std::env::var_os("MAGPIE_SO") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "MAGPIE_SO={} does not exist", p.display());
            return p.canonicalize().unwrap();
        }
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let mut candidates = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent().and_then(Path::parent) {
                candidates.push(dir.join("libmagpie.so"));
            }
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest_dir().join("target"));
        candidates.push(target.join(profile).join("libmagpie.so"));
        for c in &candidates {
            if c.is_file() {
                return c.canonicalize().unwrap();
            }
        }
        panic!(
            "libmagpie.so not found (looked at {:?}). It is built with the library \
             (crate-type cdylib) by `cargo test --release` / `cargo build --release`; \
             build it and run the tests again, or point MAGPIE_SO at it.",
            candidates
        );
    })
    .clone()
}

/// This test process's directory under target/ (cargo's CARGO_TARGET_TMPDIR):
/// `preload/run-<pid>`. Directories of earlier runs whose process is gone are
/// removed (concurrent runs in one tree keep apart).
fn run_root() -> PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("preload");
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("run-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let d = root.join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    })
    .clone()
}

/// An empty scratch directory for one test, under [`run_root`].
pub fn scratch(name: &str) -> PathBuf {
    let d = run_root().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The directory for compiled test programs.
fn bin_dir() -> PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| scratch("bin")).clone()
}

fn compiler(cxx: bool) -> String {
    let var = if cxx { "CXX" } else { "CC" };
    std::env::var(var).unwrap_or_else(|_| if cxx { "c++" } else { "cc" }.to_string())
}

/// Compiles `tests/c/<sources>` into `<bin dir>/<out>` (once per test run;
/// later calls return the same path). `.cpp` sources use the C++ compiler.
/// `extra` is appended to the command line (e.g. `-shared`). Panics with the
/// compiler's output on failure.
pub fn build(out: &str, sources: &[&str], extra: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let map = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    // Held while compiling: concurrent tests asking for the same program wait.
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = m.get(out) {
        return p.clone();
    }
    let src_dir = manifest_dir().join("tests").join("c");
    let cxx = sources.iter().any(|s| s.ends_with(".cpp"));
    let dst = bin_dir().join(out);
    let mut c = Command::new(compiler(cxx));
    c.args(["-O2", "-g", "-Wall", "-Wextra", "-fno-builtin", "-pthread"])
        .args([
            "-Wno-deprecated-declarations",
            "-Wno-alloc-size-larger-than",
            "-Wno-use-after-free",
            "-Wno-free-nonheap-object",
        ])
        .arg("-I")
        .arg(&src_dir);
    if cxx {
        c.arg("-std=c++17");
    }
    for s in sources {
        c.arg(src_dir.join(s));
    }
    c.args(extra).arg("-o").arg(&dst).arg("-ldl");
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run the compiler ({}): {e}", compiler(cxx)));
    assert!(
        o.status.success(),
        "compiling {out} failed: {:?}\n{}",
        c,
        String::from_utf8_lossy(&o.stderr)
    );
    m.insert(out.to_string(), dst.clone());
    dst
}

/// Sets LD_PRELOAD=libmagpie.so on `c`.
pub fn preload(c: &mut Command) -> &mut Command {
    c.env("LD_PRELOAD", magpie_so())
}

/// Runs `c` (stdin from /dev/null unless set by the caller through `input`),
/// killing it after `limit`. Returns its output; panics on a timeout.
pub fn run(c: &mut Command, input: Option<&[u8]>, limit: Duration) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", c));
    let stdin_thread = input.map(|data| {
        let data = data.to_vec();
        let mut si = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = si.write_all(&data);
        })
    });
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = t2.join().unwrap();
            panic!(
                "{:?} did not finish within {:?} (killed); stderr:\n{}",
                c,
                limit,
                tail(&String::from_utf8_lossy(&stderr), 3000)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(t) = stdin_thread {
        let _ = t.join();
    }
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

/// The last `n` bytes of `s` (on a char boundary).
pub fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Fails the test if the dynamic loader refused the preload (it then warns
/// and runs the program on glibc's malloc, which would make a comparison
/// vacuous).
pub fn assert_preloaded(what: &str, o: &Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("cannot be preloaded"),
        "{what}: the dynamic loader did not preload libmagpie.so:\n{}",
        tail(&err, 2000)
    );
}

pub fn describe(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!(
            "killed by signal {sig}{}",
            if s.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        ),
        _ => format!("{s:?}"),
    }
}

/// The first line where `a` and `b` differ, for a readable assertion message.
pub fn first_difference(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    for i in 0..la.len().max(lb.len()) {
        let (x, y) = (la.get(i), lb.get(i));
        if x != y {
            return format!(
                "line {}: glibc {:?} / magpie {:?} ({} vs {} lines)",
                i + 1,
                x,
                y,
                la.len(),
                lb.len()
            );
        }
    }
    format!(
        "same lines, different bytes ({} vs {} bytes)",
        a.len(),
        b.len()
    )
}

/// Runs the command built by `make` twice, on glibc's malloc and under
/// LD_PRELOAD=libmagpie.so, and asserts identical exit status and stdout
/// (and stderr when `same_stderr`). Returns (glibc, magpie) outputs.
pub fn compare_runs(
    what: &str,
    make: impl Fn() -> Command,
    input: Option<&[u8]>,
    limit: Duration,
    same_stderr: bool,
) -> (Output, Output) {
    let t0 = Instant::now();
    let g = run(&mut make(), input, limit);
    let t1 = Instant::now();
    let mut mc = make();
    preload(&mut mc);
    let m = run(&mut mc, input, limit);
    let t2 = Instant::now();
    eprintln!(
        "{what}: glibc {:.2}s, magpie {:.2}s, {} bytes of output",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        m.stdout.len()
    );
    assert_preloaded(what, &m);
    let (gs, ms) = (
        String::from_utf8_lossy(&g.stdout),
        String::from_utf8_lossy(&m.stdout),
    );
    assert!(
        g.status == m.status,
        "{what}: glibc run: {}, magpie run: {}\nmagpie stderr:\n{}",
        describe(&g.status),
        describe(&m.status),
        tail(&String::from_utf8_lossy(&m.stderr), 3000)
    );
    assert!(
        g.stdout == m.stdout,
        "{what}: stdout differs: {}\nmagpie stderr:\n{}",
        first_difference(&gs, &ms),
        tail(&String::from_utf8_lossy(&m.stderr), 3000)
    );
    if same_stderr {
        assert!(
            g.stderr == m.stderr,
            "{what}: stderr differs: {}",
            first_difference(
                &String::from_utf8_lossy(&g.stderr),
                &String::from_utf8_lossy(&m.stderr)
            )
        );
    }
    (g, m)
}

/// The path of `tool`: Debian's copy in /usr/bin first (the machine may have
/// other builds earlier in PATH, e.g. pyenv shims or /usr/local), else PATH.
/// None when it is not installed.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Prints "skipped: <what>" so that it shows in the test log: on stdout (for
/// `--nocapture` runs) and straight to stderr (the harness captures only the
/// print macros).
pub fn skip(what: &str) {
    use std::io::Write;
    println!("skipped: {what}");
    let _ = writeln!(std::io::stderr(), "skipped: {what}");
}

/// `find_tool`, or prints "skipped: <tool> not installed" (the caller returns).
pub fn tool_or_skip(tool: &str) -> Option<PathBuf> {
    let t = find_tool(tool);
    if t.is_none() {
        skip(&format!("{tool} not installed"));
    }
    t
}

/// A small deterministic PRNG (splitmix64) for generated inputs.
pub struct Mix(pub u64);
impl Mix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// FNV-1a over a file's bytes, with its length: a checksum for comparing
/// large outputs.
pub fn checksum(path: &Path) -> (u64, u64) {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let (mut h, mut n) = (0xcbf2_9ce4_8422_2325u64, 0u64);
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        for &b in &buf[..k] {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        n += k as u64;
    }
    (h, n)
}

// ---------------------------------------------------------------------------
// The real programs' workloads, shared by tests/real_programs.rs (glibc vs
// magpie) and tests/real_programs_gc.rs (the same under the collector).

/// A file of tests/programs.
pub fn program(name: &str) -> PathBuf {
    manifest_dir().join("tests").join("programs").join(name)
}

/// A command with a clean, fixed environment (PATH, HOME, locale, TZ).
pub fn clean(tool: &Path, home: &Path) -> Command {
    let mut c = Command::new(tool);
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("TMPDIR", home)
        .current_dir(home);
    c
}

/// sqlite3 on an in-memory database (queries.sql on standard input).
pub fn sqlite_workload(sqlite3: &Path, home: &Path) -> Command {
    let mut c = clean(sqlite3, home);
    c.arg(":memory:");
    c
}

/// perl on hashes.pl, with a fixed hash seed.
pub fn perl_workload(perl: &Path, home: &Path) -> Command {
    let mut c = clean(perl, home);
    c.env("PERL_HASH_SEED", "0").arg(program("hashes.pl"));
    c
}

/// lua5.4 on tables.lua.
pub fn lua_workload(lua: &Path, home: &Path) -> Command {
    let mut c = clean(lua, home);
    c.arg(program("tables.lua"));
    c
}

/// The git workload (tests/programs/git_workload.sh, run by `sh`: init,
/// twenty commits, a branch and a merge, log, blame, gc, fsck...): each call
/// of the returned closure gives a command for a fresh directory under `dir`
/// (run0, run1, ...), so two runs never share a repository.
pub fn git_workload(sh: &Path, git: &Path, dir: &Path) -> impl Fn() -> Command {
    let (sh, git, dir) = (sh.to_path_buf(), git.to_path_buf(), dir.to_path_buf());
    let runs = std::sync::atomic::AtomicUsize::new(0);
    move || {
        let k = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let work = dir.join(format!("run{k}"));
        std::fs::create_dir_all(&work).unwrap();
        let mut c = clean(&sh, &work);
        c.arg(program("git_workload.sh")).arg(&git).arg(&work);
        c
    }
}

/// A redis-server child (see [`start_redis`]), killed when dropped.
pub struct RedisServer {
    pub child: std::process::Child,
    pub port: u16,
    pub what: &'static str,
    /// Its log file (--logfile) and the file its stderr goes to.
    pub log: PathBuf,
    pub stderr: PathBuf,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs redis-cli against 127.0.0.1:`port` with `args` (commands on standard
/// input when `input` is given).
pub fn redis_cli(cli: &Path, port: u16, dir: &Path, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut c = clean(cli, dir);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    run(&mut c, input, Duration::from_secs(60))
}

/// Starts redis-server on a free port (retrying if the port was taken),
/// without persistence, and waits for PING to answer. `setup` adds to the
/// command (the preload, environment, more server options). Its stderr goes
/// to a file (`RedisServer::stderr`).
pub fn start_redis(
    server: &Path,
    cli: &Path,
    dir: &Path,
    what: &'static str,
    setup: impl Fn(&mut Command),
) -> RedisServer {
    for attempt in 0..5 {
        let port = free_port();
        let data = dir.join(format!("{what}-{attempt}"));
        std::fs::create_dir_all(&data).unwrap();
        let log = data.join("log");
        let stderr = data.join("stderr");
        let mut c = clean(server, &data);
        c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&data)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        setup(&mut c);
        let child = c.spawn().expect("start redis-server");
        let mut s = RedisServer {
            child,
            port,
            what,
            log,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = s.child.try_wait() {
                break; // exited: port taken, say; try another
            }
            let o = redis_cli(cli, port, dir, &["ping"], None);
            if String::from_utf8_lossy(&o.stdout).trim() == "PONG" {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{what}: redis-server did not come up on port {port}; log:\n{}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
    }
    panic!("{what}: could not start redis-server");
}

impl RedisServer {
    /// The replies to tests/programs/redis_commands.txt (redis-cli must succeed).
    pub fn replies(&self, cli: &Path, dir: &Path) -> Vec<u8> {
        let cmds = std::fs::read(program("redis_commands.txt")).unwrap();
        let o = redis_cli(cli, self.port, dir, &[], Some(&cmds));
        assert!(
            o.status.success(),
            "{}: redis-cli failed: {}",
            self.what,
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    }

    /// A bounded redis-benchmark (20,000 requests of each of SET, GET, LPUSH
    /// and LPOP) against this server; asserts that every test finished and
    /// returns its "requests per second" lines.
    pub fn benchmark(&self, bench: &Path, dir: &Path) -> Vec<String> {
        let mut b = clean(bench, dir);
        b.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-q", "-n", "20000", "-t", "set,get,lpush,lpop"]);
        let t = Instant::now();
        let o = run(&mut b, None, Duration::from_secs(120));
        let out = String::from_utf8_lossy(&o.stdout).replace('\r', "\n");
        eprintln!(
            "redis-benchmark ({}): {:.2}s",
            self.what,
            t.elapsed().as_secs_f64()
        );
        assert!(
            o.status.success(),
            "redis-benchmark: {}\n{out}",
            describe(&o.status)
        );
        let done: Vec<String> = out
            .lines()
            .filter(|l| l.contains("requests per second"))
            .map(|l| l.trim().to_string())
            .collect();
        assert_eq!(
            done.len(),
            4,
            "redis-benchmark did not finish every test:\n{out}"
        );
        done
    }

    /// The names and blocked-signal masks (SigBlk) of the server's threads.
    pub fn threads_sigblk(&self) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        let dir = format!("/proc/{}/task", self.child.id());
        for t in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let blk = status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
                .unwrap_or(0);
            v.push((comm.trim().to_string(), blk));
        }
        v
    }

    /// SHUTDOWN NOSAVE, then waits (10 s at most) for the server to exit.
    /// Returns its exit status (None if it did not exit) and its stderr.
    pub fn shutdown(&mut self, cli: &Path, dir: &Path) -> (Option<ExitStatus>, String) {
        let _ = redis_cli(cli, self.port, dir, &["shutdown", "nosave"], None);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        (status, err)
    }

    /// Its log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            3000,
        )
        .to_string()
    }
}

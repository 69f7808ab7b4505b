//! The CFI unwinder (`magpie::leak::unwind`) on C code: a shared library
//! built from `tests/c/unwind_*.c`, half with frame pointers, half without,
//! calling back through libc's `qsort`. The malloc stand-in captures the
//! registers exactly as the preload shim does and walks with `backtrace_from`.

use magpie::leak::unwind::{backtrace_from, Regs};
use std::ffi::{c_void, CStr, CString};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

type Cb = extern "C" fn(usize, usize, usize);
type Outer = unsafe extern "C" fn(Cb, i32) -> i32;

static WALKS: Mutex<Vec<Vec<usize>>> = Mutex::new(Vec::new());

extern "C" fn record(ip: usize, sp: usize, bp: usize) {
    let mut out = [0usize; 128];
    let n = backtrace_from(Regs { ip, sp, bp }, &mut out);
    WALKS.lock().unwrap().push(out[..n].to_vec());
}

fn build_lib() -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("unwind");
    std::fs::create_dir_all(&dir).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let run = |c: &mut Command| {
        let o = c.output().expect("cannot run the C compiler");
        assert!(
            o.status.success(),
            "{c:?}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let obj = |name: &str, fp: &str| {
        let o = dir.join(format!("{name}.o"));
        run(Command::new(&cc)
            .args(["-O2", "-fPIC", "-Wall", "-Wextra", "-c", fp])
            .arg(src.join(format!("{name}.c")))
            .arg("-o")
            .arg(&o));
        o
    };
    let fp = obj("unwind_fp", "-fno-omit-frame-pointer");
    let nofp = obj("unwind_nofp", "-fomit-frame-pointer");
    let so = dir.join("libunwind_test.so");
    run(Command::new(&cc)
        .arg("-shared")
        .arg(&fp)
        .arg(&nofp)
        .arg("-o")
        .arg(&so));
    so
}

/// (symbol, object file) of `addr - 1` per dladdr.
fn describe(addr: usize) -> (String, String) {
    // SAFETY: dladdr only reads the address and fills the struct.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr((addr - 1) as *const c_void, &mut info) == 0 {
            return ("?".into(), "?".into());
        }
        let s = |p: *const libc::c_char| {
            if p.is_null() {
                "?".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        (s(info.dli_sname), s(info.dli_fname))
    }
}

#[inline(never)]
fn call_outer(outer: Outer) -> i32 {
    // SAFETY: uw_fp_outer(cb, n) with n > 0, as the C code expects.
    let r = unsafe { outer(record, std::hint::black_box(64)) };
    std::hint::black_box(r)
}

#[test]
fn walks_through_c_frames_with_and_without_frame_pointers_and_libc() {
    let so = build_lib();
    let path = CString::new(so.to_str().unwrap()).unwrap();
    // SAFETY: loading our own test library; dlsym of a function we define.
    let outer: Outer = unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!h.is_null(), "dlopen failed");
        let f = libc::dlsym(h, c"uw_fp_outer".as_ptr());
        assert!(!f.is_null());
        std::mem::transmute::<*mut c_void, Outer>(f)
    };
    // Twice: the second time every rule comes from the cache.
    let mut rounds = Vec::new();
    for round in 0..2 {
        WALKS.lock().unwrap().clear();
        call_outer(outer);
        let walks = WALKS.lock().unwrap().clone();
        assert_eq!(walks.len(), 2);
        for (w, walk) in walks.iter().enumerate() {
            let named: Vec<_> = walk.iter().map(|&a| describe(a)).collect();
            println!("round {round} walk {w}:");
            for (a, (s, f)) in walk.iter().zip(&named) {
                println!("  {a:#x} {s} ({f})");
            }
            let syms: Vec<&str> = named.iter().map(|(s, _)| s.as_str()).collect();
            let pos = |name: &str| {
                syms.iter()
                    .position(|s| *s == name)
                    .unwrap_or_else(|| panic!("{name} missing in {syms:?}"))
            };
            let inner = pos("uw_nofp_inner");
            if w == 0 {
                assert_eq!(inner, 0, "{syms:?}");
            } else {
                assert_eq!(syms[0], "uw_cmp", "{syms:?}");
                // Between the comparator and its caller: libc's qsort frames.
                assert!(inner >= 2, "{syms:?}");
                for (s, f) in &named[1..inner] {
                    assert!(f.contains("libc.so"), "{s} in {f}: {syms:?}");
                }
            }
            assert_eq!(pos("uw_nofp_mid"), inner + 1, "{syms:?}");
            // Reached only if rbp came back right through uw_nofp_mid, which
            // used it as a general register: uw_fp_outer's CFA is rbp-based.
            assert_eq!(pos("uw_fp_outer"), inner + 2, "{syms:?}");
            // Then the Rust caller, and on to the thread's first frame.
            assert!(walk.len() > inner + 4, "{syms:?}");
            assert!(walk.len() < 128, "the walk did not end by itself: {syms:?}");
        }
        // Both walks share everything from uw_nofp_inner's caller outward.
        let (a, b) = (&walks[0], &walks[1]);
        assert_eq!(a[1..], b[b.len() - (a.len() - 1)..]);
        rounds.push(walks);
    }
    assert_eq!(
        rounds[0], rounds[1],
        "the cached walks differ from the first ones"
    );
}

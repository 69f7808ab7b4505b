//! Builds the C parts: the rseq helper (linked into everything) and the
//! preload shim, which goes into libmagpie.so only (or, with the
//! `override-malloc` feature, into every binary using the crate).
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/sys/rseq_glibc.c");
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-changed=shim/exports.map");
    cc::Build::new()
        .file("src/sys/rseq_glibc.c")
        .flag_if_supported("-fPIC")
        .opt_level(2)
        .compile("magpie_rseq");

    // The shim archive is not announced to rustc (cargo_metadata(false)): a
    // `rustc-link-lib` would bundle it into the rlib and replace malloc in
    // every dependent binary.
    cc::Build::new()
        .file("shim/shim.c")
        .flag("-fno-builtin") // else gcc turns calloc's malloc+memset into a call to calloc
        .flag("-fexceptions") // operator new throws std::bad_alloc through the shim's frames
        .flag("-fno-omit-frame-pointer") // leakcheck reads the caller's rbp from the frame
        .flag_if_supported("-fPIC")
        .flag("-Wall")
        .flag("-Wextra")
        .opt_level(2)
        .cargo_metadata(false)
        .compile("magpie_shim");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    if env::var_os("CARGO_FEATURE_OVERRIDE_MALLOC").is_some() {
        println!("cargo:rustc-link-search=native={}", out.display());
        println!("cargo:rustc-link-lib=static:+whole-archive,-bundle=magpie_shim");
    } else {
        println!("cargo:rustc-cdylib-link-arg=-Wl,--whole-archive");
        println!(
            "cargo:rustc-cdylib-link-arg={}/libmagpie_shim.a",
            out.display()
        );
        println!("cargo:rustc-cdylib-link-arg=-Wl,--no-whole-archive");
    }
    // rustc's version script hides every symbol Rust did not export; this one
    // (merged by the linker) keeps the shim's malloc family exported.
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}/shim/exports.map",
        dir.display()
    );
    // Calls inside the library (shim -> engine) bind locally, not through the PLT.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic-functions");
}

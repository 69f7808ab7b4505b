fn main() {
    println!("cargo:rerun-if-changed=src/sys/rseq_glibc.c");
    cc::Build::new()
        .file("src/sys/rseq_glibc.c")
        .flag_if_supported("-fPIC")
        .opt_level(2)
        .compile("magpie_rseq");
}

//! `magpie run [--gc MODE] [--stats] [--lib PATH] [--] PROGRAM ARGS...`:
//! preload libmagpie.so and become the program (exec).

use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::cli::{self, Args};

pub fn main(args: Vec<String>) -> ! {
    let mut a = Args::new("run", args);
    let mut gc = None;
    let mut stats = false;
    let mut lib = None;
    let mut program = None;
    while let Some(arg) = a.next() {
        match arg.as_str() {
            "--" => break,
            "-h" | "--help" => {
                print!("{}", crate::HELP);
                std::process::exit(0);
            }
            "--gc" => {
                let v = a.value("--gc");
                gc = Some(cli::gc_mode(&a, v));
            }
            "--stats" => stats = true,
            "--lib" => lib = Some(a.value("--lib")),
            s if s.starts_with('-') && s.len() > 1 => {
                a.usage(format!("unknown option '{s}' (put the program after `--`)"))
            }
            _ => {
                program = Some(arg);
                break;
            }
        }
    }
    let rest = a.rest();
    let (program, prog_args) = match program {
        Some(p) => (p, rest),
        None => match rest.split_first() {
            Some((p, r)) => (p.clone(), r.to_vec()),
            None => a.usage("no program given: magpie run [OPTIONS] [--] PROGRAM [ARGS...]"),
        },
    };
    if program.is_empty() {
        a.usage("the program name is empty");
    }

    let lib = cli::magpie_lib(lib.as_deref()).unwrap_or_else(|e| cli::fail(1, e));
    let lib = lib.to_string_lossy().into_owned();
    let preload = prepend_preload(&lib, std::env::var_os("LD_PRELOAD"));

    let mut cmd = Command::new(&program);
    cmd.args(&prog_args).env("LD_PRELOAD", preload);
    if stats {
        cmd.env("MAGPIE_STATS", "1");
    }
    if let Some(mode) = gc {
        cmd.env("MAGPIE_GC", mode);
    }
    // exec only returns on failure.
    let err = cmd.exec();
    let status = match err.kind() {
        ErrorKind::NotFound => 127,
        _ => 126,
    };
    let what = match err.kind() {
        ErrorKind::NotFound if !program.contains('/') => "not found in PATH".to_string(),
        _ => err.to_string(),
    };
    cli::fail(status, format!("cannot run '{program}': {what}"))
}

/// `lib` first, then the existing LD_PRELOAD entries (ld.so separates them
/// with ':' or spaces), without a second copy of `lib`.
fn prepend_preload(lib: &str, existing: Option<std::ffi::OsString>) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = lib.as_bytes().to_vec();
    if let Some(old) = existing {
        for entry in old
            .as_bytes()
            .split(|&c| c == b':' || c == b' ' || c == b'\t')
            .filter(|e| !e.is_empty())
        {
            if entry != lib.as_bytes() {
                out.push(b':');
                out.extend_from_slice(entry);
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

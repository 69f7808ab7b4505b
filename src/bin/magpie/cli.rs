//! Command-line helpers shared by the subcommands: option parsing
//! (`--flag VALUE` and `--flag=VALUE`) and usage errors (exit status 2).

use std::fmt::Display;

/// Exit status for bad usage.
pub const USAGE: i32 = 2;

/// Prints `magpie[ SUB]: MSG` and a pointer to the help, exits with status 2.
pub fn usage_error(sub: &str, msg: impl Display) -> ! {
    let prefix = if sub.is_empty() {
        "magpie".to_string()
    } else {
        format!("magpie {sub}")
    };
    eprintln!("{prefix}: {msg}");
    eprintln!("(see `magpie --help`)");
    std::process::exit(USAGE)
}

/// Prints `magpie: MSG` and exits with `status`.
pub fn fail(status: i32, msg: impl Display) -> ! {
    eprintln!("magpie: {msg}");
    std::process::exit(status)
}

/// A cursor over one subcommand's arguments.
pub struct Args {
    sub: &'static str,
    v: Vec<String>,
    i: usize,
    /// The value of the current `--flag=value` argument, if any.
    inline: Option<String>,
}

impl Args {
    pub fn new(sub: &'static str, v: Vec<String>) -> Self {
        Args {
            sub,
            v,
            i: 0,
            inline: None,
        }
    }

    /// The next argument, with a `--flag=value` split into flag and a value
    /// that `value()` then returns. None at the end.
    pub fn next(&mut self) -> Option<String> {
        if let Some(v) = self.inline.take() {
            self.usage(format!(
                "option '{}' takes no value (got '{v}')",
                self.v[self.i - 1].split('=').next().unwrap_or("")
            ));
        }
        let a = self.v.get(self.i)?.clone();
        self.i += 1;
        if a.starts_with("--") && a.len() > 2 {
            if let Some((flag, val)) = a.split_once('=') {
                self.inline = Some(val.to_string());
                return Some(flag.to_string());
            }
        }
        Some(a)
    }

    /// The value of option `flag`: inline (`--flag=v`) or the next argument.
    pub fn value(&mut self, flag: &str) -> String {
        if let Some(v) = self.inline.take() {
            return v;
        }
        match self.v.get(self.i) {
            Some(v) => {
                self.i += 1;
                v.clone()
            }
            None => self.usage(format!("option '{flag}' needs a value")),
        }
    }

    /// A positive integer value of `flag`.
    pub fn positive(&mut self, flag: &str) -> usize {
        let v = self.value(flag);
        match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => self.usage(format!("{flag} needs a positive whole number, not '{v}'")),
        }
    }

    /// Everything not consumed yet.
    pub fn rest(&mut self) -> Vec<String> {
        let r = self.v[self.i..].to_vec();
        self.i = self.v.len();
        r
    }

    pub fn usage(&self, msg: impl Display) -> ! {
        usage_error(self.sub, msg)
    }
}

/// The GC modes `MAGPIE_GC` accepts.
pub const GC_MODES: [&str; 3] = ["off", "leakcheck", "collect"];

/// Validates a `--gc` value.
pub fn gc_mode(a: &Args, v: String) -> String {
    if GC_MODES.contains(&v.as_str()) {
        v
    } else {
        a.usage(format!(
            "--gc must be one of {}, not '{v}'",
            GC_MODES.join(", ")
        ))
    }
}

/// The directory of the running `magpie` binary.
pub fn exe_dir() -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the magpie binary's own path: {e}"))?;
    let exe = exe.canonicalize().unwrap_or(exe);
    exe.parent()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| format!("the magpie binary {} has no directory", exe.display()))
}

/// `libmagpie.so` in the binary's directory. In a cargo target directory
/// (target/<profile>/), `cargo test` and `cargo build` of a test or bench
/// rebuild deps/libmagpie.so without copying it up, so the copy beside the
/// binary can be stale: the newer of the two is taken.
fn beside_exe() -> Result<std::path::PathBuf, String> {
    let dir = exe_dir()?;
    let main = dir.join("libmagpie.so");
    let deps = dir.join("deps").join("libmagpie.so");
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Ok(match (mtime(&main), mtime(&deps)) {
        (Some(a), Some(b)) if b > a => deps,
        (None, Some(_)) => deps,
        _ => main,
    })
}

/// The preload library: `--lib PATH` if given (it must exist), else the
/// `libmagpie.so` beside the magpie binary. The error names the path.
pub fn magpie_lib(explicit: Option<&str>) -> Result<std::path::PathBuf, String> {
    let (path, how) = match explicit {
        Some(p) => (std::path::PathBuf::from(p), "given with --lib"),
        None => (beside_exe()?, "expected beside the magpie binary"),
    };
    if !path.is_file() {
        let hint = if explicit.is_some() {
            ""
        } else {
            "; build it with `cargo build --release` (it is built with the binary), \
             or give its path with --lib PATH"
        };
        return Err(format!(
            "the preload library {} ({how}) does not exist{hint}",
            path.display()
        ));
    }
    let abs = path.canonicalize().unwrap_or(path);
    let s = abs.to_string_lossy();
    if s.contains([':', ' ', '\t']) {
        return Err(format!(
            "the preload library's path {s} contains ':' or a space, which LD_PRELOAD \
             cannot express; move or link it elsewhere and use --lib PATH"
        ));
    }
    Ok(abs)
}

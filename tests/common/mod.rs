//! Helpers shared by the integration tests: a small PRNG, block patterns,
//! re-executing the current test binary, reading RSS.
#![allow(dead_code)]

use std::process::{Command, Output};

/// xorshift64* — deterministic, no dependencies.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    #[inline]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..n (n > 0).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
    /// Uniform in lo..=hi.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    #[inline]
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// A size from 1 B to `max` (≤ 8 MiB) skewed toward small: most ≤ 128 B,
/// fewer up to 4 KiB, some up to 64 KiB, `big_per_mille`‰ up to `max`.
pub fn skewed_size(r: &mut Rng, max: usize, big_per_mille: u64) -> usize {
    let p = r.below(1000);
    let s = if p < big_per_mille {
        r.range(64 << 10, max.max(64 << 10))
    } else if p < 700 {
        r.range(1, 128)
    } else if p < 920 {
        r.range(129, 4096)
    } else if p < 990 {
        r.range(4097, 32 << 10)
    } else {
        r.range((32 << 10) + 1, 64 << 10)
    };
    s.min(max)
}

/// An alignment from 1 B to 64 KiB, skewed toward the natural ones.
pub fn skewed_align(r: &mut Rng) -> usize {
    let p = r.below(1000);
    if p < 850 {
        1 << r.below(5) // 1..=16
    } else if p < 980 {
        1 << r.range(5, 12) // 32..=4096
    } else {
        1 << r.range(13, 16) // 8 KiB..=64 KiB
    }
}

#[inline]
fn word(seed: u64, k: u64) -> u64 {
    (seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ k
}

/// Fills `len` bytes at `p` with the pattern of `seed`, starting at byte `from`.
///
/// # Safety
/// `p..p+len` must be writable.
pub unsafe fn fill(p: *mut u8, len: usize, seed: u64, from: usize) {
    let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
    let mut i = from;
    // Bytes up to the next multiple of 8 (of the offset), then whole words.
    while i < len && i % 8 != 0 {
        buf[i] = (word(seed, (i / 8) as u64) >> (8 * (i % 8))) as u8;
        i += 1;
    }
    let mut chunks = buf[i..].chunks_exact_mut(8);
    let mut k = (i / 8) as u64;
    for c in &mut chunks {
        c.copy_from_slice(&word(seed, k).to_le_bytes());
        k += 1;
    }
    let rest = chunks.into_remainder();
    let w = word(seed, k).to_le_bytes();
    let n = rest.len();
    rest.copy_from_slice(&w[..n]);
}

/// The first offset in `p..p+len` that does not hold the pattern of `seed`.
///
/// # Safety
/// `p..p+len` must be readable.
pub unsafe fn check(p: *const u8, len: usize, seed: u64) -> Option<usize> {
    let buf = unsafe { std::slice::from_raw_parts(p, len) };
    let mut chunks = buf.chunks_exact(8);
    let mut k = 0u64;
    for c in &mut chunks {
        if c != word(seed, k).to_le_bytes() {
            let w = word(seed, k).to_le_bytes();
            let j = (0..8).find(|&j| c[j] != w[j]).unwrap();
            return Some(k as usize * 8 + j);
        }
        k += 1;
    }
    let rest = chunks.remainder();
    let w = word(seed, k).to_le_bytes();
    (0..rest.len())
        .find(|&j| rest[j] != w[j])
        .map(|j| k as usize * 8 + j)
}

/// Runs this test binary again with `env` set and `args`, returning its output.
pub fn reexec(env: &[(&str, &str)], args: &[&str]) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut c = Command::new(exe);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn the test binary")
}

/// Resident set size of this process, from /proc/self/statm.
pub fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

pub fn errno() -> i32 {
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(v: i32) {
    unsafe { *libc::__errno_location() = v }
}

pub const MIB: usize = 1 << 20;

/// Like [`reexec`], but kills the child (SIGKILL) after `secs` seconds; the
/// second value says whether that happened.
pub fn reexec_timeout(env: &[(&str, &str)], args: &[&str], secs: u64) -> (Output, bool) {
    use std::io::Read;
    use std::process::Stdio;
    let exe = std::env::current_exe().expect("current_exe");
    let mut c = Command::new(exe);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn the test binary");
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stdout = t1.join().unwrap();
    let stderr = t2.join().unwrap();
    (
        Output {
            status,
            stdout,
            stderr,
        },
        timed_out,
    )
}

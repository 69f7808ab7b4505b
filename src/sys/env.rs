//! Configuration from the environment, read from `environ` without allocating
//! (`std::env` allocates, and this runs inside the first `malloc`). A bad value
//! is reported once on stderr, by name, and the default is used.

use core::ffi::c_char;

extern "C" {
    static environ: *const *const c_char;
}

/// Returns the value of environment variable `name` (without the `=`), if set.
pub fn get(name: &str) -> Option<&'static [u8]> {
    // SAFETY: environ is a NULL-terminated array of NUL-terminated strings that
    // the C runtime keeps alive for the whole process; we only read it.
    unsafe {
        let mut e = environ;
        if e.is_null() {
            return None;
        }
        while !(*e).is_null() {
            let s = core::ffi::CStr::from_ptr(*e).to_bytes();
            if s.len() > name.len() && s.starts_with(name.as_bytes()) && s[name.len()] == b'=' {
                return Some(&s[name.len() + 1..]);
            }
            e = e.add(1);
        }
    }
    None
}

fn bad_value(name: &str, value: &[u8], expected: &str) {
    let shown = core::str::from_utf8(value).unwrap_or("<not UTF-8>");
    crate::sys::fatal::warn(format_args!(
        "ignoring {name}={shown}: expected {expected}; using the default"
    ));
}

/// An unsigned integer variable; `default` when unset or malformed.
pub fn get_u64(name: &str, default: u64, min: u64, max: u64) -> u64 {
    let Some(v) = get(name) else { return default };
    match parse_u64(v) {
        Some(n) if n >= min && n <= max => n,
        _ => {
            let mut b = crate::sys::fatal::StackBuf::<64>::new();
            let _ =
                core::fmt::Write::write_fmt(&mut b, format_args!("an integer in {min}..={max}"));
            bad_value(
                name,
                v,
                core::str::from_utf8(b.as_bytes()).unwrap_or("an integer"),
            );
            default
        }
    }
}

/// A boolean variable (`0`/`1`, `false`/`true`, `no`/`yes`, `off`/`on`).
pub fn get_bool(name: &str, default: bool) -> bool {
    let Some(v) = get(name) else { return default };
    match v {
        b"1" | b"true" | b"yes" | b"on" => true,
        b"0" | b"false" | b"no" | b"off" => false,
        _ => {
            bad_value(name, v, "0 or 1");
            default
        }
    }
}

/// One of a fixed set of words: returns the index of the match, or `default`.
pub fn get_choice(name: &str, choices: &[&str], default: usize) -> usize {
    let Some(v) = get(name) else { return default };
    for (i, c) in choices.iter().enumerate() {
        if v == c.as_bytes() {
            return i;
        }
    }
    let mut b = crate::sys::fatal::StackBuf::<128>::new();
    for (i, c) in choices.iter().enumerate() {
        let _ = core::fmt::Write::write_str(&mut b, if i == 0 { "" } else { "|" });
        let _ = core::fmt::Write::write_str(&mut b, c);
    }
    bad_value(
        name,
        v,
        core::str::from_utf8(b.as_bytes()).unwrap_or("a known word"),
    );
    default
}

/// Parses a plain decimal number with an optional K/M/G suffix.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (num, rest) = match s.iter().position(|c| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, &s[s.len()..]),
    };
    if num.is_empty() || num.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in num {
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    let mult = match rest {
        b"" => 1,
        b"k" | b"K" => 1 << 10,
        b"m" | b"M" => 1 << 20,
        b"g" | b"G" => 1 << 30,
        _ => return None,
    };
    v.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_suffixes() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"100"), Some(100));
        assert_eq!(parse_u64(b"4k"), Some(4096));
        assert_eq!(parse_u64(b"2M"), Some(2 << 20));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"12x"), None);
        assert_eq!(parse_u64(b"99999999999999999999"), None);
    }
}

//! The per-CPU cache's restartable sequences (x86-64).
//!
//! Each operation is a critical section registered with the kernel through the
//! thread's rseq area: it reads `cpu_id`, works on that CPU's cache, and
//! commits with a single store (or one read-modify-write instruction). If the
//! thread is preempted, migrated or signalled before the commit, the kernel
//! moves it to the abort handler, which starts over; so a section either took
//! effect entirely on the CPU it read or not at all, with no atomic
//! read-modify-write (tcmalloc's per-CPU slabs).
//!
//! Header word of span class `sc` (at `hdr_off = sc * 8`):
//! bits 0..16 `current`, 16..32 `begin`, 32..48 `end` (indices into `entries`).
//! The class's cached slots are `entries[begin..current]`. Little-endian, so
//! the fields are also the 16-bit words at byte offsets 0, 2 and 4: pop and
//! push compare `current` with `begin`/`end` in memory and commit with one
//! `dec`/`inc` of the word `current` (a single instruction, which is all the
//! commit needs), four to five instructions fewer than decoding the word.
//!
//! Each section is laid out as:
//! ```text
//! 2: publish the descriptor (8:) in rseq_cs
//! 3: start_ip ... commit store
//! 4: post_commit_ip (end of the critical range)
//! 7: failure exit (empty, full, or no valid CPU)        6: done
//! __rseq_cs:      8: {version 0, flags 0, start 3b, length 4b-3b, abort 5f}
//! __rseq_failure: signature (as a ud1 instruction), 5: jmp 2b
//! ```
//! Labels avoid 0 and 1: LLVM reads `1b`/`0b` in Intel syntax as binary numbers.
//!
//! The allocation pop marks the slot allocated with one store right after the
//! commit — the state byte carrying the current sweep generation, read inside
//! the section so that a stop in between makes it read again — at a known address range recorded in the
//! `magpie_alloc_windows` section: a thread interrupted exactly there has taken a
//! slot it has not marked yet, and the collector's stop handler lets it run on
//! past that instruction before stopping it.

use core::arch::asm;

use super::cache::{ALLOCS_OFF, ENTRIES_OFF, FAST, FREES_OFF, SHIFT, TINY_OFF};

// pop and push read the cache base and the CPU count from `FAST` (offsets 8
// and 16) inside the section, rip-relative, to spare two registers.
static_assertions::const_assert!(core::mem::offset_of!(super::cache::Fast, caches) == 8);
static_assertions::const_assert!(core::mem::offset_of!(super::cache::Fast, ncpu) == 16);

/// Publishes the section's descriptor (label 8) in the thread's rseq area,
/// starts the critical section (label 3) and reads the CPU number into `{c}`.
macro_rules! rseq_begin {
    () => {
        concat!(
            "2:\n",
            "lea {t}, [rip + 8f]\n",
            "mov qword ptr fs:[{off} + 8], {t}\n",
            "3:\n",
            "mov {c:e}, dword ptr fs:[{off} + 4]\n",
        )
    };
}

/// Turns the CPU number in `{c}` into that CPU's cache, or leaves for the
/// failure exit (label 7) when the thread has no valid CPU number.
macro_rules! rseq_cpu_cache {
    () => {
        concat!(
            "cmp {c}, qword ptr [rip + {fast} + 16]\n",
            "jae 7f\n",
            "shl {c}, {shift}\n",
            "add {c}, qword ptr [rip + {fast} + 8]\n",
        )
    };
}

/// The section's descriptor {version 0, flags 0, start 3, length 4-3, abort 5}
/// and its abort handler, preceded by the signature (as a ud1 instruction),
/// which restarts the section from label 2.
macro_rules! rseq_end {
    () => {
        concat!(
            ".pushsection __rseq_cs, \"aw\"\n",
            ".balign 32\n",
            "8:\n",
            ".long 0, 0\n",
            ".quad 3b, 4b - 3b, 5f\n",
            ".popsection\n",
            ".pushsection __rseq_failure, \"ax\"\n",
            ".byte 0x0f, 0xb9, 0x3d\n",
            ".long 0x53053053\n",
            "5:\n",
            "jmp 2b\n",
            ".popsection\n",
        )
    };
}

/// Pops a slot of the class at `hdr_off` from the current CPU's cache, marks
/// it allocated and counts the allocation in that CPU's statistics (an
/// increment after the section: a thread migrated just before it counts on
/// its old CPU, racing that CPU's own count, which statistics tolerate).
/// Returns the slot, or 0 when the cache is empty or the thread has no valid
/// CPU number.
///
/// # Safety
/// `off` is the calling thread's rseq-area offset (non-zero, registered source),
/// `caches` the base of `ncpu` caches of stride `1 << SHIFT`, `hdr_off` < the
/// header array size (which is also the statistics arrays' size).
#[inline(always)]
pub unsafe fn pop(off: isize, hdr_off: usize) -> usize {
    let p: usize;
    // SAFETY: see the module docs; every memory access is inside the CPU's cache
    // or the slot-state byte of a cached entry, and the section restarts on abort.
    unsafe {
        asm!(
            rseq_begin!(),
            rseq_cpu_cache!(),
            // current == begin: empty. The header's fields are read and
            // the commit made in memory, as 16-bit words.
            "movzx {t:e}, word ptr [{c} + {hoff}]",
            "cmp {t:x}, word ptr [{c} + {hoff} + 2]",
            "je 7f",
            "shl {t:e}, 4",
            "mov {p}, qword ptr [{c} + {t} + {ent_p}]",
            "mov {s}, qword ptr [{c} + {t} + {ent_s}]",
            "movzx {t:e}, byte ptr [rip + {tag}]",
            "dec word ptr [{c} + {hoff}]",
            "4:",
            "mov byte ptr [{s}], {t:l}",
            "9:",
            "inc qword ptr [{c} + {hoff} + {allocs}]",
            "jmp 6f",
            "7:",
            "xor {p:e}, {p:e}",
            "6:",
            ".pushsection magpie_alloc_windows, \"awR\"",
            ".quad 4b, 9b",
            ".popsection",
            rseq_end!(),
            off = in(reg) off,
            fast = sym FAST,
            tag = sym crate::gc::ALLOC_TAG,
            hoff = in(reg) hdr_off,
            shift = const SHIFT,
            ent_p = const ENTRIES_OFF - 16,
            ent_s = const ENTRIES_OFF - 8,
            allocs = const ALLOCS_OFF,
            t = out(reg) _,
            c = out(reg) _,
            s = out(reg) _,
            p = out(reg) p,
            options(nostack),
        );
    }
    p
}

/// Pushes a free slot (address and state byte) onto the current CPU's cache
/// if the low byte of the CPU number is `owner` (the slot's span's owner; see
/// `span::Span::owner`) or the class is not routed to owners
/// (`central::routes_remote`), and counts the free in that CPU's statistics
/// (after the section, as [`pop`] does). Returns true when it pushed, false
/// when the CPU is not the owner, the cache is full or the thread has no
/// valid CPU.
///
/// # Safety
/// As for [`pop`].
#[inline(always)]
pub unsafe fn push(off: isize, hdr_off: usize, ptr: usize, state: usize, owner: u8) -> bool {
    let r: usize;
    // SAFETY: as for pop; entries above `current` are scratch until the commit.
    unsafe {
        asm!(
            rseq_begin!(),
            // Not the owner, in a class routed to owners: fail. Branch-free
            // up to the (rarely taken) exit: a program freeing objects of
            // random sizes on both sides of the limit mispredicted a branch
            // on the class a third of the time (glibc-simple ran 1.3x
            // longer). Compares the CPU's low byte (the owner itself for a
            // class not routed) with the owner, in a scratch register: a
            // restart must find the inputs as they were.
            "mov {t:e}, {c:e}",
            "cmp {hoff}, qword ptr [rip + {lim}]",
            "cmovae {t:e}, {own:e}",
            "cmp {t:l}, {own:l}",
            "jne 7f",
            rseq_cpu_cache!(),
            // current == end: full (16-bit words, as in pop).
            "movzx {t:e}, word ptr [{c} + {hoff}]",
            "cmp {t:x}, word ptr [{c} + {hoff} + 4]",
            "je 7f",
            "shl {t:e}, 4",
            "mov qword ptr [{c} + {t} + {ent_p}], {ptr}",
            "mov qword ptr [{c} + {t} + {ent_s}], {st}",
            "inc word ptr [{c} + {hoff}]",
            "4:",
            "inc qword ptr [{c} + {hoff} + {frees}]",
            "mov {r:e}, 1",
            "jmp 6f",
            "7:",
            "xor {r:e}, {r:e}",
            "6:",
            rseq_end!(),
            off = in(reg) off,
            fast = sym FAST,
            hoff = in(reg) hdr_off,
            ptr = in(reg) ptr,
            st = in(reg) state,
            own = in(reg) owner as u32,
            lim = sym super::central::REMOTE_HDR_LIMIT,
            shift = const SHIFT,
            ent_p = const ENTRIES_OFF,
            ent_s = const ENTRIES_OFF + 8,
            frees = const FREES_OFF,
            t = out(reg) _,
            c = out(reg) _,
            r = out(reg) r,
            options(nostack),
        );
    }
    r != 0
}

/// Arguments of the batch sections, passed in memory to spare registers.
#[repr(C)]
pub struct BatchArgs {
    pub hdr_off: usize,
    /// Most entries to move.
    pub n: usize,
    /// The thread's buffer of entries.
    pub buf: *mut u8,
}

/// Moves up to `a.n` entries from the top of the current CPU's cache into
/// `a.buf`. Returns how many (0: empty or no valid CPU).
///
/// # Safety
/// As for [`pop`]; `a.buf` has room for `a.n` entries.
#[inline(always)]
pub unsafe fn pop_batch(off: isize, a: &BatchArgs) -> usize {
    let k: usize;
    // SAFETY: as for pop; writes to the caller's buffer before the commit are
    // redone on restart.
    unsafe {
        asm!(
            rseq_begin!(),
            rseq_cpu_cache!(),
            "mov {t}, qword ptr [{a}]",
            "mov {h}, qword ptr [{c} + {t}]",
            "movzx {k:e}, {h:x}",
            "mov {j:e}, {h:e}",
            "shr {j:e}, 16",
            "sub {k:e}, {j:e}",
            "jz 7f",
            "cmp {k}, qword ptr [{a} + 8]",
            "cmova {k}, qword ptr [{a} + 8]",
            "movzx {j:e}, {h:x}",
            "sub {j:e}, {k:e}",
            "shl {j}, 4",
            "lea {j}, [{c} + {j} + {ent}]",
            "mov {t}, qword ptr [{a} + 16]",
            "mov {x}, {k}",
            "shl {x}, 4",
            "add {x}, {j}",
            "12:",
            "movups xmm0, xmmword ptr [{j}]",
            "movups xmmword ptr [{t}], xmm0",
            "add {j}, 16",
            "add {t}, 16",
            "cmp {j}, {x}",
            "jb 12b",
            "sub {h}, {k}",
            "mov {t}, qword ptr [{a}]",
            "mov qword ptr [{c} + {t}], {h}",
            "4:",
            "jmp 6f",
            "7:",
            "xor {k:e}, {k:e}",
            "6:",
            rseq_end!(),
            off = in(reg) off,
            a = in(reg) a as *const BatchArgs,
            fast = sym FAST,
            shift = const SHIFT,
            ent = const ENTRIES_OFF,
            t = out(reg) _,
            c = out(reg) _,
            h = out(reg) _,
            j = out(reg) _,
            x = out(reg) _,
            k = out(reg) k,
            out("xmm0") _,
            options(nostack),
        );
    }
    k
}

/// Moves up to `a.n` entries from `a.buf` onto the current CPU's cache.
/// Returns how many (0: full or no valid CPU); the first ones are moved.
///
/// # Safety
/// As for [`pop_batch`].
#[inline(always)]
pub unsafe fn push_batch(off: isize, a: &BatchArgs) -> usize {
    let k: usize;
    // SAFETY: as for push.
    unsafe {
        asm!(
            rseq_begin!(),
            rseq_cpu_cache!(),
            "mov {t}, qword ptr [{a}]",
            "mov {h}, qword ptr [{c} + {t}]",
            "movzx {j:e}, {h:x}",
            "mov {k}, {h}",
            "shr {k}, 32",
            "movzx {k:e}, {k:x}",
            "sub {k:e}, {j:e}",
            "jz 7f",
            "cmp {k}, qword ptr [{a} + 8]",
            "cmova {k}, qword ptr [{a} + 8]",
            "shl {j}, 4",
            "lea {j}, [{c} + {j} + {ent}]",
            "mov {t}, qword ptr [{a} + 16]",
            "mov {x}, {k}",
            "shl {x}, 4",
            "add {x}, {t}",
            "12:",
            "movups xmm0, xmmword ptr [{t}]",
            "movups xmmword ptr [{j}], xmm0",
            "add {j}, 16",
            "add {t}, 16",
            "cmp {t}, {x}",
            "jb 12b",
            "add {h}, {k}",
            "mov {t}, qword ptr [{a}]",
            "mov qword ptr [{c} + {t}], {h}",
            "4:",
            "jmp 6f",
            "7:",
            "xor {k:e}, {k:e}",
            "6:",
            rseq_end!(),
            off = in(reg) off,
            a = in(reg) a as *const BatchArgs,
            fast = sym FAST,
            shift = const SHIFT,
            ent = const ENTRIES_OFF,
            t = out(reg) _,
            c = out(reg) _,
            h = out(reg) _,
            j = out(reg) _,
            x = out(reg) _,
            k = out(reg) k,
            out("xmm0") _,
            options(nostack),
        );
    }
    k
}

/// Carves `size` bytes aligned to `amask + 1` from the current CPU's tiny block.
/// Tiny word: see `cache::tiny_word`; 0 when the CPU has no block.
/// Returns the object, or 0 when it does not fit (or no valid CPU).
///
/// # Safety
/// As for [`pop`]; size < 16, amask + 1 a power of two <= 8.
#[inline(always)]
pub unsafe fn tiny_alloc(off: isize, size: usize, amask: usize) -> usize {
    let r: usize;
    // SAFETY: as for pop; the commit is the single store of the tiny word.
    unsafe {
        asm!(
            rseq_begin!(),
            rseq_cpu_cache!(),
            "mov {w}, qword ptr [{c} + {tiny}]",
            "test {w}, {w}",
            "jz 7f",
            "mov {t:e}, {w:e}",
            "and {t:e}, 31",
            "add {t}, {amask}",
            "mov {e}, {amask}",
            "not {e}",
            "and {t}, {e}",
            "lea {e}, [{t} + {size}]",
            "cmp {e}, 16",
            "ja 7f",
            "and {w}, -32",
            "or {w}, {e}",
            "lea {e}, [{t} + 5]",
            "bts {w}, {e}",
            "mov qword ptr [{c} + {tiny}], {w}",
            "4:",
            "shr {w}, 21",
            "shl {w}, 4",
            "add {w}, {t}",
            "jmp 6f",
            "7:",
            "xor {w:e}, {w:e}",
            "6:",
            rseq_end!(),
            off = in(reg) off,
            fast = sym FAST,
            size = in(reg) size,
            amask = in(reg) amask,
            shift = const SHIFT,
            tiny = const TINY_OFF,
            t = out(reg) _,
            c = out(reg) _,
            e = out(reg) _,
            w = out(reg) r,
            options(nostack),
        );
    }
    r
}

/// Replaces the current CPU's tiny word with `new`. Returns `(done, old)`.
///
/// # Safety
/// As for [`pop`].
#[inline(always)]
pub unsafe fn tiny_swap(off: isize, new: usize) -> (bool, usize) {
    let old: usize;
    let ok: usize;
    // SAFETY: as for pop; the commit is the store of the new word.
    unsafe {
        asm!(
            rseq_begin!(),
            rseq_cpu_cache!(),
            "mov {old}, qword ptr [{c} + {tiny}]",
            "mov qword ptr [{c} + {tiny}], {new}",
            "4:",
            "mov {ok:e}, 1",
            "jmp 6f",
            "7:",
            "xor {ok:e}, {ok:e}",
            "xor {old:e}, {old:e}",
            "6:",
            rseq_end!(),
            off = in(reg) off,
            fast = sym FAST,
            new = in(reg) new,
            shift = const SHIFT,
            tiny = const TINY_OFF,
            t = out(reg) _,
            c = out(reg) _,
            old = out(reg) old,
            ok = out(reg) ok,
            options(nostack),
        );
    }
    (ok != 0, old)
}

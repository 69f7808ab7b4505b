//! Call-stack capture without frame pointers (DWARF CFI from .eh_frame).
//!
//! # Why
//!
//! Leak detection records the call stack of every allocation. Most code on a
//! Debian system (libc, libstdc++, distribution packages, Rust in release mode)
//! is compiled without frame pointers, so following the rbp chain gives
//! garbage after the first foreign frame. Every object that can throw an
//! exception or be unwound carries call frame information (CFI) in
//! `.eh_frame` instead, indexed by `.eh_frame_hdr`: for each instruction, how
//! to find the caller's registers. This file walks the stack with it, fast
//! enough to run on every allocation.
//!
//! # The model
//!
//! A frame is described by three registers at a call site (a [`Regs`]):
//! `ip`, a return address into the function; `sp`, the function's rsp right
//! after that call returns; `bp`, its rbp at that point. The CFI row for the
//! call instruction (looked up at `ip - 1`, because a call may be the last
//! instruction of a function, and then `ip` already belongs to the next one)
//! says:
//!
//!  * the CFA ("canonical frame address": the caller's rsp after this function
//!    returns) is `rsp + N` or `rbp + N`;
//!  * the return address is saved at `CFA - 8` (on x86-64 the call pushes it
//!    there; anything else ends the walk);
//!  * the caller's rbp is either rbp itself (not touched yet) or saved in the
//!    stack at `CFA - 8k`, or undefined (then we set it to 0, so that a
//!    later rbp-based CFA fails validation).
//!
//! One step is then `cfa = base + N; ip' = *(cfa - 8); sp' = cfa;
//! bp' = bp or *(cfa - 8k)`. We track no other register: on x86-64 SysV the
//! CFA of ordinary compiled code is always on rsp or rbp, so rbp is the only
//! callee-saved register a later step may need.
//!
//! # The rule cache (fast path)
//!
//! Finding and interpreting an FDE costs a few hundred nanoseconds; an
//! allocation-heavy program calls malloc from a few thousand distinct call
//! sites. So the *result* of the interpretation (the three rules above) is
//! cached per return address in a direct-mapped table of `CACHE_LEN`
//! `AtomicU64`s (512 KiB of `map_owned` memory, never the managed heap),
//! mapped on first use (or by [`init`]) and published with a CAS. An entry
//! packs, in one word:
//!
//! ```text
//!   bits  0..32  tag: ip >> 16 (addresses above 2^48 are never cached)
//!   bit   32     valid
//!   bit   33     stop: the walk ends at this ip (no FDE, unsupported CFI, ...)
//!   bit   34     CFA is rbp-based (else rsp-based)
//!   bits 35..48  rbp rule: 0 = same value, BP_UNDEF = undefined, k = at CFA-8k
//!   bits 48..64  N, the CFA offset (0..65535)
//! ```
//!
//! The index is `(ip ^ ip >> 16) & 0xffff`: the low 16 bits folded with the
//! next 16 so that call sites at the same offset in different (page-aligned)
//! objects do not collide. The tag holds `ip >> 16`, and `ip & 0xffff` is
//! recovered from index and tag, so a hit identifies `ip` exactly. Because the
//! whole entry is one atomic word, a reader sees either an old entry or a new
//! one, never a torn mix; entries are derived from immutable CFI, so any two
//! writers racing on a slot write equally correct values and the last one
//! wins. Loads and stores are Relaxed: the entry carries all its data, there
//! is nothing else to publish. There is no lock anywhere on the read path, and
//! nothing is allocated: the walk is async-signal-safe and may run
//! concurrently on any number of threads (the only exception is the one-time
//! mapping of the table, which takes the `owned` registry's lock: call
//! [`init`] early if walks may happen inside signal handlers).
//!
//! Rules that do not fit (N ≥ 2^16, k ≥ BP_UNDEF, a negative N) are not
//! cached: they go through the slow path every time, still correctly. A
//! "stop" is cached too, so that walks reaching the outermost frame (`_start`,
//! `clone3`, whose CFI says the return address is undefined) do not search
//! for its FDE every time.
//!
//! # The slow path (cache miss)
//!
//! 1. `_dl_find_object(ip - 1)` (glibc ≥ 2.35: lock-free, allocation-free,
//!    async-signal-safe) gives the object's mapping and its `PT_GNU_EH_FRAME`
//!    segment, i.e. `.eh_frame_hdr`. No object (JIT code, garbage) → stop.
//! 2. `.eh_frame_hdr` (LSB "Exception Frames"): version 1, three pointer
//!    encodings, `eh_frame_ptr`, `fde_count` and a table sorted by initial
//!    location. Only the usual table encoding is handled
//!    (`DW_EH_PE_datarel | DW_EH_PE_sdata4` = 0x3b, what every linker emits);
//!    a binary search gives the last entry starting at or below `ip - 1`.
//! 3. The FDE and its CIE are parsed (augmentations `z`, `R`, `P`, `L`, `S`;
//!    pointers absptr or pcrel, in udata2/4/8, sdata2/4/8 or LEB128), and the
//!    target is checked against the FDE's `[pc_begin, pc_begin + range)`.
//! 4. The CIE's initial instructions, then the FDE's, are executed up to the
//!    row covering `ip - 1` (DWARF 4 §6.4.2), tracking only the CFA, rbp (DWARF
//!    register 6) and the return address (the CIE's return-address column,
//!    which must be 16).
//! 5. The row becomes a rule (or a stop), which is cached when it fits.
//!
//! Everything the slow path reads is bounded to the object's mapping as
//! `_dl_find_object` reports it.
//!
//! # What stops a walk
//!
//! Never a crash: anything not understood ends the walk with what was found so
//! far. Namely: no object or no `.eh_frame_hdr` or no FDE covering the
//! address; an unsupported header or pointer encoding; a CIE that is not
//! version 1 or 3, has an unknown augmentation or an "eh" one, or a
//! return-address column other than 16; a signal frame (augmentation `S`);
//! a CFA on a register other than rsp/rbp or given by an expression
//! (`DW_CFA_def_cfa_expression`); a return address not at `CFA - 8`
//! (undefined, in a register, an expression, ...); an rbp rule other than
//! same/undefined/`CFA - 8k` (register, expression, val_offset, ...); an
//! unknown opcode or a remember_state stack deeper than `STATE_STACK`.
//!
//! # Invariants of a step (why reads of the stack are safe)
//!
//! Each step validates the new CFA before any load: it must be 8-aligned, and
//! `cfa - sp` must lie in `[8, 16 MiB]` (so the new CFA is strictly above the
//! old sp, and the walk always progresses toward the stack base). The return
//! address is loaded from `cfa - 8` and the saved rbp from `cfa - 8k` with
//! `8k ≤ cfa - sp`, so every stack load is inside `[sp, cfa)`: the part of the
//! stack between this frame's stack pointer and its caller's, which is mapped
//! whenever `sp` is a real stack pointer and the CFI is right. Loads from the
//! stack only ever follow rules derived from real CFI (fresh or cached). A
//! return address of 0 (the ABI's end-of-stack marker) ends the walk.
//!
//! With garbage registers (an `ip` that is not code, a `sp` that is not a
//! stack) the checks above reject almost everything at once; what they cannot
//! guarantee is that `[sp, sp + 16 MiB)` is mapped when `sp` is not a stack
//! pointer at all. Callers pass real registers.
//!
//! # Staleness
//!
//! The cache is keyed by address only. If an object is unloaded (`dlclose`)
//! and another one is later mapped over the same addresses, old entries
//! describe the old code and give a wrong or truncated trace. The step checks
//! still apply, so their loads stay within 16 MiB above a real stack pointer
//! (where the only risk is a stack whose top is closer than that);
//! [`clear_cache`] forgets everything (call it after `dlclose` if that
//! matters).
//!
//! # Using it
//!
//!  * From C code with frame pointers (the preload shim's `malloc`):
//!    `backtrace_from(Regs { ip: __builtin_return_address(0), sp:
//!    __builtin_dwarf_cfa(), bp: *(void **)__builtin_frame_address(0) })`
//!    gives the call site in the caller first.
//!  * From Rust: [`backtrace_here`] unwinds its own frame with its CFI; the
//!    first address is in its direct caller (none of its own frames appear).
//!  * `_dl_find_object` is a GLIBC_2.35 symbol: the library needs glibc ≥
//!    2.35 once this module is linked in. Before ld.so has built its lookup
//!    tables (malloc calls while the preloaded library is being relocated),
//!    glibc answers by a plain search of the link maps, which is fine then:
//!    the process is still single-threaded.

use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

/// Registers at a call site: `ip` is a RETURN ADDRESS (the rule is looked up
/// for `ip - 1`), `sp` the stack pointer just after that return (the caller's
/// rsp, = the callee's CFA), `bp` the caller's rbp value at that point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    pub ip: usize,
    pub sp: usize,
    pub bp: usize,
}

/// Fills `out` with return addresses: `out[0] = start.ip`, then the return
/// address of each enclosing frame, outward. Returns how many were written
/// (≥ 1 if `out` is non-empty and `start.ip != 0`).
pub fn backtrace_from(start: Regs, out: &mut [usize]) -> usize {
    if out.is_empty() || start.ip == 0 {
        return 0;
    }
    out[0] = start.ip;
    1 + walk(start, &mut out[1..], None)
}

/// The stack words one walk read, in order, with their values. A walk is a
/// function of its start registers, the rules (immutable CFI, until
/// [`clear_cache`]) and these words: if a later walk starts from the same
/// registers, with the same rule generation, and each word still holds its
/// value, it would yield the same frames. Checking that costs one load and
/// compare per word, where walking costs a rule lookup per frame; allocation
/// loops repeat the same stack, so leakcheck memoizes walks this way.
pub struct StackReads {
    words: [(usize, usize); MAX_READS],
    len: usize,
    /// False when the walk read more words than fit (nothing to check against).
    complete: bool,
    generation: u32,
    /// Whether the start rbp reached a rule that used it (a CFA on rbp);
    /// if not, the walk did not depend on it. Code built without frame
    /// pointers keeps any value in rbp, which changes from call to call.
    start_bp_used: bool,
}

/// Words a memoizable walk may read: a return address and a saved rbp per frame.
const MAX_READS: usize = 32;

impl StackReads {
    pub const fn new() -> StackReads {
        StackReads {
            words: [(0, 0); MAX_READS],
            len: 0,
            complete: false,
            generation: 0,
            start_bp_used: false,
        }
    }

    /// True if a walk from `now` would start as the walk from `then` that
    /// filled this did (with `unchanged`: would give the same frames).
    #[inline]
    pub fn same_start(&self, then: Regs, now: Regs) -> bool {
        then.ip == now.ip && then.sp == now.sp && (!self.start_bp_used || then.bp == now.bp)
    }

    #[inline(always)]
    fn note(&mut self, addr: usize, value: usize) {
        if self.len < MAX_READS {
            self.words[self.len] = (addr, value);
            self.len += 1;
        } else {
            self.complete = false;
        }
    }

    /// True if a walk from the registers of the walk that filled this would
    /// give the same frames now.
    ///
    /// The words are read in the walk's order and the check stops at the
    /// first changed one, so it reads exactly a prefix of what a fresh walk
    /// from the same registers would read: the same memory, as safe to read
    /// (see `walk`).
    #[inline]
    pub fn unchanged(&self) -> bool {
        if !self.complete || self.generation != GENERATION.load(Ordering::Relaxed) {
            return false;
        }
        self.words[..self.len].iter().all(|&(addr, value)| {
            // SAFETY: as the doc says: every earlier word matched, so a fresh
            // walk would read this address next.
            unsafe { ptr::read(addr as *const usize) == value }
        })
    }
}

/// [`backtrace_from`], noting in `reads` the stack words the walk read.
pub fn backtrace_from_noting(start: Regs, out: &mut [usize], reads: &mut StackReads) -> usize {
    reads.len = 0;
    reads.complete = true;
    reads.start_bp_used = false;
    reads.generation = GENERATION.load(Ordering::Relaxed);
    if out.is_empty() || start.ip == 0 {
        return 0;
    }
    out[0] = start.ip;
    1 + walk(start, &mut out[1..], Some(reads))
}

/// Bumped by [`clear_cache`]: memoized walks (`StackReads`) taken before are stale.
static GENERATION: AtomicU32 = AtomicU32::new(0);

/// Fills `out` starting with the return address of `backtrace_here` itself
/// (an address inside its direct caller), then outward. Returns how many were
/// written. Its own frame is unwound with its CFI like any other and is not
/// part of the result.
#[inline(never)]
pub fn backtrace_here(out: &mut [usize]) -> usize {
    let ip: usize;
    let sp: usize;
    let bp: usize;
    // SAFETY: reads rip (the address of the next instruction), rsp and rbp into
    // three fresh registers; touches no memory, the stack or the flags. The
    // three values describe one program point: the CFI row at `ip - 1` (inside
    // the `lea`) holds throughout the block, since it does not move rsp.
    unsafe {
        core::arch::asm!(
            "lea {ip}, [rip + 0]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    walk(Regs { ip, sp, bp }, out, None)
}

/// Maps the rule cache now rather than on the first walk. Returns false if
/// the mapping failed (walks then work uncached). Call it at start-up when
/// walks may later run in signal handlers: the lazy mapping takes the lock of
/// magpie's registry of owned mappings.
pub fn init() -> bool {
    !cache().is_null()
}

/// Forgets every cached rule (e.g. after `dlclose`, when new code may later be
/// mapped at the same addresses). Walks running concurrently are unaffected
/// apart from taking the slow path; a miss being resolved concurrently may
/// still store its (old) result afterwards.
pub fn clear_cache() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    let c = CACHE.load(Ordering::Acquire);
    if c.is_null() {
        return;
    }
    for i in 0..CACHE_LEN {
        // SAFETY: `c` is a published table of CACHE_LEN entries, never unmapped.
        unsafe { (*c.add(i)).store(0, Ordering::Relaxed) };
    }
}

// ---------------------------------------------------------------------------
// Rules and the walk.

/// Largest step from one frame's sp to the next frame's CFA.
const MAX_STEP: usize = 16 << 20;

/// `Rule::bp`: the caller's rbp is this frame's rbp.
const BP_SAME: u32 = 0;
/// `Rule::bp`: the caller's rbp is unknown (becomes 0). Also the bound of a
/// cached slot index k (13 bits in an entry).
const BP_UNDEF: u32 = (1 << 13) - 1;

/// How to get from one frame to its caller (the decoded form of a CFI row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    /// CFA = rbp + cfa_off (else rsp + cfa_off).
    cfa_on_bp: bool,
    cfa_off: isize,
    /// BP_SAME, BP_UNDEF, or k in 1..BP_UNDEF: caller's rbp at CFA - 8k.
    bp: u32,
}

/// Unwinds outward from the frame `r` describes, writing the return address
/// of each frame (starting with `r`'s own caller) to `out`. Returns the count.
/// With `reads`, every stack word read is noted there.
#[inline(always)]
fn walk(mut r: Regs, out: &mut [usize], mut reads: Option<&mut StackReads>) -> usize {
    let cache = cache();
    let mut n = 0;
    // r.bp is still the start's rbp (only BP_SAME rules so far).
    let mut bp_is_start = true;
    while n < out.len() {
        let Some(rule) = lookup(cache, r.ip) else {
            break;
        };
        if rule.cfa_on_bp && bp_is_start {
            if let Some(reads) = reads.as_deref_mut() {
                reads.start_bp_used = true;
            }
        }
        bp_is_start &= rule.bp == BP_SAME;
        let base = if rule.cfa_on_bp { r.bp } else { r.sp };
        let cfa = base.wrapping_add_signed(rule.cfa_off);
        let d = cfa.wrapping_sub(r.sp);
        // d in [8, MAX_STEP] (one unsigned compare) and an aligned CFA.
        if d.wrapping_sub(8) > MAX_STEP - 8 || cfa & 7 != 0 {
            break;
        }
        // SAFETY: the rule comes from the CFI of the code at `r.ip` (see
        // `lookup`) and `cfa - 8` lies in [sp, cfa), the stack between this
        // frame's sp and its caller's: mapped for a real stack (module docs).
        let ra = unsafe { ptr::read((cfa - 8) as *const usize) };
        if let Some(reads) = reads.as_deref_mut() {
            reads.note(cfa - 8, ra);
        }
        let bp = if rule.bp == BP_SAME {
            r.bp
        } else if rule.bp == BP_UNDEF {
            0
        } else {
            let off = rule.bp as usize * 8;
            if off > d {
                break;
            }
            // SAFETY: as above: 8 ≤ off ≤ d, so the slot is inside [sp, cfa)
            // and 8-aligned.
            let bp = unsafe { ptr::read((cfa - off) as *const usize) };
            if let Some(reads) = reads.as_deref_mut() {
                reads.note(cfa - off, bp);
            }
            bp
        };
        if ra == 0 {
            break;
        }
        out[n] = ra;
        n += 1;
        r = Regs {
            ip: ra,
            sp: cfa,
            bp,
        };
    }
    n
}

// ---------------------------------------------------------------------------
// The rule cache.

const CACHE_BITS: u32 = 16;
const CACHE_LEN: usize = 1 << CACHE_BITS;
const CACHE_BYTES: usize = CACHE_LEN * 8;

const TAG_MASK: u64 = 0xffff_ffff;
const E_VALID: u64 = 1 << 32;
const E_STOP: u64 = 1 << 33;
const E_CFA_BP: u64 = 1 << 34;
const E_BP_SHIFT: u32 = 35;
const E_OFF_SHIFT: u32 = 48;

static CACHE: AtomicPtr<AtomicU64> = AtomicPtr::new(ptr::null_mut());
/// Set when mapping the cache failed: do not retry on every walk.
static CACHE_FAILED: AtomicBool = AtomicBool::new(false);

/// The cache table, mapping it on first use; null if it cannot be mapped.
#[inline(always)]
fn cache() -> *const AtomicU64 {
    let c = CACHE.load(Ordering::Acquire);
    if !c.is_null() {
        return c;
    }
    cache_init()
}

#[cold]
#[inline(never)]
fn cache_init() -> *const AtomicU64 {
    if CACHE_FAILED.load(Ordering::Relaxed) {
        return ptr::null();
    }
    let m = crate::sys::os::map_owned(CACHE_BYTES).cast::<AtomicU64>();
    if m.is_null() {
        CACHE_FAILED.store(true, Ordering::Relaxed);
        return ptr::null();
    }
    // Zeroed memory is a table of empty entries: nothing to initialize.
    match CACHE.compare_exchange(ptr::null_mut(), m, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => m,
        Err(winner) => {
            // SAFETY: `m` is our own mapping of CACHE_BYTES, never published.
            unsafe { crate::sys::os::unmap_owned(m.cast(), CACHE_BYTES) };
            winner
        }
    }
}

#[inline(always)]
fn cache_index(ip: usize) -> usize {
    (ip ^ (ip >> 16)) & (CACHE_LEN - 1)
}

/// The rule for the frame whose return address is `ip`; None ends the walk.
#[inline(always)]
fn lookup(cache: *const AtomicU64, ip: usize) -> Option<Rule> {
    if !cache.is_null() {
        // SAFETY: a non-null cache is a live table of CACHE_LEN entries (never
        // unmapped once published) and the index is masked to CACHE_LEN.
        let e = unsafe { (*cache.add(cache_index(ip))).load(Ordering::Relaxed) };
        if e & (TAG_MASK | E_VALID) == (ip >> 16) as u64 | E_VALID {
            return unpack(e);
        }
    }
    lookup_slow(cache, ip)
}

#[inline(always)]
fn unpack(e: u64) -> Option<Rule> {
    if e & E_STOP != 0 {
        return None;
    }
    Some(Rule {
        cfa_on_bp: e & E_CFA_BP != 0,
        cfa_off: (e >> E_OFF_SHIFT) as isize,
        bp: ((e >> E_BP_SHIFT) as u32) & BP_UNDEF,
    })
}

/// The cache entry for `rule` at `ip`, or None if it does not fit in one.
fn pack(ip: usize, rule: Option<Rule>) -> Option<u64> {
    let tag = (ip >> 16) as u64;
    if tag > TAG_MASK {
        return None;
    }
    let body = match rule {
        None => E_VALID | E_STOP,
        Some(r) => {
            if !(0..=0xffff).contains(&r.cfa_off) || r.bp > BP_UNDEF {
                return None;
            }
            let on_bp = if r.cfa_on_bp { E_CFA_BP } else { 0 };
            E_VALID | on_bp | (r.bp as u64) << E_BP_SHIFT | (r.cfa_off as u64) << E_OFF_SHIFT
        }
    };
    Some(tag | body)
}

#[cold]
#[inline(never)]
fn lookup_slow(cache: *const AtomicU64, ip: usize) -> Option<Rule> {
    let rule = find_rule(ip);
    if !cache.is_null() {
        if let Some(e) = pack(ip, rule) {
            // SAFETY: as in `lookup`.
            unsafe { (*cache.add(cache_index(ip))).store(e, Ordering::Relaxed) };
        }
    }
    rule
}

// ---------------------------------------------------------------------------
// The slow path: finding the FDE.

/// `struct dl_find_object` of glibc 2.35+ on x86-64 (no dlfo_eh_dbase, no
/// dlfo_eh_count there).
#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: *mut c_void,
    map_end: *mut c_void,
    link_map: *mut c_void,
    eh_frame: *mut c_void,
    reserved: [u64; 7],
}

extern "C" {
    fn _dl_find_object(address: *mut c_void, result: *mut DlFindObject) -> c_int;
}

// Pointer encodings (DW_EH_PE_*).
const PE_OMIT: u8 = 0xff;
const PE_ABSPTR: u8 = 0x00;
const PE_ULEB128: u8 = 0x01;
const PE_UDATA2: u8 = 0x02;
const PE_UDATA4: u8 = 0x03;
const PE_UDATA8: u8 = 0x04;
const PE_SLEB128: u8 = 0x09;
const PE_SDATA2: u8 = 0x0a;
const PE_SDATA4: u8 = 0x0b;
const PE_SDATA8: u8 = 0x0c;
const PE_PCREL: u8 = 0x10;
const PE_DATAREL: u8 = 0x30;
const PE_ALIGNED: u8 = 0x50;
const PE_INDIRECT: u8 = 0x80;

/// DWARF register numbers on x86-64.
const REG_RBP: u64 = 6;
const REG_RSP: u64 = 7;
const REG_RA: u64 = 16;

/// The rule for the frame whose return address is `ip`, from the CFI.
fn find_rule(ip: usize) -> Option<Rule> {
    let pc = ip.wrapping_sub(1);
    // SAFETY: all-zero is a valid value of this plain-data struct.
    let mut obj: DlFindObject = unsafe { core::mem::zeroed() };
    // SAFETY: `_dl_find_object` only reads the address as a number and fills
    // the struct we pass; it takes no lock and does not allocate.
    if unsafe { _dl_find_object(pc as *mut c_void, &mut obj) } != 0 {
        return None;
    }
    // glibc reports the mapping of the segment holding `pc`: with separate
    // code segments (the default of current linkers) that is the text alone,
    // and `.eh_frame_hdr` and `.eh_frame` sit in the read-only segment below
    // it. The tables are the object's own, found through its PT_GNU_EH_FRAME,
    // so reads are bounded from the header up to the end of the text; a
    // layout that put them elsewhere ends the walk.
    let hi = obj.map_end as usize;
    let hdr = obj.eh_frame as usize;
    if hdr == 0 || hdr >= hi {
        return None;
    }
    let lo = (obj.map_start as usize).min(hdr);
    let fde = search_hdr(hdr, lo, hi, pc)?;
    run_cfi(fde, lo, hi, pc)
}

/// A bounded reader over the object's mapping `[p, end)`.
struct Cursor {
    p: usize,
    end: usize,
    /// The object's mapping: `end` never moves past `hi`.
    lo: usize,
    hi: usize,
}

impl Cursor {
    fn new(p: usize, lo: usize, hi: usize) -> Cursor {
        Cursor { p, end: hi, lo, hi }
    }

    /// Reserves `n` bytes; returns their address.
    #[inline]
    fn take(&mut self, n: usize) -> Option<usize> {
        let a = self.p;
        if a < self.lo || a > self.end || n > self.end - a {
            return None;
        }
        self.p = a + n;
        Some(a)
    }

    /// Reads a `T` from the next `size_of::<T>()` bytes.
    #[inline]
    fn read<T: Copy>(&mut self) -> Option<T> {
        let a = self.take(core::mem::size_of::<T>())?;
        // SAFETY: `[a, a + size)` lies inside the object's mapping as
        // `_dl_find_object` reported it (`take` checks it against `end` ≤ hi,
        // and `a ≥ lo`); we only follow offsets from the object's own CFI
        // tables, which live in a readable PT_LOAD segment. Unaligned read.
        Some(unsafe { ptr::read_unaligned(a as *const T) })
    }

    fn u8(&mut self) -> Option<u8> {
        self.read::<u8>()
    }

    fn uleb(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= ((b & 0x7f) as u64) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Some(v);
            }
            if shift > 70 {
                return None;
            }
        }
    }

    fn sleb(&mut self) -> Option<i64> {
        let mut v: i64 = 0;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= ((b & 0x7f) as i64) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Some(v);
            }
            if shift > 70 {
                return None;
            }
        }
    }

    /// Skips `n` bytes (a block), staying inside the current bound.
    fn skip(&mut self, n: u64) -> Option<()> {
        self.take(usize::try_from(n).ok()?).map(|_| ())
    }

    /// Reads a pointer in encoding `enc`. `datarel` is the base for
    /// DW_EH_PE_datarel (only meaningful in .eh_frame_hdr). Indirect, textrel,
    /// funcrel and aligned encodings are not supported.
    fn encoded(&mut self, enc: u8, datarel: Option<usize>) -> Option<usize> {
        if enc == PE_OMIT || enc & PE_INDIRECT != 0 {
            return None;
        }
        let here = self.p;
        let v = match enc & 0x0f {
            PE_ABSPTR | PE_UDATA8 => self.read::<u64>()? as usize,
            PE_SDATA8 => self.read::<i64>()? as usize,
            PE_UDATA4 => self.read::<u32>()? as usize,
            PE_SDATA4 => self.read::<i32>()? as isize as usize,
            PE_UDATA2 => self.read::<u16>()? as usize,
            PE_SDATA2 => self.read::<i16>()? as isize as usize,
            PE_ULEB128 => self.uleb()? as usize,
            PE_SLEB128 => self.sleb()? as usize,
            _ => return None,
        };
        match enc & 0x70 {
            0 => Some(v),
            PE_PCREL => Some(here.wrapping_add(v)),
            PE_DATAREL => Some(datarel?.wrapping_add(v)),
            _ => None,
        }
    }

    /// Skips a pointer in encoding `enc` without interpreting it (the
    /// personality routine, which may be indirect).
    fn skip_encoded(&mut self, enc: u8) -> Option<()> {
        if enc & 0x70 == PE_ALIGNED {
            return None;
        }
        match enc & 0x0f {
            PE_ABSPTR | PE_UDATA8 | PE_SDATA8 => self.skip(8),
            PE_UDATA4 | PE_SDATA4 => self.skip(4),
            PE_UDATA2 | PE_SDATA2 => self.skip(2),
            PE_ULEB128 => self.uleb().map(|_| ()),
            PE_SLEB128 => self.sleb().map(|_| ()),
            _ => None,
        }
    }

    /// Reads an .eh_frame length field: returns the end of the record
    /// (bounded by the mapping) and leaves the cursor after the length.
    fn record(&mut self) -> Option<usize> {
        let len = match self.read::<u32>()? {
            0 => return None, // terminator
            0xffff_ffff => self.read::<u64>()?,
            l => l as u64,
        };
        let len = usize::try_from(len).ok()?;
        if len > self.hi - self.p {
            return None;
        }
        Some(self.p + len)
    }
}

/// Searches `.eh_frame_hdr` at `hdr` for the FDE whose initial location is
/// the greatest at or below `pc`. Returns the FDE's address.
fn search_hdr(hdr: usize, lo: usize, hi: usize, pc: usize) -> Option<usize> {
    let mut c = Cursor::new(hdr, lo, hi);
    if c.u8()? != 1 {
        return None;
    }
    let frame_ptr_enc = c.u8()?;
    let count_enc = c.u8()?;
    let table_enc = c.u8()?;
    c.encoded(frame_ptr_enc, Some(hdr))?;
    let count = c.encoded(count_enc, Some(hdr))?;
    if table_enc != PE_DATAREL | PE_SDATA4 || count == 0 {
        return None;
    }
    let table = c.p;
    if count > (hi - table) / 8 {
        return None;
    }
    let entry = |i: usize, field: usize| -> Option<usize> {
        let mut e = Cursor::new(table + i * 8 + field, lo, hi);
        Some(hdr.wrapping_add(e.read::<i32>()? as isize as usize))
    };
    // The last entry with initial location ≤ pc.
    if entry(0, 0)? > pc {
        return None;
    }
    let (mut a, mut b) = (0, count); // entry(a) ≤ pc; entries ≥ b are > pc
    while b - a > 1 {
        let m = a + (b - a) / 2;
        if entry(m, 0)? <= pc {
            a = m;
        } else {
            b = m;
        }
    }
    entry(a, 4)
}

/// What a CIE says.
struct Cie {
    code_align: u64,
    data_align: i64,
    /// Encoding of the FDE's pc_begin, pc_range and DW_CFA_set_loc operands.
    fde_enc: u8,
    has_aug_data: bool,
    signal: bool,
    /// The initial instructions.
    insns: (usize, usize),
}

fn parse_cie(cie: usize, lo: usize, hi: usize) -> Option<Cie> {
    let mut c = Cursor::new(cie, lo, hi);
    let end = c.record()?;
    c.end = end;
    if c.read::<u32>()? != 0 {
        return None; // not a CIE
    }
    let version = c.u8()?;
    if version != 1 && version != 3 {
        return None;
    }
    let mut aug = [0u8; 8];
    let mut n = 0;
    loop {
        let ch = c.u8()?;
        if ch == 0 {
            break;
        }
        if n == aug.len() {
            return None;
        }
        aug[n] = ch;
        n += 1;
    }
    let aug = &aug[..n];
    let code_align = c.uleb()?;
    let data_align = c.sleb()?;
    let ra = if version == 1 {
        c.u8()? as u64
    } else {
        c.uleb()?
    };
    if ra != REG_RA {
        return None;
    }
    let mut cie = Cie {
        code_align,
        data_align,
        fde_enc: PE_ABSPTR,
        has_aug_data: false,
        signal: false,
        insns: (0, 0),
    };
    if let Some((&b'z', rest)) = aug.split_first() {
        cie.has_aug_data = true;
        let len = c.uleb()?;
        let data_end = c.p.checked_add(usize::try_from(len).ok()?)?;
        if data_end > end {
            return None;
        }
        for &ch in rest {
            match ch {
                b'L' => {
                    c.u8()?;
                }
                b'P' => {
                    let enc = c.u8()?;
                    c.skip_encoded(enc)?;
                }
                b'R' => cie.fde_enc = c.u8()?,
                b'S' => cie.signal = true,
                _ => return None,
            }
        }
        c.p = data_end;
    } else if !aug.is_empty() {
        return None; // "eh" (pre-GCC-3 layout) or unknown
    }
    cie.insns = (c.p, end);
    Some(cie)
}

/// One row of the CFI table, reduced to what we track.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RegRule {
    Same,
    Undefined,
    /// Saved at CFA + offset.
    Offset(i64),
    /// Anything else (register, expression, val_offset, ...).
    Unsupported,
}

#[derive(Clone, Copy)]
struct Row {
    cfa_reg: u64,
    cfa_off: i64,
    /// False after DW_CFA_def_cfa_expression, until a register rule returns.
    cfa_ok: bool,
    bp: RegRule,
    ra: RegRule,
}

/// Depth of the DW_CFA_remember_state stack.
const STATE_STACK: usize = 8;

struct Interp<'a> {
    cie: &'a Cie,
    row: Row,
    /// The row after the CIE's initial instructions (for DW_CFA_restore).
    init: Row,
    stack: [Row; STATE_STACK],
    depth: usize,
    loc: usize,
    target: usize,
}

impl Interp<'_> {
    fn set(&mut self, reg: u64, rule: RegRule) {
        match reg {
            REG_RBP => self.row.bp = rule,
            REG_RA => self.row.ra = rule,
            _ => {}
        }
    }

    fn restore(&mut self, reg: u64) {
        match reg {
            REG_RBP => self.row.bp = self.init.bp,
            REG_RA => self.row.ra = self.init.ra,
            _ => {}
        }
    }

    /// Moves to `loc`; returns false when that passes the target (the
    /// current row is then the target's).
    fn advance_to(&mut self, loc: usize) -> bool {
        if loc > self.target {
            return false;
        }
        self.loc = loc;
        true
    }

    fn advance(&mut self, delta: u64) -> Option<bool> {
        let d = delta.checked_mul(self.cie.code_align)?;
        let loc = self.loc.checked_add(usize::try_from(d).ok()?)?;
        Some(self.advance_to(loc))
    }

    fn factored(&self, v: i64) -> Option<i64> {
        v.checked_mul(self.cie.data_align)
    }

    /// Runs the instructions in `[start, end)`. Returns Some(true) when a row
    /// past the target begins (the current row is the target's: stop there),
    /// Some(false) at the end of the instructions, None if not understood.
    fn run(&mut self, start: usize, end: usize, lo: usize, hi: usize) -> Option<bool> {
        let mut c = Cursor::new(start, lo, hi);
        c.end = end;
        while c.p < end {
            let op = c.u8()?;
            let low = (op & 0x3f) as u64;
            match op >> 6 {
                1 => {
                    // DW_CFA_advance_loc
                    if !self.advance(low)? {
                        return Some(true);
                    }
                }
                2 => {
                    // DW_CFA_offset
                    let off = self.factored(c.uleb()? as i64)?;
                    self.set(low, RegRule::Offset(off));
                }
                3 => self.restore(low), // DW_CFA_restore
                _ => match op {
                    0x00 => {} // DW_CFA_nop
                    0x01 => {
                        // DW_CFA_set_loc
                        let loc = c.encoded(self.cie.fde_enc, None)?;
                        if !self.advance_to(loc) {
                            return Some(true);
                        }
                    }
                    0x02 => {
                        let d = c.read::<u8>()? as u64;
                        if !self.advance(d)? {
                            return Some(true);
                        }
                    }
                    0x03 => {
                        let d = c.read::<u16>()? as u64;
                        if !self.advance(d)? {
                            return Some(true);
                        }
                    }
                    0x04 => {
                        let d = c.read::<u32>()? as u64;
                        if !self.advance(d)? {
                            return Some(true);
                        }
                    }
                    0x05 => {
                        // DW_CFA_offset_extended
                        let reg = c.uleb()?;
                        let off = self.factored(c.uleb()? as i64)?;
                        self.set(reg, RegRule::Offset(off));
                    }
                    0x06 => {
                        // DW_CFA_restore_extended
                        let reg = c.uleb()?;
                        self.restore(reg);
                    }
                    0x07 => {
                        // DW_CFA_undefined
                        let reg = c.uleb()?;
                        self.set(reg, RegRule::Undefined);
                    }
                    0x08 => {
                        // DW_CFA_same_value
                        let reg = c.uleb()?;
                        self.set(reg, RegRule::Same);
                    }
                    0x09 => {
                        // DW_CFA_register
                        let reg = c.uleb()?;
                        c.uleb()?;
                        self.set(reg, RegRule::Unsupported);
                    }
                    0x0a => {
                        // DW_CFA_remember_state (the whole row, CFA included,
                        // as GCC's epilogue CFI expects)
                        if self.depth == STATE_STACK {
                            return None;
                        }
                        self.stack[self.depth] = self.row;
                        self.depth += 1;
                    }
                    0x0b => {
                        // DW_CFA_restore_state
                        if self.depth == 0 {
                            return None;
                        }
                        self.depth -= 1;
                        self.row = self.stack[self.depth];
                    }
                    0x0c => {
                        // DW_CFA_def_cfa
                        self.row.cfa_reg = c.uleb()?;
                        self.row.cfa_off = i64::try_from(c.uleb()?).ok()?;
                        self.row.cfa_ok = true;
                    }
                    0x0d => self.row.cfa_reg = c.uleb()?, // DW_CFA_def_cfa_register
                    0x0e => self.row.cfa_off = i64::try_from(c.uleb()?).ok()?, // def_cfa_offset
                    0x0f => {
                        // DW_CFA_def_cfa_expression
                        let len = c.uleb()?;
                        c.skip(len)?;
                        self.row.cfa_ok = false;
                    }
                    0x10 | 0x16 => {
                        // DW_CFA_expression, DW_CFA_val_expression
                        let reg = c.uleb()?;
                        let len = c.uleb()?;
                        c.skip(len)?;
                        self.set(reg, RegRule::Unsupported);
                    }
                    0x11 => {
                        // DW_CFA_offset_extended_sf
                        let reg = c.uleb()?;
                        let off = self.factored(c.sleb()?)?;
                        self.set(reg, RegRule::Offset(off));
                    }
                    0x12 => {
                        // DW_CFA_def_cfa_sf
                        self.row.cfa_reg = c.uleb()?;
                        self.row.cfa_off = self.factored(c.sleb()?)?;
                        self.row.cfa_ok = true;
                    }
                    0x13 => self.row.cfa_off = self.factored(c.sleb()?)?, // def_cfa_offset_sf
                    0x14 => {
                        // DW_CFA_val_offset
                        let reg = c.uleb()?;
                        c.uleb()?;
                        self.set(reg, RegRule::Unsupported);
                    }
                    0x15 => {
                        // DW_CFA_val_offset_sf
                        let reg = c.uleb()?;
                        c.sleb()?;
                        self.set(reg, RegRule::Unsupported);
                    }
                    0x2e => {
                        // DW_CFA_GNU_args_size
                        c.uleb()?;
                    }
                    0x2f => {
                        // DW_CFA_GNU_negative_offset_extended
                        let reg = c.uleb()?;
                        let off = self.factored(c.uleb()? as i64)?;
                        self.set(reg, RegRule::Offset(off.checked_neg()?));
                    }
                    _ => return None,
                },
            }
        }
        Some(false)
    }
}

/// Parses the FDE at `fde`, checks that it covers `pc`, runs its CIE's and
/// its own instructions up to `pc` and turns the row into a rule.
fn run_cfi(fde: usize, lo: usize, hi: usize, pc: usize) -> Option<Rule> {
    let mut c = Cursor::new(fde, lo, hi);
    let end = c.record()?;
    c.end = end;
    let id_at = c.p;
    let cie_off = c.read::<u32>()? as usize;
    if cie_off == 0 || cie_off > id_at - lo {
        return None; // a CIE, or a pointer out of the object
    }
    let cie = parse_cie(id_at - cie_off, lo, hi)?;
    let begin = c.encoded(cie.fde_enc, None)?;
    let range = c.encoded(cie.fde_enc & 0x0f, None)?;
    if pc < begin || pc - begin >= range {
        return None;
    }
    if cie.has_aug_data {
        let len = c.uleb()?;
        c.skip(len)?;
    }
    if cie.signal {
        return None;
    }
    let start = Row {
        cfa_reg: REG_RSP,
        cfa_off: 0,
        cfa_ok: false,
        bp: RegRule::Same,
        ra: RegRule::Unsupported,
    };
    let mut it = Interp {
        cie: &cie,
        row: start,
        init: start,
        stack: [start; STATE_STACK],
        depth: 0,
        loc: begin,
        target: pc,
    };
    let passed = it.run(cie.insns.0, cie.insns.1, lo, hi)?;
    it.init = it.row;
    it.depth = 0;
    if !passed {
        it.run(c.p, end, lo, hi)?;
    }
    row_to_rule(&it.row)
}

fn row_to_rule(row: &Row) -> Option<Rule> {
    if !row.cfa_ok || row.ra != RegRule::Offset(-8) {
        return None;
    }
    let cfa_on_bp = match row.cfa_reg {
        REG_RSP => false,
        REG_RBP => true,
        _ => return None,
    };
    if row.cfa_off.unsigned_abs() > MAX_STEP as u64 {
        return None;
    }
    let bp = match row.bp {
        RegRule::Same => BP_SAME,
        RegRule::Undefined => BP_UNDEF,
        RegRule::Offset(o) if o < 0 && o % 8 == 0 && -o / 8 < BP_UNDEF as i64 => (-o / 8) as u32,
        _ => return None,
    };
    Some(Rule {
        cfa_on_bp,
        cfa_off: row.cfa_off as isize,
        bp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;
    use std::time::Instant;

    /// Function symbols of the running executable (from its ELF .symtab):
    /// (start, size, name), with the load bias applied.
    fn exe_symbols() -> &'static Vec<(usize, usize, String)> {
        static S: std::sync::OnceLock<Vec<(usize, usize, String)>> = std::sync::OnceLock::new();
        S.get_or_init(|| {
            let f = std::fs::read("/proc/self/exe").unwrap();
            let u16_at = |o: usize| u16::from_le_bytes(f[o..o + 2].try_into().unwrap()) as usize;
            let u32_at = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap()) as usize;
            let u64_at = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap()) as usize;
            assert_eq!(&f[..4], b"\x7fELF");
            let pie = u16_at(16) == 3;
            let bias = if pie {
                // SAFETY: dladdr fills the struct for an address in this executable.
                unsafe {
                    let mut info: libc::Dl_info = core::mem::zeroed();
                    assert!(libc::dladdr(exe_symbols as *const c_void, &mut info) != 0);
                    info.dli_fbase as usize
                }
            } else {
                0
            };
            let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
            let sh = |i: usize| shoff + i * shentsize;
            let mut out = Vec::new();
            for i in 0..shnum {
                if u32_at(sh(i) + 4) != 2 {
                    continue; // SHT_SYMTAB
                }
                let (off, size) = (u64_at(sh(i) + 0x18), u64_at(sh(i) + 0x20));
                let strtab = u64_at(sh(u32_at(sh(i) + 0x28)) + 0x18);
                for s in (off..off + size).step_by(24) {
                    if f[s + 4] & 0xf != 2 {
                        continue; // STT_FUNC
                    }
                    let name_at = strtab + u32_at(s);
                    let len = f[name_at..].iter().position(|&b| b == 0).unwrap();
                    let name = String::from_utf8_lossy(&f[name_at..name_at + len]).into_owned();
                    out.push((u64_at(s + 8) + bias, u64_at(s + 16), name));
                }
            }
            assert!(!out.is_empty(), "the test executable has no .symtab");
            out
        })
    }

    /// The name of the executable's function containing `addr - 1`.
    fn name_of(addr: usize) -> Option<&'static str> {
        let a = addr - 1;
        exe_symbols()
            .iter()
            .find(|(s, n, _)| *s <= a && a < s + n)
            .map(|(_, _, name)| name.as_str())
    }

    // Nested frames. black_box and the work after each call keep them apart
    // (no inlining, no tail calls); the big arrays give some of them large
    // rsp-based frames.
    #[inline(never)]
    fn uw_frame_cc(out: &mut [usize]) -> usize {
        let n = backtrace_here(black_box(out));
        black_box(n)
    }

    #[inline(never)]
    fn uw_frame_bb(out: &mut [usize], x: u64) -> usize {
        let mut big = [0u8; 3000];
        big[black_box(17)] = x as u8;
        let big = black_box(&mut big);
        let n = uw_frame_cc(out);
        black_box(big[17] as usize + n) - big[17] as usize
    }

    /// Keeps many values live across the call so that rbp is used as a
    /// general register (saved with a CFI offset rule).
    #[inline(never)]
    fn uw_frame_aa(out: &mut [usize]) -> usize {
        let v: [u64; 12] = core::array::from_fn(|i| black_box(i as u64 * 7 + 1));
        let (a, b, c, d, e, f) = (v[0], v[1], v[2], v[3], v[4], v[5]);
        let (g, h, i, j, k, l) = (v[6], v[7], v[8], v[9], v[10], v[11]);
        let n = uw_frame_bb(out, a ^ b);
        // Everything depends on `n`: all twelve values are live across the call.
        let m = n as u64;
        let s = a.wrapping_mul(m) ^ b.wrapping_add(m) ^ c.rotate_left(m as u32) ^ d.wrapping_sub(m);
        let t = e.wrapping_mul(m ^ f) ^ g.wrapping_add(m ^ h) ^ i.wrapping_mul(m ^ j);
        black_box(s ^ t ^ k.wrapping_add(m) ^ l.wrapping_mul(m));
        n
    }

    #[inline(never)]
    fn uw_frame_root(out: &mut [usize]) -> usize {
        let n = uw_frame_aa(black_box(out));
        black_box(n + 1) - 1
    }

    #[test]
    fn frames_are_found_in_order() {
        let mut out = [0usize; 64];
        let n = uw_frame_root(&mut out);
        let names: Vec<_> = out[..n]
            .iter()
            .map(|&a| name_of(a).unwrap_or("?"))
            .collect();
        println!("{n} frames: {names:#?}");
        assert!(n >= 4, "{names:?}");
        assert!(names[0].contains("uw_frame_cc"), "{names:?}");
        assert!(names[1].contains("uw_frame_bb"), "{names:?}");
        assert!(names[2].contains("uw_frame_aa"), "{names:?}");
        assert!(names[3].contains("uw_frame_root"), "{names:?}");
        // The walk ended by itself (outermost frame), not by filling `out`.
        assert!(n < out.len(), "{names:?}");
        // Some of these frames have no frame pointer: their CFA is on rsp.
        let rsp_based = out[..3]
            .iter()
            .filter(|&&a| matches!(find_rule(a), Some(r) if !r.cfa_on_bp))
            .count();
        assert!(rsp_based > 0);
        // Optimized, uw_frame_aa uses rbp as a general register: its row
        // saves rbp (checked in objdump; debug code keeps values in memory).
        let aa = find_rule(out[2]).unwrap();
        if !cfg!(debug_assertions) {
            assert!(aa.bp != BP_SAME && aa.bp != BP_UNDEF, "{aa:?}");
        }
    }

    static SIG_WALK: [std::sync::atomic::AtomicUsize; 33] =
        [const { std::sync::atomic::AtomicUsize::new(0) }; 33];

    extern "C" fn on_signal(_: libc::c_int) {
        let mut out = [0usize; 32];
        let n = backtrace_here(&mut out);
        for (i, &a) in out[..n].iter().enumerate() {
            SIG_WALK[i + 1].store(a, Ordering::Relaxed);
        }
        SIG_WALK[0].store(n, Ordering::Relaxed);
    }

    /// A walk from a signal handler stops at the kernel's signal frame
    /// (glibc's __restore_rt, marked "S" in its CIE) instead of guessing.
    #[test]
    fn stops_at_signal_frame() {
        // SAFETY: installs a handler for SIGUSR2 (used by no other test) and
        // raises it on this thread; the handler only walks and stores atomics.
        unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, ptr::null_mut()), 0);
            assert_eq!(libc::raise(libc::SIGUSR2), 0);
        }
        let n = SIG_WALK[0].load(Ordering::Relaxed);
        let walk: Vec<usize> = (1..=n)
            .map(|i| SIG_WALK[i].load(Ordering::Relaxed))
            .collect();
        assert_eq!(n, 2, "{walk:x?}");
        assert!(name_of(walk[0]).unwrap().contains("on_signal"));
        // SAFETY: dladdr reads the address and fills the struct.
        let lib = unsafe {
            let mut info: libc::Dl_info = core::mem::zeroed();
            assert!(libc::dladdr(walk[1] as *const c_void, &mut info) != 0);
            std::ffi::CStr::from_ptr(info.dli_fname)
                .to_string_lossy()
                .into_owned()
        };
        assert!(lib.contains("libc.so"), "{lib}");
    }

    #[test]
    fn backtrace_from_includes_start() {
        let mut here = [0usize; 8];
        let n = uw_frame_aa(&mut here);
        assert!(n >= 2);
        // The frame of uw_frame_bb as seen from inside it is unknown here, but
        // starting from a non-code ip must give exactly that ip.
        let mut out = [0usize; 8];
        let r = Regs {
            ip: 0x1234,
            sp: 0,
            bp: 0,
        };
        assert_eq!(backtrace_from(r, &mut out), 1);
        assert_eq!(out[0], 0x1234);
        assert_eq!(
            backtrace_from(
                Regs {
                    ip: 0,
                    sp: 0,
                    bp: 0
                },
                &mut out
            ),
            0
        );
        assert_eq!(backtrace_from(r, &mut []), 0);
        assert_eq!(backtrace_here(&mut []), 0);
    }

    #[test]
    fn cached_walk_matches_cold_walk() {
        // Both walks from the same call site: the first after clearing the
        // cache (misses, unless a concurrent test refills it), then a hit.
        let mut walks = [[0usize; 32]; 2];
        let mut counts = [0; 2];
        for i in 0..2 {
            if i == 0 {
                clear_cache();
            }
            counts[i] = uw_frame_aa(&mut walks[i]);
        }
        let (a, na) = (walks[0], counts[0]);
        let (b, nb) = (walks[1], counts[1]);
        // Frame 3 is this function, at two call sites if the loop is unrolled.
        assert_eq!(na, nb);
        assert_eq!(&a[..3], &b[..3]);
        assert_eq!(&a[4..na], &b[4..nb]);
        assert_eq!(name_of(a[3]), name_of(b[3]));
        // And the slow path alone (no cache) agrees with the cached rules.
        for &ip in &a[..na] {
            let slow = find_rule(ip);
            let c = cache();
            assert_eq!(lookup(c, ip), slow);
        }
    }

    #[test]
    fn many_threads_agree() {
        let mut reference = [0usize; 32];
        let n = uw_frame_aa(&mut reference);
        let reference = reference[..n].to_vec();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut first: Option<Vec<usize>> = None;
                    for i in 0..100_000 {
                        if t == 0 && i % 10_000 == 0 {
                            clear_cache(); // misses while others hit
                        }
                        let mut out = [0usize; 32];
                        let n = uw_frame_aa(&mut out);
                        match &first {
                            None => first = Some(out[..n].to_vec()),
                            Some(f) => assert_eq!(&f[..], &out[..n]),
                        }
                    }
                    first.unwrap()
                })
            })
            .collect();
        for t in threads {
            let v = t.join().unwrap();
            // The first three frames are the same code; the outer ones differ
            // (a spawned thread's stack).
            assert_eq!(&v[..3], &reference[..3]);
            assert!(v.len() > 3);
        }
    }

    #[test]
    fn garbage_registers_do_not_crash() {
        let code = uw_frame_bb as *const () as usize;
        let libc_code = libc::qsort as *const () as usize;
        let mut zeros = [0usize; 4096];
        let zsp = black_box(zeros.as_mut_ptr()) as usize;
        let mut out = [0usize; 16];
        // Not code.
        for ip in [1usize, 0x1000, zsp, usize::MAX, 1 << 47, (1 << 47) - 1] {
            assert_eq!(backtrace_from(Regs { ip, sp: zsp, bp: 0 }, &mut out), 1);
        }
        // Code addresses with a zeroed stack, bad rbp values, misaligned sp.
        for base in [code, libc_code, backtrace_here as *const () as usize] {
            for off in 0..400 {
                for (sp, bp) in [
                    (zsp, 0),
                    (zsp, 0xdead_beef),
                    (zsp + 3, zsp),
                    (zsp + 512, zsp + 1024),
                ] {
                    let n = backtrace_from(
                        Regs {
                            ip: base + off,
                            sp,
                            bp,
                        },
                        &mut out,
                    );
                    assert!((1..=out.len()).contains(&n));
                }
            }
        }
        black_box(&mut zeros);
    }

    // Sixteen distinct frames (distinct return addresses, distinct cache
    // entries), like a real allocation site's stack.
    macro_rules! chain {
        ($($name:ident => $next:ident),*) => {$(
            #[inline(never)]
            fn $name(f: &mut dyn FnMut() -> usize) -> usize {
                black_box($next(black_box(f)) + 1)
            }
        )*};
    }
    chain!(ch15 => ch14, ch14 => ch13, ch13 => ch12, ch12 => ch11, ch11 => ch10,
           ch10 => ch9, ch9 => ch8, ch8 => ch7, ch7 => ch6, ch6 => ch5, ch5 => ch4,
           ch4 => ch3, ch3 => ch2, ch2 => ch1, ch1 => ch0);
    #[inline(never)]
    fn ch0(f: &mut dyn FnMut() -> usize) -> usize {
        black_box(f() + 1)
    }

    #[test]
    fn speed() {
        const FRAMES: usize = 16;
        const ITERS: u32 = 200_000;
        const ROUNDS: u32 = 300;
        let mut warm_ns = 0.0;
        let mut cold_ns = 0.0;
        let mut got = 0;
        let mut distinct = 0;
        ch15(&mut || {
            let mut out = [0usize; FRAMES];
            // Cold: every frame a miss (FDE search and CFA program). Racing
            // tests may refill a few entries; good enough for a measurement.
            let mut cold = std::time::Duration::ZERO;
            for _ in 0..ROUNDS {
                clear_cache();
                let t = Instant::now();
                got = backtrace_here(black_box(&mut out));
                cold += t.elapsed();
            }
            cold_ns = cold.as_nanos() as f64 / ROUNDS as f64;
            let t = Instant::now();
            for _ in 0..ITERS {
                got = backtrace_here(black_box(&mut out));
            }
            warm_ns = t.elapsed().as_nanos() as f64 / ITERS as f64;
            let mut v = out.to_vec();
            v.sort_unstable();
            v.dedup();
            distinct = v.len();
            0
        });
        assert_eq!(got, FRAMES);
        assert_eq!(distinct, FRAMES);
        println!(
            "backtrace_here, {FRAMES} distinct frames: warm {warm_ns:.1} ns ({:.2} ns/frame), \
             cold {cold_ns:.0} ns ({:.0} ns/frame)",
            warm_ns / FRAMES as f64,
            cold_ns / FRAMES as f64
        );
    }

    /// Builds a CIE (augmentation `aug`, "R" data = udata4, any extra
    /// augmentation bytes after it) and one FDE for [0x1000, 0x1100) in a
    /// buffer, and runs `run_cfi` for `pc` on it.
    fn synthetic(aug: &str, cie_insns: &[u8], fde_insns: &[u8], pc: usize) -> Option<Rule> {
        let mut b: Vec<u8> = Vec::new();
        let mut cie = vec![0, 0, 0, 0, 1]; // id 0, version 1
        cie.extend_from_slice(aug.as_bytes());
        cie.extend_from_slice(&[0, 1, 0x78, 16]); // NUL, code 1, data -8, RA 16
        if aug.starts_with('z') {
            cie.extend_from_slice(&[1, PE_UDATA4]); // aug data: R
        }
        cie.extend_from_slice(cie_insns);
        b.extend_from_slice(&(cie.len() as u32).to_le_bytes());
        b.extend_from_slice(&cie);
        let fde_at = b.len();
        let mut fde = Vec::new();
        fde.extend_from_slice(&((fde_at + 4) as u32).to_le_bytes()); // back to the CIE
        fde.extend_from_slice(&0x1000u32.to_le_bytes());
        fde.extend_from_slice(&0x100u32.to_le_bytes());
        if aug.starts_with('z') {
            fde.push(0);
        }
        fde.extend_from_slice(fde_insns);
        b.extend_from_slice(&(fde.len() as u32).to_le_bytes());
        b.extend_from_slice(&fde);
        b.extend_from_slice(&[0; 4]); // terminator
        let lo = b.as_ptr() as usize;
        run_cfi(lo + fde_at, lo, lo + b.len(), pc)
    }

    #[test]
    fn cfa_programs() {
        const CIE: &[u8] = &[0x0c, 7, 8, 0x90, 1]; // def_cfa rsp+8; RA at CFA-8
        let rsp = |off, bp| {
            Some(Rule {
                cfa_on_bp: false,
                cfa_off: off,
                bp,
            })
        };
        let rbp = |off, bp| {
            Some(Rule {
                cfa_on_bp: true,
                cfa_off: off,
                bp,
            })
        };
        // push rbp; mov rbp, rsp; ... ; remember; leave; ret; restore.
        let prologue: &[u8] = &[
            0x41, 0x0e, 16, 0x86, 2, // +1: CFA rsp+16, rbp at CFA-16
            0x43, 0x0d, 6, // +3: CFA on rbp
            0x02, 0x10, 0x0a, 0x0c, 7, 8, 0xc6, // +16: remember; rsp+8; restore rbp
            0x41, 0x0b, // +1: restore_state
        ];
        let z = |pc| synthetic("zR", CIE, prologue, pc);
        assert_eq!(z(0x1000), rsp(8, BP_SAME));
        assert_eq!(z(0x1001), rsp(16, 2));
        assert_eq!(z(0x1003), rsp(16, 2));
        assert_eq!(z(0x1004), rbp(16, 2));
        assert_eq!(z(0x1013), rbp(16, 2));
        assert_eq!(z(0x1014), rsp(8, BP_SAME));
        assert_eq!(z(0x1015), rbp(16, 2));
        assert_eq!(z(0x10ff), rbp(16, 2));
        assert_eq!(z(0x1100), None); // outside the FDE
        assert_eq!(z(0xfff), None);
        // advance_loc1/2/4, offset_extended_sf, args_size, nop, set_loc.
        let long: &[u8] = &[
            0x02, 1, 0x0e, 24, // +1
            0x03, 2, 0, 0x11, 6, 3, // +2: rbp at CFA-24 (factored 3)
            0x04, 4, 0, 0, 0, 0x2e, 8, 0x00, 0x13, 0x7e, // +4: args_size, nop, CFA rsp+16
            0x01, 0x50, 0x10, 0, 0, 0x05, 6, 4, // set_loc 0x1050: rbp at CFA-32
            0x2f, 6, 5, // GNU_negative_offset_extended: rbp at CFA+40
        ];
        let l = |pc| synthetic("zR", CIE, long, pc);
        assert_eq!(l(0x1000), rsp(8, BP_SAME));
        assert_eq!(l(0x1001), rsp(24, BP_SAME));
        assert_eq!(l(0x1003), rsp(24, 3));
        assert_eq!(l(0x1007), rsp(16, 3));
        assert_eq!(l(0x104f), rsp(16, 3));
        assert_eq!(l(0x1050), None); // rbp saved above the CFA: not a slot we take
                                     // Constructs that stop the walk.
        let stop = |aug: &str, insns: &[u8]| synthetic(aug, CIE, insns, 0x1010);
        assert_eq!(stop("zRS", &[]), None); // signal frame
        assert_eq!(stop("zRX", &[]), None); // unknown augmentation
        assert_eq!(stop("zR", &[0x0f, 2, 0x77, 0x08]), None); // def_cfa_expression
        assert_eq!(stop("zR", &[0x0f, 1, 0, 0x0c, 7, 16]), rsp(16, BP_SAME)); // ... then a rule
        assert_eq!(stop("zR", &[0x0c, 3, 16]), None); // CFA on rbx
        assert_eq!(stop("zR", &[0x09, 6, 3]), None); // rbp in rbx
        assert_eq!(stop("zR", &[0x10, 16, 1, 0]), None); // RA by expression
        assert_eq!(stop("zR", &[0x16, 6, 1, 0]), None); // rbp val_expression
        assert_eq!(stop("zR", &[0x14, 6, 1]), None); // rbp val_offset
        assert_eq!(stop("zR", &[0x07, 16]), None); // RA undefined (outermost)
        assert_eq!(stop("zR", &[0x07, 6]), rsp(8, BP_UNDEF));
        assert_eq!(stop("zR", &[0x08, 6, 0x05, 3, 2]), rsp(8, BP_SAME)); // same_value; rbx
        assert_eq!(stop("zR", &[0x85, 9]), rsp(8, BP_SAME)); // another register
        assert_eq!(stop("zR", &[0x90, 2]), None); // RA at CFA-16
        assert_eq!(stop("zR", &[0x2d]), None); // unknown opcode
        assert_eq!(stop("zR", &[0x0b]), None); // restore_state on an empty stack
        assert_eq!(stop("zR", &[0x0a; 9]), None); // remember_state overflow
        assert_eq!(stop("zR", &[0x0a; 8]), rsp(8, BP_SAME));
        assert_eq!(stop("zR", &[0x10, 6, 200]), None); // block past the end
                                                       // A CIE whose initial instructions save rbp; DW_CFA_restore goes back to it.
        let cie_bp: &[u8] = &[0x0c, 7, 16, 0x90, 1, 0x86, 2];
        assert_eq!(
            synthetic("zR", cie_bp, &[0x86, 3, 0xc6], 0x1000),
            rsp(16, 2)
        );
        assert_eq!(
            synthetic("zR", cie_bp, &[0x86, 3, 0x06, 6], 0x1000),
            rsp(16, 2)
        );
        assert_eq!(synthetic("zR", cie_bp, &[0x86, 3], 0x1000), rsp(16, 3));
    }

    #[test]
    fn pack_roundtrip() {
        let ip = 0x7f12_3456_789a;
        for r in [
            Rule {
                cfa_on_bp: false,
                cfa_off: 8,
                bp: BP_SAME,
            },
            Rule {
                cfa_on_bp: true,
                cfa_off: 16,
                bp: 2,
            },
            Rule {
                cfa_on_bp: false,
                cfa_off: 0xffff,
                bp: BP_UNDEF,
            },
        ] {
            let e = pack(ip, Some(r)).unwrap();
            assert_eq!(e & TAG_MASK, (ip >> 16) as u64);
            assert_eq!(unpack(e), Some(r));
        }
        assert_eq!(unpack(pack(ip, None).unwrap()), None);
        assert!(pack(
            ip,
            Some(Rule {
                cfa_on_bp: false,
                cfa_off: 0x10000,
                bp: 0
            })
        )
        .is_none());
        assert!(pack(
            ip,
            Some(Rule {
                cfa_on_bp: false,
                cfa_off: -8,
                bp: 0
            })
        )
        .is_none());
        assert!(pack(1 << 48, None).is_none());
    }
}

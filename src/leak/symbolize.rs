//! Symbolization of return addresses for the leak report.
//!
//! The leak checker records each allocation site as a list of return
//! addresses. At exit (or on demand) the report turns them into lines like
//!
//! ```text
//! leak_here+0x1a (/tmp/prog) /tmp/prog.c:12
//! 0x7f0c2a1b3c4d (/usr/lib/x86_64-linux-gnu/libfoo.so.1)
//! 0x1234 (?)
//! ```
//!
//! that is `function+0xoffset (object)` and, where debug information exists,
//! `file:line`. This module does that, under the allocator's rules: it runs
//! inside the process whose heap it is reporting on, possibly in an `atexit`
//! handler while other threads still run, so it never allocates from the heap
//! (no `Vec`, `String`, `std::fs`, `std::process`, `std::env`) and it must not
//! crash on whatever the address space holds.
//!
//! # Memory
//!
//! Everything a [`Symbolizer`] keeps (the sorted address records, the object
//! table, every string a [`Frame`] hands out) lives in a bump arena of
//! anonymous mappings from `map_owned`, chained through a small header at the
//! start of each chunk and unmapped together on drop. Work space that is only
//! needed while one object is processed (the sorted symbol index, the text
//! sent to and read from addr2line) lives in temporary mappings unmapped as
//! soon as that object is done. The mappings are registered as magpie's own,
//! so a collection that runs meanwhile does not take symbol values or file
//! offsets for heap pointers.
//!
//! # Which object, and where in it
//!
//! Addresses are return addresses: the call that made the frame is the
//! instruction just before, and a call can be the last instruction of a
//! function (a call to a `noreturn` function), so the return address may
//! already belong to the next function or lie past the end of the segment.
//! Every lookup therefore uses `addr - 1`, the "key"; the report shows `addr`
//! and the offset `addr - symbol start`, as other tools do.
//!
//! One pass of `dl_iterate_phdr` over the loaded objects finds, for each key,
//! the object whose `PT_LOAD` segment `[dlpi_addr + p_vaddr, +p_memsz)`
//! contains it. `dlpi_addr` is the load bias: the difference between run-time
//! addresses and the virtual addresses written in the file (symbol values,
//! DWARF addresses). It is the base address for a PIE or shared object, whose
//! first segment has `p_vaddr` 0, and 0 for a non-PIE executable, whose first
//! segment sits at its link address (0x400000). `dladdr`'s `dli_fbase` is the
//! address of the first mapping instead, which is the bias only when the first
//! `p_vaddr` is 0, hence `dl_iterate_phdr`. The file-relative address is
//! `key - bias` in both cases. The callback also copies the object's
//! build-id note from memory, to check below that the file on disk is still
//! the one that was loaded.
//!
//! The main program's `dlpi_name` is empty: its path, as reported, comes
//! from `readlink("/proc/self/exe")`. The file itself is read through
//! `/proc/self/exe`, which names the running inode even when the file has
//! been deleted or replaced (a rebuild while the program ran); addr2line is
//! given the path if it still names that inode, else `/proc/<pid>/exe`.
//!
//! # Function and offset: the symbol table
//!
//! Each object file is mapped read-only (never read into memory: a debug
//! build can be hundreds of megabytes) and its section headers walked for
//! `.symtab` (with its `.strtab`), or `.dynsym` (with `.dynstr`) when the file
//! is stripped. The defined `STT_FUNC` and `STT_GNU_IFUNC` symbols are copied
//! into a temporary array sorted by value; a key finds its symbol by binary
//! search: the nearest preceding sized symbol that contains it (walking back a
//! little, for nested symbols), else a zero-sized symbol at the nearest
//! preceding value when the key lies in that symbol's executable section
//! (hand-written assembly often has no `.size`). Among aliases at one address
//! the index prefers the name with the fewest leading underscores, then global
//! over weak over local bindings, so `getpid` wins over `__getpid`.
//!
//! # Names and lines: addr2line and c++filt
//!
//! Reading DWARF line tables is left to binutils' `addr2line`
//! (`/usr/bin/addr2line`, else the first one in `PATH`). It runs once per
//! object with all of that object's file-relative keys as
//! `addr2line -a -f -C -i -e OBJECT`, fed on standard input, and only for an
//! object that can tell more than its symbol table: one with DWARF, a
//! `.gnu_debuglink` or a separate debug file under
//! `/usr/lib/debug/.build-id`. With `-a` every answer starts with the address
//! it answers, which keeps the two streams in step; with `-i` it lists the
//! frames inlined at the address, innermost first, each as a function line
//! and a `file:line` line ("??" and "??:0" when unknown). The frame reports
//! the outermost one, the real function that owns the symbol and the offset,
//! with its line (the call site in the code the user wrote rather than a line
//! of some inlined library helper); the inner ones are kept for
//! [`Symbolizer::inlined`].
//!
//! The name shown is the symbol's, so that name and offset agree: as is when
//! it is not mangled (C; it is also the public name where DWARF has an
//! internal alias, glibc's `getpid` rather than `__GI_getpid`); demangled
//! here when it is a legacy Rust name (`_ZN…17h<hash>E`, without the hash);
//! otherwise (C++, Rust v0) demangled by one run of binutils' `c++filt` for
//! all such names of all objects, Rust hashes and crate disambiguators
//! (`core[c1f1a4ba060b9bfa]::`) removed. addr2line's demangled name stands in
//! when c++filt is missing, and names an address that no symbol covers. The
//! names in DWARF are no substitute for the symbol's: Rust's default
//! `line-tables-only` debug information records bare names (`push`, not
//! `alloc::vec::Vec<T>::push`). Without the tools (not installed, failing,
//! timed out) the report still has symbol names and offsets, with C++ and
//! Rust v0 names left mangled.
//!
//! # Running the tools without allocating
//!
//! The tools are started without allocating and without running anybody's
//! fork handlers: `clone(CLONE_VM | CLONE_VFORK)` on a small stack of its
//! own, the way `posix_spawn` does it, with argv and envp in stack arrays. A
//! `fork` would run the `pthread_atfork` handlers, which take magpie's locks
//! (a deadlock if the caller holds one), and would copy the page tables of a
//! large process. All signals are blocked in the parent around the `clone`,
//! so that no handler runs in the child while it shares the parent's memory;
//! the child resets caught signals to their defaults, unblocks signals, wires
//! a socket to its standard input and output and `/dev/null` to its standard
//! error, and `execve`s. Its environment holds only `PATH`: no `LD_PRELOAD`,
//! so the tool runs on glibc's malloc and not on a second copy of magpie, and
//! no `DEBUGINFOD_URLS`, so it never goes to the network.
//!
//! The parent talks to the child over one `AF_UNIX` stream socket, with
//! `poll`: it sends the input and reads the answers as they come, so neither
//! side can fill a buffer the other is not draining (a long address list
//! does not fit in a socket buffer, nor do its answers), sends with
//! `MSG_NOSIGNAL` so that a child that dies early cannot kill the process
//! with `SIGPIPE`, and gives up after [`TOOL_TIMEOUT_NS`], killing the child.
//! Output beyond a generous buffer is read and dropped.
//!
//! # Odd input
//!
//! An address in no loaded object (a JIT buffer, an anonymous mapping, 0x1000)
//! has no object and no function. A shared object whose file cannot be
//! opened (deleted, the vDSO, permissions), is not a regular file, is not
//! 64-bit little-endian ELF, or whose build-id differs from the loaded
//! image's gets no function. Every read from a file goes through bounds checks; nothing in
//! here panics on any input.
//!
//! Limitation: the file is mapped, not read, so an object truncated in place
//! while we read it (not replaced by rename, as installers and linkers do)
//! raises `SIGBUS`.

use core::ffi::{c_char, c_int, c_void, CStr};
use core::fmt::{self, Write};
use core::{mem, ptr, slice};

use crate::sys::fatal::StackBuf;
use crate::sys::os::{map_owned, map_rw, now_ns, unmap_owned};

const PAGE: usize = 4096;

/// How long one addr2line run may take before it is killed.
const TOOL_TIMEOUT_NS: u64 = 10_000_000_000;

/// Minimum size of an arena chunk.
const CHUNK: usize = 256 << 10;

/// Stack of the child between `clone` and `execve`.
const CHILD_STACK: usize = 64 << 10;

/// `Rec::obj` of an address in no loaded object.
const NO_OBJ: u32 = u32::MAX;

// ELF constants (elf.h).
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_R: u32 = 4;
const SHT_SYMTAB: u32 = 2;
const SHT_NOTE: u32 = 7;
const SHT_NOBITS: u32 = 8;
const SHT_DYNSYM: u32 = 11;
const SHF_EXECINSTR: u64 = 4;
const SHN_LORESERVE: u16 = 0xff00;
const SHN_XINDEX: u16 = 0xffff;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;
const STB_GLOBAL: u8 = 1;
const STB_WEAK: u8 = 2;
const NT_GNU_BUILD_ID: u32 = 3;

fn round_up(n: usize, to: usize) -> Option<usize> {
    Some(n.checked_add(to - 1)? & !(to - 1))
}

/// Types for which every bit pattern, in particular all zeros, is a valid
/// value, so they can be read from untrusted bytes and live in zeroed memory.
///
/// # Safety
/// Implementors must have no invalid bit patterns (no references, enums,
/// `bool` that is read from foreign bytes, ...). Types that are only ever
/// zero-initialized may hold raw pointers and `bool`s, for which zero is
/// valid.
unsafe trait Pod: Copy {}
// SAFETY: plain integers and arrays of them.
unsafe impl Pod for libc::Elf64_Ehdr {}
// SAFETY: plain integers.
unsafe impl Pod for libc::Elf64_Shdr {}
// SAFETY: plain integers.
unsafe impl Pod for libc::Elf64_Phdr {}
// SAFETY: plain integers.
unsafe impl Pod for libc::Elf64_Sym {}
// SAFETY: a plain integer.
unsafe impl Pod for u32 {}

/// Reads a `T` at byte offset `off` of `d`, if it fits.
fn rd<T: Pod>(d: &[u8], off: usize) -> Option<T> {
    let end = off.checked_add(mem::size_of::<T>())?;
    if end > d.len() {
        return None;
    }
    // SAFETY: [off, end) lies inside `d`; read_unaligned has no alignment
    // requirement; any bit pattern is a valid T (Pod).
    Some(unsafe { ptr::read_unaligned(d.as_ptr().add(off).cast::<T>()) })
}

/// The NUL-terminated string at `off` of a string table (empty if out of range).
fn cstr_at(tab: &[u8], off: usize) -> &[u8] {
    let Some(rest) = tab.get(off..) else {
        return b"";
    };
    match rest.iter().position(|&c| c == 0) {
        Some(n) => &rest[..n],
        None => rest,
    }
}

/// The longest prefix of `b` that is valid UTF-8.
fn utf8_prefix(b: &[u8]) -> &str {
    match core::str::from_utf8(b) {
        Ok(s) => s,
        // The prefix up to valid_up_to is valid by definition.
        Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
    }
}

// ---------------------------------------------------------------------------
// Memory: the arena and temporary mappings.

#[repr(C)]
struct ChunkHdr {
    next: *mut ChunkHdr,
    len: usize,
}

/// A bump allocator over chained `map_owned` chunks; memory is zeroed (fresh
/// anonymous pages, never reused) and lives, unmoved, until the arena drops.
struct Arena {
    chunks: *mut ChunkHdr,
    cur: usize,
    end: usize,
}

impl Arena {
    const fn new() -> Arena {
        Arena {
            chunks: ptr::null_mut(),
            cur: 0,
            end: 0,
        }
    }

    /// `size` zeroed bytes aligned to `align` (a power of two up to a page),
    /// or null when the kernel refuses memory.
    fn alloc(&mut self, size: usize, align: usize) -> *mut u8 {
        if self.cur != 0 {
            // cur and end are addresses of one mapping, far below usize::MAX.
            let start = (self.cur + align - 1) & !(align - 1);
            if let Some(e) = start.checked_add(size) {
                if e <= self.end {
                    self.cur = e;
                    return start as *mut u8;
                }
            }
        }
        let hdr = mem::size_of::<ChunkHdr>();
        let Some(len) = size
            .checked_add(hdr + align)
            .and_then(|n| round_up(n.max(CHUNK), PAGE))
        else {
            return ptr::null_mut();
        };
        let p = map_owned(len);
        if p.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: p is a fresh, page-aligned, writable mapping of len > hdr bytes.
        unsafe {
            p.cast::<ChunkHdr>().write(ChunkHdr {
                next: self.chunks,
                len,
            })
        };
        self.chunks = p.cast();
        let start = (p as usize + hdr + align - 1) & !(align - 1);
        self.cur = start + size;
        self.end = p as usize + len;
        start as *mut u8
    }

    /// `n` zeroed `T`s.
    fn alloc_array<T: Pod>(&mut self, n: usize) -> Option<*mut T> {
        let size = n.checked_mul(mem::size_of::<T>())?;
        let p = self.alloc(size.max(1), mem::align_of::<T>());
        (!p.is_null()).then_some(p.cast())
    }

    /// Copies `b` (and a terminating NUL, not counted in the length).
    fn copy_bytes(&mut self, b: &[u8]) -> RawStr {
        let p = self.alloc(b.len() + 1, 1);
        if p.is_null() {
            return RawStr::NONE;
        }
        // SAFETY: p has room for b.len() + 1 bytes and is a fresh region
        // that cannot overlap `b`; the last byte is already zero.
        unsafe { ptr::copy_nonoverlapping(b.as_ptr(), p, b.len()) };
        RawStr {
            ptr: p,
            len: b.len(),
        }
    }

    /// Copies the valid UTF-8 prefix of `b`.
    fn copy_str(&mut self, b: &[u8]) -> RawStr {
        self.copy_bytes(utf8_prefix(b).as_bytes())
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let mut c = self.chunks;
        while !c.is_null() {
            // SAFETY: c is a chunk this arena mapped, whose header it wrote;
            // nothing refers into it once the arena (and its Symbolizer) is gone.
            unsafe {
                let ChunkHdr { next, len } = c.read();
                unmap_owned(c.cast(), len);
                c = next;
            }
        }
    }
}

/// Working memory for the processing of one object, unmapped on drop.
struct TempMap {
    p: *mut u8,
    len: usize,
}

impl TempMap {
    fn new(len: usize) -> Option<TempMap> {
        let len = round_up(len.max(1), PAGE)?;
        let p = map_owned(len);
        (!p.is_null()).then_some(TempMap { p, len })
    }

    /// The mapping as `n` zeroed `T`s (`n * size_of::<T>() <= len`).
    fn array<T: Pod>(&mut self, n: usize) -> &mut [T] {
        let n = n.min(self.len / mem::size_of::<T>().max(1));
        // SAFETY: the mapping is page-aligned, holds at least n Ts, starts
        // zeroed (a valid T, Pod) and is borrowed mutably through self.
        unsafe { slice::from_raw_parts_mut(self.p.cast::<T>(), n) }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the whole mapping is ours and readable/writable.
        unsafe { slice::from_raw_parts_mut(self.p, self.len) }
    }
}

impl Drop for TempMap {
    fn drop(&mut self) {
        // SAFETY: a whole map_owned mapping, no longer referenced.
        unsafe { unmap_owned(self.p, self.len) };
    }
}

/// Bytes in the arena (followed by a NUL); `ptr` null means "none".
#[derive(Clone, Copy)]
struct RawStr {
    ptr: *const u8,
    len: usize,
}

impl RawStr {
    const NONE: RawStr = RawStr {
        ptr: ptr::null(),
        len: 0,
    };

    fn is_none(self) -> bool {
        self.ptr.is_null()
    }

    /// # Safety
    /// The bytes must live (in the arena) for `'a`.
    unsafe fn bytes<'a>(self) -> Option<&'a [u8]> {
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: the caller guarantees the arena outlives 'a; ptr/len came
        // from copy_bytes.
        Some(unsafe { slice::from_raw_parts(self.ptr, self.len) })
    }

    /// The bytes with their NUL, for passing to the kernel.
    ///
    /// # Safety
    /// As for [`RawStr::bytes`].
    unsafe fn cstr<'a>(self) -> Option<&'a CStr> {
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: copy_bytes wrote len bytes and a NUL; the caller guarantees
        // they live for 'a.
        let b = unsafe { slice::from_raw_parts(self.ptr, self.len + 1) };
        CStr::from_bytes_until_nul(b).ok()
    }

    /// # Safety
    /// As for [`RawStr::bytes`].
    unsafe fn str<'a>(self) -> Option<&'a str> {
        // SAFETY: the caller's contract.
        let b = unsafe { self.bytes() }?;
        Some(utf8_prefix(b))
    }
}

// ---------------------------------------------------------------------------
// Records.

/// What is known about one address.
#[derive(Clone, Copy)]
struct Rec {
    addr: usize,
    obj: u32,
    /// The symbol table gave the symbol (so `sym_start` is valid).
    has_sym: bool,
    /// The symbol table name still needs demangling (C++, Rust v0).
    mangled: bool,
    /// Run-time address of the symbol start.
    sym_start: usize,
    /// The symbol table name: as is (C), demangled here (legacy Rust) or
    /// mangled (`mangled`).
    sym_name: RawStr,
    /// c++filt's demangling of a mangled `sym_name`.
    filt_name: RawStr,
    /// addr2line's name for the outermost frame at the address.
    tool_name: RawStr,
    /// The name shown: see [`Rec::choose_function`].
    function: RawStr,
    file_line: RawStr,
    /// Inlined frames at the address, innermost first.
    inl: *const Pair,
    inl_len: usize,
}
// SAFETY: only ever zero-initialized (null pointers, false, 0 are valid).
unsafe impl Pod for Rec {}

impl Rec {
    /// The address looked up: the call instruction before the return address.
    fn key(&self) -> usize {
        self.addr.saturating_sub(1)
    }

    /// The symbol's name, demangled (here or by c++filt) if need be; for a
    /// mangled name c++filt could not demangle, addr2line's name (from
    /// DWARF) if it has one; without a symbol, addr2line's name.
    fn choose_function(&mut self) {
        self.function = if !self.has_sym {
            self.tool_name
        } else if !self.mangled {
            self.sym_name
        } else if !self.filt_name.is_none() {
            self.filt_name
        } else if !self.tool_name.is_none() {
            self.tool_name
        } else {
            self.sym_name
        };
    }
}

#[derive(Clone, Copy)]
struct Pair {
    function: RawStr,
    file_line: RawStr,
}
// SAFETY: only ever zero-initialized (null pointers are RawStr::NONE).
unsafe impl Pod for Pair {}

/// A loaded object that holds at least one of the addresses.
#[derive(Clone, Copy)]
struct Object {
    /// Path (NUL-terminated); for the main program, the /proc/self/exe target.
    path: RawStr,
    bias: usize,
    build_id: [u8; 64],
    build_id_len: usize,
    is_main: bool,
}
// SAFETY: only ever zero-initialized.
unsafe impl Pod for Object {}

impl Object {
    fn build_id(&self) -> &[u8] {
        &self.build_id[..self.build_id_len.min(64)]
    }
}

// ---------------------------------------------------------------------------
// Public interface.

/// One symbolized frame, valid until the Symbolizer is dropped (strings live in its arena).
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub addr: usize,
    /// Demangled when possible.
    pub function: Option<&'a str>,
    /// `addr` - symbol start (0 when function is None, or when only debug
    /// information, and no symbol, knows the function).
    pub offset: usize,
    /// Path of the ELF object (main program: its real path from /proc/self/exe).
    pub object: Option<&'a str>,
    /// `"src/foo.c:42"` when debug info exists (the path as the compiler recorded it).
    pub file_line: Option<&'a str>,
}

/// The symbolized form of a set of addresses; owns its arena, unmapped on drop.
pub struct Symbolizer {
    arena: Arena,
    recs: *const Rec,
    nrecs: usize,
    objs: *const Object,
    nobjs: usize,
}

// SAFETY: the Symbolizer exclusively owns its arena, which no other object
// refers to, and it is never written after construction.
unsafe impl Send for Symbolizer {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Symbolizer {}

/// An object given by hand instead of found in the process (tests: an
/// object as if loaded at a chosen bias).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy)]
struct FixedObject<'a> {
    path: &'a CStr,
    bias: usize,
    lo: usize,
    hi: usize,
}

impl Symbolizer {
    /// Symbolizes all `addrs` at once (batching external lookups per object).
    /// `addrs` are return addresses: look up addr-1 for function/line (the call instruction),
    /// but report `addr` and offset computed from `addr`.
    pub fn new(addrs: &[usize]) -> Symbolizer {
        Self::build(addrs, None, true)
    }

    /// A frame for `addr`, which must have been in `addrs`; any other
    /// address gets a frame with nothing known.
    pub fn frame(&self, addr: usize) -> Frame<'_> {
        let mut f = Frame {
            addr,
            function: None,
            offset: 0,
            object: None,
            file_line: None,
        };
        let Some(r) = self.rec(addr) else {
            return f;
        };
        // SAFETY: the strings live in self.arena, which outlives the borrow of self.
        unsafe {
            f.function = r.function.str();
            f.file_line = r.file_line.str();
            f.object = self.object(r.obj).and_then(|o| o.path.str());
        }
        if f.function.is_some() && r.has_sym {
            f.offset = addr.wrapping_sub(r.sym_start);
        }
        f
    }

    /// Writes "function+0xoff (object)" and, if known, " file:line" to `w`.
    /// An unknown function is written as the address, an unknown object as `?`.
    pub fn write_frame(&self, addr: usize, w: &mut dyn Write) -> fmt::Result {
        let f = self.frame(addr);
        let has_sym = self.rec(addr).is_some_and(|r| r.has_sym);
        match f.function {
            Some(name) if has_sym => write!(w, "{name}+{:#x}", f.offset)?,
            Some(name) => w.write_str(name)?,
            None => write!(w, "{addr:#x}")?,
        }
        write!(w, " ({})", f.object.unwrap_or("?"))?;
        if let Some(fl) = f.file_line {
            write!(w, " {fl}")?;
        }
        Ok(())
    }

    /// The frames inlined at `addr` (function, file:line), innermost first,
    /// ending with the one inlined into [`Frame::function`]. Empty without
    /// debug information or when nothing is inlined there.
    pub fn inlined(&self, addr: usize) -> impl Iterator<Item = (Option<&str>, Option<&str>)> + '_ {
        let pairs: &[Pair] = match self.rec(addr) {
            // SAFETY: inl/inl_len describe an array in self.arena.
            Some(r) if !r.inl.is_null() => unsafe { slice::from_raw_parts(r.inl, r.inl_len) },
            _ => &[],
        };
        pairs.iter().map(|p| {
            // SAFETY: the strings live in self.arena, which outlives the borrow of self.
            unsafe { (p.function.str(), p.file_line.str()) }
        })
    }

    fn recs(&self) -> &[Rec] {
        if self.recs.is_null() {
            return &[];
        }
        // SAFETY: recs/nrecs describe initialized records in self.arena.
        unsafe { slice::from_raw_parts(self.recs, self.nrecs) }
    }

    fn rec(&self, addr: usize) -> Option<&Rec> {
        let recs = self.recs();
        recs.binary_search_by_key(&addr, |r| r.addr)
            .ok()
            .map(|i| &recs[i])
    }

    fn object(&self, i: u32) -> Option<&Object> {
        if self.objs.is_null() || i as usize >= self.nobjs {
            return None;
        }
        // SAFETY: i < nobjs, all initialized, in self.arena.
        Some(unsafe { &*self.objs.add(i as usize) })
    }

    /// Symbolizes `addrs` in the objects of this process, or of `fixed`;
    /// with addr2line if `use_tool`.
    fn build(addrs: &[usize], fixed: Option<&[FixedObject<'_>]>, use_tool: bool) -> Symbolizer {
        let mut s = Symbolizer {
            arena: Arena::new(),
            recs: ptr::null(),
            nrecs: 0,
            objs: ptr::null(),
            nobjs: 0,
        };
        if addrs.is_empty() {
            return s;
        }
        let Some(rp) = s.arena.alloc_array::<Rec>(addrs.len()) else {
            return s;
        };
        // SAFETY: rp is addrs.len() zeroed Recs in the arena, which lives,
        // unmoved, as long as `s`; this is the only reference to them until
        // build returns.
        let all = unsafe { slice::from_raw_parts_mut(rp, addrs.len()) };
        for (r, &a) in all.iter_mut().zip(addrs) {
            r.addr = a;
            r.obj = NO_OBJ;
        }
        all.sort_unstable_by_key(|r| r.addr);
        let mut n = 0;
        for i in 0..all.len() {
            if n == 0 || all[n - 1].addr != all[i].addr {
                all[n] = all[i];
                n += 1;
            }
        }
        let recs = &mut all[..n];
        s.recs = rp;
        s.nrecs = n;

        let Some(op) = s.arena.alloc_array::<Object>(n) else {
            return s;
        };
        // SAFETY: as for the records: n zeroed Objects in the arena.
        let objs = unsafe { slice::from_raw_parts_mut(op, n) };
        let nobjs = match fixed {
            None => discover(recs, objs, &mut s.arena),
            Some(list) => fixed_objects(list, recs, objs, &mut s.arena),
        };
        s.objs = op;
        s.nobjs = nobjs;

        let mut tool_buf = [0u8; 512];
        let tool = if use_tool {
            find_tool(&mut tool_buf, b"addr2line")
        } else {
            None
        };
        for (i, obj) in objs[..nobjs].iter().enumerate() {
            symbolize_object(&mut s.arena, obj, i as u32, recs, tool);
        }
        if use_tool && recs.iter().any(|r| r.mangled) {
            let mut filt_buf = [0u8; 512];
            if let Some(filt) = find_tool(&mut filt_buf, b"c++filt") {
                run_cxxfilt(&mut s.arena, filt, recs);
            }
        }
        for r in recs.iter_mut() {
            r.choose_function();
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Objects: which loaded object holds each address.

/// Marks the records whose key lies in `[lo, hi)` and has no object yet as
/// belonging to object `idx`; returns how many. `recs` is sorted by address.
fn claim(recs: &mut [Rec], lo: usize, hi: usize, idx: u32) -> usize {
    if hi <= lo {
        return 0;
    }
    let first = recs.partition_point(|r| r.key() < lo);
    let mut claimed = 0;
    for r in recs[first..].iter_mut() {
        if r.key() >= hi {
            break;
        }
        if r.obj == NO_OBJ {
            r.obj = idx;
            claimed += 1;
        }
    }
    claimed
}

/// The run-time range of a `PT_LOAD` segment loaded with bias `bias`.
fn load_range(bias: usize, ph: &libc::Elf64_Phdr) -> (usize, usize) {
    let lo = bias.wrapping_add(ph.p_vaddr as usize);
    (lo, lo.saturating_add(ph.p_memsz as usize))
}

/// The address in the file's own terms (symbol values, DWARF) of a run-time
/// address of an object loaded with bias `bias`: for a PIE or shared object
/// the offset from its base; for a non-PIE executable (bias 0) the address itself.
fn file_relative(addr: usize, bias: usize) -> usize {
    addr.wrapping_sub(bias)
}

struct Discover<'a> {
    recs: &'a mut [Rec],
    objs: &'a mut [Object],
    nobjs: usize,
    unclaimed: usize,
    arena: &'a mut Arena,
    first: bool,
}

/// Finds the loaded object of every record; returns how many objects hold one.
fn discover(recs: &mut [Rec], objs: &mut [Object], arena: &mut Arena) -> usize {
    let unclaimed = recs.len();
    let mut d = Discover {
        recs,
        objs,
        nobjs: 0,
        unclaimed,
        arena,
        first: true,
    };
    // SAFETY: the callback receives `d` back as its data pointer, used only
    // during this call; dl_iterate_phdr does not allocate.
    unsafe { libc::dl_iterate_phdr(Some(discover_cb), (&mut d as *mut Discover).cast()) };
    d.nobjs
}

unsafe extern "C" fn discover_cb(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: data is the &mut Discover passed by discover(), alive and not
    // otherwise used during the iteration.
    let d = unsafe { &mut *data.cast::<Discover>() };
    let is_first = mem::replace(&mut d.first, false);
    if info.is_null() || d.nobjs >= d.objs.len() {
        return 1;
    }
    // SAFETY: the loader passes a valid dl_phdr_info for the callback's duration.
    let info = unsafe { &*info };
    let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
        &[]
    } else {
        // SAFETY: dlpi_phdr points to dlpi_phnum program headers of a loaded object.
        unsafe { slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
    };
    let bias = info.dlpi_addr as usize;
    let idx = d.nobjs as u32;
    let mut claimed = 0;
    for ph in phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
        let (lo, hi) = load_range(bias, ph);
        claimed += claim(d.recs, lo, hi, idx);
    }
    if claimed == 0 {
        return 0;
    }
    d.unclaimed = d.unclaimed.saturating_sub(claimed);

    let obj = &mut d.objs[d.nobjs];
    d.nobjs += 1;
    obj.bias = bias;
    obj.is_main = is_first;
    let name: &[u8] = if info.dlpi_name.is_null() {
        b""
    } else {
        // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes()
    };
    if name.is_empty() && is_first {
        let mut buf = [0u8; 4096];
        if let Some(n) = readlink(c"/proc/self/exe", &mut buf) {
            obj.path = d.arena.copy_bytes(&buf[..n]);
        }
    } else if !name.is_empty() {
        obj.path = d.arena.copy_bytes(name);
    }

    // The build-id note, read from memory if it lies in a readable loaded segment.
    for ph in phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
        let lo = bias.wrapping_add(ph.p_vaddr as usize);
        let Some(hi) = lo.checked_add(ph.p_filesz as usize) else {
            continue;
        };
        let mapped = phdrs.iter().any(|l| {
            l.p_type == PT_LOAD
                && l.p_flags & PF_R != 0
                && lo >= bias.wrapping_add(l.p_vaddr as usize)
                && hi
                    <= bias
                        .wrapping_add(l.p_vaddr as usize)
                        .saturating_add(l.p_filesz as usize)
        });
        if !mapped || hi == lo {
            continue;
        }
        // SAFETY: [lo, hi) lies inside a readable, file-backed segment of an
        // object that stays loaded while the loader runs this callback.
        let notes = unsafe { slice::from_raw_parts(lo as *const u8, hi - lo) };
        if let Some(id) = find_build_id(notes, ph.p_align as usize) {
            let n = id.len().min(obj.build_id.len());
            obj.build_id[..n].copy_from_slice(&id[..n]);
            obj.build_id_len = n;
            break;
        }
    }
    if d.unclaimed == 0 {
        1
    } else {
        0
    }
}

fn fixed_objects(
    list: &[FixedObject<'_>],
    recs: &mut [Rec],
    objs: &mut [Object],
    arena: &mut Arena,
) -> usize {
    let mut n = 0;
    for f in list {
        if n == objs.len() {
            break;
        }
        if claim(recs, f.lo, f.hi, n as u32) > 0 {
            objs[n].path = arena.copy_bytes(f.path.to_bytes());
            objs[n].bias = f.bias;
            n += 1;
        }
    }
    n
}

/// `readlink(2)` into `buf`; the length of the target.
fn readlink(path: &CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: path is NUL-terminated; buf is writable for its length.
    let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n > 0).then_some(n as usize)
}

/// The descriptor of the first GNU build-id note in a run of notes.
fn find_build_id(notes: &[u8], align: usize) -> Option<&[u8]> {
    let align = if align == 8 { 8 } else { 4 };
    let mut off = 0usize;
    loop {
        let namesz = rd::<u32>(notes, off)? as usize;
        let descsz = rd::<u32>(notes, off + 4)? as usize;
        let ty = rd::<u32>(notes, off + 8)?;
        let name_off = off + 12;
        let desc_off = name_off.checked_add(round_up(namesz, align)?)?;
        let next = desc_off.checked_add(round_up(descsz, align)?)?;
        let desc_end = desc_off.checked_add(descsz)?;
        if desc_end > notes.len() {
            return None;
        }
        if ty == NT_GNU_BUILD_ID && notes.get(name_off..name_off + namesz) == Some(b"GNU\0") {
            return notes.get(desc_off..desc_end);
        }
        if next <= off {
            return None;
        }
        off = next;
    }
}

// ---------------------------------------------------------------------------
// ELF files.

/// A file mapped read-only, unmapped on drop.
struct Mapped {
    p: *const u8,
    len: usize,
}

impl Mapped {
    /// Maps the regular file at `path`; None if it cannot be opened or mapped.
    fn open(path: &CStr) -> Option<Mapped> {
        // SAFETY: path is NUL-terminated; st is a valid out-pointer; the fd
        // is closed on every path; the mapping is private and read-only.
        unsafe {
            // O_NONBLOCK: a FIFO at that path must not block us.
            let fd = libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK,
            );
            if fd < 0 {
                return None;
            }
            let mut st: libc::stat = mem::zeroed();
            let ok = libc::fstat(fd, &mut st) == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFREG
                && st.st_size >= mem::size_of::<libc::Elf64_Ehdr>() as i64;
            if !ok {
                libc::close(fd);
                return None;
            }
            let len = st.st_size as usize;
            let p = libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                fd,
                0,
            );
            libc::close(fd);
            if p == libc::MAP_FAILED {
                return None;
            }
            Some(Mapped { p: p.cast(), len })
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping covers len readable bytes until drop.
        unsafe { slice::from_raw_parts(self.p, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no borrow of bytes() outlives self.
        unsafe { libc::munmap(self.p as *mut c_void, self.len) };
    }
}

/// A 64-bit little-endian ELF image in memory, every access bounds-checked.
struct Elf<'a> {
    d: &'a [u8],
    eh: libc::Elf64_Ehdr,
    shnum: usize,
}

impl<'a> Elf<'a> {
    fn parse(d: &'a [u8]) -> Option<Elf<'a>> {
        let eh: libc::Elf64_Ehdr = rd(d, 0)?;
        // Magic, 64-bit, little-endian.
        if eh.e_ident[..4] != *b"\x7fELF" || eh.e_ident[4] != 2 || eh.e_ident[5] != 1 {
            return None;
        }
        let mut e = Elf { d, eh, shnum: 0 };
        if eh.e_shoff != 0 && eh.e_shentsize as usize >= mem::size_of::<libc::Elf64_Shdr>() {
            e.shnum = eh.e_shnum as usize;
            if e.shnum == 0 {
                // More than 0xff00 sections: the count is in section 0's size.
                let s0: Option<libc::Elf64_Shdr> = rd(d, eh.e_shoff as usize);
                e.shnum = s0.map_or(0, |s| s.sh_size as usize);
            }
        }
        Some(e)
    }

    fn section(&self, i: usize) -> Option<libc::Elf64_Shdr> {
        if i >= self.shnum {
            return None;
        }
        let off = (self.eh.e_shentsize as usize)
            .checked_mul(i)?
            .checked_add(self.eh.e_shoff as usize)?;
        rd(self.d, off)
    }

    fn sections(&self) -> impl Iterator<Item = libc::Elf64_Shdr> + '_ {
        (0..self.shnum).map_while(|i| self.section(i))
    }

    fn section_bytes(&self, sh: &libc::Elf64_Shdr) -> Option<&'a [u8]> {
        if sh.sh_type == SHT_NOBITS {
            return None;
        }
        let off = sh.sh_offset as usize;
        self.d.get(off..off.checked_add(sh.sh_size as usize)?)
    }

    fn section_name(&self, sh: &libc::Elf64_Shdr) -> &'a [u8] {
        let mut i = self.eh.e_shstrndx as usize;
        if i == SHN_XINDEX as usize {
            i = self.section(0).map_or(0, |s| s.sh_link as usize);
        }
        let tab = self
            .section(i)
            .and_then(|s| self.section_bytes(&s))
            .unwrap_or(b"");
        cstr_at(tab, sh.sh_name as usize)
    }

    fn has_section(&self, name: &[u8]) -> bool {
        self.sections().any(|s| self.section_name(&s) == name)
    }

    fn build_id(&self) -> Option<&'a [u8]> {
        let phsize = mem::size_of::<libc::Elf64_Phdr>();
        if self.eh.e_phoff != 0 && self.eh.e_phentsize as usize >= phsize {
            for i in 0..self.eh.e_phnum as usize {
                let off = (self.eh.e_phoff as usize)
                    .checked_add(i.checked_mul(self.eh.e_phentsize as usize)?)?;
                let ph: libc::Elf64_Phdr = rd(self.d, off)?;
                if ph.p_type != PT_NOTE {
                    continue;
                }
                let o = ph.p_offset as usize;
                let Some(notes) = self.d.get(o..o.saturating_add(ph.p_filesz as usize)) else {
                    continue;
                };
                if let Some(id) = find_build_id(notes, ph.p_align as usize) {
                    return Some(id);
                }
            }
        }
        self.sections()
            .filter(|s| s.sh_type == SHT_NOTE)
            .find_map(|s| find_build_id(self.section_bytes(&s)?, s.sh_addralign as usize))
    }

    /// Whether `a` lies in executable section `shndx`.
    fn in_exec_section(&self, shndx: u16, a: u64) -> bool {
        self.section(shndx as usize).is_some_and(|s| {
            s.sh_flags & SHF_EXECINSTR != 0 && a >= s.sh_addr && a - s.sh_addr < s.sh_size
        })
    }

    /// The symbols and strings of the first section of type `ty` (SHT_SYMTAB,
    /// SHT_DYNSYM), with the entry size.
    fn symbol_table(&self, ty: u32) -> Option<(&'a [u8], &'a [u8], usize)> {
        let sh = self
            .sections()
            .find(|s| s.sh_type == ty && s.sh_size != 0)?;
        let ent = match sh.sh_entsize as usize {
            0 => mem::size_of::<libc::Elf64_Sym>(),
            e if e < mem::size_of::<libc::Elf64_Sym>() => return None,
            e => e,
        };
        let syms = self.section_bytes(&sh)?;
        let strs = self
            .section(sh.sh_link as usize)
            .and_then(|s| self.section_bytes(&s))?;
        Some((syms, strs, ent))
    }

    /// Whether addr2line could find more than the symbol table: DWARF here,
    /// a debug link, or a separate debug file named by build-id.
    fn may_have_debug_info(&self) -> bool {
        if self.has_section(b".debug_line")
            || self.has_section(b".debug_info")
            || self.has_section(b".gnu_debuglink")
            || self.has_section(b".gnu_debugaltlink")
        {
            return true;
        }
        let Some(id) = self.build_id() else {
            return false;
        };
        if id.len() < 2 {
            return false;
        }
        let mut p = StackBuf::<256>::new();
        let _ = write!(p, "/usr/lib/debug/.build-id/{:02x}/", id[0]);
        for b in &id[1..] {
            let _ = write!(p, "{b:02x}");
        }
        let _ = p.write_str(".debug\0");
        match CStr::from_bytes_until_nul(p.as_bytes()) {
            // SAFETY: a NUL-terminated path.
            Ok(c) => unsafe { libc::access(c.as_ptr(), libc::R_OK) == 0 },
            Err(_) => false,
        }
    }
}

/// A function symbol, as kept in the sorted index.
#[derive(Clone, Copy)]
#[repr(C)]
struct Sym {
    value: u64,
    size: u64,
    name: u32,
    shndx: u16,
    /// Preference among aliases (higher is better).
    score: u16,
}
// SAFETY: plain integers.
unsafe impl Pod for Sym {}

/// How much the index prefers a name among aliases: fewer leading
/// underscores first, then global over weak over local.
fn alias_score(info: u8, name: &[u8]) -> u16 {
    let bind = match info >> 4 {
        STB_GLOBAL => 2,
        STB_WEAK => 1,
        _ => 0,
    };
    let us = name.iter().take_while(|&&c| c == b'_').count().min(3) as u16;
    (3 - us) * 4 + bind
}

/// The defined function symbols of one table, sorted by value (then score).
struct SymIndex<'a> {
    map: TempMap,
    n: usize,
    strs: &'a [u8],
}

/// How far back the lookup walks for a sized symbol that contains the key.
const MAX_BACK: usize = 64;

impl<'a> SymIndex<'a> {
    /// The index of `.symtab`, or `.dynsym` when there is none (or it has no functions).
    fn build(elf: &Elf<'a>) -> Option<SymIndex<'a>> {
        Self::build_from(elf, SHT_SYMTAB).or_else(|| Self::build_from(elf, SHT_DYNSYM))
    }

    fn build_from(elf: &Elf<'a>, ty: u32) -> Option<SymIndex<'a>> {
        let (tab, strs, ent) = elf.symbol_table(ty)?;
        let total = tab.len() / ent;
        let wanted = |s: &libc::Elf64_Sym| {
            let t = s.st_info & 0xf;
            (t == STT_FUNC || t == STT_GNU_IFUNC)
                && s.st_shndx != 0
                && s.st_shndx < SHN_LORESERVE
                && s.st_value != 0
        };
        let sym_at = |i: usize| rd::<libc::Elf64_Sym>(tab, i * ent);
        let count = (0..total).filter_map(sym_at).filter(wanted).count();
        if count == 0 {
            return None;
        }
        let mut map = TempMap::new(count.checked_mul(mem::size_of::<Sym>())?)?;
        let out = map.array::<Sym>(count);
        let mut n = 0;
        for s in (0..total).filter_map(sym_at).filter(wanted) {
            if n == out.len() {
                break;
            }
            out[n] = Sym {
                value: s.st_value,
                size: s.st_size,
                name: s.st_name,
                shndx: s.st_shndx,
                score: alias_score(s.st_info, cstr_at(strs, s.st_name as usize)),
            };
            n += 1;
        }
        out[..n].sort_unstable_by(|a, b| a.value.cmp(&b.value).then(a.score.cmp(&b.score)));
        Some(SymIndex { map, n, strs })
    }

    fn syms(&mut self) -> &[Sym] {
        let n = self.n;
        self.map.array::<Sym>(n)
    }

    fn name(&self, s: &Sym) -> &'a [u8] {
        cstr_at(self.strs, s.name as usize)
    }

    /// The function symbol holding file address `a`.
    fn lookup(&mut self, elf: &Elf<'_>, a: u64) -> Option<Sym> {
        let syms = self.syms();
        let i = syms.partition_point(|s| s.value <= a);
        if i == 0 {
            return None;
        }
        // Nearest start first; among aliases at one start, the best score first.
        if let Some(s) = syms[i.saturating_sub(MAX_BACK)..i]
            .iter()
            .rev()
            .find(|s| s.size != 0 && a - s.value < s.size)
        {
            return Some(*s);
        }
        let v = syms[i - 1].value;
        syms[..i]
            .iter()
            .rev()
            .take_while(|s| s.value == v)
            .find(|s| s.size == 0 && elf.in_exec_section(s.shndx, a))
            .copied()
    }
}

fn is_mangled(name: &[u8]) -> bool {
    name.starts_with(b"_Z") || name.starts_with(b"_R") || name.starts_with(b"__Z")
}

// ---------------------------------------------------------------------------
// Symbolizing one object.

/// Fills in the records of object `idx`: symbol, offset, then addr2line's
/// names and lines.
fn symbolize_object(
    arena: &mut Arena,
    obj: &Object,
    idx: u32,
    recs: &mut [Rec],
    tool: Option<&CStr>,
) {
    // SAFETY: the path lives in the arena, which outlives this call.
    let path = unsafe { obj.path.cstr() };
    let path = path.filter(|p| !p.is_empty());
    let mut proc_exe = StackBuf::<48>::new();
    let mut target: Option<&CStr> = None;
    let mut file = None;
    if obj.is_main {
        // /proc/self/exe is the running inode, even when the file has been
        // deleted or replaced since; addr2line gets the path if it still
        // names that inode (for debug files found relative to it), else
        // /proc/<pid>/exe.
        file = Mapped::open(c"/proc/self/exe");
        target = path.filter(|p| same_inode(p, c"/proc/self/exe"));
        if target.is_none() {
            // SAFETY: getpid has no preconditions.
            let _ = write!(proc_exe, "/proc/{}/exe\0", unsafe { libc::getpid() });
            target = CStr::from_bytes_until_nul(proc_exe.as_bytes()).ok();
        }
    } else if let Some(p) = path {
        // A shared object replaced since it was loaded has another build-id.
        file = Mapped::open(p).filter(|m| same_build(obj, m));
        target = Some(p);
    }
    let Some(file) = file else {
        return;
    };
    let Some(elf) = Elf::parse(file.bytes()) else {
        return;
    };

    let want_tool = elf.may_have_debug_info();
    if let Some(mut index) = SymIndex::build(&elf) {
        for r in recs.iter_mut().filter(|r| r.obj == idx) {
            let a = file_relative(r.key(), obj.bias) as u64;
            let Some(s) = index.lookup(&elf, a) else {
                continue;
            };
            r.has_sym = true;
            r.sym_start = obj.bias.wrapping_add(s.value as usize);
            (r.sym_name, r.mangled) = store_symbol_name(arena, index.name(&s));
        }
    }
    // Unmapped before addr2line maps it too.
    drop(file);

    if let (true, Some(tool), Some(target)) = (want_tool, tool, target) {
        run_addr2line(arena, tool, target, obj.bias, idx, recs);
    }
}

/// Whether two paths name the same file (`stat` follows /proc/self/exe to
/// the running inode, deleted or not).
fn same_inode(a: &CStr, b: &CStr) -> bool {
    // SAFETY: NUL-terminated paths; zeroed stat buffers are valid out-pointers.
    unsafe {
        let mut sa: libc::stat = mem::zeroed();
        let mut sb: libc::stat = mem::zeroed();
        libc::stat(a.as_ptr(), &mut sa) == 0
            && libc::stat(b.as_ptr(), &mut sb) == 0
            && sa.st_dev == sb.st_dev
            && sa.st_ino == sb.st_ino
    }
}

/// Whether the mapped file is the image that was loaded (same build-id, when
/// the loaded image has one).
fn same_build(obj: &Object, m: &Mapped) -> bool {
    let want = obj.build_id();
    if want.is_empty() {
        return true;
    }
    // The copy from memory is cut at 64 bytes (build-ids are 16 or 20).
    Elf::parse(m.bytes())
        .and_then(|e| e.build_id())
        .is_some_and(|id| {
            id.get(..want.len()) == Some(want) && (id.len() == want.len() || want.len() == 64)
        })
}

/// Stores a symbol table name, demangling legacy Rust names; the flag says
/// the name stored is still mangled (C++, Rust v0).
fn store_symbol_name(arena: &mut Arena, name: &[u8]) -> (RawStr, bool) {
    if name.is_empty() {
        return (RawStr::NONE, false);
    }
    if name.starts_with(b"_ZN") {
        let p = arena.alloc(name.len(), 1);
        if !p.is_null() {
            // SAFETY: a fresh arena region of name.len() bytes.
            let out = unsafe { slice::from_raw_parts_mut(p, name.len()) };
            if let Some(n) = demangle_rust_legacy(name, out) {
                let s = utf8_prefix(&out[..n]);
                let r = RawStr {
                    ptr: p,
                    len: s.len(),
                };
                return (r, false);
            }
        }
    }
    // A newline would put c++filt's answers out of step.
    let mangled = is_mangled(name) && !name.contains(&b'\n');
    (arena.copy_str(name), mangled)
}

/// Demangles a legacy Rust symbol (`_ZN3std2rt10lang_start17h0123…E`,
/// possibly followed by `.llvm.123`) into `out` without its hash; the output
/// is never longer than the input. None if `sym` is not one.
fn demangle_rust_legacy(sym: &[u8], out: &mut [u8]) -> Option<usize> {
    let body = sym.strip_prefix(b"_ZN")?;
    // Pass 1: validate; find the components and the end.
    let mut i = 0;
    let mut ncomp = 0;
    let mut last: &[u8] = b"";
    loop {
        let c = *body.get(i)?;
        if c == b'E' {
            break;
        }
        if !c.is_ascii_digit() {
            return None;
        }
        let mut len = 0usize;
        while let Some(&c) = body.get(i).filter(|c| c.is_ascii_digit()) {
            len = len.checked_mul(10)?.checked_add((c - b'0') as usize)?;
            i += 1;
        }
        last = body.get(i..i.checked_add(len)?)?;
        i += len;
        ncomp += 1;
    }
    let rest = &body[i + 1..];
    let is_hash =
        last.len() == 17 && last[0] == b'h' && last[1..].iter().all(u8::is_ascii_hexdigit);
    if ncomp < 2 || !is_hash || !(rest.is_empty() || rest[0] == b'.') {
        return None;
    }
    // Pass 2: write every component but the hash.
    let mut w = 0;
    let mut put = |b: &[u8], w: &mut usize| -> Option<()> {
        out.get_mut(*w..*w + b.len())?.copy_from_slice(b);
        *w += b.len();
        Some(())
    };
    let mut i = 0;
    for k in 0..ncomp - 1 {
        let mut len = 0usize;
        while let Some(&c) = body.get(i).filter(|c| c.is_ascii_digit()) {
            len = len * 10 + (c - b'0') as usize;
            i += 1;
        }
        let mut c = body.get(i..i + len)?;
        i += len;
        if k > 0 {
            put(b"::", &mut w)?;
        }
        if c.starts_with(b"_$") {
            c = &c[1..];
        }
        while let Some(&b) = c.first() {
            if b == b'$' {
                let end = c[1..].iter().position(|&x| x == b'$')? + 1;
                let esc = &c[1..end];
                let ch = match esc {
                    b"SP" => '@',
                    b"BP" => '*',
                    b"RF" => '&',
                    b"LT" => '<',
                    b"GT" => '>',
                    b"LP" => '(',
                    b"RP" => ')',
                    b"C" => ',',
                    _ => {
                        let hex = esc.strip_prefix(b"u")?;
                        let v = u32::from_str_radix(core::str::from_utf8(hex).ok()?, 16).ok()?;
                        char::from_u32(v)?
                    }
                };
                let mut enc = [0u8; 4];
                put(ch.encode_utf8(&mut enc).as_bytes(), &mut w)?;
                c = &c[end + 1..];
            } else if c.starts_with(b"..") {
                put(b"::", &mut w)?;
                c = &c[2..];
            } else {
                put(&c[..1], &mut w)?;
                c = &c[1..];
            }
        }
    }
    Some(w)
}

/// Removes a Rust hash suffix `::h` + 16 hex digits.
fn strip_rust_hash(name: &[u8]) -> &[u8] {
    if name.len() > 19 {
        let (head, tail) = name.split_at(name.len() - 19);
        if tail.starts_with(b"::h") && tail[3..].iter().all(u8::is_ascii_hexdigit) {
            return head;
        }
    }
    name
}

// ---------------------------------------------------------------------------
// addr2line.

/// Finds binutils program `name` (addr2line, c++filt): in /usr/bin, else the
/// first in `PATH`; its path is built in `buf`.
fn find_tool<'b>(buf: &'b mut [u8; 512], name: &[u8]) -> Option<&'b CStr> {
    let mut found = 0;
    let dirs = crate::sys::env::get("PATH").unwrap_or(b"");
    for dir in [&b"/usr/bin"[..]]
        .into_iter()
        .chain(dirs.split(|&c| c == b':'))
    {
        if dir.is_empty() || name.contains(&0) {
            continue;
        }
        let n = dir.len() + 1 + name.len();
        if n + 1 > buf.len() {
            continue;
        }
        buf[..dir.len()].copy_from_slice(dir);
        buf[dir.len()] = b'/';
        buf[dir.len() + 1..n].copy_from_slice(name);
        buf[n] = 0;
        // SAFETY: buf[..=n] is NUL-terminated.
        if unsafe { libc::access(buf.as_ptr().cast(), libc::X_OK) } == 0 {
            found = n + 1;
            break;
        }
    }
    if found == 0 {
        return None;
    }
    CStr::from_bytes_until_nul(&buf[..found]).ok()
}

/// Writes `0x<hex>\n` at `out[*w..]`.
fn put_hex_line(out: &mut [u8], w: &mut usize, v: usize) {
    let mut digits = [0u8; 16];
    let mut n = 0;
    let mut x = v;
    loop {
        digits[n] = b"0123456789abcdef"[x & 15];
        n += 1;
        x >>= 4;
        if x == 0 {
            break;
        }
    }
    if *w + n + 3 > out.len() {
        return;
    }
    out[*w] = b'0';
    out[*w + 1] = b'x';
    *w += 2;
    for k in (0..n).rev() {
        out[*w] = digits[k];
        *w += 1;
    }
    out[*w] = b'\n';
    *w += 1;
}

/// Runs addr2line on `target` for the records of object `idx` and stores its answers.
fn run_addr2line(
    arena: &mut Arena,
    tool: &CStr,
    target: &CStr,
    bias: usize,
    idx: u32,
    recs: &mut [Rec],
) {
    let n = recs.iter().filter(|r| r.obj == idx).count();
    if n == 0 {
        return;
    }
    // Input: one "0x<hex>\n" line (at most 19 bytes) per address.
    let Some(in_len) = n.checked_mul(19) else {
        return;
    };
    let Some(mut input) = TempMap::new(in_len) else {
        return;
    };
    let mut w = 0;
    {
        let bytes = input.bytes();
        for r in recs.iter().filter(|r| r.obj == idx) {
            put_hex_line(bytes, &mut w, file_relative(r.key(), bias));
        }
    }
    // Output: generous; pages never written are never backed.
    let Some(out_len) = n.checked_mul(16 << 10).and_then(|v| v.checked_add(1 << 20)) else {
        return;
    };
    let Some(mut output) = TempMap::new(out_len) else {
        return;
    };
    let argv = [
        tool.as_ptr(),
        c"-a".as_ptr(),
        c"-f".as_ptr(),
        c"-C".as_ptr(),
        c"-i".as_ptr(),
        c"-e".as_ptr(),
        target.as_ptr(),
        ptr::null(),
    ];
    let Some(got) = run_tool(tool, &argv, &input.bytes()[..w], output.bytes()) else {
        return;
    };
    let out = &output.bytes()[..got];
    parse_addr2line(arena, out, bias, idx, recs);
}

/// Runs `tool` with `argv` (NULL-terminated) and an environment of only
/// `PATH`, feeding it `input`; returns how much of `out` its output filled.
fn run_tool(tool: &CStr, argv: &[*const c_char], input: &[u8], out: &mut [u8]) -> Option<usize> {
    let envp = [c"PATH=/usr/bin:/bin".as_ptr(), ptr::null()];
    let child = Child::spawn(tool, argv, &envp)?;
    Some(child.converse(input, out, now_ns() + TOOL_TIMEOUT_NS))
}

/// Demangles the mangled symbol names (C++, Rust v0) of all records with one
/// run of c++filt, which answers each input line with one output line.
fn run_cxxfilt(arena: &mut Arena, filt: &CStr, recs: &mut [Rec]) {
    let mut n = 0usize;
    let mut in_len = 0usize;
    for r in recs.iter().filter(|r| r.mangled) {
        n += 1;
        in_len += r.sym_name.len + 1;
    }
    let Some(mut input) = TempMap::new(in_len) else {
        return;
    };
    let mut w = 0;
    {
        let bytes = input.bytes();
        for r in recs.iter().filter(|r| r.mangled) {
            // SAFETY: sym_name lives in the arena, which outlives this call.
            let name = unsafe { r.sym_name.bytes() }.unwrap_or(b"");
            if let Some(dst) = bytes.get_mut(w..w + name.len() + 1) {
                dst[..name.len()].copy_from_slice(name);
                dst[name.len()] = b'\n';
                w += name.len() + 1;
            }
        }
    }
    let Some(out_len) = n.checked_mul(16 << 10).and_then(|v| v.checked_add(1 << 20)) else {
        return;
    };
    let Some(mut output) = TempMap::new(out_len) else {
        return;
    };
    let argv = [filt.as_ptr(), ptr::null()];
    let Some(got) = run_tool(filt, &argv, &input.bytes()[..w], output.bytes()) else {
        return;
    };
    let out = &output.bytes()[..got];
    let mut lines = out.split(|&c| c == b'\n');
    for r in recs.iter_mut().filter(|r| r.mangled) {
        let Some(line) = lines.next() else { break };
        // SAFETY: as above.
        let same = unsafe { r.sym_name.bytes() } == Some(line);
        if !line.is_empty() && !same {
            r.filt_name = store_demangled(arena, line);
        }
    }
}

/// Stores a demangled name without Rust's hash suffix and crate
/// disambiguators (`core[c1f1a4ba060b9bfa]::fmt` becomes `core::fmt`).
fn store_demangled(arena: &mut Arena, name: &[u8]) -> RawStr {
    let name = strip_rust_hash(name);
    let p = arena.alloc(name.len() + 1, 1);
    if p.is_null() {
        return RawStr::NONE;
    }
    // SAFETY: a fresh arena region of name.len() + 1 bytes.
    let out = unsafe { slice::from_raw_parts_mut(p, name.len()) };
    let n = strip_disambiguators(name, out);
    let s = utf8_prefix(&out[..n]);
    RawStr {
        ptr: p,
        len: s.len(),
    }
}

/// Copies `name` to `out` (as long) without `[hex]` right after an identifier.
fn strip_disambiguators(name: &[u8], out: &mut [u8]) -> usize {
    let mut w = 0;
    let mut i = 0;
    while i < name.len() {
        let c = name[i];
        if c == b'[' && i > 0 && (name[i - 1].is_ascii_alphanumeric() || name[i - 1] == b'_') {
            let hex = name[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            if hex > 0 && name.get(i + 1 + hex) == Some(&b']') {
                i += hex + 2;
                continue;
            }
        }
        if w < out.len() {
            out[w] = c;
            w += 1;
        }
        i += 1;
    }
    w
}

/// Whether `line` is an address line of `addr2line -a` ("0x" and 16 hex digits).
fn parse_addr_line(line: &[u8]) -> Option<usize> {
    let hex = line.strip_prefix(b"0x")?;
    if hex.len() != 16 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut v = 0usize;
    for &c in hex {
        let d = (c as char).to_digit(16)? as usize;
        v = (v << 4) | d;
    }
    Some(v)
}

/// Parses `addr2line -a -f -C -i` output: per address, its address line then
/// (function, file:line) pairs, innermost first.
fn parse_addr2line(arena: &mut Arena, out: &[u8], bias: usize, idx: u32, recs: &mut [Rec]) {
    let lines = out.iter().filter(|&&c| c == b'\n').count();
    let Some(pairs_p) = arena.alloc_array::<Pair>(lines / 2 + 1) else {
        return;
    };
    // SAFETY: lines/2 + 1 zeroed Pairs in the arena, referenced only here
    // (and, read-only, through records once written).
    let pairs = unsafe { slice::from_raw_parts_mut(pairs_p, lines / 2 + 1) };
    let mut np = 0usize;
    let mut cur: Option<usize> = None;
    let mut cur_first = 0usize;
    let mut pending: Option<&[u8]> = None;
    // Records of this object, in the order their addresses were sent.
    let mut next = 0usize;

    let finish = |cur: Option<usize>, first: usize, np: usize, recs: &mut [Rec], pairs: &[Pair]| {
        let Some(ri) = cur else { return };
        if np <= first {
            return;
        }
        let r = &mut recs[ri];
        let outer = pairs[np - 1];
        r.file_line = outer.file_line;
        r.tool_name = outer.function;
        if np - 1 > first {
            r.inl = pairs[first..].as_ptr();
            r.inl_len = np - 1 - first;
        }
    };

    for line in out.split(|&c| c == b'\n') {
        if let Some(v) = parse_addr_line(line) {
            finish(cur, cur_first, np, recs, pairs);
            pending = None;
            cur_first = np;
            // Expected: the next record of this object; else search for it.
            let key_of = |r: &Rec| file_relative(r.key(), bias);
            cur = None;
            let mut j = next;
            while j < recs.len() {
                if recs[j].obj == idx && key_of(&recs[j]) == v {
                    cur = Some(j);
                    break;
                }
                j += 1;
            }
            if cur.is_none() {
                cur = recs.iter().position(|r| r.obj == idx && key_of(r) == v);
            }
            if let Some(c) = cur {
                next = c + 1;
            }
            continue;
        }
        if cur.is_none() || line.is_empty() {
            continue;
        }
        match pending.take() {
            None => pending = Some(line),
            Some(func) => {
                if np < pairs.len() {
                    pairs[np] = Pair {
                        function: store_tool_function(arena, func),
                        file_line: store_tool_location(arena, line),
                    };
                    np += 1;
                }
            }
        }
    }
    finish(cur, cur_first, np, recs, pairs);
}

fn store_tool_function(arena: &mut Arena, f: &[u8]) -> RawStr {
    if f == b"??" || f.is_empty() {
        return RawStr::NONE;
    }
    arena.copy_str(strip_rust_hash(f))
}

/// `file:line` from addr2line, without " (discriminator N)"; none when the
/// file or the line is unknown ("??:0", "file:?", "file:0": the "file" of
/// those is often only the name of a compilation unit).
fn store_tool_location(arena: &mut Arena, l: &[u8]) -> RawStr {
    let mut l = l;
    if let Some(p) = l.windows(2).position(|w| w == b" (") {
        l = &l[..p];
    }
    if l.starts_with(b"??") || l.is_empty() || l.ends_with(b":0") || l.ends_with(b":?") {
        return RawStr::NONE;
    }
    arena.copy_str(l)
}

// ---------------------------------------------------------------------------
// Running a child process without allocating.

/// What the child needs between `clone` and `execve`, prepared by the parent.
struct ChildArgs {
    /// The socket end that becomes standard input and output.
    fd: c_int,
    /// /dev/null for standard error, or -1 to leave it alone.
    err: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
}

/// Runs in the child, on its own stack, sharing the parent's memory (which it
/// must not modify) until `execve`.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the parent's ChildArgs, alive while the parent is
    // suspended (CLONE_VFORK). Only system-call wrappers run here. The signal
    // handler table is the child's own (no CLONE_SIGHAND), so resetting it
    // leaves the parent's alone; all signals are blocked until then.
    unsafe {
        let a = &*arg.cast::<ChildArgs>();
        for sig in 1..65 {
            let mut old: libc::sigaction = mem::zeroed();
            if libc::sigaction(sig, ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
            {
                let mut dfl: libc::sigaction = mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, ptr::null_mut());
            }
        }
        if libc::dup2(a.fd, 0) < 0 || libc::dup2(a.fd, 1) < 0 {
            libc::_exit(127);
        }
        if a.err >= 0 {
            libc::dup2(a.err, 2);
        }
        let mut none: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
        libc::execve(a.path, a.argv, a.envp);
        libc::_exit(127)
    }
}

/// A running child and our end of its socket.
struct Child {
    pid: libc::pid_t,
    fd: c_int,
}

/// `fd` moved to a descriptor number of at least 3 (so that `dup2` onto
/// 0, 1 and 2 in the child always makes a new, inheritable descriptor).
fn above_stdio(fd: c_int) -> c_int {
    if !(0..=2).contains(&fd) {
        return fd;
    }
    // SAFETY: fcntl/close on a descriptor we own.
    unsafe {
        let n = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
        libc::close(fd);
        n
    }
}

impl Child {
    fn spawn(path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> Option<Child> {
        if argv.last() != Some(&ptr::null()) || envp.last() != Some(&ptr::null()) {
            return None;
        }
        let mut sv = [-1 as c_int; 2];
        // SAFETY: sv is a valid out-array of two descriptors.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        } != 0
        {
            return None;
        }
        let ours = above_stdio(sv[0]);
        let theirs = above_stdio(sv[1]);
        // SAFETY: opening /dev/null.
        let err = above_stdio(unsafe {
            libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC)
        });
        let close_all = || {
            for fd in [ours, theirs, err] {
                if fd >= 0 {
                    // SAFETY: descriptors we opened.
                    unsafe { libc::close(fd) };
                }
            }
        };
        if ours < 0 || theirs < 0 {
            close_all();
            return None;
        }
        let stack = map_rw(CHILD_STACK);
        if stack.is_null() {
            close_all();
            return None;
        }
        let args = ChildArgs {
            fd: theirs,
            err,
            path: path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
        };
        // SAFETY: the sets are valid out-pointers; the child runs child_main
        // on its own stack (top of a fresh mapping, 16-byte aligned) with
        // `args`, which outlives it (CLONE_VFORK suspends us until it has
        // exec'd or exited); signals are blocked so that no handler runs in
        // the child while it shares our memory, and restored afterwards.
        let pid = unsafe {
            let mut all: libc::sigset_t = mem::zeroed();
            let mut old: libc::sigset_t = mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                child_main,
                stack.add(CHILD_STACK).cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&args as *const ChildArgs).cast_mut().cast(),
            );
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
            libc::munmap(stack.cast(), CHILD_STACK);
            libc::close(theirs);
            if err >= 0 {
                libc::close(err);
            }
            pid
        };
        if pid <= 0 {
            // SAFETY: our end of the socket.
            unsafe { libc::close(ours) };
            return None;
        }
        Some(Child { pid, fd: ours })
    }

    /// Sends `input` (then end-of-file), reads the output into `out` (bytes
    /// beyond its size are read and dropped) until end-of-file or `deadline`,
    /// and reaps the child, killed if late. Returns the bytes kept.
    fn converse(self, input: &[u8], out: &mut [u8], deadline: u64) -> usize {
        let fd = self.fd;
        let mut sent = 0;
        let mut got = 0;
        let mut writing = true;
        let mut clean_eof = false;
        // SAFETY: fcntl/shutdown on our own descriptor.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
            if input.is_empty() {
                libc::shutdown(fd, libc::SHUT_WR);
                writing = false;
            }
        }
        loop {
            let now = now_ns();
            if now >= deadline {
                break;
            }
            let ms = ((deadline - now) / 1_000_000).clamp(1, 1000) as c_int;
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN | if writing { libc::POLLOUT } else { 0 },
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                // SAFETY: reading this thread's errno.
                if unsafe { *libc::__errno_location() } == libc::EINTR {
                    continue;
                }
                break;
            }
            if r == 0 {
                continue;
            }
            if writing && pfd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
                let rest = &input[sent..];
                // SAFETY: rest is a live slice; MSG_NOSIGNAL: EPIPE, not SIGPIPE.
                let n = unsafe {
                    libc::send(
                        fd,
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                    )
                };
                if n > 0 {
                    sent += n as usize;
                } else {
                    // SAFETY: reading this thread's errno.
                    let e = unsafe { *libc::__errno_location() };
                    if e != libc::EAGAIN && e != libc::EINTR {
                        sent = input.len();
                    }
                }
                if sent >= input.len() {
                    // SAFETY: our own descriptor.
                    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                    writing = false;
                }
            }
            if pfd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                let mut scratch = [0u8; 4096];
                let dst: &mut [u8] = if got < out.len() {
                    &mut out[got..]
                } else {
                    &mut scratch
                };
                // SAFETY: dst is a live, writable slice.
                let n = unsafe {
                    libc::recv(fd, dst.as_mut_ptr().cast(), dst.len(), libc::MSG_DONTWAIT)
                };
                if n == 0 {
                    clean_eof = true;
                    break;
                }
                if n > 0 {
                    if got < out.len() {
                        got += n as usize;
                    }
                } else {
                    // SAFETY: reading this thread's errno.
                    let e = unsafe { *libc::__errno_location() };
                    if e != libc::EAGAIN && e != libc::EINTR {
                        break;
                    }
                }
            }
        }
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        self.reap(if clean_eof { deadline } else { 0 });
        got
    }

    /// Waits for the child until `deadline`, then kills it and waits.
    fn reap(self, deadline: u64) {
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child; status is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                return;
            }
            // SAFETY: reading this thread's errno.
            if r < 0 && unsafe { *libc::__errno_location() } != libc::EINTR {
                return; // ECHILD: reaped elsewhere (SIGCHLD ignored, a handler).
            }
            if now_ns() >= deadline {
                break;
            }
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            // SAFETY: ts is valid; a short sleep.
            unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
        }
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            while libc::waitpid(self.pid, &mut status, 0) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::string::String;
    use std::time::Instant;

    const MARKER_LINE: u32 = line!() + 2;
    #[inline(never)]
    fn symbolize_marker(x: usize) -> usize {
        core::hint::black_box(x).wrapping_mul(31) ^ 7
    }

    fn line_of(frame: &Frame<'_>) -> Option<u32> {
        frame.file_line?.rsplit(':').next()?.parse().ok()
    }

    fn render(s: &Symbolizer, addr: usize) -> String {
        let mut out = String::new();
        s.write_frame(addr, &mut out).unwrap();
        out
    }

    fn self_exe() -> String {
        std::fs::read_link("/proc/self/exe")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/c")
            .join(name)
    }

    /// The 1-based line of `marker` in fixture `name`.
    fn marker(name: &str, marker: &str) -> u32 {
        let src = std::fs::read_to_string(fixture(name)).unwrap();
        src.lines().position(|l| l.contains(marker)).expect(marker) as u32 + 1
    }

    /// A scratch directory, removed (with what is in it) on drop.
    struct TmpDir(PathBuf);

    impl core::ops::Deref for TmpDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmpdir(tag: &str) -> TmpDir {
        let d = std::env::temp_dir().join(format!("magpie-symbolize-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }

    fn run(cmd: &str, args: &[&str]) {
        let st = Command::new(cmd).args(args).status().expect(cmd);
        assert!(st.success(), "{cmd} {args:?}");
    }

    /// Builds the shared fixture into `dir/name` (with extra cc flags).
    fn build_lib(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
        let out = dir.join(name);
        let src = fixture("symbolize_lib.c");
        let mut args = vec![
            "-g",
            "-O1",
            "-shared",
            "-fPIC",
            "-o",
            out.to_str().unwrap(),
            src.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run("cc", &args);
        out
    }

    fn dlopen(path: &Path) -> *mut c_void {
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path; the fixture's constructors are trivial.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!h.is_null(), "dlopen {path:?}");
        h
    }

    fn dlsym(h: *mut c_void, name: &str) -> usize {
        let c = CString::new(name).unwrap();
        // SAFETY: h is a live handle; c is NUL-terminated.
        let p = unsafe { libc::dlsym(h, c.as_ptr()) };
        assert!(!p.is_null(), "dlsym {name}");
        p as usize
    }

    /// Addresses (+ bias) in up to `n` sized functions of an ELF file,
    /// `per` in each.
    fn function_addrs(path: &str, bias: usize, n: usize, per: usize) -> Vec<usize> {
        let c = CString::new(path).unwrap();
        let m = Mapped::open(&c).unwrap();
        let elf = Elf::parse(m.bytes()).unwrap();
        let mut idx = SymIndex::build(&elf).unwrap();
        let mut funcs: Vec<Sym> = idx.syms().iter().copied().filter(|s| s.size > 8).collect();
        funcs.dedup_by_key(|s| s.value);
        let step = (funcs.len() / n).max(1);
        let mut v = Vec::new();
        for s in funcs.into_iter().step_by(step).take(n) {
            for k in 0..per {
                v.push(bias + s.value as usize + 1 + k * (s.size as usize - 1) / per);
            }
        }
        v.dedup();
        v
    }

    /// The load bias of the object holding `f`, for objects whose first
    /// segment has p_vaddr 0 (PIE, shared objects).
    fn base_of(f: usize) -> (usize, String) {
        // SAFETY: info is a valid out-pointer.
        unsafe {
            let mut info: libc::Dl_info = mem::zeroed();
            assert!(libc::dladdr(f as *const c_void, &mut info) != 0);
            let name = CStr::from_ptr(info.dli_fname).to_str().unwrap().to_owned();
            (info.dli_fbase as usize, name)
        }
    }

    #[test]
    fn rust_function_in_the_test_binary() {
        let addr = symbolize_marker as *const () as usize + 4;
        let s = Symbolizer::new(&[addr]);
        let f = s.frame(addr);
        println!("{}", render(&s, addr));
        assert!(f.function.unwrap().contains("symbolize_marker"), "{f:?}");
        assert!(!f.function.unwrap().contains("::h"), "{f:?}");
        assert_eq!(f.offset, 4);
        assert_eq!(f.object, Some(self_exe().as_str()));
        let fl = f.file_line.expect("debug line tables");
        assert!(fl.contains("symbolize.rs:"), "{fl}");
        let line = line_of(&f).unwrap();
        assert!(
            (MARKER_LINE..MARKER_LINE + 3).contains(&line),
            "{fl}, marker at {MARKER_LINE}"
        );
        assert!(
            render(&s, addr).starts_with("magpie::leak::symbolize::tests::symbolize_marker+0x4 (")
        );
    }

    #[test]
    fn libc_function() {
        let addr = libc::getpid as *const () as usize + 1;
        let s = Symbolizer::new(&[addr]);
        let f = s.frame(addr);
        println!("{}", render(&s, addr));
        let name = f.function.unwrap();
        assert!(name == "getpid" || name == "__getpid", "{f:?}");
        assert_eq!(f.offset, 1);
        assert!(f.object.unwrap().contains("libc.so.6"), "{f:?}");
    }

    #[test]
    fn shared_object_with_inlining() {
        let dir = tmpdir("so");
        let lib = build_lib(&dir, "libsymfix.so", &[]);
        let h = dlopen(&lib);
        let leaf = dlsym(h, "symfix_leaf");
        let outer = dlsym(h, "symfix_outer");
        // SAFETY: the fixture's function: () -> *mut c_void.
        let ra = unsafe { mem::transmute::<usize, extern "C" fn() -> usize>(outer)() };
        assert!(ra > outer && ra < outer + 64);
        let s = Symbolizer::new(&[leaf + 1, ra]);

        let f = s.frame(leaf + 1);
        println!("{}", render(&s, leaf + 1));
        assert_eq!(f.function, Some("symfix_leaf"));
        assert_eq!(f.offset, 1);
        assert_eq!(f.object, lib.to_str());
        let leaf_line = marker("symbolize_lib.c", "@leaf");
        let line = line_of(&f).unwrap();
        assert!(f.file_line.unwrap().contains("symbolize_lib.c:"), "{f:?}");
        assert!(
            (leaf_line..leaf_line + 5).contains(&line),
            "{f:?}, function at {leaf_line}"
        );

        // The return address inside symfix_outer, in code inlined from symfix_inlined.
        let f = s.frame(ra);
        println!("{}", render(&s, ra));
        assert_eq!(f.function, Some("symfix_outer"));
        assert_eq!(f.offset, ra - outer);
        let outer_line = marker("symbolize_lib.c", "@outer-call");
        assert!(
            f.file_line
                .unwrap()
                .ends_with(&format!("symbolize_lib.c:{outer_line}")),
            "{f:?}"
        );
        let inl: Vec<_> = s.inlined(ra).collect();
        let inl_line = marker("symbolize_lib.c", "@inlined-call");
        assert_eq!(inl.len(), 1, "{inl:?}");
        assert_eq!(inl[0].0, Some("symfix_inlined"));
        assert!(inl[0]
            .1
            .unwrap()
            .ends_with(&format!("symbolize_lib.c:{inl_line}")));
        assert_eq!(s.inlined(leaf + 1).count(), 0);
    }

    #[test]
    fn pie_and_non_pie_executables() {
        let dir = tmpdir("prog");
        let src = fixture("symbolize_prog.c");
        let line = marker("symbolize_prog.c", "@work");
        for (name, flags, bias) in [
            ("nopie", &["-fno-pie", "-no-pie"][..], 0usize),
            ("pie", &["-fPIE", "-pie"][..], 0x5555_0000_0000usize),
        ] {
            let exe = dir.join(name);
            let mut args = vec![
                "-g",
                "-O1",
                "-o",
                exe.to_str().unwrap(),
                src.to_str().unwrap(),
            ];
            args.extend_from_slice(flags);
            run("cc", &args);
            let nm = Command::new("nm").arg(&exe).output().unwrap();
            let nm = String::from_utf8(nm.stdout).unwrap();
            let value = nm
                .lines()
                .find(|l| l.ends_with(" symprog_work"))
                .map(|l| usize::from_str_radix(l.split(' ').next().unwrap(), 16).unwrap())
                .unwrap();
            if bias == 0 {
                assert!(value >= 0x400000, "non-PIE link address {value:#x}");
            } else {
                assert!(value < 0x100000, "PIE link address {value:#x}");
            }
            let addr = bias + value + 2;
            let path = CString::new(exe.to_str().unwrap()).unwrap();
            let objs = [FixedObject {
                path: &path,
                bias,
                lo: bias + value - 0x100,
                hi: bias + value + 0x100,
            }];
            for tool in [true, false] {
                let s = Symbolizer::build(&[addr], Some(&objs), tool);
                let f = s.frame(addr);
                println!("{name} {tool}: {}", render(&s, addr));
                assert_eq!(f.function, Some("symprog_work"), "{name}");
                assert_eq!(f.offset, 2);
                assert_eq!(f.object, exe.to_str());
                if tool {
                    assert!(f.file_line.unwrap().contains("symbolize_prog.c:"), "{f:?}");
                    assert!((line..line + 2).contains(&line_of(&f).unwrap()), "{f:?}");
                } else {
                    assert_eq!(f.file_line, None);
                }
            }
        }
    }

    #[test]
    fn bias_arithmetic() {
        let ph = |vaddr: u64, memsz: u64| libc::Elf64_Phdr {
            p_type: PT_LOAD,
            p_flags: 5,
            p_offset: 0,
            p_vaddr: vaddr,
            p_paddr: vaddr,
            p_filesz: memsz,
            p_memsz: memsz,
            p_align: 4096,
        };
        // Non-PIE: loaded at its link address, bias 0.
        assert_eq!(load_range(0, &ph(0x401000, 0x2000)), (0x401000, 0x403000));
        assert_eq!(file_relative(0x401234, 0), 0x401234);
        // PIE / shared object: first segment at 0, bias = base.
        let base = 0x7f00_1234_0000;
        assert_eq!(
            load_range(base, &ph(0x1000, 0x100)),
            (base + 0x1000, base + 0x1100)
        );
        assert_eq!(file_relative(base + 0x1234, base), 0x1234);
        // Prelinked-style object whose first segment is not at 0: the bias
        // is not the address of the first mapping.
        let bias = 0x10_0000;
        assert_eq!(load_range(bias, &ph(0x20_0000, 0x1000)).0, 0x30_0000);
        assert_eq!(file_relative(0x30_0010, bias), 0x20_0010);
    }

    #[test]
    fn addresses_in_no_object() {
        // SAFETY: an anonymous mapping, unmapped below.
        let anon = unsafe {
            libc::mmap(
                ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as usize;
        let addrs = [0x1000, anon + 16, 0, 1, usize::MAX, 0x1000];
        let s = Symbolizer::new(&addrs);
        for a in addrs {
            let f = s.frame(a);
            assert_eq!(
                (f.function, f.object, f.file_line, f.offset),
                (None, None, None, 0),
                "{a:#x}"
            );
        }
        assert_eq!(render(&s, 0x1000), "0x1000 (?)");
        // Not asked for: nothing known, no crash.
        assert_eq!(render(&s, 0x2000), "0x2000 (?)");
        assert_eq!(render(&Symbolizer::new(&[]), 5), "0x5 (?)");
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(anon as *mut c_void, 4096) };
    }

    #[test]
    fn without_addr2line() {
        let r = symbolize_marker as *const () as usize + 4;
        let c = libc::getpid as *const () as usize + 1;
        let s = Symbolizer::build(&[r, c], None, false);
        let f = s.frame(r);
        println!("{}", render(&s, r));
        // Legacy-mangled Rust, demangled here.
        assert_eq!(
            f.function,
            Some("magpie::leak::symbolize::tests::symbolize_marker")
        );
        assert_eq!(f.offset, 4);
        assert_eq!(f.file_line, None);
        let f = s.frame(c);
        assert!(matches!(f.function, Some("getpid" | "__getpid")), "{f:?}");
    }

    #[test]
    fn stripped_deleted_and_replaced_objects() {
        let dir = tmpdir("odd");
        // Stripped: .dynsym only.
        let stripped = build_lib(&dir, "libsymfix_stripped.so", &[]);
        run("strip", &[stripped.to_str().unwrap()]);
        let h = dlopen(&stripped);
        let leaf = dlsym(h, "symfix_leaf");
        // Deleted after loading.
        let deleted = build_lib(&dir, "libsymfix_deleted.so", &["-DSYMFIX_VARIANT=1"]);
        let hd = dlopen(&deleted);
        let leaf_d = dlsym(hd, "symfix_leaf");
        std::fs::remove_file(&deleted).unwrap();
        // Replaced (a rebuild renamed over it): a different build-id.
        let replaced = build_lib(&dir, "libsymfix_replaced.so", &["-DSYMFIX_VARIANT=2"]);
        let hr = dlopen(&replaced);
        let leaf_r = dlsym(hr, "symfix_leaf");
        let other = build_lib(
            &dir,
            "libsymfix_other.so",
            &["-DSYMFIX_VARIANT=3", "-Wl,--build-id=sha1"],
        );
        std::fs::rename(&other, &replaced).unwrap();

        let s = Symbolizer::new(&[leaf + 1, leaf_d + 1, leaf_r + 1]);
        let f = s.frame(leaf + 1);
        println!("{}", render(&s, leaf + 1));
        assert_eq!(
            (f.function, f.offset, f.file_line),
            (Some("symfix_leaf"), 1, None)
        );
        assert_eq!(f.object, stripped.to_str());
        for a in [leaf_d + 1, leaf_r + 1] {
            let f = s.frame(a);
            println!("{}", render(&s, a));
            assert_eq!(f.function, None, "{f:?}");
            assert!(f.object.unwrap().contains("libsymfix_"), "{f:?}");
        }
    }

    #[test]
    fn odd_files_and_elf_images() {
        for p in [
            c"/",
            c"/dev/null",
            c"/nonexistent/x.so",
            c"/proc/self/status",
        ] {
            assert!(Mapped::open(p).map_or(true, |m| Elf::parse(m.bytes()).is_none()));
        }
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let probe = |d: &[u8]| {
            if let Some(elf) = Elf::parse(d) {
                let _ = elf.build_id();
                let _ = elf.may_have_debug_info();
                if let Some(mut idx) = SymIndex::build(&elf) {
                    for a in [0u64, 0x1000, 0x4_0000, u64::MAX] {
                        if let Some(s) = idx.lookup(&elf, a) {
                            let _ = idx.name(&s);
                        }
                    }
                }
            }
        };
        // Truncated anywhere.
        for len in [
            0,
            4,
            63,
            64,
            65,
            200,
            4096,
            exe.len() / 3,
            exe.len() / 2,
            exe.len() - 1,
        ] {
            probe(&exe[..len]);
        }
        // Corrupted headers and tables.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let eh: libc::Elf64_Ehdr = rd(&exe, 0).unwrap();
        let shoff = eh.e_shoff as usize;
        for _ in 0..300 {
            let mut d = exe.clone();
            for _ in 0..8 {
                let r = rnd() as usize;
                // Mostly the ELF header and section headers.
                let at = match r % 3 {
                    0 => r / 3 % 64,
                    1 => shoff + (r / 3) % (d.len() - shoff),
                    _ => (r / 3) % d.len(),
                };
                d[at] = rnd() as u8;
            }
            probe(&d);
        }
        let mut out = [0u8; 64];
        assert_eq!(find_build_id(&[1, 2, 3], 4), None);
        assert_eq!(find_build_id(&[0xff; 40], 4), None);
        assert_eq!(demangle_rust_legacy(b"_ZN", &mut out), None);
        assert_eq!(
            demangle_rust_legacy(b"_ZN99999999999999999999", &mut out),
            None
        );
    }

    #[test]
    fn rust_legacy_demangling() {
        let mut out = [0u8; 256];
        let mut d = |s: &str| {
            demangle_rust_legacy(s.as_bytes(), &mut out)
                .map(|n| String::from_utf8(out[..n].to_vec()).unwrap())
        };
        assert_eq!(
            d("_ZN6magpie2gc11collect_now17he3eedc592acc3b40E").as_deref(),
            Some("magpie::gc::collect_now")
        );
        assert_eq!(
            d("_ZN59_$LT$magpie..stats..Bytes$u20$as$u20$core..fmt..Display$GT$3fmt17h01fbcc44cedaa8afE").as_deref(),
            Some("<magpie::stats::Bytes as core::fmt::Display>::fmt")
        );
        assert_eq!(
            d("_ZN3std2rt10lang_start28_$u7b$$u7b$closure$u7d$$u7d$17h6fd6f60af0ef0559E.llvm.123")
                .as_deref(),
            Some("std::rt::lang_start::{{closure}}")
        );
        // C++ (parameter types after E) and v0 Rust: left alone.
        assert_eq!(d("_ZN3foo3barEv"), None);
        assert_eq!(d("_RNvCs1234_5magpie3foo"), None);
        assert_eq!(strip_rust_hash(b"a::b::h0123456789abcdef"), b"a::b");
        let mut buf = [0u8; 128];
        let v0 = b"test[273d7611820c9051]::run::<core[c1f]::result::Result<&[u8], [f32; 2]>>";
        let n = strip_disambiguators(v0, &mut buf);
        assert_eq!(
            &buf[..n],
            b"test::run::<core::result::Result<&[u8], [f32; 2]>>"
        );
        assert_eq!(strip_rust_hash(b"a::b"), b"a::b");
        assert_eq!(parse_addr_line(b"0x00000000000011a9"), Some(0x11a9));
        assert_eq!(parse_addr_line(b"0x11a9"), None);
        let mut arena = Arena::new();
        let mut loc = |l: &str| {
            let r = store_tool_location(&mut arena, l.as_bytes());
            // SAFETY: the arena lives until the end of the test.
            unsafe { r.str() }.map(str::to_owned)
        };
        assert_eq!(
            loc("/a/b.c:12 (discriminator 3)").as_deref(),
            Some("/a/b.c:12")
        );
        assert_eq!(loc("??:0"), None);
        assert_eq!(loc("??:?"), None);
        assert_eq!(loc("/a/b.c:?"), None);
        assert_eq!(loc("foo-cgu.0:0"), None);
    }

    /// An address (+2) in a function of the test binary with a v0-mangled
    /// name (the test harness's crate is built with v0 mangling), and the name.
    fn v0_function() -> Option<(usize, String)> {
        let c = CString::new(self_exe()).unwrap();
        let m = Mapped::open(&c).unwrap();
        let elf = Elf::parse(m.bytes()).unwrap();
        let mut idx = SymIndex::build(&elf).unwrap();
        let strs = idx.strs;
        let sym = idx
            .syms()
            .iter()
            .copied()
            .find(|s| cstr_at(strs, s.name as usize).starts_with(b"_RNv") && s.size > 4)?;
        let mangled = String::from_utf8_lossy(idx.name(&sym)).into_owned();
        let (base, _) = base_of(symbolize_marker as *const () as usize);
        Some((base + sym.value as usize + 2, mangled))
    }

    #[test]
    fn rust_v0_names_are_demangled() {
        let Some((addr, mangled)) = v0_function() else {
            return; // no v0 symbol in this build
        };
        let s = Symbolizer::new(&[addr]);
        let f = s.frame(addr);
        println!("{mangled}: {}", render(&s, addr));
        let name = f.function.unwrap();
        assert!(!name.starts_with("_R") && name.contains("::"), "{f:?}");
        assert!(!name.contains('['), "{f:?}");
        assert_eq!(f.offset, 2);
    }

    /// Runs the body in a re-run of this test binary with
    /// tests/c/symbolize_nomalloc.c preloaded, which counts this thread's
    /// malloc-family calls.
    #[test]
    fn symbolizing_does_not_allocate() {
        const CHILD: &str = "MAGPIE_SYMBOLIZE_NOMALLOC_DIR";
        if let Some(dir) = std::env::var_os(CHILD) {
            let lib = dlopen(&PathBuf::from(dir).join("libsymfix.so"));
            let mut addrs = vec![
                symbolize_marker as *const () as usize + 4,
                libc::getpid as *const () as usize + 1,
                dlsym(lib, "symfix_leaf") + 1,
                0x1000,
            ];
            if let Some((a, _)) = v0_function() {
                addrs.push(a); // through c++filt
            }
            // SAFETY: looking up the preloaded counter's entry points.
            let (start, stop) = unsafe {
                (
                    libc::dlsym(libc::RTLD_DEFAULT, c"symfix_count_start".as_ptr()),
                    libc::dlsym(libc::RTLD_DEFAULT, c"symfix_count_stop".as_ptr()),
                )
            };
            assert!(!start.is_null() && !stop.is_null());
            // SAFETY: the counter's functions: () -> () and () -> long.
            let (start, stop) = unsafe {
                (
                    mem::transmute::<*mut c_void, extern "C" fn()>(start),
                    mem::transmute::<*mut c_void, extern "C" fn() -> libc::c_long>(stop),
                )
            };
            // The counter counts.
            start();
            drop(core::hint::black_box(std::boxed::Box::new(1u64)));
            assert!(stop() > 0);

            let mut out = StackBuf::<4096>::new();
            start();
            {
                let s = Symbolizer::new(&addrs);
                for &a in &addrs {
                    let _ = s.write_frame(a, &mut out);
                    let _ = out.write_str("\n");
                    let _ = s.frame(a);
                    let _ = s.inlined(a).count();
                }
            }
            let n = stop();
            let text = String::from_utf8_lossy(out.as_bytes()).into_owned();
            println!("{text}");
            assert!(text.contains("symbolize_marker+0x4") && text.contains("symfix_leaf+0x1"));
            assert!(text.contains("symbolize.rs:") && text.contains("symbolize_lib.c:"));
            assert_eq!(n, 0, "malloc-family calls while symbolizing");
            return;
        }
        let dir = tmpdir("nomalloc");
        build_lib(&dir, "libsymfix.so", &[]);
        let shim = dir.join("libnomalloc.so");
        let src = fixture("symbolize_nomalloc.c");
        run(
            "cc",
            &[
                "-O1",
                "-shared",
                "-fPIC",
                "-o",
                shim.to_str().unwrap(),
                src.to_str().unwrap(),
            ],
        );
        let out = Command::new(self_exe())
            .args([
                "--exact",
                "leak::symbolize::tests::symbolizing_does_not_allocate",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("LD_PRELOAD", &shim)
            .env(CHILD, &*dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        println!("{text}");
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    /// Runs the body in a re-run of a copy of this test binary, deleted
    /// before it symbolizes itself.
    #[test]
    fn deleted_main_program() {
        const CHILD: &str = "MAGPIE_SYMBOLIZE_DELETED_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let exe = self_exe();
            std::fs::remove_file(&exe).unwrap();
            let gone = self_exe();
            assert!(gone.ends_with(" (deleted)"), "{gone}");
            let addr = symbolize_marker as *const () as usize + 4;
            let s = Symbolizer::new(&[addr]);
            let f = s.frame(addr);
            println!("{}", render(&s, addr));
            assert_eq!(
                f.function,
                Some("magpie::leak::symbolize::tests::symbolize_marker")
            );
            assert_eq!(f.object, Some(gone.as_str()));
            assert!(f.file_line.unwrap().contains("symbolize.rs:"), "{f:?}");
            return;
        }
        let dir = tmpdir("deleted");
        let copy = dir.join("copy-of-tests");
        std::fs::copy(self_exe(), &copy).unwrap();
        let out = Command::new(&copy)
            .args([
                "--exact",
                "leak::symbolize::tests::deleted_main_program",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        println!("{text}");
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        assert!(!copy.exists());
    }

    #[test]
    fn cxx_names_are_demangled() {
        if Command::new("c++").arg("--version").output().is_err() {
            return;
        }
        let dir = tmpdir("cxx");
        let src = dir.join("symfix.cc");
        std::fs::write(
            &src,
            "namespace symfix { template <class T> struct Box {\n\
             __attribute__((noinline)) static int where(T x) { return (int)x * 5 + 3; } };\n\
             template struct Box<long>; }\n\
             extern \"C\" void *symfix_cxx(void) { return (void *)&symfix::Box<long>::where; }\n",
        )
        .unwrap();
        let lib = dir.join("libsymfix_cxx.so");
        for (flags, want_line) in [(&["-g"][..], true), (&["-s"][..], false)] {
            let mut args = vec![
                "-O1",
                "-shared",
                "-fPIC",
                "-o",
                lib.to_str().unwrap(),
                src.to_str().unwrap(),
            ];
            args.extend_from_slice(flags);
            let so = dir.join(if want_line {
                "libsymfix_cxx_g.so"
            } else {
                "libsymfix_cxx_s.so"
            });
            args[4] = so.to_str().unwrap();
            run("c++", &args);
            let h = dlopen(&so);
            // SAFETY: the fixture's function: () -> *mut c_void.
            let f = unsafe {
                mem::transmute::<usize, extern "C" fn() -> usize>(dlsym(h, "symfix_cxx"))()
            };
            let s = Symbolizer::new(&[f + 1]);
            println!("{}", render(&s, f + 1));
            let fr = s.frame(f + 1);
            assert!(
                fr.function.unwrap().starts_with("symfix::Box<long>::where"),
                "{fr:?}"
            );
            assert_eq!(fr.offset, 1);
            assert_eq!(fr.file_line.is_some(), want_line, "{fr:?}");
        }
    }

    #[test]
    fn child_gets_a_minimal_environment_and_is_killed_when_late() {
        let argv = [c"/usr/bin/env".as_ptr(), ptr::null()];
        let envp = [c"PATH=/usr/bin:/bin".as_ptr(), ptr::null()];
        let child = Child::spawn(c"/usr/bin/env", &argv, &envp).unwrap();
        let mut out = [0u8; 256];
        let n = child.converse(b"", &mut out, now_ns() + 5_000_000_000);
        assert_eq!(&out[..n], b"PATH=/usr/bin:/bin\n");

        let argv = [c"sleep".as_ptr(), c"30".as_ptr(), ptr::null()];
        let child = Child::spawn(c"/bin/sleep", &argv, &envp).unwrap();
        let pid = child.pid;
        let t = Instant::now();
        let n = child.converse(b"ignored\n", &mut out, now_ns() + 200_000_000);
        assert_eq!(n, 0);
        assert!(t.elapsed().as_secs() < 5);
        // Reaped: no such child any more.
        // SAFETY: a plain waitpid.
        assert_eq!(
            unsafe { libc::waitpid(pid, ptr::null_mut(), libc::WNOHANG) },
            -1
        );

        // A tool that does not exist: the child exits 127, no output.
        let argv = [c"/nonexistent/addr2line".as_ptr(), ptr::null()];
        let child = Child::spawn(c"/nonexistent/addr2line", &argv, &envp).unwrap();
        assert_eq!(
            child.converse(b"0x1\n", &mut out, now_ns() + 5_000_000_000),
            0
        );
    }

    #[test]
    fn many_addresses_in_three_objects() {
        let dir = tmpdir("many");
        let lib = build_lib(&dir, "libsymfix_many.so", &[]);
        let h = dlopen(&lib);
        let (exe_base, _) = base_of(symbolize_marker as *const () as usize);
        let (libc_base, libc_path) = base_of(libc::getpid as *const () as usize);
        let mut addrs = function_addrs(&self_exe(), exe_base, 120, 1);
        addrs.extend(function_addrs(&libc_path, libc_base, 76, 1));
        for f in ["symfix_leaf", "symfix_outer", "symfix_inner"] {
            let a = dlsym(h, f);
            addrs.extend([a + 1, a + 2]);
        }
        let t = Instant::now();
        let s = Symbolizer::new(&addrs);
        let took = t.elapsed();
        let named = addrs
            .iter()
            .filter(|&&a| s.frame(a).function.is_some())
            .count();
        let lined = addrs
            .iter()
            .filter(|&&a| s.frame(a).file_line.is_some())
            .count();
        println!(
            "{} addresses in 3 objects: {took:?}; {named} with a function, {lined} with a line",
            addrs.len()
        );
        assert_eq!(named, addrs.len());
        // The test binary's functions and the fixture's, at least (libc's
        // only with its debug package installed).
        assert!(lined >= 100, "{lined}");
        for &a in addrs.iter().step_by(37) {
            println!("  {}", render(&s, a));
        }

        // More input than a socket buffer holds: answers are read while
        // addresses are still being written.
        let many = function_addrs(&self_exe(), exe_base, 2000, 16);
        assert!(many.len() * 19 > 400 << 10, "{}", many.len());
        let t = Instant::now();
        let s = Symbolizer::new(&many);
        println!(
            "{} addresses in the test binary: {:?}",
            many.len(),
            t.elapsed()
        );
        // The same answers as addr2line run directly (outermost frame of each).
        let input: String = many
            .iter()
            .map(|a| format!("{:#x}\n", a - 1 - exe_base))
            .collect();
        let mut child = Command::new("addr2line")
            .args(["-a", "-f", "-C", "-i", "-e", &self_exe()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer =
            std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut expected: Vec<Option<String>> = Vec::new();
        let mut pending = 0;
        for line in text.lines() {
            if parse_addr_line(line.as_bytes()).is_some() {
                expected.push(None);
                pending = 0;
            } else {
                pending += 1;
                if pending % 2 == 0 {
                    let mut a = Arena::new();
                    let r = store_tool_location(&mut a, line.as_bytes());
                    // SAFETY: the arena lives until the end of this statement.
                    *expected.last_mut().unwrap() = unsafe { r.str() }.map(str::to_owned);
                }
            }
        }
        assert_eq!(expected.len(), many.len());
        let mut lined = 0;
        for (a, e) in many.iter().zip(&expected) {
            assert_eq!(s.frame(*a).file_line, e.as_deref(), "{a:#x}");
            lined += e.is_some() as usize;
        }
        assert!(lined * 2 > many.len(), "{lined} of {}", many.len());
    }
}

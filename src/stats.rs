//! Statistics: `magpie::stats()` and the `MAGPIE_STATS=1` summary at exit.
//!
//! Counts of small objects come from per-CPU counters the fast paths bump with
//! plain stores (an update is rarely lost to preemption; the figures are
//! statistics, not accounting). Tiny objects are counted per 16-byte block.
//! Large objects and page-heap figures are exact.

use core::fmt::{self, Write};
use core::sync::atomic::Ordering::Relaxed;

use crate::alloc::{self as engine, cache, central, heap, meta, sizeclass};
use crate::sys::fatal::StackBuf;
use crate::sys::{os, rseq};

/// Figures for one size class (both scan and noscan spans).
#[derive(Clone, Copy, Debug, Default)]
pub struct ClassStats {
    /// Object size in bytes.
    pub size: usize,
    pub allocs: u64,
    /// Freed by the program.
    pub frees: u64,
    /// Freed by the collector (found unreachable).
    pub reclaimed: u64,
    /// Objects allocated and not freed (`allocs - frees - reclaimed`).
    pub live: u64,
    /// Spans of this class in use.
    pub spans: usize,
}

/// A snapshot of the allocator's state.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Objects allocated since start (small, tiny blocks and large).
    pub allocations: u64,
    pub frees: u64,
    /// Bytes allocated since start, counted by size class (what the heap gave).
    pub allocated_bytes: u64,
    /// Objects and bytes freed by the program (the collector's are in `gc`).
    pub freed_bytes: u64,
    /// Allocated, and freed neither by the program nor by the collector.
    pub live_bytes: u64,
    pub large_live_bytes: u64,
    /// Address space reserved for the heap.
    pub heap_reserved: u64,
    /// Heap memory made accessible (mapped read-write).
    pub heap_committed: u64,
    /// Pages held by spans in use.
    pub heap_in_use: u64,
    /// Free pages in the page heap, and how many of them are still resident.
    pub heap_free: u64,
    pub heap_free_resident: u64,
    /// Bytes returned to the OS since start.
    pub released_to_os: u64,
    /// Metadata mapped (spans, bitmaps, central lists).
    pub metadata_bytes: u64,
    /// Heap committed plus metadata plus per-CPU caches.
    pub mapped_bytes: u64,
    /// The process's resident set size.
    pub resident_bytes: u64,
    /// Where per-CPU caches get their CPU number: "rseq (glibc)", "rseq (own)" or "locked".
    pub cache_mode: &'static str,
    pub cpus: usize,
    /// Frees of slots whose span another CPU's cache owns: they go back to
    /// that span (its remote-free bits), not into the freeing CPU's cache.
    pub remote_frees: u64,
    /// Indexed by size class (0 unused).
    pub classes: [ClassStats; sizeclass::NUM_CLASSES],
    /// The garbage collector.
    pub gc: crate::gc::GcStats,
}

/// The current statistics. Allocation-free; safe to call at any time.
pub fn stats() -> Stats {
    let mut classes = [ClassStats::default(); sizeclass::NUM_CLASSES];
    for (c, cs) in classes.iter_mut().enumerate() {
        cs.size = sizeclass::size_of_class(c);
    }
    let ready = engine::is_ready();
    let mut allocations = 0;
    let mut frees = 0;
    let mut allocated_bytes = 0;
    let mut freed_bytes = 0;
    if ready {
        cache::for_each_op_count(|sc, a, f| {
            let class = central::class_of_sc(sc);
            classes[class].allocs += a;
            classes[class].frees += f;
        });
        for sc in 2..central::NUM_SPANCLASSES {
            let class = central::class_of_sc(sc);
            classes[class].spans += central::spans_in_use(sc);
            classes[class].reclaimed += central::RECLAIMED[sc].load(Relaxed);
        }
    }
    for cs in classes.iter_mut() {
        cs.live = cs.allocs.saturating_sub(cs.frees + cs.reclaimed);
        allocations += cs.allocs;
        frees += cs.frees;
        allocated_bytes += cs.allocs * cs.size as u64;
        freed_bytes += cs.frees * cs.size as u64;
    }
    let la = engine::LARGE_ALLOC_BYTES.load(Relaxed);
    let lf = engine::LARGE_FREE_BYTES.load(Relaxed);
    allocations += engine::LARGE_ALLOCS.load(Relaxed);
    frees += engine::LARGE_FREES.load(Relaxed);
    allocated_bytes += la;
    freed_bytes += lf;
    let h = if ready {
        heap::stats()
    } else {
        heap::HeapStats::default()
    };
    let caches_bytes = (cache::ncaches() * core::mem::size_of::<cache::CpuCache>()) as u64;
    // The page map is reserved for the whole range but touched only for the
    // committed part: one 8-byte entry per 8 KiB page.
    let metadata = meta::mapped() as u64 + h.committed as u64 / 1024;
    let gc = crate::gc::stats();
    let small_reclaimed: u64 = classes.iter().map(|c| c.reclaimed * c.size as u64).sum();
    let large_reclaimed = gc.reclaimed_bytes.saturating_sub(small_reclaimed);
    Stats {
        allocations,
        frees,
        allocated_bytes,
        freed_bytes,
        live_bytes: allocated_bytes.saturating_sub(freed_bytes + gc.reclaimed_bytes),
        large_live_bytes: la.saturating_sub(lf + large_reclaimed),
        heap_reserved: h.reserved as u64,
        heap_committed: h.committed as u64,
        heap_in_use: h.in_use as u64,
        heap_free: h.free as u64,
        heap_free_resident: h.free_resident as u64,
        released_to_os: h.released_total,
        metadata_bytes: metadata,
        mapped_bytes: h.committed as u64 + metadata + caches_bytes,
        resident_bytes: os::resident_bytes() as u64,
        cache_mode: if cache::FAST.rseq_off.load(Relaxed) == 0 {
            "locked"
        } else if rseq::source() == rseq::Source::Glibc {
            "rseq (glibc)"
        } else {
            "rseq (own)"
        },
        cpus: cache::ncaches() / 2,
        remote_frees: if ready { cache::remote_frees() } else { 0 },
        classes,
        gc,
    }
}

/// Writes `n` bytes in a human unit (B, KiB, MiB, GiB, TiB).
pub struct Bytes(pub u64);

impl core::fmt::Display for Bytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u < units.len() - 1 {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", units[u])
        }
    }
}

/// Writes the human-readable summary to `out` (no allocation).
pub fn write_summary(out: &mut impl Write, s: &Stats) -> core::fmt::Result {
    writeln!(out, "magpie: statistics")?;
    writeln!(
        out,
        "  heap        {} in use, {} committed, {} reserved",
        Bytes(s.heap_in_use),
        Bytes(s.heap_committed),
        Bytes(s.heap_reserved)
    )?;
    writeln!(
        out,
        "  free pages  {} ({} resident), {} returned to the OS",
        Bytes(s.heap_free),
        Bytes(s.heap_free_resident),
        Bytes(s.released_to_os)
    )?;
    writeln!(
        out,
        "  process     RSS {}, metadata {}, mapped {}",
        Bytes(s.resident_bytes),
        Bytes(s.metadata_bytes),
        Bytes(s.mapped_bytes)
    )?;
    writeln!(
        out,
        "  objects     {} allocated ({}), {} freed ({}), {} reclaimed ({}), {} live",
        s.allocations,
        Bytes(s.allocated_bytes),
        s.frees,
        Bytes(s.freed_bytes),
        s.gc.reclaimed_objects,
        Bytes(s.gc.reclaimed_bytes),
        Bytes(s.live_bytes)
    )?;
    writeln!(
        out,
        "  caches      per-CPU, {}, {} CPUs, {} remote frees",
        s.cache_mode, s.cpus, s.remote_frees
    )?;
    let g = &s.gc;
    if g.mode != "off" {
        writeln!(
            out,
            "  collector   {}: {} cycles ({} abandoned), {} reclaimed in {} objects",
            g.mode,
            g.cycles,
            g.abandoned,
            Bytes(g.reclaimed_bytes),
            g.reclaimed_objects
        )?;
        let us = |ns: u64| ns as f64 / 1000.0;
        writeln!(
            out,
            "  pauses      p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, total {:.1} ms (roots {:.1} ms, heap {:.1} ms, termination {:.1} ms; sweep {:.1} ms)",
            us(g.pause_p50_ns),
            us(g.pause_p99_ns),
            us(g.pause_max_ns),
            us(g.pause_total_ns) / 1000.0,
            us(g.root_scan_ns) / 1000.0,
            us(g.heap_mark_ns) / 1000.0,
            us(g.termination_ns) / 1000.0,
            us(g.sweep_ns) / 1000.0
        )?;
        if g.concurrent {
            let st = &g.sweep_termination;
            let mt = &g.mark_termination;
            writeln!(
                out,
                "  concurrent  dirty pages: {}; marking {:.1} ms with the world running; {} termination rounds (max {} in a cycle), {} written pages rescanned ({} before termination), {} absent pages not read; allocation throttled in {} cycles ({} held hard), {:.1} ms waited; {:.1} ms protecting and unprotecting the heap",
                g.dirty_source,
                us(g.concurrent_mark_ns) / 1000.0,
                g.rounds,
                g.rounds_max,
                g.dirty_pages,
                g.precleaned_pages,
                g.absent_pages_skipped,
                g.throttled_rounds,
                g.hard_throttles,
                us(g.throttled_ns) / 1000.0,
                us(g.protect_ns) / 1000.0
            )?;
            // Only a process's first concurrent cycle stops the world at
            // sweep termination.
            writeln!(
                out,
                "  pause kinds sweep termination {} stop{} (max {:.0} µs); mark termination p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
                st.count,
                if st.count == 1 { "" } else { "s" },
                us(st.max_ns),
                us(mt.p50_ns),
                us(mt.p99_ns),
                us(mt.max_ns)
            )?;
        } else {
            let mut why = crate::sys::fatal::StackBuf::<512>::new();
            let _ = crate::gc::dirty::describe(&mut why);
            writeln!(
                out,
                "  marking     with the world stopped by {} marker{} (helpers marked {:.0} % of objects; dirty pages: {})",
                g.markers,
                if g.markers == 1 { "" } else { "s" },
                g.helper_marked_objects as f64 * 100.0 / g.marked_objects.max(1) as f64,
                core::str::from_utf8(why.as_bytes()).unwrap_or("?")
            )?;
        }
        writeln!(
            out,
            "  last cycle  heap {} before, {} after, {} marked live; next at {}",
            Bytes(g.heap_before_last),
            Bytes(g.heap_after_last),
            Bytes(g.marked_bytes_last),
            Bytes(g.next_gc_bytes)
        )?;
        if g.unreachable_objects > 0 {
            writeln!(
                out,
                "  unreachable {} objects, {} not freed (leakcheck)",
                g.unreachable_objects,
                Bytes(g.unreachable_bytes)
            )?;
        }
    }
    writeln!(
        out,
        "  size classes with allocations (size: allocations / live objects / spans):"
    )?;
    let mut col = 0;
    for c in s.classes.iter().skip(1).filter(|c| c.allocs > 0) {
        write!(
            out,
            "    {:>6} B: {:>9} / {:>8} / {:>5}",
            c.size, c.allocs, c.live, c.spans
        )?;
        col += 1;
        if col % 2 == 0 {
            writeln!(out)?;
        }
    }
    if col % 2 != 0 {
        writeln!(out)?;
    }
    Ok(())
}

/// A private copy of stderr made at start-up when MAGPIE_STATS is on: programs
/// such as coreutils close fd 2 in their own exit handlers, which run first.
static STATS_FD: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(2);

/// Called at init when MAGPIE_STATS is on.
pub fn keep_stderr_for_exit() {
    // SAFETY: fcntl duplicates fd 2 (if open) to a high, close-on-exec fd.
    let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 100) };
    if fd >= 0 {
        STATS_FD.store(fd, Relaxed);
    }
}

/// The `MAGPIE_STATS=1` (or `=json`) exit handler.
pub extern "C" fn print_at_exit() {
    let s = stats();
    let mut b = StackBuf::<16384>::new();
    let _ = if crate::config::STATS_JSON.load(Relaxed) {
        write_json(&mut b, &s)
    } else {
        write_summary(&mut b, &s)
    };
    crate::sys::fatal::write_fd(STATS_FD.load(Relaxed), b.as_bytes());
}

/// The statistics as one JSON object on one line (`MAGPIE_STATS=json`), for
/// tools and CI. Durations in nanoseconds, sizes in bytes.
pub fn write_json(out: &mut dyn Write, s: &Stats) -> fmt::Result {
    let g = &s.gc;
    let pauses = |out: &mut dyn Write, name: &str, p: &crate::gc::PauseSummary| {
        write!(
            out,
            "\"{name}\":{{\"count\":{},\"total_ns\":{},\"max_ns\":{},\"p50_ns\":{},\"p99_ns\":{}}}",
            p.count, p.total_ns, p.max_ns, p.p50_ns, p.p99_ns
        )
    };
    write!(
        out,
        "{{\"allocations\":{},\"frees\":{},\"allocated_bytes\":{},\"freed_bytes\":{},\"live_bytes\":{},",
        s.allocations, s.frees, s.allocated_bytes, s.freed_bytes, s.live_bytes
    )?;
    write!(
        out,
        "\"heap\":{{\"reserved\":{},\"committed\":{},\"in_use\":{},\"free\":{},\"free_resident\":{},\"released_to_os\":{}}},",
        s.heap_reserved, s.heap_committed, s.heap_in_use, s.heap_free, s.heap_free_resident, s.released_to_os
    )?;
    write!(
        out,
        "\"metadata_bytes\":{},\"mapped_bytes\":{},\"resident_bytes\":{},\"cache_mode\":\"{}\",\"cpus\":{},\"remote_frees\":{},",
        s.metadata_bytes, s.mapped_bytes, s.resident_bytes, s.cache_mode, s.cpus, s.remote_frees
    )?;
    write!(
        out,
        "\"gc\":{{\"mode\":\"{}\",\"cycles\":{},\"abandoned\":{},\"concurrent\":{},\"last_cycle_concurrent\":{},\"dirty_source\":\"{}\",",
        g.mode, g.cycles, g.abandoned, g.concurrent, g.last_cycle_concurrent, g.dirty_source
    )?;
    let all = crate::gc::PauseSummary {
        count: g.sweep_termination.count + g.mark_termination.count,
        total_ns: g.pause_total_ns,
        max_ns: g.pause_max_ns,
        p50_ns: g.pause_p50_ns,
        p99_ns: g.pause_p99_ns,
    };
    pauses(out, "pauses", &all)?;
    out.write_str(",")?;
    pauses(out, "sweep_termination", &g.sweep_termination)?;
    out.write_str(",")?;
    pauses(out, "mark_termination", &g.mark_termination)?;
    write!(
        out,
        ",\"concurrent_mark_ns\":{},\"rounds\":{},\"rounds_max\":{},\"dirty_pages\":{},\"dirty_pages_last\":{},\"dirty_failures\":{},\"mark_stack_peak\":{},\"throttled_rounds\":{},\"hard_throttles\":{},\"throttled_ns\":{},\"precleaned_pages\":{},\"protect_ns\":{},\"markers\":{},\"marked_objects\":{},\"helper_marked_objects\":{},\"absent_pages_skipped\":{},\"residency_queries\":{},",
        g.concurrent_mark_ns, g.rounds, g.rounds_max, g.dirty_pages, g.dirty_pages_last, g.dirty_failures, g.mark_stack_peak, g.throttled_rounds, g.hard_throttles, g.throttled_ns, g.precleaned_pages, g.protect_ns, g.markers, g.marked_objects, g.helper_marked_objects, g.absent_pages_skipped, g.residency_queries
    )?;
    write!(
        out,
        "\"root_scan_ns\":{},\"heap_mark_ns\":{},\"termination_ns\":{},\"sweep_ns\":{},\"marked_bytes_last\":{},\"heap_before_last\":{},\"heap_after_last\":{},",
        g.root_scan_ns, g.heap_mark_ns, g.termination_ns, g.sweep_ns, g.marked_bytes_last, g.heap_before_last, g.heap_after_last
    )?;
    write!(
        out,
        "\"reclaimed_objects\":{},\"reclaimed_bytes\":{},\"unreachable_objects\":{},\"unreachable_bytes\":{},\"next_gc_bytes\":{}}},",
        g.reclaimed_objects, g.reclaimed_bytes, g.unreachable_objects, g.unreachable_bytes, g.next_gc_bytes
    )?;
    let l = crate::leak::totals();
    write!(
        out,
        "\"leaks\":{{\"bytes\":{},\"objects\":{}}},\"classes\":[",
        l.bytes, l.objects
    )?;
    let mut first = true;
    for c in s.classes.iter().skip(1).filter(|c| c.allocs > 0) {
        if !first {
            out.write_str(",")?;
        }
        first = false;
        write!(
            out,
            "{{\"size\":{},\"allocs\":{},\"frees\":{},\"live\":{},\"spans\":{}}}",
            c.size, c.allocs, c.frees, c.live, c.spans
        )?;
    }
    out.write_str("]}\n")
}

#!/usr/bin/env bash
# GC pause benchmark (benches/gc/pause.c): a live heap of small linked nodes, a
# mutator replacing nodes, a probe thread timestamping in a tight loop.
# Variants, run N times each, interleaved:
#   magpie-conc  LD_PRELOAD=libmagpie.so MAGPIE_GC=collect MAGPIE_CONCURRENT=1
#   magpie-stw   the same with MAGPIE_CONCURRENT=0 (marking with the world stopped)
#   boehm        the program built with GC_MALLOC, linked with -lgc
#   magpie-off   MAGPIE_GC=off: no collector, the probe's noise floor
# Usage: bash benches/gc/pause.sh
#   env: SIZES="1024 8192" (live heap, MiB)  N=3  OPS=0 (mutator ops; 0: the
#        program's default, min(nodes, 2^25))  NODE=64 (node bytes)  CHAIN=4
#        VARIANTS="magpie-conc magpie-stw boehm magpie-off"  NAME=pause
# Writes target/gcbench/$NAME.md; raw runs in target/gcbench/$NAME-runs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${N:-3}
SIZES=${SIZES:-"1024 8192"}
OPS=${OPS:-0}
NODE=${NODE:-64}
CHAIN=${CHAIN:-4}
NAME=${NAME:-pause}
OUT=$ROOT/target/gcbench
RUNS=$OUT/$NAME-runs
LIB=$ROOT/target/release/libmagpie.so
CC=${CC:-gcc}
VARIANTS=${VARIANTS:-"magpie-conc magpie-stw boehm magpie-off"}
for v in $VARIANTS; do
    case $v in magpie-conc|magpie-stw|boehm|magpie-off) ;; *) echo "unknown variant $v" >&2; exit 2 ;; esac
done

. benches/common.sh
need_pkg "test -f /usr/include/gc.h" libgc-dev
need_pkg "test -x /usr/bin/time" time

cargo build --release >&2
rm -rf "$RUNS"; mkdir -p "$RUNS"
CFLAGS="-std=c11 -O2 -Wall -Wextra -pthread"
$CC $CFLAGS -DMODE_MAGPIE -o "$OUT/pause-MAGPIE" benches/gc/pause.c -ldl
$CC $CFLAGS -DMODE_BOEHM -o "$OUT/pause-BOEHM" benches/gc/pause.c -lgc

mem_avail_mib() { awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo; }
# Rough peak memory of the largest variant (Boehm's 64-byte nodes take 80
# bytes; the garbage the mutator makes is at most ops * node bytes; the
# off variant keeps all of it).
need_mib() { # size_mib
    local ops=$OPS
    [ "$ops" = 0 ] && ops=$(( ($1 * 1048576 / NODE) < 33554432 ? ($1 * 1048576 / NODE) : 33554432 ))
    echo $(( $1 * 16 / 10 + ops * NODE * 12 / 10 / 1048576 + 1024 ))
}

fail=0
run_one() { # size variant iteration -> $RUNS/size.variant.i.{out,err,time}
    local s=$1 v=$2 i=$3 base="$RUNS/$1.$2.$3" rc=0
    local args="$s $OPS $NODE $CHAIN"
    local avail; avail=$(mem_avail_mib)
    if [ "$avail" -lt "$(need_mib "$s")" ]; then
        echo "SKIPPED: $s MiB $v run $i: MemAvailable $avail MiB < $(need_mib "$s") MiB needed" >&2
        echo "skipped" >"$base.skipped"
        return
    fi
    case $v in
    magpie-conc) /usr/bin/time -o "$base.time" -f "%e %M %U %S" \
        env MAGPIE_GC=collect MAGPIE_CONCURRENT=1 MAGPIE_STATS=1 LD_PRELOAD="$LIB" \
        "$OUT/pause-MAGPIE" $args >"$base.out" 2>"$base.err" || rc=$? ;;
    magpie-stw) /usr/bin/time -o "$base.time" -f "%e %M %U %S" \
        env MAGPIE_GC=collect MAGPIE_CONCURRENT=0 MAGPIE_STATS=1 LD_PRELOAD="$LIB" \
        "$OUT/pause-MAGPIE" $args >"$base.out" 2>"$base.err" || rc=$? ;;
    boehm) /usr/bin/time -o "$base.time" -f "%e %M %U %S" \
        "$OUT/pause-BOEHM" $args >"$base.out" 2>"$base.err" || rc=$? ;;
    magpie-off) /usr/bin/time -o "$base.time" -f "%e %M %U %S" \
        env MAGPIE_GC=off MAGPIE_STATS=1 LD_PRELOAD="$LIB" \
        "$OUT/pause-MAGPIE" $args >"$base.out" 2>"$base.err" || rc=$? ;;
    esac
    if [ $rc -ne 0 ]; then
        fail=1
        echo "FAILURE: $v, args '$args', run $i exited with status $rc; stderr:" >&2
        tail -n 30 "$base.err" >&2
        mv "$base.out" "$base.failed-out"
    fi
}

skipped_sizes=""
for s in $SIZES; do
    avail=$(mem_avail_mib); need=$(need_mib "$s")
    if [ "$avail" -lt "$need" ]; then
        echo "SKIPPING size $s MiB: MemAvailable $avail MiB < about $need MiB needed" >&2
        skipped_sizes="$skipped_sizes $s"
        continue
    fi
    for i in $(seq 1 "$N"); do          # interleaved: v1 v2 v3 v4 v1 v2 ...
        for v in $VARIANTS; do
            echo "$(date +%T) run $s MiB $v $i" >&2
            run_one "$s" "$v" "$i"
        done
    done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# val KEY FILES...: the value of "KEY: value" lines of the program's output
val() { local k=$1; shift; awk -F': ' -v k="$k" '$1==k && $2!="-" {print $2}' "$@" 2>/dev/null || true; }
# med KEY size variant: median over the runs
med() { val "$1" "$RUNS"/$2.$3.*.out | median; }
# magpie's own figures from MAGPIE_STATS (stderr)
mstat() { # what size variant
    local f=("$RUNS"/$2.$3.*.err) out
    [ -e "${f[0]}" ] || { echo "-"; return; }
    # only the runs whose .out exists (succeeded)
    local ok=() x
    for x in "${f[@]}"; do [ -e "${x%.err}.out" ] && ok+=("$x"); done
    [ ${#ok[@]} -gt 0 ] || { echo "-"; return; }
    case $1 in
    max) out=$(sed -n 's/^  pauses  *p50 [0-9]* µs, p99 [0-9]* µs, max \([0-9]*\) µs.*/\1/p' "${ok[@]}") ;;
    p99) out=$(sed -n 's/^  pauses  *p50 [0-9]* µs, p99 \([0-9]*\) µs.*/\1/p' "${ok[@]}") ;;
    p50) out=$(sed -n 's/^  pauses  *p50 \([0-9]*\) µs.*/\1/p' "${ok[@]}") ;;
    cycles) out=$(sed -n 's/^  collector  *collect: \([0-9]*\) cycles.*/\1/p' "${ok[@]}") ;;
    st_max) out=$(sed -n 's/^  pause kinds sweep termination [0-9]* stops* (max \([0-9]*\) µs); mark.*/\1/p' "${ok[@]}") ;;
    mt_p99) out=$(sed -n 's/^  pause kinds .*mark termination p50 [0-9]* µs, p99 \([0-9]*\) µs.*/\1/p' "${ok[@]}") ;;
    mt_max) out=$(sed -n 's/^  pause kinds .*mark termination .* max \([0-9]*\) µs$/\1/p' "${ok[@]}") ;;
    rounds) out=$(sed -n 's/^  concurrent .*; \([0-9]*\) termination rounds.*/\1/p' "${ok[@]}") ;;
    rescanned) out=$(sed -n 's/^  concurrent .*, \([0-9]*\) written pages rescanned.*/\1/p' "${ok[@]}") ;;
    esac
    echo "$out" | awk 'NF' | median
}
timecol() { # field size variant: median of /usr/bin/time's field (1 wall s, 2 RSS KiB)
    local x vals=""
    for x in "$RUNS"/$2.$3.*.time; do
        [ -e "$x" ] && [ -e "${x%.time}.out" ] && vals="$vals $(awk -v f="$1" 'NF==4 {print $f}' "$x")"
    done
    echo $vals | tr ' ' '\n' | awk 'NF' | median
}

# Checksums must agree across all variants and runs of one size.
for s in $SIZES; do
    ls "$RUNS"/$s.*.out >/dev/null 2>&1 || continue
    sums=$(cat "$RUNS"/$s.*.out | awk '/^checksum:/' | sort | uniq -c)
    nout=$(ls "$RUNS"/$s.*.out | wc -l)
    if [ "$(echo "$sums" | grep -c .)" -ne 1 ] || [ "$(echo "$sums" | awk '{print $1}')" -ne "$nout" ]; then
        fail=1
        echo "CHECKSUM MISMATCH for $s MiB:" >&2
        for f in "$RUNS"/$s.*.out; do echo "  $(basename "$f"): $(awk '/^checksum:/' "$f")" >&2; done
    fi
done

fmt() { awk -v x="$1" -v d="${2:-0}" 'BEGIN { if (x == "-" || x == "") print "-"; else printf "%.*f\n", d, x }'; }
{
echo "| live (MiB) | variant | wall (s) | build (s) | mutate (s) | ops/ms | ops/ms idle | ops/ms marking | marking/idle | cycles (in mutation) | own max pause (µs) | own p99 pause (µs) | probe max gap (µs) | probe p99 gap (µs) | probe stop max (µs) | probe stop p99 (µs) | probe gaps ≥1 ms | peak RSS (MiB) |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for s in $SIZES; do
    case " $skipped_sizes " in *" $s "*) echo "| $s | (skipped: not enough memory) |||||||||||||||||"; continue ;; esac
    for v in $VARIANTS; do
        ls "$RUNS"/$s.$v.*.out >/dev/null 2>&1 || { echo "| $s | $v (no successful run) |||||||||||||||||"; continue; }
        case $v in
        boehm) own_max=$(med boehm_max_pause_us $s $v); own_p99=$(med boehm_p99_pause_us $s $v); cyc=$(med cycles $s $v) ;;
        magpie-off) own_max="-"; own_p99="-"; cyc="-" ;;
        *) own_max=$(mstat max $s $v); own_p99=$(mstat p99 $s $v); cyc=$(mstat cycles $s $v) ;;
        esac
        [ "$v" != magpie-off ] && cyc="$cyc ($(med cycles_mutate $s $v))"
        ratio=$(med marking_ratio $s $v)
        case $v in boehm|magpie-off) ratio="-" ;; esac
        rss=$(timecol 2 $s $v)
        echo "| $s | $v | $(fmt "$(timecol 1 $s $v)" 1) | $(fmt "$(med build_s $s $v)" 1) | $(fmt "$(med mutate_s $s $v)" 1) | $(fmt "$(med ops_per_ms $s $v)") | $(fmt "$(med ops_per_ms_idle $s $v)") | $(fmt "$(med ops_per_ms_marking $s $v)") | $(fmt "$ratio" 2) | $cyc | $(fmt "$own_max") | $(fmt "$own_p99") | $(fmt "$(med probe_max_gap_us $s $v)") | $(fmt "$(med probe_p99_gap_us $s $v)") | $(fmt "$(med probe_stop_max_gap_us $s $v)") | $(fmt "$(med probe_stop_p99_gap_us $s $v)") | $(fmt "$(med probe_gaps_over_1ms $s $v)") | $(fmt "$(awk -v r="$rss" 'BEGIN { if (r == "-") print "-"; else print r / 1024 }')") |"
    done
done
echo
echo "Pause details (medians): magpie's pause kinds from MAGPIE_STATS, the probe's gaps by cause."
echo
echo "| live (MiB) | variant | own p50 pause (µs) | sweep term. max (µs) | mark term. p99 (µs) | mark term. max (µs) | term. rounds | pages rescanned | probe stop gaps | probe preempt gaps | probe preempt max (µs) | probe other max (µs) | probe loops/ms |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for s in $SIZES; do
    for v in $VARIANTS; do
        ls "$RUNS"/$s.$v.*.out >/dev/null 2>&1 || continue
        case $v in
        boehm) p50=$(med boehm_p50_pause_us $s $v); st="-"; mt99="-"; mtmax="-"; rd="-"; rs="-" ;;
        magpie-off) p50="-"; st="-"; mt99="-"; mtmax="-"; rd="-"; rs="-" ;;
        magpie-stw) p50=$(mstat p50 $s $v); st="-"; mt99="-"; mtmax="-"; rd="-"; rs="-" ;;
        *) p50=$(mstat p50 $s $v); st=$(mstat st_max $s $v); mt99=$(mstat mt_p99 $s $v); mtmax=$(mstat mt_max $s $v); rd=$(mstat rounds $s $v); rs=$(mstat rescanned $s $v) ;;
        esac
        echo "| $s | $v | $(fmt "$p50") | $(fmt "$st") | $(fmt "$mt99") | $(fmt "$mtmax") | $rd | $rs | $(fmt "$(med probe_stop_gaps $s $v)") | $(fmt "$(med probe_preempt_gaps $s $v)") | $(fmt "$(med probe_preempt_max_gap_us $s $v)") | $(fmt "$(med probe_other_max_gap_us $s $v)") | $(fmt "$(med probe_loops_per_ms $s $v)") |"
    done
done
} | tee "$OUT/$NAME.md"

echo
ops_note=$OPS; [ "$ops_note" = 0 ] && ops_note="default (min(nodes, 2^25))"
echo "args: sizes $SIZES MiB; ops $ops_note; node $NODE B; chain $CHAIN; N=$N; raw runs in $RUNS/"
[ -n "$skipped_sizes" ] && echo "skipped sizes (not enough memory):$skipped_sizes"
verdicts=""
for s in $SIZES; do
    for v in magpie-conc magpie-stw boehm; do
        ls "$RUNS"/$s.$v.*.out >/dev/null 2>&1 || continue
        if [ "$(val cycles_mutate "$RUNS"/$s.$v.*.out | sort -g | head -n 1)" = 0 ]; then
            echo "WARNING: in some $s MiB $v runs no cycle completed during the mutation: their pauses come from cycles of the build (smaller live heaps); raise OPS"
        fi
    done
done
for s in $SIZES; do
    ls "$RUNS"/$s.magpie-conc.*.out >/dev/null 2>&1 || continue
    lim=1000; [ "$s" -gt 1024 ] && lim=2000
    own=$(mstat max $s magpie-conc); pr=$(med probe_stop_max_gap_us $s magpie-conc); r=$(med marking_ratio $s magpie-conc)
    verdicts="$verdicts
  $s MiB magpie-conc: max pause $own µs (probe: $pr µs) vs $lim µs -> $(awk -v a="$own" -v l="$lim" 'BEGIN { print (a != "-" && a + 0 <= l) ? "met" : "NOT met" }'); marking/idle throughput $(fmt "$r" 2) vs 0.75 -> $(awk -v a="$r" 'BEGIN { print (a != "-" && a + 0 >= 0.75) ? "met" : "NOT met" }')"
done
echo "targets: max stop-the-world pause <= 1 ms at 1 GiB live, <= 2 ms at 8 GiB; mutator throughput while marking >= 75 % of idle$verdicts"
exit $fail

#!/usr/bin/env bash
# GC benchmark: magpie's collector (LD_PRELOAD, MAGPIE_GC=collect, program never
# frees) vs Boehm GC (GC_MALLOC) vs glibc malloc with explicit frees.
# Usage: bash benches/gc/run.sh            (env: N=3 BT_ARGS=17 LL_ARGS="40000 1000")
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${N:-3}
BT_ARGS=${BT_ARGS:-17}
LL_ARGS=${LL_ARGS:-"40000 1000"}
OUT=$ROOT/target/gcbench
LIB=$ROOT/target/release/libmagpie.so
CC=${CC:-gcc}

. benches/common.sh
need_pkg "test -f /usr/include/gc.h" libgc-dev
need_pkg "test -x /usr/bin/time" time

cargo build --release >&2
rm -rf "$OUT/runs"; mkdir -p "$OUT/runs"
PROGS="binary_trees leak_list"
VARIANTS="magpie boehm glibc-free"
for p in $PROGS; do
    for m in MALLOC_NOFREE BOEHM FREE; do
        extra=""; [ $m = BOEHM ] && extra="-lgc"
        $CC -std=c11 -O2 -Wall -Wextra -DMODE_$m -o "$OUT/$p-$m" "benches/gc/$p.c" $extra
    done
done

args_of() { case $1 in binary_trees) echo "$BT_ARGS" ;; leak_list) echo "$LL_ARGS" ;; esac; }

fail=0
run_one() { # prog variant iteration -> writes $OUT/runs/prog.variant.i.{out,err,time}
    local p=$1 v=$2 i=$3 base="$OUT/runs/$1.$2.$3" rc=0
    local args; args=$(args_of "$p")
    case $v in
    magpie) /usr/bin/time -o "$base.time" -f "%e %M %U %S" \
                env MAGPIE_GC=collect MAGPIE_STATS=1 LD_PRELOAD="$LIB" "$OUT/$p-MALLOC_NOFREE" $args >"$base.out" 2>"$base.err" || rc=$? ;;
    boehm)  /usr/bin/time -o "$base.time" -f "%e %M %U %S" "$OUT/$p-BOEHM" $args >"$base.out" 2>"$base.err" || rc=$? ;;
    glibc-free) /usr/bin/time -o "$base.time" -f "%e %M %U %S" "$OUT/$p-FREE" $args >"$base.out" 2>"$base.err" || rc=$? ;;
    esac
    if [ $rc -ne 0 ]; then
        fail=1
        echo "FAILURE: $p ($v) args '$args' run $i exited with status $rc; stderr:" >&2
        tail -n 30 "$base.err" >&2
    fi
}

for p in $PROGS; do
    for i in $(seq 1 "$N"); do          # interleaved: v1 v2 v3 v1 v2 v3 ...
        for v in $VARIANTS; do
            echo "run $p $v $i" >&2
            run_one "$p" "$v" "$i"
        done
    done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Checksums must agree across all variants and runs.
for p in $PROGS; do
    sums=$(cat "$OUT"/runs/$p.*.out | grep '^checksum:' | sort | uniq -c)
    if [ "$(echo "$sums" | grep -c .)" -ne 1 ] || [ "$(echo "$sums" | awk '{print $1}')" -ne $((N * 3)) ]; then
        fail=1
        echo "CHECKSUM MISMATCH for $p (args $(args_of "$p")):" >&2
        for f in "$OUT"/runs/$p.*.out; do echo "  $(basename "$f"): $(grep '^checksum:' "$f" || echo none)" >&2; done
    fi
done

{
echo "| program | variant | median time (s) | peak RSS (MiB) | cycles | max pause (ms) | ratio to Boehm time | RSS ratio to Boehm | median CPU user+sys (s) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for p in $PROGS; do
    bt=$(cat "$OUT"/runs/$p.boehm.*.time | awk '{print $1}' | median)
    br=$(cat "$OUT"/runs/$p.boehm.*.time | awk '{print $2}' | median)
    for v in $VARIANTS; do
        t=$(cat "$OUT"/runs/$p.$v.*.time 2>/dev/null | awk 'NF==4{print $1}' | median)
        r=$(cat "$OUT"/runs/$p.$v.*.time 2>/dev/null | awk 'NF==4{print $2}' | median)
        cpu=$(cat "$OUT"/runs/$p.$v.*.time 2>/dev/null | awk 'NF==4{print $3+$4}' | median)
        case $v in
        magpie)
            cyc=$(grep -ho 'collect: [0-9]* cycles' "$OUT"/runs/$p.$v.*.err | awk '{print $2}' | median)
            pause=$(grep -h 'pauses' "$OUT"/runs/$p.$v.*.err | sed -n 's/.*max \([0-9.]*\) µs.*/\1/p' | awk '{print $1/1000}' | median) ;;
        boehm)
            cyc=$(grep -h '^boehm:' "$OUT"/runs/$p.$v.*.out | awk '{print $3}' | median)
            pause=$(grep -h '^boehm:' "$OUT"/runs/$p.$v.*.out | awk '{print $7/1000}' | median) ;;
        *) cyc="-"; pause="-" ;;
        esac
        awk -v p="$p" -v v="$v" -v t="$t" -v r="$r" -v bt="$bt" -v br="$br" -v c="$cyc" -v ps="$pause" -v cpu="$cpu" 'BEGIN {
            rt = (t == "-" || bt == 0) ? "-" : sprintf("%.2f", t / bt);
            rr = (r == "-" || br == 0) ? "-" : sprintf("%.2f", r / br);
            rm = (r == "-") ? "-" : sprintf("%.1f", r / 1024);
            pm = (ps == "-") ? "-" : sprintf("%.1f", ps);
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p, v, t, rm, c, pm, rt, rr, cpu }'
    done
done
} | tee "$OUT/gcbench.md"
echo
echo "args: binary_trees $BT_ARGS; leak_list $LL_ARGS; N=$N; raw runs in $OUT/runs/"
echo "targets: magpie time <= Boehm time (ratio <= 1.00), magpie peak RSS <= 2x Boehm (RSS ratio <= 2.00)"
exit $fail

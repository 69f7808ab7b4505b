#!/usr/bin/env bash
# Leak-hunt benchmark (issue 5): the same programs under glibc, magpie with
# the collector off, magpie's leakcheck (MAGPIE_GC=leakcheck, 8-frame stacks),
# and valgrind --leak-check=full. Medians of N runs, interleaved; ratios to
# glibc and valgrind-to-leakcheck. Also checks that leakcheck and valgrind
# find the leaks leaky_server says it made.
# Usage: bash benches/leak/run.sh     (env: N=3 REQUESTS=400000 VALGRIND=1;
#        TABLE_ONLY=1 prints the table again from the last runs)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${N:-3}
REQUESTS=${REQUESTS:-400000}
VALGRIND=${VALGRIND:-1}
OUT=$ROOT/target/leakbench
LIB=$ROOT/target/release/libmagpie.so
CC=${CC:-gcc}

. benches/common.sh
need_pkg "test -x /usr/bin/time" time
if [ "$VALGRIND" = 1 ]; then need_pkg "command -v valgrind" valgrind; fi
need_pkg "command -v sqlite3" sqlite3
need_pkg "command -v lua5.4" lua5.4

TABLE_ONLY=${TABLE_ONLY:-0}
if [ "$TABLE_ONLY" != 1 ]; then
    cargo build --release >&2
    rm -rf "$OUT"; mkdir -p "$OUT/runs" "$OUT/home"
    # A private copy: rebuilding the tree while this runs must not change what is measured.
    cp "$LIB" "$OUT/libmagpie.so"; LIB=$OUT/libmagpie.so
    $CC -O2 -g -o "$OUT/leaky_server" benches/leak/leaky_server.c
fi

PROGS="leaky_server sqlite lua"
VARIANTS="glibc magpie-off leakcheck"
[ "$VALGRIND" = 1 ] && VARIANTS="$VARIANTS valgrind"

cmd_of() {
    case $1 in
    leaky_server) echo "$OUT/leaky_server $REQUESTS" ;;
    sqlite) echo "sqlite3 :memory:" ;;
    lua) echo "lua5.4 $ROOT/tests/programs/tables.lua" ;;
    esac
}
stdin_of() { case $1 in sqlite) echo "$ROOT/tests/programs/queries.sql" ;; *) echo /dev/null ;; esac; }

run_one() { # prog variant i
    local p=$1 v=$2 base="$OUT/runs/$1.$2.$3" cmd in
    cmd=$(cmd_of "$p"); in=$(stdin_of "$p")
    local envs=(env -i PATH=/usr/bin:/bin HOME="$OUT/home" LC_ALL=C)
    case $v in
    glibc) ;;
    magpie-off) envs+=(MAGPIE_GC=off LD_PRELOAD="$LIB") ;;
    leakcheck) envs+=(MAGPIE_GC=leakcheck LD_PRELOAD="$LIB") ;;
    valgrind) cmd="valgrind -q --leak-check=full --show-leak-kinds=definite,indirect --error-exitcode=0 $cmd" ;;
    esac
    (cd "$OUT/home" && /usr/bin/time -o "$base.time" -f "%e %M" "${envs[@]}" $cmd <"$in" >"$base.out" 2>"$base.err") || {
        echo "FAILURE: $p ($v) run $3; stderr:" >&2; tail -20 "$base.err" >&2; exit 1; }
}

[ "$TABLE_ONLY" = 1 ] || for i in $(seq 1 "$N"); do
    for p in $PROGS; do
        for v in $VARIANTS; do
            echo "run $p $v $i" >&2
            run_one "$p" "$v" "$i"
        done
    done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
t_of() { cat "$OUT"/runs/$1.$2.*.time | awk '{print $1}' | median; }
r_of() { cat "$OUT"/runs/$1.$2.*.time | awk '{print $2/1024}' | median; }

# Outputs must agree across variants (valgrind's and magpie's reports go to stderr).
for p in $PROGS; do
    if [ "$(md5sum "$OUT"/runs/$p.*.out | awk '{print $1}' | sort -u | wc -l)" -ne 1 ]; then
        echo "OUTPUT MISMATCH for $p" >&2; exit 1
    fi
done

{
echo "| program | glibc (s) | magpie off | leakcheck | leakcheck / glibc | valgrind | valgrind / leakcheck | leakcheck peak RSS (MiB) | leaks found by leakcheck | by valgrind (definitely+indirectly lost) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
for p in $PROGS; do
    g=$(t_of $p glibc); o=$(t_of $p magpie-off); l=$(t_of $p leakcheck)
    v=$([ "$VALGRIND" = 1 ] && t_of $p valgrind || echo -)
    rl=$(r_of $p leakcheck)
    lf=$(grep -h '^magpie: total:' "$OUT"/runs/$p.leakcheck.1.err | sed 's/magpie: total: //')
    vf=-
    if [ "$VALGRIND" = 1 ]; then
        # Loss records: "N bytes in K blocks are definitely|indirectly lost",
        # or "N (D direct, I indirect) bytes in K blocks ..." (the indirect
        # bytes have records of their own).
        vf=$( (grep -E 'are (definitely|indirectly) lost in loss record' "$OUT"/runs/$p.valgrind.1.err || true) |
            sed -e 's/^==[0-9]*== //' -e 's/,//g' -e 's/^[0-9]* (\([0-9]*\) direct [0-9]* indirect)/\1/' |
            awk '{b += $1; o += $4} END {printf "%d bytes in %d objects", b, o}' || true)
    fi
    awk -v p="$p" -v g="$g" -v o="$o" -v l="$l" -v v="$v" -v rl="$rl" -v lf="$lf" -v vf="$vf" 'BEGIN {
        lg = sprintf("%.2f", l / g); vl = (v == "-") ? "-" : sprintf("%.1f", v / l);
        printf "| %s | %s | %s | %s | %s | %s | %s | %.1f | %s | %s |\n", p, g, o, l, lg, v, vl, rl, lf, vf }'
done
} | tee "$OUT/leakbench.md"
echo
echo "leaky_server says: $(grep -h '^leaked:' "$OUT"/runs/leaky_server.glibc.1.out)"
echo "N=$N REQUESTS=$REQUESTS; raw runs in $OUT/runs/"
echo "targets: leakcheck <= 2x glibc; valgrind >= 10x leakcheck"

#!/bin/sh
# A git workload run by tests/real_programs.rs in an empty directory, once on
# glibc's malloc and once with magpie preloaded (into sh and every git
# process). Fixed identities and dates make every hash, and so the output,
# deterministic. Usage: sh git_workload.sh GIT DIR
set -eu
GIT=$1
cd "$2"
export GIT_AUTHOR_NAME="Ann Author" GIT_AUTHOR_EMAIL=ann@example.com
export GIT_COMMITTER_NAME="Cy Committer" GIT_COMMITTER_EMAIL=cy@example.com
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null HOME="$PWD" TZ=UTC LC_ALL=C
g() { "$GIT" -c init.defaultBranch=main -c pack.threads=1 -c gc.auto=0 -c core.pager=cat "$@"; }
tick=1700000000
commit() {
    tick=$((tick + 3600))
    GIT_AUTHOR_DATE="@$tick +0000" GIT_COMMITTER_DATE="@$tick +0000" g commit -q "$@"
}

g init -q repo
cd repo
for round in $(seq 1 20); do
    mkdir -p "dir$((round % 4))"
    awk -v r="$round" 'BEGIN { for (i = 1; i <= 400; i++) printf "line %d of round %d: %d\n", i, r, (i * r * 7919) % 10007 }' > "dir$((round % 4))/file$round.txt"
    awk -v r="$round" 'BEGIN { for (i = 1; i <= 2000; i++) printf "%d %d\n", i, (i * 31 + r) % 997 }' > shared.txt
    g add -A
    commit -m "round $round" -m "adds file$round and rewrites shared.txt"
done
GIT_COMMITTER_DATE="@$tick +0000" g tag -a v1 -m "version 1"
g checkout -q -b feature HEAD~4
for k in 1 2 3; do
    echo "feature change $k" >> dir1/file5.txt
    g add -A
    commit -m "feature $k"
done
g checkout -q main
tick=$((tick + 3600))
GIT_AUTHOR_DATE="@$tick +0000" GIT_COMMITTER_DATE="@$tick +0000" g merge -q --no-edit feature
g log --graph --stat --format='%H %an %ad %s' --date=iso-strict
g log --format='%h %s' --reverse main~3..main
g diff --stat v1 main
g show --format='%T' -s HEAD
g blame -s dir1/file5.txt | tail -5
g ls-tree -r HEAD | head -20
g rev-list --count --all
g gc -q --prune=now
g fsck --full --strict 2>&1
g count-objects -v | grep -v size
g rev-parse HEAD HEAD^{tree} v1
g cat-file -p HEAD
g archive --format=tar HEAD | cksum
g grep -c 'round 1' | head -5

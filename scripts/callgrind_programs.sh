#!/usr/bin/env bash
# Instructions (callgrind, every process of the run) of six short real
# workloads and of /bin/true (start-up), under glibc and each allocator
# by LD_PRELOAD: deterministic, so that a change of a percent shows.
#   python-json  python3 builds, dumps and loads 60,000 small dicts as JSON
#   perl-hash    perl fills a 150,000-key hash and joins its sorted keys
#   sqlite       sqlite3 inserts 60,000 rows with an index in :memory:
#   git-log      git log -p -n 150 over this repository
#   gcc          gcc -O2 -c core/large.c
#   lua          lua5.4 builds and joins 200,000 strings
#   true         /bin/true
# usage: scripts/callgrind_programs.sh [workload ...]
# Environment: HAK_TEST_LIB (default out/release/libhakmem.so), HAK_PEER_DIR
# (default /usr/lib/x86_64-linux-gnu) for libmimalloc.so.2, libjemalloc.so.2
# and libtcmalloc_minimal.so.4; a missing program or peer prints "-".
# Prints one line per workload: name, then millions of instructions for
# glibc, hakmem, mimalloc, jemalloc, tcmalloc.
set -u
export PERL_HASH_SEED=0 PYTHONHASHSEED=0 # the same run every time
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$ROOT/scripts/callgrind_programs.sh

run() {
    case $1 in
    python-json) python3 -c "import json; d=[{'a':i,'b':str(i)*3,'c':[i]*5} for i in range(60000)]; s=json.dumps(d); print(len(json.loads(s)))" ;;
    perl-hash) perl -e 'my %h; $h{$_} = "x" x ($_ % 100) for 1..150000; my $s = join(",", sort keys %h); print length($s), "\n"' ;;
    sqlite) sqlite3 :memory: "create table t(a,b); with recursive c(x) as (select 1 union all select x+1 from c where x<60000) insert into t select x, hex(randomblob(20)) from c; create index i on t(b); select count(*) from t;" ;;
    git-log) git -C "$ROOT" log -p -n 150 | wc -c ;;
    gcc) gcc -O2 -I"$ROOT/include" -I"$ROOT/core" -c "$ROOT/core/large.c" -o "$TMP/large.o" ;;
    lua) lua5.4 -e "local t={} for i=1,200000 do t[i]=tostring(i)..'x' end print(#table.concat(t))" ;;
    esac
}
needs() {
    case $1 in
    python-json) echo python3 ;; perl-hash) echo perl ;; sqlite) echo sqlite3 ;;
    git-log) echo git ;; gcc) echo gcc ;; lua) echo lua5.4 ;; true) echo true ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
    esac
}
# (valgrind drops exported functions: the script runs itself)
if [ "${1:-}" = --run ]; then TMP=$3; run "$2"; exit; fi
LIB=${HAK_TEST_LIB:-$ROOT/out/release/libhakmem.so}
PEERS=${HAK_PEER_DIR:-/usr/lib/x86_64-linux-gnu}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
command -v valgrind >/dev/null || { echo "callgrind_programs: valgrind is not installed" >&2; exit 2; }
[ $# -gt 0 ] || set -- python-json perl-hash sqlite git-log gcc lua true
echo "workload glibc hakmem mimalloc jemalloc tcmalloc (millions of instructions)"
for w in "$@"; do
    line=$w
    command -v "$(needs "$w")" >/dev/null || { echo "$w: not installed"; continue; }
    for lib in glibc "$LIB" "$PEERS/libmimalloc.so.2" "$PEERS/libjemalloc.so.2" "$PEERS/libtcmalloc_minimal.so.4"; do
        if [ "$lib" != glibc ] && [ ! -e "$lib" ]; then line="$line -"; continue; fi
        rm -f "$TMP"/cg.*
        pre=(); [ "$lib" = glibc ] || pre=(env LD_PRELOAD="$lib")
        cmd=(bash "$SELF" --run "$w" "$TMP") # (bash counts too, under the same allocator)
        [ "$w" = true ] && cmd=(/bin/true)
        "${pre[@]}" valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$TMP/cg.%p.%n" \
            "${cmd[@]}" >/dev/null 2>"$TMP/err"
        line="$line $(awk '/^summary:/ {s += $2} END {printf "%.3f", s / 1e6}' "$TMP"/cg.*)"
    done
    echo "$line"
done

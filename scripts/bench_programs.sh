#!/usr/bin/env bash
# Real programs under each allocator (LD_PRELOAD): wall time and peak RSS.
#   python     json and dicts: 150,000 small objects dumped, parsed, indexed
#              (Python's own small-object allocator in front of malloc)
#   python-malloc  the same with PYTHONMALLOC=malloc: every object a malloc
#   perl       a hash of 200,000 keys holding arrays, sorted
#   sqlite     200,000 rows with blobs in memory, two indexes, aggregates
#   gcc        cc -O2 -c of five of hakmem's own sources, one after another
#   git        git log -p and git grep over this repository
#   redis      redis-benchmark SET/GET/LPUSH/LPOP against redis-server
#              (the server under the allocator; skipped if not installed)
#
# usage: scripts/bench_programs.sh [--runs N] [--only "python perl ..."]
# Environment: HAK_TEST_LIB (default out/release/libhakmem.so); HAK_PEER_DIR
# as for bench_scale.sh.  Each figure is the median of N runs (default 5),
# interleaved across allocators; every run's output is compared with
# glibc's, and a difference is reported and fails the script.
# Writes out/bench-programs/programs.csv and prints the table.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/out/bench-programs
RUNS=5
ONLY="python python-malloc perl sqlite gcc git redis"
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift ;;
        --only) ONLY=$2; shift ;;
        *) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
    shift
done
HAK=${HAK_TEST_LIB:-$ROOT/out/release/libhakmem.so}
[ -f "$HAK" ] || { echo "bench_programs: $HAK not built (make)" >&2; exit 2; }
PEER_DIR=${HAK_PEER_DIR:-/usr/lib/x86_64-linux-gnu}
names=(glibc hakmem)
libs=("" "$HAK")
for p in tcmalloc=libtcmalloc_minimal.so.4 mimalloc=libmimalloc.so.2 jemalloc=libjemalloc.so.2; do
    if [ -f "$PEER_DIR/${p#*=}" ]; then names+=("${p%%=*}"); libs+=("$PEER_DIR/${p#*=}"); fi
done
mkdir -p "$OUT/work"
W=$OUT/work
# The real interpreter, not a version manager's shell shim in front of it.
PY=$(python3 -c 'import sys; print(sys.executable)' 2> /dev/null)

cat > "$W/py.py" <<'EOF'
import json, random
random.seed(1)
d = [{"id": i, "name": "item%d" % i, "tags": [str(j) for j in range(i % 17)], "v": random.random()}
     for i in range(150000)]
s = json.dumps(d)
e = json.loads(s)
idx = {}
for o in e:
    idx.setdefault(len(o["tags"]), []).append(o["name"])
print(len(s), sum(len(v) for v in idx.values()))
EOF
cat > "$W/pl.pl" <<'EOF'
my %h;
for my $i (1 .. 200000) { $h{"key$i"} = [ map { "v$_" } 1 .. ($i % 13) ]; }
my @k = sort { length($a) <=> length($b) or $a cmp $b } keys %h;
my $n = 0;
$n += scalar(@{ $h{$_} }) for @k;
print scalar(@k), " $n\n";
EOF
cat > "$W/sq.sql" <<'EOF'
CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b BLOB, c INTEGER);
WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 200000)
INSERT INTO t SELECT i, printf('name-%d-%d', i, (i * 7919) % 100003), zeroblob((i * 31) % 300), (i * 131) % 1000 FROM r;
CREATE INDEX ta ON t(a);
CREATE INDEX tc ON t(c);
SELECT c % 10, count(*), sum(length(b)) FROM t GROUP BY c % 10 ORDER BY 1 LIMIT 3;
SELECT count(DISTINCT substr(a, 1, 9)) FROM t;
EOF

# Each workload: a command line run by bash in $W; stdout is compared.
workload() {
    case $1 in
        python) echo "'$PY' py.py" ;;
        python-malloc) echo "PYTHONMALLOC=malloc '$PY' py.py" ;;
        perl) echo "perl pl.pl" ;;
        sqlite) echo "sqlite3 :memory: < sq.sql" ;;
        gcc) echo "for f in extent span heap free large_cache; do cc -O2 -I'$ROOT/include' -I'$ROOT/core' -D_GNU_SOURCE -c '$ROOT'/core/\$f.c -o gcc.o || exit 1; done; echo ok" ;;
        git) echo "git -C '$ROOT' log -p --no-color -n 300 | wc -l; git -C '$ROOT' grep -c -e static -e inline | wc -l" ;;
        redis) echo "bash '$W/redis.sh'" ;;
    esac
}
cat > "$W/redis.sh" <<'EOF'
# The server runs under LD_PRELOAD (inherited), its clients do not.  A
# port below the ephemeral range, so that no client's socket holds it.
cli() { env -u LD_PRELOAD "$@"; }
port=$((20000 + RANDOM % 12000))
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no > redis.log 2>&1 &
srv=$!
up=0
for _ in $(seq 100); do
    [ "$(cli redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && { up=1; break; }
    sleep 0.05
done
[ $up = 1 ] || { echo "redis-server did not start" >&2; cat redis.log >&2; kill $srv; exit 1; }
cli timeout 120 redis-benchmark -p "$port" -q -n 100000 -P 16 -d 200 -r 50000 -t set,get,lpush,lpop > /dev/null || echo "redis-benchmark failed"
cli redis-cli -p "$port" set hakmem-check ok > /dev/null
cli redis-cli -p "$port" get hakmem-check
cli redis-cli -p "$port" shutdown nosave > /dev/null 2>&1
wait "$srv" || { echo "redis-server exited with status $?"; cat redis.log >&2; }
EOF

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
declare -A secs rss
fail=0
todo=()
for w in $ONLY; do
    case $w in
        python | python-malloc) need=python3 ;;
        sqlite) need=sqlite3 ;;
        gcc) need=cc ;;
        redis) need="redis-server redis-benchmark redis-cli" ;;
        *) need=$w ;;
    esac
    missing=
    for c in $need; do command -v "$c" > /dev/null || missing+=" $c"; done
    [ -z "$missing" ] || { echo "SKIP $w (not installed:$missing)"; continue; }
    todo+=("$w")
done
for w in "${todo[@]}"; do
    cmd=$(workload "$w")
    (cd "$W" && env -u LD_PRELOAD bash -c "$cmd") > "$W/$w.want" 2> /dev/null
    for ((r = 0; r < RUNS; r++)); do
        for i in "${!names[@]}"; do
            n=${names[$i]}
            (cd "$W" && LD_PRELOAD=${libs[$i]} /usr/bin/time -f "%e %M" -o "$W/time" bash -c "$cmd") > "$W/got" 2> "$W/err"
            if ! cmp -s "$W/got" "$W/$w.want"; then
                echo "bench_programs: $w under $n: output differs from glibc's:" >&2
                diff "$W/$w.want" "$W/got" | head -5 >&2
                head -5 "$W/err" >&2
                fail=1
            fi
            # (the last line: a failed command's status comes first)
            read -r t m < <(tail -n 1 "$W/time")
            secs[$w,$n]+="$t "
            rss[$w,$n]+="$m "
        done
    done
done

printf 'workload,allocator,seconds,peak_rss_kib\n' > "$OUT/programs.csv"
printf '| program | %s |\n|---|%s\n' "$(IFS='|'; echo "${names[*]}" | sed 's/|/ | /g')" "$(printf -- '---:|%.0s' "${names[@]}")"
for w in "${todo[@]}"; do
    line="| $w |"
    for n in "${names[@]}"; do
        t=$(echo "${secs[$w,$n]}" | tr ' ' '\n' | grep . | median)
        m=$(echo "${rss[$w,$n]}" | tr ' ' '\n' | grep . | median)
        printf '%s,%s,%s,%s\n' "$w" "$n" "$t" "$m" >> "$OUT/programs.csv"
        line+=" $t s / $((m / 1024)) MB |"
    done
    echo "$line"
done
echo "(medians of $RUNS interleaved runs; wall seconds / peak RSS of the largest process)"
exit $fail

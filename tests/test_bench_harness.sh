#!/usr/bin/env bash
# Smoke test of the benchmark harness: tiny arguments, glibc + hakmem, two
# benchmarks; checks the table, results.csv, runs.csv and the SVG charts.
# Run from the repo root (tests/run.sh); HAK_TEST_LIB selects the library.
# Exits 0 on success, else prints a one-line reason and exits 1.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export HAK_TEST_LIB=${HAK_TEST_LIB:-$ROOT/out/release/libhakmem.so}
case $HAK_TEST_LIB in /*) ;; *) HAK_TEST_LIB=$PWD/$HAK_TEST_LIB ;; esac
TMP=$(mktemp -d "${TMPDIR:-/tmp}/hakmem-bench-test.XXXXXX") || { echo "FAIL: mktemp"; exit 1; }
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL test_bench_harness: $*"; exit 1; }

[ -e "$HAK_TEST_LIB" ] || fail "library $HAK_TEST_LIB not found"
for b in bench_random_mixed larson; do
    [ -x "$ROOT/out/release/$b" ] || fail "out/release/$b not built"
done

OUT=$TMP/x
timeout -k 2 25 bash "$ROOT/scripts/bench.sh" --smoke --runs 1 \
    --only bench_random_mixed,larson --allocators glibc,hakmem --out "$OUT" \
    >"$TMP/stdout" 2>"$TMP/stderr"
rc=$?
[ $rc -eq 124 ] && fail "harness timed out"
[ $rc -eq 0 ] || fail "harness exited $rc: $(grep -m1 'FAIL' "$TMP/stderr" || tail -n 1 "$TMP/stderr")"

grep -q '^benchmark  *allocator' "$TMP/stdout" || fail "no table header on stdout"
for b in bench_random_mixed larson; do
    for a in glibc hakmem; do
        grep -Eq "^$b +$a +1/1 " "$TMP/stdout" || fail "no ok table row for $b/$a"
    done
done
grep -q '\[bench 2/2\] larson' "$TMP/stderr" || fail "no progress lines on stderr"

python3 - "$OUT" <<'PY' || exit 1
import csv, os, sys
import xml.etree.ElementTree as ET
out = sys.argv[1]
def fail(msg):
    print("FAIL test_bench_harness: " + msg)
    sys.exit(1)
hdr = ("benchmark,allocator,runs,throughput_median,throughput_min,throughput_max,"
       "wall_median_s,rss_peak_median_kb,mmap,munmap,madvise,mremap,futex,brk").split(",")
path = os.path.join(out, "results.csv")
if not os.path.exists(path):
    fail("results.csv missing")
with open(path, newline="") as f:
    rows = list(csv.reader(f))
if not rows or rows[0] != hdr:
    fail("results.csv header wrong: %r" % (rows[0] if rows else None))
want = {(b, a) for b in ("bench_random_mixed", "larson") for a in ("glibc", "hakmem")}
seen = set()
for r in rows[1:]:
    if len(r) != len(hdr):
        fail("results.csv row has %d fields: %r" % (len(r), r))
    key = (r[0], r[1])
    if key not in want or key in seen:
        fail("unexpected or duplicate row %r" % (key,))
    seen.add(key)
    if r[2] != "1":
        fail("row %r: runs=%s, expected 1" % (key, r[2]))
    for name, v in zip(hdr[3:8], r[3:8]):
        try:
            x = float(v)
        except ValueError:
            fail("row %r: %s=%r not numeric" % (key, name, v))
        if name.startswith("throughput") and x <= 0:
            fail("row %r: %s=%r not positive" % (key, name, v))
    for name, v in zip(hdr[8:], r[8:]):
        if v != "NA" and not v.isdigit():      # NA only when strace is unavailable
            fail("row %r: %s=%r not a count" % (key, name, v))
if seen != want:
    fail("results.csv rows missing: %r" % sorted(want - seen))
with open(os.path.join(out, "runs.csv"), newline="") as f:
    runs = list(csv.DictReader(f))
if len(runs) != 4 or any(r["status"] != "ok" for r in runs):
    fail("runs.csv should have 4 ok runs, has %r" % [(r["benchmark"], r["allocator"], r["status"]) for r in runs])
for svg in ("chart.svg", "rss.svg"):
    p = os.path.join(out, svg)
    try:
        root = ET.parse(p).getroot()
    except (OSError, ET.ParseError) as e:
        fail("%s not well-formed: %s" % (svg, e))
    if root.tag != "{http://www.w3.org/2000/svg}svg" or len(root.findall(".//{http://www.w3.org/2000/svg}rect")) < 4:
        fail("%s is not an SVG bar chart" % svg)
if not os.path.getsize(os.path.join(out, "machine.txt")):
    fail("machine.txt empty")
PY
# The scaling harness: two thread counts, every workload, a CSV row per
# allocator and point with positive throughput and RSS, and a parseable SVG.
SCALE="$OUT/scale"
bash "$ROOT/scripts/bench_scale.sh" --quick --threads "1 2" --out "$SCALE" > "$SCALE.log" 2>&1 ||
    { tail -n 20 "$SCALE.log"; fail "bench_scale.sh exited with $?"; }
python3 - "$SCALE" <<'PY' || exit 1
import csv, os, sys
import xml.etree.ElementTree as ET
d = sys.argv[1]
def fail(msg):
    print("FAIL test_bench_harness: bench_scale: " + msg)
    sys.exit(1)
rows = list(csv.DictReader(open(os.path.join(d, "scale.csv"))))
got = {(r["workload"], r["allocator"], r["threads"]) for r in rows
       if float(r["ops_per_s"]) > 0 and int(r["peak_rss_kib"]) > 0}
want = {(w, a, t) for w in ("prodcons", "pairs", "larson", "large") for a in ("glibc", "hakmem") for t in ("1", "2")}
if not want <= got:
    fail("missing or empty points: %r" % sorted(want - got))
root = ET.parse(os.path.join(d, "scale.svg")).getroot()
if len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) < 8:
    fail("scale.svg has too few lines")
PY
echo "PASS test_bench_harness"

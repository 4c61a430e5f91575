#!/usr/bin/env python3
"""Table and SVG chart of scripts/bench_scale.sh's CSV.

usage: bench_scale_report.py SCALE.CSV OUT.SVG NCPU
Prints, per workload, throughput (and peak RSS) against threads for each
allocator, and draws one panel per workload: throughput (log scale) against
threads, one line per allocator."""
import csv
import math
import sys

COLOURS = {"hakmem": "#d62728", "glibc": "#7f7f7f", "mimalloc": "#1f77b4",
           "jemalloc": "#2ca02c", "tcmalloc": "#ff7f0e"}


def human(x):
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return "%.2f%s" % (x / div, unit)
    return "%d" % x


def main():
    path, svg_path, ncpu = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = list(csv.DictReader(open(path)))
    works = list(dict.fromkeys(r["workload"] for r in rows))
    allocs = list(dict.fromkeys(r["allocator"] for r in rows))
    data = {(r["workload"], r["allocator"], int(r["threads"])):
            (float(r["ops_per_s"]), int(r["peak_rss_kib"])) for r in rows}
    for w in works:
        ts = sorted({t for (ww, _, t) in data if ww == w})
        print("\n%s: ops/s (peak RSS MiB) by threads, %s cores" % (w, ncpu))
        print("%-10s" % "allocator" + "".join("%18d" % t for t in ts))
        for a in allocs:
            cells = []
            for t in ts:
                v = data.get((w, a, t))
                cells.append("%18s" % ("%s (%.0f)" % (human(v[0]), v[1] / 1024) if v else "-"))
            print("%-10s" % a + "".join(cells))
        if ("hakmem" in allocs) and ts:
            lo, hi = data.get((w, "hakmem", ts[0])), data.get((w, "hakmem", ts[-1]))
            if lo and hi and lo[0] > 0:
                print("hakmem %d -> %d threads: x%.1f" % (ts[0], ts[-1], hi[0] / lo[0]))

    # one panel per workload
    pw, ph, pad = 360, 260, 50
    width = pw * len(works) + 20
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="11">' % (width, ph + 70)]
    for i, w in enumerate(works):
        x0 = 10 + i * pw
        pts = [(t, v[0]) for (ww, a, t), v in data.items() if ww == w and v[0] > 0]
        if not pts:
            continue
        ts = sorted({t for t, _ in pts})
        vmax = max(v for _, v in pts)
        vmin = min(v for _, v in pts)
        lmin, lmax = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))
        if lmax == lmin:
            lmax += 1

        def px(t):
            k = ts.index(t)
            return x0 + pad + (pw - pad - 20) * (k / max(1, len(ts) - 1))

        def py(v):
            return 20 + (ph - 40) * (1 - (math.log10(v) - lmin) / (lmax - lmin))
        out.append('<text x="%d" y="14" font-weight="bold">%s (ops/s, log)</text>' % (x0 + pad, w))
        for e in range(lmin, lmax + 1):
            y = py(10 ** e)
            out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' %
                       (x0 + pad, x0 + pw - 20, y, y))
            out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' %
                       (x0 + pad - 4, y + 4, human(10 ** e)))
        for t in ts:
            out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (px(t), ph - 2, t))
        out.append('<text x="%d" y="%d">threads</text>' % (x0 + pw // 2 - 20, ph + 14))
        for a in allocs:
            line = [(px(t), py(data[(w, a, t)][0])) for t in ts
                    if (w, a, t) in data and data[(w, a, t)][0] > 0]
            if len(line) > 1:
                out.append('<polyline fill="none" stroke="%s" stroke-width="%d" points="%s"/>' %
                           (COLOURS.get(a, "#000"), 3 if a == "hakmem" else 1.5,
                            " ".join("%.1f,%.1f" % p for p in line)))
    for k, a in enumerate(allocs):
        out.append('<rect x="%d" y="%d" width="12" height="4" fill="%s"/><text x="%d" y="%d">%s</text>'
                   % (60 + k * 100, ph + 36, COLOURS.get(a, "#000"), 76 + k * 100, ph + 41, a))
    out.append("</svg>")
    open(svg_path, "w").write("\n".join(out) + "\n")
    print("\nwrote %s and %s" % (path, svg_path))


if __name__ == "__main__":
    main()

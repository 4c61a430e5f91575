#!/usr/bin/env python3
"""Summarise scripts/bench.sh raw data (standard library only).

Reads OUT/runs.csv and OUT/syscalls.csv, prints a plain-text table on stdout
and writes OUT/results.csv, OUT/chart.svg (throughput relative to glibc) and
OUT/rss.svg (peak RSS relative to glibc).
"""
import argparse
import csv
import os
import statistics
import sys
from xml.sax.saxutils import escape

SYSCALLS = ["mmap", "munmap", "madvise", "mremap", "futex", "brk"]
RESULT_FIELDS = ["benchmark", "allocator", "runs", "throughput_median", "throughput_min",
                 "throughput_max", "wall_median_s", "rss_peak_median_kb"] + SYSCALLS
COLOURS = {"glibc": "#7f7f7f", "hakmem": "#d62728", "mimalloc": "#1f77b4",
           "jemalloc": "#2ca02c", "tcmalloc": "#ff7f0e"}
EXTRA_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def fmt_int(x):
    return "NA" if x is None else str(int(round(x)))


def fmt_float(x, nd=3):
    return "NA" if x is None else f"{x:.{nd}f}"


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summarise(out, benches, allocs):
    runs = read_csv(os.path.join(out, "runs.csv"))
    sysrows = {(r["benchmark"], r["allocator"]): r for r in read_csv(os.path.join(out, "syscalls.csv"))}
    res = {}
    for b in benches:
        for a in allocs:
            rr = [r for r in runs if r["benchmark"] == b and r["allocator"] == a]
            ok = [r for r in rr if r["status"] == "ok" and num(r["throughput"]) is not None]
            thr = [num(r["throughput"]) for r in ok]
            wall = [num(r["wall_s"]) for r in ok if num(r["wall_s"]) is not None]
            rss = [num(r["rss_peak_kb"]) for r in ok if num(r["rss_peak_kb"]) is not None]
            s = sysrows.get((b, a))
            sc = {k: (s[k] if s and s["status"] == "ok" else ("FAIL" if s else "NA")) for k in SYSCALLS}
            res[(b, a)] = {
                "attempted": len(rr), "ok": len(ok),
                "thr_med": statistics.median(thr) if thr else None,
                "thr_min": min(thr) if thr else None,
                "thr_max": max(thr) if thr else None,
                "wall_med": statistics.median(wall) if wall else None,
                "rss_med": statistics.median(rss) if rss else None,
                "sys": sc,
            }
    return res


def write_results(out, benches, allocs, res):
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(RESULT_FIELDS)
        for b in benches:
            for a in allocs:
                r = res[(b, a)]
                w.writerow([b, a, r["ok"], fmt_int(r["thr_med"]), fmt_int(r["thr_min"]),
                            fmt_int(r["thr_max"]), fmt_float(r["wall_med"]), fmt_int(r["rss_med"])]
                           + [r["sys"][k] for k in SYSCALLS])


def human(x):
    if x is None:
        return "NA"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.2f}{suf}"
    return f"{x:.0f}"


def print_table(benches, allocs, res):
    head = ["benchmark", "allocator", "ok", "thr_median", "thr_min", "thr_max", "vs_glibc",
            "wall_s", "rss_kb"] + SYSCALLS
    rows = []
    for b in benches:
        base = res.get((b, "glibc"), {}).get("thr_med")
        for a in allocs:
            r = res[(b, a)]
            if r["ok"] == 0:
                rows.append([b, a, f"0/{r['attempted']}", "FAIL", "FAIL", "FAIL", "-", "-", "-"]
                            + [r["sys"][k] for k in SYSCALLS])
                continue
            rel = f"{r['thr_med'] / base:.2f}x" if base else "-"
            rows.append([b, a, f"{r['ok']}/{r['attempted']}", human(r["thr_med"]), human(r["thr_min"]),
                         human(r["thr_max"]), rel, fmt_float(r["wall_med"], 2), fmt_int(r["rss_med"])]
                        + [r["sys"][k] for k in SYSCALLS])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    print("Throughput in ops/s (median over ok runs); vs_glibc = median / glibc median")
    print(line(head))
    print("  ".join("-" * w for w in widths))
    prev = None
    for row in rows:
        if prev is not None and row[0] != prev:
            print()
        prev = row[0]
        print(line(row))


def colour(a, allocs):
    if a in COLOURS:
        return COLOURS[a]
    extra = [x for x in allocs if x not in COLOURS]
    return EXTRA_COLOURS[extra.index(a) % len(EXTRA_COLOURS)]


def nice_ticks(vmax):
    """Tick step giving about 5 ticks up to at least vmax."""
    for step in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100, 200, 500, 1000):
        if vmax / step <= 6:
            break
    top = step * (int(vmax / step) + 1)
    return step, top


def write_chart(path, title, ylabel, benches, allocs, values):
    """values[(b, a)] = ratio to glibc, or None (failed / no baseline)."""
    nb, na = len(benches), len(allocs)
    bar_w, gap = 18, 28
    group_w = na * bar_w + gap
    left, right, top, bottom = 70, 20, 50, 110
    legend_w = 130
    plot_w = max(group_w * nb, 200)
    plot_h = 300
    W = left + plot_w + right + legend_w
    H = top + plot_h + bottom
    finite = [v for v in values.values() if v is not None]
    step, ymax = nice_ticks(max(finite + [1.0]))
    y = lambda v: top + plot_h - plot_h * (v / ymax)
    o = []
    o.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">')
    o.append(f'<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>')
    o.append(f'<text x="{left + plot_w / 2:.1f}" y="24" text-anchor="middle" font-size="15" '
             f'font-weight="bold">{escape(title)}</text>')
    # grid + y axis
    t = 0.0
    while t <= ymax + 1e-9:
        yy = y(t)
        o.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + plot_w}" y2="{yy:.1f}" '
                 f'stroke="#dddddd" stroke-width="1"/>')
        o.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{t:g}</text>')
        t += step
    o.append(f'<line x1="{left}" y1="{y(1.0):.1f}" x2="{left + plot_w}" y2="{y(1.0):.1f}" '
             f'stroke="#444444" stroke-width="1" stroke-dasharray="4,3"/>')
    o.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>')
    o.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>')
    o.append(f'<text transform="translate(18,{top + plot_h / 2:.1f}) rotate(-90)" '
             f'text-anchor="middle">{escape(ylabel)}</text>')
    # bars
    for i, b in enumerate(benches):
        gx = left + gap / 2 + i * group_w
        for j, a in enumerate(allocs):
            v = values.get((b, a))
            bx = gx + j * bar_w
            if v is None:
                o.append(f'<text x="{bx + bar_w / 2:.1f}" y="{top + plot_h - 4}" font-size="8" '
                         f'text-anchor="middle" transform="rotate(-90 {bx + bar_w / 2:.1f} '
                         f'{top + plot_h - 4})">n/a</text>')
                continue
            yy = y(v)
            o.append(f'<rect x="{bx:.1f}" y="{yy:.1f}" width="{bar_w - 2}" '
                     f'height="{top + plot_h - yy:.1f}" fill="{colour(a, allocs)}">'
                     f'<title>{escape(b)} / {escape(a)}: {v:.3f}</title></rect>')
            o.append(f'<text x="{bx + bar_w / 2 - 1:.1f}" y="{yy - 3:.1f}" font-size="8" '
                     f'text-anchor="middle">{v:.2f}</text>')
        cx = gx + (na * bar_w) / 2
        ly = top + plot_h + 14
        o.append(f'<text x="{cx:.1f}" y="{ly}" text-anchor="end" '
                 f'transform="rotate(-30 {cx:.1f} {ly})">{escape(b)}</text>')
    o.append(f'<text x="{left + plot_w / 2:.1f}" y="{H - 8}" text-anchor="middle">benchmark</text>')
    # legend
    lx = left + plot_w + right
    o.append(f'<text x="{lx}" y="{top}" font-weight="bold">allocator</text>')
    for j, a in enumerate(allocs):
        ly = top + 14 + j * 18
        o.append(f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{colour(a, allocs)}"/>')
        o.append(f'<text x="{lx + 18}" y="{ly + 10}">{escape(a)}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def ratios(benches, allocs, res, key):
    vals = {}
    for b in benches:
        base = res.get((b, "glibc"), {}).get(key)
        for a in allocs:
            v = res[(b, a)][key]
            vals[(b, a)] = (v / base) if (base and v is not None) else None
    return vals


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--allocators", required=True)
    ap.add_argument("--benchmarks", required=True)
    args = ap.parse_args()
    allocs = [a for a in args.allocators.split(",") if a]
    benches = [b for b in args.benchmarks.split(",") if b]
    res = summarise(args.out, benches, allocs)
    write_results(args.out, benches, allocs, res)
    print_table(benches, allocs, res)
    note = "" if "glibc" in allocs else " (no glibc baseline: bars n/a)"
    write_chart(os.path.join(args.out, "chart.svg"),
                "Throughput relative to glibc (higher is better)" + note,
                "throughput / glibc throughput", benches, allocs,
                ratios(benches, allocs, res, "thr_med"))
    write_chart(os.path.join(args.out, "rss.svg"),
                "Peak RSS relative to glibc (lower is better)" + note,
                "peak RSS / glibc peak RSS", benches, allocs,
                ratios(benches, allocs, res, "rss_med"))
    print(f"\nresults: {os.path.join(args.out, 'results.csv')}  charts: chart.svg rss.svg  "
          f"machine: machine.txt", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

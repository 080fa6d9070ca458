#!/usr/bin/env python3
"""Ratio table from a Google Benchmark JSON file written by a losskit comparison benchmark.

    bench_divergence_vs_torch --benchmark_format=json --benchmark_out=out.json
    python3 bench/report.py out.json [--torch-label "libtorch 1.13 (Debian)"] [other.json --label ...]

Benchmarks are named  <kernel>/<impl>/rows:R/cols:C/threads:N  with impl in {losskit, eigen, torch},
plus  floor/rows:R/cols:C/threads:N. Every ratio compares two timings from the same run (same
file): losskit / floor (1.0 = at the memory-bandwidth floor), and baseline / losskit (speed-up).
Extra JSON files (e.g. a second build against another libtorch) add a torch column each; their
own floor is printed so that runs on a noisy machine can be compared.
"""
import json
import re
import sys
from collections import defaultdict

NAME = re.compile(r"^(?P<kernel>[a-z_]+)(?:/(?P<impl>[a-z]+))?/rows:(?P<rows>\d+)/cols:(?P<cols>\d+)/threads:(?P<threads>\d+)")


def load(path):
    with open(path) as f:
        data = json.load(f)
    times = {}
    for b in data["benchmarks"]:
        if b.get("run_type", "iteration") != "iteration":
            continue
        m = NAME.match(b["name"])
        if not m:
            continue
        kernel, impl = m["kernel"], m["impl"] or ""
        if kernel == "floor":
            kernel, impl = "floor", "floor"
        key = (kernel, impl, int(m["rows"]), int(m["cols"]), int(m["threads"]))
        ms = b["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
        times[key] = min(ms, times.get(key, float("inf")))
    return data.get("context", {}), times


def main(argv):
    files, labels = [], []
    i = 1
    while i < len(argv):
        if argv[i] in ("--label", "--torch-label"):
            labels[-1] = argv[i + 1]
            i += 2
            continue
        files.append(argv[i])
        labels.append("torch" if not labels else f"torch ({argv[i]})")
        i += 1
    if not files:
        print(__doc__)
        return 2
    ctx, t = load(files[0])
    extra = [load(f)[1] for f in files[1:]]
    shapes = sorted({(k[2], k[3], k[4]) for k in t if k[0] == "floor"}, key=lambda s: (s[0] * s[1], s[2]))
    kernels = sorted({k[0] for k in t if k[0] != "floor"})
    print(f"host: {ctx.get('host_name', '?')}, {ctx.get('num_cpus', '?')} cpus, date {ctx.get('date', '?')}")
    head = ["kernel", "shape", "threads", "losskit ms", "floor ms", "losskit/floor", "eigen/losskit"]
    head += [f"{lab}/losskit" for lab in labels]
    table = []
    for kern in kernels:
        for rows, cols, th in shapes:
            lk = t.get((kern, "losskit", rows, cols, th))
            fl = t.get(("floor", "floor", rows, cols, th))
            if lk is None or fl is None:
                continue
            eg = t.get((kern, "eigen", rows, cols, th))
            row = [kern, f"{rows}x{cols}", str(th), f"{lk:.1f}", f"{fl:.1f}", f"{lk / fl:.2f}",
                   f"{eg / lk:.1f}x" if eg else "-"]
            for tt in [t] + extra:
                to = tt.get((kern, "torch", rows, cols, th))
                row.append(f"{to / lk:.1f}x ({to:.0f} ms)" if to else "-")
            table.append(row)
    # Baseline columns without a single figure (e.g. a first file run without libtorch) are left out.
    keep = [j for j in range(len(head)) if j < 6 or any(r[j] != "-" for r in table)]
    print("| " + " | ".join(head[j] for j in keep) + " |")
    print("|" + "---|" * len(keep))
    for row in table:
        print("| " + " | ".join(row[j] for j in keep) + " |")
    # A kernel's own floor (floor_<kernel>/rows:...: a loop that moves the traffic that kernel must
    # move at the least, e.g. DPO's second read of the policy logits), as a multiple of the floor,
    # and the ratio to it of each losskit kernel whose name starts with <kernel>.
    for (kern, impl, rows, cols, th), v in sorted(t.items()):
        if not kern.startswith("floor_"):
            continue
        fl = t.get(("floor", "floor", rows, cols, th))
        own = kern[len("floor_"):]
        lks = ", ".join(f"{k[0]} {t[k] / v:.2f}" for k in sorted(t)
                        if k[1] == "losskit" and k[0].startswith(own) and k[2:] == (rows, cols, th))
        print(f"\n{kern} {rows}x{cols}/{th}t: {v:.1f} ms" + (f" = {v / fl:.2f} x floor" if fl else "") +
              (f"; losskit / {kern}: {lks}" if lks else ""))
    for lab, tt in zip(labels[1:], extra):
        fl = {k: v for k, v in tt.items() if k[0] == "floor"}
        print(f"\nfloor in the {lab} run: " + ", ".join(f"{k[2]}x{k[3]}/{k[4]}t {v:.1f} ms" for k, v in sorted(fl.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""POT side of bench/bench_sinkhorn.cpp: times ot.sinkhorn(a, b, C, eps, method='sinkhorn_log') on
the same problem (regenerated from the same splitmix64 seeds), on one thread, to the same marginal
error rule (stopThr 1e-9 on ||P^T 1 - b||_2, checked every 10 iterations, POT's default rule), and
prints the ratio to losskit when given the JSON output of bench_sinkhorn.

    build/release/bench/bench_sinkhorn --benchmark_filter=sinkhorn/ --benchmark_format=json > sk.json
    python3 bench/bench_pot.py --losskit-json sk.json       # any python with numpy and POT

Needs numpy and POT (the input generator is shared from tests/reference/refs_common.py); exits 0
with a message when one is missing.
"""

import argparse
import json
import os
import sys
import time

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = "1"  # before numpy is imported

try:
    import numpy as np
    import ot

    sys.dont_write_bytecode = True  # no __pycache__ in tests/reference
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
    from refs_common import splitmix64_u  # the shared generator (numpy only)
except ImportError as e:  # pragma: no cover
    print(f"bench_pot.py: skipped ({e})")
    sys.exit(0)


def uniform(seed, n):
    """The splitmix64 uniform of tests/reference_vectors.hpp (shared with the reference scripts)."""
    return splitmix64_u(seed, n)


def problem(n=1000):
    x = uniform(2024, 2 * n).reshape(n, 2)
    y = uniform(2025, 2 * n).reshape(n, 2)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)  # the same sum as losskit::pairwise_cost
    a = np.full(n, 1.0 / n)
    return a, a.copy(), C, 0.05 * float(np.median(C))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--losskit-json", help="JSON output of bench_sinkhorn (for the ratio)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    a, b, C, eps = problem()
    best, best_cpu, niter, err = float("inf"), float("inf"), 0, 0.0
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        P, log = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", stopThr=1e-9, numItermax=100000, log=True)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
        niter = int(log["niter"]) + 1
        err = float(np.linalg.norm(P.sum(0) - b))
    print(f"POT {ot.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}, 1 thread")
    print(f"problem: n = m = 1000, eps = {eps:.6g} (0.05 * median C), tol 1e-9 every 10 iterations")
    print(f"POT sinkhorn_log: {best * 1e3:.1f} ms wall, {best_cpu * 1e3:.1f} ms CPU (best of {args.repeats}), {niter} iterations, "
          f"||P^T 1 - b|| = {err:.3g}, cost = {float(np.sum(P * C)):.12g}")
    if args.losskit_json:
        with open(args.losskit_json) as f:
            runs = json.load(f)["benchmarks"]
        for r in runs:
            if not r["name"].startswith("sinkhorn/"):
                continue
            unit = {"ms": 1.0, "us": 1e-3, "ns": 1e-6, "s": 1e3}[r.get("time_unit", "ns")]
            ms, cpu = r["real_time"] * unit, r["cpu_time"] * unit
            print(f"losskit {r['name']:48s} {ms:8.1f} ms wall, {cpu:8.1f} ms CPU, {int(r.get('solver_iters', 0))} "
                  f"iterations; POT / losskit = {best * 1e3 / ms:.1f}x wall, {best_cpu * 1e3 / cpu:.1f}x CPU")

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generates tests/reference/sinkhorn_refs.txt: entropic OT solutions computed by POT (Python
Optimal Transport) in float64, for tests/test_sinkhorn.cpp.

    /opt/torch-current/bin/python tests/reference/gen_sinkhorn_refs.py [output]    # POT 0.9.7 (pip)
    /usr/bin/python3 tests/reference/gen_sinkhorn_refs.py [output]                 # Debian python3-pot 0.8

The committed file was made with the first command (see its header for the versions). Debian's
POT 0.8.2 reproduces every balanced case (same iteration counts, potentials and costs within
5e-15 relative) but has neither ot.solve nor the (reg_m_a, reg_m_b) / reg_type arguments of the
unbalanced solver, so the full script needs POT >= 0.9.

Inputs are not stored: both sides generate them with the counter-based splitmix64 generator of
refs_common.py (imported, not copied) and tests/reference_vectors.hpp:
    C[i][j] = scale * u(seed_c, i*m + j)                        (double, in [0, scale))
    a[i]    = (0.2 + u(seed_a, i)) / sum_k (0.2 + u(seed_a, k))  (likewise b with seed_b)
    zero_a  > 0: a[0] = 0 before the normalisation (a zero mass)

Balanced cases: ot.sinkhorn(a, b, C, eps, method='sinkhorn_log', stopThr, numItermax, log=True)
(POT's log-domain iteration: v then u, error ||P^T 1 - b||_2 checked every 10 iterations).
Unbalanced cases: ot.unbalanced.sinkhorn_knopp_unbalanced(..., reg_m=(ra, rb), reg_type=...) run
to a tight tolerance (its plain iteration is fine at these epsilons).

For the smallest epsilon the script also runs POT's plain iteration (method='sinkhorn') on the
same problem and records what it returns: exp(-C/eps) underflows to 0 (whole rows of it when the
costs are offset by 1), and the plain plan is NaN, all zeros, or far from the marginals.
"""

import math
import os
import sys
import warnings

import numpy as np
import ot

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refs_common import banner, fmt, numbers_line, output_path, splitmix64_u, write_refs  # noqa: E402

FULL_PLAN_MAX = 2500     # store the whole plan up to this many entries, else a summary
WEIGHT_SEED = 777        # summary: sum P * w with w = u(WEIGHT_SEED, i*m + j)
SAMPLES = 6              # summary: entries (i, j) = ((k * 7919) % n, (k * 104729) % m), k < SAMPLES


def problem(c):
    n, m = c["n"], c["m"]
    C = c["offset"] + c["scale"] * splitmix64_u(c["seed_c"], n * m).reshape(n, m)
    wa = 0.2 + splitmix64_u(c["seed_a"], n)
    wb = 0.2 + splitmix64_u(c["seed_b"], m)
    if c["zero_a"]:
        wa[0] = 0.0
    return C, wa / wa.sum(), wb / wb.sum()


def centred(x, w):
    keep = w > 0
    return x - x[keep].mean()


def solve(c):
    C, a, b = problem(c)
    eps = c["eps"]
    out = {}
    if c["kind"] == "balanced":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            P, log = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", stopThr=c["tol"], numItermax=c["max_iter"],
                                 log=True)
        f = eps * log["log_u"]
        g = eps * log["log_v"]
        out["iterations"] = int(log["niter"]) + 1
        out["err"] = float(np.linalg.norm(P.sum(0) - b))
        cost = float(np.sum(P * C))
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = float(np.sum(np.where(P > 0, P * np.log(P), 0.0)))
            kl = float(np.sum(np.where(P > 0, P * (np.log(P) - np.log(a[:, None] * b[None, :])), 0.0)))
        out["cost"] = cost
        out["obj_entropy"] = cost + eps * plogp
        out["obj_kl"] = cost + eps * kl
        # ot.solve's own values (reg_type entropy / KL) as a cross-check of the formulas above.
        if not c["zero_a"] and hasattr(ot, "solve"):  # (POT >= 0.9)
            r1 = ot.solve(C, a, b, reg=eps, reg_type="entropy", max_iter=c["max_iter"], tol=c["tol"])
            r2 = ot.solve(C, a, b, reg=eps, reg_type="KL", max_iter=c["max_iter"], tol=c["tol"])
            assert abs(float(r1.value) - out["obj_entropy"]) <= 1e-9 * max(1.0, abs(out["obj_entropy"]))
            assert abs(float(r2.value) - out["obj_kl"]) <= 1e-9 * max(1.0, abs(out["obj_kl"]))
        if c["plain_check"]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with np.errstate(all="ignore"):
                    Pp = ot.sinkhorn(a, b, C, eps, method="sinkhorn", numItermax=50)
                    K = np.exp(-C / eps)
            finite = bool(np.isfinite(Pp).all())
            perr = float(np.linalg.norm(Pp.sum(0) - b) + np.linalg.norm(Pp.sum(1) - a)) if finite else float("nan")
            out["plain"] = (int(np.sum(K == 0.0)), int(np.sum(K.max(1) == 0.0)), int(not finite), perr)
            assert out["plain"][0] > 0 and (not finite or not perr < 1e-2), \
                "expected the plain iteration to break down at this epsilon"
    else:
        ra, rb = c["reg_m"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            P, log = ot.unbalanced.sinkhorn_knopp_unbalanced(a, b, C, eps, (ra, rb), reg_type=c["reg"],
                                                            numItermax=c["max_iter"], stopThr=c["tol"], log=True)
        # POT's scalings u, v include the reference measure c (a b^T for KL): convert to
        # P = exp((f + g - C) / eps).
        f = eps * log["logu"]
        g = eps * log["logv"]
        if c["reg"] == "kl":
            f = f + eps * np.log(a)
            g = g + eps * np.log(b)
        out["iterations"] = 0
        out["err"] = 0.0
        cost = float(np.sum(P * C))
        r, s = P.sum(1), P.sum(0)

        def kl_t(p, q):  # generalised KL with mass terms
            return float(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)) - p.sum() + q.sum())

        if c["reg"] == "entropy":
            reg = float(np.sum(np.where(P > 0, P * np.log(P), 0.0)) - P.sum())
        else:
            reg = kl_t(P.reshape(-1), np.outer(a, b).reshape(-1))
        obj = cost + eps * reg
        if ra != math.inf:
            obj += ra * kl_t(r, a)
        if rb != math.inf:
            obj += rb * kl_t(s, b)
        out["cost"] = cost
        out["obj_entropy" if c["reg"] == "entropy" else "obj_kl"] = obj
        out["pot_total_cost"] = float(log["total_cost"])
        # the plan must satisfy the fixed point: check the run converged
        assert np.isfinite(P).all()
    out["f"] = centred(f, a)
    out["g"] = centred(g, b)
    out["P"] = P
    return out


def make_cases():
    cases = []

    def add(kind, n, m, eps, scale=1.0, offset=0.0, tol=1e-12, max_iter=200000, zero_a=False, plain_check=False,
            reg="entropy", reg_m=(math.inf, math.inf)):
        k = len(cases)
        cases.append(dict(kind=kind, n=n, m=m, eps=eps, scale=scale, offset=offset, tol=tol, max_iter=max_iter,
                          seed_c=5000 + 3 * k, seed_a=5001 + 3 * k, seed_b=5002 + 3 * k, zero_a=zero_a,
                          plain_check=plain_check, reg=reg, reg_m=reg_m))

    # Balanced, several sizes and epsilons (cost scale 1).
    for n, m in [(1, 1), (1, 7), (5, 3), (17, 9), (40, 33), (200, 150)]:
        for eps in (1.0, 0.1, 0.02):
            add("balanced", n, m, eps)
    # Small epsilon: 1e-3 of the cost scale; exp(-C/eps) underflows in the plain iteration.
    add("balanced", 12, 10, 1e-3, offset=1.0, plain_check=True)
    add("balanced", 30, 24, 2e-3)
    add("balanced", 30, 24, 1e-3, scale=5.0, plain_check=True)
    add("balanced", 40, 40, 1e-3, offset=1.0, plain_check=True)
    # POT's default stopping rule (tol 1e-9, every 10 iterations): iteration counts must agree.
    add("balanced", 64, 48, 0.05, tol=1e-9, max_iter=1000)
    add("balanced", 300, 300, 0.05, tol=1e-9, max_iter=1000)
    # A zero mass in a.
    add("balanced", 9, 11, 0.1, zero_a=True)
    # Unbalanced (KL marginal penalties), both regularizers, relaxed and semi-relaxed.
    for reg in ("entropy", "kl"):
        add("unbalanced", 8, 6, 0.1, tol=1e-15, max_iter=100000, reg=reg, reg_m=(1.0, 1.0))
        add("unbalanced", 30, 20, 0.05, tol=1e-15, max_iter=100000, reg=reg, reg_m=(0.5, 2.0))
        add("unbalanced", 15, 25, 0.1, tol=1e-15, max_iter=100000, reg=reg, reg_m=(math.inf, 1.0))
    return cases


def record(k, c):
    r = solve(c)
    n, m = c["n"], c["m"]
    reg = c["reg"]
    main_obj = r["obj_entropy"] if (c["kind"] == "unbalanced" and reg == "entropy") or \
        (c["kind"] == "balanced" and reg == "entropy") else r["obj_kl"]
    lines = [f"case {k} {c['kind']} {n} {m} {fmt(c['eps'])} {fmt(c['scale'])} {fmt(c['offset'])} {fmt(c['tol'])} "
             f"{c['max_iter']} {c['seed_c']} {c['seed_a']} {c['seed_b']} {int(c['zero_a'])} {reg} "
             f"{fmt(c['reg_m'][0])} {fmt(c['reg_m'][1])}",
             f"iterations {r['iterations']} {fmt(r['err'])}",
             f"values {fmt(r['cost'])} {fmt(main_obj)}"]
    if c["kind"] == "balanced":
        lines.append(f"objective_other {fmt(r['obj_kl'])}")
    lines.append(numbers_line("f", r["f"]))
    lines.append(numbers_line("g", r["g"]))
    P = r["P"]
    if n * m <= FULL_PLAN_MAX:
        lines.append(numbers_line("plan", P.reshape(-1)))
    else:
        w = splitmix64_u(WEIGHT_SEED, n * m).reshape(n, m)
        samp = " ".join(f"{(kk * 7919) % n} {(kk * 104729) % m} {fmt(P[(kk * 7919) % n, (kk * 104729) % m])}"
                        for kk in range(SAMPLES))
        lines.append(f"plan_summary {fmt(math.fsum(P.reshape(-1)))} {fmt(math.fsum((P * w).reshape(-1)))} "
                     f"{SAMPLES} {samp}")
    if "plain" in r:
        z, zr, bad, perr = r["plain"]
        lines.append(f"plain {z} {zr} {bad} {fmt(perr)}")
    lines.append("end")
    print(f"case {k}: {c['kind']} {n}x{m} eps={c['eps']} it={r['iterations']} err={r['err']:.3g}", file=sys.stderr)
    return lines


def main():
    header = [
        banner("Sinkhorn", __file__),
        f"# POT {ot.__version__}, numpy {np.__version__}, python {sys.version.split()[0]} (float64)",
        "#",
        "# Inputs (not stored), u(seed, i) = the splitmix64 uniform of tests/reference_vectors.hpp:",
        "#   C[i][j] = scale * u(seed_c, i*m + j);  a[i] = (0.2 + u(seed_a, i)) / sum (a[0] = 0 first if zero_a);",
        "#   b[j] = (0.2 + u(seed_b, j)) / sum",
        "# One record:",
        "#   case <id> <kind> <n> <m> <eps> <scale> <offset> <tol> <max_iter> <seed_c> <seed_a> <seed_b> <zero_a> <reg> <reg_m_a> <reg_m_b>",
        "#     kind: balanced (ot.sinkhorn method='sinkhorn_log') | unbalanced (sinkhorn_knopp_unbalanced)",
        "#   iterations <k> <err>        balanced: POT's niter + 1 and ||P^T 1 - b||_2 of the returned plan",
        "#   values <cost> <objective>   <P, C> and the objective of `reg` (balanced: cost + eps sum P log P for",
        "#                               entropy, + eps KL(P | a b^T) for kl; unbalanced: with the KL mass terms)",
        "#   objective_other <v>         balanced: the objective of the other regularizer",
        "#   f <n values>  g <m values>  potentials eps log u, eps log v (P = exp((f + g - C)/eps)), each centred",
        "#                               over its positive masses",
        f"#   plan <n*m values>           n*m <= {FULL_PLAN_MAX}: the plan, row-major",
        f"#   plan_summary <sum> <dot> <k> k x (<i> <j> <P_ij>)   otherwise; dot = sum P * u({WEIGHT_SEED}, i*m + j)",
        "#   plain <zeros in K> <all-zero rows of K> <plan not finite> <marginal error>   POT method='sinkhorn'",
        "#                               (50 iterations) on the same problem, K = exp(-C/eps); small-epsilon cases only;",
        "#                               marginal error = ||P 1 - a|| + ||P^T 1 - b|| (nan when the plan is not finite)",
        "#   end",
    ]
    write_refs(output_path("sinkhorn_refs.txt"), header, make_cases(), record, f"POT {ot.__version__}")


if __name__ == "__main__":
    main()

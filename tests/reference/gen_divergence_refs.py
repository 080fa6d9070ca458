#!/usr/bin/env python3
"""Generates tests/reference/divergence_refs.txt: reference values and gradients of losskit's
divergence kernels computed by PyTorch in float64 with autograd.

    /usr/bin/python3 tests/reference/gen_divergence_refs.py [output]

The inputs are not stored: both this script and tests/reference_vectors.hpp generate them with
the same counter-based splitmix64 generator (refs_common.splitmix64_u), rounded to float32 so that
the float and double C++ tests see identical logits. Each record also carries a 64-bit hash of
the float32 bit patterns of both inputs so the C++ side can verify that it rebuilt them exactly.

Where torch has the function, the reference uses it (F.kl_div with log_target=True and
reduction='batchmean' for the KL mean; the TRL generalized_jsd_loss formulation for JSD);
skew KL, TVD and Cauchy-Schwarz are written with plain torch ops.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refs_common import GRAD_DECIMALS, WEIGHT_SEED, banner, counted, fmt, input_hash, logits, loss_lines  # noqa: E402
from refs_common import output_path, write_refs  # noqa: E402

# Fixed sampled gradient entries for the 32000-column cases: (row, col).
SAMPLES = [(0, 0), (0, 1), (0, 4097), (0, 31999), (1, 0), (1, 12345), (1, 20000), (1, 31998)]
FULL_GRAD_MAX_COLS = 1000
IGNORE_INDEX = -100


# ---- per-row losses (torch, float64); each returns a [rows] tensor ------------------------------

def log_probs(s, t, T):
    return F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1)


def rows_kl_div(s, t, c):
    ls, lt = log_probs(s, t, c["T"])
    return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)  # KL(p || q)


def rows_reverse_kl_div(s, t, c):
    ls, lt = log_probs(s, t, c["T"])
    return F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)  # KL(q || p)


def rows_jsd(s, t, c):
    # TRL GKDTrainer.generalized_jsd_loss, per row (sum over the vocabulary).
    student_log_probs, teacher_log_probs = log_probs(s, t, c["T"])
    beta = c["beta"]
    if beta == 0:
        jsd = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
    else:
        beta = torch.tensor(beta, dtype=student_log_probs.dtype)
        mixture_log_probs = torch.logsumexp(
            torch.stack([student_log_probs + torch.log(1 - beta), teacher_log_probs + torch.log(beta)]),
            dim=0,
        )
        kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
        kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
        jsd = beta * kl_teacher + (1 - beta) * kl_student
    return jsd.sum(-1)


def rows_skew_kl_div(s, t, c):
    a = c["alpha"]
    q = torch.softmax(s / c["T"], dim=-1)
    p = torch.softmax(t / c["T"], dim=-1)
    m = a * p + (1 - a) * q
    return (p * (torch.log(p) - torch.log(m))).sum(-1)  # KL(p || a p + (1 - a) q)


def rows_skew_reverse_kl_div(s, t, c):
    a = c["alpha"]
    q = torch.softmax(s / c["T"], dim=-1)
    p = torch.softmax(t / c["T"], dim=-1)
    m = (1 - a) * p + a * q
    return (q * (torch.log(q) - torch.log(m))).sum(-1)  # KL(q || (1 - a) p + a q)


def rows_tvd(s, t, c):
    q = torch.softmax(s / c["T"], dim=-1)
    p = torch.softmax(t / c["T"], dim=-1)
    return 0.5 * (p - q).abs().sum(-1)


def rows_cauchy_schwarz_div(s, t, c):
    q = torch.softmax(s / c["T"], dim=-1)
    p = torch.softmax(t / c["T"], dim=-1)
    return torch.log((p * p).sum(-1)) + torch.log((q * q).sum(-1)) - 2 * torch.log((p * q).sum(-1))


ROWS = {
    "kl_div": rows_kl_div,
    "reverse_kl_div": rows_reverse_kl_div,
    "jsd": rows_jsd,
    "skew_kl_div": rows_skew_kl_div,
    "skew_reverse_kl_div": rows_skew_reverse_kl_div,
    "tvd": rows_tvd,
    "cauchy_schwarz_div": rows_cauchy_schwarz_div,
}


def compute(c):
    """Returns (value, per_row or None, grad as float64 numpy [rows, cols])."""
    rows, cols = c["rows"], c["cols"]
    s_np = logits(c["seed_s"], rows, cols, c["scale"])
    t_np = logits(c["seed_t"], rows, cols, c["scale"])
    s = torch.tensor(s_np, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(t_np, dtype=torch.float64)
    keep = [r for r in range(rows) if r not in c["ignore"]]
    factor = c["T"] ** 2 if c["t2"] else 1.0
    per_row = None
    if c["kernel"] == "kl_div" and c["reduction"] == "mean":
        # torch's own batchmean (over the rows that count).
        ls, lt = log_probs(s, t, c["T"])
        value = F.kl_div(ls[keep], lt[keep], reduction="batchmean", log_target=True) * factor
    else:
        L = ROWS[c["kernel"]](s, t, c) * factor
        mask = torch.zeros(rows, dtype=torch.float64)
        mask[keep] = 1.0
        L = L * mask
        if c["reduction"] == "mean":
            value = L.sum() / len(keep)
        elif c["reduction"] == "sum":
            value = L.sum()
        else:  # none: per-row values; the gradient is that of their sum
            per_row = L
            value = L.sum()
    value.backward()
    pr = None if per_row is None else per_row.detach().numpy().tolist()
    return float(value.item()), pr, s.grad.detach().numpy().copy(), s_np, t_np


# ---- the cases -------------------------------------------------------------------------------

SHAPES = [(3, 1), (4, 3), (4, 17), (3, 1000), (2, 32000)]
TEMPS = [1.0, 2.0]


def make_cases():
    cases = []

    def add(kernel, rows, cols, T=1.0, scale=4.0, t2=False, beta=0.5, alpha=0.1, reduction="mean", ignore=()):
        k = len(cases)
        cases.append(dict(kernel=kernel, rows=rows, cols=cols, seed_s=1000 + 2 * k, seed_t=1001 + 2 * k,
                          scale=scale, T=T, t2=t2, beta=beta, alpha=alpha, reduction=reduction,
                          ignore=list(ignore)))

    # Every kernel over every shape and both temperatures (jsd over every beta, skews over every alpha).
    for kernel in ROWS:
        params = [{}]
        if kernel == "jsd":
            params = [dict(beta=b) for b in (0.0, 0.3, 0.5, 1.0)]
        elif kernel.startswith("skew"):
            params = [dict(alpha=a) for a in (0.1, 0.5)]
        for p in params:
            for rows, cols in SHAPES:
                for T in TEMPS:
                    add(kernel, rows, cols, T=T, **p)
    # Peaked distributions (scale 12): every kernel, T = 1.
    for kernel in ROWS:
        p = dict(beta=0.3) if kernel == "jsd" else {}
        for rows, cols in [(4, 17), (2, 32000)]:
            add(kernel, rows, cols, scale=12.0, **p)
    add("jsd", 4, 17, scale=12.0, beta=0.5, T=2.0)
    add("skew_kl_div", 3, 1000, scale=12.0, alpha=0.5)
    # kl_div options.
    add("kl_div", 4, 17, T=2.0, t2=True)
    add("kl_div", 2, 32000, T=2.0, t2=True)
    add("kl_div", 4, 17, reduction="sum")
    add("kl_div", 4, 17, T=2.0, reduction="none")
    add("kl_div", 2, 32000, reduction="none")
    add("kl_div", 4, 17, ignore=(1, 3))
    add("kl_div", 3, 1000, T=2.0, ignore=(0,))
    add("kl_div", 4, 17, reduction="none", ignore=(2,))
    return cases


def record(k, c):
    value, per_row, grad, s_np, t_np = compute(c)
    return [f"case {k} {c['kernel']} {c['rows']} {c['cols']} {c['seed_s']} {c['seed_t']} {fmt(c['scale'])} "
            f"{fmt(c['T'])} {int(c['t2'])} {fmt(c['beta'])} {fmt(c['alpha'])} {c['reduction']} {counted(c['ignore'])}",
            f"inputs {input_hash(s_np)} {input_hash(t_np)}",
            *loss_lines(value, per_row, grad, c["cols"] <= FULL_GRAD_MAX_COLS, SAMPLES)]


def main():
    torch.set_default_dtype(torch.float64)
    header = [
        banner("divergence", __file__),
        f"# torch {torch.__version__} (float64, autograd), numpy {np.__version__}, python {sys.version.split()[0]}",
        "#",
        "# Inputs (not stored): logits[r][c] = float32(scale * (2u - 1)), u from splitmix64 with i = r*cols + c:",
        "#   z = seed + (i+1) * 0x9E3779B97F4A7C15; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;",
        "#   z = (z ^ (z >> 27)) * 0x94D049BB133111EB; z ^= z >> 31; u = (z >> 11) * 2^-53   (all mod 2^64)",
        "# Student logits use seed_s, teacher logits seed_t. Tokens are whitespace-separated; one record:",
        "#   case <id> <kernel> <rows> <cols> <seed_s> <seed_t> <scale> <T> <t2> <beta> <alpha> <reduction> <n_ignore> [<ignored row>...]",
        "#     t2: 1 = scale_by_t_squared; reduction: mean | sum | none; ignored rows get label -100 (others 0)",
        "#     beta is used by jsd only, alpha (skew_alpha) by skew_kl_div / skew_reverse_kl_div only",
        "#   inputs <hash_s> <hash_t>      64-bit hashes (decimal) of the float32 bit patterns, row-major:",
        "#                                 h = 0; h = h * 1099511628211 + bits (mod 2^64) for each element",
        "#   value <v>                     the reduced loss (for none: the sum of per_row)",
        "#   per_row <v_0> ... <v_rows-1>  reduction none only (0 for ignored rows)",
        f"#   grad_full <g_0> ...           cols <= {FULL_GRAD_MAX_COLS}: d value / d student logits, rows*cols values, row-major",
        "#   grad_summary <sum> <sum_abs> <dot> <n> then n x (<row> <col> <g>)     cols > "
        f"{FULL_GRAD_MAX_COLS}:",
        "#                                 sum of g, sum of |g|, sum of g * w with w[r][c] = 2u - 1 (float64, not",
        f"#                                 rounded) from the generator with seed {WEIGHT_SEED}, i = r*cols + c; sampled entries",
        "#   end",
        "# Numbers are Python repr of float64 (shortest round-trip), except that grad_full entries are first",
        f"# rounded to {GRAD_DECIMALS} decimal places (absolute error <= 5e-16) to keep the file small.",
    ]
    write_refs(output_path("divergence_refs.txt"), header, make_cases(), record, f"torch {torch.__version__}")


if __name__ == "__main__":
    main()

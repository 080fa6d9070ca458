#!/usr/bin/env python3
"""Generates tests/reference/cross_entropy_refs.txt: reference values and gradients of
losskit::cross_entropy computed by PyTorch in float64 with autograd.

    /usr/bin/python3 tests/reference/gen_cross_entropy_refs.py [output]

Inputs are not stored: logits, labels and class weights are rebuilt on both sides from the
counter-based splitmix64 generator of refs_common.py (imported, not copied) and
tests/reference_vectors.hpp. Logits are rounded to float32 (so float and double C++ tests see the
same values); labels and class weights are exact float64 functions of the generator:
    label[r]  = floor(u_r * V)            (u from seed_y; rows listed as ignored get -100)
    weight[i] = 0.25 + 1.75 * u_i         (u from seed_w; float64)

The cross entropy itself is torch.nn.functional.cross_entropy(weight, ignore_index=-100,
reduction, label_smoothing). The z-loss and the softcap, which torch does not have, are written
with torch ops as Liger-Kernel defines them (ops/cross_entropy.py):
    s = softcap * tanh(z / softcap)  (softcap > 0),   lse = logsumexp(s)
    loss = F.cross_entropy(s, ...) + c * lse^2 summed over counted rows, divided by their count
           for reduction 'mean' (not class-weighted), per row for 'none'.
Accuracy: mean over counted rows of argmax(s) == label.
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refs_common import GRAD_DECIMALS, WEIGHT_SEED, banner, counted, fmt, grad_line, input_hash, logits  # noqa: E402
from refs_common import numbers_line, output_path, splitmix64_u, write_refs  # noqa: E402

IGNORE_INDEX = -100
FULL_GRAD_MAX_COLS = 17
FIXED_SAMPLES = [0, 1, 2047, 2048, 4097, 12345, 31999]  # columns sampled in every row (when < cols)


def labels_of(seed, rows, cols, ignore):
    u = splitmix64_u(seed, rows)
    y = [min(cols - 1, int(math.floor(x * cols))) for x in u.tolist()]
    for r in ignore:
        y[r] = IGNORE_INDEX
    return y


def class_weights(seed, cols):
    return 0.25 + 1.75 * splitmix64_u(seed, cols)


def summary_samples(rows, cols, y):
    """Every row's target entry (unless ignored) and the fixed columns, sorted per row."""
    samples = []
    for r in range(rows):
        cs = [cc for cc in FIXED_SAMPLES if cc < cols]
        if y[r] != IGNORE_INDEX:
            cs.append(y[r])
        samples += [(r, cc) for cc in sorted(set(cs))]
    return samples


def compute(c):
    rows, cols = c["rows"], c["cols"]
    x_np = logits(c["seed_x"], rows, cols, c["scale"])
    y = torch.tensor(labels_of(c["seed_y"], rows, cols, c["ignore"]), dtype=torch.int64)
    w = torch.tensor(class_weights(c["seed_w"], cols), dtype=torch.float64) if c["seed_w"] else None
    z = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
    s = c["softcap"] * torch.tanh(z / c["softcap"]) if c["softcap"] > 0 else z
    keep = (y != IGNORE_INDEX).to(torch.float64)
    n_keep = float(keep.sum().item())
    lse = torch.logsumexp(s, dim=-1)
    zl_rows = c["z_loss"] * lse * lse * keep
    red = c["reduction"]
    ce = F.cross_entropy(s, y, weight=w, ignore_index=IGNORE_INDEX, reduction=red, label_smoothing=c["eps"])
    per_row = None
    if red == "mean":
        zl = zl_rows.sum() / n_keep
        value = ce + zl
    elif red == "sum":
        zl = zl_rows.sum()
        value = ce + zl
    else:
        per_row = ce + zl_rows
        zl = zl_rows.sum()
        value = per_row.sum()
    value.backward()
    pred = s.detach().argmax(dim=-1)
    correct = float(((pred == y) & (y != IGNORE_INDEX)).sum().item())
    acc = correct / n_keep
    lse_out = (lse.detach() * keep).numpy().tolist()
    pr = None if per_row is None else per_row.detach().numpy().tolist()
    return dict(value=float(value.item()), z_loss=float(zl.item()), accuracy=acc, lse=lse_out, per_row=pr,
                grad=z.grad.detach().numpy().copy(), x=x_np, y=y.tolist())


SHAPES = [(3, 1), (4, 3), (5, 17), (3, 1000), (2, 32000)]

# (label_smoothing, z_loss, softcap, class weights): each option alone, and combined.
OPTION_SETS = [
    (0.0, 0.0, 0.0, False),
    (0.1, 0.0, 0.0, False),
    (0.0, 0.0, 0.0, True),
    (0.1, 0.0, 0.0, True),
    (0.0, 1e-2, 0.0, False),
    (0.0, 0.0, 3.0, False),
    (0.1, 1e-4, 0.0, False),
    (0.2, 1e-2, 3.0, True),
]


def make_cases():
    cases = []

    def add(rows, cols, eps=0.0, z_loss=0.0, softcap=0.0, weighted=False, scale=4.0, reduction="mean", ignore=()):
        k = len(cases)
        cases.append(dict(rows=rows, cols=cols, seed_x=5000 + 3 * k, seed_y=5001 + 3 * k,
                          seed_w=(5002 + 3 * k) if weighted else 0, scale=scale, reduction=reduction, eps=eps,
                          z_loss=z_loss, softcap=softcap, ignore=list(ignore)))

    for rows, cols in SHAPES:
        for eps, zc, cap, wt in OPTION_SETS:
            add(rows, cols, eps, zc, cap, wt)
    # Peaked rows (scale 12): p_y close to 1 or 0.
    for rows, cols in [(5, 17), (2, 32000)]:
        add(rows, cols, scale=12.0)
        add(rows, cols, 0.1, 1e-4, 0.0, True, scale=12.0)
        add(rows, cols, 0.0, 0.0, 5.0, False, scale=12.0)
    # Reductions and ignore_index, with and without class weights and smoothing.
    for red in ("sum", "none"):
        add(5, 17, reduction=red)
        add(5, 17, 0.1, 1e-2, 0.0, True, reduction=red, ignore=(1,))
        add(3, 1000, 0.2, 1e-3, 3.0, True, reduction=red)
        add(2, 32000, 0.1, 1e-4, 0.0, False, reduction=red)
    add(5, 17, ignore=(0, 3))
    add(5, 17, 0.1, 0.0, 0.0, True, ignore=(2,))
    add(5, 17, 0.2, 1e-2, 3.0, True, ignore=(0, 4))
    add(3, 1000, 0.1, 1e-4, 0.0, True, ignore=(1,))
    add(4, 3, 1.0, 0.0, 0.0, True)  # label_smoothing = 1: the target term vanishes
    return cases


def record(k, c):
    res = compute(c)
    rows, cols = c["rows"], c["cols"]
    lines = [f"case {k} {rows} {cols} {c['seed_x']} {c['seed_y']} {c['seed_w']} {fmt(c['scale'])} {c['reduction']} "
             f"{fmt(c['eps'])} {fmt(c['z_loss'])} {fmt(c['softcap'])} {counted(c['ignore'])}",
             f"inputs {input_hash(res['x'])}",
             "value " + fmt(res["value"]),
             "z_loss " + fmt(res["z_loss"]),
             "accuracy " + fmt(res["accuracy"]),
             numbers_line("lse", res["lse"])]
    if res["per_row"] is not None:
        lines.append(numbers_line("per_row", res["per_row"]))
    samples = summary_samples(rows, cols, res["y"])
    return lines + [grad_line("grad", res["grad"], cols <= FULL_GRAD_MAX_COLS, samples), "end"]


def main():
    torch.set_default_dtype(torch.float64)
    header = [
        banner("cross entropy", __file__),
        f"# torch {torch.__version__} (float64, autograd), numpy {np.__version__}, python {sys.version.split()[0]}",
        "#",
        "# Inputs (not stored), from the splitmix64 generator of gen_divergence_refs.py / reference_vectors.hpp:",
        "#   logits[r][c] = float32(scale * (2u - 1)), u from seed_x with i = r*cols + c",
        "#   label[r] = floor(u_r * cols) with u from seed_y, i = r; ignored rows get -100",
        "#   weight[c] = 0.25 + 1.75 u_c (float64) with u from seed_w, i = c; seed_w = 0: no class weights",
        "# One record:",
        "#   case <id> <rows> <cols> <seed_x> <seed_y> <seed_w> <scale> <reduction> <label_smoothing> <z_loss> <softcap> <n_ignore> [<row>...]",
        "#   inputs <hash>                 64-bit hash of the float32 logits (see gen_divergence_refs.py)",
        "#   value <v>                     the reduced loss including the z-loss (for none: the sum of per_row)",
        "#   z_loss <v>                    the z-loss part of value",
        "#   accuracy <v>                  mean over counted rows of argmax(s) == label",
        "#   lse <l_0> ... <l_rows-1>      logsumexp of the (capped) logits per row, 0 for ignored rows",
        "#   per_row <v_0> ...             reduction none only (0 for ignored rows)",
        f"#   grad_full <g_0> ...           cols <= {FULL_GRAD_MAX_COLS}: d value / d logits, rows*cols values, row-major",
        "#   grad_summary <sum> <sum_abs> <dot> <n> then n x (<row> <col> <g>)     wider rows:",
        f"#                                 dot = sum g * w, w[r][c] = 2u - 1 from seed {WEIGHT_SEED}, i = r*cols + c;",
        "#                                 samples: every row's target entry and fixed columns",
        "#   end",
        f"# Numbers are Python repr of float64, except grad_full entries rounded to {GRAD_DECIMALS} decimal places.",
    ]
    write_refs(output_path("cross_entropy_refs.txt"), header, make_cases(), record, f"torch {torch.__version__}")


if __name__ == "__main__":
    main()

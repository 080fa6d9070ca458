#!/usr/bin/env python3
"""Generates tests/reference/soft_cross_entropy_refs.txt: reference values and gradients of
losskit::soft_cross_entropy computed by PyTorch's F.cross_entropy with class-probability targets,
in float64 with autograd.

    /usr/bin/python3 tests/reference/gen_soft_cross_entropy_refs.py [output]

Inputs are not stored: the logits come from the shared generator of refs_common.py (imported, not
copied), and the targets, class weights and their hashes are built from it as documented in the
file header, so tests/test_soft_cross_entropy.cpp rebuilds them bit for bit.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_divergence_refs import FULL_GRAD_MAX_COLS, SAMPLES  # noqa: E402  (the layout of divergence_refs.txt)
from refs_common import GRAD_DECIMALS, WEIGHT_SEED, banner, counted, fmt, input_hash, logits, loss_lines  # noqa: E402
from refs_common import output_path, splitmix64_u, write_refs  # noqa: E402


def raw_targets(seed, rows, cols, kind):
    """float32 u (kind raw / norm), or u with the entries where u < 0.5 set to 0 (kind sparse)."""
    u = splitmix64_u(seed, rows * cols).astype(np.float32).reshape(rows, cols)
    if kind == "sparse":
        u = np.where(u < np.float32(0.5), np.float32(0.0), u).astype(np.float32)
    return u


def targets(seed, rows, cols, kind):
    """kind raw: the raw values. norm / sparse: each row divided by its sum S (float64, summed left
    to right), then rounded to float32: t = float32(w / S)."""
    w = raw_targets(seed, rows, cols, kind)
    if kind == "raw":
        return w
    out = np.empty_like(w)
    for r in range(rows):
        row = w[r].astype(np.float64)
        s = 0.0
        for x in row.tolist():
            s += x
        out[r] = (row / s).astype(np.float32)
    return out


def class_weights(seed, cols):
    """float32(0.5 + u), u from the generator with this seed, one per class."""
    return (0.5 + splitmix64_u(seed, cols)).astype(np.float32)


def compute(c):
    rows, cols = c["rows"], c["cols"]
    x_np = logits(c["seed_x"], rows, cols, c["scale"])
    t_np = targets(c["seed_t"], rows, cols, c["kind"])
    w_np = class_weights(c["seed_w"], cols) if c["seed_w"] else None
    x = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(t_np, dtype=torch.float64)
    w = None if w_np is None else torch.tensor(w_np, dtype=torch.float64)
    z = x / c["T"]
    keep = [r for r in range(rows) if r not in c["ignore"]]
    per_row = None
    if c["reduction"] == "mean" and not c["ignore"]:
        # torch's own 'mean' for probability targets: sum over rows / rows (not the weight sum).
        value = F.cross_entropy(z, t, weight=w, reduction="mean", label_smoothing=c["eps"])
    else:
        L = F.cross_entropy(z, t, weight=w, reduction="none", label_smoothing=c["eps"])
        mask = torch.zeros(rows, dtype=torch.float64)
        mask[keep] = 1.0
        L = L * mask
        if c["reduction"] == "mean":
            value = L.sum() / len(keep)
        elif c["reduction"] == "sum":
            value = L.sum()
        else:
            per_row = L
            value = L.sum()
    value.backward()
    pr = None if per_row is None else per_row.detach().numpy().tolist()
    return float(value.item()), pr, x.grad.detach().numpy().copy(), x_np, t_np, w_np


SHAPES = [(3, 1), (4, 3), (4, 17), (3, 1000), (2, 32000)]


def make_cases():
    cases = []

    def add(rows, cols, T=1.0, eps=0.0, kind="norm", weighted=False, scale=4.0, reduction="mean", ignore=()):
        k = len(cases)
        cases.append(dict(rows=rows, cols=cols, seed_x=5000 + 3 * k, seed_t=5001 + 3 * k,
                          seed_w=(5002 + 3 * k) if weighted else 0, scale=scale, T=T, eps=eps, kind=kind,
                          reduction=reduction, ignore=list(ignore)))

    for rows, cols in SHAPES:
        for T in (1.0, 2.0):
            add(rows, cols, T=T)
        add(rows, cols, eps=0.1)
        add(rows, cols, weighted=True)
    add(4, 17, eps=0.1, weighted=True, T=2.0)
    add(2, 32000, eps=0.1, weighted=True)
    for rows, cols in [(4, 17), (3, 1000), (2, 32000)]:
        add(rows, cols, kind="raw")
    add(4, 17, kind="raw", eps=0.2, weighted=True)
    add(4, 17, kind="sparse")
    add(3, 1000, kind="sparse", T=2.0)
    add(4, 17, kind="sparse", eps=0.1)
    add(4, 17, reduction="sum", eps=0.1)
    add(4, 17, reduction="none", T=2.0, weighted=True)
    add(2, 32000, reduction="none")
    add(4, 17, ignore=(1, 3))
    add(3, 1000, T=2.0, eps=0.1, ignore=(0,))
    add(4, 17, reduction="none", ignore=(2,), weighted=True)
    add(4, 17, scale=12.0)
    add(2, 32000, scale=12.0, eps=0.1)
    return cases


def record(k, c):
    value, per_row, grad, x_np, t_np, w_np = compute(c)
    return [f"case {k} {c['rows']} {c['cols']} {c['seed_x']} {c['seed_t']} {c['seed_w']} {fmt(c['scale'])} "
            f"{fmt(c['T'])} {fmt(c['eps'])} {c['kind']} {c['reduction']} {counted(c['ignore'])}",
            f"inputs {input_hash(x_np)} {input_hash(t_np)} {0 if w_np is None else input_hash(w_np)}",
            *loss_lines(value, per_row, grad, c["cols"] <= FULL_GRAD_MAX_COLS, SAMPLES)]


def main():
    torch.set_default_dtype(torch.float64)
    header = [
        banner("soft_cross_entropy", __file__),
        f"# torch {torch.__version__} (float64, autograd): F.cross_entropy(logits / T, targets, weight, label_smoothing)",
        f"# numpy {np.__version__}, python {sys.version.split()[0]}",
        "#",
        "# Generator: u_i = splitmix64 uniform of gen_divergence_refs.py (see divergence_refs.txt), i = r*cols + c.",
        "#   logits[r][c]  = float32(scale * (2u - 1)) with seed_x",
        "#   targets, seed_t: w = float32(u); kind sparse: w = 0 where w < 0.5; kind raw: t = w; kinds norm and",
        "#     sparse: t = float32(w / S), S = float64 sum of the row's w, added left to right",
        "#   class weights (seed_w > 0): float32(0.5 + u), i = class; seed_w = 0: no class weights",
        "# One record:",
        "#   case <id> <rows> <cols> <seed_x> <seed_t> <seed_w> <scale> <T> <eps> <kind> <reduction> <n_ignore> [<row>...]",
        "#     eps = label_smoothing; reduction mean | sum | none; ignored rows are skipped (label -100)",
        "#   inputs <hash_logits> <hash_targets> <hash_weights or 0>   (float32 bit-pattern hashes, as divergence_refs.txt)",
        "#   value <v>; per_row (none); grad_full (cols <= %d) or grad_summary (as divergence_refs.txt, weight seed %d)"
        % (FULL_GRAD_MAX_COLS, WEIGHT_SEED),
        "#   end",
        f"# Numbers: Python repr of float64; grad_full entries rounded to {GRAD_DECIMALS} decimal places.",
    ]
    write_refs(output_path("soft_cross_entropy_refs.txt"), header, make_cases(), record, f"torch {torch.__version__}")


if __name__ == "__main__":
    main()

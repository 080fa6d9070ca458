#!/usr/bin/env python3
"""Generates tests/reference/sinkd_refs.txt: SinKD losses and their gradients w.r.t. the student
logits, computed by PyTorch autograd in float64 through SinKD's own loop (2018cx/SinKD loss.py,
class `Sinkhorn`: softmax(x / T), torch.cdist(p=1), K = exp(-W / eps), n_iters times {rows, then
columns}, loss = weight * sum(P * W)), for tests/test_sinkd.cpp.

    /opt/torch-current/bin/python tests/reference/gen_sinkd_refs.py [output]   # torch 2.15 (pip)
    /usr/bin/python3 tests/reference/gen_sinkd_refs.py [output]                # Debian torch 1.13

Inputs are not stored: logits come from the shared splitmix64 generator (`logits` of
refs_common.py, imported, float32-rounded), as in tests/reference_vectors.hpp.
Per-sample form: for each row, a = softmax(s_r / T), b = softmax(t_r / T), the same loop on
K = exp(-M / eps) with rows scaled to a and columns to b (a general-marginal SinKD loop),
M[i][j] = |i - j| / (C - 1); the mean over rows of sum(P * M).
"""

import os
import sys

import torch

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refs_common import banner, fmt, logits, numbers_line, output_path, write_refs  # noqa: E402


def sinkhorn_normalized(x, n_iters, a=None, b=None):
    for _ in range(n_iters):
        x = x / torch.sum(x, dim=1, keepdim=True)
        if a is not None:
            x = x * a[:, None]
        x = x / torch.sum(x, dim=0, keepdim=True)
        if b is not None:
            x = x * b[None, :]
    return x


def batch_loss(s, t, c):
    p_s = torch.softmax(s / c["T"], dim=1)
    p_t = torch.softmax(t / c["T"], dim=1)
    W = torch.cdist(p_s, p_t, p=1)
    K = torch.exp(-W / c["eps"])
    P = sinkhorn_normalized(K, c["iters"])
    return c["weight"] * torch.sum(P * W)


def per_sample_loss(s, t, c):
    n = s.shape[1]
    idx = torch.arange(n, dtype=torch.float64)
    M = (idx[:, None] - idx[None, :]).abs() / max(n - 1, 1)
    K = torch.exp(-M / c["eps"])
    p_s = torch.softmax(s / c["T"], dim=1)
    p_t = torch.softmax(t / c["T"], dim=1)
    total = 0.0
    for r in range(s.shape[0]):
        P = sinkhorn_normalized(K, c["iters"], p_s[r], p_t[r])
        total = total + torch.sum(P * M)
    return c["weight"] * total / s.shape[0]


def make_cases():
    cases = []

    def add(form, rows, cols, T=2.0, eps=0.1, iters=20, weight=1.0, scale=4.0):
        k = len(cases)
        cases.append(dict(form=form, rows=rows, cols=cols, T=T, eps=eps, iters=iters, weight=weight, scale=scale,
                          seed_s=9000 + 2 * k, seed_t=9001 + 2 * k))

    for rows, cols in [(1, 5), (4, 3), (8, 17), (16, 100), (5, 1000), (3, 4000)]:
        add("batch", rows, cols)
    add("batch", 8, 17, T=1.0, scale=8.0)
    add("batch", 8, 17, weight=0.001, iters=5)
    add("batch", 6, 33, eps=0.05, iters=0)
    add("per_sample", 3, 6)
    add("per_sample", 4, 10, T=1.0, eps=0.2, iters=7, weight=0.5)
    return cases


def record(k, c):
    s = torch.tensor(logits(c["seed_s"], c["rows"], c["cols"], c["scale"]), dtype=torch.float64, requires_grad=True)
    t = torch.tensor(logits(c["seed_t"], c["rows"], c["cols"], c["scale"]), dtype=torch.float64)
    value = batch_loss(s, t, c) if c["form"] == "batch" else per_sample_loss(s, t, c)
    value.backward()
    return [f"case {k} {c['form']} {c['rows']} {c['cols']} {fmt(c['T'])} {fmt(c['eps'])} {c['iters']} "
            f"{fmt(c['weight'])} {fmt(c['scale'])} {c['seed_s']} {c['seed_t']}",
            "value " + fmt(value.item()),
            numbers_line("grad", s.grad.reshape(-1).tolist()),
            "end"]


def main():
    torch.set_default_dtype(torch.float64)
    header = [
        banner("SinKD", __file__),
        f"# torch {torch.__version__} (float64, autograd through the loop), python {sys.version.split()[0]}",
        "# Inputs: logits[r][c] = float32(scale * (2u - 1)), u from splitmix64(seed, r*cols + c) (see",
        "# gen_divergence_refs.py). One record:",
        "#   case <id> <form> <rows> <cols> <T> <eps> <iters> <weight> <scale> <seed_s> <seed_t>",
        "#     form: batch (B x B transport between the rows) | per_sample (C x C transport per row, mean over rows)",
        "#   value <v>",
        "#   grad <rows*cols values>   d value / d student logits, row-major",
        "#   end",
    ]
    write_refs(output_path("sinkd_refs.txt"), header, make_cases(), record, f"torch {torch.__version__}")


if __name__ == "__main__":
    main()

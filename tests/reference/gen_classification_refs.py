#!/usr/bin/env python3
"""Generates tests/reference/classification_refs.txt: reference values, gradients and state of
losskit's spherical Z-loss, LDR-KL, ALDR-KL (AdaptiveLDR) and ELR, computed by PyTorch in float64
with autograd from restatements of the reference implementations:

  spherical_z_loss  pascal20100/factored_output_layer example/timing_example.py (z_loss, 'plain'
                    output): softplus((mu - o_c) / (sigma + eps)), sigma = sqrt(mean(o^2) - mu^2),
                    generalised to (1/a) softplus(a (b - z_c)) as in the paper
  ldr_kl            Optimization-AI/ICML2023_LDR loss.py LDRLoss_V1 (normalize = 1) and the same
                    formula on raw logits (normalize = 0)
  aldr_kl           ICML2023_LDR loss.py ALDRLoss_V1 (per-sample lambda state, several steps)
  elr               shengliu66/ELR ELR/model/loss.py elr_loss (target table state, several steps)

    /usr/bin/python3 tests/reference/gen_classification_refs.py [output]

Inputs are not stored: logits come from the splitmix64 generator of refs_common.py
(imported, not copied), rounded to float32, with a hash of their bit patterns in the file.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refs_common import banner, fmt, input_hash, logits, numbers_line, output_path, write_refs  # noqa: E402


# ---- references (float64), each returning the per-row losses [rows] -----------------------------

def spherical_z(o, y, p):
    mu = o.mean(1)
    sigma = torch.sqrt((o ** 2).mean(1) - mu ** 2)
    oc = o[torch.arange(o.shape[0]), y]
    z = (oc - mu) / (sigma + p["eps"])
    return F.softplus(p["a"] * (p["b"] - z)) / p["a"]


def ldr_rows(yh, onehot, margin, lam):
    """LDRLoss_V1's body after the normalisation; lam: scalar or [rows, 1]."""
    diff = margin * (1 - onehot) + yh - (yh * onehot).sum(1, keepdim=True)
    d = diff / lam
    m = d.max(1, keepdim=True).values.detach()
    return (lam * (torch.log(torch.exp(d - m).mean(1, keepdim=True)) + m)).reshape(-1)


def ldr_kl(z, y, p):
    onehot = F.one_hot(y, z.shape[1]).double()
    yh = z
    if p["normalize"]:
        s = F.softplus(z)
        yh = s / s.mean(1, keepdim=True)
    return ldr_rows(yh, onehot, p["margin"], p["lambda"])


class Aldr:
    """ALDRLoss_V1 on the CPU, in float64."""

    def __init__(self, n, lambda0, alpha, margin, softplus):
        self.lambda_ref = torch.tensor(lambda0)
        self.lam = torch.full((n, 1), float(lambda0))
        self.alpha, self.margin, self.softplus = alpha, margin, softplus

    def rows(self, z, y, ids):
        k = z.shape[1]
        onehot = F.one_hot(y, k).double()
        x = F.softplus(z) if self.softplus else z
        yh = x / (torch.norm(x, dim=1, p=1.0, keepdim=True) / k)
        prob = torch.softmax(yh / self.lam[ids], dim=1) + 1e-5
        prob = F.normalize(prob, p=1.0)
        kl = torch.sum(prob * torch.log(k * prob), dim=1, keepdim=True)
        log_k = torch.log(torch.tensor(float(k)))
        self.lam[ids] = (self.lambda_ref - self.lambda_ref * kl / (self.alpha * log_k)).detach()
        lam = self.lam[ids]
        extra = -0.5 * self.alpha * log_k / self.lambda_ref * (lam - self.lambda_ref) ** 2
        return ldr_rows(yh, onehot, self.margin, lam) + extra.reshape(-1)


class Elr:
    """elr_loss on the CPU, in float64 (lambda passed explicitly instead of the config)."""

    def __init__(self, n, c, beta, lam):
        self.target = torch.zeros(n, c)
        self.beta, self.lam = beta, lam

    def mean_loss(self, z, y, ids):
        p = torch.clamp(F.softmax(z, dim=1), 1e-4, 1.0 - 1e-4)
        ph = p.data.detach()
        self.target[ids] = self.beta * self.target[ids] + (1 - self.beta) * (ph / ph.sum(dim=1, keepdim=True))
        ce = F.cross_entropy(z, y)
        reg = (1 - (self.target[ids] * p).sum(dim=1)).log().mean()
        return ce + self.lam * reg


# ---- cases ----------------------------------------------------------------------------------------

def labels_for(rows, cols, k):
    return [(7 * r + 3 * k + 1) % cols for r in range(rows)]


def make_cases():
    cases = []

    def add(kernel, rows, cols, scale=3.0, reduction="mean", steps=1, ids=None, **params):
        k = len(cases)
        cases.append(dict(kernel=kernel, rows=rows, cols=cols, scale=scale, reduction=reduction, params=params,
                          labels=labels_for(rows, cols, k), seeds=[5000 + 10 * k + s for s in range(steps)],
                          ids=ids))

    add("spherical_z_loss", 4, 7, a=1.0, b=0.0, eps=1e-12)
    add("spherical_z_loss", 5, 33, a=2.5, b=0.7, eps=1e-12)
    add("spherical_z_loss", 3, 100, scale=10.0, a=0.5, b=-1.0, eps=1e-12, reduction="sum")
    add("spherical_z_loss", 4, 9, a=1.0, b=0.0, eps=0.5)
    add("ldr_kl", 4, 7, margin=2.0, **{"lambda": 1.0}, normalize=1)
    add("ldr_kl", 5, 33, margin=0.1, **{"lambda": 10.0}, normalize=1)
    add("ldr_kl", 3, 100, scale=6.0, margin=1.0, **{"lambda": 0.3}, normalize=1, reduction="sum")
    add("ldr_kl", 4, 7, margin=2.0, **{"lambda": 1.0}, normalize=0)
    add("ldr_kl", 5, 33, margin=0.5, **{"lambda": 0.5}, normalize=0)
    add("ldr_kl", 3, 100, scale=6.0, margin=0.0, **{"lambda": 1.0}, normalize=0)
    add("aldr_kl", 6, 10, steps=3, ids=[[0, 1, 2, 3, 4, 5], [6, 7, 0, 1, 2, 3], [3, 1, 7, 5, 0, 6]],
        num_samples=8, lambda0=10.0, alpha=2.0, margin=0.1, softplus=0)
    add("aldr_kl", 4, 33, scale=5.0, steps=3, ids=[[0, 1, 2, 3], [4, 0, 2, 1], [3, 4, 1, 0]],
        num_samples=5, lambda0=1.0, alpha=1.0, margin=1.0, softplus=1)
    add("aldr_kl", 3, 100, scale=4.0, steps=2, ids=[[2, 0, 1], [1, 2, 0]],
        num_samples=3, lambda0=0.5, alpha=3.0, margin=0.5, softplus=0)
    add("elr", 6, 10, steps=3, ids=[[0, 1, 2, 3, 4, 5], [6, 7, 0, 1, 2, 3], [3, 1, 7, 5, 0, 6]],
        num_samples=8, beta=0.7, **{"lambda": 3.0})
    add("elr", 4, 33, scale=6.0, steps=3, ids=[[0, 1, 2, 3], [4, 0, 2, 1], [3, 4, 1, 0]],
        num_samples=5, beta=0.9, **{"lambda": 7.0})
    add("elr", 3, 100, scale=8.0, steps=2, ids=[[2, 0, 1], [1, 2, 0]], num_samples=3, beta=0.3, **{"lambda": 1.5})
    return cases


def run_case(c):
    """Yields (seed, inputs, ids, value, grad, state) per step."""
    rows, cols, p = c["rows"], c["cols"], c["params"]
    y = torch.tensor(c["labels"])
    kernel = c["kernel"]
    state_obj = None
    if kernel == "aldr_kl":
        state_obj = Aldr(p["num_samples"], p["lambda0"], p["alpha"], p["margin"], bool(p["softplus"]))
    elif kernel == "elr":
        state_obj = Elr(p["num_samples"], cols, p["beta"], p["lambda"])
    for step, seed in enumerate(c["seeds"]):
        x_np = logits(seed, rows, cols, c["scale"])
        z = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
        ids = c["ids"][step] if c["ids"] else None
        if kernel == "spherical_z_loss":
            per_row = spherical_z(z, y, p)
        elif kernel == "ldr_kl":
            per_row = ldr_kl(z, y, p)
        elif kernel == "aldr_kl":
            per_row = state_obj.rows(z, y, torch.tensor(ids))
        else:
            per_row = None
            value = state_obj.mean_loss(z, y, torch.tensor(ids))
        if per_row is not None:
            value = per_row.sum() if c["reduction"] == "sum" else per_row.mean()
        value.backward()
        state = None
        if kernel == "aldr_kl":
            state = state_obj.lam.reshape(-1).numpy().tolist()
        elif kernel == "elr":
            state = state_obj.target.reshape(-1).numpy().tolist()
        yield seed, x_np, ids, float(value.item()), z.grad.numpy().reshape(-1).tolist(), state


def record(k, c):
    lines = [f"case {k} {c['kernel']} {c['rows']} {c['cols']} {fmt(c['scale'])} {c['reduction']}"]
    lines += [f"param {name} {fmt(v)}" for name, v in c["params"].items()]
    lines.append("labels " + " ".join(str(v) for v in c["labels"]))
    for step, (seed, x_np, ids, value, grad, state) in enumerate(run_case(c)):
        lines.append(f"step {step} {seed} {input_hash(x_np)}")
        if ids is not None:
            lines.append("ids " + " ".join(str(i) for i in ids))
        lines.append("value " + fmt(value))
        lines.append(numbers_line("grad", grad))
        if state is not None:
            lines.append(numbers_line("state", state))
    lines.append("end")
    return lines


def main():
    torch.set_default_dtype(torch.float64)
    header = [
        banner("classification", __file__),
        f"# torch {torch.__version__} (float64, autograd), numpy {np.__version__}, python {sys.version.split()[0]}",
        "#",
        "# Logits (not stored) as in divergence_refs.txt: float32(scale * (2u - 1)), u from splitmix64(seed).",
        "# One record:",
        "#   case <id> <kernel> <rows> <cols> <scale> <reduction>",
        "#   param <name> <value>           kernel parameters (normalize, softplus: 0 / 1)",
        "#   labels <l_0> ... <l_rows-1>",
        "#   step <k> <seed> <hash>         one call (stateful kernels: in order, on the same state);",
        "#                                  hash of the float32 logits as in divergence_refs.txt",
        "#   ids <i_0> ... <i_rows-1>       stateful kernels: sample ids of the step",
        "#   value <v>                      the reduced loss (mean over rows unless the case says sum)",
        "#   grad <g_0> ...                 d value / d logits, row-major",
        "#   state <s_0> ...                after the step: aldr_kl lambdas (num_samples), elr targets",
        "#                                  (num_samples x cols, row-major)",
        "#   end",
    ]
    write_refs(output_path("classification_refs.txt"), header, make_cases(), record, f"torch {torch.__version__}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generates tests/reference/sequence_logprobs_refs.txt: reference values and gradients of
losskit's sequence_logprobs / sequence_logprobs_backward / token_logprobs_backward computed by
PyTorch in float64 with autograd, the way TRL's DPOTrainer computes them:
log_softmax(logits / T).gather(-1, labels) masked and summed per sequence.

    /usr/bin/python3 tests/reference/gen_sequence_logprobs_refs.py [output]

Logits are not stored: they come from the splitmix64 generator shared with the divergence
vectors (refs_common.py, tests/reference_vectors.hpp), with a hash of their float32 bits
in every record. Targets, masks and upstream gradients are small and stored explicitly.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refs_common import WEIGHT_SEED, banner, counted, fmt, grad_line, input_hash, logits, numbers_line  # noqa: E402
from refs_common import output_path, splitmix64_u, write_refs  # noqa: E402

IGNORE_INDEX = -100
FULL_GRAD_MAX_ELEMS = 2000  # rows * cols up to this: full gradients; above: a summary
SAMPLE_COLS = [0, 1, 4097, 31999]


def u(seed, n):
    return splitmix64_u(seed, n)


def make_cases():
    cases = []

    def add(rows, cols, layout, T=1.0, scale=4.0, mask="none", ignore=()):
        k = len(cases)
        cases.append(dict(rows=rows, cols=cols, layout=layout, T=T, scale=scale, mask=mask, ignore=list(ignore),
                          seed_z=3000 + 4 * k, seed_a=3001 + 4 * k, seed_x=3002 + 4 * k))

    # Shapes x temperatures, fixed layouts.
    for rows, cols, layout in [(6, 1, ("fixed", 2, 3)), (6, 3, ("fixed", 3, 2)), (8, 17, ("fixed", 2, 4)),
                               (6, 1000, ("fixed", 2, 3)), (4, 4099, ("fixed", 2, 2)), (3, 32000, ("fixed", 3, 1))]:
        for T in (1.0, 2.0):
            add(rows, cols, layout, T=T)
    # Offsets (with an empty sequence), masks, ignored rows, peaked logits.
    add(9, 17, ("offsets", [0, 4, 4, 9]), mask="binary", ignore=(2,))
    add(9, 17, ("offsets", [0, 2, 9]), T=0.7, mask="weights", ignore=(0, 5))
    add(10, 33, ("offsets", [0, 3, 3, 3, 10]), mask="binary")
    add(6, 1000, ("offsets", [0, 1, 6]), T=1.5, mask="weights", ignore=(3,))
    add(8, 17, ("fixed", 4, 2), scale=12.0, mask="binary")
    add(4, 4099, ("offsets", [0, 3, 4]), scale=12.0, ignore=(1,))
    add(3, 32000, ("fixed", 1, 3), T=2.0, mask="weights")
    # A sequence whose every row is masked (by ignore_index): sum 0, mean 0, zero gradient.
    add(6, 17, ("fixed", 3, 2), ignore=(2, 3))
    return cases


def build(c):
    rows, cols = c["rows"], c["cols"]
    z_np = logits(c["seed_z"], rows, cols, c["scale"])
    a_np = logits(c["seed_a"], rows, cols, c["scale"])
    ux = u(c["seed_x"], 6 * rows + 64)
    targets = [min(cols - 1, int(ux[r] * cols)) for r in range(rows)]
    for r in c["ignore"]:
        targets[r] = IGNORE_INDEX
    if c["mask"] == "binary":
        mask = [1.0 if ux[rows + r] < 0.75 else 0.0 for r in range(rows)]
    elif c["mask"] == "weights":
        mask = [float(np.float32(2.0 * ux[rows + r])) for r in range(rows)]  # exact in float
    else:
        mask = None
    if c["layout"][0] == "fixed":
        B, L = c["layout"][1], c["layout"][2]
        offsets = [b * L for b in range(B + 1)]
    else:
        offsets = c["layout"][1]
    B = len(offsets) - 1
    d_sum = [float(2.0 * ux[2 * rows + b] - 1.0) for b in range(B)]
    d_tok = [float(2.0 * ux[3 * rows + 32 + r] - 1.0) for r in range(rows)]
    d_kl = [float(2.0 * ux[4 * rows + 32 + r] - 1.0) for r in range(rows)]
    return z_np, a_np, targets, mask, offsets, d_sum, d_tok, d_kl


def compute(c):
    z_np, a_np, targets, mask, offsets, d_sum, d_tok, d_kl = build(c)
    rows, T = c["rows"], c["T"]
    z = torch.tensor(z_np, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(a_np, dtype=torch.float64)
    y = torch.tensor(targets, dtype=torch.int64)
    valid = y != IGNORE_INDEX
    labels = torch.where(valid, y, torch.zeros_like(y))           # as TRL: masked labels -> 0
    w = valid.to(torch.float64) * (torch.tensor(mask, dtype=torch.float64) if mask else 1.0)
    live = (w != 0).to(torch.float64)                              # rows that are read at all

    lp = F.log_softmax(z / T, dim=-1)
    la = F.log_softmax(a / T, dim=-1)
    tok = lp.gather(-1, labels[:, None]).squeeze(-1)
    ref_tok = la.gather(-1, labels[:, None]).squeeze(-1)
    ent = -(lp.exp() * lp).sum(-1)
    kl = (la.exp() * (lp - la)).sum(-1)                            # k_t = -KL(rho || pi)

    seq = torch.zeros(rows, dtype=torch.int64)
    for b in range(len(offsets) - 1):
        seq[offsets[b]:offsets[b + 1]] = b
    B = len(offsets) - 1

    def per_seq(v):
        return torch.zeros(B, dtype=torch.float64).index_add(0, seq, w * v)

    s_sum, tokens = per_seq(tok), per_seq(torch.ones(rows, dtype=torch.float64))
    safe = torch.where(tokens > 0, tokens, torch.ones_like(tokens))
    out = dict(sum=s_sum, mean=torch.where(tokens > 0, s_sum / safe, torch.zeros_like(s_sum)), tokens=tokens,
               ref_sum=per_seq(ref_tok), kl_sum=per_seq(kl), token_logp=tok * live, ref_token_logp=ref_tok * live,
               token_entropy=ent * live, token_kl=kl * live)
    out = {k: v.detach().numpy().tolist() for k, v in out.items()}

    f = (torch.tensor(d_sum, dtype=torch.float64) * s_sum).sum()
    (g_seq,) = torch.autograd.grad(f, z, retain_graph=True)
    f = (torch.tensor(d_tok, dtype=torch.float64) * tok * live).sum() + \
        (torch.tensor(d_kl, dtype=torch.float64) * kl * live).sum()
    (g_tok,) = torch.autograd.grad(f, z)
    return z_np, a_np, targets, mask, offsets, d_sum, d_tok, d_kl, out, g_seq.numpy(), g_tok.numpy()


def grad_lines(key, g):
    """Full gradients (exact) up to FULL_GRAD_MAX_ELEMS entries, else a summary sampling SAMPLE_COLS."""
    rows, cols = g.shape
    samples = [(r, cc) for r in range(rows) for cc in SAMPLE_COLS if cc < cols]
    return grad_line(key, g, rows * cols <= FULL_GRAD_MAX_ELEMS, samples, fmt_full=fmt)


OUTPUT_KEYS = ("sum", "mean", "tokens", "ref_sum", "kl_sum", "token_logp", "ref_token_logp", "token_entropy", "token_kl")


def record(k, c):
    z_np, a_np, targets, mask, offsets, d_sum, d_tok, d_kl, out, g_seq, g_tok = compute(c)
    return [f"case {k} {c['rows']} {c['cols']} {c['seed_z']} {c['seed_a']} {fmt(c['scale'])} {fmt(c['T'])}",
            f"inputs {input_hash(z_np)} {input_hash(a_np)}",
            f"offsets {counted(offsets)}",
            "targets " + " ".join(str(t) for t in targets),
            "mask none" if mask is None else numbers_line("mask", mask),
            *(numbers_line(key, out[key]) for key in OUTPUT_KEYS),
            numbers_line("d_sum", d_sum),
            numbers_line("d_token", d_tok),
            numbers_line("d_kl", d_kl),
            grad_lines("grad_seq", g_seq),
            grad_lines("grad_tok", g_tok),
            "end"]


def main():
    header = [
        banner("sequence_logprobs", __file__),
        f"# torch {torch.__version__} (float64, autograd), numpy {np.__version__}, python {sys.version.split()[0]}",
        "#",
        "# Logits (not stored) as in divergence_refs.txt: float32(scale * (2u - 1)), splitmix64, i = r*cols + c;",
        "# policy logits z use seed_z, reference logits a use seed_a. One record, whitespace-separated tokens:",
        "#   case <id> <rows> <cols> <seed_z> <seed_a> <scale> <T>",
        "#   inputs <hash_z> <hash_a>           hashes of the float32 bit patterns (see divergence_refs.txt)",
        "#   offsets <B+1> <B+1 offsets>        sequence b = rows [o_b, o_b+1)",
        "#   targets <rows ints>                -100 = ignore_index",
        "#   mask none | mask <rows values>     loss_mask (0/1 or weights)",
        "#   sum / mean / tokens / ref_sum / kl_sum <B values>",
        "#   token_logp / ref_token_logp / token_entropy / token_kl <rows values>   (0 on rows with weight 0)",
        "#   d_sum <B values>                   upstream of sequence_logprobs_backward: f = sum_b d_sum[b] sum_b",
        "#   d_token <rows>, d_kl <rows>        upstream of token_logprobs_backward (with ref_logits):",
        "#                                      f = sum_t (d_token[t] logp_t + d_kl[t] k_t) over rows with weight != 0",
        "#   grad_seq_full / grad_tok_full <rows*cols values>        df/dz, row-major, when rows*cols <= "
        f"{FULL_GRAD_MAX_ELEMS}",
        "#   grad_seq_summary / grad_tok_summary <sum> <sum_abs> <dot> <n> n x (<row> <col> <g>)   otherwise;",
        f"#                                      dot = sum g * w, w[r][c] = 2u - 1 from seed {WEIGHT_SEED}, i = r*cols + c",
        "#   end",
    ]
    write_refs(output_path("sequence_logprobs_refs.txt"), header, make_cases(), record, f"torch {torch.__version__}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generates tests/reference/preference_refs.txt: reference values and gradients of losskit's
preference losses (dpo, cpo, simpo, orpo, kto, bco, sparse_po) and of the BCO helpers (running mean,
logistic regression), computed in float64 by PyTorch autograd on TRL-style formulas, and by
scikit-learn for the logistic regression.

    /usr/bin/python3 tests/reference/gen_preference_refs.py [output]

The formulas follow huggingface/trl (trl/trainer/dpo_trainer.py and kto_trainer.py at f2cd577,
dpo_trainer.py at v0.25.0 for the options current TRL dropped, trl/experimental/{cpo,orpo,bco}),
Liu et al.'s RPO code (losses -= policy_chosen_logps * beta * eta) and the SparsePO trainer
(huawei-noah/HEBO SparsePO/src/trainers/sparse_trainer.py), restated here with torch ops: each loss
is written the way those trainers compute it (torch.sort for aot, F.logsigmoid, torch.exp for
discopop, log1mexp for ORPO, vector_norm for SparsePO's L1, ...), and autograd gives the gradients.

Inputs are not stored: this script and the C++ tests build them with the splitmix64 generator of
refs_common.py / tests/reference_vectors.hpp (imported here, not copied):
    u(seed, i)                 uniform in [0, 1)
    lengths(seed, n, maxlen)   n_i = 1 + floor(maxlen * u(seed, i))                        (float64)
    seq(seed, lengths, lo, hi) x_i = float32(n_i * (lo + (hi - lo) * u(seed, i)))        (a summed log-prob)
    near(seed, base, scale)    y_i = float32(base_i + scale * (2 u(seed, i) - 1))
Each record's header names the generator parameters; the C++ side rebuilds the same inputs.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refs_common import banner, fmt, output_path, splitmix64_u, write_refs  # noqa: E402

torch.set_default_dtype(torch.float64)


# ---- input generators (mirrored in tests/preference_test_support.hpp) --------------------------

def lengths(seed, n, maxlen):
    return 1.0 + np.floor(maxlen * splitmix64_u(seed, n))


def seq(seed, lens, lo, hi):
    u = splitmix64_u(seed, len(lens))
    return (lens * (lo + (hi - lo) * u)).astype(np.float32).astype(np.float64)


def near(seed, base, scale):
    u = splitmix64_u(seed, len(base))
    return (base + scale * (2.0 * u - 1.0)).astype(np.float32).astype(np.float64)


def paired_inputs(c):
    """Seeds seed..seed+5: chosen/rejected lengths, policy chosen/rejected, reference chosen/rejected."""
    n, s = c["n"], c["seed"]
    lc, lr = lengths(s, n, c["maxlen"]), lengths(s + 1, n, c["maxlen"])
    pc, pr = seq(s + 2, lc, c["lo"], c["hi"]), seq(s + 3, lr, c["lo"], c["hi"])
    rc, rr = near(s + 4, pc, c["scale"]), near(s + 5, pr, c["scale"])
    return lc, lr, pc, pr, rc, rr


def unpaired_inputs(c):
    """As paired_inputs with n_chosen = n, n_rejected = m; seeds seed+6, seed+7: the KL log-probs."""
    n, m, s = c["n"], c["m"], c["seed"]
    lc, lr = lengths(s, n, c["maxlen"]), lengths(s + 1, m, c["maxlen"])
    pc, pr = seq(s + 2, lc, c["lo"], c["hi"]), seq(s + 3, lr, c["lo"], c["hi"])
    rc, rr = near(s + 4, pc, c["scale"]), near(s + 5, pr, c["scale"])
    kl_len = lengths(s + 8, n + m, c["maxlen"])
    kp = seq(s + 6, kl_len, c["lo"], c["hi"])
    kr = near(s + 7, kp, c["scale"] * c.get("kl_scale", 1.0))
    return lc, lr, pc, pr, rc, rr, kp, kr


def t(x, grad=False):
    return torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=grad)


def grad_of(x):
    """x.grad, or zeros where the loss does not depend on x (autograd leaves it None)."""
    return x.grad if x.grad is not None else torch.zeros_like(x)


# ---- DPO (TRL dpo_trainer.py, current loop + v0.25 options) -------------------------------------

def dpo_ref(c):
    lc, lr, pc_, pr_, rc_, rr_ = paired_inputs(c)
    o = c["opt"]
    beta = o.get("beta", 0.1)
    types = o.get("loss_types", ["sigmoid"])
    weights = o.get("loss_weights", [1.0] * len(types))
    ls = o.get("label_smoothing", 0.0)
    tau = o.get("discopop_tau", 0.05)
    pc, pr = t(pc_, True), t(pr_, True)
    rc, rr = t(rc_), t(rr_)
    nc, nr = t(lc), t(lr)
    chosen_scores = pc - rc
    rejected_scores = pr - rr
    chosen_logratios, rejected_logratios = chosen_scores, rejected_scores
    delta_score = chosen_scores - rejected_scores
    nll = -pc.sum() / nc.sum()  # token-mean CE of the chosen completions, from their summed log-probs
    per_row = torch.zeros(len(pc_))
    for lt, w in zip(types, weights):
        if lt == "sigmoid":
            if o.get("conservative_sigmoid", False):  # TRL v0.25
                loss = -F.logsigmoid(beta * delta_score) * (1 - ls) - F.logsigmoid(-beta * delta_score) * ls
            else:
                loss = -F.logsigmoid(beta * delta_score)
        elif lt == "hinge":
            loss = torch.relu(1 - beta * delta_score)
        elif lt == "ipo":
            d = chosen_scores / nc - rejected_scores / nr
            loss = (d - 1 / (2 * beta)) ** 2
        elif lt == "exo_pair":
            eps = torch.tensor(ls)
            z = beta * delta_score
            loss = torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps)) + torch.sigmoid(-z) * (
                F.logsigmoid(-z) - torch.log(eps))
        elif lt == "nca_pair":
            cr, rrw = beta * chosen_scores, beta * rejected_scores
            loss = -F.logsigmoid(cr) - 0.5 * F.logsigmoid(-cr) - 0.5 * F.logsigmoid(-rrw)
        elif lt == "robust":
            loss = (-(1 - ls) * F.logsigmoid(beta * delta_score) + ls * F.logsigmoid(-beta * delta_score)) / (1 - 2 * ls)
        elif lt == "bco_pair":
            delta = o.get("bco_pair_delta", 0.0)  # v0.25: running mean; current TRL: none
            loss = -F.logsigmoid(beta * chosen_scores - delta) - F.logsigmoid(-(beta * rejected_scores - delta))
        elif lt == "sppo_hard":
            loss = (chosen_scores - 0.5 / beta) ** 2 + (rejected_scores + 0.5 / beta) ** 2
        elif lt == "aot":
            a, _ = torch.sort(pc - pr, dim=0)
            b, _ = torch.sort(rc - rr, dim=0)
            d = a - b
            loss = -F.logsigmoid(beta * d) * (1 - ls) - F.logsigmoid(-beta * d) * ls
        elif lt == "aot_unpaired":
            a, _ = torch.sort(chosen_logratios, dim=0)
            b, _ = torch.sort(rejected_logratios, dim=0)
            d = a - b
            loss = -F.logsigmoid(beta * d) * (1 - ls) - F.logsigmoid(-beta * d) * ls
        elif lt == "apo_zero":
            loss = (1 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(beta * rejected_logratios)
        elif lt == "apo_down":
            loss = torch.sigmoid(beta * chosen_logratios) + (1 - torch.sigmoid(beta * delta_score))
        elif lt == "discopop":
            z = delta_score * beta
            m = torch.sigmoid(z / tau)
            loss = -F.logsigmoid(z) * (1 - m) + torch.exp(-z) * m
        elif lt == "sft":
            loss = nll.expand(len(pc_))
        elif lt == "sigmoid_norm":
            d = chosen_scores / nc - rejected_scores / nr
            loss = -F.logsigmoid(beta * d)
        else:
            raise ValueError(lt)
        per_row = per_row + w * loss
    if o.get("rpo_alpha", 0.0) > 0:
        per_row = per_row + o["rpo_alpha"] * nll  # TRL v0.25 rpo_alpha
    if o.get("rpo_eta", 0.0) > 0:
        per_row = per_row - pc * beta * o["rpo_eta"]  # Liu et al. official RPO
    value = per_row.mean()
    value.backward()
    cr = beta * (pc - rc).detach()
    rj = beta * (pr - rr).detach()
    extras = {"accuracy": float((cr > rj).double().mean())}
    if "sft" in types or o.get("rpo_alpha", 0.0) > 0:
        extras["nll"] = float(nll)
    return value, per_row, grad_of(pc), grad_of(pr), cr, rj, extras


# ---- CPO / SimPO (trl/experimental/cpo) -----------------------------------------------------------

def cpo_ref(c):
    lc, lr, pc_, pr_, _, _ = paired_inputs(c)
    o = c["opt"]
    simpo = c["fn"] == "simpo"
    beta = o.get("beta", 0.1)
    lt = "simpo" if simpo else o.get("loss_type", "sigmoid")
    ls = o.get("label_smoothing", 0.0)
    gamma = o.get("gamma", 0.5) if simpo else o.get("simpo_gamma", 0.5)
    cpo_alpha = o.get("cpo_alpha", 1.0)
    alpha = 0.0 if simpo else o.get("alpha", 0.0)
    average = o.get("average_log_prob", lt in ("ipo", "simpo"))
    pc_t, pr_t = t(pc_, True), t(pr_, True)
    nc, nr = t(lc), t(lr)
    pcl = pc_t / nc if average else pc_t
    prl = pr_t / nr if average else pr_t
    if alpha != 0.0:
        rcw = (1 - torch.exp(pcl).pow(-alpha)) / alpha
        rrw = (1 - torch.exp(prl).pow(-alpha)) / alpha
        logits = rcw - rrw
    else:
        rcw, rrw = pcl, prl
        logits = pcl - prl
    if lt == "simpo":
        logits = logits - gamma / beta
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    elif lt == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    elif lt == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif lt == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(lt)
    nll = -pc_t.sum() / nc.sum()
    per_row = losses + cpo_alpha * nll
    value = losses.mean() + cpo_alpha * nll
    value.backward()
    cr, rj = beta * rcw.detach(), beta * rrw.detach()
    extras = {"accuracy": float((cr > rj).double().mean())}
    if cpo_alpha > 0:
        extras["nll"] = float(nll)
    return value, per_row, grad_of(pc_t), grad_of(pr_t), cr, rj, extras


# ---- ORPO (trl/experimental/orpo) -------------------------------------------------------------------

def log1mexp(x):
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_ref(c):
    lc, lr, pc_, pr_, _, _ = paired_inputs(c)
    o = c["opt"]
    beta = o.get("beta", 0.1)
    pc_t, pr_t = t(pc_, True), t(pr_, True)
    nc, nr = t(lc), t(lr)
    xc, xr = pc_t / nc, pr_t / nr
    log_odds = (xc - xr) - (log1mexp(xc) - log1mexp(xr))
    ratio = F.logsigmoid(log_odds)
    nll = -pc_t.sum() / nc.sum()
    use_nll = o.get("compute_nll_loss", True)
    value = (nll if use_nll else 0.0) - (beta * ratio).mean()
    per_row = (nll if use_nll else 0.0) - beta * ratio
    value.backward()
    cr, rj = beta * xc.detach(), beta * xr.detach()
    extras = {"accuracy": float((cr > rj).double().mean()), "log_odds_ratio": float(ratio.mean()),
              "log_odds_chosen": float(log_odds.mean())}
    if use_nll:
        extras["nll"] = float(nll)
    return value, per_row, grad_of(pc_t), grad_of(pr_t), cr, rj, extras


# ---- KTO (trl/trainer/kto_trainer.py) ---------------------------------------------------------------

def kto_ref(c):
    _, _, pc_, pr_, rc_, rr_, kp, kr = unpaired_inputs(c)
    o = c["opt"]
    beta = o.get("beta", 0.1)
    wd, wu = o.get("desirable_weight", 1.0), o.get("undesirable_weight", 1.0)
    pc, pr = t(pc_, True), t(pr_, True)
    rc, rr = t(rc_), t(rr_)
    apo = o.get("loss_type", "kto") == "apo_zero_unpaired"
    if apo:
        kl = torch.zeros(())
    elif "z0" in o:
        kl = torch.tensor(o["z0"])
    else:
        kl = (t(kp) - t(kr)).mean().detach().clamp(min=0)
    cl = pc - rc
    rl = pr - rr
    if apo:
        chosen_losses = 1 - torch.sigmoid(beta * cl)
        rejected_losses = torch.sigmoid(beta * rl)
    else:
        chosen_losses = 1 - torch.sigmoid(beta * (cl - kl))
        rejected_losses = 1 - torch.sigmoid(beta * (kl - rl))
    losses = torch.cat((wd * chosen_losses, wu * rejected_losses), 0)
    value = losses.nanmean()
    value.backward()
    extras = {"reference_point": float(kl)}
    return value, losses, grad_of(pc), grad_of(pr), beta * cl.detach(), beta * rl.detach(), extras


# ---- BCO (trl/experimental/bco) ---------------------------------------------------------------------

class RunningMoments:
    """TRL's RunningMoments.update in float64, single process."""

    def __init__(self):
        self.mean, self.std, self.var, self.count = 0.0, 1.0, 1.0, 1e-24

    def update(self, xs):
        xs_count = xs.numel()
        xs_var, xs_mean = torch.var_mean(xs, unbiased=False)
        delta = xs_mean - self.mean
        tot_count = self.count + xs_count
        new_sum = xs_var * xs_count
        old_sum = self.var * self.count + delta ** 2 * self.count * xs_count / tot_count
        tot_sum = old_sum + new_sum
        self.mean += (delta * xs_count / tot_count).item()
        new_var = tot_sum / tot_count
        self.std = (new_var * tot_count / (tot_count - 1)).sqrt().item()
        self.var = new_var.item()
        self.count = tot_count


def bco_probs(c):
    s, m = c["seed"], c["m"]
    return splitmix64_u(s + 9, m)  # P(desirable | prompt) of each rejected example (float64)


def bco_ref(c):
    _, _, pc_, pr_, rc_, rr_, _, _ = unpaired_inputs(c)
    o = c["opt"]
    beta = o.get("beta", 0.1)
    running = RunningMoments()
    # Earlier batches of rewards (seed + 10 + k): the state the step starts from.
    for k in range(c.get("warm", 0)):
        running.update(t(near(c["seed"] + 10 + k, np.zeros(5), 0.5)))
    pc, pr = t(pc_, True), t(pr_, True)
    rc, rr = t(rc_), t(rr_)
    chosen_rewards = beta * (pc - rc)
    rejected_rewards = beta * (pr - rr)
    running.update(torch.cat((chosen_rewards, rejected_rewards), 0).detach())
    delta = torch.as_tensor(running.mean)
    chosen_losses = -F.logsigmoid(chosen_rewards - delta)
    rejected_losses = -F.logsigmoid(-(rejected_rewards - delta))
    if o.get("udm", False):
        p = t(bco_probs(c))
        weight = (p / (1 - p + 1e-8)).clamp(min=0.5, max=10.0)
        losses = torch.cat((chosen_losses, weight * rejected_losses), 0)
    else:
        losses = torch.cat((chosen_losses, rejected_losses), 0)
    value = losses.nanmean()
    value.backward()
    extras = {"reference_point": float(delta), "running_count": running.count, "running_var": running.var,
              "running_std": running.std}
    return value, losses, grad_of(pc), grad_of(pr), chosen_rewards.detach(), rejected_rewards.detach(), extras


# ---- SparsePO (HEBO SparsePO sparse_trainer.py) -----------------------------------------------------

def sparse_inputs(c):
    """B pairs; seeds seed..: lengths (2B, 0 allowed when zero_len), policy token logps, reference,
    token KL terms (<= 0), reward mask, KL mask (in [0, 2), a few exact zeros)."""
    b, s = c["n"], c["seed"]
    lens = np.floor((c["maxlen"] + 1) * splitmix64_u(s, 2 * b)) if c.get("zero_len") else lengths(s, 2 * b, c["maxlen"])
    tokens = int(lens.sum())
    offsets = np.concatenate([[0.0], np.cumsum(lens)])
    pol = (-3.0 * splitmix64_u(s + 1, tokens)).astype(np.float32).astype(np.float64)
    ref = near(s + 2, pol, 0.5)
    kl = (-0.2 * splitmix64_u(s + 3, tokens)).astype(np.float32).astype(np.float64)
    mu = np.floor(8.0 * splitmix64_u(s + 4, tokens)) / 4.0  # multiples of 1/4 in [0, 1.75], zeros included
    md = np.floor(8.0 * splitmix64_u(s + 5, tokens)) / 4.0
    return offsets, pol, ref, kl, mu, md


def sparse_ref(c):
    offsets, pol_, ref_, kl_, mu_, md_ = sparse_inputs(c)
    o = c["opt"]
    beta = o.get("beta", 0.1)
    l1u, l1d = o.get("l1_norm_param_u", 0.0), o.get("l1_norm_param_d", 0.0)
    shared = o.get("shared_mask", False)
    masks = o.get("masks", True)
    b = c["n"]
    tokens = len(pol_)
    pol, kl = t(pol_, True), t(kl_, True)
    mu = t(mu_ if masks else np.ones(tokens), True)
    md = mu if shared else t(md_ if masks else np.ones(tokens), True)
    ref = t(ref_)
    lens = (offsets[1:] - offsets[:-1]).astype(int)
    L = max(1, int(lens.max()))
    # scatter the flat tokens into the trainer's padded [2B, L] layout with a loss mask
    idx = torch.zeros(2 * b, L, dtype=torch.long)
    loss_mask = torch.zeros(2 * b, L)
    for q in range(2 * b):
        for j in range(lens[q]):
            idx[q, j] = int(offsets[q]) + j
            loss_mask[q, j] = 1.0

    def pad(v):
        return v[idx] * loss_mask

    reward = pad(pol) - pad(ref)
    rw_mask, kl_mask = pad(mu), pad(md)
    token_kl = pad(kl)
    chosen_reward = (rw_mask[:b] * reward[:b] * loss_mask[:b]).sum(-1)
    rejected_reward = (rw_mask[b:] * reward[b:] * loss_mask[b:]).sum(-1)
    u = chosen_reward - rejected_reward
    chosen_kl = (kl_mask[:b] * token_kl[:b] * loss_mask[:b]).sum(-1)
    rejected_kl = (kl_mask[b:] * token_kl[b:] * loss_mask[b:]).sum(-1)
    d = chosen_kl - rejected_kl
    losses = -F.logsigmoid(beta * (u - d))
    losses = losses + l1u * (torch.linalg.vector_norm(rw_mask[:b] * loss_mask[:b], ord=1, dim=-1)
                             + torch.linalg.vector_norm(rw_mask[b:] * loss_mask[b:], ord=1, dim=-1))
    losses = losses + l1d * (torch.linalg.vector_norm(kl_mask[:b] * loss_mask[:b], ord=1, dim=-1)
                             + torch.linalg.vector_norm(kl_mask[b:] * loss_mask[b:], ord=1, dim=-1))
    value = losses.mean()
    value.backward()
    cr = beta * (chosen_reward + chosen_kl).detach()
    rj = beta * (rejected_reward + rejected_kl).detach()
    extras = {"accuracy": float((cr > rj).double().mean())}
    grads = {"d_policy": grad_of(pol), "d_kl": grad_of(kl), "d_mu": grad_of(mu)}
    if not shared:
        grads["d_md"] = grad_of(md)
    return value, losses, grads, cr, rj, extras, u.detach(), d.detach()


# ---- logistic regression (sklearn) -------------------------------------------------------------------

def logreg_inputs(c):
    n, m, d, s = c["n"], c["m"], c["d"], c["seed"]
    mu = 0.5 * (2.0 * splitmix64_u(s + 1, d) - 1.0)
    xc = (2.0 * splitmix64_u(s, n * d) - 1.0).reshape(n, d) + mu
    xr = (2.0 * splitmix64_u(s + 2, m * d) - 1.0).reshape(m, d)
    return xc, xr


def logreg_ref(c):
    from sklearn.linear_model import LogisticRegression
    xc, xr = logreg_inputs(c)
    x = np.concatenate([xc, xr])
    y = np.concatenate([np.ones(len(xc)), np.zeros(len(xr))])
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        # newton-cg reaches the optimum to rounding in a few steps, then cannot meet a 1e-12 gradient
        # tolerance and stops at max_iter: the coefficients are converged, only the warning is noise.
        warnings.simplefilter("ignore", ConvergenceWarning)
        exact = LogisticRegression(class_weight="balanced", solver="newton-cg", tol=1e-12, max_iter=300).fit(x, y)
    default = LogisticRegression(class_weight="balanced").fit(x, y)  # TRL's call (lbfgs, tol 1e-4)
    return exact, default, x


# ---- the cases ----------------------------------------------------------------------------------------

DPO_TYPES = ["sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero",
             "apo_down", "discopop", "sigmoid_norm", "aot", "aot_unpaired", "sft"]


def make_cases():
    cases = []

    def add(fn, **kw):
        c = dict(fn=fn, n=8, m=0, seed=100 + 16 * len(cases), maxlen=40, lo=-2.0, hi=-0.05, scale=20.0, opt={})
        c.update(kw)
        cases.append(c)

    # Every DPO loss type alone at TRL defaults, on moderate and on wide margins.
    for lt in DPO_TYPES:
        opt = {"loss_types": [lt]}
        if lt in ("exo_pair",):
            opt["label_smoothing"] = 1e-3
        add("dpo", opt=opt)
        add("dpo", n=5, scale=3.0, opt=dict(opt, beta=0.5))
    # Options.
    add("dpo", opt={"loss_types": ["sigmoid"], "conservative_sigmoid": True, "label_smoothing": 0.2})
    add("dpo", opt={"loss_types": ["robust"], "label_smoothing": 0.1})
    add("dpo", opt={"loss_types": ["exo_pair"], "label_smoothing": 0.3})
    add("dpo", opt={"loss_types": ["aot"], "label_smoothing": 0.25})
    add("dpo", opt={"loss_types": ["aot_unpaired"], "label_smoothing": 0.25})
    add("dpo", opt={"loss_types": ["discopop"], "discopop_tau": 0.5})
    add("dpo", opt={"loss_types": ["bco_pair"], "bco_pair_delta": 0.3})
    add("dpo", opt={"loss_types": ["sigmoid", "sft"], "loss_weights": [1.0, 0.005], "beta": 0.01})  # TRL's RPO map
    add("dpo", opt={"loss_types": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]})  # MPO
    add("dpo", opt={"loss_types": ["ipo", "aot", "discopop", "apo_down"], "loss_weights": [0.5, 1.5, 2.0, -0.25]})
    add("dpo", opt={"loss_types": ["sigmoid"], "rpo_alpha": 1.0})
    add("dpo", opt={"loss_types": ["sigmoid"], "rpo_eta": 0.005, "beta": 0.05})
    add("dpo", n=1, opt={"loss_types": ["sigmoid", "aot", "aot_unpaired", "ipo"]})
    add("dpo", n=33, opt={"loss_types": DPO_TYPES, "label_smoothing": 0.01})
    # CPO / SimPO / ORPO.
    for lt in ["sigmoid", "hinge", "ipo", "simpo"]:
        add("cpo", opt={"loss_type": lt})
        add("cpo", scale=3.0, opt={"loss_type": lt, "beta": 2.0, "cpo_alpha": 0.0})
    add("cpo", opt={"loss_type": "sigmoid", "label_smoothing": 0.1, "average_log_prob": True})
    add("cpo", opt={"loss_type": "ipo", "average_log_prob": False, "cpo_alpha": 0.5})
    add("cpo", lo=-0.3, hi=-0.01, opt={"loss_type": "sigmoid", "alpha": 0.25, "average_log_prob": True})
    add("cpo", lo=-0.3, hi=-0.01, opt={"loss_type": "simpo", "alpha": -0.5})
    add("simpo", opt={})
    add("simpo", opt={"beta": 2.5, "gamma": 1.4, "cpo_alpha": 0.0})
    add("simpo", opt={"label_smoothing": 0.15, "cpo_alpha": 0.3})
    add("orpo", opt={})
    add("orpo", lo=-0.05, hi=-1e-6, opt={"beta": 0.25})  # average log-probs near 0 (log1mexp's other branch)
    add("orpo", lo=-8.0, hi=-0.5, opt={"compute_nll_loss": False})
    # KTO.
    add("kto", n=5, m=3, opt={})
    add("kto", n=4, m=6, opt={"desirable_weight": 1.33, "undesirable_weight": 0.7, "beta": 0.3})
    add("kto", n=4, m=4, scale=2.0, kl_scale=0.01, opt={})  # estimated z0 clamped at 0
    add("kto", n=6, m=2, opt={"z0": 1.75})
    add("kto", n=3, m=0, opt={"z0": -0.5})
    add("kto", n=0, m=4, opt={})
    add("kto", n=3, m=5, opt={"loss_type": "apo_zero_unpaired"})
    # BCO.
    add("bco", n=5, m=3, opt={})
    add("bco", n=4, m=6, warm=3, opt={"beta": 0.2})
    add("bco", n=6, m=5, warm=2, opt={"udm": True})
    add("bco", n=0, m=3, warm=1, opt={"udm": True})
    # SparsePO.
    add("sparse_po", n=4, maxlen=7, opt={})
    add("sparse_po", n=3, maxlen=6, opt={"masks": False, "beta": 0.8})
    add("sparse_po", n=5, maxlen=5, opt={"l1_norm_param_u": 0.01, "l1_norm_param_d": 0.003})
    add("sparse_po", n=4, maxlen=6, opt={"shared_mask": True, "l1_norm_param_u": 0.001, "l1_norm_param_d": 0.002})
    add("sparse_po", n=3, maxlen=4, zero_len=True, opt={"l1_norm_param_u": 0.02})
    # Logistic regression.
    add("logreg", n=30, m=40, d=3)
    add("logreg", n=64, m=50, d=8)
    add("logreg", n=12, m=9, d=20)  # more dimensions than per-class samples
    return cases


# ---- output -----------------------------------------------------------------------------------------

def fmt_vec(v):
    v = v.detach().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return " ".join(fmt(x) for x in v.reshape(-1))


def fmt_opt(o):
    parts = []
    for k, v in o.items():
        if isinstance(v, list):
            v = ",".join(str(x) for x in v)
        elif isinstance(v, bool):
            v = int(v)
        parts.append(f"{k}={v}")
    return " ".join(parts)


HEAD_KEYS = ["n", "m", "seed", "maxlen", "lo", "hi", "scale", "kl_scale", "warm", "zero_len", "d"]


def record(k, c):
    lines = [f"case {k} {c['fn']} " + " ".join(f"{key}={c[key]}" for key in HEAD_KEYS if key in c),
             "opt " + fmt_opt(c["opt"])]
    fn = c["fn"]
    if fn == "logreg":
        exact, default, x = logreg_ref(c)
        outputs = {"coef": exact.coef_, "intercept": exact.intercept_[0], "proba": exact.predict_proba(x)[:, 1],
                   "coef_default": default.coef_, "intercept_default": default.intercept_[0]}
    elif fn == "sparse_po":
        value, per_row, grads, cr, rj, extras, u, d = sparse_ref(c)
        outputs = {"value": value, "per_row": per_row, **grads, "u": u, "d": d, "chosen_rewards": cr,
                   "rejected_rewards": rj, **extras}
    else:
        ref = {"dpo": dpo_ref, "cpo": cpo_ref, "simpo": cpo_ref, "orpo": orpo_ref, "kto": kto_ref,
               "bco": bco_ref}[fn]
        value, per_row, gc, gr, cr, rj, extras = ref(c)
        outputs = {"value": value, "per_row": per_row, "d_chosen": gc, "d_rejected": gr, "chosen_rewards": cr,
                   "rejected_rewards": rj, **extras}
    for name, v in outputs.items():
        scalar = np.ndim(v.detach().numpy() if isinstance(v, torch.Tensor) else v) == 0
        lines.append(f"{name} " + (fmt(v) if scalar else fmt_vec(v)))
    return lines + ["end"]


def main():
    import sklearn
    header = [
        banner("preference-loss", __file__),
        f"# torch {torch.__version__} (float64, autograd), scikit-learn {sklearn.__version__}, numpy {np.__version__},"
        f" python {sys.version.split()[0]}",
        "# Inputs are rebuilt from the header's generator parameters (see the script). One record:",
        "#   case <id> <fn> key=value ...         generator parameters",
        "#   opt key=value ...                    loss options (lists comma-separated; booleans 0/1)",
        "#   <name> <numbers...>                  outputs: value, per_row, d_chosen, d_rejected, chosen_rewards,",
        "#                                        rejected_rewards, accuracy, nll, reference_point, ...",
        "#   end",
        "# Numbers are Python repr of float64 (shortest round trip).",
    ]
    write_refs(output_path("preference_refs.txt"), header, make_cases(), record, f"torch {torch.__version__}")


if __name__ == "__main__":
    main()

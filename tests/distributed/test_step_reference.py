"""One real step of every algorithm equals a dense simulation of all ranks written plainly here.

Four ranks on a ring, each starting from its own model (so gossip is never a no-op). The reference
holds every rank's parameters as one row of a matrix X and applies ALGORITHMS.md literally: gradients
by autograd on a copy, SAM, NGM's cross-gradients, the wrapped optimizer (run on a plain copy), QGM's
direction and buffer, QG-Adam (both feeds, both lr meanings: saddle_torch/optim/qgm.py), W·X
mixing in both orders, and CHOCO with the codec's own roundtrip (the same message seeds as the
engine). Compressed NGM computes its cross-gradients at the public copies x̂ and compresses them with
error feedback per link.
"""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
import torch
from harness import run_ranks
from torch import nn

import saddle_torch as st
from saddle_torch import _ops
from saddle_torch.compression import Compression, roundtrip

WORLD, STEPS, LR, RHO, GAMMA, BETA, WD = 4, 2, 0.05, 0.05, 0.75, 0.9, 1e-3
ADAM_WD = 0.5  # large, so that coupled vs decoupled decay (and where it enters QG-Adam) is visible
CLASSES, DIM = 4, 8


def _data(rank: int, step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    y = torch.tensor([(rank + i % 2) % CLASSES for i in range(16)])
    x = torch.eye(CLASSES, DIM)[y] * 2.5 + torch.randn(16, DIM, generator=g)
    return x.to(dtype), y


def _model(rank: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(rank)
    return nn.Sequential(nn.Linear(DIM, 12), nn.Tanh(), nn.Linear(12, CLASSES)).to(dtype)


def _inner(kind: str, params, qgm: bool) -> torch.optim.Optimizer:
    if kind == "sgd":
        momentum = 0.0 if qgm else 0.9
        return torch.optim.SGD(params, lr=LR, momentum=momentum, nesterov=not qgm, weight_decay=WD)
    cls = torch.optim.Adam if kind.startswith("adam:") or kind == "adam" else torch.optim.AdamW
    return cls(params, lr=0.01, weight_decay=ADAM_WD)


CASES = [
    (alg, order, comp, kind)
    for alg in ("dsgd", "qgm", "sam-dsgd", "q-saddle", "ngm", "n-saddle")
    for order in ("atc", "awc")
    for comp in ("none", "int8")
    for kind in ("sgd",)
] + [
    ("allreduce", "awc", "none", "sgd"),
    ("q-saddle", "atc", "none", "adamw"),
    ("q-saddle", "awc", "none", "adam:qgm"),  # qg_adam_lr="qgm": the QGM paper's code
    ("qgm", "awc", "int8", "adamw"),
    ("dsgd", "atc", "none", "adamw"),
    ("q-saddle", "atc", "none", "adamw:scaled"),
    ("qgm", "awc", "none", "adam:scaled"),
]


def _feed(kind: str) -> str:
    return "scaled" if kind.endswith(":scaled") else "normalized"


def _lr_meaning(kind: str) -> str:
    return "qgm" if kind.endswith(":qgm") else "adam"


def _dtype(comp: str) -> torch.dtype:
    return torch.float32 if comp == "int8" else torch.float64


def _run(rank: int, world: int) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    out = {}
    for alg, order, comp, kind in CASES:
        dtype = _dtype(comp)
        model = _model(rank, dtype)
        opt = st.DistributedOptimizer(
            _inner(kind, model.parameters(), alg in ("qgm", "q-saddle")),
            model,
            algorithm=alg,
            order=order,
            gamma=GAMMA,
            rho=RHO,
            beta=BETA,
            compression=comp,
            qg_adam=_feed(kind),
            qg_adam_lr=_lr_meaning(kind),
        )
        (key,) = opt.saddle.flat.buffers
        xs = []
        for step in range(STEPS):
            x, y = _data(rank, step, dtype)

            def closure(x=x, y=y, opt=opt, model=model):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
            xs.append(opt.saddle.flat.buffers[key].detach().clone())
        out[(alg, order, comp, kind)] = {"x": xs, "name": opt.saddle.name(key)}
    return out


# --- the dense reference ------------------------------------------------------------------------------
def _grad(model: nn.Module, xvec: torch.Tensor, rank: int, step: int, rho: float | None) -> torch.Tensor:
    """∇F_rank(x) on rank's batch of this step (SAM: at x + ρ g/‖g‖), flattened."""
    m = copy.deepcopy(model)
    nn.utils.vector_to_parameters(xvec, m.parameters())
    x, y = _data(rank, step, xvec.dtype)

    def g_at(v):
        nn.utils.vector_to_parameters(v, m.parameters())
        gs = torch.autograd.grad(nn.functional.cross_entropy(m(x), y), list(m.parameters()))
        return torch.cat([t.reshape(-1) for t in gs])

    g = g_at(xvec)
    if rho is None:
        return g
    return g_at(xvec + rho * g / (g.norm() + 1e-12))


def _reference(alg: str, order: str, comp: str, kind: str, name: str) -> list[torch.Tensor]:
    dtype = _dtype(comp)
    sam = alg in ("sam-dsgd", "q-saddle", "n-saddle")
    qgm = alg in ("qgm", "q-saddle")
    cross = alg in ("ngm", "n-saddle")
    models = [_model(r, dtype) for r in range(WORLD)]
    X = torch.stack([nn.utils.parameters_to_vector(m.parameters()).detach() for m in models])
    W = st.topology.ring(WORLD).mixing_matrix().to(dtype)
    codec = Compression.int8 if comp == "int8" else None
    x_hat, s = torch.zeros_like(X), torch.zeros_like(X)
    m_hat, m1, m2 = torch.zeros_like(X), torch.zeros_like(X), torch.zeros_like(X)
    local = [_inner(kind, m.parameters(), qgm) for m in models]  # the wrapped optimizer, on copies
    errors = {}  # compressed NGM: (sender j, receiver i) → the error of link j → i
    hist = []

    def choco_round(sent: torch.Tensor, step: int) -> None:
        nonlocal x_hat, s
        seed = [_ops.message_seed(_ops.name_hash(name), step, i) for i in range(WORLD)]
        q = torch.stack([roundtrip(codec, sent[i] - x_hat[i], seed[i]) for i in range(WORLD)])
        x_hat = x_hat + q
        s = s + W @ q

    for step in range(STEPS):
        G = torch.stack([_grad(models[i], X[i], i, step, RHO if sam else None) for i in range(WORLD)])
        if cross and codec is not None and order == "awc":  # the pre-step round, before the cross terms
            choco_round(X, step)
        if cross:  # ĝ_i = Σ_j w_ji ∇F_j(x_i), each on j's batch (SAM too for n-saddle's cross terms)
            at = X if codec is None else x_hat.clone()  # compressed: j only knows x̂_i

            def term(i: int, j: int, G=G, at=at, step=step) -> torch.Tensor:
                if j == i:
                    return G[i]
                g = _grad(models[i], at[i], j, step, RHO if sam else None)
                if codec is None:
                    return g
                v = errors.get((j, i), torch.zeros_like(g)) + g
                c = roundtrip(codec, v, _ops.message_seed(_ops.name_hash(name + "/cross"), step, j))
                errors[(j, i)] = v - c
                return c

            G = torch.stack(
                [sum(W[j, i] * term(i, j) for j in range(WORLD) if W[j, i] > 0) for i in range(WORLD)]
            )
        if alg == "allreduce":
            G = G.mean(0, keepdim=True).expand_as(G)
        half = X.clone()
        if qgm and kind == "sgd":
            d = G + WD * X
            u = d + BETA * (BETA * m_hat + d)  # Nesterov
            half = X - LR * u
        elif qgm:  # QG-Adam
            group = local[0].param_groups[0]
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            t = step + 1
            decoupled = kind.startswith("adamw")
            g = G if decoupled else G + ADAM_WD * X
            base = X * (1 - lr * ADAM_WD) if decoupled else X
            tm1 = b1 * m1 + g
            tm2 = b2 * m2 + (1 - b2) * g * g
            c1 = 1.0 if _lr_meaning(kind) == "adam" else 1 - b1**t  # qg_adam_lr: m₁'s bias correction
            half = base - lr / c1 * tm1 / ((tm2 / (1 - b2**t)).sqrt() + eps)
        else:
            for i, (m, o) in enumerate(zip(models, local, strict=True)):
                with torch.no_grad():
                    nn.utils.vector_to_parameters(X[i].clone(), m.parameters())  # no aliasing of X
                offset = 0
                for p in m.parameters():
                    p.grad = G[i, offset : offset + p.numel()].view_as(p).clone()
                    offset += p.numel()
                o.step()
                half[i] = nn.utils.parameters_to_vector(m.parameters()).detach()
        sent = half if order == "atc" else X  # AWC gossips the pre-step model
        if alg == "allreduce":  # no gossip: the gradient was the exact average
            new = half
        elif codec is None:
            new = half + GAMMA * (W @ sent - sent)
        else:
            if not (cross and order == "awc"):  # compressed AWC NGM had its round before the cross terms
                choco_round(sent, step)
            new = half + GAMMA * (s - x_hat)
        if qgm and kind == "sgd":
            m_hat = BETA * m_hat + (1 - BETA) * (X - new) / LR
        elif qgm:
            disp = X - new
            disp = disp / (disp.norm(dim=1, keepdim=True) + 1e-8)  # one global norm per rank
            if _feed(kind) == "scaled":  # at the size of the raw gradient
                disp = disp * G.norm(dim=1, keepdim=True)
            m1, m2 = b1 * m1 + (1 - b1) * disp, b2 * m2 + (1 - b2) * disp * disp
        X = new
        hist.append(X.clone())
    return hist


@pytest.fixture(scope="module")
def ranks() -> dict:
    return run_ranks(_run, WORLD, timeout=600)


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_one_step_equals_the_dense_reference(ranks: dict, case: tuple) -> None:
    ref = _reference(*case, name=ranks[0][case]["name"])
    for rank in range(WORLD):
        got = ranks[rank][case]
        for step in range(STEPS):
            want = ref[step][rank]
            err = float((got["x"][step] - want).abs().max() / want.abs().max())
            assert err < 1e-6, (case, rank, step, err)

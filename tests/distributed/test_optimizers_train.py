"""Every algorithm trains, whichever optimizer it wraps (SGD, Adam, AdamW), measured against all-reduce.

What this guards against: QGM's direction fed to Adam as a gradient (Adam's moments acting on a
momentum a second time) left q-saddle + AdamW worse than its start; the QGM paper's normalised
QG-Adam feed let the loss climb back at a constant learning rate (0.43 at step 60, 0.70 at step 240:
saddle_torch/optim/qgm.py). Both would fail here.

Measured here (4 ranks, ring, default order atc, loss of the averaged model / all-reduce's): with SGD
every algorithm is within 0.5% at step 60. With Adam and AdamW (lr 0.01) at step 60: ngm, n-saddle
1.01; qgm, q-saddle (QG-Adam) 1.03-1.05; dsgd, sam-dsgd (local Adam) 1.51, which catch up later
(1.10 at step 240): local adaptive moments on non-IID data are slow, not wrong. So the test checks
everything within 15% at step 240, and at step 60 the algorithms with quasi-global or neighbourhood
information.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from harness import run_ranks
from test_training import _averaged_model_loss, _closure, _data, _model

import saddle_torch as st

ALGOS = ["allreduce", "dsgd", "qgm", "sam-dsgd", "q-saddle", "ngm", "n-saddle"]
EARLY, STEPS = 60, 240


def _inner(kind: str, params, qgm: bool) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.0 if qgm else 0.9, nesterov=not qgm)
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    return cls(params, lr=0.01, weight_decay=1e-4)


def _train(rank: int, world: int, kind: str) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    out = {}
    for algo in ALGOS:
        model = _model()
        opt = st.DistributedOptimizer(
            _inner(kind, model.parameters(), "q" in algo.split("-")[0]), model, algorithm=algo
        )
        out[algo] = {"start": _averaged_model_loss(model, world)}
        for step in range(STEPS):
            x, y = _data(rank, 32, step + 1)
            opt.step(_closure(model, opt, x, y))
            if step + 1 == EARLY:
                out[algo]["early"] = _averaged_model_loss(model, world)
        out[algo]["end"] = _averaged_model_loss(model, world)
    return out


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_every_algorithm_reaches_allreduce_loss_with_every_optimizer(kind: str) -> None:
    results = run_ranks(_train, 4, kind, timeout=600)[0]
    ref = results["allreduce"]
    assert ref["end"] < 0.5 * ref["start"], ref
    ratio = {algo: r["end"] / ref["end"] for algo, r in results.items()}
    early = {algo: r["early"] / ref["early"] for algo, r in results.items()}
    for algo, r in results.items():
        assert r["end"] < 0.5 * r["start"], (kind, algo, r)
    assert max(ratio.values()) <= 1.15, (kind, ratio)
    fast = list(ALGOS) if kind == "sgd" else ["qgm", "q-saddle", "ngm", "n-saddle"]
    assert max(early[algo] for algo in fast) <= 1.15, (kind, early)


def _scaled_runs(rank: int, world: int, feed: str) -> list[list[torch.Tensor]]:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    finals = []
    for scale in (1.0, 1000.0):
        model = _model()
        opt = st.DistributedOptimizer(
            torch.optim.AdamW(model.parameters(), lr=0.01), model, algorithm="qgm", qg_adam=feed
        )
        for step in range(20):
            x, y = _data(rank, 32, step + 1)

            def closure(x=x, y=y, model=model, opt=opt, scale=scale):
                opt.zero_grad()
                loss = scale * torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
        finals.append([p.detach().clone() for p in model.parameters()])
    return finals


@pytest.mark.parametrize("feed", ["scaled", "normalized"])
def test_qg_adam_scaled_feed_is_invariant_to_the_loss_scale(feed: str) -> None:
    """Adam does not change when the loss is multiplied by a constant; QG-Adam's default feed neither.

    The paper's normalised feed does (its momentum has a fixed size, its gradient term does not):
    the check that tells the two apart.
    """
    out = run_ranks(_scaled_runs, 4, feed, timeout=300)
    worst = max(
        float((a - b).abs().max() / a.abs().max())
        for finals in out.values()
        for a, b in zip(*finals, strict=True)
    )
    if feed == "scaled":
        assert worst < 1e-4, worst  # ε = 1e-8 is the only scale-dependent term
    else:
        assert worst > 1e-2, worst

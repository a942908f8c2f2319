"""Every algorithm trains, whichever optimizer it wraps (SGD, Adam, AdamW), measured against all-reduce.

What this guards against: QGM's direction fed to Adam as a gradient (Adam's moments acting on a
momentum a second time) left q-saddle + AdamW worse than its start.

Measured here (4 ranks, ring, default order atc, loss of the averaged model / all-reduce's): with SGD
every algorithm is within 0.5% at step 60. With Adam and AdamW (lr 0.01): ngm, n-saddle 1.01 at step
60; dsgd, sam-dsgd (local Adam) 1.51 at step 60, 1.10 at step 240 (slow, not wrong). QG-Adam (the
default: normalised feed, ``qg_adam_lr="adam"``) 1.25-1.28 at step 60, ahead of local Adam, but
drifting to 2.18-2.28 at step 240 at this constant lr (its momentum has a fixed size while ‖g‖ < 1
here: qgm.py); with the QGM code's bias correction (``qg_adam_lr="qgm"``) 1.33 and 1.68; with
``qg_adam="scaled"`` 1.07 and 1.25. The bounds are those, with a margin.
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
    runs = ALGOS + ([] if kind == "sgd" else ["q-saddle:scaled", "q-saddle:qgm-lr"])
    for run in runs:
        algo, _, feed = run.partition(":")
        model = _model()
        opt = st.DistributedOptimizer(
            _inner(kind, model.parameters(), "q" in algo.split("-")[0]),
            model,
            algorithm=algo,
            qg_adam="scaled" if feed == "scaled" else "normalized",
            qg_adam_lr="qgm" if feed == "qgm-lr" else "adam",
        )
        out[run] = {"start": _averaged_model_loss(model, world)}
        for step in range(STEPS):
            x, y = _data(rank, 32, step + 1)
            opt.step(_closure(model, opt, x, y))
            if step + 1 == EARLY:
                out[run]["early"] = _averaged_model_loss(model, world)
        out[run]["end"] = _averaged_model_loss(model, world)
    return out


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_every_algorithm_reaches_allreduce_loss_with_every_optimizer(kind: str) -> None:
    results = run_ranks(_train, 4, kind, timeout=600)[0]
    ref = results["allreduce"]
    assert ref["end"] < 0.5 * ref["start"], ref
    ratio = {algo: r["end"] / ref["end"] for algo, r in results.items()}
    early = {algo: r["early"] / ref["early"] for algo, r in results.items()}
    drifting = {"qgm", "q-saddle", "q-saddle:qgm-lr"}  # the normalised feed at a constant lr (qgm.py)
    for algo, r in results.items():
        assert r["end"] < (0.75 if kind != "sgd" and algo in drifting else 0.5) * r["start"], (kind, algo, r)
    if kind == "sgd":
        assert max(ratio.values()) <= 1.15 and max(early.values()) <= 1.15, (ratio, early)
        return
    for algo in ("dsgd", "sam-dsgd", "ngm", "n-saddle"):
        assert ratio[algo] <= 1.15, (kind, algo, ratio)
    assert early["ngm"] <= 1.15 and early["n-saddle"] <= 1.15, (kind, early)
    for algo in ("qgm", "q-saddle"):  # the default QG-Adam: ahead of local Adam early, drifting later
        assert early[algo] <= 1.45 and early[algo] < early["dsgd"], (kind, algo, early)
        assert ratio[algo] <= 2.6, (kind, algo, ratio)
    assert ratio["q-saddle:scaled"] <= 1.35 and early["q-saddle:scaled"] <= 1.2, (kind, ratio, early)
    paper = "q-saddle:qgm-lr"  # the QGM code's bias correction: larger first steps, the same drift
    assert early[paper] <= 1.45 and early[paper] < early["dsgd"], (kind, early)


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
    """Adam does not change when the loss is multiplied by a constant; QG-Adam's "scaled" feed neither.

    The paper's normalised feed (the default) does: its momentum has a fixed size, its gradient term
    does not. The check tells the two apart.
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

"""Every algorithm trains, whichever optimizer it wraps (SGD, Adam, AdamW), measured against all-reduce.

What this guards against: QGM's direction fed to Adam as a gradient (Adam's moments acting on a
momentum a second time) left q-saddle + AdamW worse than its start. QG-Adam (qgm.py) fixes it.

Measured here (4 ranks, ring, 60 steps, default order atc, end loss / all-reduce's end loss): with
SGD every algorithm is within 15%. With Adam and AdamW (lr 0.01): ngm, n-saddle 1.01; qgm, q-saddle
(QG-Adam) 1.35 (1.27 with awc); dsgd, sam-dsgd (local Adam) 1.51 — local adaptive moments drift on
non-IID data. The bounds below are those measurements with a margin; reaching 15% for Adam without
cross-gradients is open work.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from harness import run_ranks
from test_training import _averaged_model_loss, _closure, _data, _model

import saddle_torch as st

ALGOS = ["allreduce", "dsgd", "qgm", "sam-dsgd", "q-saddle", "ngm", "n-saddle"]
STEPS = 60


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
        start = _averaged_model_loss(model, world)
        for step in range(STEPS):
            x, y = _data(rank, 32, step + 1)
            opt.step(_closure(model, opt, x, y))
        out[algo] = {"start": start, "end": _averaged_model_loss(model, world)}
    return out


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_every_algorithm_reaches_allreduce_loss_with_every_optimizer(kind: str) -> None:
    results = run_ranks(_train, 4, kind, timeout=600)[0]
    target = results["allreduce"]["end"]
    assert target < 0.5 * results["allreduce"]["start"], results["allreduce"]
    ratio = {algo: r["end"] / target for algo, r in results.items()}
    for algo, r in results.items():
        assert r["end"] < 0.5 * r["start"], (kind, algo, r)
    if kind == "sgd":
        assert max(ratio.values()) <= 1.15, ratio
        return
    assert ratio["ngm"] <= 1.15 and ratio["n-saddle"] <= 1.15, ratio
    for algo in ("qgm", "q-saddle"):  # QG-Adam: better than local Adam, near all-reduce
        assert ratio[algo] <= 1.45 and ratio[algo] < ratio["dsgd"], (algo, ratio)

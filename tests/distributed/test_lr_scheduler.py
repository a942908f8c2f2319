"""LR schedulers and code that keeps the unwrapped optimizer still run the decentralized step.

A scheduler created before ``DistributedOptimizer`` patches the optimizer instance's ``step``; copied
into the wrapper, that bound method ran plain Adam and skipped every exchange (measured: all four
algorithms, all-reduce included, gave the same losses as training alone). Here all-reduce must keep
the ranks' models identical, which local training on different data cannot.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import pytest
import torch
from harness import run_ranks
from test_training import _closure, _data, _model

import saddle_torch as st

STEPS = 4


def _run(rank: int, world: int, when: str, call: str) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    model = _model()
    inner = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(inner, step_size=1, gamma=0.5) if when == "before" else None
    opt = st.DistributedOptimizer(inner, model, algorithm="allreduce")
    if when == "after":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    stepper = inner if call == "original" else opt
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(STEPS):
            x, y = _data(rank, 32, step + 1)
            stepper.step(_closure(model, opt, x, y))
            sched.step()
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "lr": opt.param_groups[0]["lr"],
        "steps": opt.saddle.step,
        "warnings": [str(w.message) for w in caught if "lr_scheduler" in str(w.message)],
    }


@pytest.mark.parametrize(
    ("when", "call"), [("before", "wrapped"), ("after", "wrapped"), ("before", "original")]
)
def test_scheduled_allreduce_keeps_ranks_identical(when: str, call: str) -> None:
    out = run_ranks(_run, 2, when, call, timeout=120)
    a, b = out[0], out[1]
    assert a["steps"] == b["steps"] == STEPS  # every step went through the wrapper
    for pa, pb in zip(a["params"], b["params"], strict=True):
        assert torch.equal(pa, pb)  # all-reduce: one model, although the ranks' data differ
    assert a["lr"] == pytest.approx(0.01 * 0.5**STEPS)  # the schedule reached the wrapped optimizer
    assert a["warnings"] == []  # no "lr_scheduler.step() before optimizer.step()" warning


def _wrap_twice(rank: int, world: int) -> str:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    model = _model()
    inner = torch.optim.Adam(model.parameters(), lr=0.01)
    st.DistributedOptimizer(inner, model)
    try:
        st.DistributedOptimizer(inner, model)
    except ValueError as exc:
        return str(exc)
    return "no error"


def test_wrapping_the_original_twice_is_refused() -> None:
    for msg in run_ranks(_wrap_twice, 2, timeout=120).values():
        assert "already wrapped" in msg

"""A new algorithm is one row: this file adds an ingredient (a Phase) and registers a recipe using it.

Nothing else in the package changes for it, and ``DistributedOptimizer(algorithm=...)`` runs it: the
step equals SAM, then the ingredient's gradient clipping, then the wrapped SGD, computed plainly here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from typing_extensions import override

import saddle_torch as st
from saddle_torch.optim import ALGORITHMS, Algorithm, Phase, SaddleRuntime, StepOptions, StepRun, register
from saddle_torch.optim.direction import LocalStep
from saddle_torch.optim.mixing import Gossip
from saddle_torch.optim.sam import Sam

MAX_NORM = 0.05


class ClipGradient(Phase):
    """Test-only ingredient: the gradient's global norm is clipped to ``MAX_NORM`` before the direction."""

    @classmethod
    @override
    def check(cls, options: StepOptions, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError("clip-sam (test) wraps torch.optim.SGD only")

    @override
    def gradient(self, rt: SaddleRuntime, run: StepRun, closure: object) -> None:
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in rt.flat.grad_buffers.values()))
        for g in rt.flat.grad_buffers.values():
            g.mul_(min(1.0, MAX_NORM / (norm + 1e-12)))


@pytest.fixture(scope="module", autouse=True)
def clip_sam() -> None:
    st.init()
    register(Algorithm("clip-sam", (Sam, ClipGradient, Gossip, LocalStep), "test: SAM, clipped"))
    yield
    del ALGORITHMS["clip-sam"]


def _sam_clipped_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, rho: float) -> None:
    ps = list(model.parameters())
    g = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), ps)
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    with torch.no_grad():
        es = [rho * gi / (norm + 1e-12) for gi in g]
        for p, e in zip(ps, es, strict=True):
            p.add_(e)
    g2 = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), ps)
    norm2 = math.sqrt(sum(float((gi**2).sum()) for gi in g2))
    with torch.no_grad():
        for p, e, gi in zip(ps, es, g2, strict=True):
            p.sub_(e)
            p.sub_(lr * gi * min(1.0, MAX_NORM / (norm2 + 1e-12)))


def test_a_registered_recipe_runs_its_new_phase_in_order() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    reference = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    reference.load_state_dict(model.state_dict())
    opt = st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="clip-sam")
    assert [type(p) for p in opt.saddle.phases] == [Sam, ClipGradient, Gossip, LocalStep]
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)

        def closure(x=x, y=y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        _sam_clipped_step(reference, x, y, lr=0.1, rho=0.05)
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_the_recipe_validates_through_its_phases_and_names_are_unique() -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="wraps torch.optim.SGD only"):
        st.DistributedOptimizer(torch.optim.Adam(model.parameters()), model, algorithm="clip-sam")
    with pytest.raises(ValueError, match="rho must be ≥ 0"):
        st.DistributedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="clip-sam", rho=-1
        )
    with pytest.raises(ValueError, match="already registered"):
        register(Algorithm("clip-sam", (Gossip, LocalStep)))
    with pytest.raises(ValueError, match="Phase classes"):
        register(Algorithm("broken", (Gossip, "LocalStep")))  # type: ignore[arg-type]

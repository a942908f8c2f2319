"""The direction phase for algorithms with local momentum: the wrapped optimizer's own step."""

from __future__ import annotations

from typing_extensions import override

from saddle_torch.optim.phases import Phase, SaddleRuntime, StepRun


class LocalStep(Phase):
    """x½ = the wrapped optimizer's update of x from the gradient (its momentum is local)."""

    @override
    def direction(self, rt: SaddleRuntime, run: StepRun) -> None:
        rt.base.step(rt.optimizer)


__all__ = ["LocalStep"]

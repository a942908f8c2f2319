"""Gradient accumulation under SAM: every extra evaluation of the loss re-runs every micro-batch.

Frameworks accumulate gradients themselves (Lightning's ``accumulate_grad_batches``, the Hugging Face
Trainer's ``gradient_accumulation_steps``): they run the forward and backward of each micro-batch,
summing gradients of losses already divided by the number of micro-batches, and step once. SAM then
perturbs x along that summed gradient (right: it is the big batch's gradient) but its second pass,
and each cross-gradient pass, must again be the gradient of the *whole* batch. Re-running only the
last micro-batch, on top of the gradients left by the others, gives a silently wrong gradient
(docs/frameworks.md has the measurement).

:class:`MicroBatches` keeps one callable per micro-batch, each of which evaluates its (scaled) loss
and calls ``backward()``; :meth:`MicroBatches.closure` is the closure for ``optimizer.step``: its
first call only finishes the first pass (running the micro-batch still pending, if any), every later
call zeroes the gradients and re-runs all micro-batches, so each evaluation is the big batch's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Closure = Callable[[], Any]  # zero the gradients, compute the loss, call backward(), return the loss


def _add(total: Any, loss: Any) -> Any:
    if loss is None:
        return total
    value = loss.detach() if hasattr(loss, "detach") else loss
    return value if total is None else total + value


class MicroBatches:
    """The micro-batches of one optimizer step, kept so that the step can evaluate them again.

    Args:
        zero_grad: zeroes the gradients the micro-batches accumulate into (e.g. ``optimizer.zero_grad``).
        after: called after each re-evaluation of all micro-batches (e.g. gradient clipping, which
            the framework applied to the first pass only).
    """

    def __init__(self, zero_grad: Callable[[], Any], *, after: Callable[[], Any] | None = None) -> None:
        self._zero_grad = zero_grad
        self._after = after
        self._runs: list[Callable[[], Any]] = []
        self._loss: Any = None

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, run: Callable[[], Any], loss: Any = None) -> None:
        """Record a micro-batch whose first forward/backward has already run.

        Args:
            run: evaluates the micro-batch's loss (scaled as the framework scales it), calls
                ``backward()`` on it (gradients add up) and returns it. Must not zero gradients.
            loss: the loss of the pass that already ran (summed into the first evaluation's result).
        """
        self._runs.append(run)
        self._loss = _add(self._loss, loss)

    def clear(self) -> None:
        """Forget the recorded micro-batches (after the step)."""
        self._runs.clear()
        self._loss = None

    def closure(self, pending: Callable[[], Any] | None = None) -> Closure:
        """The closure to pass to ``optimizer.step``.

        Args:
            pending: the last micro-batch, whose first pass has not run yet: the first call runs it
                (on top of the gradients the others left) and later calls re-run it with the others.

        Returns:
            A closure returning the summed loss of the micro-batches it evaluated.
        """
        calls = 0
        runs = list(self._runs)
        first_loss = self._loss

        def closure() -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                return first_loss if pending is None else _add(first_loss, pending())
            self._zero_grad()
            total = None
            for run in runs:
                total = _add(total, run())
            if pending is not None:
                total = _add(total, pending())
            if self._after is not None:
                self._after()
            return total

        return closure


__all__ = ["Closure", "MicroBatches"]

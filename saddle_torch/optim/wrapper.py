"""``DistributedOptimizer``: any ``torch.optim.Optimizer`` made decentralized and sharpness-aware.

The wrapper is a dynamic subclass of the user's optimizer class (as Horovod and BlueFog do), sharing
the original object's state and ``param_groups``: ``isinstance`` checks and LR schedulers keep working.
Communication is started explicitly inside ``step()``, never from autograd hooks (SAM runs two passes
per step). The wrapper never asks what an algorithm is: it validates the options (each phase its
own), builds the algorithm's phases from its row in ``algorithms.py`` and sequences them
(``step.py``); the elastic retry loop is the only thing it adds around a step.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from saddle_torch.compression import Compression, resolve
from saddle_torch.errors import PeerError
from saddle_torch.flat import FlatParameters
from saddle_torch.gossip import GossipContext, current
from saddle_torch.optim import build, state
from saddle_torch.optim import step as seq
from saddle_torch.optim.algorithms import ALGORITHMS
from saddle_torch.optim.phases import Closure, SaddleRuntime, StepOptions, evaluate
from saddle_torch.optim.sam import batchnorm_layers


class _DistributedOptimizer:
    """Methods that the dynamic subclass puts in front of the wrapped optimizer's class."""

    _saddle: SaddleRuntime

    @property
    def saddle(self) -> SaddleRuntime:
        """The wrapper's runtime state: configuration, flat buffers, phases, step counter."""
        return self._saddle

    def step(self, closure: Closure | None = None) -> Any:
        """One decentralized step.

        Args:
            closure: zero the gradients, compute the loss, call ``backward()`` and return the loss (as
                for ``torch.optim.LBFGS``). Required by SAM algorithms and cross-gradients, which
                evaluate the loss several times per step; plain algorithms also accept ``None`` after
                the caller's own ``backward()``.

        Returns:
            The loss of the first evaluation of the closure (``None`` without a closure).

        Raises:
            ValueError: a SAM or cross-gradient algorithm called without a closure.
            PeerError: a neighbour died or stalled past the timeout.
            Whatever the closure raises, unchanged: the parameters are then back at their pre-step
            values and the next ``step()`` works (docs/errors.md).
        """
        rt = self._saddle
        if closure is None and rt.replay is not None and len(rt.replay):
            closure = rt.replay.closure()
        if closure is None and rt.needs_closure:
            raise ValueError(
                f"algorithm {rt.algorithm!r} evaluates the loss more than once per step: call "
                "opt.step(closure) with a closure that calls opt.zero_grad(), computes the loss, calls "
                "loss.backward() and returns the loss"
                + (
                    ", or call opt.first_step() after the first backward and opt.second_step() after "
                    "the second"
                    if rt.split_step
                    else ""
                )
            )
        elastic = rt.ctx.elastic
        while True:
            if elastic is not None:
                if elastic.behind > 0:
                    return _skip_step(rt, closure)
                if elastic.grow_due(rt.step):
                    elastic.grow(rt.step)  # admit joining processes at this step boundary
                    continue
            try:
                loss = _attempt(rt, closure)
            except PeerError as exc:
                if elastic is None:
                    raise
                elastic.recover(exc, rt.step)  # the survivors' new group; FencedError if dropped
                continue  # the step again, on the new group (or skipped, to line up)
            rt.mark_stepped()
            return loss

    def first_step(self, zero_grad: bool = False) -> None:
        """First half of a SAM step, after the first ``backward()``: start gossip, perturb ``x``.

        Run the second forward/backward on the same batch, then call :meth:`second_step` (or
        :meth:`cancel_step` if that pass failed). BatchNorm statistics changed by the second pass are
        put back (unless ``bn_second_pass=True``).
        """
        rt = self._saddle
        if not rt.split_step:
            raise ValueError(
                f"first_step()/second_step() are for SAM algorithms without cross-gradients; "
                f"{rt.algorithm!r} needs " + ("step(closure)" if rt.needs_closure else "step()")
            )
        build.follow_model(rt)
        rt.flat.attach_grads()
        seq.begin(rt)
        try:
            for p in rt.phases:
                p.first_half(rt)
        except BaseException as exc:
            seq.abort(rt, exc)
            raise
        if zero_grad:
            self.zero_grad()

    def second_step(self, zero_grad: bool = False) -> None:
        """Second half of a SAM step, after the second ``backward()``: restore ``x``, step, gossip."""
        rt = self._saddle
        run = rt.run
        if run is None or not rt.split_step:
            raise RuntimeError("second_step() called without first_step()")
        try:
            rt.flat.attach_grads()
            for p in rt.phases:
                p.second_half(rt)
            seq.finish(rt, run)
        except BaseException as exc:
            seq.abort(rt, exc)
            raise
        rt.mark_stepped()
        if zero_grad:
            self.zero_grad()

    def cancel_step(self) -> None:
        """Abandon a step begun with :meth:`first_step` (e.g. the second pass raised).

        The parameters go back to their values before ``first_step()``, BatchNorm statistics to theirs
        at ``first_step()``, and this step's gossip round is completed so the neighbours go on. A no-op
        when no step is in progress.

        Raises:
            PeerError: completing the round failed (a neighbour died).
        """
        seq.abort(self._saddle, None)

    def drain(self, *, average: bool = False) -> None:
        """Deliver every gossip message still in flight (collective; asynchronous gossip, else a no-op).

        Under ``max_staleness`` the neighbours' latest messages may still be on the wire or waiting
        for a free link; after ``drain()`` every one of them has been applied, so the ranks' models
        hold all the mass. Call it on every rank before checkpointing; training may go on afterwards.

        Push-sum keeps a weight per rank, so the average it keeps is the *weighted* mean of the
        models (a rank whose slow links let it send little holds more weight), not their plain mean.
        ``average=True`` then sets every rank's model to that average (one all-reduce; weights back
        to 1): what to evaluate or export at the end of training.
        """
        rt = self._saddle
        for p in rt.phases:
            p.settle(rt, average=average)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients in place; ``set_to_none`` is ignored so gradients stay in the flat buffer."""
        self._saddle.flat.zero_grads()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state plus the algorithm's buffers, step counter and gossip state."""
        rt = self._saddle
        return state.with_runtime(rt, rt.base.state_dict(self))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: the state was saved with another algorithm or another parameter layout.
        """
        rt = self._saddle
        sd = dict(state_dict)
        extra = sd.pop("saddle", None)
        rt.base.load_state_dict(self, sd)
        if extra is not None:
            state.load_runtime(rt, extra)


def _attempt(rt: SaddleRuntime, closure: Closure | None) -> Any:
    """One try of a step; on any exception x is restored and the rounds completed (``seq.abort``)."""
    build.follow_model(rt)
    if closure is None:
        rt.flat.attach_grads()
    run = seq.begin(rt)
    try:
        loss = None if closure is None else evaluate(rt, closure)
        seq.gradient(rt, run, closure)
        seq.finish(rt, run)
    except BaseException as exc:
        seq.abort(rt, exc)
        raise
    finally:
        if rt.replay is not None:
            rt.replay.clear()
    return loss


def _skip_step(rt: SaddleRuntime, closure: Closure | None) -> Any:
    """Elastic: a step this rank leaves out after a membership change, to line up with the others.

    A survivor that was behind the most advanced one when the membership changed (by at most the
    graph's diameter, usually one step) counts its missing steps as taken without changing x, so
    that every survivor's next gossip round is the same step. The closure runs once, for the loss.
    """
    rt.ctx.elastic.behind -= 1
    loss = None if closure is None else evaluate(rt, closure)
    rt.step += 1
    rt.mark_stepped()
    return loss


# --- construction ----------------------------------------------------------------------------------
def DistributedOptimizer(  # noqa: N802 - a factory named like the class it returns, as in Horovod
    optimizer: torch.optim.Optimizer,
    model: nn.Module | None = None,
    *,
    algorithm: str = "q-saddle",
    rho: float = 0.05,
    adaptive: bool = False,
    gamma: float | str = "auto",
    order: str = "atc",
    beta: float = 0.9,
    nesterov: bool = True,
    qgm_mu: float | None = None,
    cross_sam: bool = True,
    bn_second_pass: bool = False,
    compression: Compression | str | None = None,
    qg_adam: str = "normalized",
    qg_adam_lr: str = "adam",
    max_staleness: float | None = None,
    ctx: GossipContext | None = None,
) -> torch.optim.Optimizer:
    """Wrap ``optimizer`` so that every ``step()`` is a decentralized (and, for SADDLe, sharpness-aware) step.

    Call :func:`saddle_torch.init` first, and start every rank from the same weights
    (:func:`saddle_torch.broadcast_parameters`). The optimizer's parameters are moved into flat buffers
    (one per param group, dtype and device); gradients accumulate there too.

    Args:
        optimizer: any ``torch.optim.Optimizer``. Under ``qgm``/``q-saddle`` it must be ``SGD`` with
            ``momentum=0`` (QGM-SGD: the momentum is ``beta``), ``Adam`` or ``AdamW`` (QG-Adam: its
            moments follow the model's displacement after gossip; AdamW's decay stays decoupled).
            Under ``dsgd``, ``sam-dsgd``, ``ngm``, ``n-saddle`` and ``allreduce`` any optimizer works
            and its own momentum is the local momentum.
        model: the model, used to keep BatchNorm statistics out of the extra passes; optional.
        algorithm: ``q-saddle`` (default), ``n-saddle``, ``sam-dsgd``, ``qgm``, ``ngm``, ``dsgd``,
            ``allreduce``.
        rho: SAM radius ρ (ASAM: typically 0.5–2.0).
        adaptive: ASAM instead of SAM.
        gamma: gossip step γ in (0, 1], or ``"auto"`` (default): 1 for exact gossip, and with
            compression the value :func:`saddle_torch.compression.tune_gamma` picks for the codec on
            the current topology (recomputed after :func:`saddle_torch.set_topology`).
        order: ``"atc"`` (default: gossip after the local step, paper-faithful; 1.5–3 points better
            than ``awc`` at equal wall time in docs/RESULTS.md) or ``"awc"`` (gossip the pre-step
            model while the passes run: hides the round behind the passes where links are slow).
        beta: QGM momentum β (QGM-SGD; QG-Adam uses the optimizer's ``betas``).
        nesterov: Nesterov form of QGM-SGD.
        qgm_mu: QGM buffer averaging μ (default: ``beta``).
        cross_sam: N-SADDLe cross-gradients use SAM too.
        bn_second_pass: let the extra passes update BatchNorm running statistics.
        compression: compress the parameter gossip with CHOCO error feedback, e.g. ``"int8"`` or
            ``"topk:0.12"``; ``"none"`` is exact gossip and ``None`` (default), as everywhere in
            saddle_torch, means the default given to :func:`saddle_torch.init`. ``ngm`` and
            ``n-saddle`` then keep a public copy of every neighbour's model, compute cross-gradients
            there and compress them too, with error feedback per link (float32 models only).
        qg_adam: how QG-Adam (``qgm``/``q-saddle`` wrapping Adam or AdamW) feeds its moments:
            ``"normalized"`` (default, the QGM paper's unit-norm displacement; most accurate in
            docs/RESULTS.md, but it depends on the loss scale and can drift where ‖g‖ < 1 at a
            constant lr) or ``"scaled"`` (the displacement's direction at the gradient's size:
            invariant to the loss scale). See :mod:`saddle_torch.optim.qgm`.
        qg_adam_lr: what the wrapped Adam's learning rate means under QG-Adam: ``"adam"`` (default:
            AdamW's step size; no bias correction of a first moment that has none, so the first step
            is AdamW's and the lr you tuned under DDP carries over) or ``"qgm"`` (the QGM paper's
            code: first steps 1/(1 − β₁ᵗ) × larger, 10 × at t = 1). docs/finetune_text.md measures
            both.
        max_staleness: ``None`` (default): synchronous gossip, every round waits for the neighbours.
            A number k: asynchronous push-sum gossip (``q-saddle``, ``qgm``, ``dsgd``, ``sam-dsgd``,
            exact models): each step mixes with whatever the neighbours' messages have delivered and
            waits for a neighbour only when its newest message is more than k of this rank's steps
            old (``float("inf")``: never), so a slow rank sets no one's pace; the average of the
            models is kept exactly. Call ``opt.drain()`` (collective) before evaluating the models.
        ctx: gossip context (default: the one :func:`saddle_torch.init` created).

    Options an algorithm does not use are ignored (``rho`` under ``dsgd``, ``beta`` under ``sam-dsgd``).

    Returns:
        The same optimizer object's state, in an instance of a subclass of its class.

    Raises:
        ValueError: unknown algorithm or order, out-of-range options, an already wrapped optimizer, an
            optimizer with no QGM form under ``qgm``/``q-saddle`` (the message names the
            alternatives); ``MismatchError`` if ranks hold different models.
    """
    if is_wrapped(optimizer):
        raise ValueError("this optimizer is already wrapped by DistributedOptimizer")
    recipe = ALGORITHMS.get(algorithm)
    if recipe is None:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    ctx = ctx or current()
    options = StepOptions(
        algorithm=algorithm,
        rho=rho,
        adaptive=adaptive,
        gamma=gamma,
        order=order,
        beta=beta,
        nesterov=nesterov,
        mu=beta if qgm_mu is None else qgm_mu,
        cross_sam=cross_sam,
        bn_second_pass=bn_second_pass,
        compression=resolve(compression, default=ctx.compression),
        qg_adam=qg_adam,
        qg_adam_lr=qg_adam_lr,
        max_staleness=max_staleness,
    )
    recipe.check(options, optimizer)
    if ctx.elastic is not None and max_staleness is not None:
        raise ValueError(
            f"asynchronous gossip (max_staleness={max_staleness}) is not supported under "
            "init(elastic=True): its ranks run any number of steps apart and its messages in flight "
            "belong to the old membership, while a membership change lines every survivor up at one "
            "step; use synchronous gossip (max_staleness=None) for elastic jobs"
        )
    if ctx.elastic is not None and ctx.names.prefixes("opt"):
        raise ValueError(
            "elastic training supports one DistributedOptimizer per job (every survivor must line up "
            "its steps after a membership change); wrap one optimizer over all parameter groups"
        )
    base = type(optimizer)
    cls = type(base.__name__, (_DistributedOptimizer, base), {"__module__": base.__module__})
    opt = cls.__new__(cls)
    state = dict(optimizer.__dict__)
    # An LR scheduler created before wrapping replaces the instance's ``step`` with one bound to the
    # original object: copied, it would run the plain optimizer and skip every exchange.
    state.pop("step", None)
    opt.__dict__.update(state)
    flat = FlatParameters(opt.param_groups)
    rt = SaddleRuntime(
        options, ctx, model, flat, base, recipe=recipe.phases, optimizer=opt, prefix=ctx.new_prefix("opt")
    )
    rt.bn_layers = batchnorm_layers(model)
    rt.bn_frozen = [] if bn_second_pass else rt.bn_layers
    # A process joining a running elastic job does none of the construction handshakes: the members
    # are mid-training; it receives their state instead (ctx.elastic.attach). Nor does a rank whose
    # job already changed membership before this (a rank died during broadcast_parameters): some
    # survivors may already be past their handshakes, and the first step does them on every rank.
    if ctx.elastic is not None and (ctx.elastic.joining is not None or ctx.elastic.history):
        build.phases(rt, flat, collective=False)
    else:
        build.handshake(rt, flat)
    rt.source = weakref.ref(optimizer)
    _redirect_step(optimizer, opt)
    opt._saddle = rt
    if ctx.elastic is not None:
        ctx.elastic.attach(rt)
    return opt


def is_wrapped(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a :func:`DistributedOptimizer` (or the original object it wrapped)."""
    return isinstance(optimizer, _DistributedOptimizer) or getattr(
        getattr(optimizer, "__dict__", {}).get("step"), "_saddle_wrapped", False
    )


def runtime_of(optimizer: Any) -> SaddleRuntime:
    """The runtime of a :func:`DistributedOptimizer`, also inside a wrapper that keeps it as ``.optimizer``.

    Such wrappers are accelerate's ``AcceleratedOptimizer`` and Lightning's ``LightningOptimizer``.

    Raises:
        TypeError: no DistributedOptimizer inside ``optimizer``.
    """
    seen = 0
    while not isinstance(optimizer, _DistributedOptimizer):
        optimizer = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        seen += 1
        if optimizer is None or seen > 8:
            raise TypeError("not a saddle_torch.DistributedOptimizer (nor a wrapper around one)")
    return optimizer.saddle


def _redirect_step(original: torch.optim.Optimizer, wrapped: _DistributedOptimizer) -> None:
    """Make ``original.step`` run the decentralized step.

    The wrapped optimizer shares ``param_groups`` and ``state`` with ``original``; code that still
    holds ``original`` (an LR scheduler, a training loop written before wrapping) would otherwise
    update the model with the plain optimizer, silently without gossip.
    """

    def step(closure: Closure | None = None) -> Any:
        return wrapped.step(closure)

    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]  # schedulers must not re-patch it
    step._saddle_wrapped = True  # type: ignore[attr-defined]
    original.step = step  # type: ignore[method-assign]

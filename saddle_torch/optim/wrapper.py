"""``DistributedOptimizer``: any ``torch.optim.Optimizer`` made decentralized and sharpness-aware.

The wrapper is a dynamic subclass of the user's optimizer class (as Horovod and BlueFog do), sharing
the original object's state and ``param_groups``: ``isinstance`` checks and LR schedulers keep working.
Communication is started explicitly inside ``step()``, never from autograd hooks (SAM runs two passes
per step). The step itself is a sequence of phases (``step.py``); each algorithm is a list of them
(``algorithms.py``, ``sam.py``, ``qgm.py``, ``ngm.py``, ``mixing.py``).
"""

from __future__ import annotations

import warnings
import weakref
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from saddle_torch import context
from saddle_torch.compression import Compression
from saddle_torch.compression import resolve as resolve_compression
from saddle_torch.context import GossipContext
from saddle_torch.errors import DifferentStartWarning, PeerError, peer_failures
from saddle_torch.flat import BufferKey, FlatParameters
from saddle_torch.optim import step as seq
from saddle_torch.optim.algorithms import ALGORITHMS, Algorithm
from saddle_torch.optim.direction import LocalStep
from saddle_torch.optim.mixing import ExactAverage, Gossip
from saddle_torch.optim.ngm import CrossGradients
from saddle_torch.optim.ngm_compressed import LinkCodec, NeighbourChoco, check_compression
from saddle_torch.optim.qgm import check_optimizer, qgm_direction
from saddle_torch.optim.replay import MicroBatches
from saddle_torch.optim.sam import BatchNormSnapshot, Sam, batchnorm_layers
from saddle_torch.optim.step import Closure, Phase, StepRun


@dataclass
class SaddleConfig:
    """The options of one wrapped optimizer (see :func:`DistributedOptimizer`)."""

    algorithm: Algorithm
    rho: float
    adaptive: bool
    gamma: float | str
    order: str
    beta: float
    nesterov: bool
    mu: float
    cross_sam: bool
    bn_second_pass: bool
    compression: Compression | None = None
    qg_adam: str = "normalized"


@dataclass
class SaddleRuntime:
    """Everything the wrapper keeps besides the wrapped optimizer's own state."""

    config: SaddleConfig
    ctx: GossipContext
    model: nn.Module | None
    flat: FlatParameters
    base: type
    optimizer: Any = None  # the wrapped optimizer object (the dynamic subclass instance)
    prefix: str = ""  # distinguishes the gossip names of several optimizers in one job
    step: int = 0  # completed steps
    x_prev: dict[BufferKey, torch.Tensor] = field(default_factory=dict)  # x at the start of the step
    phases: list[Phase] = field(default_factory=list)
    sam: Sam | None = None
    cross: CrossGradients | None = None
    bn_layers: list[nn.Module] = field(default_factory=list)  # every BatchNorm with running stats
    bn_frozen: list[nn.Module] = field(default_factory=list)  # those SAM's second pass must not update
    bn: BatchNormSnapshot | None = None  # taken by first_step(), restored by second_step()
    run: StepRun | None = None  # the step in progress
    source: Any = None  # weakref to the optimizer that was wrapped (LR schedulers may hold it)
    # Frameworks that call step() without a closure (the Hugging Face Trainer) record each
    # micro-batch here; step() then evaluates the loss again through them (saddle_torch.hf).
    replay: MicroBatches | None = None

    def mark_stepped(self) -> None:
        """Tell LR schedulers a step happened (they check ``_opt_called`` on the object they hold)."""
        self.optimizer._opt_called = True
        src = self.source() if self.source is not None else None
        if src is not None:
            src._opt_called = True

    def name(self, key: BufferKey) -> str:
        """Gossip name of one flat buffer, the same on every rank."""
        return self.prefix + key.name()

    @property
    def direction(self) -> Phase:
        """The phase that updates x: ``LocalStep``, ``QgmSgd`` (``.m_hat``), ``QgAdam`` (``.m1``/``.m2``)."""
        return self.phases[-1]

    @property
    def cross_received(self) -> dict[int, dict[BufferKey, torch.Tensor]]:
        """NGM: the cross-gradients received in the last step, ``{neighbour: {buffer: g_ij}}``."""
        return self.cross.received if self.cross is not None else {}


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
        alg = rt.config.algorithm
        if closure is None and rt.replay is not None and len(rt.replay):
            closure = rt.replay.closure()
        if closure is None and alg.needs_closure:
            raise ValueError(
                f"algorithm {alg.name!r} evaluates the loss more than once per step: call "
                "opt.step(closure) with a closure that calls opt.zero_grad(), computes the loss, calls "
                "loss.backward() and returns the loss"
                + (
                    ""
                    if alg.cross
                    else ", or call opt.first_step() after the first backward and opt.second_step() "
                    "after the second"
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
        alg = rt.config.algorithm
        if rt.sam is None or alg.cross:
            raise ValueError(
                f"first_step()/second_step() are for SAM algorithms without cross-gradients; "
                f"{alg.name!r} needs " + ("step(closure)" if alg.cross else "step()")
            )
        follow_model(rt)
        rt.flat.attach_grads()
        seq.begin(rt)
        try:
            rt.sam.perturb(rt)
            rt.bn = BatchNormSnapshot(rt.bn_frozen)
        except BaseException as exc:
            seq.abort(rt, exc)
            raise
        if zero_grad:
            self.zero_grad()

    def second_step(self, zero_grad: bool = False) -> None:
        """Second half of a SAM step, after the second ``backward()``: restore ``x``, step, gossip."""
        rt = self._saddle
        run = rt.run
        if run is None or rt.sam is None:
            raise RuntimeError("second_step() called without first_step()")
        try:
            rt.flat.attach_grads()
            if rt.bn is not None:
                rt.bn.restore()
                rt.bn = None
            rt.sam.restore(rt)
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

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients in place; ``set_to_none`` is ignored so gradients stay in the flat buffer."""
        self._saddle.flat.zero_grads()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state plus the algorithm's buffers, step counter and gossip state."""
        rt = self._saddle
        sd = rt.base.state_dict(self)
        phases: dict[str, Any] = {}
        for p in rt.phases:
            phases.update(p.state_dict(rt))
        sd["saddle"] = {
            "algorithm": rt.config.algorithm.name,
            "step": rt.step,
            "phases": phases,
            "gossip_steps": {k.name(): rt.ctx.step_of(rt.name(k)) for k in rt.flat.buffers},
            "choco": {  # copies: later rounds update the live state in place; one per phase
                k.name() + key[len(rt.name(k)) :]: tuple(t.clone() for t in rt.ctx.choco.get(key))
                for k in rt.flat.buffers
                for key in rt.ctx.choco_keys(rt.name(k))
                if rt.ctx.choco.has(key)
            },
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: the state was saved with another algorithm or another parameter layout.
        """
        rt = self._saddle
        sd = dict(state_dict)
        extra = sd.pop("saddle", None)
        rt.base.load_state_dict(self, sd)
        if extra is None:
            return
        if extra["algorithm"] != rt.config.algorithm.name:
            raise ValueError(
                f"checkpoint was written by algorithm {extra['algorithm']!r}, this optimizer runs "
                f"{rt.config.algorithm.name!r}"
            )
        phases = extra.get("phases", {})
        for p in rt.phases:
            wanted = set(p.state_dict(rt))
            if wanted:
                missing = wanted - set(phases)
                if missing:
                    raise ValueError(f"checkpoint lacks {sorted(missing)} for {type(p).__name__}")
                p.load_state_dict(rt, phases)
        rt.step = int(extra["step"])
        by_name = {k.name(): k for k in rt.flat.buffers}  # layout names, without the prefix
        for name, step in extra["gossip_steps"].items():
            if name not in by_name:
                raise ValueError(f"checkpoint buffer {name} does not exist in this model")
            rt.ctx.set_step(rt.name(by_name[name]), int(step))
        for key, state in extra.get("choco", {}).items():
            name, _, phase = key.partition("@")  # "buffer" or "buffer@phase<k>" (time-varying topology)
            if name not in by_name:
                raise ValueError(f"checkpoint CHOCO state {name} does not exist in this model")
            rt.ctx.choco.set(rt.name(by_name[name]) + (f"@{phase}" if phase else ""), *state)


def _attempt(rt: SaddleRuntime, closure: Closure | None) -> Any:
    """One try of a step; on any exception x is restored and the rounds completed (``seq.abort``)."""
    follow_model(rt)
    if closure is None:
        rt.flat.attach_grads()
    run = seq.begin(rt)
    try:
        loss = None if closure is None else seq.evaluate(rt, closure)
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
    loss = None if closure is None else seq.evaluate(rt, closure)
    rt.step += 1
    rt.mark_stepped()
    return loss


def _phases(rt: SaddleRuntime, optimizer: torch.optim.Optimizer) -> list[Phase]:
    """The algorithm as phases, in the order the sequencer calls them."""
    alg, cfg = rt.config.algorithm, rt.config
    phases: list[Phase] = []
    if alg.sam:
        rt.sam = Sam(rt)
        phases.append(rt.sam)
    models: Phase = Gossip() if alg.gossip else ExactAverage()
    if alg.cross:
        compressed = None
        if cfg.compression is not None:  # CHOCO with per-neighbour copies, cross-gradients with EF
            models = NeighbourChoco(rt, cfg.compression)
            compressed = (models, LinkCodec(cfg.compression))
        rt.cross = CrossGradients(rt.sam if cfg.cross_sam else None, compressed)
        phases.append(rt.cross)
    phases.append(models)
    phases.append(qgm_direction(rt, optimizer, rt.config.qg_adam) if alg.qgm else LocalStep())
    return phases


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
        compression: compress the parameter gossip with CHOCO error feedback (``None``: the default
            given to :func:`saddle_torch.init`), e.g. ``"int8"`` or ``"topk:0.12"``. ``ngm`` and
            ``n-saddle`` then keep a public copy of every neighbour's model, compute cross-gradients
            there and compress them too, with error feedback per link (float32 models only).
        qg_adam: how QG-Adam (``qgm``/``q-saddle`` wrapping Adam or AdamW) feeds its moments:
            ``"normalized"`` (default, the QGM paper's unit-norm displacement; most accurate in
            docs/RESULTS.md, but it depends on the loss scale and can drift where ‖g‖ < 1 at a
            constant lr) or ``"scaled"`` (the displacement's direction at the gradient's size:
            invariant to the loss scale). See :mod:`saddle_torch.optim.qgm`.
        ctx: gossip context (default: the one :func:`saddle_torch.init` created).

    Returns:
        The same optimizer object's state, in an instance of a subclass of its class.

    Raises:
        ValueError: unknown algorithm or order, out-of-range options, an already wrapped optimizer, an
            optimizer with no QGM form under ``qgm``/``q-saddle`` (the message names the
            alternatives); ``MismatchError`` if ranks hold different models.
    """
    if isinstance(optimizer, _DistributedOptimizer) or getattr(
        optimizer.__dict__.get("step"), "_saddle_wrapped", False
    ):
        raise ValueError("this optimizer is already wrapped by DistributedOptimizer")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if order not in ("atc", "awc"):
        raise ValueError(f"order must be 'atc' or 'awc', got {order!r}")
    if gamma != "auto" and (isinstance(gamma, str) or not 0 < gamma <= 1):
        raise ValueError(f"gamma must be 'auto' or in (0, 1], got {gamma!r}")
    if qg_adam not in ("normalized", "scaled"):
        raise ValueError(f"qg_adam must be 'normalized' or 'scaled', got {qg_adam!r}")
    if rho < 0 or not 0 <= beta < 1:
        raise ValueError(f"need rho ≥ 0 and 0 ≤ beta < 1; got rho={rho}, beta={beta}")
    alg = ALGORITHMS[algorithm]
    if alg.qgm:
        check_optimizer(algorithm, beta, optimizer)
    ctx = ctx or context.current()
    if ctx.elastic is not None and ctx._prefixes.get("opt", 0):
        raise ValueError(
            "elastic training supports one DistributedOptimizer per job (every survivor must line up "
            "its steps after a membership change); wrap one optimizer over all parameter groups"
        )
    comp = ctx.compression if compression is None else resolve_compression(compression)
    if alg.cross and comp is not None:
        check_compression(comp, [p.dtype for g in optimizer.param_groups for p in g["params"]])
    cfg = SaddleConfig(
        alg,
        rho,
        adaptive,
        gamma,
        order,
        beta,
        nesterov,
        beta if qgm_mu is None else qgm_mu,
        cross_sam,
        bn_second_pass,
        comp,
        qg_adam,
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
    rt = SaddleRuntime(cfg, ctx, model, flat, base, optimizer=opt, prefix=ctx.new_prefix("opt"))
    rt.bn_layers = batchnorm_layers(model)
    rt.bn_frozen = [] if bn_second_pass else rt.bn_layers
    # A process joining a running elastic job does none of the construction handshakes: the members
    # are mid-training; it receives their state instead (ctx.elastic.attach). Nor does a rank whose
    # job already changed membership before this (a rank died during broadcast_parameters): some
    # survivors may already be past their handshakes, and the first step does them on every rank.
    if ctx.elastic is not None and (ctx.elastic.joining is not None or ctx.elastic.history):
        _build(rt, opt, flat, collective=False)
    else:
        _handshake(rt, opt, flat, gamma)
    rt.source = weakref.ref(optimizer)
    _redirect_step(optimizer, opt)
    opt._saddle = rt
    if ctx.elastic is not None:
        ctx.elastic.attach(rt)
    return opt


def _handshake(
    rt: SaddleRuntime, opt: torch.optim.Optimizer, flat: FlatParameters, gamma: float | str
) -> None:
    """The construction's collectives: registration, CHOCO's start, the same-start check, γ.

    Under ``init(elastic=True)`` a rank dying or stalling during them is survived as in a step: the
    survivors agree on the new membership and form a new group (``recover`` at step 0), and every
    one of them then sets up without collectives (a rank may have finished these handshakes and
    met the failure in its first step instead); names register, CHOCO starts and γ is tuned at the
    first round, on every survivor alike.
    """
    ctx, comp = rt.ctx, rt.config.compression
    try:
        _build(rt, opt, flat)
        _warn_if_ranks_differ(ctx, flat)
        if comp is not None and gamma == "auto":
            ctx.resolve_gamma(gamma, comp)  # collective on first use: tune now, not inside the first step
    except PeerError as exc:
        if ctx.elastic is None:
            raise
        ctx.elastic.recover(exc, 0)  # FencedError if the others went on without this rank
        _build(rt, opt, flat, collective=False)


def _build(
    rt: SaddleRuntime, opt: torch.optim.Optimizer, flat: FlatParameters, collective: bool = True
) -> None:
    """Set up everything that lives on the flat buffers: x_prev, the phases, the gossip names.

    Collective: registers every buffer (same layout and codec on every rank) and, with compression,
    starts CHOCO at the common initial model (ATC needs it before the first step). Without
    ``collective`` (a process joining an elastic job) names register and CHOCO starts at the first
    round, as on the members after their membership change.
    """
    rt.flat = flat
    rt.x_prev = {key: torch.zeros_like(x) for key, x in flat.buffers.items()}
    rt.sam = rt.cross = None
    rt.phases = _phases(rt, opt)
    comp = rt.config.compression
    if not collective:
        return
    for key, x in flat.buffers.items():
        rt.ctx.register(rt.name(key), x, comp)
        if comp is not None and not rt.config.algorithm.cross:
            rt.ctx.prime_choco(rt.name(key), x)
    for p in rt.phases:
        if isinstance(p, NeighbourChoco):
            p.prime(rt)


def follow_model(rt: SaddleRuntime) -> None:
    """Make the flat buffers hold the parameters again after the model was moved (at a step's start).

    A move to the same device and dtype (Hugging Face ``Trainer``/accelerate's ``model.to(device)``
    copies every parameter) is followed transparently: values are copied back into the buffers,
    which keeps all optimizer and gossip state. A move to another device or dtype before the first
    step rebuilds the buffers and the algorithm's state (collective: every rank must have moved
    its model the same way, which frameworks do).

    Raises:
        RuntimeError: the parameters changed device, dtype or shape after steps were taken (their
            momentum and gossip state live on the old buffers); move the model before training.
    """
    flat = rt.flat
    if not flat.moved() and not flat.layout_changed():
        return
    if not flat.layout_changed():
        flat.repoint()
        return
    if rt.step > 0 or rt.run is not None:
        raise RuntimeError(
            f"the model's parameters moved to another device or dtype after {rt.step} step(s) of "
            "DistributedOptimizer; its momentum and gossip state live on the old buffers. Move the model "
            "(model.to(...)) before the first step, or wrap the optimizer after moving it"
        )
    _build(rt, rt.optimizer, FlatParameters(rt.optimizer.param_groups))


def _warn_if_ranks_differ(ctx: GossipContext, flat: FlatParameters) -> None:
    """Warn on every rank when the ranks start from different models (collective: one all-gather).

    Decentralized training averages models that started together; different initial weights (a
    forgotten ``broadcast_parameters``) train, but the first rounds spend themselves pulling unrelated
    models together.
    """
    crc = 0
    for x in flat.buffers.values():
        crc = zlib.crc32(x.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy(), crc)
    mine = torch.tensor([crc], dtype=torch.int64)
    every = [torch.empty_like(mine) for _ in range(ctx.size)]
    with peer_failures("checking that every rank starts from the same model", ctx.rank):
        dist.all_gather(every, mine, group=ctx.group)
    differ = [r for r, t in enumerate(every) if not torch.equal(t, every[0])]
    if differ:
        warnings.warn(
            f"DistributedOptimizer: the model of rank(s) {differ} differs from rank 0's. Call "
            "saddle_torch.broadcast_parameters(model.state_dict(), root_rank=0) before wrapping the "
            "optimizer so that every rank starts from the same weights",
            DifferentStartWarning,
            stacklevel=3,
        )


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

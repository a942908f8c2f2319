"""``DistributedOptimizer``: any ``torch.optim.Optimizer`` made decentralized and sharpness-aware.

The wrapper is a dynamic subclass of the user's optimizer class (as Horovod and BlueFog do), sharing
the original object's state and ``param_groups``: ``isinstance`` checks and LR schedulers keep working.
Communication is started explicitly inside ``step()``, never from autograd hooks (SAM runs two passes
per step). The order of one step is in DESIGN §2; the math of each algorithm in ALGORITHMS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from saddle_torch import _ops, context
from saddle_torch.compression import Compression
from saddle_torch.compression import resolve as resolve_compression
from saddle_torch.context import GossipContext, GossipHandle
from saddle_torch.flat import BufferKey, FlatParameters
from saddle_torch.optim import allreduce, dsgd, n_saddle, ngm, q_saddle, qgm, sam_dsgd
from saddle_torch.optim import sam as sam_ops
from saddle_torch.optim.algorithm import Algorithm

ALGORITHMS: dict[str, Algorithm] = {
    m.ALGORITHM.name: m.ALGORITHM for m in (dsgd, qgm, ngm, sam_dsgd, q_saddle, n_saddle, allreduce)
}
Closure = Callable[[], Any]


@dataclass
class SaddleConfig:
    """The options of one wrapped optimizer (see :func:`DistributedOptimizer`)."""

    algorithm: Algorithm
    rho: float
    adaptive: bool
    gamma: float
    order: str
    beta: float
    nesterov: bool
    mu: float
    cross_sam: bool
    bn_second_pass: bool
    compression: Compression | None = None


@dataclass
class SaddleRuntime:
    """Everything the wrapper keeps besides the wrapped optimizer's own state."""

    config: SaddleConfig
    ctx: GossipContext
    model: nn.Module | None
    flat: FlatParameters
    base: type
    prefix: str = ""  # distinguishes the gossip names of several optimizers in one job
    step: int = 0
    e: dict[BufferKey, torch.Tensor] = field(default_factory=dict)  # SAM perturbation
    m_hat: dict[BufferKey, torch.Tensor] = field(default_factory=dict)  # QGM buffer
    x_prev: dict[BufferKey, torch.Tensor] = field(default_factory=dict)  # model at the start of the step
    handles: dict[BufferKey, GossipHandle] = field(default_factory=dict)  # AWC rounds in flight
    models: dict[BufferKey, list[torch.Tensor]] = field(default_factory=dict)  # neighbours' models (NGM)
    model_step: int = 0  # topology step of this step's model round
    # NGM: the cross-gradients received in the last step, {neighbour: {buffer: g_ij}} (for inspection).
    cross_received: dict[int, dict[BufferKey, torch.Tensor]] = field(default_factory=dict)
    bn: sam_ops.BatchNormSnapshot | None = None
    phase: str = "idle"

    def name(self, key: BufferKey) -> str:
        """Gossip name of one flat buffer, the same on every rank."""
        return self.prefix + key.name()


class _DistributedOptimizer:
    """Methods that the dynamic subclass puts in front of the wrapped optimizer's class."""

    _saddle: SaddleRuntime

    @property
    def saddle(self) -> SaddleRuntime:
        """The wrapper's runtime state: configuration, flat buffers, algorithm buffers, step counter."""
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
        """
        s = self._saddle
        alg = s.config.algorithm
        if s.phase != "idle":
            raise RuntimeError("step() called between first_step() and second_step()")
        if closure is None:
            if alg.needs_closure:
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
            s.flat.attach_grads()
            _begin(self)
            loss = None
        else:
            _begin(self)
            loss = _evaluate(self, closure)
            if alg.sam:
                _sam_gradient(self, closure)
        if alg.cross:
            _cross_gradients(self, closure)
        _finish(self)
        return loss

    def first_step(self, zero_grad: bool = False) -> None:
        """First half of a SAM step, after the first ``backward()``: start gossip, perturb ``x``.

        Run the second forward/backward on the same batch, then call :meth:`second_step`. BatchNorm
        statistics changed by the second pass are put back (unless ``bn_second_pass=True``).
        """
        s = self._saddle
        alg = s.config.algorithm
        if not alg.sam or alg.cross:
            raise ValueError(
                f"first_step()/second_step() are for SAM algorithms without cross-gradients; "
                f"{alg.name!r} needs " + ("step(closure)" if alg.cross else "step()")
            )
        if s.phase != "idle":
            raise RuntimeError("first_step() called twice without second_step()")
        s.flat.attach_grads()
        _begin(self)
        sam_ops.perturb(s.flat, s.e, s.config.rho, s.config.adaptive)
        s.bn = sam_ops.BatchNormSnapshot(s.model, enabled=not s.config.bn_second_pass)
        s.phase = "perturbed"
        if zero_grad:
            self.zero_grad()

    def second_step(self, zero_grad: bool = False) -> None:
        """Second half of a SAM step, after the second ``backward()``: restore ``x``, step, gossip."""
        s = self._saddle
        if s.phase != "perturbed":
            raise RuntimeError("second_step() called without first_step()")
        s.flat.attach_grads()
        if s.bn is not None:
            s.bn.restore()
            s.bn = None
        sam_ops.restore(s.flat, s.e)
        s.phase = "idle"
        _finish(self)
        if zero_grad:
            self.zero_grad()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients in place; ``set_to_none`` is ignored so gradients stay in the flat buffer."""
        self._saddle.flat.zero_grads()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state plus the algorithm's buffers, step counter and gossip steps."""
        s = self._saddle
        sd = s.base.state_dict(self)
        sd["saddle"] = {
            "algorithm": s.config.algorithm.name,
            "step": s.step,
            "m_hat": {k.name(): t.clone() for k, t in s.m_hat.items()},
            "gossip_steps": {k.name(): s.ctx.step_of(s.name(k)) for k in s.flat.buffers},
            "choco": {
                k.name(): tuple(t.clone() for t in s.ctx._choco[s.name(k)])
                for k in s.flat.buffers
                if s.name(k) in s.ctx._choco
            },
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: the state was saved with another algorithm or another parameter layout.
        """
        s = self._saddle
        sd = dict(state_dict)
        extra = sd.pop("saddle", None)
        s.base.load_state_dict(self, sd)
        if extra is None:
            return
        if extra["algorithm"] != s.config.algorithm.name:
            raise ValueError(
                f"checkpoint was written by algorithm {extra['algorithm']!r}, this optimizer runs "
                f"{s.config.algorithm.name!r}"
            )
        by_name = {k.name(): k for k in s.flat.buffers}  # layout names, without the prefix
        for name, t in extra["m_hat"].items():
            if name not in by_name or by_name[name] not in s.m_hat or s.m_hat[by_name[name]].shape != t.shape:
                raise ValueError(f"checkpoint QGM buffer {name} {tuple(t.shape)} does not fit this model")
            s.m_hat[by_name[name]].copy_(t)
        s.step = int(extra["step"])
        for name, step in extra["gossip_steps"].items():
            if name not in by_name:
                raise ValueError(f"checkpoint buffer {name} does not exist in this model")
            s.ctx.set_step(s.name(by_name[name]), int(step))
        for name, (x_hat, s_sum) in extra.get("choco", {}).items():
            if name not in by_name:
                raise ValueError(f"checkpoint CHOCO state {name} does not exist in this model")
            mine = s.ctx.choco_state(s.name(by_name[name]), x_hat.numel())
            mine[0].copy_(x_hat)
            mine[1].copy_(s_sum)


# --- the step, in pieces ---------------------------------------------------------------------------
def _evaluate(opt: Any, closure: Closure) -> Any:
    with torch.enable_grad():
        loss = closure()
    opt._saddle.flat.attach_grads()
    return loss


def _sam_gradient(opt: Any, closure: Closure) -> None:
    """Replace the gradient in the grad buffers by ∇F(x + e) on the same batch; x is left unchanged."""
    s = opt._saddle
    sam_ops.perturb(s.flat, s.e, s.config.rho, s.config.adaptive)
    with sam_ops.frozen_batchnorm(s.model, enabled=not s.config.bn_second_pass):
        _evaluate(opt, closure)
    sam_ops.restore(s.flat, s.e)


def _begin(opt: Any) -> None:
    """Remember x (QGM) and start the model round: AWC gossip, or the NGM model exchange under ATC."""
    s = opt._saddle
    cfg, ctx = s.config, s.ctx
    s.flat.check()
    if cfg.algorithm.qgm:
        for key, x in s.flat.buffers.items():
            s.x_prev[key].copy_(x)
    keys = list(s.flat.buffers)
    s.model_step = ctx.step_of(s.name(keys[0]))
    s.handles, s.models = {}, {}
    if cfg.algorithm.gossip and cfg.order == "awc":
        for key, x in s.flat.buffers.items():
            s.handles[key] = ctx.start(
                x, s.name(key), cfg.gamma, inplace=True, snapshot=True, compression=cfg.compression
            )
    elif cfg.algorithm.cross:
        s.models = _exchange_models(s)


def _exchange_models(s: SaddleRuntime) -> dict[BufferKey, list[torch.Tensor]]:
    """ATC + cross-gradients: receive the in-neighbours' current models without mixing them."""
    ctx, rank = s.ctx, s.ctx.rank
    ins = ctx.topology.in_neighbors(rank, s.model_step)
    outs = ctx.topology.out_neighbors(rank, s.model_step)
    models: dict[BufferKey, list[torch.Tensor]] = {}
    rounds = []
    for key, x in s.flat.buffers.items():
        send = x.detach().to("cpu", copy=True)
        models[key] = [torch.empty_like(send) for _ in ins]
        rounds.append(
            (send, ctx.engine.exchange([(j, send) for j in outs], list(zip(ins, models[key], strict=True))))
        )
    for _, r in rounds:
        ctx.engine.finish(r)
    return models


def _received_models(s: SaddleRuntime) -> tuple[list[int], dict[BufferKey, list[torch.Tensor]]]:
    ins = s.ctx.topology.in_neighbors(s.ctx.rank, s.model_step)
    if s.handles:
        return ins, {key: s.ctx.engine.received(h.round) for key, h in s.handles.items()}
    return ins, s.models


def _cross_gradients(opt: Any, closure: Closure) -> None:
    """NGM: ĝ_i = w_ii g_ii + Σ_{j∈out(i)} w_ji g_ij, g_ij = ∇F_j(x_i) computed by j and sent back."""
    s = opt._saddle
    ctx, rank, topo, alg = s.ctx, s.ctx.rank, s.ctx.topology, s.config.algorithm
    ins, models = _received_models(s)
    own = {k: x.detach().clone() for k, x in s.flat.buffers.items()}
    g_self = {k: g.detach().clone() for k, g in s.flat.grad_buffers.items()}
    cross: dict[int, dict[BufferKey, torch.Tensor]] = {}
    with sam_ops.frozen_batchnorm(s.model):
        for idx, j in enumerate(ins):
            with torch.no_grad():
                for key, x in s.flat.buffers.items():
                    x.copy_(models[key][idx])
            _evaluate(opt, closure)
            if alg.sam and s.config.cross_sam:
                _sam_gradient(opt, closure)
            cross[j] = {k: g.detach().to("cpu", copy=True) for k, g in s.flat.grad_buffers.items()}
    with torch.no_grad():
        for key, x in s.flat.buffers.items():
            x.copy_(own[key])
    outs = topo.out_neighbors(rank, s.model_step)
    received = {j: {k: torch.empty(g.shape, dtype=g.dtype) for k, g in g_self.items()} for j in outs}
    rounds = [
        ctx.engine.exchange([(j, cross[j][key]) for j in ins], [(j, received[j][key]) for j in outs])
        for key in s.flat.grad_buffers
    ]
    for r in rounds:
        ctx.engine.finish(r)
    s.cross_received = received
    w_self = topo.weights(rank, s.model_step)[rank]
    w_cols = [topo.weights(j, s.model_step)[rank] for j in outs]
    with torch.no_grad():
        for key, g in s.flat.grad_buffers.items():
            g.copy_(g_self[key])
            _ops.weighted_sum_(g, w_self, [received[j][key].to(g.device) for j in outs], w_cols)


def _finish(opt: Any) -> None:
    """Direction, the wrapped optimizer's step, gossip, and the QGM buffer update."""
    s = opt._saddle
    cfg, ctx, alg = s.config, s.ctx, s.config.algorithm
    if not alg.gossip:
        for g in s.flat.grad_buffers.values():
            dist.all_reduce(g, group=ctx.group)
            g.div_(ctx.size)
    if alg.qgm:
        saved_wd = []
        for key, g in s.flat.grad_buffers.items():
            group = opt.param_groups[key.group]
            _ops.qgm_direction(
                g, s.m_hat[key], s.flat.buffers[key], cfg.beta, group.get("weight_decay", 0.0), cfg.nesterov
            )
        # λx is already in the direction: the wrapped optimizer must not add it again.
        for group in opt.param_groups:
            saved_wd.append(group.get("weight_decay"))
            if "weight_decay" in group:
                group["weight_decay"] = 0.0
        try:
            s.base.step(opt)
        finally:
            for group, wd in zip(opt.param_groups, saved_wd, strict=True):
                if wd is not None:
                    group["weight_decay"] = wd
    else:
        s.base.step(opt)
    if alg.gossip:
        if cfg.order == "awc":
            for h in s.handles.values():
                h.wait()
        else:
            pending = [
                ctx.start(x, s.name(k), cfg.gamma, inplace=True, snapshot=False, compression=cfg.compression)
                for k, x in s.flat.buffers.items()
            ]
            for h in pending:
                h.wait()
    s.handles, s.models = {}, {}
    if alg.qgm:
        for key, x in s.flat.buffers.items():
            lr = float(opt.param_groups[key.group]["lr"])
            if lr > 0:
                _ops.qgm_buffer_update(s.m_hat[key], s.x_prev[key], x, cfg.mu, lr)
    s.step += 1


# --- construction ----------------------------------------------------------------------------------
def DistributedOptimizer(  # noqa: N802 - a factory named like the class it returns, as in Horovod
    optimizer: torch.optim.Optimizer,
    model: nn.Module | None = None,
    algorithm: str = "q-saddle",
    rho: float = 0.05,
    adaptive: bool = False,
    gamma: float = 1.0,
    order: str = "awc",
    beta: float = 0.9,
    nesterov: bool = True,
    qgm_mu: float | None = None,
    cross_sam: bool = True,
    bn_second_pass: bool = False,
    compression: Compression | str | None = None,
    ctx: GossipContext | None = None,
) -> torch.optim.Optimizer:
    """Wrap ``optimizer`` so that every ``step()`` is a decentralized (and, for SADDLe, sharpness-aware) step.

    Call :func:`saddle_torch.init` first, and start every rank from the same weights
    (:func:`saddle_torch.broadcast_parameters`). The optimizer's parameters are moved into flat buffers
    (one per param group, dtype and device); gradients accumulate there too.

    Args:
        optimizer: any ``torch.optim.Optimizer``; for ``qgm``/``q-saddle`` it receives the QGM direction
            as its gradient, so use one without momentum (e.g. ``SGD(momentum=0)``); for ``dsgd``,
            ``sam-dsgd``, ``ngm``, ``n-saddle`` its own momentum is the local momentum.
        model: the model, used to keep BatchNorm statistics out of the extra passes; optional.
        algorithm: ``q-saddle`` (default), ``n-saddle``, ``sam-dsgd``, ``qgm``, ``ngm``, ``dsgd``,
            ``allreduce``.
        rho: SAM radius ρ (ASAM: typically 0.5–2.0).
        adaptive: ASAM instead of SAM.
        gamma: gossip step γ (1: plain weighted average).
        order: ``"awc"`` (gossip the pre-step model while the passes run) or ``"atc"`` (gossip after
            the local step, paper-faithful, no overlap).
        beta: QGM momentum β.
        nesterov: Nesterov form of QGM.
        qgm_mu: QGM buffer averaging μ (default: ``beta``).
        cross_sam: N-SADDLe cross-gradients use SAM too.
        bn_second_pass: let the extra passes update BatchNorm running statistics.
        compression: compress the parameter gossip with CHOCO error feedback (``None``: the default
            given to :func:`saddle_torch.init`); pair it with a ``gamma`` < 1 from
            :func:`saddle_torch.compression.tune_gamma`.
        ctx: gossip context (default: the one :func:`saddle_torch.init` created).

    Returns:
        The same optimizer object's state, in an instance of a subclass of its class.

    Raises:
        ValueError: unknown algorithm or order, out-of-range options, an already wrapped optimizer, a
            momentum optimizer under QGM; ``MismatchError`` if ranks hold different models.
    """
    if isinstance(optimizer, _DistributedOptimizer):
        raise ValueError("this optimizer is already wrapped by DistributedOptimizer")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if order not in ("atc", "awc"):
        raise ValueError(f"order must be 'atc' or 'awc', got {order!r}")
    if rho < 0 or not 0 < gamma <= 1 or not 0 <= beta < 1:
        raise ValueError(
            f"need rho ≥ 0, 0 < gamma ≤ 1, 0 ≤ beta < 1; got rho={rho}, gamma={gamma}, beta={beta}"
        )
    alg = ALGORITHMS[algorithm]
    if alg.qgm:
        for i, group in enumerate(optimizer.param_groups):
            if group.get("momentum", 0) or group.get("nesterov", False):
                raise ValueError(
                    f"{algorithm!r} computes quasi-global momentum itself (beta={beta}); param group {i} "
                    "of the "
                    f"wrapped optimizer has momentum={group.get('momentum')}: create it with momentum=0"
                )
    ctx = ctx or context.current()
    comp = ctx.compression if compression is None else resolve_compression(compression)
    if alg.cross and comp is not None:
        raise ValueError(
            f"{algorithm!r} computes cross-gradients on the neighbours' exact models, which compressed "
            "gossip does not deliver; use compression=Compression.none with it (compressing the "
            "cross-gradient round is not implemented)"
        )
    base = type(optimizer)
    cls = type(base.__name__, (_DistributedOptimizer, base), {"__module__": base.__module__})
    opt = cls.__new__(cls)
    opt.__dict__.update(optimizer.__dict__)
    flat = FlatParameters(opt.param_groups)
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
    )
    runtime = SaddleRuntime(cfg, ctx, model, flat, base, prefix=ctx.new_prefix("opt"))
    for key, x in flat.buffers.items():
        ctx.register(runtime.name(key), x)  # collective: every rank must hold the same model layout
        if comp is not None:  # collective: start CHOCO at the common initial model (atc needs it here)
            ctx.prime_choco(runtime.name(key), x)
    for key, x in flat.buffers.items():
        if alg.sam:
            runtime.e[key] = torch.zeros_like(x)
        if alg.qgm:
            runtime.m_hat[key] = torch.zeros_like(x)
            runtime.x_prev[key] = torch.zeros_like(x)
    opt._saddle = runtime
    return opt

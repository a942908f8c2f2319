"""Quasi-global momentum (Lin et al., ICML 2021) as the direction phase: QGM-SGD and QG-Adam.

QGM-SGD (wrapping ``SGD(momentum=0)``): g ← g + λx; m = β m̂ + g; u = g + β m (Nesterov) or m;
x½ = x − η u (the wrapped SGD takes u as its gradient); after gossip m̂ ← μ m̂ + (1 − μ)(x − x_new)/η.

QG-Adam (wrapping ``Adam``/``AdamW``, the QGM paper's Adam variant). Each step builds temporaries from
the stored moments m̂₁, m̂₂: m₁ = β₁ m̂₁ + g, m₂ = β₂ m̂₂ + (1 − β₂) g², and moves
x½ = x − η/c₁ · m₁/(√(m₂/(1 − β₂ᵗ)) + ε). After gossip the moments are fed with the net
displacement d = (x − x_new)/‖x − x_new‖ (one global norm), scaled per ``feed``:
m̂₁ ← β₁ m̂₁ + (1 − β₁) v, m̂₂ ← β₂ m̂₂ + (1 − β₂) v², with

- ``"normalized"`` (default, the paper's): v = d. The momentum term then has a fixed size per
  coordinate (≈ β₁ η once d settles) while the gradient term scales with ‖g‖, so the rule depends on
  the scale of the loss. Where ‖g‖ falls below about 1 at a constant lr, the normalised momentum
  feeds itself: on the 4-rank MLP test task (Adam lr 0.01, the QGM code's bias correction) the loss
  went 0.42 → 0.54 from step 60 to 240 (all-reduce 0.32; ‖m̂₁‖ ≈ 0.93; 2.2 × all-reduce's at step 240
  with ``qg_adam_lr="adam"``), and the same run with the loss × 10 matched all-reduce. Its second
  moment is fed d², tiny per coordinate in a large model, so √m₂ holds little more than the current
  gradient and its steps are 2-4 × AdamW's after the first few (MiniLM, bench/qg_adam_steps.py). On
  Fashion-MNIST at α = 0.01 (CNN, AdamW lr 0.003 cosine) it is the most accurate form measured
  (70.7%, against 65.5% for ``"scaled"``, 2 seeds, the QGM code's bias correction; 76.5% against
  71.4% with ``qg_adam_lr="adam"``, seed 0), so it stays the default.
- ``"scaled"``: v = d‖g‖, the displacement's direction at the gradient's size. Invariant to the loss
  scale, as Adam is; its steps are AdamW's size (0.4-0.5 × lr per coordinate on MiniLM, AdamW
  0.2-0.6); no drift on the test task (1.07-1.25 × all-reduce's loss from step 60 to 240).

The first moment's bias correction c₁ is ``qg_adam_lr``. Adam builds m₁ from (1 − β₁)g, which at
t = 1 is short of g by the factor 1 − β₁ᵗ, and divides by it. QG-Adam adds g with weight 1, so m₁ is
not short of g at t = 1; the QGM code divides by 1 − β₁ᵗ all the same, and its first steps are
1/(1 − β₁ᵗ) × larger than AdamW's at the same lr: 10 × at t = 1, 5.3 × at t = 2, 1.5 × at t = 10
(4–5 × over the first steps of a MiniLM fine-tune, docs/finetune_text.md).

- ``"adam"`` (default): c₁ = 1. The step at t = 1 is AdamW's (lr per coordinate), and after the
  first tens of steps the rule is the QGM code's, so a learning rate tuned for AdamW under DDP means
  the same step size here.
- ``"qgm"``: c₁ = 1 − β₁ᵗ, the QGM paper's code; it wants a smaller learning rate early on (warm-up).

Two other ways to match AdamW's first step were measured on the 4-rank test task (Adam lr 0.01) and
not kept: (1 − β₁) on the gradient term, Adam's own weight, lets the displacement feed dominate the
direction and feed itself (the loss rose above its start with either feed, to 6.3 × all-reduce's at
step 240 with ``"scaled"``); scaling every step by 1 − β₁ makes the later steps 10 × smaller than
the code's (2.6 × all-reduce's loss at step 60; the Hugging Face Trainer test fell from 99.6% to
77.7%).

Adam's λ is coupled (g += λx); AdamW's (and ``Adam(decoupled_weight_decay=True)``'s) is decoupled
(x ← x(1 − ηλ) first, and left out of the displacement). The wrapped optimizer's own state stays
empty: its hyper-parameters (lr, betas, eps, weight_decay) are read every step, so LR schedulers
keep working.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from typing_extensions import override

from saddle_torch import kernels
from saddle_torch.optim.phases import Phase, SaddleRuntime, StepOptions, StepRun

ALTERNATIVES = (
    "wrap torch.optim.SGD(momentum=0), Adam or AdamW, or keep this optimizer with an algorithm whose "
    "momentum is local: 'sam-dsgd' (SAM), 'dsgd', 'n-saddle' or 'ngm'"
)


FEEDS = ("normalized", "scaled")
LR_MEANINGS = (
    "adam",
    "qgm",
)  # QG-Adam's first-moment bias correction: none (AdamW's first step) or the code's


class QuasiGlobalMomentum(Phase):
    """The direction slot of ``qgm``/``q-saddle``: QGM-SGD for ``SGD``, QG-Adam for ``Adam``/``AdamW``.

    Options: ``beta`` and ``qgm_mu`` in [0, 1) (QGM-SGD), ``nesterov``, ``qg_adam`` (QG-Adam's feed),
    ``qg_adam_lr`` (what QG-Adam's learning rate means).
    """

    @classmethod
    @override
    def check(cls, options: StepOptions, optimizer: torch.optim.Optimizer) -> None:
        if not 0 <= options.beta < 1 or not 0 <= options.mu < 1:
            raise ValueError(
                f"need 0 ≤ beta < 1 and 0 ≤ qgm_mu < 1; got beta={options.beta}, qgm_mu={options.mu}"
            )
        if options.qg_adam not in FEEDS:
            raise ValueError(f"qg_adam must be 'normalized' or 'scaled', got {options.qg_adam!r}")
        if options.qg_adam_lr not in LR_MEANINGS:
            raise ValueError(f"qg_adam_lr must be 'adam' or 'qgm', got {options.qg_adam_lr!r}")
        check_optimizer(optimizer, options.beta, options.algorithm)

    @classmethod
    @override
    def build(cls, rt: SaddleRuntime) -> Phase:
        kind = rt.base
        if kind is torch.optim.SGD:
            return QgmSgd(rt)
        decoupled = [
            kind is torch.optim.AdamW or bool(g.get("decoupled_weight_decay", False))
            for g in rt.optimizer.param_groups
        ]
        return QgAdam(rt, decoupled, rt.options.qg_adam, adam_lr=rt.options.qg_adam_lr == "adam")


class QgmSgd(QuasiGlobalMomentum):
    """QGM-SGD: the direction is computed here and handed to the wrapped SGD as its gradient."""

    def __init__(self, rt: SaddleRuntime) -> None:
        self.m_hat = {key: torch.zeros_like(x) for key, x in rt.flat.buffers.items()}

    @override
    def direction(self, rt: SaddleRuntime, run: StepRun) -> None:
        opts, opt = rt.options, rt.optimizer
        for key, g in rt.flat.grad_buffers.items():
            wd = opt.param_groups[key.group].get("weight_decay", 0.0)
            kernels.qgm_direction(g, self.m_hat[key], rt.flat.buffers[key], opts.beta, wd, opts.nesterov)
        # λx is already in the direction: the wrapped optimizer must not add it again.
        saved = [group.get("weight_decay") for group in opt.param_groups]
        for group in opt.param_groups:
            if "weight_decay" in group:
                group["weight_decay"] = 0.0
        try:
            rt.base.step(opt)
        finally:
            for group, wd in zip(opt.param_groups, saved, strict=True):
                if wd is not None:
                    group["weight_decay"] = wd

    @override
    def commit(self, rt: SaddleRuntime, run: StepRun) -> None:
        for key, x in rt.flat.buffers.items():
            lr = float(rt.optimizer.param_groups[key.group]["lr"])
            if lr > 0:
                kernels.qgm_buffer_update(self.m_hat[key], rt.x_prev[key], x, rt.options.mu, lr)

    @override
    def state_dict(self, rt: SaddleRuntime) -> dict[str, Any]:
        return {"m_hat": {k.name(): t.clone() for k, t in self.m_hat.items()}}

    @override
    def load_state_dict(self, rt: SaddleRuntime, state: dict[str, Any]) -> None:
        _load_buffers(self.m_hat, state["m_hat"], "QGM buffer")


class QgAdam(QuasiGlobalMomentum):
    """QG-Adam: Adam's step from moments that follow the model's displacement (module docstring)."""

    def __init__(
        self, rt: SaddleRuntime, decoupled: list[bool], feed: str = "normalized", *, adam_lr: bool = True
    ) -> None:
        self.decoupled = decoupled  # per param group
        self.feed = feed
        self.adam_lr = adam_lr  # no first-moment bias correction: the first step is AdamW's
        self.m1 = {key: torch.zeros_like(x) for key, x in rt.flat.buffers.items()}
        self.m2 = {key: torch.zeros_like(x) for key, x in rt.flat.buffers.items()}
        self.grad_norm = 0.0  # ‖g‖ of this step ("scaled")

    @override
    def direction(self, rt: SaddleRuntime, run: StepRun) -> None:
        t = rt.step + 1
        with torch.no_grad():
            if self.feed == "scaled":
                self.grad_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in rt.flat.grad_buffers.values()))
            for key, x in rt.flat.buffers.items():
                group = rt.optimizer.param_groups[key.group]
                lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
                g = rt.flat.grad_buffers[key]
                if wd and self.decoupled[key.group]:
                    x.mul_(1 - lr * wd)
                elif wd:
                    g.add_(x, alpha=wd)
                m1 = self.m1[key].mul(b1).add_(g)
                denom = self.m2[key].mul(b2).addcmul_(g, g, value=1 - b2).div_(1 - b2**t).sqrt_().add_(eps)
                c1 = 1.0 if self.adam_lr else 1 - b1**t
                x.addcdiv_(m1, denom, value=-lr / c1)

    @override
    def commit(self, rt: SaddleRuntime, run: StepRun) -> None:
        with torch.no_grad():
            d = {key: rt.x_prev[key] - x for key, x in rt.flat.buffers.items()}
            norm = math.sqrt(sum(float(v.pow(2).sum()) for v in d.values()))
            scale = self.grad_norm if self.feed == "scaled" else 1.0
            for key, v in d.items():
                b1, b2 = rt.optimizer.param_groups[key.group]["betas"]
                v.mul_(scale / (norm + 1e-8))
                self.m1[key].mul_(b1).add_(v, alpha=1 - b1)
                self.m2[key].mul_(b2).addcmul_(v, v, value=1 - b2)

    @override
    def state_dict(self, rt: SaddleRuntime) -> dict[str, Any]:
        return {
            "m1": {k.name(): t.clone() for k, t in self.m1.items()},
            "m2": {k.name(): t.clone() for k, t in self.m2.items()},
        }

    @override
    def load_state_dict(self, rt: SaddleRuntime, state: dict[str, Any]) -> None:
        _load_buffers(self.m1, state["m1"], "QG-Adam first moment")
        _load_buffers(self.m2, state["m2"], "QG-Adam second moment")


def _load_buffers(mine: dict, saved: dict[str, torch.Tensor], what: str) -> None:
    by_name = {k.name(): k for k in mine}
    for name, t in saved.items():
        key = by_name.get(name)
        if key is None or mine[key].shape != t.shape:
            raise ValueError(f"checkpoint {what} {name} {tuple(t.shape)} does not fit this model")
        mine[key].copy_(t)


def check_optimizer(optimizer: torch.optim.Optimizer, beta: float, algorithm: str) -> None:
    """Refuse an optimizer that has no quasi-global-momentum form, naming the alternatives.

    Raises:
        ValueError: an optimizer other than SGD/Adam/AdamW (subclasses included: their step would be
            bypassed), SGD with momentum or Nesterov, ``maximize=True``, or Adam's ``amsgrad``.
    """
    kind = type(optimizer)
    if kind not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        raise ValueError(
            f"{algorithm!r} has no quasi-global-momentum form for {kind.__name__}; {ALTERNATIVES}"
        )
    for i, group in enumerate(optimizer.param_groups):
        if group.get("maximize", False):
            raise ValueError(f"{algorithm!r} does not support maximize=True (param group {i})")
        if kind is torch.optim.SGD and (group.get("momentum", 0) or group.get("nesterov", False)):
            raise ValueError(
                f"{algorithm!r} computes quasi-global momentum itself (beta={beta}); param group {i} of the "
                f"wrapped SGD has momentum={group.get('momentum')}, nesterov={group.get('nesterov')}: create "
                "it with momentum=0 (the momentum is the QGM beta), or use 'sam-dsgd'/'dsgd' to keep the "
                "optimizer's own momentum"
            )
        if kind is not torch.optim.SGD and group.get("amsgrad", False):
            raise ValueError(
                f"{algorithm!r} has no quasi-global form of amsgrad (param group {i}); {ALTERNATIVES}"
            )


__all__ = [
    "ALTERNATIVES",
    "FEEDS",
    "LR_MEANINGS",
    "QgAdam",
    "QgmSgd",
    "QuasiGlobalMomentum",
    "check_optimizer",
]

"""What a wrapped optimizer adds to a checkpoint: buffers, counters, CHOCO state, low-rank factors."""

from __future__ import annotations

import warnings
from typing import Any

from saddle_torch import _ops
from saddle_torch.gossip.lowrank import state_for
from saddle_torch.optim.phases import SaddleRuntime


def with_runtime(rt: SaddleRuntime, sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` (the wrapped optimizer's own state) with the runtime's state under ``"saddle"``."""
    phases: dict[str, Any] = {}
    for p in rt.phases:
        phases.update(p.state_dict(rt))
    choco = rt.ctx.choco
    sd["saddle"] = {
        "algorithm": rt.algorithm,
        "step": rt.step,
        "phases": phases,
        "gossip_steps": {k.name(): rt.ctx.step_of(rt.name(k)) for k in rt.flat.buffers},
        "choco": {  # copies: later rounds update the live state in place; one per phase
            k.name() + key[len(rt.name(k)) :]: tuple(t.clone() for t in choco.get(key))
            for k in rt.flat.buffers
            for key in choco.keys(rt.name(k))
            if choco.has(key)
        },
        "lowrank": {  # low-rank gossip's factors per edge (copies)
            k.name(): rt.ctx.lowrank[rt.name(k)].state_dict()
            for k in rt.flat.buffers
            if rt.name(k) in rt.ctx.lowrank
        },
    }
    return sd


def load_runtime(rt: SaddleRuntime, extra: dict[str, Any]) -> None:
    """Restore what :func:`with_runtime` put under ``"saddle"``.

    Raises:
        ValueError: the state was saved with another algorithm or another parameter layout.
    """
    if extra["algorithm"] != rt.algorithm:
        raise ValueError(
            f"checkpoint was written by algorithm {extra['algorithm']!r}, this optimizer runs "
            f"{rt.algorithm!r}"
        )
    phases = extra.get("phases", {})
    for p in rt.phases:
        with warnings.catch_warnings():  # only the keys are wanted here, not a save
            warnings.simplefilter("ignore")
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
    comp = rt.options.compression
    for name, factors in extra.get("lowrank", {}).items():
        key = by_name.get(name)
        if key is None or not comp.is_lowrank:
            raise ValueError(f"checkpoint low-rank factors of {name} do not fit this optimizer")
        gossip_name = rt.name(key)
        shapes = [p.shape for p in rt.flat.groups[key]]
        state_for(
            rt.ctx.lowrank, gossip_name, shapes, comp.rank, _ops.name_hash(gossip_name)
        ).load_state_dict(factors)


__all__ = ["load_runtime", "with_runtime"]

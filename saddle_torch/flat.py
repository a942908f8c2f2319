"""Flat parameter storage: one contiguous buffer per (dtype, device), parameters re-pointed at views.

Gossip, SAM perturbations and compression then run on a few large arrays instead of looping over
hundreds of small tensors, and without flatten/unflatten copies (DESIGN §3).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import nn


class BufferKey(NamedTuple):
    """Identifies one flat buffer: the optimizer param group it serves, its dtype and device."""

    group: int
    dtype: torch.dtype
    device: torch.device

    def name(self) -> str:
        """Stable name of the buffer, the same on every rank (used as the gossip name)."""
        return f"params/{self.group}/{self.dtype}/{self.device.type}".replace("torch.", "")


GroupKey = BufferKey


class FlatParameters:
    """Moves parameters (and their gradients) into contiguous buffers.

    After construction every parameter's ``.data`` is a view into ``buffers[key]`` and, with
    ``grads=True``, every ``.grad`` a view into ``grad_buffers[key]``. The model computes exactly
    what it computed before. Optimizers that update parameters in place keep the views intact.

    Args:
        params: a module, an iterable of parameters, or an optimizer's ``param_groups`` (a sequence of
            dicts with a ``"params"`` list: one buffer per group, so each has one learning rate).
            Duplicates and frozen parameters are skipped.
        grads: also give every parameter a gradient view (zero-initialised, or a copy of the existing
            gradient).
    """

    def __init__(
        self, params: nn.Module | Iterable[torch.Tensor] | Sequence[dict], grads: bool = True
    ) -> None:
        if isinstance(params, nn.Module):
            grouped = [list(params.parameters())]
        else:
            items = list(params)
            is_groups = bool(items) and isinstance(items[0], dict)
            grouped = [list(g["params"]) for g in items] if is_groups else [items]
        seen: set[int] = set()
        self.params: list[torch.Tensor] = []
        self.groups: dict[BufferKey, list[torch.Tensor]] = {}
        for gi, group in enumerate(grouped):
            for p in group:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    self.params.append(p)
                    self.groups.setdefault(BufferKey(gi, p.dtype, p.device), []).append(p)
        if not self.params:
            raise ValueError("FlatParameters: no trainable parameters")
        self.buffers: dict[BufferKey, torch.Tensor] = {}
        self.grad_buffers: dict[BufferKey, torch.Tensor] = {}
        for key, group in self.groups.items():
            total = sum(p.numel() for p in group)
            buf = torch.empty(total, dtype=key.dtype, device=key.device)
            offset = 0
            for p in group:
                n = p.numel()
                buf[offset : offset + n].copy_(p.data.reshape(-1))
                p.data = buf[offset : offset + n].view_as(p)
                offset += n
            self.buffers[key] = buf
            if grads:
                self.grad_buffers[key] = torch.zeros_like(buf)
        # Built once: the step re-attaches gradients after every pass and checks the parameters.
        self._grad_views = [
            (p, view) for key, gbuf in self.grad_buffers.items() for p, view in self._views(key, gbuf)
        ]
        self._param_ptrs = [
            (p, view.data_ptr()) for key, buf in self.buffers.items() for p, view in self._views(key, buf)
        ]
        self._layout = [
            (p, key.dtype, key.device, p.shape) for key, group in self.groups.items() for p in group
        ]
        if grads:
            self.attach_grads()

    @property
    def numel(self) -> int:
        """Total number of parameter elements."""
        return sum(b.numel() for b in self.buffers.values())

    def _views(self, key: BufferKey, buf: torch.Tensor) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        offset = 0
        for p in self.groups[key]:
            n = p.numel()
            yield p, buf[offset : offset + n].view_as(p)
            offset += n

    def zero_grads(self) -> None:
        """Zero every gradient buffer in place (one op per buffer) and re-attach the views."""
        for gbuf in self.grad_buffers.values():
            gbuf.zero_()
        self.attach_grads()

    def attach_grads(self) -> None:
        """(Re-)point every ``.grad`` at its view, keeping existing gradient values.

        Call after anything that replaced gradients, e.g. ``zero_grad(set_to_none=True)``.
        """
        for p, view in self._grad_views:
            grad = p.grad
            if grad is view:
                continue
            if grad is None:
                view.zero_()
            elif grad.data_ptr() != view.data_ptr():
                view.copy_(grad)
            p.grad = view

    def moved(self) -> list[torch.Tensor]:
        """The parameters that no longer live in their buffer (``model.to()``, ``p.data = ...``)."""
        return [p for p, ptr in self._param_ptrs if p.data_ptr() != ptr]

    def layout_changed(self) -> bool:
        """Whether a parameter now has another dtype, device or shape than its buffer slot.

        Then :meth:`repoint` cannot bring it back and the buffers must be built again.
        """
        return any(
            p.dtype != dtype or p.device != device or p.shape != shape
            for p, dtype, device, shape in self._layout
        )

    def repoint(self) -> int:
        """Bring moved parameters back into their buffer slots, keeping their current values.

        Frameworks move models after the optimizer was built (Hugging Face ``Trainer`` and accelerate
        call ``model.to(device)``, which copies every parameter even to the device it is on); the
        parameter objects stay the same, only their storage changes. Each moved parameter's value is
        copied into its slot and ``.data`` points at the slot again.

        Returns:
            the number of parameters re-pointed.

        Raises:
            RuntimeError: a parameter changed dtype, device or shape (:meth:`layout_changed`).
        """
        if self.layout_changed():
            raise RuntimeError(
                "a parameter changed dtype, device or shape after FlatParameters was built; build "
                "FlatParameters again"
            )
        moved = {id(p) for p in self.moved()}
        if not moved:
            return 0
        with torch.no_grad():
            for key, buf in self.buffers.items():
                for p, view in self._views(key, buf):
                    if id(p) in moved:
                        view.copy_(p.data)
                        p.data = view
        # The move also replaced the storage of each gradient view in place (``grad.data = copy``):
        # those view objects no longer view the buffer. Fresh views take the values over.
        self._grad_views = [
            (p, view) for key, gbuf in self.grad_buffers.items() for p, view in self._views(key, gbuf)
        ]
        self.attach_grads()
        return len(moved)

    def check(self) -> None:
        """Raise ``RuntimeError`` if a parameter no longer lives in its buffer (e.g. after ``model.to()``)."""
        if self.moved():
            raise RuntimeError(
                "a parameter no longer lives in the flat buffer (was the model moved with .to() "
                "or were parameters replaced?); call repoint(), or create FlatParameters after moving "
                "the model"
            )


__all__ = ["BufferKey", "FlatParameters"]

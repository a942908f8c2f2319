"""The README's minimal training loop, ended the usual ways (run by test_exit.py under torchrun).

exit_loop.py optimizer   st.init, DistributedOptimizer, then dist.destroy_process_group()
exit_loop.py hook        DDP with gossip_hook, then dist.destroy_process_group()
exit_loop.py backend     DDP on init_process_group("saddle"), then dist.destroy_process_group()
exit_loop.py raise       the optimizer loop, then an exception escapes the script
exit_loop.py peer-dies   rank 1 leaves abruptly; rank 0's next step raises PeerError, uncaught
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import saddle_torch as st


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * dist.get_rank() + step)
    return torch.randn(16, 8, generator=g), torch.randint(0, 2, (16,), generator=g)


def optimizer_loop(steps: int = 3, timeout: float = 60) -> tuple[nn.Module, torch.optim.Optimizer]:
    st.init(topology="ring", timeout=timedelta(seconds=timeout))
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    st.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model)
    for step in range(steps):
        x, y = _batch(step)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return model, opt


def ddp_loop(model: nn.Module) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(3):
        x, y = _batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def main(mode: str) -> None:
    if mode == "optimizer":
        optimizer_loop()
    elif mode == "hook":
        st.init(topology="ring")
        torch.manual_seed(0)
        ddp = nn.parallel.DistributedDataParallel(nn.Linear(8, 2))
        ddp.register_comm_hook(st.hooks.GossipHookState(), st.hooks.gossip_hook)
        ddp_loop(ddp)
    elif mode == "backend":
        st.configure(topology="ring")
        dist.init_process_group("saddle")
        torch.manual_seed(0)
        ddp_loop(nn.parallel.DistributedDataParallel(nn.Linear(8, 2)))
    elif mode == "raise":
        optimizer_loop()
        raise RuntimeError("an error of the user's script after training")
    elif mode == "peer-dies":
        model, opt = optimizer_loop(timeout=20)
        if dist.get_rank() == 1:
            sys.stdout.flush()
            os._exit(0)  # no goodbye: the neighbour's next round fails
        optimizer_loop(steps=50, timeout=20)  # raises PeerError, uncaught
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

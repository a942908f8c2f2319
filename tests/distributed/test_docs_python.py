"""The Python blocks of README.md and docs/port_ddp.md run as written, on 2 real ranks.

Each block is executed unchanged; only what it leaves to the user is defined first (``model``: a
small linear model, the same on every rank; ``loader``, ``loss_fn``: rank-dependent data). After it,
the test checks that the block did its job on that small setting — the models trained, gossip averaged
with the neighbour — so that a renamed function, option or changed behaviour breaks CI, not a user.
The Lightning and HF Trainer blocks are bound against the real signatures in
tests/unit/test_docs_commands.py (running those trainers is tests/distributed/test_lightning.py's and
test_hf_trainer.py's job).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from harness import run_ranks
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(doc: str) -> list[str]:
    """The ```python blocks of ``doc`` (a path relative to the repository), in order."""
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.S)


def _block(doc: str, first_line: str) -> str:
    found = [b for b in python_blocks(doc) if first_line in b]
    assert len(found) == 1, f"{doc}: expected one python block containing {first_line!r}, found {len(found)}"
    return found[0]


README_TRAIN = _block("README.md", "opt.step(closure)")
README_PRIMITIVES = _block("README.md", "st.neighbor_average_async")
PORT_BACKEND = _block("docs/port_ddp.md", 'init_process_group("saddle")')
PORT_CONFIGURE = _block("docs/port_ddp.md", "saddle_torch.configure(topology=")
PORT_HOOK = _block("docs/port_ddp.md", "model.register_comm_hook")
PORT_OPTIMIZER = _block("docs/port_ddp.md", "# no DDP wrapper")


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(64, 8, generator=gen)
    return x, (x[:, :3].argmax(1) + rank) % 3  # each rank its own labelling: non-IID


def _run(rank: int, world: int, which: str) -> dict[str, Any]:
    import torch.distributed as dist

    import saddle_torch as st

    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    start = [p.detach().clone() for p in model.parameters()]
    x, y = _data(rank)
    loss_fn = nn.functional.cross_entropy
    os.chdir(tempfile.mkdtemp())
    # what a block takes from the blocks before it on the same page (`import saddle_torch as st`)
    scope: dict[str, Any] = {"torch": torch, "st": st, "saddle_torch": st, "model": model, "loss_fn": loss_fn}
    scope["loader"] = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)] * 3
    out: dict[str, Any] = {}
    if which == "train":
        with torch.no_grad():
            out["before"] = float(loss_fn(model(x), y))
        exec(README_TRAIN, scope)
        with torch.no_grad():
            out["after"] = float(loss_fn(model(x), y))
        out["checkpoint"] = Path(f"ckpt/{rank}.pt").is_file()
    elif which == "primitives":
        torch.manual_seed(rank)  # the block draws x: a different vector on each rank
        exec(README_PRIMITIVES, scope)
        xs = [torch.empty_like(scope["x"]) for _ in range(world)]
        ys = [torch.empty_like(scope["y"]) for _ in range(world)]
        dist.all_gather(xs, scope["x"])
        dist.all_gather(ys, scope["y"])
        out["mean_x"], out["mean_y"] = torch.stack(xs).mean(0), torch.stack(ys).mean(0)
        out["moved"] = float((scope["y"] - scope["x"]).abs().max())
        out["spread_x"] = float((xs[0] - xs[1]).norm())
        out["spread_y"] = float((ys[0] - ys[1]).norm())
    else:  # the DDP ports: a few iterations of the user's own loop on the block's model
        if which == "backend":
            exec(PORT_CONFIGURE.replace("saddle_torch.configure(ddp_hook=False)", ""), scope)
            exec(PORT_BACKEND, scope)
        elif which == "hook":
            exec(PORT_HOOK, scope)
        else:
            exec(PORT_OPTIMIZER, scope)
        net = scope["model"]
        opt = scope.get("opt") or torch.optim.SGD(model.parameters(), lr=0.05)
        for xb, yb in scope["loader"]:

            def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
                opt.zero_grad()
                loss = loss_fn(net(xb), yb)
                loss.backward()
                return loss

            opt.step(closure) if which == "optimizer" else (closure(), opt.step())
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        both = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(both, flat)
        out["spread"] = float((both[0] - both[1]).norm())
        out["moved"] = float((flat - torch.cat([p.reshape(-1) for p in start])).norm())
        # The DDP model goes while the process group is still registered (docs/port_ddp.md, "Shutting
        # down"): its Reducer is deallocated holding the GIL (pytorch#56297), and were it the group's
        # last owner it would join Gloo's worker threads while one of them waits for the GIL to free a
        # finished collective's tensors: a deadlock, 1 run in 6 here.
        del net
        scope.clear()
    if st.is_initialized():
        st.shutdown()
    if dist.is_initialized():
        dist.destroy_process_group()
    return out


def test_readme_training_block_trains_and_checkpoints() -> None:
    for r in run_ranks(_run, 2, "train", timeout=120).values():
        assert r["checkpoint"] and r["after"] < r["before"] - 0.05, r


def test_readme_primitives_block_averages_with_the_neighbour() -> None:
    res = run_ranks(_run, 2, "primitives", timeout=120)
    for r in res.values():
        torch.testing.assert_close(r["mean_y"], r["mean_x"], rtol=0, atol=1e-5)  # W is doubly stochastic
        assert r["moved"] > 0.1 and r["spread_y"] < 0.8 * r["spread_x"], r  # ... and mixes


@pytest.mark.parametrize("which", ["backend", "hook", "optimizer"])
def test_port_ddp_blocks_train_with_gossip(which: str) -> None:
    """Trained alone, the two ranks' non-IID models end 0.56 apart (measured); with gossip 0 to 5e-4."""
    res = run_ranks(_run, 2, which, timeout=120)
    for r in res.values():
        assert r["moved"] > 0.05, r
        assert r["spread"] < 0.2, r

"""Run README.md's "Train: wrap the optimizer you already have" block on a tiny model (under torchrun).

The block is executed as written; only what it leaves to the user (``model``, ``loader``, ``loss_fn``)
is defined first: a linear model on rank-dependent random data. Checks that the ranks trained (the
loss fell) and that the checkpoint files were written. Used by .ci/clean_venv.sh on an installed wheel.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn


def readme_block(readme: Path, heading: str) -> str:
    """The first ```python block after ``heading`` in ``readme``."""
    text = readme.read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    if match is None:
        raise SystemExit(f"no python block after {heading!r} in {readme}")
    return match.group(1)


def main() -> None:
    """Execute the block in a scratch directory; fail loudly if it did not train."""
    readme = Path(sys.argv[1])
    code = readme_block(readme, "## Train: wrap the optimizer you already have")
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    gen = torch.Generator().manual_seed(rank)
    x_all = torch.randn(64, 8, generator=gen)
    y_all = (x_all[:, :3].argmax(1) + rank) % 3  # each rank its own labelling: non-IID
    loader = [(x_all[i : i + 16], y_all[i : i + 16]) for i in range(0, 64, 16)] * 5
    loss_fn = nn.functional.cross_entropy
    with torch.no_grad():
        before = float(loss_fn(model(x_all), y_all))
    os.chdir(tempfile.mkdtemp())
    scope = {"model": model, "loader": loader, "loss_fn": loss_fn}
    exec(compile(code, f"{readme}:Train", "exec"), scope)  # noqa: S102 - the README's own code
    with torch.no_grad():
        after = float(loss_fn(model(x_all), y_all))
    assert Path(f"ckpt/{rank}.pt").is_file(), "save_checkpoint wrote no file"
    assert after < before, (before, after)
    print(f"rank {rank}: README training block ran, loss {before:.3f} -> {after:.3f}", flush=True)


if __name__ == "__main__":
    main()

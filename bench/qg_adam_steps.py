"""How large QG-AdamW's steps are against AdamW's at the same learning rate (docs/finetune_text.md).

One process (a world of one: gossip is the identity, so only the direction rule is measured), the
MiniLM text classifier of ``examples/finetune_text.py``, the same batches for every optimizer, a
constant learning rate. For each step t it prints the mean |Δx| per trainable coordinate in units of
the learning rate, for plain ``torch.optim.AdamW`` and for ``qgm`` wrapping AdamW under both meanings
of ``qg_adam_lr``. AdamW moves each coordinate by about lr at t = 1; the QGM code's first-moment bias
correction (``qg_adam_lr="qgm"``) makes QG-AdamW's early steps up to 1/(1 − β₁ᵗ) × larger.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=1 bench/qg_adam_steps.py --steps 10
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

import saddle_torch as st

ROOT = Path(__file__).resolve().parents[1]


def _example():
    """examples/finetune_text.py, imported by path."""
    sys.path.insert(0, str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location("finetune_text", ROOT / "examples" / "finetune_text.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_sizes(ft, kind: str, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> list[float]:
    """Mean |Δx| / lr over the trainable coordinates at each step, for ``kind``.

    ``kind``: ``"adamw"`` (plain AdamW) or ``"qg:<qg_adam_lr>:<qg_adam>"`` (``qgm`` wrapping AdamW with
    those options); ``ft`` is examples/finetune_text.py.
    """
    torch.manual_seed(0)
    model, _ = ft.load_model(10)
    model.encoder.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if kind != "adamw":
        _, meaning, feed = kind.split(":")
        opt = st.DistributedOptimizer(opt, model, algorithm="qgm", qg_adam_lr=meaning, qg_adam=feed)
        params = [p for p in model.parameters() if p.requires_grad]
    sizes = []
    for ids, labels in batches:
        before = [p.detach().clone() for p in params]

        def closure(ids=ids, labels=labels) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(ids), labels)
            loss.backward()
            return loss

        opt.step(closure)
        moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(params, before, strict=True))
        sizes.append(moved / sum(p.numel() for p in params) / lr)
    return sizes


def main() -> None:
    """Print the table (markdown)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    st.init(topology="ring")
    ft = _example()
    split = ft.text_data.load_split(per_class=450, test_per_class=50, cache=ft.default_cache())
    _, tokenizer = ft.load_model(len(split.classes))
    data = ft.tokenize(tokenizer, split.train_texts, split.train_labels, 32)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    ids, labels = data.tensors
    batches = [
        (ids[order[i : i + args.batch_size]], labels[order[i : i + args.batch_size]])
        for i in range(0, args.steps * args.batch_size, args.batch_size)
    ]
    rows = {
        "AdamW": step_sizes(ft, "adamw", batches, args.lr),
        'QG-AdamW, qg_adam_lr="adam" (default)': step_sizes(ft, "qg:adam:normalized", batches, args.lr),
        'QG-AdamW, qg_adam_lr="qgm" (the QGM code)': step_sizes(ft, "qg:qgm:normalized", batches, args.lr),
        'QG-AdamW, qg_adam_lr="adam", qg_adam="scaled"': step_sizes(ft, "qg:adam:scaled", batches, args.lr),
    }
    shown = [t for t in range(args.steps) if t < 5 or (t + 1) % 5 == 0]
    print(f"mean |Δx| per coordinate in units of lr (lr {args.lr:g} constant, batch {args.batch_size})\n")
    print("| step | " + " | ".join(str(t + 1) for t in shown) + " |")
    print("|---|" + "---:|" * len(shown))
    for name, sizes in rows.items():
        print(f"| {name} | " + " | ".join(f"{sizes[t]:.2f}" for t in shown) + " |")
    st.shutdown()


if __name__ == "__main__":
    main()

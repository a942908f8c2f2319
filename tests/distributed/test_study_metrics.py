"""examples/train.py's study metrics on 2 real ranks over Gloo, against single-process references.

Training accuracy of the averaged model and of each rank's own model, the SAM sharpness and the top
Hessian eigenvalue are collective (each rank scores its own shard, the sums are all-reduced); here each
one must equal the same quantity computed in one process on the concatenated shards.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from harness import run_ranks
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual name

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORLD = 2
SHARD_CUT = 17  # rank 0 holds samples 0..16, rank 1 the other 23: unequal shards
RHO = 0.05

pytest.importorskip("tqdm")


def _example(name: str):
    """Import examples/<name>.py by path (inside a rank process or the test)."""
    key = f"saddle_examples.{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """40 samples of 6 features and 3 classes, with a learnable signal (float64, the same everywhere)."""
    g = torch.Generator().manual_seed(11)
    y = torch.randint(0, 3, (40,), generator=g)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    x[torch.arange(40), y] += 1.5
    return x, y


def _model(rank: int) -> nn.Module:
    """A tiny tanh MLP in float64; rank ``r``'s copy is the common one moved by a rank-specific step."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(100 + rank)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _data()
    part = slice(0, SHARD_CUT) if rank == 0 else slice(SHARD_CUT, None)
    return x[part], y[part]


def _collective(rank: int, world: int, hessian_iters: int) -> dict:
    import saddle_torch as st

    st.init(topology="ring", timeout=timedelta(seconds=60))
    train = _example("train")
    from torch.utils.data import TensorDataset

    model, avg = _model(rank), _model(0)
    shard = TensorDataset(*_shard(rank))
    x, y = _data()
    test = TensorDataset(x, y)
    rec = train.evaluate(model, avg, test, 0.0, rank_train=shard)
    avg_params = [p.detach().clone() for p in avg.parameters()]
    before = [p.detach().clone() for p in avg.parameters()]
    sam = train.sharpness_sam(avg, shard, RHO)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, avg.parameters(), strict=True))
    eig = train.hessian_top_eig(avg, shard, hessian_iters)
    st.shutdown()
    import torch.distributed as dist

    dist.destroy_process_group()
    return {"rec": rec, "avg": avg_params, "sam": sam, "eig": eig, "unchanged": unchanged}


def _reference() -> dict:
    """The same quantities in one process, on the concatenated shards."""
    x, y = _data()
    models = [_model(r) for r in range(WORLD)]
    avg = _model(0)
    with torch.no_grad():
        for p, *ps in zip(avg.parameters(), *(m.parameters() for m in models), strict=True):
            p.copy_(sum(ps) / WORLD)
    with torch.no_grad():
        out = avg(x)
        local = [
            (m(_shard(r)[0]).argmax(1) == _shard(r)[1]).double().mean().item() for r, m in enumerate(models)
        ]
    params = list(avg.parameters())
    loss = F.cross_entropy(avg(x), y)
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(RHO * g / norm)
        perturbed = F.cross_entropy(avg(x), y).item()
        for p, g in zip(params, grads, strict=True):
            p.sub_(RHO * g / norm)

    names = [n for n, _ in avg.named_parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def union_loss(flat: torch.Tensor) -> torch.Tensor:
        tensors = [t.view(s) for t, s in zip(flat.split(sizes), shapes, strict=True)]
        out = torch.func.functional_call(avg, dict(zip(names, tensors, strict=True)), (x,))
        return F.cross_entropy(out, y)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    eigs = torch.linalg.eigvalsh(torch.autograd.functional.hessian(union_loss, flat))
    return {
        "avg": [p.detach().clone() for p in params],
        "train_acc_avg_model": (out.argmax(1) == y).double().mean().item(),
        "train_loss_avg_model": F.cross_entropy(out, y).item(),
        "local": local,
        "sharpness_sam": perturbed - loss.item(),
        "loss": loss.item(),
        "eigs": eigs,
    }


def test_train_metrics_and_sharpness_match_one_process_on_the_union():
    results = run_ranks(_collective, WORLD, 20, timeout=120)
    ref = _reference()
    for rank in range(WORLD):
        got = results[rank]
        for mine, theirs in zip(got["avg"], ref["avg"], strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)
        rec = got["rec"]
        assert rec["train_samples"] == 40
        assert rec["train_acc_avg_model"] == pytest.approx(ref["train_acc_avg_model"], abs=1e-12)
        assert rec["train_loss_avg_model"] == pytest.approx(ref["train_loss_avg_model"], rel=1e-10)
        assert rec["train_acc_local_mean"] == pytest.approx(sum(ref["local"]) / WORLD, abs=1e-12)
        assert rec["train_acc_local_min"] == pytest.approx(min(ref["local"]), abs=1e-12)
        assert got["sam"]["sharpness_loss"] == pytest.approx(ref["loss"], rel=1e-10)
        assert got["sam"]["sharpness_sam"] == pytest.approx(ref["sharpness_sam"], rel=1e-8)
        assert got["unchanged"], "sharpness_sam must restore the weights"
    # The checks above must be able to fail: the two ranks' own models score differently.
    assert ref["local"][0] != ref["local"][1]
    assert results[0]["sam"]["sharpness_sam"] > 0
    eigs = ref["eigs"]
    assert eigs[-1] > abs(eigs[0]), eigs  # the top eigenvalue is also the largest in magnitude
    got = results[0]["eig"]["hessian_top_eig"]
    assert got == pytest.approx(float(eigs[-1]), rel=1e-3), (got, eigs[-3:])
    assert results[1]["eig"]["hessian_top_eig"] == got


def _train_run(rank: int, world: int, out: str) -> dict:
    train = _example("train")
    log = train.run(
        ["--dataset", "digits", "--alpha", "1.0", "--algorithm", "dsgd", "--train-subset", "300"]
        + ["--max-steps", "6", "--eval-every", "3", "--schedule", "step", "--no-progress"]
        + ["--sharpness-samples", "64", "--hessian-iters", "3", "--width", "8", "--out", out]
    )
    import torch.distributed as dist

    import saddle_torch as st

    st.shutdown()
    dist.destroy_process_group()
    return log


def test_train_py_logs_the_metrics_of_its_saved_averaged_model(tmp_path):
    """End to end: the final record's training accuracy and sharpness are those of ``model.pt``."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    logs = run_ranks(_train_run, WORLD, str(tmp_path), timeout=120)
    log = logs[0]
    final = log["final"]
    for rec0, rec1 in zip(log["records"], logs[1]["records"], strict=True):
        assert {**rec0, "train_time_s": 0} == {**rec1, "train_time_s": 0}
    assert [r["lr"] for r in log["records"]] == pytest.approx([0.05, 0.005, 0.0005])  # steps 0, 3, 6 of 6
    assert log["config"]["train_size"] == 300 and sum(log["partition"]["sizes"]) == 300
    assert sum(log["config"]["train_subset_class_counts"]) == 300
    assert final["sharpness_samples"] == 64 and len(final["hessian_eig_trace"]) == 3

    train, models = _example("train"), _example("models")
    data = train.load_data("digits", None, False)
    subset = train.subset(data.train, train.stratified_subset(data.train.tensors[1], 300))
    saved = torch.load(tmp_path / "model.pt")
    model = models.build("cnn", tuple(saved["input_shape"]), saved["num_classes"], width=8)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    x, y = subset.tensors
    with torch.no_grad():
        out = model(x)
    assert final["train_acc_avg_model"] == pytest.approx(
        (out.argmax(1) == y).double().mean().item(), abs=1e-12
    )
    assert final["train_loss_avg_model"] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
    xs, ys = train.subset(subset, train.sharpness_indices(300, 64)).tensors
    params = list(model.parameters())
    loss = F.cross_entropy(model(xs), ys)
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(0.05 * g / norm.float())
        perturbed = F.cross_entropy(model(xs), ys).item()
    assert final["sharpness_loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert final["sharpness_sam"] == pytest.approx(perturbed - loss.item(), rel=1e-3, abs=1e-6)

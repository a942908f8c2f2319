"""examples/train.py and examples/finetune.py, run for a few steps on 2 real ranks (digits, offline)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from harness import run_ranks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")


def _example(name: str):
    """Import examples/<name>.py by path (inside a rank process)."""
    key = f"saddle_examples.{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def _teardown() -> None:
    # A rank that leaves its process group up takes seconds to exit.
    import torch.distributed as dist

    import saddle_torch as st

    st.shutdown()
    dist.destroy_process_group()


COMMON = [
    "--dataset",
    "digits",
    "--alpha",
    "1.0",
    "--schedule",
    "constant",
    "--no-progress",
    "--eval-every",
    "10",
]


def _train_then_finetune(rank: int, world: int, out: str) -> dict:
    train = _example("train")
    log = train.run([*COMMON, "--algorithm", "q-saddle", "--epochs", "2", "--max-steps", "40", "--out", out])
    finetune = _example("finetune")
    ft = finetune.run(
        ["--checkpoint", f"{out}/model.pt", "--alpha", "0.1", "--max-steps", "5", "--algorithm", "dsgd"]
    )
    _teardown()
    return {"log": log, "finetune": ft}


def test_train_writes_outputs_and_learns(tmp_path):
    out = tmp_path / "run"
    results = run_ranks(_train_then_finetune, 2, str(out), timeout=120)
    log = results[0]["log"]
    for mine, theirs in zip(log["records"], results[1]["log"]["records"], strict=True):
        assert {**mine, "train_time_s": 0} == {**theirs, "train_time_s": 0}  # the same on every rank
    assert [r["step"] for r in log["records"]] == [0, 10, 20, 30, 40]
    final = log["final"]
    assert final["test_acc_avg_model"] > 0.3  # chance is 0.1
    assert final["test_acc_mean_rank"] > 0.3 and len(final["test_acc_ranks"]) == 2
    assert (
        final["mib_sent_per_rank"] > 0 and final["consensus_distance"] < 1e-12
    )  # atc on 2 ranks: W = ½·1 averages exactly
    on_disk = json.loads((out / "log.json").read_text())
    assert on_disk["final"]["test_acc_avg_model"] == final["test_acc_avg_model"]
    assert on_disk["config"]["world_size"] == 2 and on_disk["config"]["algorithm"] == "q-saddle"
    assert "DirichletPartition(n=2, alpha=1" in on_disk["partition"]["summary"]
    assert sum(on_disk["partition"]["sizes"]) == 1438
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert "test_acc_avg_model" in header and "acc_rank1" in header
    assert (out / "model.pt").is_file()
    # Fine-tuning starts from the trained averaged model, so it starts well above chance.
    ft = results[0]["finetune"]
    assert ft["before"]["test_acc_avg_model"] == pytest.approx(final["test_acc_avg_model"])
    assert ft["after"]["test_acc_avg_model"] > 0.3 and ft["steps"] == 5


def _resume(rank: int, world: int, out: str) -> dict:
    train = _example("train")
    flags = [*COMMON, "--algorithm", "dsgd", "--max-steps", "30"]
    straight = train.run([*flags, "--epochs", "2", "--out", f"{out}/straight"])
    train.run([*flags, "--epochs", "1", "--checkpoint", "--out", f"{out}/resumed"])  # 23 steps
    resumed = train.run([*flags, "--epochs", "2", "--resume", f"{out}/resumed"])
    _teardown()
    return {"straight": straight["records"], "resumed": resumed["records"]}


def test_resume_continues_bit_for_bit(tmp_path):
    results = run_ranks(_resume, 2, str(tmp_path), timeout=120)
    straight, resumed = results[0]["straight"], results[0]["resumed"]
    assert [r["step"] for r in resumed] == [0, 10, 20, 23, 30]  # the checkpoint's evaluation at 23 stays
    for key in ("test_acc_avg_model", "test_acc_ranks", "consensus_distance", "mib_sent_per_rank"):
        assert resumed[-1][key] == straight[-1][key], key


def _bad_resume(rank: int, world: int, out: str) -> str:
    train = _example("train")
    flags = [*COMMON, "--max-steps", "3", "--epochs", "1"]
    train.run([*flags, "--checkpoint", "--out", out])
    try:
        train.run([*flags, "--seed", "5", "--resume", out])
        message = "no error"
    except ValueError as e:
        message = str(e)
    _teardown()
    return message


def test_resume_rejects_other_configuration(tmp_path):
    results = run_ranks(_bad_resume, 2, str(tmp_path / "run"), timeout=120)
    assert "seed=0" in results[0] and "seed=5" in results[0]

"""examples/train.py, finetune.py and demo.py, run for a few steps on 2 real ranks (digits, offline)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
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


@pytest.mark.parametrize(
    ("stdout_tty", "stderr_tty", "flags", "mode"),
    [
        (True, True, [], "bar"),
        (False, True, [], "lines"),  # make demo > log
        (True, False, [], "lines"),  # the bar would go to a redirected stderr
        (False, False, [], "lines"),  # CI
        (True, True, ["--no-progress"], "none"),
        (False, False, ["--progress", "bar"], "bar"),
    ],
)
def test_progress_mode_follows_the_terminal(monkeypatch, stdout_tty, stderr_tty, flags, mode):
    train = _example("train")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: stdout_tty, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: stderr_tty, raising=False)
    assert train.progress_mode(train.parse_args(flags)) == mode


def test_demo_presets_and_configs():
    demo = _example("demo")
    args = demo.parse_args([])
    assert args.dataset == "fashion-mnist" and args.alpha == 0.01 and args.nproc == 8
    assert args.configs == ["dsgd", "qgm", "q-saddle", "q-saddle@int8"]
    digits = demo.parse_args(["--dataset", "digits", "--alpha", "0.5"])
    assert digits.alpha == 0.5 and digits.nproc == 4  # a flag given wins over the preset
    assert demo.split_config("q-saddle@int8") == ("q-saddle", "int8") and demo.split_config("dsgd") == (
        "dsgd",
        "none",
    )
    flags = demo.train_flags("q-saddle@topk:0.12", args, ["--topology", "exponential"])
    assert flags[flags.index("--compression") + 1] == "topk:0.12" and flags[-2:] == [
        "--topology",
        "exponential",
    ]
    assert flags[flags.index("--out") + 1].endswith("q-saddle_topk0.12")
    assert _example("train").parse_args(flags).alpha == 0.01  # train.py accepts what the demo passes
    with pytest.raises(SystemExit):
        demo.parse_args(["--configs", "q-saddle@"])
    # like for like: the same gradient evaluations per rank, so a SAM step (two) gets half the steps
    assert [demo.steps_of(c, args) for c in args.configs] == [400, 400, 200, 200]
    assert demo.steps_of("q-saddle", demo.parse_args(["--steps", "50"])) == 50  # equal steps instead
    with pytest.raises(SystemExit):  # cross-gradients: the budget would depend on the topology
        demo.parse_args(["--configs", "n-saddle"])


def _demo_worker(rank: int, world: int, jobs: str) -> None:
    _example("demo").worker(Path(jobs))


def test_demo_runs_are_independent(tmp_path):
    """Runs in one demo job do not share gossip state: int8's stochastic rounding restarts with each."""
    flags = [*COMMON, "--algorithm", "q-saddle", "--compression", "int8", "--max-steps", "6", "--epochs", "1"]
    jobs = {name: [*flags, "--out", str(tmp_path / name)] for name in ("first", "second")}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run_ranks(_demo_worker, 2, str(tmp_path / "jobs.json"), timeout=120)
    first, second = (json.loads((tmp_path / n / "log.json").read_text())["records"] for n in jobs)
    assert [r["step"] for r in first] == [0, 6]
    for a, b in zip(first, second, strict=True):
        assert {**a, "train_time_s": 0} == {**b, "train_time_s": 0}
    assert first[-1]["consensus_distance"] > 0  # compressed gossip on 2 ranks does not average exactly


DEMO_CONFIGS = ["dsgd", "qgm", "q-saddle", "q-saddle@int8"]


def test_demo_compares_four_configurations(tmp_path):
    """The demo end to end, tiny: 2 ranks, 7 steps per configuration, output piped (not a terminal)."""
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        str(EXAMPLES / "demo.py"),
        "--dataset",
        "digits",
        "--nproc",
        "2",
        "--epochs",
        "0.3",
        "--eval-every",
        "3",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["runs"]) == DEMO_CONFIGS
    runs = summary["runs"]
    # int8 messages are 3.9× smaller than fp32 ones; the same number of rounds ran.
    assert 3.5 < runs["q-saddle"]["mib_sent_per_rank"] / runs["q-saddle@int8"]["mib_sent_per_rank"] < 4.1
    assert runs["dsgd"]["mib_sent_per_rank"] == runs["q-saddle"]["mib_sent_per_rank"]
    for config in DEMO_CONFIGS:
        assert 0 <= runs[config]["test_acc_min_rank"] <= runs[config]["test_acc_mean_rank"] <= 1
        assert runs[config]["step"] == 7
        per_step = 2 if config.startswith("q-saddle") else 1  # SAM: two gradient evaluations per step
        row = rf"^{re.escape(config)} +7 +{7 * per_step} +\d+\.\d\d% "  # steps, gradient evaluations
        assert re.search(row, proc.stdout, re.M), config
        log = json.loads((demo_dir := out / config.replace("@", "_") / "log.json").read_text())
        assert [r["step"] for r in log["records"]] == [0, 3, 6, 7], demo_dir
        assert [r["grad_evals"] for r in log["records"]] == [0, 3 * per_step, 6 * per_step, 7 * per_step]
    assert "q-saddle@int8 sent 3." in proc.stdout and "fewer bytes than q-saddle" in proc.stdout
    assert (out / "summary.txt").read_text().strip() in proc.stdout
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Not a terminal: one plain line per evaluation, no tqdm bar redrawn with carriage returns.
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    assert "it/s" not in proc.stderr
    for config in DEMO_CONFIGS:
        progress = re.findall(rf"^{re.escape(config)} step +(\d+)/7 ", proc.stdout, re.M)
        assert progress == ["0", "3", "6", "7"], config


# --- CIFAR-10 / ResNet-20 on a synthetic stand-in of the release's files --------------------------------
def write_cifar10_standin(folder: Path, per_batch: int = 32, test: int = 64, seed: int = 0) -> None:
    """``cifar-10-batches-py`` as the release lays it out (5 train pickles, 1 test), with images whose
    class is the colour of a central 16×16 square (10 of the 27 colours with channels in {0, 128, 255})
    on grey noise, so that it shows as contrast (GroupNorm removes each image's mean colour):
    learnable in a few dozen steps by a network that pools globally, as ResNet-20 does."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    palette = np.array([[r, g, b] for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255)])
    palette = palette[[1, 3, 5, 9, 11, 13, 15, 17, 21, 25]]

    def batch(n: int) -> dict:
        labels = rng.integers(0, 10, n)
        img = rng.integers(96, 160, (n, 3, 32, 32), dtype=np.uint8)  # grey: the square shows as contrast
        img[:, :, 8:24, 8:24] = palette[labels][:, :, None, None]
        return {b"data": img.reshape(n, -1), b"labels": [int(c) for c in labels]}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(test)))


def _cifar(rank: int, world: int, data_dir: str, out: str) -> dict:
    train = _example("train")
    flags = ["--dataset", "cifar10", "--data-dir", data_dir, "--model", "resnet20", "--alpha", "1.0"]
    log = train.run(
        [*flags, "--max-steps", "40", "--batch-size", "8", "--lr", "0.02", "--eval-every", "40"]
        + ["--schedule", "constant", "--no-progress", "--out", out]
    )
    model = _example("models").build("resnet20", (3, 32, 32), 10)
    _teardown()
    return {"log": log, "params": sum(p.numel() for p in model.parameters())}


def test_cifar10_resnet20_from_local_files(tmp_path):
    """`train.py --dataset cifar10 --model resnet20` end to end on 2 ranks, reading the release's format
    from disk (no download), on a stand-in small enough for CI."""
    write_cifar10_standin(tmp_path / "cifar-10-batches-py")
    results = run_ranks(_cifar, 2, str(tmp_path), str(tmp_path / "run"), timeout=300)
    log = results[0]["log"]
    assert results[0]["params"] == 272_474  # ResNet-20 of He et al. (0.27M)
    assert sum(log["partition"]["sizes"]) == 5 * 32 and log["final"]["test_samples_avg_model"] == 64
    assert log["config"]["model"] == "resnet20" and log["title"].startswith("cifar10 / resnet20")
    first, final = log["records"][0], log["final"]
    print({k: (first[k], final[k]) for k in ("test_loss_avg_model", "test_acc_avg_model")})
    # Measured: test loss 2.48 → 1.07, accuracy 25.0% → 57.8% (64 test images; chance 10%).
    assert final["test_loss_avg_model"] < first["test_loss_avg_model"] - 0.5, (first, final)
    assert final["test_acc_avg_model"] >= 0.4, final


def test_cifar10_reader_names_what_is_wrong(tmp_path):
    datasets = _example("datasets")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        datasets.load_cifar10(tmp_path)
    write_cifar10_standin(tmp_path / "cifar-10-batches-py", per_batch=4, test=4)
    loaded = datasets.load_cifar10(tmp_path / "cifar-10-batches-py")  # the folder itself also works
    assert loaded.train.tensors[0].shape == (20, 3, 32, 32) and loaded.input_shape == (3, 32, 32)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04K\x01.")  # pickled int 1
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        datasets.load_cifar10(tmp_path)

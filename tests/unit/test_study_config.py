"""bench/study.py: configuration strings → train.py flags, and the run directory each one gets."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "bench" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("dsgd", ("dsgd", "none", [])),
        ("q-saddle@int8", ("q-saddle", "int8", [])),
        ("q-saddle@topk:0.12", ("q-saddle", "topk:0.12", [])),
        ("q-saddle+rho=0.1", ("q-saddle", "none", ["--rho", "0.1"])),
        ("dsgd@fp16+order=atc+eval_every=5", ("dsgd", "fp16", ["--order", "atc", "--eval-every", "5"])),
    ],
)
def test_parse_config(config, expected):
    assert _study().parse_config(config) == expected


@pytest.mark.parametrize("config", ["", "@int8", "q-saddle+rho", "q-saddle+=0.1"])
def test_parse_config_rejects_malformed(config):
    with pytest.raises(ValueError, match="configuration"):
        _study().parse_config(config)


def test_run_dirs_are_distinct_and_path_safe(tmp_path):
    study = _study()
    configs = ["q-saddle", "q-saddle@int8", "q-saddle@topk:0.12", "q-saddle+rho=0.1", "q-saddle+order=atc"]
    dirs = [study._run_dir(tmp_path, 0.01, c, 0) for c in configs]
    assert len(set(dirs)) == len(dirs)
    for d in dirs:
        assert not set(d.relative_to(tmp_path).as_posix()) & set("@:+=")

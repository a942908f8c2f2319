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


# --- examples/train.py: the step schedule and the fixed training subset ----------------------------
def _train():
    """examples/train.py, imported by path (it imports saddle_torch and the sibling examples)."""
    pytest.importorskip("tqdm")
    spec = importlib.util.spec_from_file_location("train_for_study", ROOT / "examples" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("total", [100, 7, 1000])
def test_step_schedule_drops_tenfold_at_half_and_three_quarters(total):
    import argparse

    train = _train()
    args = argparse.Namespace(schedule="step", lr=0.2)
    lr = [train.learning_rate(args, s, total) for s in range(total + 1)]
    half, three_quarters = -(-total // 2), -(-3 * total // 4)  # the first step at or past 50% / 75%
    assert lr[0] == 0.2 and lr[half - 1] == 0.2
    assert lr[half] == pytest.approx(0.02) and lr[three_quarters - 1] == pytest.approx(0.02)
    assert lr[three_quarters] == pytest.approx(0.002) and lr[total] == pytest.approx(0.002)
    if total == 100:
        assert [lr[s] for s in (0, 49, 50, 74, 75, 100)] == pytest.approx(
            [0.2, 0.2, 0.02, 0.02, 0.002, 0.002]
        )


def test_train_parser_accepts_the_study_options():
    train = _train()
    args = train.parse_args(["--schedule", "step", "--train-subset", "500", "--hessian-iters", "3"])
    assert (args.schedule, args.train_subset, args.hessian_iters, args.sharpness_samples) == (
        "step",
        500,
        3,
        0,  # opt-in: the final sharpness measures cost more than a short run's training
    )
    with pytest.raises(SystemExit):
        train.parse_args(["--train-subset", "-1"])


def test_train_subset_is_stratified_fixed_and_of_size_n():
    import torch

    train = _train()
    # Unbalanced classes: 0 has 50%, 1 30%, 2 15%, 3 5% of 2000 samples, shuffled.
    g = torch.Generator().manual_seed(7)
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate((1000, 600, 300, 100))])
    labels = labels[torch.randperm(len(labels), generator=g)]
    for n in (400, 333, 1, 2000):
        idx = train.stratified_subset(labels, n)
        assert len(idx) == n and len(set(idx.tolist())) == n and bool((idx[1:] > idx[:-1]).all())
        counts = torch.bincount(labels[idx], minlength=4)
        exact = torch.tensor([0.5, 0.3, 0.15, 0.05]) * n
        assert bool(((counts - exact).abs() < 1).all()), (n, counts)  # largest-remainder rounding
    assert torch.bincount(labels[train.stratified_subset(labels, 400)]).tolist() == [200, 120, 60, 20]
    # Fixed: it does not depend on torch's global seed (the run seed); another constant changes it.
    torch.manual_seed(0)
    a = train.stratified_subset(labels, 400)
    torch.manual_seed(123)
    assert torch.equal(a, train.stratified_subset(labels, 400))
    assert not torch.equal(a, train.stratified_subset(labels, 400, seed=1))
    with pytest.raises(ValueError, match="subset"):
        train.stratified_subset(labels, 2001)


def test_validation_split_is_disjoint_fixed_and_keeps_the_training_subset():
    import torch

    train = _train()
    labels = torch.arange(3000) % 3  # 1000 per class
    subset_only, none = train.split_train(labels, train_subset=600)
    assert none is None
    tr, val = train.split_train(labels, train_subset=600, val_size=300)
    assert torch.equal(tr, subset_only)  # the training data do not change with --val-size
    assert not set(tr.tolist()) & set(val.tolist()) and len(set(val.tolist())) == 300
    assert torch.bincount(labels[val]).tolist() == [100, 100, 100]
    torch.manual_seed(99)  # fixed: independent of the run's seed
    assert torch.equal(val, train.split_train(labels, train_subset=600, val_size=300)[1])
    tr2, val2 = train.split_train(labels, val_size=300)  # no subset: taken out of the training data
    assert len(tr2) == 2700 and not set(tr2.tolist()) & set(val2.tolist())
    with pytest.raises(ValueError, match="only 2400 training samples are available for it outside"):
        train.split_train(labels, train_subset=600, val_size=2401)
    with pytest.raises(ValueError, match="some must remain to train on"):
        train.split_train(labels, val_size=3000)


# --- bench/study.py: the claims table -----------------------------------------------------------------
def _fake(seed: int, acc: float) -> dict:
    return {"config": {"seed": seed}, "final": {"test_acc_avg_model": acc}}


def test_claims_pair_seeds_and_apply_thresholds():
    study = _study()
    results = {
        (0.1, "qgm"): [_fake(0, 0.800), _fake(1, 0.700), _fake(2, 0.750)],
        (0.1, "q-saddle"): [_fake(0, 0.815), _fake(1, 0.705), _fake(3, 0.9)],  # seed 3 has no partner
        (0.1, "q-saddle@int8"): [_fake(0, 0.800), _fake(1, 0.690)],
        (0.1, "ngm"): [_fake(0, 0.6)],
        (0.1, "n-saddle"): [_fake(0, 0.6)],
        (0.1, "n-saddle@topk:0.1"): [_fake(0, 0.58)],
        (0.1, "dsgd"): [_fake(0, 0.5), _fake(1, 0.5)],
        (0.1, "sam-dsgd"): [_fake(0, 0.52), _fake(1, 0.47)],
        (0.01, "q-saddle"): [_fake(0, 0.4)],  # no qgm at this α: no row
    }
    rows = {(r["alpha"], r["config"]): r for r in study.claims(results)}
    assert set(rows) == {
        (0.1, "q-saddle"),
        (0.1, "q-saddle@int8"),
        (0.1, "n-saddle"),
        (0.1, "n-saddle@topk:0.1"),
        (0.1, "sam-dsgd"),
    }
    q = rows[(0.1, "q-saddle")]
    assert q["baseline"] == "qgm" and q["seeds"] == [0, 1]
    assert q["differences"] == pytest.approx([1.5, 0.5]) and q["mean"] == pytest.approx(1.0)
    assert q["threshold"] == 1.0 and q["met"] == 1 and q["holds"] is True  # mean exactly +1 point
    c = rows[(0.1, "q-saddle@int8")]
    assert c["baseline"] == "q-saddle" and c["differences"] == pytest.approx([-1.5, -1.5])
    assert c["threshold"] == -1.0 and c["met"] == 0 and c["holds"] is False
    n = rows[(0.1, "n-saddle")]
    assert n["baseline"] == "ngm" and n["differences"] == pytest.approx([0.0]) and n["holds"] is True
    nc = rows[(0.1, "n-saddle@topk:0.1")]
    assert nc["baseline"] == "n-saddle" and nc["differences"] == pytest.approx([-2.0]) and nc["met"] == 0
    s = rows[(0.1, "sam-dsgd")]
    assert s["differences"] == pytest.approx([2.0, -3.0]) and s["threshold"] is None and s["holds"] is None
    table = study.claims_table(study.claims(results))
    assert "| 0.1 | q-saddle − qgm |" in table and "| +1.50, +0.50 | +1.00 | ≥ +1.0 | 1/2 | yes |" in table


def test_claims_keep_extras_and_fall_back_to_the_plain_baseline():
    study = _study()
    results = {
        (0.1, "qgm"): [_fake(0, 0.7)],
        (0.1, "q-saddle+rho=0.1"): [_fake(0, 0.72)],
        (0.1, "dsgd+lr=0.1"): [_fake(0, 0.6)],
        (0.1, "sam-dsgd+lr=0.1"): [_fake(0, 0.61)],
    }
    rows = {r["config"]: r for r in study.claims(results)}
    assert rows["q-saddle+rho=0.1"]["baseline"] == "qgm"
    assert rows["q-saddle+rho=0.1"]["differences"] == pytest.approx([2.0])
    assert rows["sam-dsgd+lr=0.1"]["baseline"] == "dsgd+lr=0.1"
    assert study.baseline_of("q-saddle@int8+rho=0.1")[0] == ["q-saddle+rho=0.1"]


def _fake_val(seed: int, test: float, val: float) -> dict:
    return {"config": {"seed": seed}, "final": {"test_acc_avg_model": test, "val_acc_avg_model": val}}


def test_rho_is_chosen_on_validation_and_judged_on_test():
    study = _study()
    results = {
        (0.1, "qgm"): [_fake(0, 0.70), _fake(1, 0.60)],  # a baseline needs no validation accuracy
        # ρ = 0.05 (the default, no +rho): best on test, not on validation
        (0.1, "q-saddle"): [_fake_val(0, 0.75, 0.70), _fake_val(1, 0.65, 0.70)],
        (0.1, "q-saddle+rho=0.1"): [_fake_val(0, 0.71, 0.72), _fake_val(1, 0.60, 0.72)],
        (0.1, "q-saddle+rho=0.2"): [_fake_val(0, 0.50, 0.72), _fake_val(1, 0.50, 0.72)],  # tie: smaller ρ
        (0.01, "qgm"): [_fake(0, 0.50)],
        (0.01, "q-saddle"): [_fake_val(0, 0.55, 0.60)],
        (0.01, "q-saddle+rho=0.1"): [_fake_val(0, 0.52, 0.50)],
        (0.01, "q-saddle+rho=0.2"): [_fake_val(0, 0.52, 0.50)],
        (0.1, "n-saddle"): [_fake(0, 0.6)],  # no validation accuracy: not chosen on
        (0.1, "n-saddle+rho=0.1"): [_fake(0, 0.6)],
    }
    rows = {r["alpha"]: r for r in study.validation_choice(results)}
    assert set(rows) == {0.1, 0.01, "all"}
    r = rows[0.1]
    assert r["family"] == "q-saddle" and r["chosen"] == 0.1 and r["baseline"] == "qgm"
    assert r["val"] == pytest.approx({0.05: 70.0, 0.1: 72.0, 0.2: 72.0})
    assert r["test"] == pytest.approx([71.0, 60.0]) and r["differences"] == pytest.approx([1.0, 0.0])
    assert r["met"] == 1  # ≥ +1 point on seed 0 only
    assert rows[0.01]["chosen"] == 0.05 and rows[0.01]["differences"] == pytest.approx([5.0])
    # over both α: the mean of the two means, 0.05: 65.0, 0.1: 61.0, 0.2: 61.0
    a = rows["all"]
    assert a["chosen"] == 0.05 and a["val"] == pytest.approx({0.05: 65.0, 0.1: 61.0, 0.2: 61.0})
    assert a["differences"] == pytest.approx([5.0, 5.0, 5.0]) and a["met"] == 3
    table = study.validation_table(study.validation_choice(results))
    assert "| 0.1 | q-saddle | 0.05: 70.00, **0.1: 72.00**, 0.2: 72.00 | 0.1 |" in table


def test_study_wide_flags_reach_train_py_before_the_configuration_extras():
    import argparse

    study = _study()
    names = dict.fromkeys(study.OPTIONAL_FLAGS)
    args = argparse.Namespace(**{**names, "schedule": "step", "train_subset": 6000, "rho": 0.1})
    assert study.study_flags(args) == ["--schedule", "step", "--train-subset", "6000", "--rho", "0.1"]
    assert study.parse_args([]).sharpness_samples == 2048  # the study measures sharpness by default


def test_the_study_mlp_and_the_cross_sam_flag():
    train = _train()
    models = train.sibling("models")
    import torch

    mlp = models.build("mlp", (1, 28, 28), 10, width=16)
    assert mlp(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in mlp.parameters()) == 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    assert train.parse_args(["--model", "mlp"]).cross_sam == "on"
    assert train.parse_args(["--cross-sam", "off"]).cross_sam == "off"
    study = _study()
    assert study.parse_config("n-saddle@int8+cross_sam=off") == ("n-saddle", "int8", ["--cross-sam", "off"])

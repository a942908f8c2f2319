"""Single-process checks of every algorithm's step against plain PyTorch references (world of one)."""

import pytest
import torch
from torch import nn

import saddle_torch as st


@pytest.fixture(scope="module", autouse=True)
def _init():
    st.init(topology="ring")
    yield
    st.shutdown()


def _model(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8), nn.Tanh()]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    layers.append(nn.Linear(8, 3))
    return nn.Sequential(*layers).double()


def _batch(step: int = 0):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)


def _closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _sam_grads(model, x, y, rho, adaptive=False):
    """The two-pass SAM/ASAM gradient, written plainly."""
    g = _grads(model, x, y)
    ps = list(model.parameters())
    if adaptive:
        norm = torch.sqrt(sum(((p.abs() * gi) ** 2).sum() for p, gi in zip(ps, g)))
        es = [rho * p * p * gi / (norm + 1e-12) for p, gi in zip(ps, g)]
    else:
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        es = [rho * gi / (norm + 1e-12) for gi in g]
    with torch.no_grad():
        for p, e in zip(ps, es):
            p.add_(e)
    g2 = _grads(model, x, y)
    with torch.no_grad():
        for p, e in zip(ps, es):
            p.sub_(e)
    return g2


def _assert_close(model_a, model_b, tol=1e-9):
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max()


@pytest.mark.parametrize("adaptive,rho", [(False, 0.05), (True, 0.5)])
@pytest.mark.parametrize("order", ["atc", "awc"])
def test_sam_dsgd_equals_two_pass_formula(adaptive: bool, rho: float, order: str) -> None:
    model, ref = _model(), _model()
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        model,
        algorithm="sam-dsgd",
        rho=rho,
        adaptive=adaptive,
        order=order,
    )
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for step in range(3):
        x, y = _batch(step)
        opt.step(_closure(model, opt, x, y))
        g2 = _sam_grads(ref, x, y, rho, adaptive)
        for p, g in zip(ref.parameters(), g2):
            p.grad = g
        ref_opt.step()
        _assert_close(model, ref)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("algorithm", ["qgm", "q-saddle"])
def test_qgm_and_q_saddle_follow_the_buffer_equations(algorithm: str, nesterov: bool) -> None:
    lr, beta, wd, rho = 0.05, 0.9, 1e-3, 0.05
    model, ref = _model(), _model()
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd),
        model,
        algorithm=algorithm,
        rho=rho,
        beta=beta,
        nesterov=nesterov,
    )
    params = list(ref.parameters())
    m_hat = [torch.zeros_like(p) for p in params]
    for step in range(4):
        x, y = _batch(step)
        opt.step(_closure(model, opt, x, y))
        # Reference (ALGORITHMS.md, QGM): world of one, so gossip is the identity.
        g = _sam_grads(ref, x, y, rho) if algorithm == "q-saddle" else _grads(ref, x, y)
        with torch.no_grad():
            for i, p in enumerate(params):
                d = g[i] + wd * p
                m = beta * m_hat[i] + d
                u = d + beta * m if nesterov else m
                x_prev = p.clone()
                p.sub_(lr * u)
                m_hat[i] = beta * m_hat[i] + (1 - beta) * (x_prev - p) / lr
        _assert_close(model, ref)
    # The QGM buffer itself matches too.
    (m_flat,) = opt.saddle.direction.m_hat.values()
    assert torch.allclose(m_flat, torch.cat([m.reshape(-1) for m in m_hat]), atol=1e-12)


@pytest.mark.parametrize("algorithm", ["dsgd", "allreduce", "ngm"])
def test_plain_algorithms_equal_the_wrapped_optimizer_alone(algorithm: str) -> None:
    model, ref = _model(), _model()
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model, algorithm=algorithm
    )
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        x, y = _batch(step)
        opt.step(_closure(model, opt, x, y))
        ref_opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        ref_opt.step()
        _assert_close(model, ref)


def test_n_saddle_in_a_world_of_one_is_sam() -> None:
    model, ref = _model(), _model()
    opt = st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="n-saddle")
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, y = _batch()
    opt.step(_closure(model, opt, x, y))
    for p, g in zip(ref.parameters(), _sam_grads(ref, x, y, 0.05)):
        p.grad = g
    ref_opt.step()
    _assert_close(model, ref)


def test_weighted_sum_is_the_ngm_combination() -> None:
    from saddle_torch import kernels

    g = torch.randn(1000, dtype=torch.float64)
    ys = [torch.randn(1000, dtype=torch.float64) for _ in range(3)]
    w = [0.2, 0.3, 0.1]
    expected = 0.4 * g + sum(wi * yi for wi, yi in zip(w, ys))
    kernels.weighted_sum_(g, 0.4, ys, w)
    assert torch.allclose(g, expected, atol=1e-12)


def test_first_second_step_equals_closure_step() -> None:
    a, b = _model(bn=True), _model(bn=True)
    oa = st.DistributedOptimizer(torch.optim.SGD(a.parameters(), lr=0.1), a, algorithm="q-saddle")
    ob = st.DistributedOptimizer(torch.optim.SGD(b.parameters(), lr=0.1), b, algorithm="q-saddle")
    for step in range(3):
        x, y = _batch(step)
        oa.step(_closure(a, oa, x, y))
        ob.zero_grad()
        nn.functional.cross_entropy(b(x), y).backward()
        ob.first_step(zero_grad=True)
        nn.functional.cross_entropy(b(x), y).backward()
        ob.second_step(zero_grad=True)
        _assert_close(a, b, 1e-12)
        assert torch.equal(a[2].running_mean, b[2].running_mean)


def test_batchnorm_statistics_only_from_the_first_pass() -> None:
    model, ref = _model(bn=True), _model(bn=True)
    opt = st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="sam-dsgd")
    x, y = _batch()
    opt.step(_closure(model, opt, x, y))
    ref(x)  # one forward pass in train mode
    assert torch.equal(model[2].running_mean, ref[2].running_mean)
    assert int(model[2].num_batches_tracked) == 1
    model2 = _model(bn=True)
    opt2 = st.DistributedOptimizer(
        torch.optim.SGD(model2.parameters(), lr=0.1), model2, algorithm="sam-dsgd", bn_second_pass=True
    )
    opt2.step(_closure(model2, opt2, x, y))
    assert int(model2[2].num_batches_tracked) == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
)
def test_wraps_any_optimizer_and_schedulers_see_it(make) -> None:
    model = _model()
    inner = make(model.parameters())
    opt = st.DistributedOptimizer(inner, model, algorithm="sam-dsgd")
    assert isinstance(opt, type(inner)) and isinstance(opt, torch.optim.Optimizer)
    assert type(opt).__name__ == type(inner).__name__
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lr0 = opt.param_groups[0]["lr"]
    x, y = _batch()
    loss0 = float(nn.functional.cross_entropy(model(x), y).detach())
    for _ in range(5):
        opt.step(_closure(model, opt, x, y))
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 / 32)
    assert float(nn.functional.cross_entropy(model(x), y).detach()) < loss0
    assert len(opt.state) > 0  # the wrapped optimizer's own state lives on


@pytest.mark.parametrize(
    ("feed", "meaning"), [("normalized", "adam"), ("scaled", "adam"), ("normalized", "qgm")]
)
def test_qg_adam_first_step_is_adamws_at_the_same_lr(feed: str, meaning: str) -> None:
    """The lr a user tuned for AdamW means the same first step under ``qg_adam_lr="adam"`` (default).

    At t = 1 the moments are empty, so QG-Adam's step is lr/c₁ · g/(|g| + ε): AdamW's lr·g/(|g| + ε)
    without a first-moment bias correction (c₁ = 1), 1/(1 − β₁) = 10 × that with the QGM code's. (In
    a world of one, gossip is the identity: this checks the direction rule only; tests/distributed/
    test_step_reference.py checks both meanings with gossip against a dense reference.)
    """
    x, y = _batch()
    ref = _model()
    plain = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.0)
    before = [p.detach().clone() for p in ref.parameters()]
    plain.step(_closure(ref, plain, x, y))
    model = _model()
    opt = st.DistributedOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0),
        model,
        algorithm="qgm",
        qg_adam=feed,
        qg_adam_lr=meaning,
    )
    opt.step(_closure(model, opt, x, y))
    factor = 1.0 if meaning == "adam" else 10.0  # 1/(1 − β₁), β₁ = 0.9
    for p0, pa, pq in zip(before, ref.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(pq - p0, factor * (pa - p0), rtol=1e-9, atol=1e-12)


def test_errors_say_how_to_call() -> None:
    model = _model()
    opt = st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match="call opt.step\\(closure\\)"):
        opt.step()
    with pytest.raises(RuntimeError, match="second_step\\(\\) called without first_step"):
        opt.second_step()
    with pytest.raises(ValueError, match="already wrapped"):
        st.DistributedOptimizer(opt, model)
    with pytest.raises(ValueError, match="unknown algorithm 'sgd'"):
        st.DistributedOptimizer(torch.optim.SGD(_model().parameters(), lr=0.1), algorithm="sgd")
    with pytest.raises(ValueError, match="momentum=0"):
        st.DistributedOptimizer(torch.optim.SGD(_model().parameters(), lr=0.1, momentum=0.9), algorithm="qgm")
    with pytest.raises(ValueError, match="order must be"):
        st.DistributedOptimizer(torch.optim.SGD(_model().parameters(), lr=0.1), order="both")
    with pytest.raises(ValueError, match="qg_adam must be 'normalized' or 'scaled', got 'paper'"):
        st.DistributedOptimizer(torch.optim.Adam(_model().parameters()), qg_adam="paper")
    with pytest.raises(ValueError, match="qg_adam_lr must be 'adam' or 'qgm', got 'sgd'"):
        st.DistributedOptimizer(torch.optim.Adam(_model().parameters()), qg_adam_lr="sgd")
    n = _model()
    on = st.DistributedOptimizer(torch.optim.SGD(n.parameters(), lr=0.1), n, algorithm="n-saddle")
    with pytest.raises(ValueError, match="needs step\\(closure\\)"):
        on.first_step()


def test_state_dict_round_trip_resumes_exactly(tmp_path) -> None:
    def make():
        m = _model()
        return m, st.DistributedOptimizer(torch.optim.SGD(m.parameters(), lr=0.05), m, algorithm="q-saddle")

    a, oa = make()
    for step in range(2):
        oa.step(_closure(a, oa, *_batch(step)))
    st.save_checkpoint(tmp_path / "ck", a, oa)
    for step in range(2, 4):
        oa.step(_closure(a, oa, *_batch(step)))
    b, ob = make()
    st.load_checkpoint(tmp_path / "ck", b, ob)
    assert ob.saddle.step == 2
    for step in range(2, 4):
        ob.step(_closure(b, ob, *_batch(step)))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert (tmp_path / "ck.rank0").exists()


def test_compressed_cross_gradients_refuse_what_they_cannot_do() -> None:
    m = _model().float()
    naive = st.Compression.int8.without_error_feedback()
    with pytest.raises(ValueError, match="error feedback only"):
        st.DistributedOptimizer(
            torch.optim.SGD(m.parameters(), lr=0.1), m, algorithm="n-saddle", compression=naive
        )
    d = _model().double()
    with pytest.raises(ValueError, match="float32 parameters, this model has torch.float64"):
        st.DistributedOptimizer(
            torch.optim.SGD(d.parameters(), lr=0.1), d, algorithm="ngm", compression="int8"
        )


def _moved_run(move: bool, algorithm: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = st.DistributedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), model, algorithm=algorithm)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(4):
        if move:
            model.to("cpu:0")  # what Hugging Face's Trainer does after the optimizer was built

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("algorithm", ["q-saddle", "dsgd"])
def test_a_model_moved_after_wrapping_trains_bit_for_bit_as_one_never_moved(algorithm: str) -> None:
    for a, b in zip(_moved_run(True, algorithm), _moved_run(False, algorithm), strict=True):
        assert torch.equal(a, b)


def test_a_dtype_change_before_the_first_step_rebuilds_and_after_it_raises() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="sam-dsgd")
    model.double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 2, (8,))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    before = model.weight.detach().clone()
    opt.step(closure)
    assert {k.dtype for k in opt.saddle.flat.buffers} == {torch.float64}
    assert not opt.saddle.flat.moved() and not torch.equal(model.weight, before)
    model.float()
    with pytest.raises(RuntimeError, match="after 1 step"):
        opt.step(closure)


def test_micro_batches_closure_replays_every_micro_batch_after_the_first_call() -> None:
    from saddle_torch.optim.replay import MicroBatches

    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    xs = [torch.randn(4, 5) for _ in range(3)]

    def run(x: torch.Tensor) -> torch.Tensor:
        loss = (x @ w).pow(2).mean() / len(xs)
        loss.backward()
        return loss

    def zero() -> None:
        w.grad = None

    big = sum((x @ w).pow(2).mean() for x in xs) / len(xs)
    (expected,) = torch.autograd.grad(big, w)
    micro = MicroBatches(zero)
    first = [run(xs[0]), run(xs[1])]
    for x, loss in zip(xs[:2], first, strict=True):
        micro.add(lambda x=x: run(x), loss)
    closure = micro.closure(pending=lambda: run(xs[2]))
    assert torch.allclose(closure(), big) and torch.allclose(w.grad, expected)  # first pass completed
    with torch.no_grad():
        w.add_(0.1)  # a SAM perturbation: the next evaluation is the whole batch's gradient there
    big = sum((x @ w).pow(2).mean() for x in xs) / len(xs)
    (expected,) = torch.autograd.grad(big, w)
    assert torch.allclose(closure(), big) and torch.allclose(w.grad, expected)

import math

import pytest
import torch

import saddle_torch as st
from saddle_torch import kernels
from saddle_torch import topology as T
from saddle_torch.compression import Compression, resolve, roundtrip, simulate_consensus, tune_gamma


def test_exact_message_sizes_and_ratios() -> None:
    n = 1 << 20
    assert Compression.none.is_none and resolve(Compression.none).is_none and resolve(None).is_none
    assert resolve(None, default=Compression.int8) == Compression.int8  # None: the context's default
    assert Compression.fp16.encoded_bytes(n) == 48 + 2 * n
    assert Compression.int8.encoded_bytes(n) == 48 + 4 * math.ceil(n / 256) + n
    assert Compression.qsgd(4).encoded_bytes(n) == 48 + 4 * math.ceil(n / 256) + n // 2
    assert Compression.topk(0.1).encoded_bytes(n) == 48 + 8 * math.ceil(0.1 * n)
    assert Compression.randk(0.1).encoded_bytes(n) == 48 + 4 * math.ceil(0.1 * n)
    assert Compression.sign.encoded_bytes(n) == 48 + 4 * (n // 256) + n // 8
    assert Compression.int8.compression_ratio(n) == pytest.approx(3.94, abs=0.01)  # a scale per block
    assert Compression.topk(0.12).compression_ratio(n) > 4.0


def test_resolve_strings_and_bad_parameters() -> None:
    assert resolve("int8") == Compression.int8
    assert resolve("topk:0.25") == Compression.topk(0.25)
    assert resolve("qsgd:4") == Compression.qsgd(4)
    with pytest.raises(ValueError, match="unknown compression"):
        resolve("zip")
    with pytest.raises(ValueError, match="needs a ratio"):
        resolve("topk")
    with pytest.raises(ValueError):
        Compression.topk(1.5)
    with pytest.raises(ValueError):
        Compression.qsgd(3)


@pytest.mark.parametrize(
    "comp,tol", [(Compression.fp16, 1e-3), (Compression.bf16, 1e-2), (Compression.int8, 2e-2)]
)
def test_roundtrip_accuracy(comp: Compression, tol: float) -> None:
    x = torch.randn(4096)
    assert float((roundtrip(comp, x) - x).norm() / x.norm()) < tol


def test_topk_keeps_the_largest_entries() -> None:
    x = torch.randn(1000)
    c = roundtrip(Compression.topk(0.05), x)
    kept = c.nonzero().reshape(-1)
    assert kept.numel() == 50
    assert set(kept.tolist()) == set(x.abs().topk(50).indices.tolist())
    assert torch.equal(c[kept], x[kept])


def test_corrupted_messages_raise_before_writing() -> None:
    comp = Compression.int8
    x = torch.randn(1000)
    msg = kernels.codec_encode(comp.native, x, 7)
    acc = torch.zeros(1000)
    with pytest.raises(st.CorruptMessageError, match="truncated"):
        kernels.codec_decode_add(comp.native, msg[:-10].contiguous(), 7, 1.0, acc)
    bad = msg.clone()
    bad[20] ^= 0xFF  # element count byte
    with pytest.raises(st.CorruptMessageError):
        kernels.codec_decode_add(comp.native, bad, 7, 1.0, acc)
    with pytest.raises(st.CorruptMessageError):
        kernels.codec_decode_add(Compression.sign.native, msg, 7, 1.0, acc)
    assert torch.count_nonzero(acc) == 0


def test_choco_reaches_consensus_where_naive_compression_stalls() -> None:
    ring = T.ring(8)
    for comp in (Compression.int8, Compression.topk(0.1)):
        gamma = tune_gamma(ring, comp)
        assert 0 < gamma <= 1
        assert simulate_consensus(ring, comp, gamma, rounds=400, dim=300) < 1e-4
        assert simulate_consensus(ring, comp.without_error_feedback(), gamma, rounds=400, dim=300) > 1e-3


def test_world_of_one_compressed_round_is_exact_and_validates_inputs() -> None:
    st.init(compression="int8")
    try:
        x = torch.randn(100)
        assert torch.equal(st.neighbor_average(x), x)
        with pytest.raises(ValueError, match="float32"):
            st.neighbor_average(torch.randn(10, dtype=torch.float64))
        st.set_topology("one_peer_exponential")
        assert torch.equal(st.neighbor_average(x, compression=Compression.none), x)
    finally:
        st.shutdown()


def test_compression_pickles() -> None:
    import pickle

    c = Compression.topk(0.2).without_error_feedback()
    d = pickle.loads(pickle.dumps(c))
    assert d == c and d.encoded_bytes(100) == c.encoded_bytes(100)


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8"])
def test_auto_gamma_keeps_near_lossless_codecs_near_one(codec: str) -> None:
    # The old floor-chasing tuner gave int8 0.1 on ring(4) and 0.4 on ring(8), which cost 12 points.
    for name, n in [
        ("ring", 4),
        ("ring", 8),
        ("ring", 32),
        ("torus", 16),
        ("exponential", 16),
        ("exponential", 32),
    ]:
        gamma = tune_gamma(st.topology.resolve(name, n, "uniform"), codec)
        assert gamma >= 0.9, (codec, name, n, gamma)


def test_auto_gamma_keeps_topk_below_its_divergence() -> None:
    ring = T.ring(4)
    gamma = tune_gamma(ring, "topk:0.1")
    assert gamma <= 0.4
    assert simulate_consensus(ring, Compression.topk(0.1), 1.0, rounds=600) > 0.1  # γ = 1 does not converge
    assert simulate_consensus(ring, Compression.topk(0.1), gamma, rounds=600) < 1e-4


def _feed(monitor, residuals: list[float]) -> list[str]:
    import warnings

    x = torch.ones(100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for r in residuals:
            for _ in range(monitor.every):
                monitor.observe(x, x - r)  # ‖x − x̂‖/‖x‖ = r
    return [str(w.message) for w in caught]


def test_residual_monitor_warns_once_on_growth_and_on_no_contraction_only() -> None:
    from saddle_torch.gossip import ResidualMonitor

    make = lambda: ResidualMonitor("x", 0.6, Compression.topk(0.12))  # noqa: E731
    grows = [0.05 * 1.25**k for k in range(30)]  # what topk at γ = 0.6 does in training
    (msg,) = _feed(make(), grows)
    assert "gamma=0.6" in msg and "topk" in msg and "grew" in msg
    assert len(_feed(make(), [1.2] * 30)) == 1  # never contracts
    healthy = [0.04, 0.045, 0.05, 0.047, 0.03, 0.02, 0.016, 0.011, 0.007, 0.004, 0.0026, 0.0013] * 3
    assert _feed(make(), healthy) == []
    assert _feed(make(), [1e-7 * 1.3**k for k in range(30)]) == []  # growth of a negligible residual


def test_lowrank_spec_parses_validates_and_is_refused_where_it_cannot_work() -> None:
    assert resolve("lowrank") == Compression.lowrank(1) and resolve("lowrank:2:3") == Compression.lowrank(
        2, 3
    )
    assert repr(Compression.lowrank(2, 3)) == "Compression(lowrank:2, iterations=3)"
    assert Compression.lowrank(1).is_lowrank and not Compression.lowrank(1).uses_choco
    assert tune_gamma(st.topology.ring(8), "lowrank:1") == 1.0  # no codec noise: exact gossip's γ
    with pytest.raises(ValueError, match="rank ≥ 1"):
        Compression.lowrank(0)
    with pytest.raises(ValueError, match="no message codec"):
        Compression.lowrank(1).encoded_bytes(10)
    st.init()
    model = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="cross-gradients at each neighbour's model"):
        st.DistributedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="n-saddle", compression="lowrank:1"
        )
    with pytest.raises(ValueError, match="mix='params'"):
        st.hooks.GossipHookState(compression="lowrank:1")

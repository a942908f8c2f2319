"""Compressed gossip between real processes: CHOCO convergence, exact byte counts, corrupt messages."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from harness import resume_train, run_ranks

import saddle_torch as st
from saddle_torch.compression import Compression

DIM = 2000


def _x(rank: int) -> torch.Tensor:
    return torch.randn(DIM, generator=torch.Generator().manual_seed(rank)) + 1.0


def _consensus(rank: int, world: int, comp: Compression, gamma: float, rounds: int) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    x = _x(rank)
    mean = torch.stack([_x(r) for r in range(world)]).mean(0)
    for _ in range(rounds):
        st.neighbor_average(x, gamma=gamma, name="x", inplace=True, compression=comp)
    return {
        "rel_error": float((x - mean).norm() / mean.norm()),
        "stats": st.stats(),
        "expected_bytes": comp.encoded_bytes(DIM),
    }


@pytest.mark.parametrize("comp,rounds", [(Compression.int8, 250), (Compression.topk(0.1), 600)])
def test_choco_reaches_the_average_and_naive_compression_does_not(comp, rounds) -> None:
    world = 8
    gamma = st.compression.tune_gamma(st.topology.ring(world), comp)  # simulated on the real W
    with_ef = run_ranks(_consensus, world, comp, gamma, rounds, timeout=600)
    without = run_ranks(_consensus, world, comp.without_error_feedback(), gamma, rounds, timeout=600)
    for rank in range(world):
        assert with_ef[rank]["rel_error"] < 1e-3, (rank, with_ef[rank])
        assert without[rank]["rel_error"] > 1e-3, (rank, without[rank])
        s = with_ef[rank]["stats"]
        # Ring: every round sends one message to each of 2 neighbours and receives 2.
        assert s["bytes_sent"] == s["bytes_received"] == rounds * 2 * with_ef[rank]["expected_bytes"]


def _mixed_codecs(rank: int, world: int) -> str:
    ctx = st.init(topology="ring", timeout=timedelta(seconds=30))
    # The handshake now refuses differing codecs up front (test_mistakes.py); skip it here to reach
    # the wire, whose own validation must still catch a message of another codec.
    ctx.names.register = lambda *args, **kwargs: True  # "registered": γ still resolves
    comp = Compression.bf16 if rank == 2 else Compression.fp16  # same size, another codec on the wire
    try:
        st.neighbor_average(torch.randn(500), name="x", compression=comp)
    except st.CorruptMessageError as e:
        return str(e)
    return "no error"


def test_a_message_from_another_codec_is_rejected_naming_the_sender() -> None:
    results = run_ranks(_mixed_codecs, 4)
    for rank in (1, 3):  # rank 2's neighbours
        assert "from neighbour 2" in results[rank] and "codec" in results[rank], results[rank]
    assert "corrupted gossip message" in results[2]


def _train_compressed(rank: int, world: int) -> dict:
    from test_training import _averaged_model_loss, _closure, _data, _model

    st.init(topology="ring", timeout=timedelta(seconds=60))
    model = _model().float()
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        model,
        algorithm="q-saddle",
        compression="int8",
        gamma=0.5,
    )
    start = _averaged_model_loss(model, world)
    for step in range(60):
        x, y = _data(rank, 32, step + 1)
        opt.step(_closure(model, opt, x.float(), y))
    return {"start": start, "end": _averaged_model_loss(model, world), "stats": st.stats()}


def test_q_saddle_trains_with_int8_compression() -> None:
    for rank, r in run_ranks(_train_compressed, 4).items():
        assert r["end"] < 0.5 * r["start"], (rank, r)
        # Exactly one int8 message per neighbour per step.
        numel = sum(p.numel() for p in _model_params())
        assert r["stats"]["bytes_sent"] == 60 * 2 * Compression.int8.encoded_bytes(numel)


def _model_params():
    from test_training import _model

    return list(_model().parameters())


def _identical_start(rank: int, world: int, comp: Compression) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    x0 = _x(0)  # the same tensor on every rank, like a model after broadcast_parameters
    x = x0.clone()
    for _ in range(5):
        st.neighbor_average(x, gamma=0.5, name="same", inplace=True, compression=comp)
    x_hat = st.gossip.current().choco.get("same")[0]
    return {"x_unchanged": torch.equal(x, x0), "x_hat_is_x0": torch.equal(x_hat, x0)}


@pytest.mark.parametrize("comp", [Compression.int8, Compression.topk(0.1)])
def test_choco_starts_from_the_common_tensor_when_every_rank_holds_it(comp) -> None:
    # x̂ = x₀ on every rank: the messages are C(0) = 0 and the consensus is kept exactly, instead of
    # CHOCO pulling the models towards its zero-initialised public copies for the first rounds. Ranks
    # with different tensors start from x̂ = 0 (test_choco_reaches_the_average_... would fail otherwise:
    # x̂ = own x would break s = Σ w_ij x̂_j and the average would drift).
    for rank, r in run_ranks(_identical_start, 4, comp).items():
        assert r["x_unchanged"] and r["x_hat_is_x0"], (rank, r)


def _primed_by_optimizer(rank: int, world: int, same: bool) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    torch.manual_seed(0 if same else rank)
    model = torch.nn.Linear(8, 3)
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="dsgd", order="atc", compression="int8"
    )
    ctx = st.gossip.current()
    (key, flat), *_ = opt.saddle.flat.buffers.items()
    name = opt.saddle.name(key)
    primed = ctx.choco.has(name) and torch.equal(ctx.choco.get(name)[0], flat)
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # atc: the models differ before the first gossip round
    return {"primed": primed, "x_hat_nonzero": bool(ctx.choco.get(name)[0].any())}


@pytest.mark.parametrize("same", [True, False])
def test_optimizer_primes_choco_at_construction_only_for_a_common_model(same) -> None:
    for rank, r in run_ranks(_primed_by_optimizer, 4, same).items():
        assert r["primed"] is same, (rank, r)
        assert r["x_hat_nonzero"], (rank, r)  # x₀ (primed) or the first message C(x − 0)


# --- CHOCO state: checkpoints, topology changes, divergence, the backend's buffers ------------------
def _choco_phase(
    rank: int, world: int, path: str, start: int, stop: int, mode: str, topology: str = "ring"
) -> list | None:
    st.init(topology=topology, timeout=timedelta(seconds=60))
    torch.manual_seed(rank)  # different models: CHOCO starts from 0 and its state matters
    model = torch.nn.Linear(6, 3)
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        algorithm="q-saddle",
        order="atc",
        compression="int8",
    )
    resume_train(model, opt, path=path, rank=rank, start=start, stop=stop, mode=mode)
    ctx = st.gossip.current()
    name = opt.saddle.name(next(iter(opt.saddle.flat.buffers)))
    states = [t for key in ctx.choco.keys(name) for t in ctx.choco.get(key)]  # one (x̂, s) per phase
    return [p.detach().clone() for p in model.parameters()] + states


@pytest.mark.parametrize("topology", ["ring", "one_peer_exponential"])
def test_choco_state_survives_checkpoint_kill_resume_bit_for_bit(tmp_path, topology: str) -> None:
    world, path = 4, str(tmp_path / "ckpt-{rank}.pt")
    straight = run_ranks(_choco_phase, world, path, 0, 6, "run", topology)
    run_ranks(
        _choco_phase,
        world,
        path,
        0,
        3,
        "save-and-die",
        topology,
        allow_missing=set(range(world)),
        wait_for_exit=True,
    )
    resumed = run_ranks(_choco_phase, world, path, 3, 6, "run", topology)
    for rank in range(world):
        assert straight[rank][-2].abs().sum() > 0  # x̂ moved away from its zero start
        for a, b in zip(straight[rank], resumed[rank], strict=True):
            assert torch.equal(a, b), rank


def _switch_topology(rank: int, world: int) -> dict:
    st.init(topology="ring", timeout=timedelta(seconds=60))
    ctx = st.gossip.current()
    x = _x(rank)
    mean = torch.stack([_x(r) for r in range(world)]).mean(0)
    for _ in range(20):
        st.neighbor_average(x, name="x", inplace=True, compression="int8")
    had_state = ctx.choco.has("x")
    st.set_topology("fully_connected")
    reset = not ctx.choco.names()
    for _ in range(40):
        st.neighbor_average(x, name="x", inplace=True, compression="int8")
    return {"had_state": had_state, "reset": reset, "rel_error": float((x - mean).norm() / mean.norm())}


def test_set_topology_resets_choco_state_and_compressed_gossip_still_reaches_the_average() -> None:
    for rank, r in run_ranks(_switch_topology, 4).items():
        assert r["had_state"] and r["reset"], rank
        assert r["rel_error"] < 1e-3, (rank, r)


def _diverge(rank: int, world: int, gamma) -> dict:
    import warnings

    st.init(topology="ring", timeout=timedelta(seconds=60))
    x = _x(rank)
    mean = torch.stack([_x(r) for r in range(world)]).mean(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(300):
            st.neighbor_average(x, gamma=gamma, name="x", inplace=True, compression="topk:0.1")
    found = [str(w.message) for w in caught if issubclass(w.category, st.compression.CompressionWarning)]
    return {"warnings": found, "rel_error": float((x - mean).norm() / mean.norm())}


def test_diverging_compressed_gossip_warns_once_and_auto_gamma_converges() -> None:
    for rank, r in run_ranks(_diverge, 4, 1.0).items():
        assert len(r["warnings"]) == 1, (rank, r["warnings"])
        assert "gamma=1.0" in r["warnings"][0] and "topk" in r["warnings"][0]
        assert r["rel_error"] > 0.1
    for rank, r in run_ranks(_diverge, 4, "auto").items():
        assert r["warnings"] == [] and r["rel_error"] < 1e-4, (rank, r)


def _choco_time_varying(rank: int, world: int, rounds: int, gamma: float) -> dict:
    import torch.distributed as dist

    from saddle_torch import _ops, kernels

    st.init(topology="one_peer_exponential", timeout=timedelta(seconds=60))
    topo = st.topology.one_peer_exponential(world)
    comp = Compression.int8
    n = 300
    x = torch.randn(n, generator=torch.Generator().manual_seed(rank))
    # The dense reference, computed plainly: CHOCO with one (x̂, s) per phase, every rank's row.
    every = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(every, x)
    ref = torch.stack(every)
    x_hat = [torch.zeros(world, n) for _ in range(topo.period)]
    s = [torch.zeros(world, n) for _ in range(topo.period)]
    start_mean = ref.mean(0)
    worst = 0.0
    for t in range(rounds):
        k = t % topo.period
        w = topo.mixing_matrix(k).to(torch.float32)
        seeds = [_ops.message_seed(_ops.name_hash("x"), t, r) for r in range(world)]
        q = torch.stack(
            [
                kernels.codec_decode(
                    comp.native,
                    kernels.codec_encode(comp.native, ref[r] - x_hat[k][r], seeds[r]),
                    n,
                    seeds[r],
                )
                for r in range(world)
            ]
        )
        x_hat[k] += q
        s[k] += w @ q
        ref = ref + gamma * (s[k] - x_hat[k])
        st.neighbor_average(x, gamma=gamma, name="x", inplace=True, compression=comp)
        worst = max(worst, float((x - ref[rank]).abs().max()))
    return {
        "worst_vs_reference": worst,
        "mean_drift": float((ref.mean(0) - start_mean).abs().max()),
        "consensus": float((ref - ref.mean(0)).norm() / (torch.stack(every) - start_mean).norm()),
        "bytes_sent": st.stats()["bytes_sent"],
        "message": comp.encoded_bytes(n),
    }


def test_choco_on_a_time_varying_topology_matches_the_per_phase_reference() -> None:
    """one_peer_exponential + int8: one CHOCO state per phase, checked round by round."""
    world, rounds = 4, 60
    res = run_ranks(_choco_time_varying, world, rounds, 0.5)
    for rank, r in res.items():
        assert r["worst_vs_reference"] < 1e-4, (rank, r)
        assert r["mean_drift"] < 1e-4, r  # each phase's W is doubly stochastic: the average stays
        assert r["consensus"] < 0.05, r  # and the ranks meet
        assert r["bytes_sent"] == rounds * r["message"], r  # one peer per round

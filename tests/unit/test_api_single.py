"""The public API in a world of one (no torchrun environment)."""

import pytest
import torch

import saddle_torch as st


@pytest.fixture(scope="module", autouse=True)
def _init():
    st.init(topology="ring")
    yield
    st.shutdown()


def test_world_of_one() -> None:
    assert (st.rank(), st.size(), st.neighbors()) == (0, 1, [])
    x = torch.randn(10)
    rounds = st.stats()["rounds"]
    assert torch.equal(st.neighbor_average(x), x)
    assert st.consensus_distance(x) == 0.0
    assert st.stats()["rounds"] == rounds + 1


def test_bad_inputs_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="float32/float64/float16/bfloat16"):
        st.neighbor_average(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="root_rank 3 out of range"):
        st.broadcast_parameters({"a": torch.ones(2)}, root_rank=3)
    with pytest.raises(ValueError, match="has 4 ranks but the world has 1"):
        st.set_topology(st.topology.ring(4))
    st.neighbor_average(torch.ones(4), name="w")
    with pytest.raises(st.MismatchError, match="registered with shape \\(4,\\)"):
        st.neighbor_average(torch.ones(5), name="w")


def test_not_initialised_message() -> None:
    st.shutdown()
    try:
        with pytest.raises(RuntimeError, match="call saddle_torch.init"):
            st.rank()
    finally:
        st.init()

import pytest
import torch
from torch import nn

from saddle_torch import FlatParameters


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_outputs_identical_and_params_are_views() -> None:
    model = _model()
    x = torch.randn(5, 1, 8, 8)
    before = model(x).detach().clone()
    flat = FlatParameters(model)
    assert torch.equal(model(x), before)
    (buf,) = flat.buffers.values()
    assert buf.numel() == sum(p.numel() for p in model.parameters()) == flat.numel
    # Writing the buffer changes the model: parameters are views, not copies.
    buf.mul_(0)
    assert torch.count_nonzero(model(x) - model[3].bias) == 0


def test_gradients_accumulate_into_the_flat_grad_buffer() -> None:
    model = _model()
    flat = FlatParameters(model)
    (gbuf,) = flat.grad_buffers.values()
    x = torch.randn(5, 1, 8, 8)
    model(x).sum().backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(gbuf, expected) and gbuf.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    flat.attach_grads()
    assert gbuf.abs().sum() == 0
    model(x).sum().backward()
    assert torch.equal(gbuf, expected)


def test_optimizer_step_updates_the_buffer_and_training_matches() -> None:
    ref, model = _model(), _model()
    flat = FlatParameters(model)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for m in (ref, model):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.zero_grad(set_to_none=False)
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    flat.check()
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mixed_dtypes_get_one_buffer_each_and_check_detects_moves() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2).double())
    flat = FlatParameters(model)
    assert {k.dtype for k in flat.buffers} == {torch.float32, torch.float64}
    model[0].weight.data = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match="no longer lives in the flat buffer"):
        flat.check()
    with pytest.raises(ValueError, match="no trainable parameters"):
        FlatParameters([])


def test_one_buffer_per_param_group() -> None:
    model = _model()
    groups = [{"params": list(model[0].parameters()), "lr": 0.1}, {"params": list(model[3].parameters())}]
    flat = FlatParameters(groups)
    assert [k.group for k in flat.buffers] == [0, 1]
    assert [k.name() for k in flat.buffers] == ["params/0/float32/cpu", "params/1/float32/cpu"]
    assert flat.buffers[next(iter(flat.buffers))].numel() == sum(p.numel() for p in model[0].parameters())


def test_repoint_brings_moved_parameters_back_with_their_values() -> None:
    model = _model()
    flat = FlatParameters(model)
    (buf,) = flat.buffers.values()
    x = torch.randn(5, 1, 8, 8)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.to("cpu:0")  # copies every parameter (and gradient), as Hugging Face's Trainer does
    assert len(flat.moved()) == len(list(model.parameters())) and not flat.layout_changed()
    with torch.no_grad():
        model[3].bias.add_(1.0)  # changed after the move: the new value must be kept
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert flat.repoint() == len(grads)
    assert not flat.moved() and torch.equal(buf, expected)
    buf.mul_(0)  # views again: the model sees writes to the buffer
    assert all(torch.count_nonzero(p) == 0 for p in model.parameters())
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g) and p.grad.data_ptr() != g.data_ptr()
    assert flat.repoint() == 0


def test_repoint_refuses_a_change_of_dtype() -> None:
    model = _model()
    flat = FlatParameters(model)
    model.double()
    assert flat.layout_changed()
    with pytest.raises(RuntimeError, match="changed dtype, device or shape"):
        flat.repoint()

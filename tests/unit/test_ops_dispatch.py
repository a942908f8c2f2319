"""torch.ops.saddle: the operator library, its kernels per dispatch key, and the errors it raises.

The CPU kernels are the fused ones; CompositeExplicitAutograd serves every other device (ATen
arithmetic, or host staging for the codecs). Both are reached here on CPU tensors through
``redispatch``, so each is compared with the other on the same inputs.
"""

from __future__ import annotations

import pytest
import torch

import saddle_torch as st
from saddle_torch import kernels
from saddle_torch.compression import resolve

OPS = [
    "sam_norm_sq",
    "sam_perturb",
    "sam_restore",
    "qgm_direction",
    "qgm_buffer_update",
    "weighted_sum_",
    "codec_encode",
    "codec_encode_into",
    "codec_decode",
    "codec_decode_into",
    "codec_decode_add",
]
GENERIC = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


def _generic(name: str, *args: object) -> object:
    """The CompositeExplicitAutograd kernel of ``saddle::name`` (a CUDA tensor's, without device kernels)."""
    return getattr(torch.ops.saddle, name).default.redispatch(GENERIC, *args)


@pytest.mark.parametrize("name", OPS)
def test_every_op_has_a_cpu_kernel_and_one_for_every_other_device(name: str) -> None:
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"saddle::{name}", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"saddle::{name}", "CompositeExplicitAutograd")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fused_cpu_kernels_equal_the_generic_ones(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    n = 70_001  # several of the kernels' parallel blocks, and a ragged end
    x, g, m, prev = (torch.randn(n, generator=gen, dtype=dtype) for _ in range(4))
    # The fused kernels compute scale·g in double (the ATen ones in the tensor's dtype): a few ulps apart.
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    for adaptive in (False, True):
        assert kernels.sam_norm_sq(g, x if adaptive else None) == pytest.approx(
            _generic("sam_norm_sq", g, x if adaptive else None), rel=1e-9
        )
        fused_x, fused_e, gen_x, gen_e = x.clone(), torch.empty_like(x), x.clone(), torch.empty_like(x)
        kernels.sam_perturb(fused_x, g, fused_e, 0.3, adaptive)
        _generic("sam_perturb", gen_x, g, gen_e, 0.3, adaptive)
        torch.testing.assert_close(fused_x, gen_x, **tol)
        torch.testing.assert_close(fused_e, gen_e, **tol)
        kernels.sam_restore(fused_x, fused_e)
        _generic("sam_restore", gen_x, gen_e)
        torch.testing.assert_close(fused_x, gen_x, **tol)
    for nesterov in (False, True):
        a, b = g.clone(), g.clone()
        kernels.qgm_direction(a, m, x, 0.9, 1e-4, nesterov)
        _generic("qgm_direction", b, m, x, 0.9, 1e-4, nesterov)
        torch.testing.assert_close(a, b, **tol)
    a, b = m.clone(), m.clone()
    kernels.qgm_buffer_update(a, prev, x, 0.9, 0.05)
    _generic("qgm_buffer_update", b, prev, x, 0.9, 0.05)
    torch.testing.assert_close(a, b, **tol)
    a, b = x.clone(), x.clone()
    kernels.weighted_sum_(a, 0.5, [g, m], [0.25, 0.25])
    _generic("weighted_sum_", b, 0.5, [g, m], [0.25, 0.25])
    torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("compression", ["fp16", "bf16", "int8", "qsgd:4", "topk:0.1", "randk:0.1", "sign"])
def test_staged_codecs_write_the_cpu_codecs_bytes(compression: str) -> None:
    """The host-staging kernels (any non-CPU device) produce and read the CPU codecs' exact messages."""
    codec = resolve(compression).native
    spec = (codec.name, codec.bits, codec.ratio, codec.block_size)
    x = torch.randn(5_000, generator=torch.Generator().manual_seed(1))
    seed = (1 << 63) + 12345  # a seed above int64's range: the kernels read the same 64 bits
    msg = kernels.codec_encode(codec, x, seed)
    assert torch.equal(_generic("codec_encode", x, *spec, kernels._seed(seed)), msg)
    staged = torch.empty_like(msg)
    _generic("codec_encode_into", x, *spec, kernels._seed(seed), staged)
    assert torch.equal(staged, msg)
    decoded = kernels.codec_decode(codec, msg, x.numel(), seed)
    assert torch.equal(_generic("codec_decode", msg, *spec, x.numel(), kernels._seed(seed)), decoded)
    acc_cpu, acc_staged = torch.ones_like(x), torch.ones_like(x)
    kernels.codec_decode_add(codec, msg, seed, -0.5, acc_cpu)
    _generic("codec_decode_add", msg, *spec, kernels._seed(seed), -0.5, acc_staged)
    assert torch.equal(acc_cpu, acc_staged)
    assert not torch.equal(kernels.codec_encode(codec, x, seed + 1), msg) or not codec.unbiased


def test_the_ops_raise_the_projects_errors() -> None:
    codec = resolve("int8").native
    msg = kernels.codec_encode(codec, torch.randn(300), 7)
    with pytest.raises(st.CorruptMessageError, match="truncated"):
        kernels.codec_decode(codec, msg[:-10].contiguous(), 300, 7)
    with pytest.raises(ValueError, match="tensors differ in size"):
        kernels.sam_restore(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="compressed gossip works on contiguous float32"):
        kernels.codec_encode(codec, torch.zeros(8, dtype=torch.float64), 7)
    with pytest.raises(ValueError, match="unknown codec"):
        torch.ops.saddle.codec_encode(torch.zeros(8), "zip", 8, 0.1, 256, 7)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_kernels_write_the_cpu_kernels_bits(dtype: torch.dtype) -> None:
    """On a GPU: every optimizer op on CUDA tensors equals the CPU op (the norm within rounding)."""
    has_device = torch._C._dispatch_has_kernel_for_dispatch_key("saddle::sam_perturb", "CUDA")
    gen = torch.Generator().manual_seed(2)
    n = 100_003
    x, g, m, prev = (torch.randn(n, generator=gen, dtype=dtype) for _ in range(4))
    cu = [t.cuda() for t in (x, g, m, prev)]
    exact = torch.equal if has_device else (lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6))
    assert kernels.sam_norm_sq(cu[1], cu[0]) == pytest.approx(kernels.sam_norm_sq(g, x), rel=1e-9)
    xa, ea, xb, eb = x.clone(), torch.empty_like(x), cu[0].clone(), torch.empty_like(cu[0])
    kernels.sam_perturb(xa, g, ea, 0.3, True)
    kernels.sam_perturb(xb, cu[1], eb, 0.3, True)
    assert exact(xa, xb.cpu()) and exact(ea, eb.cpu())
    a, b = g.clone(), cu[1].clone()
    kernels.qgm_direction(a, m, x, 0.9, 1e-4, True)
    kernels.qgm_direction(b, cu[2], cu[0], 0.9, 1e-4, True)
    assert exact(a, b.cpu())
    a, b = m.clone(), cu[2].clone()
    kernels.qgm_buffer_update(a, prev, x, 0.9, 0.05)
    kernels.qgm_buffer_update(b, cu[3], cu[0], 0.9, 0.05)
    assert exact(a, b.cpu())
    a, b = x.clone(), cu[0].clone()
    kernels.weighted_sum_(a, 0.5, [g, m], [0.25, 0.25])
    kernels.weighted_sum_(b, 0.5, [cu[1], cu[2]], [0.25, 0.25])
    assert exact(a, b.cpu())


@CUDA
@pytest.mark.parametrize("compression", ["fp16", "bf16", "int8", "qsgd:4", "sign", "topk:0.1", "randk:0.1"])
def test_cuda_codecs_write_the_cpu_codecs_bytes(compression: str) -> None:
    """On a GPU: a message encoded from a CUDA tensor is the CPU's, byte for byte; decoding matches too."""
    codec = resolve(compression).native
    x = torch.randn(70_001, generator=torch.Generator().manual_seed(3))
    seed = (1 << 63) + 99
    msg = kernels.codec_encode(codec, x, seed)
    assert torch.equal(kernels.codec_encode(codec, x.cuda(), seed), msg)
    acc, acc_cuda = torch.ones_like(x), torch.ones_like(x).cuda()
    kernels.codec_decode_add(codec, msg, seed, 0.5, acc)
    kernels.codec_decode_add(codec, msg, seed, 0.5, acc_cuda)
    assert torch.equal(acc, acc_cuda.cpu())
    with pytest.raises(st.CorruptMessageError):  # validated on the host before it reaches the device
        kernels.codec_decode_add(codec, msg[:-3].contiguous(), seed, 0.5, acc_cuda)

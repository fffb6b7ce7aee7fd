"""Table noise (``fast_noise``): one stream on every path, fused kernels equal to the
materialised samples, and DiffQ's gradients unchanged by the fusion."""

from __future__ import annotations

import pytest
import torch

from optiquant.quant import kernels
from optiquant.quant.diffq import _BitsPseudoQuantNoise
from optiquant.quant.noise import (
    HashNoise,
    _hash_index_torch,
    add_noise,
    hash_index,
    noise_backward,
    noise_table,
)

CPU = torch.device("cpu")
needs_fused = pytest.mark.skipif(
    not kernels.vectorized(torch.float32), reason="needs numba and an AVX-512 CPU"
)


@pytest.mark.parametrize("start", [0, 1, 7, 2**31 + 3])
def test_numpy_and_torch_hashes_agree(start: int) -> None:
    for k1, k2 in ((0, 0), (1, 2), (2**32 - 1, 12345), (987654321, 2**31)):
        cpu = hash_index(start, 1001, k1, k2, CPU)
        ref = _hash_index_torch(start, 1001, k1, k2, CPU)
        assert torch.equal(cpu.long(), ref)
        assert 0 <= int(ref.min()) and int(ref.max()) < 2**16


def test_indices_are_uniform_over_the_table() -> None:
    index = hash_index(0, 2**20, 4242, 777, CPU).long()
    counts = torch.bincount(index >> 8, minlength=256).double()  # 256 cells of 4096 expected
    chi2 = float(((counts - 4096) ** 2 / 4096).sum())
    assert chi2 < 255 + 6 * (2 * 255) ** 0.5  # about 6 standard deviations


def test_draws_with_nearby_keys_are_unrelated() -> None:
    """Each draw takes 64 random key bits; draws whose keys differ by one in either
    half (or both) give uncorrelated streams, also when shifted."""
    a = HashNoise("gaussian", 1000, 5).samples(100_000, torch.float64, CPU)
    for other in (HashNoise("gaussian", 1001, 6), HashNoise("gaussian", 1000, 6)):
        b = other.samples(100_000, torch.float64, CPU)
        for shift in (0, 1, 2, 16):
            corr = torch.corrcoef(torch.stack([a[shift:], b[: b.numel() - shift]]))[0, 1]
            assert abs(float(corr)) < 5 / 100_000**0.5


def test_unsupported_tensors_are_refused() -> None:
    noise = HashNoise("gaussian", 1, 2)
    with pytest.raises(ValueError, match="float32 CPU tensor"):
        add_noise(torch.zeros(64, dtype=torch.float64), torch.ones(8), 8, noise)
    with pytest.raises(ValueError, match="noise must be one of"):
        HashNoise("laplace", 1, 2)


@needs_fused
@pytest.mark.parametrize("gs", [1, 2, 3, 4, 8, 16, 20, 32, 100])
@pytest.mark.parametrize("n", [16, 1003, 70_001])
def test_fused_kernels_equal_the_materialised_samples(gs: int, n: int) -> None:
    gen = torch.Generator().manual_seed(gs * 7 + n)
    groups = -(-n // gs)
    w = torch.randn(n, generator=gen)
    amp = torch.rand(groups, generator=gen)
    grad = torch.randn(n, generator=gen)
    noise = HashNoise("gaussian", 31337 + n, 4711 * gs)
    eps = noise.samples(n, torch.float32, CPU)
    index = torch.arange(n) // gs
    # One fused multiply-add per entry, as torch's addcmul: bit for bit.
    assert torch.equal(add_noise(w, amp, gs, noise), torch.addcmul(w, eps, amp[index]))
    gout, sums = noise_backward(grad, gs, groups, noise)
    assert torch.equal(gout, grad) and gout.data_ptr() != grad.data_ptr()
    ref = torch.zeros(groups, dtype=torch.float64).index_add_(0, index, (grad * eps).double())
    # float32 sums of at most 16 products per step: relative error ~1e-6 of the magnitudes.
    magnitude = (grad * eps).abs().double()
    scale = torch.zeros(groups, dtype=torch.float64).index_add_(0, index, magnitude)
    assert bool(((sums.double() - ref).abs() <= 1e-5 * scale + 1e-12).all())


@needs_fused
@pytest.mark.parametrize("gs", [1, 8, 24])
def test_diffq_node_gradients_match_the_materialised_noise(gs: int) -> None:
    gen = torch.Generator().manual_seed(gs)
    n = 4099
    groups = -(-n // gs)
    w = torch.randn(n, generator=gen).requires_grad_()
    logit = torch.randn(groups, generator=gen).requires_grad_()
    weights = torch.randn(n, generator=gen)
    noise = HashNoise("uniform", 99, 100 + gs)
    eps = noise.samples(n, torch.float32, CPU)
    results = []
    for source in (noise, eps):
        out = _BitsPseudoQuantNoise.apply(w, logit, source, 1.0, 2.0, 13.0, None)
        (out * weights).sum().backward()
        results.append((out.detach(), w.grad.clone(), logit.grad.clone()))
        w.grad = logit.grad = None
    (o1, gw1, gl1), (o2, gw2, gl2) = results
    assert torch.equal(o1, o2)
    torch.testing.assert_close(gw1, gw2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gl1, gl2, rtol=1e-4, atol=1e-6)


def test_table_has_unit_variance_and_symmetry() -> None:
    for kind, var in (("gaussian", 1.0), ("uniform", 1 / 12)):
        table = noise_table(kind, torch.float64, CPU)
        assert float(table.square().mean()) == pytest.approx(var, rel=1e-9)
        assert torch.allclose(table, -table.flip(0), atol=1e-12)

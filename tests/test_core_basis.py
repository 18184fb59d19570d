"""Basis and latent layout (docs/design.md §1): the DCT is exactly scipy's, orthonormal, in blur order."""

import numpy as np
import pytest
import scipy.fft

from grouplat import PAPER_BOUNDARIES, LatentSpace, quadrant_groups
from grouplat.basis import dct_matrix, dct_order


@pytest.mark.parametrize("n", [1, 2, 7, 16, 33])
def test_dct_matrix_is_orthonormal_float32(n):
    d = dct_matrix(n).astype(np.float32).astype(np.float64)  # the float32 entries, summed in float64
    # Only the entries' rounding shows (≤ 2⁻²³ ≈ 1.2e-7 on any CPU); a float32 product would add its
    # own summation error, which depends on the BLAS kernel (measured 4.8e-7 at n = 33).
    assert np.abs(d @ d.T - np.eye(n)).max() < 1e-6


@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 12, 20), (1, 9, 5)])
def test_dct_equals_scipy_up_to_the_order(shape):
    images = np.random.default_rng(0).standard_normal((4, *shape))
    space = LatentSpace(shape, "dct", [])
    ours = space.to_latent(images)
    reference = scipy.fft.dctn(images, type=2, norm="ortho", axes=(-2, -1)).reshape(4, shape[0], -1)
    np.testing.assert_allclose(ours, reference[..., dct_order(shape[1], shape[2])], atol=1e-12)
    np.testing.assert_allclose(space.from_latent(ours), images, atol=1e-12)


def test_index_zero_is_the_channel_mean_times_sqrt_hw():
    images = np.random.default_rng(1).standard_normal((2, 3, 8, 12)).astype(np.float32)
    latents = LatentSpace((3, 8, 12), "dct", []).to_latent(images)
    expected = images.astype(np.float64).mean(axis=(2, 3)) * np.sqrt(96)
    # The DC term can be ~0, so no rtol: the float32 DCT (8- then 12-term sums, in any order) is
    # within (H + W)·ε·Σ|x|/sqrt(HW) of the exact value on every CPU.
    bound = (8 + 12) * np.finfo(np.float32).eps * np.abs(images).sum(axis=(2, 3)).max() / np.sqrt(96)
    np.testing.assert_allclose(latents[..., 0], expected, rtol=0, atol=bound)


def test_order_is_descending_blur_eigenvalue_with_stable_ties():
    h, w = 10, 14
    order = dct_order(h, w)
    ky, kx = np.divmod(order, w)
    eigen = np.exp(-0.3 * np.pi**2 * ((ky / h) ** 2 + (kx / w) ** 2))
    assert np.all(np.diff(eigen) <= 1e-15)
    frequency = (ky / h) ** 2 + (kx / w) ** 2
    ties = np.diff(frequency) == 0
    assert ties.any() and np.all(np.diff(order)[ties] > 0)  # ties keep row-major order


def test_paper_group_sizes_at_256():
    space = LatentSpace((3, 256, 256), "dct", PAPER_BOUNDARIES)
    assert space.group_sizes.tolist() == [30, 70, 400, 65036]
    assert space.indices(1).tolist() == list(range(30))


def test_float32_roundtrip_and_non_square():
    space = LatentSpace((3, 24, 40))
    images = np.random.default_rng(2).uniform(-1, 1, (2, 3, 24, 40)).astype(np.float32)
    latents = space.to_latent(images)
    assert latents.dtype == np.float32 and latents.shape == (2, 3, 960)
    assert np.abs(space.from_latent(latents) - images).max() < 1e-5


def test_pixel_basis_is_identity_with_quadrant_groups():
    space = LatentSpace((1, 4, 6), "pixel", quadrant_groups(4, 6))
    images = np.arange(24, dtype=np.float32).reshape(1, 1, 4, 6)
    np.testing.assert_array_equal(space.to_latent(images).ravel(), np.arange(24))
    top_left = space.mask(1).reshape(4, 6)
    assert top_left[:2, :3].all() and top_left.sum() == 6
    assert space.k == 4 and space.boundaries is None


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ((30, 20), "increase strictly"),
        ((0, 5), "increase strictly"),
        ((5, 64), "increase strictly"),
        ([[0, 1], [1, 2]], "overlaps"),
        ([[0, 1], [2]], "cover every coefficient"),
        ([[0, 99]], "outside"),
    ],
)
def test_bad_groups_are_refused_with_a_reason(groups, message):
    with pytest.raises(ValueError, match=message):
        LatentSpace((1, 8, 8), "dct", groups)


def test_bad_basis_and_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown basis"):
        LatentSpace((1, 8, 8), "wavelet")
    space = LatentSpace((3, 8, 8), "dct", (10,))
    with pytest.raises(ValueError, match="expected images"):
        space.to_latent(np.zeros((1, 3, 8, 9)))
    with pytest.raises(ValueError, match="expected latents"):
        space.from_latent(np.zeros((1, 3, 63)))
    with pytest.raises(ValueError, match="numbered 1..2"):
        space.indices(3)


def test_description_round_trips():
    for space in (
        LatentSpace((3, 16, 16), "dct", (30, 100)),
        LatentSpace((1, 2, 2), "pixel", [[0, 3], [1, 2]]),
    ):
        assert LatentSpace.from_description(space.describe()) == space

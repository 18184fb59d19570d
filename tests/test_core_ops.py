"""Latent operations (docs/design.md §2): each does exactly what it says, and refuses bad specs."""

import numpy as np
import pytest

from grouplat import LatentSpace, interpolate, keep_first, mix, resample, traverse, variations

SPACE = LatentSpace((3, 8, 8), "dct", (4, 16, 40))


def latents(n, seed):
    return np.random.default_rng(seed).standard_normal((n, *SPACE.latent_shape)).astype(np.float32)


def test_mix_takes_exactly_the_chosen_groups_from_the_reference():
    a, ref = latents(2, 0), latents(1, 1)
    out = mix(SPACE, a, ref, [1, 3])
    chosen = SPACE.mask(1) | SPACE.mask(3)
    assert np.array_equal(out[..., chosen], np.broadcast_to(ref, a.shape)[..., chosen])
    assert np.array_equal(out[..., ~chosen], a[..., ~chosen])
    assert np.array_equal(mix(SPACE, a, ref, np.array([True, False, True, False])), out)


def test_interpolate_moves_one_group_only():
    a, b = latents(1, 0)[0], latents(1, 1)[0]
    for method in ("linear", "slerp"):
        path = interpolate(SPACE, a, b, 2, np.linspace(0, 1, 5), method)
        assert path.shape == (5, *SPACE.latent_shape)
        inside = SPACE.mask(2)
        assert np.array_equal(path[..., ~inside], np.broadcast_to(a, path.shape)[..., ~inside])
        np.testing.assert_allclose(path[0], a, atol=1e-6)
        np.testing.assert_allclose(path[-1][:, inside], b[:, inside], atol=1e-5)
    mid = interpolate(SPACE, a, b, 2, [0.5], "linear")[0][:, SPACE.mask(2)]
    np.testing.assert_allclose(mid, (a[:, SPACE.mask(2)] + b[:, SPACE.mask(2)]) / 2, atol=1e-6)


def test_slerp_keeps_the_norm_between_orthogonal_endpoints():
    a = np.zeros(SPACE.latent_shape, np.float32)
    b = np.zeros(SPACE.latent_shape, np.float32)
    a[:, 0], b[:, 1] = 1.0, 1.0
    path = interpolate(SPACE, a, b, 1, np.linspace(0, 1, 7), "slerp")
    np.testing.assert_allclose(np.linalg.norm(path[:, :, SPACE.mask(1)], axis=-1), 1.0, atol=1e-6)


def test_traverse_changes_exactly_one_element():
    z = latents(1, 0)[0]
    values = np.linspace(-3, 3, 7)
    out = traverse(SPACE, z, 2, 5, values)
    changed = out != z
    assert np.array_equal(out[:, 2, 5], values.astype(np.float32))
    changed[:, 2, 5] = False
    assert not changed.any()


def test_keep_first_fills_the_rest():
    z = latents(2, 0)
    zeros = keep_first(SPACE, z, 10)
    assert np.array_equal(zeros[..., :10], z[..., :10]) and not zeros[..., 10:].any()
    resampled = keep_first(SPACE, z, 10, "resample", seed=3)
    assert np.array_equal(resampled[..., :10], z[..., :10])
    assert np.array_equal(resampled, keep_first(SPACE, z, 10, "resample", seed=3))  # seeded
    assert abs(resampled[..., 10:].std() - 1) < 0.2


def test_variations_keep_groups_and_resample_the_rest():
    z = latents(1, 0)[0]
    out = variations(SPACE, z, [1, 2], 4, seed=1)
    kept = SPACE.mask(1) | SPACE.mask(2)
    assert np.array_equal(out[..., kept], np.broadcast_to(z, out.shape)[..., kept])
    assert len({out[i, 0, ~kept].tobytes() for i in range(4)}) == 4
    assert np.array_equal(out, variations(SPACE, z, [1, 2], 4, seed=1))
    again = resample(SPACE, z, [3, 4], seed=1)
    assert np.array_equal(again[..., kept], z[None][..., kept])


def test_operations_refuse_bad_specs():
    z = latents(1, 0)
    with pytest.raises(ValueError, match="numbered 1..4"):
        mix(SPACE, z, z, [5])
    with pytest.raises(ValueError, match="mask needs 4 entries"):
        mix(SPACE, z, z, np.array([True, False]))
    with pytest.raises(ValueError, match="expected latents"):
        mix(SPACE, z, np.zeros((1, 3, 10)), [1])
    with pytest.raises(ValueError, match="channel 3 does not exist"):
        traverse(SPACE, z[0], 3, 0, [0.0])
    with pytest.raises(ValueError, match="index 64 is outside"):
        traverse(SPACE, z[0], 0, 64, [0.0])
    with pytest.raises(ValueError, match="keep must be in 0..64"):
        keep_first(SPACE, z, 65)
    with pytest.raises(ValueError, match="unknown fill"):
        keep_first(SPACE, z, 5, "noise")
    with pytest.raises(ValueError, match="unknown interpolation"):
        interpolate(SPACE, z[0], z[0], 1, [0.5], "cubic")


def test_mix_with_one_group_mask_per_latent():
    a, b = latents(2, 0), latents(2, 1)
    masks = np.array([[True, False, False, False], [False, False, True, True]])
    out = mix(SPACE, a, b, masks)
    for i in range(2):
        np.testing.assert_array_equal(out[i], mix(SPACE, a[i], b[i], masks[i])[0])
    with pytest.raises(ValueError, match="3 group masks for 2 latents"):
        mix(SPACE, a, b, np.ones((3, 4), bool))

"""Procedural dSprites: the factor grid, every combination renders, factor -> image -> factor round
trip, determinism of the noisy / color variants, argument errors."""
import numpy as np
import pytest

from dgmfast.data import ColorDSprites, DSprites, GroundTruthData, IdentityGroundTruth, NoisyDSprites
from dgmfast.data import dsprites as ds

DATA = DSprites()
PIXEL_CENTRES = np.arange(64) + 0.5


def centroids(images):
    """Pixel-unit centroids `(x [N], y [N])` of binary images `[N, 64, 64]`."""
    mass = images.sum(axis=(1, 2))
    return images.sum(axis=1) @ PIXEL_CENTRES / mass, images.sum(axis=2) @ PIXEL_CENTRES / mass


def positions_from_centroids(images):
    """posX, posY indices: the grid positions nearest to the centroid."""
    x, y = centroids(images)
    to_index = lambda c: np.rint((c - ds.POS_MIN) / ds.POS_SPAN * 31).astype(np.int64)  # noqa: E731
    return to_index(x), to_index(y)


def invert(images):
    """Factors `[N, 5]` of binary images: position from the centroid, then the (shape, scale,
    orientation) whose rendering at that position is nearest in Hamming distance. Also returns
    the distance of the best match."""
    px, py = positions_from_centroids(images)
    sso = np.stack(np.meshgrid(range(3), range(6), range(40), indexing="ij"), -1).reshape(-1, 3)   # [720, 3]
    out, dist = np.zeros((len(images), 5), dtype=np.int64), np.zeros(len(images), dtype=np.int64)
    for i, image in enumerate(images):
        cand = np.concatenate([sso, np.tile([px[i], py[i]], (len(sso), 1))], axis=1)
        d = np.abs(ds.render(cand) - image).sum(axis=(1, 2))
        out[i], dist[i] = cand[np.argmin(d)], d.min()
    return out, dist


def test_factor_grid():
    assert DATA.num_factors == 5 and DATA.factors_num_values == (3, 6, 40, 32, 32)
    assert DATA.num_combinations == 737280
    np.testing.assert_allclose(ds.SCALES, np.linspace(0.5, 1, 6))
    np.testing.assert_allclose(ds.ORIENTATIONS, np.linspace(0, 2 * np.pi, 40))
    np.testing.assert_allclose(ds.POSITIONS, np.linspace(0, 1, 32))
    idx = np.arange(0, DATA.num_combinations, 9973)
    np.testing.assert_array_equal(DATA.factor_index(DATA.factors_from_index(idx)), idx)


def test_every_combination_renders():
    """All 737,280 images: binary, non-empty, shape inside the frame (zero-free border is not
    required, but the centroid must give back posX/posY exactly), and image mass grows with scale."""
    chunk = 4096                                         # 737,280 = 180 chunks, one reused buffer
    buffer = np.empty((chunk, 64, 64), dtype=np.float32)
    for start in range(0, DATA.num_combinations, chunk):
        factors = DATA.factors_from_index(np.arange(start, start + chunk))
        images = ds.render(factors, out=buffer)
        assert np.all((images == 0) | (images == 1))
        mass = images.sum(axis=(1, 2))
        assert mass.min() >= 30                          # the smallest shape (ellipse at scale 0.5) is ~35 px
        px, py = positions_from_centroids(images)
        np.testing.assert_array_equal(px, factors[:, 3])
        np.testing.assert_array_equal(py, factors[:, 4])


def test_round_trip_factor_image_factor():
    rng = np.random.RandomState(0)
    corners = np.array([[s, 5, o, x, y] for s in range(3) for o in (0, 5) for x in (0, 31) for y in (0, 31)])
    factors = np.concatenate([DATA.sample_factors(150, rng), corners])
    images = DATA.render(factors)
    recovered, dist = invert(images)
    assert np.all(dist == 0)                                                  # recovered factors give the same image
    np.testing.assert_array_equal(recovered[:, [0, 1, 3, 4]], factors[:, [0, 1, 3, 4]])
    # Orientation: exact unless two angles rasterize identically (0 and 2 pi always do).
    same = recovered[:, 2] == factors[:, 2]
    equal_image = np.all(ds.render(recovered) == images, axis=(1, 2))
    assert np.all(same | equal_image)
    assert same.mean() > 0.9


def test_shapes_differ_and_orientation_period():
    base = np.array([[s, 5, 0, 16, 16] for s in range(3)])
    images = ds.render(base)
    assert len({img.tobytes() for img in images}) == 3
    np.testing.assert_array_equal(ds.render([[2, 5, 0, 16, 16]]), ds.render([[2, 5, 39, 16, 16]]))
    assert not np.array_equal(ds.render([[2, 5, 0, 16, 16]]), ds.render([[2, 5, 20, 16, 16]]))  # heart turned by pi


def test_observations_and_determinism():
    rng = np.random.RandomState(0)
    factors, obs = DATA.sample(8, rng)
    assert factors.dtype == np.int64 and factors.shape == (8, 5)
    assert obs.dtype == np.float32 and obs.shape == (8, 64, 64, 1)
    state = np.random.RandomState(1)
    before = state.get_state()[1].copy()
    DATA.sample_observations_from_factors(factors, state)                      # draws nothing
    np.testing.assert_array_equal(state.get_state()[1], before)
    for cls in (NoisyDSprites, ColorDSprites):
        data = cls()
        a = data.sample(6, np.random.RandomState(3))
        b = data.sample(6, np.random.RandomState(3))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[1].shape == (6, 64, 64, 3) and a[1].dtype == np.float32 and data.observation_shape == (64, 64, 3)
        assert not data.deterministic
    noisy = NoisyDSprites().sample_observations_from_factors(factors, np.random.RandomState(4))
    sprite = np.repeat(obs, 3, axis=-1) == 1
    assert np.all(noisy[sprite] == 1) and 0 <= noisy.min() and noisy.max() <= 1 and noisy[~sprite].mean() < 0.55
    color = ColorDSprites().sample_observations_from_factors(factors, np.random.RandomState(4))
    assert np.all(color[~sprite] == 0) and color[sprite].min() >= 0.5


def test_chunked_rendering_is_identical():
    factors = DATA.sample_factors(50, np.random.RandomState(5))
    np.testing.assert_array_equal(DSprites(chunk_size=7).render(factors), DATA.render(factors))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"factors\[:, 2\] must be in \[0, 40\), got 40"):
        DATA.render(np.array([[0, 0, 40, 0, 0]]))
    with pytest.raises(ValueError, match=r"factors must have shape \[N, 5\], got \[2, 4\]"):
        DATA.render(np.zeros((2, 4), dtype=int))
    with pytest.raises(TypeError, match="integer array"):
        DATA.render(np.zeros((2, 5)))
    with pytest.raises(TypeError, match="random_state must be a numpy.random.RandomState"):
        DATA.sample_factors(3, "0")
    with pytest.raises(ValueError, match="num must be an int >= 0, got -1"):
        DATA.sample_factors(-1, 0)
    with pytest.raises(ValueError, match=r"factors_num_values\[1\] must be an int >= 1, got 0"):
        IdentityGroundTruth([3, 0])
    assert isinstance(IdentityGroundTruth([2]), GroundTruthData)

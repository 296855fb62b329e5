"""Procedural dSprites (Matthey et al. 2017): the exact factor grid, images rendered on demand.

Factors (SPEC §11; disentanglement_lib's five latent factors, color excluded), 737,280 combinations:

    0 shape        3   square, ellipse, heart
    1 scale        6   linspace(0.5, 1, 6)
    2 orientation 40   linspace(0, 2 pi, 40)   (0 and 39 are the same angle, as in dSprites)
    3 posX        32   linspace(0, 1, 32)
    4 posY        32   linspace(0, 1, 32)

Geometry (an approximation of the real images, no file involved): a 64x64 frame whose pixel `(row,
col)` has its centre at `(x, y) = (col + 0.5, row + 0.5)` in pixel units; the shape's centroid sits
at `x = 10 + 44 posX`, `y = 10 + 44 posY` (posY grows downwards, like image rows), so no shape
ever leaves the frame. At scale 1 the square has side 14 px, the ellipse semi-axes 9 x 5 px and
the heart, the implicit curve `(u^2 + v^2 - 1)^3 - u^2 v^3 <= 0` (u right, v up, 1 unit = 7 px),
is 16 x 16 px; sizes scale linearly. Orientation rotates the shape counter-clockwise as displayed.
A pixel is 1 when its centre lies inside the shape, else 0 (binary, no anti-aliasing).

Observations are float32 and channels-last like disentanglement_lib: `[N, 64, 64, 1]` for
`DSprites`, `[N, 64, 64, 3]` for `NoisyDSprites` and `ColorDSprites`. For a torch model
transpose to `[N, C, 64, 64]` (the `dgmfast.metrics` wrapper does it).

    >>> data = DSprites()
    >>> factors, images = data.sample(16, np.random.RandomState(0))   # [16, 5] int64, [16, 64, 64, 1]
"""
import functools

import numpy as np

from dgmfast.data.ground_truth import GroundTruthData, check_random_state

SHAPES = ("square", "ellipse", "heart")
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)

IMAGE_SIZE = 64
POS_MIN, POS_SPAN = 10.0, 44.0                     # centre in pixels = POS_MIN + POS_SPAN * pos
SQUARE_HALF_SIDE = 7.0                             # px at scale 1
ELLIPSE_AXES = (9.0, 5.0)                          # semi-axes, px at scale 1
HEART_UNIT = 7.0                                   # px per unit of the implicit heart at scale 1
_PATCH_RADIUS = 11                                 # every shape lies within 10 px of its centre
_PATCH = 2 * _PATCH_RADIUS + 1


@functools.cache
def _heart_centroid():
    """v of the heart curve's area centroid (0.2935...), so that shapes are centred at posX/posY."""
    v, u = np.mgrid[-1.0:1.25:1501j, -1.15:1.15:1501j]
    inside = (u * u + v * v - 1.0) ** 3 - u * u * v ** 3 <= 0.0
    return float(v[inside].mean())


def _inside(shape, u, v):
    """Boolean `[n, P, P]`: is (u, v) inside `shape`, in the shape's normalized frame?

    square: `max(|u|, |v|) <= 1`; ellipse: `u^2 + v^2 <= 1` (axes folded into u, v);
    heart: `(u^2 + v^2 - 1)^3 - u^2 v^3 <= 0` (v up)."""
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    uu, vv = u * u, v * v
    if shape == "ellipse":
        return uu + vv <= 1.0
    w = uu + vv - 1.0
    return w * w * w <= uu * vv * v


def render(factors, out=None):
    """Binary images float32 `[N, 64, 64]` for int factors `[N, 5]` (no validation, vectorized).

    Each shape is evaluated on a 23x23 pixel patch around its centre and pasted into the frame."""
    factors = np.asarray(factors, dtype=np.int64)
    n = len(factors)
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32) if out is None else out
    if out.shape != (n, IMAGE_SIZE, IMAGE_SIZE) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous array of shape {(n, IMAGE_SIZE, IMAGE_SIZE)}, got {out.shape}")
    theta = ORIENTATIONS[factors[:, 2]]
    cx = POS_MIN + POS_SPAN * POSITIONS[factors[:, 3]]
    cy = POS_MIN + POS_SPAN * POSITIONS[factors[:, 4]]
    # The patch's first column / row, kept inside the frame (it still holds the whole shape).
    x0 = np.clip(np.floor(cx).astype(np.int64) - _PATCH_RADIUS, 0, IMAGE_SIZE - _PATCH)
    y0 = np.clip(np.floor(cy).astype(np.int64) - _PATCH_RADIUS, 0, IMAGE_SIZE - _PATCH)
    offs = np.arange(_PATCH) + 0.5
    dx = (x0 - cx)[:, None] + offs                          # [N, P] displayed offsets, x right
    dy = (cy - y0)[:, None] - offs                          # [N, P] y up
    patch = np.empty((n, _PATCH, _PATCH), dtype=bool)
    for k, shape in enumerate(SHAPES):
        sel = np.flatnonzero(factors[:, 0] == k)
        if not len(sel):
            continue
        # Shape frame: rotate the displayed offset by -theta, divide by the size (and axes).
        size = SCALES[factors[sel, 1]]
        au, av = {"square": (SQUARE_HALF_SIDE,) * 2, "ellipse": ELLIPSE_AXES, "heart": (HEART_UNIT,) * 2}[shape]
        shift = _heart_centroid() if shape == "heart" else 0.0
        cos, sin = np.cos(theta[sel]), np.sin(theta[sel])
        ux, uy = (cos / (size * au))[:, None] * dx[sel], (sin / (size * au))[:, None] * dy[sel]
        vx, vy = (-sin / (size * av))[:, None] * dx[sel], (cos / (size * av))[:, None] * dy[sel] + shift
        f32 = np.float32
        u = ux.astype(f32)[:, None, :] + uy.astype(f32)[:, :, None]
        v = vx.astype(f32)[:, None, :] + vy.astype(f32)[:, :, None]
        patch[sel] = _inside(shape, u, v)
    out[...] = 0.0
    flat = (y0[:, None, None] + np.arange(_PATCH)[:, None]) * IMAGE_SIZE + x0[:, None, None] + np.arange(_PATCH)
    np.put_along_axis(out.reshape(n, -1), flat.reshape(n, -1), patch.reshape(n, -1), axis=1)
    return out


class DSprites(GroundTruthData):
    """Procedural dSprites: factors `[N, 5]` (shape, scale, orientation, posX, posY) -> binary
    float32 images `[N, 64, 64, 1]` (channels-last). Deterministic: rendering draws no randomness.

    `chunk_size` bounds the images rendered per vectorized call (memory: about 30 kB each)."""

    factors_num_values = (3, 6, 40, 32, 32)
    observation_shape = (64, 64, 1)
    deterministic = True

    def __init__(self, chunk_size=4096):
        self.chunk_size = int(chunk_size)

    def render(self, factors):
        """Binary images float32 `[N, 64, 64]` for validated factors."""
        factors = self.check_factors(factors)
        out = np.empty((len(factors), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        for s in range(0, len(factors), self.chunk_size):
            render(factors[s:s + self.chunk_size], out[s:s + self.chunk_size])
        return out

    def sample_observations_from_factors(self, factors, random_state):
        return self.render(factors)[..., None]


class NoisyDSprites(DSprites):
    """dSprites with uniform noise (disentanglement_lib's NoisyDSprites): each of 3 channels is
    `min(image + U[0, 1), 1)`, noise drawn as `random_state.uniform(0, 1, [N, 64, 64, 3])`.
    Observations float32 `[N, 64, 64, 3]`."""

    observation_shape = (64, 64, 3)
    deterministic = False

    def sample_observations_from_factors(self, factors, random_state):
        images = self.render(factors)[..., None]
        noise = check_random_state(random_state).uniform(0, 1, (len(images), IMAGE_SIZE, IMAGE_SIZE, 3))
        return np.minimum(images + noise.astype(np.float32), 1.0)


class ColorDSprites(DSprites):
    """dSprites in a random color (disentanglement_lib's ColorDSprites): the sprite is multiplied by
    `random_state.uniform(0.5, 1, [N, 1, 1, 3])`. Observations float32 `[N, 64, 64, 3]`."""

    observation_shape = (64, 64, 3)
    deterministic = False

    def sample_observations_from_factors(self, factors, random_state):
        images = self.render(factors)[..., None]
        color = check_random_state(random_state).uniform(0.5, 1, (len(images), 1, 1, 3))
        return images * color.astype(np.float32)

"""Save docs/dsprites_grid.png: procedural dSprites, one factor varied per row.

    PYTHONPATH=. python docs/make_dsprites_grid.py

Rows 1-3: the three shapes over 10 orientations (scale 1, centred). Row 4: the six scales (heart).
Rows 5-6: posX and posY over 10 of their 32 values (square). Rows 7-8: NoisyDSprites and
ColorDSprites samples.
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dgmfast.data import ColorDSprites, DSprites, NoisyDSprites  # noqa: E402


def grid_factors():
    cols = 10
    rows = []
    for shape in range(3):                                        # shape x orientation
        rows.append([[shape, 5, o, 16, 16] for o in np.linspace(0, 36, cols).astype(int)])
    rows.append([[2, s, 0, 16, 16] for s in range(6)] + [[2, 5, 0, 16, 16]] * (cols - 6))
    rows.append([[0, 3, 4, x, 16] for x in np.linspace(0, 31, cols).astype(int)])
    rows.append([[1, 3, 4, 16, y] for y in np.linspace(0, 31, cols).astype(int)])
    return np.array(rows)                                         # [rows, cols, 5]


def main(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "dsprites_grid.png")):
    factors = grid_factors()
    r, c = factors.shape[:2]
    images = np.repeat(DSprites().render(factors.reshape(-1, 5)).reshape(r, c, 64, 64, 1), 3, axis=-1)
    rng = np.random.RandomState(0)
    extra = [NoisyDSprites(), ColorDSprites()]
    extra = np.stack([d.sample_observations(c, rng) for d in extra])      # [2, c, 64, 64, 3]
    images = np.concatenate([images, extra])
    fig, axes = plt.subplots(len(images), c, figsize=(c * 1.1, len(images) * 1.1))
    labels = ["square / orient.", "ellipse / orient.", "heart / orient.", "scale", "posX", "posY",
              "Noisy", "Color"]
    for i in range(len(images)):
        for j in range(c):
            ax = axes[i, j]
            ax.imshow(images[i, j], vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(labels[i], fontsize=7)
    fig.suptitle("dgmfast.data: procedural dSprites (64x64)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

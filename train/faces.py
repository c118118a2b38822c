"""A second real-image YOLO dataset: faces and non-faces from LFW drawn on real textures, offline.

``skimage.data.lfw_subset()`` ships 200 real 25x25 grey patches: 100 faces from Labeled Faces in
the Wild, then 100 non-face patches cut from the same photographs. Each patch is drawn once, scaled
up and tinted, onto a texture photograph (brick, grass, gravel) as in the digits set
(``headserve.train.synth``), with an exact YOLO box. Drawing every patch only once keeps a patch
from sitting on both sides of the grouped split; the price is a small test split, which the
benchmark's intervals show.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from headserve.errors import ConfigError
from headserve.train.synth import _free_spot, _textures

FACE_CLASSES = ("face", "non_face")  # class ids 0 and 1; lfw_subset's first 100 patches are faces


@dataclass(frozen=True)
class FacesConfig:
    """Shape of the generated faces dataset."""

    image_size: int = 128  # side of each square image, pixels
    max_objects: int = 3  # patches per image, 1..max_objects, until all 200 are drawn
    seed: int = 42  # fixes textures, patch order, positions and tints

    def __post_init__(self) -> None:
        if self.max_objects < 1:
            raise ConfigError.bad_value("max_objects", self.max_objects, "a faces image needs at least one object")
        if self.image_size < 32:
            raise ConfigError.bad_value("image_size", self.image_size, "a faces image is at least 32 pixels wide")


def build_faces_dataset(root: str | Path, config: FacesConfig = FacesConfig()) -> Path:
    """Write ``root/images/*.png``, ``root/labels/*.txt`` and ``root/data.yaml``; returns root."""
    import skimage.data as data

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    patches = data.lfw_subset()  # (200, 25, 25) float in [0, 1]
    kinds = np.r_[np.zeros(100, int), np.ones(len(patches) - 100, int)]
    pool = list(rng.permutation(len(patches)))
    textures, size, i = _textures(), config.image_size, 0
    while pool:
        tex = textures[i % len(textures)]
        oy, ox = rng.integers(0, tex.shape[0] - size), rng.integers(0, tex.shape[1] - size)
        canvas = tex[oy:oy + size, ox:ox + size].astype(np.float32)[..., None] / 255.0 * rng.uniform(0.5, 1.0, 3) * 0.7
        lines, placed = [], []
        for _ in range(int(rng.integers(1, config.max_objects + 1))):
            side = int(rng.integers(size // 5, size // 2.5))
            spot = _free_spot(rng, size, side, placed)
            if spot is None or not pool:
                continue
            k = int(pool.pop())
            x, y = spot
            placed.append((x, y, x + side, y + side))
            grey = np.asarray(Image.fromarray((patches[k] * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR))
            canvas[y:y + side, x:x + side] = grey.astype(np.float32)[..., None] / 255.0 * rng.uniform(0.7, 1.0, 3)
            lines.append(f"{kinds[k]} {(x + side / 2) / size:.6f} {(y + side / 2) / size:.6f} {side / size:.6f} "
                         f"{side / size:.6f}")
        if lines:
            name = f"img_{i:04d}"
            Image.fromarray((canvas.clip(0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
            (root / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
        i += 1
    names = "\n".join(f"  {k}: {n}" for k, n in enumerate(FACE_CLASSES))
    (root / "data.yaml").write_text(f"# faces and non-faces from skimage lfw_subset on scikit-image textures\n"
                                    f"names:\n{names}\n")
    return root

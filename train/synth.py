"""A real-image YOLO dataset built offline from images that ship inside installed packages.

Handwritten digits from scikit-learn's ``load_digits`` (1,797 real scans, 8x8) are scaled up and
drawn in colour onto real texture photographs from scikit-image (brick, grass, gravel). Each image
gets one to three digits with exact YOLO boxes, so the demo and the tests exercise the real path
(image files, label files, crops, resizing) with no download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")  # scikit-image photographs the datasets draw on


@dataclass(frozen=True)
class SynthConfig:
    """Shape of the generated dataset."""

    num_images: int = 120  # images written under images/
    image_size: int = 128  # side of each square image, pixels
    classes: tuple[int, ...] = (0, 1, 2, 3, 4)  # digits used as classes, in class-id order
    max_objects: int = 3  # digits per image, 1..max_objects
    seed: int = 42  # fixes textures, digits, positions and colours
    tail: float = 0.0  # > 0 subsamples classes exponentially: class k keeps exp(-tail * k) of its digits
    textures: tuple[str, ...] = TEXTURES  # scikit-image photographs drawn on, in turn


def _textures(names: tuple[str, ...] = TEXTURES) -> list[np.ndarray]:
    """Grey texture photographs by scikit-image name; another set draws the same digits on another world
    (how the drift tests make a window that training never saw)."""
    import skimage.data as data

    out = []
    for name in names:
        image = np.asarray(getattr(data, name)())
        out.append(image if image.ndim == 2 else image[..., :3].mean(axis=2).astype(np.uint8))
    return out


def build_digits_dataset(root: str | Path, config: SynthConfig = SynthConfig()) -> Path:
    """Write ``root/images/*.png``, ``root/labels/*.txt`` and ``root/data.yaml``; returns root."""
    from sklearn.datasets import load_digits

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    digits = load_digits()
    pools = {}
    for k, digit in enumerate(config.classes):
        idx = np.flatnonzero(digits.target == digit)
        keep = max(3, int(round(len(idx) * float(np.exp(-config.tail * k)))))
        pools[k] = rng.permutation(idx)[:keep]
    weights = np.array([len(pools[k]) for k in range(len(config.classes))], dtype=float)
    weights /= weights.sum()
    textures = _textures(config.textures)
    size = config.image_size
    for i in range(config.num_images):
        tex = textures[i % len(textures)]
        oy, ox = rng.integers(0, tex.shape[0] - size), rng.integers(0, tex.shape[1] - size)
        base = tex[oy:oy + size, ox:ox + size].astype(np.float32) / 255.0
        tint = rng.uniform(0.5, 1.0, size=3)
        canvas = (base[..., None] * tint[None, None, :] * 0.7)  # (S, S, 3), darkened texture
        lines, placed = [], []
        for _ in range(int(rng.integers(1, config.max_objects + 1))):
            k = int(rng.choice(len(config.classes), p=weights))
            digit = digits.images[int(rng.choice(pools[k]))] / 16.0  # (8, 8) in [0, 1]
            side = int(rng.integers(size // 5, size // 2.5))
            box = _free_spot(rng, size, side, placed)
            if box is None:
                continue
            x, y = box
            placed.append((x, y, x + side, y + side))
            glyph = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR))
            alpha = (glyph.astype(np.float32) / 255.0)[..., None]
            colour = rng.uniform(0.6, 1.0, size=3)
            region = canvas[y:y + side, x:x + side]
            canvas[y:y + side, x:x + side] = region * (1 - alpha) + alpha * colour
            lines.append(f"{k} {(x + side / 2) / size:.6f} {(y + side / 2) / size:.6f} {side / size:.6f} {side / size:.6f}")
        name = f"img_{i:04d}"
        Image.fromarray((canvas.clip(0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
        (root / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {k}: digit_{d}" for k, d in enumerate(config.classes))
    (root / "data.yaml").write_text(f"# digits from sklearn load_digits on scikit-image textures\nnames:\n{names}\n")
    return root


def _free_spot(rng: np.random.Generator, size: int, side: int,
               placed: list[tuple[int, int, int, int]]) -> tuple[int, int] | None:
    for _ in range(30):
        x, y = int(rng.integers(0, size - side)), int(rng.integers(0, size - side))
        if all(x + side <= a or a2 <= x or y + side <= b or b2 <= y for a, b, a2, b2 in placed):
            return x, y
    return None

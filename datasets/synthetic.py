"""A small MVTec-layout demo data set made from textures that scikit-image ships (no download).

Every image is a random crop of a 512 x 512 texture (brick, grass, gravel). Test images may carry
one synthetic defect, with its exact mask:

* ``scratch``: a thick straight line of a far-off grey value,
* ``blob``: a filled ellipse whose brightness is shifted,
* ``patch``: an ellipse pasted from another texture.

brick and grass are written as tinted RGB, gravel as 8-bit grayscale (to exercise the grayscale
-> RGB path). The output depends only on the seed.

Usage: python -m datasets.synthetic --out demo_data
"""
import logging
import os

import numpy as np
from PIL import Image
from skimage import data as skdata
from skimage import draw

from utils import ArgumentParser, UserError, atomic_path, ensure_dir, positive_int

logger = logging.getLogger(__name__)

TEXTURES = {"brick": (1.0, 0.75, 0.6), "grass": (0.7, 1.0, 0.6), "gravel": None}
DEFECTS = ("blob", "patch", "scratch")


def _crop(texture, size, rng):
    h, w = texture.shape
    y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    c = texture[y:y + size, x:x + size].astype(np.float64)
    if rng.random() < 0.5:
        c = c[:, ::-1]
    return c


def _defect(img, kind, other, rng):
    """Draw one defect on the float image [S, S] in place; return its boolean mask."""
    size = img.shape[0]
    mask = np.zeros_like(img, dtype=bool)
    lo, hi = size // 6, size - size // 6
    if kind == "scratch":
        r0, c0 = rng.integers(lo, hi, 2)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.25, 0.45) * size
        half_width = rng.uniform(1.5, 3.5)
        d = np.array([np.sin(angle), np.cos(angle)])
        n = np.array([-d[1], d[0]])
        p0, p1 = np.array([r0, c0]) - d * length / 2, np.array([r0, c0]) + d * length / 2
        corners = np.array([p0 + n * half_width, p1 + n * half_width,
                            p1 - n * half_width, p0 - n * half_width])
        rr, cc = draw.polygon(corners[:, 0], corners[:, 1], shape=img.shape)
        mask[rr, cc] = True
        img[mask] = 20.0 if img.mean() > 128 else 235.0
    else:
        r0, c0 = rng.integers(lo, hi, 2)
        ra, rb = rng.uniform(0.05, 0.12, 2) * size
        rr, cc = draw.ellipse(r0, c0, ra, rb, shape=img.shape, rotation=rng.uniform(0, np.pi))
        mask[rr, cc] = True
        if kind == "blob":
            img[mask] = np.clip(img[mask] * rng.choice([0.35, 1.8]), 0, 255)
        else:
            img[mask] = other[mask]
    return mask


def _save(path, array, tint):
    a = np.clip(np.round(array), 0, 255).astype(np.uint8)
    if tint is not None:
        a = np.clip(np.round(a[:, :, None] * np.asarray(tint)), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(a).save(tmp, format="PNG")


def generate(out, categories=tuple(TEXTURES), n_train=30, n_good=5, n_defect=10, size=256,
             seed=0):
    """Write the demo data set under ``out``; return the list of category names."""
    textures = {name: getattr(skdata, name)() for name in TEXTURES}
    for ci, name in enumerate(categories):
        if name not in TEXTURES:
            raise ValueError(f"unknown demo category '{name}': choose from {sorted(TEXTURES)}")
        rng = np.random.default_rng([seed, ci])
        tex, tint = textures[name], TEXTURES[name]
        others = [textures[o] for o in TEXTURES if o != name]
        root = os.path.join(out, name)
        for i in range(n_train):
            _save(os.path.join(root, "train", "good", f"{i:03d}.png"), _crop(tex, size, rng), tint)
        for i in range(n_good):
            _save(os.path.join(root, "test", "good", f"{i:03d}.png"), _crop(tex, size, rng), tint)
        for i in range(n_defect):
            kind = DEFECTS[i % len(DEFECTS)]
            img = _crop(tex, size, rng)
            other = _crop(others[i % len(others)], size, rng)
            mask = _defect(img, kind, other, rng)
            stem = f"{i // len(DEFECTS):03d}"
            _save(os.path.join(root, "test", kind, f"{stem}.png"), img, tint)
            _save(os.path.join(root, "ground_truth", kind, f"{stem}_mask.png"),
                  mask.astype(np.float64) * 255, None)
        logger.info("demo category %s: %d train, %d good + %d defective test images", name,
                    n_train, n_good, n_defect)
    return list(categories)


def get_args(argv=None):
    p = ArgumentParser(description="Write the MVTec-layout demo data set.")
    p.add_argument("--out", type=str, default="demo_data", help="output root folder")
    p.add_argument("--categories", type=str, default=",".join(TEXTURES),
                   help="comma-separated subset of " + ",".join(TEXTURES))
    p.add_argument("--n_train", type=positive_int, default=30, help="normal training images")
    p.add_argument("--n_good", type=positive_int, default=5, help="normal test images")
    p.add_argument("--n_defect", type=positive_int, default=10, help="defective test images")
    p.add_argument("--size", type=positive_int, default=256, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    return p.parse_args(argv)


def main(args):
    names = [c for c in args.categories.split(",") if c]
    unknown = [c for c in names if c not in TEXTURES]
    if unknown:
        raise UserError(f"unknown demo category '{unknown[0]}': choose from "
                        f"{', '.join(TEXTURES)}")
    if args.size > 512:
        raise UserError(f"--size {args.size} is larger than the 512 px source textures")
    ensure_dir(args.out)
    generate(args.out, names, args.n_train, args.n_good, args.n_defect, args.size, args.seed)
    print(f"demo data written to {args.out}: {', '.join(names)}")
    return names


if __name__ == "__main__":
    import sys
    from utils import run_cli
    sys.exit(run_cli(main, get_args))

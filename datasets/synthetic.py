"""A small MVTec-layout demo data set made from textures that scikit-image ships (no download).

Every image is a random crop (square, or height x width) of a 512 x 512 texture (brick, grass,
gravel). Test images may carry one synthetic defect, with its exact mask:

* ``scratch``: a thick straight line of a far-off grey value,
* ``blob``: a filled ellipse whose brightness is shifted,
* ``patch``: an ellipse pasted from another texture.

brick and grass are written as tinted RGB, gravel as 8-bit grayscale (to exercise the grayscale
-> RGB path). ``tissue``, ``galaxy`` and ``retina`` are crops of real colour photographs
scikit-image ships (immunohistochemistry 512 x 512, Hubble deep field 872 x 1000, retina
1411 x 1411), with the same defects (a patch comes from another of the photographs): natural
image statistics, for checks such as int8's that the grey textures would flatter. ``hires`` is a
high-resolution category (2048 x 2048 by default, any size) of gravel at its native grain with
defects 8-16 px across. The output depends only on the seed.

Usage: python -m datasets.synthetic --out demo_data
"""
import logging
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage import data as skdata
from skimage import draw

from utils import ArgumentParser, UserError, atomic_path, ensure_dir, positive_int

from .layout_writers import WRITERS, encode_image, write_manifest

logger = logging.getLogger(__name__)

TEXTURES = {"brick": (1.0, 0.75, 0.6), "grass": (0.7, 1.0, 0.6), "gravel": None}
PHOTOS = {"tissue": "immunohistochemistry", "galaxy": "hubble_deep_field", "retina": "retina"}
DEFECTS = ("blob", "patch", "scratch")


def _sources():
    """{category: float array [H, W] (textures) or [H, W, 3] (photographs)}."""
    out = {name: getattr(skdata, name)() for name in TEXTURES}
    out.update({name: getattr(skdata, src)() for name, src in PHOTOS.items()})
    return out


def _crop(texture, height, width, rng):
    h, w = texture.shape[:2]
    y, x = rng.integers(0, h - height + 1), rng.integers(0, w - width + 1)
    c = texture[y:y + height, x:x + width].astype(np.float64)
    if rng.random() < 0.5:
        c = c[:, ::-1]
    return c


def _centre(shape, rng):
    """A random point away from the borders (the square case draws as the first version did)."""
    h, w = shape
    if h == w:
        return rng.integers(h // 6, h - h // 6, 2)
    return np.array([rng.integers(h // 6, h - h // 6), rng.integers(w // 6, w - w // 6)])


def _defect(img, kind, other, rng):
    """Draw one defect on the float image [H, W] in place; return its boolean mask."""
    size = min(img.shape[:2])
    mask = np.zeros(img.shape[:2], dtype=bool)
    if kind == "scratch":
        r0, c0 = _centre(img.shape[:2], rng)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.25, 0.45) * size
        half_width = rng.uniform(1.5, 3.5)
        d = np.array([np.sin(angle), np.cos(angle)])
        n = np.array([-d[1], d[0]])
        p0, p1 = np.array([r0, c0]) - d * length / 2, np.array([r0, c0]) + d * length / 2
        corners = np.array([p0 + n * half_width, p1 + n * half_width,
                            p1 - n * half_width, p0 - n * half_width])
        rr, cc = draw.polygon(corners[:, 0], corners[:, 1], shape=img.shape[:2])
        mask[rr, cc] = True
        img[mask] = 20.0 if img.mean() > 128 else 235.0
    else:
        r0, c0 = _centre(img.shape[:2], rng)
        ra, rb = rng.uniform(0.05, 0.12, 2) * size
        rr, cc = draw.ellipse(r0, c0, ra, rb, shape=img.shape[:2],
                              rotation=rng.uniform(0, np.pi))
        mask[rr, cc] = True
        if kind == "blob":
            img[mask] = np.clip(img[mask] * rng.choice([0.35, 1.8]), 0, 255)
        else:
            img[mask] = other[mask]
    return mask


def _save(path, array, tint, fmt="PNG"):
    with atomic_path(path) as tmp:
        Image.fromarray(encode_image(array, tint)).save(tmp, format=fmt)


@dataclass
class Item:
    """One generated image: ``split`` train, test, validation or private (unlabelled in the
    layouts that have such a split); ``kind`` 'good' or the defect; ``index`` its number within
    (split, kind); ``image`` float [H, W]; ``mask`` bool [H, W] or None."""
    category: str
    split: str
    label: int
    kind: str
    index: int
    image: np.ndarray
    tint: tuple
    mask: np.ndarray = None


def draw_category(name, ci, textures, n_train, n_good, n_defect, size, height, seed,
                  n_validation=0, n_private=0):
    """The images of one demo category, drawn in a fixed order from one seeded generator (the
    validation and private images after all others, so that asking for them changes nothing
    else)."""
    rng = np.random.default_rng([seed, ci])
    family = PHOTOS if name in PHOTOS else TEXTURES
    tex, tint = textures[name], TEXTURES.get(name)
    if height > tex.shape[0] or size > tex.shape[1]:
        raise UserError(f"demo category '{name}' crops a {tex.shape[1]}x{tex.shape[0]} source: "
                        f"{size}x{height} images do not fit in it; ask for smaller ones")
    others = [textures[o] for o in family if o != name]
    items = [Item(name, "train", 0, "good", i, _crop(tex, height, size, rng), tint)
             for i in range(n_train)]
    items += [Item(name, "test", 0, "good", i, _crop(tex, height, size, rng), tint)
              for i in range(n_good)]

    def defective(i, split):
        kind = DEFECTS[i % len(DEFECTS)]
        img = _crop(tex, height, size, rng)
        other = _crop(others[i % len(others)], height, size, rng)
        mask = _defect(img, kind, other, rng)
        return Item(name, split, 1, kind, i // len(DEFECTS), img, tint, mask)
    items += [defective(i, "test") for i in range(n_defect)]
    items += [Item(name, "validation", 0, "good", i, _crop(tex, height, size, rng), tint)
              for i in range(n_validation)]
    for i in range(n_private):                     # unlabelled: every other one defective
        items.append(defective(i, "private") if i % 2 else
                     Item(name, "private", 0, "good", i, _crop(tex, height, size, rng), tint))
    return items


def generate(out, categories=tuple(TEXTURES), n_train=30, n_good=5, n_defect=10, size=256,
             seed=0, height=None, layout="mvtec", n_validation=None, n_private=None,
             image_format="png"):
    """Write the demo data set under ``out`` (images ``height`` x ``size``, square by default)
    in ``layout`` (``datasets.layout_writers``), with ``manifest.json``, the record of every
    file written; return the list of category names. ``hires`` is the high-resolution category
    (``generate_hires``, MVTec layout). ``n_validation`` / ``n_private``: normal validation and
    unlabelled test images of the layouts that have them (default 5 / 4 there, 0 elsewhere)."""
    if layout not in WRITERS:
        raise ValueError(f"unknown layout '{layout}': choose from {', '.join(WRITERS)}")
    writer = WRITERS[layout]
    height = size if height is None else height
    n_validation = writer.N_VALIDATION if n_validation is None else n_validation
    n_private = writer.N_PRIVATE if n_private is None else n_private
    textures = _sources()
    entries = []
    for ci, name in enumerate(categories):
        if name == HIRES:
            if layout != "mvtec":
                raise ValueError("the hires category is written in the mvtec layout only")
            generate_hires(out, n_train, n_good, n_defect, height, size, seed)
            continue
        if name not in TEXTURES and name not in PHOTOS:
            raise ValueError(f"unknown demo category '{name}': choose from {CATEGORIES}")
        items = draw_category(name, ci, textures, n_train, n_good, n_defect, size, height, seed,
                              n_validation, n_private)
        entries += writer.write(out, name, ci, items, image_format)
        logger.info("demo category %s (%s layout): %d train, %d good + %d defective test "
                    "images", name, layout, n_train, n_good, n_defect)
    write_manifest(out, layout, entries)
    return list(categories)


HIRES = "hires"
HIRES_DEFECTS = ("speck", "nick")
CATEGORIES = tuple(TEXTURES) + tuple(PHOTOS) + (HIRES,)


def _tiled(texture, height, width, rng):
    """A random window of the texture mirrored into a large tiling: any size, native grain."""
    reps = (-(-height // texture.shape[0]) + 1, -(-width // texture.shape[1]) + 1)
    block = np.block([[texture[::1 - 2 * (i % 2), ::1 - 2 * (j % 2)] for j in range(reps[1] + 1)]
                      for i in range(reps[0] + 1)])
    return _crop(block, height, width, rng)


def _small_defect(img, kind, rng):
    """One defect 8-16 px across on a large image, in place; return its mask."""
    mask = np.zeros_like(img, dtype=bool)
    r0 = rng.integers(16, img.shape[0] - 16)
    c0 = rng.integers(16, img.shape[1] - 16)
    if kind == "speck":
        ra, rb = rng.uniform(4, 8, 2)
        rr, cc = draw.ellipse(r0, c0, ra, rb, shape=img.shape[:2],
                              rotation=rng.uniform(0, np.pi))
        mask[rr, cc] = True
        img[mask] = np.clip(img[mask] * rng.choice([0.3, 2.0]), 0, 255)
    else:
        angle, length = rng.uniform(0, np.pi), rng.uniform(10, 16)
        d = np.array([np.sin(angle), np.cos(angle)]) * length / 2
        rr, cc = draw.line(int(r0 - d[0]), int(c0 - d[1]), int(r0 + d[0]), int(c0 + d[1]))
        keep = (rr >= 0) & (rr < img.shape[0] - 1) & (cc >= 0) & (cc < img.shape[1] - 1)
        for dr in (0, 1):                                        # 2-3 px wide
            for dc in (0, 1):
                mask[rr[keep] + dr, cc[keep] + dc] = True
        img[mask] = 15.0 if img[mask].mean() > 100 else 240.0
    return mask


def generate_hires(out, n_train=20, n_good=4, n_defect=8, height=2048, width=2048, seed=0):
    """The high-resolution category ``hires``: gravel at its native grain on ``height`` x
    ``width`` images, each defective test image with 1-3 defects 8-16 px across (``speck``:
    a dark or bright ellipse; ``nick``: a short scratch)."""
    rng = np.random.default_rng([seed, 99])
    tex = skdata.gravel()
    root = os.path.join(out, HIRES)
    for i in range(n_train):
        _save(os.path.join(root, "train", "good", f"{i:03d}.png"),
              _tiled(tex, height, width, rng), None)
    for i in range(n_good):
        _save(os.path.join(root, "test", "good", f"{i:03d}.png"),
              _tiled(tex, height, width, rng), None)
    for i in range(n_defect):
        kind = HIRES_DEFECTS[i % len(HIRES_DEFECTS)]
        img = _tiled(tex, height, width, rng)
        mask = np.zeros(img.shape, dtype=bool)
        for _ in range(rng.integers(1, 4)):
            mask |= _small_defect(img, kind, rng)
        stem = f"{i // len(HIRES_DEFECTS):03d}"
        _save(os.path.join(root, "test", kind, f"{stem}.png"), img, None)
        _save(os.path.join(root, "ground_truth", kind, f"{stem}_mask.png"),
              mask.astype(np.float64) * 255, None)
    logger.info("demo category %s: %dx%d, %d train, %d good + %d defective test images", HIRES,
                height, width, n_train, n_good, n_defect)


def get_args(argv=None):
    p = ArgumentParser(description="Write the demo data set, in the MVTec AD layout or in another "
                                   "benchmark's layout, with manifest.json (every file written).")
    p.add_argument("--out", type=str, default="demo_data", help="output root folder")
    p.add_argument("--categories", type=str, default=",".join(TEXTURES),
                   help="comma-separated subset of " + ",".join(TEXTURES) + " (textures), " +
                        ",".join(PHOTOS) + f" (colour photographs) and {HIRES} (high "
                        "resolution, defects of 8-16 px)")
    p.add_argument("--n_train", type=positive_int, default=30, help="normal training images")
    p.add_argument("--n_good", type=positive_int, default=5, help="normal test images")
    p.add_argument("--n_defect", type=positive_int, default=10, help="defective test images")
    p.add_argument("--size", type=positive_int, default=256,
                   help="image width in pixels (textures: at most 512)")
    p.add_argument("--height", type=positive_int, default=None,
                   help="image height in pixels (default: --size)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--layout", type=str, default="mvtec",
                   choices=["mvtec", "visa", "mvtec_ad2", "mvtec_loco", "btad", "folder"],
                   help="the tree to write the same images in (see docs/data_layouts.md)")
    p.add_argument("--image_format", type=str, default="png", choices=["png", "jpg"],
                   help="visa only: jpg writes JPEG files named .JPG as VisA ships them (lossy, "
                        "so metrics differ slightly from the PNG layouts)")
    p.add_argument("--n_validation", type=int, default=None,
                   help="normal validation images (mvtec_ad2, mvtec_loco; default 5)")
    p.add_argument("--n_private", type=int, default=None,
                   help="unlabelled test images (mvtec_ad2: test_private and "
                        "test_private_mixed; default 4)")
    return p.parse_args(argv)


def main(args):
    names = [c for c in args.categories.split(",") if c]
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown:
        raise UserError(f"unknown demo category '{unknown[0]}': choose from "
                        f"{', '.join(CATEGORIES)}")
    height = args.height or args.size
    if max(args.size, height) > 512 and any(c in TEXTURES for c in names):
        raise UserError(f"--size / --height {max(args.size, height)} is larger than the 512 px "
                        f"source textures: use at most 512, or the {HIRES} category")
    if min(args.size, height) < 48:
        raise UserError(f"--size / --height {min(args.size, height)} is too small: use at least "
                        "48 pixels")
    if HIRES in names and args.layout != "mvtec":
        raise UserError(f"the {HIRES} category is written in the mvtec layout only: drop it or "
                        "use --layout mvtec")
    for flag in ("n_validation", "n_private"):
        if (getattr(args, flag) or 0) < 0:
            raise UserError(f"--{flag} {getattr(args, flag)} must be at least 0")
    ensure_dir(args.out)
    generate(args.out, names, args.n_train, args.n_good, args.n_defect, args.size, args.seed,
             height, args.layout, args.n_validation, args.n_private, args.image_format)
    print(f"demo data written to {args.out} ({args.layout} layout): {', '.join(names)}; "
          f"record of every file: {os.path.join(args.out, 'manifest.json')}")
    return names


if __name__ == "__main__":
    import sys
    from utils import run_cli
    sys.exit(run_cli(main, get_args))

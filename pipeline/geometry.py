"""The input geometry of a model, chosen once at fit time from the training images and the flags.

* ``--input_size auto`` (default): if every training image is square, the MVTec AD protocol
  (resize 256, centre crop 256; ``--resize`` / ``--crop_size`` change it). Otherwise a fixed
  H x W, multiples of the backbone's stride (16), with the geometric-mean aspect ratio of the
  training images and about as many pixels as a 256 x 256 input; every image is resized to it
  whole, without a crop.
* ``--input_size S`` or ``--input_size H W``: that input, whole images resized to it.
* ``--resize`` / ``--crop_size`` given: the classic resize + centre crop, whatever the images.

The statistics cells (``--cell``) and the batch size are sized here too, so that the Gaussians
and one batch of activations stay within fixed memory budgets at any resolution.
"""
import logging
import math

import numpy as np

from orthoad_runtime.transforms import (BATCH_PIXELS, AspectWarnings,  # noqa: F401
                                        Preprocess, batch_for, image_size)
from utils import UserError

logger = logging.getLogger(__name__)

STRIDE = 16                       # layer3 of the ResNets: input sides that are multiples of it
                                  # give integer upsampling factors between the three layers
MIN_SIDE = 32
AUTO_PIXELS = 256 * 256           # the pixel count of the MVTec protocol's input
STATS_BUDGET = 4.5e9              # bytes of float64 sums + float32 precision (auto --cell)


def parse_input_size(values):
    """``--input_size`` words -> 'auto' or (H, W); UserError naming the valid values."""
    valid = (f"auto, S or H W with sides multiples of {STRIDE} and at least {MIN_SIDE} "
             "(e.g. --input_size 512 or --input_size 256 640)")
    if values in (None, ["auto"], "auto"):
        return "auto"
    words = values if isinstance(values, (list, tuple)) else str(values).split()
    if len(words) not in (1, 2):
        raise UserError(f"--input_size {' '.join(map(str, words))} is malformed: use {valid}")
    try:
        sides = [int(v) for v in words]
    except ValueError:
        raise UserError(f"--input_size {' '.join(words)} is malformed: use {valid}") from None
    if min(sides) < MIN_SIDE:
        raise UserError(f"--input_size {' '.join(words)} is too small: use {valid}")
    if any(v % STRIDE for v in sides):
        raise UserError(f"--input_size {' '.join(words)} is not a multiple of the stride "
                        f"{STRIDE}: use {valid}")
    return (sides[0], sides[0]) if len(sides) == 1 else (sides[0], sides[1])


def _round_side(v):
    return max(MIN_SIDE, int(round(v / STRIDE)) * STRIDE)


def choose(files, input_size="auto", resize=None, crop_size=None):
    """The Preprocess of a new model, and a record of why (stored in the model).

    Args:
        files: the training images.
        input_size: 'auto' or (H, W) (``parse_input_size``).
        resize, crop_size: the classic flags, None when not given.

    Returns:
        (Preprocess, info dict: rule, unscored_fraction, aspect_range).
    """
    sizes = np.array([image_size(f) for f in files], dtype=np.float64)     # [N, (H, W)]
    aspects = sizes[:, 1] / sizes[:, 0]
    classic = resize is not None or crop_size is not None
    if input_size != "auto":
        if classic:
            raise UserError("--input_size H W resizes whole images; --resize / --crop_size cut a "
                            "centre crop: give one or the other")
        pre, rule = Preprocess(input_size), "--input_size: whole images resized to it"
    elif classic or np.all(sizes[:, 0] == sizes[:, 1]):
        crop = crop_size or resize or 256
        pre = Preprocess(crop, resize or max(256, crop))
        rule = ("--resize / --crop_size: shorter side resized, centre crop" if classic else
                "auto, all training images square: the MVTec AD protocol (resize, centre crop)")
    else:
        aspect = float(np.exp(np.mean(np.log(aspects))))
        h = _round_side(math.sqrt(AUTO_PIXELS / aspect))
        w = _round_side(math.sqrt(AUTO_PIXELS * aspect))
        pre = Preprocess((h, w))
        rule = (f"auto, training images not all square (aspect ratios {aspects.min():.2f}-"
                f"{aspects.max():.2f}, geometric mean {aspect:.2f}): whole images resized to "
                f"{h}x{w}, about {AUTO_PIXELS} pixels")
    off = sum(pre.aspect_warning(tuple(hw)) is not None for hw in sizes.astype(int))
    if off:
        logger.warning("%d of %d training images have an aspect ratio over 2x off the model's "
                       "%dx%d input: %s", off, len(files), pre.height, pre.width,
                       "they are distorted by the resize" if pre.resize is None else
                       "most of each is outside the centre crop")
    total = sizes.prod(axis=1)
    scored = np.array([pre.scored_fraction(tuple(hw)) for hw in sizes.astype(int)])
    unscored = float(1.0 - (scored * total).sum() / total.sum())
    logger.info("input geometry %dx%d (%s)", pre.height, pre.width, rule)
    if unscored > 0:
        logger.warning("the centre crop leaves %.1f%% of the training images' pixels unscored "
                       "(crop %d of a shorter side %d): defects there are never seen; use "
                       "--input_size auto or H W to score whole images", 100 * unscored,
                       pre.height, pre.resize)
    return pre, {"rule": rule, "unscored_fraction": round(unscored, 6),
                 "aspect_range": [float(aspects.min()), float(aspects.max())]}


def parse_cell(value):
    """``--cell`` word -> 'auto', a positive int (square cells) or (ch, cw) from 'HxW'."""
    if value in (None, "auto"):
        return "auto"
    text = str(value).lower()
    try:
        cell = tuple(int(v) for v in text.split("x")) if "x" in text else int(text)
    except ValueError:
        cell = 0
    sides = cell if isinstance(cell, tuple) else (cell,)
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise UserError(f"--cell {value} is malformed: use auto, a positive integer such as 2 "
                        "or 4, or HxW such as 8x12")
    return cell


MAX_CELL = 64


def _divisors(n):
    return [d for d in range(1, min(n, MAX_CELL) + 1) if n % d == 0]


def choose_cell(grid_hw, k, cell="auto"):
    """The blocks of grid positions that share a Gaussian: a side c (square) or (ch, cw).

    'auto': the smallest square c dividing both grid sides that keeps the float64 sums and
    float32 precision (12 * k^2 bytes per Gaussian) within ``STATS_BUDGET``; where no square
    divides both sides enough (a 2448 x 2048 frame: a 612 x 512 grid, whose common divisors are
    1, 2 and 4), the rectangle ch x cw (ch dividing h, cw dividing w) of the smallest area that
    fits, the most square of those.
    """
    h, w = grid_hw
    fits = lambda ch, cw: (h // ch) * (w // cw) * 12.0 * k * k <= STATS_BUDGET  # noqa: E731
    if cell != "auto":
        ch, cw = (cell, cell) if isinstance(cell, int) else cell
        if h % ch or w % cw:
            given = ch if isinstance(cell, int) else f"{ch}x{cw}"
            raise UserError(f"--cell {given} does not divide the {h}x{w} patch grid: choose "
                            "divisors of the input sides / 4")
        return cell
    for c in _divisors(h):
        if w % c == 0 and fits(c, c):
            return c
    rects = [(ch * cw, abs(ch - cw), ch, cw) for ch in _divisors(h) for cw in _divisors(w)
             if fits(ch, cw)]
    if rects:
        _, _, ch, cw = min(rects)
        return ch if ch == cw else (ch, cw)
    raise UserError(f"the statistics of a {h}x{w} grid at k={k} do not fit in "
                    f"{STATS_BUDGET / 1e9:.1f} GB with any cell: reduce --input_size or --k")


def stats_bytes(n_cells, k):
    """Bytes of the fit's statistics: float64 sums and the float32 precision."""
    return int(n_cells * k * k * 12)

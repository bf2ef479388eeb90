"""Loading images and masks for the pipeline: a labelled
sample's image with its ground truth (one mask, the union of several, or MVTec LOCO's defect
channels), checked against the image's size."""
import logging
import os
from dataclasses import dataclass

import numpy as np

from utils import UserError

from .samples import MASK_NONZERO
from orthoad_runtime.transforms import load_mask

logger = logging.getLogger(__name__)
_WARNED = set()


@dataclass
class TestItem:
    """A labelled sample loaded for scoring.

    Attributes:
        x: float32 [3, H, W] network input.
        mask: bool [H, W] defect pixels at the input geometry.
        original_hw: (H0, W0) of the image file.
        mask_orig: uint8 [H0, W0] defect pixels at the original size (255 = defect).
        channels: MVTec LOCO only: [(pixel value, bool [H0, W0])] one per ground-truth file.
    """
    x: np.ndarray
    mask: np.ndarray
    original_hw: tuple
    mask_orig: np.ndarray
    channels: list = None


def read_mask(path, rule, image_hw=None):
    """A mask file -> bool [H0, W0] of its defect pixels under ``rule``; UserError if its size
    differs from ``image_hw``."""
    m = load_mask(path)
    if image_hw is not None and m.shape != tuple(image_hw):
        raise UserError(f"mask '{path}' is {m.shape[1]}x{m.shape[0]} but its image is "
                        f"{image_hw[1]}x{image_hw[0]}: fix the mask")
    if rule == MASK_NONZERO:
        return m > 0
    _report_grey(path, m)
    defect = m > 127
    if not defect.any() and m.any() and path not in _WARNED:
        _WARNED.add(path)
        logger.warning("mask '%s' has non-zero pixels but none above 127, so it marks no defect "
                       "in this layout; if your masks mark defects with small values (1, 2, ...) "
                       "as VisA's do, use --data_format visa or rescale them to 255", path)
    return defect


def _report_grey(path, m):
    """Say once per folder that its masks hold grey values, and the rule applied to them."""
    folder = os.path.dirname(os.path.abspath(path))
    if folder in _WARNED:
        return
    values = np.unique(m)
    if np.isin(values, (0, 255)).all():
        return
    _WARNED.add(folder)
    logger.warning("masks in '%s' hold grey values ('%s': %d values from %d to %d, e.g. JPEG "
                   "or anti-aliased masks): a pixel above 127 is read as a defect", folder,
                   os.path.basename(path), len(values), int(values.min()), int(values.max()))


def read_channel(path, image_hw):
    """One MVTec LOCO ground-truth file -> (its pixel value, bool [H0, W0])."""
    m = load_mask(path)
    if m.shape != tuple(image_hw):
        raise UserError(f"mask '{path}' is {m.shape[1]}x{m.shape[0]} but its image is "
                        f"{image_hw[1]}x{image_hw[0]}: fix the mask")
    values = np.unique(m[m > 0])
    if len(values) > 1:
        raise UserError(f"ground-truth file '{path}' holds several defect values "
                        f"({', '.join(map(str, values[:4]))}): MVTec LOCO marks one defect per "
                        "file with one pixel value; split it into one file per defect")
    return (int(values[0]) if len(values) else 0), m > 0


def load_test_item(sample, preprocess, channels=False):
    """Sample -> ``TestItem``; all-zero masks for normal images and for defect images without a
    mask. ``channels``: also return MVTec LOCO's ground-truth files one by one."""
    x, hw = preprocess.load(sample.path)
    defect = np.zeros(hw, dtype=bool)
    chans = [] if channels else None
    for path in sample.masks:
        if channels:
            value, m = read_channel(path, hw)
            chans.append((value, m))
        else:
            m = read_mask(path, sample.mask_rule, hw)
        defect |= m
    mask_orig = defect.astype(np.uint8) * 255
    return TestItem(x, preprocess.mask(mask_orig), hw, mask_orig, chans)

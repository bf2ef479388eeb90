"""Ignore masks: pixels that always differ (serial numbers, fixtures, labels) are never scored.

A mask is white where pixels are ignored, given at the input's or the images' size (then brought
to the input by the images' geometry). Ignored pixels become NaN in the map; the image score is
the maximum of the others, and nothing downstream (regions, verdicts, the threshold's held-out
scores, the pixel metrics) counts them. Fit, evaluation, prediction and every engine use these
functions, after the graph.
"""
import base64
import io
import logging

import numpy as np
from PIL import Image

from .errors import UserError

from .transforms import load_mask

logger = logging.getLogger(__name__)


def load_ignore_mask(path, preprocess):
    """An ignore mask file (white = ignore) -> bool [H, W] at the model's input size.

    A mask of the input size is used as it is; any other size (e.g. the camera frame) is brought
    to the input by the images' own geometry (resize, and crop if the model crops), with a log
    line. A mask that ignores every pixel is an error.
    """
    raw = load_mask(path)
    if raw.shape == preprocess.input_hw:
        ignore = raw > 127
    else:
        ignore = preprocess.mask(raw)
        logger.info("ignore mask '%s' is %dx%d: brought to the model's %dx%d input by the "
                    "images' geometry", path, raw.shape[1], raw.shape[0], preprocess.width,
                    preprocess.height)
    check_ignore(ignore, path)
    return ignore


def check_ignore(ignore, source):
    if ignore is not None and ignore.all():
        raise UserError(f"the ignore mask {source} covers every pixel: nothing would be scored; "
                        "white marks the pixels to ignore, black those to inspect")
    return ignore


def combine(*masks):
    """Union of ignore masks (None entries skipped); None if there is none."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0].copy()
    for m in masks[1:]:
        out |= m
    return check_ignore(out, "given (model + --ignore_mask)")


def apply_ignore(maps, ignore):
    """maps [B, H, W] -> (maps with NaN on ignored pixels, image scores [B] = max of the rest)."""
    maps = np.asarray(maps, dtype=np.float32)
    if ignore is None:
        return maps, maps.reshape(len(maps), -1).max(axis=1)
    maps = np.where(ignore[None], np.float32(np.nan), maps)
    return maps, np.nanmax(maps.reshape(len(maps), -1), axis=1)


def original_map(preprocess, amap, original_hw, ignore=None):
    """The map [H, W] back on the original image [H0, W0] (``Preprocess.to_original``); NaN
    where not scored: outside a centre crop, and on ignored pixels (mapped back by nearest
    neighbour, without letting NaN spread through the bilinear resize)."""
    finite = np.isfinite(amap)
    base = amap if finite.all() else np.where(finite, amap, np.nanmin(amap))
    full = preprocess.to_original(base, original_hw)
    if ignore is not None and ignore.any():
        ig = preprocess.to_original(ignore.astype(np.float32), original_hw)
        full[np.nan_to_num(ig, nan=0.0) > 0.5] = np.nan
    return full


def encode_mask(mask):
    """bool [H, W] -> base64 PNG text (for deploy.json; ``orthoad_runtime.schema.decode_mask`` reads it)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")

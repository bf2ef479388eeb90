"""Ignore masks: pixels that always differ (serial numbers, fixtures, labels) are never scored.

A mask is white where pixels are ignored, given at the input's or the images' size (then brought
to the input by the images' geometry). Ignored pixels become NaN in the map; the image score is
the maximum of the others, and nothing downstream (regions, verdicts, the threshold's held-out
scores, the pixel metrics) counts them. Fit, evaluation, prediction and every engine use these
functions, after the graph.

PatchCore's image score is not the map's peak (the paper's Eq. 7, computed in the graph): its
graph takes the patches that count (``patch_mask``: a patch counts when the input pixel at its
centre is scored), and its score is kept as the graph gives it.
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


def apply_ignore(maps, ignore, scores=None):
    """maps [B, H, W] -> (maps with NaN on ignored pixels, image scores [B]): the max of the
    rest, or ``scores`` as they are (a method whose image score is not the map's peak, which
    its graph computed over the scored patches)."""
    maps = np.asarray(maps, dtype=np.float32)
    if ignore is not None:
        maps = np.where(ignore[None], np.float32(np.nan), maps)
    if scores is not None:
        return maps, np.asarray(scores, dtype=np.float32)
    if ignore is None:
        return maps, maps.reshape(len(maps), -1).max(axis=1)
    return maps, np.nanmax(maps.reshape(len(maps), -1), axis=1)


def patch_mask(ignore, grid_hw):
    """float32 [h*w]: 1 for the patches of an h x w grid that count (the input pixel at the
    patch's centre is not ignored), 0 for the others; None without an ignore mask. A mask that
    leaves no patch is an error."""
    if ignore is None:
        return None
    (height, width), (gh, gw) = ignore.shape, grid_hw
    rows = np.minimum(((np.arange(gh) + 0.5) * height / gh).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(gw) + 0.5) * width / gw).astype(np.int64), width - 1)
    scored = ~ignore[np.ix_(rows, cols)]
    if not scored.any():
        raise UserError(f"the ignore mask leaves none of the {gh}x{gw} patches scored (a patch "
                        "counts when the pixel at its centre is not ignored): ignore less")
    return scored.reshape(-1).astype(np.float32)


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

"""Masks kept beside their images, as many data sets ship them (``Imgs/0001.jpg`` with
``Imgs/0001.png``, or ``0001_mask.png``): one folder's files split into images and masks.

A file is a mask, never an image, when it pairs with an image of the same folder by name:

* ``<stem>_mask.<ext>`` beside ``<stem>.<ext2>`` (any image extensions), or
* ``<stem>.png`` beside ``<stem>.jpg|.jpeg|.bmp|.tif|.tiff`` when the PNG is grey (one
  channel, or three equal ones); a colour PNG there is a second image of that name, not a mask.

A real ambiguity is an error that names the files: two masks for one image (``a_mask.png`` and
a grey ``a.png`` beside ``a.jpg``), or a mask beside two images of its name. Only the files'
names and, for the ``<stem>.png`` rule, the PNG's pixels are read.
"""
import os

import numpy as np
from PIL import Image

from .errors import UserError

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _stem_ext(path):
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    return stem, ext.lower()


def is_grey(path):
    """True if the image holds one grey channel (L, 1, I, P with a grey palette) or three
    equal channels."""
    with Image.open(path) as img:
        if img.mode in ("1", "L", "I", "I;16", "F", "LA"):
            return True
        if img.mode == "P":
            img = img.convert("RGB")
        a = np.asarray(img)
    return a.ndim == 2 or (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


def split_masks(files):
    """Image files of one folder -> (images, {image: its mask}) by the rules above.

    Raises:
        UserError: two masks for one image, or a mask beside two images of its name.
    """
    by_stem = {}
    for f in files:
        by_stem.setdefault(_stem_ext(f)[0], []).append(f)
    masks = {}                                   # mask file -> image file
    for f in files:
        stem, ext = _stem_ext(f)
        if stem.endswith("_mask") and stem[:-5] in by_stem:
            owners = [g for g in by_stem[stem[:-5]] if g not in masks]
            photos = [g for g in owners if _stem_ext(g)[1] != ".png"] or owners
            if len(photos) > 1:
                raise UserError(f"mask '{f}' sits beside {len(photos)} images of its name "
                                f"({', '.join(os.path.basename(p) for p in photos)}): keep one "
                                "image per name in the folder")
            masks[f] = photos[0]
    for f in files:
        stem, ext = _stem_ext(f)
        if ext != ".png" or f in masks:
            continue
        photos = [g for g in by_stem[stem] if _stem_ext(g)[1] in PHOTO_EXTENSIONS]
        if not photos:
            continue
        if len(photos) > 1:
            raise UserError(f"'{f}' sits beside {len(photos)} images of its name "
                            f"({', '.join(os.path.basename(p) for p in photos)}): keep one image "
                            "per name in the folder")
        if is_grey(f):                           # a colour PNG is an image of its own
            masks[f] = photos[0]
    by_image = {}
    for m, image in masks.items():
        if image in by_image:
            raise UserError(f"'{os.path.basename(image)}' in '{os.path.dirname(image)}' has two "
                            f"masks beside it ('{os.path.basename(by_image[image])}' and "
                            f"'{os.path.basename(m)}'): keep one")
        by_image[image] = m
    images = [f for f in files if f not in masks]
    return images, by_image

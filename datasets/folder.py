"""Plain folders, as users keep their own images (no tree to rebuild):

    --normal_dir DIR                 normal training images
    --abnormal_dir DIR [DIR ...]     anomalous test images; each folder is a defect type, named
                                     after the folder
    --normal_test_dir DIR            normal test images, or instead
    --normal_split F                 hold a seeded share F of --normal_dir out for testing
    --mask_dir DIR                   optional masks, matched by file stem with or without a
                                     '_mask' suffix, in sub-folders named by type or flat
    --category NAME                  names the model

The same shape sets thresholds on labelled calibration images (``--calibration_normal_dir``,
``--calibration_abnormal_dir``, ``--calibration_mask_dir``).
"""
import logging
import os

import numpy as np

from utils import UserError

from .mvtec import match_masks
from .samples import CategoryData, Sample, check_unique, list_images, stem, warn_masks

logger = logging.getLogger(__name__)

NAME = "folder"
TREE = ("--normal_dir DIR [--abnormal_dir DIR ...] [--normal_test_dir DIR | --normal_split F] "
        "[--mask_dir DIR]")
MASK_SUFFIXES = ("_mask", "")


def _folder(flag, path):
    if not path or not os.path.isdir(path):
        raise UserError(f"{flag} '{path}' is not a folder: give a folder of images")
    return path


def labelled(normal_dirs, abnormal_dirs, mask_dir, split="test", flags=("--normal_test_dir",
                                                                          "--abnormal_dir",
                                                                          "--mask_dir")):
    """Labelled samples of plain folders (normal and per-type anomalous), masks matched by stem.

    Returns:
        (samples, masks without an image).
    """
    samples = []
    for d in normal_dirs:
        samples += [Sample(p, 0, "good", split=split) for p in list_images(_folder(flags[0], d))]
    types = {}
    for d in abnormal_dirs:
        kind = os.path.basename(os.path.normpath(os.path.abspath(_folder(flags[1], d))))
        if kind in types:
            raise UserError(f"{flags[1]} '{d}' and '{types[kind]}' are both named '{kind}': each "
                            "folder is a defect type, named after the folder; rename one")
        if kind == "good":
            raise UserError(f"{flags[1]} '{d}' is named 'good', the name of normal images: "
                            "rename the folder after its defect type")
        types[kind] = d
    if mask_dir is not None:
        _folder(flags[2], mask_dir)
    flat = {stem(m): m for m in list_images(mask_dir)} if mask_dir else {}
    claimed, orphans = {}, []
    for kind, d in types.items():
        images = list_images(d)
        by_type, left = match_masks(images, os.path.join(mask_dir, kind), MASK_SUFFIXES) \
            if mask_dir else ({}, [])
        orphans += left
        for p in images:
            mask = by_type.get(p)
            if mask is None and flat:
                for suffix in MASK_SUFFIXES:
                    mask = flat.get(stem(p) + suffix)
                    if mask is not None:
                        break
                if mask is not None:
                    if mask in claimed:
                        raise UserError(f"mask '{mask}' matches both '{claimed[mask]}' and '{p}' "
                                        "(same file stem in two defect folders): put the masks "
                                        f"in sub-folders of {flags[2]} named by type")
                    claimed[mask] = p
            samples.append(Sample(p, 1, kind, (mask,) if mask else (), split))
    orphans += [m for m in flat.values() if m not in claimed]
    return samples, orphans


def split_normals(files, fraction, seed):
    """(training files, test files): a seeded share ``fraction`` of ``files`` held out for
    testing, at least 1, leaving at least 2 to fit."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--normal_split {fraction} must lie strictly between 0 and 1 (the "
                        "share of --normal_dir held out for testing, e.g. 0.2)")
    n_test = min(max(1, int(round(fraction * len(files)))), len(files) - 2)
    if n_test < 1:
        raise UserError(f"--normal_split: --normal_dir holds {len(files)} image(s), too few to "
                        "hold any out: add images or give --normal_test_dir")
    test = set(np.random.default_rng(seed).permutation(len(files))[:n_test].tolist())
    return ([f for i, f in enumerate(files) if i not in test],
            [f for i, f in enumerate(files) if i in test])


def read(root, name, options):
    o = options
    train = list_images(_folder("--normal_dir", o.normal_dir))
    record = {"normal_dir": os.path.abspath(o.normal_dir),
              "abnormal_dir": [os.path.abspath(d) for d in o.abnormal_dir or []],
              "normal_test_dir": o.normal_test_dir and os.path.abspath(o.normal_test_dir),
              "mask_dir": o.mask_dir and os.path.abspath(o.mask_dir)}
    normal_test = [o.normal_test_dir] if o.normal_test_dir else []
    held = []
    if o.normal_split is not None:
        if o.normal_test_dir:
            raise UserError("--normal_test_dir and --normal_split both choose the normal test "
                            "images: give one of them")
        train, held = split_normals(train, o.normal_split, o.seed)
        record["normal_split"] = {"fraction": o.normal_split, "seed": o.seed,
                                  "test": [os.path.basename(f) for f in held]}
        logger.info("%s: --normal_split %g (seed %d) holds %d of %d normal images out for "
                    "testing", name, o.normal_split, o.seed, len(held), len(train) + len(held))
    test, orphans = labelled(normal_test, o.abnormal_dir or [], o.mask_dir)
    test = [Sample(p, 0, "good") for p in held] + test
    check_unique(test, train)
    warn_masks(name, test, orphans)
    dirs = [d for d in (o.normal_test_dir, *(o.abnormal_dir or [])) if d]
    return CategoryData(name, NAME, os.path.dirname(os.path.abspath(o.normal_dir)), train,
                        test=test, test_dirs=dirs, record=record)

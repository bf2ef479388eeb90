"""Plain folders, as users keep their own images (no tree to rebuild):

    --normal_dir DIR                 normal training images
    --abnormal_dir DIR [DIR ...]     anomalous test images; each folder is a defect type, named
                                     after the folder, or TYPE=DIR to name it (folders that
                                     all share a name such as Imgs)
    --normal_test_dir DIR            normal test images, or instead
    --normal_split F                 hold a seeded share F of --normal_dir out for testing
    --mask_dir DIR                   optional masks, matched by file stem with or without a
                                     '_mask' suffix, in sub-folders named by type or flat;
                                     masks BESIDE the images are found without it
                                     (``orthoad_runtime.mask_pairs``)
    --category NAME                  names the model

The same shape sets thresholds on labelled calibration images (``--calibration_normal_dir``,
``--calibration_abnormal_dir``, ``--calibration_mask_dir``).
"""
import logging
import os
import re

import numpy as np

from utils import UserError

from orthoad_runtime.mask_pairs import split_masks
from .mvtec import match_masks
from .samples import CategoryData, Sample, check_unique, list_images, stem, warn_masks

logger = logging.getLogger(__name__)

NAME = "folder"
TREE = ("--normal_dir DIR [--abnormal_dir DIR ...] [--normal_test_dir DIR | --normal_split F] "
        "[--mask_dir DIR]")
MASK_SUFFIXES = ("_mask", "")
_TYPE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _folder(flag, path):
    if not path or not os.path.isdir(path):
        raise UserError(f"{flag} '{path}' is not a folder: give a folder of images")
    return path


def _subfolders_with_images(folder):
    return [e.name for e in sorted(os.scandir(folder), key=lambda e: e.name)
            if e.is_dir() and list_images(e.path)]


def folder_images(flag, folder, normal):
    """The images of one plain folder, masks beside them told apart (``orthoad_runtime.mask_pairs``).

    Returns:
        (images, {image: mask beside it}); masks beside normal images are left out (logged).

    Raises:
        UserError: no image in the folder (naming its sub-folders that hold some: sub-folders
            are not searched).
    """
    images, beside = split_masks(list_images(_folder(flag, folder)))
    if not images:
        subs = _subfolders_with_images(folder)
        if subs:
            example = os.path.join(folder, subs[0])
            how = (f"give {flag} {example}" if normal or len(subs) == 1 else
                   f"give each as a type: {flag} " + " ".join(
                       f"{s}={os.path.join(folder, s)}" for s in subs[:3]) +
                   (" ..." if len(subs) > 3 else ""))
            raise UserError(f"{flag} '{folder}' holds no images, but its sub-folder(s) "
                            f"{', '.join(subs[:5])}{' ...' if len(subs) > 5 else ''} do: "
                            f"sub-folders are not searched; {how}")
    if beside:
        if normal:
            logger.info("%d masks beside the normal images in '%s' ignored (a file that pairs "
                        "with an image by name is a mask, never an image)", len(beside), folder)
            return images, {}
        logger.info("%d masks found beside the images in '%s' (a file that pairs with an image "
                    "by name is its mask)", len(beside), folder)
    return images, beside


def parse_types(entries, flag="--abnormal_dir"):
    """``--abnormal_dir`` entries (``PATH`` or ``TYPE=PATH``) -> [(type, folder)]; a plain PATH
    is named after its folder."""
    out, seen = [], {}
    for entry in entries:
        kind, path = None, entry
        name, sep, rest = entry.partition("=")
        if sep and _TYPE_NAME.match(name) and not os.path.isdir(entry):
            kind, path = name, rest
        _folder(flag, path)
        named = kind is not None
        kind = kind or os.path.basename(os.path.normpath(os.path.abspath(path)))
        if kind in seen:
            old, old_named = seen[kind]
            how = "give another TYPE" if named and old_named else \
                f"name each defect type: {flag} TYPE1=PATH1 TYPE2=PATH2 ..."
            raise UserError(f"{flag} '{path}' and '{old}' are both of type '{kind}' (a plain "
                            f"folder is named after itself): {how}")
        if kind == "good":
            raise UserError(f"{flag} '{entry}' is of type 'good', the name of normal images: "
                            f"name it after its defect type ({flag} TYPE=PATH)")
        seen[kind] = (path, named)
        out.append((kind, path))
    return out


def labelled(normal_dirs, abnormal_dirs, mask_dir, split="test", flags=("--normal_test_dir",
                                                                          "--abnormal_dir",
                                                                          "--mask_dir")):
    """Labelled samples of plain folders (normal and per-type anomalous), masks beside the
    images (``folder_images``) or in ``mask_dir`` matched by stem.

    Returns:
        (samples, masks without an image).
    """
    samples = []
    for d in normal_dirs:
        samples += [Sample(p, 0, "good", split=split)
                    for p in folder_images(flags[0], d, normal=True)[0]]
    types = parse_types(abnormal_dirs, flags[1])
    image_dirs = {os.path.realpath(d) for _, d in types} | \
        {os.path.realpath(d) for d in normal_dirs}
    if mask_dir is not None:
        _folder(flags[2], mask_dir)
        if os.path.realpath(mask_dir) in image_dirs:   # the masks lie beside the images
            mask_dir = None
    flat = {stem(m): m for m in list_images(mask_dir)} if mask_dir else {}
    claimed, orphans = {}, []
    for kind, d in types:
        images, beside = folder_images(flags[1], d, normal=False)
        by_type, left = match_masks(images, os.path.join(mask_dir, kind), MASK_SUFFIXES) \
            if mask_dir else ({}, [])
        orphans += left
        for p in images:
            mask = by_type.get(p) or beside.get(p)
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
    train = folder_images("--normal_dir", o.normal_dir, normal=True)[0]
    record = {"normal_dir": os.path.abspath(o.normal_dir),
              "abnormal_dir": [os.path.abspath(d) for _, d in parse_types(o.abnormal_dir or [])],
              "abnormal_types": [kind for kind, _ in parse_types(o.abnormal_dir or [])],
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
    dirs = [d for d in (o.normal_test_dir, *(d for _, d in parse_types(o.abnormal_dir or [])))
            if d]
    return CategoryData(name, NAME, os.path.dirname(os.path.abspath(o.normal_dir)), train,
                        test=test, test_dirs=dirs, record=record)

"""MVTec LOCO AD:

    ROOT/<category>/train/good/*.png
    ROOT/<category>/validation/good/*.png              sets the threshold (normal images only)
    ROOT/<category>/test/good/, logical_anomalies/, structural_anomalies/
    ROOT/<category>/ground_truth/<type>/<stem>/000.png, 001.png ...   one file per defect
    ROOT/<category>/defects_config.json

Every ground-truth file marks one defect with one pixel value; ``defects_config.json`` gives, per
pixel value, the defect's name and its saturation threshold (an absolute pixel count, or with
``relative_saturation`` a share of the defect's area), which the sPRO metric uses
(``pipeline.loco``). Pixel AUROC and AU-PRO use the union of an image's files.
"""
import json
import logging
import os

from utils import UserError

from .samples import (MASK_NONZERO, CategoryData, Sample, check_unique, is_image, list_images,
                      warn_masks)

logger = logging.getLogger(__name__)

NAME = "mvtec_loco"
TREE = ("ROOT/<category>/train/good/, validation/good/, test/{good,logical_anomalies,"
        "structural_anomalies}/, ground_truth/<type>/<stem>/000.png ..., defects_config.json")
CONFIG = "defects_config.json"
TYPES = ("logical_anomalies", "structural_anomalies")


def is_category(folder):
    return os.path.isdir(os.path.join(folder, "train", "good")) and (
        os.path.isfile(os.path.join(folder, CONFIG)) or
        any(os.path.isdir(os.path.join(folder, "test", t)) for t in TYPES))


def categories(root):
    return sorted(d for d in os.listdir(root) if is_category(os.path.join(root, d)))


def read_defects_config(path):
    """defects_config.json -> {pixel value: {name, saturation_threshold, relative_saturation}},
    checked as MVTec's evaluation code checks it."""
    fix = "restore the category's defects_config.json from MVTec LOCO AD"
    try:
        with open(path, encoding="utf-8") as fh:
            entries = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read '{path}' ({type(exc).__name__}): {fix}") from None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"'{path}' is not a list of defect entries: {fix}")
    out = {}
    for i, e in enumerate(entries):
        problem = _entry_problem(e)
        if problem:
            raise UserError(f"'{path}' entry {i} {problem}: {fix}")
        if e["pixel_value"] in out:
            raise UserError(f"'{path}' gives pixel value {e['pixel_value']} twice: {fix}")
        out[e["pixel_value"]] = {"name": e["defect_name"],
                                 "saturation_threshold": e["saturation_threshold"],
                                 "relative_saturation": e["relative_saturation"]}
    return out


def _entry_problem(e):
    """What is wrong with one entry under the official parser's rules (MVTec's
    ``DefectConfig``): a relative threshold is a float in (0, 1], an absolute one an integer
    pixel count; None if nothing."""
    if not isinstance(e, dict) or not isinstance(e.get("defect_name"), str):
        return "has no defect_name"
    value = e.get("pixel_value")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        return "needs a pixel_value from 1 to 255"
    relative, t = e.get("relative_saturation"), e.get("saturation_threshold")
    if not isinstance(relative, bool):
        return "needs relative_saturation true or false"
    if relative and not (isinstance(t, float) and 0.0 < t <= 1.0):
        return ("has relative_saturation true, so its saturation_threshold must be a decimal "
                f"number in (0, 1] such as 1.0 (got {t!r})")
    if not relative and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
        return ("has relative_saturation false, so its saturation_threshold must be a whole "
                f"number of pixels of at least 1 (got {t!r})")
    return None


def read(root, name, options=None):
    folder = os.path.join(root, name)
    train = list_images(os.path.join(folder, "train", "good"))
    validation = list_images(os.path.join(folder, "validation", "good"))
    if not validation:
        logger.warning("%s: no validation/good images: the threshold falls back to a hold-out "
                       "of train/good", name)
    test_dir, gt_dir = os.path.join(folder, "test"), os.path.join(folder, "ground_truth")
    test, orphans = [], []
    for kind in sorted(os.listdir(test_dir)) if os.path.isdir(test_dir) else []:
        images = list_images(os.path.join(test_dir, kind))
        if kind == "good":
            test += [Sample(p, 0, "good") for p in images]
            continue
        stems = set()
        for p in images:
            s = os.path.splitext(os.path.basename(p))[0]
            stems.add(s)
            channels = tuple(list_images(os.path.join(gt_dir, kind, s)))
            test.append(Sample(p, 1, kind, channels, "test", MASK_NONZERO))
        kind_gt = os.path.join(gt_dir, kind)
        if os.path.isdir(kind_gt):
            orphans += [os.path.join(kind_gt, d) for d in sorted(os.listdir(kind_gt))
                        if d not in stems and not is_image(d)]
    defects = None
    config = os.path.join(folder, CONFIG)
    if os.path.isfile(config):
        defects = read_defects_config(config)
    else:
        logger.warning("%s: no %s: sPRO cannot be computed (pixel AUROC and AU-PRO can)", name,
                       CONFIG)
    check_unique(test, train, validation)
    warn_masks(name, test, orphans)
    return CategoryData(name, NAME, folder, train, validation, test, test_dirs=[test_dir],
                        defects=defects)

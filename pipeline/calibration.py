"""Thresholds a user can act on: set on a labelled calibration folder instead of held-out normal
images, by a stated target, and stored in the model with their rule.

* ``f1``: the image threshold of best F1 (``score > threshold`` is anomalous) over the
  calibration images; it needs defect images.
* ``fpr=F``: the lowest threshold that rejects at most a share F of the normal calibration
  images.

Where calibration images have masks, a pixel threshold (the map threshold of the predicted mask)
is set separately by the same target over their pixels and the normal images' pixels; otherwise
the pixel threshold is the image threshold. Test images are never used: a calibration folder
inside the category's test folder, or holding one of its test images, is refused.
"""
import logging
import os

import numpy as np

import metrics
from datasets.mvtec import MVTecCategory, scan_labelled
from utils import UserError

from .evaluate import score_samples

logger = logging.getLogger(__name__)


def parse_target(text):
    """'f1' -> ('f1', None); 'fpr=0.01' -> ('fpr', 0.01); else a UserError."""
    t = str(text).strip().lower()
    if t == "f1":
        return "f1", None
    if t.startswith("fpr="):
        try:
            f = float(t[4:])
        except ValueError:
            f = -1.0
        if 0.0 <= f < 1.0:
            return "fpr", f
    raise UserError(f"--threshold_target {text} is not valid: use f1 or fpr=F with 0 <= F < 1 "
                    "(e.g. fpr=0.01)")


def calibration_samples(cal_dir, category, n_categories, data_path):
    """The labelled samples of ``cal_dir`` for ``category`` (see the module docstring)."""
    if not os.path.isdir(cal_dir):
        raise UserError(f"--calibration_dir '{cal_dir}' is not a folder: give a folder with "
                        "good/ and defect folders")
    if os.path.isdir(os.path.join(cal_dir, "good")):
        if n_categories > 1:
            raise UserError(f"--calibration_dir '{cal_dir}' holds one set of images (good/) but "
                            f"{n_categories} categories are fitted: use DIR/<category>/good/ ...")
        root = cal_dir
    elif os.path.isdir(os.path.join(cal_dir, category)):
        root = os.path.join(cal_dir, category)
    else:
        root = cal_dir
    samples = scan_labelled(root, os.path.join(root, "ground_truth"), ("ground_truth",)) \
        if os.path.isdir(os.path.join(root, "good")) else []
    if not any(s.label == 0 for s in samples):
        raise UserError(f"calibration folder '{root}' has no good/ images: add "
                        f"{root}/good/*.png (normal images that are not test images)")
    test_dir = os.path.realpath(os.path.join(MVTecCategory(data_path, category).root, "test"))
    test_files = {os.path.realpath(os.path.join(d, f))
                  for d, _, files in os.walk(test_dir) for f in files}
    for s in samples:
        real = os.path.realpath(s.path)
        if real.startswith(test_dir + os.sep) or real in test_files:
            raise UserError(f"calibration image '{s.path}' is a test image of '{category}': "
                            "calibrate on other images, never on the test set")
    return samples


def calibrate(model, samples, target, batch_size, source):
    """Set ``model.meta['threshold']`` (and the display range) from calibration ``samples``.

    Args:
        target: ('f1', None) or ('fpr', F) (``parse_target``).
        source: the calibration folder, recorded in the model.

    Returns:
        the new threshold record.
    """
    kind, fpr = target
    labels, scores = [], []
    pre = model.preprocess
    pixels = metrics.PixelSet(len(samples) * pre.height * pre.width)
    n_masks = 0
    for sample, _, mask, _, _, amap, score in score_samples(model, samples, batch_size,
                                                            "calibrate"):
        labels.append(sample.label)
        scores.append(score)
        if sample.label == 0 or sample.mask_path:
            pixels.add(amap, mask)
            n_masks += sample.mask_path is not None
    labels, scores = np.array(labels), np.array(scores)
    n_defect = int(labels.sum())
    if kind == "f1":
        if n_defect == 0:
            raise UserError(f"--threshold_target f1 needs defect images in '{source}' (it holds "
                            "good/ only): add defect folders, or use --threshold_target fpr=0.01")
        image, _ = metrics.best_f1_threshold(labels, scores)
        rule = f"best F1 of score > threshold on the calibration images in {source}"
    else:
        image = metrics.fpr_threshold(scores[labels == 0], fpr)
        rule = (f"at most {fpr:g} of the normal calibration images in {source} score above "
                "the threshold")
    if n_masks:
        pixel = pixels.f1_threshold()[0] if kind == "f1" else pixels.fpr_threshold(fpr)
        pixel_rule = f"pixels of the {n_masks} masked and the normal calibration images, " + \
            ("best F1" if kind == "f1" else f"at most {fpr:g} of the normal pixels above it")
    else:
        pixel, pixel_rule = image, "no calibration masks: the image threshold"
    verdicts = metrics.confusion(labels, scores, image)
    old = model.meta.get("threshold") or {}
    record = {"image": image, "pixel": pixel, "rule": rule, "pixel_rule": pixel_rule,
              "source": "calibration", "target": kind if fpr is None else f"fpr={fpr:g}",
              "calibration": {"dir": os.path.abspath(source), "n_good": int((labels == 0).sum()),
                              "n_defect": n_defect, "n_masks": n_masks,
                              "on_calibration_images": verdicts},
              "holdout": {k: v for k, v in old.items() if k in ("image", "n_holdout", "rule",
                                                                  "holdout_scores",
                                                                  "holdout_files")}}
    model.meta["threshold"] = record
    disp = model.meta.get("display") or {}
    if disp.get("vmin") is not None:
        disp["vmax"] = disp["vmin"] + 2.0 * (max(image, pixel) - disp["vmin"])
    logger.info("calibrated on %d images (%d defective, %d masks): image threshold %.4g, pixel "
                "threshold %.4g (%s); on these images: precision %s, recall %s, FPR %s",
                len(samples), n_defect, n_masks, image, pixel, record["target"],
                _pct(verdicts["precision"]), _pct(verdicts["recall"]), _pct(verdicts["fpr"]))
    return record


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"

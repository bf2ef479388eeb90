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

Calibration images come as a labelled tree (``--calibration_dir``: good/, defect folders, masks
in ground_truth/<defect>/) or as plain folders in the shape of ``--data_format folder``
(``--calibration_normal_dir``, ``--calibration_abnormal_dir``, ``--calibration_mask_dir``).
"""
import logging
import os
from dataclasses import dataclass

import numpy as np

import metrics
from datasets import folder
from datasets.digest import DigestSets, digests, duplicates
from datasets.mvtec import scan_labelled
from datasets.samples import warn_masks
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


@dataclass
class CalibrationSource:
    """Where the labelled calibration images are: a tree, or plain folders."""
    dir: str = None
    normal_dir: str = None
    abnormal_dir: list = None
    mask_dir: str = None

    @property
    def folders(self):
        return bool(self.normal_dir or self.abnormal_dir or self.mask_dir)

    def __bool__(self):
        return bool(self.dir) or self.folders

    def describe(self):
        return self.dir or self.normal_dir or (self.abnormal_dir or [""])[0]


def calibration_source(args):
    """The calibration flags of a script, checked (an empty source if none is given)."""
    src = CalibrationSource(getattr(args, "calibration_dir", None),
                            getattr(args, "calibration_normal_dir", None),
                            getattr(args, "calibration_abnormal_dir", None),
                            getattr(args, "calibration_mask_dir", None))
    if src.dir and src.folders:
        raise UserError("--calibration_dir and --calibration_normal_dir / "
                        "--calibration_abnormal_dir / --calibration_mask_dir both give "
                        "calibration images: use the tree or the plain folders")
    if src.folders and not src.normal_dir:
        raise UserError("calibration in plain folders needs --calibration_normal_dir (normal "
                        "images that are not test images)")
    return src


def calibration_samples(source, category, n_categories, data):
    """The labelled samples of ``source`` (``CalibrationSource``) for ``category``, refused if
    any is a test image of ``data`` (``datasets.samples.CategoryData``)."""
    if source.folders:
        if n_categories > 1:
            raise UserError(f"plain calibration folders hold one category's images but "
                            f"{n_categories} categories are fitted: calibrate each with "
                            "calibrate.py, or use --calibration_dir DIR/<category>/...")
        samples, orphans = folder.labelled(
            [source.normal_dir], source.abnormal_dir or [], source.mask_dir, "calibration",
            ("--calibration_normal_dir", "--calibration_abnormal_dir", "--calibration_mask_dir"))
        root = source.normal_dir
    else:
        cal_dir = source.dir
        if not os.path.isdir(cal_dir):
            raise UserError(f"--calibration_dir '{cal_dir}' is not a folder: give a folder with "
                            "good/ and defect folders")
        if os.path.isdir(os.path.join(cal_dir, "good")):
            if n_categories > 1:
                raise UserError(f"--calibration_dir '{cal_dir}' holds one set of images (good/) "
                                f"but {n_categories} categories are fitted: use "
                                "DIR/<category>/good/ ...")
            root = cal_dir
        elif os.path.isdir(os.path.join(cal_dir, category)):
            root = os.path.join(cal_dir, category)
        else:
            root = cal_dir
        samples, orphans = scan_labelled(root, os.path.join(root, "ground_truth"),
                                         ("ground_truth",), "calibration") \
            if os.path.isdir(os.path.join(root, "good")) else ([], [])
    if not any(s.label == 0 for s in samples):
        raise UserError(f"calibration folder '{root}' has no good/ images: add "
                        f"{os.path.join(root, 'good')}/*.png (normal images that are not test "
                        "images)" if not source.folders else
                        f"--calibration_normal_dir '{root}' holds no images: add normal images "
                        "that are not test images")
    warn_masks(f"{category} (calibration)", samples, orphans)
    test_dirs = [os.path.realpath(d) for d in data.test_dirs]
    test_files = data.test_files()
    for s in samples:
        real = os.path.realpath(s.path)
        if real in test_files or any(real.startswith(d + os.sep) for d in test_dirs):
            raise UserError(f"calibration image '{s.path}' is a test image of '{category}': "
                            "calibrate on other images, never on the test set")
    same = duplicates([s.path for s in samples], sorted(test_files))
    if same:
        raise UserError(f"calibration image '{same[0][0]}' has the content of test image "
                        f"'{same[0][1]}' of '{category}': calibrate on other images, never on "
                        "the test set")
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
    labels, scores, peaks = [], [], []
    pre = model.preprocess
    pixels = metrics.PixelSet(len(samples) * pre.height * pre.width)
    n_masks = 0
    for sample, item, amap, score in score_samples(model, samples, batch_size, "calibrate"):
        labels.append(sample.label)
        scores.append(score)
        peaks.append(float(np.nanmax(amap)))
        if sample.label == 0 or sample.has_mask:
            pixels.add(amap, item.mask)
            n_masks += sample.has_mask
    labels, scores, peaks = np.array(labels), np.array(scores), np.array(peaks)
    n_defect = int(labels.sum())
    if kind == "f1":
        if n_defect == 0:
            raise UserError(f"--threshold_target f1 needs defect images in '{source}' (it holds "
                            "good/ only): add defect folders, or use --threshold_target fpr=0.01")
        rule = f"best F1 of score > threshold on the calibration images in {source}"
    else:
        n_good = int((labels == 0).sum())
        if n_good * fpr < 1:
            logger.warning("--threshold_target fpr=%g on %d normal calibration images: one "
                           "image is already %.3g of them, so the threshold cannot resolve the "
                           "target (it rejects none of them); give at least %d normal images",
                           fpr, n_good, 1.0 / n_good, int(np.ceil(1.0 / fpr)))
        rule = (f"at most {fpr:g} of the normal calibration images in {source} score above "
                "the threshold")
    image = _image_threshold(labels, scores, kind, fpr)
    if n_masks:
        pixel = pixels.f1_threshold()[0] if kind == "f1" else pixels.fpr_threshold(fpr)
        pixel_rule = f"pixels of the {n_masks} masked and the normal calibration images, " + \
            ("best F1" if kind == "f1" else f"at most {fpr:g} of the normal pixels above it")
    elif model.detector.score_from_map:
        pixel, pixel_rule = image, "no calibration masks: the image threshold"
    else:                                  # PatchCore: the image score is not the map's peak
        pixel = _image_threshold(labels, peaks, kind, fpr)
        pixel_rule = "no calibration masks: the image rule on the maps' maxima"
    verdicts = metrics.confusion(labels, scores, image)
    old = model.meta.get("threshold") or {}
    # the hold-out (or validation) record behind the model; a calibrated model keeps it
    base = (old.get("holdout") or {}) if old.get("source") == "calibration" else old
    record = {"image": image, "pixel": pixel, "rule": rule, "pixel_rule": pixel_rule,
              "source": "calibration", "target": kind if fpr is None else f"fpr={fpr:g}",
              "calibration": {"dir": os.path.abspath(source), "n_good": int((labels == 0).sum()),
                              "n_defect": n_defect, "n_masks": n_masks,
                              "on_calibration_images": verdicts},
              "holdout": {k: v for k, v in base.items() if k in ("image", "n_holdout", "rule",
                                                                   "source", "holdout_scores",
                                                                   "holdout_files")}}
    model.meta["threshold"] = record
    sets = DigestSets(model.meta.get("digests"))
    sets.replace("calibration", digests([s.path for s in samples]))
    model.meta["digests"] = sets.record()
    disp = model.meta.get("display") or {}
    if disp.get("vmin") is not None:
        disp["vmax"] = disp["vmin"] + 2.0 * (max(image, pixel) - disp["vmin"])
    logger.info("calibrated on %d images (%d defective, %d masks): image threshold %.4g, pixel "
                "threshold %.4g (%s); on these images: precision %s, recall %s, FPR %s",
                len(samples), n_defect, n_masks, image, pixel, record["target"],
                _pct(verdicts["precision"]), _pct(verdicts["recall"]), _pct(verdicts["fpr"]))
    return record


def _image_threshold(labels, scores, kind, fpr):
    """Best F1, or the fpr=F rule on the normal images' ``scores``."""
    if kind == "f1":
        return metrics.best_f1_threshold(labels, scores)[0]
    return metrics.fpr_threshold(scores[labels == 0], fpr)


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"

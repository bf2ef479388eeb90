"""Incremental update: fold new normal images into a fitted model, exactly.

The statistics are sums over images, so a model fitted with ``--save_sums`` (its float64 sums
stored, upper triangle: 4096 * k(k+1)/2 * 8 bytes at 256 px, 1.48 GB at k = 300) takes new
images without a refit: the sums grow, the precision is derived again, and the result equals a
fit on the old and new images together (a test checks it).

The threshold is learned again the same way as at fit time: a share of the NEW images is held
out, scored under the Gaussian of all the other images, and the rule is applied to their scores
together with the scores of the model's earlier held-out images (scored, at their time, under
the Gaussian without them). A calibrated threshold is replaced by this rule, with a warning:
calibrate again after an update.
"""
import logging
import os
import time

import paddle

from datasets.digest import DigestSets, digests
from orthoad_runtime.transforms import image_size
from models import linalg
from models.device_gaussian import DeviceGaussian
from models.gaussian import PatchGaussian, pack_state, unpack_state
from utils import UserError

from .fit import (HOLDOUT_BYTES, MAX_HOLDOUT, THRESHOLD_RULE, VALIDATION_RULE, embed_files,
                  embed_holdout, holdout_record, score_files, score_holdout, split_holdout,
                  threshold_rule)
from .geometry import batch_for
from .graphs import embedder
from .model import Model

logger = logging.getLogger(__name__)


def _check_sizes(model, files):
    sizes = model.meta.get("image_sizes")
    lo, hi = (model.meta.get("geometry") or {}).get("aspect_range") or (None, None)
    for f in files:
        h, w = image_size(f)
        ok = [h, w] in sizes if sizes is not None else \
            (lo is None or lo / 1.1 <= w / h <= hi * 1.1)
        if not ok:
            known = ", ".join(f"{b}x{a}" for a, b in sizes[:4]) if sizes else \
                f"aspect ratios {lo:.2f}-{hi:.2f}"
            raise UserError(f"'{f}' is {w}x{h}, not a size of the model's training images "
                            f"({known}): update with images of the same camera and setup, or "
                            "fit a new model")


def new_images(model, data):
    """(the training images of ``data`` not yet in ``model``'s statistics, their digests),
    each image once, by content (``datasets.digest``).

    Raises:
        UserError: an image is one of the model's test, validation or calibration images, or
            a test image of ``data``: those never reach the statistics.
    """
    sets = DigestSets(model.meta.get("digests"))
    files = data.require_train(minimum=1)
    found = digests(files)
    guarded = [(name, sets.sets[name]) for name in ("test", "validation", "calibration")]
    guarded.append(("current test", set(digests(
        [s.path for s in data.test] + [p for ps in data.unlabelled.values() for p in ps]))))
    for f, d in zip(files, found):
        for name, values in guarded:
            if d in values:
                what = "a test image of the data given" if name == "current test" else \
                    f"one of the model's {name} images"
                raise UserError(f"'{f}' is {what} (by content): it never goes into the "
                                "statistics; update with other normal images")
    if not sets.complete:
        logger.warning("%s: the model records no image digests (fitted by an earlier version): "
                       "images already in it cannot be recognised and would count twice; fit it "
                       "again to record them", data.name)
    fresh, seen = [], set(sets.sets["statistics"])
    for f, d in zip(files, found):
        if d not in seen:
            fresh.append((f, d))
            seen.add(d)
    if len(fresh) < len(files):
        logger.info("%s: %d of the %d images are already in the model's statistics (or given "
                    "twice): skipped", data.name, len(files) - len(fresh), len(files))
    return [f for f, _ in fresh], [d for _, d in fresh]


def update_category(model, data, batch_size=16, holdout=0.1, seed=0, engine="auto",
                    stats="auto", cache_dir=None):
    """Fold the normal training images of ``data`` (``datasets.samples.CategoryData``) that
    are not in ``model`` yet (``new_images``) into it (a ``pipeline.model.Model`` fitted with
    --save_sums); return the updated Model (not yet saved), or None if no image is new. Where
    ``data`` has validation images, the threshold is set on them again under the updated
    statistics."""
    start = time.perf_counter()
    meta, arrays = dict(model.meta), dict(model.arrays)
    if "sums_s2_upper" not in arrays:
        raise UserError(f"model '{model.path}' was fitted without its sums, so it cannot take "
                        "new images: fit it again with train.py --save_sums (or fit on all the "
                        "images)")
    category = data.name
    files, new_digests = new_images(model, data)
    if not files:
        logger.info("%s: no new image: the model is unchanged", category)
        return None
    _check_sizes(model, files)
    detector, pre = model.detector, model.preprocess
    on_device = stats == "device" or (stats == "auto" and
                                      paddle.device.get_device().startswith("gpu"))
    gaussian = DeviceGaussian if on_device else PatchGaussian
    gauss = gaussian(eps=meta["eps"], members=detector.members if detector.cell_size > 1
                     else None)
    gauss.load_state(unpack_state(arrays, meta["sums"]["n_images"]))
    batch = batch_for(batch_size, pre.input_hw)
    max_hold = max(1, min(MAX_HOLDOUT, HOLDOUT_BYTES // (detector.n_positions * meta["k"] * 4)))
    fit_files, hold_files = split_holdout(files, 0.0 if data.validation else holdout, seed,
                                          max_hold)
    int8 = meta["int8"] if meta.get("precision") == "int8" else None
    embed, used = embedder(engine, detector, cache_dir, linalg.n_threads(), int8)
    for y in embed_files(embed, fit_files, pre, batch, f"update {category}"):
        gauss.partial_fit(y)
    old = meta.get("threshold") or {}
    # a calibration keeps the hold-out record it replaced under "holdout"
    prior = (old.get("holdout") or {}) if old.get("source") == "calibration" else old
    scores, vmin = list(prior.get("holdout_scores") or []), \
        (meta.get("display") or {}).get("vmin")
    if hold_files:
        held = embed_holdout(embed, hold_files, pre, batch, category)
        new_scores, new_vmin, _ = score_holdout(detector, gauss, held, batch, model.ignore)
        scores += [float(v) for v in new_scores]
        vmin = new_vmin if vmin is None else min(vmin, new_vmin)
        gauss.partial_fit(held)
        del held
    if old.get("source") == "calibration":
        logger.warning("%s: the calibrated thresholds no longer fit the updated statistics; the "
                       "hold-out rule replaces them: run calibrate.py again", category)
    if data.validation:
        v_scores, v_min, _ = score_files(embed, detector, gauss, data.validation, pre, batch,
                                         f"validation {category}", model.ignore)
        meta["threshold"], meta["display"] = holdout_record(v_scores, data.validation, v_min,
                                                            VALIDATION_RULE, "validation")
    else:
        threshold = threshold_rule(scores) if scores else None
        meta["threshold"] = {"image": threshold, "pixel": threshold,
                             "n_holdout": len(scores), "rule": THRESHOLD_RULE + " (the model's "
                             "earlier held-out images and those held out of each update)",
                             "source": "holdout", "holdout_scores": scores,
                             "holdout_files": list(prior.get("holdout_files") or []) +
                             [os.path.basename(f) for f in hold_files]}
        meta["display"] = {"vmin": vmin, "vmax": None if threshold is None or vmin is None else
                           vmin + 2.0 * (threshold - vmin)}
    gauss.finalize()
    threshold = meta["threshold"]["image"]
    meta["n_train"] = int(meta["n_train"]) + len(files)
    meta["sums"] = dict(meta["sums"], n_images=gauss.n_samples_seen_)
    sets = DigestSets(meta.get("digests"))
    sets.add("statistics", new_digests)
    meta["digests"] = sets.record()
    meta.setdefault("updates", []).append({
        "data_path": os.path.abspath(data.root), "layout": data.layout, "n_images": len(files),
        "n_holdout": len(hold_files), "engine": used,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.perf_counter() - start, 3)})
    arrays.update({"mean": gauss.mean_, "precision": gauss.precision_})
    arrays.update(pack_state(gauss.state()))
    logger.info("%s: %d new normal images folded in (%d held out for the threshold); the "
                "model now holds %d images, threshold %s", category, len(files), len(hold_files),
                gauss.n_samples_seen_, "n/a" if threshold is None else f"{threshold:.4g}")
    return Model(meta, arrays, model.backbone, model.path)

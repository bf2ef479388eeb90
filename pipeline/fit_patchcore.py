"""Fitting one category with PatchCore: the patch features of its normal training images, the
greedy coreset that becomes the memory bank, the threshold.

The features of every fitted image are streamed into one [n_images * h * w, D] float32 array
(the images themselves are decoded batch by batch and dropped); the coreset is selected on
their 128-dimensional random projection (``models.coreset``) and the bank keeps the selected
features at full dimension. Normal images held out (``FitConfig.holdout``) are scored against
that bank: the image threshold is ``threshold_rule`` of their image scores, the pixel threshold
the same rule on their maps' maxima (PatchCore's image score is not the map's peak). Held-out
images are not added to the bank afterwards (that would need a second selection); layouts with
validation images (MVTec AD 2, LOCO) fit every training image and set the thresholds on the
validation images. No test image is ever looked at.
"""
import logging
import os
import time

import numpy as np

from models import coreset, linalg
from models.patchcore import PatchCore
from orthoad_runtime.ignore import load_ignore_mask
from utils import UserError, library_versions, progress

from .geometry import batch_for, choose
from .graphs import embedder
from .fit import (MAX_HOLDOUT, THRESHOLD_RULE, VALIDATION_RULE, _image_sizes, embed_files,
                  holdout_record, image_digests, split_holdout, warn_few)
from .model import Model
from .scoring import predict_batches

logger = logging.getLogger(__name__)

MEMORY_SHARE = 0.8        # the features may take this share of the machine's memory


def fit_patchcore(data, cfg, backbone, cache_dir, group=None):
    """Fit one category (``datasets.samples.CategoryData``) with PatchCore; the features come
    from ``cfg.engine`` (graphs cached in ``cache_dir``).

    Returns:
        ``pipeline.model.Model`` (not yet saved) with the bank and a meta that records the
        configuration, the coreset, the threshold and how long each part took.
    """
    if group is not None and group.world > 1:
        raise UserError("PatchCore fits each category in one process (its coreset needs every "
                        "feature at once): launch with --shard categories, or without "
                        "paddle.distributed.launch")
    start = time.perf_counter()
    category = data.name
    files = data.require_train()
    validation = list(data.validation)
    preprocess, geometry = choose(files, cfg.input_size, cfg.resize, cfg.crop_size)
    ignore = load_ignore_mask(cfg.ignore_mask, preprocess) if cfg.ignore_mask else None
    detector = PatchCore(backbone, preprocess.input_hw, cfg.patchcore_dim)
    batch = batch_for(cfg.batch_size, preprocess.input_hw)
    fit_files, hold_files = split_holdout(files, 0.0 if validation else cfg.holdout, cfg.seed,
                                          MAX_HOLDOUT)
    n_patches = len(fit_files) * detector.n_positions
    _check_memory(n_patches, detector.k, category)
    logger.info("%s: PatchCore on a %dx%d patch grid, D=%d: %d patches of %d images (%.2f GB "
                "of features), coreset of %g %%", category, *detector.grid_hw, detector.k,
                n_patches, len(fit_files), n_patches * detector.k * 4 / 1e9,
                100 * cfg.coreset_ratio)
    embed, engine = embedder(cfg.engine, detector, cache_dir, linalg.n_threads())
    t = time.perf_counter()
    features = np.empty((n_patches, detector.k), dtype=np.float32)
    filled = 0
    for y in embed_files(embed, fit_files, preprocess, batch, f"features {category}"):
        y = np.asarray(y.numpy() if hasattr(y, "numpy") else y, dtype=np.float32)
        features[filled:filled + y.shape[0] * y.shape[1]] = y.reshape(-1, detector.k)
        filled += y.shape[0] * y.shape[1]
    feature_s = time.perf_counter() - t
    picks, coreset_s = _select(features, cfg, detector.neighbours, category)
    bank = features[picks]                                     # a copy: the features go
    del features
    detector.set_bank(bank)
    meta = {
        "method": "patchcore", "arch": cfg.arch, "k": detector.k, "seed": cfg.seed,
        "patchcore": {"dim": cfg.patchcore_dim, "coreset_ratio": cfg.coreset_ratio,
                      "neighbours": detector.neighbours,
                      "projection_dim": coreset.PROJECTION_DIM, "n_patches": n_patches,
                      "bank_size": int(len(bank)), "feature_seconds": round(feature_s, 3),
                      "coreset_seconds": round(coreset_s, 3)},
        "resize": preprocess.resize, "crop_size": preprocess.config()["crop_size"],
        "input_size": list(preprocess.input_hw),
        "geometry": dict(preprocess.config(), **geometry),
        "grid": list(detector.grid_hw), "category": category,
        "data_path": data.record.get("data_path") or os.path.abspath(data.root),
        "data": data.record, "digests": image_digests(data, hold_files),
        "n_train": len(files), "weights_source": backbone.weights_source,
        "weights_sha256": backbone.weights_sha256, "image_sizes": _image_sizes(files),
        "ignore_mask": None if ignore is None else {
            "source": os.path.abspath(cfg.ignore_mask), "ignored_fraction": float(ignore.mean())},
        "versions": library_versions(), "cpu_threads": linalg.n_threads(), "engine": engine,
        "ranks": 1, "request": cfg.request(), "precision": "fp32",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    arrays = {"bank": bank}
    if ignore is not None:
        arrays["ignore"] = ignore.astype(np.uint8)
    model = Model(meta, arrays, backbone)
    model._detector = detector
    model.use_engine(cfg.engine, cache_dir, linalg.n_threads())
    scored = validation or hold_files
    scores, peaks, vmin = _score_normal(model, scored, batch,
                                        f"{'validation' if validation else 'hold-out'} "
                                        f"{category}")
    meta["threshold"], meta["display"] = holdout_record(
        scores, scored, vmin, VALIDATION_RULE if validation else THRESHOLD_RULE,
        "validation" if validation else "holdout", peaks)
    warn_few(category, len(scores), "validation" if validation else "held-out")
    elapsed = time.perf_counter() - start
    meta["fit_seconds"] = round(elapsed, 3)
    logger.info("%s: fitted on %d images (%s) in %.1f s: features %.1f s, coreset of %d from "
                "%d patches %.1f s (embeddings by %s)", category, len(files),
                f"thresholds from {len(validation)} validation images" if validation else
                f"{len(hold_files)} held out for the thresholds, not in the bank", elapsed,
                feature_s, len(bank), n_patches, coreset_s, engine)
    return model


def _check_memory(n_patches, dim, category):
    """UserError if the features cannot be held at once (the coreset needs them all)."""
    need = n_patches * dim * 4
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > MEMORY_SHARE * total:
        raise UserError(f"{category}: PatchCore's {n_patches} training patches need "
                        f"{need / 1e9:.1f} GB of features for the coreset selection, more than "
                        f"{MEMORY_SHARE:.0%} of this machine's {total / 1e9:.1f} GB: fit on fewer "
                        "images, a smaller --input_size or a smaller --patchcore_dim")


def _select(features, cfg, neighbours, category):
    """The coreset's indices (at least ``neighbours``), with a progress bar and a log line."""
    n = max(neighbours, int(round(cfg.coreset_ratio * len(features))))
    n = min(n, len(features))
    bar = progress(n, f"coreset {category}", unit="pick")
    done = [1]

    def advance(count):
        bar.update(count - done[0])
        done[0] = count
    try:
        picks, seconds = coreset.select(features, n, cfg.seed, log=advance)
    finally:
        bar.close()
    logger.info("%s: coreset of %d of %d patches selected in %.1f s (%.0f picks/s)", category,
                len(picks), len(features), seconds, len(picks) / max(seconds, 1e-9))
    return picks, seconds


def _score_normal(model, files, batch, desc):
    """(image scores, maps' maxima, smallest map value) of normal ``files`` under the model."""
    if not files:
        return np.zeros(0), np.zeros(0), None
    pre = model.preprocess
    scores, peaks, vmin = [], [], np.inf
    for _, maps, s in predict_batches(model, files, lambda f: pre.load(f)[0], batch, desc,
                                      image=lambda loaded: loaded):
        scores.append(s)
        peaks.append(np.nanmax(maps.reshape(len(maps), -1), axis=1))
        vmin = min(vmin, float(np.nanmin(maps)))
    return np.concatenate(scores), np.concatenate(peaks), vmin

"""Fitting one category: embeddings of its normal training images, the streaming Gaussian, the
threshold.

Normal images held out (``FitConfig.holdout``) are scored by the model fitted on the others; the
threshold is ``threshold_rule`` of their image scores, and the display range runs from their
smallest map value to twice the threshold's distance above it. They are then added to the
statistics. Layouts with normal validation images (MVTec AD 2, MVTec LOCO) fit every training
image and set the threshold by the same rule on the validation images instead, which never
enter the statistics. No test image is ever looked at.
"""
import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import paddle

from datasets.digest import DigestSets, digests
from orthoad_runtime.prefetch import prefetch_batches
from orthoad_runtime.transforms import image_size
from models import linalg
from models.device_gaussian import DeviceGaussian
from models.gaussian import PatchGaussian, cell_shape, pack_state
from models.orthoad import OrthoAD
from models.projection import make_projection
from orthoad_runtime.ignore import apply_ignore, load_ignore_mask
from utils import UserError, library_versions, progress

from .distributed import Group
from .geometry import batch_for, choose, choose_cell, stats_bytes
from .graphs import embedder
from .int8 import Fp32Reference, calibrate_int8, check_images, check_int8, compare_scores
from .model import Model

logger = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """How to fit. ``input_size``: 'auto' or (H, W); ``resize`` / ``crop_size``: the classic
    geometry's flags or None; ``cell``: 'auto' or the side of the blocks of positions that share
    a Gaussian (see ``pipeline.geometry``)."""
    method: str = "ortho"
    arch: str = "resnet18"
    k: int = 100
    seed: int = 0
    resize: int = None
    crop_size: int = None
    batch_size: int = 16
    eps: float = 0.01
    holdout: float = 0.1
    input_size: object = "auto"
    cell: object = "auto"
    engine: str = "auto"
    stats: str = "auto"
    ignore_mask: str = None
    save_sums: bool = False
    precision: str = "fp32"
    calibration_images: int = None
    int8_max_change: float = 0.1
    coreset_ratio: float = 0.1
    patchcore_dim: int = 1024

    @classmethod
    def from_args(cls, args):
        """The fit configuration of train.py's flags (the one place it is built)."""
        from .geometry import parse_cell, parse_input_size
        return cls(method=args.method, arch=args.arch, k=args.k, seed=args.seed,
                   resize=args.resize, crop_size=args.crop_size, batch_size=args.batch_size,
                   eps=args.eps, holdout=args.holdout,
                   input_size=parse_input_size(args.input_size), cell=parse_cell(args.cell),
                   engine=args.engine, stats=args.stats_device, ignore_mask=args.ignore_mask,
                   save_sums=args.save_sums, precision=args.precision,
                   calibration_images=args.calibration_images,
                   int8_max_change=args.int8_max_change, coreset_ratio=args.coreset_ratio,
                   patchcore_dim=args.patchcore_dim)

    def request(self):
        """What the user asked for that decides the model (stored in it; compared before a
        fit replaces a model)."""
        cell = self.cell if self.cell == "auto" or isinstance(self.cell, int) else \
            list(self.cell)
        size = self.input_size if self.input_size == "auto" else list(self.input_size)
        if self.method == "patchcore":
            return {"seed": self.seed, "input_size": size, "resize": self.resize,
                    "crop_size": self.crop_size, "precision": self.precision,
                    "coreset_ratio": self.coreset_ratio, "patchcore_dim": self.patchcore_dim}
        return {"seed": self.seed, "eps": self.eps, "input_size": size, "resize": self.resize,
                "crop_size": self.crop_size, "cell": cell, "precision": self.precision}


def check_replacement(path, cfg, backbone):
    """UserError if ``path`` holds a model made differently (other input size, seed, weights,
    cells or ridge) than ``cfg`` would make: a fit must not replace it silently."""
    if not os.path.exists(path):
        return
    from modelfile import read_meta
    fix = "pass --overwrite to replace it, or another --save_path"
    try:
        meta = read_meta(path)
    except UserError as exc:
        raise UserError(f"'{path}' exists and cannot be read ({str(exc).split(': ')[0]}): {fix}")\
            from None
    old = dict(meta.get("request") or {"seed": meta.get("seed"), "eps": meta.get("eps")})
    new = cfg.request()
    diffs = [f"{key} {old[key]!r} -> {new[key]!r}" for key in new
             if key in old and old[key] != new[key]]
    if meta.get("weights_sha256") != backbone.weights_sha256:
        diffs.insert(0, f"backbone weights {meta.get('weights_source')} -> "
                        f"{backbone.weights_source}")
    if diffs:
        raise UserError(f"'{path}' holds a model made with other settings ({'; '.join(diffs)}): "
                        f"{fix}")


MAX_HOLDOUT = 32          # held-out embeddings stay in memory until they join the sums: keep
HOLDOUT_BYTES = 2 << 30   # both their number and their bytes bounded

THRESHOLD_RULE = ("max(max(s), mean(s) + 3 * std(s)) of the image scores s of held-out normal "
                  "training images")
VALIDATION_RULE = ("max(max(s), mean(s) + 3 * std(s)) of the image scores s of the normal "
                   "validation images (validation/good), which are not in the statistics")


def split_holdout(files, fraction, seed, max_hold=MAX_HOLDOUT):
    """(files to fit, files held out for the threshold): a seeded draw of ``fraction`` of the
    files, at least 1 and at most ``max_hold``, leaving at least 2 to fit."""
    n_hold = 0 if fraction <= 0 else max(1, int(round(fraction * len(files))))
    n_hold = min(n_hold, max_hold, len(files) - 2)
    if n_hold <= 0:
        return files, []
    idx = np.random.default_rng(seed).permutation(len(files))
    hold = set(idx[:n_hold].tolist())
    return ([f for i, f in enumerate(files) if i not in hold],
            [f for i, f in enumerate(files) if i in hold])


def threshold_rule(scores):
    """Image (and pixel) threshold from the scores of held-out NORMAL images only."""
    s = np.asarray(scores, dtype=np.float64)
    spread = 3.0 * s.std(ddof=1) if len(s) > 1 else 0.1 * abs(s[0])
    return float(max(s.max(), s.mean() + spread))


def embed_files(embed, files, preprocess, batch_size, desc):
    """Yield projected embeddings [B, h*w, k] (ndarrays) of image files by ``embed`` (an
    engine's callable), loading ahead in threads."""
    bar = progress(len(files), desc)
    try:
        for batch in prefetch_batches(files, lambda f: preprocess.load(f)[0], batch_size):
            y = embed(np.stack(batch))
            bar.update(len(batch))
            yield y
    finally:
        bar.close()


def embed_holdout(embed, files, preprocess, batch_size, category):
    """Embeddings [J, h*w, k] of the held-out files (None without any), filled in place."""
    held, n_held = None, 0                        # filled in place: no list + concatenate copy
    for y in embed_files(embed, files, preprocess, batch_size, f"hold-out {category}"):
        if held is None:
            held = np.empty((len(files),) + tuple(y.shape[1:]), dtype=np.float32)
        held[n_held:n_held + y.shape[0]] = y.numpy() if isinstance(y, paddle.Tensor) else y
        n_held += y.shape[0]
    return held


def score_holdout(detector, gauss, held, batch_size, ignore=None):
    """Score held-out embeddings under the Gaussian of the images seen so far (Cholesky solves,
    no precision matrices), ignored pixels left out; return (image scores, smallest map value,
    seconds of statistics)."""
    t = time.perf_counter()
    dist = np.sqrt(np.maximum(gauss.squared_distances(held), 0.0)).astype(np.float32)
    stats_s = time.perf_counter() - t
    scores, vmin = [], np.inf
    with paddle.no_grad():
        for i in range(0, len(dist), batch_size):
            amap, _ = detector.head_scores(paddle.to_tensor(dist[i:i + batch_size])
                                           .reshape([-1, *detector.grid_hw]))
            maps, batch_scores = apply_ignore(amap.numpy()[:, 0], ignore)
            scores.append(batch_scores)
            vmin = min(vmin, float(np.nanmin(maps)))
    return np.concatenate(scores), vmin, stats_s


def holdout_record(scores, files, vmin, rule=THRESHOLD_RULE, source="holdout", peaks=None):
    """(threshold record, display range) from the image scores of normal images that were not
    in the statistics when scored (held out, or validation images). ``peaks``: their maps'
    maxima, when the image score is not the map's peak (PatchCore): the pixel threshold is the
    same rule on them (otherwise it is the image threshold)."""
    threshold = threshold_rule(scores) if len(scores) else None
    pixel = threshold_rule(peaks) if peaks is not None and len(peaks) else threshold
    display = {"vmin": vmin if len(scores) else None,
               "vmax": vmin + 2.0 * (pixel - vmin) if len(scores) else None}
    record = {"image": threshold, "pixel": pixel, "n_holdout": len(files), "rule": rule,
              "source": source, "holdout_scores": [float(v) for v in scores],
              "holdout_files": [os.path.basename(f) for f in files]}
    if peaks is not None:
        record["holdout_peaks"] = [float(v) for v in peaks]
    return record, display


FEW_SCORES = 5


def warn_few(category, n, kind):
    """A threshold from fewer than ``FEW_SCORES`` normal images is a rough guess: say so."""
    if 0 < n < FEW_SCORES:
        logger.warning("%s: the threshold comes from only %d %s image(s) (%s): a rough guess; "
                       "give more training images, a larger --holdout, or calibrate on labelled "
                       "images (--calibration_dir)", category, n, kind,
                       "with one image it is 1.1 x its score" if n == 1 else
                       "max(max(s), mean(s) + 3 * std(s))")


def score_files(embed, detector, gauss, files, preprocess, batch_size, desc, ignore=None):
    """Image scores of normal ``files`` under the Gaussian of the images seen so far, batch by
    batch (none is kept, none is added); return (scores, smallest map value, seconds of
    statistics)."""
    scores, vmin, stats_s = [], np.inf, 0.0
    for y in embed_files(embed, files, preprocess, batch_size, desc):
        s, v, t = score_holdout(detector, gauss, y, batch_size, ignore)
        scores.append(s)
        vmin, stats_s = min(vmin, v), stats_s + t
    return np.concatenate(scores) if scores else np.zeros(0), vmin, stats_s


def fit_category(data, cfg, backbone, cache_dir, group=None):
    """Fit one category (``datasets.samples.CategoryData``); the embeddings come from
    ``cfg.engine`` (graphs cached in ``cache_dir``).

    With a ``pipeline.distributed.Group`` of several ranks, each rank embeds its shard of the
    fitted images, rank 0 also the held-out ones; the sums (one common shift) are added over the
    ranks, and rank 0 alone scores the hold-out and finalises.

    Returns:
        ``pipeline.model.Model`` (not yet saved) whose meta records the configuration, the
        weights, the threshold and how long the fit took; None on ranks other than 0.
    """
    start = time.perf_counter()
    group = group or Group()
    category = data.name
    files = data.require_train()
    validation = list(data.validation)
    group.check_same("list of training images or fit flags",
                     {"files": [(os.path.basename(f), os.path.getsize(f)) for f in files],
                      "config": asdict(cfg)})
    preprocess, geometry = choose(files, cfg.input_size, cfg.resize, cfg.crop_size)
    ignore = load_ignore_mask(cfg.ignore_mask, preprocess) if cfg.ignore_mask else None
    w = make_projection(cfg.method, sum(backbone.channels), cfg.k, cfg.seed)
    grid_hw = (-(-preprocess.height // 4), -(-preprocess.width // 4))
    cell = choose_cell(grid_hw, cfg.k, cfg.cell)
    detector = OrthoAD(backbone, w, preprocess.input_hw, cell=cell)
    n_pos = detector.n_positions
    batch = batch_for(cfg.batch_size, preprocess.input_hw)
    max_hold = max(1, min(MAX_HOLDOUT, HOLDOUT_BYTES // (n_pos * cfg.k * 4)))
    fit_files, hold_files = split_holdout(files, 0.0 if validation else cfg.holdout, cfg.seed,
                                          max_hold)
    logger.info("%s: %dx%d patch grid, %s, %d Gaussians of k=%d (%.2f GB of statistics)",
                category, *detector.grid_hw,
                "one Gaussian per position" if detector.cell_size == 1 else
                "{}x{} cells".format(*cell_shape(cell)),
                detector.n_cells, cfg.k, stats_bytes(detector.n_cells, cfg.k) / 1e9)
    on_device = cfg.stats == "device" or (cfg.stats == "auto" and
                                          paddle.device.get_device().startswith("gpu"))
    gaussian = DeviceGaussian if on_device else PatchGaussian
    gauss = gaussian(eps=cfg.eps, members=detector.members if detector.cell_size > 1 else None)
    t = time.perf_counter()
    int8, checked = None, []
    if cfg.precision == "int8":
        int8 = calibrate_int8(detector, fit_files, preprocess, batch, cfg, cache_dir, category)
        checked, what = check_images(hold_files, validation,
                                     [f for f in fit_files if os.path.basename(f) in
                                      set(int8["calibration"]["files"])])
        int8 = check_int8(int8, detector, checked, what, preprocess, batch, cache_dir,
                          category)
    embed, engine = embedder(cfg.engine, detector, cache_dir, linalg.n_threads(), int8)
    reference = None
    if int8:                                 # calibration + quantisation (cached graph: ~0)
        int8["calibration"]["setup_seconds"] = round(time.perf_counter() - t, 3)
        if group.world == 1:                 # the fp32 model beside it, for the comparison
            reference = Fp32Reference(embed, embedder("onnxruntime", detector, cache_dir,
                                                      linalg.n_threads())[0],
                                      gaussian(eps=cfg.eps, members=detector.members
                                               if detector.cell_size > 1 else None))
    shard = group.shard(fit_files, reserve=len(hold_files))
    batches = embed_files(reference.embed if reference else embed, shard, preprocess, batch,
                          f"fit {category}")
    first = next(batches, None)
    group.common_shift(gauss, first, (detector.n_cells, cfg.k))
    if first is not None:
        gauss.partial_fit(first)
    for y in batches:
        gauss.partial_fit(y)
    held = embed_holdout(embed, hold_files, preprocess, batch, category) \
        if group.is_main else None
    gauss.reduce_with(group.all_sum)                 # the sums of every rank (one rank: as is)
    if not group.is_main:
        logger.info("%s: rank %d embedded %d of the %d images", category, group.rank,
                    len(shard), len(files))
        return None
    finalize_s, scores, vmin = 0.0, [], None
    if validation:
        scores, vmin, finalize_s = score_files(embed, detector, gauss, validation, preprocess,
                                               batch, f"validation {category}", ignore)
        threshold_record, display = holdout_record(scores, validation, vmin, VALIDATION_RULE,
                                                   "validation")
        if reference:
            compare_scores(int8, scores, score_files(
                reference.embed32, detector, reference.gauss32, validation, preprocess, batch,
                f"validation {category} (fp32)", ignore)[0], threshold_rule, category,
                cfg.int8_max_change)
    else:
        if hold_files:
            scores, vmin, finalize_s = score_holdout(detector, gauss, held, batch, ignore)
            gauss.partial_fit(held)
            del held
            if reference:
                held32 = embed_holdout(reference.embed32, hold_files, preprocess, batch, category)
                compare_scores(int8, scores, score_holdout(detector, reference.gauss32, held32,
                                                           batch, ignore)[0], threshold_rule,
                               category, cfg.int8_max_change)
                del held32
        threshold_record, display = holdout_record(scores, hold_files, vmin)
    if reference and not (validation or hold_files):
        logger.warning("%s: no held-out or validation image, so the int8 backbone's cost "
                       "against fp32 is not measured (fit with --holdout above 0)", category)
    reference = None                         # the fp32 statistics: compared, dropped
    warn_few(category, len(scores), "validation" if validation else "held-out")
    t = time.perf_counter()
    gauss.finalize()
    finalize_s += time.perf_counter() - t
    elapsed = time.perf_counter() - start
    meta = {
        "method": cfg.method, "arch": cfg.arch, "k": cfg.k, "seed": cfg.seed,
        "resize": preprocess.resize, "crop_size": preprocess.config()["crop_size"],
        "input_size": list(preprocess.input_hw),
        "geometry": dict(preprocess.config(), **geometry), "eps": cfg.eps,
        "grid": list(detector.grid_hw), "cell": detector.cell if np.isscalar(detector.cell)
        else list(detector.cell), "n_cells": detector.n_cells,
        "feature_dim": int(w.shape[0]), "category": category,
        "data_path": data.record.get("data_path") or os.path.abspath(data.root),
        "data": data.record, "digests": image_digests(data),
        "n_train": len(files), "weights_source": backbone.weights_source,
        "weights_sha256": backbone.weights_sha256,
        "threshold": threshold_record, "image_sizes": _image_sizes(files),
        "ignore_mask": None if ignore is None else {
            "source": os.path.abspath(cfg.ignore_mask), "ignored_fraction": float(ignore.mean())},
        "display": display, "versions": library_versions(), "linalg": linalg.describe(),
        "cpu_threads": linalg.n_threads(), "engine": engine, "ranks": group.world,
        "statistics": "device (Paddle, float64)" if on_device else "cpu (BLAS / LAPACK)",
        "request": cfg.request(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "fit_seconds": round(elapsed, 3),
        "finalize_seconds": round(finalize_s, 3),
    }
    logger.info("%s: fitted on %d images (%s) in %.1f s (%.1f img/s; embeddings by %s); "
                "statistics loops: %s", category, len(files),
                f"threshold from {len(validation)} validation images" if validation else
                f"{len(hold_files)} held out for the threshold", elapsed,
                len(files) / elapsed, engine, _describe_linalg(meta["linalg"]))
    arrays = {"projection": w, "mean": gauss.mean_, "precision": gauss.precision_}
    if ignore is not None:
        arrays["ignore"] = ignore.astype(np.uint8)
    meta["precision"] = cfg.precision
    if int8:
        meta["int8"] = int8
    if cfg.save_sums:
        arrays.update(pack_state(gauss.state()))
        meta["sums"] = {"n_images": gauss.n_samples_seen_, "packing": "upper triangle, by row"}
    model = Model(meta, arrays, backbone)
    model._detector = detector
    on_gpu = getattr(gauss, "precision_tensor_", None)           # already on the device
    detector.set_gaussian(gauss.mean_, gauss.precision_ if on_gpu is None else on_gpu)
    return model


def _image_sizes(files, limit=64):
    """The distinct (H, W) of the training images (None beyond ``limit`` of them)."""
    sizes = sorted({image_size(f) for f in files})
    return [list(hw) for hw in sizes] if len(sizes) <= limit else None


def _describe_linalg(info):
    if info["path"] == "ctypes":
        return f"BLAS / LAPACK through ctypes on {info['threads']} thread(s)"
    return f"SciPy wrappers on 1 thread ({info['reason']})"


def image_digests(data, held=()):
    """The digest record of a fit (``datasets.digest``): every training image is in the
    statistics (held-out ones are added after scoring; ``held``: those that never are, recorded
    with the validation images), validation images set the threshold, the test split (labelled
    and unlabelled) is recorded so that no update can take it."""
    sets = DigestSets(complete=True)
    held = set(held)
    sets.add("statistics", digests([f for f in data.train if f not in held]))
    sets.add("validation", digests(list(data.validation) + sorted(held)))
    sets.add("test", digests([s.path for s in data.test] +
                             [p for ps in data.unlabelled.values() for p in ps]))
    return sets.record()

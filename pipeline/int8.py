"""An int8 backbone at fit time: its calibration, and what it costs on the user's own images.

1. Calibration (``calibrate_int8``): activation ranges of the float32 embedding graph over a
   seeded draw of normal training images (never held-out, validation or test images).
2. Per-convolution cost (``check_int8``): the int8 and the float32 embedding graphs on normal
   images the calibration did not see (held-out, else validation images): the relative change
   of the embeddings ``||y8 - y32|| / ||y32||``, with all convolutions int8 and with each one
   alone kept in float32. A convolution that accounts for a large share of the change
   (``DOMINANT``: keeping it alone in float32 removes at least a fifth of it) stays in float32
   (ORT's quantiser excludes it); where the error is spread over the layers (measured on
   random resnet18 weights: the best single layer removes 5 % of it), none does.
3. The comparison (``Fp32Reference``, ``compare_scores``): a float32 model is fitted beside the
   int8 one in the same pass (both graphs on every batch, a second Gaussian), and the normal
   images the threshold is learned on are scored by both: the relative change of their image
   scores, the rank agreement (Spearman) and the two thresholds are printed and stored in the
   model. A median score change above ``--int8_max_change`` (default 0.1) refuses int8 with
   one line, before anything is written.
"""
import logging
import os
import time

import numpy as np

from orthoad_runtime.prefetch import prefetch_batches
from utils import UserError

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION = 32
MAX_CHANGE = 0.1           # --int8_max_change: median relative change of the scores
DOMINANT = 0.2             # a convolution whose fp32 removes this share of the change stays fp32
MAX_CHECK = 16             # images the scores are compared on (at most)
SENSITIVITY_IMAGES = 4     # images the per-convolution cost is measured on


def calibrate_int8(detector, files, preprocess, batch, cfg, cache_dir, category):
    """The int8 backbone's calibration record: activation ranges of the float32 embedding graph
    over a seeded draw of normal training images (never test images), and which ones."""
    from pipeline.quantize import HEADROOM, MIN_CALIBRATION, QUANTISED, calibrate
    from .graphs import build, default_cache, int8_engine
    int8_engine(cfg.engine)
    wanted = cfg.calibration_images
    n = min(len(files), DEFAULT_CALIBRATION) if wanted is None else wanted
    if wanted is not None and wanted > len(files):
        raise UserError(f"--calibration_images {wanted}: '{category}' has only {len(files)} "
                        "normal training images to calibrate on (the held-out ones excluded): "
                        "ask for fewer, or add images")
    if n < MIN_CALIBRATION:
        raise UserError(f"int8 needs at least {MIN_CALIBRATION} calibration images; "
                        f"'{category}' gives {n}: add normal training images or use "
                        "--precision fp32")
    pick = sorted(np.random.default_rng(cfg.seed).choice(len(files), n, replace=False).tolist())
    chosen = [files[i] for i in pick]
    src = os.path.join(build("embed", detector, cache_dir or default_cache(), "onnx"),
                       "model.onnx")
    t = time.perf_counter()
    ranges = calibrate(src, _batches(chosen, preprocess, batch))
    logger.info("%s: int8 backbone calibrated on %d normal training images in %.1f s (%d "
                "activation ranges)", category, n, time.perf_counter() - t, len(ranges))
    return {"ranges": ranges, "fp32_nodes": [], "calibration": {
        "n_images": n, "files": [os.path.basename(f) for f in chosen], "seed": cfg.seed,
        "method": f"MinMax x {HEADROOM}", "quantised": QUANTISED}}


def _batches(files, preprocess, batch):
    return (np.stack(b) for b in prefetch_batches(
        files, lambda f: preprocess.load(f)[0], batch))


def check_images(hold_files, validation, calibration):
    """(files, what they are): the images int8 is checked on, none of them calibrated on when
    possible."""
    if hold_files:
        return list(hold_files)[:MAX_CHECK], "held-out normal images"
    if validation:
        return list(validation)[:MAX_CHECK], "validation images"
    return list(calibration)[:MAX_CHECK], "calibration images (no held-out image: optimistic)"


def _relative(y8, y32):
    return float(np.linalg.norm(y8 - y32) / max(np.linalg.norm(y32), 1e-30))


def check_int8(int8, detector, files, what, preprocess, batch, cache_dir, category):
    """Measure what each convolution's quantisation costs on ``files`` (see the module
    docstring) and keep the dominant ones in float32; return ``int8`` completed with
    ``fp32_nodes`` and its ``check`` record."""
    import tempfile

    from orthoad_runtime import engines
    from pipeline.quantize import conv_nodes, quantize_graph
    from .graphs import build, default_cache
    t0 = time.perf_counter()
    cache_dir = cache_dir or default_cache()
    src = os.path.join(build("embed", detector, cache_dir, "onnx"), "model.onnx")
    x = np.concatenate(list(_batches(files[:SENSITIVITY_IMAGES], preprocess, batch)))
    y32 = engines.OnnxRuntimeGraph(src).run({"image": x})[0]

    def change(keep):
        with tempfile.TemporaryDirectory(prefix="orthoad.check8.") as work:
            dst = quantize_graph(src, int8["ranges"], os.path.join(work, "q.onnx"), keep)
            return _relative(engines.OnnxRuntimeGraph(dst).run({"image": x})[0], y32)
    nodes = conv_nodes(src)
    first = change([])
    gains = {n: first - change([n]) for n in nodes}
    keep = [n for n in nodes if gains[n] >= DOMINANT * first]
    now = change(keep) if keep else first
    best = max(gains.values()) / first if first > 0 else 0.0
    int8 = dict(int8, fp32_nodes=keep)
    int8["check"] = {"on": what, "images": len(files), "sensitivity_images": len(x),
                     "embedding_change_all_int8": round(first, 5),
                     "embedding_change": round(now, 5), "convolutions": len(nodes),
                     "fp32_convolutions": len(keep),
                     "largest_single_share": round(best, 4),
                     "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("%s: the int8 backbone changes the embeddings by %.2f%% on %d %s; the costliest "
                "convolution accounts for %.0f%% of it%s", category, 100 * now, len(x), what,
                100 * best, f"; {len(keep)} of {len(nodes)} convolutions kept in fp32 (all "
                f"int8: {100 * first:.2f}%)" if keep else " (none kept in fp32)")
    return int8


class Fp32Reference:
    """The float32 model beside an int8 fit: ``embed(x)`` runs both graphs on each fitted
    batch, folds the float32 embeddings into a second Gaussian and returns the int8 ones, so
    that the normal images the threshold is learned on can be scored by both models (one pass
    over the images; the float32 statistics are dropped after the comparison)."""

    def __init__(self, embed8, embed32, gauss32):
        self.embed8, self.embed32, self.gauss32 = embed8, embed32, gauss32

    def embed(self, x):
        self.gauss32.partial_fit(self.embed32(x))
        return self.embed8(x)


def compare_scores(int8, s8, s32, rule, category, bound=MAX_CHANGE):
    """The int8 model's scores ``s8`` of the threshold's normal images against the float32
    model's ``s32``: median and largest relative change, rank agreement (Spearman), the
    threshold each gives (``rule`` of the scores); stored in ``int8['check']``, logged.

    Raises:
        UserError: the median change is above ``bound`` (``--int8_max_change``).
    """
    from scipy.stats import spearmanr
    s8, s32 = np.asarray(s8, np.float64), np.asarray(s32, np.float64)
    rel = np.abs(s8 - s32) / np.maximum(np.abs(s32), 1e-12)
    rank = float(spearmanr(s8, s32)[0]) if len(s8) > 2 and np.ptp(s32) > 0 else None
    t8, t32 = rule(s8), rule(s32)
    check = int8.setdefault("check", {})
    check.update({"score_change_median": round(float(np.median(rel)), 5),
                  "score_change_max": round(float(rel.max()), 5),
                  "rank_agreement": None if rank is None else round(rank, 5),
                  "threshold_change": round(abs(t8 - t32) / max(abs(t32), 1e-12), 5)})
    logger.info("%s: int8 against fp32 on the %d images the threshold is learned on: image scores "
                "changed by %.2f%% (median) and %.2f%% (largest), rank agreement %s, threshold "
                "%.4g against %.4g", category, len(s8), 100 * check["score_change_median"],
                100 * check["score_change_max"], "n/a" if rank is None else f"{rank:.3f}",
                t8, t32)
    check["bound"] = bound
    if check["score_change_median"] > bound:
        raise UserError(f"{category}: the int8 backbone changes the image scores of the "
                        f"{len(s8)} normal images the threshold is learned on by "
                        f"{100 * float(np.median(rel)):.1f}% (median) against fp32, beyond "
                        f"--int8_max_change {bound:g}: fit with --precision fp32 (or allow a "
                        "larger change)")
    return check

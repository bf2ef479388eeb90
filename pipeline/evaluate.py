"""Scoring a labelled set of images (a test set, a calibration set) and computing its metrics.

Everything a person or a script reads about a category (the metrics table, the per-image and
per-type CSVs, the report's curves and examples) is built from one list of per-image records
and one ``metrics.PixelSet``, never from separate counters.

Masks are optional: image metrics use every image; pixel metrics use the normal images and the
defect images that have a mask, and the number of images behind each is reported.

Memory: the pixel metrics keep 4 bytes per pixel (the scores, sorted once in place) plus 8 per
defect pixel; the maps are not kept (but for ``--non_partial_AUC``, whose protocol needs them).
"""
import heapq
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

import metrics
import visualize
from orthoad_runtime.figure import display_range
from orthoad_runtime.predictions import thresholds, verdict
from orthoad_runtime.ignore import original_map
from datasets.loading import load_test_item
from orthoad_runtime.transforms import image_size
from utils import atomic_path, ensure_dir

from .geometry import AspectWarnings, batch_for
from .loco import LocoMetrics
from .scoring import predict_batches

logger = logging.getLogger(__name__)

PRO_LIMIT = 0.3
PRO_LIMIT_AD2 = 0.05         # MVTec AD 2's AU-PRO limit


@dataclass
class EvalOptions:
    batch_size: int = 16
    eval_pro: bool = False
    paper_metrics: bool = False
    eval_size: str = "input"
    pic_dir: str = None
    maps_dir: str = None          # --save_maps: float32 maps in the official evaluators' layout
    server_maps_dir: str = None   # --save_server_maps: MVTec AD 2's private sets, server form
    report: bool = False          # collect curves and the worst cases for the HTML report
    examples: int = 4             # worst false positives / negatives kept for the report


def eval_options(args, out_dir):
    """EvalOptions from the evaluation flags (pictures go to <out_dir>/pictures/<category>/)."""
    return EvalOptions(batch_size=args.batch_size, eval_pro=args.eval_PRO,
                       paper_metrics=args.non_partial_AUC, eval_size=args.eval_size,
                       pic_dir=os.path.join(out_dir, "pictures") if args.save_pic else None,
                       maps_dir=args.save_maps, server_maps_dir=args.save_server_maps,
                       report=getattr(args, "report", False))


@dataclass
class CategoryResult:
    """row: the category's metrics (results.csv); images: per-image records; types: per-defect
    type rows; curves and examples: for the report."""
    row: dict
    images: list = field(default_factory=list)
    types: list = field(default_factory=list)
    curves: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)


def score_samples(model, samples, batch_size, desc, channels=False):
    """Yield (sample, ``datasets.loading.TestItem``, map [H, W], score) for every labelled
    sample, in order (``channels``: with MVTec LOCO's ground-truth files one by one)."""
    pre = model.preprocess
    aspect = AspectWarnings(pre)
    it = iter(samples)
    for batch, amaps, scores in predict_batches(
            model, samples, lambda s: load_test_item(s, pre, channels),
            batch_for(batch_size, pre.input_hw), desc, lambda item: item.x):
        for item, amap, score in zip(batch, amaps, scores):
            sample = next(it)
            aspect.check(sample.path, item.original_hw)
            yield sample, item, amap, float(score)
    aspect.close(f"the {len(samples)} images")


def _pixel_capacity(samples, pre, eval_size):
    counted = [s for s in samples if s.label == 0 or s.has_mask]
    if eval_size == "original":
        return sum(int(np.prod(image_size(s.path))) for s in counted)
    return len(counted) * pre.height * pre.width


class _Worst:
    """The k records with the largest keys, with what their pictures need."""

    def __init__(self, k):
        self.k, self.heap, self.n = k, [], 0

    def offer(self, key, record, picture):
        """``picture``: a callable giving (image, map, ground truth or None, scored (h, w)),
        called only if the record is kept."""
        self.n += 1
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, (key, self.n, record, picture()))
        elif key > self.heap[0][0]:
            heapq.heapreplace(self.heap, (key, self.n, record, picture()))

    def items(self):
        """[(record, image, map, ground truth or None, scored (h, w))], largest key first."""
        return [(r, *p) for _, _, r, p in sorted(self.heap, key=lambda t: -t[0])]


def evaluate_category(model, data, opts):
    """Score a category's test set (``datasets.samples.CategoryData``) and compute its metrics
    (``evaluate_samples``); with ``opts.server_maps_dir``, also write the maps of its
    unlabelled test images (MVTec AD 2's private sets) in the evaluation server's form."""
    result = evaluate_samples(model, data.require_test(), data.name, opts, data.defects)
    if opts.server_maps_dir:
        if data.unlabelled:
            from .submission import write_unlabelled
            write_unlabelled(model, data, opts.server_maps_dir, opts.batch_size)
        else:
            logger.warning("%s: no unlabelled test set (MVTec AD 2's test_private, "
                           "test_private_mixed): --save_server_maps writes nothing for it; "
                           "--save_maps writes the labelled test images' maps", data.name)
    return result


def evaluate_samples(model, samples, category, opts, defects=None):
    """Score labelled samples and compute image, pixel and threshold metrics.

    Returns:
        ``CategoryResult``; its row has category, n_test, n_defect, n_pixel_images, image_auroc,
        pixel_auroc, [au_pro], [paper_pro, paper_roc], the threshold and the verdicts' precision,
        recall, f1, fpr, tp, fp, fn, tn, seg_f1 (pixel F1 at the pixel threshold),
        [au_pro_05], MVTec LOCO's per-subset metrics (``pipeline.loco``, with ``defects``),
        unscored_defect_frac
        (share of the defect pixels outside the scored region, left out of the pixel metrics),
        eval_seconds, eval_img_per_s. Undefined values are None.
    """
    start = time.perf_counter()
    pre, meta = model.preprocess, model.meta
    threshold, pixel_threshold = thresholds(meta)
    pixels = metrics.PixelSet(_pixel_capacity(samples, pre, opts.eval_size))
    paper_maps, paper_masks = [], []
    worst_fp, worst_fn = _Worst(opts.examples), _Worst(opts.examples)
    records = []
    defect_px = unscored_px = 0
    loco = LocoMetrics(defects, opts.eval_pro) if defects is not None else None
    for sample, item, amap, score in score_samples(
            model, samples, opts.batch_size, f"eval {category}", loco is not None):
        x, mask, hw, mask_orig = item.x, item.mask, item.original_hw, item.mask_orig
        in_pixels = sample.label == 0 or sample.has_mask
        records.append({"path": sample.path, "defect": sample.defect, "label": sample.label,
                        "has_mask": sample.has_mask, "score": score,
                        "verdict": verdict(score, threshold)})
        full = original_map(pre, amap, hw, model.ignore) if opts.maps_dir or loco is not None or \
            opts.eval_size == "original" or sample.has_mask else None
        if sample.has_mask:           # defect pixels outside the crop or under the ignore mask
            defect = mask_orig > 127
            defect_px += int(defect.sum())
            unscored_px += int((defect & ~np.isfinite(full)).sum())
        if loco is not None:
            loco.add(sample, item.channels, full)
        if in_pixels:
            if opts.eval_size == "original":
                pixels.add(full, mask_orig > 127)
            else:
                pixels.add(amap, mask)
            if opts.paper_metrics:
                paper_maps.append(amap)
                paper_masks.append(mask)
        if opts.maps_dir:
            save_tiff(opts.maps_dir, category, sample, full)
        left, top, right, bottom = pre.scored_box(hw)
        scored_hw = (bottom - top, right - left)            # pictures: as the image is
        if opts.report:          # highest-scoring normal images, lowest-scoring defective ones
            worst, key = (worst_fp, score) if sample.label == 0 else (worst_fn, -score)
            worst.offer(key, records[-1], lambda: (pre.unnormalise(x), amap,
                                                   mask if sample.has_mask else None,
                                                   scored_hw))
        if opts.pic_dir:
            stem = os.path.splitext(os.path.basename(sample.path))[0]
            vmin, vmax = display_range(meta, amap)
            visualize.plot_result(
                os.path.join(opts.pic_dir, category, f"{sample.defect}_{stem}.png"),
                pre.unnormalise(x), amap, score, threshold, vmin, vmax,
                mask if in_pixels else None, title=f"{category}/{sample.defect}/{stem}",
                pixel_threshold=pixel_threshold, scored_hw=scored_hw)
    eval_s = time.perf_counter() - start
    logger.info("%s: scored %d images in %.1f s (%.1f img/s)", category, len(samples), eval_s,
                len(samples) / eval_s)
    result = _metrics(category, records, pixels, threshold, opts)
    row = result.row
    row["seg_f1"] = pixels.f1_at(pixel_threshold) if pixels.defined else None
    if loco is not None:
        row.update(loco.rows())
    thr = meta.get("threshold") or {}
    row["threshold_rule"] = thr.get("rule") if threshold is not None else None
    row["pixel_threshold"] = pixel_threshold
    if opts.paper_metrics:
        row["paper_pro"], row["paper_roc"] = metrics.paper_pro_roc(np.stack(paper_masks),
                                                                   np.stack(paper_maps))
    row["unscored_defect_frac"] = unscored_px / defect_px if defect_px else None
    row["eval_seconds"] = eval_s
    row["eval_img_per_s"] = len(samples) / eval_s
    if unscored_px:
        logger.warning("%s: %.1f%% of the defect pixels (%d of %d) lie outside the centre crop "
                       "or under the ignore mask: they are never scored and the pixel metrics "
                       "leave them out (fit with --input_size auto or H W to score whole "
                       "images)", category, 100.0 * unscored_px / defect_px, unscored_px,
                       defect_px)
    if opts.report:
        result.examples = {"false_positive": worst_fp.items(),
                           "false_negative": worst_fn.items()}
        disp = meta.get("display") or {}
        result.curves["display"] = (disp.get("vmin"), disp.get("vmax"))
    return result


def _metrics(category, records, pixels, threshold, opts):
    labels = np.array([r["label"] for r in records])
    scores = np.array([r["score"] for r in records])
    n_pixel = sum(1 for r in records if r["label"] == 0 or r["has_mask"])
    row = {"category": category, "n_test": len(records), "n_defect": int(labels.sum()),
           "n_pixel_images": n_pixel, "image_auroc": metrics.image_auroc(labels, scores),
           "pixel_auroc": pixels.auroc(), "threshold": threshold}
    curves = {"scores": {"normal": scores[labels == 0].tolist(),
                         "defect": scores[labels == 1].tolist()}}
    if opts.eval_pro:
        t = time.perf_counter()
        if opts.report:
            row["au_pro"], pro = pixels.au_pro(PRO_LIMIT, curve_points=400)
            curves["pro"] = pro
        else:
            row["au_pro"] = pixels.au_pro(PRO_LIMIT)
        row["au_pro_05"] = pixels.au_pro(PRO_LIMIT_AD2)
        row["pro_seconds"] = time.perf_counter() - t
    if threshold is not None:
        row.update(metrics.confusion(labels, scores, threshold))
    if opts.report:
        if row["image_auroc"] is not None:
            from sklearn.metrics import roc_curve
            fpr, tpr, _ = roc_curve(labels, scores)
            curves["image_roc"] = (fpr, tpr)
        curves["pixel_roc"] = pixels.roc_curve()
    types = []
    for defect in sorted({r["defect"] for r in records if r["label"] == 1}):
        pick = (labels == 0) | np.array([r["defect"] == defect for r in records])
        of_type = [r for r in records if r["defect"] == defect]
        flagged = [r["verdict"] == "anomalous" for r in of_type]
        types.append({"category": category, "defect": defect, "n": len(of_type),
                      "n_mask": sum(r["has_mask"] for r in of_type),
                      "image_auroc": metrics.image_auroc(labels[pick], scores[pick]),
                      "recall": None if threshold is None else float(np.mean(flagged)),
                      "mean_score": float(np.mean([r["score"] for r in of_type]))})
    missing = row["n_defect"] - sum(r["has_mask"] for r in records)
    for name, why in (("image_auroc", "no defective images"),
                      ("pixel_auroc", "no defect pixels or no normal pixels"),
                      ("au_pro", "no defect region or no normal pixels")):
        if name in row and row[name] is None:
            logger.warning("%s: %s is n/a (%s)", category, name, why)
    logger.info("%s: image metrics on %d images (%d defective), pixel metrics on %d images "
                "(%d defective without a mask left out)", category, len(records),
                row["n_defect"], n_pixel, missing)
    return CategoryResult(row, records, types, curves)


def save_tiff(root, category, sample, full):
    """Write an original-size float32 map where the official MVTec AD evaluation looks for it."""
    import tifffile
    stem = os.path.splitext(os.path.basename(sample.path))[0]
    path = os.path.join(root, category, "test", sample.defect, f"{stem}.tiff")
    ensure_dir(os.path.dirname(path))
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, full.astype(np.float32))

"""Scoring a category's test set and computing its metrics."""
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import paddle

import metrics
import visualize
from datasets.mvtec import MVTecCategory, load_test_item, prefetch_batches
from utils import atomic_path, ensure_dir, progress

from .geometry import AspectWarnings, batch_for

logger = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    batch_size: int = 16
    eval_pro: bool = False
    paper_metrics: bool = False
    eval_size: str = "input"
    pic_dir: str = None
    maps_dir: str = None


def eval_options(args, out_dir):
    """EvalOptions from the evaluation flags (pictures go to <out_dir>/pictures/<category>/)."""
    return EvalOptions(batch_size=args.batch_size, eval_pro=args.eval_PRO,
                       paper_metrics=args.non_partial_AUC, eval_size=args.eval_size,
                       pic_dir=os.path.join(out_dir, "pictures") if args.save_pic else None,
                       maps_dir=args.save_maps)


def predict_batches(model, items, load, batch_size, desc):
    """Run the detector over ``items``; yield (loaded items, maps [B, H, W], scores [B])."""
    bar = progress(len(items), desc)
    try:
        for batch in prefetch_batches(items, load, batch_size):
            x = paddle.to_tensor(np.stack([b[0] for b in batch]))
            with paddle.no_grad():
                amap, score = model.detector(x)
            bar.update(len(batch))
            yield batch, amap.numpy()[:, 0], score.numpy()
    finally:
        bar.close()


def evaluate_category(model, data_path, category, opts):
    """Score a category's test set and compute its metrics.

    Returns:
        dict with category, n_test, image_auroc, pixel_auroc, [au_pro], [paper_pro, paper_roc],
        unscored_defect_frac (share of the defect pixels outside the scored region, left out of
        the pixel metrics), eval_seconds, eval_img_per_s (undefined metrics are None).
    """
    start = time.perf_counter()
    samples = MVTecCategory(data_path, category).test_samples()
    pre, meta = model.preprocess, model.meta
    labels = np.array([s.label for s in samples])
    scores, maps, masks, orig_maps, orig_masks = [], [], [], [], []
    aspect = AspectWarnings(pre)
    defect_px = unscored_px = 0
    i = 0
    for batch, amaps, bscores in predict_batches(model, samples,
                                                 lambda s: load_test_item(s, pre),
                                                 batch_for(opts.batch_size, pre.input_hw),
                                                 f"eval {category}"):
        for (x, mask, hw, mask_orig), amap, score in zip(batch, amaps, bscores):
            sample = samples[i]
            i += 1
            aspect.check(sample.path, hw)
            if sample.mask_path is not None:
                left, top, right, bottom = pre.scored_box(hw)
                defect = mask_orig > 127
                defect_px += int(defect.sum())
                unscored_px += int(defect.sum() - defect[top:bottom, left:right].sum())
            scores.append(float(score))
            maps.append(amap)
            masks.append(mask)
            if opts.maps_dir or opts.eval_size == "original":
                full = pre.to_original(amap, hw)
                if opts.eval_size == "original":
                    orig_maps.append(full)
                    orig_masks.append(mask_orig > 127)
                if opts.maps_dir:
                    save_tiff(opts.maps_dir, category, sample, full)
            if opts.pic_dir:
                stem = os.path.splitext(os.path.basename(sample.path))[0]
                vmin, vmax = visualize.display_range(meta, amap)
                visualize.plot_result(
                    os.path.join(opts.pic_dir, category, f"{sample.defect}_{stem}.png"),
                    pre.unnormalise(x), amap, float(score), model.threshold, vmin, vmax, mask,
                    title=f"{category}/{sample.defect}/{stem}")
    aspect.close(f"the {len(samples)} test images")
    if unscored_px:
        logger.warning("%s: %.1f%% of the defect pixels (%d of %d) lie outside the centre crop: "
                       "they are never scored and the pixel metrics leave them out; fit with "
                       "--input_size auto or H W to score whole images", category,
                       100.0 * unscored_px / defect_px, unscored_px, defect_px)
    eval_s = time.perf_counter() - start
    logger.info("%s: scored %d test images in %.1f s (%.1f img/s)", category, len(samples),
                eval_s, len(samples) / eval_s)
    if opts.eval_size == "original":
        eval_maps, eval_masks = orig_maps, orig_masks
    else:
        eval_maps, eval_masks = np.stack(maps), np.stack(masks)
    row = {"category": category, "n_test": len(samples),
           "image_auroc": metrics.image_auroc(labels, scores),
           "pixel_auroc": metrics.pixel_auroc(eval_masks, eval_maps)}
    if opts.eval_pro:
        t = time.perf_counter()
        row["au_pro"] = metrics.au_pro(eval_masks, eval_maps)
        row["pro_seconds"] = time.perf_counter() - t
    if opts.paper_metrics:
        row["paper_pro"], row["paper_roc"] = metrics.paper_pro_roc(np.stack(masks),
                                                                   np.stack(maps))
    row["unscored_defect_frac"] = unscored_px / defect_px if defect_px else None
    row["eval_seconds"] = eval_s
    row["eval_img_per_s"] = len(samples) / eval_s
    for name in ("image_auroc", "pixel_auroc", "au_pro"):
        if name in row and row[name] is None:
            logger.warning("%s: %s is undefined (the test set has %s)", category, name,
                           "no defective images" if name == "image_auroc" else
                           "no defect pixels or no normal pixels")
    return row


def save_tiff(root, category, sample, full):
    """Write an original-size float32 map where the official MVTec AD evaluation looks for it."""
    import tifffile
    stem = os.path.splitext(os.path.basename(sample.path))[0]
    path = os.path.join(root, category, "test", sample.defect, f"{stem}.tiff")
    ensure_dir(os.path.dirname(path))
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, full.astype(np.float32))

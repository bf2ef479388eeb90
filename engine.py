"""Fitting, evaluation and export of one category, shared by the scripts.

The scripts only parse flags and print; the work is done here (and the maths in ``models/``).
"""
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import paddle
from tqdm import tqdm

import metrics
import visualize
from datasets.mvtec import MVTecCategory, load_test_item, prefetch_batches
from datasets.transforms import Preprocess, load_rgb
from models.backbone import ARCHS, Backbone, feature_dim
from models.gaussian import PatchGaussian
from models.orthoad import OrthoAD
from models.projection import PROJECTIONS, make_projection
from utils import (UserError, atomic_path, ensure_dir, library_versions, load_model,
                   save_model, sha256_file, str2bool, write_csv, write_json)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- flags

def flag_bool(parser, name, default, help):
    """A boolean flag usable as ``--name``, ``--name=True`` or ``--name=false``."""
    parser.add_argument(name, type=str2bool, nargs="?", const=True, default=default, help=help)


def add_model_args(parser, fitting):
    """Flags that identify a model (and, when ``fitting``, how to fit it)."""
    parser.add_argument("--method", type=str, default="ortho", choices=sorted(PROJECTIONS),
                        help="ortho: semi-orthogonal projection (OrthoAD); sample: random "
                             "channel subset (PaDiM)")
    parser.add_argument("--arch", type=str, default="resnet18", choices=sorted(ARCHS),
                        help="backbone")
    parser.add_argument("--k", type=int, default=100, help="projected dimension")
    parser.add_argument("--save_path", type=str, default="./output",
                        help="root of the model folders <method>_<arch>_k<k>/")
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    if fitting:
        parser.add_argument("--seed", type=int, default=0, help="seed of the projection, the "
                            "hold-out split and random backbone weights")
        parser.add_argument("--resize", type=int, default=256, help="shorter side after resize")
        parser.add_argument("--crop_size", type=int, default=256, help="centre crop side")
        parser.add_argument("--eps", type=float, default=0.01, help="covariance ridge")
        parser.add_argument("--holdout", type=float, default=0.1,
                            help="fraction of train/good (at most 32 images) held out to "
                                 "learn the threshold, then added to the statistics; 0 disables "
                                 "the threshold")
        flag_bool(parser, "--pretrained", True, "Paddle's ImageNet weights (downloaded on first "
                  "use); --no-pretrained or --pretrained=False: seeded random weights (tests)")
        parser.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                            help="same as --pretrained=False")
    parser.add_argument("--weights", type=str, default=None,
                        help="local backbone .pdparams (instead of downloading)")


def add_eval_args(parser):
    flag_bool(parser, "--eval_PRO", False, "also compute the official AU-PRO (FPR limit 0.3)")
    flag_bool(parser, "--non_partial_AUC", False,
              "also report PRO and ROC by the OrthoAD paper's own protocol (labelled paper_*)")
    flag_bool(parser, "--save_pic", False, "write a figure per test image")
    parser.add_argument("--save_maps", type=str, default=None,
                        help="write float32 .tiff maps at the original resolution under this "
                             "folder (<category>/test/<defect>/<stem>.tiff)")
    parser.add_argument("--eval_size", type=str, default="input", choices=["input", "original"],
                        help="compute the metrics at the network input size or on maps resized "
                             "to each image's original size (official protocol)")


def check_common(args):
    if args.k < 1:
        raise UserError(f"--k {args.k} is out of range: it must be at least 1")
    if args.arch in ARCHS and args.k > feature_dim(args.arch):
        raise UserError(f"--k {args.k} is larger than the feature dimension "
                        f"{feature_dim(args.arch)} of {args.arch}: choose --k <= "
                        f"{feature_dim(args.arch)}")
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size} must be at least 1")


# --------------------------------------------------------------------------- backbone & models

_BACKBONES = {}


def get_backbone(arch, pretrained=True, weights=None, seed=0):
    """Build (once per process) the frozen backbone for these weights."""
    key = (arch, bool(pretrained), weights and os.path.abspath(weights), seed)
    if key not in _BACKBONES:
        _BACKBONES[key] = Backbone(arch, pretrained=pretrained, weights=weights, seed=seed)
    return _BACKBONES[key]


def backbone_for_meta(meta, weights=None):
    """Rebuild the backbone a model was fitted with and check its weights' fingerprint."""
    source = meta["weights_source"]
    if weights:
        bb = get_backbone(meta["arch"], False, weights)
    elif source.startswith("imagenet"):
        bb = get_backbone(meta["arch"], True)
    elif source.startswith("file:"):
        bb = get_backbone(meta["arch"], False, source[len("file:"):])
    else:
        bb = get_backbone(meta["arch"], False, None, int(source.split("seed=")[1]))
    if bb.weights_sha256 != meta["weights_sha256"]:
        raise UserError(f"the backbone weights ({bb.weights_source}) differ from those the model "
                        f"was fitted with ({source}): pass --weights with the original file")
    return bb


@dataclass
class LoadedModel:
    detector: OrthoAD
    meta: dict
    preprocess: Preprocess

    @property
    def threshold(self):
        return (self.meta.get("threshold") or {}).get("image")


def load_detector(path, expect=None, weights=None):
    """Model file -> LoadedModel (detector with its Gaussian, meta, pre-processing)."""
    meta, arrays = load_model(path, expect)
    bb = backbone_for_meta(meta, weights)
    det = OrthoAD(bb, arrays["projection"], meta["crop_size"], arrays["mean"], arrays["precision"])
    return LoadedModel(det, meta, Preprocess(meta["resize"], meta["crop_size"]))


def _progress(total, desc):
    return tqdm(total=total, desc=desc, unit="img", leave=False, mininterval=1.0, disable=None,
                dynamic_ncols=True)


# --------------------------------------------------------------------------- fit

@dataclass
class FitConfig:
    method: str = "ortho"
    arch: str = "resnet18"
    k: int = 100
    seed: int = 0
    resize: int = 256
    crop_size: int = 256
    batch_size: int = 16
    eps: float = 0.01
    holdout: float = 0.1


MAX_HOLDOUT = 32   # held-out embeddings stay in memory until they join the sums: keep it bounded


def _split_holdout(files, fraction, seed):
    n_hold = 0 if fraction <= 0 else max(1, int(round(fraction * len(files))))
    n_hold = min(n_hold, MAX_HOLDOUT, len(files) - 2)
    if n_hold <= 0:
        return files, []
    idx = np.random.default_rng(seed).permutation(len(files))
    hold = set(idx[:n_hold].tolist())
    return ([f for i, f in enumerate(files) if i not in hold],
            [f for i, f in enumerate(files) if i in hold])


def _embed_files(detector, files, preprocess, batch_size, desc):
    """Yield projected embeddings [B, h*w, k] of image files, loading ahead in threads."""
    bar = _progress(len(files), desc)
    try:
        for batch in prefetch_batches(files, lambda f: preprocess.image(load_rgb(f)), batch_size):
            with paddle.no_grad():
                y = detector.embed(paddle.to_tensor(np.stack(batch)))
            bar.update(len(batch))
            yield y
    finally:
        bar.close()


THRESHOLD_RULE = ("max(max(s), mean(s) + 3 * std(s)) of the image scores s of held-out normal "
                  "training images")


def threshold_rule(scores):
    """Image (and pixel) threshold from the scores of held-out NORMAL images only."""
    s = np.asarray(scores, dtype=np.float64)
    spread = 3.0 * s.std(ddof=1) if len(s) > 1 else 0.1 * abs(s[0])
    return float(max(s.max(), s.mean() + spread))


def fit_category(data_path, category, cfg, backbone, out_file):
    """Fit one category and save its model file.

    Normal images held out (``cfg.holdout``) are scored by the model fitted on the others; the
    threshold is ``threshold_rule`` of their image scores, and the display range runs from their
    smallest map value to twice the threshold's distance above it. They are then added to the
    statistics. No test image is ever looked at.

    Returns:
        (meta dict, seconds spent).
    """
    start = time.perf_counter()
    files = MVTecCategory(data_path, category).train_files()
    preprocess = Preprocess(cfg.resize, cfg.crop_size)
    w = make_projection(cfg.method, sum(backbone.channels), cfg.k, cfg.seed)
    detector = OrthoAD(backbone, w, cfg.crop_size)
    grid = detector.grid
    fit_files, hold_files = _split_holdout(files, cfg.holdout, cfg.seed)
    gauss = PatchGaussian(eps=cfg.eps)
    for y in _embed_files(detector, fit_files, preprocess, cfg.batch_size, f"fit {category}"):
        gauss.partial_fit(y)
    finalize_s = 0.0
    threshold, display, scores = None, {"vmin": None, "vmax": None}, []
    if hold_files:
        # score the held-out images under the Gaussian of the others by Cholesky solves (no
        # provisional precision matrices), then let them join the statistics
        held, n_held = None, 0                     # filled in place: no list + concatenate copy
        for y in _embed_files(detector, hold_files, preprocess, cfg.batch_size,
                              f"hold-out {category}"):
            if held is None:
                held = np.empty((len(hold_files),) + tuple(y.shape[1:]), dtype=np.float32)
            held[n_held:n_held + y.shape[0]] = y.numpy()
            n_held += y.shape[0]
        t = time.perf_counter()
        dist = np.sqrt(np.maximum(gauss.squared_distances(held), 0.0)).astype(np.float32)
        finalize_s += time.perf_counter() - t
        with paddle.no_grad():
            scored = [detector.head_scores(paddle.to_tensor(
                dist[i:i + cfg.batch_size]).reshape([-1, grid, grid]))
                for i in range(0, len(dist), cfg.batch_size)]
        scores = np.concatenate([s.numpy() for _, s in scored])
        vmin = float(min(m.min().item() for m, _ in scored))
        threshold = threshold_rule(scores)
        display = {"vmin": vmin, "vmax": vmin + 2.0 * (threshold - vmin)}
        del scored, dist
        gauss.partial_fit(held)
        del held
    t = time.perf_counter()
    gauss.finalize()
    finalize_s += time.perf_counter() - t
    elapsed = time.perf_counter() - start
    meta = {
        "method": cfg.method, "arch": cfg.arch, "k": cfg.k, "seed": cfg.seed,
        "resize": cfg.resize, "crop_size": cfg.crop_size, "eps": cfg.eps,
        "grid": grid, "feature_dim": int(w.shape[0]), "category": category,
        "n_train": len(files), "weights_source": backbone.weights_source,
        "weights_sha256": backbone.weights_sha256,
        "threshold": {"image": threshold, "pixel": threshold, "n_holdout": len(hold_files),
                      "rule": THRESHOLD_RULE, "holdout_scores": [float(v) for v in scores]},
        "display": display, "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "fit_seconds": round(elapsed, 3),
        "finalize_seconds": round(finalize_s, 3),
    }
    save_model(out_file, meta, {"projection": w, "mean": gauss.mean_,
                                "precision": gauss.precision_})
    logger.info("%s: fitted on %d images (%d held out for the threshold) in %.1f s "
                "(%.1f img/s) -> %s", category, len(files), len(hold_files), elapsed,
                len(files) / elapsed, out_file)
    return meta, elapsed


# --------------------------------------------------------------------------- evaluate

@dataclass
class EvalOptions:
    batch_size: int = 16
    eval_pro: bool = False
    paper_metrics: bool = False
    eval_size: str = "input"
    pic_dir: str = None
    maps_dir: str = None


def predict_batches(model, items, load, batch_size, desc):
    """Run the detector over ``items``; yield (loaded items, maps [B, S, S], scores [B])."""
    bar = _progress(len(items), desc)
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
        eval_seconds, eval_img_per_s (undefined metrics are None).
    """
    start = time.perf_counter()
    samples = MVTecCategory(data_path, category).test_samples()
    pre, meta = model.preprocess, model.meta
    labels = np.array([s.label for s in samples])
    scores, maps, masks, orig_maps, orig_masks = [], [], [], [], []
    i = 0
    for batch, amaps, bscores in predict_batches(model, samples,
                                                 lambda s: load_test_item(s, pre),
                                                 opts.batch_size, f"eval {category}"):
        for (x, mask, hw, mask_orig), amap, score in zip(batch, amaps, bscores):
            sample = samples[i]
            i += 1
            scores.append(float(score))
            maps.append(amap)
            masks.append(mask)
            if opts.maps_dir or opts.eval_size == "original":
                full = pre.to_original(amap, hw)
                if opts.eval_size == "original":
                    orig_maps.append(full)
                    orig_masks.append(mask_orig > 127)
                if opts.maps_dir:
                    _save_tiff(opts.maps_dir, category, sample, full)
            if opts.pic_dir:
                stem = os.path.splitext(os.path.basename(sample.path))[0]
                vmin, vmax = visualize.display_range(meta, amap)
                visualize.plot_result(
                    os.path.join(opts.pic_dir, category, f"{sample.defect}_{stem}.png"),
                    pre.unnormalise(x), amap, float(score), model.threshold, vmin, vmax, mask,
                    title=f"{category}/{sample.defect}/{stem}")
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
    row["eval_seconds"] = eval_s
    row["eval_img_per_s"] = len(samples) / eval_s
    for name in ("image_auroc", "pixel_auroc", "au_pro"):
        if name in row and row[name] is None:
            logger.warning("%s: %s is undefined (the test set has %s)", category, name,
                           "no defective images" if name == "image_auroc" else
                           "no defect pixels or no normal pixels")
    return row


def _save_tiff(root, category, sample, full):
    import tifffile
    stem = os.path.splitext(os.path.basename(sample.path))[0]
    path = os.path.join(root, category, "test", sample.defect, f"{stem}.tiff")
    ensure_dir(os.path.dirname(path))
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, full.astype(np.float32))


# --------------------------------------------------------------------------- results

METRIC_COLUMNS = ["image_auroc", "pixel_auroc", "au_pro", "paper_pro", "paper_roc"]


def mean_row(rows):
    out = {"category": "mean"}
    for col in METRIC_COLUMNS + ["n_test", "fit_seconds", "eval_seconds"]:
        vals = [r[col] for r in rows if r.get(col) is not None]
        if vals:
            out[col] = float(np.mean(vals)) if col not in ("n_test",) else int(np.sum(vals))
    return out


def results_table(rows):
    """Rows (with a mean row) as a printable fixed-width table; undefined values as n/a."""
    cols = ["category"] + [c for c in METRIC_COLUMNS if any(c in r for r in rows)]
    lines = ["  ".join(f"{c:>12}" for c in cols)]
    for r in rows + [mean_row(rows)]:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:>12}" if isinstance(v, str) else
                         f"{'n/a':>12}" if v is None or (isinstance(v, float) and math.isnan(v))
                         else f"{v:>12.4f}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def write_results(path, rows):
    """CSV with a row per category and a mean row (undefined metrics left empty)."""
    cols = ["category", "n_test"] + [c for c in METRIC_COLUMNS if any(c in r for r in rows)]
    cols += [c for c in ("fit_seconds", "eval_seconds") if any(c in r for r in rows)]
    clean = [{k: ("" if v is None else v) for k, v in r.items()} for r in rows + [mean_row(rows)]]
    write_csv(path, clean, cols)
    return path





def eval_options(args, out_dir):
    """EvalOptions from the evaluation flags (pictures go to <out_dir>/pictures/<category>/)."""
    return EvalOptions(batch_size=args.batch_size, eval_pro=args.eval_PRO,
                       paper_metrics=args.non_partial_AUC, eval_size=args.eval_size,
                       pic_dir=os.path.join(out_dir, "pictures") if args.save_pic else None,
                       maps_dir=args.save_maps)


# --------------------------------------------------------------------------- export

DEPLOY_VERSION = 1


def export(model, save_dir):
    """Save ``model.detector`` as a static graph plus deploy.json; return the written paths."""
    import paddle
    from paddle.static import InputSpec
    size = model.meta["crop_size"]
    model.detector.eval()
    spec = [InputSpec([None, 3, size, size], "float32", "image")]
    static = paddle.jit.to_static(model.detector, input_spec=spec, full_graph=True)
    ensure_dir(save_dir)
    tmp = tempfile.mkdtemp(prefix=".export.", dir=save_dir)
    try:
        paddle.jit.save(static, os.path.join(tmp, "model"))
        graph = next(f for f in os.listdir(tmp) if f in ("model.json", "model.pdmodel"))
        digest = sha256_file(os.path.join(tmp, "model.pdiparams"))
        meta = {k: v for k, v in model.meta.items() if k != "versions"}
        deploy = {"deploy_version": DEPLOY_VERSION, "preprocess": model.preprocess.config(),
                  "input_size": size, "threshold": model.meta.get("threshold"),
                  "display": model.meta.get("display"), "model": meta,
                  "graph_file": graph, "params_sha256": digest,
                  "outputs": ["anomaly_map [B, 1, S, S]", "image_score [B]"]}
        write_json(os.path.join(tmp, "deploy.json"), deploy)
        written = []
        for name in (graph, "model.pdiparams", "deploy.json"):
            os.replace(os.path.join(tmp, name), os.path.join(save_dir, name))
            written.append(os.path.join(save_dir, name))
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
